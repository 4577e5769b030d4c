"""The tf.distribute strategy the flags ask for; the rest of the code is strategy-agnostic."""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging

from trainer.config import Config, ConfigError


def create_strategy(config: Config) -> tf.distribute.Strategy:
  gpus = tf.config.list_logical_devices("GPU")
  name = config.strategy
  if name == "auto":
    name = "mirrored" if len(gpus) > 1 else "one_device" if gpus else "default"
  if name == "default":
    strategy = tf.distribute.get_strategy()
  elif name == "one_device":
    strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
  elif name == "mirrored":
    strategy = tf.distribute.MirroredStrategy(devices=config.devices)
  else:
    if "TF_CONFIG" not in os.environ:
      raise ConfigError("--strategy=multi_worker needs TF_CONFIG (the cluster and this "
                        "worker's task); see README, 'Several machines'")
    try:
      json.loads(os.environ["TF_CONFIG"])
    except ValueError:
      raise ConfigError("TF_CONFIG is not valid JSON") from None
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise ConfigError(f"--batch_size={config.batch_size} is not divisible by the "
                      f"{replicas} replicas; use a multiple of {replicas}")
  logging.info("strategy: %s (--strategy=%s), %d replica(s), per-replica batch %d",
               type(strategy).__name__, config.strategy, replicas,
               config.batch_size // replicas)
  return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Only the chief writes summaries, checkpoints, results and the export."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (
      resolver.task_type == "worker" and resolver.task_id == 0
      and "chief" not in resolver.cluster_spec().as_dict())
