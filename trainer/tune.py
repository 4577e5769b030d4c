"""Tune a run's flags with Optuna: many trials, pruned early, on one machine or many.

    python -m trainer.tune --flagfile=configs/fashion_mlp_5x50.cfg --trials=30 --root=runs/tune \\
        --search=learning_rate=loguniform:1e-4:1e-2 --search=dropout=uniform:0:0.5 \\
        --search='hidden_units=choice:50|500|50,50,50' [-- --validation_split=0.1 ...]

Each trial is an ordinary run in ROOT/trial-NNNN (resumable, its flags recorded, its log in
train.log there). Its objective is the last eval on the held-out validation split (never
the test split), --objective=accuracy (maximized) or loss. Each eval reports to the trial
(trainer/tuning/trial.py); the --pruner stops hopeless trials at that boundary, checkpoint saved.

The study lives in ROOT/study.db (SQLite) unless --storage names a database that several
machines share (postgresql://user:password@host/db): every machine runs the same command
with the same --storage, --study and --root (a bucket), and takes the next trial; no
trial runs twice. A trial whose tuner died (kill -9, a preempted VM) is taken up again by
the next tuner to look, once its heartbeat is --heartbeat_seconds x 2 old (at once on the
machine that ran it, whose process list shows it gone), and resumes from its checkpoint.
A trial whose trainer alone was killed (kill -9, the out-of-memory killer) is retried from
its checkpoint at once, twice at most (trainer/tuning/study.py's KILL_RETRIES).

At the end: a ranked table (the console and ROOT/results.md), the best trial's flags in
ROOT/best.cfg (python -m trainer.main --flagfile=ROOT/best.cfg reruns it), one HParams
experiment over all trials (tensorboard --logdir ROOT), and how to open the study in
optuna-dashboard. Distributions: uniform:LOW:HIGH, loguniform:LOW:HIGH, int:LOW:HIGH,
logint:LOW:HIGH, choice:A|B|C (a list-valued flag's value holds commas: 50,50|500).
Optuna (and psycopg for PostgreSQL) is the `tune` extra: pip install -e '.[tune]'.
"""

from __future__ import annotations

import difflib
import shlex
import sys
from typing import NoReturn

from absl import flags

from trainer import cli
from trainer.tuning import tune_choices
from trainer.tuning.tune_choices import FLAGS

USAGE = ("python -m trainer.tune --root=DIR --search=NAME=DIST:ARGS [--flag=value ...] "
         "[-- TRIAL_FLAGS ...]")
_FOOTER = ("After --: flags for every trial, as trainer.main takes them. --flagfile here "
           "names the trials' base flags (it is not read as the tuner's).")
_FLAGFILE = ("--flagfile", "-flagfile")


def parse_flags(argv: list[str]) -> list[str]:
  """The tuner's flags (before --) into FLAGS, their errors one line and exit 2; returns
  the program name and the trials' flags (after --), main's argv."""
  args = argv[1:]
  split = args.index("--") if "--" in args else len(args)
  own, trial, flagfile = [], args[split + 1:], None
  rest = iter(args[:split])
  for arg in rest:  # absl would read a --flagfile as the tuner's own flags
    name, eq, value = arg.partition("=")
    if name in _FLAGFILE:
      flagfile = value if eq else next(rest, "")
    else:
      own.append(arg)
  FLAGS.unparse_flags()
  try:
    positional = FLAGS([argv[0], *own])[1:]
  except flags.UnrecognizedFlagError as e:
    _refuse(_unknown(e.flagname, e.flagvalue))
  except flags.Error as e:
    _refuse(str(e))
  if FLAGS.root is None:
    _refuse("--root is required: the directory the trials' model_dirs go below, e.g. "
            "--root=runs/tune")
  FLAGS.flagfile = flagfile
  flags.FLAGS([argv[0]])  # absl's app reads its own flags there (all at their defaults)
  return [argv[0], *positional, *trial]


def _unknown(name: str, arg: str) -> str:
  """A flag the tuner does not know, named as what it likely is: one of the tuner's
  mistyped, or a trial flag given before --."""
  text = f"unrecognized arguments: {shlex.quote(arg)}"
  near = difflib.get_close_matches(f"--{name}", [f"--{n}" for n in FLAGS], n=1, cutoff=0.8)
  if near:
    return f"{text}: did you mean {near[0]}?"
  return (f"{text}: trial flags go after --, e.g. python -m trainer.tune --root=... "
          f"--search=... -- {shlex.quote(arg)}")


def _refuse(message: str) -> NoReturn:
  print(f"error: {message} (python -m trainer.tune --help)", file=sys.stderr)
  sys.exit(cli.EXIT_USAGE)


def run():
  """Console script entry point (tapeloop-tune): the flags are parsed before this module's
  TensorFlow part below is imported (as trainer.tune), then its main runs."""
  cli.run_app("trainer.tune", USAGE, tune_choices.HELP_GROUPS, parse=parse_flags,
              flag_values=FLAGS, footer=_FOOTER)


# Above this line, nothing imports TensorFlow: python -m trainer.tune stops here.
if __name__ == "__main__":
  run()

# pylint: disable=g-import-not-at-top,wrong-import-position,wrong-import-order
import contextlib
import math
import os
import signal
import warnings

from trainer.process import tf_env

tf_env.apply()  # before anything imports TensorFlow
tf_env.leave_gpus_to_children()  # it checks on GPUs its trials train on

import tensorflow as tf

from trainer.process import files
from trainer.process.errors import ConfigError, UsageError
from trainer.run import child_runs, dry_run, run_files
from trainer.tuning import tune_results
from trainer.tuning.search import check_trial_flags, parse_search
from trainer.tuning.study import Settings, Tuner, check_study, first_line, hidden
# pylint: enable=g-import-not-at-top,wrong-import-position,wrong-import-order


class Stopped(Exception):
  """The tuner got SIGTERM (a preempted VM): its trial is handed back, then it exits."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def parse_args(argv) -> Settings:
  """The study's settings from FLAGS (parse_flags) and argv[1:], the trials' flags, with
  every check that needs TensorFlow (each value the search may draw, on the trial's data)."""
  args, trainer_flags = FLAGS, argv[1:]
  root = child_runs.resolve(args.root)
  flagfile = child_runs.resolve(args.flagfile)
  if flagfile and (not files.is_local(flagfile) or not os.path.isfile(flagfile)):
    raise UsageError(f"--flagfile={shlex.quote(args.flagfile)}: no such local file")
  for name in ("trials", "startup_trials", "heartbeat_seconds"):
    value = getattr(args, name)
    if value is not None and value < (0 if name == "startup_trials" else 1):
      raise UsageError(f"--{name}={value} must be positive")
  searches = parse_search(args.search or [])
  base = ([f"--flagfile={flagfile}"] if flagfile else []) + trainer_flags
  with dry_run.read_only() if args.dry_run else contextlib.nullcontext():
    check_trial_flags(base, searches)
  try:
    run_files.check_checkpoint_path(root, "--root")
  except ValueError as e:
    raise UsageError(str(e)) from None
  storage = tune_choices.storage()
  if storage is None:
    if not files.is_local(root):
      raise UsageError(f"--root={shlex.quote(args.root)} is not a local directory: give "
                       "--storage=URL "
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
                  seed=args.seed, heartbeat_seconds=args.heartbeat_seconds)


def _claim_root(s: Settings, write: bool = True) -> None:
  """ROOT/tune.json names the study whose trials ROOT holds: another study (or the same
  name in another storage) would number its trials from 0 into the same directories.
  write: record this study when the root holds none (not in a dry run)."""
  path, mine = os.path.join(s.root, "tune.json"), {"study": s.study,
                                                    "storage": hidden(s.storage)}
  try:
    held = files.read_json(path)
  except ValueError as e:  # a damaged record: overwriting it would drop the root's guard
    raise UsageError(f"{shlex.quote(path)} is unreadable ({first_line(e)}): it records which "
                     f"study the trials in {shlex.quote(s.root)} belong to; restore it, remove "
                     "it if they are this study's, or use a new --root") from None
  if held is None and write:
    files.write_json(path, mine)
  elif held is not None and held != mine:
    raise UsageError(f"--root={shlex.quote(s.root)} holds the trials of study "
                     f"{held.get('study')!r} in {shlex.quote(str(held.get('storage')))}: use a new --root "
                     "for this one")


def _optuna():
  """Optuna, imported here (not at the top) because it is the optional tune extra: its
  absence is one line saying how to install it."""
  try:
    import optuna  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError:
    raise UsageError("trainer.tune needs Optuna, the tune extra: pip install -e '.[tune]' "
                     "(make test installs it)") from None
  return optuna


def _stop_on_sigterm(signum, frame):
  del frame
  raise Stopped(signum)


def _dry_run(s: Settings) -> int:
  """--dry_run: what main checks before the first trial, reading only (parse_args has
  checked every value the search may draw): Optuna, the root (writable, not another
  study's), the study (its storage, its definition); then a trial's flags, data and plan
  as trainer.main checks them (each searched flag at its first value). Nothing written."""
  _optuna()
  try:
    run_files.check_model_dir(s.root)
  except ConfigError as e:  # its words name --model_dir
    raise UsageError(str(e).replace("--model_dir=", "--root=", 1)) from None
  _claim_root(s, write=False)
  study = check_study(s)
  first = [f"--{x.name}={x.extremes()[0]}" for x in s.searches]
  trial_dir = os.path.join(s.root, "trial-0000")
  args = [*s.base, *first, f"--model_dir={trial_dir}"]
  try:
    dry_run.check_runs([args])
    plan = dry_run.plan_lines(args, fresh=True)  # a trial directory is one trial's
  except UsageError as e:
    raise UsageError(f"the trial flags: {e}") from None
  print(f"dry run: nothing was written; without --dry_run this runs {s.trials} trials "
        f"({s.sampler} sampler, {s.pruner} pruner) over "
        f"{' '.join(shlex.quote('--search=' + x.spec) for x in s.searches)}, each in "
        f"{shlex.quote(s.root)}/trial-NNNN, in {study}")
  print(f"a trial at {' '.join(first)}, as trainer.main's dry run says it:")
  for line in plan:
    print(f"  {line}")
  return 0


def main(argv: list[str]) -> int:
  """The study's trials, then its report: the exit status. argv: parse_flags's (the
  program, the trials' flags). Bad input before the first trial raises UsageError, which
  cli.run_app answers in one line with exit 2."""
  settings = parse_args(argv)
  if FLAGS.dry_run:
    return _dry_run(settings)
  optuna = _optuna()
  warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
  # Optuna's heartbeat is meant for Study.optimize; the tuner beats itself (_Heartbeat).
  warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  # A shared storage is opened first: a bad URL leaves no root behind. The embedded
  # one lives in the root.
  tuner = None if settings.embedded else Tuner(settings)
  try:
    tf.io.gfile.makedirs(settings.root)
  except tf.errors.OpError as e:
    raise UsageError(f"--root={shlex.quote(settings.root)}: {first_line(e)}") from None
  tuner = tuner or Tuner(settings)
  _claim_root(settings)
  print(f"study {shlex.quote(settings.study)} in {shlex.quote(hidden(settings.storage))}: "
        f"{settings.trials} trials, "
        f"sampler {settings.sampler}, pruner {settings.pruner}; trials in "
        f"{shlex.quote(settings.root)}",
        flush=True)
  # Once trials run, a stop or a failure is answered here, not by cli.run_app: the trial in
  # hand goes back to the study and the table of those done is still printed.
  previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
  status = 0
  try:
    tuner.run()
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    status = 2
  except (KeyboardInterrupt, Stopped) as e:
    signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
    print(f"stopped by {signal.Signals(signum).name}: run the same command again to go on",
          file=sys.stderr)
    status = 128 + signum
  except Exception as e:  # pylint: disable=broad-except  (the database, the filesystem)
    print(f"error: {type(e).__name__}: {hidden(first_line(e))}: run the same command "
          "again to go on", file=sys.stderr)
    status = 1
  finally:
    signal.signal(signal.SIGTERM, previous)
  try:
    text, best = tune_results.report(tuner)
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: no report: {hidden(first_line(e))}", file=sys.stderr)
    return status or 1
  print(text, end="")
  print(f"compare the trials: tensorboard --logdir {shlex.quote(settings.root)} (HParams "
        "tab); the study: pip install optuna-dashboard && optuna-dashboard "
        f"{shlex.quote(hidden(settings.storage))}")
  if status == 0 and best is None:
    print("error: no trial completed", file=sys.stderr)
    status = 1
  return status

