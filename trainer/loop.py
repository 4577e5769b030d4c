"""The Trainer: train and eval tf.functions under a strategy, and the outer Python loop.

One tf.function call runs `steps_per_loop` steps (a tf.range over strategy.run); logging,
summaries, eval and checkpoints happen in Python between calls, at loop boundaries.
"""

from __future__ import annotations

import hashlib
import os
import signal
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
from trainer import checkpoints, optimization, summaries
from trainer.config import Config


def _distribute(strategy, dataset):
  options = tf.data.Options()
  # In-memory data has no files to shard by; shard by batch across workers.
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return strategy.experimental_distribute_dataset(dataset.with_options(options))


class Trainer:
  """Builds model, optimizer, metrics and checkpoint under the strategy's scope."""

  def __init__(self, config: Config, strategy: tf.distribute.Strategy, data: Data,
               output_dir: str | None = None):
    """output_dir: where this worker saves checkpoints (default model_dir; a non-chief
    worker of a cluster passes a scratch directory). It restores from model_dir."""
    self.config, self.strategy, self.data = config, strategy, data
    self.steps_per_epoch, self.total_steps = config.steps_for(len(data.splits["train"]))
    self.replicas = strategy.num_replicas_in_sync
    with strategy.scope():
      self.model = models.create(config.model, num_classes=data.info.num_classes,
                                 image_shape=data.info.image_shape,
                                 precision=config.mixed_precision, **config.model_hparams)
      # Kept apart from optimizer.iterations, which does not advance on a skipped fp16 step.
      self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.learning_rate = optimization.learning_rate_fn(config, self.total_steps,
                                                         self.global_step)
      self.optimizer = optimization.create_optimizer(config, self.learning_rate)
      # Built eagerly: a lazily built Adam fails inside strategy.run (keras issue 23085).
      self.optimizer.build(self.model.trainable_variables)
      self.train_loss = keras.metrics.Mean("loss")
      self.train_accuracy = keras.metrics.SparseCategoricalAccuracy("accuracy")
      self.eval_loss = keras.metrics.Mean("loss")
      self.eval_accuracy = keras.metrics.SparseCategoricalAccuracy("accuracy")
      self.checkpoints = checkpoints.Checkpoints(
          config.model_dir, config.keep_checkpoints, save_dir=output_dir,
          model=self.model, optimizer=self.optimizer, global_step=self.global_step)
      self.checkpoints.restore_latest()
    self._fp16 = config.mixed_precision == "mixed_float16"
    self._eval_datasets = {}  # split -> distributed dataset, built once: no retracing
    self._train_loop = tf.function(self._train_loop_fn)
    if config.pipeline == "in_memory":
      self._in_memory = InMemoryData(data.splits["train"], config.augment)
      # The index window's length varies at eval/checkpoint boundaries: one trace for all.
      self._in_memory_loop = tf.function(self._in_memory_loop_fn, input_signature=[
          tf.TensorSpec([None, config.batch_size], tf.int32)])
    self._eval_pass = tf.function(self._eval_pass_fn)

  # --- inside tf.function -------------------------------------------------------------

  def _forward_backward(self, images, labels):
    with tf.GradientTape() as tape:
      logits = self.model(images, training=True)
      per_example = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                 from_logits=True)
      # Average over the GLOBAL batch: summed over replicas this is the batch mean.
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.config.batch_size)
      regularization = tf.constant(0.0)
      if self.model.losses:
        regularization = tf.add_n([tf.cast(l, tf.float32) for l in self.model.losses])
        # Added once per replica, so scaled by 1/replicas.
        loss += tf.nn.scale_regularization_loss(regularization)
      scaled = self.optimizer.scale_loss(loss) if self._fp16 else loss
    grads = tape.gradient(scaled, self.model.trainable_variables)
    return logits, per_example, regularization, grads

  def _train_step(self, images, labels):
    if self.config.jit_compile:
      logits, per_example, reg, grads = tf.function(self._forward_backward, jit_compile=True)(
          images, labels)
    else:
      logits, per_example, reg, grads = self._forward_backward(images, labels)
    ctx = tf.distribute.get_replica_context()
    if self.config.clip_norm:
      # Keras's clipnorm clips each replica's gradient before its all-reduce: wrong under N
      # replicas. Reduce here, clip the global gradient, then hand Keras 1/N of it because
      # apply_gradients sums across replicas again.
      grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
      norm = self.config.clip_norm
      if self._fp16:
        norm = norm * self.optimizer.dynamic_scale  # clip the scaled gradient equivalently
      grads, _ = tf.clip_by_global_norm(grads, norm)
      grads = [g / self.replicas for g in grads]
    elif self._fp16 and self.replicas > 1:
      # LossScaleOptimizer checks finiteness on local gradients only: if one replica
      # overflows, the others would apply. Agree: any replica non-finite -> all skip.
      local_bad = 1.0 - tf.cast(tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                               for g in grads]), tf.float32)
      any_bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_bad) > 0
      poison = tf.where(any_bad, float("nan"), 1.0)
      grads = [g * tf.cast(poison, g.dtype) for g in grads]
    self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
    # Per-example losses: the Mean metric over all replicas is the global mean.
    self.train_loss.update_state(per_example + reg)
    self.train_accuracy.update_state(labels, logits)

  def _train_loop_fn(self, iterator, steps):
    for _ in tf.range(steps):
      self.strategy.run(self._train_step, args=next(iterator))
      self.global_step.assign_add(1)

  def _in_memory_loop_fn(self, indices):
    for i in tf.range(tf.shape(indices)[0]):
      self.strategy.run(self._in_memory_step, args=(indices[i], self.global_step.read_value()))
      self.global_step.assign_add(1)

  def _in_memory_step(self, indices, step):
    # Each replica gathers its own slice of the global batch inside the graph.
    ctx = tf.distribute.get_replica_context()
    per_replica = self.config.batch_size // ctx.num_replicas_in_sync
    mine = indices[ctx.replica_id_in_sync_group * per_replica:
                   (ctx.replica_id_in_sync_group + 1) * per_replica]
    seed = tf.stack([tf.cast(self.config.seed, tf.int64) * 1_000_003
                     + tf.cast(ctx.replica_id_in_sync_group, tf.int64), step])
    self._train_step(*self._in_memory.batch(mine, seed))

  def _eval_step(self, images, labels, weights):
    logits = self.model(images, training=False)
    per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    self.eval_loss.update_state(per_example, sample_weight=weights)
    self.eval_accuracy.update_state(labels, logits, sample_weight=weights)

  def _eval_pass_fn(self, dataset):
    for batch in dataset:
      self.strategy.run(self._eval_step, args=batch)

  # --- Python, between loops ----------------------------------------------------------

  def evaluate(self, split: str) -> dict[str, float]:
    """Loss and accuracy over the whole split, each example exactly once."""
    for metric in (self.eval_loss, self.eval_accuracy):
      metric.reset_state()
    if split not in self._eval_datasets:
      dataset = input_pipeline.eval_dataset(self.data.splits[split],
                                            global_batch_size=self.config.batch_size)
      self._eval_datasets[split] = _distribute(self.strategy, dataset)
    self._eval_pass(self._eval_datasets[split])
    return {"loss": float(self.eval_loss.result()),
            "accuracy": float(self.eval_accuracy.result())}

  def train_iterator(self):
    """The train stream from the current global step (resumes the data order): example
    indices for the in-memory pipeline, else a distributed tf.data iterator."""
    if self.config.pipeline == "in_memory":
      return IndexStream(len(self.data.splits["train"]), self.config.batch_size,
                         self.config.seed, start_step=int(self.global_step.numpy()))
    dataset = input_pipeline.train_dataset(
        self.data.splits["train"], global_batch_size=self.config.batch_size,
        seed=self.config.seed, augment=self.config.augment,
        start_step=int(self.global_step.numpy()))
    return iter(_distribute(self.strategy, dataset))

  def run_steps(self, iterator, steps: int) -> dict[str, float]:
    """Runs `steps` training steps in one tf.function call; returns their global loss and
    accuracy (read once, at the loop boundary)."""
    if isinstance(iterator, IndexStream):
      self._in_memory_loop(tf.constant(iterator.take(steps)))
    else:
      self._train_loop(iterator, tf.constant(steps, tf.int64))
    result = {"loss": float(self.train_loss.result()),
              "accuracy": float(self.train_accuracy.result())}
    for metric in (self.train_loss, self.train_accuracy):
      metric.reset_state()
    return result

  def weights_digest(self) -> str:
    """A short hash of all model weights: equal digests, bitwise equal models."""
    digest = hashlib.sha256()
    for weight in self.model.weights:
      digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]

  def _next_stop(self, step: int) -> int:
    """The next step at which the inner loop must return: loop size, eval, checkpoint,
    profile start and end, end of training."""
    stops = [step + self.config.steps_per_loop, self.total_steps]
    stops += [s for s in (self.config.profile_steps or ()) if s > step]
    for every in (self.eval_interval, self.checkpoint_interval):
      stops.append((step // every + 1) * every)
    return min(stops)

  @property
  def eval_interval(self) -> int:
    return self.config.eval_every or self.steps_per_epoch

  @property
  def checkpoint_interval(self) -> int:
    return self.config.checkpoint_every or self.steps_per_epoch

  def train(self, writer: summaries.Summaries) -> dict:
    """Trains from the current global step to total_steps; returns timing figures.

    SIGTERM or SIGINT (a preempted VM, Ctrl-C) stops at the next loop boundary with a
    checkpoint (raises Interrupted); a non-finite loss or a collapsed fp16 loss scale
    stops before anything is saved (raises FloatingPointError).
    """
    step = int(self.global_step.numpy())
    if step >= self.total_steps:
      logging.info("already at step %d of %d: evaluating only", step, self.total_steps)
      return {"examples_per_sec": None, "train_seconds": 0.0, "compile_seconds": 0.0}
    with _StopOnSignals() as stop:
      return self._train_loops(writer, stop)

  def _train_loops(self, writer: summaries.Summaries, stop: _StopOnSignals) -> dict:
    cfg = self.config
    step = int(self.global_step.numpy())
    has_validation = "validation" in self.data.splits
    iterator = self.train_iterator()
    logging.info("training %s on %s from step %d to %d (%d steps/epoch, global batch %d)",
                 cfg.model, cfg.dataset, step, self.total_steps, self.steps_per_epoch,
                 cfg.batch_size)
    train_seconds = compile_seconds = 0.0
    steady_steps, first = 0, True
    profiler = _Profiler(cfg.profile_steps, os.path.join(cfg.model_dir, "profile"))
    while step < self.total_steps:
      n = self._next_stop(step) - step
      profiler.at(step)
      start = time.perf_counter()
      metrics = self.run_steps(iterator, n)
      loss, accuracy = metrics["loss"], metrics["accuracy"]
      elapsed = time.perf_counter() - start
      step += n
      if first:  # includes tracing and graph optimization
        compile_seconds, first = elapsed, False
      else:
        train_seconds += elapsed
        steady_steps += n
      rate = n * cfg.batch_size / elapsed
      steady_rate = (steady_steps * cfg.batch_size / train_seconds) if train_seconds else rate
      eta = (self.total_steps - step) * cfg.batch_size / steady_rate
      logging.info("step %d/%d  epoch %.2f  loss %.4f  accuracy %.4f  %.0f examples/s  ETA %s",
                   step, self.total_steps, step / self.steps_per_epoch, loss, accuracy, rate,
                   _duration(eta))
      self._check_diverged(step, loss)
      writer.scalars("train", step, {"loss": loss, "accuracy": accuracy,
                                     "learning_rate": float(self.learning_rate()),
                                     "examples_per_sec": rate})
      # The final step's validation eval is train_and_evaluate's, together with test.
      if has_validation and step % self.eval_interval == 0 and step < self.total_steps:
        result = self.evaluate("validation")
        logging.info("eval on validation at step %d: loss %.4f  accuracy %.4f", step,
                     result["loss"], result["accuracy"])
        writer.scalars("eval", step, result)
      saved = None
      if step % self.checkpoint_interval == 0 or step == self.total_steps or stop.signal:
        saved = self.checkpoints.save(step)
      if stop.signal and step < self.total_steps:
        raise Interrupted(stop.signal, step, saved)
    profiler.at(step)
    return {"examples_per_sec": (steady_steps * cfg.batch_size / train_seconds
                                 if train_seconds else rate),
            "train_seconds": train_seconds + compile_seconds,
            "compile_seconds": compile_seconds}

  def _check_diverged(self, step: int, loss: float) -> None:
    """Raises before anything is saved, so the last good checkpoint stays the latest."""
    if self._fp16:
      scale = float(self.optimizer.dynamic_scale.numpy())
      if scale < 1.0:  # halved on every skipped step: gradients overflow even unscaled
        raise FloatingPointError(f"the fp16 loss scale collapsed to {scale:g} at step {step}")
    if not np.isfinite(loss):
      raise FloatingPointError(f"the training loss is {loss} at step {step}")


class _Profiler:
  """Traces steps [A, B) into a TensorBoard profile (the Profile tab of model_dir)."""

  def __init__(self, steps, logdir: str):
    self.steps, self.logdir, self.running = steps, logdir, False

  def at(self, step: int) -> None:
    if not self.steps:
      return
    if not self.running and self.steps[0] <= step < self.steps[1]:
      tf.profiler.experimental.start(self.logdir)
      self.running = True
      logging.info("profiling steps %d to %d into %s", step, self.steps[1], self.logdir)
    elif self.running and step >= self.steps[1]:
      tf.profiler.experimental.stop()
      self.running = False


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint at `step`."""

  def __init__(self, signum: int, step: int, checkpoint: str | None):
    self.signum, self.step, self.checkpoint = signum, step, checkpoint
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint "
                     f"{checkpoint} saved: run the same command again to resume")


class _StopOnSignals:
  """SIGTERM/SIGINT set a flag that the loop reads at its next boundary. A Python signal
  handler cannot run while a tf.function executes anyway; this makes the stop clean."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now
    self.signal = signum
    logging.warning("received %s: saving a checkpoint and stopping at the end of this loop",
                    signal.Signals(signum).name)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

