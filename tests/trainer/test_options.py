"""Each option is declared once (trainer/options/declared.py): the flags, the Config, the rerun
rule, trainer.evaluate's inheritance and docs/flags.md all come from the declarations; and
imports inside a function are kept to the modules that need them."""

import ast
import glob
import os
import shlex

from absl import flags

from paths import ROOT
from trainer.options import command_line, config, declared, values
from trainer.run import restored


def test_docs_flags_md_is_generated_from_the_declarations():
  with open(os.path.join(ROOT, "docs", "flags.md")) as f:
    written = f.read()
  assert written == command_line.reference(), (
      "docs/flags.md is stale: python -m trainer.options.command_line > docs/flags.md")


def test_every_declaration_is_a_flag_a_config_field_and_a_help_entry():
  command_line.define_flags()
  fields = set(config.Config.__dataclass_fields__) - {"flag_values"}
  assert fields == set(declared.NAMES) == set(command_line.OWN_FLAGS)
  for option in declared.OPTIONS:
    flag = flags.FLAGS[option.name]
    assert flag.default == option.default and flag.help == option.help, option.name
  listed = [name for names in command_line.GROUPS.values() for name in names]
  assert sorted(listed) == sorted(declared.NAMES)  # each once, in one --help group
  cfg = config.from_args(["--model=mlp"])
  assert {name: getattr(cfg, name) for name in ("batch_size", "augment", "seed")} == {
      "batch_size": 128, "augment": cfg.augment, "seed": 0}


def test_roles_decide_the_rerun_and_the_evaluator():
  assert set(declared.RUN_LENGTH) == {"epochs", "train_steps", "restart_learning_rate"}
  assert set(declared.READS_DATA) == {"data_dir", "manual_dir", "pipeline", "memory_budget_gb",
                                     "tta"}
  assert set(declared.READS_DATA) < set(declared.HOW_IT_RUNS)
  # trainer.evaluate and trainer.export take the run's flags but how it ran, its data
  # flags included.
  assert set(restored.HOW_IT_RAN) == set(declared.HOW_IT_RUNS) - set(declared.READS_DATA)
  for name in ("model", "learning_rate", "augment", "ema_decay", "hidden_units"):
    assert name not in declared.HOW_IT_RUNS
  # A warm restart never extends a run by itself: flags.md says what it does on a rerun.
  row = next(line for line in command_line.reference().splitlines()
             if line.startswith("| `--restart_learning_rate`"))
  assert "| only with a longer run: restarts the schedule over the added steps |" in row


def _project_imports(path):
  """(module-level imports, function-level imports) of a file: for `from A import B`,
  both A.B and A (one is a module)."""
  tree = ast.parse(open(path).read())
  top, nested = [], []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      names = [(f"{node.module}.{a.name}", node.module) for a in node.names]
    elif isinstance(node, ast.Import):
      names = [(a.name, a.name) for a in node.names]
    else:
      continue
    names = [n for n in names if n[1].split(".")[0] in ("trainer", "input_pipeline", "models")]
    (nested if node.col_offset else top).extend(names)
  return top, nested


# The only modules that import project modules inside a function, each for a reason; an
# import anywhere else belongs at the top.
IMPORTS_INSIDE_A_FUNCTION = {
    # TensorFlow loads after the flags are checked: distribute, dry_run, evaluate, phases,
    # train and run_files (which reads a run's record through tf.io.gfile) import it.
    "trainer.main": {"trainer.run.distribute", "trainer.run.dry_run", "trainer.evaluate",
                     "trainer.run.phases", "trainer.run.run_files", "trainer.run.train",
                     "trainer.tuning.trial"},
    # trainer.prepare's flags are checked before TFDS and TensorFlow load (tfds_source).
    "input_pipeline.readers.prepare": {"input_pipeline.readers.tfds_source"},
}


def test_imports_inside_a_function_only_where_named():
  # lint-imports (setup.cfg's contracts) counts an import inside a function as any other,
  # so none can hide a wrong-way import or a circle; this keeps them to the named modules.
  inside = {}
  for package in ("trainer", "input_pipeline", "models"):
    for path in glob.glob(os.path.join(ROOT, package, "**", "*.py"), recursive=True):
      name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
      nested = _project_imports(path)[1]
      if nested:
        inside[name] = {a for a, _ in nested}
  assert inside == IMPORTS_INSIDE_A_FUNCTION


def test_a_flag_with_a_path_is_printed_as_one_shell_word():
  for value in ("runs/my run", "runs/it's", "gs://b/r", ["a b", 2]):
    word = values.flag_arg("model_dir", value)
    assert shlex.split(word) == [f"--model_dir={values.as_text(value)}"]
  assert values.flag_arg("model_dir", "runs/cnn") == "--model_dir=runs/cnn"  # plain as is
