"""model_dir's files through tf.io.gfile, so that gs://, s3:// or ram:// work like a local
path (Python's file functions see only local disks: a gs:// path would become a
local ./gs:/ directory, and a checkpoint glob would find nothing and start over).

Local paths are written atomically (a temporary name, then rename). Object stores cannot
rename atomically: there a file is written, then read back and compared, and an export's
saved_model.pb is written last, so that a half-copied export is never loaded as whole.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid

import tensorflow as tf

from trainer.config import ConfigError

gfile = tf.io.gfile


def is_local(path: str) -> bool:
  return "://" not in path or path.startswith("file://")


def join(*parts: str) -> str:
  return os.path.join(*parts)  # also right for URLs: '/' on every platform tapeloop runs on


def check_checkpoint_path(model_dir: str, flag: str = "--model_dir") -> None:
  """Refuses a model_dir TensorFlow's checkpoints cannot live in: its checkpoint reader and
  CheckpointManager's clean-up find files by glob pattern, where [...] is a character
  class and a backslash an escape (runs/exp[1] is runs/exp1: saved, never resumed), and
  * or ? match other directories (the clean-up of runs/a? deleted runs/ab's checkpoints)."""
  special = [c for c in "[]*?\\" if c in model_dir]
  if special:
    raise ConfigError(
        f"{flag}={model_dir}: TensorFlow finds checkpoints by glob pattern, in which "
        f"{' '.join(special)} are special: a run there could not resume, or would delete "
        "another directory's checkpoints; use a name without them (e.g. exp_1 for exp[1]; an "
        "existing run can be renamed, its files are kept)")


def check_model_dir(model_dir: str) -> None:
  """Refuses an unknown scheme, an unreachable bucket or an unwritable directory before any
  work, in one line. A local directory is probed without creating it; a remote one with a
  probe file that is deleted again (object stores have no directories to create)."""
  check_checkpoint_path(model_dir)
  if is_local(model_dir):
    _check_local_writable(model_dir)
    return
  scheme = model_dir.split("://", 1)[0]
  probe = join(model_dir, f".tapeloop-probe-{uuid.uuid4().hex[:8]}")
  try:
    with gfile.GFile(probe, "w") as f:
      f.write("probe")
    gfile.remove(probe)
  except tf.errors.UnimplementedError:
    raise ConfigError(f"--model_dir={model_dir}: no TensorFlow filesystem is registered for "
                      f"{scheme}:// (gs:// is built in; s3:// and hdfs:// need "
                      "tensorflow-io); use a local path or a supported scheme") from None
  except tf.errors.OpError as e:
    first = (e.message or type(e).__name__).strip().splitlines()[0][:160]
    raise ConfigError(f"--model_dir={model_dir} is not writable ({first}); check the "
                      "bucket's name and credentials, or choose another --model_dir") from None


def _check_local_writable(model_dir: str) -> None:
  # os.access says yes to root on read-only mounts: probe the nearest existing ancestor.
  path = os.path.abspath(model_dir.removeprefix("file://"))
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise ConfigError(f"--model_dir={model_dir}: {path} is a file, not a directory")
  try:
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise ConfigError(f"--model_dir={model_dir}: {path} is not writable ({e.strerror}); "
                      "choose another --model_dir") from None


def write_text(path: str, text: str) -> None:
  """Writes a whole file or nothing: never a half file under `path`."""
  gfile.makedirs(os.path.dirname(path))
  tmp = join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
  try:
    with gfile.GFile(tmp, "w") as f:
      f.write(text)
    gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if gfile.exists(tmp):
      gfile.remove(tmp)
    raise
  if not is_local(path):
    with gfile.GFile(path) as f:
      if f.read() != text:
        raise OSError(f"{path} does not read back as written")


def write_json(path: str, value: dict) -> None:
  write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str) -> dict | None:
  """The file's JSON object, None when it does not exist; ValueError when it is corrupt."""
  if not gfile.exists(path):
    return None
  with gfile.GFile(path) as f:
    value = json.loads(f.read())
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds no JSON object")
  return value


def rmtree(path: str) -> None:
  """Deletes a directory tree file by file (ram:// has no recursive delete)."""
  if not gfile.exists(path):
    return
  for top, _, files in gfile.walk(path, topdown=False):
    for name in files:
      gfile.remove(join(top, name))
  try:
    gfile.rmtree(path)
  except tf.errors.NotFoundError:
    pass


def publish_dir(local_dir: str, path: str) -> None:
  """Moves a complete local directory (an export) to `path`, replacing what was there.
  Local: two renames. Elsewhere: the old one is invalidated first (its saved_model.pb
  removed), then files are copied with saved_model.pb last and each size checked."""
  if is_local(path):
    path = path.removeprefix("file://")
    old = None
    if gfile.exists(path):
      old = join(os.path.dirname(os.path.abspath(path)), f".old-{uuid.uuid4().hex[:8]}")
      gfile.rename(path, old)
    gfile.rename(local_dir, path)
    if old:
      rmtree(old)
    return
  marker = "saved_model.pb"
  if gfile.exists(join(path, marker)):
    gfile.remove(join(path, marker))
  rmtree(path)
  files = [join(top, name)[len(local_dir) + 1:]
           for top, _, names in gfile.walk(local_dir) for name in names]
  for relative in sorted(files, key=lambda f: f == marker):
    source, target = join(local_dir, relative), join(path, relative)
    gfile.makedirs(os.path.dirname(target))
    gfile.copy(source, target, overwrite=True)
    if gfile.stat(target).length != gfile.stat(source).length:
      raise OSError(f"{target} does not have the size of its copy")
  rmtree(local_dir)
