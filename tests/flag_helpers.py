"""Builds a trainer Config from command-line style arguments, as trainer.main does."""

from absl import flags

from trainer import config as config_lib
from trainer import flags as tl_flags

tl_flags.define_flags()


def parse(*args):
  fv = flags.FLAGS
  fv.unparse_flags()
  fv(["prog", *args])
  try:
    return config_lib.from_flags(fv)
  finally:
    fv.unparse_flags()
