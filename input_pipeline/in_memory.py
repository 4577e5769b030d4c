"""The in-memory train pipeline: batches gathered inside the training graph, no tf.data.

For data that fits in memory (every source here) tf.data's per-step host work (an
iterator hand-off per batch) costs more than a small model's step. Here the host only
computes which examples form each global batch (a seeded permutation per epoch, so batch
k is a function of (seed, k) and a resumed run sees the same data), hands a window of
index batches to one tf.function call, and the graph gathers, normalizes and augments.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from input_pipeline.data import DataError, Split
from input_pipeline.pipeline import check_batch
from input_pipeline.preprocess import Augment, augment_batch, normalize


class IndexStream:
  """The example indices of consecutive global batches, from `start_step` on."""

  def __init__(self, n: int, global_batch_size: int, seed: int, start_step: int = 0):
    check_batch(global_batch_size, n, "training", need_full=True)
    self.n, self.batch, self.seed = n, global_batch_size, seed
    self.position = start_step * global_batch_size  # in the endless stream of epochs
    self._perms: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
      rng = np.random.default_rng([self.seed, epoch])
      self._perms[epoch] = rng.permutation(self.n).astype(np.int32)
    return self._perms[epoch]

  def take(self, steps: int) -> np.ndarray:
    """Indices [steps, global_batch_size] of the next `steps` batches; advances."""
    end = self.position + steps * self.batch
    parts, pos = [], self.position
    while pos < end:
      epoch, offset = divmod(pos, self.n)
      chunk = self._permutation(epoch)[offset:offset + (end - pos)]
      parts.append(chunk)
      pos += len(chunk)
    self.position = end
    return np.concatenate(parts).reshape(steps, self.batch)


class InMemoryData:
  """The decoded split as tensors; `batch` runs inside tf.function."""

  def __init__(self, split: Split, augment: Augment | None = None):
    if split.labels is None:
      raise DataError("the training split has no labels")
    self.images = tf.constant(split.images)
    self.labels = tf.constant(split.labels, tf.int32)
    self.augment = augment or Augment()

  def batch(self, indices: tf.Tensor, seed: tf.Tensor):
    """(float32 images, int32 labels) of the given examples; seed: stateless, shape [2]."""
    images = normalize(tf.gather(self.images, indices))
    if self.augment.enabled:
      images = augment_batch(images, self.augment, seed)
    return images, tf.gather(self.labels, indices)
