"""Each outer-loop action alone, with fakes for the trainer's and the writer's side."""

import logging
import os
import signal
import time
import types

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import Split
from input_pipeline.data import make_data
from trainer.inner.evaluator import Evaluation, Evaluator
from trainer.inner.progress import Progress
from trainer.outer import actions, preemption, triggers
from trainer.outer.actions import Boundary
from trainer.outer.best import BestMetric, EarlyStopping, KeepBest, ReduceOnPlateau
from trainer.process.errors import Interrupted


class FakeWriter:
  def __init__(self, enabled=True):
    self.enabled, self.written = enabled, []

  def scalars(self, run, step, values):
    self.written.append(("scalars", run, step, dict(values)))

  def image(self, run, step, name, image, description=""):
    self.written.append(("image", run, step, name, image))

  def text(self, run, step, name, markdown):
    self.written.append(("text", run, step, name, markdown))

  def flush(self, run):
    self.written.append(("flush", run))


def evaluation(step, accuracy, loss, n=4):
  return Evaluation(split="validation", step=step, loss=loss, accuracy=accuracy,
                    predictions=np.zeros(n, np.int32), losses=np.ones(n, np.float32),
                    seconds=0.01)


def test_progress_line_first_without_eta_then_with(caplog):
  line = actions.ProgressLine(total_steps=100, steps_per_epoch=10, batch_size=8)
  figures = dict(loss=0.5, accuracy=0.75, seconds=3.2)
  # The absl logger's own level too: parsing absl flags (another test) sets it to WARNING.
  with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="absl"):
    line(Boundary(1, first=True, examples_per_sec=2.5, steady_examples_per_sec=2.5, **figures))
    line(Boundary(20, examples_per_sec=800.0, steady_examples_per_sec=400.0, **figures))
  first, second = [r.getMessage() for r in caplog.records]
  assert first == ("step 1/100  epoch 0.10  loss 0.5000  accuracy 0.7500  first loop 3.2 s "
                   "with tracing and compilation")
  # 80 steps of 8 examples left at 400 examples/s: 1.6 s.
  assert second.endswith("epoch 2.00  loss 0.5000  accuracy 0.7500  800 examples/s  ETA 0:00:02")


def test_divergence_check():
  check = actions.DivergenceCheck(lambda: None)
  check(Boundary(3, loss=1.0))
  with pytest.raises(FloatingPointError, match="the training loss is nan at step 4"):
    check(Boundary(4, loss=float("nan")))
  with pytest.raises(FloatingPointError, match="loss scale collapsed to 0.5 at step 5"):
    actions.DivergenceCheck(lambda: 0.5)(Boundary(5, loss=1.0))
  actions.DivergenceCheck(lambda: 1.0)(Boundary(5, loss=1.0))


def test_divergence_recovery_goes_back_at_most_retries_times():
  used, recovered = [0], []

  def recover(step):
    recovered.append(step)
    used[0] += 1
    return 8
  check = actions.DivergenceCheck(lambda: None, retries=2, recover=recover,
                                  recoveries=lambda: used[0])
  for bad in (11, 13):
    boundary = Boundary(bad, loss=float("inf"))
    check(boundary)
    assert boundary.restarted == 8
  assert recovered == [11, 13]
  with pytest.raises(FloatingPointError, match=r"loss is inf at step 15 \(after 2 recoveries, "
                     r"--divergence_retries=2\)"):
    check(Boundary(15, loss=float("inf")))
  with pytest.raises(FloatingPointError, match="before the first checkpoint: nothing to recover"):
    actions.DivergenceCheck(lambda: None, retries=1, recover=lambda step: None)(
        Boundary(3, loss=float("nan")))


def test_train_summaries_with_and_without_a_loss_scale():
  writer = FakeWriter()
  figures = dict(loss=1.0, accuracy=0.5, examples_per_sec=10.0)
  actions.TrainSummaries(writer, learning_rate=lambda: 0.1, loss_scale=lambda: None)(
      Boundary(3, **figures))
  actions.TrainSummaries(writer, learning_rate=lambda: 0.1, loss_scale=lambda: 128.0)(
      Boundary(4, **figures))
  (_, run, step, first), (_, _, _, second) = writer.written
  assert run == "train" and step == 3
  assert first == {"loss": 1.0, "accuracy": 0.5, "learning_rate": 0.1, "examples_per_sec": 10.0}
  assert second["loss_scale"] == 128.0


def test_every_steps_at_its_interval_and_at_the_last_step():
  trigger = triggers.EverySteps(10, total_steps=25)
  assert [trigger.next_step(s) for s in (0, 9, 10, 24)] == [10, 10, 20, 30]
  assert [s for s in (1, 5, 10, 15, 20, 25) if trigger.due(Boundary(s))] == [10, 20, 25]
  on_stop = triggers.AnyOf(trigger, triggers.OnStop())
  assert on_stop.next_step(3) == 10
  assert [on_stop.due(Boundary(7, stop=actions.Stop("x"))), on_stop.due(Boundary(7)),
          on_stop.due(Boundary(7, completing=True))] == [True, False, True]


def test_evaluate_reports_into_the_boundary_and_updates_the_best():
  calls, progress = [], Progress()
  best = BestMetric("accuracy", progress)

  def report(split):
    calls.append(split)
    return evaluation(10, 0.5, 1.0)
  action = actions.Evaluate(report=report, split="test", trigger=triggers.EverySteps(10, 25),
                            best=best)
  boundary = Boundary(10)
  action(boundary)
  assert calls == ["test"] and boundary.eval.accuracy == 0.5 and best.is_new(10)
  assert progress.best() == ("accuracy", 0.5, 10)


def test_eval_pictures_written_by_the_chief_only():
  rng = np.random.default_rng(0)
  split = Split(images=rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8),
                labels=np.array([0, 1, 2, 0, 1, 2]))
  data = make_data("test", {"test": split}, 3, ("cat", "dog", "bird"))
  result = Evaluation(split="test", step=4, loss=1.0, accuracy=0.5,
                      predictions=np.array([0, 1, 2, 1, 1, 0], np.int32),
                      losses=np.array([.1, .2, .3, 2.0, .4, 3.0], np.float32), seconds=0.1)
  state = types.SimpleNamespace(strategy=tf.distribute.get_strategy(), ema=None)
  writer = FakeWriter()
  evaluator = Evaluator(state, data, 2, writer, pictures=True)
  evaluator.write_pictures("eval", result)
  assert writer.written[-1] == ("flush", "eval")  # once, after all of them
  written = {w[3]: w[4] for w in writer.written[:-1]}
  assert set(written) == {"confusion_matrix", "worst_mistakes", "per_class_accuracy"}
  assert written["confusion_matrix"].dtype == np.uint8 and written["confusion_matrix"].shape[2] == 3
  # Two mistakes: a grid of 2 tiles of 8x8 images upscaled 11x to 88 pixels.
  assert written["worst_mistakes"].shape[0] >= 88 and written["worst_mistakes"].shape[1] >= 2 * 88
  assert "| bird | 0.5000 | 2 | cat (1) |" in written["per_class_accuracy"]
  assert evaluator.pictures_seconds > 0
  silent = FakeWriter(enabled=False)
  Evaluator(state, data, 2, silent, pictures=True).write_pictures("eval", result)
  assert silent.written == []


def _progress():
  return Progress()


def test_best_metric_keep_best_and_early_stopping_with_checkpointed_state(tmp_path):
  progress = _progress()
  saved, exported = [], []
  best = BestMetric("accuracy", progress)
  evaluate = actions.Evaluate(report=None, split="validation", trigger=triggers.Trigger(),
                              best=best)
  keep = KeepBest(best, save=lambda s: saved.append(s) or f"best-{s}",
                          export=lambda: exported.append(True))
  stop = EarlyStopping(best, patience=2)
  stops = []
  for step, accuracy in [(10, 0.5), (20, 0.7), (30, 0.6), (40, 0.7), (50, 0.65)]:
    evaluate.report = lambda split, step=step, accuracy=accuracy: evaluation(step, accuracy, 1.0)
    boundary = Boundary(step)
    for action in (evaluate, keep, stop):
      action(boundary)
    stops.append(boundary.stop)
  assert saved == [10, 20] and len(exported) == 2  # 0.7 again at 40 is no improvement
  assert float(progress.best_value.numpy()) == pytest.approx(0.7)
  assert int(progress.best_step.numpy()) == 20
  assert stops[:3] == [None, None, None] and stops[3] is not None
  assert "has not improved on 0.7000 (step 20) for 2 evals" in stops[3].reason
  assert int(progress.stopped_early_at.numpy()) == 50
  # The state survives a checkpoint, as a resumed run needs it.
  path = tf.train.Checkpoint(progress=progress).write(str(tmp_path / "ckpt"))
  fresh = _progress()
  tf.train.Checkpoint(progress=fresh).read(path).assert_consumed()
  assert int(fresh.evals_since_best.numpy()) == 3 and int(fresh.best_step.numpy()) == 20


def test_reduce_on_plateau_cuts_after_patience_evals_without_a_best(tmp_path):
  progress = _progress()
  best = BestMetric("loss", progress)
  rate = lambda: 0.1 * float(progress.lr_factor.numpy())
  plateau = ReduceOnPlateau(best, patience=2, factor=0.5, learning_rate=rate)
  factors = []
  for step, loss in [(1, 1.0), (2, 0.9), (3, 0.95), (4, 0.91), (5, 0.92), (6, 0.93),
                     (7, 0.8), (8, 0.85)]:
    result = evaluation(step, 0.5, loss)
    best.update(step, result)
    plateau(Boundary(step, eval=result))
    plateau(Boundary(step))  # a boundary without an eval counts nothing
    factors.append(float(progress.lr_factor.numpy()))
  # Cut after the 2nd eval without a new best (step 4), the count restarts (cut again at 6),
  # and a new best (step 7) resets it.
  assert factors == [1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.25]
  path = tf.train.Checkpoint(progress=progress).write(str(tmp_path / "ckpt"))
  fresh = _progress()
  tf.train.Checkpoint(progress=fresh).read(path).assert_consumed()
  assert float(fresh.lr_factor.numpy()) == 0.25 and int(fresh.plateau_evals.numpy()) == 1


def test_best_loss_is_the_lowest_and_steps_without_eval_count_nothing():
  progress = _progress()
  best = BestMetric("loss", progress)
  assert best.update(1, evaluation(1, 0.1, 2.0)) and best.is_new(1)
  assert not best.update(3, evaluation(3, 0.9, 2.5)) and not best.is_new(3)
  assert best.evals_since == 1 and best.value_and_step == (2.0, 1)
  # A recovery went back, and step 5 is evaluated again, worse: no longer a new best
  # (KeepBest would otherwise save the worse weights as the best).
  assert best.update(5, evaluation(5, 0.9, 1.0)) and best.is_new(5)
  assert not best.update(5, evaluation(5, 0.9, 1.5)) and not best.is_new(5)


def test_checkpoint_at_its_interval_the_end_and_before_a_stop():
  saved = []
  action = actions.Checkpoint(save=lambda s: saved.append(s) or f"ckpt-{s}", interval=10,
                              total_steps=25)
  assert action.next_step(3) == 10
  for step in (5, 10, 13, 20, 25):
    boundary = Boundary(step)
    if action.trigger.due(boundary):
      action(boundary)
  boundary = Boundary(7, stop=actions.Stop("x"))
  assert action.trigger.due(boundary)
  action(boundary)
  assert saved == [10, 20, 25, 7] and boundary.checkpoint == "ckpt-7"


def test_profiler_traces_its_steps(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(tf.profiler.experimental, "start", lambda d: calls.append(("start", d)))
  monkeypatch.setattr(tf.profiler.experimental, "stop", lambda: calls.append(("stop",)))
  profiler = actions.Profiler((5, 9), str(tmp_path))
  assert [profiler.next_step(s) for s in (0, 5, 9)] == [5, 9, None]
  profiler.start(0)
  for step in (5, 7, 9, 12):
    profiler(Boundary(step))
  profiler.end(12)
  assert calls == [("start", str(tmp_path)), ("stop",)]


def test_preemption_stop_on_sigterm_then_handlers_restored():
  previous = signal.getsignal(signal.SIGTERM)
  action = preemption.PreemptionStop()
  action.start(0)
  boundary = Boundary(1)
  action(boundary)
  assert boundary.stop is None
  os.kill(os.getpid(), signal.SIGTERM)
  boundary = Boundary(2)
  action(boundary)
  assert boundary.stop.signum == signal.SIGTERM and "SIGTERM" in boundary.stop.reason
  action.end(2)
  assert signal.getsignal(signal.SIGTERM) is previous


def test_preemption_before_and_after_the_loop():
  # Before training, on every worker: stopped at once, nothing to save (EndsAtOnce's
  # thread takes the signal and has the main thread raise it).
  previous = signal.getsignal(signal.SIGTERM)
  before = preemption.PreemptionStop(agree=lambda flag: pytest.fail("no agreement"))
  before.install()
  try:
    with pytest.raises(Interrupted, match="stopped by SIGTERM before training: "
                       "no step was trained"):
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(500):
        time.sleep(0.01)
  finally:
    before.uninstall()
  assert signal.getsignal(signal.SIGTERM) is previous
  assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
  # During training: noted, and at the next boundary every worker stops with it.
  agreed = []
  several = preemption.PreemptionStop(agree=lambda flag: agreed.append(flag) or flag)
  several.install()
  try:
    several.start(0)
    os.kill(os.getpid(), signal.SIGTERM)
    boundary = Boundary(1)
    several(boundary)
    assert agreed == [True] and boundary.stop.signum == signal.SIGTERM
    several.end(1)
    # After training (final evals, export: collectives too): noted, the run goes on.
    several.signal = None
    os.kill(os.getpid(), signal.SIGTERM)
    assert several.signal == signal.SIGTERM
  finally:
    several.uninstall()


def test_a_best_from_before_its_metric_was_recorded_is_kept():
  # As an older checkpoint restores: a best and a count, no best_metric.
  progress = _progress()
  progress.best_value.assign(0.42)
  progress.best_step.assign(8)
  progress.evals_since_best.assign(1)
  BestMetric("loss", progress)
  assert progress.best() == ("loss", 0.42, 8) and int(progress.evals_since_best.numpy()) == 1
  # Another metric than the recorded one: its own best, count and plateau start again.
  BestMetric("accuracy", progress)
  assert progress.best() is None and int(progress.evals_since_best.numpy()) == 0


def test_checkpoint_every_secs_counts_from_the_last_save_whatever_caused_it():
  now, saved = [0.0], []
  action = actions.Checkpoint(save=lambda s: saved.append(s) or f"ckpt-{s}", interval=100,
                              total_steps=1000, every_secs=60)
  action.timer.clock, action.timer.last = (lambda: now[0]), 0.0
  assert action.next_step(10) == 100  # time asks for no boundary of its own
  for t, step in [(30, 10), (61, 20), (100, 30), (125, 40), (130, 100), (180, 110),
                  (191, 120)]:
    now[0] = t
    boundary = Boundary(step)
    if action.trigger.due(boundary):
      action(boundary)
  # 20 and 40: a minute since the last save; 100: its interval, which restarts the minute.
  assert saved == [20, 40, 100, 120]
