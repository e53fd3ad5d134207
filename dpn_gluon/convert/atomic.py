"""Atomic output: write to a temporary file in the target folder, fsync, then rename.

On any failure (an exception, a full disk, a file-size limit, an interrupt) the temporary
file is removed and the previous file at the target path, if any, is left intact. Existing
outputs are refused unless ``force`` is given. Failures to write (no space, read-only
folder, quota, file too large) are raised as one-line :class:`DPNError`s naming the output,
so the command-line tools can report them and exit 2. The output gets the mode a plain
``open(path, "wb")`` would give it (the temporary file is created 0600), or the mode of the
file it replaces.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator, Union

from ..errors import DPNError


class OutputExists(DPNError, FileExistsError):
    """The output path exists and ``--force`` was not given."""


#: Errors inside the with-block that mean "this output cannot be written", reported as
#: DPNError; any other exception passes through unchanged (after the cleanup).
_WRITE_ERRNOS = frozenset([errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS])


def check_writable(path: Union[str, Path], force: bool = False, directory: bool = False) -> Path:
    """Refuse an existing output (without ``force``), an output of the wrong kind (a folder
    where a file goes, or with ``directory=True`` a file where a folder goes), and a missing
    or unwritable parent folder."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        raise DPNError("%s is a %s, not an output %s" % (
            path, "directory" if path.is_dir() else "file", "folder" if directory else "file"))
    if path.exists() and not force:
        raise OutputExists("%s exists (use --force to overwrite)" % path)
    folder = path.parent
    if not folder.is_dir():
        raise DPNError("output folder %s does not exist" % folder)
    if not os.access(folder, os.W_OK):
        raise DPNError("output folder %s is not writable" % folder)
    return path


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _cannot_write(path: Path, e: OSError) -> DPNError:
    return DPNError("%s: cannot write: %s" % (path, e.strerror or e))


@contextlib.contextmanager
def atomic_write(path: Union[str, Path], force: bool = False) -> Iterator[BinaryIO]:
    """``with atomic_write(p) as f: f.write(...)``: p appears complete, or not at all."""
    path = check_writable(path, force)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".%s." % path.name, suffix=".part", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from e
    ours = False                              # True once only our own calls can fail
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                ours = True
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _mode_for(path))
            os.replace(tmp, path)
        except OSError as e:
            if ours or e.errno in _WRITE_ERRNOS:
                raise _cannot_write(path, e) from e
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):   # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def check_writable_folder(path: Union[str, Path], force: bool = False) -> Path:
    """:func:`check_writable` for an output that is a folder (a timm folder)."""
    return check_writable(path, force, directory=True)


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], force: bool = False,
                directory: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_write`, for writers that take a file name or fill a folder.

    Yields a temporary path beside ``path`` (an empty folder with ``directory=True``, as a
    timm folder needs); on success it replaces ``path`` (an existing one only with ``force``;
    an existing folder is moved aside first and removed after, so the new one appears in
    one rename).
    """
    path = check_writable(path, force, directory)
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=".%s." % path.name, suffix=".part", dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=".%s." % path.name, suffix=".part", dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        raise _cannot_write(path, e) from e
    try:
        yield tmp
        try:
            for f in (sorted(tmp.iterdir()) if directory else [tmp]):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                os.chmod(f, _mode_for(path / f.name if directory else path))
            if directory:
                os.chmod(tmp, _mode_for(path) | 0o111 & ~_umask())
                if path.exists():
                    old = Path(tempfile.mkdtemp(prefix=".%s." % path.name, suffix=".old",
                                                dir=path.parent))
                    os.replace(path, old / "previous")
                    os.replace(tmp, path)
                    shutil.rmtree(old, ignore_errors=True)
                    return
            os.replace(tmp, path)
        except OSError as e:
            raise _cannot_write(path, e) from e
    except BaseException:
        if directory:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
