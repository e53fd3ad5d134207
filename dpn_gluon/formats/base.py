"""What every format module shares: the bounds a checkpoint is held to, file opening that
refuses anything but a regular file, and the byte-progress wrapper the writers stream through.

Hostile input: every reader is bounded by the file's size before it allocates (a lying
header, a zip bomb, a storage declared larger than the file), runs no code from the file,
and refuses anything it does not expect in one line naming the file (docs/hostile.md).
"""
from __future__ import annotations

import mmap
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from .. import variants
from ..errors import CheckpointError, DPNError
from ..files import open_regular, require_regular
from . import sanity

PathLike = Union[str, Path]

#: dtypes a checkpoint may hold: those every target (MXNet 1.x, torch, safetensors) can
#: store. MXNet 2.x's int16/uint16/uint32/uint64 and bfloat16 are refused when read, by name.
DTYPES = ("float16", "float32", "float64", "uint8", "int8", "int32", "int64", "bool")
#: The largest class count a metadata field may declare (the variant table's bound).
MAX_CLASSES = variants.MAX_CLASSES
#: The most tensors a checkpoint may hold: the largest DPN's, plus timm's BatchNorm counters,
#: plus a margin so that a few extra keys still get a key-by-key mismatch report. A file
#: declaring more is refused before its arrays are parsed.
MAX_TENSORS = max(len(spec) + sum(k.endswith("_moving_var") for k in spec)
                  for spec in (variants.tensor_spec(a) for a in variants.ARCHS.values())) + 64
#: The longest tensor name read (the authors' longest is under 60 characters): error lines
#: that list names stay lines.
MAX_NAME = 1024
#: A bar on every write phase that takes a couple of seconds or more.
PROGRESS_MIN_BYTES = 64 << 20


# -- files ---------------------------------------------------------------------------------

def require_file(path: Path, what: str = "checkpoint file") -> int:
    """The size of ``path``, which must be a regular file (files.py), as a CheckpointError."""
    try:
        return require_regular(path, what).st_size
    except DPNError as e:
        raise CheckpointError(str(e)) from None


def open_file(path: Path, what: str = "checkpoint file"):
    try:
        return open_regular(path, what)
    except DPNError as e:
        raise CheckpointError(str(e)) from None


def peek(path: Path, n: int) -> bytes:
    with open_file(path) as f:
        return f.read(n)


class Mapped:
    """A read-only file over a memory map: a length a pickle declares is read as what
    remains of the file (a buffered file's ``read(n)`` allocates all ``n`` bytes first,
    1.8 GB for a 729-byte file with one byte cut)."""

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
def mapped(path: Path):
    with open_file(path) as f:
        view = Mapped(f)
        try:
            yield view
        finally:
            view.mm.close()


# -- what a checkpoint may hold ------------------------------------------------------------

def check_dtype(path, key: str, dtype: str) -> None:
    """Refuse, in one line naming the tensor, a dtype some target cannot hold or a non-float
    weight or statistic (sanity.wrong_kind)."""
    if dtype not in DTYPES:
        raise CheckpointError("%s: %s is %s; a checkpoint holds %s (what every target can "
                              "store)" % (path, key, dtype, "/".join(DTYPES)))
    wrong = sanity.wrong_kind(key, np.dtype(dtype))
    if wrong:
        raise CheckpointError("%s: %s" % (path, wrong))


def check_tensors(path, raw: Mapping[str, np.ndarray]) -> None:
    """The bounds every reader's output is held to: count, name length, dtype."""
    if len(raw) > MAX_TENSORS:
        raise CheckpointError("%s: holds %d tensors, more than any DPN checkpoint (at most %d)"
                              % (path, len(raw), MAX_TENSORS))
    for key, arr in raw.items():
        if len(key) > MAX_NAME:
            raise CheckpointError("%s: a tensor name of %d characters (%s...), not a DPN's"
                                  % (path, len(key), key[:40]))
        check_dtype(path, key, arr.dtype.name)


# -- metadata ------------------------------------------------------------------------------

def arch_name(value: str) -> str:
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


def check_metadata_types(metadata: Mapping[str, str], where) -> None:
    """The metadata fields the converter reads must be what it wrote: a known architecture,
    a class count, a classifier name; anything else is refused, not guessed around."""
    arch = metadata.get("architecture")
    if arch is not None and arch_name(arch) not in variants.ARCHS:
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


# -- writing -------------------------------------------------------------------------------

def contiguous(arr: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian, without a copy where it already is (np.ascontiguousarray
    turns 0-d into 1-d)."""
    little = arr.dtype.newbyteorder("<")
    if arr.flags.c_contiguous and arr.dtype == little:
        return arr
    return np.ascontiguousarray(arr, dtype=little).reshape(arr.shape)


class Progress:
    """A write-only file wrapper that shows a byte progress bar on stderr for big files
    (tqdm, silent when stderr is not a terminal); closes the bar on leaving the block."""

    def __init__(self, f, total: int, desc: str):
        self.f = f
        self.bar = None
        if total >= PROGRESS_MIN_BYTES:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr,
                            leave=False, disable=None)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def update(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def write(self, data) -> int:
        n = self.f.write(data)
        self.update(memoryview(data).nbytes)
        return n

    def flush(self):
        self.f.flush()

    def __getattr__(self, name):
        return getattr(self.f, name)
