"""--dry_run: what a command would do, resolved as the run resolves it (flags, rerun rules,
data, plan), printed; nothing is written anywhere, model_dir and the dataset's own
directory included. Every refusal the run would make before training is made here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex

from absl import flags as absl_flags
import tensorflow as tf

from input_pipeline.readers import tfds_source
from trainer.inner import checkpoints, freezing, init_from, state
from trainer.options.config import Config, DATA_FLAGS, from_args
from trainer.process.errors import UsageError
from trainer.run import distribute, planning, run_files, run_record
from trainer.run.child_runs import FLAGS_LOCK


@contextlib.contextmanager
def read_only():
  """Within it the data is only read: an unprepared TFDS dataset is named, not prepared,
  and decoded splits are not cached."""
  previous, tfds_source.READ_ONLY = tfds_source.READ_ONLY, True
  try:
    yield
  finally:
    tfds_source.READ_ONLY = previous


def latest_step(model_dir: str) -> int | None:
  """The step of model_dir's newest checkpoint, None without one."""
  steps = checkpoints.checkpoint_steps(os.path.join(model_dir, "checkpoints"))
  return steps[0] if steps else None


def _strategy(config: Config):
  """The run's strategy, except that a cluster is not joined (it would wait for its other
  tasks): the dry run of a multi_worker task plans on this process's devices alone."""
  if config.strategy != "multi_worker":
    return distribute.create_strategy(config), None
  try:
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster") or {}
  except (ValueError, AttributeError):
    cluster = {}
  tasks = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
  note = (f"multi_worker: {tasks} training task(s) in TF_CONFIG, not joined by a dry run; "
          "the plan above is one task's")
  strategy = tf.distribute.get_strategy()
  distribute.check_replicas(config, strategy)
  return strategy, note


def _build(config: Config, info, precision: str = "float32"):
  """The run's model, built on the CPU as the run builds it (state.build_model): a model
  the data's images cannot feed is the run's ConfigError, before anything starts."""
  with tf.device("/CPU:0"):
    return state.build_model(config, info, precision)


def _parameters(config: Config, data, precision: str, unfreeze_step: int | None = None) -> str:
  """The model's parameters, and what --freeze holds (a pattern that matches nothing is
  refused here as by the run)."""
  model = _build(config, data.info, precision)
  said = f"{model.count_params():,} parameters"
  if config.freeze:
    frozen = freezing.Freezing(model, config.freeze)
    frozen.freeze()
    said += f" ({frozen.describe()}" + (f", until step {unfreeze_step:,})"
                                         if unfreeze_step is not None else ")")
  return said


def check_model(config: Config, info, precision: str = "float32", init: bool = True) -> None:
  """The run's model built (_build) with its --freeze pattern and its --init_from source
  checked on it, refused (ConfigError) as the run refuses them, for the programs that check
  runs before starting any (check_runs, the tuner's trials). init: check --init_from too
  (a run that resumes does not apply it)."""
  model = _build(config, info, precision)
  if config.freeze:
    freezing.Freezing(model, config.freeze)
  if config.init_from and init:
    _initialize(config, model)


def _initialize(config: Config, model) -> init_from.Report | None:
  """--init_from checked on `model`, nothing assigned (init_from.initialize's assign=False):
  its table, None for ImageNet weights not yet downloaded."""
  return init_from.initialize(model, config.init_from, config.model,
                              init_from.Labels.of(config.dataset, config.classes), assign=False)


def report(config: Config, fresh: bool = False) -> str:
  """Resolves the run of `config` as trainer.main would, up to its first step, and says
  what it would do. Raises what the run would raise (ConfigError, DataError). fresh: as a
  new run, whatever model_dir holds."""
  with read_only():
    return _report(config, fresh)


_OUTPUTS = "outputs: "


def plan_lines(args: list[str], fresh: bool = False) -> list[str]:
  """The model, data, steps and eval cadence of the run of command-line ARGS, as its own
  dry run says them (report, less where it starts and writes), for the dry runs of the
  programs that start such runs (the tuner, the sweep, the local cluster)."""
  try:
    with FLAGS_LOCK:
      cfg = from_args(args, run_files.read_record)
    said = report(cfg, fresh)
  except (ValueError, absl_flags.Error) as e:  # as check_runs: one line
    raise _one_line(e) from None
  return [line for line in said.splitlines()[1:] if not line.startswith(_OUTPUTS)]


def _report(config: Config, fresh: bool = False) -> str:
  run_files.check_model_dir(config.model_dir)  # writable, probed without writing
  recorded = None if fresh else run_files.read_record(config.model_dir)
  if not fresh:  # damaged: refused as the run would
    run_files.read_changes(config.model_dir)
  if recorded is not None:  # --dry_run itself is no change of the run's
    recorded = {**recorded, "dry_run": config.dry_run}
  changed = run_record.check(config, recorded)
  strategy, cluster_note = _strategy(config)
  try:
    data = run_files.load_data(config)
  except tfds_source.NotPrepared as e:  # the host resolves: the run would download it
    return _to_download(config, e, recorded)
  plan = planning.resolve(config, data, strategy, recorded)
  changed = {**changed, **plan.changes}
  step = 0 if fresh else latest_step(config.model_dir) or 0
  run_record.check_length(config, step, plan.total_steps)
  sizes = ", ".join(f"{name} {len(split):,}" for name, split in data.splits.items())
  shape = "x".join(map(str, data.info.image_shape))
  where = shlex.quote(config.model_dir)
  if recorded is None:
    start = f"starts a new run in {where}"
  elif step >= plan.total_steps:
    start = f"only evaluates and exports the run in {where}, trained to step {step:,}"
  else:
    start = f"resumes the run in {where} at step {step:,}"
  lines = [
      f"dry run: nothing was written; without --dry_run this {start}",
      f"model {config.model}: "
      f"{_parameters(config, data, plan.precision, plan.unfreeze_step)}, "
      f"{plan.precision} ({plan.precision_reason})",
      f"data {data.info.name}: {sizes}; images {shape}, {data.info.num_classes} classes; "
      f"pipeline {data.pipeline}",
      f"train: {plan.total_steps:,} steps ({plan.steps_per_epoch:,} per epoch) of batch "
      f"{config.batch_size} on {plan.replicas} replica(s); schedule {config.lr_schedule} "
      f"over {plan.horizon:,} steps; XLA {plan.jit} ({plan.jit_reason})",
      (f"eval on {plan.eval_split} every {plan.eval_interval:,} steps"
       if plan.eval_split else "no labeled split to evaluate")
      + f"; checkpoint every {plan.checkpoint_interval:,} steps",
      f"{_OUTPUTS}{where} (checkpoints, TensorBoard events, export, results.json)",
  ]
  if config.init_from:
    lines.append(_init_from(config, data.info, plan.precision, step))
  if changed:
    lines.append(f"recorded as changes: {run_record.listed(changed)}")
  if cluster_note:
    lines.append(cluster_note)
  return "\n".join(lines)


def _init_from(config: Config, info, precision: str, step: int) -> str:
  """What --init_from would restore into a new run (its refusals made here too)."""
  if step:
    return f"init_from: not applied (the run resumes at step {step:,})"
  report = _initialize(config, _build(config, info, precision))
  if report is None:
    return "init_from: imagenet: the weights file is not in Keras's cache: it is downloaded"
  return f"init_from: {report.summary()} from {report.what}"


def _to_download(config: Config, missing: tfds_source.NotPrepared,
                 recorded: dict | None) -> str:
  """The dry run of a run whose TFDS dataset is not prepared but could be downloaded (its
  host resolves; without network the dry run refuses as the run would): what it would
  download; the model and the plan follow from the data, known once it is there."""
  where = shlex.quote(config.model_dir)
  then = f"starts a new run in {where}" if recorded is None else f"goes on with the run in {where}"
  return "\n".join([
      f"dry run: nothing was written; without --dry_run this would download and prepare "
      f"{missing.name} into {shlex.quote(missing.data_dir)} (network needed), then {then}",
      "the model, the data's sizes, the steps and the eval cadence follow from the data: "
      "the dry run says them once it is prepared",
      f"{_OUTPUTS}{where} (checkpoints, TensorBoard events, export, results.json)",
  ])


def evaluated_split(data, split: str | None) -> str:
  """The split trainer.evaluate evaluates: --split, or (None) the one training evaluates,
  validation when held out, else test; refused when the data has no such labeled split."""
  if split is None:
    split = planning.eval_split(data) or "test"
  if split not in data.splits or not data.splits[split].labeled:
    held = ", ".join(s for s, v in data.splits.items() if v.labeled) or "none"
    raise UsageError(f"--split={split}: the run's data has no labeled {split} split "
                     f"(it has {held})")
  return split


def evaluate_report(config: Config, recorded: dict, split: str | None,
                    checkpoint: str | None, continuous: bool) -> str:
  """trainer.evaluate --dry_run: the split and checkpoint(s) it would evaluate, resolved as
  it resolves them; raises what it would raise before evaluating."""
  strategy, _ = _strategy(config)
  with read_only():
    data = run_files.load_data(config)
  split = evaluated_split(data, split)
  plan = planning.resolve(config, data, strategy, recorded, training=False)
  where = shlex.quote(config.model_dir)
  if continuous:
    what = f"each new checkpoint in {where} up to step {plan.total_steps:,}"
  elif checkpoint:
    if not tf.io.gfile.exists(checkpoint + ".index"):
      raise UsageError(f"--checkpoint={shlex.quote(checkpoint)}: no such checkpoint (a "
                       "prefix such as MODEL_DIR/checkpoints/ckpt-STEP)")
    what = shlex.quote(checkpoint)
  else:
    step = latest_step(config.model_dir)
    if step is None:
      raise UsageError(f"no checkpoint in {shlex.quote(os.path.join(config.model_dir, 'checkpoints'))}: "
                       "train first, or give --checkpoint")
    what = f"the latest checkpoint (step {step:,})"
  out = shlex.quote(os.path.join(config.model_dir, f"eval_{split}.json"))
  return (f"dry run: nothing was written; without --dry_run this evaluates {what} on "
          f"{split} ({len(data.splits[split]):,} examples of {data.info.name}, batch "
          f"{config.batch_size}), writing {out} and the TensorBoard run eval_{split}")


def check_runs(runs: list[list[str]]) -> None:
  """Every run's flags, data and plan as trainer.main checks them before its first step,
  for the runs a sweep is about to start; raises the first refusal (a ConfigError, a
  DataError, absl's flags.Error) as a UsageError of its first line. Each dataset is read
  once; a TFDS dataset that is not prepared but could be downloaded passes (its run
  prepares it)."""
  try:
    with read_only():
      _check_runs(runs)
  except (ValueError, absl_flags.Error) as e:  # ConfigError and DataError are ValueErrors
    raise _one_line(e) from None


def _one_line(error: Exception) -> UsageError:
  text = str(error).strip()
  return UsageError(text.splitlines()[0] if text else type(error).__name__)


def _check_runs(runs: list[list[str]]) -> None:
  loaded, built = {}, set()
  for args in runs:
    with FLAGS_LOCK:
      cfg = from_args(args, run_files.read_record)
    key = repr([getattr(cfg, name) for name in DATA_FLAGS])
    if key not in loaded:
      try:
        loaded[key] = run_files.load_data(cfg)
      except tfds_source.NotPrepared:
        loaded[key] = None
    if loaded[key] is not None:
      info = loaded[key].info
      init = not latest_step(cfg.model_dir)  # a run that resumes applies no --init_from
      model_key = repr([cfg.model, sorted(cfg.model_hparams.items()), info.image_shape,
                        info.num_classes, cfg.freeze, init and cfg.init_from])
      if model_key not in built:
        built.add(model_key)
        check_model(cfg, info, init=init)
      strategy, _ = _strategy(cfg)
      planning.resolve(cfg, loaded[key], strategy, run_files.read_record(cfg.model_dir))
