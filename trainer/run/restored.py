"""A run brought back from its model_dir without training it: its Config from flags.json
with the flags given now on top, and a Trainer whose weights a checkpoint of it restores
(trainer.evaluate, trainer.export)."""

from __future__ import annotations

import shlex

import keras
import tensorflow as tf

from trainer.inner.trainer import Trainer
from trainer.options import config, declared
from trainer.options.values import flag_arg
from trainer.process import files
from trainer.process.errors import UsageError
from trainer.run import distribute, planning, run_files

# How the training run ran, but not how its data is read (declared.py's HOW, not DATA):
# the process's own (one machine's evaluator or exporter), never copied from the run.
# jit_compile among them: runs before --jit_compile=auto recorded it as true/false.
HOW_IT_RAN = tuple(o.name for o in declared.OPTIONS if o.role == declared.HOW)


def run_config(model_dir: str, given: dict):
  """(the run's Config, its record): model_dir/flags.json's flags, `given` on top."""
  run_files.check_checkpoint_path(model_dir)
  recorded = run_files.read_record(model_dir)  # flags.json, or results.json of an older run
  if recorded is None:
    raise UsageError(f"no flags.json in {flag_arg('model_dir', model_dir)}: not a tapeloop run "
                     "(train one there first with python -m trainer.main)")
  values = {k: v for k, v in recorded.items()
            if k in declared.NAMES and k not in HOW_IT_RAN}
  # A record older than --mixed_precision trained in float32, not in today's default.
  values.setdefault("mixed_precision", recorded.get("mixed_precision", "float32"))
  values.update(given)
  values["model_dir"] = model_dir
  return config.from_values(values), recorded


def trainer(cfg, recorded: dict, writer=None) -> Trainer:
  """The run's model, data and evaluator, its weights not restored yet (Trainer.restore)."""
  strategy = distribute.create_strategy(cfg)
  keras.utils.set_random_seed(cfg.seed)
  data = run_files.load_data(cfg)
  plan = planning.resolve(cfg, data, strategy, recorded, training=False)
  return Trainer(cfg, strategy, data, plan=plan, restore=False, writer=writer)


def checkpoint(model_dir: str, which: str, program: str) -> str:
  """The checkpoint prefix `which` names: final (the run's latest), best, or a prefix of
  the run's own (`program`'s command takes another run's); one line when there is none."""
  q = shlex.quote
  if which in ("final", "best"):
    where = files.join(model_dir, "checkpoints" if which == "final" else "best")
    path = tf.train.latest_checkpoint(where)
    if path is None:
      fix = ("train first with python -m trainer.main " + flag_arg("model_dir", model_dir)
             if which == "final" else "keep one with --keep_best=accuracy, or give "
             "--checkpoint=final")
      raise UsageError(f"no {which} checkpoint in {q(where)}: {fix}")
    return path
  run_files.check_own_checkpoint(model_dir, which, program)
  if not tf.io.gfile.exists(which + ".index"):
    raise UsageError(f"{flag_arg('checkpoint', which)} is no checkpoint: give final, best or "
                     f"a prefix in {q(files.join(model_dir, 'checkpoints'))} (ckpt-STEP)")
  return which
