"""tapeloop against Keras fit, side by side in one run, on MNIST-shaped synthetic data.

    python scripts/benchmark.py                  # make bench: benchmarks/results.{json,md}
    python scripts/benchmark.py --device=gpu     # every GPU, mirrored (cpu:N: N logical CPUs)
    python scripts/bench_peers.py                # make bench-peers: JAX and PyTorch too
    python scripts/bench_tta.py                  # make bench-tta: time to accuracy

For each model (bench_common.MODELS: the model flags of its configs/ file), interleaved
and repeated (--repeats): tapeloop's steady-state training throughput (trace and compile
time apart), Keras `fit` on the same model class with default settings and with
steps_per_execution = steps_per_loop, the input pipeline alone, and the machine's fp32
matmul peak measured in the same run; each model's training FLOP/s is reported as a
fraction of that peak. Every measurement job runs in a fresh process (bench_jobs.py):
tapeloop's (and the machine figures) with the settings tapeloop's entry points apply
(trainer/process/tf_env.py), Keras fit's with TensorFlow's defaults.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # pylint: disable=g-import-not-at-top,wrong-import-position
import bench_jobs  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench_common import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    BATCH, DATASET, MODELS, STEPS_PER_LOOP)

VARIANTS = ("tapeloop", "keras_fit", "keras_fit_spe")
# Keras 3 fit with steps_per_execution > 1 fails under MirroredStrategy ("You must feed a
# value for placeholder tensor ...", keras issue 19246): not measured on several devices.
SPE_UNAVAILABLE = "keras issue 19246: fit with steps_per_execution fails under MirroredStrategy"
MACHINE_FIGURES = ("matmul_gflops", "pipeline", "pipeline_augmented", "tf_data")


def variants(devices) -> tuple[str, ...]:
  return VARIANTS[:2] if devices else VARIANTS


def run_benchmark(args) -> dict:
  names = args.models.split(",") if args.models else list(MODELS)
  raw = {k: [] for k in MACHINE_FIGURES}
  for name in names:
    for variant in variants(args.devices):
      raw[f"{name}/{variant}"] = []
      raw[f"{name}/{variant}/compile"] = []
  flops, machine_info, envs = {}, None, {}
  for repeat in range(args.repeats):
    print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
    m = bench_jobs.isolated({"kind": "machine"}, args.seconds, args.device)
    machine_info = m["machine"]
    envs["machine"] = m.pop("env")
    for key in MACHINE_FIGURES:
      raw[key].append(m[key])
    print(f"  matmul {m['matmul_gflops']:.0f} GFLOP/s  input pipeline "
          f"{m['pipeline']:,.0f} examples/s", flush=True)
    for name in names:
      spl = STEPS_PER_LOOP.get(name, args.steps_per_loop)
      todo = [{"kind": "tapeloop", "model": name, "steps_per_loop": spl,
               "count_flops": name not in flops},
              {"kind": "keras", "model": name, "steps_per_loop": spl,
               "order": list(variants(args.devices)[1:])}]
      if repeat % 2:  # alternate which side goes first, and Keras's order
        todo.reverse()
        todo[0]["order"].reverse()
      r = {}
      for job in todo:
        if job["kind"] == "keras":  # sized from tapeloop's rate: this repeat's or the last
          job["expected_rate"] = r["tapeloop"]["examples_per_sec"] if "tapeloop" in r else \
              raw[f"{name}/tapeloop"][-1]
        result = bench_jobs.isolated(job, args.seconds, args.device)
        envs[job["kind"]] = result.pop("env")
        r.update(result)
      flops.setdefault(name, r.get("train_flops_per_example"))
      for variant in variants(args.devices):
        raw[f"{name}/{variant}"].append(r[variant]["examples_per_sec"])
        raw[f"{name}/{variant}/compile"].append(r[variant]["compile_seconds"])
      print(f"  {name:24s} tapeloop {r['tapeloop']['examples_per_sec']:9.0f}  keras fit "
            f"{r['keras_fit']['examples_per_sec']:9.0f}  spe={spl} "
            f"{r.get('keras_fit_spe', {}).get('examples_per_sec', float('nan')):9.0f} "
            "examples/s", flush=True)
  peak = statistics.median(raw["matmul_gflops"])
  rows = {}
  for name in names:
    measured = variants(args.devices)
    med = {v: statistics.median(raw[f"{name}/{v}"]) for v in measured}
    rows[name] = {
        "steps_per_loop": STEPS_PER_LOOP.get(name, args.steps_per_loop),
        **{v: bench_common.summarize(raw[f"{name}/{v}"]) for v in measured},
        "compile_seconds": {v: statistics.median(raw[f"{name}/{v}/compile"]) for v in measured},
        "vs_keras_default": med["tapeloop"] / med["keras_fit"],
        "vs_keras_best": med["tapeloop"] / max(med[v] for v in measured[1:]),
        "train_flops_per_example": flops[name],
        "train_gflops": med["tapeloop"] * flops[name] / 1e9,
        # Of the peak of all the devices trained on (the matmul runs on one of them).
        "fraction_of_matmul_peak": (med["tapeloop"] * flops[name] / 1e9 / peak
                                    / max(1, len(args.devices))),
    }
  fastest = max(r["tapeloop"]["median"] for r in rows.values())
  replicas = max(1, len(args.devices))
  return {"machine": machine_info, "device": args.device, "replicas": replicas,
          "devices": args.devices, "global_batch_size": BATCH * replicas,
          "per_replica_batch_size": BATCH, "dataset": DATASET,
          "steps_per_loop": args.steps_per_loop, "repeats": args.repeats,
          "seconds_per_measurement": args.seconds,
          "isolation": "every measurement job in a fresh process; tapeloop first in odd "
                       "repeats, Keras fit first in even ones",
          "environment": envs,
          "matmul_gflops": bench_common.summarize(raw["matmul_gflops"]),
          "pipeline": bench_common.summarize(raw["pipeline"]),
          "pipeline_augmented": bench_common.summarize(raw["pipeline_augmented"]),
          "tf_data_pipeline": bench_common.summarize(raw["tf_data"]),
          "pipeline_vs_fastest_model": statistics.median(raw["pipeline"]) / fastest,
          "models": rows, "targets": targets(rows, raw)}


def targets(rows, raw) -> dict:
  out = {}
  for name in bench_common.OVERHEAD_BOUND:
    if name in rows:
      out[f"{name} >= 1.5x keras fit (default)"] = rows[name]["vs_keras_default"] >= 1.5
  for name, row in rows.items():
    out[f"{name} >= 1.05x keras fit (best)"] = row["vs_keras_best"] >= 1.05
  if "cnn" in rows:
    out["cnn >= 35% of matmul peak"] = rows["cnn"]["fraction_of_matmul_peak"] >= 0.35
  fastest = max(r["tapeloop"]["median"] for r in rows.values())
  out["input pipeline >= 10x the fastest model"] = statistics.median(raw["pipeline"]) >= 10 * fastest
  return out


def _env(env: dict) -> str:
  onednn = env.get("TF_ENABLE_ONEDNN_OPTS")
  return ("TensorFlow's default oneDNN setting" if onednn is None
          else f"TF_ENABLE_ONEDNN_OPTS={onednn}")


def _where(result: dict) -> str:
  replicas = result.get("replicas", 1)
  if replicas == 1:
    return f"one device ({result.get('device', 'cpu')})"
  kind = "GPUs" if result.get("device") == "gpu" else "logical CPU devices"
  gpus = result["machine"].get("gpus") or []
  return (f"{replicas} {kind} (MirroredStrategy{', ' + gpus[0] if gpus else ''}), "
          f"per-replica batch {result.get('per_replica_batch_size', BATCH)}")


def markdown(result: dict) -> str:
  m, spread = result["machine"], bench_common.spread
  lines = [
      f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, TensorFlow {m['tensorflow']}, "
      f"Keras {m['keras']}; {_where(result)}; global batch {result['global_batch_size']}, Adam, "
      f"MNIST-shaped synthetic data, {result['repeats']} interleaved repeats, each "
      f"measurement in a fresh process: median (min-max) examples/s. tapeloop runs with "
      f"{_env(result['environment'].get('tapeloop', {}))}, Keras fit with "
      f"{_env(result['environment'].get('keras', {}))}. Keras fit: numpy arrays, default settings, and "
      f"steps_per_execution equal to tapeloop's steps_per_loop (column spl).",
      "",
      "| model | spl | tapeloop | Keras fit | Keras fit, spe | vs fit | vs best fit | "
      "train GFLOP/s | of matmul peak | compile s (tapeloop / fit) |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, r in result["models"].items():
    lines.append(
        f"| {name} | {r['steps_per_loop']} | {spread(r['tapeloop'])} | {spread(r['keras_fit'])} | "
        f"{spread(r['keras_fit_spe']) if 'keras_fit_spe' in r else 'n/a'} | "
        f"{r['vs_keras_default']:.2f}x | "
        f"{r['vs_keras_best']:.2f}x | {r['train_gflops']:.1f} | "
        f"{100 * r['fraction_of_matmul_peak']:.0f}% | "
        f"{r['compile_seconds']['tapeloop']:.1f} / {r['compile_seconds']['keras_fit']:.1f} |")
  if result.get("replicas", 1) > 1:
    lines += ["", f"Keras fit, spe: n/a, {SPE_UNAVAILABLE}."]
  lines += [
      "",
      f"fp32 matmul peak (1024x1024): {spread(result['matmul_gflops'])} GFLOP/s. Input "
      f"pipeline alone (in-memory, in-graph, as training uses it): "
      f"{spread(result['pipeline'])} examples/s "
      f"({result['pipeline_vs_fastest_model']:.1f}x the fastest model); with "
      f"translate+erase augmentation {spread(result['pipeline_augmented'])}; the tf.data "
      f"pipeline (--pipeline=tf_data) {spread(result['tf_data_pipeline'])}.",
  ]
  return "\n".join(lines + bench_common.targets_table(result["targets"])) + "\n"


def device_list(device: str) -> list[str]:
  """--device's devices, as run_benchmark counts them (a job sees them with
  bench_jobs.replica_devices), without starting TensorFlow's runtime; ValueError for a
  bad value or a missing GPU."""
  if not re.fullmatch(r"cpu|gpu|cpu:[1-9][0-9]*", device):
    raise ValueError(f"--device={device}: use cpu, gpu or cpu:N")
  if device == "gpu":
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    if not gpus:
      raise ValueError("--device=gpu: TensorFlow sees no GPU on this machine (check "
                       "nvidia-smi and that the CUDA build of TensorFlow is installed), or "
                       "use --device=cpu")
    return gpus
  return [f"/cpu:{i}" for i in range(int(device[4:]))] if device.startswith("cpu:") else []


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  for flag, program in (("--peers", "bench_peers"), ("--time_to_accuracy", "bench_tta")):
    if flag in argv:  # the other benchmarks, as this program ran them before they were theirs
      return importlib.import_module(program).main([a for a in argv if a != flag])
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
  parser.add_argument("--steps_per_loop", type=int, default=100)
  parser.add_argument("--models", default="", help="comma list (default all)")
  parser.add_argument("--output_dir", default=os.path.join(bench_common.ROOT, "benchmarks"))
  parser.add_argument("--device", default="cpu",
                      help="cpu: one device; gpu: every GPU (MirroredStrategy, per-replica "
                      "batch 128); cpu:N: N logical CPU devices, mirrored (the multi-GPU "
                      "code path without a GPU)")
  parser.add_argument("--peers", action="store_true", help="runs scripts/bench_peers.py")
  parser.add_argument("--time_to_accuracy", action="store_true",
                      help="runs scripts/bench_tta.py")
  args = parser.parse_args(argv)
  try:
    args.devices = device_list(args.device)
  except ValueError as e:
    parser.error(str(e))
  bench_common.check_models(parser, args.models)
  os.makedirs(args.output_dir, exist_ok=True)
  result = run_benchmark(args)
  bench_common.write(args.output_dir, "results", result, markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
