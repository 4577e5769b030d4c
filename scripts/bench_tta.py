"""Time to accuracy on Fashion-MNIST: configs/fashion_tta.cfg run as a user runs it.

    python scripts/bench_tta.py [--data_dir=DIR]    # make bench-tta

The recipe (chosen on a validation split, not the test set) is run twice, each time the
whole command (`python -m trainer.main`) in a fresh process, timed from its start to its
results.json: first without the decoded cache (a machine's first run decodes the PNGs and
writes it), then again (every later run). Writes benchmarks/time_to_accuracy.json and
benchmarks/time_to_accuracy.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # pylint: disable=g-import-not-at-top,wrong-import-position
import bench_jobs  # pylint: disable=g-import-not-at-top,wrong-import-position

TTA_RECIPE = os.path.join("configs", "fashion_tta.cfg")
PHASES = ("start_up", "data", "build", "compile", "train", "eval", "export", "other")


def _tta_run(data_dir: str, model_dir: str) -> dict:
  """The recipe as a user runs it: the CLI in a fresh process, timed from its start."""
  cmd = [sys.executable, "-m", "trainer.main", f"--flagfile={TTA_RECIPE}",
         f"--data_dir={data_dir}", f"--model_dir={model_dir}"]
  start = time.time()
  proc = subprocess.run(cmd, cwd=bench_common.ROOT, capture_output=True, text=True, check=False)
  seconds = time.time() - start
  path = os.path.join(model_dir, "results.json")
  if proc.returncode or not os.path.exists(path):
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); its stderr is above")
  with open(path) as f:
    results = json.load(f)
  return {"command_seconds": seconds, "phases": results["phases"],
          "test_accuracy": results["test_accuracy"],
          "examples_per_sec": results["examples_per_sec"],
          "global_step": results["global_step"]}


def time_to_accuracy(data_dir: str) -> dict:
  """The two runs, first without the decoded cache, then with it. The target is on the
  whole process: command start to results.json."""
  # Here, not at the top: it loads TensorFlow, which this script (it times other
  # processes) needs for this default alone, and not before --help.
  from input_pipeline.readers import tfds_source  # pylint: disable=g-import-not-at-top
  cache = os.path.join(data_dir, "fashion_mnist")
  runs = {}
  for name in ("first", "cached"):
    if name == "first":
      for version in os.listdir(cache) if os.path.isdir(cache) else ():
        shutil.rmtree(os.path.join(cache, version, tfds_source.CACHE_DIR), ignore_errors=True)
    with tempfile.TemporaryDirectory() as model_dir:
      runs[name] = _tta_run(data_dir, model_dir)
    r = runs[name]
    print(f"  {name} run: {r['phases']['total']:.1f} s command start to results.json, test "
          f"accuracy {100 * r['test_accuracy']:.2f}%", flush=True)
  return {"machine": bench_jobs.machine(), "recipe": TTA_RECIPE.replace(os.sep, "/"), "runs": runs,
          "targets": targets(runs)}


def targets(runs: dict) -> dict:
  ok = lambda r: r["test_accuracy"] >= 0.92 and r["phases"]["total"] <= 20
  return {"test accuracy >= 92% with the whole process <= 20 s (first run)": ok(runs["first"]),
          "test accuracy >= 92% with the whole process <= 20 s (later runs)": ok(runs["cached"])}


def tta_markdown(result: dict) -> str:
  m = result["machine"]
  lines = [f"Time to accuracy ({m['date']}, {m['cpu']}), `{result['recipe']}`, the whole "
           "command (`python -m trainer.main`), seconds from its start to results.json:", "",
           "| run | test accuracy | total | " + " | ".join(PHASES) + " |",
           "|---|---:|---:|" + "---:|" * len(PHASES)]
  for name, r in result["runs"].items():
    label = {"first": "first (decodes, writes the cache)", "cached": "later (cached)"}[name]
    lines.append(f"| {label} | {100 * r['test_accuracy']:.2f}% | **{r['phases']['total']:.1f}** | "
                 + " | ".join(f"{r['phases'].get(p, 0):.1f}" for p in PHASES) + " |")
  return "\n".join(lines + bench_common.targets_table(result["targets"])) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  # Here, not at the top: it loads TensorFlow, which this script (it times other
  # processes) needs for this default alone, and not before --help.
  from input_pipeline.readers import tfds_source  # pylint: disable=g-import-not-at-top
  parser.add_argument("--data_dir", default=tfds_source.default_data_dir(),
                      help="where `make data` prepared Fashion-MNIST")
  parser.add_argument("--output_dir", default=os.path.join(bench_common.ROOT, "benchmarks"))
  args = parser.parse_args(argv)
  os.makedirs(args.output_dir, exist_ok=True)
  result = time_to_accuracy(args.data_dir)
  bench_common.write(args.output_dir, "time_to_accuracy", result, tta_markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
