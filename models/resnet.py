"""A small ResNet (basic blocks, batch norm) for 28x28-ish images: the accuracy model."""

from __future__ import annotations

from typing import Sequence

import keras

from models.common import (BatchNormalization, CheckpointLists, Dropout, ImageClassifier,
                           logits_head, regularizer)


class ResidualBlock(CheckpointLists, keras.layers.Layer):
  """conv3x3-BN-relu-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes)."""

  def __init__(self, width: int, stride: int, project: bool, l2: float, sync: bool,
               momentum: float = 0.99, **kwargs):
    super().__init__(**kwargs)
    p, reg = self.dtype_policy, regularizer(l2)
    conv = lambda k, s: keras.layers.Conv2D(width, k, strides=s, padding="same", use_bias=False,
                                            kernel_regularizer=reg, dtype=p)
    bn = lambda: BatchNormalization(momentum=momentum, synchronized=sync, dtype=p)
    self.conv1, self.bn1 = conv(3, stride), bn()
    self.conv2, self.bn2 = conv(3, 1), bn()
    self.proj = (conv(1, stride), bn()) if project else None

  def call(self, x, training=False):
    y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
    y = self.bn2(self.conv2(y), training=training)
    shortcut = self.proj[1](self.proj[0](x), training=training) if self.proj else x
    return keras.ops.relu(y + shortcut)


class ResNet(ImageClassifier):
  """Stem conv3x3, then one stage per width (stride 2 from the second stage on), each of
  blocks_per_stage basic blocks; global average pool, dropout, logits. sync_batch_norm:
  batch statistics over the global batch under a tf.distribute strategy (all-reduced), so
  that every replica normalizes alike and keeps the same moving statistics; bn_momentum:
  the moving statistics' decay (Keras's convention)."""

  def __init__(self, *, widths: Sequence[int] = (32, 64, 128), blocks_per_stage: int = 2,
               dropout: float = 0.0, l2: float = 0.0, sync_batch_norm: bool = False,
               bn_momentum: float = 0.99, **kwargs):
    super().__init__(**kwargs)
    p = self.dtype_policy
    self.stem = keras.layers.Conv2D(widths[0], 3, padding="same", use_bias=False,
                                    kernel_regularizer=regularizer(l2), dtype=p)
    self.stem_bn = BatchNormalization(momentum=bn_momentum, synchronized=sync_batch_norm,
                                      dtype=p)
    self.blocks = []
    in_width = widths[0]
    for s, width in enumerate(widths):
      for b in range(blocks_per_stage):
        stride = 2 if s > 0 and b == 0 else 1
        self.blocks.append(ResidualBlock(width, stride, project=(stride != 1 or width != in_width),
                                  l2=l2, sync=sync_batch_norm, momentum=bn_momentum,
                                  dtype=p))
        in_width = width
    self.pool = keras.layers.GlobalAveragePooling2D(dtype=p)
    self.dropout = Dropout(dropout, dtype=p) if dropout else None
    self.logits = logits_head(self.num_classes, l2)

  def call(self, images, training=False):
    x = keras.ops.relu(self.stem_bn(self.stem(images), training=training))
    for block in self.blocks:
      x = block(x, training=training)
    x = self.pool(x)
    if self.dropout:
      x = self.dropout(x, training=training)
    return self.logits(x)
