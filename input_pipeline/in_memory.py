"""The in-memory train pipeline: batches gathered inside the training graph, no tf.data.

For data that fits in memory (every source here) tf.data's per-step host work (an
iterator hand-off per batch) costs more than a small model's step. Here the host only
computes which examples form each global batch (a seeded permutation per epoch, so batch
k is a function of (seed, k) and a resumed run sees the same data), hands a window of
index batches to one tf.function call, and the graph gathers, normalizes and augments.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from input_pipeline.data import DataError, Split
from input_pipeline.pipeline import check_batch
from input_pipeline.preprocess import Augment, augment_batch, normalize
from input_pipeline.records import epoch_permutation


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
      self._perms[epoch] = epoch_permutation(self.n, self.seed, epoch).astype(np.int32)
    return self._perms[epoch]

  def take(self, steps: int, epochs: bool = False):
    """Indices [steps, global_batch_size] of the next `steps` batches; advances.
    epochs: (indices, each entry's epoch), for augmentation that depends on it."""
    end = self.position + steps * self.batch
    parts, epoch_of, pos = [], [], self.position
    while pos < end:
      epoch, offset = divmod(pos, self.n)
      chunk = self._permutation(epoch)[offset:offset + (end - pos)]
      parts.append(chunk)
      epoch_of.append(np.full(len(chunk), epoch, np.int64))
      pos += len(chunk)
    self.position = end
    indices = np.concatenate(parts).reshape(steps, self.batch)
    return (indices, np.concatenate(epoch_of).reshape(steps, self.batch)) if epochs else indices


def pack(images: np.ndarray) -> np.ndarray:
  """uint8 images [N, H, W, C] as float32 words [N, ceil(HWC / 4)], byte for byte: GPUs
  have no uint8 gather kernel, but gather float32 rows; the bytes stay uint8-sized."""
  flat = images.reshape(len(images), -1)
  pad = -flat.shape[1] % 4
  if pad:
    flat = np.pad(flat, [(0, 0), (0, pad)])
  return np.ascontiguousarray(flat).view(np.float32)


def unpack(words: tf.Tensor, image_shape) -> tf.Tensor:
  """The inverse of pack, inside the graph: float32 words [B, K] -> uint8 [B, H, W, C]."""
  size = int(np.prod(image_shape))
  pixels = tf.reshape(tf.bitcast(words, tf.uint8), [tf.shape(words)[0], -1])
  if pixels.shape[1] != size:
    pixels = pixels[:, :size]
  return tf.reshape(pixels, [-1, *image_shape])


class InMemoryData:
  """The decoded split as packed tensors (images as uint8 bytes in float32 words, labels
  as int32 bits in float32); `batch` runs inside tf.function.

  `tables` are on the host; a trainer places a copy on every replica's device, so each
  replica gathers its batch where it trains: no per-step copy of the data or of a batch.
  """

  def __init__(self, split: Split, augment: Augment | None = None):
    if split.labels is None:
      raise DataError("the training split has no labels")
    self.image_shape = tuple(split.images.shape[1:])
    self.tables = (pack(split.images), split.labels.astype(np.int32).view(np.float32))
    self.augment = augment or Augment()

  @property
  def nbytes(self) -> int:
    return sum(t.nbytes for t in self.tables)

  def batch(self, indices: tf.Tensor, seed: tf.Tensor, tables=None, flips=None):
    """(float32 images, int32 labels) of the given examples; seed: stateless, shape [2].
    tables: this replica's (images, labels) copy; default the host's, gathered there.
    flips: bool per example, which to mirror (--augment=flip=alternating)."""
    where = contextlib.nullcontext()  # this replica's device
    if tables is None:
      if not hasattr(self, "_host"):
        with tf.device("/cpu:0"):
          self._host = tuple(tf.constant(t) for t in self.tables)
      # On the host, where the tables are: a gather placed on a GPU would copy the whole
      # table there at every step; only the batch crosses.
      tables, where = self._host, tf.device("/cpu:0")
    with where:
      words, label_words = tf.gather(tables[0], indices), tf.gather(tables[1], indices)
    images = normalize(unpack(words, self.image_shape))  # on the replica's device
    if self.augment.enabled:
      images = augment_batch(images, self.augment, seed)
    if flips is not None:
      images = tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return images, tf.bitcast(label_words, tf.int32)
