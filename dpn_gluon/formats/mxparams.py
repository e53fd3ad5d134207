"""A pure-numpy reader and writer of MXNet's NDArray file format (``.params``).

What ``mx.nd.save`` / ``mx.nd.load`` and ``Module.save_checkpoint`` use, without MXNet, so the
authors' checkpoints can be converted on any Python. Compatible with MXNet 1.x
(src/ndarray/ndarray.cc, ``NDArray::Save`` / ``NDArray::Load``); files written here are
byte-identical to ``mx.nd.save`` of the same arrays (tested against MXNet 1.9.1).

Layout, little-endian::

    uint64 0x112 (list magic), uint64 0 (reserved)
    uint64 n, then n arrays:
        uint32 magic: 0xF993fac9 (V2: storage type), 0xF993fac8 (V1: int64 shape),
                      0xF993faca (V3: NumPy shape semantics), or else a legacy ndim
        V2/V3: int32 storage type (0 dense; sparse types are refused)
        shape: int32 ndim + ndim x int64 (V1-V3) | uint32 dims (legacy: the magic was ndim)
        int32 dev_type, int32 dev_id, int32 type flag, then the raw data
    uint64 m, then m names: uint64 length + bytes (m == 0: a list, else a dict)

Every count, length and shape is checked against the bytes that remain before anything is
allocated, so a truncated or lying file is a :class:`CheckpointError`, never a MemoryError,
an OverflowError or a hang (fuzzed: fuzz/fuzz_params.py, tests/test_hostile_params.py).
Arrays are memory-mapped read-only (``mmap=True``) or copied out of the file; the file is
opened read-only and must be a regular file (a FIFO or /dev/zero is refused, not read).

Where this reader is stricter than ``mx.nd.load`` (1.9.1), on purpose: sparse storage,
bfloat16 and "none" arrays (no shape: MXNet returns an NDArray that cannot be used) are
refused; duplicate names and bytes after the names (MXNet ignores them) are errors. A 0-d
legacy or V1 array is read as MXNet 1.9.1 reads it, a scalar (MXNet before 1.0 wrote "none"
arrays that way, with no data after the shape; such a file fails here, as it does in 1.9.1).
Type flags 8-11 (int16, uint16, uint32, uint64) are MXNet 2.x's: read, never written (the
converter's readers refuse them: no other target holds them).
"""
from __future__ import annotations

import mmap as _mmap
import os
import stat
import struct
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, List, Mapping, Optional, Tuple, Union

import numpy as np

from ..errors import CheckpointError

LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA

#: MXNet's type flags (mshadow/base.h) and the numpy dtypes they hold.
DTYPES = {
    0: np.dtype("<f4"), 1: np.dtype("<f8"), 2: np.dtype("<f2"), 3: np.dtype("u1"),
    4: np.dtype("<i4"), 5: np.dtype("i1"), 6: np.dtype("<i8"), 7: np.dtype("?"),
    8: np.dtype("<i2"), 9: np.dtype("<u2"), 10: np.dtype("<u4"), 11: np.dtype("<u8"),
}
FLAGS = {dt: flag for flag, dt in DTYPES.items()}
_TYPE_NAMES = {12: "bfloat16"}
_STORAGE = {1: "row_sparse", 2: "csr"}
MAX_NDIM = 32
#: Type flags MXNet 1.x can read (mshadow kFloat32..kBool); the writer uses only these.
MX1_FLAGS = frozenset(range(8))
#: A zero-size array may have large other dimensions, but not absurd ones (numpy would
#: refuse the shape with a ValueError).
_MAX_ZERO_SIZE_EXTENT = 1 << 48
# The smallest array record: a legacy 0-d int8 array (uint32 ndim, context, flag, 1 byte).
_MIN_ARRAY_BYTES = 17

PathLike = Union[str, Path]


def is_params(head: bytes) -> bool:
    """True if the first 16 bytes are an NDArray list file's header."""
    return len(head) >= 16 and struct.unpack("<QQ", head[:16]) == (LIST_MAGIC, 0)


class _Reader:
    def __init__(self, buf, source: str):
        if isinstance(buf, memoryview):
            buf = buf.cast("B")               # len() must count bytes, not items
        self.buf, self.pos, self.size, self.source = buf, 0, len(buf), source

    def fail(self, what: str):
        raise CheckpointError("%s: not a valid MXNet .params file: %s (at byte %d of %d)"
                              % (self.source, what, self.pos, self.size))

    def take(self, n: int, what: str):
        if n < 0 or n > self.size - self.pos:
            self.fail("%s needs %d bytes, %d remain" % (what, n, self.size - self.pos))
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, fmt: str, what: str):
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)

    def count(self, item_min_bytes: int, what: str) -> int:
        (n,) = self.unpack("<Q", what)
        if n * item_min_bytes > self.size - self.pos:
            self.fail("%s says %d, more than the file can hold (%d bytes remain)"
                      % (what, n, self.size - self.pos))
        return n


def _read_array(r: _Reader, index: int, copy: bool) -> np.ndarray:
    (magic,) = r.unpack("<I", "array %d magic" % index)
    if magic in (V2_MAGIC, V3_MAGIC):
        (stype,) = r.unpack("<i", "array %d storage type" % index)
        if stype != 0:
            r.fail("array %d has %s storage; only dense arrays are supported"
                   % (index, _STORAGE.get(stype, "unknown (%d)" % stype)))
    if magic in (V1_MAGIC, V2_MAGIC, V3_MAGIC):
        (ndim,) = r.unpack("<i", "array %d ndim" % index)
        if ndim == -1 and magic == V3_MAGIC or ndim == 0 and magic == V2_MAGIC:
            r.fail("array %d has no shape (an uninitialised NDArray)" % index)
        if not 0 <= ndim <= MAX_NDIM:
            r.fail("array %d has ndim %d" % (index, ndim))
        shape = r.unpack("<%dq" % ndim, "array %d shape" % index)
    else:                                     # legacy: the magic was ndim, dims are uint32
        ndim = magic
        if ndim > MAX_NDIM:
            r.fail("unknown array magic 0x%08x" % magic)
        shape = r.unpack("<%dI" % ndim, "array %d shape" % index)
    if any(d < 0 for d in shape):
        r.fail("array %d has a negative dimension in shape %s" % (index, shape))
    r.unpack("<ii", "array %d context" % index)
    (flag,) = r.unpack("<i", "array %d type flag" % index)
    if flag not in DTYPES:
        r.fail("array %d has unsupported type %s"
               % (index, _TYPE_NAMES.get(flag, "flag %d" % flag)))
    dtype = DTYPES[flag]
    count = extent = 1
    for d in shape:                           # checked per step: no huge products
        count *= d
        extent *= d or 1
        if count * dtype.itemsize > r.size - r.pos or extent > _MAX_ZERO_SIZE_EXTENT:
            r.fail("array %d of shape %s needs more bytes than remain" % (index, shape))
    start = r.take(count * dtype.itemsize, "array %d data" % index)
    arr = np.frombuffer(r.buf, dtype=dtype, count=count, offset=start).reshape(shape)
    return arr.copy() if copy else arr


def loads(buf, source: str = "<bytes>", copy: bool = True, max_arrays: Optional[int] = None
          ) -> "Union[OrderedDict[str, np.ndarray], List[np.ndarray]]":
    """Parse an NDArray file held in ``buf`` (bytes, memoryview or mmap).

    Returns an OrderedDict name -> array when the file stores names (as every checkpoint
    does), else a list. With ``copy=False`` the arrays are read-only views into ``buf``.
    A file of more than ``max_arrays`` arrays is refused before any array is parsed.
    """
    r = _Reader(buf, source)
    if r.size < 16:
        r.fail("shorter than the 16-byte header")
    magic, reserved = r.unpack("<QQ", "header")
    if magic != LIST_MAGIC or reserved != 0:
        r.pos = 0
        r.fail("wrong magic 0x%x" % magic)
    n = r.count(_MIN_ARRAY_BYTES, "array count")
    if max_arrays is not None and n > max_arrays:
        r.fail("%d arrays, more than the %d expected" % (n, max_arrays))
    arrays = [_read_array(r, i, copy) for i in range(n)]
    m = r.count(8, "name count")
    if m not in (0, n):
        r.fail("%d names for %d arrays" % (m, n))
    names = []
    for i in range(m):
        length = r.count(1, "name %d length" % i)
        start = r.take(length, "name %d" % i)
        try:
            names.append(bytes(r.buf[start:start + length]).decode("utf-8"))
        except UnicodeDecodeError:
            r.fail("name %d is not UTF-8" % i)
    if r.pos != r.size:
        r.fail("%d unexpected bytes after the names" % (r.size - r.pos))
    if not m:
        return arrays
    if len(set(names)) != len(names):
        seen = set()
        r.fail("duplicate array name %r" % next(n for n in names if n in seen or seen.add(n)))
    return OrderedDict(zip(names, arrays))


def load(path: PathLike, mmap: bool = False, max_arrays: Optional[int] = None):
    """Read a ``.params`` file. ``mmap=True`` returns read-only arrays backed by the file;
    ``max_arrays`` as in :func:`loads`.

    The file is opened read-only and non-blocking (a FIFO is refused, not waited on).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError("%s: cannot read: not a regular file" % path)
            if not mmap or st.st_size == 0:
                return loads(f.read(st.st_size), str(path), max_arrays=max_arrays)
            mm = _mmap.mmap(fd, 0, access=_mmap.ACCESS_READ)
    except (OSError, ValueError) as e:        # ValueError: a NUL byte or bad encoding in the path
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError("%s: cannot read: %s"
                              % (path, getattr(e, "strerror", None) or e)) from None
    return loads(mm, str(path), copy=False, max_arrays=max_arrays)


def _header(arr: np.ndarray) -> bytes:
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if FLAGS.get(dtype) not in MX1_FLAGS:
        raise CheckpointError("cannot store dtype %s in an MXNet 1.x .params file" % arr.dtype)
    if arr.ndim == 0:
        raise CheckpointError("MXNet 1.x .params files cannot hold 0-d arrays")
    return (struct.pack("<Iii", V2_MAGIC, 0, arr.ndim) + struct.pack("<%dq" % arr.ndim, *arr.shape)
            + struct.pack("<iii", 1, 0, FLAGS[dtype]))


def write(f: BinaryIO, arrays: Union[Mapping[str, np.ndarray], List[np.ndarray]]) -> None:
    """Write arrays (a mapping name -> array, or a list) in ``mx.nd.save``'s layout to ``f``."""
    items = list(arrays.items()) if isinstance(arrays, Mapping) else [(None, a) for a in arrays]
    f.write(struct.pack("<QQQ", LIST_MAGIC, 0, len(items)))
    for _, arr in items:
        arr = np.asarray(arr)
        f.write(_header(arr))
        data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")
                                    if arr.dtype.byteorder == ">" else arr.dtype)
        if data.size:                         # memoryview cannot cast a zero-size array
            f.write(memoryview(data.reshape(-1)).cast("B"))
    names = [n for n, _ in items if n is not None]
    f.write(struct.pack("<Q", len(names)))
    for name in names:
        raw = name.encode("utf-8")
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)


def dumps(arrays) -> bytes:
    import io
    buf = io.BytesIO()
    write(buf, arrays)
    return buf.getvalue()


def split_arg_aux(params: Mapping[str, np.ndarray]) -> Tuple["OrderedDict[str, np.ndarray]", "OrderedDict[str, np.ndarray]"]:
    """``{'arg:x': .., 'aux:y': ..}`` -> (arg_params, aux_params), as mx.model.load_checkpoint."""
    args, aux = OrderedDict(), OrderedDict()
    for k, v in params.items():
        tp, _, name = k.partition(":")
        if tp == "arg":
            args[name] = v
        elif tp == "aux":
            aux[name] = v
    return args, aux
