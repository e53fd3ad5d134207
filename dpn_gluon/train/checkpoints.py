"""A training run's files under ``--out PREFIX``, in the authors' format, all written atomically.

- ``PREFIX-symbol.json``: the authors' training graph (:func:`dpn_gluon.symbols.get_symbol`,
  ``fc6``, ``SoftmaxOutput``), as ``mx.model.save_checkpoint`` writes it;
- ``PREFIX-%04d.params`` after epoch ``%d`` (1-based, as MXNet's ``do_checkpoint``):
  ``arg:``/``aux:`` keys with the authors' names (:func:`dpn_gluon.checkpoint.write_checkpoint`),
  so ``dpn-convert``, ``dpn-evaluate`` and ``load_checkpoint`` read it unchanged;
- ``PREFIX-%04d.states``: SGD's momentum buffers as an MXNet NDArray file (``mx.nd.load``
  reads it) keyed by the authors' parameter names; no pickle, unlike ``Trainer.save_states``;
- ``PREFIX-train.json``: the run's settings and per-epoch history; written last, so the
  epoch it names is complete (what ``--resume`` continues from);
- ``PREFIX.log`` (appended) and ``PREFIX-curves.png``.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np

from ..checkpoint import write_checkpoint
from ..errors import DPNError
from ..files import read_bounded
from ..formats import mxparams
from ..formats.mxnet import PARAMS_SUFFIX, SYMBOL_SUFFIX, prefix_of
from ..safeio.atomic import atomic_write, sweep, temp_owner

STATES_SUFFIX = "-%04d.states"
RUN_SUFFIX = "-train.json"
LOG_SUFFIX = ".log"
CURVES_SUFFIX = "-curves.png"
_OURS = re.compile(r"-(\d{4}\.(params|states)|symbol\.json|train\.json|curves\.png)\Z")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _record_problem(record) -> Optional[str]:
    """What makes ``record`` unlike the PREFIX-train.json a run writes (what --resume reads:
    ``epoch``, ``recipe``, one ``history`` entry per epoch), or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if not _is_count(record.get("epoch")):
        return "epoch is not a count of epochs"
    if not isinstance(record.get("recipe"), dict):
        return "recipe is not an object"
    history = record.get("history")
    if not isinstance(history, list) or len(history) != record["epoch"]:
        return "history is not a list of %d epoch(s)" % record["epoch"]
    for number, entry in enumerate(history, 1):
        if not isinstance(entry, dict) or entry.get("epoch") != number or not all(
                isinstance(entry.get(k), (int, float)) and not isinstance(entry.get(k), bool)
                for k in ("loss", "train_top1")):
            return "history entry %d is not epoch %d's loss and accuracy" % (number, number)
    return None


def _not_a_weight(value: np.ndarray) -> Optional[str]:
    """Why ``value`` cannot be one of the run's tensors (all float32 and finite), or None."""
    if value.dtype != np.float32:
        return "is %s, not float32" % value.dtype
    if not np.isfinite(value).all():
        return "holds NaN or Inf"
    return None


class Run:
    """The files of one ``--out PREFIX``."""

    def __init__(self, prefix):
        # dpn-convert's rule for the authors' format: x-0003.params, x.params and
        # x-symbol.json all name prefix x (not x-0003.params-0001.params)
        self.prefix = prefix_of(Path(prefix))

    def _path(self, suffix: str) -> Path:
        return Path(str(self.prefix) + suffix)

    def params(self, epoch: int) -> Path:
        return self._path(PARAMS_SUFFIX % epoch)

    def states(self, epoch: int) -> Path:
        return self._path(STATES_SUFFIX % epoch)

    @property
    def symbol(self) -> Path:
        return self._path(SYMBOL_SUFFIX)

    @property
    def record(self) -> Path:
        return self._path(RUN_SUFFIX)

    @property
    def log(self) -> Path:
        return self._path(LOG_SUFFIX)

    @property
    def curves(self) -> Path:
        return self._path(CURVES_SUFFIX)

    def files(self, epochs: int) -> List[Path]:
        """Every file a run of ``epochs`` epochs writes at this prefix."""
        return [self.symbol, self.record, self.log, self.curves] + [
            f(epoch) for epoch in range(1, epochs + 1) for f in (self.params, self.states)]

    def existing(self) -> List[Path]:
        """Files of a run already at this prefix (what a new run would overwrite)."""
        folder, stem = self.prefix.parent, self.prefix.name
        if not folder.is_dir():
            return []
        found = [p for p in folder.iterdir()
                 if p.name.startswith(stem) and _OURS.fullmatch(p.name[len(stem):] or "x")]
        if self.log.exists():
            found.append(self.log)
        return sorted(found)

    def owns(self, name: str) -> bool:
        """Whether ``name`` (a file name in the prefix's folder) is one of this run's files."""
        stem = self.prefix.name
        return name == self.log.name or (
            name.startswith(stem) and bool(_OURS.fullmatch(name[len(stem):])))

    def _mine(self, writers: Optional[Iterable[int]]):
        writers = None if writers is None else set(writers)
        return lambda target, pid: self.owns(target) and (writers is None or pid in writers)

    def temporaries(self, writers: Optional[Iterable[int]] = None) -> List[Path]:
        """Temporary files :mod:`dpn_gluon.safeio.atomic` left for this run's outputs (named by
        its one rule, :func:`~dpn_gluon.safeio.atomic.temp_owner`; only a killed writer leaves
        them), those of the processes ``writers`` only when given."""
        folder = self.prefix.parent
        if not folder.is_dir():
            return []
        mine = self._mine(writers)
        return sorted(p for p in folder.iterdir()
                      for owner in [temp_owner(p.name)] if owner and mine(*owner))

    def remove_temporaries(self, writers: Iterable[int]) -> List[str]:
        """Remove what the (ended) processes ``writers`` left of this run's outputs, by
        :func:`~dpn_gluon.safeio.atomic.sweep` (so only dead writers' and unlocked files)."""
        return sweep(self.prefix.parent, self._mine(writers))

    def read_record(self) -> Optional[dict]:
        """The run record, or None when there is none."""
        if not self.record.exists():
            return None
        try:
            record = json.loads(read_bounded(self.record, 1 << 24, "run record"))
        except (ValueError, RecursionError) as err:     # RecursionError: nested too deep
            raise DPNError("%s: not a dpn-train run record: %s"
                           % (self.record, str(err).splitlines()[0][:160])) from None
        problem = _record_problem(record)
        if problem:
            raise DPNError("%s: not a dpn-train run record: %s" % (self.record, problem))
        return record

    def write_record(self, record: dict) -> None:
        with atomic_write(self.record, force=True) as f:
            f.write(json.dumps(record, indent=1).encode("utf-8"))

    def write_symbol(self, arch: str, classes: int, classifier: str) -> None:
        with atomic_write(self.symbol, force=True) as f:
            f.write(self.symbol_json(arch, classes, classifier))

    def save(self, epoch: int, tensors: "OrderedDict[str, np.ndarray]",
             states: Dict[str, np.ndarray]) -> Path:
        """Write epoch ``epoch``'s optimizer states, then its weights (the record comes after)."""
        with atomic_write(self.states(epoch), force=True) as f:
            mxparams.write(f, OrderedDict(("mom:" + k, v) for k, v in states.items()))
        return write_checkpoint(self.prefix, tensors, force=True, epoch=epoch)

    def symbol_json(self, arch: str, classes: int, classifier: str) -> bytes:
        from ..symbols import get_symbol
        sym = get_symbol(arch, classes, classifier, head="authors", softmax=True)
        return sym.tojson().encode("utf-8")

    def check_symbol(self, arch: str, classes: int, classifier: str) -> None:
        """On --resume: an existing PREFIX-symbol.json must be the one this run writes (an
        edited or truncated one would stay beside every later checkpoint)."""
        if not self.symbol.exists():
            return
        expected = self.symbol_json(arch, classes, classifier)
        if read_bounded(self.symbol, 1 << 26, "symbol file") != expected:
            raise DPNError("%s: not this run's graph (%s, %d classes, %s)"
                           % (self.symbol, arch, classes, classifier))

    def load_epoch(self, epoch: int, arch: str, classes: int, classifier: str
                   ) -> "OrderedDict[str, np.ndarray]":
        """Epoch ``epoch``'s weights, read as strictly as any checkpoint, and checked to be
        the run's network: the same architecture, classes and classifier, float32 and
        finite like every weight the run writes."""
        from ..checkpoint import read_checkpoint
        path = self.params(epoch)
        found = read_checkpoint(path)
        if (found[0].name, found[1], found[2]) != (arch, classes, classifier):
            raise DPNError("%s: holds %s (%d classes, %s), not the run's network %s (%d "
                           "classes, %s)" % (path, found[0].name, found[1], found[2], arch,
                                             classes, classifier))
        tensors = found[3]
        for name, value in tensors.items():
            problem = _not_a_weight(value)
            if problem:
                raise DPNError("%s: not this run's weights: %s %s" % (path, name[:80], problem))
        return OrderedDict((k, np.array(v)) for k, v in tensors.items())

    def load_states(self, epoch: int, weights: Mapping[str, np.ndarray],
                    trained: Iterable[str]) -> Dict[str, np.ndarray]:
        """Epoch ``epoch``'s momentum buffers, each checked against the weight it belongs to
        (``weights``: that epoch's tensors): the same shape, float32 like every weight here,
        finite; and one for each of the ``trained`` parameters, no more, no fewer.
        Anything else is refused in one line before training starts."""
        path = self.states(epoch)
        if not path.is_file():
            raise DPNError("%s: missing, cannot resume epoch %d" % (path, epoch))
        raw = mxparams.load(path, max_arrays=len(weights) + 1)
        if not isinstance(raw, dict) or not all(k.startswith("mom:") for k in raw):
            raise DPNError("%s: not dpn-train optimizer states" % path)
        states = {k[4:]: v for k, v in raw.items()}
        for name, value in states.items():
            weight = weights.get(name)
            if weight is None or name not in trained:
                problem = "names no trained weight of the network"
            elif value.shape != weight.shape:
                problem = "has shape %s, its weight %s" % (value.shape, weight.shape)
            else:
                problem = _not_a_weight(value)
            if problem:
                raise DPNError("%s: not dpn-train optimizer states: mom:%s %s"
                               % (path, name[:80], problem))
        missing = [n for n in trained if n not in states]
        if missing:
            raise DPNError("%s: not dpn-train optimizer states: no state for %d trained "
                           "weight(s) (first: %s)" % (path, len(missing), missing[0][:80]))
        return {k: np.array(v) for k, v in states.items()}

    def append_log(self, line: str) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")
