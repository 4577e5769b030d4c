"""What each technique adds to a recipe: the recipe, then the recipe with one technique
taken out at a time, each an ordinary run per seed (resumable; finished runs are skipped).

    python scripts/ablation.py --flagfile=configs/fashion_best.cfg --root=runs/ablation \
        [--data_dir=DIR] [--seeds=0,1] [--only="no whitening,no label smoothing"] \
        [--also="crop added:--augment=crop=2,flip"] [-- --epochs=10]

Selection and the figures are on the recipe's validation split, averaged over the seeds;
the test accuracy is shown too (each run's test set is evaluated once, at its end). EMA and
TTA need no runs of their own: neither changes training, so the recipe's raw weights are
the recipe without EMA, and its plain predictions the recipe without TTA.
Writes benchmarks/ablation.{json,md} (or --out) and one HParams experiment over the runs
in ROOT (`tensorboard --logdir ROOT`). When a run fails, the table is printed but not
written (a table with empty cells never replaces a measured one) and the exit status is
not 0. Local paths, also those in the flags after --, are relative to the current
directory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import sweep  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer.process import files  # pylint: disable=g-import-not-at-top,wrong-import-position


def read_flagfile(path: str) -> dict[str, str]:
  """--name=value lines of an absl flagfile (comments and blanks skipped)."""
  values = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line.startswith("--"):
        name, _, value = line[2:].partition("=")
        values[name] = value
  return values


def variants(recipe: dict[str, str]) -> dict[str, list[str]]:
  """Name -> the flags that take one technique out of the recipe (those it uses)."""
  out = {}
  if float(recipe.get("label_smoothing", 0)):
    out["no label smoothing"] = ["--label_smoothing=0"]
  if float(recipe.get("mixup", 0)) or float(recipe.get("cutmix", 0)):
    out["no mixup/cutmix"] = ["--mixup=0", "--cutmix=0", "--mix_probability=1"]
  augment = [a for a in recipe.get("augment", "none").split(",") if a and a != "none"]
  for item in augment:
    key = item.partition("=")[0]
    rest = ",".join(a for a in augment if a != item) or "none"
    out[f"no {key}"] = [f"--augment={rest}"]
  if recipe.get("lr_schedule", "constant") != "constant":
    out[f"constant rate (not {recipe['lr_schedule']})"] = [
        "--lr_schedule=constant", "--final_learning_rate=0", "--warmup_steps=0"]
  if recipe.get("nesterov") == "true" or "nesterov" in recipe:
    out["no Nesterov"] = ["--nonesterov"]
  if float(recipe.get("weight_decay", 0)):
    out["no weight decay"] = ["--weight_decay=0"]
  if "flip=alternating" in augment:
    out["random flips (not alternating)"] = [
        "--augment=" + ",".join("flip" if a == "flip=alternating" else a for a in augment)]
  if recipe.get("model") == "airbench":
    if recipe.get("whiten", "2") != "0":
      out["no whitening (a trainable 3x3 conv)"] = ["--whiten=0"]
    if recipe.get("identity_init", "true") in ("", "true"):
      out["no identity init (Glorot)"] = ["--noidentity_init"]
    momentum = recipe.get("bn_momentum", "0.4")  # airbench's default
    if float(momentum) != 0.99:
      out[f"BN momentum 0.99 (not {momentum})"] = ["--bn_momentum=0.99"]
  if float(recipe.get("muon_learning_rate", 0)):
    out["no Muon (momentum SGD for the filters too)"] = ["--muon_learning_rate=0"]
  if float(recipe.get("bn_lr_multiplier", 1)) != 1:
    out[f"BN rate x1 (not x{recipe['bn_lr_multiplier']})"] = ["--bn_lr_multiplier=1"]
  if recipe.get("lookahead") in ("", "true"):
    out["no lookahead"] = ["--nolookahead"]
  return out


def _figure(results: dict, split: str, kind: str = "") -> float | None:
  """A run's accuracy on split: with TTA where the run used it (the recipe's own figure);
  kind "raw_" is its raw weights', "plain" its predictions without TTA."""
  if kind == "plain":
    return results.get(f"{split}_accuracy")
  return results.get(f"{split}_{kind}tta_accuracy", results.get(f"{split}_{kind}accuracy"))


def _mean(values: list) -> float | None:
  return None if not values or None in values else sum(values) / len(values)


def rows(outcomes: dict[str, list[dict]]) -> list[dict]:
  """Recipe first, then each variant, each the mean over its seeds' runs; the EMA row is
  the recipe's raw weights, the TTA row its plain predictions."""
  recipe = outcomes["recipe"]
  out = []

  def row(name, runs, kind=""):
    validation = [_figure(r, "validation", kind) for r in runs]
    return {"variant": name, "validation_accuracy": _mean(validation),
            "validation_seeds": validation,
            "test_accuracy": _mean([_figure(r, "test", kind) for r in runs]),
            "train_seconds": _mean([r.get("train_seconds") for r in runs])}
  out.append(row("recipe", recipe))
  # With lookahead the average steers training: its raw weights are no recipe without it.
  lookahead = any((r.get("flags") or {}).get("lookahead") for r in recipe)
  if all("validation_raw_accuracy" in r for r in recipe) and not lookahead:
    out.append(row("no EMA (the recipe's raw weights)", recipe, "raw_"))
  if all("validation_tta_accuracy" in r for r in recipe):
    out.append(row("no TTA (the recipe's plain predictions)", recipe, "plain"))
  out += [row(name, runs) for name, runs in outcomes.items() if name != "recipe"]
  base = out[0]["validation_accuracy"]
  for r in out:
    r["validation_change"] = (None if r["validation_accuracy"] is None or base is None
                              else r["validation_accuracy"] - base)
  return out


def markdown(table: list[dict]) -> str:
  lines = ["| variant | validation acc % (per seed) | change (points) | test acc % | training s |",
           "|---|---:|---:|---:|---:|"]
  pct = lambda v: "-" if v is None else f"{100 * v:.2f}"
  for r in table:
    change = "" if r["variant"] == "recipe" or r["validation_change"] is None else (
        f"{100 * r['validation_change']:+.2f}")
    seconds = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
    validation = pct(r["validation_accuracy"])
    if len(r["validation_seeds"]) > 1:
      validation += " (" + ", ".join(pct(v) for v in r["validation_seeds"]) + ")"
    lines.append(f"| {r['variant']} | {validation} | {change} | "
                 f"{pct(r['test_accuracy'])} | {seconds} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--flagfile", required=True)
  parser.add_argument("--root", default=os.path.join(ROOT, "runs", "ablation"))
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "ablation"))
  parser.add_argument("--also", action="append", default=[], metavar="NAME:FLAGS",
                      help="one more variant, e.g. a technique the recipe does not use: "
                           "its name, a colon, then its flags separated by spaces")
  parser.add_argument("--seeds", default="0,1",
                      help="one run per seed and row (--seed=N); the rows give their mean")
  parser.add_argument("--only", default=None, metavar="NAMES",
                      help="comma-separated: run only these of the recipe's variants")
  parser.add_argument("rest", nargs="*", help="flags for every run, after --")
  args = parser.parse_args(argv)
  flagfile, root = sweep.resolve(args.flagfile), sweep.resolve(args.root)
  out, data_dir = sweep.resolve(args.out), sweep.resolve(args.data_dir)
  if not files.is_local(flagfile) or not os.path.isfile(flagfile):
    print(f"error: --flagfile={shlex.quote(args.flagfile)}: no such local file",
          file=sys.stderr)
    return 2
  recipe = read_flagfile(flagfile)
  if "validation_split" not in recipe:
    print("error: the recipe has no --validation_split: an ablation compares on validation",
          file=sys.stderr)
    return 2
  also = {}
  for spec in args.also:
    name, _, flags = spec.partition(":")
    if not name.strip() or not flags.strip():
      print(f"error: --also={spec!r} is not NAME:FLAGS, e.g. \"crop added:--augment=crop=2\"",
            file=sys.stderr)
      return 2
    also[name.strip()] = flags.split()
  try:
    seeds = [int(seed) for seed in args.seeds.split(",")]
  except ValueError:
    seeds = []
  if not seeds:
    print(f"error: --seeds={args.seeds!r} is not a list of integers, e.g. 0,1", file=sys.stderr)
    return 2
  chosen = variants(recipe)
  if args.only is not None:
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in chosen]
    if unknown:
      print(f"error: --only: {', '.join(unknown)} is not a variant of this recipe; its "
            f"variants: {'; '.join(chosen)}", file=sys.stderr)
      return 2
    chosen = {name: chosen[name] for name in names}
  if any(a.startswith("--seed=") for a in [*args.rest, *(f for v in also.values() for f in v)]):
    print("error: --seed after -- or in --also would give every seed's run one seed: list "
          "the seeds with --seeds=0,1,...", file=sys.stderr)
    return 2
  base = [f"--flagfile={flagfile}", *args.rest]
  if data_dir:
    base.append(f"--data_dir={data_dir}")
  outcomes = {}
  for name, extra in {"recipe": [], **chosen, **also}.items():
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")  # a plain directory name
    outcomes[name] = []
    for seed in seeds:  # seed 0 alone keeps the directory of a one-seed ablation
      model_dir = os.path.join(root, slug) if seeds == [0] else os.path.join(
          root, slug, f"seed{seed}")
      label = name if len(seeds) == 1 else f"{name}, seed {seed}"
      outcomes[name].append(sweep.train(model_dir, [*base, f"--seed={seed}", *extra], label))
  runs = [r for results in outcomes.values() for r in results]
  sweep.write_experiment(root, [r.get("flags") for r in runs])
  table = rows(outcomes)
  print(markdown(table))
  failed = {name: r for name, results in outcomes.items() for r in results
            if "returncode" in r}
  if failed:
    failures = sum("returncode" in r for r in runs)
    print(f"error: {failures} of {len(runs)} runs failed ({', '.join(failed)}): "
          f"{shlex.quote(out + '.json')} and .md are left as they were", file=sys.stderr)
    usage = [r for r in failed.values() if r["returncode"] == 2]
    if usage:  # bad flags or a run of other flags: what to change, as the trainer says it
      print(f"error: {usage[0]['error']}", file=sys.stderr)
      return 2
    return 1
  files.write_text(out + ".json", json.dumps(
      {"flagfile": args.flagfile, "extra_flags": args.rest, "seeds": seeds, "rows": table},
      indent=1))
  files.write_text(out + ".md", markdown(table) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
