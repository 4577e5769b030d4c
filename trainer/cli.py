"""How a run ends: bad input exits 2 with one line naming the problem and the fix; a
traceback only with --verbosity=1 or more.

TensorFlow-free: the flags are parsed and checked (--help, a mistyped flag, a missing
flagfile answer at once) before run_app's `main` module, and with it TensorFlow, loads."""

import errno
import importlib
import logging as py_logging
import os
import runpy
import shlex
import sys
import textwrap
import time
import warnings

from absl import app, flags, logging

from trainer.options import command_line
from trainer.process import errors, tf_env
from trainer.process.errors import ConfigError, DataError, Interrupted, UsageError

EXIT_USAGE = 2      # bad flag, file, data or model_dir
EXIT_DIVERGED = 3   # non-finite loss or collapsed fp16 loss scale
EXIT_PEER_LOST = 4  # a collective failed: a task of the cluster (or a remote store) is gone
# Stopped by a signal after a checkpoint: 128 + the signal's number, as shells report it
# (130 for SIGINT, 143 for SIGTERM).


def define_flag(kind: str, name: str, default, help_text: str) -> None:
  """A program's own flag (kind: string, integer, float, boolean), defined unless a flag of
  that name is: two programs run in one process (tests) may share a name (--output)."""
  if name not in flags.FLAGS:
    getattr(flags, f"DEFINE_{kind}")(name, default, help_text)


def _verbose() -> bool:
  return flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1


_HELP = ("--help", "-h", "--helpshort", "-?")


_FLAGFILES = ("Flags may also come from --flagfile=FILE (one --name=value per line); "
              "--helpfull lists absl's flags too.")


def help_text(usage: str, groups: dict[str, list[str]], flag_values=flags.FLAGS,
              footer: str = _FLAGFILES) -> str:
  """The program's own flags by group, each with its default and its help."""
  lines = [f"usage: {usage}", ""]
  for title, names in groups.items():
    lines.append(f"{title}:")
    for name in names:
      flag = flag_values[name]
      default = flag.default_as_str.strip("'") if flag.default is not None else ""
      lines.append(f"  --{name}" + (f"={default}" if default else ""))
      lines += textwrap.wrap(" ".join(flag.help.split()), width=88, initial_indent="      ",
                             subsequent_indent="      ")
    lines.append("")
  lines += textwrap.wrap(footer, width=88)
  return "\n".join(lines)


def _parser(usage: str, groups: dict[str, list[str]], parse, flag_values, footer: str):
  def parse_or_help(argv):
    # absl's --help lists only flags defined in the main module, and exits 1.
    if any(arg in _HELP for arg in argv[1:argv.index("--") if "--" in argv else None]):
      try:
        print(help_text(usage, groups, flag_values, footer), flush=True)
      except BrokenPipeError:  # `--help | head`: the reader has all it wanted
        _quiet_stdout()
      sys.exit(0)
    return parse(argv)
  return parse_or_help


def _quiet_stdout() -> None:
  """stdout to /dev/null: Python flushes it again at exit, which would raise anew."""
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _parse(argv):
  try:
    return flags.FLAGS(command_line.expand(argv))
  except flags.CantOpenFlagFileError as e:
    print(f"error: {_flagfile_problem(e)}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _flagfile_problem(e: Exception) -> str:
  """absl's 'ERROR:: Unable to open flagfile: [Errno 2] ...' as 'flagfile FILE: no such
  file' (absl raises it while handling the OSError, which names the file)."""
  cause = e.__context__
  if not isinstance(cause, OSError) or cause.filename is None:
    return str(e).removeprefix("ERROR:: ")
  reason = ("no such file" if cause.errno == errno.ENOENT
            else (cause.strerror or str(cause)).lower())
  return f"flagfile {shlex.quote(os.fsdecode(cause.filename))}: {reason}"


class _OwnInfoOnly(py_logging.Filter):
  """On the console, INFO lines come from tapeloop only; TensorFlow's own INFO chatter
  (saver sharding, SavedModel assets) is dropped. Warnings and errors always pass."""

  _OURS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), p)
                for p in ("trainer", "input_pipeline", "models", "scripts"))

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or record.pathname.startswith(self._OURS)


class _Console(py_logging.Formatter):
  """A log line as the console shows it: the time and the message ("12:03:04 step
  101/2105 ..."); a warning or an error says so. The full line (absl's level, date,
  thread, file:line) is in the run's model_dir/tapeloop.log, and on the console with
  --verbosity=1."""

  def format(self, record):
    text = record.getMessage()
    if record.levelno >= py_logging.WARNING:
      text = f"{record.levelname.lower()}: {text}"
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {text}"


def _load(main):
  """main, or a module's name: its main, imported once the flags are parsed, after the
  process settings TensorFlow reads at import (tf_env)."""
  if not isinstance(main, str):
    return main
  tf_env.apply()
  return importlib.import_module(main).main


def _peer_lost(error: Exception) -> bool:
  """TensorFlow's errors of a peer that went away: under MultiWorkerMirroredStrategy the
  next collective of the tasks left fails with one of these (a connection refused, the
  coordination service's missed heartbeats). AbortedError counts only when a collective
  was aborted: a kernel fails with it too (oneDNN's, on a shape it cannot take)."""
  name = type(error).__name__
  if not type(error).__module__.startswith("tensorflow"):
    return False
  return (name in ("UnavailableError", "DeadlineExceededError")
          or (name == "AbortedError" and "ollective" in str(error)))


def run_app(main, usage: str, groups: dict[str, list[str]], *, parse=_parse,
            flag_values=flags.FLAGS, footer: str = _FLAGFILES) -> None:
  """Runs main(argv) with tapeloop's exit statuses and console; --help lists `groups`.
  main: a function, or the name of the module whose main(argv) to run: that module (and
  TensorFlow) is imported after the flags are parsed, so bad flags answer at once; its
  return value is the exit status (None: 0). The process is the program's: a signal
  before training ends it (errors.in_program). parse(argv) -> main's argv: a program's own
  parsing of flags.FLAGS (its errors: one line, exit 2), and `flag_values` and `footer`
  what --help shows, for a program whose flags are not all in flags.FLAGS (trainer.tune)."""
  def guarded(argv):
    with errors.program():
      if "dry_run" in flags.FLAGS and flags.FLAGS["dry_run"].value:
        tf_env.keras_writes_nothing()
      if not _verbose():
        # TensorFlow warns on every traced iteration over a distributed dataset.
        warnings.filterwarnings("ignore", message="To make it possible to preserve tf.data")
        logging.get_absl_handler().addFilter(_OwnInfoOnly())
        logging.get_absl_handler().setFormatter(_Console())
        py_logging.getLogger("tensorflow").addFilter(_OwnInfoOnly())
      return call(main, argv)

  app.run(guarded, flags_parser=_parser(usage, groups, parse, flag_values, footer))


def call(main, argv):
  """main(argv) (a function, or a module's name: _load) with tapeloop's exit statuses: bad
  input one line and exit 2, a signal's stop 128 + its number; returns main's value."""
  try:
    return _load(main)(argv)
  except (UsageError, ConfigError, DataError, FloatingPointError) as e:
    if _verbose():
      raise
    if isinstance(e, FloatingPointError):
      message, status = (f"{e}: training diverged; lower --learning_rate or use "
                         "--clip_norm; the last good checkpoint is kept", EXIT_DIVERGED)
    else:
      message, status = str(e), EXIT_USAGE
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)
  except Interrupted as e:
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signum)
  except Exception as e:  # pylint: disable=broad-except
    if _verbose() or not _peer_lost(e):
      raise
    line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    print(f"error: {type(e).__name__}: {line}: a task of the cluster (or a remote "
          "filesystem) stopped answering; run the same command again on every task: "
          "training resumes from the last checkpoint", file=sys.stderr)
    sys.exit(EXIT_PEER_LOST)
  except BrokenPipeError:
    # stdout piped into a reader that stopped (`| head`): end as a shell's pipeline
    # would (SIGPIPE), without a traceback; what the run saved stays.
    _quiet_stdout()
    sys.exit(128 + 13)
  except KeyboardInterrupt:
    if _verbose():
      raise
    print("interrupted: nothing more was saved; run the same command again to resume from "
          "the last checkpoint", file=sys.stderr)
    sys.exit(130)


def _as_main(module: str) -> None:
  """Runs `module` as python -m does: the programs parse their flags in their TensorFlow-
  free top part (importing one whole would load TensorFlow before its flags are read)."""
  runpy.run_module(module, run_name="__main__", alter_sys=True)


# The console scripts (setup.cfg).
def train():
  _as_main("trainer.main")


def evaluate():
  _as_main("trainer.evaluate")


def predict():
  _as_main("trainer.predict")


def tune():
  _as_main("trainer.tune")


def export():
  _as_main("trainer.export")
