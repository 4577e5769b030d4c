"""The command-line flags, defined from trainer/options.py's declarations. Values are
checked in config.py, not by absl, so that every bad value gets the same one-line error
naming the flag."""

from absl import flags

from trainer import options

_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_boolean, list: flags.DEFINE_list}

# Names of the flags defined here (not absl's or TF's): they go into results.json and
# the TensorBoard hparams.
OWN_FLAGS: list[str] = []
# The same flags by topic, in declaration order, for --help.
GROUPS: dict[str, list[str]] = {}


def define_flags() -> None:
  """Defines tapeloop's flags once per process (tests call it repeatedly)."""
  if OWN_FLAGS:
    return
  for option in options.OPTIONS:
    _DEFINE[option.kind](option.name, option.default, option.help)
  GROUPS.update(options.groups())
  OWN_FLAGS.extend(options.NAMES)
