"""Pieces every model shares: the precision policy and the float32 logits head."""

from __future__ import annotations

import keras

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def policy(name: str) -> keras.DTypePolicy:
  if name not in POLICIES:
    raise ValueError(f"precision {name!r} is not one of {', '.join(POLICIES)}")
  return keras.DTypePolicy(name)


def regularizer(l2: float):
  return keras.regularizers.L2(l2) if l2 else None


def logits_head(num_classes: int, l2: float) -> keras.layers.Dense:
  # float32 even under a mixed policy: softmax and the loss lose too much in fp16/bf16.
  return keras.layers.Dense(num_classes, kernel_regularizer=regularizer(l2), dtype="float32",
                            name="logits")


class ImageClassifier(keras.Model):
  """Base: knows its input shape and class count; `build_for_input` creates the weights."""

  def __init__(self, *, num_classes: int, image_shape, precision: str = "float32", **kwargs):
    super().__init__(dtype=policy(precision), **kwargs)
    self.num_classes = num_classes
    self.image_shape = tuple(image_shape)
    self.precision = precision

  def build_for_input(self) -> ImageClassifier:
    self(keras.ops.zeros((1,) + self.image_shape), training=False)
    return self
