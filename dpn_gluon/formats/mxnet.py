"""MXNet's NDArray checkpoints, in the two layouts dpn-convert reads and writes:

- ``mxnet``: the authors' ``PREFIX-0000.params`` (``arg:``/``aux:`` keys, as
  ``mx.model.save_checkpoint`` writes them) beside ``PREFIX-symbol.json``;
- ``gluon``: one ``.params`` file of Gluon's ``save_parameters`` (unprefixed keys).

This module is the one home of the ``PREFIX-NNNN.params`` + ``PREFIX-symbol.json``
convention: the names, the resolver, and what a prefix writes and reads. The bytes are
:mod:`.mxparams`' (numpy only). The ``-symbol.json`` graph is built above this layer (it
needs MXNet) and handed to :func:`write_mxnet`.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import List, Mapping, Optional

from .. import variants
from ..errors import CheckpointError
from . import mxparams
from .base import MAX_TENSORS, PathLike, Progress, require_file

PARAMS_SUFFIX = "-%04d.params"
SYMBOL_SUFFIX = "-symbol.json"
#: Gluon's file suffix; as an output name it is also read as an mxnet prefix's.
GLUON_SUFFIX = ".params"
_EPOCH_PARAMS = re.compile(r"-\d{4}\.params$")


# -- the PREFIX-NNNN.params convention -------------------------------------------------------

def params_name(prefix: PathLike, epoch: int = 0) -> Path:
    return Path(str(prefix) + PARAMS_SUFFIX % epoch)


def symbol_name(prefix: PathLike) -> Path:
    return Path(str(prefix) + SYMBOL_SUFFIX)


def is_epoch_file(path: Path) -> bool:
    """``PREFIX-NNNN.params``: a file of the authors' convention (not a Gluon name)."""
    return bool(_EPOCH_PARAMS.search(path.name))


def prefix_of(path: Path) -> Path:
    """``back.params``, ``back-0003.params`` and ``back-symbol.json`` all mean prefix ``back``."""
    name = path.name
    for pattern in (_EPOCH_PARAMS, re.compile(r"-symbol\.json$"), re.compile(r"\.params$")):
        if pattern.search(name):
            return path.with_name(pattern.sub("", name))
    return path


def output_files(prefix: Path) -> List[Path]:
    """What ``--to mxnet`` writes at ``prefix``: the graph, then epoch 0's parameters."""
    return [symbol_name(prefix), params_name(prefix)]


def companions(src: Path) -> List[Path]:
    """The file read with an epoch file: its ``-symbol.json`` (never to be overwritten)."""
    return [symbol_name(_EPOCH_PARAMS.sub("", str(src)))] if is_epoch_file(src) else []


def resolve(src: PathLike, epoch: Optional[int] = None) -> Path:
    """The file or folder SRC names: ``PREFIX`` with ``epoch`` is ``PREFIX-%04d.params``
    (``PREFIX-symbol.json`` names its prefix too); a ``PREFIX`` that is not a file means
    epoch 0. Anything but a regular file or a folder (a FIFO, a device, a socket) is refused."""
    src = Path(src)
    if src.name.endswith(SYMBOL_SUFFIX):
        src = src.with_name(src.name[: -len(SYMBOL_SUFFIX)])
        epoch = epoch or 0
    if epoch is not None:
        path = params_name(src, epoch)
        if not path.exists():
            raise CheckpointError("%s: no such file (from %s with --epoch %d)" % (path, src, epoch))
        require_file(path)
        return path
    if not src.exists():
        guess = params_name(src)
        if guess.exists():
            require_file(guess)
            return guess
        raise CheckpointError("%s: no such file or folder" % src)
    if not src.is_dir():
        require_file(src)
    return src


def params_path(path: PathLike, epoch: int = 0) -> Path:
    """The ``.params`` file of a checkpoint given as ``PREFIX``, ``PREFIX-0000.params`` or
    ``PREFIX-symbol.json``; raises :class:`CheckpointError` if it does not exist."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError("%s: is a folder, not a checkpoint" % path)
    if path.name.endswith(SYMBOL_SUFFIX):
        found = path.with_name(path.name[: -len(SYMBOL_SUFFIX)] + PARAMS_SUFFIX % epoch)
    elif path.exists() or path.name.endswith(".params"):     # a .params file is named whole
        found = path
    else:
        found = path.with_name(path.name + PARAMS_SUFFIX % epoch)
    if not found.exists():
        tried = "" if found == path else " (looked for %s)" % found.name
        raise CheckpointError("%s: no such checkpoint file%s" % (path, tried))
    require_file(found)     # a FIFO or device is not read
    return found


def symbol_path(path: PathLike, epoch: int = 0) -> Path:
    """``PREFIX-symbol.json`` beside a checkpoint's ``.params`` file (it may not exist)."""
    p = params_path(path, epoch)
    suffix = PARAMS_SUFFIX % epoch
    stem = p.name[: -len(suffix)] if p.name.endswith(suffix) else p.stem
    return p.with_name(stem + SYMBOL_SUFFIX)


# -- detect and read -------------------------------------------------------------------------

def is_params(head: bytes) -> bool:
    return mxparams.is_params(head)


def parse(path: Path) -> Mapping:
    """The named arrays of a ``.params`` file (memory-mapped), bounded like every reader."""
    loaded = mxparams.load(path, mmap=True, max_arrays=MAX_TENSORS)
    if not isinstance(loaded, Mapping):
        raise CheckpointError("%s: an NDArray list without names, not a checkpoint" % path)
    return loaded


def layout(parsed: Mapping) -> str:
    """``mxnet`` for the authors' ``arg:``/``aux:`` keys, else ``gluon``."""
    keys = list(parsed)
    return "mxnet" if keys and all(k.startswith(("arg:", "aux:")) for k in keys) else "gluon"


def read_mxnet(path: Path, parsed: Optional[Mapping] = None):
    raw = parse(path) if parsed is None else parsed
    out: "OrderedDict" = OrderedDict()
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


def read_gluon(path: Path, parsed: Optional[Mapping] = None):
    raw = parse(path) if parsed is None else parsed
    if any(k.startswith(("arg:", "aux:")) for k in raw):
        raise CheckpointError("%s: mixes arg:/aux: keys with unprefixed ones" % path)
    return OrderedDict(raw.items()), {}


# -- write -----------------------------------------------------------------------------------

def _say_normalization_is_lost(weights, log) -> None:
    # an NDArray file has no place for metadata: read back, it is taken for the authors'
    if weights.normalization != "authors":
        log("MXNet's files cannot record the input normalization: these %s weights expect the "
            "%s one (pixel / 255 - %s) / %s, which a reader of this file will not know"
            % (weights.weight_set, weights.normalization, list(weights.norm.mean),
               list(weights.norm.std)))


def write_gluon(weights, files: List[Path], tx, log, **_):
    _say_normalization_is_lost(weights, log)
    out, = files
    with tx.file(out) as f, Progress(f, weights.nbytes, out.name) as bar:
        mxparams.write(bar, weights.renamed("gluon"))


def write_mxnet(weights, files: List[Path], tx, log, graph: Optional[str] = None, **_):
    """The parameters, and ``graph`` (the ``-symbol.json`` text) where one could be built."""
    _say_normalization_is_lost(weights, log)
    symbol_file, params_file = files
    with tx.file(params_file) as f, Progress(f, weights.nbytes, params_file.name) as bar:
        mxparams.write(bar, weights.renamed("mxnet"))
    if graph is None:
        log("MXNet (or dpn_gluon.symbols) is not available: wrote only %s, no %s"
            % (params_file, symbol_file.name))
        return
    with tx.file(symbol_file) as f:
        f.write(graph.encode("utf-8"))
