"""Starts the tasks of one MultiWorkerMirroredStrategy run on this machine, to try
multi-worker training: each gets TF_CONFIG for a cluster on 127.0.0.1 and the same command
line, as Kubeflow's TFJob and Vertex AI start them.

    python scripts/local_cluster.py --workers=2 -- --model=cnn \
        --dataset=synthetic:train=4096,test=512 --train_steps=100 --model_dir=runs/cluster
    python scripts/local_cluster.py --chief --workers=1 --evaluator -- ...  # the engines' layout

--chief: a `chief` task trains and writes, beside the `worker` tasks (without it, worker 0
writes). --evaluator: an `evaluator` task evaluates each checkpoint, outside the training
collective (ended here when training fails: it would wait for training to resume).
Output lines are prefixed with the task; the exit status is the first non-zero one. On several machines, set TF_CONFIG on each yourself (see
docs/several-machines.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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


def cluster(workers: int, chief: bool = False, evaluator: bool = False) -> dict:
  """{task type: [address, ...]} on free loopback ports."""
  sizes = {"chief": int(chief), "worker": workers, "evaluator": int(evaluator)}
  ports = iter(free_ports(sum(sizes.values())))
  return {kind: [f"127.0.0.1:{next(ports)}" for _ in range(n)] for kind, n in sizes.items() if n}


def tasks(spec: dict) -> list[tuple[str, int]]:
  """Every (task type, index) of the cluster, the chief first."""
  return [(kind, i) for kind in ("chief", "worker", "evaluator") for i in range(len(spec.get(kind, ())))]


def tf_config(ports_or_cluster, index: int, task_type: str = "worker") -> str:
  """TF_CONFIG of one task: a cluster of workers on these ports, or a cluster() spec."""
  spec = (ports_or_cluster if isinstance(ports_or_cluster, dict)
          else {"worker": [f"127.0.0.1:{p}" for p in ports_or_cluster]})
  return json.dumps({"cluster": spec, "task": {"type": task_type, "index": index}})


def _relay(stream, prefix: str, out) -> None:
  for line in stream:
    out.write(f"{prefix}{line}")
    out.flush()


def start(spec: dict, trainer_args: list[str], out=sys.stdout):
  """Starts every task of the cluster; returns [(label, process)] and their relay threads."""
  procs, relays = [], []
  for kind, i in tasks(spec):
    env = dict(os.environ, TF_CONFIG=tf_config(spec, i, kind))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.main", "--strategy=multi_worker", *trainer_args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    relay = threading.Thread(target=_relay, args=(proc.stdout, f"[{kind} {i}] ", out),
                             daemon=True)
    relay.start()
    procs.append((f"{kind} {i}", proc))
    relays.append(relay)
  return procs, relays


def run(workers: int, trainer_args: list[str], timeout: float | None = None, *,
        chief: bool = False, evaluator: bool = False) -> int:
  """Runs the tasks to the end; returns the first non-zero exit status, else 0."""
  procs, relays = start(cluster(workers, chief, evaluator), trainer_args)
  try:
    codes = [p.wait(timeout=timeout) for label, p in procs if not label.startswith("evaluator")]
    if evaluator:
      if any(codes):  # training stopped: the evaluator would wait for it to resume
        procs[-1][1].terminate()
      codes.append(procs[-1][1].wait(timeout=timeout))
  except (subprocess.TimeoutExpired, KeyboardInterrupt):
    for _, p in procs:
      p.kill()
    raise
  for relay in relays:
    relay.join(timeout=5)
  return next((c for c in codes if c), 0)


def dry_run(spec: dict, trainer_args: list[str]) -> int:
  """--dry_run: the trainer's flags, data and plan checked as each task would check them
  (trainer/run/dry_run.py), and what would start; exit 2 with the trainer's one line if a
  task would refuse."""
  # Here, not at the top: the tasks' launcher loads no TensorFlow (its tasks each do);
  # only its dry run checks as a task would.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  # pylint: disable=g-import-not-at-top
  from trainer.process import tf_env
  tf_env.apply()
  from trainer.run.dry_run import check_runs, plan_lines
  from trainer.process.errors import UsageError
  # pylint: enable=g-import-not-at-top
  args = ["--strategy=multi_worker", *trainer_args]
  kind, i = tasks(spec)[0]
  os.environ["TF_CONFIG"] = tf_config(spec, i, kind)  # the plan as the first task sees it
  try:
    check_runs([args])
    plan = plan_lines(args)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print("dry run: nothing was started; without --dry_run these tasks run on 127.0.0.1:")
  for kind, i in tasks(spec):
    print(f"  [{kind} {i}] TF_CONFIG={shlex.quote(tf_config(spec, i, kind))} "
          f"{shlex.join([sys.executable, '-m', 'trainer.main', *args])}")
  print("the run, as trainer.main's dry run says it:")
  for line in plan:
    print(f"  {line}")
  return 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workers", type=int, default=2, help="number of `worker` tasks")
  parser.add_argument("--chief", action="store_true", help="a `chief` task besides")
  parser.add_argument("--evaluator", action="store_true", help="an `evaluator` task")
  parser.add_argument("--timeout", type=float, default=None, help="seconds before killing all")
  parser.add_argument("--dry_run", action="store_true", help="check the trainer flags and "
                      "data, print each task's TF_CONFIG and command, start nothing")
  parser.add_argument("trainer_args", nargs=argparse.REMAINDER,
                      help="flags for trainer.main, after --")
  args = parser.parse_args()
  if args.workers < 1:
    parser.error("--workers must be at least 1")
  trainer_args = [a for a in args.trainer_args if a != "--"]
  if args.dry_run:
    return dry_run(cluster(args.workers, args.chief, args.evaluator), trainer_args)
  return run(args.workers, trainer_args, args.timeout, chief=args.chief,
             evaluator=args.evaluator)


if __name__ == "__main__":
  sys.exit(main())
