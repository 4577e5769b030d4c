"""scripts/ablation.py: which runs take which technique out, the table, a real tiny run."""

import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata

from datafiles import write_mnist_dir
from paths import ROOT, load_script


@pytest.fixture(scope="module")
def ablation():
  return load_script("ablation")


def test_each_technique_of_the_recipe_is_taken_out_once(ablation):
  recipe = {"label_smoothing": "0.1", "mixup": "0", "cutmix": "1.0",
            "augment": "crop=2,flip", "lr_schedule": "one_cycle", "nesterov": "",
            "ema_decay": "0.999", "validation_split": "0.1"}
  assert ablation.variants(recipe) == {
      "no label smoothing": ["--label_smoothing=0"],
      "no mixup/cutmix": ["--mixup=0", "--cutmix=0", "--mix_probability=1"],
      "no crop": ["--augment=flip"],
      "no flip": ["--augment=crop=2"],
      "constant rate (not one_cycle)": ["--lr_schedule=constant", "--final_learning_rate=0",
                                       "--warmup_steps=0"],
      "no Nesterov": ["--nonesterov"],
  }
  assert ablation.variants({"augment": "none"}) == {}


def test_airbench_techniques_are_taken_out_too(ablation):
  recipe = {"model": "airbench", "augment": "flip=alternating,translate=2",
            "bn_lr_multiplier": "16", "ema_decay": "0.9", "lookahead": ""}
  assert ablation.variants(recipe) == {
      "no flip": ["--augment=translate=2"],
      "no translate": ["--augment=flip=alternating"],
      "random flips (not alternating)": ["--augment=flip,translate=2"],
      "no whitening (a trainable 3x3 conv)": ["--whiten=0"],
      "no identity init (Glorot)": ["--noidentity_init"],
      "BN momentum 0.99 (not 0.4)": ["--bn_momentum=0.99"],  # airbench's default
      "BN rate x1 (not x16)": ["--bn_lr_multiplier=1"],
      "no lookahead": ["--nolookahead"],
  }
  assert "no whitening (a trainable 3x3 conv)" not in ablation.variants(
      {"model": "airbench", "whiten": "0"})
  assert ablation.variants({"model": "airbench", "muon_learning_rate": "0.1"})[
      "no Muon (momentum SGD for the filters too)"] == ["--muon_learning_rate=0"]
  assert "no identity init (Glorot)" not in ablation.variants(
      {"model": "airbench", "identity_init": "false"})
  assert ablation.variants({"model": "airbench", "bn_momentum": "0.9"})[
      "BN momentum 0.99 (not 0.9)"] == ["--bn_momentum=0.99"]


def test_the_table_puts_the_recipe_first_and_ema_from_its_raw_weights(ablation):
  outcomes = {
      "recipe": [{"validation_accuracy": 0.95, "validation_raw_accuracy": 0.94,
                  "test_accuracy": 0.948, "test_raw_accuracy": 0.941, "train_seconds": 1000}],
      "no crop": [{"validation_accuracy": 0.93, "test_accuracy": 0.929, "train_seconds": 990}],
  }
  table = ablation.rows(outcomes)
  assert [r["variant"] for r in table] == ["recipe", "no EMA (the recipe's raw weights)",
                                           "no crop"]
  # With lookahead the EMA steers training: its raw weights are not the recipe without it.
  outcomes["recipe"][0]["flags"] = {"lookahead": True}
  assert "no EMA (the recipe's raw weights)" not in [
      r["variant"] for r in ablation.rows(outcomes)]
  assert table[1]["test_accuracy"] == 0.941
  assert table[2]["validation_change"] == pytest.approx(-0.02)
  text = ablation.markdown(table)
  assert "| no crop | 93.00 | -2.00 | 92.90 | 990 |" in text
  assert "| recipe | 95.00 |  | 94.80 | 1000 |" in text


def test_rows_average_the_seeds_and_the_recipe_is_its_tta_figure(ablation):
  # A recipe with TTA: its figure is the TTA one, its plain predictions the TTA-less row.
  recipe = lambda v, t: {"validation_accuracy": v, "validation_tta_accuracy": t,
                         "test_accuracy": v, "test_tta_accuracy": t, "train_seconds": 100}
  outcomes = {"recipe": [recipe(0.90, 0.92), recipe(0.92, 0.94)],
              "no flip": [{"validation_tta_accuracy": 0.91, "test_tta_accuracy": 0.90,
                           "train_seconds": 90},
                          {"validation_tta_accuracy": 0.89, "test_tta_accuracy": 0.88,
                           "train_seconds": 110}]}
  table = {r["variant"]: r for r in ablation.rows(outcomes)}
  assert table["recipe"]["validation_accuracy"] == pytest.approx(0.93)
  assert table["no TTA (the recipe's plain predictions)"]["test_accuracy"] == pytest.approx(0.91)
  assert table["no TTA (the recipe's plain predictions)"]["validation_change"] == (
      pytest.approx(-0.02))
  assert table["no flip"]["validation_change"] == pytest.approx(-0.03)
  assert "| no flip | 90.00 (91.00, 89.00) | -3.00 | 89.00 | 100 |" in ablation.markdown(
      list(table.values()))


def test_main_runs_the_recipe_and_each_variant_and_writes_the_table(ablation, tmp_path,
                                                                    monkeypatch):
  # The runs themselves are sweep.train's (tests/scripts/test_sweep.py runs real ones).
  # Every path is relative to the caller's directory, not to the repository.
  monkeypatch.chdir(tmp_path)
  cfg = tmp_path / "recipe.cfg"
  cfg.write_text("--model=mlp\n--dataset=fashion_mnist\n# a comment\n--validation_split=0.25\n"
                 "--label_smoothing=0.1\n--augment=crop=2\n")
  calls = []

  def train(model_dir, args, label):
    calls.append((model_dir, args))
    return {"validation_accuracy": 0.9 if label == "recipe" else 0.85, "test_accuracy": 0.8,
            "train_seconds": 10.0,
            "flags": ablation.sweep.flags_for([*args, f"--model_dir={model_dir}"])}
  monkeypatch.setattr(ablation.sweep, "train", train)
  assert ablation.main(["--flagfile=recipe.cfg", "--root=runs", "--out=tables/ablation",
                        "--data_dir=d", "--also=flip added (again):--augment=crop=2,flip",
                        "--seeds=0", "--", "--epochs=1"]) == 0
  base = [f"--flagfile={cfg}", "--epochs=1", f"--data_dir={tmp_path / 'd'}", "--seed=0"]
  runs = tmp_path / "runs"
  assert calls == [(str(runs / "recipe"), base),
                   (str(runs / "no_label_smoothing"), [*base, "--label_smoothing=0"]),
                   (str(runs / "no_crop"), [*base, "--augment=none"]),
                   (str(runs / "flip_added_again"), [*base, "--augment=crop=2,flip"])]
  table = json.loads((tmp_path / "tables" / "ablation.json").read_text())["rows"]
  assert [r["validation_change"] for r in table] == [0.0, *[pytest.approx(-0.05)] * 3]
  assert table[-1]["variant"] == "flip added (again)"
  assert "| no crop | 85.00 | -5.00 | 80.00 | 10 |" in (
      tmp_path / "tables" / "ablation.md").read_text()
  # One HParams experiment over the runs: what the variants change, first.
  acc = event_accumulator.EventAccumulator(str(runs))
  acc.Reload()
  experiment = metadata.parse_experiment_plugin_data(
      acc.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG])
  columns = [(h.name, h.differs) for h in experiment.hparam_infos]
  assert columns[:2] == [("augment", True), ("label_smoothing", True)]
  assert not any(differs for _, differs in columns[2:])
  assert "data_dir" not in dict(columns) and "model_dir" not in dict(columns)


def test_each_row_runs_once_per_seed_and_only_picks_variants(ablation, tmp_path, monkeypatch,
                                                             capsys):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "recipe.cfg").write_text("--model=mlp\n--validation_split=0.25\n"
                                       "--label_smoothing=0.1\n--augment=crop=2\n")
  calls = []

  def train(model_dir, args, label):  # pylint: disable=unused-argument
    calls.append((os.path.relpath(model_dir, tmp_path), args[-1]))
    return {"validation_accuracy": 0.9, "test_accuracy": 0.8, "train_seconds": 1.0}
  monkeypatch.setattr(ablation.sweep, "train", train)
  assert ablation.main(["--flagfile=recipe.cfg", "--root=runs", "--out=t",
                        "--only=no crop"]) == 0
  assert calls == [("runs/recipe/seed0", "--seed=0"), ("runs/recipe/seed1", "--seed=1"),
                   ("runs/no_crop/seed0", "--augment=none"),
                   ("runs/no_crop/seed1", "--augment=none")]
  assert json.loads((tmp_path / "t.json").read_text())["seeds"] == [0, 1]
  assert ablation.main(["--flagfile=recipe.cfg", "--only=no crops"]) == 2
  assert capsys.readouterr().err.strip() == (
      "error: --only: no crops is not a variant of this recipe; its variants: "
      "no label smoothing; no crop")
  assert ablation.main(["--flagfile=recipe.cfg", "--seeds=a"]) == 2
  assert ablation.main(["--flagfile=recipe.cfg", "--also=x:--seed=3"]) == 2
  assert "list the seeds with --seeds" in capsys.readouterr().err


def test_a_failed_run_exits_non_zero_and_leaves_the_tables_as_they_were(ablation, tmp_path,
                                                                         monkeypatch, capsys):
  cfg = tmp_path / "recipe.cfg"
  cfg.write_text("--model=mlp\n--validation_split=0.25\n--label_smoothing=0.1\n")
  out = tmp_path / "ablation"
  for suffix in (".json", ".md"):
    (tmp_path / f"ablation{suffix}").write_text("measured before")

  def train(model_dir, args, label):  # pylint: disable=unused-argument
    if label == "recipe":
      return {"validation_accuracy": 0.9, "test_accuracy": 0.8, "train_seconds": 10.0}
    return {"status": "exit 1", "error": "killed", "returncode": 1}
  monkeypatch.setattr(ablation.sweep, "train", train)
  assert ablation.main([f"--flagfile={cfg}", f"--root={tmp_path / 'runs'}", f"--out={out}",
                        "--seeds=0"]) == 1
  assert (tmp_path / "ablation.json").read_text() == "measured before"
  assert (tmp_path / "ablation.md").read_text() == "measured before"
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      f"error: 1 of 2 runs failed (no label smoothing): {out}.json and .md are left as they "
      "were")


def test_a_real_run_from_another_directory_finds_every_relative_path(tmp_path):
  # The recipe, the root (a space in its name), the tables and the data named relative to
  # the caller's directory; the data only in a flag after --, which the trainer reads.
  write_mnist_dir(tmp_path / "digits", n_train=40, n_test=10, shape=(8, 8), classes=3)
  (tmp_path / "recipe.cfg").write_text(
      "--model=mlp\n--hidden_units=8\n--batch_size=8\n--num_classes=3\n"
      "--validation_split=0.25\n--train_steps=4\n--noeval_images\n")
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "scripts", "ablation.py"), "--flagfile=recipe.cfg",
       "--root=my runs", "--out=tables/ablation", "--data_dir=tfds", "--seeds=0", "--",
       "--dataset=idx:digits"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  recorded = json.loads((tmp_path / "my runs" / "recipe" / "flags.json").read_text())
  assert recorded["data_dir"] == str(tmp_path / "tfds")
  assert recorded["dataset"] == f"idx:{tmp_path / 'digits'}"  # the caller's directory's
  (row,) = json.loads((tmp_path / "tables" / "ablation.json").read_text())["rows"]
  assert row["variant"] == "recipe" and 0 <= row["validation_accuracy"] <= 1


def test_a_recipe_without_a_validation_split_is_refused(ablation, tmp_path, capsys):
  cfg = tmp_path / "recipe.cfg"
  cfg.write_text("--model=mlp\n")
  assert ablation.main([f"--flagfile={cfg}", f"--out={tmp_path / 'x'}"]) == 2
  assert "no --validation_split" in capsys.readouterr().err
  cfg.write_text("--validation_split=0.1\n")
  assert ablation.main([f"--flagfile={cfg}", "--also=--augment=flip"]) == 2
  assert "is not NAME:FLAGS" in capsys.readouterr().err
