"""Child processes die with their parent (dpn_gluon.lifeline), each line of defence alone.

References: the kernel's /proc for which processes are alive, and exit statuses seen by
the real parent (the test). Linux only: the process states come from /proc.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpn_gluon.lifeline import ORPHANED

ROOT = Path(__file__).resolve().parents[1]
if not Path("/proc/self/stat").exists():
    pytest.skip("process states are read from /proc", allow_module_level=True)


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def gone_within(pids, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def test_the_pipe_alone_ends_a_child():
    """The portable line without PR_SET_PDEATHSIG: the parent lets go of the pipe's write
    end (as the kernel does when the parent dies) and the child ends, ORPHANED."""
    r, w = os.pipe()
    code = ("import sys, threading; from dpn_gluon import lifeline\n"
            "lifeline._watch(int(sys.argv[1]), int(sys.argv[2]))\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(os.getpid()), str(r)],
                             env=_env(), pass_fds=(r,))
    os.close(r)
    time.sleep(0.5)
    assert child.poll() is None                 # it waits while the pipe is open
    os.close(w)
    assert child.wait(timeout=30) == ORPHANED


def test_a_child_of_a_dead_parent_exits_at_once():
    """The race PR_SET_PDEATHSIG leaves: the parent died before the child armed it."""
    code = ("import os; from dpn_gluon.lifeline import follow_parent\n"
            "follow_parent(os.getppid() + 1000000)\n"   # not its parent: as if re-parented
            "import time; time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], env=_env())
    assert child.wait(timeout=30) == ORPHANED


def test_pool_processes_die_with_a_killed_parent():
    """A decoding pool (the project's worker initializer) busy with work when its parent is
    killed by SIGKILL: no pool process is left (an idle one sees its queue's end-of-file
    by itself; a busy one would finish its task, or block for ever on a full result pipe)."""
    code = ("import multiprocessing as mp, sys, time\n"
            "from dpn_gluon.safeio.atomic import worker_signals\n"
            "pool = mp.get_context('fork').Pool(2, initializer=worker_signals)\n"
            "busy = pool.map_async(time.sleep, [120, 120], chunksize=1)\n"
            "print(' '.join(str(p.pid) for p in pool._pool), flush=True)\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                              text=True)
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    time.sleep(0.5)                                # the initializers have run
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    try:
        assert gone_within(pids, 15.0), [p for p in pids if alive(p)]
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)
