"""--tta: the views, their average, the eval's figures beside the plain ones, the export,
trainer.evaluate and the refusals."""

import json
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import input_pipeline
from flag_helpers import parse
from runs import in_process, read_scalars, run
from input_pipeline import specs
from trainer import evaluate, predict
from trainer.inner import tta_views
from trainer.inner.evaluator import Evaluator
from trainer.process.errors import ConfigError

DATASET = "synthetic:shape=12x12x1,classes=4,train=256,test=70"


@pytest.mark.parametrize("text,views", [("none", ()), ("flip", ("flip",)),
                                        ("translate,flip", ("flip", "translate"))])
def test_parse(text, views):
  assert specs.parse_tta(text, "fashion_mnist") == views


@pytest.mark.parametrize("args,problem", [
    (["--tta=flip", "--dataset=mnist"], "--tta=flip flips images, but on mnist mirrored"),
    (["--tta=flip,translate", "--dataset=csv:/x.csv"], "mirrored characters"),
    (["--tta=mirror"], "--tta=mirror: cannot read 'mirror'"),
])
def test_refused(args, problem):
  with pytest.raises(ConfigError, match=problem):
    parse(*args)


def test_translate_on_digits_is_allowed():
  assert parse("--tta=translate", "--dataset=mnist").tta == ("translate",)


def test_views_weights_and_shifts():
  images = tf.reshape(tf.range(2 * 4 * 5, dtype=tf.float32), [2, 4, 5, 1])
  views = tta_views.views(images, ("flip", "translate"))
  assert [w for w, _ in views] == [0.25, 0.125, 0.125, 0.25, 0.125, 0.125]
  plain, down_right, up_left = (v.numpy()[..., 0] for _, v in views[:3])
  x = images.numpy()[..., 0]
  np.testing.assert_array_equal(plain, x)
  np.testing.assert_array_equal(down_right[:, 1:, 1:], x[:, :-1, :-1])
  assert not down_right[:, 0, :].any() and not down_right[:, :, 0].any()  # zeros come in
  np.testing.assert_array_equal(up_left[:, :-1, :-1], x[:, 1:, 1:])
  np.testing.assert_array_equal(views[3][1].numpy()[..., 0], x[:, :, ::-1])


def _model(symmetric: bool) -> keras.Model:
  """A classifier of 12x12 images; symmetric: it sees each row's mean only, so a mirrored
  image gives the same logits."""
  keras.utils.set_random_seed(3)
  inputs = keras.Input((12, 12, 1))
  x = keras.layers.Lambda(lambda t: tf.reduce_mean(t, axis=2))(inputs) if symmetric else inputs
  outputs = keras.layers.Dense(4)(keras.layers.Flatten()(x))
  return keras.Model(inputs, outputs)


def test_predict_averages_the_views_probabilities():
  model = _model(symmetric=False)
  images = tf.random.stateless_uniform([5, 12, 12, 1], [1, 2])
  logits, average = tta_views.predict(model, images, ("flip", "translate"))
  np.testing.assert_allclose(logits, model(images), atol=1e-6)
  expected = sum(w * tf.nn.softmax(model(v)) for w, v in tta_views.views(images, ("flip", "translate")))
  np.testing.assert_allclose(average, expected, atol=1e-6)
  assert np.abs(average - tf.nn.softmax(logits)).max() > 1e-3  # the views did differ


def _evaluate(model, views):
  data = input_pipeline.load(DATASET)
  state = types.SimpleNamespace(strategy=tf.distribute.get_strategy(), step=0, ema=None,
                                model=model)
  return Evaluator(state, data, 32, tta=views).evaluate("test")


def test_a_flip_symmetric_models_tta_eval_equals_the_plain_eval():
  result = _evaluate(_model(symmetric=True), ("flip",))
  assert result.tta_accuracy == pytest.approx(result.accuracy, abs=1e-7)
  assert result.tta_loss == pytest.approx(result.loss, rel=1e-5)
  other = _evaluate(_model(symmetric=False), ("flip",))  # the same check can fail
  assert other.tta_loss != pytest.approx(other.loss, rel=1e-5)
  assert set(other.metrics("test_")) == {"test_loss", "test_accuracy", "test_tta_loss",
                                         "test_tta_accuracy"}


def test_a_run_reports_both_exports_tta_and_evaluate_inherits_it(tmp_path, capsys):
  model_dir = str(tmp_path / "run")
  args = ["--model=mlp", "--hidden_units=16", f"--dataset={DATASET}", "--batch_size=32",
          "--epochs=2", "--tta=flip,translate", "--ema_decay=0.5", f"--model_dir={model_dir}"]
  out = run("trainer.main", *args).stdout
  results = json.load(open(os.path.join(model_dir, "results.json")))
  assert f"with TTA {results['test_tta_accuracy']:.4f}" in out
  assert {"test_tta_accuracy", "test_tta_loss", "test_raw_tta_accuracy"} <= set(results)
  for name in ("eval", "eval_tta", "eval_raw", "eval_raw_tta"):  # TensorBoard, side by side
    assert sorted(read_scalars(os.path.join(model_dir, name))["accuracy"]) == [8, 16]
  tb = read_scalars(os.path.join(model_dir, "eval_tta"))
  assert tb["accuracy"][16] == pytest.approx(results["test_tta_accuracy"], abs=1e-6)
  hparams_metric = read_scalars(os.path.join(model_dir, "eval"))["test_tta_accuracy"]
  assert hparams_metric == {16: pytest.approx(results["test_tta_accuracy"], abs=1e-6)}
  # The export, loaded as a user loads it: serving_default averages the views,
  # serving_plain does not; each gives the figures results.json reports.
  data = input_pipeline.load(DATASET)
  images, labels = tf.constant(data.splits["test"].images), data.splits["test"].labels
  export = tf.saved_model.load(os.path.join(model_dir, "export"))
  classes = {}
  for signature, key in (("serving_default", "test_tta_accuracy"),
                         ("serving_plain", "test_accuracy")):
    classes[signature] = export.signatures[signature](images=images)["classes"].numpy()
    assert np.mean(classes[signature] == labels) == pytest.approx(results[key], abs=1e-6)
  assert not np.array_equal(classes["serving_default"], classes["serving_plain"])
  # trainer.predict's and trainer.evaluate's mains (their command lines are run as
  # subprocesses elsewhere): the views averaged, or not with --tta=none.
  for extra, signature in (((), "serving_default"), (("--tta=none",), "serving_plain")):
    csv = str(tmp_path / f"predictions{len(extra)}.csv")
    in_process(predict, f"--model_dir={model_dir}", f"--output={csv}", *extra)
    predicted = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.int64)[:, 1]
    np.testing.assert_array_equal(predicted, classes[signature])
  # trainer.evaluate takes the run's --tta; --tta=none there turns it off.
  capsys.readouterr()
  in_process(evaluate, f"--model_dir={model_dir}")
  out = capsys.readouterr().out
  assert f"with TTA {results['test_tta_accuracy']:.4f}" in out
  figures = json.load(open(os.path.join(model_dir, "eval_test.json")))
  assert figures["tta_accuracy"] == pytest.approx(results["test_tta_accuracy"], abs=1e-6)
  in_process(evaluate, f"--model_dir={model_dir}", "--tta=none")
  out = capsys.readouterr().out
  assert "TTA" not in out
