"""Write a ``torch.save`` state dict (zip format, torch >= 1.6) from numpy arrays, without torch.

Importing torch costs about a second and a few hundred MB of RSS before a single byte is
written, and ``torch.save`` pickles into memory-resident storages; this writer streams each
array's bytes straight from the (memory-mapped) source into the zip. The layout is the one
``torch.save`` writes in torch 2.x and ``torch.load(..., weights_only=True, mmap=True)``
reads: ``archive/data.pkl`` (pickle protocol 2 of an ``OrderedDict`` of
``torch._utils._rebuild_tensor_v2`` over persistent ``('storage', torch.<T>Storage, key,
'cpu', numel)`` ids), ``.format_version``, ``.storage_alignment``, ``byteorder``, one stored
(uncompressed) ``data/<key>`` record per tensor starting on a 64-byte boundary, ``version``.
Only globals in torch's weights-only allow-list are referenced.
"""
from __future__ import annotations

import struct
import zipfile
from typing import BinaryIO, Callable, Mapping, Optional

import numpy as np

ALIGNMENT = 64
_STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage",
            np.dtype("float64"): "DoubleStorage", np.dtype("int64"): "LongStorage",
            np.dtype("int32"): "IntStorage", np.dtype("int8"): "CharStorage",
            np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage"}
_CHUNK = 1 << 24


class _Pickle:
    """Just the protocol-2 opcodes a state dict needs (no memo: every global is spelled out)."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")

    def glob(self, module: str, name: str):
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def str(self, s: str):
        b = s.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(b)) + b

    def int(self, i: int):
        if 0 <= i < 256:
            self.out += b"K" + bytes([i])
        elif -2 ** 31 <= i < 2 ** 31:
            self.out += b"J" + struct.pack("<i", i)
        else:
            raw = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(raw)]) + raw

    def tuple(self, items):
        self.out += b"("
        for i in items:
            self.int(i)
        self.out += b"t"

    def ordered_dict(self):
        self.glob("collections", "OrderedDict")
        self.out += b")R"

    def tensor(self, key: str, arr: np.ndarray):
        shape = arr.shape
        strides = tuple(s // arr.itemsize for s in arr.strides)
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("
        self.str("storage")
        self.glob("torch", _STORAGE[arr.dtype.newbyteorder("<")])
        self.str(key)
        self.str("cpu")
        self.int(arr.size)
        self.out += b"tQ"          # persistent id
        self.int(0)                # storage offset
        self.tuple(shape)
        self.tuple(strides)
        self.out += b"\x89"        # requires_grad False
        self.ordered_dict()        # backward hooks
        self.out += b"tR"


def _aligned_info(zf: zipfile.ZipFile, name: str, offset: int) -> zipfile.ZipInfo:
    """A stored ZipInfo whose data starts on an ALIGNMENT boundary (padding in an extra field)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header = 30 + len(name.encode()) + 4       # local header, name, extra field id + size
    pad = (-(offset + header)) % ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    return info


def write_state_dict(f: BinaryIO, tensors: Mapping[str, np.ndarray], archive: str = "archive",
                     progress: Optional[Callable[[int], None]] = None) -> None:
    """Write ``tensors`` (name -> C-contiguous little-endian array) as ``torch.save`` would
    write the ``OrderedDict`` of the same tensors; ``progress(nbytes)`` after each chunk."""
    arrays = []
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        little = arr.dtype.newbyteorder("<")
        if little not in _STORAGE:
            raise ValueError("%s: dtype %s has no torch storage here" % (name, arr.dtype))
        if not arr.flags.c_contiguous or arr.dtype != little:
            arr = np.ascontiguousarray(arr, dtype=little).reshape(arr.shape)
        arrays.append((name, arr))
    p = _Pickle()
    p.ordered_dict()
    p.out += b"("
    for i, (name, arr) in enumerate(arrays):
        p.str(name)
        p.tensor(str(i), arr)
    p.out += b"u."
    large = sum(a.nbytes for _, a in arrays) > 0x7FFFFFFF
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, data in (("data.pkl", bytes(p.out)), (".format_version", b"1"),
                           (".storage_alignment", str(ALIGNMENT).encode()),
                           ("byteorder", b"little")):
            zf.writestr(_aligned_info(zf, "%s/%s" % (archive, name), zf.fp.tell()), data)
        for i, (_, arr) in enumerate(arrays):
            info = _aligned_info(zf, "%s/data/%d" % (archive, i), zf.fp.tell())
            info.file_size = arr.nbytes
            flat = memoryview(arr.reshape(-1).view(np.uint8))
            with zf.open(info, "w", force_zip64=large) as out:
                for start in range(0, arr.nbytes, _CHUNK):
                    out.write(flat[start:start + _CHUNK])
                    if progress:
                        progress(min(_CHUNK, arr.nbytes - start))
        zf.writestr(_aligned_info(zf, archive + "/version", zf.fp.tell()), b"3\n")
