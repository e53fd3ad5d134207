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
  the same :func:`~dpn_gluon.evaluate.preprocess.preprocess` as files are.

:func:`open_dataset` detects which one a path is. :func:`iter_batches` decodes and resizes in
worker processes (forked where the platform can, as MXNet's own DataLoader does: the
workers touch only numpy and Pillow) and yields float32 NCHW batches in dataset order.
Unreadable images are skipped and counted, or raise
:class:`~dpn_gluon.evaluate.preprocess.ImageError` when ``strict``.

This module imports neither MXNet nor torch.
"""
from __future__ import annotations

import multiprocessing
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DPNError
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
    with open(lst, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            try:
                if len(fields) < 3:
                    raise ValueError("expected index<TAB>label<TAB>path")
                label = float(fields[1])
                if label != int(label):
                    raise ValueError("label %r is not an integer" % fields[1])
            except ValueError as err:
                raise DPNError("%s:%d: not a .lst line: %s" % (lst, lineno, err)) from None
            sources.append(str(root / fields[-1]))
            labels.append(int(label))
    return Dataset(lst, "list", sources, np.asarray(labels, dtype=np.int64))


def record_dataset(rec: Path) -> Dataset:
    idx = rec.with_suffix(".idx")
    if not rec.exists() or not idx.exists():
        raise DPNError("%s: a record set needs both %s and %s" % (rec, rec.name, idx.name))
    offsets = []
    with open(idx, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    offsets.append(int(line.split("\t")[1]))
                except (IndexError, ValueError):
                    raise DPNError("%s:%d: not a key<TAB>offset line" % (idx, lineno)) from None
    labels = []
    with open(rec, "rb") as f:
        for off in offsets:
            f.seek(off)
            header = _read_header(f, rec, off, with_image=False)[0]
            labels.append(int(header[1]))
    return Dataset(rec, "record", [(str(rec), off) for off in offsets],
                   np.asarray(labels, dtype=np.int64))


def _read_header(f, rec, offset: int, with_image: bool = True):
    """((flag, label, id, id2), image bytes or None) of the record at ``offset``."""
    head = f.read(8)
    if len(head) < 8:
        raise DPNError("%s: offset %d is past the end of the file" % (rec, offset))
    magic, lrec = struct.unpack("<II", head)
    if magic != _RECORD_MAGIC:
        raise DPNError("%s: no RecordIO record at offset %d (bad magic)" % (rec, offset))
    if lrec >> 29:
        raise DPNError("%s: record at offset %d is split in parts, which is not supported"
                       % (rec, offset))
    length = lrec & ((1 << 29) - 1)
    payload = f.read(length if with_image else _IR_SIZE + 4)
    flag, label, id_, id2 = struct.unpack(_IR_FORMAT, payload[:_IR_SIZE])
    start = _IR_SIZE
    if flag > 0:   # a label vector of `flag` floats follows; the class is its first entry
        label = struct.unpack("<f", payload[start:start + 4])[0]
        start += 4 * flag
    return (flag, label, id_, id2), (payload[start:] if with_image else None)


def read_source(source: Source) -> bytes:
    """The encoded bytes of one sample."""
    if isinstance(source, str):
        with open(source, "rb") as f:
            return f.read()
    rec, offset = source
    with open(rec, "rb") as f:
        f.seek(offset)
        return _read_header(f, rec, offset)[1]


# -- decoding in worker processes ----------------------------------------------------------

_WORKER_ARGS = None
#: Workers touch only numpy and Pillow, so forking a parent that holds MXNet, torch or CUDA
#: state is safe, as in ``mx.gluon.data.DataLoader``; spawn would re-run a script's
#: ``__main__`` and cannot start from ``python -`` at all.
_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _init_worker(crop: int, protocol: str) -> None:
    global _WORKER_ARGS
    _WORKER_ARGS = (crop, protocol)


def _load(task) -> Tuple[int, Optional[np.ndarray], Optional[str]]:
    i, source, name = task
    crop, protocol = _WORKER_ARGS
    try:
        # uint8 crops travel between processes (4x less than float32); the batch is
        # normalized at once in the parent: together, exactly preprocess().
        return i, resize_crop(load_image(read_source(source), name), crop, protocol), None
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
                 workers: int = 0, strict: bool = False) -> Iterator[Batch]:
    """Preprocessed batches in dataset order; ``workers`` processes decode (0: in-process)."""
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
                yield _batch(dataset, arrays, idx, skipped)
                arrays, idx, skipped = [], [], []
        if arrays or skipped:
            yield _batch(dataset, arrays, idx, skipped)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _batch(dataset: Dataset, arrays: Sequence[np.ndarray], idx: List[int],
           skipped: List[str]) -> Batch:
    index = np.asarray(idx, dtype=np.int64)
    data = normalize(np.stack(arrays)) if arrays else np.zeros((0, 3, 0, 0), np.float32)
    return Batch(data, dataset.labels[index], index, skipped)
