"""A plain CNN: conv/max-pool blocks, flatten, dense, logits."""

from __future__ import annotations

from typing import Sequence

import keras

from models.common import Dropout, ImageClassifier, logits_head, regularizer


class ReluMaxPool(keras.layers.MaxPooling2D):
  """relu(maxpool(x)): equal to maxpool(relu(x)) (ReLU is monotonic), value and gradient,
  with the ReLU and its gradient on a quarter of the elements. The gradient of a ReLU
  before the pool, over the whole conv output, was 15% of the fashion_tta CNN's step in
  bfloat16 on a CPU (TensorFlow's ReluGrad is not a oneDNN kernel, and not vectorized in
  bf16); 8% after. One layer, so the model's layers (and its checkpoints) are as they were."""

  def call(self, inputs):
    return keras.ops.relu(super().call(inputs))


class CNN(ImageClassifier):
  """Defaults are the tutorial CNN: conv 25@5x5, pool, conv 25@5x5, pool, conv 25@4x4,
  flatten, dense 50, logits. A 2x2 max-pool follows every conv layer but the last."""

  def __init__(self, *, filters: Sequence[int] = (25, 25, 25),
               kernel_sizes: Sequence[int] = (5, 5, 4), dense_units: Sequence[int] = (50,),
               dropout: float = 0.0, l2: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    if len(filters) != len(kernel_sizes):
      raise ValueError(f"filters {tuple(filters)} and kernel_sizes {tuple(kernel_sizes)} "
                       "must have the same length")
    p = self.dtype_policy
    self.features = []
    # In 16 bits a pooled conv's ReLU comes after its pool (ReluMaxPool: the same values,
    # layers and weights). In float32 oneDNN fuses the ReLU into the conv and its gradient
    # is vectorized: there the order stays (the tutorial CNN ran 3-4% slower pool-first).
    pool_first = p.compute_dtype != "float32"
    for i, (f, k) in enumerate(zip(filters, kernel_sizes)):
      pooled = i < len(filters) - 1
      self.features.append(keras.layers.Conv2D(
          f, k, activation=None if pooled and pool_first else "relu",
          kernel_regularizer=regularizer(l2), dtype=p, name=f"conv_{i}"))
      if pooled:
        self.features.append(ReluMaxPool(2, dtype=p) if pool_first
                             else keras.layers.MaxPooling2D(2, dtype=p))
    self.features.append(keras.layers.Flatten(dtype=p))
    for i, units in enumerate(dense_units):
      if dropout:
        self.features.append(Dropout(dropout, dtype=p))
      self.features.append(keras.layers.Dense(units, activation="relu",
                                              kernel_regularizer=regularizer(l2), dtype=p,
                                              name=f"dense_{i}"))
    if dropout:
      self.features.append(Dropout(dropout, dtype=p))
    self.logits = logits_head(self.num_classes, l2)

  def call(self, images, training=False):
    x = images
    for layer in self.features:
      x = layer(x, training=training)
    return self.logits(x)
