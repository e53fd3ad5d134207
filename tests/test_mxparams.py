"""The pure-numpy .params codec against MXNet 1.9.1's own reader and writer.

Files written by ``mx.nd.save`` read back identically (values, dtype, shape, key order);
files written by :mod:`dpn_gluon.formats.mxparams` are byte-identical to ``mx.nd.save``'s
and load with ``mx.nd.load``; hand-built V1 and pre-V1 (legacy) arrays, laid out as
ndarray.cc's ``LegacyLoad`` reads them, give what ``mx.nd.load`` gives.
"""
import struct
from collections import OrderedDict

import numpy as np
import pytest

from dpn_gluon.errors import CheckpointError
from dpn_gluon.formats import mxparams

mx = pytest.importorskip("mxnet")
pytestmark = pytest.mark.mxnet

# Every dtype MXNet 1.9.1's Python API can save (int16/uint16/uint32/uint64/bfloat16 cannot).
DTYPES = ["float16", "float32", "float64", "uint8", "int8", "int32", "int64", "bool"]
SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2), (1, 2, 3, 2, 2)]


def _values(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if np.dtype(dtype).kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _mx_save(tmp_path, arrays, name="mx.params"):
    path = tmp_path / name
    if isinstance(arrays, dict):
        mx.nd.save(str(path), {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
    else:
        mx.nd.save(str(path), [mx.nd.array(v, dtype=v.dtype) for v in arrays])
    return path


def _assert_same(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mx_saved_dict_reads_back(tmp_path, dtype):
    arrays = OrderedDict(("arg:t%d_%s" % (i, "x" * i), _values(dtype, s, i))
                         for i, s in enumerate(SHAPES))
    arrays = OrderedDict(reversed(list(arrays.items())))  # file order is not sorted order
    path = _mx_save(tmp_path, arrays)
    theirs = mx.nd.load(str(path))
    for mmap in (False, True):
        got = mxparams.load(path, mmap=mmap)
        assert isinstance(got, OrderedDict) and list(got) == list(arrays)
        for k in arrays:
            _assert_same(got[k], arrays[k])
            _assert_same(got[k], theirs[k].asnumpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_mx_saved_list_reads_back(tmp_path, dtype):
    arrays = [_values(dtype, s, 10 + i) for i, s in enumerate(SHAPES)]
    got = mxparams.load(_mx_save(tmp_path, arrays))
    assert isinstance(got, list) and len(got) == len(arrays)
    for g, a in zip(got, arrays):
        _assert_same(g, a)


@pytest.mark.parametrize("container", ["dict", "list"])
def test_written_file_is_byte_identical_to_mx_save(tmp_path, container):
    arrays = OrderedDict(("p%d:%s" % (i, dt), _values(dt, SHAPES[i % len(SHAPES)], i))
                         for i, dt in enumerate(DTYPES))
    if container == "list":
        arrays = list(arrays.values())
    mine = tmp_path / "mine.params"
    mine.write_bytes(mxparams.dumps(arrays))
    assert mine.read_bytes() == _mx_save(tmp_path, arrays).read_bytes()
    loaded = mx.nd.load(str(mine))
    if container == "dict":
        assert list(loaded) == list(arrays)
        pairs = [(loaded[k].asnumpy(), v) for k, v in arrays.items()]
    else:
        pairs = [(x.asnumpy(), v) for x, v in zip(loaded, arrays)]
    for got, want in pairs:
        _assert_same(got, want)


def test_big_endian_and_non_contiguous_input_written_as_mx_would(tmp_path):
    a = _values("float32", (4, 6), 3)
    mine = mxparams.dumps(OrderedDict([("a", a.astype(">f4")), ("b", a.T), ("c", a[:, ::2])]))
    want = _mx_save(tmp_path, OrderedDict([("a", a), ("b", np.ascontiguousarray(a.T)),
                                           ("c", np.ascontiguousarray(a[:, ::2]))])).read_bytes()
    assert mine == want


def test_empty_containers(tmp_path):
    path = tmp_path / "e.params"
    mx.nd.save(str(path), {})
    assert mx.nd.load(str(path)) == []
    assert mxparams.load(path) == []
    assert path.read_bytes() == mxparams.dumps({}) == mxparams.dumps([])


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3), ()], ids=str)
def test_np_shape_semantics_zero_size_and_scalars(tmp_path, shape):
    """Under np_shape MXNet writes V3 arrays, its only way to save 0-d or zero-size arrays."""
    path = tmp_path / "np.params"
    value = (np.arange(int(np.prod(shape))) + 3).astype(np.float32).reshape(shape)
    with mx.util.np_shape(True):
        mx.nd.save(str(path), {"z": mx.nd.array(value)})
    assert struct.unpack_from("<I", path.read_bytes(), 24)[0] == mxparams.V3_MAGIC
    _assert_same(mxparams.load(path)["z"], value)


def test_zero_size_v2_array_loads_in_mxnet(tmp_path):
    path = tmp_path / "z.params"
    path.write_bytes(mxparams.dumps({"z": np.zeros((2, 0), np.float32)}))
    assert mx.nd.load(str(path))["z"].shape == (2, 0)
    assert mxparams.load(path)["z"].shape == (2, 0)


@pytest.mark.parametrize("stype", ["row_sparse", "csr"])
def test_sparse_storage_written_by_mxnet_is_refused(tmp_path, stype):
    path = tmp_path / "sparse.params"
    sparse = mx.nd.array(np.eye(4, dtype=np.float32)).tostype(stype)
    mx.nd.save(str(path), OrderedDict([("w", mx.nd.ones((2, 2))), ("s", sparse)]))
    with pytest.raises(CheckpointError, match=r"sparse.params: .*array 1 has %s storage" % stype):
        mxparams.load(path)


def _file(records, names=()):
    out = struct.pack("<QQQ", mxparams.LIST_MAGIC, 0, len(records)) + b"".join(records)
    out += struct.pack("<Q", len(names))
    for n in names:
        out += struct.pack("<Q", len(n)) + n.encode()
    return out


def _legacy(arr):
    """Pre-V1: uint32 ndim (in place of the magic), uint32 dims, context, type flag, data."""
    return (struct.pack("<I%dI" % arr.ndim, arr.ndim, *arr.shape)
            + struct.pack("<iii", 1, 0, mxparams.FLAGS[arr.dtype]) + arr.tobytes())


def _v1(arr):
    """V1: magic 0xF993fac8, int32 ndim, int64 dims, context (here gpu(1)), type flag, data."""
    return (struct.pack("<Ii%dq" % arr.ndim, mxparams.V1_MAGIC, arr.ndim, *arr.shape)
            + struct.pack("<iii", 2, 1, mxparams.FLAGS[arr.dtype]) + arr.tobytes())


LEGACY_ARRAYS = [
    _values("float32", (8, 3, 3, 3), 1), _values("float64", (5,), 2), _values("float16", (2, 7), 3),
    _values("uint8", (4, 2, 2), 4), _values("int32", (3, 1, 1, 1, 2), 5), _values("int64", (1,), 6),
    _values("int8", (6, 1), 7), _values("bool", (3,), 8), np.zeros((2, 0), np.float32),
    np.array(2.5, np.float32),
]


@pytest.mark.parametrize("encode", [_legacy, _v1], ids=["legacy", "v1"])
@pytest.mark.parametrize("named", [True, False], ids=["dict", "list"])
def test_legacy_formats_agree_with_mxnet(tmp_path, encode, named):
    names = ["arg:a%d" % i for i in range(len(LEGACY_ARRAYS))] if named else []
    path = tmp_path / "old.params"
    path.write_bytes(_file([encode(a) for a in LEGACY_ARRAYS], names))
    theirs = mx.nd.load(str(path))
    ours = mxparams.load(path)
    assert type(ours) is (OrderedDict if named else list)
    if named:
        assert list(ours) == list(theirs) == names
        theirs, ours = [theirs[k] for k in names], [ours[k] for k in names]
    for got, mxa, want in zip(ours, theirs, LEGACY_ARRAYS):
        _assert_same(got, want)
        assert got.dtype == mxa.dtype and got.size == mxa.size
        if got.ndim:             # MXNet shows a 0-d array as shape (), asnumpy() as (1,)
            assert got.shape == mxa.shape
        np.testing.assert_array_equal(got.ravel(), mxa.asnumpy().ravel())


def test_mixed_versions_in_one_file(tmp_path):
    a, b, c = LEGACY_ARRAYS[:3]
    path = tmp_path / "mixed.params"
    v2 = mxparams.dumps([c])[24:-8]
    path.write_bytes(_file([_legacy(a), _v1(b), v2], ["x", "y", "z"]))
    ours, theirs = mxparams.load(path), mx.nd.load(str(path))
    for k, want in zip("xyz", (a, b, c)):
        _assert_same(ours[k], want)
        _assert_same(theirs[k].asnumpy(), want)


def test_writer_refuses_what_mxnet_1x_cannot_read():
    with pytest.raises(CheckpointError, match="int16"):
        mxparams.dumps({"a": np.zeros(2, np.int16)})
    with pytest.raises(CheckpointError, match="0-d"):
        mxparams.dumps({"a": np.float32(1)})
    with pytest.raises(CheckpointError, match="complex"):
        mxparams.dumps({"a": np.zeros(2, np.complex64)})


def test_split_arg_aux_matches_load_checkpoint(tmp_path):
    prefix = str(tmp_path / "net")
    net = mx.sym.BatchNorm(mx.sym.FullyConnected(mx.sym.Variable("data"), num_hidden=3,
                                                 name="fc"), name="bn")
    arg = {"fc_weight": mx.nd.array(_values("float32", (3, 4), 1)),
           "fc_bias": mx.nd.array(_values("float32", (3,), 2)),
           "bn_gamma": mx.nd.array(_values("float32", (3,), 4)), "bn_beta": mx.nd.zeros(3)}
    aux = {"bn_moving_mean": mx.nd.array(_values("float32", (3,), 3)),
           "bn_moving_var": mx.nd.array(np.array([0.5, 1, 2], np.float32))}
    mx.model.save_checkpoint(prefix, 3, net, arg, aux)
    _, want_arg, want_aux = mx.model.load_checkpoint(prefix, 3)
    got_arg, got_aux = mxparams.split_arg_aux(mxparams.load(prefix + "-0003.params"))
    assert sorted(got_arg) == sorted(want_arg) and sorted(got_aux) == sorted(want_aux)
    for got, want in ((got_arg, want_arg), (got_aux, want_aux)):
        for k in want:
            _assert_same(got[k], want[k].asnumpy())
