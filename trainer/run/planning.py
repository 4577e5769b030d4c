"""What the flags resolve to once the data and the devices exist: the run's length, the
schedule's horizon, the split evaluated, the XLA mode. Every check that needs those facts
runs here, once, before anything is written to model_dir (the flags' own checks ran in
config.py)."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from input_pipeline import Data
from input_pipeline.pipeline import check_batch
from trainer.optim import optimization
from trainer.options.config import Config
from trainer.process.errors import ConfigError
from trainer.run import run_record

# --jit_compile=auto: model families whose whole inner loop ran faster under XLA on a CPU
# (steady examples/s, XLA loop vs graph): MLP 1x50 1.2x, 1x500 1.3x, 5x500 with dropout
# 1.15x. Convolutions ran slower (tutorial CNN 0.06x as a loop, 0.4x as a step): XLA:CPU's
# convolution gradients are far slower than oneDNN's, 20-30x inside a loop
# (docs/performance.md, "XLA where it measured faster"). Not compiled.
XLA_FASTER = ("mlp",)
# --mixed_precision=auto: model families that trained faster in mixed_bfloat16 than in
# float32 on a CPU with AVX-512 BF16, at the same validation accuracy within noise
# (docs/performance.md, "bfloat16 where it is faster"): CNN, ResNet, airbench 1.35-1.40x. MLPs
# ran slower (XLA's CPU dots in bf16). Without the instructions bf16 is emulated, slower.
BF16_FASTER = ("cnn", "resnet", "airbench")
# The models whose speed under XLA and in bfloat16 was measured; keras.applications'
# networks were not (float32 and no XLA for them: the defaults).
MEASURED = ("mlp", "cnn", "resnet", "airbench")


@dataclasses.dataclass(frozen=True)
class Plan:
  """steps_per_epoch and total_steps of this run; horizon: the learning-rate schedule's
  (kept from the run's first start); restarts: its warm restarts, if any; eval_split: what
  training evaluates (None: nothing labeled); jit: off, loop, step or forward_backward,
  and why."""
  steps_per_epoch: int
  total_steps: int
  horizon: int
  restarts: tuple[optimization.Restart, ...]  # its warm restarts (run_record.restarts)
  eval_split: str | None
  jit: str
  jit_reason: str
  precision: str  # the policy --mixed_precision resolves to, and why
  precision_reason: str
  replicas: int
  eval_interval: int  # steps: --eval_every, else once per epoch
  checkpoint_interval: int  # steps: --checkpoint_every, else once per epoch
  unfreeze_step: int | None = None  # --unfreeze_at_epoch's first step (None: none)
  # A change of the resolved --mixed_precision that --allow_changed_flags allowed, to record
  # with run_record.check's (compared here, where both policies are known).
  changes: dict = dataclasses.field(default_factory=dict)


def eval_split(data: Data) -> str | None:
  """What training evaluates: the validation split when one is held out, else test."""
  for split in ("validation", "test"):
    if split in data.splits and data.splits[split].labeled:
      return split
  return None


def jit_mode(config: Config, replicas: int, pipeline: str) -> tuple[str, str]:
  """What --jit_compile means for this run: (loop, step, forward_backward or off, why).
  Raises ConfigError where the mode asked for cannot be compiled."""
  asked = config.jit_compile
  # Under N replicas, Keras's optimizer update reads every replica's variables on its own
  # device inside one merge (XLA cannot place a computation on several devices), and
  # tf.data iterators cannot be read inside an XLA computation.
  if asked == "loop" and (replicas > 1 or pipeline != "in_memory"):
    raise ConfigError(f"--jit_compile=loop needs one replica and --pipeline=in_memory (this "
                      f"run: {replicas} replica(s), {pipeline}): use --jit_compile=step")
  if asked == "loop" and config.augment.resized_crop:
    raise ConfigError("--jit_compile=loop cannot compile --augment's resized_crop (XLA has no "
                      "CropAndResize): use --jit_compile=step")
  if asked == "step":
    if replicas > 1:
      return "forward_backward", ("--jit_compile=step: the forward and backward pass of each "
                                  "replica (the cross-replica optimizer update stays outside)")
    return "step", "--jit_compile=step: each training step"
  if asked != "auto":
    return asked, f"--jit_compile={asked}"
  if config.model not in XLA_FASTER:
    return "off", (f"auto: {config.model} ran slower under XLA on CPU"
                   if config.model in MEASURED else f"auto: {config.model} not measured "
                   "under XLA (its convolutions' gradients: oneDNN's are faster on CPU)")
  if replicas > 1 or pipeline != "in_memory":
    return "off", (f"auto: XLA over the whole loop needs one replica and in-memory data "
                   f"({replicas} replica(s), {pipeline})")
  if config.augment.resized_crop:
    return "off", "auto: XLA has no CropAndResize (--augment's resized_crop)"
  return "loop", f"auto: {config.model} ran faster under XLA"


def cpu_has_bf16() -> bool:
  """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), from Linux's
  /proc/cpuinfo; False where that cannot be read."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return bool({"avx512_bf16", "amx_bf16"} & set(line.split()))
  except OSError:
    pass
  return False


def auto_precision(model: str, strategy: tf.distribute.Strategy | None = None
                   ) -> tuple[str, str]:
  """The policy --mixed_precision=auto means for `model` under `strategy`, and why:
  bfloat16 only where it was measured faster. strategy None: this machine's first GPU, else
  its CPU (a launcher's look at the runs it starts, before their strategies exist)."""
  if strategy is None:  # the physical devices: listing them starts no runtime
    devices = [d.name for d in tf.config.list_physical_devices("GPU")[:1]] or ["CPU"]
  else:
    try:
      devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: TensorFlow's default device
      devices = [d.name for d in tf.config.list_logical_devices("GPU")[:1]] or ["CPU"]
  if any("GPU" in d.upper() for d in devices):
    return "float32", ("auto: not measured on GPUs here (ask for mixed_float16 or "
                       "mixed_bfloat16)")
  if model not in BF16_FASTER:
    return "float32", (f"auto: {model} trained slower in bfloat16 on CPU"
                       if model in MEASURED else
                       f"auto: {model} not measured in bfloat16 (ask for it)")
  if not cpu_has_bf16():
    return "float32", "auto: this CPU has no AVX-512 BF16 (bfloat16 would be emulated)"
  return "mixed_bfloat16", f"auto: {model} trained faster in bfloat16 on this CPU"


def precision(config: Config, strategy: tf.distribute.Strategy) -> tuple[str, str]:
  """The policy --mixed_precision means for this run, and why."""
  asked = config.mixed_precision
  if asked != "auto":
    return asked, f"--mixed_precision={asked}"
  return auto_precision(config.model, strategy)


def _check_training(config: Config, data: Data, split: str | None) -> None:
  """What only a run that trains needs: a labeled train split the batch fits, something
  to evaluate (split) for the flags that select on evals."""
  train = data.splits.get("train")
  if train is None or not train.labeled:
    raise ConfigError(f"--dataset={config.dataset} has no labeled train split")
  check_batch(config.batch_size, len(train), "training", need_full=True)
  if config.step_batch > len(train):
    raise ConfigError(f"--batch_size={config.batch_size} x --accumulation_steps="
                      f"{config.accumulation_steps} is more than the {len(train)} "
                      "training examples: lower either")
  if config.augment.alternating and data.pipeline != "in_memory":
    raise ConfigError(f"--augment=flip=alternating flips each example by its index and epoch, "
                      f"which only --pipeline=in_memory knows (this run: {data.pipeline}): "
                      "use --pipeline=in_memory, or --augment=flip")
  if split is None and (config.keep_best or config.early_stopping
                                   or config.lr_schedule == "plateau"):
    raise ConfigError("--keep_best, --early_stopping and --lr_schedule=plateau need labeled "
                      "data to evaluate: add --validation_split=0.1")


def resolve(config: Config, data: Data, strategy: tf.distribute.Strategy,
            recorded: dict | None = None, training: bool = True) -> Plan:
  """The plan of a run of `config` on `data` under `strategy`; recorded: the run's record
  (run_files.read_record) when model_dir holds one. training=False: for evaluating a
  run's checkpoints (trainer.evaluate), without the checks only training needs.
  ConfigError naming the fix. The strategy's replicas were checked against the batch when
  it was made (distribute.create_strategy)."""
  replicas = strategy.num_replicas_in_sync
  split = eval_split(data)
  jit, reason = jit_mode(config, replicas, data.pipeline)
  policy, why = precision(config, strategy)
  changes = {}
  if recorded is not None:  # the record's policy against this one, both resolved
    auto = auto_precision(config.model, strategy)[0]
    if training:
      changes = run_record.check_precision(config, recorded, policy, auto)
    elif config.mixed_precision == recorded.get("mixed_precision"):
      # The run's checkpoints evaluated in the policy they trained in.
      kept = run_record.recorded_precision(recorded, auto)
      if kept != policy:
        policy, why = kept, "auto: the policy the run trained in (flags.json)"
  if training:
    _check_training(config, data, split)
  steps_per_epoch, total_steps = config.steps_for(len(data.splits["train"]))
  unfreeze_step = None
  if config.unfreeze_at_epoch:
    unfreeze_step = config.unfreeze_at_epoch * steps_per_epoch
    if training and unfreeze_step >= total_steps:
      raise ConfigError(
          f"--unfreeze_at_epoch={config.unfreeze_at_epoch} is step {unfreeze_step}, not "
          f"before the run's end at step {total_steps} ({steps_per_epoch} steps per epoch): "
          "give a smaller one, or a longer run")
  # What the run's record says of the schedule: its horizon and warm restarts, checked.
  schedule = run_record.schedule(config, recorded, steps_per_epoch, total_steps, data,
                                 training)
  return Plan(steps_per_epoch=steps_per_epoch, total_steps=total_steps,
              horizon=schedule.horizon, restarts=schedule.restarts,
              eval_split=split, jit=jit, jit_reason=reason, precision=policy,
              precision_reason=why, replicas=replicas,
              eval_interval=config.eval_every or steps_per_epoch,
              checkpoint_interval=config.checkpoint_every or steps_per_epoch,
              unfreeze_step=unfreeze_step, changes=changes)
