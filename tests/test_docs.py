"""Every command README.md and docs/*.md show runs as written, on a fresh directory whose
HOME holds only what `make data` makes (tests/docs_runner.py: a stand-in Fashion-MNIST,
no network), after the `make train` they start from: long ones with --dry_run added, which
must write nothing; those marked `# needs: ...` (the network, a cluster, your files) for
their flags only. The first `trainer.export` of each format runs (its file is what later
commands and the Python blocks read), the others with --dry_run. `make` lines: the target
exists and `make -n` shows its commands. The Python blocks run as written. The Kubernetes
manifests parse, and each task gets a TF_CONFIG that names it."""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from paths import ROOT

DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
_START = re.compile(r"^(?:\.venv/bin/)?(?:python (?:-m (?:trainer|input_pipeline)\.|scripts/\w+\.py)"
                    r"|scripts/\w+\.py|make\b)")
# Programs whose run takes long: shown commands of these run with --dry_run.
_LONG = ("main", "tune", "sweep", "local_cluster")


def _export_format(args: list[str]) -> str | None:
  return next((a.split("=", 1)[1] for a in args if a.startswith("--format=")), None)


def _blocks(text: str):
  """(language, lines) of every fenced block and every indented block (4 spaces after a
  blank line) outside fences."""
  lines, i = text.splitlines(), 0
  while i < len(lines):
    fence = re.match(r"^```(\w*)", lines[i])
    if fence:
      end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
      yield fence.group(1), lines[i + 1:end]
      i = end + 1
    elif lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
      end = i
      while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
        end += 1
      yield "indented", [line[4:] for line in lines[i:end]]
      i = end
    else:
      i += 1


# Commands quoted inline in a sentence that the test does not run, each with its reason
# (a block's command says it with `# needs:`); each must still be in the docs.
INLINE_NOT_RUN = {
    "python -m trainer.options.command_line > docs/flags.md":
        "rewrites docs/flags.md; test_options checks the file is its output",
    "python scripts/benchmark.py --device=gpu": "needs a GPU",
    "python scripts/ablation.py --flagfile=configs/fashion_best.cfg":
        "trains every ablation of the best config for 20 epochs: hours on a CPU, no dry run",
}
# An upper-case word in an inline command's arguments is a placeholder (DIR, ROOT): a
# pattern, not a command to paste.
_PLACEHOLDER = re.compile(r"\b[A-Z]{3,}\b")


def _inline_commands(text: str):
  """Each `code` span of the prose (outside the blocks) that is a command with arguments
  starting one of tapeloop's programs; a bare program name (`scripts/sweep.py`) is none."""
  code_lines = set()
  for _, lines in _blocks(text):
    code_lines.update(lines)
  for line in text.splitlines():
    if line in code_lines or line.startswith("    "):
      continue
    for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", line):
      words = span.split()
      named_only = len(words) <= (3 if words[0].endswith("python") else 1)
      if _START.match(span) and not named_only and span not in INLINE_NOT_RUN:
        if words[0] == "make" or not _PLACEHOLDER.search(" ".join(words[1:])):
          yield span


def shown_commands():
  """(file, command line, needs) of each shell command the docs show that starts one of
  tapeloop's programs, in their blocks, then those only quoted inline in the prose; needs:
  what a trailing `# ... needs: X` comment says it needs."""
  out, inline = [], []
  for path in DOCS:
    text = open(path).read()
    for language, lines in _blocks(text):
      if language not in ("indented", "", "sh", "shell", "bash", "console"):
        continue
      i = 0
      while i < len(lines):
        line = lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
          i += 1
          line = line.rstrip()[:-1] + " " + lines[i].strip()
        i += 1
        if _START.match(line.strip()):
          needs = re.search(r"#.*\bneeds: ([^#]+)$", line)
          out.append((os.path.relpath(path, ROOT), line.strip(),
                      needs.group(1).strip() if needs else None))
    inline += [(os.path.relpath(path, ROOT), span) for span in _inline_commands(text)]
  shown = [shlex.split(line, comments=True) for _, line, _ in out]
  for doc, span in inline:
    if shlex.split(span) not in shown:  # once: a command is tested where it first appears
      shown.append(shlex.split(span))
      out.append((doc, span, None))
  return out


def python_blocks():
  return [(os.path.relpath(path, ROOT), "\n".join(lines))
          for path in DOCS for language, lines in _blocks(open(path).read())
          if language == "python"]


def _program(words: list[str]) -> tuple[str, list[str]]:
  """(kind, its arguments) of a command's words."""
  if words[0] == "make":
    return "make", words[1:]
  if words[0].endswith("python") and words[1] == "-m":
    return words[2].split(".")[-1], words[3:]
  script = words[1] if words[0].endswith("python") else words[0]
  return os.path.basename(script)[:-3], words[2 if words[0].endswith("python") else 1:]


def _make_n(args: list[str], env: dict) -> str:
  proc = subprocess.run(["make", "-n", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, f"make -n {' '.join(args)}: {proc.stderr}"
  return proc.stdout


def _trainer_line(make_output: str) -> list[str]:
  line = next(l for l in make_output.splitlines() if "-m trainer.main" in l)
  return shlex.split(line)[3:]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
  """Every shown command run by tests/docs_runner.py; {(file, line): (status, out, err)}
  and the trees before and after the dry runs."""
  base = tmp_path_factory.mktemp("docs")
  work, home, outs = base / "work", base / "home", base / "out"
  for d in (work, home, outs):
    d.mkdir()
  for name in ("configs", "scripts", "Makefile"):  # the checkout's files, nothing made
    os.symlink(os.path.join(ROOT, name), work / name)
  env = {k: v for k, v in os.environ.items() if k != "TFDS_DATA_DIR"}
  env["HOME"] = str(home)
  # onnxruntime (1.29 and later) queues usage events for Microsoft, sent by its own C++
  # uploader (past the runner's socket guard), and keeps a device id in HOME: off.
  env["ORT_DISABLE_TELEMETRY"] = "1"
  first_train = _trainer_line(_make_n(["train"], env))
  # export: the exports the real commands read, after the dry runs (which must find the
  # trained run unchanged) and before those commands.
  cases, keys = {"first": [], "dry": [], "export": [], "real": []}, {}
  exported = set()  # the formats an export already runs for

  def add(phase, key, case):
    case["out"] = str(outs / f"case{len(keys)}")
    keys[case["out"]] = key
    cases[phase].append(case)

  add("first", ("Makefile", "make train"), {"kind": "main", "mode": "run", "args": first_train})
  shown = set()
  for doc, line, needs in shown_commands():
    words = shlex.split(line, comments=True)
    if (tuple(words), needs) in shown:  # shown twice (the README and a doc): run once
      continue
    shown.add((tuple(words), needs))
    kind, args = _program(words)
    if kind == "make":
      output = _make_n(args, env)
      if args[:1] == ["train"]:  # after the first `make train`: its trainer command, dry
        add("dry", (doc, line), {"kind": "main", "mode": "run",
                                 "args": ["--dry_run", *_trainer_line(output)]})
      continue
    if needs:
      add("dry", (doc, line), {"kind": kind, "mode": "flags", "args": args})
    elif kind == "export" and "--help" not in args:
      # Each export converts, saves a SavedModel and checks both on the test split: the
      # first of each format runs, the others only check what they would do.
      fmt = _export_format(args)
      if fmt in exported:
        add("dry", (doc, line), {"kind": kind, "mode": "run", "args": ["--dry_run", *args]})
      else:
        exported.add(fmt)
        add("export", (doc, line), {"kind": kind, "mode": "run", "args": args})
    elif (kind in _LONG or "--continuous" in args) and "--help" not in args:
      add("dry", (doc, line), {"kind": kind, "mode": "run", "args": ["--dry_run", *args]})
    else:
      add("real", (doc, line), {"kind": kind, "mode": "run", "args": args})
  for doc, code in python_blocks():
    add("real", (doc, code.splitlines()[0]), {"kind": "python", "code": code, "name": doc})
  spec = base / "spec.json"
  spec.write_text(json.dumps({"work": str(work), "home": str(home),
                              "phases": list(cases.values())}))
  runner = os.path.join(ROOT, "tests", "docs_runner.py")
  proc = subprocess.run([sys.executable, runner, str(spec)], capture_output=True, text=True,
                        timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = {}
  for case in [c for phase in cases.values() for c in phase]:
    key = keys[case["out"]]
    read = lambda suffix, c=case: open(f"{c['out']}.{suffix}").read()
    results[key] = (int(read("status")), read("stdout"), read("stderr"))
  trees = [json.loads((base / f"tree-{n}.json").read_text()) for n in range(len(cases))]
  dry_exports = {keys[c["out"]] for c in cases["dry"] if c["kind"] == "export"
                 and c["mode"] == "run"}
  yield {"results": results, "trees": trees, "work": work, "home": home,
         "dry_exports": dry_exports}
  shutil.rmtree(base, ignore_errors=True)


def test_the_docs_show_the_commands_a_user_meets_first():
  lines = [line for _, line, _ in shown_commands()]
  assert any(line.startswith("make train FLAGS=") for line in lines)
  assert any("scripts/local_cluster.py" in line for line in lines)
  assert any("scripts/sweep.py" in line for line in lines)
  assert any("trainer.tune" in line for line in lines)
  readme = [line for doc, line, _ in shown_commands() if doc == "README.md"]
  assert readme[0].startswith("python -m trainer.main"), "the headline command comes first"


def test_inline_commands_are_tested_unless_named_with_a_reason():
  inline = {line for doc, line, _ in shown_commands() if doc == "README.md"}
  assert {"make tutorial", "make bench-stream", "python -m trainer.main --help"} <= inline
  text = "".join(open(path).read() for path in DOCS)
  assert all(f"`{command}`" in text for command in INLINE_NOT_RUN)


def test_every_shown_command_exits_0(ran):
  failed = [f"{doc}: {line}\n  exit {status}: {(err.strip().splitlines() or ['?'])[-1]}"
            for (doc, line), (status, _, err) in ran["results"].items() if status != 0]
  assert not failed, "\n".join(failed)


def test_dry_runs_write_nothing_and_say_what_would_run(ran):
  after_train, after_dry = ran["trees"][0], ran["trees"][1]
  # No model_dir, no cache, no prepared data: nothing. (Keras's HOME/.keras/keras.json is
  # not seen here: the runner imported Keras once, before HOME was the test's; a dry run's
  # own process keeps it out of HOME: test_tf_env.)
  assert after_dry == after_train
  outputs = {line: out for (doc, line), (_, out, _) in ran["results"].items()
             if ("python -m trainer.main" in line or (doc, line) in ran["dry_exports"])
             and "needs:" not in line and "--help" not in line}
  assert outputs and all("dry run: nothing was written" in out for out in outputs.values()), [
      line for line, out in outputs.items() if "dry run: nothing was written" not in out]
  headline = ran["results"][("README.md", shown_commands()[0][1])][1]
  assert "parameters" in headline and "data fashion_mnist: train " in headline
  assert re.search(r"train: \d+ steps", headline) and "eval on validation every" in headline


def test_make_train_uses_the_default_data_dir_and_says_where_output_goes(ran):
  env = {k: v for k, v in os.environ.items() if k != "TFDS_DATA_DIR"}
  env["HOME"] = str(ran["home"])
  line = _trainer_line(_make_n(["train"], env))
  assert f"--data_dir={ran['home']}/tensorflow_datasets" in line
  assert (ran["work"] / "runs" / "quickstart" / "export" / "saved_model.pb").exists()
  assert "runs/quickstart" in open(os.path.join(ROOT, "README.md")).read()


def test_make_train_installs_only_what_training_needs_and_says_what():
  script = _make_n(["-B", "train"], dict(os.environ))
  installs = [l for l in script.splitlines() if "pip install" in l]
  assert installs and not any("[test" in l or "tune]" in l for l in installs)
  assert not any("--quiet" in l or " -q " in l for l in installs)
  test_script = _make_n(["-B", "test"], dict(os.environ))
  assert any(".[test,tune,export]" in l for l in test_script.splitlines() if "pip install" in l)


def test_the_manifests_parse_and_give_each_task_its_tf_config():
  import yaml  # pylint: disable=g-import-not-at-top  (the test extra's)
  from trainer.options import config  # pylint: disable=g-import-not-at-top
  text = open(os.path.join(ROOT, "docs", "several-machines.md")).read()
  documents = [d for _, lines in _blocks(text) if _ == "yaml"
               for d in yaml.safe_load_all("\n".join(lines)) if d]
  kinds = {d.get("kind") for d in documents}
  assert {"TFJob", "Job", "Service"} <= kinds
  service = next(d for d in documents if d.get("kind") == "Service")
  assert service["spec"]["clusterIP"] == "None"
  jobs = [d for d in documents if d.get("kind") == "Job"]
  tasks = []
  for job in jobs:
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    count = job["spec"].get("completions", 1)
    if job["spec"].get("completionMode") == "Indexed":
      assert pod["subdomain"] == service["metadata"]["name"]
      assert "job-completion-index" in env["INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    for index in range(count):
      tf_config = json.loads(env["TF_CONFIG"]["value"].replace("$(INDEX)", str(index)))
      tasks.append(tf_config["task"])
      if job["spec"].get("completionMode") == "Indexed":
        name = job["metadata"]["name"]
        assert tf_config["cluster"]["worker"] == [
            f"{name}-{i}.{pod['subdomain']}:12345" for i in range(count)]
        assert tf_config["task"] == {"type": "worker", "index": index}
    command = container["command"]
    assert command[:3] == ["python", "-m", "trainer.main"]
    config.from_args([a.replace("configs/", os.path.join(ROOT, "configs/")) for a in command[3:]])
  assert {"type": "evaluator", "index": 0} in tasks
  tfjob = next(d for d in documents if d.get("kind") == "TFJob")
  assert tfjob["apiVersion"] == "kubeflow.org/v1"
  assert "kubeflow/trainer#2699" in text and "training-operator" in text


def test_with_an_empty_home_an_unprepared_dataset_names_make_data_and_data_dir(
    tmp_path, monkeypatch):
  """One default data_dir for `make data` and every command: TFDS's, read when used; a
  dataset not there names the fix; a dry run prepares nothing."""
  import input_pipeline  # pylint: disable=g-import-not-at-top
  from input_pipeline.readers import tfds_source  # pylint: disable=g-import-not-at-top
  from trainer.options import config
  from trainer.run import dry_run  # pylint: disable=g-import-not-at-top
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.setenv("HOME", str(home))
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  default = str(home / "tensorflow_datasets")
  assert tfds_source.default_data_dir() == default
  make_data = _make_n(["-B", "data"], {**os.environ})
  assert f'get_fashion_mnist.sh "{default}"' in make_data
  with pytest.raises(input_pipeline.DataError) as error:
    input_pipeline.load("fashion_mnist")
  assert str(error.value).startswith(f"TFDS dataset 'fashion_mnist' is not prepared in {default} ")
  assert "`make data`" in str(error.value) and "--data_dir" in str(error.value)
  args = ["--dataset=fashion_mnist", "--dry_run", f"--model_dir={tmp_path / 'run'}"]
  # Without network the dry run refuses as the run would; with it, the run would download
  # the data (as the sweep's check lets it): the dry run says so and passes.
  monkeypatch.setattr(tfds_source, "_host_resolves", lambda url: False)
  with pytest.raises(input_pipeline.DataError, match="is not prepared .* there is no network"):
    dry_run.report(config.from_args(args))
  monkeypatch.setattr(tfds_source, "_host_resolves", lambda url: True)
  said = dry_run.report(config.from_args(args))
  assert said.startswith("dry run: nothing was written; without --dry_run this would "
                         f"download and prepare fashion_mnist into {default} (network needed)")
  dry_run.check_runs([args])  # the sweep's check agrees
  assert not (tmp_path / "run").exists() and not tfds_source.READ_ONLY
  assert os.listdir(home) == []
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "elsewhere"))
  assert tfds_source.default_data_dir() == str(tmp_path / "elsewhere")


def test_a_dry_run_and_the_sweeps_check_refuse_a_model_the_images_cannot_feed(tmp_path):
  """The model is built as the run builds it: 8x8 images too small for its convolutions
  are the run's one-line refusal (exit 2), not a dry run that passes."""
  from trainer.options import config
  from trainer.run import dry_run  # pylint: disable=g-import-not-at-top
  from trainer.process.errors import UsageError  # pylint: disable=g-import-not-at-top
  args = ["--model=cnn", "--kernel_sizes=9,9,9", "--batch_size=16", "--dry_run",
          "--dataset=synthetic:train=64,test=16,shape=8x8x1", f"--model_dir={tmp_path / 'run'}"]
  too_small = "8x8 images are too small for CNN's .* smaller --kernel_sizes"
  with pytest.raises(config.ConfigError, match=too_small):
    dry_run.report(config.from_args(args))
  with pytest.raises(UsageError, match=too_small):
    dry_run.check_runs([args])
  assert "parameters" in dry_run.report(config.from_args(
      [*args, "--kernel_sizes=3,3,3", "--dataset=synthetic:train=64,test=16,shape=28x28x1"]))
  assert not (tmp_path / "run").exists()


def test_the_launchers_dry_runs_say_the_plan_of_what_they_start(tmp_path, capsys, monkeypatch):
  """scripts/local_cluster.py's (the sweep's and the tuner's: their tests): its tasks, and
  the run's model, data, steps and eval cadence as trainer.main's dry run says them."""
  from paths import load_script  # pylint: disable=g-import-not-at-top
  local_cluster = load_script("local_cluster")
  monkeypatch.setenv("TF_CONFIG", "")  # the dry run sets its first task's
  spec = local_cluster.cluster(2)
  assert local_cluster.dry_run(spec, ["--model=mlp", "--hidden_units=8", "--train_steps=8",
                                      "--dataset=synthetic:train=256,test=64",
                                      f"--model_dir={tmp_path / 'run'}"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[3] == "the run, as trainer.main's dry run says it:"
  assert out[4].startswith("  model mlp: ") and "parameters" in out[4]
  assert out[6].startswith("  train: 8 steps (2 per epoch) of batch 128")
  assert out[8] == ("  multi_worker: 2 training task(s) in TF_CONFIG, not joined by a dry run; "
                    "the plan above is one task's")
  assert not (tmp_path / "run").exists()
