"""Each option is declared once (trainer/options.py): the flags, the Config, the rerun
rule, trainer.evaluate's inheritance and docs/flags.md all come from the declarations; and
the package has no import cycle to dodge."""

import ast
import glob
import os
import shlex

from absl import flags

from paths import ROOT
from trainer import config, evaluate, flags as tl_flags, options, values


def test_docs_flags_md_is_generated_from_the_declarations():
  with open(os.path.join(ROOT, "docs", "flags.md")) as f:
    written = f.read()
  assert written == tl_flags.reference(), (
      "docs/flags.md is stale: python -m trainer.flags > docs/flags.md")


def test_every_declaration_is_a_flag_a_config_field_and_a_help_entry():
  tl_flags.define_flags()
  fields = set(config.Config.__dataclass_fields__) - {"flag_values"}
  assert fields == set(options.NAMES) == set(tl_flags.OWN_FLAGS)
  for option in options.OPTIONS:
    flag = flags.FLAGS[option.name]
    assert flag.default == option.default and flag.help == option.help, option.name
  listed = [name for names in tl_flags.GROUPS.values() for name in names]
  assert sorted(listed) == sorted(options.NAMES)  # each once, in one --help group
  cfg = config.from_args(["--model=mlp"])
  assert {name: getattr(cfg, name) for name in ("batch_size", "augment", "seed")} == {
      "batch_size": 128, "augment": cfg.augment, "seed": 0}


def test_roles_decide_the_rerun_and_the_evaluator():
  assert set(options.RUN_LENGTH) == {"epochs", "train_steps", "restart_learning_rate"}
  assert set(options.READS_DATA) == {"data_dir", "manual_dir", "pipeline", "memory_budget_gb",
                                     "tta"}
  assert set(options.READS_DATA) < set(options.HOW_IT_RUNS)
  # trainer.evaluate takes the run's flags but how it ran, its data flags included.
  assert set(evaluate._HOW_IT_RAN) == set(options.HOW_IT_RUNS) - set(options.READS_DATA)
  for name in ("model", "learning_rate", "augment", "ema_decay", "hidden_units"):
    assert name not in options.HOW_IT_RUNS
  # A warm restart never extends a run by itself: flags.md says what it does on a rerun.
  row = next(line for line in tl_flags.reference().splitlines()
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
# import anywhere else belongs at the top (one moved into a function to dodge a cycle
# fails here).
IMPORTS_INSIDE_A_FUNCTION = {
    # TensorFlow loads after the flags are checked: distribute, dry_run, evaluate, phases,
    # train and run_files (which reads a run's record through tf.io.gfile) import it.
    "trainer.main": {"trainer.distribute", "trainer.dry_run", "trainer.evaluate",
                     "trainer.phases", "trainer.run_files", "trainer.train", "trainer.trial"},
    # trainer.prepare's flags are checked before TFDS and TensorFlow load (tfds_source).
    "input_pipeline.prepare": {"input_pipeline.tfds_source"},
}


def test_no_import_cycle_and_none_dodged_inside_a_function():
  # An import inside a function is an edge of the graph all the same, so it cannot hide a
  # cycle; and only the named modules have one.
  imports, inside = {}, {}
  for package in ("trainer", "input_pipeline", "models"):
    for path in glob.glob(os.path.join(ROOT, package, "*.py")):
      name = f"{package}.{os.path.basename(path)[:-3]}".removesuffix(".__init__")
      top, nested = _project_imports(path)
      imports[name] = top + nested
      if nested:
        inside[name] = {a for a, _ in nested}
  assert inside == IMPORTS_INSIDE_A_FUNCTION
  # `from A import B` depends on the module A.B when there is one, else on A.
  graph = {m: {a if a in imports else b for a, b in deps} - {m} for m, deps in imports.items()}
  state = {}

  def visit(module, path):
    state[module] = "open"
    for dep in graph[module]:
      assert state.get(dep) != "open", "import cycle: " + " -> ".join(path + [dep])
      if dep not in state:
        visit(dep, path + [dep])
    state[module] = "done"
  for module in graph:
    if module not in state:
      visit(module, [module])


def test_a_flag_with_a_path_is_printed_as_one_shell_word():
  for value in ("runs/my run", "runs/it's", "gs://b/r", ["a b", 2]):
    word = values.flag_arg("model_dir", value)
    assert shlex.split(word) == [f"--model_dir={values.as_text(value)}"]
  assert values.flag_arg("model_dir", "runs/cnn") == "--model_dir=runs/cnn"  # plain as is
