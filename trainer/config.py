"""One frozen config built from the flags and validated up front: a bad value is a
ConfigError whose message names the flag."""

from __future__ import annotations

import dataclasses
import os
import types
from typing import Any

import input_pipeline
import models
from input_pipeline import Augment
from input_pipeline.sources import check_options as check_data_options
from input_pipeline.sources import parse_image_size, parse_spec
from models.common import POLICIES
from trainer import flags as tl_flags


# Where a run keeps the check of a folder:'s files, so that a resume does not decode them all.
FOLDER_CHECK = "folder_check.json"


def folder_check(model_dir: str, dataset: str) -> dict | None:
  """The run's check of its folder:'s files (model_dir/FOLDER_CHECK), which input_pipeline
  reuses when the folder lists the same files; None for other data, or when damaged."""
  from trainer import files  # pylint: disable=g-import-not-at-top  (files imports config)
  if not dataset.startswith("folder:"):
    return None
  try:
    return files.read_json(files.join(model_dir, FOLDER_CHECK))
  except ValueError:  # damaged: the files are checked again
    return None


class ConfigError(ValueError):
  """A bad flag value or combination; the message names the flag and the fix."""


@dataclasses.dataclass(frozen=True)
class Config:
  model: str
  model_hparams: dict[str, Any]
  dataset: str
  data_dir: str | None
  manual_dir: str | None
  num_classes: int | None
  validation_split: float
  pipeline: str
  memory_budget_gb: float | None
  image_size: tuple[int, int] | None
  skip_bad_images: bool
  augment: Augment
  mixup: float
  cutmix: float
  mix_probability: float
  model_dir: str
  batch_size: int
  accumulation_steps: int
  epochs: int | None
  train_steps: int | None
  steps_per_loop: int
  eval_every: int | None
  eval_images: bool
  keep_best: str | None
  early_stopping: int | None
  checkpoint_every: int | None
  keep_checkpoints: int
  seed: int
  deterministic: bool
  allow_changed_flags: tuple[str, ...]
  divergence_retries: int
  optimizer: str
  learning_rate: float
  lr_schedule: str
  warmup_steps: int
  schedule_steps: int | None
  final_learning_rate: float
  lr_boundaries: tuple[int, ...]
  plateau_patience: int
  lr_decay_rate: float
  momentum: float
  nesterov: bool
  label_smoothing: float
  ema_decay: float
  weight_decay: float
  clip_norm: float | None
  strategy: str
  devices: tuple[str, ...] | None
  cpu_devices: int | None
  intra_op_threads: int | None
  profile_steps: tuple[int, int] | None
  mixed_precision: str
  jit_compile: str
  flag_values: dict[str, Any]  # every flag as given, for results.json and TensorBoard

  def hparams(self) -> dict[str, Any]:
    """The flags with each model hyperparameter at the value the model uses (its default
    where not given), for the HParams tab."""
    values = dict(self.flag_values)
    defaults = models.hyperparameters(self.model)
    for name in tl_flags.MODEL_FLAGS:
      if name in defaults:
        values[name] = self.model_hparams.get(name, defaults[name])
    return values

  @property
  def step_batch(self) -> int:
    """Examples per training step: the batch times --accumulation_steps."""
    return self.batch_size * self.accumulation_steps

  @property
  def mixing(self) -> bool:
    return bool(self.mixup or self.cutmix)

  def steps_for(self, train_size: int) -> tuple[int, int]:
    """(steps per epoch, total steps) for a training split of train_size examples."""
    per_epoch = max(1, train_size // self.step_batch)
    return per_epoch, self.train_steps or per_epoch * (self.epochs or 1)

  def load_data(self):
    """The dataset as these flags describe it (input_pipeline.load); a folder's check
    from an earlier start in model_dir is reused when its files are the same."""
    return input_pipeline.load(
        self.dataset, data_dir=self.data_dir, manual_dir=self.manual_dir,
        num_classes=self.num_classes, validation_split=self.validation_split, seed=self.seed,
        image_size=self.image_size, pipeline=self.pipeline,
        memory_budget_gb=self.memory_budget_gb, skip_bad_images=self.skip_bad_images,
        folder_check=folder_check(self.model_dir, self.dataset))

  def with_flags(self, **values) -> Config:
    """This config with some flags replaced (e.g. from the run's record)."""
    return dataclasses.replace(self, **values, flag_values={**self.flag_values, **values})


def absolute_path(path: str | None) -> str | None:
  """A path as the user means it: a local one made absolute against the current directory
  (~ expanded, file:// dropped), a URL (gs://, ram://) as it is. How a run records paths,
  and how the scripts hand them to the trainers they start."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


def _absolute_spec(spec: str) -> str:
  """--dataset with a local file or directory made absolute (idx:, csv:, folder:)."""
  kind, arg = parse_spec(spec)
  return f"{kind}:{absolute_path(arg)}" if kind in ("idx", "csv", "folder") else spec


def normalized(name: str, value):
  """A flag's value in a form where values of one meaning are equal, for comparing a rerun
  with the run's record: --augment=crop,flip and flip,crop; --image_size=28 and 28x28;
  --dataset=mnist and tfds:mnist; --hidden_units=050 and 50. Unreadable values stay as
  they are (they then differ, and the rerun's own validation names them)."""
  if value is None:
    return None
  try:
    if name == "augment":
      return Augment.parse(value)
    if name == "image_size":
      return parse_image_size(value)
    if name == "dataset":  # a relative path as this directory sees it (older records)
      kind, arg = parse_spec(value)
      return kind, (absolute_path(arg) if kind in ("idx", "csv", "folder") else arg)
    if name in ("data_dir", "manual_dir"):
      return absolute_path(value)
    if isinstance(value, (list, tuple)):
      return tuple(int(v) if str(v).strip().lstrip("-").isdigit() else str(v).strip()
                   for v in value)
  except ValueError:
    pass
  return value


def _ints(name: str, values) -> tuple[int, ...]:
  try:
    out = tuple(int(v) for v in values)
  except ValueError:
    raise ConfigError(f"--{name}={','.join(values)}: expected comma-separated integers") from None
  if not out or min(out) < 1:
    raise ConfigError(f"--{name}={','.join(values)}: values must be positive")
  return out


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _model_hparams(fv) -> dict[str, Any]:
  accepted = models.hyperparameters(fv.model)
  hparams = {}
  for name in tl_flags.MODEL_FLAGS:
    value = fv[name].value
    if value is None:
      continue
    _check(name in accepted, f"--{name} does not apply to --model={fv.model}; it takes "
           f"{', '.join('--' + k for k in sorted(accepted))}")
    if isinstance(value, list):
      value = _ints(name, value)
    hparams[name] = value
  if "dropout" in hparams:
    _check(0.0 <= hparams["dropout"] < 1.0, f"--dropout={hparams['dropout']} must be in [0, 1)")
  if "l2" in hparams:
    _check(hparams["l2"] >= 0.0, f"--l2={hparams['l2']} must be >= 0")
  if "blocks_per_stage" in hparams:
    _check(hparams["blocks_per_stage"] >= 1, "--blocks_per_stage must be >= 1")
  if fv.model == "cnn":
    n_filters = len(hparams.get("filters", accepted["filters"]))
    n_kernels = len(hparams.get("kernel_sizes", accepted["kernel_sizes"]))
    _check(n_filters == n_kernels, f"--filters has {n_filters} values but --kernel_sizes has "
           f"{n_kernels}: give one kernel size per conv layer")
  return hparams


def _schedule(fv) -> tuple[int, ...]:
  """Checks the schedule's own flags; returns --lr_boundaries as steps."""
  _check(0 <= fv.final_learning_rate < fv.learning_rate,
         f"--final_learning_rate={fv.final_learning_rate} must be >= 0 and below "
         f"--learning_rate={fv.learning_rate}")
  boundaries = ()
  if fv.lr_boundaries:
    _check(fv.lr_schedule == "step", "--lr_boundaries applies to --lr_schedule=step")
    boundaries = _ints("lr_boundaries", fv.lr_boundaries)
    _check(list(boundaries) == sorted(set(boundaries)),
           f"--lr_boundaries={','.join(fv.lr_boundaries)}: steps must increase")
  _check(fv.lr_schedule != "step" or boundaries,
         "--lr_schedule=step needs --lr_boundaries, e.g. 6000,9000 (steps)")
  return boundaries


def _mixing(fv) -> tuple[float, float]:
  """Checks --mixup, --cutmix and --mix_probability; returns the two alphas."""
  for name in ("mixup", "cutmix"):
    _check(fv[name].value >= 0, f"--{name}={fv[name].value} must be >= 0 (0: off)")
  _check(0 < fv.mix_probability <= 1,
         f"--mix_probability={fv.mix_probability} must be in (0, 1]")
  _check(fv.mix_probability == 1 or fv.mixup or fv.cutmix,
         "--mix_probability applies with --mixup or --cutmix")
  return fv.mixup, fv.cutmix


def from_flags(fv) -> Config:
  """Validates every flag; raises ConfigError naming the first bad one."""
  _check(fv.model in models.MODELS, f"--model={fv.model} is unknown; known models: "
         f"{', '.join(sorted(models.MODELS))}")
  try:
    parse_spec(fv.dataset)
  except ValueError as e:
    raise ConfigError(f"--dataset: {e}") from None
  try:
    check_data_options(validation_split=fv.validation_split, num_classes=fv.num_classes,
                       pipeline=fv.pipeline, memory_budget_gb=fv.memory_budget_gb)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for name in ("batch_size", "steps_per_loop", "keep_checkpoints", "accumulation_steps",
               "plateau_patience"):
    _check(fv[name].value >= 1, f"--{name}={fv[name].value} must be positive")
  for name in ("epochs", "train_steps", "eval_every", "checkpoint_every",
               "cpu_devices", "intra_op_threads", "early_stopping", "schedule_steps"):
    value = fv[name].value
    _check(value is None or value >= 1, f"--{name}={value} must be positive")
  _check(fv.epochs is None or fv.train_steps is None,
         "--epochs and --train_steps both given: use one")
  _check(fv.optimizer in tl_flags.OPTIMIZERS,
         f"--optimizer={fv.optimizer} is unknown; use {', '.join(tl_flags.OPTIMIZERS)}")
  _check(fv.lr_schedule in tl_flags.SCHEDULES,
         f"--lr_schedule={fv.lr_schedule} is unknown; use {', '.join(tl_flags.SCHEDULES)}")
  _check(fv.strategy in tl_flags.STRATEGIES,
         f"--strategy={fv.strategy} is unknown; use {', '.join(tl_flags.STRATEGIES)}")
  _check(fv.mixed_precision in POLICIES, f"--mixed_precision={fv.mixed_precision} "
         f"is unknown; use {', '.join(POLICIES)}")
  _check(fv.jit_compile in tl_flags.JIT_MODES, f"--jit_compile={fv.jit_compile} is unknown; "
         f"use {', '.join(tl_flags.JIT_MODES)}")
  _check(fv.keep_best is None or fv.keep_best in tl_flags.BEST_METRICS,
         f"--keep_best={fv.keep_best} is unknown; use {' or '.join(tl_flags.BEST_METRICS)}")
  _check(fv.learning_rate > 0, f"--learning_rate={fv.learning_rate} must be positive")
  _check(fv.divergence_retries >= 0,
         f"--divergence_retries={fv.divergence_retries} must be >= 0")
  _check(fv.warmup_steps >= 0, f"--warmup_steps={fv.warmup_steps} must be >= 0")
  _check(0 < fv.lr_decay_rate <= 1, f"--lr_decay_rate={fv.lr_decay_rate} must be in (0, 1]")
  _check(0 <= fv.momentum < 1, f"--momentum={fv.momentum} must be in [0, 1)")
  _check(fv.weight_decay >= 0, f"--weight_decay={fv.weight_decay} must be >= 0")
  _check(not fv.nesterov or fv.optimizer == "momentum",
         f"--nesterov applies to --optimizer=momentum (not {fv.optimizer})")
  _check(0 <= fv.label_smoothing < 1,
         f"--label_smoothing={fv.label_smoothing} must be in [0, 1)")
  _check(0 <= fv.ema_decay < 1,
         f"--ema_decay={fv.ema_decay} must be in [0, 1) (0: none), e.g. 0.999")
  lr_boundaries = _schedule(fv)
  mixup, cutmix = _mixing(fv)
  # Keras's AdamW would otherwise decay by its own 0.004 while results.json records 0.
  _check(fv.optimizer != "adamw" or fv.weight_decay > 0, "--optimizer=adamw needs "
         "--weight_decay (e.g. 0.004, Keras's default); without decay use --optimizer=adam")
  unknown = sorted(set(fv.allow_changed_flags or ()) - set(tl_flags.OWN_FLAGS))
  _check(not unknown, f"--allow_changed_flags: {', '.join(unknown)} is not a tapeloop flag")
  _check(fv.clip_norm is None or fv.clip_norm > 0, f"--clip_norm={fv.clip_norm} must be positive")
  _check(fv.devices is None or fv.strategy == "mirrored",
         "--devices applies to --strategy=mirrored only")
  profile = None
  if fv.profile_steps:
    profile = _ints("profile_steps", fv.profile_steps)
    _check(len(profile) == 2 and profile[0] < profile[1],
           f"--profile_steps={','.join(fv.profile_steps)}: give A,B with A < B")
  try:
    augment = Augment.parse(fv.augment, fv.dataset)
    image_size = parse_image_size(fv.image_size)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if image_size:
    augment = augment.with_default_crop()
  # Local data paths absolute: the run's record must mean the same files to a rerun, to
  # trainer.evaluate and to trainer.predict started from another directory.
  paths = {"dataset": _absolute_spec(fv.dataset), "data_dir": absolute_path(fv.data_dir),
           "manual_dir": absolute_path(fv.manual_dir)}
  model_dir = fv.model_dir or os.path.join(
      "runs", f"{fv.model}-{fv.dataset.replace(':', '_').replace('/', '_').strip('_.')}")
  return Config(
      model=fv.model, model_hparams=_model_hparams(fv), dataset=paths["dataset"],
      data_dir=paths["data_dir"], manual_dir=paths["manual_dir"], num_classes=fv.num_classes,
      validation_split=fv.validation_split, pipeline=fv.pipeline,
      memory_budget_gb=fv.memory_budget_gb, image_size=image_size,
      skip_bad_images=fv.skip_bad_images, augment=augment, mixup=mixup, cutmix=cutmix,
      mix_probability=fv.mix_probability, model_dir=model_dir, batch_size=fv.batch_size,
      accumulation_steps=fv.accumulation_steps, epochs=fv.epochs, train_steps=fv.train_steps,
      steps_per_loop=fv.steps_per_loop, eval_every=fv.eval_every, eval_images=fv.eval_images,
      keep_best=fv.keep_best, early_stopping=fv.early_stopping,
      checkpoint_every=fv.checkpoint_every, keep_checkpoints=fv.keep_checkpoints,
      seed=fv.seed, deterministic=fv.deterministic,
      allow_changed_flags=tuple(fv.allow_changed_flags or ()),
      divergence_retries=fv.divergence_retries, optimizer=fv.optimizer,
      learning_rate=fv.learning_rate, lr_schedule=fv.lr_schedule,
      warmup_steps=fv.warmup_steps, schedule_steps=fv.schedule_steps,
      final_learning_rate=fv.final_learning_rate, lr_boundaries=lr_boundaries,
      plateau_patience=fv.plateau_patience, lr_decay_rate=fv.lr_decay_rate,
      momentum=fv.momentum, nesterov=fv.nesterov, label_smoothing=fv.label_smoothing,
      ema_decay=fv.ema_decay,
      weight_decay=fv.weight_decay, clip_norm=fv.clip_norm, strategy=fv.strategy,
      devices=tuple(fv.devices) if fv.devices else None, cpu_devices=fv.cpu_devices,
      intra_op_threads=fv.intra_op_threads, profile_steps=profile,
      mixed_precision=fv.mixed_precision, jit_compile=fv.jit_compile,
      flag_values={**{name: fv[name].value for name in tl_flags.OWN_FLAGS}, **paths})


def from_args(args) -> Config:
  """A Config from command-line style flags, e.g. ["--model=mlp", "--epochs=2"], as
  trainer.main would build it (for scripts and tests)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  tl_flags.define_flags()
  fv = flags.FLAGS
  fv.unparse_flags()
  fv(["tapeloop", *args])
  try:
    return from_flags(fv)
  finally:
    fv.unparse_flags()


class _Values:
  """Flag values by name, read the way from_flags reads absl's FLAGS."""

  def __init__(self, values: dict[str, Any]):
    self._values = values

  def __getattr__(self, name):
    return self._values[name]

  def __getitem__(self, name):
    return types.SimpleNamespace(value=self._values[name])


def from_values(values: dict[str, Any]) -> Config:
  """A Config from flag values by name, the others at their defaults (e.g. a run's
  flags.json with some flags replaced), without touching the parsed command line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  tl_flags.define_flags()
  merged = {name: flags.FLAGS[name].default for name in tl_flags.OWN_FLAGS}
  merged.update((k, v) for k, v in values.items() if k in merged)
  return from_flags(_Values(merged))
