"""Atomic output: complete or absent, the previous file intact, on every kind of failure.

Failures are real where the machine allows it (a file-size limit, a 64 KiB tmpfs that
fills up, a read-only mount, an immutable folder) and injected otherwise (ENOSPC from
write and fsync, EROFS from creating the temporary file). CI runs as root, for whom chmod
does not stop writes, so the read-only folder is made with a read-only mount or
``chattr +i``, and each such test first proves that a plain write there really fails.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import immutable

from dpn_gluon.errors import DPNError
from dpn_gluon.safeio import atomic
from dpn_gluon.safeio.atomic import OutputExists, atomic_write, check_writable

OLD = b"previous output\n" * 64
ROOT = Path(__file__).resolve().parent.parent


def _leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".part"))


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "out.params"
    path.write_bytes(OLD)
    return path


def test_writes_complete_file_with_a_normal_mode(tmp_path):
    path = tmp_path / "new.bin"
    with atomic_write(path) as f:
        f.write(b"abc" * 1000)
        assert not path.exists() and len(_leftovers(tmp_path)) == 1   # only the temp so far
    assert path.read_bytes() == b"abc" * 1000 and _leftovers(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask                # not mkstemp's 0600


def test_force_replaces_and_keeps_the_mode(target):
    target.chmod(0o640)
    with atomic_write(target, force=True) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640


def test_existing_output_refused_without_force(target):
    with pytest.raises(OutputExists, match="out.params exists .*--force"):
        with atomic_write(target) as f:
            f.write(b"x")
    assert target.read_bytes() == OLD and _leftovers(target.parent) == []


@pytest.mark.parametrize("kind", ["directory", "missing-folder"])
def test_bad_output_paths(tmp_path, kind):
    path = tmp_path if kind == "directory" else tmp_path / "nope" / "out.bin"
    with pytest.raises(DPNError, match="is a directory|does not exist"):
        check_writable(path, force=True)


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt, SystemExit])
def test_exception_inside_block_leaves_nothing(target, exc):
    with pytest.raises(exc):
        with atomic_write(target, force=True) as f:
            f.write(b"half a file" * 1000)
            raise exc()
    assert target.read_bytes() == OLD and _leftovers(target.parent) == []


class _FullDisk:
    """A file object whose writes fail with ENOSPC after ``room`` bytes, like a full disk."""

    def __init__(self, f, room):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def test_injected_enospc_from_write(target, monkeypatch):
    real = os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda *a, **k: _FullDisk(real(*a, **k), 100))
    with pytest.raises(DPNError, match="out.params: cannot write: No space left on device"):
        with atomic_write(target, force=True) as f:
            f.write(b"x" * 50)
            f.write(b"y" * 100)
    assert target.read_bytes() == OLD and _leftovers(target.parent) == []


def test_injected_enospc_from_fsync(target, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(DPNError, match="cannot write: No space left on device"):
        with atomic_write(target, force=True) as f:
            f.write(b"new content")
    assert target.read_bytes() == OLD and _leftovers(target.parent) == []


def test_injected_read_only_folder(target, monkeypatch):
    """Covers the read-only folder where no real one can be made: creating the temp fails."""
    def mkstemp(**kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(atomic.os, "access", lambda *a: True)
    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    with pytest.raises(DPNError, match="out.params: cannot write: Read-only file system"):
        with atomic_write(target, force=True) as f:
            f.write(b"x")
    assert target.read_bytes() == OLD


def test_other_errors_inside_block_pass_through(target):
    with pytest.raises(FileNotFoundError):
        with atomic_write(target, force=True):
            open(target.parent / "no" / "such", "rb")
    assert target.read_bytes() == OLD and _leftovers(target.parent) == []


# A child process writes 1 MiB over OLD with atomic_write and reports what it saw as JSON.
CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    from pathlib import Path
    from dpn_gluon.safeio.atomic import atomic_write
    target = Path(sys.argv[1])
    if sys.argv[2] == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
    try:
        with atomic_write(target, force=True) as f:
            for _ in range(16):
                f.write(os.urandom(1 << 16))
        outcome = "written"
    except Exception as e:
        outcome = "%s: %s" % (type(e).__name__, e)
    print(json.dumps({"outcome": outcome, "files": sorted(os.listdir(target.parent)),
                      "content": target.read_bytes().decode()}))
""")


def _child(target, mode, wrap=()):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([*wrap, sys.executable, "-c", CHILD, str(target), mode], env=env,
                         capture_output=True, text=True, timeout=60)
    if out.returncode:
        return None, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_real_file_size_limit(target):
    result, err = _child(target, "fsize")
    assert result is not None, err
    assert result["outcome"] == "DPNError: %s: cannot write: File too large" % target
    assert result["files"] == ["out.params"] and result["content"] == OLD.decode()


def _unshare_mount(tmp_path):
    """tmp_path/fs if a private mount namespace can mount a 64 KiB tmpfs there, else None."""
    if shutil.which("unshare") is None:
        return None
    fs = tmp_path / "fs"
    fs.mkdir()
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k none %s" % fs],
                           capture_output=True, timeout=30)
    return fs if probe.returncode == 0 else None


def _in_namespace(fs, setup, mode):
    """Run CHILD on fs/out.params inside a fresh mount namespace after ``setup``."""
    script = ("mount -t tmpfs -o size=64k none {fs} && printf '%s' \"$OLD\" > {fs}/out.params && "
              "{setup} && exec \"$@\"").format(fs=fs, setup=setup)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OLD=OLD.decode())
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                          sys.executable, "-c", CHILD, str(fs / "out.params"), mode],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_real_full_disk(tmp_path):
    fs = _unshare_mount(tmp_path)
    if fs is None:
        pytest.skip("cannot mount a small tmpfs here (needs unshare and CAP_SYS_ADMIN); "
                    "covered by the injected ENOSPC tests")
    result = _in_namespace(fs, "true", "fill")
    assert result["outcome"] == "DPNError: %s: cannot write: No space left on device" % (fs / "out.params")
    assert result["files"] == ["out.params"] and result["content"] == OLD.decode()


def test_real_read_only_mount(tmp_path):
    fs = _unshare_mount(tmp_path)
    if fs is None:
        pytest.skip("cannot mount a read-only tmpfs here; covered by test_injected_read_only_folder")
    result = _in_namespace(fs, "mount -o remount,ro %s && ! touch %s/probe 2>/dev/null" % (fs, fs),
                           "fill")
    assert result["outcome"] == "DPNError: output folder %s is not writable" % fs
    assert result["files"] == ["out.params"] and result["content"] == OLD.decode()


def test_real_immutable_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "out.params").write_bytes(OLD)
    undo = immutable(folder)
    try:
        with pytest.raises(DPNError, match="output folder .*ro is not writable"):
            with atomic_write(folder / "out.params", force=True) as f:
                f.write(b"new")
        monkeypatch.setattr(atomic.os, "access", lambda *a: True)
        with pytest.raises(DPNError, match="out.params: cannot write: "):
            with atomic_write(folder / "out.params", force=True) as f:   # past the check
                f.write(b"new")
        monkeypatch.undo()
        assert (folder / "out.params").read_bytes() == OLD
        assert sorted(p.name for p in folder.iterdir()) == ["out.params"]
    finally:
        subprocess.run(undo, check=True)
