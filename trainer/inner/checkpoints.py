"""tf.train.CheckpointManager under model_dir/checkpoints: save, resume, refuse mismatches.

A corrupt latest checkpoint (a crash mid-write, a truncated file) falls back, logged, to
the previous one; checkpoint files of which none can be read, or a checkpoint of another
model, are errors: never a silent fresh start over an existing model_dir.
"""

from __future__ import annotations

import logging as py_logging
import os
import re
import shlex
import signal
from typing import Callable

import tensorflow as tf
from absl import logging

from trainer.process.errors import ConfigError

# Fault injection for the crash tests: "kill_in_checkpoint_write:STEP" makes the process
# SIGKILL itself halfway through writing the checkpoint of that step.
FAULT_ENV = "TAPELOOP_FAULT"


# A checkpoint's files: ckpt-STEP.index and ckpt-STEP.data-K-of-N.
_CHECKPOINT_FILE = re.compile(r"ckpt-(\d+)\.(?:index|data-\d+-of-\d+)")


def _listdir(directory: str) -> list[str]:
  """The names in a directory (any filesystem); [] when it does not exist."""
  try:
    return tf.io.gfile.listdir(directory)
  except tf.errors.NotFoundError:
    return []


def checkpoint_steps(directory: str) -> list[int]:
  """The steps of the checkpoints in a directory (their files' names), newest first."""
  return sorted({int(match.group(1)) for match in map(_CHECKPOINT_FILE.fullmatch,
                                                      _listdir(directory)) if match},
                reverse=True)


class _UnrestoredValues(py_logging.Filter):
  def filter(self, record):
    message = str(record.msg)
    return not message.startswith(("Value in checkpoint could not be found",
                                   "Detecting that an object or model"))


def _drop_unrestored_value_warnings() -> None:
  """After a rejected checkpoint, TensorFlow's pending restore logs every unmatched value
  when it is garbage collected (at exit, after our error line): noise once reported."""
  py_logging.getLogger("tensorflow").addFilter(_UnrestoredValues())


class Checkpoints:
  """Saves model, optimizer and global step; restores the latest readable one on start.

  Restores from model_dir/checkpoints; saves there too, or, for a non-chief worker, to
  save_dir (every worker must call save under MultiWorkerMirroredStrategy)."""

  def __init__(self, model_dir: str, keep: int, save_dir: str | None = None,
               optional: dict | None = None, **objects):
    """objects must all be in a checkpoint to resume from it; `optional` ones are saved
    too but restored only where present (state added after older checkpoints were made)."""
    optional = optional or {}
    self.checkpoint = tf.train.Checkpoint(**objects, **optional)
    self._required = tf.train.Checkpoint(**objects)
    self._optional = tf.train.Checkpoint(**optional) if optional else None
    self.directory = os.path.join(model_dir, "checkpoints")
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(save_dir, "checkpoints") if save_dir else self.directory,
        max_to_keep=keep, checkpoint_name="ckpt")
    self._save_root = save_dir or model_dir
    self._best = None

  def save_best(self, step: int) -> str:
    """Saves to model_dir/best/, which holds one checkpoint: the best eval so far."""
    if self._best is None:
      self._best = tf.train.CheckpointManager(
          self.checkpoint, os.path.join(self._save_root, "best"), max_to_keep=1,
          checkpoint_name="ckpt")
    return self._best.save(checkpoint_number=step)

  def candidates(self) -> list[str]:
    """Every checkpoint prefix in the directory, newest (highest step) first. The state
    file is not trusted alone: a crash can leave it behind the files, or remove nothing."""
    # tf.io.gfile, not Python's glob: a gs:// model_dir would show no checkpoints. Listed,
    # not globbed: a glob pattern built on a model_dir named like runs/exp[1] matches nothing.
    return [os.path.join(self.directory, f"ckpt-{step}")
            for step in checkpoint_steps(self.directory)]

  def replace(self, **objects) -> None:
    """Saves and restores these objects under their names from now on, in place of the
    ones given before (an optimizer rebuilt over other variables)."""
    for name, obj in objects.items():
      for checkpoint in (self.checkpoint, self._required):
        setattr(checkpoint, name, obj)

  def restore(self, path: str | None = None,
              prepare: Callable[[str], None] | None = None) -> str | None:
    """Restores `path`, or else the newest readable checkpoint (call under
    strategy.scope()); None when the directory holds no checkpoint at all. prepare(path):
    called before each checkpoint is tried, to build the objects that one holds."""
    explicit = path is not None
    q = shlex.quote
    if explicit and not tf.io.gfile.exists(path + ".index"):
      raise ConfigError(f"no checkpoint {q(path)} ({q(path + '.index')} does not exist); give "
                        f"a prefix such as {q(os.path.join(self.directory, 'ckpt-100'))}")
    candidates = [path] if explicit else self.candidates()
    failures = []
    for path in candidates:
      status = None
      try:
        if prepare is not None:
          prepare(path)
        status = self._required.restore(path)
        # Every saved value must find its variable and match its shape: a checkpoint of
        # another model in this model_dir is an error, never a silent fresh start.
        status.assert_existing_objects_matched()
      except (AssertionError, ValueError) as e:
        _drop_unrestored_value_warnings()
        first = str(e).strip().splitlines()[0][:160]
        raise ConfigError(f"cannot resume from {q(path)}: it does not match this model "
                          f"({first}); use another --model_dir or the flags that made it"
                          ) from None
      except (tf.errors.OpError, IndexError, EOFError, OSError) as e:
        # A truncated data file raises IndexError ("Read less bytes than requested").
        message = getattr(e, "message", None) or str(e) or type(e).__name__
        reason = f"{type(e).__name__}: {message.strip().splitlines()[0][:120]}"
        failures.append(f"{os.path.basename(path)} ({reason})")
        logging.warning("checkpoint %s is unreadable (%s)%s", q(path), reason,
                        "; falling back to the previous one" if path != candidates[-1] else "")
        continue
      finally:
        # Unused values (another optimizer's slots, a rejected checkpoint) are expected;
        # without this TensorFlow warns about each of them at interpreter exit.
        if status is not None:
          status.expect_partial()
      if self._optional is not None:
        self._optional.restore(path).expect_partial()
      if failures:
        logging.warning("resumed from %s after skipping the unreadable %s", q(path),
                        ", ".join(failures))
      else:
        logging.info("resumed from %s", q(path))
      return path
    if failures and explicit:
      raise ConfigError(f"cannot read checkpoint {q(candidates[0])} "
                        f"({failures[0].split(' (', 1)[1]}; give another checkpoint (the "
                        f"run's are in {q(self.directory)}), or none for its latest readable")
    # Never advise deleting: the files may be fine and only this process unable to read
    # them (a path TensorFlow takes for a pattern, a filesystem not mounted, a permission).
    if failures:
      raise ConfigError(f"no readable checkpoint in {q(self.directory)}: {'; '.join(failures)}; "
                        "nothing was changed there: start this run in another --model_dir")
    if tf.io.gfile.exists(os.path.join(self.directory, "checkpoint")):
      raise ConfigError(f"{q(self.directory)} has a checkpoint state file but no checkpoint "
                        "files; nothing was changed there: start this run in another "
                        "--model_dir")
    return None

  @staticmethod
  def holds(path: str, name: str) -> bool:
    """Whether the checkpoint at `path` holds values of the object saved as `name`."""
    keys = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    return any(key.startswith(name + "/") for key in keys)

  def save(self, step: int) -> str:
    if os.environ.get(FAULT_ENV) == f"kill_in_checkpoint_write:{step}":
      self._die_mid_write(step)
    path = self.manager.save(checkpoint_number=step)
    logging.info("saved checkpoint %s", shlex.quote(path))
    return path

  def _die_mid_write(self, step: int) -> None:
    """The crash test's worst case: index written, data file half written, state file not
    updated, then SIGKILL."""
    prefix = os.path.join(self.manager.directory, f"ckpt-{step}")
    self.checkpoint.write(prefix)
    for name in _listdir(self.manager.directory):
      if not name.startswith(f"ckpt-{step}.data-"):
        continue
      data = os.path.join(self.manager.directory, name)
      with tf.io.gfile.GFile(data, "rb") as f:
        content = f.read()
      with tf.io.gfile.GFile(data, "wb") as f:
        f.write(content[:len(content) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
