"""--jit_compile: what each mode compiles, and XLA training like the graph it replaces."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.options.config import from_args
from trainer.process.errors import ConfigError
from trainer.run.planning import jit_mode
from flag_helpers import build_trainer


def parse(*args):  # not flag_helpers.parse, which turns XLA off: the default is tested here
  return from_args(args)


DATA = "synthetic:shape=12x12x1,classes=5,train=512,test=50"
MLP = ["--model=mlp", "--hidden_units=16,16"]


@pytest.mark.parametrize("args,replicas,pipeline,expected", [
    (MLP, 1, "in_memory", "loop"),                     # measured faster: the whole loop
    (["--model=cnn"], 1, "in_memory", "off"),          # convolutions: slower under XLA
    (["--model=resnet"], 1, "in_memory", "off"),
    (MLP, 2, "in_memory", "off"),                      # a loop over replicas: not compilable
    (MLP, 1, "stream", "off"),                         # an iterator inside: not compilable
    (MLP + ["--jit_compile=off"], 1, "in_memory", "off"),
    (["--model=cnn", "--jit_compile=loop"], 1, "in_memory", "loop"),
    (MLP + ["--jit_compile=step"], 1, "tf_data", "step"),
    (MLP + ["--jit_compile=step"], 4, "in_memory", "forward_backward"),
    (MLP + ["--image_size=16"], 1, "in_memory", "off"),  # resized_crop: no XLA kernel
    (MLP + ["--image_size=16", "--jit_compile=step"], 1, "in_memory", "step"),  # outside
    (MLP + ["--deterministic", "--cutmix=1"], 1, "in_memory", "loop"),
    (MLP + ["--deterministic"], 1, "in_memory", "loop"),
])
def test_what_each_mode_compiles(args, replicas, pipeline, expected):
  assert jit_mode(parse(*args), replicas, pipeline)[0] == expected


@pytest.mark.parametrize("replicas,pipeline", [(2, "in_memory"), (1, "tf_data"), (1, "stream")])
def test_a_loop_that_cannot_be_compiled_is_refused(replicas, pipeline):
  with pytest.raises(ConfigError, match="--jit_compile=loop needs one replica"):
    jit_mode(parse(*MLP, "--jit_compile=loop"), replicas, pipeline)
  with pytest.raises(ConfigError, match="cannot compile --augment's resized_crop"):
    jit_mode(parse(*MLP, "--jit_compile=loop", "--image_size=16"), 1, "in_memory")


def build(model_dir, *args):
  cfg = parse(f"--dataset={DATA}", "--batch_size=32", f"--model_dir={model_dir}",
              "--steps_per_loop=4", *args)
  keras.utils.set_random_seed(cfg.seed)
  return build_trainer(cfg)


def train(trainer, loops=(1, 6, 3)):
  """Loops of 1, 6 (more than --steps_per_loop: two calls) and 3 steps: the padded window
  and its step count."""
  it = trainer.train_iterator()
  logs = [trainer.run_steps(it, n) for n in loops]
  average = trainer.state.ema.model.weights if trainer.state.ema else []
  return logs, [w.numpy() for w in trainer.state.model.weights + average]


@pytest.mark.parametrize("extra", [
    [],
    # Keras's and tapeloop's random ops inside the XLA loop: dropout masks, augmentation,
    # mixing's Beta draws (no XLA Gamma kernel: written with uniforms); micro-batches, EMA.
    ["--dropout=0.3", "--augment=translate=2,flip,erase=0.5", "--mixup=0.2", "--cutmix=1.0",
     "--label_smoothing=0.1", "--accumulation_steps=2", "--ema_decay=0.9"],
    ["--optimizer=adamw", "--weight_decay=0.1", "--clip_norm=0.5", "--lr_schedule=cosine"],
    ["--optimizer=momentum", "--nesterov", "--lr_schedule=one_cycle"],
])
def test_the_xla_loop_trains_like_the_graph(tmp_path, extra):
  graph = build(tmp_path / "graph", *MLP, *extra, "--jit_compile=off")
  xla = build(tmp_path / "xla", *MLP, *extra, "--jit_compile=loop")
  assert (graph.jit, xla.jit) == ("off", "loop")
  (graph_logs, graph_weights), (xla_logs, xla_weights) = train(graph), train(xla)
  assert graph.state.step == xla.state.step == 10
  for a, b in zip(graph_logs, xla_logs):
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
  for a, b in zip(graph_weights, xla_weights):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert not np.allclose(graph_weights[0], build(tmp_path / "fresh", *MLP).state.model.weights[0])


def test_one_xla_program_for_every_loop_length(tmp_path):
  # The loop length is an input of the program, not a compile-time constant: the last,
  # shorter loop of a run runs the same program.
  trainer = build(tmp_path, *MLP, "--cutmix=1", "--jit_compile=loop")
  window, flips = tf.zeros([4, 32], tf.int32), tf.zeros([4, 32], tf.bool)
  programs = {trainer.loop.function.experimental_get_compiler_ir((window, flips), tf.constant(n))(
      stage="hlo") for n in (4, 1)}
  assert len(programs) == 1


def test_the_xla_step_trains_like_the_graph_on_two_replicas(tmp_path):
  two = ["--strategy=mirrored", "--devices=/cpu:0,/cpu:1"]
  graph = build(tmp_path / "graph", *MLP, *two, "--jit_compile=off")
  xla = build(tmp_path / "xla", *MLP, *two, "--jit_compile=step")
  assert xla.jit == "forward_backward"
  for a, b in zip(train(graph)[1], train(xla)[1]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_an_fp16_overflow_inside_the_xla_loop_skips_the_update(tmp_path):
  trainer = build(tmp_path, *MLP, "--mixed_precision=mixed_float16", "--jit_compile=loop")
  it = trainer.train_iterator()
  trainer.run_steps(it, 2)
  before = [w.numpy() for w in trainer.state.model.trainable_weights]
  iterations = int(trainer.state.optimizer.iterations.numpy())
  # A loss scale so large that every float16 gradient overflows: the step must be skipped.
  trainer.state.optimizer.dynamic_scale.assign(2.0 ** 100)
  trainer.run_steps(it, 1)
  for now, old in zip(trainer.state.model.trainable_weights, before):
    np.testing.assert_array_equal(now.numpy(), old)
  assert trainer.state.loss_scale == 2.0 ** 99
  assert int(trainer.state.optimizer.iterations.numpy()) == iterations
  assert trainer.state.step == 3
