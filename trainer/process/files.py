"""Files through tf.io.gfile, so that gs://, s3:// or ram:// work like a local
path (Python's file functions see only local disks: a gs:// path would become a
local ./gs:/ directory, and a checkpoint glob would find nothing and start over).

Local paths are written atomically (a temporary name, then rename). Object stores cannot
rename atomically: there a file is written, then read back and compared, and an export's
saved_model.pb is written last, so that a half-copied export is never loaded as whole.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
import uuid

import tensorflow as tf


gfile = tf.io.gfile


def is_local(path: str) -> bool:
  return "://" not in path or path.startswith("file://")


def join(*parts: str) -> str:
  return os.path.join(*parts)  # also right for URLs: '/' on every platform tapeloop runs on


def write_text(path: str, text: str | bytes) -> None:
  """Writes a whole file or nothing: never a half file under `path` (bytes: as they are)."""
  mode = "wb" if isinstance(text, bytes) else "w"
  gfile.makedirs(os.path.dirname(path))
  tmp = join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
  try:
    with gfile.GFile(tmp, mode) as f:
      f.write(text)
    gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if gfile.exists(tmp):
      gfile.remove(tmp)
    raise
  if not is_local(path):
    with gfile.GFile(path, mode.replace("w", "r")) as f:
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


def local_write_problem(path: str) -> str | None:
  """Why a local path cannot be written, or None: its nearest existing ancestor is probed
  with a temporary file (os.access says yes to root on read-only mounts)."""
  parent = os.path.abspath(path.removeprefix("file://"))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    return f"{shlex.quote(parent)} is a file, not a directory"
  try:
    with tempfile.TemporaryFile(dir=parent):
      pass
  except OSError as e:
    return f"{shlex.quote(parent)} is not writable ({e.strerror})"
  return None
