"""The repository root, for tests that run its scripts and entry points as subprocesses."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
