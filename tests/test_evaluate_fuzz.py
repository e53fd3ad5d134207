"""Fuzzing the .lst / .idx / .rec readers of dpn-evaluate, with fixed seeds (derandomized
hypothesis, so CI runs the same cases every time; a few seconds).

Every input must end in a valid data set (integer labels 0 <= label < MAX_CLASSES, one
source per label, record payloads inside the file) or a one-line :class:`DPNError`, never
another exception, within a time and memory bound.
"""
import struct
import time
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_evaluate_hostile import record, write_rec

from dpn_gluon.data import datasets as evdata
from dpn_gluon.errors import DPNError
from dpn_gluon.variants import MAX_CLASSES

FUZZ = settings(derandomize=True, max_examples=250, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
#: Generous bounds for one parse of an input of a few hundred bytes.
SECONDS, PEAK_BYTES = 2.0, 8 << 20


def parse(path):
    """open_dataset(path) under the bounds: the dataset, or the DPNError's message."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        ds = evdata.open_dataset(path)
        result = ds
    except DPNError as err:
        result = str(err)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < SECONDS and peak < PEAK_BYTES
    if isinstance(result, str):
        assert result and "\n" not in result and "Traceback" not in result
        return None
    labels = result.labels
    assert labels.dtype == np.int64 and len(labels) == len(result.sources) > 0
    assert ((labels >= 0) & (labels < MAX_CLASSES)).all()
    return result


FIELD = st.one_of(
    st.sampled_from(["0", "7", "3.000000", "-1", "inf", "nan", "1e30", "1.5", " 2", "0x3",
                     "999999999999", "", "a.jpg", "x\x00y", "é.png", "\t"]),
    st.text(max_size=8))
LINE = st.lists(FIELD, min_size=0, max_size=5).map("\t".join)


@FUZZ
@given(lines=st.lists(LINE, max_size=6), tail=st.binary(max_size=12))
def test_fuzz_lst(tmp_path, lines, tail):
    lst = tmp_path / "val.lst"
    lst.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + tail)
    ds = parse(lst)
    if ds is not None:
        assert all(s.startswith(str(tmp_path)) or s.startswith("/") for s in ds.sources)


GOOD = [record(3.0, b"\xff\xd8jpeg"), record(0.0, b"png", flag=2, labels=(5.0, 1.0)),
        record(999.0, b"")]


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 200), idx=st.one_of(st.none(), st.lists(
           st.tuples(st.integers(-5, 10), st.integers(-8, 300)), min_size=1, max_size=4)))
def test_fuzz_rec_and_idx(tmp_path, flips, cut, idx):
    rec = write_rec(tmp_path, GOOD)
    blob = bytearray(rec.read_bytes())
    for pos, value in flips:
        if pos < len(blob):
            blob[pos] = value
    rec.write_bytes(bytes(blob[:len(blob) - cut % 16]))
    if idx is not None:
        (tmp_path / "val.idx").write_text("".join("%d\t%d\n" % kv for kv in idx))
    ds = parse(rec)
    if ds is None:
        return
    size = rec.stat().st_size
    for source in ds.sources:
        assert 0 <= source[1] < size
        payload = evdata.read_source(source)
        assert isinstance(payload, bytes) and len(payload) <= size


def test_fuzz_inputs_include_valid_sets(tmp_path):
    """The fuzzers' seeds are valid: the all-good record set reads back as built."""
    ds = parse(write_rec(tmp_path, GOOD))
    assert ds.labels.tolist() == [3, 5, 999]
    assert [evdata.read_source(s) for s in ds.sources] == [b"\xff\xd8jpeg", b"png", b""]
    assert struct.unpack("<I", GOOD[0][:4])[0] == 0xCED7230A
