"""Name rules between the authors' names, Gluon's ``save_parameters`` names and timm's keys.

One ordered table, read in both directions. Each row gives the same tensor in three schemes:

- ``mxnet``: the canonical names, as in the authors' ``PREFIX-0000.params`` without
  ``arg:``/``aux:`` (``conv2_x__1_c1x1-a__bn__bn_moving_mean``);
- ``gluon``: the structural names ``DPN.save_parameters`` writes
  (``features.conv2_1.c1x1_a.bn.running_mean``). The Gluon blocks mirror timm's module
  tree, so these are timm's keys with Gluon's BatchNorm leaf names;
- ``timm``: timm's / rwightman's state_dict keys (``features.conv2_1.c1x1_a.bn.running_mean``),
  recorded in tests/data/timm_state_dict_keys.json.

Placeholders: ``{S}`` stage, ``{K}`` block index, ``{bn}`` BatchNorm leaf (spelled per scheme
by :data:`BN_LEAVES`), ``{fc}`` the classifier name (``fc6`` or ``fc6-1k``; only the authors'
names carry it). A row restricted to one unit type (standard or "b") applies only to that
architecture family: the same timm key ``c1x1_c.bn.*`` is ``c1x1-c__bn__bn_*`` in the
standard unit and ``c1x1-c__bn_*`` in the b unit.

A reshape is a named entry: ``fc_as_conv1x1`` stores the classifier ``(N, C)`` as
``(N, C, 1, 1)`` in timm's layout (a 1x1 conv, for the mean-max head).

Renaming is strict: every source name must match exactly one row, two sources must never
land on the same target, and failures list every offending key together.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Iterable, List, Mapping, Optional, Tuple

from ..errors import CheckpointError, KeyMismatch
from ..variants import CLASSIFIERS

SCHEMES = ("mxnet", "gluon", "timm")

#: BatchNorm leaves in each scheme, position by position.
BN_LEAVES = {
    "mxnet": ("gamma", "beta", "moving_mean", "moving_var"),
    "gluon": ("gamma", "beta", "running_mean", "running_var"),
    "timm": ("weight", "bias", "running_mean", "running_var"),
}

#: timm/PyTorch BatchNorm carries a step counter that MXNet and Gluon do not have.
TIMM_ONLY_SUFFIX = ".num_batches_tracked"

_P = "features.conv{S}_{K}."   # a dual-path block in the gluon and timm schemes

#  mxnet (the authors' names)                  gluon                              timm                               unit        reshape
RULES: List[Tuple[str, str, str, Optional[str], Optional[str]]] = [
    ("conv1_x_1__conv_weight",                 "features.conv1_1.conv.weight",    "features.conv1_1.conv.weight",    None,       None),
    ("conv1_x_1__relu-sp__bn_{bn}",            "features.conv1_1.bn.{bn}",        "features.conv1_1.bn.{bn}",        None,       None),
    ("conv{S}_x__{K}_c1x1-w(s/1)__bn__bn_{bn}", _P + "c1x1_w_s1.bn.{bn}",         _P + "c1x1_w_s1.bn.{bn}",          None,       None),
    ("conv{S}_x__{K}_c1x1-w(s/1)__conv_weight", _P + "c1x1_w_s1.conv.weight",     _P + "c1x1_w_s1.conv.weight",      None,       None),
    ("conv{S}_x__{K}_c1x1-w(s/2)__bn__bn_{bn}", _P + "c1x1_w_s2.bn.{bn}",         _P + "c1x1_w_s2.bn.{bn}",          None,       None),
    ("conv{S}_x__{K}_c1x1-w(s/2)__conv_weight", _P + "c1x1_w_s2.conv.weight",     _P + "c1x1_w_s2.conv.weight",      None,       None),
    ("conv{S}_x__{K}_c1x1-a__bn__bn_{bn}",     _P + "c1x1_a.bn.{bn}",             _P + "c1x1_a.bn.{bn}",             None,       None),
    ("conv{S}_x__{K}_c1x1-a__conv_weight",     _P + "c1x1_a.conv.weight",         _P + "c1x1_a.conv.weight",         None,       None),
    ("conv{S}_x__{K}_c3x3-b__bn__bn_{bn}",     _P + "c3x3_b.bn.{bn}",             _P + "c3x3_b.bn.{bn}",             None,       None),
    ("conv{S}_x__{K}_c3x3-b__conv_weight",     _P + "c3x3_b.conv.weight",         _P + "c3x3_b.conv.weight",         None,       None),
    ("conv{S}_x__{K}_c1x1-c__bn__bn_{bn}",     _P + "c1x1_c.bn.{bn}",             _P + "c1x1_c.bn.{bn}",             "standard", None),
    ("conv{S}_x__{K}_c1x1-c__conv_weight",     _P + "c1x1_c.conv.weight",         _P + "c1x1_c.conv.weight",         "standard", None),
    ("conv{S}_x__{K}_c1x1-c__bn_{bn}",         _P + "c1x1_c.bn.{bn}",             _P + "c1x1_c.bn.{bn}",             "b",        None),
    ("conv{S}_x__{K}_c1x1-c1__conv_weight",    _P + "c1x1_c1.weight",             _P + "c1x1_c1.weight",             "b",        None),
    ("conv{S}_x__{K}_c1x1-c2__conv_weight",    _P + "c1x1_c2.weight",             _P + "c1x1_c2.weight",             "b",        None),
    ("conv5_x_x__relu-sp__bn_{bn}",            "features.conv5_bn_ac.bn.{bn}",    "features.conv5_bn_ac.bn.{bn}",    None,       None),
    ("{fc}_weight",                            "classifier.weight",               "classifier.weight",               None,       "fc_as_conv1x1"),
    ("{fc}_bias",                              "classifier.bias",                 "classifier.bias",                 None,       None),
]

#: Named reshapes: scheme -> how that scheme stores the tensor, from the canonical shape.
RESHAPES = {
    "fc_as_conv1x1": {"timm": lambda shape: tuple(shape) + (1, 1)},
}


def _compile(template: str, scheme: str) -> "re.Pattern[str]":
    out, pos = [], 0
    for m in re.finditer(r"\{(S|K|bn|fc)\}", template):
        out.append(re.escape(template[pos:m.start()]))
        field = m.group(1)
        if field in ("S", "K"):
            out.append(r"(?P<%s>[1-9][0-9]*)" % field)
        elif field == "bn":
            out.append("(?P<bn>%s)" % "|".join(BN_LEAVES[scheme]))
        else:
            out.append(r"(?P<fc>fc6-1k|fc6)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out) + r"\Z")


_COLUMN = {s: i for i, s in enumerate(SCHEMES)}
_PATTERNS = [{s: _compile(rule[_COLUMN[s]], s) for s in SCHEMES} for rule in RULES]


def rename(name: str, src: str, dst: str, unit: str = "standard",
           classifier: str = "fc6") -> Tuple[str, Optional[str]]:
    """One name from scheme ``src`` to scheme ``dst``.

    Returns ``(new name, reshape name or None)``; raises KeyError if no row matches.
    ``unit`` ('standard' or 'b') picks the c1x1-c rows; ``classifier`` fills ``{fc}`` where
    the source scheme does not carry it.
    """
    for rule, patterns in zip(RULES, _PATTERNS):
        if rule[3] not in (None, unit):
            continue
        m = patterns[src].match(name)
        if not m:
            continue
        fields = m.groupdict()
        if "bn" in fields:
            fields["bn"] = BN_LEAVES[dst][BN_LEAVES[src].index(fields["bn"])]
        fields.setdefault("fc", classifier)
        return rule[_COLUMN[dst]].format(**fields), rule[4]
    raise KeyError(name)


def reshape_for(reshape: Optional[str], scheme: str, canonical_shape: Tuple[int, ...]):
    """The shape ``scheme`` stores a tensor in, given its canonical (authors') shape."""
    if reshape is None:
        return tuple(canonical_shape)
    return RESHAPES[reshape].get(scheme, tuple)(tuple(canonical_shape))


#: The inverse of each named reshape: the canonical shape from the stored one, or None
#: when the stored shape is not what the reshape produces (left for validation to report).
UNRESHAPES = {
    "fc_as_conv1x1": {"timm": lambda shape: tuple(shape[:2])
                      if len(shape) == 4 and tuple(shape[2:]) == (1, 1) else None},
}


def canonical_shape(reshape: Optional[str], scheme: str, stored_shape: Tuple[int, ...]):
    """The canonical (authors') shape of a tensor ``scheme`` stores as ``stored_shape``."""
    inverse = UNRESHAPES.get(reshape, {}).get(scheme) if reshape else None
    shape = inverse(tuple(stored_shape)) if inverse else None
    return tuple(stored_shape) if shape is None else shape


def rename_all(names: Iterable[str], src: str, dst: str, unit: str = "standard",
               classifier: str = "fc6", source: str = "checkpoint",
               ) -> "OrderedDict[str, Tuple[str, Optional[str]]]":
    """Strictly rename a whole key list: {source name: (target name, reshape)}.

    ``num_batches_tracked`` keys are dropped when leaving the timm scheme. Every other key
    must match a row, and no two keys may map to the same target; otherwise a
    :class:`KeyMismatch` lists all unmatched and colliding keys.
    """
    out: "OrderedDict[str, Tuple[str, Optional[str]]]" = OrderedDict()
    unmatched, seen, collisions = [], {}, []
    for name in names:
        if src == "timm" and name.endswith(TIMM_ONLY_SUFFIX):
            continue
        try:
            target = rename(name, src, dst, unit, classifier)
        except KeyError:
            unmatched.append(name)
            continue
        if target[0] in seen:
            collisions.append("%s and %s -> %s" % (seen[target[0]], name, target[0]))
        seen[target[0]] = name
        out[name] = target
    if unmatched or collisions:
        raise KeyMismatch(source, "the %s name rules" % src, unexpected=unmatched + collisions)
    return out


def unit_of(names: Iterable[str], scheme: str) -> str:
    """'b' if the key list has the b unit's split c1x1-c convs, else 'standard'."""
    needle = {"mxnet": "_c1x1-c1__conv_weight"}.get(scheme, ".c1x1_c1.weight")
    return "b" if any(n.endswith(needle) for n in names) else "standard"


def classifier_of(names: Iterable[str]) -> Optional[str]:
    """The authors' classifier name found among canonical names, if any."""
    weights = {fc + "_weight": fc for fc in CLASSIFIERS}
    return next((weights[n] for n in names if n in weights), None)


def scheme_of(names: Iterable[str]) -> str:
    """Which naming scheme a key list uses: 'mxnet', 'gluon' or 'timm'."""
    names = list(names)
    if any(n.startswith("features.") for n in names):
        leaves = {n.rsplit(".", 1)[-1] for n in names}
        return "gluon" if "gamma" in leaves else "timm"
    if any(n.startswith("conv1_x_1__") for n in names):
        return "mxnet"
    raise CheckpointError("the tensor names are neither the authors', Gluon's nor timm's "
                          "(first: %s)" % (names[0] if names else "none"))


def gluon_param_name(canonical: str) -> str:
    """Gluon's parameter name (block prefix + leaf) for an authors' name: the one rename."""
    return re.sub(r"_moving_(mean|var)\Z", r"_running_\1", canonical)


def canonical_from_gluon_param(name: str) -> str:
    return re.sub(r"_running_(mean|var)\Z", r"_moving_\1", name)


def expected_keys(canonical: Mapping[str, Tuple[int, ...]], dst: str, unit: str,
                  classifier: str) -> "OrderedDict[str, Tuple[int, ...]]":
    """Keys and shapes a checkpoint spec has in scheme ``dst`` (timm: with its counters)."""
    out: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
    for name, (new, reshape) in rename_all(canonical, "mxnet", dst, unit, classifier).items():
        out[new] = reshape_for(reshape, dst, canonical[name])
        if dst == "timm" and new.endswith(".bn.running_var"):
            out[new[: -len(".running_var")] + TIMM_ONLY_SUFFIX] = ()
    return out
