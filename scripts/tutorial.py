"""The digit tutorial reproduced: its seven models trained, compared and tabulated.

    python scripts/tutorial.py                                  # Fashion-MNIST, offline (make tutorial)
    python scripts/tutorial.py --dataset=idx:DIR                # MNIST, from its four gz files

Each model is its configs/ flagfile (Adam, batch 128, a seeded 10% validation split) run
into ROOT/<config> like any run: rerunning resumes or skips. After training, the train
split is evaluated with the final weights (dropout off) to measure overfitting. Writes
OUTPUT.md and OUTPUT.json (only when every model trained: a failed one is printed, never
written over a measured table); `tensorboard --logdir ROOT/<dataset>` shows them as one
HParams experiment, the flags that differ between them its first columns. Local paths,
also those in the flags after --, are relative to the current directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import sweep  # first: it applies trainer.process.tf_env's settings before TensorFlow loads

import tensorflow as tf

import bench_common
import bench_jobs
from input_pipeline.readers import tfds_source
from trainer.process import files
from trainer.run import child_runs
# pylint: enable=g-import-not-at-top,wrong-import-position

# The tutorial's seven models, in its order (the benchmarks' models but the ResNet), with
# the validation accuracy it published on MNIST (the Kaggle Digit Recognizer's training set).
PUBLISHED = {
    "mlp_1x50": ("MLP 1x50", 94.70),
    "mlp_1x500": ("MLP 1x500", 97.13),
    "mlp_5x50": ("MLP 5x50", 95.41),
    "mlp_5x50_dropout": ("MLP 5x50, dropout 0.2", 94.59),
    "mlp_5x50_dropout_50ep": ("MLP 5x50, dropout 0.2, 50 epochs", 96.31),
    "mlp_5x500_dropout_25ep": ("MLP 5x500, dropout 0.2, 25 epochs", 97.74),
    "cnn": ("CNN", 97.97),
}
# (config, title, published accuracy): each model is its configs/ flagfile, run whole.
MODELS = tuple((bench_common.MODELS[name], title, published)
               for name, (title, published) in PUBLISHED.items())


def train_accuracy(model_dir: str, step: int) -> float | None:
  """The train split's accuracy with the weights of `step`, the run's last (python -m
  trainer.evaluate); an eval_train.json of another step (the run since extended) is not
  reused."""
  path = os.path.join(model_dir, "eval_train.json")
  try:
    done = files.read_json(path)
  except ValueError:  # damaged: evaluated again
    done = None
  if done is None or done.get("global_step") != step:
    command, env = child_runs.trainer_command("trainer.evaluate", [
        f"--model_dir={model_dir}", "--split=train", "--noeval_images"])
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
      print(f"failed to evaluate the train split of {shlex.quote(model_dir)}: {last}",
            flush=True)
      return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)["accuracy"]


def row(config: str, title: str, published: float, results: dict, train_acc) -> dict:
  flags = results.get("flags", {})
  val, test = results.get("validation_accuracy"), results.get("test_accuracy")
  return {"config": config, "model": title, "parameters": results.get("parameters"),
          "epochs": flags.get("epochs"), "train_accuracy": train_acc,
          "validation_accuracy": val, "test_accuracy": test,
          "gap": (train_acc - val) if train_acc is not None and val is not None else None,
          "train_seconds": results.get("train_seconds"),
          "wall_seconds": results.get("wall_seconds"),
          "eval_pictures_seconds": results.get("eval_pictures_seconds"),
          "examples_per_sec": results.get("examples_per_sec"),
          "published_mnist_validation_accuracy": published / 100,
          "status": results.get("status"), "error": results.get("error")}


def markdown(rows: list[dict], header: str) -> str:
  pct = lambda v: "-" if v is None else f"{100 * v:.2f}"
  lines = [header, "",
           "| # | model | parameters | epochs | train acc % | validation acc % | gap (points) | "
           "test acc % | training s | run s | eval pictures % of run | "
           "tutorial's validation acc % (MNIST) |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for i, r in enumerate(rows, start=1):
    seconds = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
    wall = "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}"
    pictures = ("-" if not r["eval_pictures_seconds"] or not r["wall_seconds"] else
                f"{100 * r['eval_pictures_seconds'] / r['wall_seconds']:.1f}")
    params = "-" if r["parameters"] is None else f"{r['parameters']:,}"
    lines.append(f"| {i} | {r['model']} | {params} | {r['epochs'] or '-'} | "
                 f"{pct(r['train_accuracy'])} | {pct(r['validation_accuracy'])} | "
                 f"{pct(r['gap'])} | {pct(r['test_accuracy'])} | {seconds} | {wall} | {pictures} | "
                 f"{pct(r['published_mnist_validation_accuracy'])} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", default="fashion_mnist")
  parser.add_argument("--data_dir", default=tfds_source.default_data_dir(),
                      help="where `make data` prepared Fashion-MNIST")
  parser.add_argument("--root", default=os.path.join(ROOT, "runs", "tutorial"))
  parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "tutorial"),
                      help="writes OUTPUT.md and OUTPUT.json")
  parser.add_argument("--models", default=",".join(m[0] for m in MODELS),
                      help="comma list of the configs to run")
  parser.add_argument("trainer_flags", nargs="*", help="after --: flags for every model")
  args = parser.parse_args(argv)
  chosen = args.models.split(",")
  unknown = sorted(set(chosen) - {m[0] for m in MODELS})
  if unknown:
    print(f"error: --models: unknown {', '.join(unknown)}; known: "
          f"{', '.join(m[0] for m in MODELS)}", file=sys.stderr)
    return 2
  root = os.path.join(sweep.resolve(args.root),
                      args.dataset.replace(":", "_").replace("/", "_"))
  data_dir, output = sweep.resolve(args.data_dir), sweep.resolve(args.output)
  rows, flags = [], []
  for config, title, published in MODELS:
    if config not in chosen:
      continue
    model_dir = os.path.join(root, config)
    flagfile = os.path.join(ROOT, "configs", config + ".cfg")
    results = sweep.train(model_dir, [f"--flagfile={flagfile}", f"--dataset={args.dataset}",
                                      f"--data_dir={data_dir}", *args.trainer_flags], config)
    if results.get("returncode") == 2:  # bad input: every model would fail alike
      print(f"error: {results['error']}", file=sys.stderr)
      return 2
    accuracy = (train_accuracy(model_dir, results["global_step"])
                if "returncode" not in results else None)
    rows.append(row(config, title, published, results, accuracy))
    flags.append(results.get("flags"))
  sweep.write_experiment(root, flags)
  machine = bench_jobs.machine()
  header = (f"The tutorial's seven models on `{args.dataset}`, measured {machine['date']} on "
            f"{machine['cpu']}, {machine['cores']} cores, TensorFlow {machine['tensorflow']}: "
            "Adam, batch 128, a seeded 10% of train held out for validation. Train accuracy: "
            "the final weights on the training split with dropout off; gap = train - "
            "validation. Training s: the inner loops (compilation "
            "included); run s: the whole command (start-up, data, evals, export). Eval "
            "pictures: the confusion matrix, worst mistakes and per-class table of every "
            "eval. The last column is the tutorial's own figure on MNIST, for reference.")
  print(markdown(rows, header))
  failed = [r["config"] for r in rows if r["error"]]
  if failed:
    print(f"error: {', '.join(failed)} failed (see above): {shlex.quote(output + '.md')} "
          "and .json are left as they were", file=sys.stderr)
    return 1
  files.write_text(output + ".md", markdown(rows, header))
  files.write_text(output + ".json", json.dumps(
      {"dataset": args.dataset, "machine": machine, "rows": rows}, indent=2))
  print(f"written: {shlex.quote(output + '.md')}, {shlex.quote(output + '.json')}; "
        f"TensorBoard: tensorboard --logdir {shlex.quote(root)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
