"""Atomic output: write to a temporary file in the target folder, fsync, then rename.

On any failure (an exception, a full disk, an interrupt) the temporary file is removed and
the previous file at the target path, if any, is left intact. Existing outputs are refused
unless ``force`` is given.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Union

from ..errors import DPNError


class OutputExists(DPNError, FileExistsError):
    """The output path exists and ``--force`` was not given."""


def check_writable(path: Union[str, Path], force: bool = False) -> Path:
    """Refuse an existing output (without ``force``) or a missing/unwritable folder."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExists("%s exists (use --force to overwrite)" % path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise DPNError("output folder %s does not exist" % folder)
    if not os.access(folder, os.W_OK):
        raise DPNError("output folder %s is not writable" % folder)
    return path


def _default_mode(path, mode: int) -> None:
    """mkstemp/mkdtemp create 0600/0700; give outputs the mode open() would (umask applied)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def atomic_write(path: Union[str, Path], force: bool = False) -> Iterator[BinaryIO]:
    """``with atomic_write(p) as f: f.write(...)``: p appears complete, or not at all."""
    path = check_writable(path, force)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % path.name, suffix=".part", dir=path.parent or ".")
    _default_mode(tmp, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):   # make the rename itself durable
        dfd = os.open(path.parent or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], force: bool = False,
                directory: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_write`, for writers that take a file name or fill a folder.

    Yields a temporary path beside ``path`` (an empty folder with ``directory=True``, as a
    timm folder needs); on success it replaces ``path`` (an existing one only with ``force``,
    moved aside first and removed after, so a folder is swapped in one rename).
    """
    path = check_writable(path, force)
    parent = path.parent or Path(".")
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=".%s." % path.name, suffix=".part", dir=parent))
        _default_mode(tmp, 0o777)
    else:
        fd, name = tempfile.mkstemp(prefix=".%s." % path.name, suffix=".part", dir=parent)
        os.close(fd)
        tmp = Path(name)
        _default_mode(tmp, 0o666)
    try:
        yield tmp
        for f in (sorted(tmp.iterdir()) if directory else [tmp]):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if directory and path.exists():
            old = Path(tempfile.mkdtemp(prefix=".%s." % path.name, suffix=".old", dir=parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
