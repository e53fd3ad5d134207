"""dpn-convert to and from PaddleClas's .pdparams, through the command line.

The numerical reference is the authors' MXNet graph (``check``'s per-layer parity on the
source's tensors, run by every conversion here); the file's tensors are checked against numpy's
BatchNorm formula in test_paddle_format.py. PaddleClas's own code is the reference of
test_paddle_reference.py (it needs paddlepaddle)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from dpn_gluon.convert.cli import main
from dpn_gluon.formats import paddle
from dpn_gluon.formats.canonical import read


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _passed(result):
    assert result.exit_code == 0, result.output
    assert "logits max rel" in result.output and "(ok)" in result.output, result.output


# every released class count and both units: 1k, the 5k's 4786, Places365's 365, dpn68b
@pytest.mark.parametrize("name,classes,classifier", [
    ("dpn68", None, None), ("dpn68b", 4786, "fc6"), ("dpn68b", 1000, "fc6-1k"),
    ("dpn68", 365, None)])
def test_authors_checkpoint_to_paddle_and_back(seeded_checkpoint, tmp_path, name, classes,
                                               classifier):
    src = seeded_checkpoint(name, classes=classes, classifier=classifier)
    out = tmp_path / "w.pdparams"
    result = run(src, "--to", "paddle", "-o", out)
    _passed(result)        # the read-back file in torch vs the authors' graph on the source
    assert "bit-identical to PaddleClas's form" in result.output
    with open(out, "rb") as f:
        raw = pickle.load(f)    # this test's own output: trusted, so the full pickle is read
    arch = read(src).arch
    # the state dict PaddleClas's DPN holds: its names, in its order, its parameter names
    want = paddle.expected_shapes(arch, classes or 1000)
    assert [k for k in raw if k != paddle.STRUCTURE_KEY] == list(want)
    assert {k: v.shape for k, v in raw.items() if k != paddle.STRUCTURE_KEY} == dict(want)
    assert raw[paddle.STRUCTURE_KEY]["out.weight"] == "fc_weights"
    back = read(out)
    assert back.arch.name == ("dpn68" if name == "dpn68b" else name)
    assert (back.normalization, back.weight_set) == ("imagenet", "paddleclas")


@pytest.mark.parametrize("name,classes,classifier", [("dpn68b", 4786, "fc6"), ("dpn68", 365, None)])
def test_a_paddleclas_config_goes_beside_the_weights(seeded_checkpoint, tmp_path, name, classes,
                                                     classifier):
    """PaddleClas's tools/eval.py reads Arch, class_num and the transforms from the YAML:
    the architecture PaddleClas builds, the class count, and the normalization the weights
    need (the authors' mean (124, 117, 104) and scale 0.0167 as mean/std of 0..1 pixels)."""
    yaml = pytest.importorskip("yaml")
    src = seeded_checkpoint(name, classes=classes, classifier=classifier)
    out = tmp_path / "w.pdparams"
    assert run(src, "--to", "paddle", "-o", out, "--no-check").exit_code == 0
    config = yaml.safe_load((tmp_path / "w.yaml").read_text())
    assert config["Arch"] == {"name": "DPN68", "class_num": classes}
    ops = {k: v for op in config["DataLoader"]["Eval"]["dataset"]["transform_ops"]
           for k, v in op.items()}
    mean = [m / 255 for m in (124, 117, 104)]
    std = [1 / (0.0167 * 255)] * 3
    np.testing.assert_allclose(ops["NormalizeImage"]["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(ops["NormalizeImage"]["std"], std, rtol=1e-9)
    assert ops["ResizeImage"] == {"resize_short": 224, "interpolation": "bicubic"}
    assert ops["CropImage"] == {"size": 224}
    # PaddleClas's own weights, back into its format: its own protocol and normalization
    again = tmp_path / "again.pdparams"
    assert run(out, "--to", "paddle", "-o", again, "--no-check").exit_code == 0
    ops = {k: v for op in yaml.safe_load((tmp_path / "again.yaml").read_text())[
        "DataLoader"]["Eval"]["dataset"]["transform_ops"] for k, v in op.items()}
    assert ops["NormalizeImage"]["mean"] == [0.485, 0.456, 0.406]
    assert ops["NormalizeImage"]["std"] == [0.229, 0.224, 0.225]
    assert ops["ResizeImage"] == {"resize_short": 256}


def test_paddle_to_every_format_and_back_is_byte_identical(seeded_checkpoint, tmp_path):
    src = seeded_checkpoint("dpn68")
    first = tmp_path / "first.pdparams"
    _passed(run(src, "--to", "paddle", "-o", first))
    for target, out in (("timm", tmp_path / "t"), ("safetensors", tmp_path / "s.safetensors"),
                        ("torch", tmp_path / "p.pth"), ("mxnet", tmp_path / "m"),
                        ("onnx", tmp_path / "o.onnx")):
        _passed(run(first, "--to", target, "-o", out))
    # the normalization goes where a format has a place for it
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    assert config["pretrained_cfg"]["std"] == [0.229, 0.224, 0.225]
    import onnx
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "o.onnx")).metadata_props}
    assert json.loads(props["mean_rgb"]) == [123.675, 116.28, 103.53]
    assert props["normalization_name"] == "imagenet" and "scale" not in props
    for name in ("t", "s.safetensors"):
        assert read(tmp_path / name).normalization == "imagenet"
        again = tmp_path / ("again-%s.pdparams" % name.split(".")[0])
        assert run(tmp_path / name, "--to", "paddle", "-o", again, "--no-check").exit_code == 0
        assert again.read_bytes() == first.read_bytes()


def test_authors_outputs_record_the_authors_normalization(seeded_checkpoint, tmp_path):
    _passed(run(seeded_checkpoint("dpn68"), "--to", "timm", "-o", tmp_path / "t"))
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == [round(m / 255, 10) for m in (124, 117, 104)]
    assert read(tmp_path / "t").normalization == "authors"


class _Evil:
    command = "true"

    def __reduce__(self):
        import os
        return os.system, (self.command,)


def test_hostile_pdparams_are_one_line(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pdparams"
    payload = _Evil()
    payload.command = "touch '%s'" % marker
    evil.write_bytes(pickle.dumps({"conv1_x_1_func._conv.weight": payload}, protocol=4))
    other = tmp_path / "other.pdparams"     # a pickle of arrays, not a DPN
    other.write_bytes(pickle.dumps({"w": np.zeros((2, 2), np.float32)}, protocol=2))
    for path in (evil, other):
        before = path.read_bytes()
        result = run(path, "--to", "torch", "-o", tmp_path / "x.pth")
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert path.read_bytes() == before
        assert not (tmp_path / "x.pth").exists() and not marker.exists()


def test_predict_feeds_paddleclas_weights_their_normalization(seeded_checkpoint, tmp_path):
    """dpn-predict on a .pdparams normalizes as PaddleClas does: its logits equal the authors'
    graph (MXNet, on the source's tensors) on (pixel / 255 - mean) / std computed in numpy;
    dpn-train, whose recipe feeds the authors' normalization, refuses the file in one line."""
    import io

    from helpers import mxnet_taps
    from PIL import Image

    from dpn_gluon.data.preprocess import preprocess
    from dpn_gluon.errors import CheckpointError
    from dpn_gluon.evaluate import predict
    from dpn_gluon.runtimes import load_runtime, read_model
    src = seeded_checkpoint("dpn68")
    out = tmp_path / "w.pdparams"
    assert run(src, "--to", "paddle", "-o", out, "--no-check").exit_code == 0
    pixels = np.random.default_rng(3).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    rt = load_runtime("torch", out)
    assert rt.normalization == "imagenet"
    x = ((pixels / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])
    x = x.transpose(2, 0, 1)[None].astype(np.float32)
    want = mxnet_taps("dpn68", read(src).tensors, x)["logits"]
    got = rt(preprocess(buf.getvalue(), 224, "authors", normalization="imagenet")[None])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    top = predict(rt, [buf.getvalue()], 224, "authors", top=1)[0]["top"][0]
    assert top["index"] == int(np.argmax(want))
    with pytest.raises(CheckpointError, match="imagenet input normalization"):
        read_model(out)


def test_dpn_predict_runs_paddleclas_weights_under_paddleclas_protocol(seeded_checkpoint,
                                                                      tmp_path):
    pytest.importorskip("cv2")
    from PIL import Image

    from dpn_gluon.evaluate.cli import predict_main
    out = tmp_path / "w.pdparams"
    assert run(seeded_checkpoint("dpn68"), "--to", "paddle", "-o", out, "--no-check") \
        .exit_code == 0
    image = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (240, 300, 3), dtype=np.uint8)) \
        .save(image)
    result = CliRunner().invoke(predict_main, [str(out), str(image), "--protocol", "paddleclas",
                                               "--runtime", "torch", "--json", "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (record["protocol"], record["normalization"]) == ("paddleclas", "imagenet")
    assert len(record["predictions"][0]["top"]) == 5
