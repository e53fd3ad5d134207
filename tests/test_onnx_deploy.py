"""ONNX for deployment: the mean-max head, --fp16, --opset, metadata, reproducible bytes, CLI.

Independent references: the Gluon DPN (:mod:`dpn_gluon.model`, its mean-max head) and the
authors' graph run by MXNet (:mod:`dpn_gluon.symbols`) on the same seeded weights;
``onnx.checker`` and ``onnx.load`` for the files; onnxruntime's CPU provider runs them.
"""
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from helpers import mxnet_taps, rel
from helpers import weights as tensors
from test_convert_cli import assert_one_line_error, listing, run
from test_convert_formats import write_seeded

import dpn_gluon
from dpn_gluon import onnx_graph as onnx_export
from dpn_gluon import variants
from dpn_gluon.convert.check import RTOL, numeric_parity
from dpn_gluon.convert.parity import seeded_batch
from dpn_gluon.errors import DPNError

TOL = 1e-5


def logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"data": x})[0]


def props(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.fixture(scope="module")
def mean_max_file(tmp_path_factory):
    return onnx_export.export_onnx(tensors("dpn68"), tmp_path_factory.mktemp("mm") / "mm.onnx",
                                   mean_max=True)


@pytest.mark.parametrize("arch", [a if a == "dpn68" else pytest.param(a, marks=pytest.mark.slow)
                                  for a in variants.ARCHS])
def test_mean_max_equals_gluon_at_320(arch, mean_max_file, gluon_net, tmp_path):
    mx = pytest.importorskip("mxnet")
    path = mean_max_file if arch == "dpn68" else onnx_export.export_onnx(
        tensors(arch), tmp_path / "mm.onnx", mean_max=True)
    x = seeded_batch(2, 320, seed=3)
    want = gluon_net(arch, mean_max=True)(mx.nd.array(x)).asnumpy()
    assert rel(logits(path, x), want) < TOL
    # the head matters at 320: the global-average model is not within reach
    assert rel(gluon_net(arch)(mx.nd.array(x)).asnumpy(), want) > 1e-3


def test_mean_max_graph_refuses_inputs_below_193(mean_max_file):
    assert logits(mean_max_file, seeded_batch(1, 193)).shape == (1, 1000)
    with pytest.raises(Exception, match=onnx_export.GUARD):
        logits(mean_max_file, seeded_batch(1, 192))
    assert props(mean_max_file)["min_input_size"] == "193"


@pytest.fixture(scope="module")
def fp16_file(tmp_path_factory):
    return onnx_export.export_onnx(tensors("dpn68"), tmp_path_factory.mktemp("h") / "h.onnx",
                                   fp16=True, tap_outputs=True)


def test_fp16_interface_is_float32_outside_float16_inside(fp16_file):
    model = onnx.load(str(fp16_file))
    onnx.checker.check_model(model, full_check=True)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == f32
    assert model.graph.output[0].name == "logits"
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    assert {i.data_type for i in model.graph.initializer if i.name.endswith(("weight", "gamma",
                                                                            "moving_var"))} == {f16}
    first, last = model.graph.node[0], model.graph.node[-1]
    assert (first.op_type, first.input[0], last.op_type, last.output[0]) == ("Cast", "data", "Cast",
                                                                            "logits")
    assert props(fp16_file)["dtype"] == "float16"


def test_fp16_refuses_values_float16_cannot_hold(tmp_path):
    big = dict(tensors("dpn68"))
    big["fc6_bias"] = big["fc6_bias"] * 0 + 7e4
    with pytest.raises(DPNError, match="fc6_bias.*float16"):
        onnx_export.export_onnx(big, tmp_path / "h.onnx", fp16=True)
    assert listing(tmp_path) == []


def test_fp16_within_its_bound_of_mxnet(fp16_file):
    x = seeded_batch(8, 64, seed=5)
    want = mxnet_taps("dpn68", tensors("dpn68"), x)
    sess = ort.InferenceSession(str(fp16_file), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": x})))
    assert got["logits"].dtype == np.float32
    worst = max(rel(got[t], want[t]) for t in want)
    assert 1e-5 < worst < onnx_export.FP16_RTOL      # float16 for real, and within the bound
    assert (got["logits"].argmax(1) == want["logits"].argmax(1)).all()


def test_check_uses_the_fp16_bound(fp16_file, seeded_checkpoint):
    pytest.importorskip("mxnet")
    from dpn_gluon.formats import canonical as formats
    weights = formats.read(seeded_checkpoint("dpn68"))
    report, why = numeric_parity(weights, onnx_file=fp16_file)
    assert why is None and report.passed and report.tolerance == onnx_export.FP16_RTOL
    strict, _ = numeric_parity(weights, onnx_file=fp16_file, tolerance=RTOL)
    assert not strict.passed                 # the float32 tolerance would fail this file


@pytest.fixture(scope="module")
def global_logits_32():
    x = seeded_batch(1, 32)
    return x, mxnet_taps("dpn68", tensors("dpn68"), x)["logits"]


#: The first and last opsets, the default, and each where the IR version written changes;
#: the rest run with -m slow.
FAST_OPSETS = {10, 17, 20, 21, 23, 24, 25, 28}


@pytest.mark.parametrize("opset", [o if o in FAST_OPSETS else pytest.param(o, marks=pytest.mark.slow)
                                   for o in onnx_export.OPSETS])
def test_every_offered_opset_checks_and_runs(opset, tmp_path, global_logits_32):
    # export_onnx runs onnx.checker on what it writes; the float16 variant every third opset
    fp16 = opset % 3 == 0
    path = onnx_export.export_onnx(tensors("dpn68"), tmp_path / "m.onnx", opset=opset, fp16=fp16)
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import] == [opset]
    x, want = global_logits_32
    assert rel(logits(path, x), want) < (onnx_export.FP16_RTOL if fp16 else TOL)


def test_cli_check_runs_an_fp16_file_as_written(fp16_file, seeded_checkpoint):
    pytest.importorskip("mxnet")
    r = run("check", seeded_checkpoint("dpn68"), fp16_file, "--size", "32", "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert (record["runtime"], record["dtype"], record["tolerance"]) == (
        "onnx", "float16", onnx_export.FP16_RTOL)


@pytest.mark.parametrize("opset", [9, 29])
def test_opset_outside_the_range_is_refused(opset, tmp_path):
    with pytest.raises(DPNError, match="opset %d" % opset):
        onnx_export.export_onnx(tensors("dpn68"), tmp_path / "m.onnx", opset=opset)
    assert listing(tmp_path) == []


def test_metadata_reads_back(tmp_path):
    labels = ["class %d é" % i for i in range(1000)]
    path = onnx_export.export_onnx(tensors("dpn68"), tmp_path / "m.onnx", labels=labels,
                                   metadata={"license": "apache-2.0"})
    model = onnx.load(str(path))
    assert model.producer_version == dpn_gluon.__version__
    p = props(path)
    assert json.loads(p.pop("labels")) == labels
    assert json.loads(p.pop("mean_rgb")) == [124.0, 117.0, 104.0]
    assert float(p.pop("scale")) == pytest.approx(0.0167)
    assert json.loads(p.pop("std_rgb")) == [pytest.approx(1 / 0.0167, rel=1e-5)] * 3
    assert p == {"arch": "dpn68", "classes": "1000", "classifier": "fc6", "head": "global",
                 "dtype": "float32", "producer": "dpn-gluon",
                 "producer_version": dpn_gluon.__version__, "input_layout": "NCHW",
                 "color_order": "RGB", "pixel_range": "0-255",
                 "normalization": "(pixel - mean_rgb) * scale", "input_size": "224",
                 "min_input_size": "32", "interpolation": "bicubic", "crop_pct": "1.0",
                 "license": "apache-2.0"}


def test_bad_labels_and_metadata_are_refused(tmp_path):
    with pytest.raises(DPNError, match="1000 strings"):
        onnx_export.export_onnx(tensors("dpn68"), tmp_path / "a.onnx", labels=["cat", "dog"])
    with pytest.raises(DPNError, match="arch"):
        onnx_export.export_onnx(tensors("dpn68"), tmp_path / "b.onnx", metadata={"arch": "x"})
    assert listing(tmp_path) == []


def test_same_input_same_bytes(tmp_path):
    kw = dict(mean_max=True, fp16=True, opset=13, labels=[str(i) for i in range(1000)])
    a = onnx_export.export_onnx(tensors("dpn68"), tmp_path / "a.onnx", **kw)
    b = onnx_export.export_onnx(tensors("dpn68"), tmp_path / "b.onnx", **kw)
    assert a.read_bytes() == b.read_bytes()


# -- dpn-convert convert --to onnx --mean-max / --fp16 / --opset ------------------------------

@pytest.fixture
def src(tmp_path):
    return write_seeded(tmp_path, "dpn68", np.float32, bits=False)[0]


def test_cli_mean_max_fp16_opset_with_the_check(src):
    pytest.importorskip("mxnet")
    r = run(src, "--to", "onnx", "--mean-max", "--fp16", "--opset", "13", "--json")
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["ok"] and record["check"]["numeric"]["size"] == 256
    model = onnx.load(record["outputs"][0])
    p = {q.key: q.value for q in model.metadata_props}
    assert (p["head"], p["dtype"], model.opset_import[0].version) == ("mean_max", "float16", 13)


@pytest.mark.parametrize("args, words", [
    (("--to", "torch", "--fp16"), ("--fp16", "onnx")),
    (("--to", "mxnet", "--mean-max"), ("--mean-max", "onnx")),
    (("--to", "safetensors", "--opset", "13"), ("--opset", "onnx")),
    (("--to", "onnx", "--opset", "9"), ("--opset",)),
    (("--to", "onnx", "--opset", "29"), ("--opset",)),
])
def test_cli_refuses_bad_onnx_options(src, args, words):
    before = listing(src.parent)
    assert_one_line_error(run(src, *args), *words)
    assert listing(src.parent) == before
