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
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from .. import variants
from ..errors import CheckpointError, DPNError
from . import mxparams, names
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


def _read_torch(path: Path):
    try:
        import torch
    except ImportError:
        raise DPNError("%s: reading a PyTorch file needs torch (pip install torch)" % path) from None
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)   # legacy format
    except Exception as e:   # torch raises pickle, zip and runtime errors of many kinds
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in str(e) or "weights_only" in str(e):
            reason = "holds Python objects other than tensors (refused: only weights are loaded)"
        raise CheckpointError("%s: not a loadable PyTorch state_dict: %s" % (path, reason)) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError("%s: holds a %s, not a state_dict (a mapping of tensors)"
                              % (path, type(obj).__name__))
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError("%s: not a state_dict: %d entries are not named tensors (%s)"
                              % (path, len(bad), ", ".join(bad[:3])))
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):    # saved from DataParallel
        obj = OrderedDict((k[len("module."):], v) for k, v in obj.items())
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for k, t in obj.items():
        if t.dtype == torch.bfloat16:
            raise CheckpointError("%s: %s is bfloat16, which numpy and MXNet cannot hold; "
                                  "cast the state_dict to float32 first" % (path, k))
        out[k] = t.detach().cpu().numpy()
    return out, {}


def _read_safetensors(path: Path):
    from safetensors import safe_open
    try:
        # pread, not mmap: each tensor is read once into its own buffer, no mapped pages
        with safe_open(str(path), framework="np", backend="pread") as f:
            metadata = dict(f.metadata() or {})
            out = OrderedDict((k, f.get_tensor(k)) for k in f.keys())
    except Exception as e:   # the Rust side raises SafetensorError, a plain Exception
        raise CheckpointError("%s: not a valid safetensors file: %s"
                              % (path, str(e).splitlines()[0] if str(e) else type(e).__name__)) from None
    return out, metadata


def _read_timm(path: Path):
    try:
        config = json.loads((path / TIMM_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError("%s: unreadable %s: %s" % (path, TIMM_CONFIG, e)) from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise CheckpointError("%s: %s has no \"architecture\"" % (path, TIMM_CONFIG))
    tensors, metadata = _read_safetensors(path / TIMM_WEIGHTS)
    metadata = dict(metadata)
    extra = config.get("dpn") or {}
    metadata.update({"config_architecture": str(config["architecture"]),
                     "config_num_classes": str(config.get("num_classes", ""))})
    if extra.get("classifier"):
        metadata["classifier"] = extra["classifier"]
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
    scheme = names.scheme_of(list(raw))
    if scheme == "mxnet":
        renamed = OrderedDict((names.canonical_from_gluon_param(k), v) for k, v in raw.items())
        if len(renamed) != len(raw):
            raise CheckpointError("%s: holds both moving_* and running_* copies of a "
                                  "statistic" % where)
        shapes = {k: v.shape for k, v in renamed.items()}
        found, classes, own = variants.identify(shapes, arch, where)
        chosen = classifier or own
        tensors = OrderedDict()
        for name in variants.tensor_spec(found, classes, own):
            target = chosen + name[len(own):] if name.startswith(own + "_") else name
            tensors[target] = renamed[name]
    else:
        unit = names.unit_of(raw, scheme)
        rules = names.rename_all(list(raw), scheme, "mxnet", unit, "fc6", where)
        shapes = {new: names.canonical_shape(reshape, scheme, raw[old].shape)
                  for old, (new, reshape) in rules.items()}
        found, classes, _ = variants.identify(shapes, arch, where)
        meta_fc = metadata.get("classifier")
        chosen = classifier or (meta_fc if meta_fc in variants.CLASSIFIERS else None) \
            or variants.default_classifier(found.name, classes)
        by_name = {new: old for old, (new, _) in rules.items()}
        tensors = OrderedDict()
        for name, shape in variants.tensor_spec(found, classes, "fc6").items():
            arr = raw[by_name[name]]
            target = chosen + name[3:] if name.startswith("fc6_") else name
            tensors[target] = arr.reshape(shape) if arr.shape != shape else arr
    _check_metadata(metadata, found, classes, where)
    return Weights(found, classes, chosen, tensors, source, fmt, dict(metadata))


def _check_metadata(metadata: Mapping[str, str], arch: variants.Arch, classes: int, where: str):
    said_arch = metadata.get("config_architecture") or metadata.get("architecture")
    if said_arch and said_arch != arch.name:
        raise CheckpointError("%s: metadata says architecture %s, but the tensors are %s"
                              % (where, said_arch, arch.name))
    said = metadata.get("config_num_classes") or metadata.get("classes")
    if said and said.isdigit() and int(said) != classes:
        raise CheckpointError("%s: metadata says %s classes, but the classifier has %d"
                              % (where, said, classes))


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
    try:
        from .onnx_export import export_onnx
    except ImportError as e:
        raise DPNError("--to onnx is not available: %s" % e) from None
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
