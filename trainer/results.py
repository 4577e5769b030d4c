"""What a run reports in results.json (run_files.write_results): the figures of the
training it did, its state at the end, and where the wall time went."""

from __future__ import annotations

from absl import logging

from trainer.config import Config
from trainer.controller import Timing
from trainer.phases import Phases

_TIMING = ("examples_per_sec", "train_seconds", "compile_seconds")


def of_run(config: Config, plan, trainer, chief: bool, timing: Timing, stopped_at: int,
           flag_changes: list, previous: dict | None) -> dict:
  """The results before the final evals. previous: the last results.json when this
  process trained nothing (a rerun of a finished run keeps the figures it measured)."""
  figures = {k: getattr(timing, k) for k in _TIMING}
  if previous:  # its figures where they are numbers (a damaged file's are not kept)
    figures = {k: previous[k] if isinstance(previous.get(k), (int, float)) else v
               for k, v in figures.items()}
  state = trainer.state
  results = {"global_step": state.step, "dataset": trainer.data.info.name,
             "model": config.model, "parameters": state.model.count_params(),
             "replicas": plan.replicas, "chief": chief,
             "pipeline": trainer.data.pipeline, "precision": plan.precision, **figures,
             "weights_digest": state.weights_digest(), "eval_split": plan.eval_split,
             # The flags, with the schedule's horizon as the run keeps it (run_record.py).
             "flags": {**config.flag_values, "schedule_steps": plan.horizon}}
  if timing.stop is not None or stopped_at >= 0:
    results["stopped_early_at"] = state.step if timing.stop is not None else stopped_at
  if plan.restart is not None:  # flags.json's record of it (run_record.py)
    results["learning_rate_restart"] = plan.restart.as_record()
  if flag_changes:
    results["flag_changes"] = flag_changes
  recoveries = int(state.progress.recoveries.numpy())
  if recoveries or config.divergence_retries:
    results["divergence_recoveries"] = recoveries
    results["skipped_steps"] = int(state.progress.skipped_steps.numpy())
  best = state.progress.best()
  if best is not None and (config.keep_best or config.early_stopping):
    results["best_eval"] = dict(zip(("metric", "value", "step"), best))
  logging.info("model weights digest at step %d: %s", results["global_step"],
               results["weights_digest"])
  return results


def phases(phases: Phases, timing: Timing, evaluator) -> dict[str, float]:
  """Seconds per phase: training loops with the first (tracing and compilation) apart;
  evals, their pictures and checkpoints ran between loops. Logged."""
  trained_here = timing.examples_per_sec is not None
  phases.add("compile", timing.compile_seconds if trained_here else 0.0)
  phases.add("train", (timing.train_seconds - timing.compile_seconds) if trained_here else 0.0)
  phases.add("eval", evaluator.seconds)
  phases.add("eval_pictures", evaluator.pictures_seconds)
  summary = phases.summary()
  logging.info("%.1f s in all: %s", summary["total"], ", ".join(
      f"{k.replace('_', ' ')} {v:.1f} s" for k, v in summary.items() if k != "total"))
  return summary
