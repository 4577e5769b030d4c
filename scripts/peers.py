"""The benchmark's models in JAX/Flax and PyTorch, trained like tapeloop trains them.

    .venv-peers/bin/python scripts/peers.py --framework=jax --model=cnn --threads=1

Run by scripts/bench_peers.py (make bench-peers) in the peers' own virtualenv
(.venv-peers: JAX and PyTorch pin other numpy and ml_dtypes releases than TensorFlow's),
one fresh process per measurement. No TensorFlow here: the models are the benchmark's
(bench_common.MODELS), built from their configs/ model flags. Same as tapeloop's benchmark:
MNIST-shaped uint8 data held in memory (60,000 examples), each step gathers a random
batch of 128, normalizes it (x / 255), runs forward, softmax cross-entropy, backward and
Adam (lr 1e-3, Keras's epsilon 1e-7); the same layer shapes, so the parameter counts
printed match tapeloop's. Prints one line: BENCHMARK_RESULT {json}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The model list, read from configs/ with the standard library only.
import bench_common  # pylint: disable=g-import-not-at-top,wrong-import-position

BATCH = bench_common.BATCH
N = 60_000
CLASSES = 10


def settings(name: str) -> tuple[str, dict]:
  """(kind, settings) of the benchmark model `name`, from its configs/ model flags; a
  model flag the peers do not build stops the run."""
  flags = bench_common.model_flags(name)
  kind = flags.pop("model")
  ints = lambda text: tuple(int(v) for v in text.split(","))
  try:
    if kind == "mlp":  # ReLU hidden layers, each followed by dropout when it is > 0
      s = {"hidden": ints(flags.pop("hidden_units")), "dropout": float(flags.pop("dropout", 0))}
    elif kind == "resnet":
      s = {"widths": ints(flags.pop("widths")), "blocks": int(flags.pop("blocks_per_stage"))}
    elif kind == "cnn":
      # The registry's default CNN: conv 25@5x5, pool, conv 25@5x5, pool, conv 25@4x4, dense 50.
      s = {}
    else:
      raise SystemExit(f"{name}: scripts/peers.py builds no --model={kind}")
  except KeyError as e:
    raise SystemExit(f"{name}: scripts/peers.py needs --{e.args[0]} in "
                     f"configs/{bench_common.MODELS[name]}.cfg") from None
  if flags:
    raise SystemExit(f"{name}: scripts/peers.py builds no "
                     + " ".join(f"--{k}={v}" for k, v in flags.items()))
  return kind, s


# JAX: steps per jit call with lax.scan. Fewer for convolutions: XLA:CPU runs them at a
# few hundred examples/s, and a scan of 50 ResNet steps would take minutes per call.
SCAN_STEPS = {"cnn": 10, "resnet": 2}


def _timed(step, seconds: float, examples_per_call: int) -> float:
  """examples/s of step() (which blocks until done) over at least `seconds`."""
  calls, start = 0, time.perf_counter()
  while calls < 3 or time.perf_counter() - start < seconds:
    step()
    calls += 1
  return calls * examples_per_call / (time.perf_counter() - start)


# --- JAX / Flax --------------------------------------------------------------------------

def jax_run(name: str, seconds: float) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top

  kind, s = settings(name)

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = x.reshape((x.shape[0], -1))
      for units in s["hidden"]:
        x = nn.relu(nn.Dense(units)(x))
        if s["dropout"]:
          x = nn.Dropout(s["dropout"], deterministic=not train)(x)
      return nn.Dense(CLASSES)(x)

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = nn.max_pool(nn.relu(nn.Conv(25, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
      x = nn.max_pool(nn.relu(nn.Conv(25, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
      x = nn.relu(nn.Conv(25, (4, 4), padding="VALID")(x))
      x = nn.relu(nn.Dense(50)(x.reshape((x.shape[0], -1))))
      return nn.Dense(CLASSES)(x)

  def bn(train):  # Keras's BatchNormalization: momentum 0.99, epsilon 1e-3
    return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3)

  class Block(nn.Module):
    width: int
    stride: int
    project: bool

    @nn.compact
    def __call__(self, x, train):
      conv = lambda k, st: nn.Conv(self.width, (k, k), (st, st), padding="SAME", use_bias=False)
      y = nn.relu(bn(train)(conv(3, self.stride)(x)))
      y = bn(train)(conv(3, 1)(y))
      shortcut = bn(train)(conv(1, self.stride)(x)) if self.project else x
      return nn.relu(y + shortcut)

  class ResNet(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      widths = s["widths"]
      x = nn.relu(bn(train)(nn.Conv(widths[0], (3, 3), padding="SAME", use_bias=False)(x)))
      in_width = widths[0]
      for i, width in enumerate(widths):
        for b in range(s["blocks"]):
          stride = 2 if i > 0 and b == 0 else 1
          x = Block(width, stride, stride != 1 or width != in_width)(x, train)
          in_width = width
      return nn.Dense(CLASSES)(x.mean(axis=(1, 2)))

  model = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}[kind]()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (N, 28, 28, 1), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, CLASSES, N, dtype=np.int32))
  variables = model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 28, 28, 1)), False)
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  tx = optax.adam(1e-3, eps=1e-7)
  opt_state = tx.init(params)
  mutable = ["batch_stats"] if stats else False

  def one_step(carry, key):
    params, stats, opt_state = carry
    batch_key, dropout_key = jax.random.split(key)
    idx = jax.random.randint(batch_key, (BATCH,), 0, N)
    x = images[idx].astype(jnp.float32) * (1.0 / 255.0)
    y = labels[idx]

    def loss_fn(p):
      out = model.apply({"params": p, "batch_stats": stats}, x, True,
                        rngs={"dropout": dropout_key}, mutable=mutable)
      logits, new_stats = (out[0], out[1].get("batch_stats", {})) if mutable else (out, stats)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    accuracy = (logits.argmax(-1) == y).mean()  # the metric tapeloop's step updates
    return (params, new_stats, opt_state), (loss, accuracy)

  scan_steps = SCAN_STEPS.get(kind, 50)
  step = jax.jit(one_step)
  scan = jax.jit(lambda carry, keys: jax.lax.scan(one_step, carry, keys))
  carry, key = (params, stats, opt_state), jax.random.PRNGKey(1)
  out = {"parameters": int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params))),
         "version": jax.__version__}
  state = {"carry": carry, "key": key}

  def run_jit():
    state["key"], k = jax.random.split(state["key"])
    state["carry"], metrics = step(state["carry"], k)
    jax.block_until_ready(metrics)

  def run_scan():
    state["key"], k = jax.random.split(state["key"])
    state["carry"], metrics = scan(state["carry"], jax.random.split(k, scan_steps))
    jax.block_until_ready(metrics)

  for variant, fn, per_call in (("jax_jit", run_jit, BATCH),
                                ("jax_scan", run_scan, BATCH * scan_steps)):
    start = time.perf_counter()
    fn()  # trace and compile
    compile_seconds = time.perf_counter() - start
    out[variant] = {"examples_per_sec": _timed(fn, seconds, per_call),
                    "compile_seconds": compile_seconds}
  out["jax_scan"]["steps_per_call"] = scan_steps
  return out


# --- PyTorch -------------------------------------------------------------------------------

def torch_run(name: str, seconds: float, compile_model: bool) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  kind, s = settings(name)
  torch.manual_seed(0)

  def mlp():
    layers, width = [nn.Flatten()], 28 * 28
    for units in s["hidden"]:
      layers += [nn.Linear(width, units), nn.ReLU()]
      if s["dropout"]:
        layers.append(nn.Dropout(s["dropout"]))
      width = units
    return nn.Sequential(*layers, nn.Linear(width, CLASSES))

  def cnn():
    return nn.Sequential(nn.Conv2d(1, 25, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(25, 25, 5), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(25, 25, 4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(25, 50), nn.ReLU(), nn.Linear(50, CLASSES))

  def bn(width):  # Keras's BatchNormalization: momentum 0.99 (torch's 0.01), epsilon 1e-3
    return nn.BatchNorm2d(width, eps=1e-3, momentum=0.01)

  class Block(nn.Module):
    def __init__(self, in_width, width, stride):
      super().__init__()
      self.body = nn.Sequential(nn.Conv2d(in_width, width, 3, stride, 1, bias=False), bn(width),
                                nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1, bias=False),
                                bn(width))
      self.project = (nn.Sequential(nn.Conv2d(in_width, width, 1, stride, bias=False),
                                    bn(width)) if stride != 1 or in_width != width else None)

    def forward(self, x):
      return torch.relu(self.body(x) + (self.project(x) if self.project else x))

  def resnet():
    widths = s["widths"]
    layers = [nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), bn(widths[0]), nn.ReLU()]
    in_width = widths[0]
    for i, width in enumerate(widths):
      for b in range(s["blocks"]):
        layers.append(Block(in_width, width, 2 if i > 0 and b == 0 else 1))
        in_width = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(in_width, CLASSES))

  model = {"mlp": mlp, "cnn": cnn, "resnet": resnet}[kind]()
  channels_last = kind != "mlp"  # NHWC, as TensorFlow holds images; faster under oneDNN
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
  model.train()
  g = torch.Generator().manual_seed(0)
  images = torch.randint(0, 256, (N, 1, 28, 28), dtype=torch.uint8, generator=g)
  labels = torch.randint(0, CLASSES, (N,), generator=g)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
  loss_fn = nn.CrossEntropyLoss()

  def forward_backward(x, y):
    logits = model(x)
    loss = loss_fn(logits, y)
    loss.backward()
    return loss, (logits.argmax(1) == y).float().mean()

  compiled = torch.compile(forward_backward) if compile_model else forward_backward

  def step():
    idx = torch.randint(0, N, (BATCH,), generator=g)
    x = images[idx].float().mul_(1.0 / 255.0)
    if channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad(set_to_none=True)
    loss, accuracy = compiled(x, labels[idx])
    optimizer.step()
    float(loss.detach()), float(accuracy)  # the metrics: read each step, as tapeloop updates them

  start = time.perf_counter()
  step()
  compile_seconds = time.perf_counter() - start
  variant = "torch_compile" if compile_model else "torch_eager"
  return {"parameters": sum(p.numel() for p in model.parameters()),
          "version": torch.__version__,
          variant: {"examples_per_sec": _timed(step, seconds, BATCH),
                    "compile_seconds": compile_seconds}}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--framework", choices=("jax", "torch", "torch_compile"), required=True)
  parser.add_argument("--model", choices=list(bench_common.MODELS), required=True)
  parser.add_argument("--threads", type=int, default=0, help="0: the framework's default")
  parser.add_argument("--seconds", type=float, default=3.0)
  args = parser.parse_args()
  if args.framework == "jax":
    if args.threads == 1:  # XLA:CPU's Eigen thread pool off: one thread per computation
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 " --xla_cpu_multi_thread_eigen=false"
                                 " intra_op_parallelism_threads=1").strip()
    result = jax_run(args.model, args.seconds)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    if args.threads:
      torch.set_num_threads(args.threads)
    try:
      result = torch_run(args.model, args.seconds, args.framework == "torch_compile")
    except Exception as e:  # pylint: disable=broad-except
      if args.framework != "torch_compile":
        raise
      # torch.compile needs a working C++ toolchain and supports not every op: say why.
      result = {"torch_compile": {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}}
  result["threads"] = args.threads
  bench_common.print_result(result)
  return 0


if __name__ == "__main__":
  sys.exit(main())
