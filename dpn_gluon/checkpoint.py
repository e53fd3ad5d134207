"""The authors' checkpoint format: ``PREFIX-0000.params`` (+ ``PREFIX-symbol.json``).

Reads and writes what ``mx.model.save_checkpoint`` writes for the released DPNs: one
NDArray file whose keys are ``arg:<name>`` for weights, gammas, betas and the classifier,
and ``aux:<name>`` for the BatchNorm moving statistics, named as in
:func:`dpn_gluon.variants.tensor_spec`. Numpy only (:mod:`dpn_gluon.formats.mxparams`);
MXNet is imported only to write the optional ``-symbol.json``.

Also the seeded checkpoints the tests and the demo run on: deterministic weights for any
row of the variant table, scaled so that activations neither explode nor vanish through
100+ layers, with BatchNorm statistics far enough from (0, 1) that a wrong epsilon or
swapped gamma/beta changes the logits visibly.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from . import variants
from .errors import CheckpointError
from .formats import base, mxparams
from .formats.mxnet import params_name, params_path, symbol_name, symbol_path  # noqa: F401
from .safeio.atomic import atomic_write, check_writable

PathLike = Union[str, Path]


def read_checkpoint(path: PathLike, epoch: int = 0, mmap: bool = False
                    ) -> Tuple[variants.Arch, int, str, "OrderedDict[str, np.ndarray]"]:
    """Read and validate an authors'-format checkpoint.

    Returns ``(arch, classes, classifier, tensors)`` with ``tensors`` in
    :func:`variants.tensor_spec` order, keyed by canonical name (no ``arg:``/``aux:``).
    Anything that is not exactly one architecture's tensors raises :class:`CheckpointError`
    (:class:`KeyMismatch` for missing, unexpected or misshapen tensors) naming the file.
    """
    p = params_path(path, epoch)
    raw = mxparams.load(p, mmap=mmap, max_arrays=base.MAX_TENSORS)
    if not isinstance(raw, dict):
        raise CheckpointError("%s: not a checkpoint: an unnamed list of %d arrays" % (p, len(raw)))
    base.check_tensors(p, raw)      # the bounds every reader holds a checkpoint to
    tensors: "OrderedDict[str, np.ndarray]" = OrderedDict()
    bad = []
    for key, arr in raw.items():
        kind, sep, name = key.partition(":")
        if not sep or kind not in ("arg", "aux"):
            bad.append(key)
            continue
        if (kind == "aux") != variants.is_aux(name):
            bad.append(key)
            continue
        tensors[name] = arr
    if bad:
        raise CheckpointError("%s: not an authors' checkpoint: %d keys are not arg:<weight> or "
                              "aux:<moving statistic> (first: %s)" % (p, len(bad), bad[0][:60]))
    arch, classes, classifier = variants.identify(
        {k: v.shape for k, v in tensors.items()}, source=str(p))
    spec = variants.tensor_spec(arch, classes, classifier)
    return arch, classes, classifier, OrderedDict((k, tensors[k]) for k in spec)


def seeded_tensors(name: str = "dpn68", seed: int = 0, classes: Optional[int] = None,
                   classifier: Optional[str] = None, dtype="float32"
                   ) -> "OrderedDict[str, np.ndarray]":
    """Deterministic weights for an architecture or checkpoint name: canonical name -> array.

    Convolutions: He (fan-in) normal; the last conv of each block's main path is further
    scaled by ``1/sqrt(blocks)``, so the residual sum grows by a bounded factor over the
    whole network instead of doubling per block. BatchNorm: gamma U(0.5, 1.5),
    beta N(0, 0.2), moving_mean N(0, 0.5), moving_var U(0.5, 2). Classifier N(0, 1/C) and
    a small bias: logits are O(1) with a real spread.
    """
    arch, classes, classifier = variants.resolve(name, classes, classifier)
    rng = np.random.default_rng(seed)
    last_scale = 1.0 / np.sqrt(len(list(arch.blocks())))
    ends = ("_" + variants.UNIT_C + "__conv_weight", "_" + variants.UNIT_C1 + "__conv_weight",
            "_" + variants.UNIT_C2 + "__conv_weight")
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, shape in variants.tensor_spec(arch, classes, classifier).items():
        if key.endswith("_gamma"):
            a = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("_beta"):
            a = rng.normal(0.0, 0.2, shape)
        elif key.endswith("_moving_mean"):
            a = rng.normal(0.0, 0.5, shape)
        elif key.endswith("_moving_var"):
            a = rng.uniform(0.5, 2.0, shape)
        elif key == classifier + "_weight":
            a = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), shape)
        elif key == classifier + "_bias":
            a = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            a = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            if key.endswith(ends) and key != variants.STEM + "__conv_weight":
                a *= last_scale
        out[key] = a.astype(dtype)
    return out


def write_checkpoint(prefix: PathLike, tensors, force: bool = False, epoch: int = 0) -> Path:
    """Write canonical tensors as ``PREFIX-0000.params`` with ``arg:``/``aux:`` keys, atomically.

    Arguments first, then auxiliary states, each in the given order (as MXNet writes them).
    """
    path = params_name(prefix, epoch)
    keyed = OrderedDict(("arg:" + k, v) for k, v in tensors.items() if not variants.is_aux(k))
    keyed.update(("aux:" + k, v) for k, v in tensors.items() if variants.is_aux(k))
    with atomic_write(path, force) as f:
        mxparams.write(f, keyed)
    return path


def write_seeded_checkpoint(prefix: PathLike, name: str = "dpn68", seed: int = 0,
                            classes: Optional[int] = None, classifier: Optional[str] = None,
                            dtype="float32", symbol: bool = True, force: bool = False) -> Path:
    """Write an authors'-format checkpoint with :func:`seeded_tensors`; returns the .params path.

    With ``symbol=True`` and MXNet importable, also writes ``PREFIX-symbol.json``: the
    authors' training graph (``pool5`` 7x7, ``fc6``, ``SoftmaxOutput``), like the released
    files. The prefix's folder is created if it does not exist.
    """
    tensors = seeded_tensors(name, seed, classes, classifier, dtype)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    arch, classes, classifier = variants.resolve(name, classes, classifier)
    json_path = symbol_name(prefix)
    sym = None
    if symbol:
        try:
            from .symbols import get_symbol
            sym = get_symbol(name, classes, classifier, head="authors", softmax=True)
        except ImportError:
            sym = None
    if sym is not None:
        check_writable(json_path, force)
    path = write_checkpoint(prefix, tensors, force=force)
    if sym is not None:
        with atomic_write(json_path, force=True) as f:
            f.write(sym.tojson().encode("utf-8"))
    return path
