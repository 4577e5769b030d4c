"""The options as users see them: the command-line flags and docs/flags.md, both from
trainer/options/declared.py's declarations. Values are checked in config.py, not by absl, so that
every bad value gets the same one-line error naming the flag."""

from __future__ import annotations

from absl import flags

from trainer.options import declared

_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_boolean, list: flags.DEFINE_list}

# Names of the flags defined here (not absl's or TF's): they go into results.json and
# the TensorBoard hparams.
OWN_FLAGS: list[str] = []
# The same flags by topic, in declaration order, for --help.
GROUPS: dict[str, list[str]] = {}


def define_flags() -> None:
  """Defines tapeloop's flags, once however often it is called: trainer.main calls it on
  import, and each of config.from_args, search and the other programs calls it again."""
  if OWN_FLAGS:
    return
  for option in declared.OPTIONS:
    _DEFINE[option.kind](option.name, option.default, option.help)
  GROUPS.update(declared.groups())
  OWN_FLAGS.extend(declared.NAMES)


# One run length in two spellings: the command line's overrides a flagfile's other one
# (`--flagfile=X.cfg --train_steps=200` where X.cfg gives --epochs), as the command line
# overrides any flag of the file. Both given on the command line (or both in the files)
# stay an error: config.py names it.
_LENGTHS = ("epochs", "train_steps")


def _length(arg: str) -> str | None:
  name = arg.lstrip("-").split("=", 1)[0] if arg.startswith("-") else None
  return name if name in _LENGTHS else None


def expand(argv: list[str]) -> list[str]:
  """argv with its flagfiles read in place (absl's reading), less a flagfile's run length
  where the command line itself gives the other spelling."""
  direct = {_length(a) for a in argv[1:]} - {None}
  args = flags.FLAGS.read_flags_from_files(argv[1:], force_gnu=False)
  if len(direct) != 1:
    return [argv[0], *args]
  other, kept, skip_value = (set(_LENGTHS) - direct).pop(), [], False
  for arg in args:
    if skip_value:  # `--epochs 5`: its value is the next argument
      skip_value = False
    elif _length(arg) == other:
      skip_value = "=" not in arg
    else:
      kept.append(arg)
  return [argv[0], *kept]


# What a rerun into the same model_dir may do with a flag of each role.
_ROLE_TEXT = {declared.WHAT: "refused", declared.HOW: "may change",
              declared.DATA: "may change; trainer.evaluate reads the run's",
              declared.LENGTH: "may extend the run",
              declared.RESTART: "only with a longer run: restarts the schedule over the "
                               "added steps"}


def reference() -> str:
  """docs/flags.md: every option by group, from these declarations
  (python -m trainer.options.command_line > docs/flags.md; a test keeps it current)."""
  lines = ["# Flags", "", "Generated from `trainer/options/declared.py` by "
           "`python -m trainer.options.command_line > docs/flags.md`; `python -m trainer.main --help` prints the same by group.",
           "", "*On a rerun*: what a rerun into the same `--model_dir` may do with the flag "
           "(refused: it changes what is trained; `--allow_changed_flags=NAME` allows it, "
           "recorded in flag_changes.json).", ""]
  for group, names in declared.groups().items():
    lines += [f"## {group}", "", "| flag | default | on a rerun | what it does |",
              "|---|---|---|---|"]
    for name in names:
      option = declared.BY_NAME[name]
      default = "" if option.default is None else f"`{option.default}`"
      text = option.help.replace("|", "\\|")
      lines.append(f"| `--{name}` | {default} | {_ROLE_TEXT[option.role]} | {text} |")
    lines.append("")
  return "\n".join(lines)


if __name__ == "__main__":
  print(reference(), end="")
