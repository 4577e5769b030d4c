"""The Trainer: model, optimizer and the train and eval tf.functions under a strategy.

One tf.function call runs N steps (a tf.range over strategy.run); the outer Python loop
that decides N and acts between calls is trainer/controller.py with trainer/actions.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import input_pipeline
import models
from input_pipeline import Data
from input_pipeline.in_memory import IndexStream, InMemoryData
from input_pipeline.mixing import Mix, mix_batch, smooth
from input_pipeline.preprocess import augment_batch, augment_seed, normalize
from input_pipeline.stream import StreamSplit, eval_stream, train_stream
from models.common import InputTooSmall, batch_shard
from trainer import checkpoints, ema, optimization
from trainer.config import Config, ConfigError
from trainer.flags import BEST_METRICS


# In-memory training data up to this size (per copy) is placed on every replica's device;
# larger data is gathered on the host and only batches cross to the devices.
DEVICE_COPY_LIMIT = 2 * 1024**3

# An eval still running after this many seconds logs that it has started.
_EVAL_NOTICE_SECONDS = 3.0

# --jit_compile=auto: model families whose whole inner loop ran faster under XLA on a CPU
# (steady examples/s, XLA loop vs graph): MLP 1x50 1.2x, 1x500 1.3x, 5x500 with dropout
# 1.15x. Convolutions ran slower (tutorial CNN 0.06x as a loop, 0.4x as a step): XLA:CPU's
# convolution gradients are far slower than oneDNN's, 20-30x inside a loop (README,
# Performance, "XLA where it measured faster"). Not compiled.
XLA_FASTER = ("mlp",)


def jit_mode(config: Config, replicas: int, pipeline: str) -> tuple[str, str]:
  """What --jit_compile means for this run: (loop, step, forward_backward or off, why).
  Raises ConfigError where the mode asked for cannot be compiled."""
  asked = config.jit_compile
  # Under N replicas, Keras's optimizer update reads every replica's variables on its own
  # device inside one merge (XLA cannot place a computation on several devices), and
  # tf.data iterators cannot be read inside an XLA computation.
  if asked == "loop" and (replicas > 1 or pipeline != "in_memory"):
    raise ConfigError(f"--jit_compile=loop needs one replica and --pipeline=in_memory (this "
                      f"run: {replicas} replica(s), {pipeline}): use --jit_compile=step")
  if asked == "loop" and config.augment.resized_crop:
    raise ConfigError("--jit_compile=loop cannot compile --augment's resized_crop (XLA has no "
                      "CropAndResize): use --jit_compile=step")
  if asked == "step":
    if replicas > 1:
      return "forward_backward", ("--jit_compile=step: the forward and backward pass of each "
                                  "replica (the cross-replica optimizer update stays outside)")
    return "step", "--jit_compile=step: each training step"
  if asked != "auto":
    return asked, f"--jit_compile={asked}"
  if config.model not in XLA_FASTER:
    return "off", f"auto: {config.model} ran slower under XLA on CPU"
  if replicas > 1 or pipeline != "in_memory":
    return "off", (f"auto: XLA over the whole loop needs one replica and in-memory data "
                   f"({replicas} replica(s), {pipeline})")
  if config.augment.resized_crop:
    return "off", "auto: XLA has no CropAndResize (--augment's resized_crop)"
  return "loop", f"auto: {config.model} ran faster under XLA"


def _distribute(strategy, dataset):
  options = tf.data.Options()
  # In-memory data has no files to shard by; shard by batch across workers.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return strategy.experimental_distribute_dataset(dataset.with_options(options))


class Trainer:
  """Builds model, optimizer, metrics and checkpoint under the strategy's scope."""

  def __init__(self, config: Config, strategy: tf.distribute.Strategy, data: Data,
               output_dir: str | None = None, restore: bool | str = True):
    """output_dir: where this worker saves checkpoints (default model_dir; a non-chief
    worker of a cluster passes a scratch directory). restore: True restores the latest
    checkpoint of model_dir, a path that checkpoint, False nothing."""
    self.config, self.strategy, self.data = config, strategy, data
    self.steps_per_epoch, self.total_steps = config.steps_for(len(data.splits["train"]))
    # Examples per step: the global batch times --accumulation_steps (micro-batches).
    self.step_batch = config.step_batch
    # How training reads its data: in_memory, tf_data or stream (chosen by input_pipeline).
    self.pipeline = data.pipeline
    self.replicas = strategy.num_replicas_in_sync
    with strategy.scope():
      hparams = dict(config.model_hparams)
      if "sync_batch_norm" in models.hyperparameters(config.model):
        # Per-replica statistics would differ per replica and from one device's: global
        # batch statistics by default whenever there are several replicas.
        hparams.setdefault("sync_batch_norm", self.replicas > 1)
        logging.info("batch norm statistics: %s", "synchronized over the global batch"
                     if hparams["sync_batch_norm"] else "per replica")
      def create_model():
        return models.create(config.model, num_classes=data.info.num_classes,
                             image_shape=data.info.image_shape,
                             precision=config.mixed_precision, **hparams)
      try:
        self.model = create_model()
      except InputTooSmall as e:
        raise ConfigError(f"{e}: use a larger --image_size, or smaller --kernel_sizes") from None
      # Kept apart from optimizer.iterations, which does not advance on a skipped fp16 step.
      self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.progress = Progress()
      self.schedule = optimization.Schedule.of(config, self.total_steps)
      self.learning_rate = self.schedule.rate_fn(self.global_step, self.progress.lr_factor)
      self.optimizer = optimization.create_optimizer(config, self.learning_rate)
      # Built eagerly: a lazily built Adam fails inside strategy.run (keras issue 23085).
      self.optimizer.build(self.model.trainable_variables)
      self.train_loss = keras.metrics.Mean("loss")
      self.train_accuracy = keras.metrics.SparseCategoricalAccuracy("accuracy")
      self.eval_loss = keras.metrics.Mean("loss")
      self.eval_accuracy = keras.metrics.SparseCategoricalAccuracy("accuracy")
      # --ema_decay: the average lives in a second model's weights, which evals and the
      # export use; it is checkpointed beside the model (made after it: the model's own
      # initialization does not change with the flag).
      self.ema = (ema.EMA(self.model, create_model(), config.ema_decay, strategy)
                  if config.ema_decay else None)
      # The average is optional: a run that had none may turn it on (--ema_decay with
      # --allow_changed_flags); it then starts from the restored weights (restore).
      optional = {"progress": self.progress, **({"ema": self.ema.model} if self.ema else {})}
      self.checkpoints = checkpoints.Checkpoints(
          config.model_dir, config.keep_checkpoints, save_dir=output_dir,
          optional=optional, model=self.model, optimizer=self.optimizer,
          global_step=self.global_step)
    self._fp16 = config.mixed_precision == "mixed_float16"
    self._eval_datasets = {}  # split -> distributed dataset, built once: no retracing
    self.eval_seconds = 0.0  # all eval passes of this process (results.json's phases)
    self._evaluations: dict[tuple[str, bool], Evaluation] = {}  # (split, raw) -> the latest
    if restore:
      self.restore(restore if isinstance(restore, str) else None)
    self.jit, reason = jit_mode(config, self.replicas, self.pipeline)
    logging.info("XLA: %s (%s)", {"off": "off", "loop": "the whole inner loop",
                                  "step": "each training step",
                                  "forward_backward": "the forward and backward pass"}[self.jit],
                 reason)
    if self.jit == "step":
      self._train_step = tf.function(self._train_step, jit_compile=True)
    self._train_loop = tf.function(self._train_loop_fn)
    if self.pipeline == "in_memory":
      self._in_memory = InMemoryData(data.splits["train"], config.augment)
      self._tables = self._place_tables()
      # One trace (and one XLA compilation) for every loop length: windows are padded to
      # steps_per_loop rows and `steps` says how many run (a loop never runs more).
      self._in_memory_loop = tf.function(self._in_memory_loop_fn, input_signature=[
          tf.TensorSpec([config.steps_per_loop, self.step_batch], tf.int32),
          tf.TensorSpec([], tf.int32)], jit_compile=self.jit == "loop")
    self._eval_pass = tf.function(self._eval_pass_fn)
    self._mix = Mix(config.mixup, config.cutmix, config.mix_probability)

  @property
  def eval_model(self) -> keras.Model:
    """The weights evals and the export use: the EMA's with --ema_decay, else the model's."""
    return self.ema.model if self.ema else self.model

  def _place_tables(self):
    """A copy of the in-memory training data on every replica's device, where each replica
    gathers its batches (None: too large for that; then gathered on the host)."""
    if self._in_memory.nbytes > DEVICE_COPY_LIMIT:
      logging.info("in-memory data: %.1f GB, gathered on the host (a copy per device above "
                   "%.1f GB each)", self._in_memory.nbytes / 1e9, DEVICE_COPY_LIMIT / 1e9)
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
                 self._in_memory.nbytes / 1e6, len(devices))
    return tuple(on_device(t) for t in self._in_memory.tables)

  # --- inside tf.function -------------------------------------------------------------

  def _forward_backward(self, images, labels, targets):
    # Each replica draws its own part of the global batch's dropout masks (Keras's seed
    # state is the same on every replica, which would repeat one mask on all of them).
    shard = tf.distribute.get_replica_context().replica_id_in_sync_group
    with tf.GradientTape() as tape, batch_shard(shard):
      logits = self.model(images, training=True)
      if targets is None:
        per_example = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                   from_logits=True)
      else:  # smoothed or mixed
        per_example = keras.losses.categorical_crossentropy(targets, logits, from_logits=True)
      # Average over the GLOBAL batch of the step (all micro-batches): summed over replicas
      # and micro-batches this is the step's batch mean.
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.step_batch)
      regularization = tf.constant(0.0)
      if self.model.losses:
        regularization = tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses])
        # Added once per replica and micro-batch: scaled by 1/(replicas x micro-batches).
        loss += tf.nn.scale_regularization_loss(regularization) / self.config.accumulation_steps
      scaled = self.optimizer.scale_loss(loss) if self._fp16 else loss
    grads = tape.gradient(scaled, self.model.trainable_variables)
    return logits, per_example, regularization, grads

  def _targets(self, images, labels):
    """Label smoothing and Mixup/CutMix: the (mixed) images and soft targets, or the
    images and None (the sparse loss) when neither is on."""
    if not (self.config.label_smoothing or self.config.mixing):
      return images, None
    targets = smooth(tf.one_hot(labels, self.data.info.num_classes),
                     self.config.label_smoothing)
    if self.config.mixing:
      # On this replica's whole batch (before any micro-batching): with accumulation the
      # step mixes as one step on the whole batch would.
      seed = tf.random.experimental.stateless_fold_in(
          self._augment_seed(self.global_step.read_value()), 4)
      images, targets = mix_batch(images, targets, self._mix, seed)
    return images, targets

  def _gradients(self, images, labels):
    """The step's gradients, summed over --accumulation_steps micro-batches of this
    replica's batch; the train metrics are updated for each micro-batch."""
    images, targets = self._targets(images, labels)
    forward_backward = self._forward_backward
    if self.jit == "forward_backward":
      forward_backward = tf.function(self._forward_backward, jit_compile=True)

    def micro_batch(images, labels, targets):
      logits, per_example, reg, grads = forward_backward(images, labels, targets)
      # Per-example losses: the Mean metric over all replicas is the global mean. Accuracy
      # counts each example's own label (also when mixed).
      self.train_loss.update_state(per_example + reg)
      self.train_accuracy.update_state(labels, logits)
      return [tf.convert_to_tensor(g) for g in grads]

    k = self.config.accumulation_steps
    if k == 1:
      return micro_batch(images, labels, targets)
    # [k, micro-batch, ...]: indexed by the loop counter each keeps a static shape (XLA
    # needs one for dropout's random draws; a slice at i * size would not have it).
    split = lambda t: tf.reshape(t, [k, -1, *t.shape[1:]])
    images, labels = split(images), split(labels)
    targets = None if targets is None else split(targets)
    grads = [tf.zeros(v.shape, v.dtype) for v in self.model.trainable_variables]
    for i in tf.range(k):
      more = micro_batch(images[i], labels[i], None if targets is None else targets[i])
      # An overflow in any micro-batch makes the sum non-finite: the whole step is skipped.
      grads = [a + b for a, b in zip(grads, more)]
    return grads

  def _train_step(self, images, labels):
    grads = self._gradients(images, labels)
    ctx = tf.distribute.get_replica_context()
    if self.config.clip_norm:
      # Keras's clipnorm clips each replica's gradient before its all-reduce: wrong under N
      # replicas. Reduce here (once: the optimizer does not reduce again, optimization.py)
      # and clip the global gradient.
      grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
      norm = self.config.clip_norm
      if self._fp16:
        norm = norm * self.optimizer.dynamic_scale  # clip the scaled gradient equivalently
      grads, _ = tf.clip_by_global_norm(grads, norm)
    elif self._fp16 and self.replicas > 1:
      # LossScaleOptimizer checks finiteness on local gradients only: if one replica
      # overflows, the others would apply. Agree: any replica non-finite -> all skip.
      local_bad = 1.0 - tf.cast(tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                               for g in grads]), tf.float32)
      any_bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_bad) > 0
      poison = tf.where(any_bad, float("nan"), 1.0)
      grads = [g * tf.cast(poison, g.dtype) for g in grads]
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))

  def _run_step(self, step_fn, args):
    """One training step on every replica (cross-replica context), then the EMA's update
    if the optimizer applied the step (a skipped fp16 step does not move it)."""
    applied_before = self._applied_steps() if self.ema else None
    self.strategy.run(step_fn, args=args)
    self.global_step.assign_add(1)
    if self.ema:
      applied = self._applied_steps()
      self.ema.update(applied > applied_before, applied)

  def _applied_steps(self):
    # The optimizer's own count: it does not advance on a skipped fp16 step.
    return self.optimizer.iterations.value.read_value()

  def _train_loop_fn(self, iterator, steps):
    for _ in tf.range(steps):
      self._run_step(self._uint8_step, next(iterator))

  def _augment_seed(self, step):
    """This replica's augmentation seed at a step (preprocess.augment_seed)."""
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return augment_seed(self.config.seed, replica, step)

  def _uint8_step(self, images, labels):
    """A step on a tf.data batch (tf_data, stream): uint8 crosses to the device (a quarter
    of float32's bytes), normalized and augmented here, each replica's part with its own
    seed, as the in-memory pipeline does (the same batches, whichever pipeline)."""
    images = normalize(images)
    if self.config.augment.enabled:
      images = augment_batch(images, self.config.augment,
                             self._augment_seed(self.global_step.read_value()))
    self._train_step(images, labels)

  def _in_memory_loop_fn(self, indices, steps):
    # A `while`, not `for i in tf.range(steps)`: in an XLA context autograph gives the
    # latter maximum_iterations=steps, which XLA needs as a compile-time constant, so each
    # new loop length (the last, shorter loop) compiled the whole loop again.
    i = tf.constant(0)
    while i < steps:
      # Each replica receives its own device's copy of the tables (_place_tables).
      self._run_step(self._in_memory_step,
                     (indices[i], self.global_step.read_value(), self._tables))
      i += 1

  def _in_memory_step(self, indices, step, tables):
    # Each replica gathers its own slice of the global batch inside the graph.
    ctx = tf.distribute.get_replica_context()
    per_replica = self.step_batch // ctx.num_replicas_in_sync
    mine = indices[ctx.replica_id_in_sync_group * per_replica:
                   (ctx.replica_id_in_sync_group + 1) * per_replica]
    self._train_step(*self._in_memory.batch(mine, self._augment_seed(step), tables))

  def _eval_step(self, model, images, labels, weights, index):
    if images.dtype == tf.uint8:  # a stream's batch: normalized on the device
      images = normalize(images)
    logits = model(images, training=False)
    per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    self.eval_loss.update_state(per_example, sample_weight=weights)
    self.eval_accuracy.update_state(labels, logits, sample_weight=weights)
    return (tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(per_example, tf.float32),
            index, labels)

  def _eval_pass_fn(self, dataset, model):
    # Per-example predictions and losses for the confusion matrix and the worst mistakes,
    # gathered from every replica (and worker) with the example index that orders them.
    def array(dtype):
      return tf.TensorArray(dtype, size=0, dynamic_size=True, infer_shape=False)
    # Separate loop variables: autograph cannot carry a list of TensorArrays.
    predictions, losses, index = array(tf.int32), array(tf.float32), array(tf.int32)
    labels = array(tf.int32)
    i = 0
    for batch in dataset:
      p, l, x, y = self.strategy.run(self._eval_step, args=(model, *batch))
      predictions = predictions.write(i, self.strategy.gather(p, axis=0))
      losses = losses.write(i, self.strategy.gather(l, axis=0))
      index = index.write(i, self.strategy.gather(x, axis=0))
      labels = labels.write(i, self.strategy.gather(y, axis=0))
      i += 1
    return predictions.concat(), losses.concat(), index.concat(), labels.concat()

  # --- Python, between loops ----------------------------------------------------------

  def evaluate(self, split: str, raw: bool = False) -> Evaluation:
    """Loss and accuracy over the whole split, each example exactly once, and each
    example's prediction, with the eval weights (raw: the model's own, not the EMA's).
    Cached per (split, global step): the weights only change with it."""
    step = self.step
    raw = raw or not self.ema
    cached = self._evaluations.get((split, raw))
    if cached is not None and cached.step == step:
      return cached
    for metric in (self.eval_loss, self.eval_accuracy):
      metric.reset_state()
    eval_start = time.perf_counter()  # with the first eval's dataset building and tracing
    if split not in self._eval_datasets:
      data = self.data.splits[split]
      make = eval_stream if isinstance(data, StreamSplit) else input_pipeline.eval_dataset
      dataset = make(data, global_batch_size=self.config.batch_size)
      self._eval_datasets[split] = _distribute(self.strategy, dataset)
    n = len(self.data.splits[split])
    # Minutes of silence look like a hang: say so when an eval runs longer than a few seconds.
    notice = threading.Timer(_EVAL_NOTICE_SECONDS, logging.info, args=(
        "evaluating %d %s examples at step %d ...", n, split, step))
    notice.daemon = True
    notice.start()
    try:
      start = time.perf_counter()
      predictions, losses, index, labels = (
          t.numpy() for t in self._eval_pass(self._eval_datasets[split],
                                             self.model if raw else self.ema.model))
    finally:
      notice.cancel()
    # Back into example order (replicas and workers return their slices in any order).
    keep = index >= 0
    order = np.argsort(index[keep], kind="stable")
    result = Evaluation(split=split, step=step, loss=float(self.eval_loss.result()),
                        accuracy=float(self.eval_accuracy.result()),
                        predictions=predictions[keep][order], losses=losses[keep][order],
                        seconds=time.perf_counter() - start, labels=labels[keep][order])
    self.eval_seconds += time.perf_counter() - eval_start
    self._evaluations[(split, raw)] = result
    return result

  def restore(self, checkpoint: str | None = None) -> str | None:
    """Restores `checkpoint`, or else model_dir's latest readable one; None if there is none."""
    with self.strategy.scope():
      path = self.checkpoints.restore(checkpoint)
      if path and self.ema and not self.checkpoints.holds(path, "ema"):
        self.ema.restart()
        logging.info("%s holds no weight average (the run had no --ema_decay): the average "
                     "starts from its weights", path)
    self._evaluations.clear()
    return path

  def recover(self, bad_step: int) -> int | None:
    """After a blow-up seen at `bad_step`: restores the last good checkpoint and moves the
    data stream past the batches since it (the window that held the trouble). Returns the
    restored step, None without a checkpoint to go back to."""
    recoveries = int(self.progress.recoveries.numpy())
    skipped = int(self.progress.skipped_steps.numpy())
    if not self.checkpoints.candidates():
      return None
    self.restore()  # also restores progress as it was then: the counts are set again below
    good = self.step
    self.progress.recoveries.assign(recoveries + 1)
    self.progress.skipped_steps.assign(skipped + bad_step - good)
    return good

  def train_iterator(self):
    """The train stream from the current global step (resumes the data order): example
    indices for the in-memory pipeline, else a distributed tf.data iterator."""
    position = self.step + int(self.progress.skipped_steps.numpy())
    if self.pipeline == "stream":
      def worker_stream(ctx: tf.distribute.InputContext):
        # Each worker (input pipeline) reads and decodes only its replicas' examples.
        if ctx.num_input_pipelines > 1:
          logging.info("input pipeline %d of %d: reads its %d examples of each global batch",
                       ctx.input_pipeline_id + 1, ctx.num_input_pipelines,
                       self.step_batch // ctx.num_input_pipelines)
        return train_stream(self.data.splits["train"], global_batch_size=self.step_batch,
                            seed=self.config.seed, start_step=position,
                            pipeline=ctx.input_pipeline_id, pipelines=ctx.num_input_pipelines,
                            batch_size=ctx.get_per_replica_batch_size(self.step_batch))
      return iter(self.strategy.distribute_datasets_from_function(worker_stream))
    if self.pipeline == "in_memory":
      return IndexStream(len(self.data.splits["train"]), self.step_batch,
                         self.config.seed, start_step=position)
    dataset = input_pipeline.train_dataset(
        self.data.splits["train"], global_batch_size=self.step_batch,
        seed=self.config.seed, start_step=position)
    return iter(_distribute(self.strategy, dataset))

  def run_steps(self, iterator, steps: int) -> dict[str, float]:
    """Runs `steps` training steps in one tf.function call (in-memory data: one per
    steps_per_loop); returns their global loss and accuracy (read once, at the end)."""
    if isinstance(iterator, IndexStream):
      for start in range(0, steps, self.config.steps_per_loop):
        n = min(self.config.steps_per_loop, steps - start)
        window = np.zeros((self.config.steps_per_loop, self.step_batch), np.int32)
        window[:n] = iterator.take(n)
        self._in_memory_loop(tf.constant(window), tf.constant(n, tf.int32))
    else:
      self._train_loop(iterator, tf.constant(steps, tf.int64))
    result = {"loss": float(self.train_loss.result()),
              "accuracy": float(self.train_accuracy.result())}
    for metric in (self.train_loss, self.train_accuracy):
      metric.reset_state()
    return result

  @property
  def step(self) -> int:
    return int(self.global_step.numpy())

  @property
  def loss_scale(self) -> float | None:
    """The fp16 dynamic loss scale, None without loss scaling."""
    return float(self.optimizer.dynamic_scale.numpy()) if self._fp16 else None

  def weights_digest(self) -> str:
    """A short hash of all model weights: equal digests, bitwise equal models."""
    digest = hashlib.sha256()
    for weight in self.model.weights + (self.ema.model.weights if self.ema else []):
      digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]

  @property
  def eval_interval(self) -> int:
    return self.config.eval_every or self.steps_per_epoch

  @property
  def checkpoint_interval(self) -> int:
    return self.config.checkpoint_every or self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One eval pass: global loss and accuracy, and per example (in split order) the
  predicted class and the loss."""
  split: str
  step: int
  loss: float
  accuracy: float
  predictions: np.ndarray
  losses: np.ndarray
  seconds: float
  labels: np.ndarray | None = None

  def metrics(self, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}loss": self.loss, f"{prefix}accuracy": self.accuracy}


class Progress(tf.Module):
  """Outer-loop state that a resume must keep (checkpointed beside the model): the best
  eval metric so far, its step, evals since it improved, an early stop, divergence
  recoveries, and the plateau schedule's cuts."""

  def __init__(self):
    super().__init__(name="progress")
    # --lr_schedule=plateau: the factor on the learning rate so far, and evals since the
    # best eval metric improved or the rate was last cut.
    self.lr_factor = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="lr_factor")
    self.plateau_evals = tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_evals")
    # What best_value measures: an index into BEST_METRICS, -1 before any is tracked (or
    # in checkpoints older than it). --keep_best may change on a rerun, and a best loss
    # is no best accuracy: see `track`.
    self.best_metric = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_metric")
    self.best_value = tf.Variable(np.nan, dtype=tf.float64, trainable=False, name="best_value")
    self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
    self.evals_since_best = tf.Variable(0, dtype=tf.int64, trainable=False,
                                        name="evals_since_best")
    self.stopped_early_at = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                        name="stopped_early_at")
    # The step whose boundary a signal cut short (only its checkpoint ran): its eval, best
    # and pictures run on resume (trainer/controller.py). -1: none.
    self.interrupted_at = tf.Variable(-1, dtype=tf.int64, trainable=False,
                                      name="interrupted_at")
    # Divergence recovery (--divergence_retries): how many, and the training steps of data
    # skipped past, so that a resume reads the data where the recovered run did.
    self.recoveries = tf.Variable(0, dtype=tf.int64, trainable=False, name="recoveries")
    self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")

  def best(self) -> tuple[str, float, int] | None:
    """(metric, value, step) of the best eval so far; None before the first."""
    index = int(self.best_metric.numpy())
    if index < 0 or np.isnan(self.best_value.numpy()):
      return None
    return BEST_METRICS[index], float(self.best_value.numpy()), int(self.best_step.numpy())

  def track(self, metric: str) -> str | None:
    """Makes `metric` the one the best, the evals since it and the plateau count are of.
    When they were of another metric, they start again; returns which, else None. A
    checkpoint older than best_metric (-1 with a best) keeps its best as this metric's,
    as the code that wrote it compared it (its early stop and best/ stay as they were)."""
    index = BEST_METRICS.index(metric)
    before = int(self.best_metric.numpy())
    self.best_metric.assign(index)
    if before in (index, -1):
      return None
    self.best_value.assign(np.nan)
    self.best_step.assign(-1)
    self.evals_since_best.assign(0)
    self.plateau_evals.assign(0)
    return BEST_METRICS[before]
