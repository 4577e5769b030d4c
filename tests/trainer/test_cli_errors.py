"""Bad invocations, table-driven: each exits 2 with one line that names the problem (no
traceback) and leaves model_dir as it was."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import models
from trainer.run import run_files, train
from datafiles import (idx_bytes, tree_digest, write_image_folder, write_kaggle_csv,
                       write_mnist_dir)
from flag_helpers import parse
from paths import ROOT
from runs import run_main_many

GOOD = ["--model=mlp", "--hidden_units=8", "--dataset=synthetic:train=64,test=8",
        "--batch_size=16", "--train_steps=2"]


def _files(tmp):
  """Bad data files of every kind; returns tmp for f-strings."""
  for name in ("bad_gzip", "bad_magic", "truncated", "labels_out_of_range", "count_mismatch"):
    write_mnist_dir(os.path.join(tmp, name))
  d = lambda *p: os.path.join(tmp, *p)
  with open(d("bad_gzip", "train-labels-idx1-ubyte.gz"), "wb") as f:
    f.write(b"\x1f\x8b\x08\0broken")
  with open(d("bad_magic", "train-images-idx3-ubyte.gz"), "wb") as f:
    f.write(gzip.compress(idx_bytes(np.zeros(12, np.uint8))))
  with open(d("truncated", "t10k-images-idx3-ubyte.gz"), "wb") as f:
    f.write(gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-100]))
  with open(d("labels_out_of_range", "train-labels-idx1-ubyte.gz"), "wb") as f:
    f.write(gzip.compress(idx_bytes(np.full(12, 11, np.uint8))))
  with open(d("count_mismatch", "train-labels-idx1-ubyte.gz"), "wb") as f:
    f.write(gzip.compress(idx_bytes(np.zeros(7, np.uint8))))
  rng = np.random.default_rng(0)
  images, labels = rng.integers(0, 256, (20, 28, 28, 1)), rng.integers(0, 10, 20)
  write_kaggle_csv(d("test.csv"), images)
  write_kaggle_csv(d("pixel.csv"), images, labels)
  write_kaggle_csv(d("label.csv"), images, labels)
  write_kaggle_csv(d("columns.csv"), images, labels)
  _edit_line(d("pixel.csv"), 3, lambda l: l.replace(",", ",300,", 1).rsplit(",", 1)[0])
  _edit_line(d("label.csv"), 4, lambda l: "12" + l[l.index(","):])
  _edit_line(d("columns.csv"), 5, lambda l: l.rsplit(",", 1)[0])
  os.makedirs(d("dir_csv", "train.csv"))
  with open(d("unknown.cfg"), "w") as f:
    f.write("--model=mlp\n--colour=blue\n")
  with open(d("a_file"), "w") as f:
    f.write("x")
  _init_from_sources(d)
  # A run of GOOD's mlp recorded in mixed_bfloat16: auto, the default, is float32 for an
  # mlp on any CPU.
  bf16 = parse(*GOOD, "--mixed_precision=mixed_bfloat16", f"--model_dir={d('bf16_run')}")
  run_files.write_record(d("bf16_run"), {**bf16.flag_values,
                                         run_files.PRECISION: "mixed_bfloat16"})
  write_image_folder(d("photos"), per_split=(("train", 6),))  # sizes 20x24 to 40x28
  write_image_folder(d("broken"), per_split=(("train", 6),), sizes=((12, 12),))
  with open(d("broken", "train", "dog", "zz_broken.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + b"truncated")
  return tmp


def _init_from_sources(d):
  """--init_from's bad sources: a cnn run's model_dir (its record names its model), an RGB
  mlp's checkpoint, a run's directory without checkpoints."""
  mlp_rgb = models.create("mlp", num_classes=10, image_shape=(28, 28, 3), hidden_units=[8])
  tf.train.Checkpoint(model=mlp_rgb).write(d("rgb_run", "checkpoints", "ckpt-1"))
  cnn = models.create("cnn", num_classes=10, image_shape=(28, 28, 1), filters=[4],
                      kernel_sizes=[3], dense_units=[8])
  tf.train.Checkpoint(model=cnn).write(d("cnn_run", "checkpoints", "ckpt-1"))
  run_files.write_record(d("cnn_run"), {"model": "cnn"})
  os.makedirs(d("no_checkpoints"))


def _edit_line(path, lineno, change):
  lines = open(path).read().splitlines()
  lines[lineno - 1] = change(lines[lineno - 1])
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def _cases(t):
  return [
      (["--model=vgg"], "--model=vgg is unknown; known models: airbench, cnn, "
       "efficientnet_v2_b0, mlp, mobilenet_v3_small, resnet, resnet50"),
      (["--dataset=ftp:x"], "unknown data source prefix 'ftp:'"),
      (["--dataset=no_such_dataset"], "unknown TFDS dataset 'no_such_dataset'"),
      (["--optimizer=adagrad"], "--optimizer=adagrad is unknown"),
      (["--lr_schedule=linear"], "--lr_schedule=linear is unknown"),
      (["--lr_schedule=step"], "--lr_schedule=step needs --lr_boundaries, e.g. 6000,9000"),
      (["--accumulation_steps=50"], "--batch_size=16 x --accumulation_steps=50 is more than "
                                    "the 64 training examples"),
      (["--mixup=0.2", "--strategy=mirrored", "--cpu_devices=2", "--batch_size=2"],
       "--mixup/--cutmix mix each replica's batch within itself"),
      (["--mixed_precision=fp8"], "--mixed_precision=fp8 is unknown"),
      (["--batch_size=0"], "--batch_size=0 must be positive"),
      (["--batch_size=-16"], "--batch_size=-16 must be positive"),
      (["--train_steps=0"], "--train_steps=0 must be positive"),
      (["--steps_per_loop=0"], "--steps_per_loop=0 must be positive"),
      (["--learning_rate=0"], "--learning_rate=0.0 must be positive"),
      (["--learning_rate=-0.1"], "--learning_rate=-0.1 must be positive"),
      (["--learning_rate=abc"], "learning_rate"),
      (["--epochs=2"], "--epochs and --train_steps both given"),
      (["--validation_split=1.5"], "--validation_split=1.5 must be in [0, 1)"),
      (["--keep_best=f1"], "--keep_best=f1 is unknown; use accuracy or loss"),
      (["--early_stopping=0"], "--early_stopping=0 must be positive"),
      (["--filters=3"], "--filters does not apply to --model=mlp"),
      (["--dataset=mnist", "--augment=flip"], "mirrored characters"),
      (["--strategy=mirrored", "--cpu_devices=2", "--batch_size=15"],
       "--batch_size=15 is not divisible by the 2 replicas"),
      (["--intra_op_threads=0"], "--intra_op_threads=0 must be positive"),
      (["--strategy=multi_worker"], "--strategy=multi_worker needs TF_CONFIG"),
      (["--batch_size=128"], "--batch_size=128 is larger than the 64 training examples"),
      ([f"--dataset=idx:{t}/nowhere"], "no such directory"),
      ([f"--dataset=idx:{t}/bad_gzip"], "train-labels-idx1-ubyte.gz is not a valid gzip"),
      ([f"--dataset=idx:{t}/bad_magic"], "magic number 0x00000801, expected 0x00000803"),
      ([f"--dataset=idx:{t}/truncated"], "t10k-images-idx3-ubyte.gz is truncated"),
      ([f"--dataset=idx:{t}/labels_out_of_range"], "label 11 at item 0"),
      ([f"--dataset=idx:{t}/count_mismatch"], "has 12 images but"),
      ([f"--dataset=csv:{t}/missing.csv"], "no such file"),
      ([f"--dataset=csv:{t}/dir_csv"], "cannot read"),
      ([f"--dataset=csv:{t}/pixel.csv"], "line 3 pixel0: pixel value 300"),
      ([f"--dataset=csv:{t}/label.csv"], "label 12 at line 4"),
      ([f"--dataset=csv:{t}/columns.csv"], "line 5 has 784 columns, the header has 785"),
      ([f"--dataset=csv:{t}/test.csv"], "has no labeled train split"),
      (["--flagfile=/nonexistent.cfg"], "nonexistent.cfg"),
      ([f"--flagfile={t}/unknown.cfg"], "colour"),
      ([f"--model_dir={t}/a_file/run"], "is a file, not a directory"),
      (["--model_dir=/proc/tapeloop-run"], "/proc is not writable"),
      # TensorFlow's checkpoint reader globs: exp[1] would save, then never resume.
      ([f"--model_dir={t}/exp[1]"], "in which [ ] are special: a run there could not "
       "resume"),
      # ... and its clean-up would delete a sibling's: runs/a? matches runs/ab.
      ([f"--model_dir={t}/run?"], "in which ? are special"),
      (["positional"], "unexpected arguments positional"),
      ([f"--dataset=folder:{t}/photos"], "vary in size (20x24 to 40x28): pass --image_size=HxW"),
      ([f"--dataset=folder:{t}/photos", "--image_size=20x"],
       "--image_size=20x: give H or HxW in pixels"),
      ([f"--dataset=folder:{t}/broken"], "zz_broken.png is not a readable image (1 such file"),
      ([f"--dataset=folder:{t}/nowhere"], "needs " + f"{t}/nowhere/train/<class>/"),
      (["--memory_budget_gb=0"], "--memory_budget_gb=0.0 must be positive"),
      (["--freeze=conv"], "--freeze=conv matches no trainable variable (the model's paths "
       "are such as hidden_0/kernel"),
      (["--freeze=kernel"], "--freeze=kernel matches the classifier head (logits/kernel)"),
      (["--freeze=a("], "--freeze='a(' is not a regular expression"),
      (["--unfreeze_at_epoch=1"], "--unfreeze_at_epoch=1 unfreezes what --freeze holds"),
      (["--freeze=backbone", "--unfreeze_at_epoch=1"], "--unfreeze_at_epoch=1 is step 4, not "
       "before the run's end at step 2"),
      (["--backbone_learning_rate_multiplier=0"],
       "--backbone_learning_rate_multiplier=0.0 must be positive"),
      (["--pipeline=stream"], "--pipeline=stream reads TFDS or folder: data"),
      (["--pipeline=disk"], "--pipeline=disk is unknown"),
      (["--jit_compile=loop", "--pipeline=tf_data"], "--jit_compile=loop needs one replica "
       "and --pipeline=in_memory (this run: 1 replica(s), tf_data): use --jit_compile=step"),
      (["--augment=resized_crop=1.5"], "resized_crop in [0, 1) (0: none)"),
      ([f"--init_from={t}/nowhere"], f"--init_from={t}/nowhere: no such directory, file or "
       f"checkpoint prefix ({t}/nowhere.index does not exist either)"),
      ([f"--init_from={t}/no_checkpoints"], f"no checkpoint in {t}/no_checkpoints nor in "
       f"{t}/no_checkpoints/checkpoints"),
      ([f"--init_from={t}/a_file"], f"{t}/a_file is not a checkpoint nor a readable "
       ".weights.h5/.h5 file"),
      ([f"--init_from={t}/cnn_run"], f"--init_from={t}/cnn_run (a --model=cnn run) matches "
       "no variable of this --model=mlp besides the head"),
      ([f"--init_from={t}/rgb_run"], "hidden_0/kernel has shape 2352x8 there and 784x8 in "
       "this --model=mlp: the source took 3-channel images, this run's have 1"),
      (["--init_from=imagenet"], "--init_from=imagenet: --model=mlp has no published "
       "ImageNet weights"),
      (["--lr_schedule=cosine", "--warmup_steps=2"], "--warmup_steps=2 is not below the "
       "schedule's 2 steps"),
      ([f"--model_dir={t}/bf16_run"], f"--model_dir={t}/bf16_run holds a run trained in "
       "mixed_bfloat16: --mixed_precision=mixed_bfloat16 -> auto (float32 here); this changes "
       "what is trained: rerun with --mixed_precision=mixed_bfloat16, use a new --model_dir, "
       "or continue this run in float32 with --allow_changed_flags=mixed_precision"),
  ]


def _run(args, env=None):
  return subprocess.run([sys.executable, "-m", "trainer.main", *args], capture_output=True,
                        text=True, timeout=180, env=env)


def _problems(proc, message, model_dir_ok):
  last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
  problems = []
  if proc.returncode != 2:
    problems.append(f"exit {proc.returncode}")
  if not last.startswith("error: ") or message not in last:
    problems.append(f"last line {last!r}")
  if "Traceback" in proc.stderr:
    problems.append("traceback")
  if not model_dir_ok():
    problems.append("model_dir changed")
  return problems


def test_bad_invocations_exit_2_with_one_line(tmp_path, monkeypatch):
  t = _files(str(tmp_path))
  cases = _cases(t)
  assert len(cases) >= 25
  monkeypatch.delenv("TF_CONFIG", raising=False)
  model_dirs = [tmp_path / f"model_dir_{i}" for i in range(len(cases))]
  # Each case is the command line in its own process, forked after the imports (which
  # are most of a failing run's time).
  procs = run_main_many([GOOD + [f"--model_dir={d}"] + extra
                         for d, (extra, _) in zip(model_dirs, cases)], tmp_path)
  failures = [(extra, problems) for d, (extra, message), proc in zip(model_dirs, cases, procs)
              if (problems := _problems(proc, message, lambda d=d: not d.exists()))]
  assert not failures, failures


@pytest.mark.parametrize("change,message", [
    (["--hidden_units=16"], "holds a run started with other flags: --hidden_units=8 -> 16; "),
    (["--model=cnn", "--hidden_units=8"], "--hidden_units does not apply to --model=cnn"),
])
def test_an_existing_model_dir_is_left_as_it_was(tmp_path, change, message):
  model_dir = str(tmp_path / "run")
  train.train_and_evaluate(parse(*GOOD, f"--model_dir={model_dir}"))
  before = tree_digest(model_dir)
  args = [a for a in GOOD if not any(a.startswith(c.split("=")[0] + "=") for c in change)]
  proc = _run(args + change + [f"--model_dir={model_dir}"])
  assert not _problems(proc, message, lambda: tree_digest(model_dir) == before)


def test_verbosity_shows_the_traceback(tmp_path):
  # A bad value is refused before TensorFlow loads: this costs no start-up.
  proc = _run([*GOOD, "--batch_size=0", f"--model_dir={tmp_path}/m", "--verbosity=1"])
  assert proc.returncode != 0 and "Traceback" in proc.stderr
  assert "ConfigError: --batch_size=0 must be positive" in proc.stderr


@pytest.mark.parametrize("module,groups", [
    ("trainer.main", ["Data:", "Run:", "Evaluation:", "Optimization:", "Hardware:",
                      "Model hyperparameters"]),
    ("trainer.predict", ["Prediction:"]),
    ("trainer.evaluate", ["Evaluation:", "Overrides of the run's flags:"]),
    ("trainer.export", ["Export:", "The check before publishing:"]),
])
def test_help_lists_the_programs_own_flags_by_group_and_exits_0(module, groups):
  proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  assert out.startswith(f"usage: python -m {module} ")
  positions = [out.index(g) for g in groups]
  assert positions == sorted(positions)  # grouped, in this order
  assert "  --model_dir" in out and "--helpfull" in out
  assert "--alsologtostderr" not in out  # absl's own flags stay behind --helpfull
  if module == "trainer.main":
    assert "  --batch_size=128\n      GLOBAL batch size" in out


def test_help_into_a_reader_that_stopped_is_no_traceback():
  # `python -m trainer.main --help | head -3`: the reader is gone before the help is out.
  proc = subprocess.Popen([sys.executable, "-m", "trainer.main", "--help"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  proc.stdout.close()
  err = proc.communicate(timeout=60)[1].decode()
  assert proc.returncode == 0 and "Traceback" not in err, err
