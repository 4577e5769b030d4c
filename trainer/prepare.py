"""python -m trainer.prepare --dataset=fashion_mnist [--data_dir=DIR]: `make data`'s
program. It makes a TFDS dataset ready offline (input_pipeline/readers/prepare.py, the library)
as every tapeloop program runs: --help and bad flags answered before TensorFlow and TFDS
load, TensorFlow's start-up quiet, bad input one line and exit 2."""

from input_pipeline.readers.prepare import FLAG_NAMES, USAGE, define_flags
from trainer import cli


def run():
  define_flags()
  cli.run_app("input_pipeline.readers.prepare", USAGE, {"flags": list(FLAG_NAMES)})


if __name__ == "__main__":
  run()
