"""PaddleClas's DPN checkpoints (``.pdparams``), read and written with numpy alone.

PaddleClas (``ppcls/arch/backbone/model_zoo/dpn.py``) builds the authors' architecture tensor
for tensor, under its own names, and ``paddle.save`` pickles the state dict as numpy arrays.
What differs from the authors' checkpoints, and how it is carried here:

- names: structured (``dpn12.c3x3_b_func._conv.weight``; blocks numbered 1..N over all
  stages) or Paddle parameter names (``dpn12_conv2_weights``); both are read;
- the classifier ``out.weight`` is stored (in, out): transposed on the way in and out;
- the "b" unit does not exist: ``c1x1_c`` is one convolution, so the authors' dpn68b
  (``c1x1-c1`` + ``c1x1-c2`` over one BN-ReLU) is written as its concatenation, exactly,
  and read back as dpn68;
- BatchNorm epsilon is 1e-5, not the authors' 1e-3. Canonical tensors always mean the
  authors' graph, so the difference is folded into each gamma, in float64, on the way in
  (``gamma * sqrt(var + 1e-3) / sqrt(var + 1e-5)``) and out (the inverse), with mean and
  variance unchanged: every format's standard graph then computes what PaddleClas does;
- the input normalization is ImageNet's (``pixel / 255`` then mean/std), recorded as
  ``normalization = imagenet`` in the canonical metadata and carried by every output that
  has a place for it.

The reader is a restricted unpickler: the only globals it resolves are numpy's array and
dtype builders, mapped to stand-ins that build arrays from the pickled bytes with
``np.frombuffer``; nothing from the file is ever called.
"""
from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Tuple

import numpy as np

from .. import variants
from ..errors import CheckpointError
from .base import MAX_TENSORS, Progress, mapped

SUFFIX = ".pdparams"
SUFFIXES = (SUFFIX,)
#: PaddleClas's config written beside the weights (``tools/eval.py -c NAME.yaml``).
CONFIG_SUFFIX = ".yaml"

#: BatchNorm epsilon of PaddleClas's DPN (paddle.nn.BatchNorm's default).
PADDLE_BN_EPS = 1e-5
#: The entry paddle.save adds: structured name -> parameter name.
STRUCTURE_KEY = "StructuredToParameterName@@"
#: PaddleClas's DPN constructors, by our architecture name (dpn68b is written as DPN68).
PADDLE_ARCHS = {"dpn68": "DPN68", "dpn92": "DPN92", "dpn98": "DPN98", "dpn107": "DPN107",
                "dpn131": "DPN131"}
_BN_LEAVES = (("gamma", "weight", "bn_scale"), ("beta", "bias", "bn_offset"),
              ("moving_mean", "_mean", "bn_mean"), ("moving_var", "_variance", "bn_variance"))
_UNITS = ((variants.PROJ_S1, "c1x1_w_func", "match"), (variants.PROJ_S2, "c1x1_w_func", "match"),
          (variants.UNIT_A, "c1x1_a_func", "conv1"), (variants.UNIT_B, "c3x3_b_func", "conv2"),
          (variants.UNIT_C, "c1x1_c_func", "conv3"))


# -- names ---------------------------------------------------------------------------------

def _unit_names(structured: str, param: str, canonical_bn: str, canonical_conv: str,
                conv_first: bool = False):
    """(canonical, structured, parameter name) of one BN + conv unit, in the order its layer
    creates them: PaddleClas's stem (ConvBNLayer) makes its conv first, every block unit
    (BNACConvLayer) its BN first."""
    bn = [(canonical_bn + leaf, "%s._batch_norm.%s" % (structured, s_leaf),
           "%s_%s" % (param, p_leaf)) for leaf, s_leaf, p_leaf in _BN_LEAVES]
    conv = (canonical_conv, structured + "._conv.weight", param + "_weights")
    return [conv] + bn if conv_first else bn + [conv]


def name_table(arch: variants.Arch, classifier: str = "fc6") -> List[Tuple[str, str, str]]:
    """(canonical name, structured name, parameter name) of every tensor, in PaddleClas's
    state-dict order. For a "b" architecture the ``c1x1-c`` conv row stands for the
    concatenation of ``c1x1-c1`` and ``c1x1-c2``."""
    rows = _unit_names("conv1_x_1_func", "conv1", variants.STEM + "__relu-sp__bn_",
                       variants.STEM + "__conv_weight", conv_first=True)
    for number, blk in enumerate(arch.blocks(), 1):
        for unit, structured, param in _UNITS:
            if unit in (variants.PROJ_S1, variants.PROJ_S2) and unit != blk.proj_unit:
                continue
            bn = "%s_%s__bn__bn_" % (blk.name, unit)
            if blk.b and unit == variants.UNIT_C:
                bn = "%s_%s__bn_" % (blk.name, unit)
            rows += _unit_names("dpn%d.%s" % (number, structured), "dpn%d_%s" % (number, param),
                                bn, "%s_%s__conv_weight" % (blk.name, unit))
    for leaf, s_leaf, p_leaf in _BN_LEAVES:
        rows.append((variants.FINAL + "__bn_" + leaf, "conv5_x_x_bn." + s_leaf,
                     "final_concat_" + p_leaf))
    rows.append((classifier + "_weight", "out.weight", "fc_weights"))
    rows.append((classifier + "_bias", "out.bias", "fc_offset"))
    return rows


def expected_shapes(arch: variants.Arch, classes: int) -> "OrderedDict[str, tuple]":
    """Structured name -> shape of PaddleClas's model of ``arch`` with ``class_num`` classes."""
    arch = variants.standard_form(arch)
    spec = variants.tensor_spec(arch, classes, "fc6")
    out: "OrderedDict[str, tuple]" = OrderedDict()
    for canonical, structured, _ in name_table(arch):
        shape = spec[canonical]
        out[structured] = (shape[1], shape[0]) if structured == "out.weight" else shape
    return out


# -- canonical <-> Paddle ------------------------------------------------------------------

def refold_epsilon(tensors: Mapping[str, np.ndarray], from_eps: float,
                   to_eps: float) -> "OrderedDict[str, np.ndarray]":
    """The same BatchNorms under another epsilon: each gamma times
    ``sqrt(var + to_eps) / sqrt(var + from_eps)`` (float64, then the gamma's dtype), so that
    ``gamma / sqrt(var + eps)`` is unchanged; everything else is passed through as it is."""
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for name, arr in tensors.items():
        if name.endswith("_gamma"):
            var = np.asarray(tensors[name[: -len("gamma")] + "moving_var"], np.float64)
            factor = np.sqrt(var + to_eps) / np.sqrt(var + from_eps)
            arr = (np.asarray(arr, np.float64) * factor).astype(arr.dtype)
        out[name] = arr
    return out


def to_paddle(arch: variants.Arch, classifier: str,
              tensors: Mapping[str, np.ndarray]) -> "OrderedDict[str, np.ndarray]":
    """Canonical tensors (the authors' graph, eps 1e-3) -> PaddleClas's structured state dict
    (eps 1e-5), in its order."""
    tensors = refold_epsilon(tensors, variants.BN_EPS, PADDLE_BN_EPS)
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for canonical, structured, _ in name_table(arch, classifier):
        if canonical.endswith("_weight") and canonical.startswith(classifier + "_"):
            out[structured] = np.ascontiguousarray(tensors[canonical].T)
        elif arch.b and canonical.endswith(variants.UNIT_C + "__conv_weight"):
            stem = canonical[: -len(variants.UNIT_C + "__conv_weight")]
            out[structured] = np.concatenate(
                [tensors[stem + variants.UNIT_C1 + "__conv_weight"],
                 tensors[stem + variants.UNIT_C2 + "__conv_weight"]], axis=0)
        else:
            out[structured] = tensors[canonical]
    return out


def structure_map(arch: variants.Arch) -> "OrderedDict[str, str]":
    """paddle.save's ``StructuredToParameterName@@`` entry for PaddleClas's ``arch``."""
    return OrderedDict((s, p) for _, s, p in name_table(variants.standard_form(arch)))


def from_paddle(raw: Mapping[str, np.ndarray], where: str):
    """A PaddleClas state dict (either naming) -> (arch, classes, canonical tensors with the
    authors' epsilon), or one line saying why it is not a PaddleClas DPN."""
    keys = [k for k in raw if k != STRUCTURE_KEY]
    by_param = "conv1_weights" in raw and "conv1_x_1_func._conv.weight" not in raw
    head = raw.get("fc_weights" if by_param else "out.weight")
    if head is None or head.ndim != 2:
        raise CheckpointError("%s: a pickle of arrays, but not a PaddleClas DPN (no %s)"
                              % (where, "fc_weights" if by_param else "out.weight"))
    classes = int(head.shape[1])
    variants.check_classes(classes, "%s: the classifier's class count" % where)
    shapes = {k: tuple(raw[k].shape) for k in keys}
    best = None
    for name in PADDLE_ARCHS:
        arch = variants.ARCHS[name]
        table = name_table(arch)
        spec = expected_shapes(arch, classes)
        if by_param:
            spec = OrderedDict((p, spec[s]) for _, s, p in table)
        err = variants.compare(shapes, spec, "PaddleClas " + PADDLE_ARCHS[name], where)
        if err is None:
            tensors = OrderedDict()
            for canonical, structured, param in table:
                arr = raw[param if by_param else structured]
                tensors[canonical] = np.ascontiguousarray(arr.T) if structured == "out.weight" \
                    else arr
            return arch, classes, refold_epsilon(tensors, PADDLE_BN_EPS, variants.BN_EPS)
        if best is None or err.size < best.size:
            best = err
    raise best


# -- the file --------------------------------------------------------------------------------

#: The numpy builders a paddle.save pickle names (numpy >= 2 spells them ``numpy._core``).
_ARRAY_BUILDERS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                                                                "_reconstruct")}
_DTYPE_BUILDERS = {("numpy", "dtype")}
_NDARRAY = {("numpy", "ndarray")}
_DTYPE_NAME = re.compile(r"[fiub][1248]|b1")


class _Dtype:
    """Stands in for ``numpy.dtype(name, align, copy)``; BUILD gives its byte order."""

    def __init__(self, name, align=False, copy=True):
        if not isinstance(name, str) or not _DTYPE_NAME.fullmatch(name):
            raise pickle.UnpicklingError("a dtype %r" % (str(name)[:20],))
        self.name, self.order = name, "<"

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", "|", ">"):
            raise pickle.UnpicklingError("a dtype state that is not numpy's")
        self.order = state[1]

    def dtype(self) -> np.dtype:
        return np.dtype(self.name).newbyteorder(self.order)


class _Array:
    """Stands in for ``numpy.core.multiarray._reconstruct(ndarray, shape, b'b')``; BUILD's
    state ``(version, shape, dtype, fortran, bytes)`` becomes a read-only array over the
    pickled bytes, checked against the shape before anything is allocated."""

    def __init__(self, cls, shape, typecode):
        if cls is not _NDARRAY_TYPE:
            raise pickle.UnpicklingError("an array of a class other than numpy.ndarray")
        self.array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _Dtype)
                and isinstance(state[1], tuple) and isinstance(state[4], bytes)):
            raise pickle.UnpicklingError("an array state that is not numpy's")
        _, shape, dtype, fortran, data = state
        if not all(isinstance(d, int) and 0 <= d for d in shape) or len(shape) > 8:
            raise pickle.UnpicklingError("an array of shape %r" % (shape,))
        dt = dtype.dtype()
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dt.itemsize != len(data):
            raise pickle.UnpicklingError("an array of shape %s holding %d bytes, not %d"
                                         % (shape, len(data), count * dt.itemsize))
        arr = np.frombuffer(data, dt, count).reshape(shape, order="F" if fortran else "C")
        self.array = arr.astype(dt.newbyteorder("="), copy=False)


class _NdarrayType:
    pass


_NDARRAY_TYPE = _NdarrayType()


class _Unpickler(pickle._Unpickler):
    """Python's own unpickler, not the C one: that allocates a pickled byte string at the
    length the file claims before reading it; this one reads what the file holds."""

    def find_class(self, module, name):
        if (module, name) in _ARRAY_BUILDERS:
            return _Array
        if (module, name) in _DTYPE_BUILDERS:
            return _Dtype
        if (module, name) in _NDARRAY:
            return _NDARRAY_TYPE
        raise pickle.UnpicklingError("names %s.%s" % (str(module)[:60], str(name)[:60]))

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("uses persistent ids")


def is_pdparams(head: bytes) -> bool:
    """A pickle (protocol 2..5) opening with a dict: what paddle.save writes for a state dict."""
    return len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and (
        head[2] == 0x7D or (head[2] == 0x95 and len(head) >= 12 and head[11] == 0x7D))


def load_state(path, f, max_tensors: int) -> "OrderedDict[str, np.ndarray]":
    """The arrays of a ``.pdparams`` file open as ``f`` (whose ``read(n)`` returns at most
    what remains): a dict of name -> array (plus paddle.save's name map, checked and
    dropped), or one line saying why not."""
    try:
        obj = _Unpickler(f).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError("%s: not a PaddlePaddle state dict: its pickle %s (refused; only "
                              "numpy arrays are read)" % (path, str(e)[:120])) from None
    except (RecursionError, MemoryError) as e:
        raise CheckpointError("%s: not a PaddlePaddle state dict: %s" % (path, type(e).__name__)) \
            from None
    except Exception as e:    # truncated (EOFError), bad opcodes (ValueError, KeyError), ...
        raise CheckpointError("%s: not a readable PaddlePaddle state dict: %s"
                              % (path, (str(e) or type(e).__name__).splitlines()[0][:120])) from None
    if not isinstance(obj, dict):
        raise CheckpointError("%s: a pickle of a %s, not a PaddlePaddle state dict"
                              % (path, type(obj).__name__))
    if len(obj) > max_tensors + 1:
        raise CheckpointError("%s: holds %d entries, more than any DPN checkpoint (at most %d)"
                              % (path, len(obj), max_tensors))
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, value in obj.items():
        if key == STRUCTURE_KEY:
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise CheckpointError("%s: its %s entry is not a map of names" % (path, key))
            continue
        if not isinstance(key, str) or not isinstance(value, _Array) or value.array is None:
            raise CheckpointError("%s: not a PaddlePaddle state dict: entry %s is not a named "
                                  "array" % (path, str(key)[:60]))
        out[key] = value.array
    return out


def dump_state(f, state: Mapping[str, np.ndarray], structure: Mapping[str, str]) -> None:
    """What ``paddle.save(model.state_dict(), path)`` writes: a protocol-4 pickle of the
    arrays by structured name, then the name map, through numpy's own pickling (the same
    bytes for the same tensors)."""
    obj: Dict[str, object] = OrderedDict((k, np.ascontiguousarray(v)) for k, v in state.items())
    obj[STRUCTURE_KEY] = dict(structure)
    pickle.Pickler(f, protocol=4).dump(dict(obj))


def state_dict_order(arch: variants.Arch) -> Iterator[str]:
    """Structured names of PaddleClas's model of ``arch``, in its state-dict order."""
    return (s for _, s, _ in name_table(variants.standard_form(arch)))


# -- the format ------------------------------------------------------------------------------

def read(path: Path):
    with mapped(path) as f:
        return load_state(path, f, MAX_TENSORS), {}


def output_files(out: Path) -> List[Path]:
    """``NAME.yaml`` (PaddleClas's config), then ``NAME.pdparams``: the weights come last,
    as the file a check reads back."""
    return [out.with_name(out.stem + CONFIG_SUFFIX) if out.suffix == SUFFIX
            else out.with_name(out.name + CONFIG_SUFFIX), out]


def _list(values) -> str:
    return "[%s]" % ", ".join(repr(float(v)) for v in values)


def config_yaml(weights, weights_file: str) -> str:
    """A PaddleClas config for these weights: the architecture, the class count, and the eval
    and infer transforms with the normalization the weight set needs, so that
    ``python tools/eval.py -c NAME.yaml -o Global.pretrained_model=NAME`` evaluates them as
    they stand. The authors' weights get their own protocol (bicubic short side = crop,
    their mean and scale as PaddleClas's mean/std); PaddleClas's get PaddleClas's."""
    norm = weights.norm
    crop = variants.INPUT_SIZE[1]
    if weights.normalization == "authors":
        resize = ["        - ResizeImage:", "            resize_short: %d" % crop,
                  "            interpolation: bicubic"]
    else:
        resize = ["        - ResizeImage:",
                  "            resize_short: %d" % variants.PADDLECLAS_RESIZE]
    transforms = (["        - DecodeImage:", "            to_rgb: True",
                   "            channel_first: False"] + resize +
                  ["        - CropImage:", "            size: %d" % crop,
                   "        - NormalizeImage:", "            scale: 1.0/255.0",
                   "            mean: %s" % _list(norm.mean), "            std: %s" % _list(norm.std),
                   "            order: ''"])
    infer = [line[4:] for line in transforms] + ["    - ToCHWImage:"]
    lines = ["# PaddleClas config for %s: weight set %s, %s normalization; written by dpn-convert."
             % (weights_file, weights.weight_set, weights.normalization),
             "# Evaluate: python tools/eval.py -c THIS.yaml -o Global.pretrained_model=%s"
             % (weights_file[: -len(SUFFIX)] if weights_file.endswith(SUFFIX) else weights_file),
             "Global:", "  class_num: %d" % weights.classes,
             "  image_shape: [3, %d, %d]" % (crop, crop), "  device: cpu",
             "Arch:", "  name: %s" % PADDLE_ARCHS[variants.standard_form(weights.arch).name],
             "  class_num: %d" % weights.classes,
             "DataLoader:", "  Eval:", "    dataset:", "      name: ImageNetDataset",
             "      image_root: ./dataset/ILSVRC2012/",
             "      cls_label_path: ./dataset/ILSVRC2012/val_list.txt",
             "      transform_ops:"] + transforms + [
             "    sampler:", "      name: DistributedBatchSampler", "      batch_size: 64",
             "      drop_last: False", "      shuffle: False",
             "    loader:", "      num_workers: 4", "      use_shared_memory: True",
             "Infer:", "  batch_size: 10", "  transforms:"] + infer + [
             "  PostProcess:", "    name: Topk", "    topk: 5",
             "Metric:", "  Eval:", "    - TopkAcc:", "        topk: [1, 5]", ""]
    return "\n".join(lines)


def write(weights, files: List[Path], tx, log, **_):
    """PaddleClas's names, (in, out) classifier and BatchNorm epsilon 1e-5, numpy's pickling:
    what ``paddle.save`` writes, without paddle."""
    config, out = files
    state = to_paddle(weights.arch, weights.classifier, weights.tensors)
    log("PaddleClas's BatchNorm epsilon is 1e-5: each gamma is rescaled so that the graph "
        "computes what the source's does")
    if weights.normalization != "imagenet":
        log("these weights expect the %s normalization, not PaddleClas's default ImageNet one: "
            "%s sets NormalizeImage mean %s and std %s (of 0..1 pixels)"
            % (weights.normalization, config.name, list(weights.norm.mean),
               list(weights.norm.std)))
    with tx.file(out) as f, Progress(f, weights.nbytes, out.name) as bar:
        dump_state(bar, state, structure_map(weights.arch))
    with tx.file(config) as f:
        f.write(config_yaml(weights, out.name).encode("utf-8"))
