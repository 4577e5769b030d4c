"""The tf.distribute strategy the flags ask for; the rest of the code is strategy-agnostic."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

import tensorflow as tf
from absl import logging

from trainer.options.config import Config
from trainer.process.errors import ConfigError


# One strategy per kind and device set per process, as TensorFlow expects: a second
# MirroredStrategy over the same devices restarts collective instance keys and can collide
# with the first one's collectives ("Shape mismatch in the collective instance").
_STRATEGIES: dict[tuple, tf.distribute.Strategy] = {}


def resolve(requested: str, num_gpus: int) -> str:
  """What --strategy=auto means on this machine: several GPUs -> mirrored, one GPU ->
  one_device, CPU only -> default."""
  if requested != "auto":
    return requested
  return "mirrored" if num_gpus > 1 else "one_device" if num_gpus else "default"


def create_strategy(config: Config) -> tf.distribute.Strategy:
  """Call before any other TensorFlow work: MultiWorkerMirroredStrategy must configure
  collective ops before the runtime starts (listing devices starts it). ConfigError when
  the batch does not fit the replicas (check_replicas)."""
  if config.cpu_devices:
    _split_cpu(config.cpu_devices)
  if config.intra_op_threads:
    _set_intra_op_threads(config.intra_op_threads)
  if config.strategy == "multi_worker":
    name, gpus = "multi_worker", None
  else:
    gpus = tf.config.list_logical_devices("GPU")
    name = resolve(config.strategy, len(gpus))
  key = (name, config.devices)
  if key not in _STRATEGIES:
    _STRATEGIES[key] = _make(name, config, gpus)
  strategy = _STRATEGIES[key]
  replicas = strategy.num_replicas_in_sync
  logging.info("strategy: %s (--strategy=%s), %d replica(s), per-replica batch %d",
               type(strategy).__name__, config.strategy, replicas,
               config.batch_size // replicas)
  check_replicas(config, strategy)
  return strategy


def check_replicas(config: Config, strategy: tf.distribute.Strategy) -> None:
  """The batch against the replicas: each replica takes an equal share, and a mixing run
  mixes within each replica's share. Right after the strategy exists, before the data."""
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise ConfigError(f"--batch_size={config.batch_size} is not divisible by the "
                      f"{replicas} replicas; use a multiple of {replicas}")
  if config.mixing and config.step_batch // replicas < 2:
    raise ConfigError(f"--mixup/--cutmix mix each replica's batch within itself, and a "
                      f"replica's batch here is {config.step_batch // replicas} example: use "
                      f"a --batch_size of at least {2 * replicas}")


def _split_cpu(n: int) -> None:
  cpu = tf.config.list_physical_devices("CPU")[0]
  wanted = [tf.config.LogicalDeviceConfiguration()] * n
  current = tf.config.get_logical_device_configuration(cpu)
  if current is not None and len(current) == n:
    return
  try:
    tf.config.set_logical_device_configuration(cpu, wanted)
  except RuntimeError:
    raise ConfigError(f"--cpu_devices={n}: TensorFlow has already started with "
                      f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s)") from None


def _set_intra_op_threads(n: int) -> None:
  # TensorFlow fixes its thread pools when the runtime starts.
  if tf.config.threading.get_intra_op_parallelism_threads() == n:
    return
  try:
    tf.config.threading.set_intra_op_parallelism_threads(n)
  except RuntimeError:
    raise ConfigError(f"--intra_op_threads={n}: TensorFlow has already started its thread "
                      "pools; set it before any TensorFlow work") from None


def _make(name: str, config: Config, gpus) -> tf.distribute.Strategy:
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
  if name == "mirrored":
    devices = config.devices
    if devices is None and config.cpu_devices and not gpus:
      devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)
  if "TF_CONFIG" not in os.environ:
    raise ConfigError("--strategy=multi_worker needs TF_CONFIG (the cluster and this "
                      "worker's task); see docs/several-machines.md")
  try:
    tf_config = json.loads(os.environ["TF_CONFIG"])
  except ValueError:
    raise ConfigError("TF_CONFIG is not valid JSON") from None
  _wait_for_the_cluster(tf_config)
  return tf.distribute.MultiWorkerMirroredStrategy()


# The first "waiting for" line this long after the wait began (a cluster whose tasks start
# together is complete by then), then one every WAIT_REPEAT_SECONDS.
WAIT_FIRST_SECONDS, WAIT_REPEAT_SECONDS = 2.0, 15.0


def _wait_for_the_cluster(tf_config) -> None:
  """Waits, in Python, until every other training task of TF_CONFIG's cluster answers on
  its address, saying every so often which do not: "waiting for 1 of 2 workers: HOST:PORT".

  MultiWorkerMirroredStrategy's start-up waits for them too, but in C++ holding the GIL:
  there no signal handler and no other thread runs, so SIGTERM and Ctrl-C would go
  unanswered for as long as a task is missing. Meanwhile this task listens on its own
  address, so that the others see it come (the strategy's server takes the port after)."""
  cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
  task = tf_config.get("task") if isinstance(tf_config, dict) else None
  cluster = cluster if isinstance(cluster, dict) else {}
  mine = None
  if isinstance(task, dict):
    try:
      mine = cluster[task.get("type")][int(task.get("index", 0))]
    except (KeyError, IndexError, TypeError, ValueError):
      pass
  workers = [a for kind in ("chief", "worker") for a in (cluster.get(kind) or [])
             if isinstance(a, str)]
  others = [a for a in workers if a != mine]
  if not others or not isinstance(mine, str):
    return  # TensorFlow names what is wrong with the cluster
  started = time.monotonic()
  report = started + WAIT_FIRST_SECONDS
  with _listening(mine):
    while missing := [a for a in others if not _answers(a)]:
      if time.monotonic() >= report:
        logging.info("waiting for %d of %d workers: %s (%.0f s)", len(missing), len(workers),
                     ", ".join(missing), time.monotonic() - started)
        report = time.monotonic() + WAIT_REPEAT_SECONDS
      time.sleep(0.25)


@contextlib.contextmanager
def _listening(address: str):
  """A socket listening on the port of `address` (on every interface, as TensorFlow's
  server will), closed at the end; none if the port is taken (TensorFlow then says so)."""
  _, _, port = address.rpartition(":")
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", int(port)))
    sock.listen(64)
  except (OSError, ValueError):
    sock.close()
    sock = None
  try:
    yield
  finally:
    if sock is not None:
      sock.close()


def _answers(address: str) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
      return True
  except (OSError, ValueError):
    return False


def is_evaluator_task() -> bool:
  """Whether TF_CONFIG makes this process a cluster's `evaluator` task (Kubeflow's TFJob
  and Vertex AI start one with the training tasks' command line): it evaluates the
  checkpoints the chief writes and never joins the training collective."""
  try:
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task") or {}
  except (ValueError, AttributeError):
    return False  # create_strategy names a bad TF_CONFIG
  return isinstance(task, dict) and task.get("type") == "evaluator"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Only the chief writes summaries, checkpoints, results and the export."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (
      resolver.task_type == "worker" and resolver.task_id == 0
      and "chief" not in resolver.cluster_spec().as_dict())


def several_workers(strategy: tf.distribute.Strategy) -> bool:
  """Whether other processes train with this one (their collectives wait for it)."""
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def any_worker(strategy: tf.distribute.Strategy):
  """A function of this worker's flag that is True when any worker's flag is: an all-reduce
  under MultiWorkerMirroredStrategy (every worker must call it at the same boundary),
  the flag itself otherwise."""
  if not several_workers(strategy):
    return bool

  def agree(flag: bool) -> bool:
    value = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant(1.0 if flag else 0.0))
    return bool(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy() > 0)
  return agree
