"""tf.train.CheckpointManager under model_dir/checkpoints: save, resume, refuse mismatches."""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

from trainer.config import ConfigError


class Checkpoints:
  """Saves model, optimizer and global step; restores the latest on start.

  Restores from model_dir/checkpoints; saves there too, or, for a non-chief worker, to
  save_dir (every worker must call save under MultiWorkerMirroredStrategy)."""

  def __init__(self, model_dir: str, keep: int, save_dir: str | None = None, **objects):
    self.checkpoint = tf.train.Checkpoint(**objects)
    self.directory = os.path.join(model_dir, "checkpoints")
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(save_dir, "checkpoints") if save_dir else self.directory,
        max_to_keep=keep, checkpoint_name="ckpt")

  def restore_latest(self) -> str | None:
    """Restores the latest checkpoint (call under strategy.scope()); None if there is none."""
    path = tf.train.latest_checkpoint(self.directory)
    if path is None:
      return None
    try:
      # Every saved value must find its variable and match its shape: a checkpoint of
      # another model in this model_dir is an error, never a silent fresh start.
      self.checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      first = str(e).strip().splitlines()[0][:160]
      raise ConfigError(f"cannot resume from {path}: it does not match this model ({first}); "
                        "use another --model_dir or the flags that made it") from None
    logging.info("resumed from %s", path)
    return path

  def save(self, step: int) -> str:
    path = self.manager.save(checkpoint_number=step)
    logging.info("saved checkpoint %s", path)
    return path
