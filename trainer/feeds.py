"""How training reads its data onto a strategy's devices: one feed per --pipeline.

A feed gives the train stream from a step (`iterator`) and the tf.function that runs N
training steps over it (`loop`); the trainer hands it the per-replica step on a batch of
normalized images and the cross-replica wrapper around it. `eval_dataset` serves
in-memory and streamed splits alike.

    in_memory  the split's tables on every device, batches gathered inside the graph
    tf_data    tf.data over the in-memory arrays, uint8 batches distributed to replicas
    stream     tf.data reading TFDS shards or image files, each worker its own part
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline.data import Data, Split
from input_pipeline.in_memory import IndexStream, InMemoryData
from input_pipeline.pipeline import eval_dataset as in_memory_eval, train_dataset
from input_pipeline.preprocess import Augment, augment_batch, augment_seed, normalize
from input_pipeline.stream import StreamSplit, eval_stream, train_stream

# In-memory training data up to this size (per copy) is placed on every replica's device;
# larger data is gathered on the host and only batches cross to the devices.
DEVICE_COPY_LIMIT = 2 * 1024**3

# run_step(replica_fn, args): one step on every replica (cross-replica context).
RunStep = Callable[[Callable, tuple], None]
# replica_step(images, labels): the per-replica step on normalized float32 images.
ReplicaStep = Callable[[tf.Tensor, tf.Tensor], None]


def _distribute(strategy, dataset):
  options = tf.data.Options()
  # In-memory data has no files to shard by; shard by batch across workers.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return strategy.experimental_distribute_dataset(dataset.with_options(options))


def eval_dataset(strategy, split, global_batch_size: int):
  """One distributed pass over a split, every example once (padded batches, weight 0)."""
  make = eval_stream if isinstance(split, StreamSplit) else in_memory_eval
  return _distribute(strategy, make(split, global_batch_size=global_batch_size))


class Feed:
  """The train data of one run. `seed` orders the data and seeds augmentation;
  `batch`: examples per training step (global)."""

  def __init__(self, strategy, split, *, batch: int, seed: int, augment: Augment):
    self.strategy, self.split, self.batch = strategy, split, batch
    self.seed, self.augment = seed, augment

  def iterator(self, position: int):
    """The train stream from the `position`-th batch on (resumes the data order)."""
    raise NotImplementedError

  def loop(self, run_step: RunStep, replica_step: ReplicaStep, global_step: tf.Variable,
           jit: bool = False) -> Callable:
    """loop(iterator, steps): `steps` training steps in one tf.function call."""
    raise NotImplementedError

  def replica_seed(self, step) -> tf.Tensor:
    """This replica's augmentation seed at a step (preprocess.augment_seed)."""
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return augment_seed(self.seed, replica, step)

  def dataset_loop(self, run_step: RunStep, replica_step: ReplicaStep, global_step):
    """The loop over a distributed tf.data iterator of uint8 batches: normalized and
    augmented on the device, each replica's part with its own seed, as the in-memory feed
    does (the same batches, whichever feed)."""
    def uint8_step(images, labels):
      images = normalize(images)
      if self.augment.enabled:
        images = augment_batch(images, self.augment,
                               self.replica_seed(global_step.read_value()))
      replica_step(images, labels)

    @tf.function
    def loop(iterator, steps):
      for _ in tf.range(steps):
        run_step(uint8_step, next(iterator))
    return lambda iterator, steps: loop(iterator, tf.constant(steps, tf.int64))


class TfDataFeed(Feed):
  """--pipeline=tf_data: tf.data over the in-memory arrays."""

  def iterator(self, position):
    dataset = train_dataset(self.split, global_batch_size=self.batch, seed=self.seed,
                            start_step=position)
    return iter(_distribute(self.strategy, dataset))

  def loop(self, run_step, replica_step, global_step, jit=False):
    return self.dataset_loop(run_step, replica_step, global_step)


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
  slice from its own device's copy of the data, normalizes and augments it."""

  def __init__(self, strategy, split: Split, *, batch, seed, augment, steps_per_loop: int):
    super().__init__(strategy, split, batch=batch, seed=seed, augment=augment)
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

  def loop(self, run_step, replica_step, global_step, jit=False):
    alternating = self._first_flips is not None

    def gathered_step(indices, flips, step, tables):
      # Each replica gathers its own slice of the global batch inside the graph.
      ctx = tf.distribute.get_replica_context()
      per_replica = self.batch // ctx.num_replicas_in_sync
      mine = slice(ctx.replica_id_in_sync_group * per_replica,
                   (ctx.replica_id_in_sync_group + 1) * per_replica)
      replica_step(*self.data.batch(indices[mine], self.replica_seed(step), tables,
                                    flips=flips[mine] if alternating else None))

    def window_loop(indices, flips, steps):
      # A `while`, not `for i in tf.range(steps)`: in an XLA context autograph gives the
      # latter maximum_iterations=steps, which XLA needs as a compile-time constant, so
      # each new loop length (the last, shorter loop) compiled the whole loop again.
      i = tf.constant(0)
      while i < steps:
        run_step(gathered_step, (indices[i], flips[i], global_step.read_value(), self.tables))
        i += 1

    # One trace (and one XLA compilation) for every loop length: windows are padded to
    # steps_per_loop rows and `steps` says how many run (a loop never runs more).
    compiled = tf.function(window_loop, jit_compile=jit, input_signature=[
        tf.TensorSpec([self.steps_per_loop, self.batch], tf.int32),
        tf.TensorSpec([self.steps_per_loop, self.batch], tf.bool),
        tf.TensorSpec([], tf.int32)])
    by_dataset = None

    def run(iterator, steps):
      nonlocal by_dataset
      if not isinstance(iterator, IndexStream):  # a tf.data iterator handed in (tests)
        by_dataset = by_dataset or self.dataset_loop(run_step, replica_step, global_step)
        return by_dataset(iterator, steps)
      for start in range(0, steps, self.steps_per_loop):
        n = min(self.steps_per_loop, steps - start)
        compiled(*self._window(iterator, n), tf.constant(n, tf.int32))
    run.compiled = compiled  # for inspecting the XLA program (tests)
    return run


def make_feed(strategy, data: Data, *, batch: int, seed: int, augment: Augment,
              steps_per_loop: int) -> Feed:
  """The feed of data.pipeline (input_pipeline.load chose it)."""
  split = data.splits["train"]
  if data.pipeline == "in_memory":
    return InMemoryFeed(strategy, split, batch=batch, seed=seed, augment=augment,
                        steps_per_loop=steps_per_loop)
  kind = StreamFeed if data.pipeline == "stream" else TfDataFeed
  return kind(strategy, split, batch=batch, seed=seed, augment=augment)
