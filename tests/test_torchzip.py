"""dpn_gluon.formats.torchzip (torch-free .pth writer) read back by torch's own loader."""
from collections import OrderedDict

import numpy as np
import pytest

from dpn_gluon.formats.torchzip import write_state_dict

torch = pytest.importorskip("torch")


def _tensors():
    rng = np.random.default_rng(0)
    return OrderedDict([
        ("features.conv1_1.conv.weight", rng.normal(size=(10, 3, 3, 3)).astype("float32")),
        ("half", rng.normal(size=(7,)).astype("float16")),
        ("double", rng.normal(size=(2, 2)).astype("float64")),
        ("counter", np.array(5, dtype="int64")),
        ("scalar_big_endian", np.array(2.5, dtype=">f8")),
        ("strided", rng.normal(size=(30, 40)).astype("float32")[:, ::2]),
        ("big_endian", np.arange(300, dtype=">f4")),
        ("ünïcode", np.arange(4, dtype="int32")),
    ])


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_loads_what_we_write(tmp_path, mmap):
    tensors = _tensors()
    path = tmp_path / "w.pth"
    with open(path, "wb") as f:
        write_state_dict(f, tensors)
    loaded = torch.load(path, weights_only=True, mmap=mmap)
    assert type(loaded) is OrderedDict and list(loaded) == list(tensors)
    for k, v in tensors.items():
        t = loaded[k]
        assert t.is_contiguous() and not t.requires_grad
        assert tuple(t.shape) == v.shape
        assert t.numpy().dtype == v.dtype.newbyteorder("=")
        np.testing.assert_array_equal(t.numpy(), v)


def test_same_records_as_torch_save(tmp_path):
    import zipfile
    tensors = _tensors()
    ours, theirs = tmp_path / "ours" / "theirs.pth", tmp_path / "theirs.pth"
    ours.parent.mkdir()
    with open(ours, "wb") as f:
        write_state_dict(f, tensors, archive="theirs")
    torch.save(OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v).astype(v.dtype.newbyteorder("="))))
                           for k, v in tensors.items()), theirs)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(theirs) as b:
        for name in b.namelist():
            if name.endswith("serialization_id"):
                continue
            assert a.read(name) == b.read(name) or name.endswith("data.pkl"), name
        assert set(a.namelist()) == {n for n in b.namelist() if not n.endswith("serialization_id")}
        for info in a.infolist():   # every record starts 64-byte aligned, like torch's
            assert (info.header_offset + 30 + len(info.filename) + len(info.extra)) % 64 == 0


def test_progress_counts_every_byte(tmp_path):
    tensors = _tensors()
    seen = []
    with open(tmp_path / "p.pth", "wb") as f:
        write_state_dict(f, tensors, progress=seen.append)
    assert sum(seen) == sum(np.asarray(v).nbytes for v in tensors.values())


def test_unsupported_dtype_is_refused(tmp_path):
    with open(tmp_path / "c.pth", "wb") as f, pytest.raises(ValueError, match="complex"):
        write_state_dict(f, {"z": np.zeros(2, dtype="complex64")})


def test_convert_to_torch_without_check_does_not_import_torch(tmp_path):
    """dpn-convert --to torch --no-check writes the .pth without torch; torch reads it back."""
    import json
    import subprocess
    import sys

    from dpn_gluon.checkpoint import read_checkpoint, write_seeded_checkpoint
    src = write_seeded_checkpoint(tmp_path / "dpn68", "dpn68", seed=1, symbol=False)
    out = tmp_path / "dpn68.pth"
    code = ("import json, sys\nfrom dpn_gluon.convert.pipeline import convert\n"
            "convert(sys.argv[1], 'torch', out=sys.argv[2], check=False)\n"
            "print(json.dumps('torch' in sys.modules))")
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(out)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=True, env=env)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) is False
    from dpn_gluon import torch_dpn
    _, _, _, tensors = read_checkpoint(src)
    model = torch_dpn.build_model("dpn68")
    model.load_state_dict(torch.load(out, weights_only=True, mmap=True), strict=True)
    reference = torch_dpn.from_canonical(tensors).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


# -- reading without torch: torch's own files are the reference ----------------------------

from dpn_gluon.errors import CheckpointError
from dpn_gluon.formats.torchzip import read_state_dict


def test_reads_what_torch_saves_including_disjoint_views_of_one_storage(tmp_path):
    # strided, transposed and overlapping views are refused (tests/test_hostile_readers.py)
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    state = OrderedDict([("w", torch.randn(4, 3, 3, 3)), ("h", torch.randn(5).half()),
                         ("n", torch.tensor(7, dtype=torch.int64)),
                         ("row0", base[0]), ("offset", base[2]), ("rows", base[3:5])])
    path = tmp_path / "t.pth"
    torch.save(state, path)
    got = read_state_dict(path)
    assert list(got) == list(state)
    for k, v in state.items():
        assert got[k].dtype == v.numpy().dtype and got[k].shape == tuple(v.shape), k
        np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)


def test_reads_what_we_write_and_unwraps(tmp_path):
    tensors = OrderedDict((k, v) for k, v in _tensors().items() if v.dtype.byteorder != ">")
    path = tmp_path / "w.pth"
    with open(path, "wb") as f:
        write_state_dict(f, tensors)
    got = read_state_dict(path)
    assert list(got) == list(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    torch.save({"state_dict": {"a": torch.ones(2)}}, tmp_path / "wrapped.pth")
    assert list(read_state_dict(tmp_path / "wrapped.pth")) == ["a"]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, ("touch %s" % self.marker,))


def test_refuses_a_code_executing_pickle_without_running_it(tmp_path):
    import pickle
    import zipfile
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": _Payload(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match=r"evil\.pth: .*other than tensors \((posix|nt)\.system\)"):
        read_state_dict(path)
    assert not marker.exists()


def test_refuses_a_storage_larger_than_its_record(tmp_path):
    import zipfile
    path = tmp_path / "w.pth"
    with open(path, "wb") as f:
        write_state_dict(f, OrderedDict(a=np.ones(4, "float32")))
    lying = tmp_path / "lying.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(lying, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"K\x04t", b"K\x08t")      # numel 4 -> 8
            dst.writestr(info.filename, data)
    with pytest.raises(CheckpointError, match="not a stored 32-byte storage"):
        read_state_dict(lying)
