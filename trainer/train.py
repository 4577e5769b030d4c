"""train_and_evaluate(config): data, strategy, Trainer, then test eval, export, results."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import keras
import tensorflow as tf
from absl import logging

import input_pipeline
from input_pipeline.pipeline import check_batch
from trainer import distribute, export, summaries
from trainer.config import Config, ConfigError
from trainer.loop import Trainer


def _check_writable(model_dir: str) -> None:
  """Refuses an unwritable model_dir before any work, and without creating anything: it
  probes the nearest existing ancestor (os.access says yes to root on read-only mounts)."""
  path = os.path.abspath(model_dir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise ConfigError(f"--model_dir={model_dir}: {path} is a file, not a directory")
  try:
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise ConfigError(f"--model_dir={model_dir}: {path} is not writable ({e.strerror}); "
                      "choose another --model_dir") from None


def train_and_evaluate(config: Config) -> dict:
  """Trains to the target step (resuming from model_dir), evaluates, exports; returns the
  results that also go to model_dir/results.json."""
  start = time.time()
  _check_writable(config.model_dir)
  strategy = distribute.create_strategy(config)  # first: it may configure the runtime
  keras.utils.set_random_seed(config.seed)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  logging.info("precision policy: %s%s", config.mixed_precision,
               " with dynamic loss scaling" if config.mixed_precision == "mixed_float16" else "")
  data = input_pipeline.load(config.dataset, data_dir=config.data_dir,
                             manual_dir=config.manual_dir, num_classes=config.num_classes,
                             validation_split=config.validation_split, seed=config.seed)
  train_split = data.splits.get("train")
  if train_split is None or train_split.labels is None:
    raise ConfigError(f"--dataset={config.dataset} has no labeled train split")
  # Before model_dir exists: a batch the split cannot fill must leave nothing behind.
  check_batch(config.batch_size, len(train_split), "training", need_full=True)
  logging.info("data %s: %s, image shape %s, %d classes", data.info.name,
               dict(data.info.split_sizes), data.info.image_shape, data.info.num_classes)
  chief = distribute.is_chief(strategy)
  # Under MultiWorkerMirroredStrategy every worker saves (checkpoints, export); a non-chief
  # worker does so into a scratch directory removed at the end.
  scratch = None if chief else tempfile.mkdtemp(prefix="tapeloop-worker-")
  try:
    return _run(config, strategy, data, start, scratch)
  finally:
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)


def _run(config: Config, strategy, data, start: float, scratch: str | None) -> dict:
  chief = scratch is None
  if chief:
    os.makedirs(config.model_dir, exist_ok=True)
  trainer = Trainer(config, strategy, data, output_dir=scratch)
  logging.info("model %s: %d parameters", config.model, trainer.model.count_params())
  writer = summaries.Summaries(config.model_dir, enabled=chief)
  writer.flags(config.flag_values)
  timing = trainer.train(writer)
  results_path = os.path.join(config.model_dir, "results.json")
  if timing["examples_per_sec"] is None and os.path.exists(results_path):
    # A rerun of a finished run only evaluates: keep the training figures it measured.
    with open(results_path) as f:
      previous = json.load(f)
    timing = {k: previous.get(k, v) for k, v in timing.items()}

  results = {"global_step": int(trainer.global_step.numpy()), "dataset": data.info.name,
             "model": config.model, "parameters": trainer.model.count_params(),
             "replicas": strategy.num_replicas_in_sync, "chief": chief, **timing,
             "weights_digest": trainer.weights_digest()}
  logging.info("model weights digest at step %d: %s", results["global_step"],
               results["weights_digest"])
  for split in ("validation", "test"):
    if split in data.splits and data.splits[split].labels is not None:
      result = trainer.evaluate(split)
      logging.info("%s: loss %.4f  accuracy %.4f", split, result["loss"], result["accuracy"])
      results[f"{split}_loss"], results[f"{split}_accuracy"] = result["loss"], result["accuracy"]
      # The loop evaluates validation up to the last step; the last step's is this one.
      writer.scalars("eval", results["global_step"],
                     {f"test_{k}": v for k, v in result.items()} if split == "test" else result)
  writer.close()
  results["wall_seconds"] = time.time() - start
  results["flags"] = config.flag_values
  export.save_model(trainer.model, data.info.image_shape,
                    os.path.join(config.model_dir if chief else scratch, "export"))
  if chief:
    export.write_json(results_path, results)
  return results
