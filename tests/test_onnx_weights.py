"""dpn-convert reads what it writes: the .onnx outputs as checkpoints (formats/onnx_weights.py).

Reference: the seeded source's own tensors (what was exported), and onnx's own reader and
writer for the hostile cases."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dpn_gluon.convert.cli import main
from dpn_gluon.errors import CheckpointError
from dpn_gluon.formats import registry
from dpn_gluon.formats.canonical import read

onnx = pytest.importorskip("onnx")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("name,classifier,options", [
    ("dpn68", None, ()), ("dpn68b", "fc6-1k", ("--mean-max",)), ("dpn68", None, ("--fp16",))])
def test_an_onnx_output_reads_back_as_its_source(seeded_checkpoint, tmp_path, name, classifier,
                                                 options):
    src = seeded_checkpoint(name, classes=1000, classifier=classifier)
    out = tmp_path / "m.onnx"
    assert run(src, "--to", "onnx", "-o", out, "--no-check", *options).exit_code == 0
    assert registry.detect(out).format == "onnx"
    want, got = read(src), read(out)
    assert (got.arch.name, got.classes, got.classifier) == \
        (want.arch.name, want.classes, want.classifier)
    assert list(got.tensors) == list(want.tensors)
    for key, arr in want.tensors.items():
        expect = arr.astype(np.float16) if "--fp16" in options else arr
        np.testing.assert_array_equal(got.tensors[key], expect, err_msg=key)
    assert got.labels == want.labels and got.normalization == "authors"


def test_paddleclas_weights_through_onnx_keep_their_normalization(seeded_checkpoint, tmp_path):
    pdparams, model, folder = tmp_path / "w.pdparams", tmp_path / "w.onnx", tmp_path / "t"
    assert run(seeded_checkpoint("dpn68"), "--to", "paddle", "-o", pdparams,
               "--no-check").exit_code == 0
    assert run(pdparams, "--to", "onnx", "-o", model, "--no-check").exit_code == 0
    back = read(model)
    assert (back.normalization, back.weight_set) == ("imagenet", "paddleclas")
    assert run(model, "--to", "timm", "-o", folder).exit_code == 0     # with its check
    config = json.loads((folder / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]


def test_onnx_files_that_are_not_ours_are_one_line(seeded_checkpoint, tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    src = seeded_checkpoint("dpn68")
    foreign = tmp_path / "foreign.onnx"      # someone else's model: not detected as ours
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, producer_name="other"), str(foreign))
    ours = tmp_path / "m.onnx"
    assert run(src, "--to", "onnx", "-o", ours, "--no-check").exit_code == 0
    cut = tmp_path / "cut.onnx"              # our header, cut short
    cut.write_bytes(ours.read_bytes()[:5000])
    outside = tmp_path / "outside.onnx"      # a weight stored in another file
    model = onnx.load(str(ours))
    first = model.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first), first.name))
    first.data_location = TensorProto.EXTERNAL
    first.ClearField("raw_data")
    first.external_data.add(key="location", value="../../etc/passwd")
    outside.write_bytes(model.SerializeToString())
    for path, word in ((foreign, "not a checkpoint dpn-convert reads"),
                       (cut, "not a readable ONNX model"), (outside, "stored outside the file")):
        before = path.read_bytes()
        result = run(path, "--to", "torch", "-o", tmp_path / "x.pth")
        assert result.exit_code == 2, (path, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and word in result.stderr, \
            result.stderr
        assert path.read_bytes() == before and not (tmp_path / "x.pth").exists()
    with pytest.raises(CheckpointError):
        read(cut)
