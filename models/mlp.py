"""A multi-layer perceptron: flatten, N hidden Dense layers (each with dropout), logits."""

from __future__ import annotations

from typing import Sequence

import keras

from models.common import Dropout, ImageClassifier, logits_head, regularizer


class MLP(ImageClassifier):
  """The tutorial MLPs: hidden_units=(50,), (500,), (50,)*5, (500,)*5, with dropout 0 or 0.2."""

  def __init__(self, *, hidden_units: Sequence[int] = (500,), activation: str = "relu",
               dropout: float = 0.0, l2: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.flatten = keras.layers.Flatten(dtype=self.dtype_policy)
    self.hidden = []
    for i, units in enumerate(hidden_units):
      self.hidden.append(keras.layers.Dense(units, activation=activation,
                                            kernel_regularizer=regularizer(l2),
                                            dtype=self.dtype_policy, name=f"dense_{i}"))
      if dropout:
        self.hidden.append(Dropout(dropout, dtype=self.dtype_policy))
    self.logits = logits_head(self.num_classes, l2)

  def call(self, images, training=False):
    x = self.flatten(images)
    for layer in self.hidden:
      x = layer(x, training=training)
    return self.logits(x)
