"""PaddleClas's own DPN as a test reference: the wheel it comes from, the interpreter that runs
it, and a client of tests/paddle_reference.py's ``serve`` mode (one paddle process per
session, apart from MXNet and torch).

- ``wheel()``: the paddleclas 2.6.0 wheel: ``$DPN_PADDLECLAS_WHEEL``, else the cached copy
  in ``$XDG_CACHE_HOME/dpn-gluon`` (``~/.cache/dpn-gluon``), else ``pip download``-ed there;
  its sha256 is checked in every case. Raises :class:`Unavailable` (skip) when it cannot be
  had, :class:`WrongWheel` (fail) when a file is not that wheel.
- ``paddle_python()``: ``$DPN_PADDLE_PYTHON``, else this interpreter, if paddle is
  installed there (``pip install -e .[paddle]``); else :class:`Unavailable`.
- ``PaddleClas(python, wheel)``: ``.checkpoint(arch, out, classes, seed)`` and
  ``.logits(arch, pdparams, pixels, out, classes, float64, taps)`` (see paddle_reference.py),
  ``.submit_logits(...)`` (the same, returning a callable for the result, so that this
  process computes its side meanwhile), ``.close()``, ``.peak_rss_mib``. A key mismatch raises :class:`Refused` with the reference's one line.
- ``paddleclas_input(pixels)``: PaddleClas's DPN eval normalization of uint8 NHWC RGB
  pixels, written out from its configs (``NormalizeImage``: scale 1/255, ImageNet mean and
  std), not taken from dpn_gluon.
"""
from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "paddle_reference.py"
WHEEL_NAME = "paddleclas-2.6.0-py3-none-any.whl"
#: sha256 of the paddleclas 2.6.0 wheel on PyPI
WHEEL_SHA256 = "3c12fd8994d95ed1b4fd60017cdbc12bb0e77a41a7921b022e9a6fb5d287fe8a"
#: PaddleClas's DPN configs (ppcls/configs/ImageNet/DPN/*.yaml): NormalizeImage
PADDLECLAS_SCALE = 1.0 / 255.0
PADDLECLAS_MEAN = (0.485, 0.456, 0.406)
PADDLECLAS_STD = (0.229, 0.224, 0.225)
JOB_TIMEOUT_S = 300


class Unavailable(Exception):
    """The reference cannot run here (a skip, with this reason)."""


class WrongWheel(Exception):
    """A file that claims to be the wheel is not it (a failure)."""


class Refused(Exception):
    """The reference refused a file: it is not exactly PaddleClas's state dict."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dpn-gluon"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checked(path: Path, where: str) -> Path:
    digest = _sha256(path)
    if digest != WHEEL_SHA256:
        raise WrongWheel("%s (%s) has sha256 %s, not paddleclas 2.6.0's %s"
                         % (path, where, digest, WHEEL_SHA256))
    return path


def wheel() -> Path:
    given = os.environ.get("DPN_PADDLECLAS_WHEEL")
    if given:
        if not Path(given).is_file():
            raise WrongWheel("DPN_PADDLECLAS_WHEEL=%s is not a file" % given)
        return _checked(Path(given), "DPN_PADDLECLAS_WHEEL")
    cached = cache_dir() / WHEEL_NAME
    if cached.is_file():
        return _checked(cached, "the cached copy")
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
               "--only-binary=:all:", "paddleclas==2.6.0", "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable("pip download paddleclas==2.6.0 failed (%s): set "
                              "DPN_PADDLECLAS_WHEEL to the wheel" % type(e).__name__)
        got = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not got.is_file():
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise Unavailable("pip download paddleclas==2.6.0 failed (%s): set "
                              "DPN_PADDLECLAS_WHEEL to the wheel" % last[:200])
        _checked(got, "downloaded")
        os.replace(got, cached)
    return cached


def paddle_python() -> str:
    python = os.environ.get("DPN_PADDLE_PYTHON") or sys.executable
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('paddle') is None)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable("cannot run %s (%s)" % (python, type(e).__name__))
    if found.returncode != 0:
        raise Unavailable("paddlepaddle is not installed for %s (pip install -e '.[paddle]', or "
                          "set DPN_PADDLE_PYTHON to a python that has it)" % python)
    return python


class PaddleClas:
    """tests/paddle_reference.py serving jobs in one paddle process."""

    def __init__(self, python: str, wheel_path: Path, workdir: Path):
        self.python, self.wheel = python, wheel_path
        self.stderr = open(workdir / "paddle_reference.stderr", "w+")
        #: the paddle process's peak resident memory so far (MiB), from its last reply
        self.peak_rss_mib = None
        self._pending = None
        #: the reference's last reply (JSON), e.g. ``in_state_dict_order`` of a logits job
        self.last_reply = None
        env = dict(os.environ, PYTHONPATH="")      # nothing of this checkout in paddle's process
        self.proc = subprocess.Popen(
            [python, str(SCRIPT), "--wheel", str(wheel_path), "serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env, cwd=str(workdir))

    def _submit(self, **job) -> None:
        """Send a job; the paddle process works on it while this one goes on."""
        if self._pending is not None:
            raise RuntimeError("one paddle job at a time: wait for %s first" % self._pending)
        if self.proc.poll() is not None:
            raise RuntimeError("the paddle reference exited (%s): %s"
                               % (self.proc.returncode, self._stderr_tail()))
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        self._pending = job["mode"]

    def _wait(self) -> dict:
        mode, self._pending = self._pending, None
        ready, _, _ = select.select([self.proc.stdout], [], [], JOB_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError("the paddle reference gave no reply to %s: %s"
                               % (mode, self._stderr_tail()))
        reply = json.loads(line)
        self.peak_rss_mib = reply.get("peak_rss_mib", self.peak_rss_mib)
        self.last_reply = reply
        if reply["ok"]:
            return reply
        if reply["exit"] == 3:
            raise Refused(reply["error"])
        raise RuntimeError("the paddle reference failed: %s" % reply["error"])

    def _stderr_tail(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        lines = [ln for ln in self.stderr.read().splitlines() if ln.strip()]
        return " | ".join(lines[-3:])[-600:]

    def checkpoint(self, arch: str, out, classes: int = 1000, seed: int = 0) -> Path:
        self._submit(mode="checkpoint", arch=arch, out=str(out), classes=classes, seed=seed)
        self._wait()
        return Path(out)

    def submit_logits(self, arch: str, pdparams, pixels: np.ndarray, out, classes: int = 1000,
                      float64: bool = False, taps: bool = False):
        """Start :meth:`logits`; call what it returns for the result (meanwhile this
        process may compute its side)."""
        out = Path(out)
        npy = out.with_suffix(".pixels.npy")
        np.save(npy, np.ascontiguousarray(pixels, np.float32))
        self._submit(mode="logits", arch=arch, pdparams=str(pdparams), pixels=str(npy),
                     out=str(out), classes=classes, float64=float64, taps=taps)

        def result() -> dict:
            self._wait()
            with np.load(out) as z:
                return {k: z[k] for k in z.files}
        return result

    def logits(self, arch: str, pdparams, pixels: np.ndarray, out, classes: int = 1000,
               float64: bool = False, taps: bool = False) -> dict:
        """{'logits': array, 'tap:<layer>': array ...} of PaddleClas's model on ``pixels``
        (normalized NCHW, saved next to ``out``)."""
        return self.submit_logits(arch, pdparams, pixels, out, classes, float64, taps)()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def start(workdir: Path) -> PaddleClas:
    """The reference, or :class:`Unavailable` / :class:`WrongWheel`."""
    python = paddle_python()
    return PaddleClas(python, wheel(), workdir)


def paddleclas_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW as PaddleClas's eval transforms feed its model."""
    x = np.asarray(pixels, np.float32) * np.float32(PADDLECLAS_SCALE)
    x = (x - np.asarray(PADDLECLAS_MEAN, np.float32)) / np.asarray(PADDLECLAS_STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def normalized(pixels: np.ndarray, mean, std) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW under a recorded (mean, std) of 0..1 pixels."""
    x = np.asarray(pixels, np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
