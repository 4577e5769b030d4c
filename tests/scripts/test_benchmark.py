"""scripts/benchmark.py, bench_peers.py, bench_tta.py and what they share (bench_common.py,
bench_jobs.py), without measuring: jobs and the peers are faked where they would run."""

import json
import os
import subprocess
import sys

import pytest

from paths import ROOT, SCRIPTS, load_script as _load
from trainer.options import declared
from trainer.process import tf_env


@pytest.fixture(scope="module")
def benchmark():
  return _load("benchmark")  # it puts scripts/ on sys.path: the shared modules import


@pytest.fixture(scope="module")
def jobs(benchmark):
  return benchmark.bench_jobs


@pytest.fixture(scope="module")
def common(benchmark):
  return benchmark.bench_common


@pytest.mark.parametrize("kind,settings", [
    ("tapeloop", True), ("machine", True), ("keras", False)])
def test_jobs_run_with_tapeloops_settings_and_fit_with_tensorflows(jobs, common, monkeypatch,
                                                                   kind, settings):
  for name in tf_env.SETTINGS:
    monkeypatch.delenv(name, raising=False)
  seen = {}

  def run(cmd, env, **kwargs):
    seen.update(env)
    return subprocess.CompletedProcess(cmd, 0, common.RESULT + json.dumps({"ok": 1}), "")

  monkeypatch.setattr(subprocess, "run", run)
  assert jobs.isolated({"kind": kind}, 0.1) == {"ok": 1}
  for name, value in tf_env.SETTINGS.items():
    assert seen.get(name) == (value if settings else None)


def test_a_failed_job_stops_the_run_with_its_stderr(jobs, monkeypatch, capsys):
  monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
      cmd, 1, "", "Traceback ...\nValueError: bad model"))
  with pytest.raises(SystemExit, match="failed \\(exit 1\\)"):
    jobs.isolated({"kind": "tapeloop"}, 0.1)
  assert "ValueError: bad model" in capsys.readouterr().err


def test_unknown_model_exits_2_with_usage():
  proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "benchmark.py"),
                         "--models=mlp_1x50,nope"], capture_output=True, text=True,
                        check=False, timeout=120)
  assert proc.returncode == 2
  assert "unknown --models nope" in proc.stderr.splitlines()[-1]


def test_gpu_mode_without_a_gpu_is_one_line(benchmark, capsys):
  with pytest.raises(SystemExit) as exit_:
    benchmark.main(["--device=gpu"])
  assert exit_.value.code == 2
  assert "--device=gpu: TensorFlow sees no GPU" in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_benchmarks_models_are_their_configs_model_flags(jobs, common):
  # The one model list: each model's flags are its configs/ file's, as the trainer reads
  # that file (a model flag the reader missed would make the hyperparameters differ).
  for name, config in common.MODELS.items():
    ours = jobs.config(common.model_args(name))
    theirs = jobs.config([f"--flagfile={os.path.join(ROOT, 'configs', config + '.cfg')}"])
    assert (ours.model, ours.model_hparams) == (theirs.model, theirs.model_hparams), name
  # A config's run flags are not the model's: the benchmark's own settings are apart.
  assert "--epochs=5" not in common.model_args("mlp_1x50")
  assert common.distinct_models() == [n for n in common.MODELS if n != "mlp_5x50_dropout_50ep"]
  # Its copy of the model flags' names (the peers' venv has no TensorFlow to import
  # trainer/options/declared.py): every model option but sync_batch_norm, which follows the replicas.
  assert set(common.MODEL_FLAGS) == set(declared.MODEL_OPTIONS) - {"sync_batch_norm"}


def test_the_peers_build_the_configs_models_with_the_standard_library_only(jobs, common):
  code = (f"import json, sys; sys.path.insert(0, {SCRIPTS!r}); import peers; "
          "print(json.dumps({n: peers.settings(n) for n in peers.bench_common.MODELS}))")
  proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                        text=True, check=True, timeout=60)  # -S: no site-packages at all
  names = {"hidden": "hidden_units", "dropout": "dropout", "widths": "widths",
           "blocks": "blocks_per_stage"}  # the peers' settings -> the model flags
  for name, (kind, s) in json.loads(proc.stdout).items():
    cfg = jobs.config(common.model_args(name))
    built = {names[k]: tuple(v) if isinstance(v, list) else v for k, v in s.items()}
    expected = {"dropout": 0.0, **cfg.model_hparams} if kind == "mlp" else cfg.model_hparams
    assert (kind, built) == (cfg.model, expected), name  # the peers' CNN: the default one


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
    phases = {"start_up": 3.0, "data": 6.0 if len(calls) == 1 else 0.5, "train": 13.0,
              "total": 24.0 if len(calls) == 1 else 19.5}
    with open(os.path.join(model_dir, "results.json"), "w") as f:
      json.dump({"phases": phases, "test_accuracy": 0.9234, "examples_per_sec": 7000.0,
                 "global_step": 2340}, f)
    return subprocess.CompletedProcess(cmd, 0, "", "")

  monkeypatch.setattr(subprocess, "run", cli)
  # bench_tta.py's, as scripts/benchmark.py --time_to_accuracy still runs it.
  assert benchmark.main(["--time_to_accuracy", f"--output_dir={tmp_path}",
                         f"--data_dir={data_dir}"]) == 0
  assert [c[0][1:3] for c in calls] == [["-m", "trainer.main"]] * 2
  assert f"--data_dir={data_dir}" in calls[0][0]
  assert "--flagfile=configs/fashion_tta.cfg" in calls[0][0]
  assert calls[0][1] is False  # the first run found no decoded cache
  with open(tmp_path / "time_to_accuracy.json") as f:
    result = json.load(f)
  assert result["runs"]["first"]["phases"]["total"] == 24.0
  assert result["targets"] == {  # the 20 s, the bound included
      "test accuracy >= 92% with the whole process <= 20 s (first run)": False,
      "test accuracy >= 92% with the whole process <= 20 s (later runs)": True}
  table = (tmp_path / "time_to_accuracy.md").read_text()
  assert "| first (decodes, writes the cache) | 92.34% | **24.0** | 3.0 | 6.0 |" in table


def test_multi_device_mode_measures_both_sides_on_n_replicas(benchmark, jobs):
  # --device=gpu on a GPU VM; the same mirrored path on 2 of conftest's logical CPUs.
  devices = ["/cpu:0", "/cpu:1"]
  assert jobs.strategy_flags(devices) == ["--strategy=mirrored", "--devices=/cpu:0,/cpu:1"]
  assert jobs.global_batch(devices) == 256 and jobs.global_batch([]) == 128
  assert benchmark.device_list("cpu:2") == devices and benchmark.device_list("cpu") == []
  data = jobs.input_pipeline.load(jobs.DATASET)
  ours = jobs.tapeloop_throughput("mlp_5x50_dropout", data, 5, 0.1, devices)
  train = data.splits["train"]
  x, y = train.images[:2560].astype("float32") / 255.0, train.labels[:2560].astype("int32")
  fit = jobs.keras_fit_throughput("mlp_5x50_dropout", x, y, 1, 20000, 0.1, devices)
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


@pytest.fixture
def bench_peers(benchmark):
  return _load("bench_peers")


def _fake_jobs(bench_peers, monkeypatch, jax_params=39760):
  """Measurement jobs that return fixed figures: tapeloop 300k, fit 100k/150k, JAX jit
  200k with 1 thread and 250k with all, its scan 380k/400k, PyTorch 150k/140k,
  torch.compile fails."""
  def isolated(job, seconds, device="cpu"):
    if job["kind"] == "machine":
      return {"machine": {"date": "d", "cpu": "c", "cores": 2, "tensorflow": "t",
                          "keras": "k"}, "matmul_gflops": 100.0, "env": {}}
    if job["kind"] == "tapeloop" and job.get("flags"):  # --mixed_precision=auto
      assert job["flags"] == ["--mixed_precision=auto"]
      return {"tapeloop": {"examples_per_sec": 500_000.0}, "parameters": 39760,
              "jit": "off", "precision": "mixed_bfloat16", "env": {}}
    if job["kind"] == "tapeloop":
      return {"tapeloop": {"examples_per_sec": 300_000.0}, "parameters": 39760, "jit": "loop",
              "precision": "float32", "train_flops_per_example": 1e5, "env": {}}
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

  monkeypatch.setattr(bench_peers.bench_jobs, "isolated", isolated)
  monkeypatch.setattr(bench_peers, "_peer", peer)


def test_peers_table_takes_each_peer_at_its_best_threads_and_the_best_peer(bench_peers,
                                                                          monkeypatch,
                                                                          tmp_path):
  _fake_jobs(bench_peers, monkeypatch)
  assert bench_peers.main(["--models=mlp_1x50", "--repeats=2", "--seconds=0.1",
                           f"--output_dir={tmp_path}"]) == 0
  with open(tmp_path / "peers.json") as f:
    result = json.load(f)
  row = result["models"]["mlp_1x50"]
  assert row["peers"]["jax_jit"]["examples_per_sec"] == 250_000.0
  assert row["peers"]["jax_jit"]["threads"] == 0
  assert row["best_peer"] == "jax_scan" and row["vs_best_peer"] == pytest.approx(0.75)
  assert row["vs_keras_best"] == pytest.approx(2.0)
  assert row["fraction_of_matmul_peak"] == pytest.approx(0.3)
  assert result["targets"] == {"mlp_1x50 >= 1.0x the best peer": False,
                               "mlp_1x50 >= 1.5x keras fit (best)": True}
  table = (tmp_path / "peers.md").read_text()
  assert ("| mlp_1x50 | 39,760 | 300,000 | loop | - | 150,000 | 250,000 t0 | **400,000 t0** | "
          "150,000 t1 | failed | 0.75x | - | 2.00x | 30% |") in table
  assert "mlp_1x50 torch.compile: InductorError: no compiler" in table


def test_conv_models_are_measured_with_auto_precision_too(bench_peers, monkeypatch, tmp_path):
  # (The fake peers count the MLP's parameters: only the table's columns are checked.)
  _fake_jobs(bench_peers, monkeypatch)
  monkeypatch.setattr(bench_peers.bench_common, "model_flags", lambda name: {"model": "cnn"})
  assert bench_peers.main(["--models=cnn", "--repeats=1", "--seconds=0.1",
                           f"--output_dir={tmp_path}"]) == 0
  row = json.loads((tmp_path / "peers.json").read_text())["models"]["cnn"]
  assert row["tapeloop"]["median"] == 300_000.0  # the float32 column stays float32
  assert row["auto_precision"] == "mixed_bfloat16"
  assert row["auto_vs_best_peer"] == pytest.approx(1.25)
  table = (tmp_path / "peers.md").read_text()
  assert "| 300,000 | loop | 500,000 bf16 |" in table and "| 0.75x | 1.25x |" in table
  assert "| cnn with --mixed_precision=auto (mixed_bfloat16) >= 1.0x the best peer (float32) " \
         "| yes |" in table


class _PeerArgs:
  models, repeats, steps_per_loop, seconds = "mlp_1x50", 2, 100, 0.1


def test_peers_with_another_parameter_count_stop_the_run(bench_peers, monkeypatch):
  _fake_jobs(bench_peers, monkeypatch, jax_params=39761)
  with pytest.raises(SystemExit, match="mlp_1x50: parameter counts differ"):
    bench_peers.run_peers(_PeerArgs())
