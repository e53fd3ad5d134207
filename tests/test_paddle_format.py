"""PaddleClas's .pdparams (dpn_gluon.formats.paddle), checked against numpy and recorded facts.

Still to come (issue 18): the same against PaddleClas's own DPN code run by PaddlePaddle."""
import io
import os
import pickle

import numpy as np
import pytest
from helpers import weights

from dpn_gluon import variants
from dpn_gluon.errors import CheckpointError
from dpn_gluon.formats import paddle


def _file(arch_name):
    w = weights(arch_name, 0, None, None)
    fc = next(k[:-len("_weight")] for k in w if k.startswith("fc6") and k.endswith("_weight"))
    arch = variants.ARCHS[arch_name]
    buf = io.BytesIO()
    paddle.dump_state(buf, paddle.to_paddle(arch, fc, w), paddle.structure_map(arch))
    return w, fc, buf.getvalue()


def _affine(gamma, var, eps):
    return np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)


# PaddleClas's DPN68 holds 361 tensors and DPN92 481 (counted in its state dict; issue 18)
@pytest.mark.parametrize("arch_name,count", [("dpn68", 361), ("dpn68b", 361), ("dpn92", 481)])
def test_round_trip_keeps_every_batchnorm(arch_name, count):
    w, fc, data = _file(arch_name)
    raw = paddle.load_state("x.pdparams", io.BytesIO(data), 2000)
    assert len(raw) == count
    # each BN's gamma / sqrt(var + eps) under Paddle's 1e-5 equals the authors' under 1e-3
    for name, gamma in w.items():
        if name.endswith("_gamma"):
            stem = name[: -len("_gamma")]
            structured = next(s for c, s, _ in paddle.name_table(variants.ARCHS[arch_name], fc)
                              if c == name)
            var = raw[structured.replace(".weight", "._variance")]
            np.testing.assert_allclose(_affine(raw[structured], var, 1e-5),
                                       _affine(gamma, w[stem + "_moving_var"], 1e-3),
                                       rtol=1e-6, err_msg=name)
    arch, classes, back = paddle.from_paddle(raw, "x.pdparams")
    assert classes == 1000 and arch.name == ("dpn68" if arch_name == "dpn68b" else arch_name)
    np.testing.assert_array_equal(raw["out.weight"], w[fc + "_weight"].T)
    if arch_name == "dpn68b":     # the b unit's two convs, concatenated exactly
        c = raw["dpn1.c1x1_c_func._conv.weight"]
        np.testing.assert_array_equal(c, np.concatenate([w["conv2_x__1_c1x1-c1__conv_weight"],
                                                         w["conv2_x__1_c1x1-c2__conv_weight"]]))
    else:
        assert set(back) == {k if not k.startswith(fc + "_") else "fc6" + k[len(fc):] for k in w}


def test_parameter_names_are_read_too():
    w, fc, data = _file("dpn68")
    raw = paddle.load_state("x", io.BytesIO(data), 2000)
    by_param = {paddle.structure_map(variants.ARCHS["dpn68"])[k]: v for k, v in raw.items()}
    arch, classes, back = paddle.from_paddle(by_param, "x")
    _, _, direct = paddle.from_paddle(raw, "x")
    assert arch.name == "dpn68" and all(np.array_equal(back[k], direct[k]) for k in direct)


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    data = pickle.dumps({"out.weight": _Shell(marker)}, protocol=4)
    with pytest.raises(CheckpointError, match="names posix.system"):
        paddle.load_state("evil.pdparams", io.BytesIO(data), 10)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [10, 1000, -7])
def test_a_truncated_file_is_one_line(cut):
    _, _, data = _file("dpn68")
    with pytest.raises(CheckpointError) as e:
        paddle.load_state("cut.pdparams", io.BytesIO(data[:cut]), 2000)
    assert "\n" not in str(e.value)
