"""The converter in an environment without MXNet.

Each case runs ``dpn-convert`` in a fresh interpreter where ``import mxnet`` fails
(``sys.modules['mxnet'] = None``, which makes every import of it raise ImportError), as on a
Python where MXNet 1.9.1 cannot be installed. original -> torch / safetensors / timm must
work, the check must say MXNet is unavailable, and numpy-only targets must not import torch.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_convert_formats import assert_same_params, fast_folder, write_seeded


@pytest.fixture
def scratch(tmp_path_factory):
    """A scratch folder on tmpfs where there is one (see test_convert_formats.fast_folder)."""
    folder = fast_folder(tmp_path_factory, "t")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]

SHIM = """
import json, sys
for hidden in sys.argv.pop(1).split(','):
    sys.modules[hidden] = None
from dpn_gluon.convert.cli import main
try:
    main(sys.argv[1:])
finally:
    print(json.dumps({'torch_imported': sys.modules.get('torch') is not None}), file=sys.stderr)
"""


def run_without_mxnet(*args, hide="mxnet"):
    proc = subprocess.run([sys.executable, "-c", SHIM, hide] + [str(a) for a in args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    *log, last = proc.stderr.strip().splitlines()
    return proc.returncode, proc.stdout, "\n".join(log), json.loads(last)["torch_imported"]


@pytest.fixture
def src(scratch):
    return write_seeded(scratch, "dpn92-extra", np.float16)


@pytest.mark.parametrize("target, needs_torch", [("safetensors", False), ("timm", False),
                                                 ("torch", True)])
def test_original_to_target_without_mxnet(src, target, needs_torch, scratch):
    if needs_torch:
        pytest.importorskip("torch")
    path, arrays = src
    code, out, log, torch_imported = run_without_mxnet(path, "--to", target, "-o",
                                                       scratch / "out", "--json")
    assert code == 0, log
    rec = json.loads(out)
    assert rec["check"]["exact"] is True
    assert any("MXNet is not installed" in n for n in rec["check"]["notes"])
    assert "MXNet is not installed" in log
    assert torch_imported == needs_torch
    # and back to the original format, still without MXNet (only the .params, no symbol)
    code, out, log, _ = run_without_mxnet(scratch / "out", "--to", "mxnet", "-o",
                                          scratch / "back", "--classifier", "fc6-1k", "--json")
    assert code == 0, log
    assert json.loads(out)["outputs"] == [str(scratch / "back-0000.params")]
    assert "wrote only" in log
    assert_same_params(scratch / "back-0000.params", arrays)


def test_bad_input_without_mxnet_is_one_line(scratch):
    (scratch / "junk.params").write_bytes(b"\x12\x01" + bytes(100))
    code, out, log, _ = run_without_mxnet(scratch / "junk.params", "--to", "safetensors")
    assert code == 2 and out == ""
    assert log.startswith("dpn-convert: error:") and len(log.splitlines()) == 1


def test_parity_check_without_mxnet_says_it_needs_it(src):
    """``dpn-convert check`` runs the authors' graph in MXNet: without it, exit 2, one line."""
    pytest.importorskip("torch")
    path, _ = src
    code, out, log, _ = run_without_mxnet("check", path, path)
    assert code == 2 and out == ""
    assert log.splitlines()[-1].startswith("dpn-convert: error: per-layer parity needs MXNet")


def test_torch_files_without_mxnet_or_torch(src, scratch):
    """The numpy-only install writes .pth (torchzip) and reads it back for the check and for
    the way back, through the restricted torch-free reader: exact, exit 0, torch never imported."""
    path, arrays = src
    code, out, log, torch_imported = run_without_mxnet(path, "--to", "torch", "-o",
                                                       scratch / "t.pth", "--json",
                                                       hide="mxnet,torch")
    assert code == 0, log
    assert json.loads(out)["check"]["exact"] is True and not torch_imported
    code, out, log, torch_imported = run_without_mxnet(scratch / "t.pth", "--to", "mxnet", "-o",
                                                       scratch / "back", "--classifier", "fc6-1k",
                                                       hide="mxnet,torch")
    assert code == 0, log
    assert not torch_imported
    assert_same_params(scratch / "back-0000.params", arrays)
