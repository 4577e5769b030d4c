"""Running tapeloop's programs as a user does, and reading back what TensorBoard shows."""

import subprocess
import sys

import tensorflow as tf
from google.protobuf import json_format
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata


def run(module, *args, check=True):
  proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=300)
  if check and proc.returncode != 0:
    raise AssertionError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
  return proc


def in_process(program, *args):
  """A program's main (trainer.predict, trainer.export: the module) on these flags, in this
  process: no console, no exit; its return value."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  program.define_flags()  # once per process (cli.define_flag)
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS([program.__name__, *args])
    return program.main([program.__name__])
  finally:
    flags.FLAGS.unparse_flags()


def run_main_many(arg_lists, scratch, module="trainer.main", missing=()):
  """`python -m MODULE ARGS` for each ARGS, as CompletedProcess-like records, run in
  children forked from one process (tests/forked_cli.py): TensorFlow is imported once. An
  ARGS may be a dict {"args": [...], "module": ..., "missing": [packages]} of its own."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  cases = [{"module": module, "missing": list(missing),
            **(args if isinstance(args, dict) else {"args": list(args)}),
            "out": os.path.join(str(scratch), f"case_{i}")}
           for i, args in enumerate(arg_lists)]
  spec = os.path.join(str(scratch), "cases.json")
  with open(spec, "w") as f:
    json.dump(cases, f)
  runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "forked_cli.py")
  proc = subprocess.run([sys.executable, runner, spec], capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = []
  for case in cases:
    read = lambda suffix, c=case: open(f"{c['out']}.{suffix}").read()
    results.append(subprocess.CompletedProcess(case["args"], int(read("status")),
                                               read("stdout"), read("stderr")))
  return results


def _accumulator(run_dir):
  """TensorBoard's own reader of a run directory's event files."""
  acc = event_accumulator.EventAccumulator(
      str(run_dir), size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  return acc


def read_scalars(run_dir):
  """{tag: {step: value}} of a TensorBoard run directory, as the Scalars tab sees it."""
  acc = _accumulator(run_dir)
  return {tag: {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
          for tag in acc.PluginTagToContent("scalars")}


def read_images(run_dir):
  """{tag: {step: decoded uint8 image}} as the Images tab sees it."""
  acc = _accumulator(run_dir)
  out = {}
  for tag in acc.PluginTagToContent("images"):
    for e in acc.Tensors(tag):
      width, height, png = tf.make_ndarray(e.tensor_proto)[:3]
      image = tf.io.decode_png(png).numpy()
      assert image.shape[:2] == (int(height), int(width))
      out.setdefault(tag, {})[e.step] = image
  return out


def read_text(run_dir, tag):
  acc = _accumulator(run_dir)
  return [tf.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)]


def read_experiment(logdir):
  """The HParams experiment in logdir itself (a sweep's or tuner's root), as TensorBoard
  reads it: its hparam_infos and metric_infos."""
  content = _accumulator(logdir).PluginTagToContent("hparams")
  return hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])


def read_hparams(model_dir):
  """(hparams of the session, metric names of the experiment) from the HParams plugin's
  data in model_dir itself."""
  acc = _accumulator(model_dir)
  content = acc.PluginTagToContent("hparams")
  session = hparams_metadata.parse_session_start_info_plugin_data(
      content[hparams_metadata.SESSION_START_INFO_TAG])
  experiment = hparams_metadata.parse_experiment_plugin_data(
      content[hparams_metadata.EXPERIMENT_TAG])
  values = {k: json_format.MessageToDict(v) for k, v in session.hparams.items()}
  metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
  return values, metrics, {h.name for h in experiment.hparam_infos}
