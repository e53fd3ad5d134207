"""The install's dependency metadata, as pip reads it: on Python <= 3.11 no extra may let pip
upgrade numpy past 1.23.x, the last numpy MXNet 1.9.1 imports beside (README: extras
installed one after another must not break MXNet).

Reference: setuptools' own metadata (``setup.py egg_info``), and ``packaging``'s evaluation
of requirement markers, which is what pip uses.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

packaging = pytest.importorskip("packaging.requirements")
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def requires(tmp_path_factory):
    """{extra or "": [Requirement]} from setuptools' egg-info of this checkout."""
    base = tmp_path_factory.mktemp("egg")
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(base)],
                   cwd=ROOT, check=True, capture_output=True)
    sections, extra = {"": []}, ""
    for line in next(base.glob("*.egg-info")).joinpath("requires.txt").read_text().splitlines():
        if line.startswith("["):
            extra = line.strip("[]").split(":")[0]
            marker = line.strip("[]").partition(":")[2]
            sections.setdefault(extra, [])
        elif line.strip():
            req = Requirement(line + ("; " + marker if extra and marker else ""))
            sections.setdefault(extra, []).append(req)
    return sections


def numpy_allowed(reqs, version: str, python: str) -> bool:
    env = {"python_version": python, "python_full_version": python + ".0", "extra": ""}
    return all(version in r.specifier for r in reqs
               if r.name == "numpy" and (r.marker is None or r.marker.evaluate(env)))


@pytest.mark.parametrize("extra", ["mxnet", "torch", "onnx", "opencv", "report", "test",
                                   "paddle", "openvino", "int8"])
def test_every_extra_keeps_mxnets_numpy_on_311(requires, extra):
    reqs = requires[""] + requires[extra]
    assert numpy_allowed(reqs, "1.23.5", "3.11")
    assert not numpy_allowed(reqs, "1.24.0", "3.11"), extra
    assert not numpy_allowed(reqs, "2.4.6", "3.11"), extra


def test_without_mxnet_any_numpy_on_312(requires):
    for extra in ("torch", "onnx", "openvino"):  # MXNet does not run on 3.12: no ceiling there
        assert numpy_allowed(requires[""] + requires[extra], "2.4.6", "3.12"), extra
    assert numpy_allowed(requires[""], "2.4.6", "3.11")    # the converter alone: any numpy


def test_make_test_installs_paddleclas_reference(requires):
    """CI (make test) runs tests/test_paddle_reference.py against the paddle it was measured
    with, so the Makefile's install names the paddle extra."""
    assert [str(r.specifier) for r in requires["paddle"] if r.name == "paddlepaddle"] \
        == ["==3.3.1"]
    install = [line for line in (ROOT / "Makefile").read_text().splitlines()
               if "pip install" in line and " -e " in line]
    assert len(install) == 1, install
    extras = install[0].split('".[', 1)[1].split(']"', 1)[0].split(",")
    assert "paddle" in extras and "test" in extras
