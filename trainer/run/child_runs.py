"""trainer.main as a child process, run as the user would into a model_dir: its command
line, its log (model_dir/train.log), the flags it runs with, and one HParams experiment
over many such runs. The sweep, the tutorial, the ablation and the tuner (trainer.tune)
run their trials through it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading

from absl import flags as absl_flags
import tensorflow as tf

from trainer.inner import summaries
from trainer.options import config, declared, values
from trainer.process import files
from trainer.process.tf_env import PARENT_ENV
from trainer.run import planning, run_files, run_record

# The checkout (trainer/run/child_runs.py is three levels down): first on a child's path.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve(path: str | None) -> str | None:
  """A path as the user means it (trainer.options.values.absolute_path, the rule runs record paths
  by): the trainer's own relative paths would otherwise be resolved wherever it runs."""
  return values.absolute_path(path)


def trainer_command(module: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
  """(command, environment) that run `python -m MODULE ARGS` in the current directory, as
  the user would: every relative path in ARGS (--data_dir, --dataset=idx:DIR, a flagfile
  and the paths in it) means the same to the trainer as to the user. The repository goes
  on PYTHONPATH, and -P keeps the current directory off sys.path, so that a models.py or a
  trainer/ there cannot stand in for tapeloop's."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
  safe_path = ["-P"] if sys.version_info >= (3, 11) else []
  return [sys.executable, *safe_path, "-m", module, *args], env


FLAGS_LOCK = threading.Lock()


def flags_for(args: list[str]) -> dict | None:
  """The flag values `python -m trainer.main ARGS` would run with (trainer.options.config's
  from_args), or None when they do not parse: the trainer then says why, in its words."""
  with FLAGS_LOCK:  # absl's FLAGS is one per process, and trials start from threads
    try:
      return dict(config.from_args(args, run_files.read_record).flag_values)
    except (config.ConfigError, absl_flags.Error, ValueError):
      return None


def changed_flags(recorded: dict, current: dict) -> dict[str, tuple]:
  """{flag: (recorded value, current value)} for the flags of what is trained and of the
  run's length (not how it runs), by trainer/run/run_record.py's own comparison
  (--mixed_precision=auto as it resolves on this machine)."""
  auto = planning.auto_precision(current.get("model"))[0]
  return {name: values
          for name, values in run_record.differences(recorded, current, auto).items()
          if name not in declared.HOW_IT_RUNS}


def read_json(path: str) -> dict | None:
  """The file's JSON object; None when missing or unreadable (the trainer reports it)."""
  try:
    return files.read_json(path)
  except ValueError:
    return None


def run_trainer(model_dir: str, args: list[str], env: dict[str, str] | None = None,
                started=None) -> tuple[int, str]:
  """python -m trainer.main ARGS (ENV added to its environment), its output appended to
  model_dir/train.log; returns its exit status and last line. started(pid): called once
  the trainer runs. The trainer ends with this process (tf_env.end_with_parent). It writes
  to a file handle, which only a local file gives: a bucket's log is written locally
  first, then appended to its train.log, also when this process is interrupted."""
  command, child_env = trainer_command("trainer.main", args)
  env = {**child_env, **(env or {}), PARENT_ENV: str(os.getpid())}
  log_path = os.path.join(model_dir, "train.log")
  local = files.is_local(model_dir)
  log = open(log_path, "a+b") if local else tempfile.TemporaryFile()  # pylint: disable=consider-using-with
  start = log.tell()
  try:
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if started is not None:
      started(proc.pid)
    returncode = _wait(proc)
  finally:
    log.flush()
    log.seek(start)
    output = log.read()
    log.close()
    if not local:
      before = b""
      if tf.io.gfile.exists(log_path):  # object stores cannot append: rewrite it whole
        with tf.io.gfile.GFile(log_path, "rb") as f:
          before = f.read()
      with tf.io.gfile.GFile(log_path, "wb") as f:
        f.write(before + output)
  lines = output.decode(errors="replace").strip().splitlines() or ["(no output)"]
  # A trainer killed outright printed no error: its last line is often a progress line.
  return returncode, killed_by(returncode) or lines[-1].removeprefix("error: ")


def killed_by(returncode: int) -> str | None:
  """How a signal ended the trainer ("killed by SIGKILL ..."), or None: the status of a
  process the signal killed. The trainer's own 128+N after SIGINT or SIGTERM is None:
  its last line says where it stopped and how to go on."""
  if returncode >= 0:
    return None
  number = -returncode
  try:
    name = signal.Signals(number).name
  except ValueError:
    name = f"signal {number}"
  return f"killed by {name}" + (" (kill -9, or the out-of-memory killer)"
                                if number == signal.SIGKILL else "")


def _wait(proc: subprocess.Popen) -> int:
  """The child's exit status. Stopped here (Ctrl-C, or a SIGTERM the caller turned into an
  exception), this waits for the trainer to save its checkpoint and exit, signalling it
  if the signal did not reach it: subprocess.run would SIGKILL it after 0.25 s, and the
  steps since its last checkpoint would be lost. Interrupted again, it stops waiting; the
  trainer still ends with this process (end_with_parent)."""
  try:
    return proc.wait()
  except BaseException:
    try:
      proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGTERM)
      proc.wait()
    raise


def write_experiment(root: str, runs: list[dict | None], first=()) -> list[str]:
  """One HParams experiment in root over the runs below it, each given by its flag values
  (None: unknown, left out); model hyperparameters at the values the model used, as each
  run's session has them. Returns its first columns: `first` (a tuner's searched flags)
  when given, else the hparams that differ between the runs."""
  hparams = []
  for flag_values in runs:
    if flag_values is None:
      continue
    try:
      hparams.append(config.from_values(flag_values).hparams())
    except ValueError:  # flags an older tapeloop recorded: as they are
      hparams.append(dict(flag_values))
  return summaries.write_experiment_over(root, hparams, first)
