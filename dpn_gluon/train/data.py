"""Training batches for one worker: its shard of each global batch, augmented, per-epoch seeded.

- Class folders and ``.lst`` lists (indexed by :func:`dpn_gluon.data.datasets.open_dataset`):
  epoch ``e`` shuffles the whole set with a generator seeded from ``(seed, e)``; global batch
  ``s`` is ``perm[s*B:(s+1)*B]`` and worker ``r`` of ``n`` takes slice ``r`` of ``n`` equal
  slices of it, so the workers of one step together see exactly the single-process batch.
  Sample ``perm[i]`` is augmented with a generator seeded from ``(seed, e, i)``: the same draw
  whatever the number of workers, loader processes or a resume. The last incomplete global
  batch is dropped (as MXNet's ``last_batch='discard'``).
- ``.rec`` files: MXNet's C++ ``ImageRecordIter`` with the recipe's arguments
  (:func:`dpn_gluon.train.recipe.record_iter_args`), sharded by ``num_parts``/``part_index``,
  re-created each epoch with seeds from ``(seed, e)``; with several decoding threads its
  augmentation draws are not reproducible bit for bit.
"""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from ..data.datasets import Dataset, read_source
from ..data.preprocess import ImageError, load_image, normalize
from ..errors import DPNError
from ..safeio.atomic import worker_signals
from . import augment

_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def epoch_seed(seed: int, epoch: int) -> int:
    """One integer seed per (run seed, epoch), for MXNet's generators and the record iterator."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] >> 1)


@dataclass
class Shard:
    rank: int = 0
    parts: int = 1


class _Batches:
    """One worker's view of a data set: ``local`` = its share of each global batch (the
    caller has checked that the global batch splits evenly)."""

    def __init__(self, dataset: Dataset, size: int, batch_size: int, shard: Shard,
                 seed: int, augmented: bool = True, threads: int = 0):
        self.dataset, self.size, self.batch_size = dataset, size, batch_size
        self.shard, self.seed, self.augmented, self.threads = shard, seed, augmented, threads
        self.local = batch_size // shard.parts

    def start(self) -> None:
        """Start what the loader keeps for the whole run (nothing here)."""

    def close(self) -> None:
        """Stop what :meth:`start` started."""


class FileBatches(_Batches):
    """Augmented batches of a folder or ``.lst`` data set for one worker (see module doc)."""

    def __init__(self, dataset: Dataset, *args, **kwargs):
        super().__init__(dataset, *args, **kwargs)
        if len(dataset) < self.batch_size:
            raise DPNError("%s: %d images, fewer than one batch of %d"
                           % (dataset.path, len(dataset), self.batch_size))
        self._pool = None

    @property
    def steps(self) -> int:
        return len(self.dataset) // self.batch_size

    def epoch(self, epoch: int, skip: int = 0, limit: Optional[int] = None
              ) -> Iterator[tuple]:
        """(float32 NCHW data, int64 labels) of this worker, steps ``skip`` .. ``limit``."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        last = self.steps if limit is None else min(self.steps, limit)
        tasks = []
        for step in range(skip, last):
            start = step * self.batch_size + self.shard.rank * self.local
            tasks.extend((epoch, pos, int(perm[pos])) for pos in range(start, start + self.local))
        if self.threads > 0:
            results = self._processes().imap(_sample, tasks,
                                             chunksize=max(1, self.local // self.threads))
        else:
            _init(*self._args())
            results = map(_sample, tasks)
        arrays, labels = [], []
        for array, label in results:
            arrays.append(array)
            labels.append(label)
            if len(arrays) == self.local:
                yield normalize(np.stack(arrays)), np.asarray(labels, np.int64)
                arrays, labels = [], []

    def _args(self):
        return self.dataset, self.size, self.seed, self.augmented

    def _processes(self):
        """The decoding processes, started once for the whole run: forked each epoch, they
        were copies of a trainer that had grown by then, and each copy's pages diverged."""
        if self._pool is None:
            ctx = multiprocessing.get_context(_START_METHOD)
            self._pool = ctx.Pool(self.threads, initializer=_init_process,
                                  initargs=self._args())
        return self._pool

    def start(self) -> None:
        """Start the decoding processes now, while the trainer is small (before the net)."""
        if self.threads > 0:
            self._processes()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


_ARGS = None


def _init(*args) -> None:
    global _ARGS
    _ARGS = args


def _init_process(*args) -> None:
    """A decoding process: killed quietly by the pool, leaves Ctrl-C to the trainer."""
    worker_signals()
    _init(*args)


def _sample(task):
    epoch, pos, index = task
    dataset, size, seed, augmented = _ARGS
    try:
        img = load_image(read_source(dataset.sources[index]), dataset.name(index))
    except OSError as err:
        raise ImageError("%s: %s" % (dataset.name(index), err)) from None
    if not augmented:
        return augment.center(img, size), dataset.labels[index]
    rng = np.random.default_rng([seed, epoch, pos])
    return augment.augment(img, size, rng), dataset.labels[index]


class RecordBatches(_Batches):
    """A ``.rec`` read by MXNet's ``ImageRecordIter`` with the recipe (see module doc)."""

    def __init__(self, dataset: Dataset, *args, **kwargs):
        super().__init__(dataset, *args, **kwargs)
        if len(dataset) // self.shard.parts < self.local:
            raise DPNError("%s: %d records, fewer than one batch of %d per worker"
                           % (dataset.path, len(dataset), self.local))

    @property
    def steps(self) -> int:
        return (len(self.dataset) // self.shard.parts) // self.local

    def iterator(self, epoch: int):
        import mxnet as mx

        from .recipe import record_iter_args
        rec = str(self.dataset.path)
        seed = epoch_seed(self.seed, epoch)
        return mx.io.ImageRecordIter(
            path_imgrec=rec, path_imgidx=rec[:-4] + ".idx", batch_size=self.local,
            shuffle=True, seed=seed % (1 << 31), seed_aug=(seed >> 1) % (1 << 31),
            num_parts=self.shard.parts, part_index=self.shard.rank, round_batch=False,
            preprocess_threads=max(1, self.threads), label_width=1,
            **record_iter_args(self.size, self.augmented))

    def epoch(self, epoch: int, skip: int = 0, limit: Optional[int] = None) -> Iterator[tuple]:
        it = self.iterator(epoch)
        last = self.steps if limit is None else min(self.steps, limit)
        for step in range(last):
            try:
                batch = it.next()
            except StopIteration:
                return
            if step < skip:
                continue
            yield batch.data[0].asnumpy(), batch.label[0].asnumpy().astype(np.int64)


def batches(dataset: Dataset, size: int, batch_size: int, shard: Shard, seed: int,
            augmented: bool = True, threads: int = 0):
    """The loader for ``dataset``'s kind: :class:`RecordBatches` for ``.rec``, else files."""
    kind = RecordBatches if dataset.kind == "record" else FileBatches
    return kind(dataset, size, batch_size, shard, seed, augmented, threads)
