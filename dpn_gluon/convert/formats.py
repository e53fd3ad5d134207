"""Checkpoint formats: detect what a file is, read it to canonical tensors, write any target.

The data flow of a conversion (DESIGN.md, principle 7), one function per arrow::

    detect(path)                     -> format name, from the content (never the extension)
    read_raw(path, fmt)              -> {stored key: array}, metadata
    canonicalize(raw, metadata, ...) -> Weights: variant + {canonical name: array}, validated
                                        against the variant table (variants.identify)
    rename_for(weights, target)      -> {target key: array}, through the one name table
    write(weights, target, out, ...) -> the files, written atomically

Formats, and what they must stay compatible with:

- ``mxnet``: the authors' ``PREFIX-0000.params`` (``arg:``/``aux:`` keys, as
  ``mx.model.save_checkpoint`` writes) and ``PREFIX-symbol.json``;
- ``gluon``: a Gluon ``save_parameters`` file (structural names,
  ``features.conv2_1.c1x1_a.bn.running_mean``); files keyed by Gluon parameter names (the
  authors' names with ``running_mean/var``) are read too;
- ``torch``: a ``torch.save`` state_dict with timm's keys (plain, or wrapped as
  ``{'state_dict': ...}`` / ``{'model': ...}``), loaded with ``weights_only=True`` only;
- ``safetensors``: timm's keys, plus string metadata (architecture, classes, the authors'
  classifier name, source file and sha256, the authors' normalization);
- ``timm``: a folder with ``config.json`` + ``model.safetensors``, as timm's
  ``push_to_hf_hub`` writes and ``timm.create_model('local-dir:PATH')`` reads;
- ``onnx`` (target only): delegated to :mod:`dpn_gluon.convert.onnx_export`.

Hostile input: every reader is bounded by the file's size before it allocates (a lying
header, a zip bomb, a storage declared larger than the file), runs no code from the file,
and refuses anything it does not expect in one line naming the file (docs/hostile.md).

Memory: sources are memory-mapped (``.params``, torch ``mmap=True``) or read tensor by
tensor (safetensors), arrays stay views through renaming, and writers stream from them, so a
conversion holds about one copy of the checkpoint. numpy is the only hard dependency:
torch is imported only to read ``.pth`` files (they are written by :mod:`.torchzip`), MXNet
only to build a symbol JSON.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import mmap
import os
import struct
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from .. import variants
from ..errors import CheckpointError, DPNError, KeyMismatch
from . import mxparams, names, torchzip
from .atomic import atomic_path, atomic_write, check_writable, check_writable_folder

FORMATS = ("mxnet", "gluon", "torch", "safetensors", "timm")
TARGETS = FORMATS + ("onnx",)

TIMM_CONFIG, TIMM_WEIGHTS = "config.json", "model.safetensors"
_SUFFIX = {"torch": ".pth", "safetensors": ".safetensors", "gluon": ".params", "onnx": ".onnx",
           "timm": "", "mxnet": ""}

#: The authors' preprocessing in timm's terms (0..1 pixels): mean (124,117,104)/255 and
#: std 1/(0.0167*255), a bicubic resize and a 100 % center crop (score.py; timm uses 0.875).
MEAN = tuple(round(m / 255.0, 10) for m in variants.MEAN_RGB)
STD = (round(1.0 / (variants.SCALE * 255.0), 10),) * 3
CROP_PCT = 1.0
INTERPOLATION = "bicubic"
INPUT_SIZE = (3, 224, 224)

PathLike = Union[str, Path]


@dataclass
class Weights:
    """A checkpoint in canonical form: which variant, and its tensors by the authors' names."""

    arch: variants.Arch
    classes: int
    classifier: str
    tensors: "OrderedDict[str, np.ndarray]"
    source: Path
    format: str
    metadata: Dict[str, str] = field(default_factory=dict)
    sha256: Optional[str] = None

    @property
    def unit(self) -> str:
        return "b" if self.arch.b else "standard"

    @property
    def dtypes(self) -> List[str]:
        return sorted({a.dtype.name for a in self.tensors.values()})

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values())


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

def read(src: PathLike, arch: Optional[str] = None, classifier: Optional[str] = None,
         epoch: Optional[int] = None, hash_source: bool = True) -> Weights:
    """Any supported checkpoint -> validated :class:`Weights` (tensors are read-only views)."""
    path = resolve_source(src, epoch)
    fmt = detect(path)
    raw, metadata = read_raw(path, fmt)
    weights = canonicalize(raw, metadata, path, fmt, arch=arch, classifier=classifier)
    if hash_source:
        weights.sha256 = sha256_of(path / TIMM_WEIGHTS if fmt == "timm" else path)
    return weights


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


# -- canonical form and validation --------------------------------------------------------

def canonicalize(raw: Mapping[str, np.ndarray], metadata: Mapping[str, str], source: PathLike,
                 fmt: str, arch: Optional[str] = None,
                 classifier: Optional[str] = None) -> Weights:
    """Stored keys -> canonical names, validated against the variant table.

    The classifier name is, in order: ``classifier`` (the user's choice), the authors' name
    in the keys, the file's metadata, the released checkpoint of that architecture and class
    count (variants.default_classifier).
    """
    source = Path(source)
    where = str(source)
    if classifier is not None and classifier not in variants.CLASSIFIERS:
        raise DPNError("unknown classifier name %r (choose from %s)"
                       % (classifier, ", ".join(variants.CLASSIFIERS)))
    try:
        scheme = names.scheme_of(list(raw))
    except CheckpointError as e:
        raise CheckpointError("%s: %s" % (where, e)) from None
    if scheme == "mxnet":
        renamed = OrderedDict((names.canonical_from_gluon_param(k), v) for k, v in raw.items())
        if len(renamed) != len(raw):
            raise CheckpointError("%s: holds both moving_* and running_* copies of a "
                                  "statistic" % where)
        shapes = {k: v.shape for k, v in renamed.items()}
        found, classes, own = _identify(shapes, arch, where)
        chosen, head = classifier or own, own + "_weight"
        tensors = OrderedDict()
        for name in variants.tensor_spec(found, classes, own):
            target = chosen + name[len(own):] if name.startswith(own + "_") else name
            tensors[target] = renamed[name]
    else:
        unit = names.unit_of(raw, scheme)
        rules = names.rename_all(list(raw), scheme, "mxnet", unit, "fc6", where)
        shapes = {new: names.canonical_shape(reshape, scheme, raw[old].shape)
                  for old, (new, reshape) in rules.items()}
        try:
            found, classes, _ = _identify(shapes, arch, where)
        except KeyMismatch as e:
            raise _in_stored_names(e, rules, raw, scheme, unit) from None
        meta_fc = metadata.get("classifier")
        chosen = classifier or (meta_fc if meta_fc in variants.CLASSIFIERS else None) \
            or variants.default_classifier(found.name, classes)
        by_name = {new: old for old, (new, _) in rules.items()}
        head = by_name["fc6_weight"]
        tensors = OrderedDict()
        for name, shape in variants.tensor_spec(found, classes, "fc6").items():
            arr = raw[by_name[name]]
            target = chosen + name[3:] if name.startswith("fc6_") else name
            tensors[target] = arr.reshape(shape) if arr.shape != shape else arr
    _check_metadata(metadata, found, classes, where, head)
    return Weights(found, classes, chosen, tensors, source, fmt, dict(metadata))


def _check_metadata(metadata: Mapping[str, str], arch: variants.Arch, classes: int, where: str,
                    head: str = "the classifier"):
    said_arch = metadata.get("config_architecture") or metadata.get("architecture")
    field_of = "config.json" if metadata.get("config_architecture") else "metadata"
    if said_arch and _arch_name(said_arch) != arch.name:
        raise CheckpointError("%s: %s says architecture %s, but the tensors are %s"
                              % (where, field_of, said_arch, arch.name))
    said = metadata.get("config_num_classes") or metadata.get("classes")
    field_of = "config.json num_classes" if metadata.get("config_num_classes") else "metadata classes"
    if said and said.isdigit() and int(said) != classes:
        raise CheckpointError("%s: %s says %s, but %s has %d rows (a %d-class head)"
                              % (where, field_of, said, head, classes, classes))


def _in_stored_names(e: KeyMismatch, rules, raw, scheme: str, unit: str) -> KeyMismatch:
    """The same mismatch in the file's own key names and shapes (timm's or Gluon's), which
    the user can find in the file, instead of the canonical names it was checked under."""
    stored = {new: (old, reshape) for old, (new, reshape) in rules.items()}

    def key(name):
        if name in stored:
            return stored[name][0]
        try:
            return names.rename(name, "mxnet", scheme, unit)[0]
        except KeyError:
            return name

    misshapen = [(key(k), tuple(raw[stored[k][0]].shape),
                  names.reshape_for(stored[k][1], scheme, want)) for k, _, want in e.misshapen]
    return KeyMismatch(e.source, e.what, [key(k) for k in e.missing],
                       [key(k) for k in e.unexpected], misshapen)


def _identify(shapes, arch: Optional[str], where: str):
    """variants.identify, and where ``--arch`` names another architecture than the tensors
    are, a mismatch that says which one they are."""
    try:
        return variants.identify(shapes, arch, where)
    except KeyMismatch as e:
        if arch is None:
            raise
        try:
            found, classes, _ = variants.identify(shapes, None, where)
        except DPNError:
            raise e from None
        raise KeyMismatch(where, "%s (--arch; the tensors are %s with %d classes)"
                          % (arch, found.name, classes),
                          e.missing, e.unexpected, e.misshapen) from None


def release(arrays) -> None:
    """Drop the pages of memory-mapped arrays from this process (they stay in the page
    cache and come back on the next read): keeps a conversion's footprint near one copy
    while the check walks the source a second time. A no-op for arrays that own memory."""
    for arr in arrays:
        mm = arr
        while mm is not None and not isinstance(mm, mmap.mmap):
            mm = getattr(mm, "base", None) if not isinstance(mm, memoryview) else mm.obj
        if mm is None or arr.nbytes == 0:
            continue
        start = arr.ctypes.data - np.frombuffer(mm, np.uint8, count=1).ctypes.data
        first = start - start % mmap.PAGESIZE
        try:
            mm.madvise(mmap.MADV_DONTNEED, first, start + arr.nbytes - first)
        except (OSError, ValueError, AttributeError):
            return


def sha256_of(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# -- rename for a target ------------------------------------------------------------------

def rename_for(weights: Weights, scheme: str) -> "OrderedDict[str, np.ndarray]":
    """Canonical tensors -> {key in ``scheme``: array}, reshaped views, in graph order.

    ``mxnet`` gives ``arg:``/``aux:`` keys (arguments first, as save_checkpoint writes);
    ``timm`` adds timm's ``num_batches_tracked`` counters (int64 zeros: MXNet has none).
    """
    if scheme == "mxnet":
        args = [("arg:" + k, v) for k, v in weights.tensors.items() if not variants.is_aux(k)]
        aux = [("aux:" + k, v) for k, v in weights.tensors.items() if variants.is_aux(k)]
        return OrderedDict(args + aux)
    rules = names.rename_all(list(weights.tensors), "mxnet", scheme, weights.unit,
                             weights.classifier, str(weights.source))
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for name, arr in weights.tensors.items():
        new, reshape = rules[name]
        shape = names.reshape_for(reshape, scheme, arr.shape)
        out[new] = arr.reshape(shape) if shape != arr.shape else arr
        if scheme == "timm" and new.endswith(".bn.running_var"):
            out[new[: -len(".running_var")] + names.TIMM_ONLY_SUFFIX] = np.zeros((), np.int64)
    return out


# -- write ---------------------------------------------------------------------------------

def default_output(src: Path, src_format: str, target: str, out: Optional[PathLike] = None) -> Path:
    """Where ``target`` goes: ``out`` itself, a name derived from SRC inside the folder
    ``out``, or beside SRC (``dpn68-0000.params`` -> ``dpn68.pth``). For ``mxnet`` this is
    the prefix of ``PREFIX-symbol.json`` / ``PREFIX-0000.params``; for ``timm``, ``out`` is
    always the timm folder itself."""
    if out is not None and (target == "timm" or not Path(out).is_dir()):   # timm: OUT is the folder
        out = Path(out)
        if target == "mxnet" and out.name.endswith(".params") and out.stem[-5:-4] == "-" \
                and out.stem[-4:].isdigit():
            return out.with_name(out.stem[:-5])
        return out
    stem = src.name
    if src_format == "mxnet" and stem.endswith(".params") and stem[-12:-11] == "-":
        stem = stem[:-12]
    elif src_format != "timm":
        stem = src.stem if src.suffix else stem
    folder = Path(out) if out is not None else src.parent
    return folder / (stem + _SUFFIX[target])


def output_files(target: str, out: Path) -> List[Path]:
    """The paths a target writes at ``out``."""
    if target == "mxnet":
        return [Path("%s-symbol.json" % out), Path("%s-0000.params" % out)]
    return [out]


def safetensors_metadata(weights: Weights) -> Dict[str, str]:
    """String metadata: what the tensors are, where they came from, how to feed them."""
    return {
        "format": "pt",
        "architecture": weights.arch.name,
        "classes": str(weights.classes),
        "classifier": weights.classifier,
        "source_file": weights.source.name,
        "source_sha256": weights.sha256 or "",
        "source_format": weights.format,
        "mean": json.dumps(list(MEAN)),
        "std": json.dumps(list(STD)),
        "interpolation": INTERPOLATION,
        "crop_pct": str(CROP_PCT),
        "input_size": json.dumps(list(INPUT_SIZE)),
        "converter": "dpn-convert (dpn-gluon)",
    }


def timm_config(weights: Weights) -> dict:
    """config.json as timm's ``save_config_for_hf`` lays it out, for the authors' protocol.

    ``pretrained_cfg`` holds only fields of timm's PretrainedCfg (timm builds the dataclass
    from it); the authors' classifier name and provenance go under a separate ``dpn`` key.
    """
    return {
        "architecture": weights.arch.name,
        "num_classes": weights.classes,
        "num_features": weights.arch.num_features,
        "global_pool": "avg",
        "pretrained_cfg": {
            "custom_load": False,
            "input_size": list(INPUT_SIZE),
            "fixed_input_size": False,
            "interpolation": INTERPOLATION,
            "crop_pct": CROP_PCT,
            "crop_mode": "center",
            "mean": list(MEAN),
            "std": list(STD),
            "num_classes": weights.classes,
            "pool_size": [7, 7],
            "first_conv": "features.conv1_1.conv",
            "classifier": "classifier",
            "license": "apache-2.0",
            "origin_url": "https://github.com/cypw/DPNs",
            "paper_ids": "arXiv:1707.01629",
            "paper_name": "Dual Path Networks",
        },
        "dpn": {
            "classifier": weights.classifier,
            "source_file": weights.source.name,
            "source_sha256": weights.sha256,
            "source_format": weights.format,
        },
    }


def write(weights: Weights, target: str, out: Path, force: bool = False,
          log=None) -> List[Path]:
    """Write ``weights`` as ``target`` at ``out`` (see :func:`default_output`); atomic."""
    if target not in TARGETS:
        raise DPNError("unknown target format %r (choose from %s)" % (target, ", ".join(TARGETS)))
    files = check_outputs(weights.source, weights.format, target, out, force)
    _WRITERS[target](weights, out, force, log or (lambda msg: None))
    return [f for f in files if f.exists()]


def check_outputs(src: Path, src_format: str, target: str, out: Path,
                  force: bool = False) -> List[Path]:
    """The files ``target`` will write at ``out``, after refusing the input itself, existing
    files (without ``force``) and missing or read-only folders: before any work is done."""
    files = output_files(target, out)
    sources = {_real(src)}
    if src_format == "timm":
        sources.add(_real(src / TIMM_WEIGHTS))
    for path in files:
        if _real(path) in sources:
            raise DPNError("%s: the output would overwrite the input; choose another with -o"
                           % path)
        if target == "timm":
            check_writable_folder(path, force)
        else:
            check_writable(path, force)
    return files


def _contiguous(arr: np.ndarray) -> np.ndarray:
    """C-contiguous without a copy where it already is (np.ascontiguousarray turns 0-d into 1-d)."""
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _write_torch(weights: Weights, out: Path, force: bool, log):
    # torch.save's zip format written from the arrays (torchzip.py): no torch import (about
    # a second and ~200 MB of RSS) and the bytes streamed from the memory-mapped source
    from .torchzip import write_state_dict
    with atomic_write(out, force) as f:
        bar = _Progress(f, weights.nbytes, out.name).bar
        write_state_dict(f, rename_for(weights, "timm"),
                         progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()


def _write_safetensors(weights: Weights, out: Path, force: bool, log):
    from safetensors.numpy import save_file
    tensors = OrderedDict((k, _contiguous(v)) for k, v in rename_for(weights, "timm").items())
    with atomic_path(out, force) as tmp:
        save_file(tensors, str(tmp), metadata=safetensors_metadata(weights))


def _write_timm(weights: Weights, out: Path, force: bool, log):
    from safetensors.numpy import save_file
    tensors = OrderedDict((k, _contiguous(v)) for k, v in rename_for(weights, "timm").items())
    with atomic_path(out, force, directory=True) as tmp:
        save_file(tensors, str(tmp / TIMM_WEIGHTS), metadata=safetensors_metadata(weights))
        (tmp / TIMM_CONFIG).write_text(json.dumps(timm_config(weights), indent=2) + "\n",
                                       encoding="utf-8")


def _write_gluon(weights: Weights, out: Path, force: bool, log):
    with atomic_write(out, force) as f:
        mxparams.write(_Progress(f, weights.nbytes, out.name), rename_for(weights, "gluon"))


def symbol_json(weights: Weights) -> Optional[str]:
    """The authors' graph for these weights as ``-symbol.json`` text; None without MXNet."""
    try:
        importlib.import_module("mxnet")    # dpn_gluon.symbols imports it only when building
        from ..symbols import get_symbol
    except ImportError:
        return None
    sym = get_symbol(weights.arch.name, weights.classes, weights.classifier,
                     head="authors", softmax=True)
    return sym.tojson()


def _write_mxnet(weights: Weights, out: Path, force: bool, log):
    symbol_file, params_file = output_files("mxnet", out)
    text = symbol_json(weights)   # built first: a failure leaves no file behind
    with atomic_write(params_file, force) as f:
        mxparams.write(_Progress(f, weights.nbytes, params_file.name), rename_for(weights, "mxnet"))
    if text is None:
        log("MXNet (or dpn_gluon.symbols) is not available: wrote only %s, no %s"
            % (params_file, symbol_file.name))
        return
    with atomic_write(symbol_file, force) as f:
        f.write(text.encode("utf-8"))


def _write_onnx(weights: Weights, out: Path, force: bool, log):
    from ..deps import require
    require("onnx", "--to onnx")
    from .onnx_export import export_onnx
    export_onnx(weights.tensors, out, weights.arch.name, weights.classes, weights.classifier,
                mean_max=False, force=force)


_WRITERS = {"torch": _write_torch, "safetensors": _write_safetensors, "timm": _write_timm,
            "gluon": _write_gluon, "mxnet": _write_mxnet, "onnx": _write_onnx}


class _Progress:
    """A write-only file wrapper that shows a byte progress bar on stderr for big files."""

    MIN_BYTES = 64 << 20

    def __init__(self, f, total: int, desc: str):
        self.f = f
        self.bar = None
        if total >= self.MIN_BYTES:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr,
                            leave=False, disable=None)

    def write(self, data) -> int:
        n = self.f.write(data)
        if self.bar is not None:
            self.bar.update(memoryview(data).nbytes)
        return n

    def flush(self):
        self.f.flush()

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __del__(self):
        if self.bar is not None:
            self.bar.close()
