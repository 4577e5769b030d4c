"""TensorBoard writers: model_dir/train and model_dir/eval runs, and the run's HParams
session in model_dir itself (so that its metrics can come from both runs)."""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.image import metadata as image_metadata

# The HParams tab's metric columns: how well the run generalises and how fast it trained,
# not the training accuracy (which ranks the most overfitted run first).
METRICS = (
    hp.Metric("accuracy", group="eval", display_name="eval accuracy",
              description="the last eval: validation split, or test without one"),
    hp.Metric("loss", group="eval", display_name="eval loss"),
    hp.Metric("test_accuracy", group="eval", display_name="test accuracy"),
    hp.Metric("test_loss", group="eval", display_name="test loss"),
    hp.Metric("examples_per_sec", group="train", display_name="train examples/s"),
)


def readable(value):
  """An hparam value TensorBoard can show: lists as "32,64"; None stays None."""
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value)
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return str(value)


def write_experiment(writer, hparam_names, domains: dict | None = None) -> None:
  """The HParams experiment: which hparams are columns (`domains`: name -> list of values,
  for a sweep) and which metrics."""
  domains = domains or {}
  with writer.as_default(step=0):
    hp.hparams_config(
        hparams=[hp.HParam(name, hp.Discrete(domains[name]) if name in domains else None)
                 for name in sorted(hparam_names)],
        metrics=list(METRICS))
  writer.flush()


class Summaries:
  """Scalars, images and text per run; written in cross-replica context, between inner
  loops. A non-chief worker's Summaries writes nothing."""

  def __init__(self, model_dir: str, enabled: bool = True, runs=("train", "eval")):
    self.enabled, self.model_dir = enabled, model_dir
    self._writers = {}
    if enabled:
      for run in runs:
        self._writers[run] = tf.summary.create_file_writer(os.path.join(model_dir, run))

  def writer(self, run: str):
    """The run's writer; a run other than train and eval (e.g. eval_raw) on first use."""
    if run not in self._writers:
      self._writers[run] = tf.summary.create_file_writer(os.path.join(self.model_dir, run))
    return self._writers[run]

  def scalars(self, run: str, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    with self.writer(run).as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)
    self.writer(run).flush()

  def image(self, run: str, step: int, name: str, image: np.ndarray, description: str = ""):
    """One uint8 RGB image [H, W, 3], written unflushed (see flush). Encoded by Pillow at
    a low compression level: tf.summary.image's PNG encoding took ~3x as long."""
    if not self.enabled:
      return
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG", compress_level=1)
    # The image plugin's format, as tf.summary.image writes it: width, height, PNGs.
    data = tf.constant([str(image.shape[1]), str(image.shape[0]), png.getvalue()])
    with self.writer(run).as_default(step=step):
      tf.summary.write(name, data, step=step, metadata=image_metadata.create_summary_metadata(
          display_name=name, description=description))

  def text(self, run: str, step: int, name: str, markdown: str) -> None:
    """Markdown for the Text tab, written unflushed (see flush)."""
    if not self.enabled:
      return
    with self.writer(run).as_default(step=step):
      tf.summary.text(name, markdown)

  def flush(self, run: str) -> None:
    if self.enabled:
      self.writer(run).flush()

  def flags(self, flag_values: dict) -> None:
    """The flags as a Markdown table (Text tab) and as this run's HParams session."""
    if not self.enabled:
      return
    values = {k: readable(v) for k, v in flag_values.items()}
    rows = "\n".join(f"| {k} | {'' if v is None else v} |" for k, v in sorted(values.items()))
    self.text("train", 0, "flags", "| flag | value |\n|---|---|\n" + rows)
    self.flush("train")
    session = tf.summary.create_file_writer(self.model_dir)
    write_experiment(session, flag_values)
    with session.as_default(step=0):
      hp.hparams({k: v for k, v in values.items() if v is not None})
    session.close()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
