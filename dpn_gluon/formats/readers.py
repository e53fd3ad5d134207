"""Checkpoint readers: say what a file is from its content, and read its stored tensors.

The first two arrows of a conversion (DESIGN.md, principle 7); :mod:`.formats` re-exports
``resolve_source``, ``detect`` and ``read_raw`` and turns their output into canonical form::

    detect(path)          -> format name, from the content (never the extension)
    read_raw(path, fmt)   -> {stored key: array}, metadata

Formats, and what they must stay compatible with:

- ``mxnet`` / ``gluon``: MXNet NDArray files (``mx.nd.save``; :mod:`.mxparams`), the
  authors' ``arg:``/``aux:`` keys or a Gluon ``save_parameters`` file;
- ``torch``: a ``torch.save`` state_dict (zip, torch >= 1.6, or legacy pickle), loaded with
  ``weights_only=True`` or, without torch, :func:`.torchzip.read_state_dict`;
- ``safetensors``: the safetensors library's files, with string metadata;
- ``timm``: a folder with ``config.json`` + ``model.safetensors`` (``push_to_hf_hub``).

Hostile input: every reader is bounded by the file's size before it allocates (a lying
header, a zip bomb, a storage declared larger than the file), runs no code from the file,
and refuses anything it does not expect in one line naming the file (docs/hostile.md).
"""
from __future__ import annotations

import json
import mmap
import os
import pickle
import re
import struct
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from .. import deps, variants
from ..deps import MissingDependency
from ..errors import CheckpointError, DPNError
from ..files import open_regular, require_regular
from ..safeio.outputs import TIMM_CONFIG, TIMM_WEIGHTS
from . import mxparams, paddle, sanity, torchzip

PathLike = Union[str, Path]


#: dtypes a checkpoint may hold: those every target (MXNet 1.x, torch, safetensors) can
#: store. MXNet 2.x's int16/uint16/uint32/uint64 and bfloat16 are refused when read, by name.
_DTYPES = ("float16", "float32", "float64", "uint8", "int8", "int32", "int64", "bool")
#: The most a config.json may hold: a timm config is about 1 KiB.
MAX_CONFIG_BYTES = 1 << 20
#: safetensors' own limit on the JSON header.
MAX_SAFETENSORS_HEADER = 100_000_000
#: The largest class count a metadata field may declare (the variant table's bound).
MAX_CLASSES = variants.MAX_CLASSES
#: The most tensors a checkpoint may hold: the largest DPN's, plus timm's BatchNorm counters,
#: plus a margin so that a few extra keys still get a key-by-key mismatch report. A file
#: declaring more is refused before its arrays are parsed.
MAX_TENSORS = max(len(spec) + sum(k.endswith("_moving_var") for k in spec)
                  for spec in (variants.tensor_spec(a) for a in variants.ARCHS.values())) + 64
#: torch.save's legacy (pre-zip) format opens with this number pickled on its own
#: (torch/serialization.py MAGIC_NUMBER), in the protocol torch.save was given (2 by default;
#: torch's weights-only loader reads only 2 and 3: 0, 1, 4 and 5 are refused by name).
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_HEADS = tuple(pickle.dumps(_TORCH_MAGIC, protocol=p)
                      for p in range(pickle.HIGHEST_PROTOCOL + 1))
#: The longest tensor name read (the authors' longest is under 60 characters): error lines
#: that list names stay lines.
MAX_NAME = 1024
_ZIP_HEAD = b"PK\x03\x04"


# -- detect ------------------------------------------------------------------------------

def resolve_source(src: PathLike, epoch: Optional[int] = None) -> Path:
    """The file or folder SRC names: ``PREFIX`` with ``epoch`` is ``PREFIX-%04d.params``
    (``PREFIX-symbol.json`` too); a ``PREFIX`` that is not a file means epoch 0. Anything
    but a regular file or a folder (a FIFO, a device, a socket) is refused here."""
    src = Path(src)
    if src.name.endswith("-symbol.json"):      # the graph's file names the checkpoint too
        src = src.with_name(src.name[: -len("-symbol.json")])
        epoch = epoch or 0
    if epoch is not None:
        path = Path("%s-%04d.params" % (src, epoch))
        if not path.exists():
            raise CheckpointError("%s: no such file (from %s with --epoch %d)" % (path, src, epoch))
        _require_file(path)
        return path
    if not src.exists():
        guess = Path("%s-0000.params" % src)
        if guess.exists():
            _require_file(guess)
            return guess
        raise CheckpointError("%s: no such file or folder" % src)
    if not src.is_dir():
        _require_file(src)
    return src


def _require_file(path: Path, what: str = "checkpoint file") -> int:
    """The size of ``path``, which must be a regular file (files.py), as a CheckpointError."""
    try:
        return require_regular(path, what).st_size
    except DPNError as e:
        raise CheckpointError(str(e)) from None


def _open(path: Path, what: str = "checkpoint file"):
    try:
        return open_regular(path, what)
    except DPNError as e:
        raise CheckpointError(str(e)) from None


def _peek(path: Path, n: int) -> bytes:
    with _open(path) as f:
        return f.read(n)


def detect(path: PathLike) -> str:
    """What a file or folder is, from its structure: one of :data:`FORMATS`.

    Checked in an order where no valid file of one format passes another's test:
    safetensors first (its u64 header length fits the file, over a header in braces; the
    first 8 bytes of a ``.params``, zip or pickle file say more than any file holds, or are
    followed by a zero byte), then MXNet's 16-byte list magic, a zip local header (torch >=
    1.6; the reader requires ``data.pkl``), torch's pickled magic number (legacy .pth). A
    ``.params`` file is parsed here, once: the parse is kept for :func:`read_raw`.
    """
    path = Path(path)
    if path.is_dir():
        if (path / TIMM_CONFIG).exists() and (path / TIMM_WEIGHTS).exists():
            _require_file(path / TIMM_CONFIG, "timm config")
            _require_file(path / TIMM_WEIGHTS, "safetensors file")
            return "timm"
        raise CheckpointError("%s: a folder, but not a timm folder (needs %s and %s)"
                              % (path, TIMM_CONFIG, TIMM_WEIGHTS))
    _require_file(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(64)
        if not head:
            raise CheckpointError("%s: an empty file, not a checkpoint" % path)
        if _is_safetensors(f, size):
            return "safetensors"
    if mxparams.is_params(head):
        keys = list(_load_params(path, keep=True))
        return "mxnet" if keys and all(k.startswith(("arg:", "aux:")) for k in keys) else "gluon"
    if head.startswith(_ZIP_HEAD) or head.startswith(_LEGACY_HEADS):
        return "torch"
    if paddle.is_pdparams(head):
        return "paddle"
    if len(head) >= 10 and head[8:10] in (b'{"', b"{}"):
        return "safetensors"        # a broken one (cut short, bad JSON): its reader says why
    if head.lstrip()[:1] == b"{" and b'"nodes"' in head + _peek(path, 4096):
        raise CheckpointError("%s: an MXNet symbol file; pass PREFIX-0000.params (or PREFIX "
                              "with --epoch)" % path)
    raise CheckpointError("%s: not a checkpoint dpn-convert reads (neither MXNet .params, "
                          "PyTorch, safetensors, PaddlePaddle nor a timm folder)" % path)


def _is_safetensors(f, size: int) -> bool:
    """Whether the file open as ``f`` has safetensors' structure: a u64 header length that fits
    the file and safetensors' limit, over a header that opens with ``{`` and closes with ``}``
    (then spaces: safetensors pads to 8 bytes). The JSON itself is parsed by the library, in
    the reader: a Python parse of a 100 MB header could take several times that in memory."""
    f.seek(0)
    head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= min(size - 8, MAX_SAFETENSORS_HEADER):
        return False
    f.seek(8 + n - min(n, 64))
    return f.read(min(n, 64)).rstrip(b" ").endswith(b"}")


# -- read ---------------------------------------------------------------------------------

def read_raw(path: PathLike, fmt: str) -> Tuple["OrderedDict[str, np.ndarray]", Dict[str, str]]:
    """One reader per format: the stored keys and arrays, and the file's metadata. Every
    array has a dtype all targets hold, and all but timm's step counters are floating point."""
    path = Path(path)
    raw, metadata = _READERS[fmt](path)
    if len(raw) > MAX_TENSORS:
        raise CheckpointError("%s: holds %d tensors, more than any DPN checkpoint (at most %d)"
                              % (path, len(raw), MAX_TENSORS))
    for key, arr in raw.items():
        if len(key) > MAX_NAME:
            raise CheckpointError("%s: a tensor name of %d characters (%s...), not a DPN's"
                                  % (path, len(key), key[:40]))
        check_dtype(path, key, arr.dtype.name)
    return raw, metadata


def check_dtype(path, key: str, dtype: str) -> None:
    """Refuse, in one line naming the tensor, a dtype some target cannot hold or a non-float
    weight or statistic (sanity.wrong_kind)."""
    if dtype not in _DTYPES:
        raise CheckpointError("%s: %s is %s; a checkpoint holds %s (what every target can "
                              "store)" % (path, key, dtype, "/".join(_DTYPES)))
    wrong = sanity.wrong_kind(key, np.dtype(dtype))
    if wrong:
        raise CheckpointError("%s: %s" % (path, wrong))


#: One parse per ``.params`` file: :func:`detect` parses it (to tell the authors' keys from
#: Gluon's) and leaves the parse here for the reader that follows, keyed by the file's
#: identity and change times (a file replaced in between is parsed again).
_PARSED: Dict[tuple, Mapping] = {}


def _load_params(path: Path, keep: bool = False):
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
           st.st_ctime_ns)
    loaded = _PARSED.pop(key, None)
    if loaded is None:
        loaded = mxparams.load(path, mmap=True, max_arrays=MAX_TENSORS)
        if not isinstance(loaded, Mapping):
            raise CheckpointError("%s: an NDArray list without names, not a checkpoint" % path)
    if keep:
        _PARSED.clear()
        _PARSED[key] = loaded
    return loaded


def _read_mxnet(path: Path):
    raw = _load_params(path)
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    misplaced = []
    for key, arr in raw.items():
        kind, _, name = key.partition(":")
        if (kind == "aux") != variants.is_aux(name):
            misplaced.append(key)
        out[name] = arr
    if misplaced:
        raise CheckpointError("%s: arrays under the wrong arg:/aux: prefix: %s"
                              % (path, ", ".join(misplaced[:4])))
    return out, {}


def _read_gluon(path: Path):
    raw = _load_params(path)
    if any(k.startswith(("arg:", "aux:")) for k in raw):
        raise CheckpointError("%s: mixes arg:/aux: keys with unprefixed ones" % path)
    return OrderedDict(raw.items()), {}


def _check_torch_zip(path: Path) -> set:
    """A zip-format ``.pth`` may hold nothing bigger than itself: ``torch.save`` stores every
    record uncompressed, so a compressed record (a zip bomb) or one larger than the file is
    refused before torch reads anything. Then every record's CRC-32 is verified, streaming,
    whichever library reads the file next (torch does not check them): a flipped bit is
    refused, not converted. Returns the sizes of the tensor data records and the protocol
    of ``data.pkl``'s pickle."""
    import zipfile
    size = _require_file(path)

    def broken(e: Exception) -> CheckpointError:
        return CheckpointError("%s: not a loadable PyTorch state_dict: a broken zip archive (%s)"
                               % (path, str(e).splitlines()[0] if str(e) else type(e).__name__))

    with _open(path) as f:
        try:
            z = zipfile.ZipFile(f)
        except Exception as e:   # zipfile raises BadZipFile, NotImplementedError, struct.error, ...
            raise broken(e) from None
        with z:
            infos = z.infolist()
            if not any(i.filename.endswith("/data.pkl") or i.filename == "data.pkl" for i in infos):
                raise CheckpointError("%s: a zip archive without data.pkl, not a PyTorch file" % path)
            if len(infos) > MAX_TENSORS + 8:      # data.pkl, version, byteorder, ...
                raise CheckpointError("%s: a zip archive of %d records, more than any DPN "
                                      "checkpoint holds" % (path, len(infos)))
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED:
                    raise CheckpointError("%s: record %s is compressed (%d bytes unpacking to "
                                          "%d); torch.save never compresses, refused" % (
                                              path, info.filename, info.compress_size,
                                              info.file_size))
                if info.header_offset + info.file_size > size:
                    raise CheckpointError("%s: record %s says %d bytes, more than the %d-byte "
                                          "file holds" % (path, info.filename, info.file_size, size))
            for info in infos:
                try:
                    with z.open(info) as record:
                        while record.read(1 << 20):
                            pass
                except Exception as e:     # BadZipFile (CRC, header), EOFError, struct.error
                    if "CRC" in str(e):
                        raise CheckpointError("%s: record %s is corrupt: its bytes do not match "
                                              "its CRC-32" % (path, info.filename)) from None
                    raise broken(e) from None
            pkl = next(i for i in infos if i.filename.endswith("data.pkl"))
            with z.open(pkl) as record:
                head = record.read(2)
    protocol = head[1] if head[:1] == b"\x80" and len(head) == 2 else 0
    return {i.file_size for i in infos if "/data/" in i.filename}, protocol


def _check_torch_legacy(path: Path) -> None:
    """A legacy (pre-zip) ``.pth`` allocates every storage at the size its pickle declares,
    before reading the bytes; so the pickle is first read with fake tensors (no storage is
    allocated) and the declared sizes are held against the file's. The walk visits each
    object once, by identity, within a budget of one object per byte of the file (a pickle
    builds no more), so shared references nested deep (a "billion laughs") cost what their
    bytes do, not one visit per path."""
    import torch
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError:       # a torch without fake tensors: its own allocation errors remain
        return
    size = _require_file(path)
    with FakeTensorMode(), _mapped(path) as f:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    storages, seen, stack = {}, set(), [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if len(seen) > size:
            raise CheckpointError("%s: not a loadable PyTorch state_dict: its pickle builds more "
                                  "objects than its %d bytes can hold" % (path, size))
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif torch.is_tensor(item) and item.layout == torch.strided:
            storage = item.untyped_storage()
            storages[storage._cdata] = storage.nbytes()
    declared = sum(storages.values())
    if declared > size:
        raise CheckpointError("%s: not a loadable PyTorch state_dict: its tensors declare %d "
                              "bytes, more than the %d-byte file holds" % (path, declared, size))


class _Mapped:
    """A read-only file over a memory map, for ``torch.load`` of legacy files: a length the
    pickle declares is read as what remains of the file (a buffered file's ``read(n)``
    allocates all ``n`` bytes first, 1.8 GB for a 729-byte file with one byte cut)."""

    def __init__(self, f):
        self.file, self.mm = f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def fileno(self) -> int:       # torch then reads storages from the descriptor directly
        return self.file.fileno()

    def read(self, n: int = -1) -> bytes:
        return self.mm.read(n if n is not None and n >= 0 else len(self.mm) - self.mm.tell())

    def readline(self, limit: int = -1) -> bytes:
        return self.mm.readline()

    def readinto(self, buf) -> int:
        view, pos = memoryview(buf).cast("B"), self.mm.tell()
        n = min(len(view), len(self.mm) - pos)
        view[:n] = self.mm[pos:pos + n]
        self.mm.seek(pos + n)
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        self.mm.seek(pos, whence)
        return self.mm.tell()

    def tell(self) -> int:
        return self.mm.tell()

    def seekable(self) -> bool:
        return True


@contextmanager
def _mapped(path: Path):
    with _open(path) as f:
        mapped = _Mapped(f)
        try:
            yield mapped
        finally:
            mapped.mm.close()


def _torch_reason(e: BaseException) -> str:
    text = str(e).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        return "holds Python objects other than tensors (refused: only weights are loaded)"
    if isinstance(e, MemoryError) or "can't allocate memory" in text:
        return "declares tensors larger than memory"
    if "not resizable" in text or "out of bounds for storage" in text:
        return "a tensor's shape reaches past the bytes stored for it (truncated or lying sizes)"
    return text.splitlines()[0].split(". ")[0] if text else type(e).__name__


def _read_torch(path: Path):
    try:
        import torch
    except ImportError:
        return _read_torch_without_torch(path)
    head = _peek(path, 64)
    if head.startswith(_LEGACY_HEADS) and not head.startswith(_LEGACY_HEADS[2:4]):
        raise CheckpointError("%s: a legacy .pth pickled with protocol %s, which torch's "
                              "weights-only loader cannot read (re-save it with torch.save)"
                              % (path, head[1] if head[0] == 0x80 else "0 or 1"))
    zipped = head.startswith(_ZIP_HEAD)
    records, protocol = _check_torch_zip(path) if zipped else (None, 2)
    if protocol > 3:     # torch.save(pickle_protocol=4/5): torch's weights-only loader lacks FRAME
        return _read_zip_without_torch(path)
    try:
        with warnings.catch_warnings():    # torch warns about odd pickle protocols: ours to say
            warnings.simplefilter("ignore")
            if not zipped:
                _check_torch_legacy(path)
            # zip files are memory-mapped: a storage can never reach past the end of the file
            if zipped:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            else:
                with _mapped(path) as f:
                    obj = torch.load(f, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:   # torch raises pickle, zip and runtime errors of many kinds
        raise CheckpointError("%s: not a loadable PyTorch state_dict: %s"
                              % (path, _torch_reason(e))) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError("%s: holds a %s, not a state_dict (a mapping of tensors)"
                              % (path, type(obj).__name__))
    bad = [k[:80] if isinstance(k, str) else "<a %s key>" % type(k).__name__
           for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError("%s: not a state_dict: %d entries are not named tensors (%s)"
                              % (path, len(bad), ", ".join(bad[:3])))
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):    # saved from DataParallel
        obj = OrderedDict((k[len("module."):], v) for k, v in obj.items())
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    spans = []
    for k, t in obj.items():
        if t.layout != torch.strided:
            raise CheckpointError("%s: %s has %s storage; only dense tensors are supported"
                                  % (path, k, str(t.layout).replace("torch.", "")))
        storage = t.untyped_storage()
        if records is not None and storage.nbytes() not in records:
            # a memory-mapped storage whose pickle declares more than its record holds
            # runs on into the next records; torch checks this only when not mapping
            raise CheckpointError("%s: %s declares a %d-byte storage that no record holds"
                                  % (path, k, storage.nbytes()))
        if t.dtype == torch.bfloat16:
            raise CheckpointError("%s: %s is bfloat16, which numpy and MXNet cannot hold; "
                                  "cast the state_dict to float32 first" % (path, k))
        name = str(t.dtype).replace("torch.", "")
        if name not in _DTYPES or t.is_quantized or t.device.type != "cpu":
            raise CheckpointError("%s: %s is a %s tensor; a checkpoint holds %s"
                                  % (path, k, name, "/".join(_DTYPES)))
        span = torchzip.view_span(tuple(t.shape), t.stride(), t.storage_offset(),
                                  t.element_size(), storage.nbytes())
        if isinstance(span, str):
            raise CheckpointError("%s: not a loadable PyTorch state_dict: %s %s" % (path, k, span))
        spans.append((storage._cdata,) + span + (k,))
        out[k] = t.detach().numpy()
    shared = torchzip.overlapping(spans)
    if shared:
        raise CheckpointError("%s: not a loadable PyTorch state_dict: %s and %s share bytes of "
                              "one storage (a state_dict holds each tensor in its own bytes)"
                              % ((path,) + shared))
    return out, {}


def _read_torch_without_torch(path: Path):
    """Without torch: zip-format state dicts of plain tensors (what torch.save and our own
    writer produce) through :func:`torchzip.read_state_dict`'s restricted unpickler."""
    if _peek(path, 4) != _ZIP_HEAD:
        raise MissingDependency("%s: %s" % (path, deps.message(
            "torch", "reading a legacy (pre-zip) PyTorch file")))
    _check_torch_zip(path)
    return _read_zip_without_torch(path)


def _read_zip_without_torch(path: Path):
    """A zip .pth already checked by :func:`_check_torch_zip`, through the restricted reader."""
    out = torchzip.read_state_dict(path, max_tensors=MAX_TENSORS)
    if out and all(k.startswith("module.") for k in out):    # saved from DataParallel
        out = OrderedDict((k[len("module."):], v) for k, v in out.items())
    return out, {}


def _safetensors_header_length(path: Path, size: int) -> int:
    """The JSON header's declared length, checked against the file before anything parses it."""
    head = _peek(path, 8)
    if len(head) < 8:
        raise CheckpointError("%s: not a valid safetensors file: %d bytes, shorter than the "
                              "8-byte header length" % (path, size))
    (n,) = struct.unpack("<Q", head)
    if n > size - 8 or n > MAX_SAFETENSORS_HEADER:
        raise CheckpointError("%s: not a valid safetensors file: header length says %d bytes, "
                              "but %d remain (truncated or not safetensors)" % (path, n, size - 8))
    return n


def _read_safetensors(path: Path):
    from safetensors import safe_open
    size = _require_file(path, "safetensors file")
    _safetensors_header_length(path, size)
    try:
        # pread, not mmap: each tensor is read once into its own buffer, no mapped pages
        with safe_open(str(path), framework="np", backend="pread") as f:
            metadata = dict(f.metadata() or {})
            keys = f.keys()
            if len(keys) > MAX_TENSORS:     # before any tensor is read
                raise CheckpointError("%s: holds %d tensors, more than any DPN checkpoint (at "
                                      "most %d)" % (path, len(keys), MAX_TENSORS))
            out = OrderedDict()
            for k in keys:
                dtype = f.get_slice(k).get_dtype()
                check_dtype(path, k, _ST_DTYPES.get(dtype, dtype))
                out[k] = f.get_tensor(k)
    except CheckpointError:
        raise
    except Exception as e:   # the Rust side raises SafetensorError, a plain Exception
        raise CheckpointError("%s: not a valid safetensors file: %s"
                              % (path, str(e).splitlines()[0] if str(e) else type(e).__name__)) from None
    _check_metadata_types(metadata, path)
    return out, metadata


_ST_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "U8": "uint8",
              "I8": "int8", "I32": "int32", "I64": "int64", "BOOL": "bool"}


def _arch_name(value: str) -> str:
    """timm names may carry a pretrained tag: ``dpn68b.mx_in1k`` is dpn68b."""
    return value.split(".", 1)[0]


#: A count as the converter writes it: ASCII digits, no sign, space or leading zero
#: (``str.isdigit`` accepts "²", ``int`` accepts "+5", " 5", "1_000" and Arabic-Indic digits).
_COUNT = re.compile(r"[1-9][0-9]{0,6}")


def parse_count(text) -> Optional[int]:
    """A class count from metadata text, 1..MAX_CLASSES, or None if it is not one."""
    if not isinstance(text, str) or not _COUNT.fullmatch(text):
        return None
    n = int(text)
    return n if n <= MAX_CLASSES else None


def _check_metadata_types(metadata: Mapping[str, str], where) -> None:
    """The metadata fields the converter reads must be what it wrote: a known architecture,
    a class count, a classifier name; anything else is refused, not guessed around."""
    arch = metadata.get("architecture")
    if arch is not None and _arch_name(arch) not in variants.ARCHS:
        raise CheckpointError("%s: metadata names architecture %r, not a DPN this converter "
                              "knows (%s)" % (where, arch[:60], ", ".join(variants.ARCHS)))
    classes = metadata.get("classes")
    if classes is not None and parse_count(classes) is None:
        raise CheckpointError("%s: metadata says classes %r, not a class count"
                              % (where, classes[:60]))
    fc = metadata.get("classifier")
    if fc is not None and fc not in variants.CLASSIFIERS:
        raise CheckpointError("%s: metadata names classifier %r (expected %s)"
                              % (where, fc[:60], " or ".join(variants.CLASSIFIERS)))


def _read_config(path: Path) -> dict:
    config_path = path / TIMM_CONFIG
    size = _require_file(config_path, "timm config")
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError("%s: %s is %d bytes; a timm config is a few KiB (at most %d)"
                              % (path, TIMM_CONFIG, size, MAX_CONFIG_BYTES))
    try:
        with _open(config_path, "timm config") as f:
            config = json.loads(f.read(MAX_CONFIG_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e).splitlines()[0][:120] \
            if str(e) else type(e).__name__
        raise CheckpointError("%s: unreadable %s: %s" % (path, TIMM_CONFIG, reason)) from None
    if not isinstance(config, dict):
        raise CheckpointError("%s: %s holds a JSON %s, not an object"
                              % (path, TIMM_CONFIG, type(config).__name__))
    arch = config.get("architecture")
    if not isinstance(arch, str):
        raise CheckpointError("%s: %s has no \"architecture\" string" % (path, TIMM_CONFIG))
    classes = config.get("num_classes")
    if classes is not None and (type(classes) is not int or not 1 <= classes <= MAX_CLASSES):
        raise CheckpointError("%s: %s: num_classes is %r, not a class count"
                              % (path, TIMM_CONFIG, str(classes)[:60]))
    extra = config.get("dpn")
    if extra is not None and not isinstance(extra, dict):
        raise CheckpointError("%s: %s: \"dpn\" is not an object" % (path, TIMM_CONFIG))
    fc = (extra or {}).get("classifier")
    if fc is not None and not isinstance(fc, str):
        raise CheckpointError("%s: %s: dpn.classifier is not a string" % (path, TIMM_CONFIG))
    return config


def _read_timm(path: Path):
    config = _read_config(path)
    tensors, metadata = _read_safetensors(path / TIMM_WEIGHTS)
    metadata = dict(metadata)
    metadata.update({"config_architecture": config["architecture"],
                     "config_num_classes": str(config.get("num_classes") or "")})
    said = {"architecture": config["architecture"]}
    fc = (config.get("dpn") or {}).get("classifier")
    if fc:
        metadata["classifier"] = said["classifier"] = fc
    _check_metadata_types(said, path / TIMM_CONFIG)
    return tensors, metadata


def _read_paddle(path: Path):
    with _mapped(path) as f:
        return paddle.read(path, f, MAX_TENSORS), {}


_READERS = {"paddle": _read_paddle, "mxnet": _read_mxnet, "gluon": _read_gluon, "torch": _read_torch,
            "safetensors": _read_safetensors, "timm": _read_timm}
