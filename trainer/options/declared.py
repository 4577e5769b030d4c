"""Every option of tapeloop, declared once: its flag, default, help, group, what it means
to a rerun, and how its value is read, checked and compared.

command_line.py defines the absl flags from these declarations, config.py builds the Config's
fields from them, run_record.py asks them which changes a rerun may make, and
docs/flags.md is generated from them (command_line.py; tests/trainer/test_options.py keeps it
current).
A new option is one `Option(...)` here plus the code that uses `config.<name>`.

Roles: WHAT changes what is trained (a rerun into the same model_dir refuses a change
unless --allow_changed_flags names it); HOW changes how the run runs (a rerun may change
it); DATA is HOW too, but where the run's data is, how it is read and how it is
evaluated (--tta), which a later process reading the data (trainer.evaluate) takes from
the run's record; LENGTH may only extend a run; RESTART is given only with an extension
(of a LENGTH flag), whose added steps it gives a new schedule, and is recorded with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

# Only what reads values without TensorFlow: the flags are checked before it loads.
from input_pipeline.specs import Augment, PIPELINES, parse_image_size, parse_tta
from models.names import MODEL_NAMES, POLICIES
from trainer.options.values import (
    absolute_path, at_least_zero, class_ids, dataset_meaning, int_list, ints, one_of, positive,
    within)

WHAT, HOW, DATA, LENGTH, RESTART = "what", "how", "data", "length", "restart"

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "exponential", "step", "one_cycle", "plateau")
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")
JIT_MODES = ("auto", "loop", "step", "off")
BEST_METRICS = ("accuracy", "loss")


@dataclasses.dataclass(frozen=True)
class Option:
  """One option. kind: str, int, float, bool or list (absl's comma list).
  check(value) -> the problem (after "--name=value ") or None; parse(value) -> the
  Config's value (ValueError naming the flag when it cannot); normalize(value) -> a form
  in which values of one meaning are equal (comparing a rerun with its record; default:
  lists as integers where they are); model: a model hyperparameter, passed to the model
  only when given; value_type: the type of the Config's value where parse or config.py
  make it other than the kind (config.field_type)."""
  name: str
  kind: type
  default: Any
  help: str
  group: str
  role: str = WHAT
  check: Callable[[Any], str | None] | None = None
  parse: Callable[[Any], Any] | None = None
  normalize: Callable[[Any], Any] | None = None
  model: bool = False
  value_type: Any = None


def _model_known(value) -> str | None:
  return (None if value in MODEL_NAMES
          else f"is unknown; known models: {', '.join(sorted(MODEL_NAMES))}")


_D, _R, _E, _O, _H = "Data", "Run", "Evaluation", "Optimization", "Hardware"
_M = "Model hyperparameters (each model takes some; see docs/model-quality.md)"

OPTIONS: tuple[Option, ...] = (
    Option("model", str, "cnn", "Model name: mlp, cnn, resnet, airbench, or one of "
           "keras.applications' ImageNet networks: resnet50, mobilenet_v3_small, "
           "efficientnet_v2_b0 (images 32x32 and up).", _D,
           check=_model_known),
    Option("dataset", str, "mnist", "tfds:NAME (or a TFDS name), folder:DIR "
           "(DIR/train/<class>/*.jpg|png), idx:DIR, csv:PATH or "
           "synthetic[:shape=28x28x1,classes=10,train=N,test=N].", _D,
           normalize=dataset_meaning),
    Option("data_dir", str, None, "TFDS data_dir (default $TFDS_DATA_DIR, else ~/tensorflow_datasets: "
           "where `make data` prepares Fashion-MNIST).", _D, DATA,
           normalize=absolute_path),
    Option("manual_dir", str, None, "TFDS manual_dir: files here are used offline.", _D, DATA,
           normalize=absolute_path),
    Option("num_classes", int, None, "Classes of an idx:/csv: dataset (default 10).", _D,
           check=lambda v: None if v is None or v >= 2 else "must be at least 2"),
    Option("validation_split", float, 0.0, "Fraction of train held out (seeded) for eval "
           "during training.", _D, check=within(0, 1)),
    Option("classes", list, None, "Keep only these classes (ids, e.g. 5,6,7,8,9) of every "
           "split, relabelled 0..K-1 in this order; their names are kept.", _D,
           parse=class_ids, value_type=tuple[int, ...] | None),
    Option("examples_per_class", int, None, "Train on this many examples of each class, "
           "chosen by --seed from the train split (after --validation_split holds its part "
           "out).", _D, check=positive),
    Option("pipeline", str, "auto", "auto: in_memory when the decoded data fits "
           "--memory_budget_gb, else stream; in_memory: batches gathered inside the training "
           "graph (fastest); tf_data: tf.data over the in-memory arrays; stream: tf.data "
           "reading TFDS shards or image files.", _D, DATA, check=one_of(PIPELINES)),
    Option("memory_budget_gb", float, None, "Decoded data up to this size is held in memory "
           "by --pipeline=auto (default: a quarter of the RAM).", _D, DATA, check=positive),
    Option("image_size", str, None, "H or HxW: resize images to this size (eval: resize and "
           "centre crop; train: random-resized crops). Needed for images of varying size.",
           _D, parse=parse_image_size, normalize=parse_image_size,
           value_type=tuple[int, int] | None),
    Option("skip_bad_images", bool, False, "folder: skip (and count) unreadable image files "
           "instead of stopping.", _D),
    Option("augment", str, "none", "none, or a comma list of crop[=PIXELS] (pad with zeros, "
           "crop at a random offset; translate[=PIXELS] is the same), flip (random; "
           "flip=alternating: each image every other epoch, in_memory only), "
           "erase[=PROBABILITY], resized_crop[=MIN_AREA] (on with --image_size; "
           "resized_crop=0: off).", _D, normalize=Augment.parse, value_type=Augment),
    Option("mixup", float, 0.0, "Mixup: mix each batch with a shuffled copy, images and "
           "targets, by a Beta(ALPHA, ALPHA) weight (0: off; e.g. 0.2).", _D,
           check=lambda v: None if v >= 0 else "must be >= 0 (0: off)"),
    Option("cutmix", float, 0.0, "CutMix: paste a box of a shuffled copy of the batch, targets "
           "by area; box area from Beta(ALPHA, ALPHA) (0: off; e.g. 1.0). With --mixup, each "
           "batch takes one of the two at random.", _D,
           check=lambda v: None if v >= 0 else "must be >= 0 (0: off)"),
    Option("mix_probability", float, 1.0, "Fraction of batches --mixup/--cutmix mix.", _D,
           check=within(0, 1, low_open=True, high_open=False)),

    Option("model_dir", str, None, "Where checkpoints, TensorBoard events, results.json and "
           "the export go (default runs/<model>-<dataset>).", _R, HOW, value_type=str),
    Option("batch_size", int, 128, "GLOBAL batch size, split over all replicas.", _R,
           check=positive),
    Option("accumulation_steps", int, 1, "Gradient accumulation: each step sums the gradients "
           "of this many batches of --batch_size and updates once (a step on "
           "accumulation_steps x batch_size examples).", _R, check=positive),
    Option("epochs", int, None, "Epochs to train (default 1); not with --train_steps.", _R,
           LENGTH, check=positive),
    Option("train_steps", int, None, "Steps to train; not with --epochs.", _R, LENGTH,
           check=positive),
    Option("steps_per_loop", int, 100, "Steps inside one tf.function call; logs and "
           "summaries are written between loops.", _R, HOW, check=positive),
    Option("checkpoint_every", int, None, "Checkpoint every N steps (default once per "
           "epoch); always at the end.", _R, HOW, check=positive),
    Option("checkpoint_every_secs", int, None, "Also checkpoint when this many seconds have "
           "passed since the last checkpoint (at the next loop boundary): a preemptible VM "
           "loses at most that much.", _R, HOW, check=positive),
    Option("keep_checkpoints", int, 3, "Checkpoints kept in model_dir/checkpoints.", _R, HOW,
           check=positive),
    Option("profile_steps", list, None, "A,B: write a TensorBoard profile of steps A to B to "
           "model_dir/profile (at loop boundaries).", _R, HOW, parse=ints("profile_steps")),
    Option("seed", int, 0, "Seed for initialization, data order and augmentation.", _R),
    Option("deterministic", bool, False, "Deterministic ops (slower): same flags, same "
           "weights.", _R, HOW),
    Option("divergence_retries", int, 0, "On a non-finite loss or a collapsed fp16 loss "
           "scale, go back to the last checkpoint, skip the data since, and continue, at most "
           "this many times (0: stop).", _R, HOW, check=at_least_zero),
    Option("dry_run", bool, False, "Resolve the flags, the data and the plan, print what "
           "would run (model, data sizes, steps, eval cadence, where outputs go) and exit "
           "0, writing nothing (no model_dir, no prepared dataset).", _R, HOW),
    Option("init_from", str, None, "A new run starts from these weights: a run's model_dir "
           "(its latest checkpoint; DIR/best: its kept best), a checkpoint prefix, a Keras "
           ".weights.h5 file, a legacy .h5 in keras.applications' layout, or imagenet (the "
           "standard networks). Matched by variable path and shape; the head starts afresh "
           "for another number of classes; the table of what was restored goes to "
           "model_dir/init_from.txt. A model_dir with a checkpoint resumes from it instead.",
           _R, normalize=lambda v: v if v == "imagenet" else absolute_path(v)),
    Option("allow_changed_flags", list, None, "A rerun into an existing model_dir refuses "
           "flags that change what is trained; these may change (logged and recorded in "
           "model_dir/flag_changes.json).", _R, HOW, parse=lambda v: tuple(v or ()),
           value_type=tuple[str, ...]),

    Option("eval_every", int, None, "Evaluate every N steps (default once per epoch), on the "
           "validation split, or on test without one.", _E, HOW, check=positive),
    Option("eval_images", bool, True, "At each eval, write a confusion matrix, the worst "
           "mistakes and per-class accuracy to TensorBoard.", _E, HOW),
    Option("tta", str, "none", "Test-time augmentation: none, flip, translate or "
           "flip,translate. Evals, trainer.evaluate and the export (so trainer.predict) "
           "average the class probabilities of the image's views (its mirror; its 1-pixel "
           "shifts); the plain figures are reported beside (test_tta_accuracy beside "
           "test_accuracy, TensorBoard run eval_tta beside eval). Not flip on characters.",
           _E, DATA, normalize=parse_tta, value_type=tuple[str, ...]),
    Option("keep_best", str, None, "accuracy or loss: keep the checkpoint with the best eval "
           "value in model_dir/best/ and export it to export_best/.", _E, HOW,
           check=one_of(BEST_METRICS, " or ")),
    Option("early_stopping", int, None, "Stop when the eval metric (--keep_best's, else "
           "loss) has not improved for this many evals.", _E, HOW, check=positive),

    Option("optimizer", str, "adam", "sgd, momentum, adam, adamw or rmsprop.", _O,
           check=one_of(OPTIMIZERS)),
    Option("learning_rate", float, 1e-3, "Peak learning rate.", _O, check=positive),
    Option("lr_schedule", str, "constant", "constant; cosine (to --final_learning_rate); "
           "exponential; step (x lr_decay_rate at each of --lr_boundaries); one_cycle (linear "
           "from learning_rate/25 up over the warm-up, default 30% of the run, then cosine to "
           "--final_learning_rate); plateau (x lr_decay_rate after --plateau_patience evals "
           "without a new best eval metric, --keep_best's or loss).", _O,
           check=one_of(SCHEDULES)),
    Option("warmup_steps", int, 0, "Linear warm-up steps before the schedule (one_cycle: 0 "
           "means 30% of the schedule).", _O, check=at_least_zero),
    Option("final_learning_rate", float, 0.0, "cosine, one_cycle: the rate at the end; "
           "plateau: the lowest rate.", _O),
    Option("lr_boundaries", list, None, "step: the steps at which the rate is multiplied by "
           "--lr_decay_rate, e.g. 6000,9000.", _O, parse=ints("lr_boundaries")),
    Option("plateau_patience", int, 3, "plateau: evals without a new best before the rate "
           "is cut.", _O, check=positive),
    Option("schedule_steps", int, None, "The schedule's horizon in steps (default: the run's "
           "length at its first start, kept when a rerun extends it).", _O, check=positive),
    Option("restart_learning_rate", float, None, "Extending a run (a larger --epochs or "
           "--train_steps) whose cosine, one_cycle or exponential schedule has ended: a warm "
           "restart, a new schedule over the added steps from this rate (cosine and "
           "one_cycle: a cosine down to --final_learning_rate). Recorded; later reruns keep "
           "it.", _O, RESTART, check=positive),
    Option("lr_decay_rate", float, 0.1, "exponential: factor over the whole run; step and "
           "plateau: factor at each cut.", _O,
           check=within(0, 1, low_open=True, high_open=False)),
    Option("momentum", float, 0.9, "Momentum of the momentum optimizer.", _O,
           check=within(0, 1)),
    Option("nesterov", bool, False, "momentum: Nesterov momentum.", _O),
    Option("muon_learning_rate", float, 0.0, "momentum, resnet and airbench: the conv "
           "filters that batch norm follows train with Muon (airbench's: their momentum "
           "orthogonalized by Newton-Schulz, the filter kept at norm sqrt(out channels)) at "
           "this peak rate on --lr_schedule; the other variables with momentum SGD at "
           "--learning_rate (0: none; fashion_best: 0.04).", _O,
           check=at_least_zero),
    Option("label_smoothing", float, 0.0, "Training loss only: targets (1 - E) on the label "
           "plus E / classes on every class.", _O, check=within(0, 1)),
    Option("ema_decay", float, 0.0, "Keep an exponential moving average of the weights (e.g. "
           "0.999; 0: none), updated at every applied step; evals and the export use it, and "
           "the raw weights' evals are logged beside (eval_raw).", _O,
           check=within(0, 1, note=" (0: none), e.g. 0.999")),
    Option("ema_every", int, 1, "--ema_decay: update the average every N applied steps "
           "(decay^N each time, so it spans as many steps).", _O,
           check=positive),
    Option("lookahead", bool, False, "--ema_decay: after each update of the average, the "
           "model's weights become the average (lookahead; airbench's, with --ema_every=5).",
           _O),
    Option("bn_lr_multiplier", float, 1.0, "Learning rate multiplier for batch norm's "
           "scale and shift (airbench: 64 on its shifts); sgd and momentum only.", _O,
           check=positive),
    Option("freeze", str, None, "Hold variables fixed while training: backbone (every "
           "variable but the classifier head, `logits`) or a regular expression searched in "
           "each variable's path (e.g. blocks_0/; docs/usage.md, Freezing). Frozen variables "
           "get no gradient and no optimizer slots; a layer whose weights are all frozen has "
           "trainable=False (batch norm then normalizes with its moving statistics and keeps "
           "them).", _O),
    Option("unfreeze_at_epoch", int, None, "--freeze until this many epochs are trained (1 "
           "to --epochs - 1), then everything trains: --epochs=10 --unfreeze_at_epoch=4 trains "
           "4 epochs frozen, then 6 epochs of the whole network.", _O,
           check=positive),
    Option("backbone_learning_rate_multiplier", float, 1.0, "Every variable but the head "
           "trains at this multiple of the scheduled learning rate (every optimizer; e.g. "
           "0.1 for a pretrained backbone).", _O, check=positive),
    Option("weight_decay", float, 0.0, "Decoupled weight decay (not on biases, norms); adamw "
           "needs it.", _O, check=at_least_zero),
    Option("clip_norm", float, None, "Clip gradients to this global norm, after the "
           "all-reduce.", _O, check=positive),

    Option("strategy", str, "auto", "auto, default, one_device, mirrored or multi_worker "
           "(reads TF_CONFIG).", _H, HOW, check=one_of(STRATEGIES)),
    Option("devices", list, None, "mirrored: devices to use (default all GPUs), e.g. "
           "/cpu:0,/cpu:1.", _H, HOW, parse=lambda v: tuple(v) if v else None,
           value_type=tuple[str, ...] | None),
    Option("cpu_devices", int, None, "Split the CPU into N logical devices, so that "
           "--strategy=mirrored can be tried without GPUs.", _H, HOW, check=positive),
    Option("intra_op_threads", int, None, "Threads one TensorFlow op may use (default "
           "TensorFlow's: all cores, the fastest measured for every model here, the MLP 1x50 "
           "inside the XLA loop included).", _H, HOW, check=positive),
    Option("mixed_precision", str, "auto", "float32, mixed_float16 (with loss scaling), "
           "mixed_bfloat16, or auto: mixed_bfloat16 for cnn, resnet and airbench on a CPU with "
           "AVX-512 BF16 (where they measured faster and as accurate), else float32. A rerun "
           "compares the policy it resolves to.", _H,
           check=one_of((*POLICIES, "auto"))),
    Option("jit_compile", str, "auto", "XLA: loop compiles the whole inner loop (one replica, "
           "in-memory data); step each training step (on several replicas its forward and "
           "backward pass); off; auto: loop where it was measured faster (models without "
           "convolutions), else off.", _H, HOW, check=one_of(JIT_MODES)),

    Option("hidden_units", list, None, "mlp: hidden layer sizes, e.g. 500,500.", _M,
           parse=ints("hidden_units"), model=True),
    Option("activation", str, None, "mlp: hidden activation (default relu).", _M, model=True),
    Option("dropout", float, None, "Dropout rate (default 0).", _M, check=within(0, 1),
           model=True),
    Option("l2", float, None, "L2 regularization factor on kernels (default 0).", _M,
           check=lambda v: None if v is None or v >= 0 else "must be >= 0", model=True),
    Option("filters", list, None, "cnn: filters per conv layer (default 25,25,25).", _M,
           parse=ints("filters"), model=True),
    Option("kernel_sizes", list, None, "cnn: kernel size per conv layer (default 5,5,4).", _M,
           parse=ints("kernel_sizes"), model=True),
    Option("dense_units", list, None, "cnn: dense layer sizes (default 50).", _M,
           parse=ints("dense_units"), model=True),
    Option("widths", list, None, "resnet: width per stage (default 32,64,128); airbench: "
           "per conv group (default 64,128,256).", _M,
           parse=ints("widths"), model=True),
    Option("blocks_per_stage", int, None, "resnet: residual blocks per stage (default 2).", _M,
           check=lambda v: None if v >= 1 else "must be >= 1", model=True),
    Option("whiten", int, None, "airbench: the patch size of the frozen whitening first "
           "layer, fitted to the training images at the start (default 2; 0: a trainable "
           "3x3 conv instead).", _M, check=at_least_zero, model=True),
    Option("identity_init", bool, None, "airbench: its conv groups' convolutions start as "
           "identities where their shapes allow, as airbench's (default true).", _M,
           model=True),
    Option("bn_momentum", float, None, "resnet, airbench and the keras.applications "
           "networks: batch norm's moving statistics decay, Keras's convention (resnet "
           "default 0.99, airbench 0.4: PyTorch's 0.6; the others: their own, resnet50 0.99, "
           "mobilenet_v3_small 0.999, efficientnet_v2_b0 0.9).",
           _M, check=within(0, 1), model=True),
    Option("sync_batch_norm", bool, None, "resnet, airbench and the keras.applications "
           "networks: batch norm statistics over the global batch (default: when there are "
           "several replicas).", _M, model=True),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
NAMES: tuple[str, ...] = tuple(sorted(BY_NAME))
MODEL_OPTIONS: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.model)
# A rerun may change these (logged): they change how the run runs, not what it trains.
HOW_IT_RUNS: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.role in (HOW, DATA))
# The run's length, and what an extension records with it (run_record.py).
RUN_LENGTH: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.role in (LENGTH, RESTART))
READS_DATA: tuple[str, ...] = tuple(o.name for o in OPTIONS if o.role == DATA)


def normalized(name: str, value):
  """A value in its option's normal form (Option.normalize), for comparing a rerun with the
  run's record. Unreadable values stay as they are (they then differ, and the rerun's own
  validation names them)."""
  option = BY_NAME.get(name)
  try:
    if value is not None and option is not None and option.normalize:
      return option.normalize(value)
    if isinstance(value, (list, tuple)):
      return int_list(value)
  except ValueError:
    pass
  return value


def groups() -> dict[str, list[str]]:
  """Option names by group, in declaration order (--help, docs/flags.md)."""
  out: dict[str, list[str]] = {}
  for option in OPTIONS:
    out.setdefault(option.group, []).append(option.name)
  return out
