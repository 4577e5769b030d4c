"""The Optuna trial a tuner (trainer.tune) runs this training process for.

Each eval reports its metric to the trial. When the study's pruner says the trial is
hopeless, training stops at that boundary with a Stop of kind PRUNED, its checkpoint
saved (the Checkpoint action runs on any stop); the run records `pruned_at_step` from
that kind, and the tuner then marks the trial pruned. The tuner hands the trial over in
the environment (TAPELOOP_TRIAL), not as a flag: it is not part of what the run trains
(its flags.json and the rerun rule stay those of an ordinary run, and a rerun by hand
trains on to the end), and a database URL with a password stays off the command line and
out of the run's record. trainer.main reads it (actions()) and hands the run the report
as one more action: the run itself knows nothing of tuning.

Optuna is the optional `tune` extra: only the tuning modules import it (this one,
study.py and tune.py), each inside the function that needs it, so that a run without a
tuner, and every --help, works without it installed and never pays for its import.
"""

from __future__ import annotations

import json
import os
import warnings

from absl import logging

from trainer.outer.actions import Action, ENDED, PRUNED, Stop
from trainer.process.errors import ConfigError
from trainer.tuning.tune_choices import OBJECTIVES, PRUNERS

ENV = "TAPELOOP_TRIAL"
_FIELDS = ("storage", "study", "trial_id", "number", "objective", "pruner", "startup_trials")


def environment(*, storage: str, study: str, trial_id: int, number: int, objective: str,
                pruner: str, startup_trials: int) -> dict[str, str]:
  """The environment entry that makes a trainer.main process report to the trial."""
  return {ENV: json.dumps({"storage": storage, "study": study, "trial_id": trial_id,
                           "number": number, "objective": objective, "pruner": pruner,
                           "startup_trials": startup_trials})}


def database_url(url: str) -> str:
  """The SQLAlchemy URL of a --storage: postgresql:// means psycopg 3 (the `tune` extra's
  driver; SQLAlchemy 2.0 would look for psycopg2)."""
  if url.startswith("postgresql://"):
    return "postgresql+psycopg://" + url[len("postgresql://"):]
  return url


def open_storage(url: str, **heartbeat):
  """Optuna's database storage of `url`, as the tuner and its trainers open it: SQLite
  waits for another process's write lock instead of failing after 5 s; database_url.
  heartbeat: RDBStorage's heartbeat arguments (the tuner's)."""
  import optuna  # pylint: disable=g-import-not-at-top  (an optional dependency)
  return optuna.storages.RDBStorage(database_url(url), engine_kwargs=engine_options(url),
                                    **heartbeat)


def engine_options(url: str) -> dict:
  """SQLAlchemy's create_engine options for a --storage, as the tuner opens it."""
  url = database_url(url)
  return ({"connect_args": {"timeout": 60}} if url.startswith("sqlite") else
          {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
          if url.startswith("postgresql") else {"pool_pre_ping": True})


def pruner(name: str, startup_trials: int):
  """The Optuna pruner of --pruner. The storage does not keep a study's pruner: the
  process that asks should_prune (the trainer) builds it from this."""
  import optuna  # pylint: disable=g-import-not-at-top  (the tune extra's)
  if name == "median":  # a trial below the median of the others at the same step
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)
  if name == "hyperband":  # successive halving in brackets, over the steps trained
    return optuna.pruners.HyperbandPruner(min_resource=1)
  return optuna.pruners.NopPruner()


def from_environment() -> dict | None:
  """The trial this process trains for (environment()'s fields), or None."""
  text = os.environ.get(ENV)
  if not text:
    return None
  try:
    spec = json.loads(text)
    if spec["objective"] not in OBJECTIVES or spec["pruner"] not in PRUNERS:
      raise ValueError(spec)
    return {k: spec[k] for k in _FIELDS}
  except (ValueError, KeyError, TypeError):
    raise ConfigError(f"{ENV} is not what trainer.tune sets: unset it to train without "
                      "a tuner") from None


def actions(config) -> list[Action]:
  """What a tuner's trial adds to a run of `config` (trainer.main's): its report, or
  nothing without TAPELOOP_TRIAL. A config no trial takes is refused here, before the run."""
  spec = from_environment()
  if spec is None:
    return []
  check_config(config)
  return [ReportToTrial(spec)]


def check_config(config) -> None:
  """What a trial refuses before its data (the tuner asks it of every value up front): a
  trial is one process on one machine, and a cluster's other workers never come."""
  if config.strategy == "multi_worker":
    raise ConfigError("--strategy=multi_worker: a tuning trial is one process on one "
                      "machine: use --strategy=auto or mirrored (its GPUs), and a tuner on "
                      "each machine with one --storage for more")


def check_eval_split(eval_split: str | None) -> None:
  """A trial's objective is the validation split's figure, never the test split's."""
  if eval_split != "validation":
    raise ConfigError("a tuning trial needs a held-out validation split (its objective is "
                      "never the test split): add --validation_split=0.1 to the flags")


class ReportToTrial(Action):
  """After each eval: its metric to the trial at the step; a Stop of kind PRUNED when the
  pruner prunes (the run records the step: results.json's pruned_at_step, TensorBoard's).
  The last step's eval is reported but never pruned: the trial is done. A trial another
  tuner finished stops training (checkpoint saved); a storage error skips that report with
  a warning rather than failing a run whose checkpoint is intact. Run it after the eval
  (it reads Boundary.eval) and before the checkpoint, which a stop saves."""

  completes_interrupted = True  # an eval completed on resume is reported too

  def __init__(self, spec: dict):
    self.spec, self.trial = spec, None

  def check(self, plan):
    check_eval_split(plan.eval_split)

  def start(self, step):
    import optuna  # pylint: disable=g-import-not-at-top  (an optional dependency)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
      study = optuna.load_study(study_name=self.spec["study"],
                                storage=open_storage(self.spec["storage"]),
                                pruner=pruner(self.spec["pruner"],
                                              self.spec["startup_trials"]))
    except Exception as e:  # pylint: disable=broad-except  (any storage's error)
      raise ConfigError(f"the tuner's study {self.spec['study']!r} cannot be opened: "
                        f"{str(e).strip().splitlines()[0][:160]}") from None
    self.trial = optuna.trial.Trial(study, self.spec["trial_id"])

  def __call__(self, b):
    if b.eval is None or self.trial is None:
      return
    import optuna  # pylint: disable=g-import-not-at-top  (the tune extra's)
    number, value = self.spec["number"], float(getattr(b.eval, self.spec["objective"]))
    try:
      self.trial.report(value, b.step)
      prune = not b.last and self.trial.should_prune()
    except optuna.exceptions.UpdateFinishedTrialError:
      b.stop = Stop(f"trial {number} was finished by another tuner", ENDED)
      return
    except Exception as e:  # pylint: disable=broad-except  (a database blip)
      logging.warning("trial %d: the eval of step %d was not reported: %s", number, b.step,
                      str(e).strip().splitlines()[0][:160])
      return
    if not prune:
      return
    logging.info("trial %d: pruned at step %d (eval %s %.4f)", number, b.step,
                 self.spec["objective"], value)
    b.stop = Stop(f"trial {number} of study {self.spec['study']} pruned by the tuner",
                  PRUNED)
