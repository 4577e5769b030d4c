"""train_and_evaluate in-process (flax style): distribution, precision, model_dir checks."""

import importlib.metadata
import json
import logging
import os
import platform
import signal
import subprocess
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging

from trainer.inner.evaluator import Evaluator
from trainer.inner.trainer import Trainer
from trainer.process.errors import ConfigError, Interrupted
from trainer.options import config
from trainer.run import child_runs, distribute, planning, restored, run_files, run_record, train
from trainer.run.results import memory_scalars, peak_memory
from datafiles import tree_digest, write_kaggle_csv
from flag_helpers import build_trainer, parse
from runs import _accumulator, read_images, read_scalars

TINY = ["--model=mlp", "--hidden_units=16", "--dataset=synthetic:shape=8x8x1,classes=3,"
        "train=256,test=50", "--batch_size=32", "--steps_per_loop=4"]


def _weights(model_dir):
  path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  return {n: tf.train.load_variable(path, n) for n, _ in tf.train.list_variables(path)
          if n.startswith("model/")}


def test_two_mirrored_replicas_train_like_one_device(tmp_path):
  one = train.train_and_evaluate(parse(*TINY, "--train_steps=8", "--strategy=default",
                                       f"--model_dir={tmp_path / 'one'}"))
  two = train.train_and_evaluate(parse(*TINY, "--train_steps=8", "--strategy=mirrored",
                                       "--devices=/cpu:0,/cpu:1",
                                       f"--model_dir={tmp_path / 'two'}"))
  assert two["replicas"] == 2 and one["replicas"] == 1
  a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
  assert a.keys() == b.keys() and len(a) == 4
  for name in a:
    np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)
  assert one["test_loss"] == pytest.approx(two["test_loss"], abs=1e-5)
  assert one["test_accuracy"] == pytest.approx(two["test_accuracy"], abs=1e-6)


def test_batch_not_divisible_by_replicas(tmp_path):
  with pytest.raises(ConfigError, match="--batch_size=30 is not divisible by the 4 replicas"):
    train.train_and_evaluate(parse(*TINY, "--batch_size=30", "--strategy=mirrored",
                                   "--devices=/cpu:0,/cpu:1,/cpu:2,/cpu:3",
                                   f"--model_dir={tmp_path / 'm'}"))
  assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains(tmp_path, precision):
  results = train.train_and_evaluate(parse(*TINY, "--epochs=10", f"--mixed_precision={precision}",
                                           f"--model_dir={tmp_path}"))
  # float32 reaches 1.0 (loss 0.598) on this recipe; chance is 1/3.
  assert np.isfinite(results["test_loss"]) and results["test_accuracy"] > 0.9
  assert all(v.dtype == np.float32 for v in _weights(tmp_path).values())


@pytest.mark.parametrize("model,bf16_cpu,devices,expected", [
    ("cnn", True, None, "mixed_bfloat16"),       # measured faster: convolutions on BF16
    ("airbench", True, "/cpu:0,/cpu:1", "mixed_bfloat16"),
    ("mlp", True, None, "float32"),              # XLA's bf16 dots ran slower
    ("cnn", False, None, "float32"),             # emulated bf16
])
def test_auto_precision_is_bfloat16_only_where_it_measured_faster(monkeypatch, model, bf16_cpu,
                                                                  devices, expected):
  monkeypatch.setattr(planning, "cpu_has_bf16", lambda: bf16_cpu)
  cfg = parse(f"--model={model}", "--mixed_precision=auto",
              *(["--strategy=mirrored", f"--devices={devices}"] if devices else []))
  policy, why = planning.precision(cfg, distribute.create_strategy(cfg))
  assert (policy, why.startswith("auto: ")) == (expected, True)
  assert planning.precision(parse("--mixed_precision=mixed_float16"), None) == (
      "mixed_float16", "--mixed_precision=mixed_float16")


def test_auto_precision_builds_the_run_in_the_policy_it_resolved_to(tmp_path, monkeypatch,
                                                                     caplog):
  monkeypatch.setattr(planning, "cpu_has_bf16", lambda: True)
  args = ["--model=cnn", "--filters=4", "--kernel_sizes=3", "--dense_units=8", "--batch_size=8",
          "--dataset=synthetic:shape=8x8x1,classes=3,train=32,test=8", "--train_steps=2",
          "--eval_images=false"]
  cfg = parse(*args, "--mixed_precision=auto", f"--model_dir={tmp_path / 'a'}")
  trainer = build_trainer(cfg)
  assert trainer.state.model.dtype_policy.name == "mixed_bfloat16"
  # One Config per run: it keeps what was asked; the plan holds what it resolved to.
  assert (trainer.config.mixed_precision, trainer.plan.precision) == ("auto", "mixed_bfloat16")
  assert trainer.state.precision == "mixed_bfloat16" and not hasattr(trainer, "model")
  run = tmp_path / "run"
  cfg = config.from_args([*args, f"--model_dir={run}"])  # the default: auto
  results = _train_logged(cfg, caplog)
  assert results["precision"] == "mixed_bfloat16"
  assert all(v.dtype == np.float32 for v in _weights(run).values())
  # The choice and its reason, once, at the start.
  assert caplog.text.count("precision policy: mixed_bfloat16 (auto: cnn trained faster in "
                           "bfloat16 on this CPU)") == 1
  # flags.json keeps the text and the policy it resolved to; a rerun compares the policy:
  # an explicit mixed_bfloat16 is the same run (it only evaluates and exports), also by
  # its directory alone (the run's flags taken, the policy on top).
  record = json.loads((run / "flags.json").read_text())
  assert (record["mixed_precision"], record[run_files.PRECISION]) == ("auto", "mixed_bfloat16")
  again = train.train_and_evaluate(config.from_args(
      [f"--model_dir={run}", "--mixed_precision=mixed_bfloat16"], run_files.read_record))
  assert again["precision"] == "mixed_bfloat16" and "flag_changes" not in again
  # A run recorded in float32 before the policy was recorded (an older flags.json), rerun
  # with auto resolving to bfloat16 here: another run, refused with both, unless allowed.
  record["mixed_precision"] = "float32"
  del record[run_files.PRECISION]
  (run / "flags.json").write_text(json.dumps(record))
  before = tree_digest(run)
  with pytest.raises(ConfigError) as refused:
    train.train_and_evaluate(parse(*args, "--mixed_precision=auto", f"--model_dir={run}"))
  assert str(refused.value) == (
      f"--model_dir={run} holds a run trained in float32: --mixed_precision=float32 -> auto "
      "(mixed_bfloat16 here); this changes what is trained: rerun with "
      "--mixed_precision=float32, use a new --model_dir, or continue this run in "
      "mixed_bfloat16 with --allow_changed_flags=mixed_precision")
  assert tree_digest(run) == before
  allowed = train.train_and_evaluate(parse(*args, "--mixed_precision=auto", f"--model_dir={run}",
                                           "--allow_changed_flags=mixed_precision"))
  assert allowed["precision"] == "mixed_bfloat16"
  assert allowed["flag_changes"][0]["changed"] == {
      "mixed_precision": {"old": "float32", "new": "auto (mixed_bfloat16)"}}
  record = json.loads((run / "flags.json").read_text())
  assert (record["mixed_precision"], record[run_files.PRECISION]) == ("auto", "mixed_bfloat16")


def test_a_recorded_auto_is_the_policy_it_resolved_to_at_its_start(tmp_path, monkeypatch):
  """An older flags.json's auto resolves now; a recorded one is what the run trains and is
  evaluated in, whatever this CPU; a sweep's check of a rerun compares policies too."""
  args = ["--model=cnn", "--filters=4", "--kernel_sizes=3", "--dense_units=8",
          "--dataset=synthetic:shape=8x8x1,classes=3,train=32,test=8", "--batch_size=8",
          f"--model_dir={tmp_path}"]
  cfg = parse(*args)  # float32
  data, strategy = run_files.load_data(cfg), distribute.create_strategy(cfg)
  older = {**cfg.flag_values, "mixed_precision": "auto"}  # no precision recorded
  monkeypatch.setattr(planning, "cpu_has_bf16", lambda: False)
  assert planning.resolve(cfg, data, strategy, older).changes == {}  # auto: float32 here
  monkeypatch.setattr(planning, "cpu_has_bf16", lambda: True)
  with pytest.raises(ConfigError, match=r"holds a run trained in mixed_bfloat16: "
                     r"--mixed_precision=auto \(mixed_bfloat16 at its start\) -> float32; "):
    planning.resolve(cfg, data, strategy, older)
  recorded = {**older, run_files.PRECISION: "mixed_bfloat16"}
  monkeypatch.setattr(planning, "cpu_has_bf16", lambda: False)
  auto = parse(*args, "--mixed_precision=auto")
  with pytest.raises(ConfigError, match=r"--mixed_precision=auto \(mixed_bfloat16 at its "
                     r"start\) -> auto \(float32 here\)"):
    planning.resolve(auto, data, strategy, recorded)
  evaluated = planning.resolve(auto, data, strategy, recorded, training=False)
  assert evaluated.precision == "mixed_bfloat16"
  # The sweep's and the tuner's look before a rerun: an mlp's auto is float32 on any CPU.
  mlp = parse("--model=mlp", f"--model_dir={tmp_path}").flag_values
  assert child_runs.changed_flags(mlp, {**mlp, "mixed_precision": "auto"}) == {}
  assert child_runs.changed_flags({**mlp, "mixed_precision": "mixed_bfloat16"},
                                  {**mlp, "mixed_precision": "auto"}) == {
      "mixed_precision": ("mixed_bfloat16", "auto (float32)")}
  # A record from before the policy was recorded gets it at its next start, fixed from then.
  plan = planning.resolve(auto, data, strategy, older)
  run_files.write_record(str(tmp_path), older)
  run_record.write(auto, older, [], {}, 0, plan, "in_memory")
  assert run_files.read_record(str(tmp_path))[run_files.PRECISION] == "float32"
  # A record older than the flag trained in float32, whatever today's default.
  run_files.write_record(str(tmp_path), {k: v for k, v in cfg.flag_values.items()
                                         if k != "mixed_precision"})
  assert restored.run_config(str(tmp_path), {})[0].mixed_precision == "float32"


def test_unwritable_model_dir_is_refused_before_any_work(tmp_path, monkeypatch):
  real = tempfile.TemporaryFile

  def refuse(*args, dir=None, **kwargs):
    if dir == str(tmp_path):
      raise PermissionError(13, "Permission denied")
    return real(*args, dir=dir, **kwargs)
  monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
  with pytest.raises(ConfigError, match=f"{tmp_path} is not writable .Permission denied"):
    train.train_and_evaluate(parse(*TINY, f"--model_dir={tmp_path}/run"))
  assert not (tmp_path / "run").exists()


def test_a_model_dir_of_another_model_is_refused_and_kept(tmp_path):
  train.train_and_evaluate(parse(*TINY, "--train_steps=4", f"--model_dir={tmp_path}"))
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  with pytest.raises(ConfigError, match="started with other flags: --hidden_units=16 -> 8"):
    train.train_and_evaluate(parse(*TINY, "--hidden_units=8", "--train_steps=8",
                                   f"--model_dir={tmp_path}"))
  # Without the run's record (a run of an older version), the checkpoint itself refuses.
  os.remove(tmp_path / "flags.json")
  os.remove(tmp_path / "results.json")
  with pytest.raises(ConfigError, match="does not match this model"):
    train.train_and_evaluate(parse(*TINY, "--hidden_units=8", "--train_steps=8",
                                   f"--model_dir={tmp_path}"))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_early_stopping_keeps_the_best_and_a_rerun_only_evaluates(tmp_path):
  # A learning rate this small leaves the accuracy where it is: no eval improves on the
  # first, so the second eval stops the run (patience 1).
  args = [*TINY, "--train_steps=64", "--eval_every=8", "--learning_rate=1e-12",
          "--keep_best=accuracy", "--early_stopping=1", "--validation_split=0.25",
          f"--model_dir={tmp_path}"]
  results = train.train_and_evaluate(parse(*args))
  assert results["global_step"] == 16 and results["stopped_early_at"] == 16
  assert results["best_eval"]["step"] == 8 and results["best_eval"]["metric"] == "accuracy"
  assert results["best_eval"]["value"] == pytest.approx(results["validation_accuracy"])
  assert os.path.exists(tmp_path / "best" / "ckpt-8.index")
  assert os.path.exists(tmp_path / "export_best" / "saved_model.pb")
  assert os.path.exists(tmp_path / "checkpoints" / "ckpt-16.index")  # saved at the stop
  again = train.train_and_evaluate(parse(*args))  # the stop is checkpointed: no more steps
  assert again["global_step"] == 16 and again["stopped_early_at"] == 16
  assert again["best_eval"] == results["best_eval"]
  # The stop was made with patience 1: with 3 the run goes on (the count so far, 1, kept)
  # and stops after two more evals without a better one; without --early_stopping it
  # trains to its end.
  patient = [a for a in args if not a.startswith("--early_stopping")]
  more = train.train_and_evaluate(parse(*patient, "--early_stopping=3"))
  assert more["global_step"] == 32 and more["stopped_early_at"] == 32
  assert train.train_and_evaluate(parse(*patient))["global_step"] == 64


def test_a_best_of_another_metric_is_not_compared_with_the_new_one(tmp_path):
  # --early_stopping tracks the eval loss; the rerun asks for the best accuracy: the
  # recorded best (a loss, ~1.1) must not be taken for an accuracy no eval can beat.
  args = [*TINY, "--eval_every=4", "--early_stopping=50", "--validation_split=0.25",
          "--noeval_images", f"--model_dir={tmp_path}"]
  first = train.train_and_evaluate(parse(*args, "--train_steps=8"))
  assert first["best_eval"]["metric"] == "loss" and first["best_eval"]["value"] > 1.0
  again = train.train_and_evaluate(parse(*args, "--train_steps=16", "--keep_best=accuracy"))
  accuracy = read_scalars(os.path.join(tmp_path, "eval"))["accuracy"]
  best_step = max((s for s in accuracy if s > 8), key=lambda s: (accuracy[s], -s))
  assert again["best_eval"] == {"metric": "accuracy", "value": pytest.approx(
      accuracy[best_step]), "step": best_step}
  assert os.path.exists(tmp_path / "best" / f"ckpt-{best_step}.index")


def test_a_signal_in_the_last_loop_stops_there_and_the_rerun_completes_that_boundary(
    tmp_path, monkeypatch):
  args = parse(*TINY, "--train_steps=8", "--eval_every=4", "--keep_best=loss",
               "--validation_split=0.25", "--learning_rate=0.01", f"--model_dir={tmp_path}")
  run_steps = Trainer.run_steps

  def signalled_in_the_last_loop(self, iterator, steps):
    logs = run_steps(self, iterator, steps)
    if self.state.step == 8:
      os.kill(os.getpid(), signal.SIGTERM)  # PreemptionStop's handler takes it
    return logs
  monkeypatch.setattr(Trainer, "run_steps", signalled_in_the_last_loop)
  with pytest.raises(Interrupted) as e:
    train.train_and_evaluate(args)
  assert e.value.step == 8 and e.value.signum == signal.SIGTERM
  # Only the checkpoint ran after the signal: no eval of step 8, no test eval, no export.
  assert os.path.exists(tmp_path / "checkpoints" / "ckpt-8.index")
  assert not any(os.path.exists(tmp_path / f) for f in ("results.json", "export", "best/ckpt-8.index"))
  assert 8 not in read_scalars(tmp_path / "eval")["loss"]
  monkeypatch.undo()
  results = train.train_and_evaluate(args)  # the rerun: the boundary of step 8 completed
  assert results["global_step"] == 8
  eval_loss = read_scalars(tmp_path / "eval")["loss"]
  assert sorted(s for s in eval_loss if s in (4, 8)) == [4, 8]
  assert 8 in read_images(tmp_path / "eval")["confusion_matrix"]
  assert results["best_eval"]["step"] == min((4, 8), key=eval_loss.get)
  assert os.path.exists(tmp_path / "best" / f"ckpt-{results['best_eval']['step']}.index")
  again = train.train_and_evaluate(args)  # completed once: not again
  pictures = _accumulator(tmp_path / "eval").Tensors("confusion_matrix")
  assert [e.step for e in pictures] == [4, 8]
  assert again["weights_digest"] == results["weights_digest"]


def test_a_signal_during_the_final_eval_lets_the_run_finish(tmp_path, monkeypatch):
  # The default handler would kill the process there (under several workers, leaving the
  # others in the eval's collectives): the eval and the export finish first.
  evaluate, signalled = Evaluator.evaluate, []

  def signalled_in_the_test_eval(self, split, raw=False):
    if split == "test":
      signalled.append(split)
      os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(self, split, raw)
  monkeypatch.setattr(Evaluator, "evaluate", signalled_in_the_test_eval)
  # The periodic evals are on the validation split: the only test eval is the final one.
  results = train.train_and_evaluate(parse(*TINY, "--train_steps=4", "--noeval_images",
                                           "--validation_split=0.25",
                                           f"--model_dir={tmp_path}"))
  assert signalled == ["test"] and results["global_step"] == 4 and "test_accuracy" in results
  assert os.path.exists(tmp_path / "results.json")
  assert os.path.exists(tmp_path / "export" / "saved_model.pb")


def test_keep_best_without_anything_to_evaluate_is_refused(tmp_path):
  with pytest.raises(ConfigError, match="need labeled data to evaluate: add --validation_split"):
    train.train_and_evaluate(parse("--model=mlp", "--hidden_units=4", "--batch_size=8",
                                   "--dataset=csv:" + str(_unlabeled_csv(tmp_path)),
                                   "--keep_best=loss", f"--model_dir={tmp_path / 'm'}"))
  assert not (tmp_path / "m").exists()  # refused before anything is written


def _unlabeled_csv(tmp_path):
  """A Kaggle train.csv alone: a labeled train split and nothing to evaluate on."""
  rng = np.random.default_rng(0)
  path = tmp_path / "train.csv"
  write_kaggle_csv(path, rng.integers(0, 256, (40, 28, 28, 1)), rng.integers(0, 10, 40))
  return path


def test_plateau_cuts_the_rate_in_a_real_run_and_a_resume_keeps_the_cuts(tmp_path):
  args = [*TINY, "--lr_schedule=plateau", "--plateau_patience=1", "--lr_decay_rate=0.5",
          "--learning_rate=0.5", "--eval_every=4", "--validation_split=0.25",
          f"--model_dir={tmp_path}"]
  train.train_and_evaluate(parse(*args, "--train_steps=24"))
  rates = read_scalars(os.path.join(tmp_path, "train"))["learning_rate"]
  values = [rates[s] for s in sorted(rates)]
  assert values[0] == pytest.approx(0.5) and values[-1] < 0.5  # cut at least once
  assert all(b <= a for a, b in zip(values, values[1:]))  # never back up
  assert {round(np.log2(0.5 / v), 6) % 1 for v in values} == {0.0}  # halvings only
  path = tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints"))
  factor = tf.train.load_variable(path, "progress/lr_factor/.ATTRIBUTES/VARIABLE_VALUE")
  assert factor == pytest.approx(values[-1] / 0.5)
  train.train_and_evaluate(parse(*args, "--train_steps=28"))  # extended: starts where it was
  rates = read_scalars(os.path.join(tmp_path, "train"))["learning_rate"]
  assert rates[28] <= values[-1]


def _status_bytes(key):
  """A figure of this process's /proc/self/status (kB), in bytes."""
  with open("/proc/self/status") as f:
    return int(next(line for line in f if line.startswith(key + ":")).split()[1]) * 1024


def _train_logged(cfg, caplog) -> dict:
  """train_and_evaluate(cfg) with absl's INFO lines in caplog."""
  old = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)  # absl drops INFO below its own verbosity
  try:
    with caplog.at_level(logging.INFO, logger="absl"):
      return train.train_and_evaluate(cfg)
  finally:
    absl_logging.set_verbosity(old)


def test_results_record_what_made_them_and_the_peak_memory(tmp_path, caplog):
  cfg = parse(*TINY, "--train_steps=4", f"--model_dir={tmp_path}")  # resets the verbosity
  peak_before = _status_bytes("VmHWM")  # the resident peak so far only grows
  results = _train_logged(cfg, caplog)
  made = results["made_with"]
  assert (made["tapeloop"], made["tensorflow"], made["keras"], made["python"]) == (
      importlib.metadata.version("tapeloop"), tf.__version__, keras.__version__,
      platform.python_version())
  root = os.path.dirname(os.path.dirname(os.path.abspath(train.__file__)))
  head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=False)
  if head.returncode == 0:  # run from a checkout: its commit
    assert made["git_commit"] == head.stdout.strip() and "git_modified" in made
  with open("/proc/cpuinfo") as f:
    cpu = next(line for line in f if line.startswith("model name")).split(":", 1)[1].strip()
  assert made["devices"] == {"cpu": cpu, "gpus": [], "replicas": 1}
  # Host memory only on a machine without GPUs: the process's peak resident set, in bytes:
  # at least the peak before the run, at most the machine's memory (whatever this test
  # process ran before it).
  memory = results["peak_memory"]
  with open("/proc/meminfo") as f:
    total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
  assert set(memory) == {"host_rss_bytes"} and peak_before <= memory["host_rss_bytes"] < total
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["peak_memory"] == memory and on_disk["made_with"] == made
  host_mib = memory["host_rss_bytes"] / 2**20
  assert read_scalars(tmp_path / "train")["peak_memory_mib/host"][4] == pytest.approx(host_mib)
  assert f"peak memory: host {host_mib:.0f} MiB (resident)" in caplog.text


def test_peak_memory_of_gpus_from_tensorflows_allocator(monkeypatch):
  gpus = [tf.config.LogicalDevice("/device:GPU:0", "GPU"),
          tf.config.LogicalDevice("/device:GPU:1", "GPU")]
  peaks = {"GPU:0": 3 * 2**30}  # GPU:1's allocator keeps no statistics

  def memory_info(name):
    if name not in peaks:
      raise ValueError(f"no memory statistics for {name}")
    return {"current": 2**20, "peak": peaks[name]}
  monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: gpus)
  monkeypatch.setattr(tf.config.experimental, "get_memory_info", memory_info)
  memory = peak_memory()
  assert memory["gpu_peak_bytes"] == {"GPU:0": 3 * 2**30}
  assert memory_scalars(memory)["peak_memory_mib/GPU_0"] == 3072
