#!/usr/bin/env bash
# Makes TFDS's fashion_mnist ready in DATA_DIR without network where possible:
# Debian's dataset-fashion-mnist (installed here if missing) -> python -m trainer.prepare.
# Without apt-get (macOS, other distributions) TFDS downloads it at the first run instead.
set -euo pipefail
data_dir=${1:?usage: get_fashion_mnist.sh DATA_DIR PYTHON}
python=${2:?usage: get_fashion_mnist.sh DATA_DIR PYTHON}
debian_dir=/usr/share/datasets/fashion-mnist

if ls "$data_dir"/fashion_mnist/*/dataset_info.json >/dev/null 2>&1; then
  printf 'fashion_mnist is already prepared in %q\n' "$data_dir"
  exit 0
fi
if [ ! -d "$debian_dir" ]; then
  if ! command -v apt-get >/dev/null; then
    echo "no apt-get: TFDS will download fashion_mnist at the first run (needs internet)"
    exit 0
  fi
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing Debian's dataset-fashion-mnist (the original Fashion-MNIST files)"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq dataset-fashion-mnist
fi
# One line per split, not TFDS's progress bars; no TensorFlow start-up chatter.
"$python" -m trainer.prepare --dataset=fashion_mnist --data_dir="$data_dir"
