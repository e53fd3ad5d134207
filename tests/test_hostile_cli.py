"""dpn-convert against hostile and broken checkpoints: one table, each bad input with its outcome.

Every row builds one input -- a tiny hand-made file for the malformed ones, the seeded dpn68
checkpoint (:func:`dpn_gluon.checkpoint.seeded_tensors`, float16) with one thing changed for
the valid-but-wrong ones -- runs ``dpn-convert`` on it and checks: the exit code; the one
error line (or, for exit 0, the warning line) against a regex; that the output folder holds
nothing new (no output, no temporary file) or, where a previous output was there, that it is
byte-for-byte intact; that the input's bytes and mtime are unchanged; and that no pickle
payload ran (its marker file never appears).

The inputs are built independently of the code under test: struct, zipfile and pickle by
hand, ``torch.save``, safetensors' own writer, and shapes from the variant table. The
output-safety rows make the failure real where the machine allows it (an immutable folder, a
64 KiB tmpfs in a private mount namespace, running the CLI as a subprocess) and inject it
otherwise (ENOSPC from write and from fsync, in-process through click's CliRunner).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import immutable, read_as
from test_convert_formats import fast_folder, seeded_params
from test_hostile_params import VALID, _one, _set

from dpn_gluon import variants
from dpn_gluon.convert.cli import main
from dpn_gluon.formats import mxparams
from dpn_gluon.formats.base import Progress
from dpn_gluon.safeio import atomic

ROOT = Path(__file__).resolve().parent.parent
OLD = b"the previous output\n"
MARKER = "PAYLOAD-RAN"


# -- tiny files built by hand ----------------------------------------------------------------

def _torch():
    return pytest.importorskip("torch")


def tiny_pth() -> bytes:
    torch = _torch()
    buf = io.BytesIO()
    torch.save(OrderedDict([("conv.weight", torch.arange(18.0).reshape(2, 3, 3)),
                            ("bn.running_var", torch.ones(5))]), buf)
    return buf.getvalue()


def tiny_safetensors(metadata=None) -> bytes:
    from safetensors.numpy import save
    return save(OrderedDict([("conv.weight", np.arange(18, dtype="f4").reshape(2, 3, 3)),
                             ("bn.running_var", np.ones(5, "f4"))]), metadata=metadata)


def _st_header(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


def _st_with(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def st_edit(edit: Callable[[dict], None]) -> bytes:
    """The tiny safetensors file with its JSON header changed by ``edit``, the data kept."""
    data = tiny_safetensors()
    header = _st_header(data)
    (n,) = struct.unpack("<Q", data[:8])
    edit(header)
    return _st_with(header, data[8 + n:])


class _Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _Tensor:
    """Pickles as torch's own tensor record: _rebuild_tensor_v2 over a persistent storage."""

    def __init__(self, storage, shape):
        self.storage, self.shape = storage, tuple(shape)

    def __reduce__(self):
        torch = _torch()
        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, self.shape, stride, False, OrderedDict()))


def _pickle(obj, legacy: bool) -> bytes:
    torch = _torch()

    class Pickler(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                pid = ("storage", torch.FloatStorage, o.key, "cpu", o.numel)
                return pid + (None,) if legacy else pid
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def hand_pth(numel: int, shape, data: bytes, compress=zipfile.ZIP_STORED) -> bytes:
    """A zip-format .pth as torch.save lays it out, with a storage of ``numel`` declared
    elements and ``data`` as its record: each may lie."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compress) as z:
        z.writestr("archive/data.pkl", _pickle({"w": _Tensor(_Storage("0", numel), shape)}, False))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", data)
        z.writestr("archive/version", "3\n")
    return out.getvalue()


LEGACY_HEAD = b"".join(pickle.dumps(part, protocol=2) for part in (
    0x1950A86A20F9469CFC6C, 1001,           # torch/serialization.py: MAGIC_NUMBER, PROTOCOL_VERSION
    dict(protocol_version=1001, little_endian=True, type_sizes=dict(short=2, int=4, long=4))))


def legacy_pth(numel: int, stored: int) -> bytes:
    """A pre-zip (torch < 1.6) .pth: magic, protocol and sys-info pickles, the object, the
    storage keys, then each storage as (element count, bytes); the pickle's count may lie."""
    out = io.BytesIO()
    out.write(LEGACY_HEAD)
    out.write(_pickle({"w": _Tensor(_Storage("0", numel), (2, 3))}, True))
    pickle.dump(["0"], out, protocol=2)
    out.write(struct.pack("<q", stored) + np.arange(stored, dtype="f4").tobytes())
    return out.getvalue()


class _Payload:
    """Unpickled, this would run a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


def payload_pth(marker: Path, zipped: bool, legacy_head: bool = True) -> bytes:
    """The payload as a legacy .pth (torch's header, then the pickle), a bare pickle, or
    as data.pkl of a torch zip."""
    evil = pickle.dumps({"conv.weight": _Payload(marker)}, protocol=2)
    if not zipped:
        return LEGACY_HEAD + evil if legacy_head else evil
    real = zipfile.ZipFile(io.BytesIO(tiny_pth()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in real.infolist():
            z.writestr(info, evil if info.filename.endswith("data.pkl") else real.read(info))
    return out.getvalue()


def torch_bytes(obj) -> bytes:
    torch = _torch()
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def cut_points(n: int):
    """10 truncation points through a file of n bytes: inside the first header fields, at
    eighths, one byte short."""
    return [1, 8, 12] + [n * k // 8 for k in range(1, 7)] + [n - 1]


# -- the seeded dpn68 checkpoint, one thing changed ------------------------------------------

FIRST_CONV = "conv2_x__1_c1x1-a__conv_weight"
VAR = "conv3_x__2_c1x1-a__bn__bn_moving_var"
GAMMA_A, GAMMA_B = "conv2_x__1_c1x1-a__bn__bn_gamma", "conv3_x__1_c1x1-a__bn__bn_gamma"


def dpn68(name="dpn68", edit=None):
    """The seeded checkpoint as {'arg:..'/'aux:..': float16 array}, edited in a copy."""
    arrays = {k: v.copy() for k, v in seeded_params(name, np.float16, bits=False).items()}
    if edit:
        edit(arrays)
    return arrays


def params_bytes(arrays) -> bytes:
    return mxparams.dumps(OrderedDict(arrays))


def _set_value(key, value, at=(0,)):
    def edit(arrays):
        full = ("aux:" if variants.is_aux(key) else "arg:") + key
        arrays[full][np.unravel_index(at, arrays[full].shape)] = value
    return edit


def _swap(a, b):
    def edit(arrays):
        ka, kb = "arg:" + a, "arg:" + b
        assert arrays[ka].shape != arrays[kb].shape     # blocks of different widths
        arrays[ka], arrays[kb] = arrays[kb], arrays[ka]
    return edit


def converted(folder: Path, arrays, to: str, name: str) -> Path:
    """The edited checkpoint written as ``to`` by the converter (no validation of values)."""
    from dpn_gluon.convert.pipeline import convert
    src = folder / ".build" / "src-0000.params"
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(params_bytes(arrays))
    out = folder / name
    convert(src, to, out=out, check=False)
    shutil.rmtree(src.parent)
    return out


def timm_folder_5k_config_1k(folder: Path) -> Path:
    hub = converted(folder, dpn68("dpn68-5k"), "timm", "hub-5k")
    config = json.loads((hub / "config.json").read_text())
    config["num_classes"] = config["pretrained_cfg"]["num_classes"] = 1000
    (hub / "config.json").write_text(json.dumps(config))
    return hub


def safetensors_5k_metadata_1k(folder: Path) -> Path:
    from safetensors.numpy import load_file, save_file
    path = converted(folder, dpn68("dpn68-5k"), "safetensors", "m5k.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), "np") as f:
        metadata = dict(f.metadata())
    metadata["classes"] = "1000"
    save_file(load_file(str(path)), str(path), metadata=metadata)
    return path


def swapped_pth(folder: Path) -> Path:
    torch = _torch()
    path = converted(folder, dpn68(), "torch", "swapped.pth")
    state = torch.load(path, weights_only=True)
    a, b = "features.conv2_1.c1x1_a.bn.weight", "features.conv3_1.c1x1_a.bn.weight"
    state[a], state[b] = state[b], state[a]
    torch.save(state, path)
    return path


def timm_folder(config, weights=None):
    def build(folder: Path) -> Path:
        hub = folder / "hub"
        hub.mkdir()
        (hub / "config.json").write_bytes(config if isinstance(config, bytes)
                                          else json.dumps(config).encode())
        (hub / "model.safetensors").write_bytes(weights or tiny_safetensors())
        return hub
    return build


# -- the table -------------------------------------------------------------------------------

@dataclass
class Case:
    build: Callable[[Path], Path]       # folder -> SRC (a file or a timm folder) inside it
    code: int                           # expected exit code
    match: str                          # regex for the error line (exit 2) or a warning (exit 0)
    args: Tuple[str, ...] = ()
    to: str = "safetensors"
    output: Optional[str] = None        # how the output fails: see OUTPUTS


def file(data: Callable[..., bytes], name: str, *a, **kw):
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data(*a, **kw) if callable(data) else data)
        return path
    return build


def _bytes(b):
    return lambda: b


_PARAMS_TINY, _ST_TINY = VALID, tiny_safetensors()
BAD_READER = r"not a valid|not a checkpoint|not a loadable|broken zip|without data\.pkl|an empty file"

CASES = [
    ("empty-file", Case(file(b"", "empty.params"), 2, r"empty\.params: an empty file")),
    ("empty-file-pth", Case(file(b"", "empty.pth"), 2, r"empty\.pth: an empty file")),
    *[("truncated-params-at-%d" % at, Case(file(_PARAMS_TINY[:at], "cut.params"), 2,
                                            r"cut\.params: (%s)" % BAD_READER))
      for at in cut_points(len(_PARAMS_TINY))],
    *[("truncated-pth-cut-%d-of-10" % (i + 1), Case(
        file(lambda i=i: tiny_pth()[:cut_points(len(tiny_pth()))[i]], "cut.pth"), 2,
        r"cut\.pth: (%s)" % BAD_READER)) for i in range(10)],
    *[("truncated-safetensors-at-%d" % at, Case(file(_ST_TINY[:at], "cut.safetensors"), 2,
                                                 r"cut\.safetensors: (%s)" % BAD_READER))
      for at in cut_points(len(_ST_TINY))],
    ("random-bytes", Case(file(np.random.default_rng(3).bytes(4096), "random.bin"), 2,
                          r"random\.bin: not a checkpoint dpn-convert reads")),
    ("random-bytes-after-zip-magic", Case(
        file(b"PK\x03\x04" + np.random.default_rng(4).bytes(4092), "random.pth"), 2,
        r"random\.pth: not a loadable PyTorch state_dict: a broken zip archive")),
    ("wrong-magic-params", Case(file(b"\x13" + VALID[1:], "magic.params"), 2,
                                r"magic\.params: not a checkpoint dpn-convert reads")),
    ("wrong-magic-pickle-protocol-0", Case(file(pickle.dumps({"a": 1}, protocol=0), "p0.pth"), 2,
                                           r"p0\.pth: not a checkpoint dpn-convert reads")),
    ("lying-array-count-params", Case(file(_set(VALID, 16, "<Q", 1 << 63), "count.params"), 2,
                                      r"array count says 9223372036854775808, more than the file")),
    ("lying-header-length-safetensors", Case(
        file(struct.pack("<Q", 1 << 40) + _ST_TINY[8:], "lying.safetensors"), 2,
        r"lying\.safetensors: not a valid safetensors file: header length says 1099511627776 bytes")),
    ("lying-storage-size-pth-legacy", Case(
        file(legacy_pth, "legacy.pth", 1 << 31, 6), 2,
        r"legacy\.pth: .*tensors declare 8589934592 bytes, more than the \d+-byte file")),
    ("lying-storage-size-pth-zip", Case(
        file(hand_pth, "zipstore.pth", 1 << 40, (2, 3), bytes(24)), 2,
        r"zipstore\.pth: w declares a \d+-byte storage that no record holds")),
    ("zip-bomb-pth", Case(
        file(hand_pth, "bomb.pth", 1 << 24, (1 << 12, 1 << 12), bytes(1 << 26),
             compress=zipfile.ZIP_DEFLATED), 2,
        r"bomb\.pth: record archive/data\.pkl is compressed .*torch\.save never compresses")),
    ("shape-2^40-elements-params", Case(file(_one((1 << 20, 1 << 20)), "huge.params"), 2,
                                        r"shape \(1048576, 1048576\) needs more bytes than remain")),
    ("shape-2^40-elements-pth", Case(file(hand_pth, "huge.pth", 6, (1 << 20, 1 << 20), bytes(24)),
                                     2, r"huge\.pth: .*shape reaches past the bytes stored for it")),
    ("shape-2^40-elements-safetensors", Case(
        file(st_edit, "huge.safetensors",
             lambda h: h["conv.weight"].update(shape=[1 << 20, 1 << 20])), 2,
        r"huge\.safetensors: not a valid safetensors file: .*invalid shape")),
    ("legacy-pth-valid-but-not-a-dpn", Case(file(legacy_pth, "tiny.pth", 6, 6), 2,
                                            r"tiny\.pth: the tensor names are neither")),
    ("sparse-storage-params", Case(file(_one(stype=1), "sparse.params"), 2,
                                   r"array 0 has row_sparse storage")),
    ("sparse-storage-pth", Case(
        file(lambda: torch_bytes({"w": _torch().eye(3).to_sparse()}), "sparse.pth"), 2,
        r"sparse\.pth: w has sparse_coo storage; only dense tensors")),
    ("pickle-payload-raw", Case(
        lambda f: file(payload_pth, "evil.pth", f / MARKER, False)(f), 2,
        r"evil\.pth: .*Python objects other than tensors \(refused")),
    ("pickle-payload-bare", Case(       # no torch header: read as a pickle of arrays (PaddlePaddle's)
        lambda f: file(payload_pth, "evil.pth", f / MARKER, False, False)(f), 2,
        r"evil\.pth: not a PaddlePaddle state dict: its pickle names posix\.system \(refused")),
    ("pickle-payload-in-zip", Case(
        lambda f: file(payload_pth, "evil.pth", f / MARKER, True)(f), 2,
        r"evil\.pth: .*Python objects other than tensors \(refused")),
    ("pickle-not-a-state-dict", Case(
        file(lambda: torch_bytes({"epoch": 3, "acc": [0.5]}), "opt.pth"), 2,
        r"opt\.pth: holds a dict, not a state_dict|not named tensors")),
    ("pth-complex-dtype", Case(
        file(lambda: torch_bytes({"w": _torch().zeros(3, dtype=_torch().complex64)}), "c.pth"), 2,
        r"c\.pth: w is a complex64 tensor")),
    ("safetensors-bad-json", Case(
        file(struct.pack("<Q", 10) + b'{"a": [1, ' + bytes(16), "json.safetensors"), 2,
        r"json\.safetensors: not a valid safetensors file: .*invalid JSON")),
    ("safetensors-deep-json", Case(
        file(lambda: (lambda h: struct.pack("<Q", len(h)) + h)(b'{"a":' + b"[" * 5000 + b"]" * 5000
                                                              + b"}"), "deep.safetensors"), 2,
        r"deep\.safetensors: not a valid safetensors file")),
    ("safetensors-overlapping-offsets", Case(
        file(st_edit, "overlap.safetensors",
             lambda h: h["conv.weight"].update(data_offsets=[0, 80])), 2,
        r"overlap\.safetensors: not a valid safetensors file: .*offset")),
    ("safetensors-offsets-out-of-range", Case(
        file(st_edit, "range.safetensors",
             lambda h: h["bn.running_var"].update(data_offsets=[20, 4000])), 2,
        r"range\.safetensors: not a valid safetensors file: .*offset")),
    ("safetensors-wrong-dtype-string", Case(
        file(st_edit, "dtype.safetensors", lambda h: h["conv.weight"].update(dtype="F99")), 2,
        r"dtype\.safetensors: not a valid safetensors file: .*unknown variant `F99`")),
    ("safetensors-bfloat16", Case(
        file(st_edit, "bf16.safetensors",
             lambda h: h["conv.weight"].update(dtype="BF16", shape=[2, 3, 6])), 2,
        r"bf16\.safetensors: conv\.weight is BF16; a checkpoint holds float16/")),
    ("safetensors-metadata-not-a-string", Case(
        file(st_edit, "meta.safetensors", lambda h: h.update(__metadata__={"classes": 5})), 2,
        r"meta\.safetensors: not a valid safetensors file: .*expected a string")),
    ("safetensors-metadata-unknown-arch", Case(
        file(tiny_safetensors, "arch.safetensors", {"architecture": "resnet50"}), 2,
        r"arch\.safetensors: metadata names architecture 'resnet50', not a DPN")),
    ("safetensors-metadata-bad-classes", Case(
        file(tiny_safetensors, "cls.safetensors", {"classes": "-1000"}), 2,
        r"cls\.safetensors: metadata says classes '-1000', not a class count")),
    ("safetensors-metadata-bad-classifier", Case(
        file(tiny_safetensors, "fc.safetensors", {"classifier": "fc7"}), 2,
        r"fc\.safetensors: metadata names classifier 'fc7'")),
    ("timm-config-not-an-object", Case(timm_folder([1, 2]), 2,
                                       r"hub: config\.json holds a JSON list, not an object")),
    ("timm-config-invalid-json", Case(timm_folder(b'{"architecture": '), 2,
                                      r"hub: unreadable config\.json")),
    ("timm-config-deep-nesting", Case(timm_folder(b"[" * 100000 + b"]" * 100000), 2,
                                      r"hub: unreadable config\.json")),
    ("timm-config-too-big", Case(timm_folder({"architecture": "dpn68", "pad": "x" * (2 << 20)}),
                                 2, r"hub: config\.json is \d+ bytes; a timm config is a few KiB")),
    ("timm-config-num-classes-string", Case(
        timm_folder({"architecture": "dpn68", "num_classes": "1000"}), 2,
        r"hub: config\.json: num_classes is '1000', not a class count")),
    ("timm-config-num-classes-bool", Case(
        timm_folder({"architecture": "dpn68", "num_classes": True}), 2,
        r"num_classes is 'True', not a class count")),
    ("timm-config-unknown-arch", Case(timm_folder({"architecture": "resnet50"}), 2,
                                      r"config\.json: metadata names architecture 'resnet50'")),
    ("nan-weights-warn", Case(file(lambda: params_bytes(dpn68(edit=_set_value(FIRST_CONV, np.nan))),
                                   "nan-0000.params"), 0,
                              r"warning: .*nan-0000\.params: %s holds 1 NaN of \d+ values"
                              % FIRST_CONV)),
    ("nan-weights-strict", Case(file(lambda: params_bytes(dpn68(edit=_set_value(FIRST_CONV, np.nan))),
                                     "nan-0000.params"), 2,
                                r"nan-0000\.params: refused \(--strict\): 1 tensor with wrong values: %s holds "
                                r"1 NaN" % FIRST_CONV, ("--strict",))),
    ("inf-weights-warn", Case(file(lambda: params_bytes(dpn68(edit=_set_value(FIRST_CONV, -np.inf))),
                                   "inf-0000.params"), 0, r"%s holds 1 Inf" % FIRST_CONV)),
    ("bn-variance-zero-warn", Case(file(lambda: params_bytes(dpn68(edit=_set_value(VAR, 0.0))),
                                        "var-0000.params"), 0,
                                   r"warning: .*%s \(BatchNorm variance\) has 1 of \d+ values <= 0"
                                   % VAR)),
    ("bn-variance-negative-strict", Case(
        file(lambda: params_bytes(dpn68(edit=_set_value(VAR, -1.0, at=(0, 1)))), "var-0000.params"),
        2, r"1 tensor with wrong values: %s \(BatchNorm variance\) has 2 of \d+ values <= 0 \(min -1\)" % VAR,
        ("--strict",))),
    ("swapped-shapes-params", Case(
        file(lambda: params_bytes(dpn68(edit=_swap(GAMMA_A, GAMMA_B))), "swap-0000.params"), 2,
        r"swap-0000\.params does not match dpn68: misshapen 2: %s \(\d+,\) \(expected \(\d+,\)\), "
        r"%s" % (GAMMA_A, GAMMA_B))),
    ("swapped-shapes-pth", Case(swapped_pth, 2,
                                r"swapped\.pth does not match dpn68: misshapen 2: "
                                r"features\.conv2_1\.c1x1_a\.bn\.weight \(\d+,\) \(expected \(\d+,\)\), "
                                r"features\.conv3_1\.c1x1_a\.bn\.weight")),
    ("wrong-arch", Case(file(lambda: params_bytes(dpn68()), "dpn68-0000.params"), 2,
                        r"dpn68-0000\.params does not match dpn92 \(--arch; the tensors are dpn68 "
                        r"with 1000 classes\): missing \d+: .*misshapen", ("--arch", "dpn92"))),
    ("5k-head-with-arch-dpn68", Case(
        file(lambda: params_bytes(dpn68("dpn68-5k")), "dpn68-5k-0000.params"), 2,
        r"does not match dpn68 \(--arch; the tensors are dpn68b with 4786 classes\)",
        ("--arch", "dpn68"))),
    ("5k-head-timm-config-1k", Case(
        timm_folder_5k_config_1k, 2,
        r"hub-5k: config\.json num_classes says 1000, but classifier\.weight has 4786 rows")),
    ("5k-head-safetensors-metadata-1k", Case(
        safetensors_5k_metadata_1k, 2,
        r"m5k\.safetensors: metadata classes says 1000, but classifier\.weight has 4786 rows")),
    ("read-only-output-folder", Case(file(lambda: params_bytes(dpn68()), "ro-0000.params"), 2,
                                     r"output folder .*out is not writable", ("--force",),
                                     output="immutable")),
    ("read-only-output-mount", Case(file(lambda: params_bytes(dpn68()), "ro-0000.params"), 2,
                                    r"output folder .*out is not writable", ("--force",),
                                    output="ro-mount")),
    ("full-disk-injected-write", Case(file(lambda: params_bytes(dpn68()), "full-0000.params"), 2,
                                      r"out\.params: cannot write: No space left on device",
                                      ("--force",), to="gluon", output="enospc-write")),
    ("full-disk-injected-fsync", Case(file(lambda: params_bytes(dpn68()), "full-0000.params"), 2,
                                      r"out\.safetensors: cannot write: No space left on device",
                                      ("--force",), output="enospc-fsync")),
    ("full-disk-real-tmpfs", Case(file(lambda: params_bytes(dpn68()), "full-0000.params"), 2,
                                  r"out\.params: cannot write: No space left on device",
                                  ("--force",), to="gluon", output="tmpfs")),
]

_SUFFIX = {"safetensors": ".safetensors", "gluon": ".params", "torch": ".pth"}


def _fingerprint(src: Path):
    files = sorted(src.iterdir()) if src.is_dir() else [src]
    return [(f.name, hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
            for f in files]


@dataclass
class Outcome:
    code: int
    stderr: str
    listing: list
    previous: Optional[bytes]


def _in_namespace(out_dir: Path, setup: str, argv) -> Outcome:
    """Run the CLI as a subprocess in a private mount namespace with a 64 KiB tmpfs at
    out_dir, holding a previous output; report what the folder holds afterwards."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             "mount -t tmpfs -o size=64k none %s" % out_dir], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs unshare and CAP_SYS_ADMIN); "
                    "the injected ENOSPC rows cover this")
    out = out_dir / argv[argv.index("-o") + 1].name
    script = ('mount -t tmpfs -o size=64k none "$DIR" && printf %s "$OLD" > "$OUT" && {setup} && '
              '{{ "$@"; echo "::rc=$?"; printf "::ls=%s\\n" "$(ls -A "$DIR" | tr "\\n" " ")"; '
              'printf "::previous=%s\\n" "$(cat "$OUT")"; }}').format(setup=setup)
    env = dict(os.environ, PYTHONPATH=str(ROOT), DIR=str(out_dir), OUT=str(out), OLD=OLD.decode())
    run = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                          sys.executable, "-m", "dpn_gluon.convert.cli", *map(str, argv)],
                         env=env, capture_output=True, text=True, timeout=300)
    fields = dict(re.findall(r"^::(\w+)=(.*)$", run.stdout, re.M))
    assert "rc" in fields, run.stdout + run.stderr
    return Outcome(int(fields["rc"]), run.stderr, fields["ls"].split(),
                   (fields["previous"] + "\n").encode())


def _invoke(case: Case, argv, out_dir: Path, out: Path, monkeypatch) -> Outcome:
    if case.output == "tmpfs":
        return _in_namespace(out_dir, "true", argv)
    if case.output == "ro-mount":
        return _in_namespace(out_dir, 'mount -o remount,ro "$DIR" && ! touch "$DIR/probe" 2>/dev/null',
                             argv)
    undo = None
    if case.output:
        out.write_bytes(OLD)
    if case.output == "immutable":
        undo = immutable(out_dir)
    elif case.output == "enospc-write":
        real, room = Progress.write, [1 << 20]

        def write(self, data):
            room[0] -= memoryview(data).nbytes
            if room[0] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(self, data)
        monkeypatch.setattr(Progress, "write", write)
    elif case.output == "enospc-fsync":
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(atomic.os, "fsync", fsync)
    try:
        r = CliRunner().invoke(main, [str(a) for a in argv], catch_exceptions=False)
    finally:
        monkeypatch.undo()
        if undo:
            subprocess.run(undo, check=True)
    return Outcome(r.exit_code, r.stderr, sorted(p.name for p in out_dir.iterdir()),
                   out.read_bytes() if case.output and out.exists() else None)


@pytest.fixture
def folder(tmp_path_factory):
    path = fast_folder(tmp_path_factory, "hostile")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("case", [pytest.param(c, id=i) for i, c in CASES])
def test_hostile_input(case: Case, folder: Path, monkeypatch):
    inputs = folder / "in"
    inputs.mkdir()
    src = case.build(inputs)
    out_dir = folder / "out"
    out_dir.mkdir()
    out = out_dir / ("out" + _SUFFIX[case.to])
    before = _fingerprint(src)
    listing = sorted(p.name for p in inputs.iterdir())
    argv = [src, "--to", case.to, "-o", out, "--no-check", *case.args]

    got = _invoke(case, argv, out_dir, out, monkeypatch)

    lines = got.stderr.strip().splitlines()
    assert "Traceback" not in got.stderr
    assert got.code == case.code, got.stderr
    if case.code == 2:
        assert lines and lines[-1].startswith("dpn-convert: error: "), got.stderr
        assert [line for line in lines if "error:" in line] == lines[-1:], got.stderr
        assert re.search(case.match, lines[-1]), lines[-1]
        if case.output:                        # the previous output is intact, nothing beside it
            assert got.listing == [out.name] and got.previous == OLD
        else:
            assert got.listing == []
    else:
        assert any(re.search(case.match, line) for line in lines), got.stderr
        assert got.listing == [out.name]
    assert _fingerprint(src) == before                  # the input is never modified
    assert sorted(p.name for p in inputs.iterdir()) == listing
    assert not (inputs / MARKER).exists()               # no pickle payload ran


def test_the_table_covers_the_issue():
    """The rows the issue asks for are all present (by id)."""
    ids = [i for i, _ in CASES]
    for needed in ["empty-file", "random-bytes", "wrong-magic", "lying-", "2^40-elements",
                   "sparse-storage", "pickle-payload", "safetensors-bad-json", "nan-weights",
                   "swapped-shapes", "wrong-arch", "5k-head", "read-only-output-folder",
                   "full-disk", "bn-variance"]:
        assert any(needed in i for i in ids), needed
    for ext in ("params", "pth", "safetensors"):
        assert len([i for i in ids if i.startswith("truncated-%s-" % ext)]) == 10


def test_the_payload_would_run_if_unpickled(tmp_path):
    """The payload row is a real one: plain pickle.loads runs it (so its refusal counts)."""
    marker = tmp_path / MARKER
    pickle.loads(payload_pth(marker, zipped=False, legacy_head=False))
    assert marker.exists()


def test_valid_sources_of_the_table_convert(folder):
    """The files the broken rows start from are valid: unchanged, each converts (exit 0)."""
    for name, data in [("ok-0000.params", params_bytes(dpn68())), ("tiny.pth", tiny_pth())]:
        (folder / name).write_bytes(data)
    r = CliRunner().invoke(main, [str(folder / "ok-0000.params"), "--to", "torch", "-o",
                                  str(folder / "ok.pth"), "--no-check", "--strict"])
    assert r.exit_code == 0, r.output
    assert read_as(folder / "tiny.pth", "torch")[0]["conv.weight"].shape == (2, 3, 3)
    assert list(read_as(folder / "ok.pth", "torch")[0])[0] == \
        "features.conv1_1.conv.weight"


def test_warnings_in_the_json_record(folder):
    """Without --strict, wrong values are listed in --json's "warnings" (and the output is
    written); a clean checkpoint has none."""
    nan = folder / "nan-0000.params"
    nan.write_bytes(params_bytes(dpn68(edit=_set_value(FIRST_CONV, np.nan))))
    size = int(np.prod(variants.tensor_spec(variants.ARCHS["dpn68"])[FIRST_CONV]))
    r = CliRunner().invoke(main, [str(nan), "--to", "gluon", "-o", str(folder / "g.params"),
                                  "--no-check", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["warnings"] == ["%s: %s holds 1 NaN of %d values"
                                                % (nan, FIRST_CONV, size)]
    assert (folder / "g.params").is_file()
    clean = folder / "ok-0000.params"
    clean.write_bytes(params_bytes(dpn68()))
    r = CliRunner().invoke(main, [str(clean), "--to", "gluon", "-o", str(folder / "h.params"),
                                  "--no-check", "--json", "--strict"])
    assert r.exit_code == 0 and json.loads(r.stdout)["warnings"] == []


#: Examples of the readers' fuzz run in CI (about 20 s); more: DPN_FUZZ_READERS=20000.
READER_EXAMPLES = int(os.environ.get("DPN_FUZZ_READERS", "1500"))


def test_fuzz_torch_and_safetensors_readers(tmp_path, capsys):
    """Mutations of a tiny zip .pth, a legacy .pth and a safetensors file (with metadata):
    detect + read gives arrays no larger than the file, or a one-line CheckpointError;
    nothing else, and no payload can appear (the unpickler builds only tensors)."""
    _torch()
    from test_hostile_readers import fuzz_files
    seeds = [tiny_pth(), legacy_pth(6, 6), tiny_safetensors({"architecture": "dpn68",
                                                             "classes": "1000"})]
    stats = fuzz_files(seeds, READER_EXAMPLES, tmp_path / "fuzz.bin")
    with capsys.disabled():
        print("\nfuzz torch/safetensors readers: %(executions)d executions (%(parsed)d parsed, "
              "%(refused)d refused) over 3 seeds in %(seconds).1f s" % stats)


def test_wrong_values_keep_the_exact_check_and_skip_the_numeric_one(folder):
    """NaN weights give NaN logits in both frameworks: the numeric check is skipped with a
    note (it would report a failure the conversion did not cause); the bit-for-bit check of
    every tensor still runs and passes (NaN payloads included)."""
    src = folder / "nan-0000.params"
    src.write_bytes(params_bytes(dpn68(edit=_set_value(FIRST_CONV, np.nan))))
    r = CliRunner().invoke(main, [str(src), "--to", "torch", "-o", str(folder / "n.pth"), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["ok"] and rec["check"]["exact"] is True
    assert any("numeric check skipped" in n for n in rec["notes"])
    assert "bit-identical" in r.stderr
