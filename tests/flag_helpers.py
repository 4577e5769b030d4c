"""Builds a trainer Config from command-line style arguments, as trainer.main does."""

from trainer import config as config_lib


def parse(*args):
  return config_lib.from_args(args)
