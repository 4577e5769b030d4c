"""Optimizer and learning-rate schedule, driven by tapeloop's own global step."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import keras
import tensorflow as tf

from trainer.optim import fused_optimizers, muon
from trainer.options.config import Config
from trainer.process.errors import ConfigError

# Decoupled weight decay applies to kernels only, as is usual: not to biases or norms.
_NO_DECAY = ["bias", "gamma", "beta", "moving_mean", "moving_variance"]


# one_cycle without --warmup_steps warms up over this fraction of the schedule, from
# learning_rate / ONE_CYCLE_START_DIVISOR (torch's OneCycleLR defaults: 0.3 and 25).
ONE_CYCLE_WARMUP = 0.3
ONE_CYCLE_START_DIVISOR = 25.0
# A schedule ending below this fraction of its peak rate has decayed: an extension past
# its end would train at that rate and optimize nothing (run_record.check_extension).
NEGLIGIBLE = 1e-3
# The schedules a warm restart (--restart_learning_rate) can repeat over an extension:
# those that decay over a horizon. cosine and one_cycle restart as a cosine (no warm-up).
RESTARTABLE = ("cosine", "one_cycle", "exponential")


@dataclasses.dataclass(frozen=True)
class Restart:
  """A warm restart: from global step `step` to `end`, a new schedule of the run's shape
  from rate `peak` (--restart_learning_rate), recorded in flags.json (run_record.py).
  A run keeps every restart it was given: a later one takes over from its own step."""
  step: int
  end: int
  peak: float

  def as_record(self) -> dict:
    return {"step": self.step, "end": self.end, "learning_rate": self.peak}

  @classmethod
  def from_record(cls, record: dict) -> Restart:
    return cls(int(record["step"]), int(record["end"]), float(record["learning_rate"]))


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The learning rate at each global step, and where it ends: one home for the schedule's
  shape, so that what the run trains with and what a warning says of it cannot differ."""
  name: str
  peak: float
  floor: float  # cosine and one_cycle end here; plateau never goes below it
  decay_rate: float
  warmup: int
  horizon: int  # steps; fixed at the run's first start (run_record.py)
  boundaries: tuple[int, ...]
  restarts: tuple[Restart, ...] = ()  # the run's warm restarts, in order of their steps

  @classmethod
  def of(cls, config: Config, total_steps: int, horizon: int | None = None,
         restarts: tuple[Restart, ...] = ()) -> Schedule:
    """The schedule the flags ask for. horizon: the run's (planning.py), else --schedule_steps,
    else total_steps. restarts: the run's warm restarts (run_record.restarts)."""
    # The horizon is fixed when the run starts (run_record.py): extending a run to more
    # steps must not make the rate jump back up.
    horizon = horizon or config.schedule_steps or total_steps
    warmup = config.warmup_steps
    if config.lr_schedule == "one_cycle" and not warmup:
      warmup = max(1, round(ONE_CYCLE_WARMUP * horizon))
    if config.lr_schedule not in RESTARTABLE:
      restarts = ()
    return cls(config.lr_schedule, config.learning_rate, config.final_learning_rate,
               config.lr_decay_rate, warmup, horizon, tuple(config.lr_boundaries or ()),
               tuple(restarts))

  def check_warmup(self) -> None:
    """ConfigError when the warm-up would never end. For a new run only
    (run_record.schedule): a recorded run is evaluated and extended on the schedule its
    checkpoints trained on."""
    if self.warmup >= self.horizon:
      raise ConfigError(
          f"--warmup_steps={self.warmup} is not below the schedule's {self.horizon} steps "
          "(the run's length, or --schedule_steps): the rate would never finish warming "
          "up; lower --warmup_steps")

  @property
  def restart(self) -> Restart | None:
    """The last warm restart, which the rate ends with; None without one."""
    return self.restarts[-1] if self.restarts else None

  @property
  def end(self) -> int:
    """The step from which the rate stays at final_rate: the horizon, or the last
    restart's end."""
    return self.restart.end if self.restart else self.horizon

  def final_rate(self) -> float | None:
    """The rate from `end` on; None for plateau, whose cuts depend on the evals."""
    peak = self.restart.peak if self.restart else self.peak
    return {"constant": peak, "cosine": self.floor, "one_cycle": self.floor,
            "exponential": peak * self.decay_rate,
            "step": peak * self.decay_rate ** len(self.boundaries)}.get(self.name)

  def decayed(self) -> bool:
    """Whether the rate from `end` on is 0 or negligible (NEGLIGIBLE of its peak)."""
    final = self.final_rate()
    peak = self.restart.peak if self.restart else self.peak
    return final is not None and final < NEGLIGIBLE * peak

  def rate_fn(self, global_step: tf.Variable, plateau_factor: tf.Variable | None = None):
    """A callable for Keras: the rate at the current global step (not optimizer.iterations,
    which does not advance on skipped fp16 steps). plateau_factor: the cuts so far of
    --lr_schedule=plateau (trainer/outer/actions.py, ReduceOnPlateau)."""
    peak, floor, schedule, warmup = self.peak, self.floor, self.name, self.warmup
    decay_steps = max(1, self.horizon - warmup)
    boundaries = tf.constant(self.boundaries or (0,), tf.float32)

    def restarted(step, restart):
      progress = tf.clip_by_value((step - restart.step) / max(1, restart.end - restart.step),
                                  0.0, 1.0)
      if schedule == "exponential":
        return restart.peak * tf.pow(self.decay_rate, progress)
      return floor + (restart.peak - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))

    def rate():
      step = tf.cast(global_step, tf.float32)
      progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
      if schedule in ("cosine", "one_cycle"):
        value = floor + (peak - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
      elif schedule == "exponential":
        value = peak * tf.pow(self.decay_rate, progress)
      elif schedule == "step":
        cuts = tf.reduce_sum(tf.cast(step >= boundaries, tf.float32))
        value = peak * tf.pow(self.decay_rate, cuts)
      elif schedule == "plateau":
        value = tf.maximum(peak * plateau_factor, floor)
      else:
        value = tf.constant(peak, tf.float32)
      if schedule == "one_cycle":  # linear from peak / 25 to the peak
        start = peak / ONE_CYCLE_START_DIVISOR
        value = tf.where(step < warmup, start + (peak - start) * step / warmup, value)
      elif warmup:
        value = tf.where(step < warmup, peak * (step + 1) / warmup, value)
      for restart in self.restarts:  # from its step on, each restart's own decay
        value = tf.where(step >= restart.step, restarted(step, restart), value)
      return value

    return rate


class RateFactors:
  """A Keras optimizer whose variables each train at `rate_factor(variable)` times the
  scheduled rate (--backbone_learning_rate_multiplier): the rate every update_step is
  given (Keras's, the fused kernels', Muon's) and the decoupled weight decay, which Keras
  scales by the rate, are multiplied, so that it is a rate for every optimizer (a scaled
  gradient is one only for SGD)."""

  rate_factor: Callable[[Any], float] = staticmethod(lambda variable: 1.0)

  def build(self, var_list):
    super().build(var_list)
    factors = {self._var_key(v): f for v in var_list if (f := self.rate_factor(v)) != 1}
    # A bound method, not the dict: Keras would track a dict, and a checkpoint cannot
    # hold one keyed by integers.
    self._factor_of = factors.get

  def update_step(self, gradient, variable, learning_rate):
    factor = self._factor_of(self._var_key(variable))
    if factor is not None:
      learning_rate = learning_rate * factor
    return super().update_step(gradient, variable, learning_rate)

  def _apply_weight_decay(self, variables):
    # Keras's own decay, with each variable's rate multiplied in its own update function:
    # the optimizer's rate is shared by the replicas' threads, so it is never swapped.
    if self.weight_decay is None:
      return

    def apply(distribution, variables):
      for variable in variables:
        if not self._use_weight_decay(variable):
          continue
        factor = self._factor_of(self._var_key(variable))

        def decay(value, factor=factor):
          rate = tf.cast(self.learning_rate, value.dtype)
          if factor is not None:
            rate = rate * tf.cast(factor, value.dtype)
          value.assign_sub(value * tf.cast(self.weight_decay, value.dtype) * rate)

        if isinstance(variable, keras.Variable):
          variable = variable.value  # the tf.Variable the strategy updates
        distribution.extended.update(variable, decay, group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(
        apply, self._distribution_strategy, variables)


@functools.cache
def _with_rate_factors(cls: type) -> type:
  return type(cls.__name__, (RateFactors, cls), {"__module__": cls.__module__})


def create_optimizer(config: Config, learning_rate, *, loss_scaling: bool = False,
                     rate_factor: Callable[[Any], float] | None = None
                     ) -> keras.optimizers.Optimizer:
  """The optimizer of --optimizer and its flags; loss_scaling: wrapped in Keras's dynamic
  loss scaling, which a float16 policy needs (the policy the run resolved, planning.py).
  rate_factor(variable): the multiple of the rate that variable trains at (RateFactors);
  learning_rate is then a callable, as the run's schedule is."""
  kwargs = dict(learning_rate=learning_rate)
  if config.weight_decay:
    kwargs["weight_decay"] = config.weight_decay
  scaled = _with_rate_factors if rate_factor else (lambda cls: cls)
  # Keras's optimizers with fused update kernels (fused_optimizers.py); RMSprop stays
  # Keras's: TensorFlow's fused RMSProp puts epsilon inside the square root.
  if config.optimizer == "sgd":
    opt = scaled(fused_optimizers.SGD)(**kwargs)
  elif config.optimizer == "momentum" and config.muon_learning_rate:
    opt = scaled(muon.MuonSGD)(muon_ratio=config.muon_learning_rate / config.learning_rate,
                               momentum=config.momentum, nesterov=config.nesterov, **kwargs)
  elif config.optimizer == "momentum":
    opt = scaled(fused_optimizers.SGD)(momentum=config.momentum, nesterov=config.nesterov,
                                       **kwargs)
  elif config.optimizer == "adam":
    opt = scaled(fused_optimizers.Adam)(**kwargs)
  elif config.optimizer == "adamw":  # config.py requires --weight_decay: never Keras's 0.004
    opt = scaled(fused_optimizers.AdamW)(**kwargs)
  else:
    opt = scaled(keras.optimizers.RMSprop)(**kwargs)
  if rate_factor:
    opt.rate_factor = rate_factor
  if config.weight_decay:
    opt.exclude_from_weight_decay(var_names=_NO_DECAY)
  if config.clip_norm:
    # The train step all-reduces and clips the gradients itself (Keras's clipnorm clips
    # per replica); Keras's apply would all-reduce them a second time: twice the traffic.
    opt._all_reduce_sum_gradients = list  # pylint: disable=protected-access
  if loss_scaling:
    opt = keras.optimizers.LossScaleOptimizer(opt)
  return opt


def carry_over(old: keras.optimizers.Optimizer, new: keras.optimizers.Optimizer) -> int:
  """Gives `new`, an optimizer of the same kind built over more variables (an unfreeze),
  the values of `old`'s variables: its step count, loss scale and the slots of the
  variables both hold, matched by name (Keras names a slot after its variable's path);
  the new variables' slots keep their initial values. Returns how many were carried."""
  carried = 0
  pairs = [(old, new)]
  if isinstance(old, keras.optimizers.LossScaleOptimizer):
    # Its own variables (the scale, its counter) and its inner optimizer's, each by name:
    # both have an "iteration".
    pairs = [(old, new), (old.inner_optimizer, new.inner_optimizer)]
  for source, target in pairs:
    values = {}
    for v in source._variables:  # its own: a LossScaleOptimizer's exclude the inner's  # pylint: disable=protected-access
      if v.name in values:
        raise ValueError(f"two variables of {type(source).__name__} are named {v.name}")
      values[v.name] = v
    for v in target._variables:  # pylint: disable=protected-access
      if v.name in values:
        v.assign(values[v.name])
        carried += 1
  return carried
