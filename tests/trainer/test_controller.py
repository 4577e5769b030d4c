"""The outer loop alone: boundary arithmetic, action order, stops, on a fake trainer."""

import signal

import pytest

import dataclasses
import types

from trainer.outer import actions, triggers
from trainer.outer.controller import Controller
from trainer.process.errors import Interrupted


class FakeTrainer:
  """Counts steps; its loss is the step at which the loop ended."""

  def __init__(self, step=0):
    self.state, self.loops = types.SimpleNamespace(step=step), []

  def train_iterator(self):
    return iter(())

  def run_steps(self, iterator, steps):
    self.loops.append(steps)
    self.state.step += steps
    return {"loss": float(self.state.step), "accuracy": 0.5}


class Every(actions.Action):
  """Asks for a boundary every `n` steps and records where it was called."""

  def __init__(self, n, log):
    self.n, self.log = n, log

  def next_step(self, step):
    return triggers.next_multiple(step, self.n)

  def __call__(self, b):
    self.log.append((self.n, b.step))


def boundaries(trainer):
  steps, out = trainer.state.step - sum(trainer.loops), []
  for n in trainer.loops:
    steps += n
    out.append(steps)
  return out


def test_inner_loops_end_at_the_nearest_step_any_action_needs():
  trainer, log = FakeTrainer(), []
  Controller(trainer=trainer, actions=[Every(5, log), Every(8, log)], total_steps=20,
             steps_per_loop=6, batch_size=4).run()
  # A first loop of one step; then loops of up to 6 cut at multiples of 5 and 8 and at 20.
  assert boundaries(trainer) == [1, 5, 8, 10, 15, 16, 20]
  assert [s for n, s in log if n == 5] == [1, 5, 8, 10, 15, 16, 20]  # every action, every loop


def test_resume_from_a_middle_step_and_an_already_finished_run():
  trainer = FakeTrainer(step=7)
  timing = Controller(trainer=trainer, actions=[Every(10, [])], total_steps=25,
                      steps_per_loop=100, batch_size=4, first_loop_steps=2).run()
  assert boundaries(trainer) == [9, 10, 20, 25]
  assert timing.examples_per_sec > 0 and timing.train_seconds >= timing.compile_seconds > 0
  done = FakeTrainer(step=25)
  timing = Controller(trainer=done, actions=[], total_steps=25, steps_per_loop=5,
                      batch_size=4).run()
  assert done.loops == [] and timing.examples_per_sec is None


def test_next_stop_ignores_actions_with_nothing_ahead():
  class Never(actions.Action):
    pass
  controller = Controller(trainer=FakeTrainer(), actions=[Never(), Every(4, [])],
                          total_steps=100, steps_per_loop=10, batch_size=1)
  assert controller.next_stop(0, first=True) == 1
  assert controller.next_stop(1) == 4 and controller.next_stop(4) == 8
  assert controller.next_stop(97) == 100


class StopAt(actions.Action):
  def __init__(self, step, signum=None):
    self.step, self.signum = step, signum

  def __call__(self, b):
    if b.step >= self.step:
      b.stop = actions.Stop("enough", signum=self.signum)


class Recorder(actions.Action):
  def __init__(self):
    self.calls, self.started, self.ended = [], None, None

  def start(self, step):
    self.started = step

  def __call__(self, b):
    self.calls.append((b.step, dataclasses.replace(b)))  # as it was when called
    b.checkpoint = f"ckpt-{b.step}"

  def end(self, step):
    self.ended = step


def test_a_stop_runs_the_remaining_actions_of_that_boundary_then_ends():
  trainer, recorder = FakeTrainer(), Recorder()
  timing = Controller(trainer=trainer, actions=[StopAt(5), recorder], total_steps=50,
                      steps_per_loop=2, batch_size=4).run()
  assert trainer.state.step == 5 and timing.stop.reason == "enough"
  step, boundary = recorder.calls[-1]
  assert step == 5 and boundary.stop.reason == "enough"  # later actions see the request
  assert boundary.loss == 5.0 and boundary.steps == 2 and boundary.examples_per_sec > 0
  assert (recorder.started, recorder.ended) == (0, 5)


def test_a_signal_stop_saves_first_skips_the_rest_and_raises_interrupted():
  trainer, saver, evaluator = FakeTrainer(), Recorder(), Recorder()
  saver.on_preemption = True  # as the Checkpoint action; the evaluator is not
  controller = Controller(trainer=trainer, actions=[StopAt(3, signal.SIGTERM), evaluator, saver],
                          total_steps=50, steps_per_loop=2, batch_size=4)
  with pytest.raises(Interrupted, match="stopped by SIGTERM at step 3; checkpoint "
                     "ckpt-3 saved") as info:
    controller.run()
  assert info.value.signum == signal.SIGTERM and saver.ended == evaluator.ended == 3
  assert [s for s, _ in saver.calls] == [1, 3] and [s for s, _ in evaluator.calls] == [1]


def test_a_stop_at_the_last_step_is_a_normal_end_but_a_signal_there_is_not():
  trainer = FakeTrainer()
  timing = Controller(trainer=trainer, actions=[StopAt(4)], total_steps=4,
                      steps_per_loop=3, batch_size=4).run()
  assert trainer.state.step == 4 and timing.stop is None
  # A preempted VM's last loop: the checkpoint, then exit 143, nothing after the save.
  with pytest.raises(Interrupted) as e:
    Controller(trainer=FakeTrainer(), actions=[StopAt(4, signal.SIGTERM)], total_steps=4,
               steps_per_loop=3, batch_size=4).run()
  assert e.value.step == 4


class Completing(Recorder):
  completes_interrupted = True


def test_a_boundary_cut_short_by_a_signal_is_completed_on_resume():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  interrupted_at = tf.Variable(-1, dtype=tf.int64)
  skipped, saved = Completing(), Recorder()
  saved.on_preemption = saved.completes_interrupted = True
  plain = Recorder()
  run = lambda trainer, total: Controller(
      trainer=trainer, actions=[StopAt(6, signal.SIGTERM), skipped, saved, plain],
      total_steps=total, steps_per_loop=3, batch_size=1, first_loop_steps=3,
      interrupted_at=interrupted_at).run()
  with pytest.raises(Interrupted):
    run(FakeTrainer(), 9)
  assert int(interrupted_at.numpy()) == 6  # set before the checkpoint (saved) ran
  assert [s for s, _ in skipped.calls] == [3] and [s for s, _ in saved.calls] == [3, 6]
  # Resumed at 6: the skipped actions run first, with no training figures, then training.
  trainer = FakeTrainer(step=6)
  skipped.calls, saved.calls, plain.calls = [], [], []
  Controller(
      trainer=trainer, actions=[skipped, saved, plain], total_steps=9, steps_per_loop=3,
      batch_size=1, interrupted_at=interrupted_at).run()
  assert skipped.calls[0][0] == 6 and skipped.calls[0][1].completing
  assert skipped.calls[0][1].steps == 0 and saved.calls[0][0] == 6
  assert [(s, b.last) for s, b in plain.calls] == [(7, False), (9, True)]  # the run's last step
  assert int(interrupted_at.numpy()) == -1 and not skipped.calls[0][1].last
  # Cut short at the last step: the rerun completes it, and trains nothing.
  interrupted_at.assign(9)
  skipped.calls = []
  finished = FakeTrainer(step=9)
  Controller(trainer=finished, actions=[skipped], total_steps=9, steps_per_loop=3,
             batch_size=1, interrupted_at=interrupted_at).run()
  assert [(s, b.completing, b.last) for s, b in skipped.calls] == [(9, True, True)]
  assert finished.loops == []


def test_an_action_that_raises_still_ends_every_action():
  class Boom(actions.Action):
    def __call__(self, b):
      raise FloatingPointError("diverged")
  recorder = Recorder()
  with pytest.raises(FloatingPointError):
    Controller(trainer=FakeTrainer(), actions=[recorder, Boom()], total_steps=9,
               steps_per_loop=3, batch_size=1).run()
  assert recorder.ended == 1


def test_a_failing_run_stops_the_profiler(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  class Failing(FakeTrainer):
    def run_steps(self, iterator, steps):
      if self.state.step >= 2:
        raise tf.errors.ResourceExhaustedError(None, None, "out of memory")
      return super().run_steps(iterator, steps)
  profiler = actions.Profiler((1, 100), str(tmp_path / "profile"))
  with pytest.raises(tf.errors.ResourceExhaustedError):
    Controller(trainer=Failing(), actions=[profiler], total_steps=9, steps_per_loop=1,
               batch_size=1).run()
  assert not profiler.running
  tf.profiler.experimental.start(str(tmp_path / "again"))  # fails while one is running
  tf.profiler.experimental.stop()


def test_arguments_are_checked_up_front():
  with pytest.raises(ValueError, match="steps_per_loop"):
    Controller(trainer=FakeTrainer(), actions=[], total_steps=9, steps_per_loop=0, batch_size=1)
  with pytest.raises(TypeError, match="Action"):
    Controller(trainer=FakeTrainer(), actions=[print], total_steps=9, steps_per_loop=1,
               batch_size=1)
