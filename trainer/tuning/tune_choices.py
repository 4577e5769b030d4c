"""The tuner's command line, TensorFlow-free: its named choices and its flags (FLAGS), so
that python -m trainer.tune answers --help, a mistyped flag and a bad choice before
TensorFlow loads."""

import os

from absl import flags

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
# The validation figure a trial reports, and which way is better.
OBJECTIVES = {"accuracy": "maximize", "loss": "minimize"}
STORAGE_ENV = "TAPELOOP_STORAGE"

# The tuner's own flags, apart from absl's flags.FLAGS: its --flagfile, --seed and --dry_run
# are not the trials' (trainer/options/command_line.py's, which the tuner parses in
# flags.FLAGS for every trial it checks), and its --flagfile names the trials' base flags, never read as its own.
# Declared here, in a module imported once, because trainer.tune runs as __main__ and is
# imported by name too.
FLAGS = flags.FlagValues()
HELP_GROUPS = {
    "The search": ["flagfile", "search", "trials", "sampler", "seed", "objective", "pruner",
                   "startup_trials"],
    "The study": ["root", "study", "storage", "heartbeat_seconds", "dry_run"]}

_in = dict(flag_values=FLAGS)
flags.DEFINE_string("flagfile", None, "The trials' base flags (a trainer flagfile).", **_in)
flags.DEFINE_multi_string("search", None, "A flag and its distribution, NAME=DIST:ARGS",
                          **_in)
flags.DEFINE_integer("trials", None, "Trials in the study, over all tuner processes "
                     "(default 20; with --sampler=grid, the grid's size).", **_in)
flags.DEFINE_string("root", None, "One model_dir per trial below it (a local directory or a "
                    "bucket).", **_in)
flags.DEFINE_string("study", None, "The study's name in the storage (default: --root as "
                    "given).", **_in)
flags.DEFINE_string("storage", None, "A database URL several machines share, e.g. "
                    "postgresql://user:password@host/db (or in $" + STORAGE_ENV + ", off the "
                    "command line; default: sqlite in ROOT/study.db).", **_in)
flags.DEFINE_enum("sampler", "tpe", SAMPLERS, "tpe (default), random or grid.", **_in)
flags.DEFINE_enum("pruner", "median", PRUNERS, "median (default), hyperband or none.", **_in)
flags.DEFINE_enum("objective", "accuracy", tuple(OBJECTIVES), "The validation figure to "
                  "maximize (accuracy) or minimize (loss).", **_in)
flags.DEFINE_integer("startup_trials", 5, "Trials TPE draws at random, and that the median "
                     "pruner waits for, before either acts.", **_in)
flags.DEFINE_integer("seed", None, "The sampler's seed (reproducible with one tuner "
                     "process).", **_in)
flags.DEFINE_integer("heartbeat_seconds", 30, "A running trial's tuner beats this often; a "
                     "trial silent for twice as long is taken up by another tuner.", **_in)
flags.DEFINE_boolean("dry_run", False, "Check what the run checks before its first trial "
                     "(the search, the trials' flags, data and models, the root, the study), "
                     "print what would run, and exit writing nothing.", **_in)


def storage() -> str | None:
  """--storage, else $TAPELOOP_STORAGE (read when the flags are, not at import)."""
  return FLAGS.storage if FLAGS.storage is not None else os.environ.get(STORAGE_ENV)
