"""ONNX export: onnx.checker, then onnxruntime against the authors' MXNet graph.

Independent references: ``onnx.checker`` (full check, with shape inference), onnxruntime's
CPU provider running the file, and :mod:`dpn_gluon.symbols` run by MXNet on the same seeded
weights (randomized BatchNorm statistics). One file per architecture serves batch 1 and 3
and, for the global head, other input sizes.
"""
from collections import OrderedDict

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from helpers import batch, mxnet_taps, rel
from helpers import weights as tensors

from dpn_gluon import onnx_graph as onnx_export
from dpn_gluon import variants
from dpn_gluon.errors import KeyMismatch
from dpn_gluon.safeio.atomic import OutputExists

ARCHS = list(variants.ARCHS)
TOL = 1e-5


def session(path, providers=("CPUExecutionProvider",)):
    return ort.InferenceSession(str(path), providers=list(providers))


def run(sess, x):
    names = [o.name for o in sess.get_outputs()]
    return OrderedDict(zip(names, sess.run(None, {"data": x})))


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory):
    arch = request.param
    path = onnx_export.export_onnx(tensors(arch), tmp_path_factory.mktemp(arch) / (arch + ".onnx"),
                                   tap_outputs=True)
    return arch, path


def test_checker_and_interface(exported):
    arch, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == onnx_export.IR_VERSION <= 13
    assert [o.version for o in model.opset_import] == [17]
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "data" and dims == ["batch", 3, "height", "width"]
    outputs = [o.name for o in model.graph.output]
    a = variants.ARCHS[arch]
    assert outputs == ["logits"] + variants.tap_names(a)[:-1]
    eps = {attr.f for n in model.graph.node if n.op_type == "BatchNormalization" for attr in n.attribute
           if attr.name == "epsilon"}
    assert len(eps) == 1 and eps.pop() == pytest.approx(1e-3)
    groups = {attr.i for n in model.graph.node if n.op_type == "Conv" for attr in n.attribute
              if attr.name == "group"}
    assert groups == {1, a.groups}


def test_onnxruntime_matches_mxnet_batch_3_and_1(exported):
    arch, path = exported
    x = batch(3)
    want = mxnet_taps(arch, tensors(arch), x)
    sess = session(path)
    got = run(sess, x)
    for tap in want:
        assert got[tap].shape == want[tap].shape, tap
        assert rel(got[tap], want[tap]) < TOL, tap
    one = run(sess, x[1:2])["logits"]
    assert one.shape == (1, want["logits"].shape[1])
    assert rel(one, want["logits"][1:2]) < TOL


@pytest.mark.parametrize("arch", ["dpn68b", "dpn92"])
def test_other_input_size_from_the_same_file(arch, tmp_path):
    path = onnx_export.export_onnx(tensors(arch), tmp_path / "m.onnx")
    x = batch(2, 64, 48)
    want = mxnet_taps(arch, tensors(arch), x)["logits"]
    got = run(session(path), x)["logits"]
    assert rel(got, want) < TOL


def test_mean_max_head_at_320(tmp_path):
    path = onnx_export.export_onnx(tensors("dpn68"), tmp_path / "mm.onnx", mean_max=True)
    onnx.checker.check_model(str(path), full_check=True)
    x = batch(2, 320)
    want = mxnet_taps("dpn68", tensors("dpn68"), x, head="mean_max")["logits"]
    got = run(session(path), x)["logits"]
    assert rel(got, want) < TOL
    plain = mxnet_taps("dpn68", tensors("dpn68"), x, head="global")["logits"]
    assert rel(got, plain) > 1e-3


def test_wrong_epsilon_in_the_file_fails(tmp_path):
    path = onnx_export.export_onnx(tensors("dpn68"), tmp_path / "eps.onnx")
    model = onnx.load(str(path))
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "BatchNormalization" and attr.name == "epsilon":
                attr.f = 1e-5
    onnx.save(model, str(tmp_path / "bad.onnx"))
    x = batch(2)
    want = mxnet_taps("dpn68", tensors("dpn68"), x)["logits"]
    assert rel(run(session(tmp_path / "bad.onnx"), x)["logits"], want) > 1e-3


def test_refuses_to_overwrite_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"keep")
    with pytest.raises(OutputExists):
        onnx_export.export_onnx(tensors("dpn68"), path)
    assert path.read_bytes() == b"keep"
    broken = OrderedDict(tensors("dpn68"))
    del broken["conv3_x__1_c3x3-b__conv_weight"]
    with pytest.raises(KeyMismatch, match="conv3_x__1_c3x3-b__conv_weight"):
        onnx_export.export_onnx(broken, tmp_path / "broken.onnx", arch="dpn68")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_float16_checkpoint_exports_float32(tmp_path):
    half = OrderedDict((k, v.astype(np.float16)) for k, v in tensors("dpn68").items())
    path = onnx_export.export_onnx(half, tmp_path / "h.onnx")
    x = batch(1)
    widened = OrderedDict((k, v.astype(np.float32)) for k, v in half.items())
    want = mxnet_taps("dpn68", widened, x)["logits"]
    assert rel(run(session(path), x)["logits"], want) < TOL


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="onnxruntime has no CUDA provider here")
@pytest.mark.parametrize("arch", ["dpn68", "dpn92"])
def test_cuda_provider_matches_mxnet(arch, tmp_path):
    path = onnx_export.export_onnx(tensors(arch), tmp_path / "m.onnx")
    sess = session(path, ("CUDAExecutionProvider",))
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        pytest.skip("the CUDA provider did not load (no device or no CUDA libraries)")
    x = batch(3)
    want = mxnet_taps(arch, tensors(arch), x)["logits"]
    assert rel(run(sess, x)["logits"], want) < 1e-4
