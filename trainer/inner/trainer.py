"""The Trainer: N training steps in one tf.function call (the inner loop), and the eval
pass, over a run's state. The outer loop that decides N and acts between calls is
controller.py with actions.py.

    state.py      model, optimizer, global step, EMA, progress, checkpoints
    step.py       one step on a batch (forward, backward, accumulation, clipping, fp16)
                  and the loop of N steps in one call around it
    feeds.py      the batches, ready for the loss, one feed per --pipeline
    evaluator.py  the exact eval pass and its report
"""

from __future__ import annotations

import shlex

import tensorflow as tf
from absl import logging

from input_pipeline import Data
from trainer.inner import feeds, init_from
from trainer.inner.evaluator import Evaluation, Evaluator
from trainer.inner.state import TrainState
from trainer.inner.step import TrainLoop, TrainStep
from trainer.options.config import Config

_XLA = {"off": "off", "loop": "the whole inner loop", "step": "each training step",
        "forward_backward": "the forward and backward pass"}


class Trainer:
  """A run's state, step, feed and evaluator, built under the strategy's scope; its parts
  are read where they live (trainer.state.model, trainer.state.global_step, ...).

  plan: what the flags resolve to for this data and these devices (planning.Plan, from
  planning.resolve): the precision policy, the XLA mode, the total steps, the schedule's
  horizon and restarts, each with its reason. Read by attribute: the run layer makes the plan, and
  this layer does not import it. output_dir: where this worker saves checkpoints (default
  model_dir; a non-chief worker of a cluster passes a scratch directory). restore: True
  restores the latest checkpoint of model_dir, a path that checkpoint (with neither, a new
  run fits the model's data-dependent start), False nothing (the caller restores). writer:
  where eval reports go (summaries.Summaries); None writes none."""

  def __init__(self, config: Config, strategy: tf.distribute.Strategy, data: Data, plan, *,
               output_dir: str | None = None, restore: bool | str = True, writer=None):
    self.config, self.plan, self.strategy, self.data = config, plan, strategy, data
    logging.info("precision policy: %s%s (%s)", plan.precision,
                 " with dynamic loss scaling" if plan.precision == "mixed_float16"
                 else "", plan.precision_reason)
    self.state = TrainState(config, strategy, data.info, precision=plan.precision,
                            total_steps=plan.total_steps, horizon=plan.horizon,
                            output_dir=output_dir, restarts=plan.restarts,
                            unfreeze_step=plan.unfreeze_step)
    # restore=False: the caller restores weights itself (trainer.evaluate): nothing to fit.
    # initialized: what --init_from restored into a new run (init_from.Report), else None.
    self.initialized = None
    resumed = restore and self.state.restore(restore if isinstance(restore, str) else None)
    if restore and resumed is None:
      self.state.start_from_data(data.splits["train"])  # a new run: what the model fits
      if config.init_from:
        self.initialized = self.state.initialize_from(
            config.init_from, config.model, init_from.Labels.of(config.dataset, config.classes))
    elif resumed and config.init_from:
      logging.info("--init_from=%s is not applied: the run resumes from its checkpoint",
                   shlex.quote(config.init_from))
    self.evaluator = Evaluator(self.state, data, config.batch_size, writer,
                               pictures=config.eval_images, tta=config.tta)
    self.jit = plan.jit
    logging.info("XLA: %s (%s)", _XLA[self.jit], plan.jit_reason)
    self.feed = feeds.make_feed(strategy, data, config)
    self.train_step = TrainStep(config, self.state, self.jit)
    self.loop = TrainLoop(self.train_step, self.feed, jit=self.jit == "loop")
    self._traced_for = self.state.optimizer  # the loop's functions train with this one

  def restore(self, checkpoint: str | None = None) -> str | None:
    """Restores `checkpoint`, or else model_dir's latest readable one; None if there is none."""
    path = self.state.restore(checkpoint)
    self.evaluator.forget()
    return path

  def recover(self, bad_step: int) -> int | None:
    """Back to the last good checkpoint past the data since it (TrainState.recover)."""
    good = self.state.recover(bad_step)
    self.evaluator.forget()
    return good

  def evaluate(self, split: str, raw: bool = False) -> Evaluation:
    return self.evaluator.evaluate(split, raw)

  def train_iterator(self):
    """The train stream from the current global step (resumes the data order)."""
    return self.feed.iterator(self.state.data_position)

  def run_steps(self, iterator, steps: int) -> dict[str, float]:
    """Runs `steps` training steps (in-memory data: one call per steps_per_loop; a call
    more where --unfreeze_at_epoch's step falls inside); returns their global loss and
    accuracy (read once, at the end)."""
    step, unfreeze = self.state.step, self.state.unfreeze_step
    if unfreeze is not None and step < unfreeze < step + steps:  # each stage its own call
      self._run(iterator, unfreeze - step)
      steps -= unfreeze - step
    self._run(iterator, steps)
    return self.train_step.metrics()

  def _run(self, iterator, steps: int) -> None:
    """`steps` steps in the stage of the current step (--freeze, --unfreeze_at_epoch); the
    loop is traced again whenever the optimizer changed (a new stage, or a restore into
    another one)."""
    self.state.enter_stage_of(self.state.step)
    if self.state.optimizer is not self._traced_for:
      self.train_step.retrace()
      self.loop = TrainLoop(self.train_step, self.feed, jit=self.jit == "loop")
      self._traced_for = self.state.optimizer
    self.loop(iterator, steps)
