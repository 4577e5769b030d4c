"""What a run reports in results.json (run_files.write_results): the figures of the
training it did, its state at the end, where the wall time went, what made it (code,
libraries, devices) and the peak memory it took."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys

import keras
import tensorflow as tf
from absl import logging

from trainer.options.config import Config
from trainer.outer.actions import EARLY_STOP, PRUNED
from trainer.outer.controller import Timing
from trainer.run.phases import Phases

_TIMING = ("examples_per_sec", "train_seconds", "compile_seconds")


def report(config: Config, plan, trainer, chief: bool, timing: Timing, stopped_at: int,
           flag_changes: list, evals: dict, wall_seconds: float, phases: Phases,
           previous: dict | None) -> dict:
  """results.json of a run after its final evals (evals: their figures) and export, with
  the test figures, a pruning stop and the peak memory also written to TensorBoard.
  previous: the last results.json when this process trained nothing (a rerun of a
  finished run keeps the figures it measured and what made them)."""
  figures = {k: getattr(timing, k) for k in _TIMING}
  if previous:  # its figures where they are numbers (a damaged file's are not kept)
    figures = {k: previous[k] if isinstance(previous.get(k), (int, float)) else v
               for k, v in figures.items()}
  state, evaluator = trainer.state, trainer.evaluator
  results = {"global_step": state.step, "dataset": trainer.data.info.name,
             "model": config.model, "parameters": state.model.count_params(),
             "replicas": plan.replicas, "chief": chief,
             "pipeline": trainer.data.pipeline, "precision": plan.precision, **figures,
             "weights_digest": state.weights_digest(), "eval_split": plan.eval_split,
             # The flags, with the schedule's horizon as the run keeps it (run_record.py).
             "flags": {**config.flag_values, "schedule_steps": plan.horizon}}
  if timing.stop is not None and timing.stop.kind == EARLY_STOP:  # a stop ends at its step
    results["stopped_early_at"] = state.step
  elif stopped_at >= 0:
    results["stopped_early_at"] = stopped_at
  if plan.restarts:  # flags.json's record of them (run_record.py)
    results["learning_rate_restarts"] = [r.as_record() for r in plan.restarts]
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
  results.update(evals)
  step, writer = results["global_step"], evaluator.writer
  if "test_loss" in results:
    writer.scalars("eval", step, {k: results[k] for k in
                                  ("test_loss", "test_accuracy", "test_tta_accuracy")
                                  if k in results})
  if timing.stop is not None and timing.stop.kind == PRUNED:  # it ends at its boundary
    results["pruned_at_step"] = step
  if config.eval_images and plan.eval_split:
    results["eval_pictures_seconds"] = evaluator.pictures_seconds
  results["wall_seconds"] = wall_seconds
  results["phases"] = phase_seconds(phases, timing, evaluator)
  # What made the figures, and the memory it took (after the export, its last work).
  results["made_with"] = made_with(plan.replicas, previous)
  results["peak_memory"] = peak_memory()
  log_memory(results["peak_memory"])
  writer.scalars("train", step, memory_scalars(results["peak_memory"]))
  return results


def phase_seconds(phases: Phases, timing: Timing, evaluator) -> dict[str, float]:
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


# The checkout: trainer/run/results.py is three levels down.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _git(*args: str) -> str | None:
  """git's answer about tapeloop's own checkout; None without git or on failure."""
  try:
    proc = subprocess.run(["git", "-C", _ROOT, *args], capture_output=True, text=True,
                          timeout=5, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return proc.stdout.strip() if proc.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def _code() -> dict:
  """tapeloop's version, and its commit when it runs from a git checkout (with whether
  tracked files differ from it). Only a checkout's own top counts: an installed copy
  inside another repository is not that repository's commit."""
  try:
    version = importlib.metadata.version("tapeloop")
  except importlib.metadata.PackageNotFoundError:
    version = None
  code = {"tapeloop": version}
  if os.path.exists(os.path.join(_ROOT, ".git")):  # a directory, or a worktree's file
    commit = _git("rev-parse", "HEAD")
    if commit:
      code["git_commit"] = commit
      status = _git("status", "--porcelain", "--untracked-files=no")
      if status is not None:
        code["git_modified"] = bool(status)
  return code


def _cpu_model() -> str:
  """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows of it."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def made_with(replicas: int, previous: dict | None = None) -> dict:
  """results.json's "made_with": code and library versions, and the devices. previous:
  the last results.json when this process trained nothing; its weights were made by the
  code that trained them, so its "made_with" is kept."""
  if previous and isinstance(previous.get("made_with"), dict):
    return previous["made_with"]
  gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
          for gpu in tf.config.list_physical_devices("GPU")]
  return {**_code(), "tensorflow": tf.__version__, "keras": keras.__version__,
          "python": platform.python_version(),
          "devices": {"cpu": _cpu_model(), "gpus": gpus, "replicas": replicas}}


def peak_memory() -> dict:
  """The process's peak memory so far, in bytes: its host resident set (getrusage), and
  each GPU's peak allocation (TensorFlow's allocator; CPUs have no such figure)."""
  memory = {}
  try:
    import resource  # pylint: disable=g-import-not-at-top  (POSIX only)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    memory["host_rss_bytes"] = rss if sys.platform == "darwin" else rss * 1024  # Linux: KiB
  except ImportError:
    pass
  gpus = {}
  for device in tf.config.list_logical_devices("GPU"):
    name = device.name.split("device:")[-1]  # GPU:0
    try:
      gpus[name] = int(tf.config.experimental.get_memory_info(name)["peak"])
    except (ValueError, tf.errors.OpError):  # an allocator without statistics
      continue
  if gpus:
    memory["gpu_peak_bytes"] = gpus
  return memory


def memory_scalars(memory: dict) -> dict[str, float]:
  """The peak memory as TensorBoard scalars of the train run, in MiB."""
  scalars = {}
  if "host_rss_bytes" in memory:
    scalars["peak_memory_mib/host"] = memory["host_rss_bytes"] / 2**20
  for name, peak in memory.get("gpu_peak_bytes", {}).items():
    scalars[f"peak_memory_mib/{name.replace(':', '_')}"] = peak / 2**20
  return scalars


def memory_text(memory: dict) -> str | None:
  """The peak memory as the end of a run states it (the log, trainer.main's summary),
  e.g. "peak memory: host 812 MiB (resident), GPU:0 3072 MiB"; None without figures."""
  parts = [f"host {memory['host_rss_bytes'] / 2**20:.0f} MiB (resident)"] if (
      "host_rss_bytes" in memory) else []
  parts += [f"{name} {peak / 2**20:.0f} MiB" for name, peak
            in memory.get("gpu_peak_bytes", {}).items()]
  return f"peak memory: {', '.join(parts)}" if parts else None


def log_memory(memory: dict) -> None:
  """The end-of-run line of peak memory."""
  text = memory_text(memory)
  if text:
    logging.info("%s", text)
