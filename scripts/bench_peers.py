"""tapeloop, Keras fit, JAX/Flax and PyTorch on the same models, interleaved.

    python scripts/bench_peers.py --peers_python=.venv-peers/bin/python   # make bench-peers

For each model (bench_common.distinct_models(): the benchmark's, each model once),
interleaved and repeated (--repeats), every job in a fresh process: tapeloop and Keras
fit as scripts/benchmark.py measures them (bench_jobs.py), and the same model in JAX/Flax
and PyTorch (scripts/peers.py, run by --peers_python: a Python with jax, flax, optax and
torch, .venv-peers), each peer at its best thread setting (the faster of one thread and
all cores). Stops when a peer's parameter count is not tapeloop's. Writes
benchmarks/peers.json and benchmarks/peers.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # pylint: disable=g-import-not-at-top,wrong-import-position
import bench_jobs  # pylint: disable=g-import-not-at-top,wrong-import-position
from bench_common import (  # pylint: disable=g-import-not-at-top,wrong-import-position
    BATCH, DATASET, STEPS_PER_LOOP)

# (framework, threads) per peer job; 0 threads: the framework's default (all cores).
PEER_JOBS = (("jax", 1), ("jax", 0), ("torch", 1), ("torch", 0), ("torch_compile", 0))
# Model families that --mixed_precision=auto may train in bfloat16: measured also that
# way, in a column of its own (the peers stay float32).
from trainer.run.planning import BF16_FASTER as AUTO_PRECISION  # pylint: disable=g-import-not-at-top,wrong-import-position
PEER_VARIANTS = ("jax_jit", "jax_scan", "torch_eager", "torch_compile")
_PEER_NAMES = {"jax_jit": "JAX jit", "jax_scan": "JAX scan", "torch_eager": "PyTorch eager",
               "torch_compile": "torch.compile"}


def _peer(args, framework: str, model: str, threads: int) -> dict:
  """One peer measurement in a fresh process of the peers' virtualenv."""
  cmd = [args.peers_python, os.path.join(bench_common.ROOT, "scripts", "peers.py"),
         f"--framework={framework}", f"--model={model}", f"--threads={threads}",
         f"--seconds={args.seconds}"]
  return bench_common.run_job(cmd, f"peer job {' '.join(cmd[1:])}")


def run_peers(args) -> dict:
  """tapeloop, Keras fit and the peers on each model, interleaved, every job in a fresh
  process; each peer at its best thread setting (the faster of 1 and all cores)."""
  names = args.models.split(",") if args.models else bench_common.distinct_models()
  raw: dict[str, list] = {"matmul_gflops": []}
  params, flops, machine_info, versions, envs = {}, {}, None, {}, {}
  for repeat in range(args.repeats):
    print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
    m = bench_jobs.isolated({"kind": "machine"}, args.seconds)
    machine_info = m["machine"]
    raw["matmul_gflops"].append(m["matmul_gflops"])
    for name in names:
      spl = STEPS_PER_LOOP.get(name, args.steps_per_loop)
      todo = [("tapeloop", None), ("keras", None)] + [("peer", j) for j in PEER_JOBS]
      if bench_common.model_flags(name)["model"] in AUTO_PRECISION:
        todo.insert(1, ("tapeloop_auto", None))
      if repeat % 2:
        todo.reverse()
      for kind, peer in todo:
        if kind == "tapeloop":
          r = bench_jobs.isolated({"kind": "tapeloop", "model": name, "steps_per_loop": spl,
                             "count_flops": name not in flops, "parameters": True},
                            args.seconds)
          envs["tapeloop"] = r.pop("env")
          flops.setdefault(name, r.get("train_flops_per_example"))
          params.setdefault(name, {})["tapeloop"] = r["parameters"]
          raw.setdefault(f"{name}/tapeloop", []).append(r["tapeloop"]["examples_per_sec"])
          raw.setdefault(f"{name}/tapeloop/jit", []).append(r["jit"])
        elif kind == "tapeloop_auto":
          r = bench_jobs.isolated({"kind": "tapeloop", "model": name, "steps_per_loop": spl,
                             "count_flops": False, "flags": ["--mixed_precision=auto"]},
                            args.seconds)
          raw.setdefault(f"{name}/tapeloop_auto", []).append(r["tapeloop"]["examples_per_sec"])
          raw.setdefault(f"{name}/tapeloop_auto/precision", []).append(r["precision"])
        elif kind == "keras":
          rate = (raw.get(f"{name}/tapeloop") or [5000])[-1]
          r = bench_jobs.isolated({"kind": "keras", "model": name, "steps_per_loop": spl,
                             "order": ["keras_fit", "keras_fit_spe"], "expected_rate": rate},
                            args.seconds)
          envs["keras"] = r.pop("env")
          for v in ("keras_fit", "keras_fit_spe"):
            raw.setdefault(f"{name}/{v}", []).append(r[v]["examples_per_sec"])
        else:
          framework, threads = peer
          r = _peer(args, framework, name, threads)
          versions[framework.split("_")[0]] = r.get("version", versions.get(framework))
          if "parameters" in r:
            params[name][framework.split("_")[0]] = r["parameters"]
          for v in PEER_VARIANTS:
            if v in r and "error" in r[v]:
              raw.setdefault(f"{name}/{v}/error", []).append(r[v]["error"])
            elif v in r:
              raw.setdefault(f"{name}/{v}/threads={threads}", []).append(
                  r[v]["examples_per_sec"])
      print(f"  {name:24s} tapeloop {raw[f'{name}/tapeloop'][-1]:9.0f}  " + "  ".join(
          f"{k.split('/', 1)[1]} {v[-1]:.0f}" for k, v in raw.items()
          if k.startswith(f"{name}/")
          and not k.endswith(("/error", "/jit", "/tapeloop", "/precision"))
          and isinstance(v[-1], float)), flush=True)
  for name, counts in params.items():
    if len(set(counts.values())) > 1:  # then the frameworks did not train the same model
      raise SystemExit(f"{name}: parameter counts differ {counts}: scripts/peers.py's "
                       "model is not tapeloop's")
  peak = statistics.median(raw["matmul_gflops"])
  rows = {}
  for name in names:
    med = lambda key: statistics.median(raw[key]) if raw.get(key) else None
    peers = {}
    for v in PEER_VARIANTS:
      by_threads = {k.rsplit("=", 1)[1]: med(k) for k in raw
                    if k.startswith(f"{name}/{v}/threads=")}
      if by_threads:
        best = max(by_threads, key=by_threads.get)
        peers[v] = {"examples_per_sec": by_threads[best], "threads": int(best),
                    "by_threads": by_threads}
      elif raw.get(f"{name}/{v}/error"):
        peers[v] = {"error": raw[f"{name}/{v}/error"][-1]}
    measured = {v: p["examples_per_sec"] for v, p in peers.items() if "examples_per_sec" in p}
    best_peer = max(measured, key=measured.get)
    tapeloop = med(f"{name}/tapeloop")
    fit_best = max(med(f"{name}/keras_fit"), med(f"{name}/keras_fit_spe"))
    rows[name] = {
        "parameters": params[name], "tapeloop": bench_common.summarize(raw[f"{name}/tapeloop"]),
        "tapeloop_jit": raw[f"{name}/tapeloop/jit"][-1],
        "keras_fit": med(f"{name}/keras_fit"), "keras_fit_spe": med(f"{name}/keras_fit_spe"),
        "peers": peers, "best_peer": best_peer,
        "vs_best_peer": tapeloop / measured[best_peer], "vs_keras_best": tapeloop / fit_best,
        "fraction_of_matmul_peak": tapeloop * flops[name] / 1e9 / peak,
    }
    if raw.get(f"{name}/tapeloop_auto"):
      auto = med(f"{name}/tapeloop_auto")
      rows[name].update({"tapeloop_auto": bench_common.summarize(raw[f"{name}/tapeloop_auto"]),
                         "auto_precision": raw[f"{name}/tapeloop_auto/precision"][-1],
                         "auto_vs_best_peer": auto / measured[best_peer]})
  return {"machine": machine_info, "versions": versions, "environment": envs,
          "global_batch_size": BATCH, "dataset": DATASET, "repeats": args.repeats,
          "seconds_per_measurement": args.seconds,
          "matmul_gflops": bench_common.summarize(raw["matmul_gflops"]),
          "isolation": "every measurement job in a fresh process, the order reversed in every "
                       "other repeat", "models": rows, "targets": peer_targets(rows)}


def peer_targets(rows) -> dict:
  out = {}
  for name, row in rows.items():
    out[f"{name} >= 1.0x the best peer"] = row["vs_best_peer"] >= 1.0
  for name, row in rows.items():
    out[f"{name} >= 1.5x keras fit (best)"] = row["vs_keras_best"] >= 1.5
  for name, row in rows.items():
    if "auto_vs_best_peer" in row:
      out[f"{name} with --mixed_precision=auto ({row['auto_precision']}) >= 1.0x the best "
          "peer (float32)"] = row["auto_vs_best_peer"] >= 1.0
  if "cnn" in rows:
    out["cnn >= 40% of matmul peak"] = rows["cnn"]["fraction_of_matmul_peak"] >= 0.40
  return out


def peers_markdown(result: dict) -> str:
  m, v = result["machine"], result["versions"]
  lines = [
      f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores: TensorFlow {m['tensorflow']}, "
      f"Keras {m['keras']}, JAX {v.get('jax')}, PyTorch {v.get('torch')}. Global batch "
      f"{result['global_batch_size']}, Adam, MNIST-shaped synthetic data in memory, a random "
      f"batch gathered and normalized inside each step; {result['repeats']} interleaved "
      "repeats, every job in a fresh process: median examples/s. Each peer at its faster "
      "thread setting (t1: one thread, t0: the default); JAX scan runs K steps per call. "
      "tapeloop with its defaults but float32 (--jit_compile=auto: column XLA); column "
      "auto: with --mixed_precision=auto (the conv models; its policy named), against "
      "float32 peers.",
      "",
      "| model | parameters | tapeloop | XLA | auto | Keras fit (best) | JAX jit | JAX scan | "
      "PyTorch eager | torch.compile | vs best peer | auto vs best peer | vs best fit | "
      "of matmul peak |",
      "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, r in result["models"].items():
    counts = sorted(set(r["parameters"].values()))
    cells = []
    for variant in PEER_VARIANTS:
      p = r["peers"].get(variant, {})
      if "examples_per_sec" in p:
        cell = f"{p['examples_per_sec']:,.0f} t{p['threads']}"
        cells.append(f"**{cell}**" if variant == r["best_peer"] else cell)
      else:
        cells.append("failed" if "error" in p else "-")
    auto, auto_ratio = "-", "-"
    if "tapeloop_auto" in r:
      short = {"mixed_bfloat16": "bf16", "float32": "f32"}.get(r["auto_precision"],
                                                               r["auto_precision"])
      auto = f"{r['tapeloop_auto']['median']:,.0f} {short}"
      auto_ratio = f"{r['auto_vs_best_peer']:.2f}x"
    lines.append(
        f"| {name} | {'/'.join(f'{c:,}' for c in counts)} | {r['tapeloop']['median']:,.0f} | "
        f"{r['tapeloop_jit']} | {auto} | {max(r['keras_fit'], r['keras_fit_spe']):,.0f} | "
        + " | ".join(cells) +
        f" | {r['vs_best_peer']:.2f}x | {auto_ratio} | {r['vs_keras_best']:.2f}x | "
        f"{100 * r['fraction_of_matmul_peak']:.0f}% |")
  errors = {f"{n} {_PEER_NAMES[v]}": p["error"] for n, r in result["models"].items()
            for v, p in r["peers"].items() if "error" in p}
  if errors:
    lines += ["", "Failed: " + "; ".join(f"{k}: {e}" for k, e in errors.items())]
  peak = bench_common.spread(result["matmul_gflops"])
  lines += ["", f"fp32 matmul peak (1024x1024): {peak} GFLOP/s."]
  return "\n".join(lines + bench_common.targets_table(result["targets"])) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
  parser.add_argument("--steps_per_loop", type=int, default=100)
  parser.add_argument("--models", default="", help="comma list (default: each model once)")
  parser.add_argument("--output_dir", default=os.path.join(bench_common.ROOT, "benchmarks"))
  parser.add_argument("--peers_python",
                      default=os.path.join(bench_common.ROOT, ".venv-peers", "bin", "python"),
                      help="a Python with jax, flax, optax and torch (make bench-peers)")
  args = parser.parse_args(argv)
  bench_common.check_models(parser, args.models)
  os.makedirs(args.output_dir, exist_ok=True)
  result = run_peers(args)
  bench_common.write(args.output_dir, "peers", result, peers_markdown(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
