"""The outer loop (orbit's Controller): runs the Trainer's inner loop to the nearest step
any action needs, then hands every action the step and the loop's logs."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from absl import logging

from trainer.actions import Action, Interrupted, Stop


@dataclasses.dataclass
class Timing:
  """What the run measured: steady-state speed (the first inner loop, which traces and
  compiles, left out), and seconds of training in all and of that first loop."""
  examples_per_sec: float | None = None
  train_seconds: float = 0.0
  compile_seconds: float = 0.0
  stop: Stop | None = None


class Controller:
  """Trains from the trainer's global step to `total_steps`.

  The inner loops end at multiples of `steps_per_loop` (or sooner, where an action asks);
  the first one runs `first_loop_steps` steps, so that the first progress line follows
  compilation, whatever `steps_per_loop` is. An action's Stop ends training after the
  actions of that boundary; one caused by a signal raises Interrupted.
  """

  def __init__(self, *, trainer, actions: Sequence[Action], total_steps: int,
               steps_per_loop: int, batch_size: int, first_loop_steps: int = 1):
    if steps_per_loop < 1 or first_loop_steps < 1:
      raise ValueError("steps_per_loop and first_loop_steps must be positive")
    if not all(isinstance(a, Action) for a in actions):
      raise TypeError(f"actions must be trainer.actions.Action objects: {actions}")
    self.trainer, self.actions = trainer, list(actions)
    self.total, self.per_loop, self.batch = total_steps, steps_per_loop, batch_size
    self.first_loop_steps = first_loop_steps

  def next_stop(self, step: int, first: bool = False) -> int:
    """The step at which the inner loop from `step` returns: the loop size (or the first
    loop's), the nearest step an action asks for, the end of training."""
    stops = [self.total, step + (self.first_loop_steps if first else self.per_loop)]
    for action in self.actions:
      wanted = action.next_step(step)
      if wanted is not None and wanted > step:
        stops.append(wanted)
    return min(stops)

  def run(self) -> Timing:
    step = self.trainer.step
    timing = Timing()
    if step >= self.total:
      return timing
    iterator = self.trainer.train_iterator()
    steady_steps, first = 0, True
    try:  # every action's end runs, whatever fails: a profiler left running keeps its trace
      for action in self.actions:
        action.start(step)
      while step < self.total:
        target = self.next_stop(step, first)
        begin = time.perf_counter()
        logs = self.trainer.run_steps(iterator, target - step)
        elapsed = time.perf_counter() - begin
        n, step = target - step, target
        if first:  # includes tracing and graph optimization
          timing.compile_seconds, first = elapsed, False
        else:
          timing.train_seconds += elapsed
          steady_steps += n
        rate = n * self.batch / elapsed
        timing.examples_per_sec = (steady_steps * self.batch / timing.train_seconds
                                   if timing.train_seconds else rate)
        logs.update(steps=n, seconds=elapsed, examples_per_sec=rate,
                    steady_examples_per_sec=timing.examples_per_sec)
        for action in self.actions:
          stop = logs.get("stop")
          if stop is None or stop.signum is None or action.on_preemption:
            action(step, logs)
          if "restarted" in logs:  # went back to a checkpoint: nothing else for this state
            break
        if "restarted" in logs:
          step, iterator = self.trainer.step, self.trainer.train_iterator()
          continue
        stop = logs.get("stop")
        if stop is not None and step < self.total:
          if stop.signum is not None:
            raise Interrupted(stop.signum, step, logs.get("checkpoint"))
          logging.info("%s: stopping at step %d of %d", stop.reason, step, self.total)
          timing.stop = stop
          break
    finally:
      for action in self.actions:
        action.end(step)
    timing.train_seconds += timing.compile_seconds
    return timing
