"""scripts/ablation.py: which runs take which technique out, the table, a real tiny run."""

import importlib.util
import json
import os
import sys

import pytest

from paths import ROOT


@pytest.fixture(scope="module")
def ablation():
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  spec = importlib.util.spec_from_file_location(
      "ablation", os.path.join(ROOT, "scripts", "ablation.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_each_technique_of_the_recipe_is_taken_out_once(ablation):
  recipe = {"label_smoothing": "0.1", "mixup": "0", "cutmix": "1.0",
            "augment": "crop=2,flip", "lr_schedule": "one_cycle", "nesterov": "",
            "ema_decay": "0.999", "validation_split": "0.1"}
  assert ablation.variants(recipe) == {
      "no label smoothing": ["--label_smoothing=0"],
      "no mixup/cutmix": ["--mixup=0", "--cutmix=0", "--mix_probability=1"],
      "no crop": ["--augment=flip"],
      "no flip": ["--augment=crop=2"],
      "constant rate, not one_cycle": ["--lr_schedule=constant", "--final_learning_rate=0",
                                       "--warmup_steps=0"],
      "no Nesterov": ["--nonesterov"],
  }
  assert ablation.variants({"augment": "none"}) == {}


def test_the_table_puts_the_recipe_first_and_ema_from_its_raw_weights(ablation):
  outcomes = {
      "recipe": {"validation_accuracy": 0.95, "validation_raw_accuracy": 0.94,
                 "test_accuracy": 0.948, "test_raw_accuracy": 0.941, "train_seconds": 1000},
      "no crop": {"validation_accuracy": 0.93, "test_accuracy": 0.929, "train_seconds": 990},
  }
  table = ablation.rows(outcomes)
  assert [r["variant"] for r in table] == ["recipe", "no EMA (the recipe's raw weights)",
                                           "no crop"]
  assert table[1]["test_accuracy"] == 0.941
  assert table[2]["validation_change"] == pytest.approx(-0.02)
  text = ablation.markdown(table)
  assert "| no crop | 93.00 | -2.00 | 92.90 | 990 |" in text
  assert "| recipe | 95.00 |  | 94.80 | 1000 |" in text


def test_main_runs_the_recipe_and_each_variant_and_writes_the_table(ablation, tmp_path,
                                                                    monkeypatch):
  # The runs themselves are sweep.train's (tests/scripts/test_sweep.py runs real ones).
  cfg = tmp_path / "recipe.cfg"
  cfg.write_text("--model=mlp\n# a comment\n--validation_split=0.25\n--label_smoothing=0.1\n"
                 "--augment=crop=2\n")
  calls = []

  def train(model_dir, args, label):
    calls.append((os.path.basename(model_dir), args))
    return {"validation_accuracy": 0.9 if label == "recipe" else 0.85, "test_accuracy": 0.8,
            "train_seconds": 10.0}
  monkeypatch.setattr(ablation.sweep, "train", train)
  out = tmp_path / "ablation"
  assert ablation.main([f"--flagfile={cfg}", f"--root={tmp_path}", f"--out={out}",
                        "--data_dir=d",
                        "--also=flip added (again):--augment=crop=2,flip --nesterov",
                        "--", "--epochs=1"]) == 0
  base = [f"--flagfile={cfg}", "--epochs=1", "--data_dir=d"]
  assert calls == [("recipe", base), ("no_label_smoothing", [*base, "--label_smoothing=0"]),
                   ("no_crop", [*base, "--augment=none"]),
                   ("flip_added_again", [*base, "--augment=crop=2,flip", "--nesterov"])]
  table = json.loads((tmp_path / "ablation.json").read_text())["rows"]
  assert [r["validation_change"] for r in table] == [0.0, *[pytest.approx(-0.05)] * 3]
  assert table[-1]["variant"] == "flip added (again)"
  assert "| no crop | 85.00 | -5.00 | 80.00 | 10 |" in (tmp_path / "ablation.md").read_text()


def test_a_recipe_without_a_validation_split_is_refused(ablation, tmp_path, capsys):
  cfg = tmp_path / "recipe.cfg"
  cfg.write_text("--model=mlp\n")
  assert ablation.main([f"--flagfile={cfg}", f"--out={tmp_path / 'x'}"]) == 2
  assert "no --validation_split" in capsys.readouterr().err
  cfg.write_text("--validation_split=0.1\n")
  assert ablation.main([f"--flagfile={cfg}", "--also=--augment=flip"]) == 2
  assert "is not NAME:FLAGS" in capsys.readouterr().err
