"""Every checkpoint format, assembled: the one table the converter, the output rule and the
commands ask what formats exist, what their files are named, and how to detect, read and
write them. A format is one module (its detection, reader, writer and suffixes) plus one
row of :data:`FORMATS`, and its test in :func:`detect`'s order.

The data flow of a conversion (DESIGN.md), one function per arrow::

    detect(path)        -> Source: the format, from the content (never the extension),
                           with what detection already parsed (a .params file, once)
    read_raw(source)    -> {stored key: array}, metadata, held to base's bounds
    (canonical.canonicalize, then a format's write through the command's transaction)
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import CheckpointError
from . import mxnet, paddle, pytorch, safetensors, timm
from .base import PathLike, check_tensors, open_file, peek, require_file


@dataclass(frozen=True)
class Format:
    name: str
    #: the default output suffix ("" for a folder or an mxnet prefix)
    suffix: str
    #: file suffixes that say a file is this format (refused as a name for any other target)
    suffixes: Tuple[str, ...]
    read: Callable
    write: Callable
    #: the files an output at ``out`` consists of
    files: Callable[[Path], List[Path]] = lambda out: [out]
    folder: bool = False


FORMATS: "OrderedDict[str, Format]" = OrderedDict((f.name, f) for f in [
    Format("mxnet", "", (), mxnet.read_mxnet, mxnet.write_mxnet, mxnet.output_files),
    Format("gluon", mxnet.GLUON_SUFFIX, (mxnet.GLUON_SUFFIX,), mxnet.read_gluon,
           mxnet.write_gluon),
    Format("torch", pytorch.SUFFIX, pytorch.SUFFIXES, pytorch.read, pytorch.write),
    Format("safetensors", safetensors.SUFFIX, safetensors.SUFFIXES, safetensors.read,
           safetensors.write),
    Format("timm", "", (), timm.read, timm.write, folder=True),
    Format("paddle", paddle.SUFFIX, paddle.SUFFIXES, paddle.read, paddle.write,
           paddle.output_files),
])
NAMES = tuple(FORMATS)


@dataclass(frozen=True)
class Source:
    """A checkpoint file or folder and its detected format; ``parsed`` is what detection
    already read (a ``.params`` file's arrays), for :func:`read_raw` to use, not redo."""

    path: Path
    format: str
    parsed: Optional[Mapping] = None


def resolve(src: PathLike, epoch: Optional[int] = None) -> Path:
    """The file or folder SRC names (:func:`.mxnet.resolve`: the one resolver)."""
    return mxnet.resolve(src, epoch)


def detect(path: PathLike) -> Source:
    """What a file or folder is, from its structure.

    Checked in an order where no valid file of one format passes another's test:
    safetensors first (its u64 header length fits the file, over a header in braces; the
    first 8 bytes of a ``.params``, zip or pickle file say more than any file holds, or are
    followed by a zero byte), then MXNet's 16-byte list magic (parsed here, once, to tell
    the authors' keys from Gluon's), a zip local header or torch's pickled magic number,
    then a pickled dict (PaddlePaddle).
    """
    path = Path(path)
    if path.is_dir():
        if timm.is_timm(path):
            return Source(path, "timm")
        raise CheckpointError("%s: a folder, but not a timm folder (needs %s and %s)"
                              % (path, timm.CONFIG, timm.WEIGHTS))
    require_file(path)
    with open_file(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(64)
        if not head:
            raise CheckpointError("%s: an empty file, not a checkpoint" % path)
        if safetensors.is_safetensors(f, size):
            return Source(path, "safetensors")
    if mxnet.is_params(head):
        parsed = mxnet.parse(path)
        return Source(path, mxnet.layout(parsed), parsed)
    if pytorch.is_torch(head):
        return Source(path, "torch")
    if paddle.is_pdparams(head):
        return Source(path, "paddle")
    if safetensors.looks_broken(head):
        return Source(path, "safetensors")      # its reader says why
    if head.lstrip()[:1] == b"{" and b'"nodes"' in head + peek(path, 4096):
        raise CheckpointError("%s: an MXNet symbol file; pass PREFIX-0000.params (or PREFIX "
                              "with --epoch)" % path)
    raise CheckpointError("%s: not a checkpoint dpn-convert reads (neither MXNet .params, "
                          "PyTorch, safetensors, PaddlePaddle nor a timm folder)" % path)


def read_raw(source: Source) -> Tuple["OrderedDict[str, np.ndarray]", Dict[str, str]]:
    """The format's reader: the stored keys and arrays, and the file's metadata. Every
    array has a dtype all targets hold, and all but timm's step counters are floating point."""
    fmt = FORMATS[source.format]
    if source.parsed is not None:
        raw, metadata = fmt.read(source.path, source.parsed)
    else:
        raw, metadata = fmt.read(source.path)
    check_tensors(source.path, raw)
    return raw, metadata


def read_file(path: PathLike) -> Tuple["OrderedDict[str, np.ndarray]", Dict[str, str]]:
    """:func:`read_raw` of :func:`detect`."""
    return read_raw(detect(path))


#: The default suffix of each format as an output (timm is a folder, mxnet a prefix).
SUFFIX = {name: f.suffix for name, f in FORMATS.items()}
#: Suffixes that say which format a file is; ``.params`` is Gluon's (mxnet takes it as its
#: prefix's).
KNOWN_SUFFIXES = {s: name for name, f in FORMATS.items() for s in f.suffixes}
