"""safetensors files: timm's keys, plus string metadata (architecture, classes, the authors'
classifier name, source file and sha256, the weight set's normalization).

Read through the safetensors library (``pread``: each tensor once, no mapped pages) after
the header length is held to the file; written here, not by the library's ``save_file``:
streamed, with a progress bar, plain OSErrors on a full disk, and the same bytes for the
same tensors.
"""
from __future__ import annotations

import json
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List

import numpy as np

from .. import labels as class_labels
from .. import variants
from ..errors import CheckpointError
from .base import (
    MAX_TENSORS,
    Progress,
    check_dtype,
    check_metadata_types,
    contiguous,
    peek,
    require_file,
)

SUFFIX = ".safetensors"
SUFFIXES = (SUFFIX,)
#: safetensors' own limit on the JSON header.
MAX_HEADER = 100_000_000
_CHUNK = 16 << 20
#: safetensors dtype <-> numpy dtype (the ones a checkpoint here can hold).
_ST_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "U8": "uint8",
              "I8": "int8", "I32": "int32", "I64": "int64", "BOOL": "bool"}
_ST_DTYPE = {numpy: st for st, numpy in _ST_DTYPES.items()}


# -- detect ----------------------------------------------------------------------------------

def is_safetensors(f, size: int) -> bool:
    """Whether the file open as ``f`` has safetensors' structure: a u64 header length that fits
    the file and safetensors' limit, over a header that opens with ``{`` and closes with ``}``
    (then spaces: safetensors pads to 8 bytes). The JSON itself is parsed by the library, in
    the reader: a Python parse of a 100 MB header could take several times that in memory."""
    f.seek(0)
    head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= min(size - 8, MAX_HEADER):
        return False
    f.seek(8 + n - min(n, 64))
    return f.read(min(n, 64)).rstrip(b" ").endswith(b"}")


def looks_broken(head: bytes) -> bool:
    """A header in braces after 8 bytes that :func:`is_safetensors` refused: a broken
    safetensors file (cut short, bad JSON), for its reader to say why."""
    return len(head) >= 10 and head[8:10] in (b'{"', b"{}")


# -- read ------------------------------------------------------------------------------------

def _header_length(path: Path, size: int) -> int:
    """The JSON header's declared length, checked against the file before anything parses it."""
    head = peek(path, 8)
    if len(head) < 8:
        raise CheckpointError("%s: not a valid safetensors file: %d bytes, shorter than the "
                              "8-byte header length" % (path, size))
    (n,) = struct.unpack("<Q", head)
    if n > size - 8 or n > MAX_HEADER:
        raise CheckpointError("%s: not a valid safetensors file: header length says %d bytes, "
                              "but %d remain (truncated or not safetensors)" % (path, n, size - 8))
    return n


def read(path: Path):
    from safetensors import safe_open
    size = require_file(path, "safetensors file")
    _header_length(path, size)
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
    check_metadata_types(metadata, path)
    return out, metadata


# -- write -----------------------------------------------------------------------------------

def metadata(weights) -> Dict[str, str]:
    """String metadata: what the tensors are, where they came from, how to feed them."""
    return {
        "format": "pt",
        "architecture": weights.arch.name,
        "classes": str(weights.classes),
        "classifier": weights.classifier,
        "source_file": weights.source.name,
        "source_sha256": weights.sha256 or "",
        "source_format": weights.format,
        "mean": json.dumps(list(weights.norm.mean)),
        "std": json.dumps(list(weights.norm.std)),
        "interpolation": variants.INTERPOLATION,
        "crop_pct": str(variants.CROP_PCT),
        "input_size": json.dumps(list(variants.INPUT_SIZE)),
        "converter": "dpn-convert (dpn-gluon)",
        # the authors' files stay as they were; another weight set says whose it is
        **({} if weights.weight_set == "authors" else {"weight_set": weights.weight_set}),
        **class_labels.to_metadata(weights.labels),
    }


def write_safetensors(f, tensors, metadata: Dict[str, str]) -> None:
    """The safetensors format, streamed from the arrays: u64 header length, the JSON header
    (``__metadata__`` first, keys sorted, so the same tensors give the same bytes: the
    library's ``save_file`` orders metadata by a hash map, differently on every run), padded
    with spaces to 8 bytes, then each tensor's bytes in header order."""
    arrays = [(name, contiguous(np.asarray(arr))) for name, arr in tensors.items()]
    header = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, arr in arrays:
        header[name] = {"dtype": _ST_DTYPE[arr.dtype.name], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    f.write(struct.pack("<Q", len(text)) + text)
    for _, arr in arrays:
        flat = memoryview(arr.reshape(-1).view(np.uint8))
        for start in range(0, arr.nbytes, _CHUNK):
            f.write(flat[start:start + _CHUNK])


def write(weights, files: List[Path], tx, log, **_):
    out, = files
    with tx.file(out) as f, Progress(f, weights.nbytes, out.name) as bar:
        write_safetensors(bar, weights.renamed("timm"), metadata(weights))
