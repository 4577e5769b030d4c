"""Starts N local workers of one MultiWorkerMirroredStrategy run, to try multi-worker
training on one machine. Each worker gets TF_CONFIG for a cluster on 127.0.0.1.

    python scripts/local_cluster.py --workers=2 -- --flagfile=configs/mnist_cnn.cfg \
        --dataset=synthetic --train_steps=100 --model_dir=runs/cluster

Output lines are prefixed with the worker index; the exit status is the first non-zero
one of the workers. On several machines, set TF_CONFIG on each yourself (see docs/several-machines.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading


def free_ports(n: int) -> list[int]:
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def tf_config(ports: list[int], index: int) -> str:
  return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}})


def _relay(stream, prefix: str, out) -> None:
  for line in stream:
    out.write(f"{prefix}{line}")
    out.flush()


def run(workers: int, trainer_args: list[str], timeout: float | None = None) -> int:
  """Runs the workers to the end; returns the first non-zero exit status, else 0."""
  ports = free_ports(workers)
  procs, relays = [], []
  for i in range(workers):
    env = dict(os.environ, TF_CONFIG=tf_config(ports, i))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.main", "--strategy=multi_worker", *trainer_args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    relay = threading.Thread(target=_relay, args=(proc.stdout, f"[worker {i}] ", sys.stdout),
                             daemon=True)
    relay.start()
    procs.append(proc)
    relays.append(relay)
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  except (subprocess.TimeoutExpired, KeyboardInterrupt):
    for p in procs:
      p.kill()
    raise
  for relay in relays:
    relay.join(timeout=5)
  return next((c for c in codes if c), 0)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workers", type=int, default=2, help="number of local workers")
  parser.add_argument("--timeout", type=float, default=None, help="seconds before killing all")
  parser.add_argument("trainer_args", nargs=argparse.REMAINDER,
                      help="flags for trainer.main, after --")
  args = parser.parse_args()
  if args.workers < 1:
    parser.error("--workers must be at least 1")
  trainer_args = [a for a in args.trainer_args if a != "--"]
  return run(args.workers, trainer_args, args.timeout)


if __name__ == "__main__":
  sys.exit(main())
