"""Reading user files safely: only regular files, never more than a bound.

A FIFO, a device (``/dev/zero``) or a socket named as a checkpoint, an image or a data-set
entry would block forever or read without end; every reader opens its input through
:func:`open_regular`, which refuses them before the first read.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Union

from .errors import DPNError

PathLike = Union[str, Path]


class NotRegular(DPNError):
    """The path names a FIFO, device, socket or other non-regular file."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def require_regular(path: PathLike, what: str = "file") -> os.stat_result:
    """stat ``path`` (following links) and refuse anything but a regular file."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DPNError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular("%s: %s, not a %s" % (path, _kind(st.st_mode), what))
    return st


def open_regular(path: PathLike, what: str = "file") -> BinaryIO:
    """Open ``path`` for reading without blocking on a FIFO, and refuse it unless it is a
    regular file (checked on the open descriptor, so a swap after the check cannot slip a
    device in)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise DPNError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular("%s: %s, not a %s" % (path, _kind(st.st_mode), what))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: PathLike, limit: int, what: str = "file") -> bytes:
    """The whole of a regular file no larger than ``limit`` bytes."""
    with open_regular(path, what) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DPNError("%s: larger than the %d bytes a %s may hold" % (path, limit, what))
    return data
