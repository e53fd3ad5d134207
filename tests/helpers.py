"""Plain helpers shared by test modules (fixtures live in conftest.py and wrap these).

- ``weights(name, seed=0, classes=None, classifier=None)``: seeded canonical tensors, cached
  (a few rows hold ~350 MB each: do not modify them in place);
- ``rel(a, b)``: max|a - b| / max|b|, the parity measure (``b`` is the reference);
- ``batch(n, h, w, seed)``: a float32 N(0, 1) NCHW batch;
- ``mxnet_taps(name, weights, x, head)``: every parity tap of the authors' graph run by MXNet;
- ``immutable(folder)``: make a folder refuse writes for real, or skip; returns the undo command.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections import OrderedDict

import numpy as np
import pytest

from dpn_gluon import checkpoint, variants
from dpn_gluon.formats import registry


@functools.lru_cache(maxsize=4)
def weights(name, seed=0, classes=None, classifier=None):
    return checkpoint.seeded_tensors(name, seed, classes, classifier)


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def batch(n=2, h=32, w=None, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 3, h, w or h)).astype(np.float32)


def mxnet_taps(name, tensors, x, head="global"):
    """Every tap of the authors' graph (dpn_gluon.symbols) run by MXNet on the CPU."""
    pytest.importorskip("mxnet")
    from dpn_gluon.symbols import run_symbol, tap_symbol
    taps = variants.tap_names(variants.resolve(name)[0])
    return OrderedDict(zip(taps, run_symbol(tap_symbol(name, head=head), tensors, data=x)))


def immutable(folder):
    """Make ``folder`` refuse writes for real (root ignores chmod: chattr +i), or skip."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)],
                                                   capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(folder)]
    else:
        pytest.skip("root without chattr +i: no way to make a folder read-only here")
    try:
        (folder / "probe").write_bytes(b"x")
    except OSError:
        return undo
    subprocess.run(undo, check=True)
    pytest.skip("the folder still accepts writes (a filesystem without the immutable flag)")


def read_as(path, fmt):
    """A file's stored tensors and metadata through the reader of ``fmt`` (whatever the file
    is): the registry's read of a source said to be that format."""
    from pathlib import Path
    return registry.read_raw(registry.Source(Path(path), fmt))
