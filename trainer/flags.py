"""The command-line flags. Values are checked in config.py, not here, so that every bad
value gets the same one-line error naming the flag."""

import contextlib

from absl import flags

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "exponential", "step", "one_cycle", "plateau")
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")
JIT_MODES = ("auto", "loop", "step", "off")
# Model hyperparameter flags: each is passed to the model only when given.
MODEL_FLAGS = ("hidden_units", "activation", "dropout", "l2", "filters", "kernel_sizes",
               "dense_units", "widths", "blocks_per_stage", "sync_batch_norm")


BEST_METRICS = ("accuracy", "loss")

# Flags that change how a run runs, not what it trains: a rerun into the same model_dir
# may change them (logged). Any other flag changed on a rerun is refused unless named in
# --allow_changed_flags; --epochs/--train_steps may extend a run (trainer/run_record.py).
HOW_IT_RUNS = ("model_dir", "data_dir", "manual_dir", "steps_per_loop", "checkpoint_every",
               "keep_checkpoints", "profile_steps", "deterministic", "eval_every",
               "eval_images", "keep_best", "early_stopping", "strategy", "devices",
               "cpu_devices", "intra_op_threads", "jit_compile", "allow_changed_flags",
               "divergence_retries", "memory_budget_gb", "pipeline")
RUN_LENGTH = ("epochs", "train_steps")
# How it runs, but where the run's data is and how it is read (streamed when large): a
# process that reads the run's data later (trainer.evaluate) takes these from the run's
# record unless given.
READS_DATA = ("data_dir", "manual_dir", "pipeline", "memory_budget_gb")

# Names of the flags defined here (not absl's or TF's): they go into results.json and
# the TensorBoard hparams.
OWN_FLAGS: list[str] = []
# The same flags by topic, in definition order, for --help.
GROUPS: dict[str, list[str]] = {}


def define_flags() -> None:
  """Defines tapeloop's flags once per process (tests call it repeatedly)."""
  if OWN_FLAGS:
    return
  _define()
  OWN_FLAGS.extend(sorted(name for names in GROUPS.values() for name in names))


@contextlib.contextmanager
def _group(title: str):
  """The flags defined inside the block belong to `title` in --help."""
  before = set(flags.FLAGS)
  yield
  GROUPS[title] = [name for name in flags.FLAGS if name not in before and len(name) > 1]


def _define() -> None:
  with _group("Data"):
    flags.DEFINE_string("model", "cnn", "Model name: mlp, cnn or resnet.")
    flags.DEFINE_string("dataset", "mnist", "tfds:NAME (or a TFDS name), folder:DIR "
                        "(DIR/train/<class>/*.jpg|png), idx:DIR, csv:PATH or "
                        "synthetic[:shape=28x28x1,classes=10,train=N,test=N].")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir (default ~/tensorflow_datasets).")
    flags.DEFINE_string("manual_dir", None, "TFDS manual_dir: files here are used offline.")
    flags.DEFINE_integer("num_classes", None, "Classes of an idx:/csv: dataset (default 10).")
    flags.DEFINE_float("validation_split", 0.0, "Fraction of train held out (seeded) for eval "
                       "during training.")
    flags.DEFINE_string("pipeline", "auto", "auto: in_memory when the decoded data fits "
                        "--memory_budget_gb, else stream; in_memory: batches gathered inside "
                        "the training graph (fastest); tf_data: tf.data over the in-memory "
                        "arrays; stream: tf.data reading TFDS shards or image files.")
    flags.DEFINE_float("memory_budget_gb", None, "Decoded data up to this size is held in "
                       "memory by --pipeline=auto (default: a quarter of the RAM).")
    flags.DEFINE_string("image_size", None, "H or HxW: resize images to this size (eval: "
                        "resize and centre crop; train: random-resized crops). Needed for "
                        "images of varying size.")
    flags.DEFINE_boolean("skip_bad_images", False, "folder: skip (and count) unreadable "
                         "image files instead of stopping.")
    flags.DEFINE_string("augment", "none", "none, or a comma list of crop[=PIXELS] (pad "
                        "with zeros, crop at a random offset; translate[=PIXELS] is the same), "
                        "flip, erase[=PROBABILITY], resized_crop[=MIN_AREA] (on with "
                        "--image_size; resized_crop=0: off).")
    flags.DEFINE_float("mixup", 0.0, "Mixup: mix each batch with a shuffled copy, "
                       "images and targets, by a Beta(ALPHA, ALPHA) weight (0: off; e.g. 0.2).")
    flags.DEFINE_float("cutmix", 0.0, "CutMix: paste a box of a shuffled copy of the batch, "
                       "targets by area; box area from Beta(ALPHA, ALPHA) (0: off; e.g. 1.0). "
                       "With --mixup, each batch takes one of the two at random.")
    flags.DEFINE_float("mix_probability", 1.0, "Fraction of batches --mixup/--cutmix mix.")
  with _group("Run"):
    flags.DEFINE_string("model_dir", None, "Where checkpoints, TensorBoard events, results.json "
                        "and the export go (default runs/<model>-<dataset>).")
    flags.DEFINE_integer("batch_size", 128, "GLOBAL batch size, split over all replicas.")
    flags.DEFINE_integer("accumulation_steps", 1, "Gradient accumulation: each step sums "
                         "the gradients of this many batches of --batch_size and updates "
                         "once (a step on accumulation_steps x batch_size examples).")
    flags.DEFINE_integer("epochs", None, "Epochs to train (default 1); not with --train_steps.")
    flags.DEFINE_integer("train_steps", None, "Steps to train; not with --epochs.")
    flags.DEFINE_integer("steps_per_loop", 100, "Steps inside one tf.function call; logs and "
                         "summaries are written between loops.")
    flags.DEFINE_integer("checkpoint_every", None, "Checkpoint every N steps (default once per "
                         "epoch); always at the end.")
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in model_dir/checkpoints.")
    flags.DEFINE_list("profile_steps", None, "A,B: write a TensorBoard profile of steps A "
                      "to B to model_dir/profile (at loop boundaries).")
    flags.DEFINE_integer("seed", 0, "Seed for initialization, data order and augmentation.")
    flags.DEFINE_boolean("deterministic", False, "Deterministic ops (slower): same flags, same "
                         "weights.")
    flags.DEFINE_integer("divergence_retries", 0, "On a non-finite loss or a collapsed fp16 "
                         "loss scale, go back to the last checkpoint, skip the data since, "
                         "and continue, at most this many times (0: stop).")
    flags.DEFINE_list("allow_changed_flags", None, "A rerun into an existing model_dir "
                      "refuses flags that change what is trained; these may change "
                      "(logged and recorded in model_dir/flag_changes.json).")
  with _group("Evaluation"):
    flags.DEFINE_integer("eval_every", None, "Evaluate every N steps (default once per "
                         "epoch), on the validation split, or on test without one.")
    flags.DEFINE_boolean("eval_images", True, "At each eval, write a confusion matrix, the "
                         "worst mistakes and per-class accuracy to TensorBoard.")
    flags.DEFINE_string("keep_best", None, "accuracy or loss: keep the checkpoint with the "
                        "best eval value in model_dir/best/ and export it to export_best/.")
    flags.DEFINE_integer("early_stopping", None, "Stop when the eval metric (--keep_best's, "
                         "else loss) has not improved for this many evals.")
  with _group("Optimization"):
    flags.DEFINE_string("optimizer", "adam", "sgd, momentum, adam, adamw or rmsprop.")
    flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
    flags.DEFINE_string("lr_schedule", "constant", "constant; cosine (to --final_learning_rate); "
                        "exponential; step (x lr_decay_rate at each of --lr_boundaries); "
                        "one_cycle (linear from learning_rate/25 up over the warm-up, default "
                        "30% of the run, then cosine to --final_learning_rate); plateau (x "
                        "lr_decay_rate after --plateau_patience evals without a new best eval "
                        "metric, --keep_best's or loss).")
    flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps before the schedule "
                         "(one_cycle: 0 means 30% of the schedule).")
    flags.DEFINE_float("final_learning_rate", 0.0, "cosine, one_cycle: the rate at the end; "
                       "plateau: the lowest rate.")
    flags.DEFINE_list("lr_boundaries", None, "step: the steps at which the rate is multiplied "
                      "by --lr_decay_rate, e.g. 6000,9000.")
    flags.DEFINE_integer("plateau_patience", 3, "plateau: evals without a new best before "
                         "the rate is cut.")
    flags.DEFINE_integer("schedule_steps", None, "The schedule's horizon in steps (default: "
                         "the run's length at its first start, kept when a rerun extends it).")
    flags.DEFINE_float("lr_decay_rate", 0.1, "exponential: factor over the whole run; step "
                       "and plateau: factor at each cut.")
    flags.DEFINE_float("momentum", 0.9, "Momentum of the momentum optimizer.")
    flags.DEFINE_boolean("nesterov", False, "momentum: Nesterov momentum.")
    flags.DEFINE_float("label_smoothing", 0.0, "Training loss only: targets (1 - E) on the "
                       "label plus E / classes on every class.")
    flags.DEFINE_float("ema_decay", 0.0, "Keep an exponential moving average of the weights "
                       "(e.g. 0.999; 0: none), updated at every applied step; evals and the "
                       "export use it, and the raw weights' evals are logged beside "
                       "(eval_raw).")
    flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay (not on biases, norms); "
                       "adamw needs it.")
    flags.DEFINE_float("clip_norm", None, "Clip gradients to this global norm, after the "
                       "all-reduce.")
  with _group("Hardware"):
    flags.DEFINE_string("strategy", "auto", "auto, default, one_device, mirrored or "
                        "multi_worker (reads TF_CONFIG).")
    flags.DEFINE_list("devices", None, "mirrored: devices to use (default all GPUs), e.g. "
                      "/cpu:0,/cpu:1.")
    flags.DEFINE_integer("cpu_devices", None, "Split the CPU into N logical devices, so that "
                         "--strategy=mirrored can be tried without GPUs.")
    flags.DEFINE_integer("intra_op_threads", None, "Threads one TensorFlow op may use "
                         "(default TensorFlow's: all cores). 1 speeds up the smallest models "
                         "(MLP 1x50, 5x50), whose ops are too small to split.")
    flags.DEFINE_string("mixed_precision", "float32", "float32, mixed_float16 (with loss "
                        "scaling) or mixed_bfloat16.")
    flags.DEFINE_string("jit_compile", "auto", "XLA: loop compiles the whole inner loop (one "
                        "replica, in-memory data); step each training step (on several "
                        "replicas its forward and backward pass); off; auto: loop where it "
                        "was measured faster (models without convolutions), else off.")
  with _group("Model hyperparameters (each model takes some; see README)"):
    flags.DEFINE_list("hidden_units", None, "mlp: hidden layer sizes, e.g. 500,500.")
    flags.DEFINE_string("activation", None, "mlp: hidden activation (default relu).")
    flags.DEFINE_float("dropout", None, "Dropout rate (default 0).")
    flags.DEFINE_float("l2", None, "L2 regularization factor on kernels (default 0).")
    flags.DEFINE_list("filters", None, "cnn: filters per conv layer (default 25,25,25).")
    flags.DEFINE_list("kernel_sizes", None, "cnn: kernel size per conv layer (default 5,5,4).")
    flags.DEFINE_list("dense_units", None, "cnn: dense layer sizes (default 50).")
    flags.DEFINE_list("widths", None, "resnet: width per stage (default 32,64,128).")
    flags.DEFINE_integer("blocks_per_stage", None, "resnet: residual blocks per stage "
                         "(default 2).")
    flags.DEFINE_boolean("sync_batch_norm", None, "resnet: batch norm statistics over the "
                         "global batch (default: when there are several replicas).")
