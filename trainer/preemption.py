"""SIGTERM (a preempted VM) and SIGINT (Ctrl-C) during a run: a clean stop at the next
boundary, agreed between the workers of a cluster."""

from __future__ import annotations

import signal
import threading
from typing import Callable

from absl import logging

from trainer.actions import Action, Stop
from trainer.errors import Interrupted


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

  def __call__(self, b):
    if not self.agree(self.signal is not None):
      return
    if self.signal is None:
      logging.warning("another worker was signalled: saving a checkpoint and stopping at "
                      "step %d with it", b.step)
    signum = self.signal or signal.SIGTERM
    b.stop = Stop(f"stopped by {signal.Signals(signum).name}", signum)

  def end(self, step):
    self.phase = "after"
    if self._installed_by_start:
      self.uninstall()
