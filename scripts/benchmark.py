"""tapeloop against Keras fit, side by side in one run, on MNIST-shaped synthetic data.

    python scripts/benchmark.py                       # make bench: the table
    python scripts/benchmark.py --time_to_accuracy    # Fashion-MNIST, configs/fashion_tta.cfg
    python scripts/benchmark.py --peers               # make bench-peers: JAX and PyTorch too

For each model, interleaved and repeated (--repeats): tapeloop's steady-state training
throughput (trace and compile time apart), Keras `fit` on the same model class with
default settings and with steps_per_execution = steps_per_loop, the input pipeline alone,
and the machine's fp32 matmul peak measured in the same run; each model's training
FLOP/s is reported as a fraction of that peak. Every measurement job runs in a fresh
process: tapeloop's (and the machine figures) with the settings tapeloop's entry points
apply (trainer/tf_env.py), Keras fit's with TensorFlow's defaults. Writes
benchmarks/results.json and benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer import distribute, tf_env  # pylint: disable=g-import-not-at-top,wrong-import-position
from input_pipeline.in_memory import IndexStream, InMemoryData  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer.loop import Trainer  # pylint: disable=g-import-not-at-top,wrong-import-position

BATCH = 128  # per replica: the global batch is BATCH x the number of devices
DATASET = "synthetic:shape=28x28x1,classes=10,train=60000,test=1000"
# name -> (registry model, flags): the seven tutorial models, then the rest of the registry.
MODELS = {
    "mlp_1x50": ("mlp", ["--hidden_units=50", "--intra_op_threads=1"]),
    "mlp_1x500": ("mlp", ["--hidden_units=500"]),
    "mlp_5x50": ("mlp", ["--hidden_units=50,50,50,50,50", "--intra_op_threads=1"]),
    "mlp_5x50_dropout": ("mlp", ["--hidden_units=50,50,50,50,50", "--dropout=0.2"]),
    "mlp_5x50_dropout_50ep": ("mlp", ["--hidden_units=50,50,50,50,50", "--dropout=0.2"]),
    "mlp_5x500_dropout_25ep": ("mlp", ["--hidden_units=500,500,500,500,500", "--dropout=0.2"]),
    "cnn": ("cnn", []),
    "resnet": ("resnet", []),
}
OVERHEAD_BOUND = ("mlp_1x50", "mlp_5x50")
# Steps per tf.function call (and Keras steps_per_execution) where --steps_per_loop would
# make one call last tens of seconds on a CPU.
STEPS_PER_LOOP = {"resnet": 5}


def replica_devices(device: str) -> list[str]:
  """The devices one measurement trains on (call before any TensorFlow work): "cpu" is one
  device (no list); "gpu" every GPU, mirrored; "cpu:N" N logical CPU devices, mirrored:
  the multi-GPU code path, runnable without a GPU."""
  if device == "gpu":
    return [d.name for d in tf.config.list_logical_devices("GPU")]
  if device.startswith("cpu:"):
    n = int(device.split(":", 1)[1])
    distribute._split_cpu(n)  # pylint: disable=protected-access
    return [f"/cpu:{i}" for i in range(n)]
  return []


def strategy_flags(devices: list[str]) -> list[str]:
  if not devices:
    return ["--strategy=default"]
  return ["--strategy=mirrored", f"--devices={','.join(devices)}"]


def global_batch(devices: list[str]) -> int:
  return BATCH * max(1, len(devices))


def machine() -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
          for g in tf.config.list_physical_devices("GPU")]
  return {"cpu": cpu, "cores": os.cpu_count(), "gpus": gpus,
          "python": platform.python_version(),
          "tensorflow": tf.__version__, "keras": keras.__version__,
          "date": datetime.date.today().isoformat()}


def matmul_gflops(seconds: float, device: str | None = None) -> float:
  """fp32 1024x1024 matmul throughput of one device, the machine's practical peak."""
  n = 1024
  with tf.device(device):
    a = tf.random.uniform((n, n))
    b = tf.random.uniform((n, n))

  @tf.function
  def chain(k):
    with tf.device(device):
      acc = tf.zeros((n, n))
      for _ in tf.range(k):
        acc += tf.matmul(a, b)
      return acc

  chain(tf.constant(2)).numpy()
  k = 8
  while True:
    start = time.perf_counter()
    chain(tf.constant(k)).numpy()
    elapsed = time.perf_counter() - start
    if elapsed > seconds / 2:
      return 2 * n ** 3 * k / elapsed / 1e9
    k *= 2


def train_flops_per_example(name: str) -> float:
  """Forward FLOPs of one example from TensorFlow's graph profiler, times 3 for training
  (forward, and a backward pass of about twice the forward)."""
  model = _model(name)
  fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
      tf.TensorSpec((1, 28, 28, 1), tf.float32))
  opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  tf.get_logger().setLevel("ERROR")  # the v1 profiler's deprecation warnings
  info = tf.compat.v1.profiler.profile(graph=fn.graph, options=opts)
  return 3.0 * info.total_float_ops


def _model(name: str):
  kind, flags = MODELS[name]
  hparams = config_lib.from_args([f"--model={kind}", *flags]).model_hparams
  return models.create(kind, num_classes=10, image_shape=(28, 28, 1), **hparams)


def tapeloop_throughput(name, data, steps_per_loop, seconds, devices=()) -> dict:
  kind, flags = MODELS[name]
  batch = global_batch(devices)
  with tempfile.TemporaryDirectory() as model_dir:
    cfg = config_lib.from_args([f"--model={kind}", *flags, f"--dataset={DATASET}",
                                f"--batch_size={batch}", f"--steps_per_loop={steps_per_loop}",
                                *strategy_flags(devices), f"--model_dir={model_dir}"])
    trainer = Trainer(cfg, distribute.create_strategy(cfg), data)
    iterator = trainer.train_iterator()
    start = time.perf_counter()
    trainer.run_steps(iterator, steps_per_loop)  # trace, compile, first loop
    compile_seconds = time.perf_counter() - start
    steps, start = 0, time.perf_counter()
    while steps < 2 * steps_per_loop or time.perf_counter() - start < seconds:
      trainer.run_steps(iterator, steps_per_loop)
      steps += steps_per_loop
    return {"tapeloop": {"examples_per_sec": steps * batch / (time.perf_counter() - start),
                         "compile_seconds": compile_seconds},
            # Trainable only: the peers count no batch norm moving statistics either.
            "parameters": int(sum(np.prod(w.shape) for w in trainer.model.trainable_weights)),
            "jit": trainer.jit}


class _EpochTimes(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.times = []

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.times.append(time.perf_counter() - self._start)


def keras_fit_throughput(name, x, y, steps_per_execution, expected_rate, seconds,
                         devices=()) -> dict:
  """Keras fit on numpy arrays, as its users call it (under MirroredStrategy's scope on
  several devices); the first epoch (tracing) apart."""
  batch = global_batch(devices)
  scope = tf.distribute.MirroredStrategy(list(devices)).scope() if devices else None
  with scope or contextlib.nullcontext():
    model = _model(name)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    if devices:  # under MirroredStrategy, fit with a lazily built Adam fails (keras 23085)
      model.optimizer.build(model.trainable_variables)
  # An epoch of about `seconds` at the rate tapeloop measured, in whole executions.
  steps = max(2 * steps_per_execution, int(expected_rate * seconds / batch))
  steps -= steps % steps_per_execution
  n = min(len(x) - len(x) % batch, steps * batch)
  timer = _EpochTimes()
  model.fit(x[:n], y[:n], batch_size=batch, epochs=3, verbose=0, callbacks=[timer])
  return {"examples_per_sec": n / statistics.median(timer.times[1:]),
          # The first epoch's extra time: tracing and compilation.
          "compile_seconds": max(0.0, timer.times[0] - statistics.median(timer.times[1:]))}


def in_memory_pipeline_throughput(split, seconds, augment) -> float:
  """The pipeline training uses (--pipeline=in_memory): index windows from the host,
  gather, normalize and augment in the graph; every pixel is consumed (summed)."""
  data = InMemoryData(split, input_pipeline.Augment.parse(augment))
  stream = IndexStream(len(split), BATCH, seed=0)
  steps = 100

  @tf.function(input_signature=[tf.TensorSpec([None, BATCH], tf.int32)])
  def loop(indices):
    total = tf.constant(0.0)
    for i in tf.range(tf.shape(indices)[0]):
      images, labels = data.batch(indices[i], tf.stack([tf.constant(0, tf.int64),
                                                       tf.cast(i, tf.int64)]))
      total += tf.reduce_sum(images) + tf.cast(tf.reduce_sum(labels), tf.float32)
    return total

  loop(tf.constant(stream.take(steps))).numpy()
  batches, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    loop(tf.constant(stream.take(steps))).numpy()
    batches += steps
  return batches * BATCH / (time.perf_counter() - start)


def pipeline_throughput(split, seconds) -> float:
  """The tf.data pipeline (--pipeline=tf_data): uint8 batches fetched from Python (they
  are normalized and augmented on the device)."""
  ds = input_pipeline.train_dataset(split, global_batch_size=BATCH, seed=0)
  it = iter(ds)
  for _ in range(20):
    next(it)
  batches, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(it)
    batches += 1
  return batches * BATCH / (time.perf_counter() - start)


def summarize(samples: list[float]) -> dict:
  return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
          "samples": samples}


VARIANTS = ("tapeloop", "keras_fit", "keras_fit_spe")
# Keras 3 fit with steps_per_execution > 1 fails under MirroredStrategy ("You must feed a
# value for placeholder tensor ...", keras issue 19246): not measured on several devices.
SPE_UNAVAILABLE = "keras issue 19246: fit with steps_per_execution fails under MirroredStrategy"


def variants(devices) -> tuple[str, ...]:
  return VARIANTS[:2] if devices else VARIANTS
MACHINE_FIGURES = ("matmul_gflops", "pipeline", "pipeline_augmented", "tf_data")
_RESULT = "BENCHMARK_RESULT "  # marks a job's JSON line on its stdout


def measure_machine(seconds: float, devices=()) -> dict:
  """One repeat of the machine-level figures: matmul peak (of one training device) and the
  input pipelines."""
  train = input_pipeline.load(DATASET).splits["train"]
  return {"machine": machine(),
          "matmul_gflops": matmul_gflops(seconds, devices[0] if devices else None),
          "pipeline": in_memory_pipeline_throughput(train, seconds, "none"),
          "pipeline_augmented": in_memory_pipeline_throughput(train, seconds,
                                                              "translate=2,erase=0.25"),
          "tf_data": pipeline_throughput(train, seconds)}


def measure_tapeloop(name: str, steps_per_loop: int, seconds: float,
                     count_flops: bool, devices=()) -> dict:
  data = input_pipeline.load(DATASET)
  out = tapeloop_throughput(name, data, steps_per_loop, seconds, devices)
  if count_flops:  # a property of the model: counted once per run
    out["train_flops_per_example"] = train_flops_per_example(name)
  return out


def measure_keras(name: str, order: list[str], expected_rate: float, steps_per_loop: int,
                  seconds: float, devices=()) -> dict:
  """Keras fit's two settings in `order`; epochs sized from tapeloop's measured rate."""
  train = input_pipeline.load(DATASET).splits["train"]
  x = train.images.astype(np.float32) / 255.0
  y = train.labels.astype(np.int32)
  return {variant: keras_fit_throughput(
              name, x, y, steps_per_loop if variant == "keras_fit_spe" else 1, expected_rate,
              seconds, devices) for variant in order}


def _isolated(args, job: dict) -> dict:
  """Runs one measurement job in a fresh Python process, so that no model's graphs,
  threads or allocator state from an earlier measurement slow down a later one.
  tapeloop's jobs (and the machine figures) run with the process settings tapeloop's
  entry points apply (trainer/tf_env.py); Keras's with TensorFlow's defaults, as a fit
  user gets them."""
  env = dict(os.environ)
  if job["kind"] != "keras":
    env.update({k: v for k, v in tf_env.SETTINGS.items() if k not in os.environ})
  cmd = [sys.executable, os.path.abspath(__file__), f"--seconds={args.seconds}",
         f"--device={args.device}", "--job", json.dumps(job)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_RESULT)]
  if proc.returncode or not lines:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"benchmark job {job} failed (exit {proc.returncode}); its stderr is above")
  return json.loads(lines[-1][len(_RESULT):])


def run_job(args) -> int:
  job = json.loads(args.job)
  devices = replica_devices(args.device)
  if job["kind"] == "machine":
    result = measure_machine(args.seconds, devices)
  elif job["kind"] == "tapeloop":
    result = measure_tapeloop(job["model"], job["steps_per_loop"], args.seconds,
                              job["count_flops"], devices)
  else:
    result = measure_keras(job["model"], job["order"], job["expected_rate"],
                           job["steps_per_loop"], args.seconds, devices)
  result["env"] = {k: os.environ.get(k) for k in tf_env.SETTINGS}
  print(_RESULT + json.dumps(result), flush=True)
  return 0


# --- peers: JAX/Flax and PyTorch on the same models (scripts/peers.py) -------------------

# (framework, threads) per peer job; 0 threads: the framework's default (all cores).
PEER_JOBS = (("jax", 1), ("jax", 0), ("torch", 1), ("torch", 0), ("torch_compile", 0))
PEER_VARIANTS = ("jax_jit", "jax_scan", "torch_eager", "torch_compile")
PEER_MODELS = ("mlp_1x50", "mlp_1x500", "mlp_5x50", "mlp_5x50_dropout",
               "mlp_5x500_dropout_25ep", "cnn", "resnet")


def _peer(args, framework: str, model: str, threads: int) -> dict:
  """One peer measurement in a fresh process of the peers' virtualenv."""
  cmd = [args.peers_python, os.path.join(ROOT, "scripts", "peers.py"), f"--framework={framework}",
         f"--model={model}", f"--threads={threads}", f"--seconds={args.seconds}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_RESULT)]
  if proc.returncode or not lines:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"peer job {' '.join(cmd[1:])} failed (exit {proc.returncode}); its "
                     "stderr is above")
  return json.loads(lines[-1][len(_RESULT):])


def run_peers(args) -> dict:
  """tapeloop, Keras fit and the peers on each model, interleaved, every job in a fresh
  process; each peer at its best thread setting (the faster of 1 and all cores)."""
  names = args.models.split(",") if args.models else list(PEER_MODELS)
  raw: dict[str, list] = {"matmul_gflops": []}
  params, flops, machine_info, versions, envs = {}, {}, None, {}, {}
  for repeat in range(args.repeats):
    print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
    m = _isolated(args, {"kind": "machine"})
    machine_info = m["machine"]
    raw["matmul_gflops"].append(m["matmul_gflops"])
    for name in names:
      spl = STEPS_PER_LOOP.get(name, args.steps_per_loop)
      jobs = [("tapeloop", None), ("keras", None)] + [("peer", j) for j in PEER_JOBS]
      if repeat % 2:
        jobs.reverse()
      for kind, peer in jobs:
        if kind == "tapeloop":
          r = _isolated(args, {"kind": "tapeloop", "model": name, "steps_per_loop": spl,
                               "count_flops": name not in flops, "parameters": True})
          envs["tapeloop"] = r.pop("env")
          flops.setdefault(name, r.get("train_flops_per_example"))
          params.setdefault(name, {})["tapeloop"] = r["parameters"]
          raw.setdefault(f"{name}/tapeloop", []).append(r["tapeloop"]["examples_per_sec"])
          raw.setdefault(f"{name}/tapeloop/jit", []).append(r["jit"])
        elif kind == "keras":
          rate = (raw.get(f"{name}/tapeloop") or [5000])[-1]
          r = _isolated(args, {"kind": "keras", "model": name, "steps_per_loop": spl,
                               "order": ["keras_fit", "keras_fit_spe"], "expected_rate": rate})
          envs["keras"] = r.pop("env")
          for v in ("keras_fit", "keras_fit_spe"):
            raw.setdefault(f"{name}/{v}", []).append(r[v]["examples_per_sec"])
        else:
          framework, threads = peer
          r = _peer(args, framework, name, threads)
          versions[framework.split("_")[0]] = r.get("version", versions.get(framework))
          if "parameters" in r:
            params[name][framework.split("_")[0]] = r["parameters"]
          for v in PEER_VARIANTS:
            if v in r and "error" in r[v]:
              raw.setdefault(f"{name}/{v}/error", []).append(r[v]["error"])
            elif v in r:
              raw.setdefault(f"{name}/{v}/threads={threads}", []).append(
                  r[v]["examples_per_sec"])
      print(f"  {name:24s} tapeloop {raw[f'{name}/tapeloop'][-1]:9.0f}  " + "  ".join(
          f"{k.split('/', 1)[1]} {v[-1]:.0f}" for k, v in raw.items()
          if k.startswith(f"{name}/") and not k.endswith(("/error", "/jit", "/tapeloop"))
          and isinstance(v[-1], float)), flush=True)
  for name, counts in params.items():
    if len(set(counts.values())) > 1:  # then the frameworks did not train the same model
      raise SystemExit(f"{name}: parameter counts differ {counts}: scripts/peers.py's "
                       "model is not tapeloop's")
  peak = statistics.median(raw["matmul_gflops"])
  rows = {}
  for name in names:
    med = lambda key: statistics.median(raw[key]) if raw.get(key) else None
    peers = {}
    for v in PEER_VARIANTS:
      by_threads = {k.rsplit("=", 1)[1]: med(k) for k in raw
                    if k.startswith(f"{name}/{v}/threads=")}
      if by_threads:
        best = max(by_threads, key=by_threads.get)
        peers[v] = {"examples_per_sec": by_threads[best], "threads": int(best),
                    "by_threads": by_threads}
      elif raw.get(f"{name}/{v}/error"):
        peers[v] = {"error": raw[f"{name}/{v}/error"][-1]}
    measured = {v: p["examples_per_sec"] for v, p in peers.items() if "examples_per_sec" in p}
    best_peer = max(measured, key=measured.get)
    tapeloop = med(f"{name}/tapeloop")
    fit_best = max(med(f"{name}/keras_fit"), med(f"{name}/keras_fit_spe"))
    rows[name] = {
        "parameters": params[name], "tapeloop": summarize(raw[f"{name}/tapeloop"]),
        "tapeloop_jit": raw[f"{name}/tapeloop/jit"][-1],
        "keras_fit": med(f"{name}/keras_fit"), "keras_fit_spe": med(f"{name}/keras_fit_spe"),
        "peers": peers, "best_peer": best_peer,
        "vs_best_peer": tapeloop / measured[best_peer], "vs_keras_best": tapeloop / fit_best,
        "fraction_of_matmul_peak": tapeloop * flops[name] / 1e9 / peak,
    }
  return {"machine": machine_info, "versions": versions, "environment": envs,
          "global_batch_size": BATCH, "dataset": DATASET, "repeats": args.repeats,
          "seconds_per_measurement": args.seconds, "matmul_gflops": summarize(raw["matmul_gflops"]),
          "isolation": "every measurement job in a fresh process, the order reversed in every "
                       "other repeat", "models": rows, "targets": peer_targets(rows)}


def peer_targets(rows) -> dict:
  out = {}
  for name, row in rows.items():
    out[f"{name} >= 1.0x the best peer"] = row["vs_best_peer"] >= 1.0
  for name, row in rows.items():
    out[f"{name} >= 1.5x keras fit (best)"] = row["vs_keras_best"] >= 1.5
  if "cnn" in rows:
    out["cnn >= 40% of matmul peak"] = rows["cnn"]["fraction_of_matmul_peak"] >= 0.40
  return out


_PEER_NAMES = {"jax_jit": "JAX jit", "jax_scan": "JAX scan", "torch_eager": "PyTorch eager",
               "torch_compile": "torch.compile"}


def peers_markdown(result: dict) -> str:
  m, v = result["machine"], result["versions"]
  lines = [
      f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores: TensorFlow {m['tensorflow']}, "
      f"Keras {m['keras']}, JAX {v.get('jax')}, PyTorch {v.get('torch')}. Global batch "
      f"{result['global_batch_size']}, Adam, MNIST-shaped synthetic data in memory, a random "
      f"batch gathered and normalized inside each step; {result['repeats']} interleaved "
      "repeats, every job in a fresh process: median examples/s. Each peer at its faster "
      "thread setting (t1: one thread, t0: the default); JAX scan runs K steps per call. "
      "tapeloop with its defaults (--jit_compile=auto: column XLA).",
      "",
      "| model | parameters | tapeloop | XLA | Keras fit (best) | JAX jit | JAX scan | "
      "PyTorch eager | torch.compile | vs best peer | vs best fit | of matmul peak |",
      "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, r in result["models"].items():
    counts = sorted(set(r["parameters"].values()))
    cells = []
    for variant in PEER_VARIANTS:
      p = r["peers"].get(variant, {})
      if "examples_per_sec" in p:
        cell = f"{p['examples_per_sec']:,.0f} t{p['threads']}"
        cells.append(f"**{cell}**" if variant == r["best_peer"] else cell)
      else:
        cells.append("failed" if "error" in p else "-")
    lines.append(
        f"| {name} | {'/'.join(f'{c:,}' for c in counts)} | {r['tapeloop']['median']:,.0f} | "
        f"{r['tapeloop_jit']} | {max(r['keras_fit'], r['keras_fit_spe']):,.0f} | "
        + " | ".join(cells) +
        f" | {r['vs_best_peer']:.2f}x | {r['vs_keras_best']:.2f}x | "
        f"{100 * r['fraction_of_matmul_peak']:.0f}% |")
  errors = {f"{n} {_PEER_NAMES[v]}": p["error"] for n, r in result["models"].items()
            for v, p in r["peers"].items() if "error" in p}
  if errors:
    lines += ["", "Failed: " + "; ".join(f"{k}: {e}" for k, e in errors.items())]
  lines += ["", f"fp32 matmul peak (1024x1024): {_spread(result['matmul_gflops'])} GFLOP/s.",
            "", "| target | met |", "|---|---|"]
  lines += [f"| {k} | {'yes' if ok else '**no**'} |" for k, ok in result["targets"].items()]
  return "\n".join(lines) + "\n"


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
    m = _isolated(args, {"kind": "machine"})
    machine_info = m["machine"]
    envs["machine"] = m.pop("env")
    for key in MACHINE_FIGURES:
      raw[key].append(m[key])
    print(f"  matmul {m['matmul_gflops']:.0f} GFLOP/s  input pipeline "
          f"{m['pipeline']:,.0f} examples/s", flush=True)
    for name in names:
      spl = STEPS_PER_LOOP.get(name, args.steps_per_loop)
      jobs = [{"kind": "tapeloop", "model": name, "steps_per_loop": spl,
               "count_flops": name not in flops},
              {"kind": "keras", "model": name, "steps_per_loop": spl,
               "order": list(variants(args.devices)[1:])}]
      if repeat % 2:  # alternate which side goes first, and Keras's order
        jobs.reverse()
        jobs[0]["order"].reverse()
      r = {}
      for job in jobs:
        if job["kind"] == "keras":  # sized from tapeloop's rate: this repeat's or the last
          job["expected_rate"] = r["tapeloop"]["examples_per_sec"] if "tapeloop" in r else \
              raw[f"{name}/tapeloop"][-1]
        result = _isolated(args, job)
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
        **{v: summarize(raw[f"{name}/{v}"]) for v in measured},
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
          "matmul_gflops": summarize(raw["matmul_gflops"]),
          "pipeline": summarize(raw["pipeline"]),
          "pipeline_augmented": summarize(raw["pipeline_augmented"]),
          "tf_data_pipeline": summarize(raw["tf_data"]),
          "pipeline_vs_fastest_model": statistics.median(raw["pipeline"]) / fastest,
          "models": rows, "targets": targets(rows, raw)}


def targets(rows, raw) -> dict:
  out = {}
  for name in OVERHEAD_BOUND:
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


def _spread(s: dict) -> str:
  return f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})"


def markdown(result: dict) -> str:
  m = result["machine"]
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
        f"| {name} | {r['steps_per_loop']} | {_spread(r['tapeloop'])} | {_spread(r['keras_fit'])} | "
        f"{_spread(r['keras_fit_spe']) if 'keras_fit_spe' in r else 'n/a'} | "
        f"{r['vs_keras_default']:.2f}x | "
        f"{r['vs_keras_best']:.2f}x | {r['train_gflops']:.1f} | "
        f"{100 * r['fraction_of_matmul_peak']:.0f}% | "
        f"{r['compile_seconds']['tapeloop']:.1f} / {r['compile_seconds']['keras_fit']:.1f} |")
  if result.get("replicas", 1) > 1:
    lines += ["", f"Keras fit, spe: n/a, {SPE_UNAVAILABLE}."]
  lines += [
      "",
      f"fp32 matmul peak (1024x1024): {_spread(result['matmul_gflops'])} GFLOP/s. Input "
      f"pipeline alone (in-memory, in-graph, as training uses it): "
      f"{_spread(result['pipeline'])} examples/s "
      f"({result['pipeline_vs_fastest_model']:.1f}x the fastest model); with "
      f"translate+erase augmentation {_spread(result['pipeline_augmented'])}; the tf.data "
      f"pipeline (--pipeline=tf_data) {_spread(result['tf_data_pipeline'])}.",
      "",
      "| target | met |",
      "|---|---|",
  ]
  lines += [f"| {k} | {'yes' if v else '**no**'} |" for k, v in result["targets"].items()]
  return "\n".join(lines) + "\n"


TTA_RECIPE = os.path.join("configs", "fashion_tta.cfg")


def _tta_run(data_dir: str, model_dir: str) -> dict:
  """The recipe as a user runs it: the CLI in a fresh process, timed from its start."""
  cmd = [sys.executable, "-m", "trainer.main", f"--flagfile={TTA_RECIPE}",
         f"--data_dir={data_dir}", f"--model_dir={model_dir}"]
  start = time.time()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
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
  """configs/fashion_tta.cfg (chosen on a validation split, not the test set) run twice as
  a user runs it: first without the decoded cache (a machine's first run decodes the PNGs
  and writes it), then again (every later run). The target is on the whole process:
  command start to results.json."""
  from input_pipeline import tfds_source  # pylint: disable=g-import-not-at-top
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
  ok = lambda r: r["test_accuracy"] >= 0.92 and r["phases"]["total"] < 45
  return {"machine": machine(), "recipe": TTA_RECIPE.replace(os.sep, "/"), "runs": runs,
          "targets": {"test accuracy >= 92% with the whole process < 45 s (first run)":
                          ok(runs["first"]),
                      "test accuracy >= 92% with the whole process < 45 s (later runs)":
                          ok(runs["cached"])}}


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
  lines += ["", "| target | met |", "|---|---|"]
  lines += [f"| {k} | {'yes' if ok else '**no**'} |" for k, ok in result["targets"].items()]
  return "\n".join(lines) + "\n"


PHASES = ("start_up", "data", "build", "compile", "train", "eval", "export", "other")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
  parser.add_argument("--steps_per_loop", type=int, default=100)
  parser.add_argument("--models", default="", help="comma list (default all)")
  parser.add_argument("--output_dir", default=os.path.join(ROOT, "benchmarks"))
  parser.add_argument("--time_to_accuracy", action="store_true")
  parser.add_argument("--peers", action="store_true", help="JAX/Flax and PyTorch on the same "
                      "models too: benchmarks/peers.{json,md}")
  parser.add_argument("--peers_python", default=os.path.join(ROOT, ".venv-peers", "bin",
                                                             "python"),
                      help="a Python with jax, flax, optax and torch (make bench-peers)")
  parser.add_argument("--data_dir", default=os.path.join(ROOT, "data", "tfds"))
  parser.add_argument("--device", default="cpu",
                      help="cpu: one device; gpu: every GPU (MirroredStrategy, per-replica "
                      "batch 128); cpu:N: N logical CPU devices, mirrored (the multi-GPU "
                      "code path without a GPU)")
  parser.add_argument("--job", help=argparse.SUPPRESS)  # one isolated measurement (internal)
  args = parser.parse_args()
  if args.job:
    return run_job(args)
  if not re.fullmatch(r"cpu|gpu|cpu:[1-9][0-9]*", args.device):
    parser.error(f"--device={args.device}: use cpu, gpu or cpu:N")
  args.devices = []
  if args.device == "gpu":
    args.devices = [d.name for d in tf.config.list_physical_devices("GPU")]
    if not args.devices:
      parser.error("--device=gpu: TensorFlow sees no GPU on this machine (check nvidia-smi "
                   "and that the CUDA build of TensorFlow is installed), or use --device=cpu")
  elif args.device.startswith("cpu:"):
    args.devices = [f"/cpu:{i}" for i in range(int(args.device[4:]))]
  unknown = sorted(set(args.models.split(",")) - set(MODELS)) if args.models else []
  if unknown:
    parser.error(f"unknown --models {','.join(unknown)}: choose from {','.join(MODELS)}")
  os.makedirs(args.output_dir, exist_ok=True)
  if args.peers:
    result = run_peers(args)
    path = os.path.join(args.output_dir, "peers.json")
    text = peers_markdown(result)
    with open(os.path.join(args.output_dir, "peers.md"), "w") as f:
      f.write(text)
  elif args.time_to_accuracy:
    result = time_to_accuracy(args.data_dir)
    path = os.path.join(args.output_dir, "time_to_accuracy.json")
    text = tta_markdown(result)
    with open(os.path.join(args.output_dir, "time_to_accuracy.md"), "w") as f:
      f.write(text)
  else:
    result = run_benchmark(args)
    path = os.path.join(args.output_dir, "results.json")
    text = markdown(result)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
      f.write(text)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
