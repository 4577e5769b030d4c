"""A real PostgreSQL server on 127.0.0.1 for the tests that share an Optuna study between
tuner processes: Debian's `postgresql` package (.ci/run installs it), started from a fresh
data directory and stopped after. As root, the server runs as the `postgres` user, since
initdb refuses root. Without the package the tests are skipped, unless
TAPELOOP_REQUIRE_POSTGRES=1 (CI) makes that a failure."""

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile

import pytest


PASSWORD = "s3cret-pw"


def _bin_dir() -> str | None:
  found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
  return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def server():
  """Yields the URL of a database on a PostgreSQL server started for the caller, with
  the password PASSWORD in it."""
  bin_dir = _bin_dir()
  if bin_dir is None:
    if os.environ.get("TAPELOOP_REQUIRE_POSTGRES") == "1":
      pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
  home = tempfile.mkdtemp(prefix="tapeloop-pg-")
  run_as = []
  if os.geteuid() == 0:
    user = pwd.getpwnam("postgres")
    os.chown(home, user.pw_uid, user.pw_gid)
    run_as = ["runuser", "-u", "postgres", "--"]
  data, port = os.path.join(home, "data"), _free_port()
  run = lambda *args: subprocess.run([*run_as, *args], check=True, capture_output=True,
                                     text=True, timeout=120)
  secret = os.path.join(home, "password")
  with open(secret, "w") as f:
    f.write(PASSWORD)
  if run_as:
    os.chown(secret, user.pw_uid, user.pw_gid)
  try:
    # A password over TCP, as a shared server has; trust on the local socket (createdb).
    run(os.path.join(bin_dir, "initdb"), "-D", data, "-U", "postgres", "--no-sync",
        "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={secret}")
    run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-w", "-l", os.path.join(home, "log"),
        "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
      run(os.path.join(bin_dir, "createdb"), "-h", home, "-p", str(port), "-U",
          "postgres", "tapeloop")
      yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/tapeloop"
    finally:
      run(os.path.join(bin_dir, "pg_ctl"), "-D", data, "-m", "immediate", "stop")
  finally:
    shutil.rmtree(home, ignore_errors=True)
