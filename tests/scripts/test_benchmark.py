import importlib.util
import json
import os
import subprocess
import sys

import pytest

from paths import ROOT
from trainer import tf_env


@pytest.fixture(scope="module")
def benchmark():
  spec = importlib.util.spec_from_file_location(
      "benchmark", os.path.join(ROOT, "scripts", "benchmark.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class _Args:
  seconds = 0.1
  device = "cpu"


@pytest.mark.parametrize("kind,settings", [
    ("tapeloop", True), ("machine", True), ("time_to_accuracy", True), ("keras", False)])
def test_jobs_run_with_tapeloops_settings_and_fit_with_tensorflows(benchmark, monkeypatch,
                                                                   kind, settings):
  for name in tf_env.SETTINGS:
    monkeypatch.delenv(name, raising=False)
  seen = {}

  def run(cmd, env, **kwargs):
    seen.update(env)
    return subprocess.CompletedProcess(cmd, 0, benchmark._RESULT + json.dumps({"ok": 1}), "")

  monkeypatch.setattr(subprocess, "run", run)
  assert benchmark._isolated(_Args(), {"kind": kind}) == {"ok": 1}
  for name, value in tf_env.SETTINGS.items():
    assert seen.get(name) == (value if settings else None)


def test_a_failed_job_stops_the_run_with_its_stderr(benchmark, monkeypatch, capsys):
  monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
      cmd, 1, "", "Traceback ...\nValueError: bad model"))
  with pytest.raises(SystemExit, match="failed \\(exit 1\\)"):
    benchmark._isolated(_Args(), {"kind": "tapeloop"})
  assert "ValueError: bad model" in capsys.readouterr().err


def test_unknown_model_exits_2_with_usage():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                         "--models=mlp_1x50,nope"], capture_output=True, text=True,
                        check=False, timeout=120)
  assert proc.returncode == 2
  assert "unknown --models nope" in proc.stderr.splitlines()[-1]


def test_time_to_accuracy_runs_as_an_isolated_job(benchmark, monkeypatch, tmp_path):
  # In the parent process it would train without tapeloop's settings (oneDNN off on AVX2).
  jobs = []
  result = {"machine": {"date": "2026-11-23", "cpu": "test cpu"}, "train_seconds": 50.0,
            "compile_seconds": 3.0, "test_accuracy": 0.92, "recipe": "configs/x.cfg"}
  monkeypatch.setattr(benchmark, "_isolated", lambda args, job: jobs.append(job) or result)
  monkeypatch.setattr(sys, "argv", ["benchmark.py", "--time_to_accuracy",
                                    f"--output_dir={tmp_path}", "--data_dir=/data"])
  assert benchmark.main() == 0
  assert jobs == [{"kind": "time_to_accuracy", "data_dir": "/data"}]
  with open(tmp_path / "time_to_accuracy.json") as f:
    assert json.load(f) == result


def test_multi_device_mode_prints_the_same_table_for_n_replicas(tmp_path):
  # --device=gpu on a GPU VM; cpu:2 runs the same mirrored code path on logical CPUs.
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                         "--device=cpu:2", "--models=mlp_1x50", "--repeats=1", "--seconds=0.2",
                         "--steps_per_loop=10", f"--output_dir={tmp_path}"],
                        capture_output=True, text=True, check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "results.json") as f:
    result = json.load(f)
  assert result["replicas"] == 2 and result["global_batch_size"] == 256
  row = result["models"]["mlp_1x50"]
  assert row["tapeloop"]["median"] > 0 and row["keras_fit"]["median"] > 0
  table = (tmp_path / "results.md").read_text()
  assert "2 logical CPU devices (MirroredStrategy), per-replica batch 128; global batch 256" in table
  assert "| mlp_1x50 | 10 |" in table


def test_gpu_mode_without_a_gpu_is_one_line():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                         "--device=gpu"], capture_output=True, text=True, check=False,
                        timeout=120)
  assert proc.returncode == 2
  assert "--device=gpu: TensorFlow sees no GPU" in proc.stderr.strip().splitlines()[-1]
