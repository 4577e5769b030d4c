"""--init_from: a new run's weights from another run, a checkpoint or a Keras weights file,
matched to this model's variables by path (models.paths) and shape. The classifier head
starts afresh where its shape differs (another number of classes); what was restored and
what was not is a table (Report), logged and kept in model_dir and TensorBoard's text tab.

Sources: a tapeloop model_dir (its newest readable checkpoint; DIR/best: the kept best), a
checkpoint prefix, a Keras 3 `.weights.h5` file (paired entry by entry with the variables
Keras's saving_lib would write there), a legacy `.h5` in keras.applications' published
layout (layers by name, into the model's functional `backbone`), and `imagenet` (that
file for the model's keras.applications network, from Keras's cache or downloaded)."""

from __future__ import annotations

import dataclasses
import os
import shlex

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline.specs import parse_spec
from models import paths, pretrained, weight_files
from trainer.inner import checkpoints
from trainer.options import values
from trainer.process import files
from trainer.process.errors import ConfigError


IMAGENET = "imagenet"
FILE = "init_from.txt"  # in model_dir: the table
_RECORD = "flags.json"  # a run's record, which names its model
_q = shlex.quote


@dataclasses.dataclass
class Source:
  """The values of a source by variable path. what: the source, for the table; model: the
  model it came from, when known; names: a value's own name in the source where it differs
  from its path (a file's entry); unused: the source's values that no variable took; note:
  how a file's layers were paired where not by name."""
  what: str
  values: dict[str, np.ndarray]
  model: str | None = None
  names: dict[str, str] = dataclasses.field(default_factory=dict)
  unused: list[str] = dataclasses.field(default_factory=list)
  note: str = ""
  labels: Labels | None = None  # what the source's classes were, when its run is known


@dataclasses.dataclass(frozen=True)
class Labels:
  """What a run's classes are: its --dataset and --classes (None: all of them)."""
  dataset: str
  classes: tuple[str, ...] | None = None

  @classmethod
  def of(cls, dataset, classes) -> Labels:
    return cls(str(dataset), tuple(str(c) for c in classes) if classes else None)

  def same(self, source: Labels, num_classes: int) -> bool:
    """The same classes in the same order as the source's: one dataset however spelled
    (mnist is tfds:mnist, a folder by its absolute path), --classes unset being all of
    them. A source's dataset that cannot be compared (an older record's relative path, a
    spec no longer read) is another: a fresh head is the safe side, and the table says so."""
    every = tuple(str(i) for i in range(num_classes))
    try:
      kind, arg = parse_spec(source.dataset)
      if kind in ("idx", "csv", "folder") and not (os.path.isabs(arg) or "://" in arg):
        return False
      theirs = values.dataset_meaning(source.dataset)
    except Exception:  # pylint: disable=broad-except  (any spec this version refuses)
      return False
    return ((values.dataset_meaning(self.dataset), self.classes or every)
            == (theirs, source.classes or every))

  def __str__(self) -> str:
    return self.dataset + (f" classes {','.join(self.classes)}" if self.classes else "")


def _shape(shape) -> str:
  return "x".join(str(d) for d in shape) or "scalar"


@dataclasses.dataclass
class Report:
  """What --init_from restored: rows of (status, path, shape or reason, parameters);
  names: a restored value's own name in the source (a file's entry), where it has one."""
  option: str
  what: str
  rows: list[tuple[str, str, str, int]]
  unused: list[str]
  names: dict[str, str] = dataclasses.field(default_factory=dict)

  def _from(self, status: str, path: str) -> str:
    return self.names.get(path, "") if status == "restored" else ""

  @property
  def restored(self) -> list[str]:
    return [row[1] for row in self.rows if row[0] == "restored"]

  def summary(self) -> str:
    total = sum(row[3] for row in self.rows)
    got = sum(row[3] for row in self.rows if row[0] == "restored")
    return (f"restored {len(self.restored)} of {len(self.rows)} variables, {got:,} of "
            f"{total:,} parameters")

  def text(self) -> str:
    width = max(len(row[1]) for row in self.rows)
    detail_width = max(len(row[2]) for row in self.rows)
    lines = [f"--init_from={self.option}: {self.what}", self.summary()]
    lines += [f"  {status:<9} {path:<{width}}  {detail:<{detail_width}} {params:>10,}  "
              f"{self._from(status, path)}".rstrip()
              for status, path, detail, params in self.rows]
    if self.unused:
      lines.append(f"unused in the source ({len(self.unused)}): {', '.join(self.unused)}")
    return "\n".join(lines) + "\n"

  def markdown(self) -> str:
    rows = "\n".join(f"| {status} | {path} | {detail} | {params:,} | {self._from(status, path)} |"
                     for status, path, detail, params in self.rows)
    unused = (f"\n\nunused in the source ({len(self.unused)}): {', '.join(self.unused)}"
              if self.unused else "")
    return (f"`--init_from={self.option}`: {self.what}\n\n{self.summary()}\n\n"
            f"| | variable | shape or reason | parameters | in the source |\n"
            f"|---|---|---|---|---|\n{rows}{unused}")

  def write(self, model_dir: str, writer) -> None:
    """model_dir/init_from.txt (atomically) and the text tab of the train run (writer:
    summaries.Summaries)."""
    files.write_text(files.join(model_dir, FILE), self.text())
    writer.text("train", 0, "init_from", self.markdown())
    writer.flush("train")


def initialize(model: keras.Model, option: str, model_name: str, labels: Labels | None = None,
               assign: bool = True) -> Report | None:
  """Assigns the source's matching values to `model`'s variables (under the strategy's
  scope: a mirrored variable takes the value on every replica) and returns the table.
  ConfigError (one line) for a source that cannot be read, that matches nothing but the
  head, or whose input channels differ; nothing is assigned then. assign=False: the
  table only (a dry run's check), and None for ImageNet weights not yet downloaded.
  labels: this run's classes; the head starts afresh also where its shape is the same but
  the source's run trained on other classes (5 classes are not the same 5 classes)."""
  source = _read(option, model, model_name, download=assign)
  if source is None:
    return None
  other_classes = (labels is not None and source.labels is not None
                   and not labels.same(source.labels, getattr(model, "num_classes", 0)))
  variables = paths.variable_paths(model)
  rows, pairs = [], []
  channels = None  # the stem's kernel took images of other channels
  for path, variable in variables.items():
    shape, params = tuple(variable.shape), int(np.prod(variable.shape))
    value = source.values.get(path)
    if value is None:
      rows.append(("skipped", path, "missing", params))
    elif tuple(value.shape) == shape and other_classes and paths.is_head(path):
      rows.append(("new head", path, f"other classes (the source's: {source.labels})",
                   params))
    elif tuple(value.shape) == shape:
      rows.append(("restored", path, _shape(shape), params))
      pairs.append((variable, value))
    else:
      change = f"{_shape(value.shape)} -> {_shape(shape)}"
      rows.append(("new head" if paths.is_head(path) else "skipped", path, f"shape {change}",
                   params))
      if not rows[:-1] and not paths.is_head(path):  # the stem: the images' channels
        channels = _channels(getattr(model, "image_shape", None), value.shape, shape)
        channels = channels and (path, value.shape, shape, channels)
  used = set(variables)
  unused = source.unused + [source.names.get(p, p) for p in source.values if p not in used]
  option_shown = _q(option)
  if channels:
    path, had, has, (theirs, ours) = channels
    raise ConfigError(
        f"--init_from={option_shown}: {path} has shape {_shape(had)} there and {_shape(has)} "
        f"in this --model={model_name}: the source took {theirs}-channel images, this run's "
        f"have {ours}")
  if all(paths.is_head(row[1]) for row in rows if row[0] == "restored"):
    origin = f" (a --model={source.model} run)" if source.model else ""
    shapes = sum(row[0] == "skipped" and row[2] != "missing" for row in rows)
    hint = (f" ({shapes} of its variables are there with other shapes: other model "
            "hyperparameters?)" if shapes else "")
    raise ConfigError(
        f"--init_from={option_shown}{origin} matches no variable of this --model={model_name} "
        f"besides the head{hint}: start from a run, checkpoint or weights file of the same "
        "model")
  report = Report(option_shown, source.what, rows, unused, source.names)
  if assign:
    for variable, value in pairs:
      variable.assign(tf.cast(value, variable.dtype))
    logging.info("%s", report.text().rstrip())
  return report


def _channels(image_shape, had, has) -> tuple[int, int] | None:
  """(the source's image channels, this model's) when the stem's kernel differs from the
  source's by the images' channels alone: a convolution's input axis, or a dense layer's
  flattened input by a factor of 3; None otherwise."""
  if not image_shape or len(had) != len(has):
    return None
  ours = image_shape[-1]
  axis = {4: 2, 2: 0}.get(len(has))
  differing = [i for i, (a, b) in enumerate(zip(had, has)) if a != b]
  if axis is None or differing != [axis] or (had[axis] * ours) % has[axis]:
    return None
  theirs = had[axis] * ours // has[axis]
  return (theirs, ours) if {theirs, ours} == {1, 3} else None


def _read(option: str, model: keras.Model, model_name: str, download: bool) -> Source | None:
  """The source `option` names, read whole; None for ImageNet weights not yet in Keras's
  cache when not to download them."""
  if option == IMAGENET:
    local = _imagenet(model, model_name, download)
    return local and _weights_file(local, option, model, "ImageNet weights ")
  path = option.removeprefix("file://")
  if tf.io.gfile.isdir(path):
    # The newest readable one, as a resume takes: a run still writing its newest, or one
    # killed while it did, leaves an unreadable one.
    prefixes = _checkpoints(path, option)
    for prefix in prefixes[:-1]:
      try:
        return _checkpoint(prefix, option)
      except ConfigError as e:
        logging.warning("%s; taking the one before it", e)
    return _checkpoint(prefixes[-1], option)
  if tf.io.gfile.exists(path + ".index"):
    return _checkpoint(path, option)
  if tf.io.gfile.exists(path):
    return _weights_file(path, option, model, "")
  raise ConfigError(f"--init_from={_q(option)}: no such directory, file or checkpoint prefix "
                    f"({_q(path + '.index')} does not exist either); give a run's model_dir, "
                    "a checkpoint prefix, a .weights.h5/.h5 file or imagenet")


def _checkpoints(directory: str, option: str) -> list[str]:
  """The checkpoint prefixes of a run's model_dir (its checkpoints/) or of a directory of
  checkpoints (a run's best/), newest first."""
  for folder in (directory, os.path.join(directory, "checkpoints")):
    steps = checkpoints.checkpoint_steps(folder)
    if steps:
      return [os.path.join(folder, f"ckpt-{step}") for step in steps]
  raise ConfigError(f"--init_from={_q(option)}: no checkpoint in {_q(directory)} nor in "
                    f"{_q(os.path.join(directory, 'checkpoints'))}; give a run's model_dir, "
                    "its best/ or a checkpoint prefix")


def _run_record(prefix: str) -> dict:
  """The record of the run a checkpoint belongs to (its model_dir's flags.json), or {}."""
  folder = os.path.dirname(prefix)
  for directory in (folder, os.path.dirname(folder)):
    try:
      record = files.read_json(os.path.join(directory, _RECORD))
    except (ValueError, tf.errors.OpError):
      record = None
    if isinstance(record, dict) and isinstance(record.get("model"), str):
      return record
  return {}


def _checkpoint(prefix: str, option: str) -> Source:
  """A checkpoint's values of the model: the run's weight average where it kept one
  (--ema_decay: what its evals, best checkpoint and export used), else its weights."""
  try:
    reader = tf.train.load_checkpoint(prefix)
    root, keys = "ema", paths.checkpoint_keys(reader, "ema")
    if keys is None:
      root, keys = "model", paths.checkpoint_keys(reader, "model") or {}
    values = {path: reader.get_tensor(key) for path, key in keys.items()}
  except (tf.errors.OpError, ValueError, IndexError) as e:  # IndexError: a truncated file
    reason = (getattr(e, "message", None) or str(e)).strip().splitlines()[0][:120]
    raise ConfigError(f"--init_from={_q(option)}: cannot read checkpoint {_q(prefix)} "
                      f"({reason})") from None
  record = _run_record(prefix)
  model = record.get("model")
  labels = Labels.of(record["dataset"], record.get("classes")) if "dataset" in record else None
  what = (f"checkpoint {_q(prefix)}" + (f" of a --model={model} run" if model else "")
          + (", its weight average (--ema_decay)" if root == "ema" else ""))
  return Source(what, values, model, labels=labels)


def _weights_file(path: str, option: str, model: keras.Model, kind: str) -> Source:
  try:
    read = weight_files.read(path, model)
  except OSError as e:
    raise ConfigError(f"--init_from={_q(option)}: {_q(path)} is not a checkpoint nor a "
                      f"readable .weights.h5/.h5 file ({str(e)[:100]})") from None
  except weight_files.NoBackbone:
    raise ConfigError(
        f"--init_from={_q(option)} is a legacy Keras .h5 file (weights by layer name, as "
        "keras.applications publishes them): it loads into a model whose backbone is a "
        "keras.applications network, not this one; give a checkpoint or .weights.h5 file"
    ) from None
  what = (f"{kind}legacy Keras .h5 file {_q(path)}{read.note}" if read.legacy
          else f"{kind}Keras weights file {_q(path)}")
  return Source(what, read.values, None, read.names, read.unused)


def _imagenet(model: keras.Model, model_name: str, download: bool) -> str | None:
  """The local path of the model's published ImageNet weights: Keras's cache
  ($KERAS_HOME, else ~/.keras, then models/), else downloaded into it by keras.utils.get_file
  (None when not to download)."""
  published = pretrained.IMAGENET.get(model_name)
  if published is None or getattr(model, "backbone", None) is None:
    raise ConfigError(
        f"--init_from=imagenet: --model={model_name} has no published ImageNet weights (the "
        f"models with them: {', '.join(sorted(pretrained.IMAGENET))}); give a run's "
        "model_dir, a checkpoint or a weights file")
  try:
    return pretrained.local_copy(published, download)
  except pretrained.FetchError as e:
    raise ConfigError(
        f"--init_from=imagenet: cannot fetch {published.file} from {published.url} "
        f"({e.reason}){e.note}; offline, download it on a connected machine and pass "
        f"--init_from={_q('/path/to/' + published.file)}") from None
