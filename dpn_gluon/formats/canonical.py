"""Checkpoint formats: what a file is, and its tensors read to canonical names.

The data flow of a conversion (DESIGN.md, principle 7), one function per arrow::

    detect(path)                     -> format name, from the content (never the extension)
    read_raw(path, fmt)              -> {stored key: array}, metadata    (both in .readers)
    canonicalize(raw, metadata, ...) -> Weights: variant + {canonical name: array}, validated
                                        against the variant table (variants.identify)
    rename_for(weights, target)      -> {target key: array}, through the one name table
    write(weights, target, out, ...) -> the files, written atomically (dpn_gluon.convert.writers)

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
- ``onnx`` (target only): delegated to :mod:`dpn_gluon.onnx_graph`.

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
import json
import mmap
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import numpy as np

from .. import labels as class_labels
from .. import variants
from ..errors import CheckpointError, DPNError, KeyMismatch
from ..files import open_regular
from . import names
from .readers import TIMM_WEIGHTS, _arch_name, detect, parse_count, read_raw, resolve_source

FORMATS = ("mxnet", "gluon", "torch", "safetensors", "timm", "paddle")
TARGETS = FORMATS + ("onnx", "openvino")


#: The authors' preprocessing in timm's terms (0..1 pixels): mean (124,117,104)/255 and
#: std 1/(0.0167*255), a bicubic resize and a 100 % center crop (score.py; timm uses 0.875).
MEAN = variants.NORMALIZATIONS["authors"].mean
STD = variants.NORMALIZATIONS["authors"].std
CROP_PCT = 1.0
INTERPOLATION = "bicubic"
INPUT_SIZE = (3, 224, 224)
#: The authors' test setting: 320 x 320, a 100 % crop, their mean-max head.
TEST_INPUT_SIZE = (3, 320, 320)

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
    #: one class name per class (timm's label_names), carried by every output; None: unknown
    labels: Optional[List[str]] = None
    #: the licence written into a timm folder's model card and config (cypw/DPNs states none)
    license: str = "other"
    #: the input normalization the weights expect (variants.NORMALIZATIONS)
    normalization: str = "authors"
    #: whose weight set: "authors" (cypw/DPNs) or "paddleclas"
    weight_set: str = "authors"

    @property
    def norm(self) -> variants.Normalization:
        return variants.NORMALIZATIONS[self.normalization]

    @property
    def unit(self) -> str:
        return "b" if self.arch.b else "standard"

    @property
    def dtypes(self) -> List[str]:
        return sorted({a.dtype.name for a in self.tensors.values()})

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors.values())


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
    if fmt == "paddle":
        return _canonical_paddle(raw, source, arch, classifier)
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
    carried = class_labels.from_metadata(metadata, classes, where)
    builtin = class_labels.builtin(classes)
    norm = _carried_normalization(metadata)
    return Weights(found, classes, chosen, tensors, source, fmt, dict(metadata),
                   labels=carried or (list(builtin.names) if builtin else None),
                   normalization=norm.name,
                   weight_set="paddleclas" if metadata.get("weight_set") == "paddleclas"
                   else "authors")


def _carried_normalization(metadata: Mapping[str, str]) -> variants.Normalization:
    """The normalization a safetensors file (or timm folder) records in its mean and std;
    the authors' where it records none or one of its own (as before weight sets had one)."""
    try:
        mean, std = json.loads(metadata.get("mean", "")), json.loads(metadata.get("std", ""))
    except ValueError:
        return variants.NORMALIZATIONS["authors"]
    norm = variants.normalization_of(mean, std) if isinstance(mean, list) and \
        isinstance(std, list) else None
    return norm or variants.NORMALIZATIONS["authors"]


def _canonical_paddle(raw, source: Path, arch: Optional[str],
                      classifier: Optional[str]) -> Weights:
    """PaddleClas's state dict: its own names, BatchNorm epsilon and normalization
    (:mod:`.paddle`); the classifier takes the authors' plain name unless told."""
    from . import paddle
    found, classes, tensors = paddle.from_paddle(raw, str(source))
    if arch is not None and arch != found.name:
        raise CheckpointError("%s: --arch %s, but the tensors are PaddleClas's %s (%s)"
                              % (source, arch, paddle.PADDLE_ARCHS[found.name], found.name))
    chosen = classifier or "fc6"
    renamed = OrderedDict((chosen + k[3:] if k.startswith("fc6_") else k, v)
                          for k, v in tensors.items())
    builtin = class_labels.builtin(classes)
    return Weights(found, classes, chosen, renamed, source, "paddle",
                   {"weight_set": "paddleclas", "normalization": "imagenet"},
                   labels=list(builtin.names) if builtin else None,
                   normalization="imagenet", weight_set="paddleclas")


def _check_metadata(metadata: Mapping[str, str], arch: variants.Arch, classes: int, where: str,
                    head: str = "the classifier"):
    said_arch = metadata.get("config_architecture") or metadata.get("architecture")
    field_of = "config.json" if metadata.get("config_architecture") else "metadata"
    if said_arch and _arch_name(said_arch) != arch.name:
        raise CheckpointError("%s: %s says architecture %s, but the tensors are %s"
                              % (where, field_of, said_arch, arch.name))
    said = metadata.get("config_num_classes") or metadata.get("classes")
    field_of = "config.json num_classes" if metadata.get("config_num_classes") else "metadata classes"
    if said and parse_count(said) not in (None, classes):
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
    with open_regular(path, "checkpoint file") as f:
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
