"""Tune a run's flags with Optuna: many trials, pruned early, on one machine or many.

    python -m trainer.tune --flagfile=configs/mlp_5x50.cfg --trials=30 --root=runs/tune \\
        --search=learning_rate=loguniform:1e-4:1e-2 --search=dropout=uniform:0:0.5 \\
        --search='hidden_units=choice:50|500|50,50,50' [-- --validation_split=0.1 ...]

Each trial is an ordinary run in ROOT/trial-NNNN (resumable, its flags recorded, its log in
train.log there). Its objective is the last eval on the held-out validation split (never
the test split), --objective=accuracy (maximized) or loss. Each eval reports to the trial
(trainer/trial.py); the --pruner stops hopeless trials at that boundary, checkpoint saved.

The study lives in ROOT/study.db (SQLite) unless --storage names a database that several
machines share (postgresql://user:password@host/db): every machine runs the same command
with the same --storage, --study and --root (a bucket), and takes the next trial; no
trial runs twice. A trial whose tuner died (kill -9, a preempted VM) is taken up again by
the next tuner to look, once its heartbeat is --heartbeat_seconds x 2 old (at once on the
machine that ran it, whose process list shows it gone), and resumes from its checkpoint.

At the end: a ranked table (the console and ROOT/results.md), the best trial's flags in
ROOT/best.cfg (python -m trainer.main --flagfile=ROOT/best.cfg reruns it), one HParams
experiment over all trials (tensorboard --logdir ROOT), and how to open the study in
optuna-dashboard. Distributions: uniform:LOW:HIGH, loguniform:LOW:HIGH, int:LOW:HIGH,
logint:LOW:HIGH, choice:A|B|C (a list-valued flag's value holds commas: 50,50|500).
Optuna (and psycopg for PostgreSQL) is the `tune` extra: pip install -e '.[tune]'.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
import zlib

from trainer import tf_env

tf_env.apply()  # before anything imports TensorFlow

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags as absl_flags
import tensorflow as tf

from trainer import child_runs, config, files, options, run_files
from trainer import flags as tl_flags
from trainer import trial as trial_env
from trainer.trial import PRUNERS
# pylint: enable=g-import-not-at-top,wrong-import-position

_DISTRIBUTIONS = ("uniform", "loguniform", "int", "logint", "choice")
SAMPLERS = ("tpe", "random", "grid")
STORAGE_ENV = "TAPELOOP_STORAGE"


class TuneError(ValueError):
  """Bad input to the tuner: exits 2 with this message."""


class Stopped(Exception):
  """The tuner got SIGTERM (a preempted VM): its trial is handed back, then it exits."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


@dataclasses.dataclass(frozen=True)
class Search:
  """One --search=NAME=DIST:ARGS: a trainer flag and the distribution of its values."""
  name: str
  dist: str
  low: float | None = None
  high: float | None = None
  choices: tuple[str, ...] = ()
  spec: str = ""  # as given, for messages

  def suggest(self, trial) -> str:
    """The trial's value of the flag, as flag text."""
    if self.dist == "choice":
      return trial.suggest_categorical(self.name, list(self.choices))
    if self.dist in ("int", "logint"):
      return str(trial.suggest_int(self.name, int(self.low), int(self.high),
                                   log=self.dist == "logint"))
    return _number(trial.suggest_float(self.name, self.low, self.high,
                                       log=self.dist == "loguniform"))

  def grid(self) -> list[str]:
    if self.dist == "choice":
      return list(self.choices)
    if self.dist == "int":
      return [str(v) for v in range(int(self.low), int(self.high) + 1)]
    raise TuneError(f"--search={self.spec}: --sampler=grid takes choice: or int: values")

  def extremes(self) -> list[str]:
    """The values that bound what a trial may get: each choice, or both ends."""
    if self.dist == "choice":
      return list(self.choices)
    if self.dist in ("int", "logint"):
      return [str(int(self.low)), str(int(self.high))]
    return [_number(self.low), _number(self.high)]


def _number(value: float) -> str:
  return repr(float(value)) if not float(value).is_integer() else str(float(value))


def parse_search(specs: list[str]) -> list[Search]:
  """--search values -> Search objects; one line naming the problem for a bad one."""
  tl_flags.define_flags()
  out, seen = [], set()
  for spec in specs:
    name, sep, rest = spec.partition("=")
    name = name.strip().lstrip("-")
    dist, colon, args = rest.partition(":")
    usage = (f"--search={spec}: expected NAME=DIST:ARGS, DIST one of "
             f"{', '.join(_DISTRIBUTIONS)} (e.g. learning_rate=loguniform:1e-4:1e-2, "
             "hidden_units=choice:50|500)")
    if not sep or not colon or dist not in _DISTRIBUTIONS or not args:
      raise TuneError(usage)
    if name not in tl_flags.OWN_FLAGS:
      raise TuneError(f"--search={spec}: --{name} is not a tapeloop flag (see python -m "
                      "trainer.main --help)")
    if name in seen or name in ("model_dir", "allow_changed_flags"):
      raise TuneError(f"--search={spec}: --{name} cannot be searched twice, nor model_dir")
    seen.add(name)
    kind = options.BY_NAME[name].kind
    if dist == "choice":
      choices = tuple(c.strip() for c in args.split("|") if c.strip())
      if not choices:
        raise TuneError(usage)
      search = Search(name, dist, choices=choices, spec=spec)
    else:
      if kind not in (int, float) or (kind is int and dist in ("uniform", "loguniform")):
        want = "int:/logint:/choice:" if kind is int else "choice:"
        raise TuneError(f"--search={spec}: --{name} takes {want} values")
      bounds = args.split(":")
      try:
        low, high = (float(b) for b in bounds)
      except ValueError:
        raise TuneError(usage) from None
      if len(bounds) != 2 or not low < high or (dist.startswith("log") and low <= 0):
        raise TuneError(f"--search={spec}: give LOW:HIGH with LOW < HIGH"
                        + (" and LOW > 0" if dist.startswith("log") else ""))
      if dist in ("int", "logint") and not (low.is_integer() and high.is_integer()):
        raise TuneError(f"--search={spec}: int bounds must be whole numbers")
      search = Search(name, dist, low, high, spec=spec)
    for value in search.extremes():
      try:
        absl_flags.FLAGS[name].parser.parse(value)
      except (ValueError, TypeError) as e:
        raise TuneError(f"--search={spec}: {value!r} is not a valid --{name}: {e}") from None
    out.append(search)
  if not out:
    raise TuneError("give at least one --search=NAME=DIST:ARGS")
  return out


def check_trial_flags(base: list[str], searches: list[Search]) -> None:
  """Every value a trial may get, with the base flags, as trainer.main checks them: a
  value no trial could run with is refused before any trial starts."""
  first = {s.name: s.extremes()[0] for s in searches}
  for search in searches:
    for value in search.extremes():
      values = {**first, search.name: value}
      try:
        with child_runs.FLAGS_LOCK:
          config.from_args([*base, *(f"--{k}={v}" for k, v in values.items())])
      except (config.ConfigError, absl_flags.Error, ValueError) as e:
        where = f"--search={search.spec}: with --{search.name}={value}" if len(
            search.extremes()) > 1 or len(searches) > 1 else "the trial flags"
        raise TuneError(f"{where}: {str(e).strip().splitlines()[0]}") from None


def hidden(url: str) -> str:
  """The storage URL without its password, for messages and files."""
  try:
    import sqlalchemy  # pylint: disable=g-import-not-at-top
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
  except Exception:  # pylint: disable=broad-except  (not a URL SQLAlchemy reads)
    url = re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"(password=)[^&]*", r"\1***", url)


def _first_line(error: BaseException) -> str:
  text = str(error).strip() or type(error).__name__
  return text.splitlines()[0][:200]


def _alive(pid) -> bool:
  if pid is None:
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return True
  return True


class _Heartbeat:
  """Records the trial's heartbeat in the storage every `interval` seconds while its trainer
  runs: a tuner that dies stops beating, and other tuners take the trial up."""

  def __init__(self, storage, trial_id: int, interval: float):
    self.storage, self.trial_id, self.interval = storage, trial_id, interval
    self.done = threading.Event()
    self.thread = threading.Thread(target=self._beat, daemon=True)

  def _beat(self):
    while True:
      try:
        self.storage.record_heartbeat(self.trial_id)
      except Exception:  # pylint: disable=broad-except  (a database blip: beat again later)
        pass
      if self.done.wait(self.interval):
        return

  def __enter__(self):
    self.thread.start()

  def __exit__(self, *exc):
    self.done.set()
    self.thread.join()


class _StudyLock:
  """Serializes the tuners of one study where their storage does not: an exclusive lock
  on ROOT/study.lock for the embedded SQLite study (its tuners share the machine), a
  PostgreSQL advisory lock for a shared one. Other databases rely on their row locks."""

  def __init__(self, settings):
    self.path = self.engine = None
    if settings.storage.startswith("sqlite:///" + settings.root):
      self.path = os.path.join(settings.root, "study.lock")
    elif settings.storage.startswith("postgresql"):
      import sqlalchemy  # pylint: disable=g-import-not-at-top  (the tune extra's)
      self.engine = sqlalchemy.create_engine(
          settings.storage.replace("postgresql://", "postgresql+psycopg://", 1),
          poolclass=sqlalchemy.pool.NullPool)
      self.key = zlib.crc32(settings.study.encode())
    self.held = None

  def __enter__(self):
    if self.path:
      self.held = open(self.path, "a")  # pylint: disable=consider-using-with
      fcntl.flock(self.held, fcntl.LOCK_EX)
    elif self.engine is not None:
      import sqlalchemy  # pylint: disable=g-import-not-at-top
      self.held = self.engine.connect()
      self.held.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})

  def __exit__(self, *exc):
    if self.held is None:
      return
    if self.path:
      fcntl.flock(self.held, fcntl.LOCK_UN)
    else:
      import sqlalchemy  # pylint: disable=g-import-not-at-top
      self.held.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
    self.held.close()
    self.held = None


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


class Tuner:
  """One tuner process on a study: takes trials until the study has its --trials, then
  waits for the other processes' running trials (taking up any whose tuner died)."""

  def __init__(self, settings: Settings):
    import optuna  # pylint: disable=g-import-not-at-top
    self.s, self.optuna, self.trial_env = settings, optuna, trial_env
    self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
        inherit_intermediate_values=True)
    self.storage = self._storage()
    self.study = self._study()
    self.lock = _StudyLock(settings)

  def _storage(self):
    s = self.s
    for attempt in range(3):  # tuners started at once race to create the tables
      try:
        return self.trial_env.open_storage(
            s.storage, heartbeat_interval=s.heartbeat_seconds,
            grace_period=2 * s.heartbeat_seconds, heartbeat_stale_trial_callback=self.retry)
      except ImportError:  # Optuna's wording of a missing database driver
        raise TuneError(f"--storage={hidden(s.storage)}: its database driver is not "
                        "installed: pip install -e '.[tune]' (psycopg for PostgreSQL)") from None
      except Exception as e:  # pylint: disable=broad-except  (any database's error)
        if attempt == 2 or "already exists" not in str(e) and "duplicate" not in str(e):
          raise TuneError(f"--storage={hidden(s.storage)}: cannot open it: "
                          f"{_first_line(e)}") from None
        time.sleep(1 + attempt)
    raise AssertionError("unreachable")

  def _definition(self) -> dict:
    """What the study tunes: the trial flags (what they train, not how they run: paths
    differ between machines), the search and the objective."""
    flags = child_runs.flags_for([*self.s.base, "--model_dir=/unused"]) or {}
    trained = {k: v for k, v in flags.items()
               if k not in options.HOW_IT_RUNS and k != "model_dir"}
    return {"flags": trained, "search": [x.spec for x in self.s.searches],
            "objective": self.s.objective}

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
        direction=self.trial_env.OBJECTIVES[s.objective],
        pruner=self.trial_env.pruner(s.pruner, s.startup_trials))
    definition = self._definition()
    recorded = study.user_attrs.get("definition")
    if recorded is None:
      study.set_user_attr("definition", definition)
    elif recorded != definition:
      changed = [k for k in definition if recorded.get(k) != definition[k]]
      if "flags" in changed:
        diff = child_runs.changed_flags(recorded["flags"], definition["flags"])
        changed[changed.index("flags")] = "flags " + ", ".join(
            f"--{k} {a} -> {b}" for k, (a, b) in sorted(diff.items()))
      raise TuneError(f"study {s.study!r} in {hidden(s.storage)} was started with other "
                      f"{'; '.join(changed)}: use a new --root (nothing was changed)")
    # Each process its own stream of draws: tuners started with one --seed would draw the
    # same values. One tuner from an empty study is reproducible.
    seed = None if s.seed is None else s.seed + len(study.get_trials(deepcopy=False))
    study.sampler = samplers[s.sampler](seed)
    return study

  # --- the loop ---

  def run(self) -> None:
    states = self.optuna.trial.TrialState
    while True:
      # One tuner at a time takes up dead trials, counts and asks: else two could resume
      # one trial (SQLite ignores row locks) or start more trials than --trials.
      with self.lock:
        self._take_up_dead()
        trials = self.study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == states.WAITING]
        used = [t for t in trials if t.state != states.WAITING and not self._handed_back(t)]
        exhausted = self.s.sampler == "grid" and self.study.sampler.is_exhausted(self.study)
        full = not waiting and (len(used) >= self.s.trials or exhausted)
        trial = None if full else self._start(self.study.ask())
      if trial is None:
        running = [t.number for t in trials if t.state == states.RUNNING]
        if not running:
          return
        print(f"waiting for trials {', '.join(map(str, running))} of other tuners",
              flush=True)
        time.sleep(min(self.s.heartbeat_seconds, 5))
        continue
      self._run_one(*trial)

  @staticmethod
  def _handed_back(trial) -> bool:
    """A trial failed for its tuner's sake, not its own: a retry of it carries on."""
    return trial.state.name == "FAIL" and "error" not in trial.user_attrs

  def _take_up_dead(self) -> None:
    """Trials whose tuner died go back to the queue, to resume from their checkpoints:
    those whose heartbeat went stale (any machine), and at once those of this machine
    whose tuner and trainer processes are both gone."""
    optuna = self.optuna
    optuna.storages.fail_stale_trials(self.study)
    host = socket.gethostname()
    for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
      attrs = trial.user_attrs
      if (attrs.get("host") == host and "pid" in attrs and not _alive(attrs["pid"])
          and not _alive(attrs.get("trainer_pid"))):
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
    print(f"start  {label}: " + " ".join(f"--{k}={v}" for k, v in values.items()), flush=True)
    args = [*s.base, *(f"--{k}={v}" for k, v in values.items()), f"--model_dir={model_dir}"]
    env = self.trial_env.environment(storage=s.storage, study=s.study, trial_id=trial_id,
                                     number=trial.number, objective=s.objective,
                                     pruner=s.pruner, startup_trials=s.startup_trials)
    try:
      tf.io.gfile.makedirs(model_dir)
      with _Heartbeat(self.storage, trial_id, s.heartbeat_seconds):
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
    error = (last if returncode else "no validation figure in its results.json")
    trial.set_user_attr("error", f"exit {returncode}: {error}")
    tell(state=optuna.trial.TrialState.FAIL)
    print(f"failed {label}: exit {returncode}: {error}", flush=True)
    if returncode == 2:  # bad flags or data: every trial would fail alike
      raise TuneError(f"{label}: {error} (its log: {model_dir}/train.log)")

  # --- what a person reads ---

  def rows(self) -> list[dict]:
    """One row per trial directory (a resumed trial once, as its last attempt), best first:
    complete trials by their objective, then pruned ones by their last report."""
    states = self.optuna.trial.TrialState
    rows = []
    for trial in self.study.get_trials(deepcopy=False):
      if trial.state == states.WAITING or self._handed_back(trial):
        continue
      model_dir = trial.user_attrs.get("model_dir", "")
      results = child_runs.read_json(os.path.join(model_dir, "results.json")) or {}
      last = (trial.intermediate_values[max(trial.intermediate_values)]
              if trial.intermediate_values else None)
      state = {states.COMPLETE: "complete", states.RUNNING: "running"}.get(
          trial.state, trial.state.name.lower())
      if trial.state == states.PRUNED:
        state = f"pruned at step {results.get('pruned_at_step', max(trial.intermediate_values or [0]))}"
      elif trial.state == states.FAIL:
        state = f"failed ({trial.user_attrs.get('error', '')})"
      rows.append({"trial": os.path.basename(model_dir) or f"#{trial.number}",
                   "number": trial.number, "state": state, "value": trial.value,
                   "last": last, "params": dict(trial.params), "results": results,
                   "pruned": trial.state == states.PRUNED,
                   "complete": trial.state == states.COMPLETE})
    sign = -1.0 if self.trial_env.OBJECTIVES[self.s.objective] == "maximize" else 1.0
    def rank(row):
      figure = row["value"] if row["complete"] else row["last"] if row["pruned"] else None
      group = 0 if row["complete"] else 1 if row["pruned"] else 2
      return (group, sign * figure if figure is not None else math.inf, row["number"])
    return sorted(rows, key=rank)

  def table(self, rows: list[dict]) -> str:
    names = [x.name for x in self.s.searches]
    figure = f"validation {self.s.objective}"
    lines = [f"| rank | trial | {figure} | " + " | ".join(names) + " | steps | train s | state |",
             "|---:|---|---:|" + "---|" * len(names) + "---:|---:|---|"]
    for i, row in enumerate(rows, 1):
      value = row["value"] if row["complete"] else row["last"]
      shown = "-" if value is None else f"{value:.4f}" + ("" if row["complete"] else " (last)")
      seconds = row["results"].get("train_seconds")
      lines.append(f"| {i} | {row['trial']} | {shown} | " + " | ".join(
          str(row["params"].get(n, "-")) for n in names) + f" | "
          f"{row['results'].get('global_step', '-')} | "
          f"{'-' if seconds is None else f'{seconds:.0f}'} | {row['state']} |")
    return "\n".join(lines)

  def saved_by_pruning(self, rows: list[dict]) -> tuple[float, float]:
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

  def report(self) -> tuple[str, dict | None]:
    """The ranked table (also ROOT/results.md), ROOT/best.cfg and the HParams experiment
    over all trials; returns the text and the best row."""
    rows = self.rows()
    counts = {k: sum(1 for r in rows if r["state"].startswith(k))
              for k in ("complete", "pruned", "failed", "running")}
    saved, spent = self.saved_by_pruning(rows)
    best = rows[0] if rows and rows[0]["complete"] and "flags" in rows[0]["results"] else None
    s = self.s
    text = [f"# Study {s.study} (python -m trainer.tune)", "",
            f"{len(rows)} trials: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n)
            + f". Objective: validation {s.objective}, "
            f"{self.trial_env.OBJECTIVES[s.objective]}d. Sampler {s.sampler}, pruner "
            f"{s.pruner}. Storage {hidden(s.storage)}.", ""]
    if spent:
      text += [f"Trials trained {spent:.0f} s in all. Pruning saved about {saved:.0f} s "
               f"({100 * saved / (saved + spent):.0f}% of running every trial to the end), "
               "from each pruned trial's steps to its schedule's end at its own speed.", ""]
    text.append(self.table(rows))
    if best is not None:
      text += ["", f"Best: {best['trial']}, validation {s.objective} {best['value']:.4f}. "
               f"Rerun it: python -m trainer.main --flagfile={os.path.join(s.root, 'best.cfg')} "
               "--model_dir=DIR"]
      files.write_text(os.path.join(s.root, "best.cfg"), best_flagfile(best, s))
    text = "\n".join(text) + "\n"
    files.write_text(os.path.join(s.root, "results.md"), text)
    child_runs.write_experiment(s.root, [(r["results"] or {}).get("flags") for r in rows
                                         if r["results"]])
    return text, best


def best_flagfile(best: dict, s: Settings) -> str:
  """The best trial's flags as a flagfile that reruns it as is: every flag it ran with that
  is not its default, but its model_dir."""
  flags = best["results"]["flags"]
  lines = [f"# trainer.tune's best trial of study {s.study}: {best['trial']}, validation "
           f"{s.objective} {best['value']:.4f} at step {best['results'].get('global_step')}.",
           "# python -m trainer.main --flagfile=THIS --model_dir=DIR reruns it."]
  for name in options.NAMES:
    value = flags.get(name)
    if name in ("model_dir", "allow_changed_flags") or value is None:
      continue
    if value == options.BY_NAME[name].default or (
        isinstance(value, list) and options.BY_NAME[name].default is not None
        and list(value) == list(options.BY_NAME[name].default)):
      continue
    if isinstance(value, bool):
      text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
      text = ",".join(str(v) for v in value)
    else:
      text = str(value)
    lines.append(f"--{name}={text}")
  return "\n".join(lines) + "\n"


def parse_args(argv) -> tuple[Settings, argparse.Namespace]:
  parser = argparse.ArgumentParser(prog="python -m trainer.tune",
                                   description=__doc__.split("\n\n")[0])
  add = parser.add_argument
  add("--flagfile", help="the trials' base flags (a trainer flagfile)")
  add("--search", action="append", default=[], metavar="NAME=DIST:ARGS",
      help="a flag and its distribution; repeat for more flags")
  add("--trials", type=int, default=None, help="trials in the study, over all tuner "
      "processes (default 20; with --sampler=grid, the grid's size)")
  add("--root", required=True, help="one model_dir per trial below it (a local directory "
      "or a bucket)")
  add("--study", help="the study's name in the storage (default: --root as given)")
  add("--storage", default=os.environ.get(STORAGE_ENV),
      help="a database URL several machines share, e.g. postgresql://user:password@host/db "
      f"(or in ${STORAGE_ENV}, off the command line; default: sqlite in ROOT/study.db)")
  add("--sampler", choices=SAMPLERS, default="tpe", help="tpe (default), random or grid")
  add("--pruner", choices=PRUNERS, default="median", help="median (default), hyperband or "
      "none")
  add("--objective", choices=("accuracy", "loss"), default="accuracy",
      help="the validation figure to maximize (accuracy) or minimize (loss)")
  add("--startup_trials", type=int, default=5, help="trials TPE draws at random, and "
      "that the median pruner waits for, before either acts")
  add("--seed", type=int, default=None, help="the sampler's seed (reproducible with one "
      "tuner process)")
  add("--heartbeat_seconds", type=int, default=30, help="a running trial's tuner beats "
      "this often; a trial silent for twice as long is taken up by another tuner")
  add("trainer_flags", nargs="*", help="after --: flags for every trial")
  args = parser.parse_args(argv)
  root = child_runs.resolve(args.root)
  flagfile = child_runs.resolve(args.flagfile)
  if flagfile and (not files.is_local(flagfile) or not os.path.isfile(flagfile)):
    raise TuneError(f"--flagfile={args.flagfile}: no such local file")
  for name in ("trials", "startup_trials", "heartbeat_seconds"):
    value = getattr(args, name)
    if value is not None and value < (0 if name == "startup_trials" else 1):
      raise TuneError(f"--{name}={value} must be positive")
  searches = parse_search(args.search)
  base = ([f"--flagfile={flagfile}"] if flagfile else []) + args.trainer_flags
  check_trial_flags(base, searches)
  try:
    run_files.check_checkpoint_path(root, "--root")
  except ValueError as e:
    raise TuneError(str(e)) from None
  storage = args.storage
  if storage is None:
    if not files.is_local(root):
      raise TuneError(f"--root={args.root} is not a local directory: give --storage=URL "
                      "(e.g. postgresql://user:password@host/db), which every tuner shares")
    storage = "sqlite:///" + os.path.join(root, "study.db")
  trials = args.trials
  if trials is None:
    trials = math.prod(len(x.grid()) for x in searches) if args.sampler == "grid" else 20
  if args.sampler == "grid":
    for x in searches:
      x.grid()  # refuses a continuous distribution
  study = args.study or root
  return Settings(root=root, storage=storage, study=study, searches=searches, base=base,
                  trials=trials, sampler=args.sampler, pruner=args.pruner,
                  objective=args.objective, startup_trials=args.startup_trials,
                  seed=args.seed, heartbeat_seconds=args.heartbeat_seconds), args


def _claim_root(s: Settings) -> None:
  """ROOT/tune.json names the study whose trials ROOT holds: another study (or the same
  name in another storage) would number its trials from 0 into the same directories."""
  path, mine = os.path.join(s.root, "tune.json"), {"study": s.study,
                                                    "storage": hidden(s.storage)}
  held = child_runs.read_json(path)
  if held is None:
    files.write_json(path, mine)
  elif held != mine:
    raise TuneError(f"--root={s.root} holds the trials of study {held.get('study')!r} in "
                    f"{held.get('storage')}: use a new --root for this one")


def _stop_on_sigterm(signum, frame):
  del frame
  raise Stopped(signum)


def main(argv=None) -> int:
  try:
    settings, _ = parse_args(argv)
    try:
      import optuna  # pylint: disable=g-import-not-at-top
    except ModuleNotFoundError:
      raise TuneError("trainer.tune needs Optuna: pip install -e '.[tune]' (make test "
                      "installs it)") from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Optuna's heartbeat is meant for Study.optimize; the tuner beats itself (_Heartbeat).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    embedded = settings.storage.startswith("sqlite:///" + settings.root)
    # A shared storage is opened first: a bad URL leaves no root behind. The embedded
    # one lives in the root.
    tuner = None if embedded else Tuner(settings)
    try:
      tf.io.gfile.makedirs(settings.root)
    except tf.errors.OpError as e:
      raise TuneError(f"--root={settings.root}: {_first_line(e)}") from None
    tuner = tuner or Tuner(settings)
    _claim_root(settings)
  except TuneError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"study {settings.study} in {hidden(settings.storage)}: {settings.trials} trials, "
        f"sampler {settings.sampler}, pruner {settings.pruner}; trials in {settings.root}",
        flush=True)
  previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
  status = 0
  try:
    tuner.run()
  except TuneError as e:
    print(f"error: {e}", file=sys.stderr)
    status = 2
  except (KeyboardInterrupt, Stopped) as e:
    signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
    print(f"stopped by {signal.Signals(signum).name}: run the same command again to go on",
          file=sys.stderr)
    status = 128 + signum
  except Exception as e:  # pylint: disable=broad-except  (the database, the filesystem)
    print(f"error: {type(e).__name__}: {hidden(_first_line(e))}: run the same command "
          "again to go on", file=sys.stderr)
    status = 1
  finally:
    signal.signal(signal.SIGTERM, previous)
  try:
    text, best = tuner.report()
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: no report: {hidden(_first_line(e))}", file=sys.stderr)
    return status or 1
  print(text, end="")
  print(f"compare the trials: tensorboard --logdir {settings.root} (HParams tab); the study: "
        f"pip install optuna-dashboard && optuna-dashboard {hidden(settings.storage)}")
  if status == 0 and best is None:
    print("error: no trial completed", file=sys.stderr)
    status = 1
  return status


def run():
  """Console script entry point (tapeloop-tune)."""
  sys.exit(main())


if __name__ == "__main__":
  run()
