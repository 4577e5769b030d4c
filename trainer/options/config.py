"""One frozen Config per run, plain data built from the flags and validated up front: a
bad value is a ConfigError whose message names the flag. Its fields are declared.py's
options; what needs the data or the devices is checked later, once, in
trainer/run/planning.py."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from typing import Any, Callable

from absl import flags as absl_flags
from absl import logging

# TensorFlow-free: the flags are checked before it loads. Plain data: nothing here reads
# or writes a file (the run layer loads the data and reads a run's record).
from input_pipeline.specs import Augment, parse_spec, parse_tta
from models.names import hyperparameters
from trainer.options import command_line, declared
from trainer.options.values import absolute_path, absolute_spec, as_text, finite, flag_arg
from trainer.process.errors import ConfigError


# The flags that say which data a run reads (input_pipeline.load's arguments, the first
# positional, the others by name; run_files.load_data): the same values read the same
# data, which the tuner's and the sweep's checks therefore load once.
DATA_FLAGS = ("dataset", "data_dir", "manual_dir", "num_classes", "validation_split",
              "seed", "image_size", "pipeline", "memory_budget_gb", "skip_bad_images",
              "classes", "examples_per_class")


class _Methods:
  """What a Config answers beyond its fields (one per option, and flag_values: every flag
  as given, local paths made absolute, for results.json and TensorBoard)."""

  @property
  def model_hparams(self) -> dict[str, Any]:
    """The model hyperparameter flags given (the model's defaults stand for the others)."""
    return {name: getattr(self, name) for name in declared.MODEL_OPTIONS
            if getattr(self, name) is not None}

  def hparams(self) -> dict[str, Any]:
    """The flags with each model hyperparameter at the value the model uses (its default
    where not given), for the HParams tab."""
    values = dict(self.flag_values)
    defaults = hyperparameters(self.model)
    for name in declared.MODEL_OPTIONS:
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


def field_type(option: declared.Option):
  """The type of the value a Config holds for `option`: its value_type where parse or
  config.py change the flag's kind, else the kind (a list flag: integers, as values.ints
  parses it), also None where the flag's default is None."""
  if option.value_type is not None:
    return option.value_type
  kind = tuple[int, ...] if option.kind is list else option.kind
  return kind | None if option.default is None else kind


Config = dataclasses.make_dataclass(
    "Config", [(o.name, field_type(o)) for o in declared.OPTIONS]
    + [("flag_values", dict[str, Any])], bases=(_Methods,), frozen=True)
Config.__module__ = __name__


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _each_option(values: dict[str, Any]) -> dict[str, Any]:
  """Every option's own check and parse; returns the Config's values."""
  parsed = {}
  for option in declared.OPTIONS:
    value = values[option.name]
    problem = finite(value) if option.kind is float else None
    if problem is None and option.check and value is not None:
      problem = option.check(value)
    _check(problem is None, f"--{option.name}={as_text(value)} {problem}")
    try:
      parsed[option.name] = option.parse(value) if option.parse else value
    except ValueError as e:
      raise ConfigError(str(e)) from None
  return parsed


def _together(v: dict[str, Any]) -> None:
  """The rules between options (each option's own were checked before)."""
  accepted = hyperparameters(v["model"])
  if v["model"] == "cnn":
    n_filters = len(v["filters"] or accepted["filters"])
    n_kernels = len(v["kernel_sizes"] or accepted["kernel_sizes"])
    _check(n_filters == n_kernels, f"--filters has {n_filters} values but --kernel_sizes has "
           f"{n_kernels}: give one kernel size per conv layer")
  _check(v["epochs"] is None or v["train_steps"] is None,
         "--epochs and --train_steps both given: use one")
  _check(not v["nesterov"] or v["optimizer"] == "momentum",
         f"--nesterov applies to --optimizer=momentum (not {v['optimizer']})")
  if v["muon_learning_rate"]:
    _check(v["optimizer"] == "momentum" and v["momentum"] > 0,
           f"--muon_learning_rate needs --optimizer=momentum with --momentum above 0 (not "
           f"{v['optimizer']}, {v['momentum']}): Muon steps along the momentum")
    _check(v["model"] in ("resnet", "airbench"), f"--muon_learning_rate trains conv filters "
           f"that batch norm follows: --model=resnet or airbench (not {v['model']})")
  _check(0 <= v["final_learning_rate"] < v["learning_rate"],
         f"--final_learning_rate={v['final_learning_rate']} must be >= 0 and below "
         f"--learning_rate={v['learning_rate']}")
  boundaries = v["lr_boundaries"]
  if boundaries:
    _check(v["lr_schedule"] == "step", "--lr_boundaries applies to --lr_schedule=step")
    _check(list(boundaries) == sorted(set(boundaries)),
           f"--lr_boundaries={as_text(boundaries)}: steps must increase")
  _check(v["lr_schedule"] != "step" or boundaries,
         "--lr_schedule=step needs --lr_boundaries, e.g. 6000,9000 (steps)")
  _check(v["mix_probability"] == 1 or v["mixup"] or v["cutmix"],
         "--mix_probability applies with --mixup or --cutmix")
  # Keras's AdamW would otherwise decay by its own 0.004 while results.json records 0.
  _check(v["optimizer"] != "adamw" or v["weight_decay"] > 0, "--optimizer=adamw needs "
         "--weight_decay (e.g. 0.004, Keras's default); without decay use --optimizer=adam")
  _check(v["ema_decay"] or (v["ema_every"] == 1 and not v["lookahead"]),
         "--ema_every and --lookahead apply to the average of --ema_decay: give it too")
  # Adam's and RMSprop's steps do not scale with the gradient: a scaled gradient there is
  # no rate multiplier.
  _check(v["bn_lr_multiplier"] == 1 or v["optimizer"] in ("sgd", "momentum"),
         f"--bn_lr_multiplier scales batch norm's gradients, a rate multiplier only for "
         f"--optimizer=sgd or momentum (not {v['optimizer']})")
  _freezing(v)
  unknown = sorted(set(v["allow_changed_flags"]) - set(declared.NAMES))
  _check(not unknown, f"--allow_changed_flags: {', '.join(unknown)} is not a tapeloop flag")
  _check(v["devices"] is None or v["strategy"] == "mirrored",
         "--devices applies to --strategy=mirrored only")
  profile = v["profile_steps"]
  _check(profile is None or (len(profile) == 2 and profile[0] < profile[1]),
         f"--profile_steps={as_text(profile)}: give A,B with A < B")


def _freezing(v: dict[str, Any]) -> None:
  """--freeze is backbone or a regular expression; --unfreeze_at_epoch needs it and falls
  inside --epochs (with --train_steps, planning.py checks it against the run's steps)."""
  pattern, epoch = v["freeze"], v["unfreeze_at_epoch"]
  if pattern is not None and pattern != "backbone":
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f"--freeze={shlex.quote(pattern)} is not a regular expression ({e}): "
                        "give backbone or a pattern of variable paths") from None
  _check(pattern != "", "--freeze= is empty: give backbone or a pattern of variable paths")
  _check(epoch is None or pattern is not None, f"--unfreeze_at_epoch={epoch} unfreezes what "
         "--freeze holds: give --freeze=backbone (or a pattern) too")
  _check(epoch is None or v["epochs"] is None or epoch < v["epochs"],
         f"--unfreeze_at_epoch={epoch} is not before the run's end (--epochs={v['epochs']}): "
         "give a smaller one, or more --epochs")


def _from_values(values: dict[str, Any]) -> Config:
  """Validates every option; raises ConfigError naming the first bad one: the model first,
  then the model flags it does not take (before their values)."""
  problem = declared.BY_NAME["model"].check(values["model"])
  _check(problem is None, f"--model={values['model']} {problem}")
  accepted = hyperparameters(values["model"])
  for name in declared.MODEL_OPTIONS:
    _check(values[name] is None or name in accepted, f"--{name} does not apply to "
           f"--model={values['model']}; it takes {', '.join('--' + k for k in sorted(accepted))}")
  try:
    parse_spec(values["dataset"])
  except ValueError as e:
    raise ConfigError(f"--dataset: {e}") from None
  default_dir = os.path.join("runs", "{}-{}".format(
      values["model"], values["dataset"].replace(":", "_").replace("/", "_").strip("_.")))
  # Local data paths absolute: the run's record must mean the same files to a rerun, to
  # trainer.evaluate and to trainer.predict started from another directory.
  values = {**values, "dataset": absolute_spec(values["dataset"]),
            "data_dir": absolute_path(values["data_dir"]),
            "manual_dir": absolute_path(values["manual_dir"])}
  parsed = _each_option(values)
  _together(parsed)
  try:
    augment = Augment.parse(values["augment"], values["dataset"])
    parsed["tta"] = parse_tta(values["tta"], values["dataset"])
  except ValueError as e:
    raise ConfigError(str(e)) from None
  parsed["augment"] = augment.with_default_crop() if parsed["image_size"] else augment
  parsed["model_dir"] = values["model_dir"] or default_dir
  return Config(**parsed, flag_values=values)


def from_flags(fv, read_record: Callable[[str], dict | None] | None = None) -> Config:
  """The Config of absl's parsed flags (trainer.main). read_record(model_dir): the flags
  recorded by the run in model_dir, or None (run_files.read_record); given, a rerun that
  names only an existing run's directory means that run (_by_directory)."""
  values = {name: fv[name].value for name in declared.NAMES}
  given = {n for n in declared.NAMES if fv[n].present}
  if "model_dir" in given:  # each value given answered alone before TensorFlow loads to
    _each_option(values)    # read the run's record (the rules between them follow it)
  if read_record is not None:
    values = _by_directory(values, given, read_record)
  return _from_values(values)


# Not taken from a run's record by _by_directory: the directory is the one given, and a
# warm restart is an act of the rerun that asks for it (a recorded one is kept anyway).
_NOT_TAKEN = ("model_dir", "restart_learning_rate")


def _by_directory(values: dict[str, Any], given: set[str],
                  read_record: Callable[[str], dict | None]) -> dict[str, Any]:
  """A rerun that names an existing run's --model_dir and no flag of what it trains (only
  how it runs, or a longer run) means that run: its recorded flags (flags.json), with the
  given ones on top, rather than the defaults compared against them. A flag of what it
  trains that --allow_changed_flags names is a change to that run, so it too takes them."""
  # --mixed_precision given too: the run's policy is compared once resolved (run_record's
  # check_precision), and the fix of a refused one is to give the recorded policy.
  allowed = {*(values["allow_changed_flags"] or ()), "mixed_precision"}
  what = [n for n in given if declared.BY_NAME[n].role == declared.WHAT and n not in allowed]
  if "model_dir" not in given or what:
    return values
  recorded = read_record(values["model_dir"])
  if recorded is None:
    return values
  taken = {k: v for k, v in recorded.items() if k in declared.BY_NAME and k not in _NOT_TAKEN}
  if given & {"epochs", "train_steps"}:  # one length, the one given
    taken.pop("epochs", None)
    taken.pop("train_steps", None)
  logging.info("%s holds a run: its flags as recorded in flags.json%s",
               flag_arg("model_dir", values["model_dir"]),
               "".join(", " + flag_arg(k, values[k])
                       for k in sorted(given - {"model_dir"})))
  return {**values, **taken, **{k: values[k] for k in given}}


def from_values(values: dict[str, Any]) -> Config:
  """A Config from flag values by name, the others at their defaults (e.g. a run's
  flags.json with some flags replaced), without touching the parsed command line."""
  merged = {o.name: o.default for o in declared.OPTIONS}
  merged.update((k, v) for k, v in values.items() if k in merged)
  return _from_values(merged)


def from_args(args, read_record: Callable[[str], dict | None] | None = None) -> Config:
  """A Config from command-line style flags, e.g. ["--model=mlp", "--epochs=2"], as
  trainer.main would build it with the same read_record (for scripts and tests). The
  process's own parse of absl's FLAGS is kept: a program that checks runs this way (the
  tuner) still has it when absl's app reads its flags at exit."""
  command_line.define_flags()
  fv = absl_flags.FLAGS
  kept = {name: dict(fv[name].__dict__) for name in fv} if fv.is_parsed() else None
  fv.unparse_flags()
  try:
    fv(command_line.expand(["tapeloop", *args]))
    return from_flags(fv, read_record)
  finally:
    fv.unparse_flags()
    if kept is not None:
      for name, held in kept.items():
        fv[name].__dict__.update(held)
      fv.mark_as_parsed()
