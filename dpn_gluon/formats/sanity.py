"""Numbers that are wrong: non-float weights, NaN/Inf, BatchNorm variances <= 0, per tensor.

A checkpoint can parse perfectly and still hold values no trained network has: NaN or Inf
(a diverged run, a bad conversion, bit rot) or a BatchNorm running variance that is zero or
negative (``1 / sqrt(var + eps)`` is then Inf or NaN, or silently huge). The converter
reports them (``check_values``) and warns, or refuses with ``--strict`` (``enforce``).

Memory-light: tensors may be read-only memory maps of multi-GB files, so values are checked
in chunks of ``CHUNK`` elements through views, never copied whole; nothing is written.
Weights and statistics are floating point: only timm's BatchNorm step counters
(``num_batches_tracked``) may be integers. The readers refuse any other integer or bool
tensor when they read it (``wrong_kind``, readers.py); ``check_values`` reports one too, for
tensors that reach it another way, and scans only floating-point tensors for values.
Variance names follow both conventions: MXNet symbols' ``<bn>_moving_var`` and Gluon/PyTorch
``running_var``.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import CheckpointError

#: Elements per chunk: the temporary boolean masks stay at about 1 MiB each.
CHUNK = 1 << 20
VARIANCE_SUFFIXES = ("_moving_var", "running_var")
#: timm's BatchNorm step counters: the only tensors of a checkpoint that are integers.
COUNTER_SUFFIX = "num_batches_tracked"
#: Problems shown one per line by ``enforce`` before the rest are summarised.
SHOWN = 10


class CheckpointWarning(UserWarning):
    """A checkpoint's values look wrong (NaN/Inf, BatchNorm variance <= 0)."""


def _chunks(a: np.ndarray) -> Iterator[np.ndarray]:
    """Flat views of ``a`` of at most CHUNK elements, without copying it."""
    if a.flags.c_contiguous or a.flags.f_contiguous:
        flat = a.reshape(-1, order="A")
        for start in range(0, flat.size, CHUNK):
            yield flat[start:start + CHUNK]
    else:
        for sub in a:
            yield from _chunks(sub)


def _non_finite(a: np.ndarray):
    nan = inf = 0
    for c in _chunks(a):
        bad = np.count_nonzero(~np.isfinite(c))
        if bad:
            n = np.count_nonzero(np.isnan(c))
            nan, inf = nan + n, inf + bad - n
    return nan, inf


def _non_positive(a: np.ndarray):
    count, low = 0, None
    for c in _chunks(a):
        mask = c <= 0
        n = np.count_nonzero(mask)
        if n:
            count += n
            m = c[mask].min()
            low = m if low is None else min(low, m)
    return count, low


def is_variance(name: str) -> bool:
    return name.endswith(VARIANCE_SUFFIXES)


def wrong_kind(name: str, dtype: np.dtype) -> Optional[str]:
    """Why ``name`` cannot hold ``dtype`` (one line), or None: a weight or statistic stored
    as integers or bool (an int8 or bool variance) is not a trained network's."""
    if np.dtype(dtype).kind == "f" or (name.endswith(COUNTER_SUFFIX) and
                                       np.dtype(dtype).kind in "iu"):
        return None
    what = "a BatchNorm variance" if is_variance(name) else "a weight or statistic"
    return "%s is %s, %s must be floating point (only timm's %s counters are integers)" % (
        name, np.dtype(dtype).name, what, COUNTER_SUFFIX)


def check_values(tensors: Mapping[str, np.ndarray]) -> List[str]:
    """One line per tensor with wrong values: a non-float dtype, NaN/Inf counts, BatchNorm
    variances <= 0."""
    problems = []
    for name, a in tensors.items():
        a = np.asarray(a)
        wrong = wrong_kind(name, a.dtype)
        if wrong:
            problems.append(wrong)
        elif a.dtype.kind == "f":
            nan, inf = _non_finite(a)
            if nan or inf:
                parts = [("%d NaN" % nan) if nan else "", ("%d Inf" % inf) if inf else ""]
                problems.append("%s holds %s of %d values"
                                % (name, " and ".join(p for p in parts if p), a.size))
        if is_variance(name) and a.dtype.kind == "f":
            count, low = _non_positive(a)
            if count:
                problems.append("%s (BatchNorm variance) has %d of %d values <= 0 (min %g)"
                                % (name, count, a.size, low))
    return problems


def _warn(message: str) -> None:
    warnings.warn(message, CheckpointWarning, stacklevel=3)


def enforce(problems: Sequence[str], strict: bool, warn: Optional[Callable[[str], None]] = None,
            source: str = "checkpoint") -> None:
    """With ``strict``: raise CheckpointError (one line) naming them; else ``warn`` each.

    ``warn`` gets one line per problem (at most SHOWN, then one summary line); the default
    issues a :class:`CheckpointWarning`.
    """
    if not problems:
        return
    if strict:
        shown = "; ".join(problems[:SHOWN])
        more = " ... (%d more)" % (len(problems) - SHOWN) if len(problems) > SHOWN else ""
        raise CheckpointError("%s: refused (--strict): %d tensor%s with wrong values: %s%s"
                              % (source, len(problems), "" if len(problems) == 1 else "s", shown, more))
    warn = warn or _warn
    for problem in problems[:SHOWN]:
        warn("%s: %s" % (source, problem))
    if len(problems) > SHOWN:
        warn("%s: ... and %d more tensors with wrong values" % (source, len(problems) - SHOWN))
