"""Reference-compatible CIFAR model zoo: `create_model(name)`, `list_models()`.

Registry names, state_dict key names and parameter counts follow SimKD (DefangChen/SimKD `models/__init__.py`)
and RepDistiller (the plain CIFAR ResNets), so their checkpoints load with `strict=True`.
"""

from kdsweep.models.base import FeatureInfo, FeatureModel, Intermediates
from kdsweep.models.registry import create_model, feature_info, list_models, register_model

# Importing the architecture modules registers their names.
from kdsweep.models import resnet_cifar, mobilenetv2_cifar, vgg_cifar, shufflenetv2_cifar  # noqa: E402,F401

__all__ = [
    "FeatureInfo", "FeatureModel", "Intermediates", "create_model", "feature_info", "list_models", "register_model",
]
