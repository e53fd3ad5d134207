"""--precision int8: NNCF post-training quantization over the user's images, never silent.

Independent references: onnxruntime running the fp32 ONNX file (for the agreement the
runtime reports on its held-out images), and OpenVINO's compiled runtime model (which
layers really run in 8 bits). Skipped without OpenVINO and NNCF, or on a CPU without VNNI/AMX.
"""
from __future__ import annotations

import json
import sys

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


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    jpegs = make_jpegs(0) + make_jpegs(1) + make_jpegs(2)
    for i, data in enumerate(jpegs[:15]):
        sub = folder / ("class%d" % (i % 2))         # any depth, as a labelled folder is
        sub.mkdir(exist_ok=True)
        (sub / ("img%02d.jpg" % i)).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def int8(images, tmp_path_factory):
    pytest.importorskip("nncf")
    from dpn_gluon.checkpoint import write_seeded_checkpoint
    from dpn_gluon.openvino_ir import check_precision
    try:
        check_precision("int8")
    except DPNError as e:
        pytest.skip(str(e))
    ckpt = write_seeded_checkpoint(tmp_path_factory.mktemp("q") / "dpn68", name="dpn68",
                                   seed=0, symbol=False)
    return ckpt, load_runtime("openvino", ckpt, precision="int8",
                              calibration=Calibration(images, SIZE))


@needs_int8
def test_int8_reports_agreement_on_held_out_images(int8, images):
    import onnxruntime as ort

    from dpn_gluon.runtimes import read_model
    ckpt, rt = int8
    calib, held = Calibration(images, SIZE).load()
    q = rt.quantization
    assert (rt.precision, q["calibration_images"], q["held_out_images"]) == ("int8", 12, 3)
    # the agreement, recomputed against onnxruntime's fp32 run of the ONNX file
    from dpn_gluon.onnx_graph import export_onnx
    tensors = read_model(ckpt)[3]
    path = export_onnx(tensors, ckpt.parent / "fp32.onnx")
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"data": held})[0]
    got = rt(held)
    assert q["top1_agreement_with_fp32"] == pytest.approx(np.mean(got.argmax(1) == want.argmax(1)))
    # quantized for real: far from fp32's 1e-6, but the same function
    err = np.abs(got - want).max() / np.abs(want).max()
    assert 1e-3 < err < 0.5, err


@needs_int8
def test_int8_convolutions_run_in_8_bits(int8, images):
    from dpn_gluon import openvino_ir
    from dpn_gluon.checkpoint import seeded_tensors
    from dpn_gluon.variants import identify
    calib, _ = Calibration(images, SIZE).load()
    tensors = seeded_tensors("dpn68", 0)
    a, classes, fc = identify({k: v.shape for k, v in tensors.items()})
    model = openvino_ir.from_tensors(tensors, a, classes, fc, calibration=calib)
    compiled = openvino_ir.compile_model(model, "int8")
    assert openvino_ir.compiled_precision(compiled) == "f32"      # the rest: not a silent bf16
    kinds = conv_precisions(compiled)
    # every convolution, the 22 grouped 3x3 ones included, runs in 8 bits
    assert len(kinds["GroupConvolution"]) == 22 and len(kinds["Convolution"]) >= 49
    assert all(p in ("u8", "i8") for ps in kinds.values() for p in ps), kinds
    with pytest.raises(DPNError, match="the model is quantized"):
        openvino_ir.compile_model(model, "fp32")
    # what NNCF 2.14.1 alone leaves: the grouped ones in float32 (why int8 trailed bf16)
    from dpn_gluon.onnx_graph import build_onnx
    nncf_only = openvino_ir.quantize_onnx(build_onnx(tensors, a, classes, fc), calib,
                                          grouped=False)
    kinds = conv_precisions(openvino_ir.compile_model(
        openvino_ir.from_onnx(nncf_only.SerializeToString()), "int8"))
    assert set(kinds["GroupConvolution"]) == {"f32"}


def conv_precisions(compiled):
    """{kind: [runtime precision]} of the convolutions OpenVINO compiled; grouped: the
    authors' ``c3x3-b`` units (the runtime model calls every one "Convolution")."""
    from dpn_gluon.variants import UNIT_B
    out = {"Convolution": [], "GroupConvolution": []}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            kind = "GroupConvolution" if UNIT_B in op.get_friendly_name() else "Convolution"
            out[kind].append(info["runtimePrecision"].astype(str))
    return out


@needs_int8
def test_predict_says_so_on_stderr(int8, images):
    ckpt, _ = int8
    image = sorted(images.rglob("*.jpg"))[0]
    res = CliRunner().invoke(cli.predict_main, [str(ckpt), str(image), "--size", str(SIZE),
                                                "--runtime", "openvino", "--precision", "int8",
                                                "--calibration", str(images), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["precision"] == "int8" and rec["quantization"]["held_out_images"] == 3
    line, = [x for x in res.stderr.splitlines() if "int8" in x]
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
