"""Labelled image sets for dpn-evaluate: an ImageNet-style folder, a ``.lst`` list, a RecordIO pair.

- **folder**: one sub-folder per class; labels are the sorted sub-folder names' indices, which
  for ImageNet is the sorted synset order the authors trained with (and that
  ``mx.gluon.data.vision.ImageFolderDataset`` and torchvision's ``ImageFolder`` use).
- **list**: the authors' ``.lst`` (MXNet's ``im2rec`` format),
  ``index\\tlabel[\\tlabel...]\\tpath``, paths relative to ``root`` (default: the list's
  folder); the first label is the class.
- **record**: a ``.rec`` file with its ``.idx`` (``key\\toffset`` lines), as written by
  ``mx.recordio.MXIndexedRecordIO`` / ``pack_img``. The records are read here without MXNet
  (magic, length, ``IRHeader`` 'IfQQ', the encoded image) and the image bytes are decoded by
  the same :func:`~dpn_gluon.data.preprocess.preprocess` as files are.

:func:`open_dataset` detects which one a path is. :func:`iter_batches` decodes and resizes in
worker processes (forked where the platform can, as MXNet's own DataLoader does: the
workers touch only numpy and Pillow) and yields float32 NCHW batches in dataset order.
Unreadable images are skipped and counted, or raise
:class:`~dpn_gluon.data.preprocess.ImageError` when ``strict``.

This module imports neither MXNet nor torch.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DPNError
from ..files import open_regular
from ..safeio.atomic import worker_signals
from ..variants import MAX_CLASSES
from .images import MAX_IMAGE_BYTES
from .preprocess import ImageError, load_image, normalize, resize_crop

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff", ".gif")

#: A sample's source: a file path, or (rec file, byte offset) of one record.
Source = Union[str, Tuple[str, int]]

_RECORD_MAGIC = 0xCED7230A
_IR_FORMAT = "IfQQ"          # flag, label, id, id2 (mx.recordio.IRHeader)
_IR_SIZE = struct.calcsize(_IR_FORMAT)


@dataclass
class Dataset:
    """Samples in evaluation order: ``sources[i]`` with integer label ``labels[i]``."""

    path: Path
    kind: str                     # "folder", "list" or "record"
    sources: List[Source]
    labels: np.ndarray            # int64
    classes: Optional[List[str]] = None   # folder: the sub-folder names, in label order

    def __len__(self) -> int:
        return len(self.sources)

    def name(self, i: int) -> str:
        src = self.sources[i]
        return src if isinstance(src, str) else "%s@%d" % src

    def check_labels(self, num_classes: int) -> None:
        """A one-line :class:`DPNError` if a label is not a class of the checkpoint."""
        if self.classes is not None and len(self.classes) > num_classes:
            raise DPNError("%s: %d class folders, but the checkpoint has %d classes"
                           % (self.path, len(self.classes), num_classes))
        bad = np.flatnonzero((self.labels < 0) | (self.labels >= num_classes))
        if bad.size:
            i = int(bad[0])
            raise DPNError("%s: label %d of %s is out of range for the checkpoint's %d classes "
                           "(%d such samples)" % (self.path, self.labels[i], self.name(i),
                                                  num_classes, bad.size))

    def relabel(self, class_ids: Sequence[str]) -> "Dataset":
        """Folder labels as positions in ``class_ids`` (e.g. the 1000 ImageNet synsets).

        Needed when the folder holds only some of the classes: sorted-folder indices would
        then not be the checkpoint's class indices. Unchanged unless every folder is named
        after one of ``class_ids``.
        """
        if self.classes is None or not set(self.classes) <= set(class_ids):
            return self
        position = {c: i for i, c in enumerate(class_ids)}
        mapping = np.array([position[c] for c in self.classes], dtype=np.int64)
        return Dataset(self.path, self.kind, self.sources, mapping[self.labels],
                       list(class_ids))

    def subset(self, limit: Optional[int]) -> "Dataset":
        """``limit`` samples evenly spaced over the set (all when None or larger).

        Evenly spaced rather than the first ones, so that a quick run on a class folder
        sees every class rather than the first few.
        """
        if limit is None or limit >= len(self):
            return self
        keep = (np.arange(limit) * len(self)) // limit
        return Dataset(self.path, self.kind, [self.sources[i] for i in keep],
                       self.labels[keep], self.classes)


def open_dataset(path, root=None) -> Dataset:
    """Detect what ``path`` is (folder, ``.lst`` or ``.rec``) and index its samples."""
    path = Path(path)
    if not path.exists():
        raise DPNError("%s: no such file or folder" % path)
    if path.is_dir():
        ds = folder_dataset(path)
    elif path.suffix == ".lst":
        ds = list_dataset(path, root)
    elif path.suffix in (".rec", ".idx"):
        ds = record_dataset(path.with_suffix(".rec"))
    else:
        raise DPNError("%s: not a folder, a .lst list or a .rec record file" % path)
    if not len(ds):
        raise DPNError("%s: no images found" % path)
    return ds


def folder_dataset(root: Path) -> Dataset:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DPNError("%s: no class sub-folders (expected one folder per class)" % root)
    sources, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                sources.append(str(f))
                labels.append(label)
    return Dataset(root, "folder", sources, np.asarray(labels, dtype=np.int64), classes)


def list_dataset(lst: Path, root=None) -> Dataset:
    root = Path(root) if root is not None else lst.parent
    sources, labels = [], []
    for lineno, line in _text_lines(lst, ".lst list"):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) < 3:
                raise ValueError("expected index<TAB>label<TAB>path")
            if not _INTEGER.fullmatch(fields[0]):
                raise ValueError("index %r is not a non-negative integer" % fields[0][:40])
            label = parse_label(fields[1])
            for extra in fields[2:-1]:
                _number(extra)
            if not fields[-1] or "\0" in fields[-1]:
                raise ValueError("an empty path, or one with a NUL byte")
        except ValueError as err:
            raise DPNError("%s:%d: not a .lst line: %s" % (lst, lineno, err)) from None
        sources.append(str(root / fields[-1]))
        labels.append(label)
    return Dataset(lst, "list", sources, np.asarray(labels, dtype=np.int64))


def record_dataset(rec: Path) -> Dataset:
    idx = rec.with_suffix(".idx")
    if not rec.exists() or not idx.exists():
        raise DPNError("%s: a record set needs both %s and %s" % (rec, rec.name, idx.name))
    with open_regular(rec, ".rec record file") as f:
        size = os.fstat(f.fileno()).st_size
        offsets = []
        for lineno, line in _text_lines(idx, ".idx index"):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not all(_INTEGER.fullmatch(x) for x in fields):
                raise DPNError("%s:%d: not a key<TAB>offset line of two non-negative integers"
                               % (idx, lineno))
            offset = int(fields[1])
            if offset >= size:
                raise DPNError("%s:%d: offset %d is past the end of %s (%d bytes)"
                               % (idx, lineno, offset, rec.name, size))
            offsets.append(offset)
        labels = [read_record(f, rec, off, size, with_image=False)[0] for off in offsets]
    return Dataset(rec, "record", [(str(rec), off) for off in offsets],
                   np.asarray(labels, dtype=np.int64))


#: Longest line of a .lst or .idx file (a path plus a few labels).
MAX_LINE = 1 << 16
_INTEGER = re.compile(r"[0-9]{1,18}")
#: A label as im2rec writes it ("281.000000") or as an integer.
_LABEL = re.compile(r"[0-9]{1,18}(\.0*)?")
_NUMBER = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")


def _text_lines(path: Path, what: str) -> Iterator[Tuple[int, str]]:
    """(line number, line without its end) of a UTF-8 text file, each line bounded."""
    with open_regular(path, what) as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE:
                raise DPNError("%s:%d: a line longer than %d bytes: not a %s"
                               % (path, lineno, MAX_LINE, what))
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DPNError("%s:%d: not UTF-8 text (byte %d of the line)"
                               % (path, lineno, err.start + 1)) from None
            yield lineno, line.rstrip("\r\n")


def parse_label(text) -> int:
    """A class index from a .lst field or a record's float label; ValueError otherwise."""
    if isinstance(text, str):
        if not _LABEL.fullmatch(text):
            raise ValueError("label %r is not a class index (an integer >= 0)" % text[:40])
        value = float(text)
    else:
        value = float(text)
        if not math.isfinite(value) or value < 0 or value != math.floor(value):
            raise ValueError("label %r is not a class index (an integer >= 0)" % value)
    if value >= MAX_CLASSES:
        raise ValueError("label %d is beyond the %d classes a checkpoint may have"
                         % (value, MAX_CLASSES))
    return int(value)


def _number(text: str) -> float:
    """A further label of a .lst line (im2rec allows a label vector): a finite number."""
    if not _NUMBER.fullmatch(text) or not math.isfinite(float(text)):
        raise ValueError("label %r is not a finite number" % text[:40])
    return float(text)


def read_record(f, rec, offset: int, size: int, with_image: bool = True):
    """(label, image bytes or None) of the record at ``offset`` of the open ``.rec`` ``f``
    (``size`` bytes): every length checked against the file before it is read."""
    where = "%s: record at offset %d" % (rec, offset)
    f.seek(offset)
    head = f.read(8)
    if len(head) < 8:
        raise DPNError("%s: the file ends inside the record's header" % where)
    magic, lrec = struct.unpack("<II", head)
    if magic != _RECORD_MAGIC:
        raise DPNError("%s: not a RecordIO record (bad magic)" % where)
    if lrec >> 29:
        raise DPNError("%s: split in parts, which is not supported" % where)
    length = lrec & ((1 << 29) - 1)
    if offset + 8 + length > size:
        raise DPNError("%s: %d bytes long, past the end of the file (%d bytes)"
                       % (where, length, size))
    if length < _IR_SIZE:
        raise DPNError("%s: %d bytes, too short for its %d-byte header" % (where, length, _IR_SIZE))
    if length > MAX_IMAGE_BYTES + (1 << 20):
        raise DPNError("%s: %d bytes, more than an image may have" % (where, length))
    flag, label, _, _ = struct.unpack(_IR_FORMAT, f.read(_IR_SIZE))
    start = _IR_SIZE
    if flag > 0:   # a label vector of `flag` floats follows; the class is its first entry
        if _IR_SIZE + 4 * flag > length:
            raise DPNError("%s: %d labels do not fit in its %d bytes" % (where, flag, length))
        label = struct.unpack("<f", f.read(4))[0]
        start += 4 * flag
    try:
        label = parse_label(label)
    except ValueError as err:
        raise DPNError("%s: %s" % (where, err)) from None
    if not with_image:
        return label, None
    f.seek(offset + 8 + start)
    return label, f.read(length - start)


def read_source(source: Source):
    """What :func:`~dpn_gluon.data.images.load_image` decodes for one sample: a path,
    or the image bytes of one record."""
    if isinstance(source, str):
        return source
    rec, offset = source
    with open_regular(rec, ".rec record file") as f:
        return read_record(f, rec, offset, os.fstat(f.fileno()).st_size)[1]


# -- decoding in worker processes ----------------------------------------------------------

_WORKER_ARGS = None
#: Workers touch only numpy and Pillow, so forking a parent that holds MXNet, torch or CUDA
#: state is safe, as in ``mx.gluon.data.DataLoader``; spawn would re-run a script's
#: ``__main__`` and cannot start from ``python -`` at all.
_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _init_worker(crop: int, protocol: str) -> None:
    global _WORKER_ARGS
    worker_signals()
    _WORKER_ARGS = (crop, protocol)



def _load(task) -> Tuple[int, Optional[np.ndarray], Optional[str]]:
    i, source, name = task
    crop, protocol = _WORKER_ARGS
    try:
        # uint8 crops travel between processes (4x less than float32); the batch is
        # normalized at once in the parent: together, exactly preprocess().
        return i, resize_crop(load_image(read_source(source), name), crop, protocol, name), None
    except (ImageError, DPNError, OSError) as err:
        msg = str(err) if isinstance(err, DPNError) else "%s: %s" % (name, err)
        return i, None, msg


@dataclass
class Batch:
    data: np.ndarray       # float32 (n, 3, crop, crop)
    labels: np.ndarray     # int64 (n,)
    indices: np.ndarray    # positions in the dataset
    skipped: List[str]     # one line per image skipped since the previous batch


def iter_batches(dataset: Dataset, crop: int, protocol: str, batch_size: int,
                 workers: int = 0, strict: bool = False,
                 normalization: str = "authors") -> Iterator[Batch]:
    """Preprocessed batches in dataset order; ``workers`` processes decode (0: in-process);
    normalized as the checkpoint's weight set expects."""
    if batch_size < 1:
        raise DPNError("batch size must be positive, got %d" % batch_size)
    tasks = ((i, src, dataset.name(i)) for i, src in enumerate(dataset.sources))
    if workers > 0:
        ctx = multiprocessing.get_context(_START_METHOD)
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(crop, protocol))
        results = pool.imap(_load, tasks, chunksize=max(1, min(16, batch_size // workers)))
    else:
        pool = None
        _init_worker(crop, protocol)
        results = map(_load, tasks)
    try:
        arrays, idx, skipped = [], [], []
        for i, array, error in results:
            if error is not None:
                if strict:
                    raise ImageError(error + " (without --strict it would be skipped)")
                skipped.append(error)
                continue
            arrays.append(array)
            idx.append(i)
            if len(arrays) == batch_size:
                yield _batch(dataset, arrays, idx, skipped, normalization)
                arrays, idx, skipped = [], [], []
        if arrays or skipped:
            yield _batch(dataset, arrays, idx, skipped, normalization)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _batch(dataset: Dataset, arrays: Sequence[np.ndarray], idx: List[int],
           skipped: List[str], normalization: str = "authors") -> Batch:
    index = np.asarray(idx, dtype=np.int64)
    data = normalize(np.stack(arrays), normalization) if arrays else \
        np.zeros((0, 3, 0, 0), np.float32)
    return Batch(data, dataset.labels[index], index, skipped)
