"""The outer loop (orbit's Controller): runs the Trainer's inner loop to the nearest step
any action needs, then runs each due action on the boundary (trainer/outer/actions.py)."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from absl import logging

from trainer.outer.actions import Action, Boundary, Stop
from trainer.process.errors import Interrupted


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
  actions of that boundary; one caused by a signal raises Interrupted, also at the last
  step. A signal lets only the `on_preemption` actions run (the checkpoint); the others
  run when the run resumes, before any training (`completes_interrupted`).
  """

  def __init__(self, *, trainer, actions: Sequence[Action], total_steps: int,
               steps_per_loop: int, batch_size: int, first_loop_steps: int = 1,
               interrupted_at=None):
    """trainer: its state.step (the global step), train_iterator() and run_steps(iterator,
    steps). interrupted_at: a checkpointed int64 variable, the step whose boundary a signal
    cut short (-1: none); without it a cut boundary is not completed on resume."""
    if steps_per_loop < 1 or first_loop_steps < 1:
      raise ValueError("steps_per_loop and first_loop_steps must be positive")
    if not all(isinstance(a, Action) for a in actions):
      raise TypeError(f"actions must be trainer.outer.actions.Action objects: {actions}")
    self.trainer, self.actions = trainer, list(actions)
    self.total, self.per_loop, self.batch = total_steps, steps_per_loop, batch_size
    self.first_loop_steps = first_loop_steps
    self.interrupted_at = interrupted_at

  def next_stop(self, step: int, first: bool = False) -> int:
    """The step at which the inner loop from `step` returns: the loop size (or the first
    loop's), the nearest step an action asks for, the end of training."""
    stops = [self.total, step + (self.first_loop_steps if first else self.per_loop)]
    for action in self.actions:
      wanted = action.next_step(step)
      if wanted is not None and wanted > step:
        stops.append(wanted)
    return min(stops)

  def _interrupted(self, step: int) -> bool:
    return self.interrupted_at is not None and int(self.interrupted_at.numpy()) == step

  def _complete_interrupted(self, step: int) -> Stop | None:
    """The actions a signal kept from the boundary at `step` (its eval, best, pictures),
    run now; their checkpoint records that they ran. Returns a stop they asked for."""
    logging.info("completing the actions of step %d, cut short by a signal", step)
    self.interrupted_at.assign(-1)
    boundary = Boundary(step, completing=True, last=step >= self.total)
    for action in self.actions:
      if action.completes_interrupted and action.trigger.due(boundary):
        action(boundary)
    return boundary.stop

  def _act(self, boundary: Boundary) -> None:
    """The due actions, in order; after a signal's stop only the `on_preemption` ones."""
    for action in self.actions:
      if boundary.signalled and self.interrupted_at is not None:
        self.interrupted_at.assign(boundary.step)  # before the checkpoint, which records it
      if (not boundary.signalled or action.on_preemption) and action.trigger.due(boundary):
        action(boundary)
      if boundary.restarted is not None:  # went back to a checkpoint: nothing else for it
        return

  def run(self) -> Timing:
    step = self.trainer.state.step
    timing = Timing()
    interrupted = self._interrupted(step)
    if step >= self.total and not interrupted:
      return timing
    steady_steps, first = 0, True
    try:  # every action's end runs, whatever fails: a profiler left running keeps its trace
      for action in self.actions:
        action.start(step)
      if interrupted:
        timing.stop = self._complete_interrupted(step)
        if timing.stop is not None or step >= self.total:
          if timing.stop is not None:
            logging.info("%s: stopping at step %d of %d", timing.stop.reason, step, self.total)
          return timing
      iterator = self.trainer.train_iterator()
      while step < self.total:
        target = self.next_stop(step, first)
        begin = time.perf_counter()
        figures = self.trainer.run_steps(iterator, target - step)
        elapsed = time.perf_counter() - begin
        n, step = target - step, target
        if first:  # includes tracing and graph optimization
          timing.compile_seconds = elapsed
        else:
          timing.train_seconds += elapsed
          steady_steps += n
        rate = n * self.batch / elapsed
        timing.examples_per_sec = (steady_steps * self.batch / timing.train_seconds
                                   if timing.train_seconds else rate)
        boundary = Boundary(step, figures["loss"], figures["accuracy"], steps=n,
                            seconds=elapsed, examples_per_sec=rate,
                            steady_examples_per_sec=timing.examples_per_sec, first=first,
                            last=step >= self.total)
        first = False
        self._act(boundary)
        if boundary.restarted is not None:  # back at a checkpoint: train on from there
          step, iterator = self.trainer.state.step, self.trainer.train_iterator()
          continue
        stop = boundary.stop
        if boundary.signalled:  # also at the last step
          raise Interrupted(stop.signum, step, boundary.checkpoint)
        if stop is not None and step < self.total:
          logging.info("%s: stopping at step %d of %d", stop.reason, step, self.total)
          timing.stop = stop
          break
    finally:
      for action in self.actions:
        action.end(step)
    timing.train_seconds += timing.compile_seconds
    return timing
