"""PyTorch's ``torch.save`` state dicts (``.pth``): zip (torch >= 1.6) or legacy pickle.

Read with ``torch.load(weights_only=True)`` after the file's structure is held to its size,
or, without torch, through :func:`.torchzip.read_state_dict`'s restricted unpickler (zip
files only). Written by :mod:`.torchzip` from the arrays, with timm's keys: no torch import
(about a second and ~200 MB of RSS) and the bytes streamed from the memory-mapped source.
"""
from __future__ import annotations

import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import List, Mapping

import numpy as np

from .. import deps
from ..deps import MissingDependency
from ..errors import CheckpointError
from . import torchzip
from .base import DTYPES, MAX_TENSORS, Progress, mapped, open_file, peek, require_file

SUFFIX = ".pth"
#: Suffixes that say a file is PyTorch's (``.bin``: the Hub's ``pytorch_model.bin``).
SUFFIXES = (".pth", ".pt", ".bin")

#: torch.save's legacy (pre-zip) format opens with this number pickled on its own
#: (torch/serialization.py MAGIC_NUMBER), in the protocol torch.save was given (2 by default;
#: torch's weights-only loader reads only 2 and 3: 0, 1, 4 and 5 are refused by name).
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_HEADS = tuple(pickle.dumps(_TORCH_MAGIC, protocol=p)
                      for p in range(pickle.HIGHEST_PROTOCOL + 1))
_ZIP_HEAD = b"PK\x03\x04"


def is_torch(head: bytes) -> bool:
    return head.startswith(_ZIP_HEAD) or head.startswith(_LEGACY_HEADS)


def _check_torch_zip(path: Path) -> set:
    """A zip-format ``.pth`` may hold nothing bigger than itself: ``torch.save`` stores every
    record uncompressed, so a compressed record (a zip bomb) or one larger than the file is
    refused before torch reads anything. Then every record's CRC-32 is verified, streaming,
    whichever library reads the file next (torch does not check them): a flipped bit is
    refused, not converted. Returns the sizes of the tensor data records and the protocol
    of ``data.pkl``'s pickle."""
    import zipfile
    size = require_file(path)

    def broken(e: Exception) -> CheckpointError:
        return CheckpointError("%s: not a loadable PyTorch state_dict: a broken zip archive (%s)"
                               % (path, str(e).splitlines()[0] if str(e) else type(e).__name__))

    with open_file(path) as f:
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
    size = require_file(path)
    with FakeTensorMode(), mapped(path) as f:
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


def _torch_reason(e: BaseException) -> str:
    text = str(e).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        return "holds Python objects other than tensors (refused: only weights are loaded)"
    if isinstance(e, MemoryError) or "can't allocate memory" in text:
        return "declares tensors larger than memory"
    if "not resizable" in text or "out of bounds for storage" in text:
        return "a tensor's shape reaches past the bytes stored for it (truncated or lying sizes)"
    return text.splitlines()[0].split(". ")[0] if text else type(e).__name__


def read(path: Path):
    try:
        import torch
    except ImportError:
        return _read_torch_without_torch(path)
    head = peek(path, 64)
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
                with mapped(path) as f:
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
        if name not in DTYPES or t.is_quantized or t.device.type != "cpu":
            raise CheckpointError("%s: %s is a %s tensor; a checkpoint holds %s"
                                  % (path, k, name, "/".join(DTYPES)))
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
    if peek(path, 4) != _ZIP_HEAD:
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




def write(weights, files: List[Path], tx, log, **_):
    out, = files
    with tx.file(out) as f, Progress(f, weights.nbytes, out.name) as bar:
        torchzip.write_state_dict(f, weights.renamed("timm"), progress=bar.update)
