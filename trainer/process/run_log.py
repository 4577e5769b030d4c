"""model_dir/tapeloop.log: every log line of a run in full (absl's prefix: level, date and
time, thread, file:line; TensorFlow's own lines too), while the console shows them short
(trainer/cli.py), and the error that ended the run with its traceback. Each start of the
run appends to it; only the chief writes it (another worker drops its lines).

Nothing is written before the run's checks pass (bad input leaves model_dir as it was):
the lines are held until start(model_dir), then written. A local file gets each line as
it comes; an object store (gs://, ram://), which cannot append, gets the file rewritten
whole (the earlier starts' lines, then this one's) at close()."""

from __future__ import annotations

import logging as py_logging
import shlex

import tensorflow as tf
from absl import logging

from trainer.process import files

NAME = "tapeloop.log"


class RunLog(py_logging.Handler):
  """A handler on the root logger for one run: holds its lines until start(), writes them
  after; close() removes it. As a context manager, it records the exception that ends the
  run, then closes."""

  def __init__(self):
    super().__init__()
    self.setFormatter(logging.PythonFormatter())
    self._held: list[str] = []
    self._file = None  # a local file, appended to line by line
    self._path = None
    self._dropping = False  # a worker that writes no log
    py_logging.getLogger().addHandler(self)

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    if error is not None:
      self.failed(error)
    self.close()
    return False

  def failed(self, error: BaseException) -> None:
    """The error that ended the run: its line, and its traceback, into this log only (the
    console shows the line alone: trainer/cli.py)."""
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    self.handle(py_logging.LogRecord("tapeloop", py_logging.ERROR, __file__, 0,
                                     "the run ended with %s", (line,),
                                     (type(error), error, error.__traceback__)))

  def emit(self, record):
    if self._dropping:
      return
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

  def start(self, model_dir: str | None) -> None:
    """The run writes to model_dir from now on: so does its log. None: this process (a
    worker other than the chief) writes no log; its lines are dropped, not held."""
    if model_dir is None:
      self._dropping, self._held = True, []
      return
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
          # Whatever bytes it holds (another program's, a cut multi-byte character):
          # kept, not a reason to lose this run's lines.
          with tf.io.gfile.GFile(self._path, "rb") as f:
            before = f.read().decode("utf-8", errors="replace")
        files.write_text(self._path, before + "".join(self._held))
    except (OSError, tf.errors.OpError) as e:
      logging.warning("could not write %s: %s", shlex.quote(self._path), e)
    finally:
      self._file, self._path, self._held = None, None, []
      super().close()
