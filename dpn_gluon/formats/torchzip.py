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
from typing import TYPE_CHECKING, BinaryIO, Callable, Mapping, Optional

if TYPE_CHECKING:
    from collections import OrderedDict

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


# -- reading, without torch ----------------------------------------------------------------

_DTYPE_OF = {name: dtype for dtype, name in _STORAGE.items()}


def view_span(size, stride, offset: int, itemsize: int, storage_nbytes: int):
    """The bytes ``(start, end)`` a tensor covers in its storage, or why it is refused.

    The layout rule of a state dict, for the readers with and without torch alike: each
    tensor is C-contiguous (a stride-0 or other broadcast view would expand a few stored
    bytes into any amount) and lies inside its storage; :func:`overlapping` then keeps two
    tensors from sharing bytes, so the tensors of a file never hold more than it stores.
    """
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or offset < 0 or min(size + stride, default=0) < 0:
        return "has size %s, stride %s, offset %s" % (size, stride, offset)
    numel, expected = 1, 1
    for d, s in zip(reversed(size), reversed(stride)):
        if d > 1 and s != expected:
            return ("is not contiguous (size %s, stride %s): a state_dict holds each tensor "
                    "in bytes of its own" % (size, stride))
        expected *= d
        numel *= d
    start = offset * itemsize
    end = start + numel * itemsize
    if end > storage_nbytes:
        return "reaches past its storage (%d bytes of %d)" % (end, storage_nbytes)
    return start, end


def overlapping(spans):
    """The names of two tensors sharing bytes of one storage, or None; ``spans`` holds
    ``(storage id, start, end, name)`` (the same tensor under two names shares them all)."""
    last = {}
    for storage, start, end, name in sorted(spans, key=lambda sp: sp[:3]):
        if start == end:
            continue
        prev = last.get(storage)
        if prev is not None and start < prev[0]:
            return prev[1], name
        if prev is None or end > prev[0]:
            last[storage] = (end, name)
    return None


class _Storage:
    """Stands for ``torch.<T>Storage`` in a pickle: only its dtype matters here."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


def read_state_dict(path, source: Optional[str] = None, max_tensors: Optional[int] = None
                    ) -> "OrderedDict[str, np.ndarray]":
    """Read a zip-format ``torch.save`` state dict of plain tensors into numpy, without torch.

    For machines without torch (the converter's numpy-only install). The pickle is read by
    an unpickler that resolves only the globals a state dict of tensors uses
    (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and the storage types
    above), like ``torch.load(weights_only=True)``; anything else -- a code-executing payload
    included -- is refused before it runs. Every storage must be a stored record of exactly
    its declared size, and every tensor must keep the layout rule of :func:`view_span` (no
    copies are made: tensors are read-only views of the records). ``max_tensors`` bounds the
    tensors the pickle may build. The zip's CRCs are checked as the records are read.
    """
    import io
    import pickle
    from collections import OrderedDict

    from ..errors import CheckpointError

    source = source or str(path)

    def fail(why: str):
        raise CheckpointError("%s: not a loadable PyTorch state_dict: %s" % (source, why))

    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        fail("a broken zip archive (%s)" % e)
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            fail("no single <archive>/data.pkl record")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in zf.namelist():      # torch >= 1.10 writes it
            with zf.open(prefix + "byteorder") as f:
                order = f.read(16)
            if order.strip() != b"little":
                fail("its byteorder record says %r; only little-endian files are read "
                     "without torch" % order.decode("ascii", "replace"))
        storages = {}

        def storage(dtype: np.dtype, key: str, numel: int) -> np.ndarray:
            if key not in storages:
                name = "%sdata/%s" % (prefix, key)
                try:
                    info = zf.getinfo(name)
                except KeyError:
                    fail("storage %r has no record" % key)
                if info.compress_type != zipfile.ZIP_STORED or \
                        info.file_size != numel * dtype.itemsize:
                    fail("record %s is not a stored %d-byte storage" % (name, numel * dtype.itemsize))
                storages[key] = np.frombuffer(zf.read(info), dtype=dtype)
            return storages[key]

        spans, built = {}, [0]     # by id(): every rebuilt array stays alive in its result

        def rebuild(stor, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
            built[0] += 1
            if max_tensors is not None and built[0] > max_tensors:
                fail("more than %d tensors" % max_tensors)
            if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)
                    and all(isinstance(i, int) for i in size + stride)):
                fail("a tensor with size %r, stride %r, offset %r" % (size, stride, offset))
            span = view_span(size, stride, offset, stor.itemsize, stor.nbytes)
            if isinstance(span, str):
                fail("a tensor " + span)
            arr = stor[offset:offset + (span[1] - span[0]) // stor.itemsize].reshape(size)
            spans[id(arr)] = (id(stor),) + span
            return arr

        allowed = {("collections", "OrderedDict"): OrderedDict,
                   ("torch._utils", "_rebuild_tensor_v2"): rebuild}
        allowed.update({("torch", name): _Storage(dtype) for name, dtype in _DTYPE_OF.items()})

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) not in allowed:
                    fail("holds Python objects other than tensors (%s.%s)" % (module, name))
                return allowed[(module, name)]

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                        and isinstance(pid[1], _Storage) and isinstance(pid[2], str)
                        and isinstance(pid[4], int) and pid[4] >= 0):
                    fail("an unknown persistent id")
                return storage(pid[1].dtype, pid[2], pid[4])

        try:
            obj = Unpickler(io.BytesIO(zf.read(pkl[0]))).load()
        except CheckpointError:
            raise
        except Exception as e:      # a malformed pickle fails in many ways
            fail("%s: %s" % (type(e).__name__, e))
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and id(v) in spans for k, v in obj.items()):
        fail("not a mapping of named tensors")
    shared = overlapping([spans[id(v)] + (k,) for k, v in obj.items()])
    if shared:
        fail("%s and %s share bytes of one storage (a state_dict holds each tensor in its own "
             "bytes)" % shared)
    return OrderedDict(obj)
