"""--precision int8: NNCF post-training quantization over the user's images, never silent.

Independent references: onnxruntime running the fp32 ONNX file (for the agreement the
runtime reports on its held-out images), and OpenVINO's compiled runtime model (which
layers really run in 8 bits). Skipped without OpenVINO and NNCF, or on a CPU without VNNI/AMX.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_evaluate_data import make_jpegs

from dpn_gluon.deps import MissingDependency, importable
from dpn_gluon.errors import DPNError
from dpn_gluon.evaluate import cli
from dpn_gluon.runtimes import Calibration, load_runtime

needs_int8 = pytest.mark.skipif(
    not all(importable(m) for m in ("openvino", "nncf", "onnx", "onnxruntime")),
    reason='openvino and nncf (pip install "dpn-gluon[int8]")')
SIZE = 64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    jpegs = make_jpegs(0) + make_jpegs(1) + make_jpegs(2)
    for i, data in enumerate(jpegs[:15]):
        sub = folder / ("class%d" % (i % 2))         # any depth, as a labelled folder is
        sub.mkdir(exist_ok=True)
        (sub / ("img%02d.jpg" % i)).write_bytes(data)
    return folder


#: Run in a child process: after NNCF has quantized in pytest's own process, a later test's
#: SIGTERM to that process (tests/test_outputs.py) died of a segmentation fault, which a
#: plain script doing the same does not (exit 143, its cleanup run); so no NNCF state is left
#: in the test process.
CHILD = r"""
import json, sys
import numpy as np
from dpn_gluon import openvino_ir
from dpn_gluon.checkpoint import seeded_tensors, write_seeded_checkpoint
from dpn_gluon.onnx_graph import build_onnx
from dpn_gluon.runtimes import Calibration, load_runtime
from dpn_gluon.variants import UNIT_B, identify
images, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
ckpt = write_seeded_checkpoint(out + "/dpn68", name="dpn68", seed=0, symbol=False)
calibration = Calibration(images, size)
rt = load_runtime("openvino", ckpt, precision="int8", calibration=calibration)
calib, held = calibration.load()
np.save(out + "/held_logits.npy", rt(held))

def conv_precisions(compiled):
    found = {"Convolution": [], "GroupConvolution": []}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            kind = "GroupConvolution" if UNIT_B in op.get_friendly_name() else "Convolution"
            found[kind].append(info["runtimePrecision"].astype(str))
    return found

tensors = seeded_tensors("dpn68", 0)
a, classes, fc = identify({k: v.shape for k, v in tensors.items()})
ours = openvino_ir.compile_model(openvino_ir.from_tensors(tensors, a, classes, fc,
                                                          calibration=calib), "int8")
try:
    openvino_ir.compile_model(openvino_ir.from_tensors(tensors, a, classes, fc,
                                                       calibration=calib), "fp32")
    refused = None
except Exception as e:
    refused = str(e)
nncf_only = openvino_ir.quantize_onnx(build_onnx(tensors, a, classes, fc), calib, grouped=False)
nncf_only = openvino_ir.compile_model(openvino_ir.from_onnx(nncf_only.SerializeToString()), "int8")
json.dump({"checkpoint": str(ckpt), "precision": rt.precision, "quantization": rt.quantization,
           "hint": openvino_ir.compiled_precision(ours), "ours": conv_precisions(ours),
           "nncf_only": conv_precisions(nncf_only), "fp32_refused": refused},
          open(out + "/result.json", "w"))
"""


def child(args, tmp, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable] + args, cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=1200, **kw)


@pytest.fixture(scope="module")
def int8(images, tmp_path_factory):
    pytest.importorskip("nncf")
    from dpn_gluon.openvino_ir import check_precision
    try:
        check_precision("int8")
    except DPNError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("q")
    r = child(["-c", CHILD, str(images), str(out), str(SIZE)], out)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((out / "result.json").read_text())
    rec["held_logits"] = np.load(out / "held_logits.npy")
    return rec


@needs_int8
def test_int8_reports_agreement_on_held_out_images(int8, images):
    import onnxruntime as ort

    from dpn_gluon.onnx_graph import export_onnx
    from dpn_gluon.runtimes import read_model
    q = int8["quantization"]
    assert (int8["precision"], q["calibration_images"], q["held_out_images"]) == ("int8", 12, 3)
    _, held = Calibration(images, SIZE).load()
    # the agreement, recomputed against onnxruntime's fp32 run of the ONNX file
    ckpt = Path(int8["checkpoint"])
    path = export_onnx(read_model(ckpt)[3], ckpt.parent / "fp32.onnx")
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"data": held})[0]
    got = int8["held_logits"]
    assert q["top1_agreement_with_fp32"] == pytest.approx(np.mean(got.argmax(1) == want.argmax(1)))
    # quantized for real: far from fp32's 1e-6, but the same function
    err = np.abs(got - want).max() / np.abs(want).max()
    assert 1e-3 < err < 0.5, err


@needs_int8
def test_int8_convolutions_run_in_8_bits(int8):
    assert int8["hint"] == "f32"                   # the rest: float32, not a silent bf16
    kinds = int8["ours"]
    # every convolution, the 22 grouped 3x3 ones included, runs in 8 bits
    assert len(kinds["GroupConvolution"]) == 22 and len(kinds["Convolution"]) >= 49
    assert all(p in ("u8", "i8") for ps in kinds.values() for p in ps), kinds
    assert "the model is quantized" in int8["fp32_refused"]
    # what NNCF 2.14.1 alone leaves: the grouped ones in float32 (why int8 trailed bf16)
    assert set(int8["nncf_only"]["GroupConvolution"]) == {"f32"}


@needs_int8
def test_predict_says_so_on_stderr(int8, images, tmp_path):
    image = sorted(images.rglob("*.jpg"))[0]
    r = child(["-c", "from dpn_gluon.evaluate.cli import predict_main; predict_main()",
               int8["checkpoint"], str(image), "--size", str(SIZE), "--runtime", "openvino",
               "--precision", "int8", "--calibration", str(images), "--json"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(r.stdout)
    assert rec["precision"] == "int8" and rec["quantization"]["held_out_images"] == 3
    line, = [x for x in r.stderr.splitlines() if "int8" in x]
    assert line.startswith("dpn-predict: int8: NNCF post-training quantization calibrated on "
                           "12 images of ") and "held-out images" in line


def test_refusals_are_one_line(images, tmp_path, seeded_checkpoint):
    ckpt = str(seeded_checkpoint("dpn68", symbol=False))
    image = str(sorted(images.rglob("*.jpg"))[0])
    few = tmp_path / "few"
    few.mkdir()
    (few / "a.jpg").write_bytes(make_jpegs(0)[0])
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(5):
        (bad / ("b%d.jpg" % i)).write_bytes(make_jpegs(0)[0] if i else b"\xff\xd8 no jpeg")
    cases = [
        (["--runtime", "openvino", "--precision", "int8"], "--precision int8 needs --calibration DIR"),
        (["--runtime", "openvino", "--calibration", str(images)],
         "--calibration applies to --precision int8 only"),
        (["--runtime", "torch", "--precision", "int8", "--calibration", str(images)],
         "--runtime torch runs fp32 only"),
    ]
    if importable("openvino") and importable("nncf"):
        cases += [
            (["--runtime", "openvino", "--precision", "int8", "--calibration", str(few)],
             "1 image(s); int8 needs at least 5"),
            (["--runtime", "openvino", "--precision", "int8", "--calibration", str(bad)],
             "b0.jpg"),
        ]
    for args, words in cases:
        res = CliRunner().invoke(cli.predict_main, [ckpt, image, "--size", str(SIZE)] + args)
        assert res.exit_code == 2, (args, res.output)
        err = res.stderr.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "Traceback" not in res.output, (args, err)


def test_missing_nncf_names_the_int8_extra(monkeypatch, images, seeded_checkpoint):
    pytest.importorskip("openvino")
    from dpn_gluon.openvino_ir import check_precision
    try:
        check_precision("int8")
    except DPNError as e:
        pytest.skip(str(e))
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(MissingDependency, match=r'pip install "dpn-gluon\[int8\]"'):
        load_runtime("openvino", seeded_checkpoint("dpn68", symbol=False), precision="int8",
                     calibration=Calibration(images, SIZE))
