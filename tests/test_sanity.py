"""dpn_gluon.formats.sanity: NaN/Inf and BatchNorm variances <= 0, named, chunked, no copies."""
import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest

from dpn_gluon.errors import CheckpointError
from dpn_gluon.formats import mxparams, sanity


def _clean():
    rng = np.random.default_rng(0)
    return OrderedDict([
        ("arg:conv1_weight", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
        ("arg:conv1_bn_gamma", rng.uniform(0.5, 2, 8).astype(np.float32)),
        ("aux:conv1_bn_moving_mean", rng.standard_normal(8).astype(np.float32)),
        ("aux:conv1_bn_moving_var", rng.uniform(0.5, 2, 8).astype(np.float32)),
        ("fc.running_var", rng.uniform(0.5, 2, 4).astype(np.float16)),
        ("num_batches_tracked", np.array([-3], np.int64)),        # ints: no NaN check
    ])


def test_clean_checkpoint_has_no_problems():
    assert sanity.check_values(_clean()) == []


def test_nan_and_inf_named_and_counted():
    t = _clean()
    t["arg:conv1_weight"][0, 0, 0, :2] = np.nan
    t["arg:conv1_weight"][1, 1, 1, 1] = -np.inf
    t["fc.running_var"][3] = np.inf                              # float16 Inf
    problems = sanity.check_values(t)
    assert problems == ["arg:conv1_weight holds 2 NaN and 1 Inf of 216 values",
                        "fc.running_var holds 1 Inf of 4 values"]


@pytest.mark.parametrize("name", ["aux:stage1_bn_moving_var", "features.bn.running_var",
                                  "dpn0_batchnorm0_running_var"])
def test_non_positive_variance_named(name):
    t = _clean()
    t[name] = np.array([1.0, 0.0, -0.25, 2.0], np.float32)
    assert sanity.check_values(t) == [
        "%s (BatchNorm variance) has 2 of 4 values <= 0 (min -0.25)" % name]


def test_negative_values_elsewhere_are_fine():
    t = _clean()
    t["aux:conv1_bn_moving_mean"][:] = -1
    t["arg:conv1_bn_beta"] = -np.ones(8, np.float32)
    t["aux:conv1_bn_moving_var_scale"] = -np.ones(2, np.float32)   # not a variance name
    assert sanity.check_values(t) == []


def test_nan_variance_reported_once_as_nan():
    t = _clean()
    t["aux:conv1_bn_moving_var"][2] = np.nan
    t["aux:conv1_bn_moving_var"][5] = -1
    assert sanity.check_values(t) == [
        "aux:conv1_bn_moving_var holds 1 NaN of 8 values",
        "aux:conv1_bn_moving_var (BatchNorm variance) has 1 of 8 values <= 0 (min -1)"]


def test_chunk_boundaries_and_non_contiguous_views(monkeypatch):
    monkeypatch.setattr(sanity, "CHUNK", 7)
    a = np.ones((10, 13), np.float64)
    a[9, 12] = np.nan                                            # the last element
    a[0, 0] = np.inf                                             # the first
    a[4, 6] = np.nan                                             # across a chunk boundary
    view = a[:, ::2]                                             # not contiguous: 9, 12 and 0, 0 in it
    fortran = np.asfortranarray(a)
    assert sanity.check_values({"a": a, "v": view, "f": fortran, "t": a.T}) == [
        "a holds 2 NaN and 1 Inf of 130 values", "v holds 2 NaN and 1 Inf of 70 values",
        "f holds 2 NaN and 1 Inf of 130 values", "t holds 2 NaN and 1 Inf of 130 values"]


def test_read_only_mmap_tensors_checked_without_copies(tmp_path):
    big = np.zeros(8 << 20, np.float32)                          # 32 MiB
    big[-1] = np.nan
    var = np.full(3 << 20, 0.5, np.float32)
    var[123] = 0
    path = tmp_path / "big.params"
    path.write_bytes(mxparams.dumps({"arg:w": big, "aux:bn_moving_var": var}))
    tensors = mxparams.load(path, mmap=True)
    assert not tensors["arg:w"].flags.writeable
    tracemalloc.start()
    try:
        problems = sanity.check_values(tensors)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problems == ["arg:w holds 1 NaN of 8388608 values",
                        "aux:bn_moving_var (BatchNorm variance) has 1 of 3145728 values <= 0 (min 0)"]
    assert peak < 4 << 20, "check_values allocated %d bytes for a 44 MiB checkpoint" % peak


def test_enforce_strict_raises_one_line_naming_tensors():
    problems = ["t%d holds 1 NaN of 4 values" % i for i in range(12)]
    with pytest.raises(CheckpointError) as err:
        sanity.enforce(problems, strict=True, source="ckpt.params")
    msg = str(err.value)
    assert msg.startswith("ckpt.params: refused (--strict): 12 tensors") and "\n" not in msg
    assert "t0 holds 1 NaN" in msg and "t9 holds" in msg and "(2 more)" in msg
    assert "t10 holds" not in msg


def test_enforce_warns_each_problem_when_not_strict():
    got = []
    sanity.enforce(["a holds 1 NaN of 2 values", "b (BatchNorm variance) has 1 of 2 values <= 0 (min 0)"],
                   strict=False, warn=got.append, source="x.params")
    assert got == ["x.params: a holds 1 NaN of 2 values",
                   "x.params: b (BatchNorm variance) has 1 of 2 values <= 0 (min 0)"]
    many = []
    sanity.enforce(["p%d" % i for i in range(15)], strict=False, warn=many.append)
    assert len(many) == sanity.SHOWN + 1 and many[-1].endswith("5 more tensors with wrong values")


def test_enforce_default_warning_and_no_problems():
    with pytest.warns(sanity.CheckpointWarning, match="x.params: a holds 1 NaN"):
        sanity.enforce(["a holds 1 NaN of 2 values"], strict=False, source="x.params")
    sanity.enforce([], strict=True)                              # nothing to refuse
