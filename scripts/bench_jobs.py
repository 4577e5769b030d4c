"""The benchmarks' measurements, each job in a fresh process (`isolated` starts
`python scripts/bench_jobs.py --job=JSON`, which prints one bench_common.RESULT line),
and the only place where the benchmarks use tapeloop's trainer (`config`,
`tapeloop_throughput`) and its in-memory pipeline (`in_memory_pipeline_throughput`).

Jobs: "machine" (the machine's facts, its fp32 matmul peak, the input pipelines alone),
"tapeloop" (a Trainer's steady-state throughput, the model's training FLOPs) and "keras"
(Keras fit on the same model class). tapeloop's jobs and the machine's run with the
process settings tapeloop's entry points apply (trainer/process/tf_env.py), Keras fit's with
TensorFlow's defaults, as a fit user gets them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import bench_common  # pylint: disable=g-import-not-at-top
from bench_common import BATCH, DATASET

sys.path.insert(0, bench_common.ROOT)

import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer.process import tf_env  # pylint: disable=g-import-not-at-top,wrong-import-position


def replica_devices(device: str) -> list[str]:
  """The devices one job trains on (call before any other TensorFlow work): "cpu" is one
  device (no list); "gpu" every GPU, mirrored; "cpu:N" N logical CPU devices, mirrored:
  the multi-GPU code path, runnable without a GPU."""
  if device == "gpu":
    return [d.name for d in tf.config.list_logical_devices("GPU")]
  if device.startswith("cpu:"):
    n = int(device.split(":", 1)[1])
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * n)
    return [f"/cpu:{i}" for i in range(n)]
  return []


def strategy_flags(devices: list[str]) -> list[str]:
  if not devices:
    return ["--strategy=default"]
  return ["--strategy=mirrored", f"--devices={','.join(devices)}"]


def global_batch(devices) -> int:
  return BATCH * max(1, len(devices))


def machine() -> dict:
  cpu = bench_common.cpu_name()
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


def in_memory_pipeline_throughput(split, seconds, augment) -> float:
  """The pipeline training uses (--pipeline=in_memory): index windows from the host,
  gather, normalize and augment in the graph; every pixel is consumed (summed)."""
  from input_pipeline.in_memory import IndexStream, InMemoryData  # pylint: disable=g-import-not-at-top,line-too-long
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
  it = iter(input_pipeline.train_dataset(split, global_batch_size=BATCH, seed=0))
  for _ in range(20):
    next(it)
  batches, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(it)
    batches += 1
  return batches * BATCH / (time.perf_counter() - start)


def config(args: list[str]):
  """tapeloop's Config of command-line flags, as trainer.main builds it (the one use of
  trainer.options.config here)."""
  from trainer.options.config import from_args  # pylint: disable=g-import-not-at-top
  return from_args(args)


def keras_model(name: str) -> keras.Model:
  """A fresh model `name` (bench_common.MODELS), the class and hyperparameters tapeloop
  trains, for Keras fit and the FLOP count."""
  cfg = config(bench_common.model_args(name))
  return models.create(cfg.model, num_classes=10, image_shape=(28, 28, 1), **cfg.model_hparams)


def make_trainer(name, data, steps_per_loop, model_dir, devices=(), flags=()):
  """A Trainer of the benchmark model `name` on `data`, built as trainer.main builds it;
  flags: beyond the model's (e.g. --mixed_precision=auto). float32 unless they say: the
  peers and Keras fit it is measured against compute in float32."""
  from trainer.run import distribute
  from trainer.run import planning  # pylint: disable=g-import-not-at-top
  from trainer.inner.trainer import Trainer  # pylint: disable=g-import-not-at-top
  cfg = config([*bench_common.model_args(name), f"--dataset={DATASET}",
                f"--batch_size={global_batch(devices)}", f"--steps_per_loop={steps_per_loop}",
                *strategy_flags(devices), "--mixed_precision=float32", *flags,
                f"--model_dir={model_dir}"])
  strategy = distribute.create_strategy(cfg)
  return Trainer(cfg, strategy, data, planning.resolve(cfg, data, strategy))


def tapeloop_throughput(name, data, steps_per_loop, seconds, devices=(), flags=()) -> dict:
  """A Trainer's steady-state examples/s on `data` (its first loop, tracing and compiling,
  timed apart). The one function that measures tapeloop's Trainer, through its public
  API only: train_iterator(), run_steps(), model, jit and config."""
  batch = global_batch(devices)
  with tempfile.TemporaryDirectory() as model_dir:
    trainer = make_trainer(name, data, steps_per_loop, model_dir, devices, flags)
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
            "parameters": int(sum(np.prod(w.shape) for w in trainer.state.model.trainable_weights)),
            "jit": trainer.jit, "precision": trainer.plan.precision}


def train_flops_per_example(name: str) -> float:
  """Forward FLOPs of one example from TensorFlow's graph profiler, times 3 for training
  (forward, and a backward pass of about twice the forward)."""
  model = keras_model(name)
  fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
      tf.TensorSpec((1, 28, 28, 1), tf.float32))
  opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  opts["output"] = "none"
  tf.get_logger().setLevel("ERROR")  # the v1 profiler's deprecation warnings
  info = tf.compat.v1.profiler.profile(graph=fn.graph, options=opts)
  return 3.0 * info.total_float_ops


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
    model = keras_model(name)
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


def run(job: dict, seconds: float, devices: list[str]) -> dict:
  """One job, in this process."""
  data = input_pipeline.load(DATASET)
  train = data.splits["train"]
  if job["kind"] == "machine":  # the matmul on one of the training devices
    return {"machine": machine(),
            "matmul_gflops": matmul_gflops(seconds, devices[0] if devices else None),
            "pipeline": in_memory_pipeline_throughput(train, seconds, "none"),
            "pipeline_augmented": in_memory_pipeline_throughput(train, seconds,
                                                                "translate=2,erase=0.25"),
            "tf_data": pipeline_throughput(train, seconds)}
  name, spl = job["model"], job["steps_per_loop"]
  if job["kind"] == "tapeloop":
    out = tapeloop_throughput(name, data, spl, seconds, devices, job.get("flags", ()))
    if job["count_flops"]:  # a property of the model: counted once per run
      out["train_flops_per_example"] = train_flops_per_example(name)
    return out
  # Keras fit's settings in the job's order, its epochs sized from tapeloop's rate.
  x, y = train.images.astype(np.float32) / 255.0, train.labels.astype(np.int32)
  return {variant: keras_fit_throughput(name, x, y, spl if variant == "keras_fit_spe" else 1,
                                        job["expected_rate"], seconds, devices)
          for variant in job["order"]}


def tapeloop_env() -> dict:
  """The environment of a process that runs tapeloop: its entry points' settings
  (trainer/process/tf_env.py), where the caller has not set them."""
  return {**os.environ, **{k: v for k, v in tf_env.SETTINGS.items() if k not in os.environ}}


def isolated(job: dict, seconds: float, device: str = "cpu") -> dict:
  """Runs one job in a fresh Python process, so that no model's graphs, threads or
  allocator state from an earlier measurement slow down a later one; its result has the
  job's environment ("env") too."""
  env = dict(os.environ) if job["kind"] == "keras" else tapeloop_env()
  cmd = [sys.executable, os.path.abspath(__file__), f"--seconds={seconds}",
         f"--device={device}", f"--job={json.dumps(job)}"]
  return bench_common.run_job(cmd, f"benchmark job {job}", env)


def main() -> int:
  parser = argparse.ArgumentParser(description="One benchmark job (started by isolated).")
  parser.add_argument("--job", required=True, help="JSON: kind, model, ...")
  parser.add_argument("--seconds", type=float, required=True)
  parser.add_argument("--device", default="cpu")
  args = parser.parse_args()
  result = run(json.loads(args.job), args.seconds, replica_devices(args.device))
  result["env"] = {k: os.environ.get(k) for k in tf_env.SETTINGS}
  bench_common.print_result(result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
