"""How the tuner processes of one study see each other: a trial's heartbeat while its
trainer runs, whether a process on this machine is alive, and the lock they take turns
under (trainer/tuning/study.py)."""

from __future__ import annotations

import fcntl
import os
import threading
import zlib

from trainer.tuning.trial import database_url


def alive(pid) -> bool:
  """Whether the process runs on this machine (a zombie, exited but not yet reaped, does
  not: a killed tuner's trainer is one until init reaps it)."""
  if pid is None:
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return True
  try:
    with open(f"/proc/{int(pid)}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):
    return True


class Heartbeat:
  """Records the trial's heartbeat in the storage every `interval` seconds while its trainer
  runs: a tuner that dies stops beating, and other tuners take the trial up."""

  def __init__(self, storage, trial_id: int, interval: float):
    self.storage, self.trial_id, self.interval = storage, trial_id, interval
    self.done = threading.Event()
    self.thread = threading.Thread(target=self._beat, daemon=True)

  def _beat(self):
    while True:
      try:
        self.storage.record_heartbeat(self.trial_id)
      except Exception:  # pylint: disable=broad-except  (a database blip: beat again later)
        pass
      if self.done.wait(self.interval):
        return

  def __enter__(self):
    self.thread.start()

  def __exit__(self, *exc):
    self.done.set()
    self.thread.join()


class StudyLock:
  """Serializes the tuners of one study where their storage does not: an exclusive lock
  on ROOT/study.lock for the embedded SQLite study (its tuners share the machine), a
  PostgreSQL advisory lock for a shared one. Other databases rely on their row locks."""

  def __init__(self, settings):
    self.path = self.engine = None
    if settings.embedded:
      self.path = os.path.join(settings.root, "study.lock")
    elif settings.storage.startswith("postgresql"):
      import sqlalchemy  # pylint: disable=g-import-not-at-top  (the tune extra's)
      self.engine = sqlalchemy.create_engine(database_url(settings.storage),
                                             poolclass=sqlalchemy.pool.NullPool)
      self.key = zlib.crc32(settings.study.encode())
    self.held = None

  def __enter__(self):
    if self.path:
      self.held = open(self.path, "a")  # pylint: disable=consider-using-with
      fcntl.flock(self.held, fcntl.LOCK_EX)
    elif self.engine is not None:
      import sqlalchemy  # pylint: disable=g-import-not-at-top  (the tune extra's)
      self.held = self.engine.connect()
      self.held.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})

  def __exit__(self, *exc):
    if self.held is None:
      return
    if self.path:
      fcntl.flock(self.held, fcntl.LOCK_UN)
    else:
      import sqlalchemy  # pylint: disable=g-import-not-at-top  (the tune extra's)
      self.held.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
    self.held.close()
    self.held = None
