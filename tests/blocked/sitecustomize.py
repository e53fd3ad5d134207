"""Make optional packages unavailable in a test's subprocess, as if not installed.

Put this folder first on PYTHONPATH and name the packages in DPN_TEST_BLOCK (comma
separated: cv2, torch, mxnet, onnxruntime...): importing one raises ModuleNotFoundError,
and importlib.util.find_spec finds nothing, exactly as when the package is absent.
"""
import os
import sys

_BLOCKED = {m for m in os.environ.get("DPN_TEST_BLOCK", "").split(",") if m}


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCKED:
            raise ModuleNotFoundError("No module named %r" % name, name=name)
        return None


if _BLOCKED:
    sys.meta_path.insert(0, _NotInstalled())
