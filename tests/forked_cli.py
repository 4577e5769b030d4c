"""Runs `python -m MODULE ARGS` for many ARGS, each in a child forked from one process
that has imported the programs, TensorFlow and Keras but run nothing: the command-line path
exactly (flags, exit status, console), without paying the imports once per invocation.

    python tests/forked_cli.py CASES.json   # [{"args": [...], "out": PREFIX}, ...]

A case's "module" is the program (default trainer.main; trainer.export, trainer.predict);
its "missing" lists packages the child cannot import (an extra not installed).

Each child writes PREFIX.stdout, PREFIX.stderr and PREFIX.status. Forking is safe here
because TensorFlow starts its runtime (threads, devices) at the first op, not at import.
"""

import importlib
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.process import tf_env  # pylint: disable=wrong-import-position

# The programs (trainer.main defines tapeloop's flags) and what a run imports after parsing
# its flags (TensorFlow, Keras, the packages): once, here, with the process settings a run
# applies first.
tf_env.apply()
for _module in ("trainer.main", "trainer.run.train", "trainer.export", "trainer.predict"):
  importlib.import_module(_module)

PARALLEL = 2


def run_child(out: str, run) -> None:
  """In a forked child: run() with stdout and stderr in OUT.stdout and OUT.stderr, then
  exit with its status (a SystemExit's code; 1 for an uncaught exception, its traceback in
  OUT.stderr). Never returns."""
  for fd, suffix in ((1, "stdout"), (2, "stderr")):
    os.dup2(os.open(f"{out}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
  try:
    status = run()
  except SystemExit as e:
    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()
    status = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status or 0)  # no atexit handlers of the parent's copy


def _child(case) -> None:
  module = case.get("module", "trainer.main")
  for name in case.get("missing", ()):
    sys.modules[name] = None  # its import raises ImportError, as when not installed
  sys.argv = [module, *case["args"]]
  run_child(case["out"], importlib.import_module(module).run)


def _reap(running) -> None:
  pid, status = os.wait()
  with open(f"{running.pop(pid)}.status", "w") as f:
    f.write(str(os.waitstatus_to_exitcode(status)))


def main() -> None:
  with open(sys.argv[1]) as f:
    cases = json.load(f)
  running = {}  # pid -> output prefix
  for case in cases:
    if len(running) >= PARALLEL:
      _reap(running)
    pid = os.fork()
    if pid == 0:
      _child(case)
    running[pid] = case["out"]
  while running:
    _reap(running)


if __name__ == "__main__":
  main()
