import dataclasses
import glob
import os
import re
import types
import typing

import pytest

import models
from trainer.options import config, declared
from trainer.process.errors import ConfigError
from flag_helpers import parse
from paths import ROOT


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg"))),
                         ids=os.path.basename)
def test_every_shipped_config_is_valid(path):
  # A config the README or docs/ tell users to run: a typo in it would only show when run.
  cfg = parse(f"--flagfile={path}")
  assert cfg.model and cfg.dataset
  _assert_fields_hold_their_types(cfg)


def _holds(value, kind) -> bool:
  """Whether value is of the type annotation kind (unions, tuple[X, ...], dict[K, V])."""
  origin, args = typing.get_origin(kind), typing.get_args(kind)
  if origin in (types.UnionType, typing.Union):
    return any(_holds(value, k) for k in args)
  if origin is tuple:
    if not isinstance(value, tuple):
      return False
    if len(args) == 2 and args[1] is Ellipsis:
      return all(_holds(v, args[0]) for v in value)
    return len(value) == len(args) and all(map(_holds, value, args))
  if origin is dict:
    return isinstance(value, dict) and all(_holds(k, args[0]) for k in value)
  if kind is typing.Any:
    return True
  if kind is int:  # a bool is an int to isinstance, not to a field of integers
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, type(None) if kind is None else kind)


def _assert_fields_hold_their_types(cfg):
  for field in dataclasses.fields(cfg):
    assert _holds(getattr(cfg, field.name), field.type), (
        f"{field.name}={getattr(cfg, field.name)!r} is not a {field.type}")


def test_every_field_is_typed_and_holds_a_value_of_its_type():
  # Generated from the declarations (config.field_type): no field is Any but flag_values'
  # values (each flag's as given), and what parsing makes of a flag is the field's type.
  fields = {f.name: f.type for f in dataclasses.fields(config.Config)}
  assert fields["flag_values"] == dict[str, typing.Any]
  for name, kind in fields.items():
    if name != "flag_values":
      assert typing.Any not in (kind, *typing.get_args(kind)), name
  assert fields["augment"] is declared.Augment and fields["tta"] == tuple[str, ...]
  assert fields["hidden_units"] == tuple[int, ...] | None and fields["model_dir"] is str
  _assert_fields_hold_their_types(parse())
  _assert_fields_hold_their_types(parse(
      "--model=mlp", "--dataset=fashion_mnist", "--hidden_units=5,5", "--image_size=8",
      "--tta=flip", "--augment=crop,flip", "--strategy=mirrored", "--devices=/cpu:0,/cpu:1",
      "--lr_schedule=step", "--lr_boundaries=3,5", "--profile_steps=1,2",
      "--allow_changed_flags=seed", "--epochs=2", "--clip_norm=1", "--keep_best=loss"))


def test_defaults_and_model_hparams():
  cfg = parse("--model=mlp", "--hidden_units=500,500", "--dropout=0.2")
  assert cfg.model_hparams == {"hidden_units": (500, 500), "dropout": 0.2}
  assert cfg.batch_size == 128 and cfg.optimizer == "adam"
  assert config.from_args(["--model=mlp"]).mixed_precision == "auto"  # parse pins float32
  assert cfg.model_dir == "runs/mlp-mnist"
  assert cfg.flag_values["hidden_units"] == ["500", "500"]
  assert "verbosity" not in cfg.flag_values  # only tapeloop's own flags


def test_steps_from_epochs_or_train_steps():
  assert parse("--epochs=3", "--batch_size=10").steps_for(95) == (9, 27)
  assert parse("--train_steps=5", "--batch_size=10").steps_for(95) == (9, 5)
  assert parse("--batch_size=10").steps_for(95) == (9, 9)  # one epoch by default


def test_flagfile_and_command_line_override(tmp_path):
  (tmp_path / "x.cfg").write_text("# comment\n--model=mlp\n--hidden_units=50\n--epochs=5\n")
  cfg = parse(f"--flagfile={tmp_path / 'x.cfg'}", "--epochs=2")
  assert cfg.model == "mlp" and cfg.model_hparams == {"hidden_units": (50,)} and cfg.epochs == 2


@pytest.mark.parametrize("args,message", [
    (["--model=vgg"], "--model=vgg is unknown; known models: airbench, cnn, efficientnet_v2_b0, "
                      "mlp, mobilenet_v3_small, resnet, resnet50"),
    (["--dataset=ftp:x"], "--dataset: unknown data source prefix"),
    (["--batch_size=0"], "--batch_size=0 must be positive"),
    (["--batch_size=-8"], "--batch_size=-8 must be positive"),
    (["--steps_per_loop=0"], "--steps_per_loop=0 must be positive"),
    (["--train_steps=0"], "--train_steps=0 must be positive"),
    (["--epochs=-1"], "--epochs=-1 must be positive"),
    (["--epochs=2", "--train_steps=5"], "--epochs and --train_steps both given"),
    (["--optimizer=adagrad"], "--optimizer=adagrad is unknown; use sgd, momentum"),
    (["--lr_schedule=linear"], "--lr_schedule=linear is unknown"),
    (["--optimizer=adamw"], "--optimizer=adamw needs --weight_decay"),
    (["--allow_changed_flags=optimizer,colour"], "--allow_changed_flags: colour is not a "
     "tapeloop flag"),
    (["--schedule_steps=0"], "--schedule_steps=0 must be positive"),
    (["--learning_rate=0"], "--learning_rate=0.0 must be positive"),
    (["--learning_rate=-0.1"], "--learning_rate=-0.1 must be positive"),
    (["--strategy=tpu"], "--strategy=tpu is unknown"),
    (["--mixed_precision=fp8"], "--mixed_precision=fp8 is unknown"),
    (["--jit_compile=true"], "--jit_compile=true is unknown; use auto, loop, step, off"),
    (["--validation_split=1.5"], "--validation_split=1.5 must be in"),
    (["--classes=5"], "--classes=5: give two or more distinct class ids"),
    (["--classes=5,5,6"], "--classes=5,5,6: give two or more distinct class ids"),
    (["--classes=a,b"], "--classes=a,b: expected comma-separated class ids"),
    (["--examples_per_class=0"], "--examples_per_class=0 must be positive"),
    (["--freeze=backbone", "--epochs=3", "--unfreeze_at_epoch=3"],
     "--unfreeze_at_epoch=3 is not before the run's end (--epochs=3)"),
    (["--weight_decay=-1"], "--weight_decay=-1.0 must be"),
    (["--clip_norm=0"], "--clip_norm=0.0 must be positive"),
    (["--model=mlp", "--filters=3"], "--filters does not apply to --model=mlp"),
    (["--model=mlp", "--hidden_units=a,b"], "--hidden_units=a,b: expected comma-separated"),
    (["--model=mlp", "--hidden_units=0"], "--hidden_units=0: values must be positive"),
    (["--model=mlp", "--dropout=1"], "--dropout=1.0 must be in"),
    (["--model=cnn", "--filters=8,8"], "--filters has 2 values but --kernel_sizes has 3"),
    (["--augment=flip"], "mirrored characters"),
    (["--augment=rotate"], "--augment: cannot read 'rotate'"),
    (["--devices=/cpu:0"], "--devices applies to --strategy=mirrored"),
    (["--lr_schedule=step"], "--lr_schedule=step needs --lr_boundaries"),
    (["--lr_boundaries=10"], "--lr_boundaries applies to --lr_schedule=step"),
    (["--lr_schedule=step", "--lr_boundaries=20,10"], "steps must increase"),
    (["--final_learning_rate=0.01", "--learning_rate=0.001"], "must be >= 0 and below"),
    (["--nesterov"], "--nesterov applies to --optimizer=momentum (not adam)"),
    (["--model=airbench", "--muon_learning_rate=0.2"],
     "--muon_learning_rate needs --optimizer=momentum with --momentum above 0 (not adam, 0.9)"),
    (["--model=resnet", "--optimizer=momentum", "--momentum=0", "--muon_learning_rate=0.2"],
     "(not momentum, 0.0)"),
    (["--model=cnn", "--optimizer=momentum", "--muon_learning_rate=0.2"],
     "--model=resnet or airbench (not cnn)"),
    (["--ema_decay=1"], "--ema_decay=1.0 must be in [0, 1) (0: none)"),
    (["--label_smoothing=1"], "--label_smoothing=1.0 must be in [0, 1)"),
    (["--mixup=-1"], "--mixup=-1.0 must be >= 0"),
    (["--mix_probability=0.5"], "--mix_probability applies with --mixup or --cutmix"),
    (["--cutmix=1", "--mix_probability=0"], "--mix_probability=0.0 must be in (0, 1]"),
    (["--accumulation_steps=0"], "--accumulation_steps=0 must be positive"),
    (["--lr_schedule=plateau", "--plateau_patience=0"], "--plateau_patience=0 must be positive"),
])
def test_bad_values_name_the_flag(args, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    parse(*args)


def test_no_float_flag_takes_a_non_finite_value():
  """inf, -inf, nan and 1e400 (read as inf) are no rate, fraction, factor or size: every
  float flag refuses them in one line naming the flag."""
  floats = [o.name for o in declared.OPTIONS if o.kind is float]
  assert {"learning_rate", "memory_budget_gb", "mixup", "l2", "final_learning_rate"} <= set(floats)
  for name in floats:  # a model hyperparameter with a model that takes it
    model = next(m for m in ("mlp", "resnet") if not declared.BY_NAME[name].model
                 or name in models.hyperparameters(m))
    for value in ("inf", "-inf", "nan", "1e400"):
      with pytest.raises(ConfigError) as e:
        parse(f"--model={model}", f"--{name}={value}")
      assert str(e.value).endswith("must be a finite number"), (name, value, str(e.value))


def test_the_command_lines_run_length_overrides_a_flagfiles_other_spelling(tmp_path):
  flagfile = tmp_path / "run.cfg"
  flagfile.write_text("--model=mlp\n--epochs=3\n")
  for args in ([f"--flagfile={flagfile}", "--train_steps=7"],
               ["--train_steps=7", f"--flagfile={flagfile}"],
               [f"--flagfile={flagfile}", "--train_steps", "7"]):
    cfg = parse(*args)
    assert (cfg.train_steps, cfg.epochs) == (7, None)
  # Both on the command line (or both in files) is still the user's to settle.
  with pytest.raises(ConfigError, match="--epochs and --train_steps both given"):
    parse(f"--flagfile={flagfile}", "--epochs=2", "--train_steps=7")
