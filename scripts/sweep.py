"""Train every combination of a grid of flags and compare them in TensorBoard's HParams tab.

    python scripts/sweep.py --flagfile=configs/fashion_mlp_5x50.cfg --grid=learning_rate=1e-3,3e-3 \
        --grid=dropout=0,0.2 --root=runs/sweep [--parallel=2] [-- --epochs=2 ...]

Each trial is an ordinary run in ROOT/<name=value,...> (its log in train.log there), so a
rerun of the sweep resumes unfinished trials and skips finished ones: those whose
results.json records the flags the trial runs with now (how it runs aside: model_dir,
data_dir, ...; a longer --epochs or --train_steps extends a trial). A trial directory
holding a run of other flags (the flagfile or the flags after -- changed since) is not
reused nor retrained: the sweep names it before any trial starts and exits 2; use a
new --root. ROOT gets one HParams experiment over all trials (`tensorboard --logdir
ROOT`), the flags that differ between them its first columns, and sweep.json; the console
a table ranked by eval accuracy. ROOT may be a bucket (gs://...). Local paths, also those in the
flags after --, are relative to the current directory. Values of a list-valued flag are
separated by ';': --grid='hidden_units=50;50,50'.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--flagfile", help="the base configuration of every trial")
  parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                      help="a flag and its values; repeat for more flags")
  parser.add_argument("--root", required=True, help="one model_dir per trial below it "
                      "(a local directory or a bucket, gs://...)")
  parser.add_argument("--parallel", type=int, default=1, help="trials run at once")
  parser.add_argument("--dry_run", action="store_true", help="check every trial's flags "
                      "and data, list the trials, and exit writing nothing")
  parser.add_argument("trainer_flags", nargs="*", help="after --: flags for every trial")
  return parser


if __name__ == "__main__":  # --help and a bad argument answered before TensorFlow loads
  _parser().parse_args()

from trainer.process import tf_env  # pylint: disable=g-import-not-at-top,wrong-import-position

tf_env.apply()  # TensorFlow's settings for this process and every trial's
tf_env.leave_gpus_to_children()  # it checks on GPUs its trials train on

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
import tensorflow as tf

from trainer.options import command_line, declared
from trainer.process import files
from trainer.run import dry_run, run_files, run_record
# The trainer as a child process (also the tutorial's and the ablation's).
from trainer.run.child_runs import (changed_flags, flags_for, read_json, resolve, run_trainer,
                                write_experiment)
from trainer.options.values import short
from trainer.process.errors import UsageError
# pylint: enable=g-import-not-at-top,wrong-import-position


class SweepError(ValueError):
  """A bad grid or argument; exits 2 with this message."""


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
  """["lr=1,2", "dropout=0;0.2"] -> {"lr": ["1", "2"], "dropout": ["0", "0.2"]}."""
  command_line.define_flags()
  grid = {}
  for spec in specs:
    name, sep, values = spec.partition("=")
    name = name.strip().lstrip("-")
    if not sep or not values:
      raise SweepError(f"--grid={spec}: expected NAME=V1,V2,...")
    if name not in command_line.OWN_FLAGS:
      raise SweepError(f"--grid={spec}: --{name} is not a tapeloop flag (see python -m "
                       "trainer.main --help)")
    if name in grid or name == "model_dir":
      raise SweepError(f"--grid={spec}: --{name} cannot be swept twice, nor model_dir")
    # A list-valued flag's own values hold commas: its grid values are split on ';'.
    is_list = isinstance(flags.FLAGS[name].parser, flags.ListParser)
    split = values.split(";" if is_list or ";" in values else ",")
    grid[name] = [v.strip() for v in split if v.strip()]
    for value in grid[name]:
      try:
        flags.FLAGS[name].parser.parse(value)
      except (ValueError, TypeError) as e:
        raise SweepError(f"--grid={spec}: {value!r} is not a valid --{name}: {e}") from None
  if not grid:
    raise SweepError("give at least one --grid=NAME=V1,V2")
  return grid


def trials(grid: dict[str, list[str]]) -> list[dict[str, str]]:
  names = list(grid)
  return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


def trial_name(trial: dict[str, str]) -> str:
  return ",".join(f"{k}={v.replace(',', '_').replace('/', '_')}" for k, v in trial.items())


def train(model_dir: str, args: list[str], label: str) -> dict:
  """Runs python -m trainer.main ARGS --model_dir=MODEL_DIR, its output appended to
  model_dir/train.log, unless model_dir holds the finished run of these flags. Returns its
  results, or "error" and "returncode"; "status" says which; "flags": the flags it ran, or
  would run, with.

  model_dir holding a run of other flags (what it trains, beyond --allow_changed_flags) is
  refused here, exit status 2, without starting the trainer: it would refuse too, advising
  a new --model_dir, where a sweep's user picks a new --root."""
  model_dir = resolve(model_dir)
  try:  # the trainer would refuse it too, after this made the directory and its log
    run_files.check_checkpoint_path(model_dir)
  except ValueError as e:
    print(f"failed {label}: {e}", flush=True)
    return {"status": "exit 2", "error": str(e), "returncode": 2}
  current, results, error = _recorded(model_dir, args)
  if error:
    error += " (nothing was changed in that directory)"
    print(f"failed {label}: {error}", flush=True)
    return {"status": "other flags", "error": error, "returncode": 2, "flags": current}
  if current is not None and results and "flags" in results and not changed_flags(
      results["flags"], current):
    return {"status": "done before", **results}
  tf.io.gfile.makedirs(model_dir)
  print(f"start  {label}", flush=True)
  returncode, last = run_trainer(model_dir, [*args, f"--model_dir={model_dir}"])
  results = read_json(os.path.join(model_dir, "results.json")) if returncode == 0 else None
  if results is None:
    returncode = returncode or 1
    print(f"failed {label}: exit {returncode}: {last}", flush=True)
    return {"status": f"exit {returncode}", "error": last, "returncode": returncode,
            **({"flags": current} if current is not None else {})}
  print(f"done   {label}: {_figures(results)}", flush=True)
  return {"status": "trained", **results}


def _recorded(model_dir: str, args: list[str]) -> tuple[dict | None, dict | None, str | None]:
  """(the flags ARGS run with in model_dir, its results.json, and the refusal when it holds
  a run of other flags: what it trains, beyond --allow_changed_flags and the run length)."""
  current = flags_for([*args, f"--model_dir={model_dir}"])
  results = read_json(os.path.join(model_dir, "results.json"))
  recorded = read_json(os.path.join(model_dir, "flags.json")) or (results or {}).get("flags")
  if current is None or recorded is None:
    return current, results, None
  allowed = set(current.get("allow_changed_flags") or ())
  other = {k: v for k, v in changed_flags(recorded, current).items()
           if k not in declared.RUN_LENGTH and k not in allowed}
  if not other:
    return current, results, None
  return current, results, (f"{shlex.quote(model_dir)} holds a run of other flags "
                            f"({run_record.listed(other)}): use a new --root")


def check_trials(root: str, base: list[str], todo: list[dict[str, str]]) -> None:
  """Every trial's flags, data and plan, checked as its trainer would check them before
  its first step (trainer/run/dry_run.py), and its directory against a run of other flags
  there, before any trial starts: a refusal is one line, not failed trials after others
  trained."""
  for trial in todo:
    where = f"trial {trial_name(trial)}" if len(todo) > 1 else "the trial"
    model_dir = resolve(os.path.join(root, trial_name(trial)))
    args = [*base, *(f"--{k}={v}" for k, v in trial.items())]
    _, _, other = _recorded(model_dir, args)
    if other:
      raise SweepError(f"{where}: {other} (no trial was started)")
    try:
      dry_run.check_runs([[*args, f"--model_dir={model_dir}"]])
    except UsageError as e:
      raise SweepError(f"{where}: {e} (no trial was started)") from None


def run_trial(trial, *, root, base_args) -> dict:
  """Trains one trial (resuming it when unfinished); returns its results or its error."""
  return {"trial": trial, **train(os.path.join(root, trial_name(trial)),
                                  [*base_args, *(f"--{k}={v}" for k, v in trial.items())],
                                  trial_name(trial))}


def _eval_accuracy(results: dict) -> float | None:
  return results.get("validation_accuracy", results.get("test_accuracy"))


def _figures(results: dict) -> str:
  parts = []
  for split in ("validation", "test"):
    if f"{split}_accuracy" in results:
      parts.append(f"{split} accuracy {results[f'{split}_accuracy']:.4f}")
  return ", ".join(parts)


def table(outcomes: list[dict]) -> str:
  """Markdown, best eval accuracy first, figures to 4 significant digits."""
  ranked = sorted(outcomes, key=lambda r: -(_eval_accuracy(r) or -1.0))
  rows = ["| trial | validation accuracy | test accuracy | train s | status |",
          "|---|---:|---:|---:|---|"]
  for r in ranked:
    cell = lambda k: short(r[k], figure=True) if k in r else "-"
    seconds = f"{r['train_seconds']:.0f}" if r.get("train_seconds") is not None else "-"
    rows.append(f"| {trial_name(r['trial'])} | {cell('validation_accuracy')} | "
                f"{cell('test_accuracy')} | {seconds} | {r['status']} |")
  return "\n".join(rows)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  root, flagfile = resolve(args.root), resolve(args.flagfile)
  try:
    grid = parse_grid(args.grid)
    if args.parallel < 1:
      raise SweepError(f"--parallel={args.parallel} must be positive")
    if flagfile and not files.is_local(flagfile):  # absl reads flagfiles with open()
      raise SweepError(f"--flagfile={shlex.quote(args.flagfile)}: give a local file")
    if flagfile and not os.path.isfile(flagfile):
      raise SweepError(f"--flagfile={shlex.quote(args.flagfile)} does not exist")
    base = ([f"--flagfile={flagfile}"] if flagfile else []) + args.trainer_flags
    todo = trials(grid)
    try:
      run_files.check_checkpoint_path(root, "--root")  # before anything is made there
    except ValueError as e:
      raise SweepError(str(e)) from None
    check_trials(root, base, todo)
    if args.dry_run:
      first = os.path.join(root, trial_name(todo[0]))
      try:
        plan = dry_run.plan_lines([*base, *(f"--{k}={v}" for k, v in todo[0].items()),
                                   f"--model_dir={first}"])
      except UsageError as e:
        raise SweepError(f"trial {trial_name(todo[0])}: {e} (no trial was started)") from None
      print(f"dry run: nothing was written; without --dry_run this trains {len(todo)} "
            f"trials, {args.parallel} at a time, each in {shlex.quote(root)}/NAME:")
      for trial in todo:
        print(f"  {trial_name(trial)}")
      print(f"the first, {trial_name(todo[0])}, as trainer.main's dry run says it:")
      for line in plan:
        print(f"  {line}")
      return 0
    try:
      tf.io.gfile.makedirs(root)
    except ValueError as e:
      raise SweepError(str(e)) from None
    except tf.errors.OpError as e:
      first = (e.message or type(e).__name__).strip().splitlines()[0][:160]
      raise SweepError(f"--root={shlex.quote(args.root)}: {first}") from None
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{len(todo)} trials in {shlex.quote(root)}, {args.parallel} at a time", flush=True)
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    outcomes = list(pool.map(lambda t: run_trial(t, root=root, base_args=base), todo))
  write_experiment(root, [o.get("flags") for o in outcomes])
  files.write_text(os.path.join(root, "sweep.json"), json.dumps(
      {"grid": grid, "base": base, "trials": outcomes}, indent=2, default=str) + "\n")
  print(table(outcomes))
  print(f"compare them: tensorboard --logdir {shlex.quote(root)} (HParams tab)")
  usage = [o for o in outcomes if o.get("returncode") == 2]
  if usage:
    more = f" (and {len(usage) - 1} more: see above)" if len(usage) > 1 else ""
    print(f"error: {usage[0]['error']}{more}", file=sys.stderr)
    return 2
  return 1 if any("returncode" in o for o in outcomes) else 0


if __name__ == "__main__":
  sys.exit(main())
