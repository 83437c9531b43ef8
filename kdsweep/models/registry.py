"""A registry of model constructors that fails loudly and lists itself (after timm's `_registry.py`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from kdsweep.errors import UserError, unknown_name
from kdsweep.models.base import FeatureModel

_MODELS: dict[str, Callable[..., FeatureModel]] = {}


def register_model(name: str) -> Callable[[Callable[..., FeatureModel]], Callable[..., FeatureModel]]:
    """Decorator: register `fn(num_classes=..., image_size=...) -> FeatureModel` under `name`; twice is an error."""

    def add(fn: Callable[..., FeatureModel]) -> Callable[..., FeatureModel]:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = fn
        return fn

    return add


def list_models() -> list[str]:
    return sorted(_MODELS)


IMAGE_SIZE_STEP = 32  # px: every model halves its maps up to five times and pools what is left globally


def create_model(name: str, num_classes: int = 100, image_size: int = 32) -> FeatureModel:
    """Model `name` for `num_classes` classes and square `image_size` px inputs (a multiple of 32)."""
    if name not in _MODELS:
        raise UserError(unknown_name("model", name, _MODELS))
    if image_size < IMAGE_SIZE_STEP or image_size % IMAGE_SIZE_STEP:
        raise ValueError(f"image_size must be a positive multiple of {IMAGE_SIZE_STEP} px, got {image_size}")
    return _MODELS[name](num_classes=num_classes, image_size=image_size)


@cache
def feature_info(name: str, image_size: int = 32):
    """The FeatureInfo of model `name` for `image_size` px inputs (built once on the CPU, under a forked RNG so no
    caller's seed moves)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return create_model(name, num_classes=10, image_size=image_size).feature_info
