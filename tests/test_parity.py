"""Per-layer parity: the authors' MXNet graph against the converted PyTorch / ONNX model.

The reference is independent of the code under test: :mod:`dpn_gluon.symbols` run by MXNet
with seeded weights whose BatchNorm statistics are randomized, so a swapped gamma/beta or a
wrong epsilon changes the taps. Negative controls corrupt one block (in the converted file,
or in the candidate model) and check that ``dpn-convert check`` exits 1 and that the first
failing row is exactly that block's first tap.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from dpn_gluon import variants
from dpn_gluon.convert.cli import main

pytest.importorskip("mxnet")
torch = pytest.importorskip("torch")

from test_convert_formats import fast_folder

from dpn_gluon import torch_dpn
from dpn_gluon.convert import parity
from dpn_gluon.convert.parity import layer_parity

ARCHS = list(variants.ARCHS)
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = fast_folder(tmp_path_factory, "parity")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def dpn68_files(folder):
    """A seeded authors' dpn68 checkpoint and its conversion to .pth by dpn-convert."""
    from dpn_gluon.checkpoint import write_seeded_checkpoint
    src = write_seeded_checkpoint(folder / "dpn68", name="dpn68", seed=3, symbol=False)
    r = run(src, "--to", "torch", "-o", folder / "dpn68.pth", "--no-check")
    assert r.exit_code == 0, r.output
    return src, folder / "dpn68.pth"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def table_rows(text):
    """{tap: line} of a printed table, in order."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5] in ("ok", "FAIL"):
            rows[parts[0]] = line
    return rows


# -- every architecture passes at 1e-5 ------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_torch_fp32(arch, seeded_weights):
    w = seeded_weights(arch)
    rep = layer_parity(w, w, "torch", size=32, batch=2)
    a = variants.ARCHS[arch]
    assert [r.name for r in rep.rows] == variants.tap_names(a)
    assert rep.rows[0].shape == [2, a.stem_channels, 8, 8]
    assert rep.rows[-1].shape == [2, 1000]
    assert rep.passed and rep.first_failure is None, rep.table()
    assert max(r.max_rel for r in rep.rows) <= 1e-5
    assert min(r.cosine for r in rep.rows) > 1 - 1e-9
    assert rep.top1_agreement == 1.0


@pytest.mark.parametrize("arch", ["dpn68", "dpn131"])
def test_onnx_runtime_fp32(arch, seeded_weights):
    w = seeded_weights(arch)
    rep = layer_parity(w, w, "onnx", size=32, batch=2)
    assert [r.name for r in rep.rows] == variants.tap_names(variants.ARCHS[arch])
    assert rep.passed, rep.table()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("arch", ["dpn68b", "dpn92"])
def test_half_precision_within_measured_bounds(arch, dtype, seeded_weights):
    w = seeded_weights(arch)
    rep = layer_parity(w, w, "torch", dtype=dtype, size=64, batch=2)
    assert rep.tolerance == parity.TOLERANCES[dtype] and rep.top1_required
    assert rep.passed and rep.top1_agreement == 1.0, rep.table()
    # the rounding is really there: far above float32's, far below the bound's failures
    assert 1e-4 < rep.worst.max_rel <= rep.tolerance


def test_half_precision_still_catches_a_swapped_gamma_beta(seeded_weights):
    w = seeded_weights("dpn68")
    bad = dict(w)
    g, b = "conv4_x__3_c1x1-a__bn__bn_gamma", "conv4_x__3_c1x1-a__bn__bn_beta"
    bad[g], bad[b] = w[b], w[g]
    rep = layer_parity(w, bad, "torch", dtype="float16", size=64)
    assert rep.first_failure.name == "conv4_x__3_sum", rep.table()


# -- corrupted conversions: exit 1, and the first failing row names the block --------------

def test_swapped_gamma_beta_in_the_converted_file(dpn68_files, folder):
    src, pth = dpn68_files
    state = torch.load(pth, weights_only=True)
    g, b = "features.conv3_2.c1x1_a.bn.weight", "features.conv3_2.c1x1_a.bn.bias"
    state[g], state[b] = state[b].clone(), state[g].clone()
    bad = folder / "swapped.pth"
    torch.save(state, bad)
    r = run("check", src, bad)
    assert r.exit_code == 1, r.output
    rows = table_rows(r.stdout)
    assert list(rows) == variants.tap_names(variants.ARCHS["dpn68"])
    failing = [t for t, line in rows.items() if "FAIL" in line]
    assert failing[0] == "conv3_x__2_sum"
    assert rows["conv3_x__2_sum"].endswith("<-- first failure")
    assert sum("first failure" in line for line in rows.values()) == 1
    assert all("ok" in rows[t] for t in list(rows)[:list(rows).index("conv3_x__2_sum")])
    assert "first failing tap conv3_x__2_sum" in r.stderr

    r = run("check", src, bad, "--json")
    assert r.exit_code == 1
    rec = json.loads(r.stdout)
    assert rec["first_failure"] == "conv3_x__2_sum" and rec["passed"] is False
    assert [row["name"] for row in rec["rows"]] == list(rows)
    assert set(rec["rows"][0]) == {"name", "shape", "max_abs", "max_rel", "cosine", "passed"}


def _eps_1e5(monkeypatch, block=None):
    """Candidate PyTorch models built with BN eps 1e-5 (Gluon's and PyTorch's default), in
    every layer or only in one block (timm module name, e.g. ``conv4_1``)."""
    real = torch_dpn.from_canonical

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        mods = getattr(model.features, block).modules() if block else model.modules()
        for m in mods:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = 1e-5
        return model
    monkeypatch.setattr(torch_dpn, "from_canonical", build)


@pytest.mark.parametrize("block, first", [(None, "pool1"), ("conv4_1", "conv4_x__1_sum")])
def test_bn_eps_1e5_in_the_torch_model(dpn68_files, monkeypatch, block, first):
    src, pth = dpn68_files
    _eps_1e5(monkeypatch, block)
    r = run("check", src, pth, "--json")
    assert r.exit_code == 1, r.output
    rec = json.loads(r.stdout)
    assert rec["first_failure"] == first
    rel = {row["name"]: row["max_rel"] for row in rec["rows"]}
    assert 1e-5 < rel[first] < 1e-1      # a subtle error, still 100x over the bound


def test_bn_eps_1e5_onnx_runtime(dpn68_files, monkeypatch):
    src, pth = dpn68_files
    monkeypatch.setattr(variants, "BN_EPS", 1e-5)    # what onnx_export writes; MXNet keeps 1e-3
    r = run("check", src, pth, "--runtime", "onnx", "--json", "--size", "32")
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout)["first_failure"] == "pool1"


def test_check_passes_and_prints_the_table(dpn68_files):
    src, pth = dpn68_files
    r = run("check", src, pth, "--size", "32", "--batch", "3", "--seed", "5")
    assert r.exit_code == 0, r.output
    rows = table_rows(r.stdout)
    assert list(rows) == variants.tap_names(variants.ARCHS["dpn68"])
    assert all(line.split()[5] == "ok" for line in rows.values())
    assert "3x3x32x32" in r.stdout and "PASS" in r.stdout and "first failure" not in r.stdout


def test_tolerance_option(dpn68_files):
    src, pth = dpn68_files
    r = run("check", src, pth, "--size", "32", "--tolerance", "1e-9", "--json")
    assert r.exit_code == 1
    rec = json.loads(r.stdout)
    assert rec["tolerance"] == 1e-9 and rec["first_failure"] == "pool1"


# -- reports, images, devices --------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".html"])
def test_report_file(dpn68_files, folder, suffix):
    pytest.importorskip("matplotlib")
    src, pth = dpn68_files
    out = folder / ("report" + suffix)
    r = run("check", src, pth, "--size", "32", "--report", out)
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    if suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000
    else:
        text = data.decode("utf-8")
        assert "<table>" in text and "data:image/png;base64," in text
        assert text.count("<tr") == 1 + len(variants.tap_names(variants.ARCHS["dpn68"]))
    r = run("check", src, pth, "--size", "32", "--report", out)
    assert r.exit_code == 2 and "exists" in r.stderr      # no overwrite without --force
    assert run("check", src, pth, "--size", "32", "--report", out, "--force").exit_code == 0


def test_images_with_the_authors_preprocessing(dpn68_files, folder):
    from PIL import Image
    rng = np.random.default_rng(0)
    a = folder / "a.jpg"
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(a, quality=95)
    b = folder / "b.png"
    square = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(square).save(b)

    x = parity.load_images([a, b], 48)
    assert x.shape == (2, 3, 48, 48) and x.dtype == np.float32
    # a square image of the crop size is not resampled: exactly the normalization
    want = (square.astype(np.float32) - np.array([124, 117, 104], np.float32)) * np.float32(0.0167)
    np.testing.assert_array_equal(x[1], want.transpose(2, 0, 1))

    src, pth = dpn68_files
    r = run("check", src, pth, "--image", a, "--image", b, "--size", "48", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["batch"] == 2 and rec["inputs"] == "2 images" and rec["size"] == 48
    assert rec["rows"][-1]["shape"] == [2, 1000]


def test_mx_gpu_falls_back_to_the_cpu_with_a_message(seeded_weights, monkeypatch):
    """As on a Hopper GPU: MXNet reports a GPU, and its first kernel fails."""
    import mxnet as mx
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 1)
    logged = []
    w = seeded_weights("dpn68")
    rep = layer_parity(w, w, size=32, mx_device="gpu", log=logged.append)
    assert rep.passed and rep.mx_device.startswith("cpu")
    assert any("MXNet cannot run on the GPU" in m and "CPU" in m for m in logged), logged
    assert any("reference ran on the CPU" in n for n in rep.notes)


# -- bad input: exit 2, one line ------------------------------------------------------------

def test_bad_inputs(dpn68_files, folder, seeded_weights):
    from dpn_gluon.checkpoint import write_seeded_checkpoint
    from dpn_gluon.errors import DPNError
    src, pth = dpn68_files
    # another class count (dpn68b against dpn68 is a numeric comparison: one computes what
    # the other does, as PaddleClas's single c1x1_c convolution)
    other = write_seeded_checkpoint(folder / "c68", name="dpn68", classes=10, symbol=False)
    (folder / "junk.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cases = [
        ((src, other), "differ"),
        ((src, pth, "--runtime", "onnx", "--dtype", "float16"), "float32 graph only"),
        ((src, pth, "--size", "16"), "16"),
        ((src, folder / "nope.pth"), "nope.pth"),
        ((src, pth, "--report", folder / "r.txt"), ".png"),
        ((src, pth, "--image", folder / "junk.jpg"), "junk.jpg"),
    ]
    if not HAS_CUDA:
        cases.append(((src, pth, "--device", "cuda"), "CUDA"))
    for args, word in cases:
        r = run("check", *args)
        assert r.exit_code == 2, (args, r.output)
        err = r.stderr.strip().splitlines()
        assert err[-1].startswith("dpn-convert: error:") and word in err[-1], (args, err)
        assert "Traceback" not in r.output
    w = seeded_weights("dpn68")
    with pytest.raises(DPNError, match="193"):
        layer_parity(w, w, size=64, mean_max=True)


def test_mean_max_head(seeded_weights):
    w = seeded_weights("dpn68")
    rep = layer_parity(w, w, size=224, batch=1, mean_max=True)
    assert rep.passed, rep.table()


# -- dpn-convert SRC --to X --check prints the same table ----------------------------------

def test_convert_check_prints_the_table_and_json(dpn68_files, folder):
    src, _ = dpn68_files
    out, report = folder / "c.safetensors", folder / "c.html"
    r = run(src, "--to", "safetensors", "-o", out, "--json", "--report", report, "--force")
    assert r.exit_code == 0, r.output
    rows = table_rows(r.stderr)
    assert list(rows) == variants.tap_names(variants.ARCHS["dpn68"])
    rec = json.loads(r.stdout)
    p = rec["check"]["parity"]
    assert p["passed"] and [row["name"] for row in p["rows"]] == list(rows)
    assert rec["check"]["numeric"]["max_rel"] == p["rows"][-1]["max_rel"]
    assert report.is_file()


def test_convert_check_fails_at_the_block(dpn68_files, folder, monkeypatch):
    src, _ = dpn68_files
    _eps_1e5(monkeypatch, "conv3_1")
    r = run(src, "--to", "torch", "-o", folder / "e.pth", "--force", "--tolerance", "1e-5")
    assert r.exit_code == 1, r.output
    rows = table_rows(r.stderr)
    assert rows["conv3_x__1_sum"].endswith("<-- first failure")
    assert "first failing tap conv3_x__1_sum" in r.stderr


# -- GPU: make test-gpu (pytest -m gpu); skipped without CUDA -------------------------------



@pytest.mark.parametrize("dtype", parity.DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch sees none)")
def test_cuda_torch(arch, dtype, seeded_weights):
    """fp32 (TF32 off) at 1e-5; float16 / bfloat16 at the CPU-measured bounds + top-1."""
    w = seeded_weights(arch)
    rep = layer_parity(w, w, "torch", device="cuda", dtype=dtype, size=64, batch=2)
    print(rep.table())
    assert rep.passed, rep.table()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch sees none)")
def test_cuda_onnxruntime(arch, seeded_weights):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    w = seeded_weights(arch)
    rep = layer_parity(w, w, "onnx", device="cuda", size=64, batch=2)
    print(rep.table())
    # cuDNN may pick TF32 kernels inside onnxruntime; report, then hold the float32 bound
    assert rep.passed, rep.table()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch sees none)")
def test_cuda_cli(dpn68_files):
    src, pth = dpn68_files
    r = run("check", src, pth, "--device", "cuda", "--mx-device", "gpu", "--dtype", "float16")
    assert r.exit_code == 0, r.output
    assert "cuda" in r.stdout


# -- ONNX files as written ------------------------------------------------------------------

def test_written_onnx_file_checked_as_it_is(dpn68_files, folder):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    src, _ = dpn68_files
    out = folder / "m.onnx"
    r = run(src, "--to", "onnx", "-o", out, "--force", "--json", "--verbose")
    assert r.exit_code == 0, r.output
    assert list(table_rows(r.stderr)) == variants.tap_names(variants.ARCHS["dpn68"])
    assert json.loads(r.stdout)["check"]["parity"]["runtime"] == "onnx"

    r = run("check", src, out, "--json", "--size", "32")     # runtime: onnx, from the file
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["runtime"] == "onnx"

    model = onnx.load(str(out))
    init = {t.name: t for t in model.graph.initializer}
    g, b = init["conv4_x__2_c1x1-a__bn__bn_gamma"], init["conv4_x__2_c1x1-a__bn__bn_beta"]
    g_raw, b_raw = bytes(g.raw_data), bytes(b.raw_data)
    assert g_raw and b_raw
    g.raw_data, b.raw_data = b_raw, g_raw
    bad = folder / "bad.onnx"
    onnx.save(model, str(bad))
    r = run("check", src, bad, "--json", "--size", "32")
    assert r.exit_code == 1, r.output
    assert json.loads(r.stdout)["first_failure"] == "conv4_x__2_sum"

    r = run("check", src, out, "--runtime", "torch")
    assert r.exit_code == 2 and "--runtime onnx only" in r.stderr


def test_parity_script_without_a_gpu_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "dpn_gluon.convert.parity", "--device", "cuda",
                           "--dtype", "float32"], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == "" and len(lines) == 1, proc.stderr
    assert lines[0].startswith("python -m dpn_gluon.convert.parity: error: --device cuda")
