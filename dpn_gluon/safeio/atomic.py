"""Atomic outputs: every output of a command lands complete, together with the others, or not at all.

The mechanism under :mod:`.outputs` (which decides *where* outputs may go). A
:class:`Transaction` stages each output as a temporary file or folder beside its final
path, named ``.NAME.<pid>.<random>.part`` (mkstemp's 8 random characters), fsyncs it, and
on :meth:`Transaction.commit` renames every staged output into place under a lock on each
parent folder, with SIGINT/SIGTERM/SIGHUP held back: a path that existed is first renamed
aside to ``.NAME.<pid>.<random>.old`` and is removed only when the whole command succeeded,
so a failure after the commit (the check, the report) rolls everything back. Folders the
transaction created for its outputs are removed again on failure.

Interruption: :func:`handling_signals` turns SIGINT/SIGTERM/SIGHUP into :class:`Interrupted`
(a BaseException), so the same cleanup runs as for any error; SIGKILL cannot be caught, and
its leftovers are removed by the next transaction writing into that folder
(:func:`sweep`: only names of our exact pattern, and only of writers no longer alive).
A writer holds an exclusive ``flock`` on each of its temps and set-aside ``.old`` paths
until it ends, so a writer whose pid means nothing here (another container's pid namespace,
another host on a shared folder) still counts as alive: its temps are not swept.

Failures to write (no space, quota, file too large, read-only, I/O error) are raised as
one-line :class:`DPNError`\\ s naming the output, so the command-line tools exit 2. Outputs get
the mode a plain ``open(path, "wb")`` (or ``mkdir``) would give them, or the mode of what they
replace. ``atomic_write`` / ``atomic_path`` / ``check_writable`` keep their earlier contracts
for library callers (checkpoint.py, onnx_export.py).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, List, Optional, Tuple, Union

from ..errors import DPNError


class OutputExists(DPNError, FileExistsError):
    """The output path exists and ``--force`` was not given."""


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived: unwind (running every cleanup), then exit 128 + signum."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__("interrupted by %s" % signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


#: Errors that mean "this output cannot be written", reported as DPNError; any other
#: exception inside a with-block passes through unchanged (after the cleanup).
_WRITE_ERRNOS = frozenset([errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO])

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: Our temporary names, and nothing else: ``.NAME.<pid>.<8 of [a-z0-9_]>.part`` or ``.old``
#: (NAME: the output it stands for; pid: its writer). The one rule: sweep() and dpn-train's
#: launcher both read names through it.
TEMP_NAME = re.compile(
    r"^\.(?P<target>.+)\.(?P<pid>[1-9][0-9]{0,9})\.[a-z0-9_]{8}\.(?:part|old)$", re.S)


def temp_owner(name: str) -> Optional[Tuple[str, int]]:
    """``(output name, writer pid)`` for one of our temporary names, else None."""
    m = TEMP_NAME.match(name)
    return (m.group("target"), int(m.group("pid"))) if m else None


def temp_prefix(final_name: str, pid: Optional[int] = None) -> str:
    """What every temporary of ``final_name`` by process ``pid`` (default: this one) starts
    with; ``mkstemp``'s 8 random characters and ``.part`` (or ``.old``) follow. The one
    writer of :data:`TEMP_NAME`."""
    return ".%s.%d." % (final_name, os.getpid() if pid is None else pid)


def _on_signal(signum, frame):
    for s in SIGNALS:       # one interruption is enough: let the cleanup run undisturbed
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def handling_signals(exiting: bool = False) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP raise :class:`Interrupted` (the main thread
    only; elsewhere a no-op); the previous handlers come back after it. With ``exiting``
    (the process ends after the block, all work done) they are ignored instead: a late
    signal must not turn a finished command into a traceback during the interpreter's exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = [(s, signal.signal(s, _on_signal)) for s in SIGNALS]
    try:
        yield
    finally:
        for s, handler in previous:
            signal.signal(s, signal.SIG_IGN if exiting else handler)


def worker_signals() -> None:
    """For a forked worker process (image decoding pools): the default SIGTERM/SIGHUP, and
    SIGINT ignored. The parent's handlers raise :class:`Interrupted` to run the parent's
    cleanup; in a worker that would unwind at any point, a queue's lock held (and the pool's
    terminate() then waits forever). Ctrl-C goes to the parent, which stops the pool. A
    pool's process also dies with its parent, whatever kills that
    (:func:`dpn_gluon.lifeline.follow_pool_parent`; a no-op when called in the parent)."""
    from ..lifeline import follow_pool_parent
    follow_pool_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back (they arrive after the block): a commit or a rollback
    is never left half done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _locked(folders) -> Iterator[None]:
    """An exclusive flock on each folder (sorted, so two writers cannot deadlock): commits
    into one folder happen one after the other. Creates no file."""
    fds = []
    try:
        for folder in sorted({os.path.abspath(f) for f in folders}):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True           # it exists (EPERM: someone else's)
    return True


def _claim(path: Union[str, Path]) -> Optional[int]:
    """A descriptor holding an exclusive flock on ``path`` (our temp, our ``.old``), or None
    where the file system has no such locks (best effort: the pid still names the writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _held(path: Union[str, Path]) -> bool:
    """Whether a live writer anywhere holds ``path``'s flock (see :func:`_claim`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        return e.errno in (errno.EACCES, errno.EPERM)       # not ours to judge: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def sweep(folder: Union[str, Path],
          only: Optional[Callable[[str, int], bool]] = None) -> List[str]:
    """Remove the temporary files and ``.old`` folders of writers that are no longer alive
    (a SIGKILL, a power cut) from ``folder``; returns their names. Only names matching
    :data:`TEMP_NAME` whose pid is not a running process and whose flock no writer holds
    are touched; with ``only``, just those for which ``only(output name, writer pid)`` holds
    (dpn-train's launcher: its own workers' temporaries of its run's files)."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        owner = temp_owner(name)
        path = os.path.join(folder, name)
        if not owner or (only is not None and not only(*owner)) or _alive(owner[1]) \
                or _held(path):
            continue
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(name)
    return removed


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


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _mode_for(path: Path, directory: bool = False) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return (0o777 if directory else 0o666) & ~_umask()


def cannot_write(path: Path, e: OSError) -> DPNError:
    return DPNError("%s: cannot write: %s" % (path, e.strerror or e))


def _remove(path: Union[str, Path]) -> None:
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def _fsync_folder(folder: Union[str, Path]) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _same_inode(path: Union[str, Path], ident: Tuple[int, int]) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ident


class Transaction:
    """Stage outputs, then :meth:`commit` them all; on leaving the ``with`` block by an
    exception everything is undone (temps removed, replaced outputs restored, created folders
    removed), otherwise the replaced outputs are deleted."""

    def __init__(self, verify: Optional[Callable[[Path], None]] = None):
        self._verify = verify            # re-checks a final path under the lock, before replacing
        self._staged: List[Tuple[Path, Path, bool]] = []        # (temp, final, is folder)
        self._placed: List[Tuple[Path, Optional[Path], Tuple[int, int]]] = []  # final, aside, ours
        self._created: List[Path] = []
        self._swept = set()
        self._claims = {}                # path -> fd holding its flock: our temps and .old paths

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, kind, exc, tb):
        if kind is None:
            self.finish()
        else:
            self.rollback()
        return False

    # -- staging ---------------------------------------------------------------------------

    def make_folders(self, folder: Union[str, Path]) -> None:
        """Create ``folder`` and its missing parents; they are removed again on failure."""
        missing = []
        folder = Path(os.path.abspath(folder))
        while not os.path.lexists(folder):
            missing.append(folder)
            folder = folder.parent
        for f in reversed(missing):
            try:
                os.mkdir(f)
            except FileExistsError:
                continue
            except OSError as e:
                raise cannot_write(f, e) from e
            self._created.append(f)

    def _temp(self, final: Path, directory: bool) -> Path:
        folder = final.parent
        if folder not in self._swept:
            self._swept.add(folder)
            sweep(folder)
        prefix = temp_prefix(final.name)
        try:
            if directory:
                tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".part", dir=folder))
            else:
                fd, name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=folder)
                os.close(fd)
                tmp = Path(name)
        except OSError as e:
            raise cannot_write(final, e) from e
        self._staged.append((tmp, final, directory))
        self._hold(tmp)
        return tmp

    def _hold(self, path: Path) -> None:
        fd = _claim(path)
        if fd is not None:
            self._claims[str(path)] = fd

    def _drop(self, path: Path) -> None:
        """Let go of a temp once it is in place: a placed folder is locked by later commits
        into it (:func:`_locked`), which our own flock on its inode would block."""
        fd = self._claims.pop(str(path), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _release(self) -> None:
        for path in list(self._claims):
            self._drop(path)

    @contextlib.contextmanager
    def file(self, final: Union[str, Path]) -> Iterator[BinaryIO]:
        """An open temporary file for ``final``: write it inside the block."""
        final = Path(final)
        tmp = self._temp(final, directory=False)
        ours = False                                     # True once only our own calls can fail
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as f:
                yield f
                ours = True
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if ours or e.errno in _WRITE_ERRNOS:
                raise cannot_write(final, e) from e
            raise

    @contextlib.contextmanager
    def path(self, final: Union[str, Path], directory: bool = False) -> Iterator[Path]:
        """A temporary path for ``final`` (an empty folder with ``directory=True``), for
        writers that take a file name or fill a folder."""
        final = Path(final)
        tmp = self._temp(final, directory)
        try:
            yield tmp
            for f in (sorted(tmp.iterdir()) if directory else [tmp]):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if directory:
                _fsync_folder(tmp)
        except OSError as e:
            if e.errno in _WRITE_ERRNOS or e.filename is None:
                raise cannot_write(final, e) from e
            raise

    # -- commit, rollback, finish ------------------------------------------------------------

    def commit(self) -> None:
        """Rename every staged output into place (all or none; see the module docstring)."""
        staged, self._staged = self._staged, []
        current = None
        try:
            with _signals_held(), _locked({final.parent for _, final, _ in staged}):
                for current in staged:
                    tmp, final, directory = current
                    if self._verify:
                        self._verify(final)
                    self._place(tmp, final, directory)
                for folder in {final.parent for _, final, _ in staged}:
                    _fsync_folder(folder)
        except BaseException as e:
            placed = {final for final, _, _ in self._placed}
            self._staged = [s for s in staged if s[1] not in placed] + self._staged
            if isinstance(e, OSError):
                raise cannot_write(current[1] if current else staged[0][1], e) from e
            raise

    def _place(self, tmp: Path, final: Path, directory: bool) -> None:
        if directory:
            os.chmod(tmp, _mode_for(final, True))
            for f in tmp.iterdir():
                os.chmod(f, _mode_for(final / f.name))
        else:
            os.chmod(tmp, _mode_for(final))
        aside = None
        moved_cwd = directory and _is_cwd(final)
        if os.path.lexists(final):
            aside = final.with_name("%s%s.old" % (
                temp_prefix(final.name), Path(tmp).name.rsplit(".", 2)[-2]))
            os.rename(final, aside)
            self._hold(aside)
        st = os.lstat(tmp)
        try:
            os.rename(tmp, final)
        except BaseException:
            if aside is not None:
                os.rename(aside, final)
            raise
        self._drop(tmp)
        if moved_cwd:                       # -o . : the process stays in the output folder
            os.chdir(final)
        self._placed.append((final, aside, (st.st_dev, st.st_ino)))

    def rollback(self) -> None:
        """Undo everything: remove temps, put replaced outputs back, remove created folders."""
        with _signals_held():
            placed, self._placed = self._placed, []
            with contextlib.ExitStack() as stack:
                with contextlib.suppress(OSError):
                    stack.enter_context(_locked({f.parent for f, _, _ in placed}))
                for final, aside, ours in reversed(placed):
                    self._unplace(final, aside, ours)
            for tmp, _, _ in self._staged:
                _remove(tmp)
            self._staged = []
            for folder in reversed(self._created):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            self._created = []
            self._release()

    @staticmethod
    def _unplace(final: Path, aside: Optional[Path], ours: Tuple[int, int]) -> None:
        with contextlib.suppress(OSError):
            if not _same_inode(final, ours):      # another writer replaced it since: keep theirs
                if aside is not None:
                    _remove(aside)
                return
            was_cwd = _is_cwd(final)
            _remove(final)
            if aside is not None:
                os.rename(aside, final)
                if was_cwd:
                    os.chdir(final)

    def finish(self) -> None:
        """Success: delete what the outputs replaced, and any temp left unstaged."""
        with _signals_held():
            for tmp, _, _ in self._staged:
                _remove(tmp)
            for _, aside, _ in self._placed:
                if aside is not None:
                    _remove(aside)
            self._staged, self._placed, self._created = [], [], []
            self._release()


def _is_cwd(path: Path) -> bool:
    try:
        return os.path.samefile(os.getcwd(), path)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_write(path: Union[str, Path], force: bool = False) -> Iterator[BinaryIO]:
    """``with atomic_write(p) as f: f.write(...)``: p appears complete, or not at all."""
    path = check_writable(path, force)
    with Transaction() as tx:
        with tx.file(path) as f:
            yield f
        tx.commit()


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], force: bool = False,
                directory: bool = False) -> Iterator[Path]:
    """Like :func:`atomic_write`, for writers that take a file name or fill a folder: yields
    a temporary path (an empty folder with ``directory=True``) that replaces ``path``."""
    path = check_writable(path, force, directory)
    with Transaction() as tx:
        with tx.path(path, directory) as tmp:
            yield tmp
        tx.commit()
