"""Where a training step's time goes, per benchmark model: its steady examples/s as a
fraction of the machine's fp32 matmul peak, and from TensorFlow's profiler the split of
its ops' time into convolutions, their gradients and the rest (the largest named).

    python scripts/profile_step.py [--models=cnn,resnet] [--precision=mixed_bfloat16]

Each model is profiled in a fresh process (bench_jobs.py's), on the benchmarks' synthetic
MNIST-shaped data at batch 128. The split is of the time ops ran, summed over threads: a
model compiled whole by XLA (the MLPs, --jit_compile=auto) shows its kernels instead,
where the matmuls' gradients are matmuls too. Busy below 1 is time in no kernel: the
executor's dispatch and the loop's control. Writes benchmarks/profile.{json,md} (or --output_dir).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
import tempfile
import time

import bench_common

# TensorFlow op types (the profiler's display names) by what they compute; oneDNN's fused
# kernels carry the convolution in their name (_MklNativeFusedConv2D, ...).
_GRADIENT = ("Conv2DBackpropFilter", "Conv2DBackpropInput", "DepthwiseConv2dNativeBackprop")
_CONV = ("Conv2D", "DepthwiseConv2dNative")
# Inside an XLA program the profiler names each kernel by its HLO instruction (MatMul.27,
# divide_subtract_fusion.3): a matmul's gradients are matmuls too, so they count there.
_XLA_MATMUL = ("matmul", "dot")
# The XLA executor's own events, which contain the kernels' time, wait or mark an end.
_CONTAINERS = ("ThunkExecutor::", "ThreadpoolListener::", "SlinkyThreadPool::", "end: ")


def category(op_type: str) -> str:
  """conv_gradients, convolutions (an XLA program's matmuls too) or rest."""
  if any(k in op_type for k in _GRADIENT):
    return "conv_gradients"
  if any(k in op_type for k in _CONV) or op_type.lower().startswith(_XLA_MATMUL):
    return "convolutions"
  return "rest"


def op_times(xplane_path: str) -> dict[str, float]:
  """Self seconds per op type (an XLA program: per kernel, its instruction's name without
  the number) on the host's threads, from a profile's XSpace. Self: an event's time less
  that of the events nested in it on its thread (an XLA `call` contains its kernels)."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  with open(xplane_path, "rb") as f:
    space.ParseFromString(f.read())
  times = collections.Counter()
  for plane in space.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:
      if line.name == "python":  # the Python thread's calls contain the ops' time
        continue
      for name, seconds in _self_times(plane, line):
        times[name] += seconds
  return dict(times)


def _self_times(plane, line):
  """(op type or kernel name, self seconds) of a thread's counted events."""
  events = sorted(line.events, key=lambda e: (e.offset_ps, -e.duration_ps))
  self_ps = [e.duration_ps for e in events]
  open_events = []  # indices of the events that contain the current one, innermost last
  for i, event in enumerate(events):
    while open_events and (events[open_events[-1]].offset_ps
                           + events[open_events[-1]].duration_ps <= event.offset_ps):
      open_events.pop()
    if open_events:
      self_ps[open_events[-1]] -= event.duration_ps
    open_events.append(i)
  for event, ps in zip(events, self_ps):
    metadata = plane.event_metadata[event.metadata_id]
    if metadata.display_name:  # a TensorFlow op
      yield metadata.display_name, ps * 1e-12
    elif line.name.startswith("tf_numa") and not metadata.name.startswith(_CONTAINERS):
      yield metadata.name.rsplit(".", 1)[0], ps * 1e-12  # an XLA kernel, e.g. MatMul.27
    # else: the executors' own events, which contain the ops'


def profile(name: str, precision: str, loops: int) -> dict:
  """In this process: a Trainer's steady examples/s (unprofiled), then `loops` loops under
  the profiler; the op time by category."""
  import bench_jobs  # pylint: disable=g-import-not-at-top
  import input_pipeline  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  steps = bench_common.STEPS_PER_LOOP.get(name, 100)  # bench_peers.py's
  data = input_pipeline.load(bench_common.DATASET)
  with tempfile.TemporaryDirectory() as tmp:
    trainer = bench_jobs.make_trainer(name, data, steps, os.path.join(tmp, "run"),
                                flags=[f"--mixed_precision={precision}"])
    iterator = trainer.train_iterator()
    trainer.run_steps(iterator, steps)  # trace and compile
    start = time.perf_counter()
    for _ in range(loops):
      trainer.run_steps(iterator, steps)
    seconds = time.perf_counter() - start
    tf.profiler.experimental.start(os.path.join(tmp, "profile"))
    profiled = time.perf_counter()
    for _ in range(loops):
      trainer.run_steps(iterator, steps)
    profiled = time.perf_counter() - profiled
    tf.profiler.experimental.stop()
    (path,) = glob.glob(os.path.join(tmp, "profile", "**", "*.xplane.pb"), recursive=True)
    times = op_times(path)
  total = sum(times.values())
  split = collections.Counter()
  for op_type, t in times.items():
    split[category(op_type)] += t
  rest = {k: v for k, v in times.items() if category(k) == "rest"}
  return {"examples_per_sec": loops * steps * bench_common.BATCH / seconds, "jit": trainer.jit,
          "precision": trainer.plan.precision,
          "op_seconds_per_step": total / (loops * steps),
          "wall_seconds_per_step": profiled / (loops * steps),
          "split": {k: v / total for k, v in split.items()},
          "largest_rest": {k: v / total for k, v in
                           sorted(rest.items(), key=lambda kv: -kv[1])[:3]},
          "train_flops_per_example": bench_jobs.train_flops_per_example(name)}


def markdown(result: dict) -> str:
  peak = result["matmul_gflops"]
  lines = [f"Measured {result['date']} on {result['cpu']}: one process per model, batch "
           f"{bench_common.BATCH}, synthetic MNIST-shaped data in memory, {result['precision']}. "
           f"Op time is summed over threads (busy: op time / wall time); fp32 matmul peak "
           f"{peak:.0f} GFLOP/s.", "",
           "| model | examples/s | GFLOP/s | of matmul peak | convolutions | their gradients "
           "| rest | largest of the rest | busy |",
           "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
  pct = lambda v: f"{100 * v:.0f}%"
  for name, r in result["models"].items():
    gflops = r["examples_per_sec"] * r["train_flops_per_example"] / 1e9
    split = r["split"]
    parts = [pct(split.get(k, 0)) for k in ("convolutions", "conv_gradients", "rest")]
    if r["jit"] == "loop":  # one XLA program: its matmuls, their gradients among them
      parts[:2] = [f"matmuls {parts[0]}", "(in matmuls)"]
    largest = ", ".join(f"{k} {pct(v)}" for k, v in r["largest_rest"].items())
    lines.append(f"| {name} | {r['examples_per_sec']:,.0f} | {gflops:.1f} | "
                 f"{pct(gflops / peak)} | {' | '.join(parts)} | {largest} | "
                 f"{r['op_seconds_per_step'] / r['wall_seconds_per_step']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="", help="comma list (default: each model once)")
  parser.add_argument("--precision", default="float32",
                      help="--mixed_precision for every model (auto: each its own)")
  parser.add_argument("--loops", type=int, default=3, help="measured and profiled loops")
  parser.add_argument("--output_dir", default=os.path.join(bench_common.ROOT, "benchmarks"))
  parser.add_argument("--job", default=None, help=argparse.SUPPRESS)  # one model, in-process
  args = parser.parse_args(argv)
  if args.job:
    bench_common.print_result(profile(args.job, args.precision, args.loops))
    return 0
  bench_common.check_models(parser, args.models)
  names = args.models.split(",") if args.models else bench_common.distinct_models()
  import bench_jobs  # pylint: disable=g-import-not-at-top
  machine = bench_jobs.isolated({"kind": "machine"}, 2.0)
  env = bench_jobs.tapeloop_env()
  result = {"date": time.strftime("%Y-%m-%d"), "cpu": machine["machine"].get("cpu", "?"),
            "precision": args.precision, "loops": args.loops,
            "matmul_gflops": machine["matmul_gflops"],
            "models": {}}
  for name in names:
    result["models"][name] = bench_common.run_job(
        [sys.executable, os.path.abspath(__file__), f"--job={name}",
         f"--precision={args.precision}", f"--loops={args.loops}"], f"profile of {name}", env)
  bench_common.write(args.output_dir, "profile", result, markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
