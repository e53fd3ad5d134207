"""``dpn-train --workers N``: MXNet's parameter server on this machine, one process per role.

MXNet's bundled launcher (``tools/launch.py``, dmlc_tracker) fails on Python 3.11, so the
roles are started here, as it would: a scheduler and one server (each just ``import mxnet``
with ``DMLC_ROLE`` set, which blocks until the job ends) and N workers running the same
``dpn-train`` command without ``--workers``, all with ``DMLC_PS_ROOT_URI=127.0.0.1``, a free
``DMLC_PS_ROOT_PORT``, ``DMLC_NUM_SERVER=1`` and ``DMLC_NUM_WORKER=N``. SIGINT/SIGTERM are
forwarded to the workers (which stop, keeping their last complete checkpoint); a worker that
fails stops the others; on every exit path no process is left behind. Across hosts, start
the same roles by hand, by ssh or MPI (docs/train.md).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

#: Seconds the workers get to stop after SIGTERM before they are killed.
GRACE_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def role_env(role: str, workers: int, port: int, servers: int = 1) -> dict:
    env = dict(os.environ, DMLC_ROLE=role, DMLC_PS_ROOT_URI="127.0.0.1",
               DMLC_PS_ROOT_PORT=str(port), DMLC_NUM_SERVER=str(servers),
               DMLC_NUM_WORKER=str(workers))
    if role != "worker":     # a server's or scheduler's threads need no OpenMP pool
        env["OMP_NUM_THREADS"] = "1"
    return env


def launch(worker_argv: List[str], workers: int, out: Path,
           worker_command: Optional[List[str]] = None) -> int:
    """Run the job; returns the exit status (the first failing worker's, else 0).

    ``out`` is the run's ``--out PREFIX``: a worker killed while writing leaves a temporary
    file for one of the run's outputs there, which is removed once every process has ended
    (those of this run's workers only: the pid in the name says whose it is).
    ``worker_command`` replaces ``dpn-train`` as the workers' program (tests)."""
    port = free_port()
    service = [sys.executable, "-c", "import mxnet"]
    procs, pool = [], []
    received = []

    def forward(signum, frame):
        received.append(signum)
        for p in pool:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        procs.append(subprocess.Popen(service, env=role_env("scheduler", workers, port)))
        procs.append(subprocess.Popen(service, env=role_env("server", workers, port)))
        cmd = (worker_command or [sys.executable, "-m", "dpn_gluon.train.cli"]) + worker_argv
        for _ in range(workers):
            pool.append(subprocess.Popen(cmd, env=role_env("worker", workers, port)))
        procs.extend(pool)
        status = 0
        while any(p.poll() is None for p in pool) and not received:
            failed = [p.returncode for p in pool if p.returncode not in (None, 0)]
            if failed:
                status = failed[0]
                forward(signal.SIGTERM, None)
                received.pop()
                break
            time.sleep(0.2)
        # a worker blocked in a kvstore call (its peer gone) never runs its handler
        _wait(pool, GRACE_S)
        status = status or next((p.returncode for p in pool if p.returncode), 0)
        _wait(procs[:2], 5.0)
        if received:
            return 128 + received[0]
        return status if status >= 0 else 128 - status
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        for s, handler in old.items():
            signal.signal(s, handler)
        _remove_temporaries(out, [p.pid for p in pool])


def _remove_temporaries(out: Path, writers: List[int]) -> None:
    from .checkpoints import Run
    Run(out).remove_temporaries(writers)


def _wait(procs, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(2.0)
            except subprocess.TimeoutExpired:
                p.kill()
