"""The errors a run ends with, apart from the code that raises them: each becomes one
line and an exit status in trainer/cli.py (a traceback only with --verbosity=1); and
whether a command-line program owns the process, which decides how a signal ends a run."""

from __future__ import annotations

import contextlib
import signal

from input_pipeline.specs import DataError

__all__ = ["ConfigError", "DataError", "Interrupted", "UsageError", "in_program", "program"]

# True while cli.run_app runs a program: the process is the program's, so a signal before
# training may end it at once (trainer/outer/preemption.py); a library caller's run raises.
_in_program = False


def in_program() -> bool:
  """Whether a command-line program (cli.run_app) runs in this process."""
  return _in_program


@contextlib.contextmanager
def program():
  """The process is a command-line program's for the block (cli.run_app)."""
  global _in_program  # pylint: disable=global-statement
  _in_program = True
  try:
    yield
  finally:
    _in_program = False


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
