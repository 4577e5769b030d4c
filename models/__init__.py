"""Subclassed keras.Model image classifiers and a registry by name.

The names are loaded on first use: models.names (what the flags are checked with) must not
load TensorFlow through this package."""

import importlib

_HOMES = {"CNN": "cnn", "MLP": "mlp", "ResNet": "resnet", "MODELS": "registry",
          "create": "registry", "get_class": "registry", "hyperparameters": "registry"}

__all__ = sorted(_HOMES)


def __getattr__(name):
  if name not in _HOMES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
