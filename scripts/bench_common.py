"""What the benchmarks share, with the standard library only: scripts/peers.py imports it
in the peers' virtualenv, which has no TensorFlow (the TensorFlow side is bench_jobs.py).

The model list: each benchmark model is a configs/ flagfile, of which the benchmarks take
the model flags (--model and the model hyperparameters) and nothing else (not its data,
epochs or threads). Then the settings of the measurements, a measurement in a fresh
process and its result line, and the pieces of the tables.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 128  # per replica: the global batch is BATCH x the number of devices
DATASET = "synthetic:shape=28x28x1,classes=10,train=60000,test=1000"
# name -> its flagfile in configs/: the tutorial's seven models, then the rest of the registry.
MODELS = {
    "mlp_1x50": "mlp_1x50",
    "mlp_1x500": "mlp_1x500",
    "mlp_5x50": "mlp_5x50",
    "mlp_5x50_dropout": "mlp_5x50_dropout",
    "mlp_5x50_dropout_50ep": "mlp_5x50_dropout_50ep",
    "mlp_5x500_dropout_25ep": "mlp_5x500_dropout_25ep",
    "cnn": "mnist_cnn",
    "resnet": "resnet",
}
# The model hyperparameter flags (the trainer's model options but sync_batch_norm, which
# follows the replicas; tests/scripts/test_benchmark.py checks none is missed).
MODEL_FLAGS = ("hidden_units", "activation", "dropout", "l2", "filters", "kernel_sizes",
               "dense_units", "widths", "blocks_per_stage", "whiten", "bn_momentum",
               "identity_init")
# The smallest MLPs, whose steps are mostly per-op overhead: benchmark.py holds them to
# 1.5x Keras fit at its default. (They once trained with --intra_op_threads=1; inside the
# XLA loop TensorFlow's default of all cores measured 1.2x faster.)
OVERHEAD_BOUND = ("mlp_1x50", "mlp_5x50")
# Steps per tf.function call (and Keras steps_per_execution) where --steps_per_loop would
# make one call last tens of seconds on a CPU.
STEPS_PER_LOOP = {"resnet": 5}
RESULT = "BENCHMARK_RESULT "  # marks a job's JSON line on its stdout


def read_flagfile(path: str) -> dict[str, str | None]:
  """A flagfile's flags in order, name -> value as written (None for a flag without a
  value, a boolean): one flag a line, # comments, as absl reads configs/."""
  flags = {}
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      name, sep, value = line.partition("=")
      if not name.startswith("--") or name == "--flagfile":
        raise ValueError(f"{path}: not read here: {line}")
      flags[name[2:]] = value if sep else None
  return flags


def model_flags(name: str) -> dict[str, str]:
  """The model flags of the benchmark model `name` (a key of MODELS), from its config."""
  flags = read_flagfile(os.path.join(ROOT, "configs", MODELS[name] + ".cfg"))
  if "model" not in flags:
    raise ValueError(f"configs/{MODELS[name]}.cfg names no --model")
  return {k: v for k, v in flags.items() if k == "model" or k in MODEL_FLAGS}


def model_args(name: str) -> list[str]:
  """model_flags as command-line flags, e.g. ["--model=mlp", "--hidden_units=50"]."""
  return [f"--{k}={v}" for k, v in model_flags(name).items()]


def distinct_models() -> list[str]:
  """MODELS without a model that an earlier one already is (a longer run of the same)."""
  seen, names = [], []
  for name in MODELS:
    if model_flags(name) not in seen:
      seen.append(model_flags(name))
      names.append(name)
  return names


def check_models(parser, models: str) -> None:
  """--models names only benchmark models, else the program's usage error (exit 2)."""
  unknown = sorted(set(models.split(",")) - set(MODELS)) if models else []
  if unknown:
    parser.error(f"unknown --models {','.join(unknown)}: choose from {','.join(MODELS)}")


def run_job(cmd: list[str], what: str, env: dict | None = None) -> dict:
  """Runs one measurement process; returns the JSON of its last RESULT line. A failed job
  ends the run, the end of its stderr printed."""
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT)]
  if proc.returncode or not lines:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"{what} failed (exit {proc.returncode}); its stderr is above")
  return json.loads(lines[-1][len(RESULT):])


def print_result(result: dict) -> None:
  """A job's answer to run_job."""
  print(RESULT + json.dumps(result), flush=True)


def summarize(samples: list[float]) -> dict:
  return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
          "samples": samples}


def spread(s: dict) -> str:
  return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def targets_table(targets: dict[str, bool]) -> list[str]:
  return (["", "| target | met |", "|---|---|"] +
          [f"| {k} | {'yes' if ok else '**no**'} |" for k, ok in targets.items()])


def write(output_dir: str, name: str, result: dict, text: str) -> None:
  """OUTPUT_DIR/NAME.md (the table, also printed) and NAME.json (the figures)."""
  with open(os.path.join(output_dir, name + ".md"), "w") as f:
    f.write(text)
  with open(os.path.join(output_dir, name + ".json"), "w") as f:
    json.dump(result, f, indent=2)
  print(text)


def cpu_name() -> str:
  """The CPU's model name (/proc/cpuinfo), else what platform says."""
  try:
    with open("/proc/cpuinfo") as f:
      return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()
