"""``dpn-train --workers N``: MXNet's parameter server on this machine, one process per role.

MXNet's bundled launcher (``tools/launch.py``, dmlc_tracker) fails on Python 3.11, so the
roles are started here, as it would: a scheduler and one server (each just ``import mxnet``
with ``DMLC_ROLE`` set, which blocks until the job ends) and N workers running the same
``dpn-train`` command without ``--workers``, all with ``DMLC_PS_ROOT_URI=127.0.0.1``,
``DMLC_NUM_SERVER=1`` and ``DMLC_NUM_WORKER=N``.

A run's processes live and die together (docs/train.md has the table):

- every role follows the launcher (:mod:`dpn_gluon.lifeline`: PR_SET_PDEATHSIG, and the
  launcher's pipe watched for end-of-file), so a launcher killed even by SIGKILL leaves no
  role behind; the workers' decoding processes follow their worker;
- SIGINT/SIGTERM/SIGHUP are forwarded to the workers as SIGTERM (they stop, keeping their
  last complete checkpoint); a worker, the server or the scheduler that ends early ends the
  run; after :data:`GRACE_S` seconds a role that did not stop is killed;
- a run in which no worker reports progress (a step, a validation batch, a checkpoint) for
  ``stall_s`` seconds (:data:`START_S` at least before the first report) is stalled (a role stopped by SIGSTOP, a deadlock): one line names the
  role, every process is killed, exit 1;
- the scheduler's port is a free one, and the launcher checks that its own scheduler is the
  process listening there before any other role starts, so two runs started at once never
  join each other's job;
- a worker killed while writing leaves a temporary file for one of the run's outputs, which
  is removed once every process has ended (this run's workers' only).

Across hosts, start the same roles by hand, by ssh or MPI (docs/train.md).
"""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import DPNError
from ..lifeline import PROGRESS_ENV, Lifeline

#: Seconds the workers get to stop after SIGTERM before they are killed.
GRACE_S = 8.0
#: Default seconds without progress from any worker before the run counts as stalled.
STALL_S = 600.0
#: Seconds the scheduler may take to import MXNet and listen on its port.
START_S = 180.0
#: Ports tried for the scheduler before the run is refused.
PORT_TRIES = 5
#: Exit status of a run ended because a role stalled or ended early.
FAILED = 1

PROG = "dpn-train"


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


#: What the scheduler and the server run: follow the launcher, then MXNet's own role loop.
SERVICE = ("from dpn_gluon.lifeline import follow_launcher; follow_launcher(); import mxnet")


class _Job:
    """The roles of one run: (name, process), started in order."""

    def __init__(self, workers: int, lifeline: Lifeline, progress_fd: int):
        self.workers, self.lifeline, self.progress_fd = workers, lifeline, progress_fd
        self.roles: List[Tuple[str, subprocess.Popen]] = []
        self.port = 0
        self.received: List[int] = []         # signals that arrived: stop starting roles

    def start(self, name: str, cmd: List[str], role: str, extra_fds=()) -> subprocess.Popen:
        env = role_env(role, self.workers, self.port)
        env.update(self.lifeline.env())
        if extra_fds:
            env[PROGRESS_ENV] = str(extra_fds[0])
        proc = subprocess.Popen(cmd, env=env, pass_fds=self.lifeline.fds + tuple(extra_fds))
        self.roles.append((name, proc))
        return proc

    @property
    def services(self) -> List[Tuple[str, subprocess.Popen]]:
        return [r for r in self.roles if not r[0].startswith("worker")]

    @property
    def pool(self) -> List[Tuple[str, subprocess.Popen]]:
        return [r for r in self.roles if r[0].startswith("worker")]

    def start_scheduler(self) -> None:
        """A scheduler listening on a free port of its own (a port another process took
        between the choice and the bind is never joined: the scheduler exits and the next
        port is tried)."""
        for _ in range(PORT_TRIES):
            self.port = free_port()
            proc = self.start("scheduler", [sys.executable, "-c", SERVICE], "scheduler")
            if _listening(proc, self.port, START_S, lambda: bool(self.received)) \
                    or self.received:
                return
            self.roles.pop()
            _end(proc)
        raise DPNError("MXNet's scheduler did not start on a free port of 127.0.0.1 "
                       "(%d ports tried)" % PORT_TRIES)


def launch(worker_argv: List[str], workers: int, out: Path,
           worker_command: Optional[List[str]] = None, stall_s: float = STALL_S) -> int:
    """Run the job; returns the exit status (the first failing worker's, else 0).

    ``out`` is the run's ``--out PREFIX``. ``worker_command`` replaces ``dpn-train`` as the
    workers' program (tests)."""
    lifeline = Lifeline()
    progress_r, progress_w = os.pipe()
    job = _Job(workers, lifeline, progress_r)
    received = job.received

    def forward(signum, frame):
        received.append(signum)
        for _, p in job.pool:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        job.start_scheduler()
        if not received:
            job.start("server", [sys.executable, "-c", SERVICE], "server")
        cmd = (worker_command or [sys.executable, "-m", "dpn_gluon.train.cli"]) + worker_argv
        for rank in range(workers):
            if received:
                break
            job.start("worker %d" % rank, cmd, "worker", extra_fds=(progress_w,))
        os.close(progress_w)
        progress_w = -1
        status = _supervise(job, progress_r, stall_s, received)
        _wait([p for _, p in job.pool], GRACE_S)     # a worker blocked in a kvstore call
        status = status or next((p.returncode for _, p in job.pool if p.returncode), 0)
        _wait([p for _, p in job.services], 2.0)
        if received:
            return 128 + received[0]
        return status if status >= 0 else 128 - status
    finally:
        for _, p in job.roles:
            if p.poll() is None:
                p.kill()
        for _, p in job.roles:
            p.wait()
        for s, handler in old.items():
            signal.signal(s, handler)
        for fd in (progress_r, progress_w):
            if fd >= 0:
                os.close(fd)
        lifeline.close()
        _remove_temporaries(out, [p.pid for _, p in job.pool])


def _supervise(job: _Job, progress_fd: int, stall_s: float, received: List[int]) -> int:
    """Watch the roles until the workers end: 0, a failed worker's status, or FAILED after
    one line for a role that ended early or stalled (every worker then stopped)."""
    last = time.monotonic()
    seen: Dict[int, float] = {}
    while [p.poll() for _, p in job.pool].count(None) and not received:   # poll every one
        failed = [p.returncode for _, p in job.pool if p.returncode not in (None, 0)]
        if failed:
            _stop(job)
            return failed[0]
        # they end with status 0 once the workers have left the job: only a failure counts
        gone = [(name, p) for name, p in job.services if p.poll() not in (None, 0)]
        if gone:
            _say("the %s (pid %d) ended (%s) while the workers ran; the run ends, the last "
                 "complete checkpoint is kept" % (gone[0][0], gone[0][1].pid,
                                                  _how(gone[0][1].returncode)))
            _stop(job)
            return FAILED
        ready, _, _ = select.select([progress_fd], [], [], 0.2)
        now = time.monotonic()
        if ready:
            for line in os.read(progress_fd, 1 << 16).split():
                if line.isdigit():
                    seen[int(line)] = now
            last = now
        # before the first report the roles are importing MXNet and building the network
        if now - last > (stall_s if seen else max(stall_s, START_S)):
            name, proc, why = _stalled(job, seen)
            _say("%s (pid %d) made no progress for %g s (%s); the run ends, the last complete "
                 "checkpoint is kept" % (name, proc.pid, stall_s, why))
            for _, p in job.roles:               # a stopped process cannot stop itself
                if p.poll() is None:
                    p.kill()
            return FAILED
    return 0


def _stalled(job: _Job, seen: Dict[int, float]):
    """The role to blame: one stopped (SIGSTOP, a debugger), else the worker whose last
    progress is the oldest, else the first worker."""
    for name, proc in job.roles:
        if _state(proc.pid) in ("T", "t"):
            return name, proc, "stopped"
    alive = [(name, p) for name, p in job.pool if p.poll() is None] or job.pool
    name, proc = min(alive, key=lambda r: seen.get(r[1].pid, 0.0))
    return name, proc, "not stopped: a deadlock or a hung peer"


def _state(pid: int) -> str:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _how(returncode: int) -> str:
    if returncode is not None and returncode < 0:
        return "killed by %s" % signal.Signals(-returncode).name
    return "exit status %s" % returncode


def _say(message: str) -> None:
    sys.stderr.write("%s: error: %s\n" % (PROG, message))
    sys.stderr.flush()


def _stop(job: _Job) -> None:
    for _, p in job.pool:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)


def _listening(proc: subprocess.Popen, port: int, timeout: float, stop) -> bool:
    """Whether ``proc`` itself comes to listen on ``port`` (Linux: its own socket, by
    /proc; elsewhere: someone accepts there while it runs) before it ends, ``timeout`` or
    ``stop()``."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not stop():
        owned = _owns_listener(proc.pid, port)
        if owned or (owned is None and _accepts(port)):
            return proc.poll() is None
        time.sleep(0.1)
    return False


def _owns_listener(pid: int, port: int) -> Optional[bool]:
    """Whether process ``pid`` holds a TCP socket listening on ``port``; None without /proc."""
    inodes, readable = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            cells = row.split()
            if len(cells) > 9 and cells[3] == "0A" and int(cells[1].rsplit(":", 1)[1], 16) == port:
                inodes.add("socket:[%s]" % cells[9])
    if not readable:
        return None
    if not inodes:
        return False
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) in inodes:
                return True
        except OSError:
            continue
    return False


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


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
