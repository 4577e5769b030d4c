"""A run is what it was started as: model_dir/flags.json holds its flags from the first
start, and a rerun into the same model_dir may only change how it runs.

A rerun that changes what is trained (model, data, optimizer, schedule, batch, precision,
seed, ...) is refused, naming each flag with its old and new value, unless the flag is
named in --allow_changed_flags; then the change is logged, recorded in
model_dir/flag_changes.json and results.json, and flags.json takes the new value. A longer
--epochs/--train_steps extends the run; a shorter one than already trained is refused.
The learning-rate schedule's horizon (--schedule_steps) is fixed at the first start, so an
extended run continues the schedule where it was instead of jumping. An extension past the
end of a schedule that has decayed (to 0 or nearly) is refused: it would train at that
rate; --restart_learning_rate restarts the schedule over the added steps instead, recorded
in flags.json (RESTART, a list: each restart in turn) so that a resumed extension derives
the same rates. The precision is compared as the policy --mixed_precision resolved to
(PRECISION in flags.json): --mixed_precision=auto that resolves to the recorded policy is
the same run, one that resolves to another is a change.
"""

from __future__ import annotations

import json
import shlex
import time

from absl import logging

from trainer.optim import optimization
from trainer.options import declared
from trainer.options.config import Config
from trainer.options.declared import normalized
from trainer.options.values import as_text, flag_arg
from trainer.process.errors import ConfigError
from trainer.run import run_files
from trainer.run.run_files import CHANGES, PIPELINE, PRECISION, RESTART
# Pipelines that give the same batches: in_memory and tf_data always (one permutation
# function); a folder's stream too. A TFDS stream reads its shards in another order.
_SAME_ORDER = ("in_memory", "tf_data")
# Not given on a rerun, these keep the run's recorded value.
_INHERITED = ("schedule_steps", "restart_learning_rate")


def listed(changes: dict[str, tuple]) -> str:
  """{flag: (old, new)} as the refusals name them: --flag=old -> new, ... (values
  shell-quoted: a path with a space reads as one; --mixed_precision's are words, with
  what auto resolved to: auto (mixed_bfloat16))."""
  q = lambda k, v: as_text(v) if k == "mixed_precision" else shlex.quote(as_text(v))
  return ", ".join(f"--{k}={q(k, old)} -> {q(k, new)}" for k, (old, new) in changes.items())


def recorded_precision(recorded: dict, auto: str) -> str:
  """The policy the recorded run trains in: flags.json's PRECISION, else (a record from
  before it) its --mixed_precision, auto resolving to `auto` as it would here; a record
  older than the flag trained in float32."""
  text = recorded.get("mixed_precision", "float32")
  return recorded.get(PRECISION) or (auto if text == "auto" else text)


def _precision_change(recorded: dict, text: str, auto: str) -> tuple[str, str] | None:
  """(recorded, current) --mixed_precision when the policies they resolve to differ, an
  auto with its policy (auto (mixed_bfloat16)); None when they are one (float32 and an
  auto that resolves to it are the same run)."""
  old, new = recorded_precision(recorded, auto), auto if text == "auto" else text
  if old == new:
    return None
  return _shown(recorded.get("mixed_precision", "float32"), old), _shown(text, new)


def _shown(text: str, policy: str, where: str = "") -> str:
  """A --mixed_precision value as a change names it: auto with its policy (and where)."""
  return f"auto ({' '.join(filter(None, (policy, where)))})" if text == "auto" else text


def _same(name: str, a, b) -> bool:
  """Equal values, or values of one meaning (options.normalized)."""
  as_json = lambda v: json.dumps(v, sort_keys=True, default=str)
  return as_json(a) == as_json(b) or normalized(name, a) == normalized(name, b)


def differences(recorded: dict, current: dict, auto: str | None = None) -> dict[str, tuple]:
  """{flag: (recorded, current)} of tapeloop's flags whose meaning differs; a flag absent
  from an older record has its default. --schedule_steps and --restart_learning_rate not
  given are inherited, no change. --mixed_precision by the policies it resolves to, auto
  resolving to `auto` here; auto None: not compared (check_precision compares it once
  the devices are known)."""
  changed = {}
  for name in declared.NAMES:
    old, new = recorded.get(name, declared.BY_NAME[name].default), current[name]
    if name in _INHERITED and new is None:
      continue  # inherited (check, restart)
    if name == "mixed_precision":
      change = auto and _precision_change(recorded, new, auto)
      if change:
        changed[name] = change
      continue
    if not _same(name, old, new):
      changed[name] = (old, new)
  return changed


def check(config: Config, recorded: dict | None) -> dict:
  """Refuses a rerun that changes what is trained (ConfigError naming every such flag);
  returns the changes to record (those allowed by --allow_changed_flags, and of the run's
  length) as {flag: (old, new)}. Changes of how it runs are logged. --mixed_precision is
  compared as resolved, once the devices are known (check_precision, from planning)."""
  if recorded is None:
    return {}
  changed = differences(recorded, config.flag_values)
  how = {k: v for k, v in changed.items() if k in declared.HOW_IT_RUNS}
  length = {k: v for k, v in changed.items() if k in declared.RUN_LENGTH}
  what = {k: v for k, v in changed.items() if k not in how and k not in length}
  refused = {k: v for k, v in what.items() if k not in config.allow_changed_flags}
  if refused:
    raise ConfigError(
        f"{flag_arg('model_dir', config.model_dir)} holds a run started with other flags: "
        f"{listed(refused)}; these change what is trained: use a new --model_dir, or continue "
        f"this run with --allow_changed_flags={','.join(refused)}")
  for name, (old, new) in how.items():
    logging.info("rerun with --%s=%s (was %s): changes how the run runs, not what it trains",
                 name, as_text(new), as_text(old))
  for name, (old, new) in what.items():
    logging.warning("--%s changed from %s to %s (--allow_changed_flags): continuing the run "
                    "with it; recorded in %s", name, as_text(old), as_text(new), CHANGES)
  return {**what, **length}


def check_precision(config: Config, recorded: dict | None, policy: str, auto: str) -> dict:
  """Refuses a rerun whose --mixed_precision resolves to another policy than the run
  trains in (policy: this one's; auto: what auto resolves to here), naming both the text
  and what auto resolved to, unless --allow_changed_flags names it; returns the change to
  record. An explicit policy and an auto that resolves to it are the same run."""
  change = recorded and _precision_change(recorded, config.mixed_precision, auto)
  if not change:
    return {}
  old = recorded_precision(recorded, auto)
  was = recorded.get("mixed_precision", "float32")
  shown = (f"--mixed_precision={_shown(was, old, 'at its start')} -> "
           f"{_shown(config.mixed_precision, policy, 'here')}")
  if "mixed_precision" not in config.allow_changed_flags:
    raise ConfigError(
        f"{flag_arg('model_dir', config.model_dir)} holds a run trained in {old}: {shown}; "
        f"this changes what is trained: rerun with --mixed_precision={old}, use a new "
        f"--model_dir, or continue this run in {policy} with "
        "--allow_changed_flags=mixed_precision")
  logging.warning("%s (--allow_changed_flags): continuing the run in %s; recorded in %s",
                  shown, policy, CHANGES)
  return {"mixed_precision": change}


def horizon(config: Config, recorded: dict | None, steps_per_epoch: int,
            total_steps: int) -> int:
  """The schedule's horizon: --schedule_steps, else the recorded one, else (a run made
  before it was recorded) the length it was started with, else this run's length."""
  if config.schedule_steps is not None:
    return config.schedule_steps
  if recorded is None:
    return total_steps
  if recorded.get("schedule_steps") is not None:
    return recorded["schedule_steps"]
  return recorded_length(recorded, steps_per_epoch)


def recorded_length(recorded: dict, steps_per_epoch: int) -> int:
  """The steps the recorded run was to train (its --train_steps, else its --epochs)."""
  return recorded.get("train_steps") or steps_per_epoch * (recorded.get("epochs") or 1)


def _kept_restarts(config: Config, recorded: dict) -> tuple[optimization.Restart, ...]:
  """The warm restarts flags.json records (RESTART), in order; ConfigError when damaged."""
  try:
    kept = tuple(optimization.Restart.from_record(r) for r in recorded.get(RESTART) or ())
  except (KeyError, TypeError, ValueError, AttributeError):
    kept = None
  if kept is None or any(a.end > b.step for a, b in zip(kept, kept[1:])):
    record = shlex.quote(run_files.path(config.model_dir, run_files.RECORD))
    raise ConfigError(f"{record}: its {RESTART} is damaged; restore the file, or use a new "
                      "--model_dir")
  return kept


def restarts(config: Config, recorded: dict | None, steps_per_epoch: int,
             total_steps: int) -> tuple[optimization.Restart, ...]:
  """The run's warm restarts: the recorded ones, and a new one after them when this rerun
  extends the run with --restart_learning_rate (from the step the run was to end at, over
  the added steps). Every one is kept: a run killed inside a restart and then extended
  again trains that restart's remaining steps at its rates, not the rate it replaced.
  ConfigError for --restart_learning_rate without an extension."""
  asked = config.restart_learning_rate
  if recorded is None:
    if asked is not None:
      raise ConfigError("--restart_learning_rate restarts the schedule of a run being "
                        "extended; a new run starts at --learning_rate: drop it")
    return ()
  kept = _kept_restarts(config, recorded)
  old_total = recorded_length(recorded, steps_per_epoch)
  if asked is None:
    return kept
  if total_steps > old_total:
    if config.lr_schedule not in optimization.RESTARTABLE:
      raise ConfigError("--restart_learning_rate restarts a cosine, one_cycle or exponential "
                        f"schedule, not --lr_schedule={config.lr_schedule}: drop it")
    if asked <= config.final_learning_rate:
      raise ConfigError(f"--restart_learning_rate={asked:g} must be above "
                        f"--final_learning_rate={config.final_learning_rate:g}, where it "
                        "decays to")
    return (*kept, optimization.Restart(old_total, total_steps, asked))
  if kept and _same("restart_learning_rate", kept[-1].peak, asked):
    return kept  # the same command again: resumes the last restart
  raise ConfigError(f"--restart_learning_rate={asked:g} restarts the schedule over the steps "
                    f"an extension adds: give it with a larger --epochs or --train_steps than "
                    f"the run's {old_total} steps")


def check_extension(config: Config, recorded: dict | None, schedule: optimization.Schedule,
                    steps_per_epoch: int, total_steps: int) -> None:
  """Refuses an extension whose added steps past the schedule's end would train at a rate
  that has decayed to 0 or nearly (nothing would be optimized), naming a way that trains."""
  if recorded is None:
    return
  old_total = recorded_length(recorded, steps_per_epoch)
  if total_steps <= max(old_total, schedule.end) or not schedule.decayed():
    return
  where = (f"its warm restart ends at step {schedule.end}" if schedule.restart else
           f"its {config.lr_schedule} schedule ends at step {schedule.end}")
  if config.lr_schedule in optimization.RESTARTABLE:
    peak = schedule.restart.peak if schedule.restart else config.learning_rate
    fix = (f"restart the schedule over the added steps with --restart_learning_rate={peak:g} "
           "(or lower), or decay over the longer run with "
           f"--schedule_steps={total_steps} --allow_changed_flags=schedule_steps")
  else:
    fix = "use a new --model_dir, or change the schedule with --allow_changed_flags"
  raise ConfigError(
      f"{flag_arg('model_dir', config.model_dir)}: {where}, at rate "
      f"{schedule.final_rate():g}; steps {max(old_total, schedule.end) + 1} to {total_steps} "
      f"would train at it and optimize nothing: {fix}")


def check_pipeline(config: Config, recorded: dict | None, data) -> None:
  """Refuses a rerun whose input pipeline would feed the examples in another order than
  the run was trained with (a TFDS dataset streamed, then in memory, or back)."""
  old = (recorded or {}).get(PIPELINE)
  new = data.pipeline
  if old is None or old == new:
    return
  if ({old, new} <= set(_SAME_ORDER)) or config.dataset.startswith("folder:"):
    logging.info("input pipeline %s, was %s: the same batches in the same order", new, old)
    return
  raise ConfigError(
      f"{flag_arg('model_dir', config.model_dir)} was trained reading its data {old}; this "
      f"rerun would read it {new} ({data.reason}), in another order: rerun with --pipeline={old}, "
      "or use a new --model_dir")


def schedule(config: Config, recorded: dict | None, steps_per_epoch: int, total_steps: int,
             data, training: bool = True) -> optimization.Schedule:
  """The schedule the run trains on, with its recorded horizon and warm restarts. For a
  run that trains, also refused here: its data read in another order than recorded, a new
  run's warm-up past its schedule, an extension that would train at a decayed rate. (A
  recorded run's warm-up is what its checkpoints were trained on: evaluated and extended
  as it is.)"""
  if training:
    check_pipeline(config, recorded, data)
  made = optimization.Schedule.of(
      config, total_steps, horizon(config, recorded, steps_per_epoch, total_steps),
      restarts(config, recorded, steps_per_epoch, total_steps))
  if training and recorded is None:
    made.check_warmup()
  if training:
    check_extension(config, recorded, made, steps_per_epoch, total_steps)
  return made


def check_length(config: Config, step: int, total_steps: int) -> None:
  """A run already trained past the requested length cannot be shortened: its weights
  would be reported under flags that did not make them."""
  if step > total_steps:
    asked = (f"--train_steps={config.train_steps}" if config.train_steps
             else f"--epochs={config.epochs or 1}")
    raise ConfigError(
        f"{flag_arg('model_dir', config.model_dir)} is already trained to step {step}; "
        f"{asked} ends at step {total_steps}: use a new --model_dir for a shorter run, or "
        f"evaluate this one with python -m trainer.evaluate "
        f"{flag_arg('model_dir', config.model_dir)}")


def write(config: Config, recorded: dict | None, history: list[dict], changes: dict,
          step: int, plan, pipeline: str) -> list[dict]:
  """Records the run's flags (with the schedule's horizon), input pipeline and precision
  policy at its first start, and any allowed change, extension or warm restart after it
  (plan: planning.Plan) on the changes recorded so far (history, run_files.read_changes);
  returns the recorded changes (for results.json)."""
  model_dir, total_steps, horizon = config.model_dir, plan.total_steps, plan.horizon
  history = list(history)
  if recorded is None or not run_files.has_record(model_dir):
    run_files.write_record(model_dir, {**config.flag_values, "schedule_steps": horizon,
                                       PIPELINE: pipeline, PRECISION: plan.precision})
  if recorded is not None and PRECISION not in recorded and not changes:
    # A record from before PRECISION: its policy fixed now, as a new run's is at its start.
    run_files.write_record(model_dir, {**recorded, PRECISION: plan.precision})
  if recorded is None or not changes:
    return history
  lengths = {k: v for k, v in changes.items() if k in declared.RUN_LENGTH}
  entry = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "total_steps": total_steps,
           "changed": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}}
  record = {**recorded, **{k: config.flag_values[k] for k in changes},
            PRECISION: plan.precision}  # the run's policy (check_precision: kept or allowed)
  restart = plan.restarts[-1] if plan.restarts else None
  new_restart = len(plan.restarts) > len(recorded.get(RESTART) or ())
  if new_restart:
    entry["restart"] = restart.as_record()
    record[RESTART] = [r.as_record() for r in plan.restarts]
  if lengths:
    logging.info("the run continues to step %d (%s); the learning-rate schedule keeps its "
                 "horizon of %d steps", total_steps,
                 ", ".join(f"--{k}={as_text(new)}, was {as_text(old)}" for k, (old, new)
                           in lengths.items() if k != "restart_learning_rate"), horizon)
    schedule = optimization.Schedule.of(config, total_steps, horizon, plan.restarts)
    final = schedule.final_rate()
    if new_restart:
      logging.info("warm restart (--restart_learning_rate): from step %d the rate starts "
                   "again at %g and decays to %g at step %d", restart.step, restart.peak,
                   final, restart.end)
    elif total_steps > schedule.end and final is not None and config.lr_schedule != "constant":
      restart_too = ("--restart_learning_rate=R (a new schedule over the added steps), or "
                     if config.lr_schedule in optimization.RESTARTABLE else "")
      logging.warning(
          "steps %d to %d are past the %s schedule's end (step %d): they train at its "
          "final rate, %g; to decay over the longer run instead, give %s--schedule_steps=%d "
          "--allow_changed_flags=schedule_steps", schedule.end + 1, total_steps,
          config.lr_schedule, schedule.end, final, restart_too, total_steps)
  history.append(entry)
  run_files.write_changes(model_dir, history)
  run_files.write_record(model_dir, record)
  return history
