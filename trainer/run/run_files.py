"""Every file tapeloop keeps in model_dir apart from checkpoints (trainer/inner/checkpoints.py),
TensorBoard events (summaries.py) and the exports (export.py): written and read here.

    flags.json         the flags the run was started with, its input pipeline and precision
    flag_changes.json  the changes a rerun was allowed to make, and extensions
    results.json       the last run's figures (train.py)
    eval_<split>.json  trainer.evaluate's figures
    folder_check.json  the check of a folder:'s files, reused on resume
"""

from __future__ import annotations

import os
import shlex
import uuid

import tensorflow as tf
from absl import logging

import input_pipeline
from input_pipeline import Data
from trainer.options.config import Config, DATA_FLAGS
from trainer.options.values import flag_arg
from trainer.process import files
from trainer.process.errors import ConfigError, UsageError

RECORD = "flags.json"
CHANGES = "flag_changes.json"
RESULTS = "results.json"
FOLDER_CHECK = "folder_check.json"
# Beside the flags in flags.json: the input pipeline --pipeline resolved to at the first
# start (auto decides by size and memory, which a rerun on another VM may see otherwise).
PIPELINE = "input_pipeline"
# Beside them too: the policy --mixed_precision resolved to at the first start (auto
# decides by model, device and CPU, which a rerun on another machine may see otherwise).
PRECISION = "precision"
# And the run's warm restarts (--restart_learning_rate), a list of {step,
# end, learning_rate}, from which a resumed extension derives the same learning rates.
RESTART = "learning_rate_restarts"

gfile = tf.io.gfile


def path(model_dir: str, name: str) -> str:
  return files.join(model_dir, name)


def check_checkpoint_path(model_dir: str, flag: str = "--model_dir") -> None:
  """Refuses a model_dir TensorFlow's checkpoints cannot live in: its checkpoint reader and
  CheckpointManager's clean-up find files by glob pattern, where [...] is a character
  class and a backslash an escape (runs/exp[1] is runs/exp1: saved, never resumed), and
  * or ? match other directories (the clean-up of runs/a? deleted runs/ab's checkpoints)."""
  special = [c for c in "[]*?\\" if c in model_dir]
  if special:
    raise ConfigError(
        f"{flag_arg(flag.removeprefix('--'), model_dir)}: TensorFlow finds checkpoints by "
        f"glob pattern, in which {' '.join(special)} are special: a run there could not resume, or would delete "
        "another directory's checkpoints; use a name without them (e.g. exp_1 for exp[1]; an "
        "existing run can be renamed, its files are kept)")


def check_model_dir(model_dir: str) -> None:
  """Refuses an unknown scheme, an unreachable bucket or an unwritable directory before any
  work, in one line. A local directory is probed without creating it; a remote one with a
  probe file that is deleted again (object stores have no directories to create)."""
  check_checkpoint_path(model_dir)
  if files.is_local(model_dir):
    _check_local_writable(model_dir)
    return
  scheme = model_dir.split("://", 1)[0]
  probe = files.join(model_dir, f".tapeloop-probe-{uuid.uuid4().hex[:8]}")
  try:
    with gfile.GFile(probe, "w") as f:
      f.write("probe")
    gfile.remove(probe)
  except tf.errors.UnimplementedError:
    raise ConfigError(f"{flag_arg('model_dir', model_dir)}: no TensorFlow filesystem is "
                      f"registered for {scheme}:// (gs:// is built in; s3:// and hdfs:// "
                      "need tensorflow-io); use a local path or a supported scheme") from None
  except tf.errors.OpError as e:
    first = (e.message or type(e).__name__).strip().splitlines()[0][:160]
    raise ConfigError(f"{flag_arg('model_dir', model_dir)} is not writable ({first}); check "
                      "the bucket's name and credentials, or choose another --model_dir"
                      ) from None


def _check_local_writable(model_dir: str) -> None:
  problem = files.local_write_problem(model_dir)
  if problem:
    raise ConfigError(f"{flag_arg('model_dir', model_dir)}: {problem}; choose another "
                      "--model_dir")


def _damaged(file: str, problem: str) -> ConfigError:
  """The one line for a file of model_dir that cannot be read and cannot be rebuilt."""
  return ConfigError(f"{shlex.quote(file)} {problem}; restore it, or use a new --model_dir")


def _read(model_dir: str, name: str) -> dict | None:
  """model_dir's file `name` as a JSON object; None when absent; ConfigError when damaged."""
  file = path(model_dir, name)
  try:
    return files.read_json(file)
  except ValueError as e:  # JSONDecodeError, or JSON that is no object
    raise _damaged(file, f"is not valid JSON ({str(e).replace(file, 'it')[:80]})") from None


def read_record(model_dir: str) -> dict | None:
  """The flags the run in model_dir was started with; None for a new model_dir. Without
  flags.json, those results.json records stand for them (its first format held them)."""
  recorded, name = _read(model_dir, RECORD), RECORD
  if recorded is None:
    results, name = _read(model_dir, RESULTS), RESULTS
    if results is None:
      return None
    recorded = results.get("flags")
    if not isinstance(recorded, dict):
      raise _damaged(path(model_dir, RESULTS), "holds no flags (and there is no flags.json)")
  # The counts a rerun computes with: whole numbers or unset.
  for key in ("epochs", "train_steps", "schedule_steps"):
    value = recorded.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
      raise _damaged(path(model_dir, name), f"records {key}={value!r}, not a number of steps")
  return recorded


def write_record(model_dir: str, values: dict) -> None:
  files.write_json(path(model_dir, RECORD), values)


def has_record(model_dir: str) -> bool:
  return gfile.exists(path(model_dir, RECORD))


def read_changes(model_dir: str) -> list[dict]:
  """flag_changes.json's history; ConfigError when damaged (it cannot be rebuilt)."""
  changes = (_read(model_dir, CHANGES) or {}).get("changes", [])
  if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
    raise _damaged(path(model_dir, CHANGES), "holds no list of changes")
  return changes


def write_changes(model_dir: str, history: list[dict]) -> None:
  files.write_json(path(model_dir, CHANGES), {"changes": history})


# The damaged results.json files this process has warned of: a reader that polls
# (trainer.evaluate --continuous) says so once.
_WARNED_DAMAGED: set[str] = set()


def read_results(model_dir: str, training: bool = True) -> dict | None:
  """results.json; None when there is none yet, or when it is damaged: trainer.main writes
  it anew from its checkpoint and its evals at the end of its run. Warned once per file.
  training: the reader is that run; else (trainer.evaluate) the warning says who
  rebuilds it and what the reader goes by meanwhile."""
  file = path(model_dir, RESULTS)
  try:
    return files.read_json(file)
  except ValueError as e:
    if file not in _WARNED_DAMAGED:
      _WARNED_DAMAGED.add(file)
      then = ("it is written anew at the end of this run" if training else
              "the run's end is told from flags.json and its checkpoints; "
              "python -m trainer.main writes it anew when it next runs there")
      logging.warning("%s is damaged (%s): %s", shlex.quote(file),
                      str(e).replace(file, "it")[:80], then)
    return None


def write_results(model_dir: str, results: dict) -> None:
  files.write_json(path(model_dir, RESULTS), results)


def read_eval(model_dir: str, split: str) -> dict | None:
  """eval_<split>.json: the last checkpoint evaluated on it; None when none or corrupt (it
  is rewritten on the next eval)."""
  try:
    figures = files.read_json(path(model_dir, f"eval_{split}.json"))
  except ValueError:
    return None
  step = (figures or {}).get("global_step")
  return figures if isinstance(step, int) and not isinstance(step, bool) else None


def write_eval(model_dir: str, split: str, figures: dict) -> None:
  """trainer.evaluate's figures of one split (eval_<split>.json)."""
  files.write_json(path(model_dir, f"eval_{split}.json"), figures)


def read_folder_check(model_dir: str, dataset: str) -> dict | None:
  """The run's check of its folder:'s files, which input_pipeline reuses when the folder
  lists the same files; None for other data, or when damaged."""
  if not dataset.startswith("folder:"):
    return None
  try:
    check = files.read_json(path(model_dir, FOLDER_CHECK))
  except ValueError:  # damaged: the files are checked again
    return None
  keys = ("listing", "bad", "channels", "sizes", "files", "root")
  return check if check and all(k in check for k in keys) else None


def load_data(config: Config) -> Data:
  """The data the run's flags describe (input_pipeline.load); a folder's check from an
  earlier start in model_dir is reused when its files are the same."""
  return input_pipeline.load(
      config.dataset, **{name: getattr(config, name) for name in DATA_FLAGS[1:]},
      folder_check=read_folder_check(config.model_dir, config.dataset))


def write_folder_check(model_dir: str, check: dict) -> None:
  files.write_json(path(model_dir, FOLDER_CHECK), check)


def same_directory(a: str, b: str) -> bool:
  """Whether two paths name one directory (local: after links are resolved)."""
  if files.is_local(a) and files.is_local(b):
    real = lambda p: os.path.realpath(p.removeprefix("file://"))
    return real(a) == real(b)
  return a.rstrip("/") == b.rstrip("/")


def check_own_checkpoint(model_dir: str, checkpoint: str,
                         program: str = "trainer.evaluate") -> None:
  """Refuses a --checkpoint of another run: evaluated (or exported) under this run's flags
  (its model, data, views), its figures would be filed as this run's, over its
  eval_<split>.json. The checkpoint's own run takes it with its own flags (`program`'s
  command). A path that is no checkpoint is left to the restore, which names it."""
  own = [files.join(model_dir, name) for name in ("checkpoints", "best")]
  where = os.path.dirname(checkpoint) or "."
  if (not gfile.exists(checkpoint + ".index")
      or any(same_directory(where, d) for d in own)):
    return
  run = os.path.dirname(where)
  q = shlex.quote
  if os.path.basename(where) in ("checkpoints", "best") and has_record(run):
    fix = (f"{program.rsplit('.', 1)[1]} it with its own run's flags: python -m {program} "
           f"{flag_arg('model_dir', run)} {flag_arg('checkpoint', checkpoint)}")
  else:
    fix = f"if it is this run's, move its files into {q(own[0])}"
  harm = ("whose figures it would overwrite" if program == "trainer.evaluate" else
          "whose model and data it would be taken for")
  raise ConfigError(f"{flag_arg('checkpoint', checkpoint)} is not a checkpoint of "
                    f"{flag_arg('model_dir', model_dir)} (its own are in {q(own[0])} and "
                    f"{q(own[1])}), {harm}: {fix}")


def check_output(output: str, example: str) -> None:
  """--output can be written, checked before the work that makes it (and by a dry run): a
  local path's nearest existing directory is probed with a temporary file, not written.
  example: a file name the error suggests when --output is a directory."""
  if not files.is_local(output):  # a bucket's object is written whole at the end
    return
  path = os.path.abspath(output.removeprefix("file://"))
  if os.path.isdir(path):
    raise UsageError(f"{flag_arg('output', output)} is a directory: give a file name, e.g. "
                     f"{flag_arg('output', os.path.join(output, example))}")
  problem = files.local_write_problem(os.path.dirname(path))
  if problem:
    raise UsageError(f"cannot write {flag_arg('output', output)} ({problem}): choose "
                     "another --output")
