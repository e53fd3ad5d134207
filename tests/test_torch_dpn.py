"""The PyTorch DPN: timm's exact state_dict layout, and the authors' numbers layer by layer.

Independent references: the recorded timm keys (tests/data/timm_state_dict_keys.json) and the
authors' graph (:mod:`dpn_gluon.symbols`) run by MXNet on the same seeded weights, with
BatchNorm statistics and gamma/beta far from (0, 1) so that a wrong epsilon or a swapped
gamma/beta fails. Inputs are 32x32 except for the mean-max head (320x320, as the authors test).
"""
import json
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import batch, mxnet_taps, rel
from helpers import weights as tensors

from dpn_gluon import (
    torch_dpn,
    variants,
)
from dpn_gluon.checkpoint import seeded_tensors
from dpn_gluon.errors import CheckpointError, KeyMismatch

TIMM_KEYS = Path(__file__).parent / "data" / "timm_state_dict_keys.json"
ARCHS = list(variants.ARCHS)
TOL = 1e-5


@lru_cache(maxsize=None)
def reference(name):
    """The authors' taps on the default batch (small: 32x32 maps)."""
    return mxnet_taps(name, tensors(name), batch())


def torch_taps(model, x):
    with torch.no_grad():
        return OrderedDict((k, v.float().cpu().numpy()) for k, v in model.taps(torch.from_numpy(x)).items())


def first_failing(got, want, tol=TOL):
    return next((k for k in want if rel(got[k], want[k]) > tol), None)


# -- layout ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_is_timms(arch):
    want = json.loads(TIMM_KEYS.read_text())["models"][arch]
    got = [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
           for k, v in torch_dpn.build_model(arch).state_dict().items()]
    assert got == want


def test_build_model_resolves_checkpoint_names():
    model = torch_dpn.build_model("dpn68-5k")
    assert model.arch.name == "dpn68b" and model.classifier.weight.shape == (4786, 832, 1, 1)
    assert model.classifier.bias is not None
    assert all(m.eps == variants.BN_EPS and abs(m.momentum - 0.1) < 1e-12
               for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


# -- numbers against the authors' graph ---------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_taps_and_logits_match_mxnet(arch):
    want = reference(arch)
    model = torch_dpn.from_canonical(tensors(arch))
    got = torch_taps(model, batch())
    assert list(got) == variants.tap_names(variants.ARCHS[arch])
    for tap in want:
        assert got[tap].shape == want[tap].shape, tap
        assert rel(got[tap], want[tap]) < TOL, tap
    assert np.std(want["logits"]) > 0.1     # the check has something to see
    with torch.no_grad():
        np.testing.assert_array_equal(model(torch.from_numpy(batch())).numpy(), got["logits"])


@pytest.mark.parametrize("ckpt", ["dpn68-extra", "dpn92-places365"])
def test_released_rows_load_and_match(ckpt):
    weights = seeded_tensors(ckpt, seed=2)
    arch, classes, classifier = variants.resolve(ckpt)
    model = torch_dpn.from_canonical(weights)
    assert model.classes == classes
    x = batch(1)
    want = mxnet_taps(ckpt, weights, x)["logits"]
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    assert got.shape == (1, classes) and rel(got, want) < TOL


def test_mean_max_head_at_320_matches_mxnet():
    x = batch(1, 320)
    want = mxnet_taps("dpn68", tensors("dpn68"), x, head="mean_max")["logits"]
    model = torch_dpn.from_canonical(tensors("dpn68"), mean_max=True)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
        plain = torch_dpn.from_canonical(tensors("dpn68"))(torch.from_numpy(x)).numpy()
    assert rel(got, want) < TOL
    assert rel(plain, want) > 1e-3          # the two heads differ at 320


# -- negative controls: the comparison can fail -------------------------------------------

def test_wrong_epsilon_fails():
    model = torch_dpn.from_canonical(tensors("dpn68"))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-5
    got = torch_taps(model, batch())
    assert rel(got["logits"], reference("dpn68")["logits"]) > 1e-3


def test_swapped_gamma_beta_fails_at_that_block():
    weights = OrderedDict(tensors("dpn68"))
    unit = "conv3_x__2_c1x1-a__bn__bn_"
    weights[unit + "gamma"], weights[unit + "beta"] = weights[unit + "beta"], weights[unit + "gamma"]
    got = torch_taps(torch_dpn.from_canonical(weights), batch())
    assert first_failing(got, reference("dpn68")) == "conv3_x__2_sum"
    assert rel(got["logits"], reference("dpn68")["logits"]) > 1e-3


# -- strict loading ----------------------------------------------------------------------

def test_load_canonical_lists_missing_and_misshapen():
    weights = OrderedDict(tensors("dpn68"))
    del weights["conv2_x__1_c1x1-a__conv_weight"]
    weights["conv2_x__2_c3x3-b__conv_weight"] = np.zeros((128, 8, 3, 3), np.float32)
    with pytest.raises(KeyMismatch) as err:
        torch_dpn.load_canonical(torch_dpn.build_model("dpn68"), weights)
    assert err.value.missing == ["features.conv2_1.c1x1_a.conv.weight"]
    assert [m[0] for m in err.value.misshapen] == ["conv2_x__2_c3x3-b__conv_weight"]


def test_load_canonical_refuses_the_other_unit():
    with pytest.raises(KeyMismatch) as err:
        torch_dpn.load_canonical(torch_dpn.build_model("dpn68"), tensors("dpn68b"))
    assert any("c1x1-c1__conv_weight" in k for k in err.value.unexpected)


def test_from_canonical_refuses_a_wrong_class_count():
    with pytest.raises(CheckpointError, match="has 1000 classes, not 10"):
        torch_dpn.from_canonical(tensors("dpn68"), classes=10)


def test_load_canonical_casts_float16_checkpoints():
    half = OrderedDict((k, v.astype(np.float16)) for k, v in tensors("dpn68").items())
    model = torch_dpn.from_canonical(half)
    assert model.classifier.weight.dtype == torch.float32
    widened = OrderedDict((k, v.astype(np.float32)) for k, v in half.items())
    assert rel(torch_taps(model, batch())["logits"],
               torch_taps(torch_dpn.from_canonical(widened), batch())["logits"]) == 0


def test_bfloat16_runs_and_agrees():
    model = torch_dpn.from_canonical(tensors("dpn68")).to(torch.bfloat16)
    with torch.no_grad():
        got = model(torch.from_numpy(batch()).to(torch.bfloat16)).float().numpy()
    want = reference("dpn68")["logits"]
    assert rel(got, want) < 0.1
    assert (got.argmax(1) == want.argmax(1)).all()


# -- GPU (skipped without one) -------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_fp32_matches_mxnet(arch):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = torch_dpn.from_canonical(tensors(arch)).to("cuda")
    with torch.no_grad():
        got = model.taps(torch.from_numpy(batch()).to("cuda"))
    want = reference(arch)
    assert first_failing({k: v.cpu().numpy() for k, v in got.items()}, want, 1e-5) is None


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_half_precision_top1(dtype):
    model = torch_dpn.from_canonical(tensors("dpn92")).to("cuda", getattr(torch, dtype))
    with torch.no_grad():
        got = model(torch.from_numpy(batch()).to("cuda", getattr(torch, dtype))).float().cpu().numpy()
    want = reference("dpn92")["logits"]
    assert np.isfinite(got).all()
    assert rel(got, want) < (1e-2 if dtype == "float16" else 5e-2)
    assert (got.argmax(1) == want.argmax(1)).all()
