"""Shared fixtures: seeded authors' checkpoints, seeded inputs, and the authors' graph as reference.

Fixtures (all cheap to reuse; expensive ones are cached for the session):

- ``seeded_checkpoint(name='dpn68', seed=0, classes=None, classifier=None, symbol=True)``
  -> Path of an authors'-format ``PREFIX-0000.params`` (with ``PREFIX-symbol.json`` when
  ``symbol`` and MXNet imports) written once per argument tuple into a session temp folder.
  Treat the files as read-only; copy them before changing anything.
- ``seeded_weights(name='dpn68', seed=0, classes=None, classifier=None)``
  -> OrderedDict canonical name -> np.ndarray (cached; do not modify in place).
- ``seeded_input(shape=(2, 3, 32, 32), seed=1)`` -> float32 N(0, 1) numpy batch.
- ``run_symbol(sym, tensors, **inputs)`` -> list of numpy outputs of an MXNet symbol run by an
  executor in inference mode (:func:`dpn_gluon.symbols.run_symbol`). Needs MXNet.
- ``rel_diff(a, b)`` -> max|a - b| / max|b|: the parity measure (``b`` is the reference).
- ``gluon_net(name, seed=0, mean_max=False, hybridize=False, classes=None, classifier=None,
  **DPN kwargs)`` -> a DPN with the seeded weights (a fresh network each call). Needs MXNet.
- ``paddleclas`` -> PaddleClas's own DPN (from the paddleclas 2.6.0 wheel) run by paddlepaddle
  in one process of its own for the session (tests/paddle_helpers.py); a skip, with the
  reason, without paddlepaddle or the wheel.

Names are architectures (``dpn92``) or checkpoints (``dpn68-extra``), as in
:func:`dpn_gluon.variants.resolve`.
"""
from __future__ import annotations

import numpy as np
import paddle_helpers
import pytest
from helpers import rel as _rel_diff
from helpers import weights as _weights

from dpn_gluon import checkpoint


@pytest.fixture(scope="session")
def rel_diff():
    return _rel_diff


@pytest.fixture(scope="session")
def seeded_weights():
    def make(name="dpn68", seed=0, classes=None, classifier=None):
        return _weights(name, seed, classes, classifier)
    return make


@pytest.fixture(scope="session")
def seeded_input():
    def make(shape=(2, 3, 32, 32), seed=1):
        return np.random.default_rng(seed).normal(size=shape).astype("float32")
    return make


@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory):
    cache = {}

    def make(name="dpn68", seed=0, classes=None, classifier=None, symbol=True):
        key = (name, seed, classes, classifier, symbol)
        if key not in cache:
            folder = tmp_path_factory.mktemp("ckpt-%s-%d" % (name, seed))
            cache[key] = checkpoint.write_seeded_checkpoint(
                folder / name, name=name, seed=seed, classes=classes, classifier=classifier,
                symbol=symbol)
        return cache[key]
    return make


@pytest.fixture(scope="session")
def run_symbol():
    pytest.importorskip("mxnet")
    from dpn_gluon.symbols import run_symbol as run
    return run


@pytest.fixture(scope="session")
def gluon_net():
    pytest.importorskip("mxnet")
    from dpn_gluon import model

    def make(name="dpn68", seed=0, mean_max=False, hybridize=False, classes=None,
             classifier=None, **kwargs):
        net = model.get_model(name, classes=classes, classifier=classifier, mean_max=mean_max,
                              **kwargs)
        model.set_canonical(net, _weights(name, seed, classes, classifier))
        if hybridize:
            net.hybridize()
        return net
    return make


@pytest.fixture(scope="session")
def paddleclas(tmp_path_factory):
    try:
        ref = paddle_helpers.start(tmp_path_factory.mktemp("paddleclas"))
    except paddle_helpers.Unavailable as e:
        pytest.skip("PaddleClas's reference: %s" % e)
    except paddle_helpers.WrongWheel as e:
        pytest.fail(str(e))
    yield ref
    ref.close()
