"""The training state: model, optimizer, global step, weight average and progress, built
under the strategy's scope, and the checkpoints that save and restore them."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from input_pipeline import DatasetInfo
from input_pipeline.preprocess import normalize
import models
from models import paths
from models.common import InputTooSmall
from trainer.inner import checkpoints, freezing, init_from
from trainer.inner.progress import Progress
from trainer.optim import ema, optimization
from trainer.options.config import Config
from trainer.process.errors import ConfigError

# Training images a data-dependent start (the whitening filters) is fitted to: their
# patches are millions of samples of a covariance of a few dozen dimensions.
_FIT_IMAGES = 2000
# The global step's entry in a checkpoint (Checkpoints saves it as `global_step`).
_GLOBAL_STEP = "global_step/.ATTRIBUTES/VARIABLE_VALUE"
_STAGE = "progress/stage/.ATTRIBUTES/VARIABLE_VALUE"  # Progress.stage's values:
_FROZEN, _UNFROZEN = 0, 1


def build_model(config: Config, info: DatasetInfo, precision: str,
                hparams: dict | None = None):
  """The run's model (models.create with the flags' hyperparameters, or `hparams`); an
  image too small for its convolutions is a ConfigError naming the flags that fix it."""
  try:
    return models.create(config.model, num_classes=info.num_classes,
                         image_shape=info.image_shape, precision=precision,
                         **(config.model_hparams if hparams is None else hparams))
  except InputTooSmall as e:
    fix = {"airbench": ", or fewer --widths or a smaller --whiten",
           "cnn": ", or smaller --kernel_sizes"}.get(config.model, "")
    raise ConfigError(f"{e}: use a larger --image_size{fix}") from None


class TrainState:
  """What a checkpoint holds. precision: the Keras policy the model computes in, the one
  --mixed_precision resolved to (Plan.precision: auto is no policy); output_dir: where
  this worker saves (default model_dir; a non-chief worker of a cluster passes a scratch
  directory)."""

  def __init__(self, config: Config, strategy: tf.distribute.Strategy, info: DatasetInfo,
               *, precision: str, total_steps: int, horizon: int,
               output_dir: str | None = None, restarts: tuple[optimization.Restart, ...] = (),
               unfreeze_step: int | None = None):
    """unfreeze_step: the first step that trains what --freeze holds (planning.Plan's;
    None: --freeze holds it for the whole run)."""
    self.strategy, self.precision, self.config = strategy, precision, config
    self.unfreeze_step = unfreeze_step
    self._fp16 = precision == "mixed_float16"
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
      hparams = dict(config.model_hparams)
      if "sync_batch_norm" in models.hyperparameters(config.model):
        # Per-replica statistics would differ per replica and from one device's: global
        # batch statistics by default whenever there are several replicas.
        hparams.setdefault("sync_batch_norm", replicas > 1)
        logging.info("batch norm statistics: %s", "synchronized over the global batch"
                     if hparams["sync_batch_norm"] else "per replica")

      def create_model():
        return build_model(config, info, precision, hparams)
      self.model = create_model()
      # Kept apart from optimizer.iterations, which does not advance on a skipped fp16 step.
      self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      self.progress = Progress()
      self.schedule = optimization.Schedule.of(config, total_steps, horizon, restarts)
      self.learning_rate = self.schedule.rate_fn(self.global_step, self.progress.lr_factor)
      # --freeze: a new run starts frozen; a restored one in its checkpoint's stage (restore).
      self.freezing = (freezing.Freezing(self.model, config.freeze) if config.freeze
                       else None)
      if self.freezing:
        self.freezing.freeze()
        self.progress.stage.assign(_FROZEN)
        logging.info("%s%s", self.freezing.describe(), "" if unfreeze_step is None else
                     f"; all train from step {unfreeze_step} (--unfreeze_at_epoch="
                     f"{config.unfreeze_at_epoch})")
      self.optimizer = self._build_optimizer()
      # --ema_decay: the average lives in a second model's weights, which evals and the
      # export use; it is checkpointed beside the model (made after it: the model's own
      # initialization does not change with the flag).
      self.ema = (ema.EMA(self.model, create_model(), config.ema_decay, strategy,
                          every=config.ema_every, lookahead=config.lookahead)
                  if config.ema_decay else None)
      # The average is optional: a run that had none may turn it on (--ema_decay with
      # --allow_changed_flags); it then starts from the restored weights (restore).
      optional = {"progress": self.progress, **({"ema": self.ema.model} if self.ema else {})}
      self.checkpoints = checkpoints.Checkpoints(
          config.model_dir, config.keep_checkpoints, save_dir=output_dir,
          optional=optional, model=self.model, optimizer=self.optimizer,
          global_step=self.global_step)

  def _build_optimizer(self):
    """The optimizer over the model's trainable variables, built eagerly: a lazily built
    Adam fails inside strategy.run (keras issue 23085). Every variable but the head trains
    at --backbone_learning_rate_multiplier times the rate."""
    multiplier = self.config.backbone_learning_rate_multiplier
    rate_factor = None
    if multiplier != 1:
      head = {id(v) for p, v in paths.variable_paths(self.model).items() if paths.is_head(p)}
      rate_factor = lambda v: 1.0 if id(v) in head else multiplier
    optimizer = optimization.create_optimizer(self.config, self.learning_rate,
                                              loss_scaling=self._fp16, rate_factor=rate_factor)
    optimizer.build(self.model.trainable_variables)
    return optimizer

  def enter_stage_of(self, step: int) -> bool:
    """Puts the model in the stage that trains global step `step` (0: the first), frozen
    before --unfreeze_at_epoch's step, unfrozen from it; True when that changed it. Only
    ever unfreezes: a checkpoint restored unfrozen before that step (another --batch_size
    or data size moved the step) stays so. The optimizer is rebuilt over the new trainable
    variables (a Keras optimizer is built once) with the old one's step count and slots
    carried over: the train step must then be traced again (Trainer)."""
    if self.freezing is None or not self.freezing.frozen:
      return False
    if self.unfreeze_step is None or step < self.unfreeze_step:
      return False
    self._enter_stage(frozen=False)
    late = "" if step == self.unfreeze_step else f" (its step is {self.unfreeze_step}: a " \
        "checkpoint of the frozen stage restored past it)"
    logging.info("step %d (--unfreeze_at_epoch=%d%s): the %d frozen variables train from "
                 "here, %d in all", step, self.config.unfreeze_at_epoch, late,
                 len(self.freezing.variables), len(self.model.trainable_variables))
    return True

  def _enter_stage(self, frozen: bool) -> None:
    if frozen == self.freezing.frozen:
      return
    with self.strategy.scope():
      if frozen:
        self.freezing.freeze()
      else:
        self.freezing.unfreeze()
      old, self.optimizer = self.optimizer, self._build_optimizer()
      optimization.carry_over(old, self.optimizer)
      self.checkpoints.replace(optimizer=self.optimizer)
    self.progress.stage.assign(_FROZEN if frozen else _UNFROZEN)

  def _enter_stage_of_checkpoint(self, path: str) -> None:
    """The stage the checkpoint's optimizer belongs to, as it recorded it (Progress.stage);
    one without a record: the stage that trained its step s - 1 (it was saved after steps
    0..s-1), by this run's --unfreeze_at_epoch step."""
    reader = tf.train.load_checkpoint(path)
    if reader.has_tensor(_STAGE):
      # -1: a run without --freeze, whose optimizer holds every variable: unfrozen.
      self._enter_stage(frozen=reader.get_tensor(_STAGE) == _FROZEN)
    else:
      step = max(0, int(reader.get_tensor(_GLOBAL_STEP)) - 1)
      self._enter_stage(frozen=self.unfreeze_step is None or step < self.unfreeze_step)

  def start_from_data(self, train_split) -> None:
    """A new run's data-dependent start (the airbench model's whitening filters, from the
    first training images); a restored run has it in its checkpoint."""
    fit = getattr(self.model, "fit_to_data", None)  # a model with a data-dependent start
    if fit is None:
      return
    images = train_split.images_at(np.arange(min(len(train_split), _FIT_IMAGES)))
    with self.strategy.scope():
      fit(normalize(images).numpy())
      if self.ema:
        self.ema.restart()
    logging.info("fitted the model's data-dependent start to %d training images", len(images))

  def initialize_from(self, source: str, model_name: str,
                      labels: init_from.Labels | None = None) -> init_from.Report:
    """A new run's weights from --init_from (after start_from_data: the source's own
    data-dependent start, fitted to the data its later layers trained on, wins); the
    average, with --ema_decay, starts from them."""
    with self.strategy.scope():
      report = init_from.initialize(self.model, source, model_name, labels)
      if self.ema:
        self.ema.restart()
    return report

  @property
  def eval_model(self) -> keras.Model:
    """The weights evals and the export use: the EMA's with --ema_decay, else the model's."""
    return self.ema.model if self.ema else self.model

  @property
  def step(self) -> int:
    return int(self.global_step.numpy())

  @property
  def loss_scale(self) -> float | None:
    """The fp16 dynamic loss scale, None without loss scaling."""
    return float(self.optimizer.dynamic_scale.numpy()) if self._fp16 else None

  def restore(self, checkpoint: str | None = None) -> str | None:
    """Restores `checkpoint`, or else model_dir's latest readable one; None if there is none."""
    with self.strategy.scope():
      path = self.checkpoints.restore(
          checkpoint, prepare=self._enter_stage_of_checkpoint if self.freezing else None)
      if path and self.freezing:  # the restored progress holds the checkpoint's record
        self.progress.stage.assign(_FROZEN if self.freezing.frozen else _UNFROZEN)
      if path and self.ema and not self.checkpoints.holds(path, "ema"):
        self.ema.restart()
        logging.info("%s holds no weight average (the run had no --ema_decay): the average "
                     "starts from its weights", path)
    return path

  def recover(self, bad_step: int) -> int | None:
    """After a blow-up seen at `bad_step`: restores the last good checkpoint and counts the
    batches since it as skipped (the window that held the trouble), so that the data
    stream moves past them. Returns the restored step, None without a checkpoint."""
    recoveries = int(self.progress.recoveries.numpy())
    skipped = int(self.progress.skipped_steps.numpy())
    if not self.checkpoints.candidates():
      return None
    self.restore()  # also restores progress as it was then: the counts are set again below
    good = self.step
    self.progress.recoveries.assign(recoveries + 1)
    self.progress.skipped_steps.assign(skipped + bad_step - good)
    return good

  @property
  def data_position(self) -> int:
    """Where the train stream resumes: the global step plus the steps recovery skipped."""
    return self.step + int(self.progress.skipped_steps.numpy())

  def weights_digest(self) -> str:
    """A short hash of all model weights: equal digests, bitwise equal models."""
    digest = hashlib.sha256()
    for weight in self.model.weights + (self.ema.model.weights if self.ema else []):
      digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]
