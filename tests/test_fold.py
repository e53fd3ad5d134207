"""Inference-mode BatchNorm folding (dpn_gluon.model.fold_batchnorm) against the unfolded DPN.

The reference is the normal Gluon DPN (itself checked against the authors' graphs in
test_model.py) on seeded weights whose BatchNorm gamma, beta and moving statistics are all
random, so a fold that drops a BN, swaps gamma/beta or uses another epsilon moves the logits
far beyond the tolerance (the negative control below shows an epsilon change does).
"""
import numpy as np
import pytest

from dpn_gluon import variants
from dpn_gluon.checkpoint import seeded_tensors

mx = pytest.importorskip("mxnet")
from mxnet.gluon import nn

from dpn_gluon import model

TOL = 1e-5   # max |folded - unfolded| / max |unfolded| over the logits


def _rel(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _count_bn(block):
    n = int(isinstance(block, nn.BatchNorm))
    return n + sum(_count_bn(c) for c in block._children.values())


@pytest.fixture(scope="module")
def data():
    return mx.nd.array(np.random.default_rng(7).normal(size=(2, 3, 32, 32)).astype("float32"))


@pytest.mark.parametrize("name", list(variants.ARCHS))
def test_folded_logits_match_unfolded(name, data):
    net = model.get_model(name)
    model.set_canonical(net, seeded_tensors(name, seed=3))
    names_before = list(net.collect_params().keys())
    ref = net(data).asnumpy()

    folded = model.fold_batchnorm(net)
    imperative = folded(data).asnumpy()
    folded.hybridize(static_alloc=True, static_shape=True)
    hybrid = folded(data).asnumpy()
    hybrid_again = folded(data).asnumpy()

    assert _rel(imperative, ref) < TOL
    assert _rel(hybrid, ref) < TOL
    np.testing.assert_array_equal(hybrid, hybrid_again)
    # the normal model is untouched: same names, same logits
    assert list(net.collect_params().keys()) == names_before
    np.testing.assert_array_equal(net(data).asnumpy(), ref)
    # stem BN, and c3x3-b's and c1x1-c's BN in every block, are gone
    blocks = len(list(net.arch.blocks()))
    assert _count_bn(folded) == _count_bn(net) - 1 - 2 * blocks


def test_folded_hybridized_matches_hybridized_unfolded(data):
    net = model.get_model("dpn92")
    model.set_canonical(net, seeded_tensors("dpn92", seed=4))
    folded = model.fold_batchnorm(net)
    net.hybridize(static_alloc=True, static_shape=True)
    folded.hybridize(static_alloc=True, static_shape=True)
    assert _rel(folded(data).asnumpy(), net(data).asnumpy()) < TOL


def test_wrong_epsilon_is_detected(data):
    """Negative control: folding a net built with Gluon's default epsilon 1e-5 instead of
    the authors' 1e-3 must miss the reference by far more than the tolerance."""
    tensors = seeded_tensors("dpn68", seed=3)
    ref_net = model.get_model("dpn68")
    model.set_canonical(ref_net, tensors)
    wrong = model.get_model("dpn68", epsilon=1e-5)
    model.set_canonical(wrong, tensors)
    assert _rel(model.fold_batchnorm(wrong)(data).asnumpy(), ref_net(data).asnumpy()) > 100 * TOL


def test_mean_max_head_is_kept():
    net = model.get_model("dpn68", mean_max=True)
    model.set_canonical(net, seeded_tensors("dpn68", seed=5))
    x = mx.nd.array(np.random.default_rng(8).normal(size=(1, 3, 224, 224)).astype("float32"))
    folded = model.fold_batchnorm(net)
    assert folded.classifier.mean_max
    assert _rel(folded(x).asnumpy(), net(x).asnumpy()) < TOL
