"""The HParams tab as TensorBoard's own plugin serves it: trials named after their runs,
what is trained as columns (not how it runs), the columns that differ first."""

from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment
from tensorboard.plugins.hparams import list_session_groups

from flag_helpers import parse
from trainer.inner import summaries
from trainer.options import declared


def hparams_tab(logdir):
  """(experiment, session groups) as `tensorboard --logdir LOGDIR` serves them to the
  HParams tab: its columns in order, and one group (a row, its Trial ID) per trial."""
  mux = plugin_event_multiplexer.EventMultiplexer()
  mux.AddRunsFromDirectory(str(logdir))
  mux.Reload()
  provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
  backend = backend_context.Context(base_plugin.TBContext(
      logdir=str(logdir), multiplexer=mux, data_provider=provider))
  request_context = context.RequestContext()
  experiment = get_experiment.Handler(request_context, backend, "",
                                      api_pb2.GetExperimentRequest()).run()
  request = api_pb2.ListSessionGroupsRequest(
      start_index=0, slice_size=100, allowed_statuses=[
          api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_RUNNING])
  groups = list_session_groups.Handler(request_context, backend, "", request).run()
  return experiment, {g.name: g for g in groups.session_groups}


def _session(model_dir, *args):
  """What trainer/run/train.py writes for a run started with ARGS: its session (and flags)."""
  config = parse(*args, f"--model_dir={model_dir}", "--data_dir=/data/tfds")
  writer = summaries.Summaries(str(model_dir))
  writer.flags(config.hparams())
  writer.close()
  return config.hparams()


def test_runs_are_trials_named_after_their_runs_with_what_they_train(tmp_path):
  # Two experiments in one logdir, each with a run called mlp_1x50: two rows, not one.
  _session(tmp_path / "fashion_mnist" / "mlp_1x50", "--model=mlp", "--hidden_units=50",
           "--dataset=fashion_mnist")
  _session(tmp_path / "mnist" / "mlp_1x50", "--model=mlp", "--hidden_units=50")
  _, groups = hparams_tab(tmp_path)
  assert sorted(groups) == ["fashion_mnist/mlp_1x50", "mnist/mlp_1x50"]
  row = groups["mnist/mlp_1x50"]
  assert row.hparams["model"].string_value == "mlp"
  assert row.hparams["hidden_units"].string_value == "50"
  assert "epochs" not in row.hparams  # unset: no value, not "None"
  assert "dropout" in row.hparams  # the model's default, recorded
  how = set(declared.HOW_IT_RUNS) & set(row.hparams)
  assert not how, f"how-it-runs flags as hparams: {how}"


def test_an_experiment_over_runs_lists_the_hparams_that_differ_first(tmp_path):
  runs = [_session(tmp_path / "mlp_1x50", "--model=mlp", "--hidden_units=50"),
          _session(tmp_path / "mlp_5x50", "--model=mlp", "--hidden_units=50,50,50,50,50",
                   "--dropout=0.2", "--epochs=50"),
          _session(tmp_path / "mnist_cnn", "--model=cnn", "--epochs=5")]
  differing = summaries.write_experiment_over(str(tmp_path), runs)
  experiment, groups = hparams_tab(tmp_path)
  assert sorted(groups) == ["mlp_1x50", "mlp_5x50", "mnist_cnn"]
  columns = [(h.name, h.differs) for h in experiment.hparam_infos]
  # The CNN's own hyperparameters differ too: the MLPs have none of them.
  assert columns[:len(differing)] == [(name, True) for name in differing]
  assert {"model", "hidden_units", "dropout", "epochs", "filters"} <= set(differing)
  assert "batch_size" not in differing and ("batch_size", False) in columns
  assert not set(declared.HOW_IT_RUNS) & {name for name, _ in columns}
  model = {h.name: h for h in experiment.hparam_infos}["model"]
  assert [v.string_value for v in model.domain_discrete.values] == ["cnn", "mlp"]
  assert {m.name.tag for m in experiment.metric_infos} >= {"accuracy", "test_accuracy"}
