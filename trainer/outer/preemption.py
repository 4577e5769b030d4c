"""SIGTERM (a preempted VM) and SIGINT (Ctrl-C) during a run: a clean stop at the next
boundary, agreed between the workers of a cluster."""

from __future__ import annotations

import _thread
import os
import signal
import threading
from typing import Callable

from absl import logging

from trainer.outer.actions import Action, PREEMPTED, Stop
from trainer.process.errors import Interrupted, in_program

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A signal before training ends the process this long after it came, if the main thread
# (blocked in C++) has not ended it by then itself.
GRACE_SECONDS = 1.0


def can_end_at_once() -> bool:
  """EndsAtOnce needs a signal mask and a thread that waits for a signal: POSIX's
  pthread_sigmask and sigtimedwait, which Python lacks on macOS (sigtimedwait) and
  Windows (both)."""
  return hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigtimedwait")


class EndsAtOnce:
  """Until close(): SIGTERM or SIGINT ends the process, also while the main thread waits
  in C++ (an op, a collective waiting for a dead worker), where a Python handler never
  runs, and whatever handler TensorFlow put in Python's place (MultiWorkerMirroredStrategy
  installs one for SIGTERM that only takes note).

  The signals are blocked in the main thread (and so in every thread it starts) and taken
  by a thread of this class: it asks the main thread to run its Python handler
  (interrupt_main), which ends the run cleanly when that thread runs Python; if the
  process is still here GRACE_SECONDS later, the thread ends it: the stop message, exit
  128 + the signal's number. TensorFlow's import starts threads too: tf_env imports it
  with the signals blocked, so that none of them takes one. (A C++ call that holds the
  GIL stops this thread too: distribute.py waits for a cluster in Python first.)"""

  def __init__(self):
    self._closed = threading.Event()
    self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    self._thread = threading.Thread(target=self._watch, name="tapeloop-signals", daemon=True)
    self._thread.start()

  def _watch(self) -> None:
    while not self._closed.is_set():
      info = signal.sigtimedwait(SIGNALS, 0.2)
      if info is None:
        continue
      _thread.interrupt_main(info.si_signo)
      if self._closed.wait(GRACE_SECONDS):
        return  # the main thread took it
      os.write(2, f"{Interrupted(info.si_signo, None, None)}\n".encode())
      os._exit(128 + info.si_signo)  # pylint: disable=protected-access

  def close(self) -> None:
    """Back to Python's handlers; a signal that came meanwhile (the thread no longer
    waiting) is delivered now, to the handler in place then."""
    self._closed.set()
    self._thread.join()
    signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)


class PreemptionStop(Action):
  """SIGTERM (a preempted VM) or SIGINT (Ctrl-C) asks for a stop at the next boundary,
  where only the checkpoint is saved; a second Ctrl-C stops at once. A Python signal
  handler cannot run while a tf.function executes anyway: this makes the stop clean.

  `agree(signalled) -> bool` tells whether any worker was signalled (an all-reduce under
  MultiWorkerMirroredStrategy): every worker stops at the same step, with one consistent
  checkpoint, instead of the others blocking in the next collective. Run it first.

  Installed for the whole run (`install`, `uninstall`: train.py), it also covers what comes
  before and after the loop, where the default handler would kill one worker while the
  others wait for it in a collective. Before training (the cluster's start-up, data,
  model) a signal ends the run at once: nothing is trained, nothing to save. In a
  command-line program (`at_once`, by default errors.in_program()) it ends the process, also
  while the main thread blocks in C++ (EndsAtOnce); a library caller (a script, a
  notebook) gets Interrupted when its main thread next runs Python, and keeps its process.
  Under MultiWorkerMirroredStrategy only the signalled worker ends: the others fail in
  their first collective (exit 1), at once while its machine still refuses connections,
  or after the coordination service's heartbeat timeout, 10 s (docs/reliability.md).
  After training (the final evals and the export, collectives too) the signal is noted
  (`signal`) and the run finishes."""

  on_preemption = True

  def __init__(self, agree: Callable[[bool], bool] = bool, at_once: bool | None = None):
    self.signal = None
    self.agree = agree
    self.phase = "before"  # -> "training" (start) -> "after" (end)
    self._previous = {}
    self._installed_by_start = False
    self._at_once = None
    at_once = in_program() if at_once is None else at_once
    self._ends_at_once = at_once and can_end_at_once()

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal = signum
    name = signal.Signals(signum).name
    if self.phase == "before":
      raise Interrupted(signum, None, None)
    # No logging here: the handler runs between any two bytecodes of the main thread, also
    # inside a log handler's write, and re-entering a buffered file's flush raises. In
    # training the loop boundary (__call__) says it, which is where the handler runs
    # anyway (not while a tf.function executes); after training, a raw write to stderr.
    if self.phase == "after":
      os.write(2, f"received {name} after training: finishing the evaluation and export "
                  "first\n".encode())

  def install(self) -> None:
    """Takes SIGTERM and SIGINT (from the main thread only: Python's rule); before
    training, through EndsAtOnce where it may end the process."""
    if self._previous or threading.current_thread() is not threading.main_thread():
      return
    for signum in SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    if self.phase == "before" and self._ends_at_once:
      self._at_once = EndsAtOnce()

  def uninstall(self) -> None:
    """The previous handlers back, then the signals unblocked: one that came meanwhile
    goes to the handler the caller had, not to this action's."""
    try:
      for signum, handler in self._previous.items():
        signal.signal(signum, handler)
      self._previous.clear()
    finally:
      self._end_at_once()

  def _end_at_once(self) -> None:
    at_once, self._at_once = self._at_once, None
    if at_once is not None:
      at_once.close()

  def start(self, step):
    self.phase = "training"
    self._installed_by_start = not self._previous
    if self._previous:
      # MultiWorkerMirroredStrategy's start-up replaces SIGTERM's handler in C++ with its
      # own, which only notes the signal: Python's is put back.
      for signum in SIGNALS:
        signal.signal(signum, self._handle)
    self._end_at_once()  # a signal that came meanwhile is handled now, as in training
    self.install()

  def __call__(self, b):
    if not self.agree(self.signal is not None):
      return
    if self.signal is None:
      logging.warning("another worker was signalled: saving a checkpoint and stopping at "
                      "step %d with it", b.step)
    else:
      logging.warning("received %s: saving a checkpoint and stopping at step %d",
                      signal.Signals(self.signal).name, b.step)
    signum = self.signal or signal.SIGTERM
    b.stop = Stop(f"stopped by {signal.Signals(signum).name}", PREEMPTED, signum)

  def end(self, step):
    self.phase = "after"
    if self._installed_by_start:
      self.uninstall()
