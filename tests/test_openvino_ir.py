"""``dpn-convert --to openvino``: the IR (NAME.xml + NAME.bin) through the output rule.

Independent references: onnxruntime running the .onnx file ``--to onnx`` writes (the IR is
that graph), the ``onnx`` library's reading of its metadata_props (the IR's rt_info must say
the same), OpenVINO's own reader of the IR, and the bytes of a second conversion.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import batch, rel

from dpn_gluon.convert.cli import main

ov = pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dpn_gluon import openvino_ir  # noqa: E402
from dpn_gluon.runtimes import load_runtime  # noqa: E402


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A seeded dpn68 checkpoint with three-letter class names, as a .safetensors (labels)."""
    from dpn_gluon.checkpoint import write_seeded_checkpoint
    folder = tmp_path_factory.mktemp("ir")
    ckpt = write_seeded_checkpoint(folder / "dpn68", name="dpn68", seed=2, symbol=False)
    names = folder / "names.txt"
    names.write_text("".join("klasse-%d \u00e9\"<&>\n" % i for i in range(1000)), encoding="utf-8")
    r = run(ckpt, "--to", "safetensors", "-o", folder / "src.safetensors", "--labels", names,
            "--no-check")
    assert r.exit_code == 0, r.output
    return folder / "src.safetensors"


@pytest.fixture(scope="module")
def written(source, tmp_path_factory):
    """The IR and the ONNX file of the same source."""
    out = tmp_path_factory.mktemp("ir-out")
    r = run(source, "--to", "openvino", "-o", out / "m", "--no-check")
    assert r.exit_code == 0, r.output
    assert r.stdout.split() == [str(out / "m.xml"), str(out / "m.bin")]
    r = run(source, "--to", "onnx", "-o", out / "m.onnx", "--no-check")
    assert r.exit_code == 0, r.output
    return out / "m.xml", out / "m.onnx"


def test_rt_info_carries_the_onnx_metadata(written):
    xml, onnx_file = written
    props = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    model = ov.Core().read_model(str(xml))
    assert openvino_ir.metadata(model) == props
    assert {"arch", "classes", "classifier", "head", "normalization", "mean_rgb", "scale",
            "labels"} <= set(props)
    assert json.loads(openvino_ir.metadata(model)["labels"])[7] == "klasse-7 \u00e9\"<&>"
    assert "framework" not in model.get_rt_info()       # not twice


def test_weights_are_float32(source, written):
    xml, _ = written
    model = ov.Core().read_model(str(xml))
    floats = {op.get_output_element_type(0).get_type_name() for op in model.get_ops()
              if op.get_type_name() == "Constant"
              and op.get_output_element_type(0).is_real()}
    assert floats == {"f32"}
    # every weight once, as float32: the .bin is the checkpoint's float32 bytes (1 %: consts)
    from dpn_gluon.formats.canonical import read
    want = sum(np.asarray(v, np.float32).nbytes for v in read(source).tensors.values())
    assert want <= xml.with_suffix(".bin").stat().st_size <= 1.01 * want


def test_same_input_same_bytes(source, written, tmp_path):
    xml, _ = written
    r = run(source, "--to", "openvino", "-o", tmp_path / "again.xml", "--no-check")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "again.xml").read_bytes() == xml.read_bytes()
    assert (tmp_path / "again.bin").read_bytes() == xml.with_suffix(".bin").read_bytes()


def test_ir_runs_as_the_onnx_file_does(written):
    xml, onnx_file = written
    x = batch(3, 64)
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    want = sess.run(["logits"], {"data": x})[0]
    rt = load_runtime("openvino", xml)
    assert (rt.arch, rt.classes, rt.precision) == ("dpn68", 1000, "fp32")
    assert rt.labels[0] == "klasse-0 \u00e9\"<&>"
    assert rel(rt(x), want) < 1e-5
    with pytest.raises(Exception, match="the IR has the global head: drop --mean-max"):
        load_runtime("openvino", xml, mean_max=True)


def test_mean_max_ir(source, tmp_path):
    r = run(source, "--to", "openvino", "--mean-max", "-o", tmp_path / "mm.xml", "--no-check")
    assert r.exit_code == 0, r.output
    r = run(source, "--to", "onnx", "--mean-max", "-o", tmp_path / "mm.onnx", "--no-check")
    assert r.exit_code == 0, r.output
    x = batch(2, 224)
    sess = ort.InferenceSession(str(tmp_path / "mm.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(["logits"], {"data": x})[0]
    assert rel(load_runtime("openvino", tmp_path / "mm.xml", mean_max=True)(x), want) < 1e-5
    assert openvino_ir.read_ir(tmp_path / "mm.xml").mean_max


def test_convert_checks_the_written_ir_and_check_reads_it(source, written, tmp_path):
    pytest.importorskip("mxnet")
    r = run(source, "--to", "openvino", "-o", tmp_path / "c.xml", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["check"]["parity"]["runtime"] == "openvino" and rec["check"]["parity"]["passed"]
    r = run("check", source, written[0], "--size", "32", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["runtime"] == "openvino"


def test_output_rule(source, tmp_path):
    r = run(source, "--to", "openvino", "-o", tmp_path / "w.bin", "--no-check")
    assert r.exit_code == 2 and "a .bin name, but --to openvino writes" in r.stderr
    (tmp_path / "mine.bin").write_bytes(b"user's file")
    r = run(source, "--to", "openvino", "-o", tmp_path / "mine.xml", "--no-check")
    assert r.exit_code == 2 and "mine.bin exists (use --force" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.bin"]       # nothing written
    assert (tmp_path / "mine.bin").read_bytes() == b"user's file"
    r = run(source, "--to", "openvino", "-o", tmp_path, "--no-check", "--fp16")
    assert r.exit_code == 2 and "--fp16 applies to --to onnx only" in r.stderr
    r = run(source, "--to", "openvino", "-o", tmp_path, "--no-check")     # a folder: SRC's name
    assert r.exit_code == 0 and (tmp_path / "src.xml").is_file() and (tmp_path / "src.bin").is_file()


def test_not_an_ir_is_one_line(source, tmp_path):
    pytest.importorskip("mxnet")
    bad = tmp_path / "x.xml"
    bad.write_text("<net><layers/></net>")
    (tmp_path / "x.bin").write_bytes(b"")
    for args in (("check", source, bad), ("check", source, tmp_path / "none.xml")):
        r = run(*args)
        assert r.exit_code == 2 and "Traceback" not in r.output
        assert r.stderr.strip().splitlines()[-1].startswith("dpn-convert: error:")
    with pytest.raises(Exception, match="x.xml"):
        load_runtime("openvino", bad)
