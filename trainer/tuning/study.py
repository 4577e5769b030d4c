"""A tuner process on an Optuna study (trainer.tune): the storage, the study and its
sampler, the loop that takes trials (and those whose tuner died) under a lock, and each
trial run as trainer.main in its model_dir, reporting to the trial (trainer/tuning/trial.py)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import signal
import socket
import time

import tensorflow as tf

from trainer.options.values import flag_arg
from trainer.process.errors import UsageError
from trainer.run import child_runs, dry_run, planning, run_files, run_record
from trainer.tuning.liveness import Heartbeat, StudyLock, alive
from trainer.tuning.search import Search
from trainer.tuning.trial import database_url, engine_options, environment, open_storage, pruner
from trainer.tuning.tune_choices import OBJECTIVES

# A trial whose trainer was killed (kill -9, the out-of-memory killer) is retried from its
# checkpoint this many times; killed once more, it fails.
KILL_RETRIES = 2


def hidden(url: str) -> str:
  """The storage URL without its password, for messages and files."""
  try:
    import sqlalchemy  # pylint: disable=g-import-not-at-top  (the tune extra's)
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
  except Exception:  # pylint: disable=broad-except  (not a URL SQLAlchemy reads)
    url = re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"(password=)[^&]*", r"\1***", url)


def first_line(error: BaseException) -> str:
  text = str(error).strip() or type(error).__name__
  return text.splitlines()[0][:200]


@dataclasses.dataclass
class Settings:
  """What a tuner process was asked for (the command line, checked)."""
  root: str
  storage: str
  study: str
  searches: list[Search]
  base: list[str]
  trials: int
  sampler: str = "tpe"
  pruner: str = "median"
  objective: str = "accuracy"
  startup_trials: int = 5
  seed: int | None = None
  heartbeat_seconds: int = 30

  @property
  def embedded(self) -> bool:
    """The study is a SQLite file in the root (the default): its tuners share a machine."""
    return self.storage.startswith("sqlite:///" + self.root)


def study_definition(s: Settings) -> dict:
  """What the study tunes: the trial flags (an auto precision with the policy it means on
  the machine that defines the study: a tuner on another CPU then sees the change), the
  search and the objective."""
  flags = child_runs.flags_for([*s.base, "--model_dir=/unused"]) or {}
  if flags.get("mixed_precision") == "auto":
    flags[run_files.PRECISION] = planning.auto_precision(flags.get("model"))[0]
  return {"flags": flags, "search": [x.spec for x in s.searches], "objective": s.objective}


def refusal(s: Settings, trials, recorded: dict, definition: dict) -> tuple[str | None, bool]:
  """(why a study recorded with `recorded` refuses `definition`, or None; whether it
  takes the new definition instead). Another study under this name: other trial flags by
  the rerun rule of a run (run_record: what is trained and the run's length; not how it
  runs, whose paths differ between machines), another search or objective. A study none
  of whose trials got past its input trained nothing (Tuner._failed_on_input): it takes
  the new one. A trial handed back (its tuner died or was stopped, its trainer killed)
  may have trained for hours: it holds the definition."""
  changed = []
  diff = child_runs.changed_flags(recorded.get("flags") or {}, definition["flags"])
  if diff:
    changed.append("flags (" + run_record.listed(diff) + ")")
  changed += [k for k in ("search", "objective") if recorded.get(k) != definition[k]]
  if not changed:
    return None, False
  if trials and all(Tuner._failed_on_input(t) for t in trials):  # pylint: disable=protected-access
    return None, True
  return (f"study {s.study!r} in {shlex.quote(hidden(s.storage))} was started with other "
          f"{'; '.join(changed)}: use a new --root (nothing was changed)"), False


def _driver_missing(s: Settings) -> UsageError:
  return UsageError(f"{flag_arg('storage', hidden(s.storage))}: its database driver is not "
                    "installed: pip install -e '.[tune]' (psycopg for PostgreSQL)")


def check_study(s: Settings) -> str:
  """trainer.tune --dry_run's look at the study, reading only: the storage opened without
  creating its tables, the study under its name checked as Tuner checks it. Raises what
  the run would; returns what it would do with the study."""
  import optuna  # pylint: disable=g-import-not-at-top  (the tune extra's)
  import sqlalchemy  # pylint: disable=g-import-not-at-top  (Optuna's)
  where = f"study {shlex.quote(s.study)} in {shlex.quote(hidden(s.storage))}"
  if s.storage.startswith("sqlite:///") and not os.path.exists(
      s.storage[len("sqlite:///"):].partition("?")[0]):  # connecting would create it
    return f"a new {where}"
  try:
    engine = sqlalchemy.create_engine(database_url(s.storage),
                                      **engine_options(s.storage))
    try:
      with engine.connect() as connection:
        tables = sqlalchemy.inspect(connection).has_table("studies")
    finally:
      engine.dispose()
    if not tables:
      return f"a new {where}"
    storage = open_storage(s.storage, skip_table_creation=True)
    study = optuna.load_study(study_name=s.study, storage=storage)
  except ImportError:
    raise _driver_missing(s) from None
  except KeyError:  # no study of that name
    return f"a new {where}"
  except Exception as e:  # pylint: disable=broad-except  (any database's error)
    raise UsageError(f"{flag_arg('storage', hidden(s.storage))}: cannot open it: "
                     f"{first_line(e)}") from None
  trials = study.get_trials(deepcopy=False)
  recorded = study.user_attrs.get("definition")
  error, supersede = (None, False) if recorded is None else refusal(
      s, trials, recorded, study_definition(s))
  if error:
    raise UsageError(error)
  if supersede:
    return f"the {where}, whose trials so far got past no input: it would tune these flags"
  return f"the {where}, {len(trials)} trial(s) so far"


class Tuner:
  """One tuner process on a study: takes trials until the study has its --trials, then
  waits for the other processes' running trials (taking up any whose tuner died)."""

  def __init__(self, settings: Settings):
    import optuna  # pylint: disable=g-import-not-at-top  (the tune extra's)
    self.s, self.optuna = settings, optuna
    self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
        inherit_intermediate_values=True)
    self.storage = self._storage()
    self.study = self._study()
    self.lock = StudyLock(settings)

  def _storage(self):
    s = self.s
    for attempt in range(3):  # tuners started at once race to create the tables
      try:
        return open_storage(
            s.storage, heartbeat_interval=s.heartbeat_seconds,
            grace_period=2 * s.heartbeat_seconds, heartbeat_stale_trial_callback=self.retry)
      except ImportError:  # Optuna's wording of a missing database driver
        raise _driver_missing(s) from None
      except Exception as e:  # pylint: disable=broad-except  (any database's error)
        if attempt == 2 or "already exists" not in str(e) and "duplicate" not in str(e):
          raise UsageError(f"{flag_arg('storage', hidden(s.storage))}: cannot open it: "
                          f"{first_line(e)}") from None
        time.sleep(1 + attempt)
    raise AssertionError("unreachable")

  def _check_definition(self, study, recorded: dict, definition: dict) -> None:
    """Refuses another study under this name (refusal()); a study that trained nothing
    takes the new definition, its trials so far left out of the table."""
    trials = study.get_trials(deepcopy=False)
    error, supersede = refusal(self.s, trials, recorded, definition)
    if error:
      raise UsageError(error)
    if supersede:
      study.set_user_attr("definition", definition)
      study.set_user_attr("superseded", [t.number for t in trials])
      print(f"study {shlex.quote(self.s.study)}: no trial got past its input; it tunes "
            "these flags now", flush=True)

  def _study(self):
    s, optuna = self.s, self.optuna
    samplers = {"tpe": lambda seed: optuna.samplers.TPESampler(
                    seed=seed, n_startup_trials=s.startup_trials),
                "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
                # A grid trial records its point as an index into the grid's order, which
                # GridSampler shuffles by its seed: every process must use one seed.
                "grid": lambda _: _Grid({x.name: x.grid() for x in s.searches},
                                        seed=s.seed or 0)}

    class _Grid(optuna.samplers.GridSampler):
      """GridSampler without its stop of Study.optimize once the grid is done, which
      raises outside optimize: the tuner asks is_exhausted itself."""

      def after_trial(self, study, trial, state, values):
        del study, trial, state, values
    study = optuna.create_study(
        storage=self.storage, study_name=s.study, load_if_exists=True,
        direction=OBJECTIVES[s.objective],
        pruner=pruner(s.pruner, s.startup_trials))
    definition = study_definition(self.s)
    recorded = study.user_attrs.get("definition")
    if recorded is None:
      study.set_user_attr("definition", definition)
    else:
      self._check_definition(study, recorded, definition)
    # Each process its own stream of draws: tuners started with one --seed would draw the
    # same values. One tuner from an empty study is reproducible.
    seed = None if s.seed is None else s.seed + len(study.get_trials(deepcopy=False))
    study.sampler = samplers[s.sampler](seed)
    return study

  # --- the loop ---

  def run(self) -> None:
    states = self.optuna.trial.TrialState
    shown = None
    while True:
      # One tuner at a time takes up dead trials, counts and asks: else two could resume
      # one trial (SQLite ignores row locks) or start more trials than --trials.
      with self.lock:
        self._take_up_dead()
        trials = self.study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == states.WAITING]
        used = [t for t in trials if t.state != states.WAITING and not self._handed_back(t)
                and not self._failed_on_input(t)]
        exhausted = self.s.sampler == "grid" and self.study.sampler.is_exhausted(self.study)
        full = not waiting and (len(used) >= self.s.trials or exhausted)
        trial = None if full else self._start(self.study.ask())
      if trial is None:
        running = [t.number for t in trials if t.state == states.RUNNING]
        if not running:
          return
        if running != shown:  # once per change: this looks every second
          print(f"waiting for trials {', '.join(map(str, running))} of other tuners",
                flush=True)
          shown = running
        time.sleep(1)  # the study's end is seen within a second of its last trial's
        continue
      self._run_one(*trial)

  @staticmethod
  def _handed_back(trial) -> bool:
    """A trial failed for its tuner's sake, not its own: a retry of it carries on."""
    return trial.state.name == "FAIL" and "error" not in trial.user_attrs

  @staticmethod
  def _failed_on_input(trial) -> bool:
    """A trial its trainer refused (exit 2: bad flags or data) before training, no
    checkpoint in its model_dir (which its earlier attempts share): it counts toward no
    --trials, and a study of only such trials may change its definition."""
    return (trial.state.name == "FAIL"
            and trial.user_attrs.get("error", "").startswith("exit 2:")
            and dry_run.latest_step(trial.user_attrs.get("model_dir") or "") is None)

  def superseded(self) -> set[int]:
    """Trials of an earlier definition of the study that no trial got past its input."""
    return set(self.study.user_attrs.get("superseded") or ())

  def _take_up_dead(self) -> None:
    """Trials whose tuner died go back to the queue, to resume from their checkpoints:
    those whose heartbeat went stale (any machine), and at once those of this machine
    whose tuner and trainer processes are both gone."""
    optuna = self.optuna
    optuna.storages.fail_stale_trials(self.study)
    host = socket.gethostname()
    for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
      attrs = trial.user_attrs
      if (attrs.get("host") == host and "pid" in attrs and not alive(attrs["pid"])
          and not alive(attrs.get("trainer_pid"))):
        if self._hand_back(trial._trial_id):  # pylint: disable=protected-access
          print(f"trial {trial.number}: its tuner (pid {attrs['pid']}) is gone; taken up "
                "again", flush=True)

  def _hand_back(self, trial_id: int) -> bool:
    """Fails the running trial and queues a retry of it (same values, its reports, its
    model_dir). False when another process got there first."""
    try:
      if not self.storage.set_trial_state_values(trial_id, self.optuna.trial.TrialState.FAIL):
        return False
    except self.optuna.exceptions.UpdateFinishedTrialError:
      return False
    self.retry(self.study, self.storage.get_trial(trial_id))
    return True

  def _start(self, trial):
    """Claims the asked trial (its heartbeat, this process, its model_dir: a retry keeps
    its own) and draws its values; returns (trial, model_dir, values, label)."""
    trial_id = trial._trial_id  # pylint: disable=protected-access
    try:
      self.storage.record_heartbeat(trial_id)  # from now on a dead tuner shows
      frozen = self.storage.get_trial(trial_id)
      history = self.retry.retry_history(frozen)
      model_dir = frozen.user_attrs.get("model_dir") if history else None
      model_dir = model_dir or os.path.join(self.s.root, f"trial-{trial.number:04d}")
      for key, value in {"host": socket.gethostname(), "pid": os.getpid(),
                         "trainer_pid": None, "model_dir": model_dir}.items():
        trial.set_user_attr(key, value)
      values = {x.name: x.suggest(trial) for x in self.s.searches}
    except BaseException:
      self._hand_back(trial_id)
      raise
    label = f"trial {trial.number}" + (
        f" (resumes {os.path.basename(model_dir)})" if history else "")
    return trial, model_dir, values, label

  def _run_one(self, trial, model_dir: str, values: dict, label: str) -> None:
    s, optuna = self.s, self.optuna
    trial_id = trial._trial_id  # pylint: disable=protected-access
    print(f"start  {label}: " + " ".join(shlex.quote(f"--{k}={v}") for k, v in values.items()),
          flush=True)
    args = [*s.base, *(f"--{k}={v}" for k, v in values.items()), f"--model_dir={model_dir}"]
    env = environment(storage=s.storage, study=s.study, trial_id=trial_id,
                                     number=trial.number, objective=s.objective,
                                     pruner=s.pruner, startup_trials=s.startup_trials)
    try:
      tf.io.gfile.makedirs(model_dir)
      with Heartbeat(self.storage, trial_id, s.heartbeat_seconds):
        returncode, last = child_runs.run_trainer(
            model_dir, args, env, started=lambda pid: trial.set_user_attr("trainer_pid", pid))
    except BaseException:  # Ctrl-C, SIGTERM, a storage error: the trainer saved its checkpoint
      self._hand_back(trial_id)
      print(f"{label} handed back: a rerun resumes it", flush=True)
      raise
    results = child_runs.read_json(os.path.join(model_dir, "results.json")) or {}
    tell = lambda *a, **k: self.study.tell(trial, *a, skip_if_finished=True, **k)
    if returncode == 0 and "pruned_at_step" in results:
      tell(state=optuna.trial.TrialState.PRUNED)
      print(f"pruned {label} at step {results['pruned_at_step']}", flush=True)
      return
    value = results.get(f"validation_{s.objective}") if returncode == 0 else None
    if value is not None and math.isfinite(value):
      tell(value)
      print(f"done   {label}: validation {s.objective} {value:.4f}", flush=True)
      return
    # Killed (kill -9, the out-of-memory killer), or the trainer's own exit on SIGINT or
    # SIGTERM sent to it alone: either way its checkpoint is there to resume from.
    killed = child_runs.killed_by(returncode) or (
        f"stopped by {signal.Signals(returncode - 128).name}"
        if returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM) else None)
    if killed:
      kills = trial.user_attrs.get("kills", 0) + 1
      trial.set_user_attr("kills", kills)  # carried to its retry
      if kills <= KILL_RETRIES and self._hand_back(trial_id):
        print(f"{label}: its trainer was {killed}; retried from its checkpoint (retry "
              f"{kills} of {KILL_RETRIES})", flush=True)
        return
      error = f"its trainer was {killed}" + (f", {kills} times" if kills > 1 else "")
    else:
      error = last if returncode else "no validation figure in its results.json"
    log = shlex.quote(os.path.join(model_dir, "train.log"))
    trial.set_user_attr("error", f"exit {returncode}: {error}")
    tell(state=optuna.trial.TrialState.FAIL)
    print(f"failed {label}: exit {returncode}: {error} (its log: {log})", flush=True)
    if returncode == 2:  # bad flags or data: every trial would fail alike
      raise UsageError(f"{label}: {error} (its log: {log})")

