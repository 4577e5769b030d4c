"""Model names -> classes, and construction from flag-style hyperparameters."""

from __future__ import annotations

import inspect

from models.airbench import AirBench
from models.applications import EfficientNetV2B0, MobileNetV3Small, ResNet50
from models.cnn import CNN
from models.common import ImageClassifier
from models.mlp import MLP
from models.resnet import ResNet

MODELS: dict[str, type[ImageClassifier]] = {
    "mlp": MLP, "cnn": CNN, "resnet": ResNet, "airbench": AirBench,
    # keras.applications' ImageNet networks (models/applications.py)
    "resnet50": ResNet50, "mobilenet_v3_small": MobileNetV3Small,
    "efficientnet_v2_b0": EfficientNetV2B0}


def get_class(name: str) -> type[ImageClassifier]:
  try:
    return MODELS[name]
  except KeyError:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None


def hyperparameters(name: str) -> dict[str, object]:
  """The hyperparameters a model accepts, with their defaults."""
  params = inspect.signature(get_class(name).__init__).parameters
  return {k: p.default for k, p in params.items() if p.kind == p.KEYWORD_ONLY}


def create(name: str, *, num_classes: int, image_shape, precision: str = "float32",
           **hparams) -> ImageClassifier:
  """Builds a model with its weights created, so it can be counted, saved and distributed."""
  known = hyperparameters(name)
  unknown = sorted(set(hparams) - set(known))
  if unknown:
    raise ValueError(f"model {name!r} takes no {', '.join(unknown)}; it takes "
                     f"{', '.join(sorted(known))}")
  model = get_class(name)(num_classes=num_classes, image_shape=image_shape,
                          precision=precision, **hparams)
  return model.build_for_input()
