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


def check_writable(path: Union[str, Path], force: bool = False) -> Path:
    """Refuse an existing output (without ``force``), a directory, a missing/unwritable folder."""
    path = Path(path)
    if path.is_dir():
        raise DPNError("%s is a directory, not an output file" % path)
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
