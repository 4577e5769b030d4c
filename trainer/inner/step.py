"""One training step on a batch, inside tf.function: the forward and backward pass, gradient
accumulation, clipping after the all-reduce, fp16 overflow agreement across replicas, the
optimizer's update and the weight average's; and the loop that runs N of them in one call.

The step does only the math: its feed (feeds.py) hands each replica its batch ready for the
loss (normalized, augmented, mixed, with soft targets when smoothed or mixed)."""

from __future__ import annotations

import keras
import tensorflow as tf

from models.common import batch_shard
from trainer.inner.feeds import Feed
from trainer.inner.state import TrainState
from trainer.options.config import Config


class TrainStep:
  """`replica(images, labels, targets)` runs in each replica (this replica's part of the
  global batch, ready for the loss; targets None: the sparse loss on the labels);
  `run(replica_fn, args)` runs one step on every replica from the cross-replica context.
  jit: the XLA mode (planning.py)."""

  def __init__(self, config: Config, state: TrainState, jit: str):
    self.config, self.state = config, state
    self.step_batch = config.step_batch
    self._fp16 = state.precision == "mixed_float16"
    with state.strategy.scope():
      self.loss = keras.metrics.Mean("loss")
      self.accuracy = keras.metrics.SparseCategoricalAccuracy("accuracy")
    self.jit = jit
    self.retrace()

  def retrace(self) -> None:
    """New functions over the model's trainable variables and the state's optimizer, as
    they are now (after --unfreeze_at_epoch changed them, TrainState.enter_stage_of)."""
    self.forward_backward = self._forward_backward
    if self.jit == "forward_backward":
      self.forward_backward = tf.function(self._forward_backward, jit_compile=True)
    self.replica = (tf.function(self._replica, jit_compile=True) if self.jit == "step"
                    else self._replica)
    self._multipliers = rate_multipliers(self.state.model, self.config.bn_lr_multiplier)

  def _forward_backward(self, images, labels, targets):
    model, optimizer = self.state.model, self.state.optimizer
    # Each replica draws its own part of the global batch's dropout masks (Keras's seed
    # state is the same on every replica, which would repeat one mask on all of them).
    shard = tf.distribute.get_replica_context().replica_id_in_sync_group
    with tf.GradientTape() as tape, batch_shard(shard):
      logits = model(images, training=True)
      if targets is None:
        per_example = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                   from_logits=True)
      else:  # smoothed or mixed
        per_example = keras.losses.categorical_crossentropy(targets, logits, from_logits=True)
      # Average over the GLOBAL batch of the step (all micro-batches): summed over replicas
      # and micro-batches this is the step's batch mean.
      loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.step_batch)
      regularization = tf.constant(0.0)
      if model.losses:
        regularization = tf.add_n([tf.cast(l, tf.float32) for l in model.losses])
        # Added once per replica and micro-batch: scaled by 1/(replicas x micro-batches).
        loss += tf.nn.scale_regularization_loss(regularization) / self.config.accumulation_steps
      scaled = optimizer.scale_loss(loss) if self._fp16 else loss
    grads = tape.gradient(scaled, model.trainable_variables)
    return logits, per_example, regularization, grads

  def _gradients(self, images, labels, targets):
    """The step's gradients, summed over --accumulation_steps micro-batches of this
    replica's batch; the train metrics are updated for each micro-batch."""

    def micro_batch(images, labels, targets):
      logits, per_example, reg, grads = self.forward_backward(images, labels, targets)
      # Per-example losses: the Mean metric over all replicas is the global mean. Accuracy
      # counts each example's own label (also when mixed).
      self.loss.update_state(per_example + reg)
      self.accuracy.update_state(labels, logits)
      return [tf.convert_to_tensor(g) for g in grads]

    k = self.config.accumulation_steps
    if k == 1:
      return micro_batch(images, labels, targets)
    # [k, micro-batch, ...]: indexed by the loop counter each keeps a static shape (XLA
    # needs one for dropout's random draws; a slice at i * size would not have it).
    split = lambda t: tf.reshape(t, [k, -1, *t.shape[1:]])
    images, labels = split(images), split(labels)
    targets = None if targets is None else split(targets)
    grads = [tf.zeros(v.shape, v.dtype) for v in self.state.model.trainable_variables]
    for i in tf.range(k):
      more = micro_batch(images[i], labels[i], None if targets is None else targets[i])
      # An overflow in any micro-batch makes the sum non-finite: the whole step is skipped.
      grads = [a + b for a, b in zip(grads, more)]
    return grads

  def _replica(self, images, labels, targets):
    grads = self._gradients(images, labels, targets)
    ctx = tf.distribute.get_replica_context()
    optimizer = self.state.optimizer
    if self.config.clip_norm:
      # Keras's clipnorm clips each replica's gradient before its all-reduce: wrong under N
      # replicas. Reduce here (once: the optimizer does not reduce again, optimization.py)
      # and clip the global gradient.
      grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
      norm = self.config.clip_norm
      if self._fp16:
        norm = norm * optimizer.dynamic_scale  # clip the scaled gradient equivalently
      grads, _ = tf.clip_by_global_norm(grads, norm)
    elif self._fp16 and ctx.num_replicas_in_sync > 1:
      # LossScaleOptimizer checks finiteness on local gradients only: if one replica
      # overflows, the others would apply. Agree: any replica non-finite -> all skip.
      local_bad = 1.0 - tf.cast(tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                               for g in grads]), tf.float32)
      any_bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_bad) > 0
      poison = tf.where(any_bad, float("nan"), 1.0)
      grads = [g * tf.cast(poison, g.dtype) for g in grads]
    if self._multipliers:  # after clipping: a multiplier of the rate, not of the gradient
      grads = [g * m if m != 1 else g for g, m in zip(grads, self._multipliers)]
    optimizer.apply_gradients(zip(grads, self.state.model.trainable_variables))

  def run(self, replica_fn, args):
    """One training step on every replica (cross-replica context), then the EMA's update
    if the optimizer applied the step (a skipped fp16 step does not move it)."""
    state = self.state
    applied_before = self._applied_steps() if state.ema else None
    state.strategy.run(replica_fn, args=args)
    state.global_step.assign_add(1)
    if state.ema:
      applied = self._applied_steps()
      state.ema.update(applied > applied_before, applied)

  def _applied_steps(self):
    # The optimizer's own count: it does not advance on a skipped fp16 step.
    return self.state.optimizer.iterations.value.read_value()

  def metrics(self) -> dict[str, float]:
    """The global loss and accuracy since the last call (read once per loop)."""
    result = {"loss": float(self.loss.result()), "accuracy": float(self.accuracy.result())}
    for metric in (self.loss, self.accuracy):
      metric.reset_state()
    return result


class TrainLoop:
  """N training steps in one tf.function call: `loop(iterator, steps)` runs the step on
  every replica over the feed's batches from `iterator` (Feed.iterator), in one call per
  window the feed gives (Feed.windows). jit: XLA compiles the whole call (--jit_compile=
  loop). `function` is the tf.function of one call."""

  def __init__(self, step: TrainStep, feed: Feed, jit: bool = False):
    self.feed = feed
    global_step = step.state.global_step

    def replica(at, batch):
      step.replica(*feed.prepare(at, batch))

    def steps_in_one_call(window, steps):
      # A `while`, not `for i in tf.range(steps)`: in an XLA context autograph gives the
      # latter maximum_iterations=steps, which XLA needs as a compile-time constant; a
      # `while` keeps one program for every loop length.
      i = tf.constant(0)
      while i < steps:
        step.run(replica, (global_step.read_value(), feed.batch_at(window, i)))
        i += 1
    self.function = tf.function(steps_in_one_call, jit_compile=jit,
                                input_signature=feed.signature)

  def __call__(self, iterator, steps: int):
    for window, n in self.feed.windows(iterator, steps):
      self.function(window, tf.constant(n, tf.int32))


def rate_multipliers(model: keras.Model, batch_norm: float) -> list[float] | None:
  """Per trainable variable, the factor on its gradient that multiplies its learning rate
  under SGD (with or without momentum: the update is linear in the gradient): batch_norm
  for batch norm's scale and shift, else 1. None when all are 1."""
  if batch_norm == 1:
    return None
  norms = {id(v) for layer in model._flatten_layers()  # pylint: disable=protected-access
           if isinstance(layer, keras.layers.BatchNormalization)
           for v in layer.trainable_weights}
  return [batch_norm if id(v) in norms else 1.0 for v in model.trainable_variables]
