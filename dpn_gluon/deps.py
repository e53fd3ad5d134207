"""Optional dependencies: import one, or say in one line how to get it.

MXNet, torch, onnx/onnxruntime, OpenVINO, matplotlib and OpenCV are extras (setup.py); a command that
needs one it cannot import fails with a :class:`MissingDependency` (a :class:`DPNError`, so
exit 2 and one line) naming the package, the extra that installs it and, where there is one,
the option that would work without it.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Mapping, Optional, Sequence

from .errors import DPNError

#: import name -> (what pip calls it, the dpn-gluon extra that installs it)
PACKAGES = {
    "mxnet": ("mxnet", "mxnet"),
    "torch": ("torch", "torch"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "matplotlib": ("matplotlib", "report"),
    "cv2": ("opencv-python-headless", "opencv"),
    "openvino": ("openvino", "openvino"),
    "nncf": ("nncf", "int8"),
}


class MissingDependency(DPNError, ImportError):
    """An optional package a command needs is not installed."""


def require(module: str, purpose: str, instead: Optional[str] = None) -> ModuleType:
    """Import ``module`` for ``purpose`` (e.g. ``"--to onnx"``), or raise one line saying
    how to install it and, with ``instead``, what would work without it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(message(module, purpose, instead, e)) from None


def require_choice(option: str, choice: str, packages: Mapping[str, Sequence[str]]) -> None:
    """Import the modules ``packages[choice]`` that ``option choice`` (e.g. ``--runtime
    torch``) needs, or fail in one line naming the extra and the choices that would work."""
    others = [c for c in packages if c != choice and all(importable(m) for m in packages[c])]
    instead = "use %s %s" % (option, (" or %s " % option).join(others)) if others else None
    for module in packages[choice]:
        require(module, "%s %s" % (option, choice), instead)


def importable(module: str) -> bool:
    """Whether ``module`` is installed (found, not imported: MXNet and torch cost ~150 MB)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def message(module: str, purpose: str, instead: Optional[str] = None,
            error: Optional[BaseException] = None) -> str:
    top = module.split(".")[0]
    pip_name, extra = PACKAGES.get(top, (top, None))
    missing = getattr(error, "name", None) or top
    text = "%s needs %s, which is not installed" % (purpose, pip_name)
    if missing != top:          # the package is there, but one of its own imports fails
        text = "%s needs %s, which cannot be imported (%s)" % (purpose, pip_name, error)
    if extra:
        text += ': pip install "dpn-gluon[%s]"' % extra
    if instead:
        text += "; or %s" % instead
    return text
