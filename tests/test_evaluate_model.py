"""dpn-evaluate on a seeded DPN-68 checkpoint: reported errors equal an independent computation.

For each protocol, size (224, 320) and head (plain, mean-max), the test preprocesses its
generated JPEGs itself, runs the Gluon network itself (``dpn_gluon.load_checkpoint``, not
hybridized, one image at a time), picks labels at chosen ranks of those logits (so the
errors are neither 0 nor 100 %), writes the images as a class folder, an im2rec ``.lst`` and
an MXNet-written ``.rec``, and checks that ``dpn-evaluate --json`` reports exactly the
top-1/top-5 errors that ``np.argsort`` over its own logits gives. Then the Gluon, PyTorch and
ONNX runtimes must report the same errors on the same data.
"""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_evaluate_data import expected_errors, labels_at_ranks, make_jpegs, write_layouts

from dpn_gluon.data.preprocess import preprocess
from dpn_gluon.evaluate import cli

mx = pytest.importorskip("mxnet")
pytestmark = pytest.mark.mxnet

CLASSES = 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from dpn_gluon import write_seeded_checkpoint
    prefix = tmp_path_factory.mktemp("ckpt") / "dpn68"
    return write_seeded_checkpoint(str(prefix), name="dpn68", seed=0, classes=CLASSES)


@pytest.fixture(scope="module")
def jpegs():
    return make_jpegs(seed=5)


_NETS = {}


def gluon_logits(checkpoint, batch, mean_max):
    """Logits of the imperative Gluon network, one image at a time."""
    from dpn_gluon import load_checkpoint
    if mean_max not in _NETS:
        _NETS[mean_max] = load_checkpoint(str(checkpoint), ctx=mx.cpu(), mean_max=mean_max)
    net = _NETS[mean_max]
    return np.concatenate([net(mx.nd.array(x[None])).asnumpy() for x in batch])


def evaluate_cli(checkpoint, data, size, protocol, mean_max, *extra):
    args = [str(checkpoint), "--data", str(data), "--size", str(size), "--protocol", protocol,
            "--batch-size", "3", "--workers", "0", "--json", "-q"] + list(extra)
    res = CliRunner().invoke(cli.evaluate_main, args + (["--mean-max"] if mean_max else []))
    assert res.exit_code == 0, res.stderr or res.output
    return json.loads(res.stdout)


CONFIGS = [
    ("authors", 224, False, "folder"),
    ("timm", 224, False, "record"),
    ("authors", 320, True, "list"),
    ("timm", 320, True, "folder"),
    pytest.param("authors", 320, False, "record", marks=pytest.mark.slow),
    pytest.param("timm", 320, False, "list", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("protocol,size,mean_max,layout", CONFIGS)
def test_reported_errors_equal_argsort(tmp_path, checkpoint, jpegs, protocol, size, mean_max,
                                       layout):
    batch = np.stack([preprocess(b, size, protocol) for b in jpegs])
    logits = gluon_logits(checkpoint, batch, mean_max)
    labels = labels_at_ranks(logits)
    top1, top5 = expected_errors(logits, labels)
    assert 0 < top1 < 100 and 0 < top5 < 100
    paths = write_layouts(tmp_path, jpegs, labels, CLASSES)
    rec = evaluate_cli(checkpoint, paths[layout], size, protocol, mean_max)
    assert (rec["top1_error"], rec["top5_error"]) == (top1, top5)
    assert rec["images"] == len(jpegs) and rec["mean_max"] is mean_max
    assert rec["size"] == size and rec["protocol"] == protocol and rec["classes"] == CLASSES


def test_mean_max_changes_the_function_at_320(checkpoint, jpegs):
    batch = np.stack([preprocess(b, 320, "authors") for b in jpegs[:2]])
    assert np.abs(gluon_logits(checkpoint, batch, True)
                  - gluon_logits(checkpoint, batch, False)).max() > 1e-4


@pytest.mark.parametrize("size,mean_max,count,runtimes", [
    (64, False, 8, ("gluon", "torch", "onnx")),
    (320, True, 4, ("gluon", "torch")),
])
def test_runtimes_report_the_same_errors(tmp_path, checkpoint, jpegs, size, mean_max, count,
                                         runtimes):
    pytest.importorskip("torch")
    if "onnx" in runtimes:
        pytest.importorskip("onnxruntime")
    jpegs = jpegs[:count]
    batch = np.stack([preprocess(b, size, "authors") for b in jpegs])
    logits = gluon_logits(checkpoint, batch, mean_max)
    labels = labels_at_ranks(logits)
    expected = expected_errors(logits, labels)
    assert 0 < expected[0] < 100 and 0 < expected[1] < 100
    paths = write_layouts(tmp_path, jpegs, labels, CLASSES)
    for rt in runtimes:
        # Decoding workers are forked from a process that has loaded MXNet / torch / ORT.
        rec = evaluate_cli(checkpoint, paths["record"], size, "authors", mean_max,
                           "--runtime", rt, "--workers", "2")
        assert (rec["top1_error"], rec["top5_error"]) == expected, rt
        assert rec["runtime"] == rt and rec["images"] == count


def test_gluon_splits_batches_over_several_contexts(checkpoint, jpegs):
    """--device cpu:0,1,2: split_and_load over three MXNet contexts, same logits, any batch."""
    from dpn_gluon.runtimes import load_runtime
    batch = np.stack([preprocess(b, 64, "authors") for b in jpegs[:5]])
    one = load_runtime("gluon", checkpoint, "cpu")
    three = load_runtime("gluon", checkpoint, "cpu:0,1,2")
    assert three.devices == ["cpu(0)", "cpu(1)", "cpu(2)"]
    ref = gluon_logits(checkpoint, batch, False)
    np.testing.assert_allclose(one(batch), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(three(batch), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(three(batch[:2]), ref[:2], rtol=1e-4, atol=1e-5)


def test_predict_with_a_4786_class_checkpoint(tmp_path, jpegs):
    from dpn_gluon import write_seeded_checkpoint
    ckpt = write_seeded_checkpoint(str(tmp_path / "dpn68b-5k"), name="dpn68-5k", seed=1)
    img = tmp_path / "a.jpg"
    img.write_bytes(jpegs[0])
    res = CliRunner().invoke(cli.predict_main, [str(ckpt), str(img), "--size", "32",
                                                "--json", "--top", "2"])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["classes"] == 4786
    logits = gluon_logits_fresh(ckpt, preprocess(jpegs[0], 32, "authors")[None])
    assert [t["index"] for t in out["predictions"][0]["top"]] == \
        np.argsort(-logits[0])[:2].tolist()
    assert all(t["name"] is None for t in out["predictions"][0]["top"])


def gluon_logits_fresh(checkpoint, batch):
    from dpn_gluon import load_checkpoint
    net = load_checkpoint(str(checkpoint), ctx=mx.cpu())
    return net(mx.nd.array(batch)).asnumpy()


@pytest.mark.parametrize("target", ["safetensors", "torch", "timm"])
def test_converted_checkpoints_report_the_same_errors(tmp_path, checkpoint, jpegs, target):
    """CHECKPOINT may be anything dpn-convert writes; the errors do not change."""
    pytest.importorskip("torch")
    from dpn_gluon.convert.pipeline import convert
    batch = np.stack([preprocess(b, 64, "authors") for b in jpegs])
    logits = gluon_logits(checkpoint, batch, False)
    labels = labels_at_ranks(logits)
    paths = write_layouts(tmp_path, jpegs, labels, CLASSES)
    name = {"safetensors": "m.safetensors", "torch": "m.pth", "timm": "timm-dpn68"}[target]
    out = tmp_path / name
    convert(checkpoint, target, out, check=False)
    assert out.exists()
    for runtime in ("gluon", "torch"):
        rec = evaluate_cli(out, paths["folder"], 64, "authors", False, "--runtime", runtime)
        assert (rec["top1_error"], rec["top5_error"]) == expected_errors(logits, labels)


def test_bad_checkpoint_is_exit_2(tmp_path, jpegs):
    paths = write_layouts(tmp_path, jpegs, [0] * len(jpegs), 2)
    bad = tmp_path / "junk-0000.params"
    bad.write_bytes(b"not a checkpoint")
    res = CliRunner().invoke(cli.evaluate_main, [str(bad), "--data", str(paths["folder"]),
                                                 "-q", "--size", "32"])
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    assert "junk-0000.params" in res.stderr
