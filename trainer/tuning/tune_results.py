"""What a person reads after trainer.tune: the trials ranked (console and ROOT/results.md),
the training pruning saved, the best trial's flagfile (ROOT/best.cfg) and one HParams
experiment over the trials."""

from __future__ import annotations

import math
import os
import shlex

from trainer.options import declared
from trainer.options.values import short
from trainer.process import files
from trainer.run import child_runs
from trainer.tuning.study import Settings, hidden
from trainer.tuning.tune_choices import OBJECTIVES


def rows(tuner) -> list[dict]:
  """One row per trial directory (a resumed trial once, as its last attempt), as it is
  now, best first: complete trials by their objective, then pruned ones by their last
  report. A pruned trial finished later by hand (python -m trainer.main
  --model_dir=ROOT/trial-N) is complete, its figure its results'."""
  states = tuner.optuna.trial.TrialState
  superseded = tuner.superseded()
  out = []
  for trial in tuner.study.get_trials(deepcopy=False):
    if (trial.state == states.WAITING or tuner._handed_back(trial)
        or trial.number in superseded):
      continue
    model_dir = trial.user_attrs.get("model_dir", "")
    results = child_runs.read_json(os.path.join(model_dir, "results.json")) or {}
    last = (trial.intermediate_values[max(trial.intermediate_values)]
            if trial.intermediate_values else None)
    state = {states.COMPLETE: "complete", states.RUNNING: "running"}.get(
        trial.state, trial.state.name.lower())
    value, complete = trial.value, trial.state == states.COMPLETE
    pruned = trial.state == states.PRUNED
    if pruned:
      at = results.get("pruned_at_step", max(trial.intermediate_values or [0]))
      state = f"pruned at step {at}"
      by_hand = results.get(f"validation_{tuner.s.objective}")
      if ("pruned_at_step" not in results and by_hand is not None
          and (results.get("global_step") or 0) > at):
        value, complete, pruned = by_hand, True, False
        state = f"complete (by hand after pruning at step {at})"
    elif trial.state == states.FAIL:
      state = f"failed ({trial.user_attrs.get('error', '')})"
    out.append({"trial": os.path.basename(model_dir) or f"#{trial.number}",
                 "number": trial.number, "state": state, "value": value,
                 "last": last, "params": dict(trial.params), "results": results,
                 "pruned": pruned, "complete": complete})
  sign = -1.0 if OBJECTIVES[tuner.s.objective] == "maximize" else 1.0
  def rank(row):
    figure = row["value"] if row["complete"] else row["last"] if row["pruned"] else None
    group = 0 if row["complete"] else 1 if row["pruned"] else 2
    return (group, sign * figure if figure is not None else math.inf, row["number"])
  return sorted(out, key=rank)


def table(tuner, rows: list[dict]) -> str:
  names = [x.name for x in tuner.s.searches]
  figure = f"validation {tuner.s.objective}"
  lines = [f"| rank | trial | {figure} | " + " | ".join(names) + " | steps | train s | state |",
           "|---:|---|---:|" + "---|" * len(names) + "---:|---:|---|"]
  for i, row in enumerate(rows, 1):
    value = row["value"] if row["complete"] else row["last"]
    shown = "-" if value is None else (short(value, figure=True)
                                       + ("" if row["complete"] else " (last)"))
    seconds = row["results"].get("train_seconds")
    lines.append(f"| {i} | {row['trial']} | {shown} | " + " | ".join(
        short(row["params"].get(n, "-")) for n in names) + f" | "
        f"{row['results'].get('global_step', '-')} | "
        f"{'-' if seconds is None else f'{seconds:.0f}'} | {row['state']} |")
  return "\n".join(lines)


def saved_by_pruning(rows: list[dict]) -> tuple[float, float]:
  """(seconds of training the pruned trials did not do, seconds all trials trained): each
  pruned trial's steps to its schedule's end at its own speed."""
  saved = spent = 0.0
  for row in rows:
    results = row["results"]
    seconds, step = results.get("train_seconds") or 0.0, results.get("global_step") or 0
    spent += seconds
    full = (results.get("flags") or {}).get("schedule_steps") or step
    if row["pruned"] and step:
      saved += seconds / step * max(full - step, 0)
  return saved, spent


def report(tuner) -> tuple[str, dict | None]:
  """The ranked table (also ROOT/results.md), ROOT/best.cfg and the HParams experiment
  over all trials; returns the text and the best row."""
  ranked = rows(tuner)
  counts = {k: sum(1 for r in ranked if r["state"].startswith(k))
            for k in ("complete", "pruned", "failed", "running")}
  saved, spent = saved_by_pruning(ranked)
  best = ranked[0] if ranked and ranked[0]["complete"] else None
  best = best if best and "flags" in best["results"] else None  # its results unread
  s = tuner.s
  text = [f"# Study {s.study} (python -m trainer.tune)", "",
          f"{len(ranked)} trials: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
          + f". Objective: validation {s.objective}, "
          f"{OBJECTIVES[s.objective]}d. Sampler {s.sampler}, pruner "
          f"{s.pruner}. Storage {hidden(s.storage)}.", ""]
  if spent:
    text += [f"Trials trained {spent:.0f} s in all. Pruning saved about {saved:.0f} s "
             f"({100 * saved / (saved + spent):.0f}% of running every trial to the end), "
             "from each pruned trial's steps to its schedule's end at its own speed.", ""]
  text.append(table(tuner, ranked))
  if best is not None:
    flagfile = shlex.quote("--flagfile=" + os.path.join(s.root, "best.cfg"))
    figure = short(best["value"], figure=True)
    text += ["", f"Best: {best['trial']}, validation {s.objective} {figure}. "
             f"Rerun it: python -m trainer.main {flagfile} --model_dir=DIR"]
    files.write_text(os.path.join(s.root, "best.cfg"), best_flagfile(best, s))
  text = "\n".join(text) + "\n"
  files.write_text(os.path.join(s.root, "results.md"), text)
  with tuner.lock:  # the last report of the study's tuners stands
    child_runs.write_experiment(s.root, [(r["results"] or {}).get("flags") for r in ranked
                                         if r["results"]], first=[x.name for x in s.searches])
  return text, best


def best_flagfile(best: dict, s: Settings) -> str:
  """The best trial's flags as a flagfile that reruns it as is: every flag it ran with that
  is not its default, but its model_dir."""
  flags = best["results"]["flags"]
  lines = [f"# trainer.tune's best trial of study {s.study}: {best['trial']}, validation "
           f"{s.objective} {best['value']:.4f} at step {best['results'].get('global_step')}.",
           "# python -m trainer.main --flagfile=THIS --model_dir=DIR reruns it."]
  for name in declared.NAMES:
    value = flags.get(name)
    if name in ("model_dir", "allow_changed_flags") or value is None:
      continue
    if value == declared.BY_NAME[name].default or (
        isinstance(value, list) and declared.BY_NAME[name].default is not None
        and list(value) == list(declared.BY_NAME[name].default)):
      continue
    if isinstance(value, bool):
      text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
      text = ",".join(str(v) for v in value)
    else:
      text = str(value)
    lines.append(f"--{name}={text}")
  return "\n".join(lines) + "\n"
