"""--runtime openvino: our ONNX graph compiled by OpenVINO at an explicit precision.

Independent references: the authors' graph (:mod:`dpn_gluon.symbols`) run by MXNet on seeded
weights with randomized BatchNorm statistics, and onnxruntime running the ONNX file
dpn-convert writes. The precision is checked twice: on the compiled model's
INFERENCE_PRECISION_HINT property, and in the numbers (fp32 within 1e-5 of MXNet, where
OpenVINO's silent bf16 default misses by 1e-3 and more; bf16 beyond that, within its bound).
Skipped without OpenVINO; bf16 skipped on a CPU without AVX512_BF16 or AMX.
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
from helpers import batch, mxnet_taps, rel
from helpers import weights as tensors

from dpn_gluon import variants
from dpn_gluon.deps import MissingDependency, importable
from dpn_gluon.errors import DPNError

ARCHS = list(variants.ARCHS)
TOL = 1e-5          # the onnxruntime tolerance (tests/test_onnx.py)
ROOT = Path(__file__).resolve().parents[1]
#: bf16 models compiled here live until the process ends: with openvino 2026.4.1, once a bf16
#: compiled model has been freed, a later SIGTERM to the process dies of a segmentation fault
#: (a live one, as in a command's run, does not), and tests/test_outputs.py sends one.
ALIVE = []

needs_openvino = pytest.mark.skipif(not importable("openvino") or not importable("onnx"),
                                    reason="openvino (pip install \"dpn-gluon[openvino]\")")


def has_bf16() -> bool:
    from dpn_gluon.openvino_ir import check_precision
    try:
        check_precision("bf16")
    except DPNError:
        return False
    return True


needs_bf16 = pytest.mark.skipif(not importable("openvino") or not has_bf16(),
                                reason="no OpenVINO, or a CPU without AVX512_BF16 or AMX")


def test_missing_openvino_names_the_extra(monkeypatch, seeded_checkpoint):
    from dpn_gluon.runtimes import load_runtime
    monkeypatch.setitem(sys.modules, "openvino", None)      # import openvino -> ImportError
    with pytest.raises(MissingDependency) as e:
        load_runtime("openvino", seeded_checkpoint("dpn68", symbol=False))
    msg = str(e.value)
    assert "\n" not in msg and '--runtime openvino needs openvino' in msg
    assert 'pip install "dpn-gluon[openvino]"' in msg


def test_other_runtimes_refuse_bf16(seeded_checkpoint):
    from dpn_gluon.runtimes import load_runtime
    with pytest.raises(DPNError, match="--runtime torch runs fp32 only; --precision bf16 needs "
                                       "--runtime openvino"):
        load_runtime("torch", seeded_checkpoint("dpn68", symbol=False), precision="bf16")


@needs_openvino
@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_matches_the_authors_graph(arch, seeded_checkpoint):
    """The runtime on the checkpoint file, and every tap of the tapped graph, within 1e-5."""
    from dpn_gluon.convert.parity import openvino_taps
    from dpn_gluon.runtimes import load_runtime
    x = batch(3)
    want = mxnet_taps(arch, tensors(arch), x)
    rt = load_runtime("openvino", seeded_checkpoint(arch, symbol=False))
    assert (rt.kind, rt.precision, rt.devices) == ("openvino", "fp32", ["cpu"])
    got = rt(x)
    assert got.shape == want["logits"].shape and rel(got, want["logits"]) < TOL
    assert rel(rt(x[1:2]), want["logits"][1:2]) < TOL          # another batch, same model
    a, classes, fc = variants.identify({k: v.shape for k, v in tensors(arch).items()})
    taps = openvino_taps(a, classes, fc, tensors(arch), x)
    assert list(taps) == list(want)
    for tap in want:
        assert rel(taps[tap], want[tap]) < TOL, tap


@needs_openvino
def test_one_runtime_many_batches(seeded_checkpoint):
    """Batches of other sizes and other arrays through one runtime, in any order, give what
    a fresh runtime gives (``compiled(x)``, which shares the caller's arrays, does not)."""
    from dpn_gluon.runtimes import load_runtime
    ckpt = seeded_checkpoint("dpn68", symbol=False)
    x = batch(6, 64, seed=5)
    want = load_runtime("openvino", ckpt)(x)
    rt = load_runtime("openvino", ckpt)
    parts = [rt(x[:3]), rt(x[3:4]), rt(x[4:6])]
    assert rel(np.concatenate(parts), want) < 1e-6     # a kernel may differ per batch size
    assert rel(rt(x), want) < 1e-6


@needs_openvino
def test_fp32_mean_max_head(seeded_checkpoint):
    from dpn_gluon.runtimes import load_runtime
    x = batch(2, 224)
    want = mxnet_taps("dpn68", tensors("dpn68"), x, head="mean_max")["logits"]
    rt = load_runtime("openvino", seeded_checkpoint("dpn68", symbol=False), mean_max=True)
    assert rel(rt(x), want) < TOL
    with pytest.raises(Exception, match="mean_max_needs_input_of_193px_or_more"):
        rt(batch(1, 64))        # the graph's own guard: no silent empty 7x7 pool


@needs_openvino
def test_compiled_precision_is_the_one_asked_for():
    from dpn_gluon import openvino_ir
    a, classes, fc = variants.identify({k: v.shape for k, v in tensors("dpn68").items()})
    model = openvino_ir.from_tensors(tensors("dpn68"), a, classes, fc)
    compiled = openvino_ir.compile_model(model, "fp32", threads=1)
    assert openvino_ir.compiled_precision(compiled) == "f32"
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    if has_bf16():
        bf16 = openvino_ir.compile_model(model, "bf16")
        ALIVE.append(bf16)
        assert openvino_ir.compiled_precision(bf16) == "bf16"


@needs_bf16
@pytest.mark.parametrize("arch", ["dpn68", "dpn92"])
def test_bf16_within_its_measured_bound(arch, seeded_checkpoint):
    from dpn_gluon.openvino_ir import BF16_RTOL
    from dpn_gluon.runtimes import load_runtime
    x = batch(8, 64, seed=4)
    want = mxnet_taps(arch, tensors(arch), x)["logits"]
    rt = load_runtime("openvino", seeded_checkpoint(arch, symbol=False), precision="bf16")
    ALIVE.append(rt)
    assert rt.precision == "bf16"
    got = rt(x)
    err = rel(got, want)
    # bfloat16 for real (fp32 is within 1e-5), and within the bound set at 3x the worst
    assert 1e-4 < err <= BF16_RTOL, err
    assert (got.argmax(1) == want.argmax(1)).all()


def test_bf16_on_a_cpu_without_it_is_one_line(monkeypatch, seeded_checkpoint, tmp_path):
    pytest.importorskip("openvino")
    from test_evaluate_data import make_jpegs

    from dpn_gluon import openvino_ir
    from dpn_gluon.evaluate import cli
    monkeypatch.setattr(openvino_ir, "cpu_flags", lambda: {"avx2", "avx512f"})
    ckpt = seeded_checkpoint("dpn68", symbol=False)
    (tmp_path / "n01440764").mkdir()
    image = tmp_path / "n01440764" / "a.jpg"
    image.write_bytes(make_jpegs(1)[0])
    for command, args in ((cli.predict_main, [str(ckpt), str(image)]),
                          (cli.evaluate_main, [str(ckpt), "--data", str(tmp_path)])):
        res = CliRunner().invoke(command, args + ["--runtime", "openvino", "--precision", "bf16"])
        assert res.exit_code == 2, res.output
        err = res.stderr.strip()
        assert "\n" not in err and "Traceback" not in err
        assert "--precision bf16 needs a CPU with AVX512_BF16 or AMX" in err, err


# -- dpn-convert check --runtime openvino -----------------------------------------------------

def check(*args):
    from dpn_gluon.convert.cli import main
    return CliRunner().invoke(main, ["check"] + [str(a) for a in args])


@needs_openvino
def test_check_fp32_and_a_wrong_epsilon(seeded_checkpoint, monkeypatch):
    pytest.importorskip("mxnet")
    ckpt = seeded_checkpoint("dpn68", symbol=False)
    r = check(ckpt, ckpt, "--runtime", "openvino", "--size", "32", "--json")
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["runtime"] == "openvino" and rec["dtype"] == "float32"
    assert rec["tolerance"] == 1e-5 and rec["passed"]
    monkeypatch.setattr(variants, "BN_EPS", 1e-5)    # what the graph gets; MXNet keeps 1e-3
    r = check(ckpt, ckpt, "--runtime", "openvino", "--size", "32", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["first_failure"] == "pool1"


@needs_bf16
def test_check_bf16_shows_where_it_departs(seeded_checkpoint):
    pytest.importorskip("mxnet")
    from dpn_gluon.openvino_ir import BF16_RTOL
    ckpt = seeded_checkpoint("dpn68", symbol=False)
    r = check_in_child(ckpt, ckpt, "--runtime", "openvino", "--dtype", "bfloat16", "--size",
                       "64", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["tolerance"] == BF16_RTOL and rec["top1_required"] and rec["top1_agreement"] == 1
    rows = rec["rows"]
    assert [row["name"] for row in rows] == variants.tap_names(variants.ARCHS["dpn68"])
    # the rounding is there at every tap, and larger deep in the network than at the stem
    assert all(row["max_rel"] > 1e-5 for row in rows)
    assert rows[0]["max_rel"] < max(row["max_rel"] for row in rows)
    r = check_in_child(ckpt, ckpt, "--runtime", "openvino", "--dtype", "bfloat16", "--size",
                       "64", "--tolerance", "1e-5")
    assert r.returncode == 1 and "first failure" in r.stdout


def check_in_child(*args):
    """dpn-convert check in its own process (its bf16 model is freed at its end: ALIVE)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "dpn_gluon.convert.cli", "check"]
                          + [str(a) for a in args], env=env, capture_output=True, text=True,
                          timeout=900)


@needs_openvino
def test_check_refuses_float16_in_one_line(seeded_checkpoint):
    pytest.importorskip("mxnet")
    ckpt = seeded_checkpoint("dpn68", symbol=False)
    r = check(ckpt, ckpt, "--runtime", "openvino", "--dtype", "float16", "--size", "32")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("dpn-convert: error: --runtime openvino runs "
                                                 "float32 or bfloat16, not float16")
