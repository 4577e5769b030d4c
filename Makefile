# `make test` and `make train` do all the set-up: a virtualenv in .venv, the package, data.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pip says what it installs (no --quiet), without progress bars.
PIP := $(PY) -m pip install --progress-bar off
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Where `make data` prepares Fashion-MNIST: the trainer's default --data_dir, TFDS's own
# ($TFDS_DATA_DIR, else ~/tensorflow_datasets), so that every command finds it without
# --data_dir, from any directory.
DATA_DIR ?= $(or $(TFDS_DATA_DIR),$(HOME)/tensorflow_datasets)
# Flags for `make train`, e.g. make train FLAGS="--learning_rate=0.003 --model_dir=runs/lr0.003"
FLAGS ?=

.PHONY: install test train data bench bench-peers bench-profile bench-tta bench-stream bench-transfer bench-folder bench-export tutorial clean

install: $(STAMP)

# What training needs: tapeloop and its dependencies (TensorFlow, Keras, TFDS), no extras.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || { echo "== creating the virtualenv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "== installing tapeloop and what training needs into $(VENV) (TensorFlow: a few minutes the first time)"
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

# The suite needs the test, tune and export extras besides (pytest, hypothesis,
# pytest-xdist, Optuna, psycopg, LiteRT, tf2onnx, onnxruntime).
$(TEST_STAMP): $(STAMP)
	@echo "== installing the test, tune and export extras into $(VENV)"
	$(PIP) -e '.[test,tune,export]'
	touch $@

test: $(TEST_STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

# Fashion-MNIST for TFDS, offline from Debian's package where possible.
data: install
	scripts/get_fashion_mnist.sh "$(DATA_DIR)" $(PY)

# A real training run: the quickstart config (a CNN on Fashion-MNIST, a few minutes on
# 2 CPU cores); prints the test accuracy. Output in runs/quickstart (--model_dir in FLAGS
# elsewhere).
train: data
	$(PY) -m trainer.main --flagfile=configs/quickstart.cfg --data_dir="$(DATA_DIR)" $(FLAGS)

# tapeloop against Keras fit, interleaved in one run: benchmarks/results.{json,md}.
bench: install
	$(PY) scripts/benchmark.py

# tapeloop, Keras fit, JAX/Flax and PyTorch on the same models, interleaved:
# benchmarks/peers.{json,md}. The peers get a virtualenv of their own (.venv-peers): JAX
# and PyTorch pin numpy and ml_dtypes releases other than TensorFlow's. Never needed by
# `make test`. torch 2.13.0 is pinned: on this machine it is a local CPU-only wheel (an
# unpinned torch from PyPI is a CUDA build of several GB).
PEERS_VENV ?= .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
$(PEERS_STAMP):
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -r scripts/peers-requirements.txt
	touch $@

bench-peers: install $(PEERS_STAMP)
	$(PY) scripts/bench_peers.py --peers_python=$(PEERS_VENV)/bin/python $(BENCH_FLAGS)

# Where each model's step time goes (profiler): benchmarks/profile.{json,md}.
bench-profile: install
	$(PY) scripts/profile_step.py $(BENCH_FLAGS)

# Time to accuracy on Fashion-MNIST with configs/fashion_tta.cfg.
bench-tta: data
	$(PY) scripts/bench_tta.py --data_dir="$(DATA_DIR)"

# Bounded memory: ResNet trained from a generated folder of 252k PNGs (3.1 GB decoded; kept
# in data/stream_benchmark), streamed: benchmarks/streaming.{json,md}.
bench-stream: install
	$(PY) scripts/stream_benchmark.py

# What starting from an earlier run is worth: a CNN pretrained on Fashion-MNIST classes
# 0-4, then trained on 5-9 with 10, 50 and 500 images per class from scratch, fine-tuned,
# frozen and frozen-then-unfrozen, two seeds: benchmarks/transfer.{json,md}, runs in
# runs/transfer.
bench-transfer: data
	$(PY) scripts/transfer.py --root=runs/transfer --data_dir="$(DATA_DIR)" $(BENCH_FLAGS)

# A standard network (MobileNetV3-Small) on a generated 64x64 RGB image folder: tapeloop
# against Keras fit, interleaved: benchmarks/folder.{json,md}.
bench-folder: install
	$(PY) scripts/bench_folder.py $(BENCH_FLAGS)

# LiteRT and ONNX exports (float32, float16, dynamic, int8) of the quickstart CNN, a shortened
# ResNet and a shortened airbench on Fashion-MNIST, each checked by trainer.export against
# its run's SavedModel: benchmarks/export.{json,md}, runs in runs/bench-export (trained once,
# about 15 minutes on 2 cores; BENCH_FLAGS=--skip_training exports them again alone).
EXPORT_STAMP := $(VENV)/.installed-export
$(EXPORT_STAMP): $(STAMP)
	@echo "== installing the export extra into $(VENV)"
	$(PIP) -e '.[export]'
	touch $@

bench-export: data $(EXPORT_STAMP)
	$(PY) scripts/bench_export.py $(BENCH_FLAGS)

# The tutorial's seven models on Fashion-MNIST (offline), compared: benchmarks/tutorial.{md,json},
# TensorBoard runs in runs/tutorial. For MNIST: make tutorial TUTORIAL_FLAGS=--dataset=idx:DIR
TUTORIAL_FLAGS ?=
tutorial: data
	$(PY) scripts/tutorial.py --data_dir="$(DATA_DIR)" $(TUTORIAL_FLAGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) *.egg-info .pytest_cache
