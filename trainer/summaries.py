"""TensorBoard writers: model_dir/train and model_dir/eval, plus the run's flags."""

from __future__ import annotations

import os

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp


class Summaries:
  """Scalars per run; written in cross-replica context, between inner loops."""

  def __init__(self, model_dir: str, enabled: bool = True):
    self.enabled = enabled
    self._writers = {}
    if enabled:
      for run in ("train", "eval"):
        self._writers[run] = tf.summary.create_file_writer(os.path.join(model_dir, run))

  def scalars(self, run: str, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    with self._writers[run].as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)
    self._writers[run].flush()

  def flags(self, flag_values: dict) -> None:
    """The flags as a Markdown table (Text tab) and as hparams (HParams tab)."""
    if not self.enabled:
      return
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(flag_values.items()))
    plain = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
             for k, v in flag_values.items() if v is not None}
    with self._writers["train"].as_default(step=0):
      tf.summary.text("flags", "| flag | value |\n|---|---|\n" + rows)
      hp.hparams(plain)
    self._writers["train"].flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
