"""What the outer loop does between inner loops (orbit's and CLU's style): each action is
*what* to do, and its `trigger` says *when* (every boundary, every N steps and at the last,
at given steps, when a stop is asked); trainer/outer/controller.py runs the due ones in list
order at each boundary.

The Boundary is what they see: the step, the figures of the inner loop that ended there,
and what earlier actions added (the evaluation, a stop request, the checkpoint written).
The best eval so far is an object of its own (best.py), which the actions that follow it
consult. preemption.py holds the signal action.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from typing import Callable

import tensorflow as tf
from absl import logging

from trainer.outer.triggers import AnyOf, AtSteps, EverySeconds, EverySteps, OnStop, Trigger


# A Stop's kind: what the run records of it (results.json's stopped_early_at and
# pruned_at_step, the eval run's pruned_at_step scalar), so that the run never needs to
# know which action asked.
PREEMPTED = "preempted"    # a signal: the checkpoint is saved, the process ends (Interrupted)
EARLY_STOP = "early_stop"  # the eval metric stopped improving (best.EarlyStopping)
PRUNED = "pruned"          # a tuner's pruner gave the trial up (trainer/tuning/trial.py)
ENDED = "ended"            # another reason to end (a trial that another tuner finished)


@dataclasses.dataclass(frozen=True)
class Stop:
  """A request to end training after this inner loop: its kind (above), a reason for the
  log, and the signal number when a signal asked for it."""
  reason: str
  kind: str = ENDED
  signum: int | None = None


@dataclasses.dataclass
class Boundary:
  """A boundary between inner loops. The loop that ended at `step` ran `steps` steps in
  `seconds` (none when `completing` a boundary a signal cut short, on resume); actions
  add the evaluation, a stop request, the checkpoint saved, or the step a divergence
  recovery went back to."""
  step: int
  loss: float = math.nan
  accuracy: float = math.nan
  steps: int = 0
  seconds: float = 0.0
  examples_per_sec: float = 0.0
  steady_examples_per_sec: float = 0.0
  first: bool = False
  last: bool = False  # at the run's last step
  completing: bool = False
  eval: object | None = None  # evaluator.Evaluation
  stop: Stop | None = None
  checkpoint: str | None = None
  restarted: int | None = None

  @property
  def signalled(self) -> bool:
    return self.stop is not None and self.stop.signum is not None


class Action:
  """The interface; `__call__` runs when `trigger` is due, `start` and `end` around the run."""

  trigger: Trigger = Trigger()
  # After a preemption signal only these run at the boundary: a preempted VM has ~30 s,
  # so the checkpoint is saved before anything else (no eval, no pictures).
  on_preemption = False
  # After a signal, these run when the run resumes, at the step the signal cut short
  # (Boundary.completing; the training figures of that loop are gone).
  completes_interrupted = False

  def next_step(self, step: int) -> int | None:
    """The next step after `step` at which this action needs the inner loop to return."""
    return self.trigger.next_step(step)

  def check(self, plan) -> None:
    """Before the run writes anything, with its resolved plan (trainer/run/planning.py's Plan):
    raises ConfigError to refuse the run."""

  def start(self, step: int) -> None:
    """Once, before the first inner loop."""

  def __call__(self, boundary: Boundary) -> None:
    """At a boundary where the trigger is due."""

  def end(self, step: int) -> None:
    """Once, after the last inner loop, also when training raised."""


class ProgressLine(Action):
  """One console line per inner loop: step, epoch, loss, accuracy, speed, ETA."""

  def __init__(self, *, total_steps: int, steps_per_epoch: int, batch_size: int):
    self.total, self.per_epoch, self.batch = total_steps, steps_per_epoch, batch_size

  def __call__(self, b):
    if b.first:  # its speed is mostly tracing and compiling: no ETA from it
      speed = f"first loop {b.seconds:.1f} s with tracing and compilation"
    else:
      eta = (self.total - b.step) * self.batch / b.steady_examples_per_sec
      speed = f"{b.examples_per_sec:.0f} examples/s  ETA {duration(eta)}"
    logging.info("step %d/%d  epoch %.2f  loss %.4f  accuracy %.4f  %s", b.step, self.total,
                 b.step / self.per_epoch, b.loss, b.accuracy, speed)


class DivergenceCheck(Action):
  """A non-finite loss or a collapsed fp16 loss scale: with retries left, `recover(step)`
  goes back to the last good checkpoint past the offending data (orbit's recovery action)
  and the controller continues from there; else FloatingPointError. It runs before the
  checkpoint action, so the last good checkpoint stays the latest."""

  def __init__(self, loss_scale: Callable[[], float | None], *, retries: int = 0,
               recover: Callable[[int], int | None] | None = None,
               recoveries: Callable[[], int] = lambda: 0):
    self.loss_scale, self.retries, self.recover = loss_scale, retries, recover
    self.recoveries = recoveries

  def __call__(self, b):
    scale = self.loss_scale()
    if scale is not None and scale < 1.0:  # halved on every skipped step
      problem = f"the fp16 loss scale collapsed to {scale:g} at step {b.step}"
    elif not math.isfinite(b.loss):
      problem = f"the training loss is {b.loss} at step {b.step}"
    else:
      return
    used = self.recoveries()
    if used >= self.retries:
      if self.retries:
        problem += f" (after {used} recoveries, --divergence_retries={self.retries})"
      raise FloatingPointError(problem)
    good = self.recover(b.step)
    if good is None:
      raise FloatingPointError(f"{problem}, before the first checkpoint: nothing to recover "
                               "from")
    logging.warning("%s: recovery %d of %d, back to the checkpoint of step %d, skipping the "
                    "data of steps %d to %d", problem, used + 1, self.retries, good, good + 1,
                    b.step)
    b.restarted = good


class TrainSummaries(Action):
  """The train run's scalars after every inner loop."""

  def __init__(self, writer, *, learning_rate: Callable[[], float],
               loss_scale: Callable[[], float | None]):
    self.writer, self.learning_rate, self.loss_scale = writer, learning_rate, loss_scale

  def __call__(self, b):
    values = {"loss": b.loss, "accuracy": b.accuracy,
              "learning_rate": float(self.learning_rate()),
              "examples_per_sec": b.examples_per_sec}
    scale = self.loss_scale()
    if scale is not None:
      values["loss_scale"] = scale
    self.writer.scalars("train", b.step, values)


class Evaluate(Action):
  """`report(split)` (Evaluator.report: the log, the eval run's scalars, the pictures)
  into Boundary.eval; with `best`, the best eval so far is updated from it."""

  completes_interrupted = True

  def __init__(self, *, report: Callable, split: str, trigger: Trigger, best=None):
    self.report, self.split, self.trigger, self.best = report, split, trigger, best

  def __call__(self, b):
    b.eval = self.report(self.split)
    if self.best is not None:
      self.best.update(b.step, b.eval)


class Checkpoint(Action):
  """Saves every `interval` steps, at the last step, before any stop, and with
  `every_secs` also when that many seconds have passed since the last save."""

  completes_interrupted = True
  on_preemption = True

  def __init__(self, *, save: Callable[[int], str], interval: int, total_steps: int,
               every_secs: float | None = None, agree: Callable[[bool], bool] = bool):
    """agree: the workers' agreement on the time (distribute.any_worker)."""
    self.save = save
    self.timer = EverySeconds(every_secs, agree) if every_secs else None
    self.trigger = AnyOf(EverySteps(interval, total_steps), OnStop(),
                         *([self.timer] if self.timer else []))

  def __call__(self, b):
    b.checkpoint = self.save(b.step)
    if self.timer:
      self.timer.ran()


class Profiler(Action):
  """Traces steps [A, B) into a TensorBoard profile (the Profile tab of model_dir)."""

  def __init__(self, steps: tuple[int, int], logdir: str):
    self.first, self.last = steps
    self.trigger = AtSteps(self.first, self.last)
    self.logdir, self.running = logdir, False

  def start(self, step):
    self(Boundary(step))

  def __call__(self, b):
    if not self.running and self.first <= b.step < self.last:
      tf.profiler.experimental.start(self.logdir)
      self.running = True
      logging.info("profiling steps %d to %d into %s", b.step, self.last,
                   shlex.quote(self.logdir))
    elif self.running and b.step >= self.last:
      self.end(b.step)

  def end(self, step):
    if self.running:
      tf.profiler.experimental.stop()
      self.running = False


def duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
