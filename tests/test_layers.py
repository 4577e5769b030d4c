"""The layers of the code (setup.cfg's import-linter contracts, run by make test) hold, and
an import against them breaks them."""

import os
import shutil
import subprocess
import sys

from paths import ROOT

LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(root: str) -> subprocess.CompletedProcess:
  return subprocess.run([LINT, "--no-cache"], cwd=root, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": root}, check=False)


def test_a_wrong_way_import_breaks_the_layers(tmp_path):
  for package in ("trainer", "input_pipeline", "models"):
    shutil.copytree(os.path.join(ROOT, package), tmp_path / package,
                    ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(os.path.join(ROOT, "setup.cfg"), tmp_path)
  kept = _lint(str(tmp_path))
  assert kept.returncode == 0, kept.stdout
  # The lowest layer reaching up to the run: what any module might be tempted to do.
  with open(tmp_path / "trainer" / "process" / "files.py", "a") as f:
    f.write("\nfrom trainer.run import train  # wrong way\n")
  broken = _lint(str(tmp_path))
  assert broken.returncode == 1
  assert "trainer.process is not allowed to import trainer.run" in broken.stdout
  assert "trainer.process.files -> trainer.run.train" in broken.stdout
