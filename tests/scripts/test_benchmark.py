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


def test_multi_device_mode_measures_both_sides_on_n_replicas(benchmark):
  # --device=gpu on a GPU VM; the same mirrored path on 2 of conftest's logical CPUs.
  devices = ["/cpu:0", "/cpu:1"]
  assert benchmark.strategy_flags(devices) == ["--strategy=mirrored", "--devices=/cpu:0,/cpu:1"]
  assert benchmark.global_batch(devices) == 256 and benchmark.global_batch([]) == 128
  data = benchmark.input_pipeline.load(benchmark.DATASET)
  # Not mlp_1x50: its --intra_op_threads=1 cannot be set once TensorFlow runs (a job can).
  ours = benchmark.tapeloop_throughput("mlp_5x50_dropout", data, 5, 0.1, devices)
  train = data.splits["train"]
  x, y = train.images[:2560].astype("float32") / 255.0, train.labels[:2560].astype("int32")
  fit = benchmark.keras_fit_throughput("mlp_5x50_dropout", x, y, 1, 20000, 0.1, devices)
  assert ours["examples_per_sec"] > 0 and fit["examples_per_sec"] > 0
  assert benchmark.variants(devices) == ("tapeloop", "keras_fit")


def test_multi_device_table_says_where_it_ran(benchmark):
  row = {v: {"median": 2.0, "min": 1.0, "max": 3.0} for v in ("tapeloop", "keras_fit")}
  row.update(steps_per_loop=10, vs_keras_default=2.0, vs_keras_best=2.0, train_gflops=1.0,
             fraction_of_matmul_peak=0.1, compile_seconds={"tapeloop": 1.0, "keras_fit": 1.0})
  spread = {"median": 1.0, "min": 1.0, "max": 1.0}
  result = {"machine": {"date": "d", "cpu": "c", "cores": 2, "tensorflow": "t", "keras": "k",
                        "gpus": ["NVIDIA L4"]},
            "device": "gpu", "replicas": 4, "per_replica_batch_size": 128,
            "global_batch_size": 512, "repeats": 1, "environment": {},
            "models": {"cnn": row}, "matmul_gflops": spread, "pipeline": spread,
            "pipeline_augmented": spread, "tf_data_pipeline": spread,
            "pipeline_vs_fastest_model": 1.0, "targets": {}}
  table = benchmark.markdown(result)
  assert "4 GPUs (MirroredStrategy, NVIDIA L4), per-replica batch 128; global batch 512" in table
  assert "| cnn | 10 | 2 (1-3) | 2 (1-3) | n/a | 2.00x |" in table
  assert "keras issue 19246" in table


def test_gpu_mode_without_a_gpu_is_one_line():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                         "--device=gpu"], capture_output=True, text=True, check=False,
                        timeout=120)
  assert proc.returncode == 2
  assert "--device=gpu: TensorFlow sees no GPU" in proc.stderr.strip().splitlines()[-1]
