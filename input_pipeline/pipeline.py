"""tf.data pipelines over in-memory splits: a seeded endless train stream, an exact eval pass.

Both batch by the GLOBAL batch size; `strategy.experimental_distribute_dataset` splits each
batch across replicas.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from input_pipeline.data import DataError, Split
from input_pipeline.preprocess import normalize
from input_pipeline.records import epoch_order


def check_batch(global_batch_size: int, n: int, what: str, need_full: bool) -> None:
  """Refuses a non-positive batch, or one larger than a split that must fill it."""
  if global_batch_size < 1:
    raise DataError(f"--batch_size={global_batch_size} must be positive")
  if need_full and global_batch_size > n:
    raise DataError(f"--batch_size={global_batch_size} is larger than the {n} {what} "
                    "examples; use a smaller batch")


def train_dataset(split: Split, *, global_batch_size: int, seed: int,
                  start_step: int = 0) -> tf.data.Dataset:
  """Endless (images uint8 [B,H,W,C], labels int32 [B]) batches, drop_remainder.

  The data is decoded once and held in memory (the cache). Each epoch is a fresh seeded
  shuffle of all examples, batches run across epoch boundaries, and batch k is a pure
  function of (seed, k): starting at `start_step` resumes the exact stream. Normalized and
  augmented on each replica's device, as the in-memory pipeline and the streams are: each
  replica's part of a batch with its own seed, so the pipelines give the same batches.
  """
  if split.labels is None:
    raise DataError("the training split has no labels")
  n = len(split)
  check_batch(global_batch_size, n, "training", need_full=True)
  images = tf.constant(split.images)
  labels = tf.constant(split.labels, tf.int32)
  first = start_step * global_batch_size
  indices = (tf.data.Dataset.counter(first // n)
             .flat_map(lambda e: tf.data.Dataset.from_tensor_slices(epoch_order(n, seed, e)))
             .skip(first % n)
             .batch(global_batch_size, drop_remainder=True))
  return (indices.map(lambda idx: (tf.gather(images, idx), tf.gather(labels, idx)),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .prefetch(tf.data.AUTOTUNE))


def eval_dataset(split: Split, *, global_batch_size: int) -> tf.data.Dataset:
  """One pass of (images, labels, weights, index) batches: every example exactly once.

  The last batch is padded to the full global batch with weight 0, so every replica gets
  a same-shaped batch (no retracing, no empty replica) and the padding never counts.
  Unlabeled splits get label 0; use the weights to drop padding from predictions. `index`
  is each example's position in the split (-1 for padding), so that per-example results
  gathered from replicas and workers in any order can be put back in place.
  """
  n = len(split)
  check_batch(global_batch_size, n, "eval", need_full=False)
  pad = -n % global_batch_size
  images = np.concatenate([split.images, np.zeros((pad,) + split.images.shape[1:], np.uint8)])
  labels = np.zeros(n + pad, np.int32)
  if split.labels is not None:
    labels[:n] = split.labels
  weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  index = np.concatenate([np.arange(n, dtype=np.int32), np.full(pad, -1, np.int32)])
  return (tf.data.Dataset.from_tensor_slices((images, labels, weights, index))
          .batch(global_batch_size, drop_remainder=True)
          .map(lambda x, y, w, i: (normalize(x), y, w, i), num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))
