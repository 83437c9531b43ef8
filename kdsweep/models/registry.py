"""A registry of model constructors that fails loudly and lists itself (after timm's `_registry.py`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from kdsweep.errors import UserError, unknown_name
from kdsweep.models.base import FeatureModel

_MODELS: dict[str, Callable[..., FeatureModel]] = {}


def register_model(name: str) -> Callable[[Callable[..., FeatureModel]], Callable[..., FeatureModel]]:
    """Decorator: register `fn(num_classes=...) -> FeatureModel` under `name`. Registering twice is an error."""

    def add(fn: Callable[..., FeatureModel]) -> Callable[..., FeatureModel]:
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = fn
        return fn

    return add


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 100) -> FeatureModel:
    if name not in _MODELS:
        raise UserError(unknown_name("model", name, _MODELS))
    return _MODELS[name](num_classes=num_classes)


@cache
def feature_info(name: str):
    """The FeatureInfo of model `name` (built once on the CPU, under a forked RNG so no caller's seed moves)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return create_model(name, num_classes=10).feature_info
