"""Hostile and broken MXNet .params files: the reader refuses each with one clear line.

A table of bad inputs (empty, truncated at 10 points, random bytes, wrong magic, lying
counts and lengths, a 2^40-element shape, negative sizes, sparse storage, unknown dtypes,
name mismatches, trailing garbage, a directory, a FIFO, a missing path) each must give
CheckpointError naming the file, through both the copying and the mmap reader; and a
bounded, deterministic hypothesis fuzz run over the committed seed corpus
(fuzz/corpus/params, written by MXNet) checks that any input parses or gives
CheckpointError, within a memory bound. Needs no MXNet.
"""
import os
import struct
import time
import tracemalloc
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from dpn_gluon.errors import CheckpointError
from dpn_gluon.formats import mxparams

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus" / "params"
SEEDS = sorted(CORPUS.glob("*.params"))

V2 = mxparams.V2_MAGIC
HEAD = struct.pack("<QQ", mxparams.LIST_MAGIC, 0)


def _valid():
    """Two float32 arrays, named: the file every truncation and lie below starts from."""
    rng = np.random.default_rng(0)
    return mxparams.dumps(OrderedDict([("arg:conv_weight", rng.standard_normal((2, 3, 3)).astype("f4")),
                                       ("aux:bn_moving_var", np.ones(5, "f4"))]))


VALID = _valid()
# Offsets in VALID: header 0-24; array 0 at 24: magic, stype, ndim (32), dims (36-60),
# context (60), flag (68), data (72-144); array 1 at 144: dims (156), data (176-196);
# name count at 196, then (length, bytes) per name.
NAMES_AT = 196


def _array(shape, flag=0, magic=V2, stype=0, ndim=None, data=None):
    ndim = len(shape) if ndim is None else ndim
    body = struct.pack("<Iii", magic, stype, ndim) + struct.pack("<%dq" % len(shape), *shape)
    body += struct.pack("<iii", 1, 0, flag)
    return body + (data if data is not None else b"")


def _file(records, names=(), count=None, name_count=None, lengths=None):
    out = HEAD + struct.pack("<Q", len(records) if count is None else count) + b"".join(records)
    out += struct.pack("<Q", len(names) if name_count is None else name_count)
    for i, n in enumerate(names):
        raw = n.encode() if isinstance(n, str) else n
        out += struct.pack("<Q", len(raw) if lengths is None else lengths[i]) + raw
    return out


def _one(shape=(2,), **kw):
    return _file([_array(shape, **kw)], ["w"])


def _set(buf, offset, fmt, *values):
    out = bytearray(buf)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


TRUNCATIONS = [  # (offset, where)
    (4, "header magic"), (20, "array count"), (26, "array 0 magic"), (34, "array 0 ndim"),
    (44, "array 0 shape"), (64, "array 0 context"), (100, "array 0 data"), (160, "array 1 shape"),
    (NAMES_AT + 4, "name count"), (NAMES_AT + 12, "name 0 length"), (len(VALID) - 3, "last name"),
]

RANDOM = np.random.default_rng(7)

BAD = [  # (id, file bytes, regex the message must match after "<path>: ")
    ("empty-file", b"", "shorter than the 16-byte header"),
    *[("truncated-at-%d-%s" % (at, where.replace(" ", "-")), VALID[:at],
       "needs|shorter than|more than the file" if at >= 16 else "shorter than")
      for at, where in TRUNCATIONS],
    ("random-bytes-100", RANDOM.bytes(100), "wrong magic"),
    ("random-bytes-64k", RANDOM.bytes(1 << 16), "wrong magic"),
    ("random-bytes-after-header", HEAD + RANDOM.bytes(4096), "more than the file|magic|needs"),
    ("wrong-magic", b"\x13" + VALID[1:], "wrong magic 0x113"),
    ("nonzero-reserved", _set(VALID, 8, "<Q", 1), "wrong magic"),
    ("numpy-npy-file", b"\x93NUMPY\x01\x00" + bytes(120), "wrong magic"),
    ("lying-array-count-2^63", _set(VALID, 16, "<Q", 1 << 63), "array count says 9223372036854775808"),
    ("lying-array-count-3", _set(VALID, 16, "<Q", 3), "array 2 (has unsupported type|magic needs)"),
    ("lying-name-count-2^64-1", _set(VALID, NAMES_AT, "<Q", (1 << 64) - 1), "name count says"),
    ("lying-name-length", _set(VALID, NAMES_AT + 8, "<Q", 1 << 40), "name 0 length says"),
    ("lying-name-length-short", _set(VALID, NAMES_AT + 8, "<Q", 3), "name 1 length|unexpected bytes"),
    ("shape-2^40-elements", _one((1 << 20, 1 << 20)), "array 0 of shape \\(1048576, 1048576\\) needs more bytes"),
    ("shape-product-overflows-int64", _one((1 << 62, 1 << 62), flag=6), "needs more bytes"),
    ("zero-size-with-absurd-dims", _one((0, 1 << 62, 1 << 62)), "needs more bytes"),
    ("negative-ndim", _one((), ndim=-5), "array 0 has ndim -5"),
    ("ndim-2^31-1", _one((), ndim=(1 << 31) - 1), "array 0 has ndim 2147483647"),
    ("negative-dimension", _one((3, -4)), "negative dimension in shape \\(3, -4\\)"),
    ("none-array-ndim-0", _file([struct.pack("<Iii", V2, 0, 0)], ["w"]), "array 0 has no shape"),
    ("sparse-row_sparse", _one(stype=1), "array 0 has row_sparse storage"),
    ("sparse-csr", _one(stype=2), "array 0 has csr storage"),
    ("unknown-storage-type", _one(stype=-7), "unknown \\(-7\\) storage"),
    ("dtype-bfloat16", _one(flag=12, data=bytes(4)), "unsupported type bfloat16"),
    ("dtype-flag-99", _one(flag=99, data=bytes(8)), "unsupported type flag 99"),
    ("dtype-flag-negative", _one(flag=-1, data=bytes(8)), "unsupported type flag -1"),
    ("legacy-ndim-too-large", _file([struct.pack("<I", 4096)], ["w"]), "unknown array magic 0x00001000"),
    ("names-count-mismatch", _file([_array((1,), data=bytes(4))] * 2, ["a"]), "1 names for 2 arrays"),
    ("duplicate-names", _file([_array((1,), data=bytes(4))] * 2, ["a", "a"]), "duplicate array name 'a'"),
    ("name-not-utf8", _one(data=bytes(8))[:-1] + b"\xff", "name 0 is not UTF-8"),
    ("trailing-garbage", VALID + b"\0" * 7, "7 unexpected bytes after the names"),
    ("data-short-by-one-byte", _file([_array((3,), data=bytes(11))], []), "needs more bytes|needs 8 bytes"),
]


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("raw, problem", [pytest.param(raw, p, id=i) for i, raw, p in BAD])
def test_bad_params_file_refused(tmp_path, raw, problem, mmap):
    path = tmp_path / "bad.params"
    path.write_bytes(raw)
    with pytest.raises(CheckpointError, match=problem) as err:
        mxparams.load(path, mmap=mmap)
    msg = str(err.value)
    assert msg.startswith(str(path) + ": ") and "\n" not in msg
    assert path.read_bytes() == raw                     # the input is never modified


def test_the_table_starts_from_a_valid_file():
    """Control: the unmutated inputs parse, so the table tests the mutation, not a typo."""
    assert list(mxparams.loads(VALID)) == ["arg:conv_weight", "aux:bn_moving_var"]
    assert mxparams.loads(VALID)["aux:bn_moving_var"].shape == (5,)
    assert struct.unpack_from("<Q", VALID, NAMES_AT) == (2,)
    assert mxparams.loads(_one(data=bytes(8)))["w"].shape == (2,)
    assert mxparams.loads(_file([_array((1,), data=bytes(4))] * 2, ["a", "b"]))["b"].shape == (1,)


@pytest.mark.parametrize("kind", ["directory", "nonexistent", "fifo", "char-device", "nul-in-path"])
def test_bad_paths_refused(tmp_path, kind):
    path = {"directory": tmp_path, "nonexistent": tmp_path / "missing.params",
            "fifo": tmp_path / "fifo.params", "char-device": Path("/dev/zero"),
            "nul-in-path": tmp_path / "a\0b.params"}[kind]
    if kind == "fifo":
        os.mkfifo(path)          # opening it blocking would hang with no writer
    if kind == "char-device" and not path.exists():
        pytest.skip("no /dev/zero")
    problem = {"directory": "Is a directory", "nonexistent": "No such file",
               "fifo": "not a regular file", "char-device": "not a regular file",
               "nul-in-path": "null byte"}[kind]
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match="cannot read: .*%s" % problem) as err:
            mxparams.load(path, mmap=mmap)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_input_opened_read_only_and_mmap_arrays_read_only(tmp_path, monkeypatch):
    path = tmp_path / "in.params"
    path.write_bytes(VALID)
    before = path.stat()
    flags = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, f, *a: flags.append(f) or real_open(p, f, *a))
    mapped = mxparams.load(path, mmap=True)
    copied = mxparams.load(path)
    assert flags and all(f & os.O_ACCMODE == os.O_RDONLY for f in flags)
    arr = mapped["arg:conv_weight"]
    assert not arr.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        arr[0, 0, 0] = 1
    copied["arg:conv_weight"][0, 0, 0] = 1              # copies are the caller's own
    assert path.read_bytes() == VALID and path.stat().st_mtime_ns == before.st_mtime_ns


# --- fuzzing ------------------------------------------------------------------------------

try:
    import hypothesis
    from hypothesis import strategies as st
except ImportError:                          # the table above still runs
    hypothesis = None

#: Examples per CI run (two executions each): about 30 s on a 2-core machine (<= 60 s).
#: Long runs: fuzz/fuzz_params.py (atheris).
FUZZ_EXAMPLES = int(os.environ.get("DPN_FUZZ_EXAMPLES", "10000"))
MEMORY_BOUND = lambda size: 4 * size + (8 << 20)  # noqa: E731  (tracemalloc peak, bytes)
INTERESTING = [0, 1, 2, 3, 7, 8, 16, 24, 32, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1,
               V2, mxparams.V1_MAGIC, mxparams.V3_MAGIC, mxparams.LIST_MAGIC]



def _mutations():
    """Strategy: 1-6 edits of a seed (offsets are taken modulo the current length)."""
    at = st.integers(0, 1 << 20)
    return st.lists(st.one_of(
        st.tuples(st.just("flip"), at, st.integers(0, 7)),
        st.tuples(st.just("byte"), at, st.integers(0, 255)),
        st.tuples(st.just("int"), at, st.sampled_from(["<I", "<i", "<Q", "<q"]),
                  st.sampled_from(INTERESTING + [-1, -2, -(1 << 31), -(1 << 63)])),
        st.tuples(st.just("truncate"), at),
        st.tuples(st.just("insert"), at, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), at, st.integers(1, 64)),
        st.tuples(st.just("repeat"), at, st.integers(1, 128)),
    ), min_size=1, max_size=6)


def _mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for m in mutations:
        at = m[1] % (len(buf) + 1)
        if m[0] == "flip" and at < len(buf):
            buf[at] ^= 1 << m[2]
        elif m[0] == "byte" and at < len(buf):
            buf[at] = m[2]
        elif m[0] == "int":
            fmt, value = m[2], m[3]
            size = struct.calcsize(fmt)
            lo, hi = (-(1 << (8 * size - 1)), 1 << (8 * size - 1)) if fmt.islower() else (0, 1 << 8 * size)
            if at + size <= len(buf):
                buf[at:at + size] = struct.pack(fmt, (value - lo) % (hi - lo) + lo)
        elif m[0] == "truncate":
            del buf[at:]
        elif m[0] == "insert":
            buf[at:at] = m[2]
        elif m[0] == "delete":
            del buf[at:at + m[2]]
        elif m[0] == "repeat":
            buf[at:at] = buf[at:at + m[2]]
    return bytes(buf)


def _check_one(data: bytes, stats: dict) -> None:
    """The property: parsed (arrays inside the input) or CheckpointError; memory bounded."""
    for copy in (False, True):
        start = time.perf_counter()
        tracemalloc.start()                  # traces only what the reader allocates
        try:
            result = mxparams.loads(data, "<fuzz>", copy=copy)
        except CheckpointError as e:
            assert "\n" not in str(e)
            stats["refused"] += 1
        else:
            arrays = list(result.values()) if isinstance(result, dict) else result
            assert sum(a.nbytes for a in arrays) <= len(data)
            stats["parsed"] += 1
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < MEMORY_BOUND(len(data))
        stats["peak"] = max(stats["peak"], peak)
        assert time.perf_counter() - start < 2.0
        stats["executions"] += 1


def test_seed_corpus_is_present_and_valid():
    assert len(SEEDS) >= 8, "run fuzz/make_corpus.py"
    for seed in SEEDS:
        mxparams.load(seed)
    names = {p.stem for p in SEEDS}
    assert {"float16", "float32", "float64", "uint8", "int8", "int32", "int64", "bool"} <= names


def test_fuzz_params_reader(capsys):
    """Mutations of the seed corpus: any input parses or gives CheckpointError (<= 60 s)."""
    if hypothesis is None:
        pytest.skip("hypothesis is not installed (pip install hypothesis)")
    seeds = [p.read_bytes() for p in SEEDS]
    stats = {"executions": 0, "parsed": 0, "refused": 0, "peak": 0}

    @hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                         database=None, suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.sampled_from(range(len(seeds))), _mutations())
    def fuzz(seed, mutations):
        _check_one(_mutate(seeds[seed], mutations), stats)

    start = time.perf_counter()
    fuzz()
    with capsys.disabled():
        print("\nfuzz .params reader: %d executions (%d parsed, %d refused) over %d seeds "
              "in %.1f s, peak allocation %d KiB" % (
                  stats["executions"], stats["parsed"], stats["refused"], len(seeds),
                  time.perf_counter() - start, stats["peak"] >> 10))
    assert stats["refused"] and stats["parsed"]          # both outcomes were exercised


def test_permission_denied_is_a_checkpoint_error(tmp_path, monkeypatch):
    """Root ignores file modes, so the refusal is injected at os.open."""
    path = tmp_path / "secret.params"
    path.write_bytes(VALID)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(CheckpointError, match="secret.params: cannot read: Permission denied$"):
        mxparams.load(path)
