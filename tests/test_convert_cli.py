"""The dpn-convert command line through click's CliRunner: exit codes, --json, overwrite
refusal, default names, and bad inputs (each exit 2, one line on stderr, no output left)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_convert_formats import fast_folder, seeded_params, write_seeded

from dpn_gluon.convert import check as check_mod
from dpn_gluon.convert.cli import main
from dpn_gluon.formats import mxparams


@pytest.fixture
def scratch(tmp_path_factory):
    """A scratch folder on tmpfs where there is one (see test_convert_formats.fast_folder)."""
    folder = fast_folder(tmp_path_factory, "t")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def listing(folder: Path):
    return sorted(p.name for p in Path(folder).iterdir())


def assert_one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("dpn-convert: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.output
    for w in words:
        assert w in errors[0], errors[0]


@pytest.fixture
def src(scratch):
    path, arrays = write_seeded(scratch, "dpn68-extra", np.float16, bits=False)
    return path


def test_convert_default_name_and_stdout(src):
    r = run(src, "--to", "safetensors")
    assert r.exit_code == 0, r.output
    out = src.parent / "dpn68-extra.safetensors"
    assert r.stdout.strip() == str(out)
    assert out.is_file()
    assert "bit-identical" in r.stderr


def test_explicit_subcommand_and_output_folder(src, scratch):
    (scratch / "outdir").mkdir()
    r = run("convert", src, "--to", "torch", "-o", scratch / "outdir")
    assert r.exit_code == 0, r.output
    assert listing(scratch / "outdir") == ["dpn68-extra.pth"]


def test_prefix_with_epoch(scratch):
    arrays = seeded_params("dpn68", np.float16, bits=False)
    with open(scratch / "model-0007.params", "wb") as f:
        mxparams.write(f, arrays)
    r = run(scratch / "model", "--epoch", "7", "--to", "gluon")
    assert r.exit_code == 0, r.output
    assert (scratch / "model.params").is_file()


def test_json_record(src, scratch):
    r = run(src, "--to", "timm", "-o", scratch / "hub", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)           # exactly one JSON document on stdout
    assert rec["outputs"] == [str(scratch / "hub")]
    assert (rec["arch"], rec["classes"], rec["classifier"]) == ("dpn68b", 1000, "fc6-1k")
    assert rec["tensors"] == 383 and rec["dtypes"] == ["float16"]
    assert rec["check"]["exact"] is True and rec["ok"] is True
    assert rec["source_format"] == "mxnet" and len(rec["source_sha256"]) == 64


def test_refuses_to_overwrite_without_force(src, scratch):
    out = scratch / "x.pth"
    assert run(src, "--to", "torch", "-o", out).exit_code == 0
    stamp = out.stat().st_mtime_ns
    r = run(src, "--to", "torch", "-o", out)
    assert_one_line_error(r, "exists", "--force")
    assert out.stat().st_mtime_ns == stamp
    assert run(src, "--to", "torch", "-o", out, "--force").exit_code == 0


def test_timm_folder_overwrite_with_force(src, scratch):
    assert run(src, "--to", "timm", "-o", scratch / "hub").exit_code == 0
    assert_one_line_error(run(src, "--to", "timm", "-o", scratch / "hub"), "exists")
    r = run(src, "--to", "timm", "-o", scratch / "hub", "--force")
    assert r.exit_code == 0, r.output
    assert listing(scratch / "hub") == ["README.md", "config.json", "model.safetensors"]


def test_check_failure_exits_1(src, scratch, monkeypatch):
    monkeypatch.setattr(check_mod, "compare_tensors", lambda a, b: ["x: values differ"])
    r = run(src, "--to", "safetensors", "-o", scratch / "y.safetensors", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["check"]["exact"] is False
    assert "check FAILED" in r.stderr


def test_no_check(src, scratch):
    r = run(src, "--to", "gluon", "-o", scratch / "g.params", "--no-check", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["check"] is None


# -- bad input and usage: exit 2, one line, no output --------------------------------------

def _bad_inputs(folder: Path):
    good, arrays = write_seeded(folder, "dpn68", np.float16, prefix="good")
    data = good.read_bytes()
    (folder / "truncated-0000.params").write_bytes(data[: len(data) - 1000])
    (folder / "random.bin").write_bytes(np.random.default_rng(0).bytes(10000))
    from dpn_gluon.convert.pipeline import convert
    convert(good, "safetensors", out=folder / "whole.safetensors", check=False)
    st = (folder / "whole.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(st[: len(st) // 3])
    (folder / "whole.safetensors").unlink()
    missing = dict(arrays)
    del missing["arg:conv4_x__3_c3x3-b__conv_weight"]
    with open(folder / "missing-0000.params", "wb") as f:
        mxparams.write(f, missing)
    return good


@pytest.mark.parametrize("case, extra, words", [
    ("truncated-0000.params", [], ["truncated-0000.params", "not a valid MXNet .params"]),
    ("random.bin", [], ["random.bin", "not a checkpoint"]),
    ("missing-0000.params", [], ["missing 1", "conv4_x__3_c3x3-b__conv_weight"]),
    ("good-0000.params", ["--arch", "dpn92"], ["does not match dpn92"]),
    ("nonexistent.params", [], ["no such file"]),
    ("cut.safetensors", [], ["cut.safetensors", "not a valid safetensors file"]),
])
def test_bad_input_exit_2_no_output(case, extra, words, scratch):
    _bad_inputs(scratch)
    before = listing(scratch)
    r = run(scratch / case, "--to", "torch", "-o", scratch / "out.pth", *extra)
    assert_one_line_error(r, *words)
    assert listing(scratch) == before


def test_timm_config_contradicting_the_weights(src, scratch):
    assert run(src, "--to", "timm", "-o", scratch / "hub").exit_code == 0
    cfg = json.loads((scratch / "hub" / "config.json").read_text())
    cfg["architecture"] = "dpn92"
    (scratch / "hub" / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run(scratch / "hub", "--to", "torch", "-o", scratch / "x.pth"),
                          "says architecture dpn92", "dpn68b")
    assert not (scratch / "x.pth").exists()


def test_symbol_file_names_its_checkpoint(src, scratch):
    (scratch / "dpn68-extra-symbol.json").write_text('{"nodes": []}')
    r = run(scratch / "dpn68-extra-symbol.json", "--to", "gluon", "-o", scratch / "g.params")
    assert r.exit_code == 0, r.output


def test_truncated_torch_file(src, scratch):
    pytest.importorskip("torch")
    assert run(src, "--to", "torch", "-o", scratch / "m.pth").exit_code == 0
    data = (scratch / "m.pth").read_bytes()
    (scratch / "cut.pth").write_bytes(data[: len(data) // 2])
    before = listing(scratch)
    assert_one_line_error(run(scratch / "cut.pth", "--to", "safetensors"), "cut.pth")
    assert listing(scratch) == before


def test_pickled_object_not_a_state_dict(scratch):
    torch = pytest.importorskip("torch")
    torch.save({"epoch": 3, "acc": [0.5]}, scratch / "opt.pth")
    before = listing(scratch)
    assert_one_line_error(run(scratch / "opt.pth", "--to", "mxnet"), "opt.pth", "not a state_dict")
    assert listing(scratch) == before
    torch.save(Exception("not weights"), scratch / "exc.pth")
    assert_one_line_error(run(scratch / "exc.pth", "--to", "safetensors"), "exc.pth", "refused")


@pytest.mark.parametrize("args, words", [
    (["--to", "torch"], ["Missing argument"]),
    (["X", "--to", "keras"], ["--to", "keras"]),
    (["X", "--to", "torch", "--arch", "resnet50"], ["--arch"]),
    (["X", "--to", "torch", "--classifier", "fc7"], ["--classifier"]),
    (["X", "--to", "torch", "--bogus"], ["--bogus"]),
])
def test_usage_errors_exit_2_in_one_line(args, words):
    assert_one_line_error(run(*args), *words)


def test_output_over_input_refused(scratch):
    src, _ = write_seeded(scratch, "dpn68", np.float16, bits=False)
    assert run(src, "--to", "gluon", "-o", scratch / "g.params").exit_code == 0
    assert_one_line_error(run(scratch / "g.params", "--to", "gluon", "--force"), "overwrite the input")


def test_help():
    r = run("--help")
    assert r.exit_code == 0 and "convert" in r.stdout
    r = run("convert", "--help")
    assert r.exit_code == 0 and "--classifier" in r.stdout and "--epoch" in r.stdout


def test_no_temporary_files_left(src, scratch):
    run(src, "--to", "timm", "-o", scratch / "hub")
    run(src, "--to", "mxnet", "-o", scratch / "mx")
    assert not [n for n in os.listdir(scratch) if n.endswith((".part", ".old"))]


def test_demo_round_trip(scratch):
    import io

    from dpn_gluon.convert import demo
    out = io.StringIO()
    assert demo.run(scratch, "dpn68", out=out)
    text = out.getvalue()
    assert text.count("bit-identical") == 6 and "DIFFER" not in text


def test_to_onnx_through_the_hook(src, scratch):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("dpn_gluon.onnx_graph")
    r = run(src, "--to", "onnx", "-o", scratch / "m.onnx", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outputs"] == [str(scratch / "m.onnx")]
    model = onnx.load(str(scratch / "m.onnx"))
    assert model.graph.input[0].name


def test_no_arguments_prints_help():
    r = run()
    assert r.exit_code == 0 and "dpn-convert SRC --to FORMAT" in r.stdout
