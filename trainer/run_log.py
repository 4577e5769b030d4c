"""model_dir/tapeloop.log: every log line of a run in full (absl's prefix: level, date and
time, thread, file:line; TensorFlow's own lines too), while the console shows them short
(trainer/cli.py). Each start of the run appends to it; only the chief writes it.

Nothing is written before the run's checks pass (bad input leaves model_dir as it was):
the lines are held until start(model_dir), then written. A local file gets each line as
it comes; an object store (gs://, ram://), which cannot append, gets the file rewritten
whole (the earlier starts' lines, then this one's) at close()."""

from __future__ import annotations

import logging as py_logging

import tensorflow as tf
from absl import logging

from trainer import files

NAME = "tapeloop.log"


class RunLog(py_logging.Handler):
  """A handler on the root logger for one run: holds its lines until start(), writes them
  after; close() removes it."""

  def __init__(self):
    super().__init__()
    self.setFormatter(logging.PythonFormatter())
    self._held: list[str] = []
    self._file = None  # a local file, appended to line by line
    self._path = None
    py_logging.getLogger().addHandler(self)

  def emit(self, record):
    try:
      line = self.format(record) + "\n"
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)
      return
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    else:
      self._held.append(line)

  def start(self, model_dir: str) -> None:
    """The run writes to model_dir from now on: so does its log."""
    self._path = files.join(model_dir, NAME)
    if files.is_local(model_dir):
      self._file = open(self._path.removeprefix("file://"), "a", encoding="utf-8")  # pylint: disable=consider-using-with
      self._file.write("".join(self._held))
      self._file.flush()
      self._held = []

  def close(self) -> None:
    py_logging.getLogger().removeHandler(self)
    try:
      if self._file is not None:
        self._file.close()
      elif self._path is not None and self._held:
        before = ""
        if tf.io.gfile.exists(self._path):
          with tf.io.gfile.GFile(self._path) as f:
            before = f.read()
        files.write_text(self._path, before + "".join(self._held))
    except (OSError, tf.errors.OpError) as e:
      logging.warning("could not write %s: %s", self._path, e)
    finally:
      self._file, self._path, self._held = None, None, []
      super().close()
