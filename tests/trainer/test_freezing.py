"""--freeze, --unfreeze_at_epoch and --backbone_learning_rate_multiplier inside the trainer:
frozen variables and batch norm statistics stay bit for bit, the optimizer holds no slot for
them, the unfreeze lands on its epoch's first step and resumes bit-exact, a checkpoint
restores into the stage it recorded, replicas train as one device, and the multiplier is a
rate for Adam as for SGD, with weight decay on each replica."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import paths
from trainer.options.config import from_values
from trainer.process.errors import ConfigError
from trainer.outer.actions import Action
from trainer.outer.triggers import AtSteps
from trainer.run import distribute, dry_run, run_record, train
from flag_helpers import build_trainer, parse

DATA = "--dataset=synthetic:shape=8x8x1,classes=3,train=64,test=16"
# A ResNet small enough to be cheap, with batch norm in every block: 4 steps per epoch.
RESNET = ["--model=resnet", "--widths=4", "--blocks_per_stage=1", DATA, "--batch_size=16"]
FROZEN = ["--freeze=backbone", "--epochs=3", "--unfreeze_at_epoch=1", "--optimizer=momentum",
          "--learning_rate=0.05"]
DEVICES = {1: ["--strategy=default"], 2: ["--strategy=mirrored", "--devices=/cpu:0,/cpu:1"]}


def build(model_dir, *args, replicas=1):
  cfg = parse(*RESNET, f"--model_dir={model_dir}", *DEVICES[replicas], *args)
  keras.utils.set_random_seed(cfg.seed)  # the same initial weights for every build
  return build_trainer(cfg, distribute.create_strategy(cfg))


def values(model) -> dict[str, np.ndarray]:
  return {p: v.numpy().copy() for p, v in paths.variable_paths(model).items()}


def changed(before, after) -> set[str]:
  return {p for p in before if not np.array_equal(before[p], after[p])}


@pytest.mark.parametrize("pattern,frozen", [
    # Everything but the head: all batch norm layers normalize with their statistics.
    ("backbone", lambda p: not paths.is_head(p)),
    # One block (its convolutions and batch norms): the stem and its batch norm train.
    ("blocks_0/", lambda p: p.startswith("blocks_0/")),
])
def test_frozen_variables_and_batch_norm_statistics_stay_bit_for_bit(tmp_path, pattern, frozen):
  trainer = build(tmp_path, f"--freeze={pattern}", "--ema_decay=0.9", "--epochs=2")
  state = trainer.state
  before = values(state.model)
  trainer.run_steps(trainer.train_iterator(), 3)
  after = values(state.model)
  expected = {p for p in before if frozen(p)}
  assert expected and changed(before, after) == set(before) - expected
  # No slot for a frozen variable: Adam's two per trainable variable, named after its path.
  trainable = [v for p, v in paths.variable_paths(state.model).items() if not frozen(p)
               and v.trainable]
  slots = [v for v in state.optimizer.variables if v.name != "iteration"]
  assert len(slots) == 2 * len(trainable)
  assert {v.name for v in slots} == {f"{v.path.replace('/', '_')}_{kind}"
                                     for v in trainable for kind in ("momentum", "velocity")}
  # The average of a frozen variable is the variable.
  average = values(state.ema.model)
  for p in expected:
    np.testing.assert_array_equal(average[p], after[p], err_msg=p)


class _Kill(Action):
  """Ends the process's training at `step` as a kill would: after the last checkpoint,
  with nothing saved."""

  def __init__(self, step: int):
    self.step, self.trigger = step, AtSteps(step)

  def __call__(self, boundary):
    if boundary.step == self.step:
      raise RuntimeError(f"killed at step {boundary.step}")


def _run(model_dir, *windows, replicas=1, args=()):
  """A run of --epochs=3 --unfreeze_at_epoch=1 (steps 0-3 frozen, 4-11 all), trained in
  windows of these step counts from where model_dir's checkpoint left it; saved at the end."""
  trainer = build(model_dir, *FROZEN, *args, replicas=replicas)
  it = trainer.train_iterator()
  for steps in windows:
    trainer.run_steps(it, steps)
  trainer.state.checkpoints.save(trainer.state.step)
  return trainer


def _by_name(optimizer) -> dict[str, np.ndarray]:
  """An optimizer's variables by name (a loss scaling wrapper's own marked apart: it and
  the optimizer it wraps each count an "iteration")."""
  inner = {id(v) for v in getattr(optimizer, "inner_optimizer", optimizer).variables}
  return {("" if id(v) in inner else "outer/") + v.name: v.numpy()
          for v in optimizer.variables}


def _check_carried_over(state, step: int) -> None:
  """The unfreeze at `step`: the new optimizer keeps the old one's step count and slots
  (and fp16's loss scale), and gains zero slots for what was frozen."""
  old = _by_name(state.optimizer)
  assert state.enter_stage_of(step) and not state.enter_stage_of(step)
  new = _by_name(state.optimizer)
  assert set(old) < set(new)
  for name, value in old.items():
    np.testing.assert_array_equal(new[name], value, err_msg=name)
  assert int(state.optimizer.iterations.numpy()) == step
  assert all(not new[name].any() for name in set(new) - set(old))  # the backbone's: zero
  assert any(old[name].any() for name in old if "logits" in name)  # the head's: moved


def test_the_unfreeze_lands_on_its_epoch_and_resumes_bit_exact(tmp_path):
  straight = build(tmp_path / "straight", *FROZEN)
  state, it = straight.state, straight.train_iterator()
  start = values(state.model)
  straight.run_steps(it, 4)  # the first epoch, frozen to its end
  assert changed(start, values(state.model)) == {"logits/kernel", "logits/bias"}
  assert len(state.optimizer.variables) == 1 + 2
  _check_carried_over(state, 4)
  straight.run_steps(it, 1)  # step 4, the second epoch's first, trains everything
  # Every variable moved, batch norm's statistics too (its layers train again).
  assert changed(start, values(state.model)) == set(start)
  assert len(state.optimizer.variables) == 1 + len(state.model.trainable_variables)
  straight.run_steps(it, 7)
  # The command's run killed at step 10 after its checkpoint of step 8 (the unfrozen
  # stage's slots) resumes to the run trained straight through.
  killed = parse(*RESNET, f"--model_dir={tmp_path / 'killed'}", *FROZEN, "--steps_per_loop=3")
  with pytest.raises(RuntimeError, match="killed at step 10"):
    train.train_and_evaluate(killed, extra_actions=[_Kill(10)])
  assert sorted(os.listdir(tmp_path / "killed" / "checkpoints"))[-2:] == [
      "ckpt-8.data-00000-of-00001", "ckpt-8.index"]
  assert train.train_and_evaluate(killed)["weights_digest"] == straight.state.weights_digest()
  # Stopped after the unfreeze (a first window over it, split at step 4), and at the
  # unfreeze's own step (the frozen stage's slots): both resume to the straight run.
  stopped = {}
  for stop, name in ((6, "after"), (4, "at")):
    stopped[name] = _run(tmp_path / name, stop)
    resumed = _run(tmp_path / name, 12 - stop)
    assert (stopped[name].state.step, resumed.state.step) == (stop, 12)
    assert resumed.state.weights_digest() == straight.state.weights_digest(), name
  # Two replicas train the same 6 steps like one device (windows of 3: the second split).
  two = _run(tmp_path / "two", 3, 3, replicas=2)
  a, b = values(stopped["after"].state.model), values(two.state.model)
  for p in a:
    np.testing.assert_allclose(a[p], b[p], atol=2e-5, err_msg=p)
  # Each replica holds the same weights and slots (the head's carried over on each).
  for v in two.state.model.weights + two.state.optimizer.variables:
    base, *others = two.strategy.experimental_local_results(v.value)
    for other in others:
      np.testing.assert_array_equal(other.numpy(), base.numpy(), err_msg=v.path)


def test_fp16_loss_scaling_carries_over_at_the_unfreeze(tmp_path):
  # Keras's loss scaling wraps the optimizer: its scale and counter carry over too.
  cfg = parse("--model=mlp", "--hidden_units=8", DATA, "--batch_size=16",
              f"--model_dir={tmp_path}", "--freeze=backbone", "--epochs=2",
              "--unfreeze_at_epoch=1", "--mixed_precision=mixed_float16")
  trainer = build_trainer(cfg)
  trainer.run_steps(trainer.train_iterator(), 4)
  assert "outer/dynamic_scale" in _by_name(trainer.state.optimizer)
  _check_carried_over(trainer.state, 4)


def _first_step(optimizer, multiplier, tmp_path, replicas):
  cfg = parse("--model=mlp", "--hidden_units=16", DATA, "--batch_size=16",
              f"--model_dir={tmp_path / optimizer / str(multiplier)}", *DEVICES[replicas],
              f"--optimizer={optimizer}", "--learning_rate=0.01",
              *(["--weight_decay=0.1"] if optimizer == "adamw" or replicas == 2 else []),
              f"--backbone_learning_rate_multiplier={multiplier}")
  keras.utils.set_random_seed(cfg.seed)
  trainer = build_trainer(cfg, distribute.create_strategy(cfg))
  before = values(trainer.state.model)
  trainer.run_steps(trainer.train_iterator(), 1)
  after = values(trainer.state.model)
  return {p: after[p] - before[p] for p in before}


# Two replicas with weight decay: each replica's thread decays its variables by their own
# rate, the head's too.
@pytest.mark.parametrize("optimizer,replicas", [("adam", 1), ("sgd", 1), ("adamw", 1),
                                                ("adamw", 2), ("sgd", 2)])
def test_the_backbone_multiplier_scales_the_first_step(tmp_path, optimizer, replicas):
  one, scaled = (_first_step(optimizer, m, tmp_path, replicas) for m in (1.0, 0.25))
  for p in one:
    if paths.is_head(p):
      np.testing.assert_array_equal(scaled[p], one[p], err_msg=p)
    else:  # Adam's step does not scale with the gradient: only a scaled rate does this
      largest = np.abs(one[p]).max()  # the deltas are differences of float32 weights
      assert largest > 0
      np.testing.assert_allclose(scaled[p], 0.25 * one[p], atol=1e-3 * largest, err_msg=p)


def test_bad_freeze_patterns_name_the_paths(tmp_path):
  with pytest.raises(ConfigError, match=r"--freeze=nothing_here matches no trainable "
                     r"variable \(the model's paths are such as stem/kernel"):
    build(tmp_path, "--freeze=nothing_here")
  with pytest.raises(ConfigError, match=r"--freeze=kernel matches the classifier head "
                     r"\(logits/kernel\)"):
    build(tmp_path, "--freeze=kernel")
  with pytest.raises(ConfigError, match="--freeze='\\(' is not a regular expression"):
    parse("--freeze=(")
  # The dry run says what a pattern holds, and refuses one as the run does, writing nothing.
  dry = lambda *args: dry_run.report(parse(*RESNET, f"--model_dir={tmp_path / 'dry'}",
                                           "--epochs=2", *args))
  # The block: two 3x3 convolutions of 4 filters on 4 channels (144 each) and two batch
  # norms (4 + 4 each); what trains: the stem (36 + 4 + 4) and the head (4 x 3 + 3).
  assert ("--freeze=blocks_0/: 6 variables (304 parameters) frozen, 5 (59 parameters) train; "
          "2 batch norm layers use their moving statistics, until step 4)"
          in dry("--freeze=blocks_0/", "--unfreeze_at_epoch=1"))
  with pytest.raises(ConfigError, match="--freeze=nothing_here matches no trainable"):
    dry("--freeze=nothing_here")
  assert not (tmp_path / "dry").exists()


def test_a_rerun_with_other_freezing_is_refused():
  recorded = from_values({"freeze": "backbone", "unfreeze_at_epoch": 2, "epochs": 4})
  for change in ({"freeze": "blocks_0/"}, {"unfreeze_at_epoch": 3},
                 {"backbone_learning_rate_multiplier": 0.1}):
    rerun = from_values({**recorded.flag_values, **change})
    with pytest.raises(ConfigError, match=f"--{next(iter(change))}="):
      run_record.check(rerun, recorded.flag_values)


def test_a_checkpoint_restores_into_the_stage_it_recorded_under_another_batch_size(tmp_path):
  # Steps 0-3 frozen at --batch_size=16; 3 steps (frozen) and 6 (all train) saved. Another
  # batch size moves --unfreeze_at_epoch's step (8 steps at 8, 2 at 32): each checkpoint
  # still restores into its own stage (its optimizer's slots), as evaluate's override
  # and a rerun with --allow_changed_flags do.
  for stop, frozen, batch_size in ((3, True, 32), (6, False, 8)):
    stopped = _run(tmp_path / str(stop), stop)
    assert stopped.state.freezing.frozen == frozen
    rerun = build(tmp_path / str(stop), *FROZEN, f"--batch_size={batch_size}")
    assert rerun.state.restore() and rerun.state.step == stop
    assert rerun.state.freezing.frozen == frozen
    for p, v in values(stopped.state.model).items():
      np.testing.assert_array_equal(values(rerun.state.model)[p], v, err_msg=p)
    # Training goes on by the new batch size's step, and never freezes again.
    rerun.run_steps(rerun.train_iterator(), 1)
    assert not rerun.state.freezing.frozen
    rerun.state.checkpoints.save(rerun.state.step)  # records the stage it holds, not the
    assert tf.train.load_checkpoint(rerun.state.checkpoints.candidates()[0]).get_tensor(
        "progress/stage/.ATTRIBUTES/VARIABLE_VALUE") == 1  # restored checkpoint's record
  # A run without --freeze (its optimizer holds every variable), continued with it: all
  # train (it cannot be frozen back), restored rather than refused as another model.
  plain = build(tmp_path / "plain", "--epochs=3", "--optimizer=momentum")
  plain.run_steps(plain.train_iterator(), 2)
  plain.state.checkpoints.save(plain.state.step)
  rerun = build(tmp_path / "plain", *FROZEN)
  assert rerun.state.restore() and not rerun.state.freezing.frozen
