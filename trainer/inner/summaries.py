"""TensorBoard writers: model_dir/train and model_dir/eval runs, and the run's HParams
session in model_dir itself (so that its metrics can come from both runs).

A session's trial is named after its run: its group name is left empty, which TensorBoard
fills with the run's path below --logdir (`mlp_1x50`, or `fashion_mnist/mlp_1x50` one level
up). The basename of model_dir would repeat across experiments viewed together (the
tutorial on two datasets), and TensorBoard merges sessions of one group name into one row
(one run's hparams, the metrics averaged)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.image import metadata as image_metadata

from trainer.options import declared

# The HParams tab's metric columns: how well the run generalises and how fast it trained,
# not the training accuracy (which ranks the most overfitted run first).
METRICS = (
    hp.Metric("accuracy", group="eval", display_name="eval accuracy",
              description="the last eval: validation split, or test without one"),
    hp.Metric("loss", group="eval", display_name="eval loss"),
    hp.Metric("test_accuracy", group="eval", display_name="test accuracy"),
    hp.Metric("test_loss", group="eval", display_name="test loss"),
    hp.Metric("test_tta_accuracy", group="eval", display_name="test accuracy with TTA",
              description="--tta: the views' averaged prediction"),
    hp.Metric("examples_per_sec", group="train", display_name="train examples/s"),
    hp.Metric("pruned_at_step", group="eval", display_name="pruned at step",
              description="a tuning trial the tuner's pruner stopped (trainer.tune)"),
)


def readable(value):
  """An hparam value TensorBoard can show: lists as "32,64"; None stays None."""
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value)
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return str(value)


def trained(flag_values: dict) -> dict:
  """The flags of what a run trains, readable: not those of how it runs
  (declared.HOW_IT_RUNS: model_dir, data_dir, checkpointing, ... give the same model),
  which are no hparams. Unset flags stay None: columns, without a value in the session."""
  return {k: readable(v) for k, v in flag_values.items() if k not in declared.HOW_IT_RUNS}


def _domain(values: list):
  """A Discrete domain of the values when TensorBoard can type it (one of number, bool,
  str; none unset), else None."""
  if any(v is None for v in values):
    return None
  kinds = {bool if isinstance(v, bool) else float if isinstance(v, (int, float)) else str
           for v in values}
  if len(kinds) != 1:
    return None
  kind = kinds.pop()
  return hp.Discrete(sorted({kind(v) for v in values}), dtype=kind)


def write_experiment(writer, hparam_names, domains: dict | None = None,
                     differing=()) -> None:
  """The HParams experiment: which hparams are columns (`domains`: name -> list of values,
  for a sweep) and which metrics. The `differing` ones are marked so (HParamInfo.differs)
  and come first: TensorBoard orders the columns by that mark, then by name, whatever
  the order written."""
  domains = domains or {}
  differing = set(differing)
  names = sorted(hparam_names, key=lambda name: (name not in differing, name))
  pb = hp.hparams_config_pb(
      hparams=[hp.HParam(name, hp.Discrete(domains[name]) if name in domains else None)
               for name in names],
      metrics=list(METRICS))
  # hp.HParam cannot say `differs`: set it in the experiment's plugin data.
  value = pb.value[0]
  experiment = hparams_metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
  for info in experiment.hparam_infos:
    info.differs = info.name in differing
  value.metadata.CopyFrom(hparams_metadata.create_summary_metadata(
      plugin_data_pb2.HParamsPluginData(experiment=experiment)))
  with writer.as_default(step=0):
    tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step=0)
  writer.flush()


def write_experiment_over(logdir: str, runs: list[dict], first=()) -> list[str]:
  """One HParams experiment in logdir over the runs below it (a sweep's trials, the
  tutorial's models; each given by its flag values): what they train, with the values of
  those that differ as domains. The first columns: `first` when given (a tuner's searched
  flags, even where the runs so far agree), else the hparams that differ between the runs.
  TensorBoard orders the columns by HParamInfo.differs, then by name: only those are
  marked, so that a flag that differs because of a searched one (a model's own defaults,
  when `model` is searched) does not sort ahead of it. Returns the names marked.

  TensorBoard shows one experiment per --logdir, the first it finds walking down from it:
  with --logdir=LOGDIR this one (run "."), not a run's own. It replaces any earlier one
  in logdir (another process's, an earlier rerun's): one experiment per logdir."""
  hparams = [trained(flag_values) for flag_values in runs]
  if not hparams:
    return []
  names = sorted(set().union(*hparams))
  # 0 and 0.0 are one value (a model's default against a flag's float).
  text = lambda v: json.dumps(float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
  differing = [name for name in names
               if name in first or len({text(h.get(name)) for h in hparams}) > 1]
  marked = [name for name in differing if name in first] if first else differing
  domains = {}
  for name in differing:
    domain = _domain([h.get(name) for h in hparams])
    if domain is not None:
      domains[name] = domain.values
  scratch = tempfile.mkdtemp(prefix="tapeloop-experiment-")
  try:
    writer = tf.summary.create_file_writer(scratch)
    write_experiment(writer, names, domains, marked)
    writer.close()
    (written,) = os.listdir(scratch)
    tf.io.gfile.makedirs(logdir)
    earlier = [os.path.join(logdir, n) for n in tf.io.gfile.listdir(logdir)
               if "tfevents" in n and not tf.io.gfile.isdir(os.path.join(logdir, n))]
    # A later name than any earlier one's, so that a running TensorBoard reads it; copied
    # under a name TensorBoard ignores, then renamed, so that it never reads half of it.
    final = os.path.join(logdir, f"events.out.tfevents.{time.time():.6f}.experiment")
    partial = os.path.join(logdir, f".experiment-{os.getpid()}.partial")
    try:
      tf.io.gfile.copy(os.path.join(scratch, written), partial, overwrite=True)
      tf.io.gfile.rename(partial, final, overwrite=True)
    finally:  # a failed copy or rename leaves no partial file in logdir
      if tf.io.gfile.exists(partial):
        tf.io.gfile.remove(partial)
    for path in earlier:
      tf.io.gfile.remove(path)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return marked


class Summaries:
  """Scalars, images and text per run; written in cross-replica context, between inner
  loops. A non-chief worker's Summaries writes nothing."""

  def __init__(self, model_dir: str, enabled: bool = True):
    self.enabled, self.model_dir = enabled, model_dir
    self._writers = {}

  def writer(self, run: str):
    """The run's writer, made on first use: nothing is written to model_dir before."""
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

  def flags(self, flag_values: dict, *, trial_id: str = "") -> None:
    """Every flag as a Markdown table (Text tab), and what the run trains as its HParams
    session. trial_id "": TensorBoard names the trial after its run (module docstring)."""
    if not self.enabled:
      return
    values = {k: readable(v) for k, v in flag_values.items()}
    rows = "\n".join(f"| {k} | {'' if v is None else v} |" for k, v in sorted(values.items()))
    self.text("train", 0, "flags", "| flag | value |\n|---|---|\n" + rows)
    self.flush("train")
    hparams = trained(flag_values)
    session = tf.summary.create_file_writer(self.model_dir)
    write_experiment(session, hparams)
    with session.as_default(step=0):
      hp.hparams({k: v for k, v in hparams.items() if v is not None}, trial_id=trial_id)
    session.close()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
