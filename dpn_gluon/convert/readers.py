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
import os
import struct
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from .. import variants
from ..errors import CheckpointError, DPNError
from . import mxparams, torchzip

TIMM_CONFIG, TIMM_WEIGHTS = "config.json", "model.safetensors"

PathLike = Union[str, Path]


# -- detect ------------------------------------------------------------------------------

def resolve_source(src: PathLike, epoch: Optional[int] = None) -> Path:
    """The file or folder SRC names: ``PREFIX`` with ``epoch`` is ``PREFIX-%04d.params``
    (``PREFIX-symbol.json`` too); a ``PREFIX`` that is not a file means epoch 0."""
    src = Path(src)
    if src.name.endswith("-symbol.json"):      # the graph's file names the checkpoint too
        src = src.with_name(src.name[: -len("-symbol.json")])
        epoch = epoch or 0
    if epoch is not None:
        path = Path("%s-%04d.params" % (src, epoch))
        if not path.is_file():
            raise CheckpointError("%s: no such file (from %s with --epoch %d)" % (path, src, epoch))
        return path
    if not src.exists():
        guess = Path("%s-0000.params" % src)
        if guess.is_file():
            return guess
        raise CheckpointError("%s: no such file or folder" % src)
    return src


def detect(path: PathLike) -> str:
    """What a file or folder is, from its content: one of :data:`FORMATS`."""
    path = Path(path)
    if path.is_dir():
        if (path / TIMM_CONFIG).is_file() and (path / TIMM_WEIGHTS).is_file():
            return "timm"
        raise CheckpointError("%s: a folder, but not a timm folder (needs %s and %s)"
                              % (path, TIMM_CONFIG, TIMM_WEIGHTS))
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise CheckpointError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    if not head:
        raise CheckpointError("%s: an empty file, not a checkpoint" % path)
    if mxparams.is_params(head):
        keys = list(_load_params(path).keys())
        return "mxnet" if keys and all(k.startswith(("arg:", "aux:")) for k in keys) else "gluon"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":   # zip (torch >= 1.6) or pickle
        return "torch"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if n >= 2 and head[8:10] in (b'{"', b"{}"):     # a truncated one too: its reader says so
            return "safetensors"
    if head.lstrip()[:1] == b"{" and b'"nodes"' in head + _peek(path, 4096):
        raise CheckpointError("%s: an MXNet symbol file; pass PREFIX-0000.params (or PREFIX "
                              "with --epoch)" % path)
    raise CheckpointError("%s: not a checkpoint dpn-convert reads (neither MXNet .params, "
                          "PyTorch, safetensors nor a timm folder)" % path)


def _peek(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


# -- read ---------------------------------------------------------------------------------

def read_raw(path: PathLike, fmt: str) -> Tuple["OrderedDict[str, np.ndarray]", Dict[str, str]]:
    """One reader per format: the stored keys and arrays, and the file's metadata."""
    path = Path(path)
    return _READERS[fmt](path)


def _load_params(path: Path):
    loaded = mxparams.load(path, mmap=True)
    if not isinstance(loaded, Mapping):
        raise CheckpointError("%s: an NDArray list without names, not a checkpoint" % path)
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


#: dtypes a checkpoint may hold (numpy and MXNet both have them); anything else is refused.
_DTYPES = ("float16", "float32", "float64", "uint8", "int8", "int32", "int64", "bool")
#: The most a config.json may hold: a timm config is about 1 KiB.
MAX_CONFIG_BYTES = 1 << 20
#: safetensors' own limit on the JSON header.
MAX_SAFETENSORS_HEADER = 100_000_000
#: The largest class count a metadata field may declare (the 5k head has 4786).
MAX_CLASSES = 1_000_000


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError as e:
        raise CheckpointError("%s: cannot read: %s" % (path, e.strerror or e)) from None


def _check_torch_zip(path: Path) -> set:
    """A zip-format ``.pth`` may hold nothing bigger than itself: ``torch.save`` stores every
    record uncompressed, so a compressed record (a zip bomb) or one larger than the file is
    refused before torch reads anything. Returns the sizes of the tensor data records."""
    import zipfile
    size = _file_size(path)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except Exception as e:    # zipfile raises BadZipFile, NotImplementedError, struct.error, ...
        raise CheckpointError("%s: not a loadable PyTorch state_dict: a broken zip archive (%s)"
                              % (path, str(e).splitlines()[0] if str(e) else type(e).__name__)) from None
    if not any(i.filename.endswith("/data.pkl") or i.filename == "data.pkl" for i in infos):
        raise CheckpointError("%s: a zip archive without data.pkl, not a PyTorch file" % path)
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError("%s: record %s is compressed (%d bytes unpacking to %d); "
                                  "torch.save never compresses, refused" % (
                                      path, info.filename, info.compress_size, info.file_size))
        if info.header_offset + info.file_size > size:
            raise CheckpointError("%s: record %s says %d bytes, more than the %d-byte file holds"
                                  % (path, info.filename, info.file_size, size))
    return {i.file_size for i in infos if "/data/" in i.filename}


def _check_torch_legacy(path: Path) -> None:
    """A legacy (pre-zip) ``.pth`` allocates every storage at the size its pickle declares,
    before reading the bytes; so the pickle is first read with fake tensors (no storage is
    allocated) and the declared sizes are held against the file's."""
    import torch
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
    except ImportError:       # a torch without fake tensors: its own allocation errors remain
        return
    with FakeTensorMode():
        obj = torch.load(path, map_location="cpu", weights_only=True)
    storages = {}
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif torch.is_tensor(item) and item.layout == torch.strided:
            storage = item.untyped_storage()
            storages[storage._cdata] = storage.nbytes()
    declared, size = sum(storages.values()), _file_size(path)
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


def _read_torch(path: Path):
    try:
        import torch
    except ImportError:
        return _read_torch_without_torch(path)
    zipped = _peek(path, 4) == b"PK\x03\x04"
    records = _check_torch_zip(path) if zipped else None
    try:
        with warnings.catch_warnings():    # torch warns about odd pickle protocols: ours to say
            warnings.simplefilter("ignore")
            if not zipped:
                _check_torch_legacy(path)
            # zip files are memory-mapped: a storage can never reach past the end of the file
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
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
    bad = [str(k)[:80] for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError("%s: not a state_dict: %d entries are not named tensors (%s)"
                              % (path, len(bad), ", ".join(bad[:3])))
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):    # saved from DataParallel
        obj = OrderedDict((k[len("module."):], v) for k, v in obj.items())
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for k, t in obj.items():
        if records is not None and t.layout == torch.strided \
                and t.untyped_storage().nbytes() not in records:
            # a memory-mapped storage whose pickle declares more than its record holds
            # runs on into the next records; torch checks this only when not mapping
            raise CheckpointError("%s: %s declares a %d-byte storage that no record holds"
                                  % (path, k, t.untyped_storage().nbytes()))
        if t.layout != torch.strided:
            raise CheckpointError("%s: %s has %s storage; only dense tensors are supported"
                                  % (path, k, str(t.layout).replace("torch.", "")))
        if t.dtype == torch.bfloat16:
            raise CheckpointError("%s: %s is bfloat16, which numpy and MXNet cannot hold; "
                                  "cast the state_dict to float32 first" % (path, k))
        name = str(t.dtype).replace("torch.", "")
        if name not in _DTYPES or t.is_quantized or t.device.type != "cpu":
            raise CheckpointError("%s: %s is a %s tensor; a checkpoint holds %s"
                                  % (path, k, name, "/".join(_DTYPES)))
        out[k] = t.detach().numpy()
    return out, {}


def _read_torch_without_torch(path: Path):
    """Without torch: zip-format state dicts of plain tensors (what torch.save and our own
    writer produce) through :func:`torchzip.read_state_dict`'s restricted unpickler."""
    if _peek(path, 4) != b"PK\x03\x04":
        raise DPNError("%s: reading a legacy (pre-zip) PyTorch file needs torch (pip install torch)"
                       % path)
    _check_torch_zip(path)
    out = torchzip.read_state_dict(path)
    bad = [k for k, v in out.items() if v.dtype.name not in _DTYPES]
    if bad:
        raise CheckpointError("%s: %s is a %s tensor; a checkpoint holds %s"
                              % (path, bad[0], out[bad[0]].dtype.name, "/".join(_DTYPES)))
    if out and all(k.startswith("module.") for k in out):    # saved from DataParallel
        out = OrderedDict((k[len("module."):], v) for k, v in out.items())
    return out, {}


def _safetensors_header_length(path: Path) -> int:
    """The JSON header's declared length, checked against the file before anything parses it."""
    size = _file_size(path)
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
    _safetensors_header_length(path)
    try:
        # pread, not mmap: each tensor is read once into its own buffer, no mapped pages
        with safe_open(str(path), framework="np", backend="pread") as f:
            metadata = dict(f.metadata() or {})
            out = OrderedDict()
            for k in f.keys():
                dtype = f.get_slice(k).get_dtype()
                if _ST_DTYPES.get(dtype) not in _DTYPES:
                    raise CheckpointError("%s: %s is %s; a checkpoint holds %s"
                                          % (path, k, dtype, "/".join(_DTYPES)))
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


def _check_metadata_types(metadata: Mapping[str, str], where) -> None:
    """The metadata fields the converter reads must be what it wrote: a known architecture,
    a class count, a classifier name; anything else is refused, not guessed around."""
    arch = metadata.get("architecture")
    if arch is not None and _arch_name(arch) not in variants.ARCHS:
        raise CheckpointError("%s: metadata names architecture %r, not a DPN this converter "
                              "knows (%s)" % (where, arch[:60], ", ".join(variants.ARCHS)))
    classes = metadata.get("classes")
    if classes is not None and not (classes.isdigit() and 1 <= int(classes) <= MAX_CLASSES):
        raise CheckpointError("%s: metadata says classes %r, not a class count"
                              % (where, classes[:60]))
    fc = metadata.get("classifier")
    if fc is not None and fc not in variants.CLASSIFIERS:
        raise CheckpointError("%s: metadata names classifier %r (expected %s)"
                              % (where, fc[:60], " or ".join(variants.CLASSIFIERS)))


def _read_config(path: Path) -> dict:
    config_path = path / TIMM_CONFIG
    size = _file_size(config_path)
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError("%s: %s is %d bytes; a timm config is a few KiB (at most %d)"
                              % (path, TIMM_CONFIG, size, MAX_CONFIG_BYTES))
    try:
        with open(config_path, "rb") as f:
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


_READERS = {"mxnet": _read_mxnet, "gluon": _read_gluon, "torch": _read_torch,
            "safetensors": _read_safetensors, "timm": _read_timm}
