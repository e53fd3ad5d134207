"""The name rules against the recorded timm keys, both directions, and their failure modes.

Independent reference: tests/data/timm_state_dict_keys.json, recorded from
``timm.create_model(NAME).state_dict()`` (timm 1.0.31), not derived from this package.
"""
import json
from pathlib import Path

import pytest

from dpn_gluon import variants
from dpn_gluon.errors import KeyMismatch
from dpn_gluon.formats import names

#: timm 1.0.31's keys and shapes, recorded (docs/reference/README.md).
TIMM_KEYS = Path(__file__).parent / "data" / "timm_state_dict_keys.json"


def timm_reference():
    return json.loads(TIMM_KEYS.read_text())["models"]


def unit(arch):
    return "b" if arch.b else "standard"


@pytest.mark.parametrize("arch", list(variants.ARCHS))
def test_expected_keys_equal_timm(arch):
    a = variants.ARCHS[arch]
    want = [(k, tuple(shape)) for k, shape, _ in timm_reference()[arch]]
    got = names.expected_keys(variants.tensor_spec(a, 1000, "fc6"), "timm", unit(a), "fc6")
    assert list(got.items()) == want


@pytest.mark.parametrize("ckpt", list(variants.CHECKPOINTS))
@pytest.mark.parametrize("via", ["timm", "gluon"])
@pytest.mark.parametrize("classifier", variants.CLASSIFIERS)
def test_round_trip_is_identity(ckpt, via, classifier):
    arch, classes, _ = variants.resolve(ckpt)
    spec = variants.tensor_spec(arch, classes, classifier)
    there = names.rename_all(spec, "mxnet", via, unit(arch), classifier)
    assert len({new for new, _ in there.values()}) == len(spec)
    back = names.rename_all([new for new, _ in there.values()], via, "mxnet", unit(arch), classifier)
    assert [new for new, _ in back.values()] == list(spec)


def test_timm_counters_are_dropped_on_the_way_back():
    a = variants.ARCHS["dpn68"]
    keys = [k for k, _, _ in timm_reference()["dpn68"]]
    back = names.rename_all(keys, "timm", "mxnet", "standard", "fc6-1k")
    assert list(back.values())[-2][0] == "fc6-1k_weight"
    assert [new for new, _ in back.values()] == list(variants.tensor_spec(a, 1000, "fc6-1k"))


def test_unknown_key_is_listed():
    spec = list(variants.tensor_spec(variants.ARCHS["dpn68"]))
    with pytest.raises(KeyMismatch) as err:
        names.rename_all(spec + ["conv9_x__1_bogus_weight", "fc7_weight"], "mxnet", "timm")
    assert err.value.unexpected == ["conv9_x__1_bogus_weight", "fc7_weight"]
    assert "conv9_x__1_bogus_weight" in str(err.value)


def test_colliding_keys_are_listed():
    # fc6 and fc6-1k both become classifier.weight.
    with pytest.raises(KeyMismatch) as err:
        names.rename_all(["fc6_weight", "fc6-1k_weight"], "mxnet", "timm")
    assert len(err.value.unexpected) == 1
    assert "fc6_weight and fc6-1k_weight -> classifier.weight" in err.value.unexpected[0]


def test_b_unit_keys_given_as_standard_are_listed():
    b_spec = list(variants.tensor_spec(variants.ARCHS["dpn68b"]))
    with pytest.raises(KeyMismatch) as err:
        names.rename_all(b_spec, "mxnet", "timm", unit="standard")
    b_only = [k for k in b_spec if "c1x1-c1__" in k or "c1x1-c2__" in k or "c1x1-c__bn_" in k]
    assert b_only and sorted(err.value.unexpected) == sorted(b_only)
