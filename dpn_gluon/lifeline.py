"""A run's processes live and die together: every child process follows its parent.

Two lines of defence, both armed in the child by :func:`follow_parent`:

1. Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the child when its parent
   ends, however it ends (SIGKILL included); then a check that the parent is still the one
   that started it, since it may have died before the ``prctl`` (the child then exits).
2. Everywhere: a daemon thread that ends the process (``os._exit``) when the parent's pipe
   (:class:`Lifeline`; only the parent holds its write end, so the kernel closes it when the
   parent dies) reaches end-of-file, or when the process is re-parented (its parent pid
   changes). This is how Ray and multiprocessing notice a dead parent.

dpn-train's launcher gives its roles (the DMLC scheduler, server and workers) the pipe's read
end and its own pid in ``DPN_LIFELINE`` (:func:`follow_launcher`); the image decoding
processes of a loader pool follow the process that forked them (:func:`follow_pool_parent`,
called from their initializer). The launcher's progress pipe (:func:`report_progress`) lets
it tell a stalled role from a slow one.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
from typing import Dict, Optional, Tuple

ENV = "DPN_LIFELINE"
PROGRESS_ENV = "DPN_PROGRESS_FD"
#: The exit status of a child whose parent is gone: what a SIGKILL from the kernel reads as.
ORPHANED = 128 + signal.SIGKILL
#: How often the watcher looks at its parent pid where there is no pipe.
POLL_S = 1.0
_PR_SET_PDEATHSIG = 1


class Lifeline:
    """The parent's side: a pipe whose write end only this process holds (``os.pipe`` makes
    both ends close-on-exec; a child gets the read end through ``pass_fds``)."""

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()

    def env(self) -> Dict[str, str]:
        return {ENV: "%d:%d" % (self.read_fd, os.getpid())}

    @property
    def fds(self) -> Tuple[int]:
        return (self.read_fd,)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _die_with_parent() -> None:
    """Linux's PR_SET_PDEATHSIG; elsewhere (or without libc) the watcher thread alone."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def follow_parent(parent: int, fd: Optional[int] = None) -> None:
    """Arm both lines of defence in this (child) process for its parent ``parent``; ``fd``:
    the read end of the parent's :class:`Lifeline`, if it has one."""
    _die_with_parent()
    if os.getppid() != parent:           # it died before the prctl: nobody would kill us
        os._exit(ORPHANED)
    threading.Thread(target=_watch, args=(parent, fd), name="lifeline", daemon=True).start()


def _watch(parent: int, fd: Optional[int]) -> None:
    while True:
        if fd is not None:
            try:
                ready, _, _ = select.select([fd], [], [], POLL_S)
                if ready and not os.read(fd, 1):         # end of file: the writer is gone
                    os._exit(ORPHANED)
            except OSError:
                fd = None
        else:
            threading.Event().wait(POLL_S)
        if os.getppid() != parent:
            os._exit(ORPHANED)


def follow_launcher() -> None:
    """In a role started by dpn-train's launcher: follow it (a no-op elsewhere). The variable
    is removed, so that this process's own children follow this process, not the launcher."""
    value = os.environ.pop(ENV, "")
    fd, _, parent = value.partition(":")
    if fd.isdigit() and parent.isdigit():
        follow_parent(int(parent), int(fd))


def follow_pool_parent() -> None:
    """In a multiprocessing pool's worker: follow the process that started it (a no-op in a
    process that multiprocessing did not start)."""
    import multiprocessing
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid:
        follow_parent(parent.pid)


_progress_fd: Optional[int] = None


def report_progress() -> None:
    """Tell the launcher (if any) that this worker made progress: one line with its pid on
    the launcher's progress pipe, never blocking (a full pipe just drops the line)."""
    global _progress_fd
    if _progress_fd is None:
        value = os.environ.pop(PROGRESS_ENV, "")
        if not value.isdigit():
            _progress_fd = -1
            return
        _progress_fd = int(value)
        os.set_blocking(_progress_fd, False)
    if _progress_fd < 0:
        return
    try:
        os.write(_progress_fd, b"%d\n" % os.getpid())
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        _progress_fd = -1
