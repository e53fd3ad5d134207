"""The checkpoint readers against hostile input (issue 10, part B): detection by structure,
non-regular files, expansions bounded by the file's size, corruption, and odd values.

Every input is built independently of the code under test: safetensors' own writer,
``torch.save`` (zip and legacy), ``pickle`` with memoized shared references, ``zipfile``,
``struct`` for MXNet records, and the converter's own writer only where its output is the
point. Each case must end in a one-line :class:`DPNError` naming the file, or in a valid
read, within a time bound (``deadline``) and, on the numpy paths, a memory bound.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from helpers import read_as
from test_hostile_params import _array, _file, _mutate, _mutations

from dpn_gluon import checkpoint, variants
from dpn_gluon.convert import writers
from dpn_gluon.errors import DPNError
from dpn_gluon.formats import base, mxparams, registry, sanity, timm
from dpn_gluon.formats import canonical as formats

ROOT = Path(__file__).resolve().parent.parent
SECONDS = 10            # every read below, refused or not, ends well within this
EXAMPLES = int(os.environ.get("DPN_FUZZ_DETECT", "400"))


@contextlib.contextmanager
def deadline(seconds: float = SECONDS):
    """Raise TimeoutError in the test if the block runs longer (a hang fails, not blocks)."""
    def expire(*_):
        raise TimeoutError("over %s s" % seconds)
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def refused(path, call, *args, match: str = "") -> str:
    """``call(*args)`` raises a one-line DPNError naming ``path``, in time; its message."""
    with deadline():
        with pytest.raises(DPNError) as e:
            call(*args)
    text = str(e.value)
    assert "\n" not in text and text.startswith(str(path)), text
    assert match in text, text
    return text


def read(path):
    return registry.read_file(path)


@pytest.fixture(scope="module", autouse=True)
def fake_tensors_imported():
    """The legacy .pth check runs torch's FakeTensorMode, whose first use imports
    torch._dynamo (seconds): paid here once, not inside a test's deadline."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError:
        return
    with FakeTensorMode():
        pass


@pytest.fixture
def no_torch(monkeypatch):
    """As on the numpy-only install: ``import torch`` fails."""
    monkeypatch.setitem(sys.modules, "torch", None)


def _torch():
    return pytest.importorskip("torch")


def _tensors():
    rng = np.random.default_rng(0)
    return OrderedDict([("conv.weight", rng.standard_normal((2, 3, 3, 3)).astype("f4")),
                        ("bn.running_var", rng.uniform(0.5, 2, 2).astype("f2"))])


def torch_save(obj, legacy=False, **kw) -> bytes:
    buf = io.BytesIO()
    _torch().save(obj, buf, _use_new_zipfile_serialization=not legacy, **kw)
    return buf.getvalue()


def torch_state():
    torch = _torch()
    return OrderedDict((k, torch.from_numpy(v)) for k, v in _tensors().items())


def safetensors_bytes(tensors=None, metadata=None) -> bytes:
    from safetensors.numpy import save
    return save(dict(tensors if tensors is not None else _tensors()), metadata=metadata)


def params_bytes(prefixed=True) -> bytes:
    tensors = _tensors()
    if prefixed:
        tensors = OrderedDict([("arg:conv_weight", tensors["conv.weight"]),
                               ("aux:bn_moving_var", tensors["bn.running_var"])])
    return mxparams.dumps(tensors)


def put(tmp_path, data: bytes, name="x.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- 3. valid files are identified by their structure -----------------------------------------

def test_safetensors_with_every_header_length_low_byte(tmp_path):
    """safetensors pads its header to 8 bytes, so its length ends in one of 32 low bytes; the
    one ending in 0x80 starts the file with a pickle's first byte. All read as safetensors."""
    lows = set()
    for k in range(32):
        data = safetensors_bytes(metadata={"pad": "x" * (8 * k)})
        lows.add(data[0])
        path = put(tmp_path, data, "t%d.safetensors" % k)
        assert registry.detect(path).format == "safetensors"
        raw, metadata = read_as(path, "safetensors")
        assert metadata["pad"] == "x" * (8 * k)
        for key, arr in _tensors().items():
            np.testing.assert_array_equal(raw[key], arr)
    assert lows == set(range(0, 256, 8))      # every possible low byte, 0x80 among them


def test_converter_output_with_a_long_source_name_reads_back(tmp_path):
    """Our own safetensors output whose header length ends in 0x80, through a source name."""
    tensors = checkpoint.seeded_tensors("dpn68", dtype="float16")
    arch, classes, fc = variants.resolve("dpn68")

    def write(name):
        weights = formats.Weights(arch, classes, fc, tensors, tmp_path / name, "mxnet")
        out = tmp_path / "out.safetensors"
        writers.write(weights, "safetensors", out, force=True)
        return out

    out = write("x")
    (n,) = struct.unpack("<Q", out.read_bytes()[:8])
    raw_len = len(out.read_bytes()[8:8 + n].rstrip(b" "))    # safetensors pads with spaces
    grow = next(d for d in range(256) if -(-(raw_len + d) // 8) * 8 % 256 == 0x80)
    out = write("x" * (1 + grow))
    assert out.read_bytes()[0] == 0x80
    assert registry.detect(out).format == "safetensors"
    back = formats.read(out)
    assert back.arch.name == "dpn68" and back.source.name == out.name
    for key, arr in tensors.items():
        np.testing.assert_array_equal(back.tensors[key], arr)


def seeds():
    """One valid file of each format, each built by that format's own writer."""
    return {"mxnet": params_bytes(True), "gluon": params_bytes(False),
            "torch": torch_save(torch_state()), "torch-legacy": torch_save(torch_state(), True),
            "safetensors": safetensors_bytes(metadata={"architecture": "dpn68"})}


def test_each_format_detected_and_refused_by_every_other_reader(tmp_path):
    for kind, data in seeds().items():
        fmt = kind.split("-")[0]
        path = put(tmp_path, data, kind)
        assert registry.detect(path).format == fmt, kind
        raw, _ = read_as(path, fmt)
        assert sorted(raw) and all(a.nbytes <= len(data) for a in raw.values())
        for other in registry.NAMES:
            if other != fmt and {fmt, other} != {"mxnet", "gluon"}:
                refused(path, read_as, path, other)


def _one_line_or_bounded(path: Path, data: bytes, stats: dict) -> None:
    tracemalloc.start()
    try:
        with deadline():
            raw, _ = read(path)
    except DPNError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
        stats["refused"] += 1
    else:
        assert sum(a.nbytes for a in raw.values()) <= len(data)
        stats["parsed"] += 1
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= 4 * len(data) + (8 << 20), peak


def test_truncations_of_every_format(tmp_path):
    stats = {"parsed": 0, "refused": 0}
    for kind, data in seeds().items():
        path = tmp_path / kind
        for cut in sorted({*range(0, 40), *range(0, len(data), max(1, len(data) // 40))}):
            path.write_bytes(data[:cut])
            _one_line_or_bounded(path, data[:cut], stats)
    assert stats["refused"] and not stats["parsed"]     # a cut file never reads as valid


def fuzz_files(corpus, examples: int, path: Path) -> dict:
    """Derandomized mutations (test_hostile_params' strategy) of the files in ``corpus``,
    each written to ``path`` and read: a one-line refusal or a bounded read."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st
    for data in corpus:      # lazy imports (torch's fake tensors) land outside the bounds
        path.write_bytes(data)
        with contextlib.suppress(DPNError):
            read(path)
    stats = {"parsed": 0, "refused": 0, "start": time.perf_counter()}

    @hypothesis.settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.sampled_from(range(len(corpus))), _mutations())
    def fuzz(seed, mutations):
        data = _mutate(corpus[seed], mutations)
        path.write_bytes(data)
        _one_line_or_bounded(path, data, stats)

    fuzz()
    stats["seconds"] = time.perf_counter() - stats.pop("start")
    stats["executions"] = stats["parsed"] + stats["refused"]
    assert stats["parsed"] and stats["refused"]
    return stats


def test_fuzz_detection_and_readers(tmp_path, capsys):
    """One valid file of each format, mutated, through detect + read_raw."""
    stats = fuzz_files(list(seeds().values()), EXAMPLES, tmp_path / "fuzz.bin")
    with capsys.disabled():
        print("\nfuzz detection: %(executions)d executions (%(parsed)d parsed, %(refused)d "
              "refused) over 5 formats in %(seconds).1f s" % stats)


LEGACY_EXAMPLES = int(os.environ.get("DPN_FUZZ_LEGACY", "250"))


def test_fuzz_legacy_pth(tmp_path, capsys):
    """Legacy .pth files (plain; with shared nested lists; with views of one storage),
    mutated, through the torch reader."""
    torch = _torch()
    base = torch.arange(12, dtype=torch.float32)
    corpus = [torch_save(torch_state(), True),
              torch_save({"w": torch.zeros(3), "junk": _laughs("list", 12, 2)}, True),
              torch_save(OrderedDict([("a", base[:6].view(2, 3)), ("b", base[6:])]), True)]
    stats = fuzz_files(corpus, LEGACY_EXAMPLES, tmp_path / "fuzz.pth")
    with capsys.disabled():
        print("\nfuzz legacy .pth: %(executions)d executions (%(parsed)d parsed, %(refused)d "
              "refused) in %(seconds).1f s" % stats)


# -- 4. non-regular files ---------------------------------------------------------------------

def _special(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / ("special-" + kind)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "char-device":
        os.symlink("/dev/zero", path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize("kind", ["fifo", "char-device", "socket", "folder"])
def test_non_regular_files_refused_before_reading(tmp_path, kind):
    path = _special(tmp_path, kind)
    refused(path, formats.read, path)
    refused(path, checkpoint.read_checkpoint, path)
    if kind != "folder":
        refused(path, read_as, path, "mxnet")
        refused(path, read_as, path, "torch")
        refused(path, read_as, path, "safetensors")
        prefix = tmp_path / "ckpt"
        os.symlink(path, str(prefix) + "-0000.params")
        refused(str(prefix) + "-0000.params", registry.resolve, prefix)
        for part in (timm.CONFIG, timm.WEIGHTS):    # inside a timm folder
            folder = tmp_path / ("timm-" + part)
            folder.mkdir()
            for name in (timm.CONFIG, timm.WEIGHTS):
                if name == part:
                    os.symlink(path, folder / name)
                else:
                    (folder / name).write_bytes(b"{}")
            refused(folder / part, formats.read, folder)


def test_the_command_refuses_a_fifo_at_once(tmp_path):
    path = _special(tmp_path, "fifo")
    got = subprocess.run([sys.executable, "-m", "dpn_gluon.convert.cli", str(path), "--to",
                          "safetensors", "-o", str(tmp_path / "out.safetensors")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert got.returncode == 2, got.stderr
    assert got.stderr.strip().splitlines() == [
        "dpn-convert: error: %s: a FIFO, not a checkpoint file" % path], got.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# -- 4. expansions bounded by the file's size --------------------------------------------------

def _laughs(kind: str, depth: int, width: int):
    """A value whose every level holds ``width`` references to the level below: pickled
    with its memo, a few bytes per level; walked per path, ``width ** depth`` visits."""
    x = []
    for _ in range(depth):
        x = {str(i): x for i in range(width)} if kind == "dict" else \
            tuple([x] * width) if kind == "tuple" else [x] * width
    return x


LAUGHS = [(kind, depth, width) for kind in ("list", "dict", "tuple")
          for depth, width in ((40, 2), (6, 40))]


@pytest.mark.parametrize("kind,depth,width", LAUGHS)
@pytest.mark.parametrize("layout", ["legacy", "zip", "zip-without-torch"])
def test_billion_laughs_refused_within_seconds(tmp_path, kind, depth, width, layout, monkeypatch):
    torch = _torch()
    state = {"conv.weight": torch.zeros(2), "junk": _laughs(kind, depth, width)}
    data = torch_save(state, legacy=layout == "legacy")
    assert len(data) < 8192          # each level a few bytes: the file is tiny
    path = put(tmp_path, data, "laughs.pth")
    if layout == "zip-without-torch":
        monkeypatch.setitem(sys.modules, "torch", None)
    refused(path, read, path, match="not")


def _view_pth(views, storage_numel: int, legacy=False) -> bytes:
    """A state dict of views of one storage, as torch.save writes it: name -> (size, stride,
    offset) in elements."""
    torch = _torch()
    base = torch.arange(storage_numel, dtype=torch.float32)
    state = OrderedDict((k, torch.as_strided(base, size, stride, offset))
                        for k, (size, stride, offset) in views.items())
    return torch_save(state, legacy=legacy)


VIEWS = {
    "stride-0": ({"w": ((1 << 29,), (0,), 0)}, 1, "not contiguous"),
    "stride-0-in-one-dim": ({"w": ((4, 1 << 20), (1, 0), 0)}, 4, "not contiguous"),
    "transposed": ({"w": ((3, 2), (1, 3), 0)}, 6, "not contiguous"),
    "every-other": ({"w": ((3,), (2,), 0)}, 6, "not contiguous"),
    "overlapping": ({"a": ((4,), (1,), 0), "b": ((4,), (1,), 2)}, 8, "share bytes"),
    "same-twice": ({"a": ((4,), (1,), 0), "b": ((4,), (1,), 0)}, 4, "share bytes"),
    "400-views-of-one-storage": ({"v%d" % i: ((1 << 14,), (1,), 0) for i in range(400)},
                                 1 << 14, "share bytes"),
}


@pytest.mark.parametrize("case", sorted(VIEWS))
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("torch_installed", [True, False], ids=["torch", "numpy-only"])
def test_views_that_expand_a_storage_refused(tmp_path, case, legacy, torch_installed,
                                             monkeypatch):
    views, numel, why = VIEWS[case]
    path = put(tmp_path, _view_pth(views, numel, legacy), "views.pth")
    if not torch_installed:
        monkeypatch.setitem(sys.modules, "torch", None)
        if legacy:        # the numpy-only install reads zip files only
            refused(path, read, path, match="needs torch")
            return
    if legacy and torch_installed and case == "400-views-of-one-storage":
        why = "its tensors declare"     # the fake-tensor pre-check counts a storage per view
    tracemalloc.start()
    try:
        refused(path, read, path, match=why)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 2 * path.stat().st_size + (4 << 20), peak


def test_disjoint_contiguous_views_of_one_storage_read(tmp_path, monkeypatch):
    views = {"a": ((2, 3), (3, 1), 0), "b": ((4,), (1,), 6), "c": ((), (), 10)}
    legacy, _ = read(put(tmp_path, _view_pth(views, 12, legacy=True), "legacy.pth"))
    path = put(tmp_path, _view_pth(views, 12), "views.pth")
    with_torch, _ = read(path)
    monkeypatch.setitem(sys.modules, "torch", None)
    without, _ = read(path)
    for k, (size, _, offset) in views.items():
        expect = np.arange(offset, offset + int(np.prod(size)), dtype="f4").reshape(size)
        np.testing.assert_array_equal(with_torch[k], expect)
        np.testing.assert_array_equal(without[k], expect)
        np.testing.assert_array_equal(legacy[k], expect)


def _hand_pth(size, stride, offset, numel) -> bytes:
    """A zip .pth whose one tensor has any size, stride and offset (torch.save cannot write
    one outside its storage): the pickle opcodes torch.save emits, by hand."""
    def ints(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"
    pkl = (b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00w"
           b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
           b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpu" + b"J" + struct.pack("<i", numel) + b"tQ"
           + b"J" + struct.pack("<i", offset) + ints(size) + ints(stride)
           + b"\x89ccollections\nOrderedDict\n)RtRs.")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", np.arange(numel, dtype="f4").tobytes())
        z.writestr("archive/version", "3\n")
    return out.getvalue()


@pytest.mark.parametrize("size,stride,offset,why", [
    ((4,), (1,), 3, "past its storage"), ((3, 3), (3, 1), 0, "past its storage"),
    ((2,), (-1,), 1, "stride"), ((2,), (1,), -1, "offset"), ((1 << 29,), (0,), 0, "contiguous")])
@pytest.mark.parametrize("torch_installed", [True, False], ids=["torch", "numpy-only"])
def test_hand_built_views_out_of_range_refused(tmp_path, size, stride, offset, why,
                                               torch_installed, monkeypatch):
    if torch_installed:
        _torch()
    else:
        monkeypatch.setitem(sys.modules, "torch", None)
    path = put(tmp_path, _hand_pth(size, stride, offset, 6), "hand.pth")
    assert registry.detect(path).format == "torch"
    refused(path, read, path)


def test_hand_built_view_reads_when_valid(tmp_path, no_torch):
    path = put(tmp_path, _hand_pth((2, 2), (2, 1), 2, 6), "hand.pth")
    raw, _ = read(path)
    np.testing.assert_array_equal(raw["w"], np.arange(2, 6, dtype="f4").reshape(2, 2))


def test_params_with_more_arrays_than_any_dpn_refused_before_parsing(tmp_path, monkeypatch):
    n = base.MAX_TENSORS + 1
    data = _file([_array((1,), data=b"\0" * 4)] * n, ["a%d" % i for i in range(n)])
    path = put(tmp_path, data, "many.params")
    parsed = []
    real = mxparams._read_array
    monkeypatch.setattr(mxparams, "_read_array", lambda *a: parsed.append(1) or real(*a))
    refused(path, formats.read, path, match="%d arrays, more than" % n)
    refused(path, checkpoint.read_checkpoint, path, match="%d arrays, more than" % n)
    assert not parsed
    # the largest DPN's own file is within the bound: dpn131's tensors, plus timm's counters
    spec = variants.tensor_spec(variants.get_arch("dpn131"))
    assert len(spec) + sum(k.endswith("_moving_var") for k in spec) < base.MAX_TENSORS


def test_many_tensors_refused_in_every_format(tmp_path):
    n = base.MAX_TENSORS + 1
    many = OrderedDict(("t%d" % i, np.zeros(1, "f4")) for i in range(n))
    path = put(tmp_path, safetensors_bytes(many), "many.safetensors")
    refused(path, read, path, match="holds %d tensors" % n)
    torch = _torch()
    path = put(tmp_path, torch_save({k: torch.from_numpy(v) for k, v in many.items()}), "m.pth")
    refused(path, read, path, match="more than any DPN")


def test_many_tensors_refused_without_torch_before_the_pickle_ends(tmp_path, no_torch):
    """Zero-size views need no record of their own: the count is bounded while unpickling."""
    n = base.MAX_TENSORS + 1
    one = _hand_pth((0,), (1,), 0, 1)
    with zipfile.ZipFile(io.BytesIO(one)) as z:
        pkl = z.read("archive/data.pkl")
    entry = pkl[pkl.index(b"X\x01\x00\x00\x00w"):pkl.index(b"s.")]
    body = b"".join(entry.replace(b"X\x01\x00\x00\x00w", b"X\x04\x00\x00\x00" +
                                  b"%04d" % i) + b"s" for i in range(n))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", pkl[:pkl.index(b"X\x01\x00\x00\x00w")] + body + b".")
        z.writestr("archive/data/0", b"\0" * 4)
    path = put(tmp_path, out.getvalue(), "zeros.pth")
    refused(path, read, path, match="more than %d tensors" % base.MAX_TENSORS)


def test_a_params_file_is_parsed_once(seeded_checkpoint, monkeypatch):
    path = seeded_checkpoint("dpn68", symbol=False)
    calls = []
    real = mxparams.loads
    monkeypatch.setattr(mxparams, "loads", lambda *a, **k: calls.append(1) or real(*a, **k))
    weights = formats.read(path, hash_source=False)
    assert weights.arch.name == "dpn68" and len(calls) == 1


# -- 6. corruption ----------------------------------------------------------------------------

def _data_offset(data: bytes, name: str) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(name)
    n, m = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + n + m


def _flips():
    data = torch_save(torch_state())
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("data.pkl"))
        record = next(n for n in names if "/data/" in n)
        record_at = z.getinfo(record).header_offset
    return data, {"tensor-data": _data_offset(data, record) + 5,
                  "data.pkl": _data_offset(data, pkl) + 20,
                  "central-directory-crc": data.rindex(b"PK\x01\x02") + 16,
                  "local-header-name": record_at + 31}


@pytest.mark.parametrize("where", ["tensor-data", "data.pkl", "central-directory-crc",
                                   "local-header-name"])
@pytest.mark.parametrize("torch_installed", [True, False], ids=["torch", "numpy-only"])
@pytest.mark.parametrize("bit", [0, 7])
def test_a_flipped_bit_in_a_pth_is_refused(tmp_path, where, torch_installed, bit, monkeypatch):
    data, at = _flips()
    bad = bytearray(data)
    bad[at[where]] ^= 1 << bit
    path = put(tmp_path, bytes(bad), "flipped.pth")
    if not torch_installed:
        monkeypatch.setitem(sys.modules, "torch", None)
    text = refused(path, read, path)
    if where == "tensor-data":
        assert "its bytes do not match its CRC-32" in text, text


# -- 6. dtypes, classes, metadata --------------------------------------------------------------

@pytest.mark.parametrize("flag,dtype", [(8, "int16"), (9, "uint16"), (10, "uint32"),
                                        (11, "uint64")])
def test_mxnet2_dtypes_refused_when_read(tmp_path, flag, dtype):
    data = _file([_array((2,), flag=flag, data=b"\0" * 2 * np.dtype(dtype).itemsize)],
                 ["arg:conv_weight"])
    path = put(tmp_path, data, "mx2.params")
    assert mxparams.loads(data)["arg:conv_weight"].dtype == np.dtype(dtype)   # the codec reads it
    refused(path, formats.read, path, match="conv_weight is %s; a checkpoint holds" % dtype)
    refused(path, checkpoint.read_checkpoint, path, match="conv_weight is %s" % dtype)


@pytest.mark.parametrize("dtype,name", [("int16", "I16"), ("uint16", "U16"), ("uint32", "U32"),
                                        ("uint64", "U64")])
def test_safetensors_dtypes_no_target_holds_refused(tmp_path, dtype, name):
    path = put(tmp_path, safetensors_bytes(OrderedDict([("w", np.zeros(4, dtype))])), "o.safetensors")
    refused(path, read, path, match="w is %s; a checkpoint holds" % name)


@pytest.mark.parametrize("dtype", ["int16", "uint16", "uint32", "uint64"])
def test_torch_dtypes_no_target_holds_refused(tmp_path, dtype):
    torch = _torch()
    path = put(tmp_path, torch_save({"w": torch.zeros(2, dtype=getattr(torch, dtype))}), "o.pth")
    refused(path, read, path, match="w is a %s tensor" % dtype)


NOT_FLOAT = [("aux:bn_moving_var", "bool"), ("aux:bn_moving_var", "int8"),
             ("aux:bn_moving_mean", "uint8"), ("arg:conv_weight", "int32"),
             ("arg:bn_gamma", "int64"), ("arg:fc6_bias", "bool")]


@pytest.mark.parametrize("name,dtype", NOT_FLOAT)
def test_weights_and_statistics_must_be_floats(tmp_path, name, dtype):
    data = mxparams.dumps(OrderedDict([(name, np.ones(3, dtype))]))
    path = put(tmp_path, data, "ints.params")
    refused(path, formats.read, path, match="%s is %s, " % (name.split(":")[1], dtype))
    refused(path, checkpoint.read_checkpoint, path, match="must be floating point")
    assert sanity.check_values({name: np.ones(3, dtype)})[0].endswith(
        "must be floating point (only timm's num_batches_tracked counters are integers)")


def test_timm_counters_may_be_integers(tmp_path):
    tensors = OrderedDict([("bn.running_var", np.ones(2, "f4")),
                           ("bn.num_batches_tracked", np.zeros((), "i8"))])
    raw, _ = read(put(tmp_path, safetensors_bytes(tensors), "c.safetensors"))
    assert raw["bn.num_batches_tracked"].dtype == np.int64
    assert sanity.check_values(raw) == []
    tensors["bn.num_batches_tracked"] = np.zeros((), "?")       # but not a bool
    path = put(tmp_path, safetensors_bytes(tensors), "b.safetensors")
    refused(path, read, path, match="num_batches_tracked is bool")


def test_a_classifier_of_no_classes_refused(tmp_path):
    tensors = checkpoint.seeded_tensors("dpn68", classes=1, dtype="float16")
    tensors["fc6_weight"] = tensors["fc6_weight"][:0]
    tensors["fc6_bias"] = tensors["fc6_bias"][:0]
    path = checkpoint.write_checkpoint(tmp_path / "zero", tensors)
    refused(path, formats.read, path, match="a classifier of no classes")
    refused(path, checkpoint.read_checkpoint, path, match="a classifier of no classes")


BAD_COUNTS = ["²", "+1000", " 1000", "1000 ", "1_000", "١٠٠٠", "1000\n", "0", "01000", "-1",
              "1e3", "", "10000000", "1" * 400]


@pytest.mark.parametrize("value", BAD_COUNTS)
def test_metadata_class_counts_parsed_strictly(tmp_path, value):
    assert base.parse_count(value) is None
    meta = {"architecture": "dpn68", "classes": value}
    path = put(tmp_path, safetensors_bytes(metadata=meta), "m.safetensors")
    refused(path, read, path, match="metadata says classes")


def test_metadata_class_counts_accepted():
    assert [base.parse_count(v) for v in ("1", "1000", "4786", "1000000")] == \
        [1, 1000, 4786, 1000000]


# -- more of each class --------------------------------------------------------------------------

@pytest.mark.parametrize("protocol,said", [(0, "0 or 1"), (1, "0 or 1"), (4, "4"), (5, "5")])
def test_legacy_pth_of_protocols_torch_cannot_load_named(tmp_path, protocol, said):
    """torch.save writes any protocol; torch's weights-only loader reads a legacy file only in
    2 or 3: the others are detected as torch by the magic number and refused by name."""
    path = put(tmp_path, torch_save(torch_state(), True, pickle_protocol=protocol), "old.pth")
    assert registry.detect(path).format == "torch"
    refused(path, read, path, match="pickled with protocol %s, which torch's" % said)


def test_legacy_pth_of_protocols_2_and_3_reads(tmp_path):
    for protocol in (2, 3):
        path = put(tmp_path, torch_save(torch_state(), True, pickle_protocol=protocol), "p.pth")
        raw, _ = read(path)
        for key, arr in _tensors().items():
            np.testing.assert_array_equal(raw[key], arr)


@pytest.mark.parametrize("torch_installed", [True, False], ids=["torch", "numpy-only"])
def test_a_key_nested_deep_or_named_long_stays_one_line(tmp_path, torch_installed, monkeypatch):
    """A 100,000-deep tuple as a key (str() of it would recurse), and a 1 MB name."""
    deep = b")" + b"\x85" * 100_000                       # EMPTY_TUPLE, then TUPLE1 per level
    pkl = (b"\x80\x02}(" + deep + b"X\x01\x00\x00\x00xu.")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("archive/data.pkl", pkl)
    path = put(tmp_path, out.getvalue(), "deep.pth")
    long_name = put(tmp_path, safetensors_bytes({"w" * (1 << 20): np.zeros(1, "f4")}),
                    "long.safetensors")
    if torch_installed:
        _torch()
    else:
        monkeypatch.setitem(sys.modules, "torch", None)
    refused(path, read, path)
    assert len(refused(long_name, read, long_name, match="a tensor name of 1048576")) < 400


def test_a_big_endian_pth_refused_without_torch(tmp_path, no_torch):
    data = _hand_pth((2,), (1,), 0, 2)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename, b"big" if info.filename.endswith("byteorder")
                       else src.read(info))
    path = put(tmp_path, out.getvalue(), "big.pth")
    refused(path, read, path, match="byteorder record says 'big'")


@pytest.mark.parametrize("torch_installed", [True, False], ids=["torch", "numpy-only"])
def test_zip_pth_of_every_pickle_protocol_reads(tmp_path, torch_installed, monkeypatch):
    """torch.save(pickle_protocol=4 or 5) is valid; torch's weights-only loader cannot read
    it (no FRAME opcode), so such a zip goes through the restricted numpy reader."""
    files = {p: put(tmp_path, torch_save(torch_state(), pickle_protocol=p), "p%d.pth" % p)
             for p in range(2, pickle.HIGHEST_PROTOCOL + 1)}
    if not torch_installed:
        monkeypatch.setitem(sys.modules, "torch", None)
    for protocol, path in files.items():
        raw, _ = read(path)
        assert list(raw) == list(_tensors()), protocol
        for key, arr in _tensors().items():
            np.testing.assert_array_equal(raw[key], arr)
