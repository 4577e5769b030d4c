"""train_and_evaluate(config): model_dir's record checked, the strategy, the data and the
plan, the Trainer, the outer loop (loop.py), then the final evals, the export and
results.json."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from typing import Sequence

import keras
import tensorflow as tf
from absl import logging

from trainer.inner import summaries
from trainer.inner.trainer import Trainer
from trainer.options.config import Config
from trainer.outer.actions import Action
from trainer.outer.preemption import PreemptionStop
from trainer.process import files, run_log
from trainer.run import distribute, export, loop, planning, run_files, run_record
from trainer.run.phases import Phases
from trainer.run.results import report


def train_and_evaluate(config: Config, process_start: float | None = None,
                       extra_actions: Sequence[Action] = ()) -> dict:
  """Trains to the target step (resuming from model_dir), evaluates, exports; returns the
  results that also go to model_dir/results.json. process_start: when the command started
  (trainer.run.phases.process_start), so that the phases include the start-up before this.
  extra_actions: the caller's own (a tuner's trial report), run after the eval's actions
  and before the checkpoint, which saves on their stop; each checks the plan before the
  run writes anything (Action.check)."""
  start = time.time()
  phases = Phases(process_start or start)
  if process_start:
    phases.add("start_up", start - process_start)  # Python, TensorFlow's import, flags
  with contextlib.ExitStack() as stack:
    # The chief's model_dir/tapeloop.log: every line from here, held until log.start.
    log = stack.enter_context(run_log.RunLog())
    # Before any work: model_dir's files are read (a damaged one is refused here) and a
    # rerun that changes what is trained is refused.
    run_files.check_model_dir(config.model_dir)
    recorded = run_files.read_record(config.model_dir)
    history = run_files.read_changes(config.model_dir)
    previous = run_files.read_results(config.model_dir)
    changed = run_record.check(config, recorded)
    # Signals are answered from here on, not only in the training loop: before training
    # they end the run at once (a command-line program's process, also while the
    # cluster's start-up blocks in C++); after it, a worker killed while exporting would
    # leave the others waiting in a collective.
    preemption = PreemptionStop()
    preemption.install()
    stack.callback(preemption.uninstall)
    strategy = distribute.create_strategy(config)  # first: it may configure the runtime
    preemption.agree = distribute.any_worker(strategy)
    chief = distribute.is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
      tf.config.experimental.enable_op_determinism()
    phases.add("setup", time.time() - start)
    with phases.time("data"):
      data = run_files.load_data(config)
    # Every check that needs the data: nothing is written to model_dir before it passes.
    plan = planning.resolve(config, data, strategy, recorded)
    logging.info("data %s: %s, image shape %s, %d classes", data.info.name,
                 dict(data.info.split_sizes), data.info.image_shape, data.info.num_classes)
    for action in extra_actions:
      action.check(plan)
    # Under MultiWorkerMirroredStrategy every worker saves (checkpoints, export); a
    # non-chief worker does so into a scratch directory removed at the end.
    scratch = None if chief else tempfile.mkdtemp(prefix="tapeloop-worker-")
    if scratch:
      stack.callback(files.rmtree, scratch)
    output_dir = scratch or config.model_dir
    writer = summaries.Summaries(config.model_dir, enabled=chief)
    with phases.time("build"):  # model, optimizer, restore
      trainer = Trainer(config, strategy, data, plan, output_dir=scratch, writer=writer)
    run_record.check_length(config, trainer.state.step, plan.total_steps)
    if chief:  # what the run was started as, and changes since: trainer.evaluate reads it
      tf.io.gfile.makedirs(config.model_dir)
      history = run_record.write(config, recorded, history, {**changed, **plan.changes},
                                 trainer.state.step, plan, data.pipeline)
      if data.folder_check:
        run_files.write_folder_check(config.model_dir, data.folder_check)
      if trainer.initialized:  # --init_from's table, beside the record
        trainer.initialized.write(config.model_dir, writer)
    log.start(config.model_dir if chief else None)
    timing, stopped_at = loop.train(config, plan, trainer, output_dir, phases.timed,
                                    [preemption], list(extra_actions))
    # From here (also when no step was left to train): a signal lets the evals and the
    # export finish.
    preemption.phase = "after"
    evals = {}
    for split in ("validation", "test"):
      if split in data.splits and data.splits[split].labeled:
        evals.update(trainer.evaluator.figures(split))
    wall_seconds = time.time() - phases.start
    with phases.time("export"):
      export.save_model(trainer.state.eval_model, data.info.image_shape,
                        os.path.join(output_dir, "export"), data.info.class_names, config.tta)
    # A process that trained nothing keeps what the last results.json says of training.
    results = report(config, plan, trainer, chief, timing, stopped_at,
                     history if chief else [], evals, wall_seconds, phases,
                     previous if timing.examples_per_sec is None else None)
    writer.close()
    if chief:
      run_files.write_results(config.model_dir, results)
    if preemption.signal is not None:  # after training: the run finished before stopping
      logging.warning("stopped by %s after training, once the evaluation and the export "
                      "were done: the run is complete", signal.Signals(preemption.signal).name)
    return results
