"""The errors a run ends with, apart from the code that raises them: each becomes one
line and an exit status in trainer/cli.py (a traceback only with --verbosity=1)."""

from __future__ import annotations

import signal

from input_pipeline.specs import DataError

__all__ = ["ConfigError", "DataError", "Interrupted", "UsageError"]


class ConfigError(ValueError):
  """A bad flag value or combination; the message names the flag and the fix."""


class UsageError(ValueError):
  """A bad invocation the flags cannot express (stray arguments, a missing export)."""


class Interrupted(Exception):
  """Training stopped on a signal after saving a checkpoint at `step` (None: before
  training, with nothing to save)."""

  def __init__(self, signum: int, step: int | None, checkpoint: str | None):
    self.signum, self.step, self.checkpoint = signum, step, checkpoint
    name = signal.Signals(signum).name
    if step is None:
      message = (f"stopped by {name} before training: no step was trained; run the same "
                 "command again to start")
    else:
      message = (f"stopped by {name} at step {step}; checkpoint {checkpoint} saved: run the "
                 "same command again to resume")
    super().__init__(message)
