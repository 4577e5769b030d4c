"""Optimizer and learning-rate schedule, driven by tapeloop's own global step."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from trainer import fused_optimizers
from trainer.config import Config

# Decoupled weight decay applies to kernels only, as is usual: not to biases or norms.
_NO_DECAY = ["bias", "gamma", "beta", "moving_mean", "moving_variance"]


def learning_rate_fn(config: Config, total_steps: int, global_step: tf.Variable):
  """A callable for Keras: the rate at the current global step (not optimizer.iterations,
  which does not advance on skipped fp16 steps)."""
  peak, warmup = config.learning_rate, config.warmup_steps
  # The horizon is fixed when the run starts (run_record.py): extending a run to more
  # steps must not make the rate jump back up.
  decay_steps = max(1, (config.schedule_steps or total_steps) - warmup)

  def rate():
    step = tf.cast(global_step, tf.float32)
    progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
    if config.lr_schedule == "cosine":
      value = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif config.lr_schedule == "exponential":
      value = peak * tf.pow(config.lr_decay_rate, progress)
    else:
      value = tf.constant(peak, tf.float32)
    if warmup:
      value = tf.where(step < warmup, peak * (step + 1) / warmup, value)
    return value

  return rate


def create_optimizer(config: Config, learning_rate) -> keras.optimizers.Optimizer:
  kwargs = dict(learning_rate=learning_rate)
  if config.weight_decay:
    kwargs["weight_decay"] = config.weight_decay
  # Keras's optimizers with fused update kernels (fused_optimizers.py); RMSprop stays
  # Keras's: TensorFlow's fused RMSProp puts epsilon inside the square root.
  if config.optimizer == "sgd":
    opt = fused_optimizers.SGD(**kwargs)
  elif config.optimizer == "momentum":
    opt = fused_optimizers.SGD(momentum=config.momentum, **kwargs)
  elif config.optimizer == "adam":
    opt = fused_optimizers.Adam(**kwargs)
  elif config.optimizer == "adamw":  # config.py requires --weight_decay: never Keras's 0.004
    opt = fused_optimizers.AdamW(**kwargs)
  else:
    opt = keras.optimizers.RMSprop(**kwargs)
  if config.weight_decay:
    opt.exclude_from_weight_decay(var_names=_NO_DECAY)
  if config.clip_norm:
    # The train step all-reduces and clips the gradients itself (Keras's clipnorm clips
    # per replica); Keras's apply would all-reduce them a second time: twice the traffic.
    opt._all_reduce_sum_gradients = list  # pylint: disable=protected-access
  if config.mixed_precision == "mixed_float16":
    opt = keras.optimizers.LossScaleOptimizer(opt)
  return opt
