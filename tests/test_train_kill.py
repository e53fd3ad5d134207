"""A run's processes live and die together: the kill matrix of dpn-train.

Each case starts a real run (tiny data, dpn68 at 32x32, a few steps per epoch), waits until
it is mid-epoch (or still starting its roles), snapshots the whole process tree from /proc
(launcher, scheduler, server, workers, their decoding processes), delivers a signal to one
process, and then requires that within 15 s no process of the snapshot is alive (a zombie
waiting for its reaper counts as dead), and that ``--resume`` continues from the last
complete epoch of PREFIX-train.json. References: the kernel's /proc (not the code under
test) for the processes, and the run's own record for the epoch it says is complete.

The matrix's core runs by default; the remaining cells are marked ``slow`` (-m slow).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_patterns import write_folder

from dpn_gluon import write_seeded_checkpoint

pytest.importorskip("mxnet")
if not Path("/proc/self/stat").exists():
    pytest.skip("the process tree is read from /proc", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
#: The issue's bound: after the signal, no process of the run alive within this many seconds.
DEAD_WITHIN_S = 15.0
QUICK = ["--size", "32", "--batch-size", "8", "--epochs", "60", "--max-steps", "3", "-q"]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def start(args):
    return subprocess.Popen([sys.executable, "-m", "dpn_gluon.train.cli"] + [str(a) for a in args],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stat(pid: int):
    """(state, ppid) of a process from /proc, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def tree(root: int):
    """Every live descendant of ``root`` (by /proc's parent pids), root first."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[0] not in ("Z", "X"):
                parents[int(name)] = st[1]
    found, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier and p not in found]
        found += frontier
    return found


def cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for(condition, timeout: float, proc=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(0.1)
    return False


def epochs_done(prefix: Path) -> int:
    try:
        return json.loads(Path(str(prefix) + "-train.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("patterns") / "train", 12, seed=0)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    return write_seeded_checkpoint(tmp_path_factory.mktemp("seeded") / "dpn68", "dpn68", seed=3)


def writing(prefix: Path):
    """The pid of the process writing one of the run's files now (its temporary, by the one
    rule for their names), or None."""
    from dpn_gluon.safeio.atomic import temp_owner
    from dpn_gluon.train.checkpoints import Run
    run = Run(prefix)
    for name in os.listdir(prefix.parent):
        owner = temp_owner(name)
        if owner and run.owns(owner[0]) and name.endswith(".part"):
            return owner[1]
    return None


def workers_of(launcher: int):
    """The launcher's own worker processes (not their decoding processes, forked copies)."""
    return [p for p in tree(launcher)[1:] if "dpn_gluon.train.cli" in cmdline(p)
            and (_stat(p) or ("", 0))[1] == launcher]


def kill_and_check(data, seeded, tmp_path, workers: int, target: str, signum: int,
                   phase: str = "mid-epoch"):
    """One cell of the matrix (see the module docstring)."""
    prefix = tmp_path / "run" / "k"
    prefix.parent.mkdir()
    args = ["--from", seeded, "--data", data, "--out", prefix] + QUICK
    args += ["--workers", str(workers), "--threads", "1"] if workers else ["--threads", "2"]
    proc = start(args)
    try:
        writer = None
        if phase == "start-up":        # some roles started, none has finished an epoch
            assert wait_for(lambda: len(tree(proc.pid)) >= 3, 120, proc), proc.communicate()
        elif phase == "mid-checkpoint":    # after epoch 1, epoch 2's files half written
            assert wait_for(lambda: epochs_done(prefix) >= 1, 300, proc), proc.communicate()
            deadline = time.monotonic() + 300
            while writer is None and time.monotonic() < deadline and proc.poll() is None:
                writer = writing(prefix)
                time.sleep(0.002)
            assert writer is not None, proc.communicate()
        else:                          # an epoch complete, the next under way
            assert wait_for(lambda: epochs_done(prefix) >= 1, 300, proc), proc.communicate()
            time.sleep(0.5)
        snapshot = tree(proc.pid)
        if workers:
            roles = workers_of(proc.pid)
            if phase != "start-up":
                assert len(roles) == workers and len(snapshot) >= 2 + 2 * workers, snapshot
        else:
            roles = [proc.pid]
            assert len(snapshot) >= 3, snapshot           # the trainer and its 2 loaders
        victim = proc.pid if target == "launcher" else writer or roles[-1]
        os.kill(victim, signum)
        gone = wait_for(lambda: not any(alive(p) for p in snapshot if p != proc.pid),
                        DEAD_WITHIN_S)
        left = [(p, cmdline(p)[:100]) for p in snapshot if p != proc.pid and alive(p)]
    finally:
        for p in tree(proc.pid)[1:]:            # never leave this test's processes behind
            os.kill(p, signal.SIGKILL) if alive(p) else None
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert gone, (left, err)
    assert proc.returncode != 0, err
    if phase == "start-up":
        return
    done = epochs_done(prefix)
    assert done >= 1
    resumed = subprocess.run(
        [sys.executable, "-m", "dpn_gluon.train.cli", "--from", str(seeded), "--data", str(data),
         "--out", str(prefix), "--resume", "--json", "--threads", "0"]
        + [a if a != "60" else str(done + 1) for a in QUICK],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)
    assert record["epochs"] == done + 1 and epochs_done(prefix) == done + 1


CORE = [(2, "launcher", signal.SIGKILL), (2, "worker", signal.SIGKILL)]
REST = [(2, "launcher", signal.SIGTERM), (2, "worker", signal.SIGTERM),
        (0, "launcher", signal.SIGKILL), (0, "launcher", signal.SIGTERM),
        (2, "launcher", signal.SIGHUP), (2, "launcher", signal.SIGINT)]


@pytest.mark.parametrize("workers,target,signum", CORE)
def test_kill_matrix(data, seeded, tmp_path, workers, target, signum):
    kill_and_check(data, seeded, tmp_path, workers, target, signum)


@pytest.mark.slow
@pytest.mark.parametrize("workers,target,signum", REST)
def test_kill_matrix_rest(data, seeded, tmp_path, workers, target, signum):
    kill_and_check(data, seeded, tmp_path, workers, target, signum)


@pytest.mark.slow
@pytest.mark.parametrize("workers,target,signum", [
    (2, "launcher", signal.SIGKILL), (2, "worker", signal.SIGKILL),
    (2, "worker", signal.SIGTERM), (0, "launcher", signal.SIGKILL)])
def test_killed_while_writing_a_checkpoint(data, seeded, tmp_path, workers, target, signum):
    """The victim (the writing worker itself where the target is a worker) is signalled
    while one of epoch 2's files is a temporary: epoch 1 stays the last complete one."""
    kill_and_check(data, seeded, tmp_path, workers, target, signum, phase="mid-checkpoint")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_launcher_killed_while_starting_its_roles(data, seeded, tmp_path, signum):
    kill_and_check(data, seeded, tmp_path, 2, "launcher", signum, phase="start-up")


def test_a_stopped_worker_ends_the_run_in_one_line(data, seeded, tmp_path):
    """SIGSTOP of a worker: the others block in the kvstore, no worker makes progress, and
    after --stall-timeout the launcher names the stopped worker in one line, exit 1, and
    no process of the run is left (the stopped one included)."""
    prefix = tmp_path / "s"
    proc = start(["--from", seeded, "--data", data, "--out", prefix, "--workers", "2",
                  "--threads", "0", "--stall-timeout", "10"] + QUICK)
    try:
        assert wait_for(lambda: epochs_done(prefix) >= 1, 300, proc), proc.communicate()
        snapshot = tree(proc.pid)
        victim = workers_of(proc.pid)[-1]
        os.kill(victim, signal.SIGSTOP)
        _, err = proc.communicate(timeout=120)
    finally:
        for p in tree(proc.pid)[1:]:
            os.kill(p, signal.SIGKILL) if alive(p) else None
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, err
    assert "worker" in lines[0] and "pid %d" % victim in lines[0] and "stopped" in lines[0]
    assert wait_for(lambda: not any(alive(p) for p in snapshot if p != proc.pid), DEAD_WITHIN_S)
    assert epochs_done(prefix) >= 1                    # the last complete checkpoint kept


def test_two_runs_at_once_never_join(data, seeded, tmp_path):
    """Two launchers started together: each ends with its own two workers' result (a worker
    that joined the other's scheduler would leave one job waiting for ever, or two)."""
    runs = [start(["--from", seeded, "--data", data, "--out", tmp_path / name, "--workers", "2",
                   "--threads", "0", "--json", "--size", "32", "--batch-size", "8",
                   "--epochs", "1", "--max-steps", "2", "-q"]) for name in ("a", "b")]
    for proc in runs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert json.loads(out)["workers"] == 2
