"""Where a run's wall time goes, phase by phase, for results.json: a user waits for the
whole command (start-up, data, building, compiling, training, evals, export), not the loop."""

from __future__ import annotations

import contextlib
import os
import time


def process_start() -> float | None:
  """This process's start in time.time() terms (Linux), None where unknown: Python and
  TensorFlow's import happen before any of tapeloop's code can take a time."""
  try:
    with open("/proc/self/stat") as f:
      # Field 22 (after the parenthesized command name): start in clock ticks after boot,
      # the clock CLOCK_BOOTTIME reads (btime in /proc/stat has whole seconds only).
      ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
  except (OSError, ValueError, IndexError, AttributeError):
    return None
  return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))


class Phases:
  """Seconds per named phase, in the order first seen; `other` is what no phase covers."""

  def __init__(self, start: float):
    self.start = start
    self.seconds: dict[str, float] = {}

  def add(self, name: str, seconds: float) -> None:
    self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, seconds)

  @contextlib.contextmanager
  def time(self, name: str):
    begin = time.time()
    try:
      yield
    finally:
      self.add(name, time.time() - begin)

  def timed(self, name: str, fn):
    """fn, with the time of its calls added to phase `name`."""
    def call(*args, **kwargs):
      with self.time(name):
        return fn(*args, **kwargs)
    return call

  def summary(self) -> dict[str, float]:
    """Each phase, the rest as `other`, and `total` (start to now), in seconds."""
    total = time.time() - self.start
    out = {k: round(v, 3) for k, v in self.seconds.items()}
    out["other"] = round(max(0.0, total - sum(self.seconds.values())), 3)
    out["total"] = round(total, 3)
    return out
