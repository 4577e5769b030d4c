"""Train every combination of a grid of flags and compare them in TensorBoard's HParams tab.

    python scripts/sweep.py --flagfile=configs/mlp_5x50.cfg --grid=learning_rate=1e-3,3e-3 \
        --grid=dropout=0,0.2 --root=runs/sweep [--parallel=2] [-- --epochs=2 ...]

Each trial is an ordinary run in ROOT/<name=value,...> (its log in train.log there), so a
rerun of the sweep resumes unfinished trials and skips finished ones. ROOT gets one HParams
experiment over all trials (`tensorboard --logdir ROOT`) and sweep.json, and the console a
table ranked by eval accuracy. Values of a list-valued flag are separated by ';':
--grid='hidden_units=50;50,50'.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from trainer import tf_env  # pylint: disable=g-import-not-at-top,wrong-import-position

tf_env.apply()  # TensorFlow's settings for this process and every trial's

from trainer import flags as tl_flags  # pylint: disable=g-import-not-at-top,wrong-import-position


class SweepError(ValueError):
  """A bad grid or argument; exits 2 with this message."""


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
  """["lr=1,2", "dropout=0;0.2"] -> {"lr": ["1", "2"], "dropout": ["0", "0.2"]}."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  tl_flags.define_flags()
  grid = {}
  for spec in specs:
    name, sep, values = spec.partition("=")
    name = name.strip().lstrip("-")
    if not sep or not values:
      raise SweepError(f"--grid={spec}: expected NAME=V1,V2,...")
    if name not in tl_flags.OWN_FLAGS:
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
  """Runs python -m trainer.main with args into model_dir, its output in model_dir/train.log;
  a finished run (results.json) is not run again. Returns its results, or "error" and
  "returncode"; "status" says which."""
  results_path = os.path.join(model_dir, "results.json")
  if os.path.exists(results_path):
    with open(results_path) as f:
      return {"status": "done before", **json.load(f)}
  os.makedirs(model_dir, exist_ok=True)
  print(f"start  {label}", flush=True)
  with open(os.path.join(model_dir, "train.log"), "a") as log:
    proc = subprocess.run([sys.executable, "-m", "trainer.main", *args,
                           f"--model_dir={model_dir}"], stdout=log, stderr=subprocess.STDOUT,
                          cwd=ROOT, check=False)
  if proc.returncode != 0:
    with open(os.path.join(model_dir, "train.log")) as f:
      last = (f.read().strip().splitlines() or ["(no output)"])[-1].removeprefix("error: ")
    print(f"failed {label}: exit {proc.returncode}: {last}", flush=True)
    return {"status": f"exit {proc.returncode}", "error": last, "returncode": proc.returncode}
  with open(results_path) as f:
    results = json.load(f)
  print(f"done   {label}: {_figures(results)}", flush=True)
  return {"status": "trained", **results}


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
  """Markdown, best eval accuracy first."""
  ranked = sorted(outcomes, key=lambda r: -(_eval_accuracy(r) or -1.0))
  rows = ["| trial | validation accuracy | test accuracy | train s | status |",
          "|---|---:|---:|---:|---|"]
  for r in ranked:
    cell = lambda k: f"{r[k]:.4f}" if k in r else "-"
    seconds = f"{r['train_seconds']:.0f}" if r.get("train_seconds") is not None else "-"
    rows.append(f"| {trial_name(r['trial'])} | {cell('validation_accuracy')} | "
                f"{cell('test_accuracy')} | {seconds} | {r['status']} |")
  return "\n".join(rows)


def write_experiment(root: str, grid: dict[str, list[str]]) -> None:
  """One HParams experiment over all trials: every flag a column, the grid's with their
  values as a domain."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from trainer import summaries  # pylint: disable=g-import-not-at-top
  domains = {name: sorted({summaries.readable(flags.FLAGS[name].parser.parse(v))
                           for v in values}) for name, values in grid.items()}
  writer = tf.summary.create_file_writer(root)
  summaries.write_experiment(writer, tl_flags.OWN_FLAGS, domains)
  writer.close()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--flagfile", help="the base configuration of every trial")
  parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                      help="a flag and its values; repeat for more flags")
  parser.add_argument("--root", required=True, help="one model_dir per trial below it")
  parser.add_argument("--parallel", type=int, default=1, help="trials run at once")
  parser.add_argument("trainer_flags", nargs="*", help="after --: flags for every trial")
  args = parser.parse_args(argv)
  try:
    grid = parse_grid(args.grid)
    if args.parallel < 1:
      raise SweepError(f"--parallel={args.parallel} must be positive")
    if args.flagfile and not os.path.exists(args.flagfile):
      raise SweepError(f"--flagfile={args.flagfile} does not exist")
  except SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  base = ([f"--flagfile={os.path.abspath(args.flagfile)}"] if args.flagfile else []) + \
      args.trainer_flags
  root = os.path.abspath(args.root)
  os.makedirs(root, exist_ok=True)
  todo = trials(grid)
  print(f"{len(todo)} trials in {root}, {args.parallel} at a time", flush=True)
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    outcomes = list(pool.map(lambda t: run_trial(t, root=root, base_args=base), todo))
  write_experiment(root, grid)
  with open(os.path.join(root, "sweep.json"), "w") as f:
    json.dump({"grid": grid, "base": base, "trials": outcomes}, f, indent=2, default=str)
  print(table(outcomes))
  print(f"compare them: tensorboard --logdir {root} (HParams tab)")
  usage = [o for o in outcomes if o.get("returncode") == 2]
  if usage:
    print(f"error: {usage[0]['error']}", file=sys.stderr)
    return 2
  return 1 if any("returncode" in o for o in outcomes) else 0


if __name__ == "__main__":
  sys.exit(main())
