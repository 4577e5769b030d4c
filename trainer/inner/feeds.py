"""How training reads its data onto a strategy's devices: one feed per --pipeline.

A feed is a source of batches; the loop around the step (step.TrainLoop) is written once
and asks the feed for each step's batch. Rule: the feed hands each replica its batch ready
for the loss (normalized, augmented, mixed images, their labels and targets); the step does
only the math. Every preparation is a stateless function of (seed, replica, step), so a
resumed run sees the batches an uninterrupted one saw, whichever feed. `eval_dataset`
serves in-memory and streamed splits alike.

    in_memory  the split's tables on every device, batches gathered inside the graph
    tf_data    tf.data over the in-memory arrays, uint8 batches distributed to replicas
    stream     tf.data reading TFDS shards or image files, each worker its own part
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline import pipeline
from input_pipeline.data import Data, Split
from input_pipeline.in_memory import InMemoryData, IndexStream
from input_pipeline.mixing import Mix, mix_batch, smooth
from input_pipeline.preprocess import Augment, augment_batch, augment_seed, normalize
from input_pipeline.stream import StreamSplit, eval_stream, train_stream
from trainer.options.config import Config

# In-memory training data up to this size (per copy) is placed on every replica's device;
# larger data is gathered on the host and only batches cross to the devices.
DEVICE_COPY_LIMIT = 2 * 1024**3


@dataclasses.dataclass(frozen=True)
class Targets:
  """What the loss trains on: labels as they are (None: sparse), or soft targets when
  --label_smoothing or mixing is on. num_classes: the width of the soft targets."""
  num_classes: int
  smoothing: float = 0.0
  mix: Mix = Mix()

  @property
  def soft(self) -> bool:
    return bool(self.smoothing or self.mix.mixup or self.mix.cutmix)

  def make(self, images, labels, seed):
    """(images, targets) of one replica's batch; mixing is on the replica's whole batch
    (before the step splits it into micro-batches), so accumulation mixes as one step on
    the whole batch would."""
    if not self.soft:
      return images, None
    targets = smooth(tf.one_hot(labels, self.num_classes), self.smoothing)
    if self.mix.mixup or self.mix.cutmix:
      seed = tf.random.experimental.stateless_fold_in(seed, 4)
      images, targets = mix_batch(images, targets, self.mix, seed)
    return images, targets


def _distribute(strategy, dataset):
  options = tf.data.Options()
  # In-memory data has no files to shard by; shard by batch across workers.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return strategy.experimental_distribute_dataset(dataset.with_options(options))


def eval_dataset(strategy, split, global_batch_size: int):
  """One distributed pass over a split, every example once (padded batches, weight 0)."""
  make = eval_stream if isinstance(split, StreamSplit) else pipeline.eval_dataset
  return _distribute(strategy, make(split, global_batch_size=global_batch_size))


class Feed:
  """The train data of one run. `seed` orders the data and seeds augmentation and mixing;
  `batch`: examples per training step (global); targets: what the loss trains on
  (default: the labels).

  The loop calls, per tf.function call, `windows(iterator, steps)` on the host: the input
  of each call and how many steps it runs; inside the call, `batch_at(window, i)` in the
  cross-replica context: step i's arguments for the replicas; and in each replica
  `prepare(at, batch)`: the batch ready for the loss at global step `at`."""

  # The tf.function's input signature (None: traced per input type).
  signature = None

  def __init__(self, strategy, split, *, batch: int, seed: int, augment: Augment,
               targets: Targets | None = None):
    self.strategy, self.split, self.batch = strategy, split, batch
    self.seed, self.augment, self.targets = seed, augment, targets

  def iterator(self, position: int):
    """The train stream from the `position`-th batch on (resumes the data order)."""
    raise NotImplementedError

  def windows(self, iterator, steps: int) -> Iterator[tuple[object, int]]:
    """(input of one loop call, its number of steps) for `steps` steps from `iterator`."""
    yield iterator, steps

  def batch_at(self, window, i):
    """Step i's arguments for the replicas (cross-replica context, traced)."""
    raise NotImplementedError

  def prepare(self, at, batch) -> tuple:
    """(images, labels, targets) of this replica at global step `at` (replica context)."""
    raise NotImplementedError

  def replica_seed(self, step) -> tf.Tensor:
    """This replica's augmentation seed at a step (preprocess.augment_seed)."""
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return augment_seed(self.seed, replica, step)

  def _ready(self, images, labels, seed):
    images, targets = (images, None) if self.targets is None else self.targets.make(
        images, labels, seed)
    return images, labels, targets


class TfDataFeed(Feed):
  """--pipeline=tf_data: tf.data over the in-memory arrays. A call runs its steps over a
  distributed iterator of uint8 batches, normalized, augmented and mixed on the device, each
  replica's part with its own seed, as the in-memory feed does (the same batches,
  whichever feed)."""

  def iterator(self, position):
    dataset = pipeline.train_dataset(self.split, global_batch_size=self.batch, seed=self.seed,
                                     start_step=position)
    return iter(_distribute(self.strategy, dataset))

  def batch_at(self, window, i):
    return next(window)

  def prepare(self, at, batch):
    images, labels = batch
    images, seed = normalize(images), self.replica_seed(at)
    if self.augment.enabled:
      images = augment_batch(images, self.augment, seed)
    return self._ready(images, labels, seed)


class StreamFeed(TfDataFeed):
  """--pipeline=stream: the split read from its files; each worker (input pipeline)
  reads and decodes only its replicas' examples."""

  def iterator(self, position):
    def worker_stream(ctx: tf.distribute.InputContext):
      if ctx.num_input_pipelines > 1:
        logging.info("input pipeline %d of %d: reads its %d examples of each global batch",
                     ctx.input_pipeline_id + 1, ctx.num_input_pipelines,
                     self.batch // ctx.num_input_pipelines)
      return train_stream(self.split, global_batch_size=self.batch, seed=self.seed,
                          start_step=position, pipeline=ctx.input_pipeline_id,
                          pipelines=ctx.num_input_pipelines,
                          batch_size=ctx.get_per_replica_batch_size(self.batch))
    return iter(self.strategy.distribute_datasets_from_function(worker_stream))


class InMemoryFeed(Feed):
  """--pipeline=in_memory: the host computes only which examples form each batch; a
  window of index batches goes to one tf.function call, where each replica gathers its
  slice from its own device's copy of the data, normalizes, augments and mixes it."""

  def __init__(self, strategy, split: Split, *, batch, seed, augment, steps_per_loop: int,
               targets=None):
    super().__init__(strategy, split, batch=batch, seed=seed, augment=augment,
                     targets=targets)
    self.steps_per_loop = steps_per_loop
    self.data = InMemoryData(split, augment)
    self.tables = self._place_tables()
    # --augment=flip=alternating: each example's flip in even epochs (odd: the other).
    self._first_flips = (np.random.default_rng([seed, 0xF119, 0]).random(len(split)) < 0.5
                         if augment.alternating else None)

  def _window(self, iterator: IndexStream, n: int):
    """The next n batches' indices and flips, padded to steps_per_loop rows."""
    indices = np.zeros((self.steps_per_loop, self.batch), np.int32)
    flips = np.zeros((self.steps_per_loop, self.batch), bool)
    if self._first_flips is None:
      indices[:n] = iterator.take(n)
    else:
      indices[:n], epochs = iterator.take(n, epochs=True)
      flips[:n] = self._first_flips[indices[:n]] ^ (epochs % 2 == 1)
    return tf.constant(indices), tf.constant(flips)

  def _place_tables(self):
    """A copy of the tables on every replica's device (None: too large for that; then
    gathered on the host)."""
    if self.data.nbytes > DEVICE_COPY_LIMIT:
      logging.info("in-memory data: %.1f GB, gathered on the host (a copy per device above "
                   "%.1f GB each)", self.data.nbytes / 1e9, DEVICE_COPY_LIMIT / 1e9)
      return None
    try:
      devices = self.strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TensorFlow's default device
      devices = (None,)

    def on_device(table):
      def place(ctx):
        with tf.device(devices[ctx.replica_id_in_sync_group % len(devices)]):
          return tf.identity(tf.constant(table))
      return self.strategy.experimental_distribute_values_from_function(place)
    logging.info("in-memory data: a %.0f MB copy on each of %d device(s)",
                 self.data.nbytes / 1e6, len(devices))
    return tuple(on_device(t) for t in self.data.tables)

  def iterator(self, position):
    return IndexStream(len(self.split), self.batch, self.seed, start_step=position)

  @property
  def signature(self):
    # One trace (and one XLA compilation) for every loop length: windows are padded to
    # steps_per_loop rows and the step count says how many run (a loop never runs more).
    rows = [self.steps_per_loop, self.batch]
    return [(tf.TensorSpec(rows, tf.int32), tf.TensorSpec(rows, tf.bool)),
            tf.TensorSpec([], tf.int32)]

  def windows(self, iterator, steps):
    for start in range(0, steps, self.steps_per_loop):
      n = min(self.steps_per_loop, steps - start)
      yield self._window(iterator, n), n

  def batch_at(self, window, i):
    indices, flips = window
    return indices[i], flips[i], self.tables

  def prepare(self, at, batch):
    # Each replica gathers its own slice of the global batch inside the graph.
    indices, flips, tables = batch
    ctx = tf.distribute.get_replica_context()
    per_replica = self.batch // ctx.num_replicas_in_sync
    mine = slice(ctx.replica_id_in_sync_group * per_replica,
                 (ctx.replica_id_in_sync_group + 1) * per_replica)
    seed = self.replica_seed(at)
    images, labels = self.data.batch(indices[mine], seed, tables,
                                     flips=flips[mine] if self._first_flips is not None
                                     else None)
    return self._ready(images, labels, seed)


def make_feed(strategy, data: Data, config: Config) -> Feed:
  """The feed of data.pipeline (input_pipeline.load chose it) for a run's config."""
  split = data.splits["train"]
  targets = Targets(data.info.num_classes, config.label_smoothing,
                    Mix(config.mixup, config.cutmix, config.mix_probability))
  common = dict(batch=config.step_batch, seed=config.seed, augment=config.augment,
                targets=targets)
  if data.pipeline == "in_memory":
    return InMemoryFeed(strategy, split, steps_per_loop=config.steps_per_loop, **common)
  kind = StreamFeed if data.pipeline == "stream" else TfDataFeed
  return kind(strategy, split, **common)
