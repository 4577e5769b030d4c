"""The repository root, for tests that run its scripts and entry points as subprocesses,
and its scripts loaded as modules."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


def load_script(name: str):
  """scripts/NAME.py as a module (scripts/ on sys.path, for the modules it shares)."""
  if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)
  spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
