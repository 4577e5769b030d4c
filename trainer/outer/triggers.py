"""When an action runs (CLU's periodic triggers, orbit's conditions): at every boundary,
every N steps and at the last, at given steps, on a stop. A trigger also says the next step
at which the inner loop must end for it, so that the outer loop can stop there."""

from __future__ import annotations

import time
from typing import Callable


def next_multiple(step: int, every: int) -> int:
  """The first multiple of `every` after `step`."""
  return (step // every + 1) * every


class Trigger:
  """When an action runs: at every boundary. `next_step(step)`: the next step after
  `step` at which the inner loop must end for it (None: any)."""

  def next_step(self, step: int) -> int | None:
    del step
    return None

  def due(self, boundary) -> bool:
    del boundary
    return True


class EverySteps(Trigger):
  """Every `n` steps, and at the last step (`total_steps`)."""

  def __init__(self, n: int, total_steps: int):
    self.n, self.total = n, total_steps

  def next_step(self, step):
    return next_multiple(step, self.n)

  def due(self, boundary):
    return boundary.step % self.n == 0 or boundary.step >= self.total


class AtSteps(Trigger):
  """Asks for a boundary at each of the given steps; due at every boundary (the action
  decides what each step means to it, as the Profiler does)."""

  def __init__(self, *steps: int):
    self.steps = sorted(steps)

  def next_step(self, step):
    return next((s for s in self.steps if s > step), None)


class EverySeconds(Trigger):
  """When `seconds` have passed since the action last ran (`ran`), at the next boundary:
  it asks for no boundary of its own (CLU's every_secs). Each worker of a cluster has its
  own clock: `agree(due_here) -> due anywhere` (distribute.any_worker) makes them act at
  the same boundary; every worker then calls it at every boundary."""

  def __init__(self, seconds: float, agree: Callable[[bool], bool] = bool,
               clock: Callable[[], float] = time.monotonic):
    self.seconds, self.agree, self.clock = seconds, agree, clock
    self.last = clock()

  def due(self, boundary):
    return self.agree(self.clock() - self.last >= self.seconds)

  def ran(self) -> None:
    self.last = self.clock()


class OnStop(Trigger):
  """When an earlier action asked to stop, or a boundary a signal cut short is completed."""

  def due(self, boundary):
    return boundary.stop is not None or boundary.completing


class AnyOf(Trigger):
  def __init__(self, *triggers: Trigger):
    self.triggers = triggers

  def next_step(self, step):
    wanted = [t.next_step(step) for t in self.triggers]
    return min((s for s in wanted if s is not None), default=None)

  def due(self, boundary):
    # Each asked, none skipped: a trigger may agree with other workers (EverySeconds).
    return any([t.due(boundary) for t in self.triggers])
