"""Splits read from files while training (data larger than memory): a tf.data reader.

The train stream is the examples of epoch after epoch, each in a seeded order
(records.py), read and decoded in parallel, batched; uint8 batches go to the devices,
where normalization and augmentation run. Its k-th batch is a function of (seed, k), so a
resumed run starts at the batch where it stopped (`start_step`): nothing is decoded for
the batches before it.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline.data import DataError, Split, fill
from input_pipeline.pipeline import check_batch
from input_pipeline.records import Records, fit


@dataclasses.dataclass(frozen=True)
class StreamSplit:
  """A split left in its files. image_shape: what each example becomes (H, W, C);
  resize: images are fitted to it (--image_size), else they all have it already."""
  records: Records
  image_shape: tuple[int, int, int]
  labeled: bool
  resize: bool = False

  def __len__(self) -> int:
    return len(self.records)

  @property
  def nbytes(self) -> int:
    """The decoded size: what holding the split in memory would take."""
    return len(self) * int(np.prod(self.image_shape))

  def example(self, index: tf.Tensor, record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(uint8 image of image_shape, int32 label) of one stored example."""
    image, label = self.records.decode(index, record)
    if self.resize:
      image = fit(image, self.image_shape[:2])
    image = tf.ensure_shape(image, self.image_shape)
    return image, label

  def subset(self, positions: np.ndarray) -> StreamSplit:
    return dataclasses.replace(self, records=self.records.subset(positions))

  def images_at(self, positions: np.ndarray) -> np.ndarray:
    """uint8 images of a few examples by position, read back from the files."""
    return examples_at(self, positions)


def train_stream(split: StreamSplit, *, global_batch_size: int, seed: int,
                 start_step: int = 0, pipeline: int = 0, pipelines: int = 1,
                 batch_size: int | None = None) -> tf.data.Dataset:
  """Endless (uint8 images [b, H, W, C], int32 labels [b]) batches from `start_step` on.

  Under several input pipelines (one per worker), pipeline p reads and decodes only its
  own part of each global batch, and yields batches of `batch_size` (its replicas' size):
  its replicas take them in turn, so the global batch is the one a single device sees.
  """
  if not split.labeled:
    raise DataError("the training split has no labels")
  n = len(split)
  check_batch(global_batch_size, n, "training", need_full=True)
  first = start_step * global_batch_size  # position in the endless stream of epochs
  stream = (tf.data.Dataset.counter(first // n)
            .flat_map(lambda e: split.records.epoch(tf.constant(seed, tf.int64), e))
            .skip(first % n))
  if pipelines > 1:
    part = global_batch_size // pipelines
    stream = stream.enumerate(first).filter(
        lambda position, example: (position % global_batch_size) // part == pipeline
    ).map(lambda position, example: example)
  return (stream.map(split.example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(batch_size or global_batch_size, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))


def eval_stream(split: StreamSplit, *, global_batch_size: int) -> tf.data.Dataset:
  """One pass of (uint8 images, labels, weights, position) batches, as eval_dataset gives
  for an in-memory split: padded to whole global batches with weight 0 and position -1."""
  n = len(split)
  pad = -n % global_batch_size

  def labeled(position, index_record):
    image, label = split.example(*index_record)
    return image, tf.maximum(label, 0), tf.constant(1.0), tf.cast(position, tf.int32)

  examples = (split.records.in_order().enumerate()
              .map(labeled, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
  padding = tf.data.Dataset.from_tensors(
      (tf.zeros(split.image_shape, tf.uint8), 0, tf.constant(0.0), -1)).repeat(pad)
  return (examples.concatenate(padding).batch(global_batch_size, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))


def examples_at(split: StreamSplit, positions: np.ndarray) -> np.ndarray:
  """uint8 images of a few examples by position in the split (e.g. the worst mistakes):
  one pass over the stored records, decoding only those."""
  wanted = np.zeros(len(split), bool)
  wanted[positions] = True
  table = tf.constant(wanted)
  found = {}
  ds = (split.records.in_order().enumerate()
        .filter(lambda position, index_record: tf.gather(table, position))
        .map(lambda position, index_record: (position, split.example(*index_record)[0])))
  for position, image in ds.as_numpy_iterator():
    found[int(position)] = image
  return np.stack([found[int(p)] for p in positions]) if len(positions) else np.zeros(
      (0, *split.image_shape), np.uint8)


def materialize(split: StreamSplit, what: str) -> Split:
  """Decodes a whole split into memory (the in-memory pipeline's input). The arrays are
  allocated once: memory peaks at the decoded size, not twice it."""
  start = time.perf_counter()
  ds = (split.records.in_order()
        .map(lambda i, r: split.example(i, r), num_parallel_calls=tf.data.AUTOTUNE,
             deterministic=True)
        .batch(512).prefetch(2))
  images, labels = fill(ds.as_numpy_iterator(), len(split))
  n = len(images)
  logging.info("decoded %d %s images into memory in %.1f s", n, what,
               time.perf_counter() - start)
  return Split(images=images, labels=labels if split.labeled else None)
