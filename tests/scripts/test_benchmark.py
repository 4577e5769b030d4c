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
    ("tapeloop", True), ("machine", True), ("keras", False)])
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


def test_time_to_accuracy_times_the_whole_command_first_uncached_then_cached(
    benchmark, monkeypatch, tmp_path):
  data_dir = tmp_path / "tfds"
  cache = data_dir / "fashion_mnist" / "3.0.1" / "tapeloop_decoded"
  cache.mkdir(parents=True)
  (cache / "train.npz").write_text("decoded")
  calls = []

  def cli(cmd, cwd, **kwargs):  # the CLI as a user runs it; writes results.json
    calls.append((cmd, cache.exists()))
    model_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--model_dir="))
    phases = {"start_up": 3.0, "data": 6.0 if len(calls) == 1 else 0.5, "train": 30.0,
              "total": 44.0 if len(calls) == 1 else 38.5}
    with open(os.path.join(model_dir, "results.json"), "w") as f:
      json.dump({"phases": phases, "test_accuracy": 0.9234, "examples_per_sec": 7000.0,
                 "global_step": 2340}, f)
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(subprocess, "run", cli)
  monkeypatch.setattr(sys, "argv", ["benchmark.py", "--time_to_accuracy",
                                    f"--output_dir={tmp_path}", f"--data_dir={data_dir}"])
  assert benchmark.main() == 0
  assert [c[0][1:3] for c in calls] == [["-m", "trainer.main"]] * 2
  assert f"--data_dir={data_dir}" in calls[0][0]
  assert "--flagfile=configs/fashion_tta.cfg" in calls[0][0]
  assert calls[0][1] is False  # the first run found no decoded cache
  with open(tmp_path / "time_to_accuracy.json") as f:
    result = json.load(f)
  assert result["runs"]["first"]["phases"]["total"] == 44.0
  assert all(result["targets"].values())
  table = (tmp_path / "time_to_accuracy.md").read_text()
  assert "| first (decodes, writes the cache) | 92.34% | **44.0** | 3.0 | 6.0 |" in table


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
  assert ours["tapeloop"]["examples_per_sec"] > 0 and fit["examples_per_sec"] > 0
  assert ours["jit"] == "off"  # XLA cannot compile a loop over two replicas
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


def _fake_jobs(benchmark, monkeypatch, jax_params=39760):
  """Measurement jobs that return fixed figures: tapeloop 300k, fit 100k/150k, JAX jit
  200k with 1 thread and 250k with all, its scan 380k/400k, PyTorch 150k/140k,
  torch.compile fails."""
  def isolated(args, job):
    if job["kind"] == "machine":
      return {"machine": {"date": "d", "cpu": "c", "cores": 2, "tensorflow": "t",
                          "keras": "k"}, "matmul_gflops": 100.0, "env": {}}
    if job["kind"] == "tapeloop":
      return {"tapeloop": {"examples_per_sec": 300_000.0}, "parameters": 39760, "jit": "loop",
              "train_flops_per_example": 1e5, "env": {}}
    return {"keras_fit": {"examples_per_sec": 100_000.0},
            "keras_fit_spe": {"examples_per_sec": 150_000.0}, "env": {}}

  def peer(args, framework, model, threads):
    if framework == "jax":
      return {"parameters": jax_params, "version": "0.1",
              "jax_jit": {"examples_per_sec": 200_000.0 if threads == 1 else 250_000.0},
              "jax_scan": {"examples_per_sec": 380_000.0 if threads == 1 else 400_000.0}}
    if framework == "torch_compile":
      return {"torch_compile": {"error": "InductorError: no compiler"}}
    return {"parameters": 39760, "version": "2.0",
            "torch_eager": {"examples_per_sec": 150_000.0 if threads == 1 else 140_000.0}}

  monkeypatch.setattr(benchmark, "_isolated", isolated)
  monkeypatch.setattr(benchmark, "_peer", peer)


class _PeerArgs:
  models, repeats, steps_per_loop, seconds = "mlp_1x50", 2, 100, 0.1


def test_peers_table_takes_each_peer_at_its_best_threads_and_the_best_peer(benchmark,
                                                                          monkeypatch):
  _fake_jobs(benchmark, monkeypatch)
  result = benchmark.run_peers(_PeerArgs())
  row = result["models"]["mlp_1x50"]
  assert row["peers"]["jax_jit"]["examples_per_sec"] == 250_000.0
  assert row["peers"]["jax_jit"]["threads"] == 0
  assert row["best_peer"] == "jax_scan" and row["vs_best_peer"] == pytest.approx(0.75)
  assert row["vs_keras_best"] == pytest.approx(2.0)
  assert row["fraction_of_matmul_peak"] == pytest.approx(0.3)
  assert result["targets"] == {"mlp_1x50 >= 1.0x the best peer": False,
                               "mlp_1x50 >= 1.5x keras fit (best)": True}
  table = benchmark.peers_markdown(result)
  assert ("| mlp_1x50 | 39,760 | 300,000 | loop | 150,000 | 250,000 t0 | **400,000 t0** | "
          "150,000 t1 | failed | 0.75x | 2.00x | 30% |") in table
  assert "mlp_1x50 torch.compile: InductorError: no compiler" in table


def test_peers_with_another_parameter_count_stop_the_run(benchmark, monkeypatch):
  _fake_jobs(benchmark, monkeypatch, jax_params=39761)
  with pytest.raises(SystemExit, match="mlp_1x50: parameter counts differ"):
    benchmark.run_peers(_PeerArgs())
