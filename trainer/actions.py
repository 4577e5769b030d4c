"""What the outer loop does between inner loops: small periodic actions (orbit's and clu's
style), each handed the step and the loop's logs by trainer/controller.py.

An action may ask for an inner loop to end at a step (`next_step`), acts after each inner
loop (`__call__`), and may set up and tear down around the whole run (`start`, `end`).
Actions run in list order on one `logs` dict, so a later action sees what an earlier one
added: the evaluation ("eval"), a new best ("new_best"), a stop request ("stop"), the
checkpoint written ("checkpoint").
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.errors import Interrupted


def next_multiple(step: int, every: int) -> int:
  """The first multiple of `every` after `step`."""
  return (step // every + 1) * every


@dataclasses.dataclass(frozen=True)
class Stop:
  """A request to end training after this inner loop: a reason for the log, and the
  signal number when a signal asked for it."""
  reason: str
  signum: int | None = None


class Action:
  """The interface; every method is optional."""

  # After a preemption signal only these run at the boundary: a preempted VM has ~30 s,
  # so the checkpoint is saved before anything else (no eval, no pictures).
  on_preemption = False
  # After a signal, these run when the run resumes, at the step the signal cut short, with
  # logs {"completing": True} (the training figures of that loop are gone).
  completes_interrupted = False

  def next_step(self, step: int) -> int | None:
    """The next step after `step` at which this action needs the inner loop to return."""
    del step
    return None

  def start(self, step: int) -> None:
    """Once, before the first inner loop."""

  def __call__(self, step: int, logs: dict) -> None:
    """After each inner loop, which ended at `step`."""

  def end(self, step: int) -> None:
    """Once, after the last inner loop, also when training raised."""


class ProgressLine(Action):
  """One console line per inner loop: step, epoch, loss, accuracy, speed, ETA."""

  def __init__(self, *, total_steps: int, steps_per_epoch: int, batch_size: int):
    self.total, self.per_epoch, self.batch = total_steps, steps_per_epoch, batch_size
    self.first = True

  def __call__(self, step, logs):
    if self.first:  # its speed is mostly tracing and compiling: no ETA from it
      self.first = False
      speed = f"first loop {logs['seconds']:.1f} s with tracing and compilation"
    else:
      eta = (self.total - step) * self.batch / logs["steady_examples_per_sec"]
      speed = f"{logs['examples_per_sec']:.0f} examples/s  ETA {duration(eta)}"
    logging.info("step %d/%d  epoch %.2f  loss %.4f  accuracy %.4f  %s", step, self.total,
                 step / self.per_epoch, logs["loss"], logs["accuracy"], speed)


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

  def __call__(self, step, logs):
    scale = self.loss_scale()
    if scale is not None and scale < 1.0:  # halved on every skipped step
      problem = f"the fp16 loss scale collapsed to {scale:g} at step {step}"
    elif not np.isfinite(logs["loss"]):
      problem = f"the training loss is {logs['loss']} at step {step}"
    else:
      return
    used = self.recoveries()
    if used >= self.retries:
      if self.retries:
        problem += f" (after {used} recoveries, --divergence_retries={self.retries})"
      raise FloatingPointError(problem)
    good = self.recover(step)
    if good is None:
      raise FloatingPointError(f"{problem}, before the first checkpoint: nothing to recover "
                               "from")
    logging.warning("%s: recovery %d of %d, back to the checkpoint of step %d, skipping the "
                    "data of steps %d to %d", problem, used + 1, self.retries, good, good + 1,
                    step)
    logs["restarted"] = good


class TrainSummaries(Action):
  """The train run's scalars after every inner loop."""

  def __init__(self, writer, *, learning_rate: Callable[[], float],
               loss_scale: Callable[[], float | None]):
    self.writer, self.learning_rate, self.loss_scale = writer, learning_rate, loss_scale

  def __call__(self, step, logs):
    values = {"loss": logs["loss"], "accuracy": logs["accuracy"],
              "learning_rate": float(self.learning_rate()),
              "examples_per_sec": logs["examples_per_sec"]}
    scale = self.loss_scale()
    if scale is not None:
      values["loss_scale"] = scale
    self.writer.scalars("train", step, values)


class Evaluate(Action):
  """Every `interval` steps and at the last step: `report(split)` (Evaluator.report: the
  log, the eval run's scalars, the pictures) into logs["eval"]."""

  completes_interrupted = True

  def __init__(self, *, report: Callable, split: str, interval: int, total_steps: int):
    self.report, self.split, self.interval, self.total = report, split, interval, total_steps

  def next_step(self, step):
    return next_multiple(step, self.interval)

  def __call__(self, step, logs):
    if step % self.interval and step < self.total:
      return
    logs["eval"] = self.report(self.split)


class BestMetric(Action):
  """Tracks the best eval `metric` (orbit's NewBestMetric) in checkpointed variables, so
  that a resumed run knows it; sets logs["new_best"] on an improvement."""

  completes_interrupted = True

  def __init__(self, metric: str, progress):
    self.metric, self.progress = metric, progress
    self.higher_is_better = metric == "accuracy"
    # Before the first eval (also of an evaluate-only rerun): a best of another metric,
    # kept from a run with another --keep_best, is never compared with this one's values.
    was = progress.track(metric)
    if was:
      logging.info("the best eval so far was of eval %s; this run tracks eval %s: its best, "
                   "early stopping and plateau counts start again at the next eval", was,
                   metric)

  def improved(self, value: float) -> bool:
    best = float(self.progress.best_value.numpy())
    if np.isnan(best):
      return True
    return value > best if self.higher_is_better else value < best

  def __call__(self, step, logs):
    if "eval" not in logs:
      return
    value = getattr(logs["eval"], self.metric)
    if self.improved(value):
      self.progress.best_value.assign(value)
      self.progress.best_step.assign(step)
      self.progress.evals_since_best.assign(0)
      logs["new_best"] = True
    else:
      self.progress.evals_since_best.assign_add(1)


class KeepBest(Action):
  """On a new best: a checkpoint in model_dir/best/ and an export in model_dir/export_best/."""

  completes_interrupted = True

  def __init__(self, *, metric: str, save: Callable[[int], str], export: Callable[[], None]):
    self.metric, self.save, self.export = metric, save, export

  def __call__(self, step, logs):
    if logs.get("new_best"):
      path = self.save(step)
      self.export()
      logging.info("new best eval %s %.4f at step %d: saved %s and export_best/", self.metric,
                   getattr(logs["eval"], self.metric), step, path)


class EarlyStopping(Action):
  """Stops when the eval metric has not improved for `patience` evals in a row."""

  completes_interrupted = True

  def __init__(self, *, patience: int, metric: str, progress):
    self.patience, self.metric, self.progress = patience, metric, progress

  def __call__(self, step, logs):
    if "eval" not in logs or int(self.progress.evals_since_best.numpy()) < self.patience:
      return
    best, at = float(self.progress.best_value.numpy()), int(self.progress.best_step.numpy())
    self.progress.stopped_early_at.assign(step)
    logs["stop"] = Stop(f"early stopping: eval {self.metric} has not improved on {best:.4f} "
                        f"(step {at}) for {self.patience} evals")


class ReduceOnPlateau(Action):
  """--lr_schedule=plateau (Keras's ReduceLROnPlateau on the eval metric): after `patience`
  evals without a new best (BestMetric, run before), the rate's factor is multiplied by
  `factor`; the count starts again after each cut. The state is checkpointed (Progress)."""

  completes_interrupted = True

  def __init__(self, *, patience: int, factor: float, metric: str, progress,
               learning_rate: Callable[[], float]):
    self.patience, self.factor, self.metric = patience, factor, metric
    self.progress, self.learning_rate = progress, learning_rate

  def __call__(self, step, logs):
    if "eval" not in logs:
      return
    if logs.get("new_best"):
      self.progress.plateau_evals.assign(0)
      return
    self.progress.plateau_evals.assign_add(1)
    if int(self.progress.plateau_evals.numpy()) >= self.patience:
      before = float(self.learning_rate())
      self.progress.lr_factor.assign(self.progress.lr_factor * self.factor)
      self.progress.plateau_evals.assign(0)
      logging.info("eval %s has not improved for %d evals: learning rate %.3g -> %.3g at "
                   "step %d", self.metric, self.patience, before, float(self.learning_rate()),
                   step)


class Checkpoint(Action):
  """Every `interval` steps, at the last step, and before any stop."""

  completes_interrupted = True

  on_preemption = True

  def __init__(self, *, save: Callable[[int], str], interval: int, total_steps: int):
    self.save, self.interval, self.total = save, interval, total_steps

  def next_step(self, step):
    return next_multiple(step, self.interval)

  def __call__(self, step, logs):
    if (step % self.interval == 0 or step == self.total or "stop" in logs
        or "completing" in logs):
      logs["checkpoint"] = self.save(step)


class Profiler(Action):
  """Traces steps [A, B) into a TensorBoard profile (the Profile tab of model_dir)."""

  def __init__(self, steps: tuple[int, int], logdir: str):
    self.first, self.last = steps
    self.logdir, self.running = logdir, False

  def next_step(self, step):
    return next((s for s in (self.first, self.last) if s > step), None)

  def start(self, step):
    self(step, {})

  def __call__(self, step, logs):
    if not self.running and self.first <= step < self.last:
      tf.profiler.experimental.start(self.logdir)
      self.running = True
      logging.info("profiling steps %d to %d into %s", step, self.last, self.logdir)
    elif self.running and step >= self.last:
      self.end(step)

  def end(self, step):
    if self.running:
      tf.profiler.experimental.stop()
      self.running = False


class PreemptionStop(Action):
  """SIGTERM (a preempted VM) or SIGINT (Ctrl-C) asks for a stop at the next boundary,
  where only the checkpoint is saved; a second Ctrl-C stops at once. A Python signal
  handler cannot run while a tf.function executes anyway: this makes the stop clean.

  `agree(signalled) -> bool` tells whether any worker was signalled (an all-reduce under
  MultiWorkerMirroredStrategy): every worker stops at the same step, with one consistent
  checkpoint, instead of the others blocking in the next collective. Run it first.

  Installed for the whole run (`install`, `uninstall`: train.py), it also covers what comes
  before and after the loop, where the default handler would kill one worker while the
  others wait for it in a collective. Before training (data, model), a worker `alone`
  stops at once: nothing is trained, nothing to save; one of several goes on to the first
  boundary, where all stop together. After training (the final evals and the export,
  collectives too) the signal is noted (`signal`) and the run finishes."""

  on_preemption = True

  def __init__(self, agree: Callable[[bool], bool] = bool, alone: bool = True):
    self.signal = None
    self.agree, self.alone = agree, alone
    self.phase = "before"  # -> "training" (start) -> "after" (end)
    self._previous = {}
    self._installed_by_start = False

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = signum
    name = signal.Signals(signum).name
    if self.phase == "before" and self.alone:
      raise Interrupted(signum, None, None)
    logging.warning({
        "before": "received %s before training: stopping with the other workers at the "
                  "first step",
        "training": "received %s: saving a checkpoint and stopping at the end of this loop",
        "after": "received %s after training: finishing the evaluation and export first",
    }[self.phase], name)

  def install(self) -> None:
    """Takes SIGTERM and SIGINT (from the main thread only: Python's rule)."""
    if self._previous or threading.current_thread() is not threading.main_thread():
      return
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._handle)

  def uninstall(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def start(self, step):
    self.phase = "training"
    self._installed_by_start = not self._previous
    self.install()

  def __call__(self, step, logs):
    if not self.agree(self.signal is not None):
      return
    if self.signal is None:
      logging.warning("another worker was signalled: saving a checkpoint and stopping at "
                      "step %d with it", step)
    signum = self.signal or signal.SIGTERM
    logs["stop"] = Stop(f"stopped by {signal.Signals(signum).name}", signum)

  def end(self, step):
    self.phase = "after"
    if self._installed_by_start:
      self.uninstall()


def duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
