"""ONNX export of any DPN, built node by node with ``onnx.helper`` from the variant table.

Why this path and not the two others:

- ``mx.onnx.export_model`` (MXNet 1.9.1) needs ``onnx < 1.19`` (it uses the removed
  ``onnx.mapping``), has no opset argument and stamps the installed onnx's IR version, which
  onnxruntime 1.31 rejects (IR 14 > 13); it also needs MXNet, which the converter must not.
- ``torch.onnx.export`` in torch 2.13 defaults to the dynamo exporter, which needs
  ``onnxscript`` (not installed here), and would make torch a dependency of an export that
  only needs the arrays.
- Building the graph here needs only ``onnx`` and numpy: the same canonical tensors every
  other format is written from, one source for the structure (:mod:`dpn_gluon.variants`),
  exact control over each op (BatchNormalization epsilon 1e-3, grouped Conv, Slice / Add /
  Concat for the dual paths), a pinned opset (17 by default) and an IR version onnxruntime
  accepts (:data:`IR_VERSION`).

The graph: input ``data`` (batch, 3, height, width) float32, normalized with the authors'
mean and scale; output ``logits`` (batch, classes). Batch, height and width are dynamic.
The default head is global average pool -> classifier (a Gemm on the ``(N, C)`` fc weight);
``mean_max=True`` gives the authors' test head, as :class:`dpn_gluon.model.Classifier` and
``symbols.get_symbol(head='mean_max')`` compute it (avg-pool 7x7 stride 1 -> classifier as a
1x1 Conv -> 0.5 * (global average + global max)); it needs inputs of at least 193 pixels
(a 7x7 final map) and the graph itself refuses smaller ones when run (onnxruntime fails the
``pool5`` AveragePool). Node outputs carry the authors' op names (``pool1``,
``conv2_x__1_sum``, ...), so with ``tap_outputs=True`` every tap of :func:`variants.tap_names`
is also a graph output, for the per-layer parity report.

Weights are float32 (float16 checkpoints are widened), or with ``fp16=True`` float16 weights
and compute between a Cast of ``data`` (``data_fp16``) and a Cast back to float32 ``logits``,
so callers feed and read float32 either way. The metadata (``metadata_props``) says what a
deployment needs: architecture, classes, classifier, head, dtype, the authors'
normalization, input sizes, producer version and, when given, the class labels. The bytes
depend only on the tensors and the options (no timestamps): the same call writes the same file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import variants
from .errors import CheckpointError, DPNError
from .safeio.atomic import atomic_write, check_writable
from .version import __version__

#: IR version written for opsets <= 20: 9 (onnx 1.15), which onnxruntime >= 1.16 accepts;
#: newer opsets get the lowest IR version onnx allows for them.
IR_VERSION = 9
DEFAULT_OPSET = 17
#: Opsets offered: from 10 (Slice with tensor starts/ends, the dual-path split; 7-9 fail
#: onnx.checker) to 28 (onnx 1.23's newest); onnx.checker and onnxruntime 1.32 pass every
#: one (tests/test_onnx_deploy.py). An installed onnx older than the opset refuses it.
OPSETS = range(10, 29)
INPUT, OUTPUT = "data", "logits"
#: The node whose error says a mean-max model got an input below 193 pixels.
GUARD = "mean_max_needs_input_of_193px_or_more"
#: Smallest input side per head: the network's stride is 32, and the mean-max head's 7x7
#: ``pool5`` needs a 7x7 final map.
MIN_SIZE = variants.MIN_INPUT_SIZE
#: Input side the authors used: training (and the global head), and their mean-max test.
DEFAULT_SIZE = {"global": 224, "mean_max": 320}
#: Max relative difference per tap (max |a - b| / max |ref|) of a ``fp16=True`` model run by
#: onnxruntime's CPU provider against the float32 graph, with the same top-1 class on every
#: image: measured over seeded checkpoints of every architecture by
#: ``python -m benchmarks.onnx_fp16`` (docs/onnx.md): worst tap 1.6e-3, about twice that here.
FP16_RTOL = 3e-3


class _Graph:
    """Collects nodes and initializers; each method emits one op and returns its output name."""

    def __init__(self, tensors: Mapping[str, np.ndarray], dtype=np.float32):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.tensors = tensors
        self.dtype = np.dtype(dtype)
        self.nodes: list = []
        self.initializers: Dict[str, object] = {}

    def weight(self, name: str, shape=None) -> str:
        if name not in self.initializers:
            source = self.tensors[name]
            with np.errstate(over="ignore"):
                value = np.asarray(source, dtype=self.dtype)
            if self.dtype == np.float16 and np.isinf(value).sum() > np.isinf(source).sum():
                raise CheckpointError("%s: values beyond float16's range (max |x| %.3g > 65504); "
                                      "export it without --fp16" % (name, np.abs(source).max()))
            if shape is not None:
                value = value.reshape(shape)
            self.initializers[name] = self.numpy_helper.from_array(value, name)
        return name

    def ints(self, *values: int) -> str:
        name = "const_i64_" + "_".join(str(v) for v in values)
        if name not in self.initializers:
            self.initializers[name] = self.numpy_helper.from_array(np.array(values, np.int64), name)
        return name

    def op(self, op_type: str, inputs: List[str], name: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def bn_relu(self, x: str, bn: str, relu: str) -> str:
        """BatchNorm (eps 1e-3, the authors' setting) named ``bn``, then ReLU named ``relu``."""
        params = [self.weight("%s_%s" % (bn, leaf)) for leaf in variants.BN_ARGS + variants.BN_AUX]
        return self.op("Relu", [self.op("BatchNormalization", [x] + params, bn,
                                        epsilon=variants.BN_EPS)], relu)

    def bn_ac_conv(self, x: str, unit: str, kernel: int = 1, stride: int = 1, groups: int = 1) -> str:
        """The authors' BN_AC_Conv: ``<unit>__bn__bn`` -> ``<unit>__ac__relu`` -> ``<unit>__conv``."""
        x = self.bn_relu(x, unit + "__bn__bn", unit + "__ac__relu")
        pad = kernel // 2
        return self.op("Conv", [x, self.weight(unit + "__conv_weight")], unit + "__conv",
                       kernel_shape=[kernel, kernel], strides=[stride, stride],
                       pads=[pad] * 4, group=groups)

    def conv1x1(self, x: str, unit: str) -> str:
        return self.op("Conv", [x, self.weight(unit + "__conv_weight")], unit + "__conv",
                       kernel_shape=[1, 1])

    def min_size_guard(self, x: str, side: int, name: str) -> str:
        """``x`` unchanged when its height and width are at least ``side``, else a run-time
        error naming node ``name``: a Reshape to ``[N, C, h, w]`` with each short side
        replaced by -2, which onnxruntime refuses (an empty map would reach the global
        pools, where onnxruntime 1.32 dies of a floating-point exception instead)."""
        hw = self.op("Slice", [self.op("Shape", [x], name + "_shape"), self.ints(2),
                               self.ints(4), self.ints(0)], name + "_hw")
        ok = self.op("Greater", [hw, self.ints(side - 1)], name + "_ok")
        dims = self.op("Where", [ok, hw, self.ints(-2)], name + "_dims")
        shape = self.op("Concat", [self.ints(0, 0), dims], name + "_target", axis=0)
        return self.op("Reshape", [x, shape], name)

    def split(self, x: str, at: int, name: str):
        """Channels [0, at) and [at, end) as ``<name>-split1`` / ``<name>-split2``."""
        big = np.iinfo(np.int64).max
        one = self.ints(1)
        return (self.op("Slice", [x, self.ints(0), self.ints(at), one], name + "-split1"),
                self.op("Slice", [x, self.ints(at), self.ints(big), one], name + "-split2"))


def _block(g: _Graph, blk: variants.BlockSpec, res: Optional[str], dense: str):
    """One dual-path block (symbol_dpn.py DualPathFactory); returns (sum, cat) output names."""
    p = blk.name + "_"
    x = dense if res is None else g.op("Concat", [res, dense], p + "cat-input", axis=1)
    if blk.has_proj:
        unit = p + blk.proj_unit
        res, dense = g.split(g.bn_ac_conv(x, unit, stride=blk.stride), blk.bw, unit)
    x = g.bn_ac_conv(x, p + variants.UNIT_A)
    x = g.bn_ac_conv(x, p + variants.UNIT_B, 3, blk.stride, blk.groups)
    if blk.b:
        x = g.bn_relu(x, p + variants.UNIT_C + "__bn", p + variants.UNIT_C + "__relu")
        new_res, new_dense = g.conv1x1(x, p + variants.UNIT_C1), g.conv1x1(x, p + variants.UNIT_C2)
    else:
        new_res, new_dense = g.split(g.bn_ac_conv(x, p + variants.UNIT_C), blk.bw, p + variants.UNIT_C)
    return (g.op("Add", [res, new_res], p + "sum"),
            g.op("Concat", [dense, new_dense], p + "cat", axis=1))


def _tap_channels(arch: variants.Arch) -> Dict[str, int]:
    """Channels of every feature-map tap (all of :func:`variants.tap_names` but the logits)."""
    out = {"pool1": arch.stem_channels}
    for blk in arch.blocks():
        out[blk.name + "_sum"], out[blk.name + "_cat"] = blk.bw, blk.out_channels - blk.bw
    out[variants.FEATURES_TAP] = arch.num_features
    return out


def build_onnx(tensors: Mapping[str, np.ndarray], arch: variants.Arch, classes: int,
               classifier: str, mean_max: bool = False, opset: int = DEFAULT_OPSET,
               tap_outputs: bool = False, fp16: bool = False,
               metadata: Optional[Mapping[str, str]] = None, normalization: str = "authors"):
    """The ``onnx.ModelProto`` of ``arch`` with ``tensors`` (canonical names) as initializers.

    ``metadata`` is added to :func:`model_metadata`'s properties. Not yet checked:
    :func:`export_onnx` runs ``onnx.checker`` on the serialized bytes it writes.
    """
    from onnx import TensorProto, helper

    check_opset(opset)
    g = _Graph(tensors, np.float16 if fp16 else np.float32)
    x = g.op("Cast", [INPUT], INPUT + "_fp16", to=TensorProto.FLOAT16) if fp16 else INPUT
    logits = OUTPUT + "_fp16" if fp16 else OUTPUT
    k = arch.stem_kernel
    stem = variants.STEM
    x = g.op("Conv", [x, g.weight(stem + "__conv_weight")], stem + "__conv",
             kernel_shape=[k, k], strides=[2, 2], pads=[arch.stem_pad] * 4)
    x = g.bn_relu(x, stem + "__relu-sp__bn", stem + "__relu-sp__relu")
    dense = g.op("MaxPool", [x], "pool1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    res = None
    for blk in arch.blocks():
        res, dense = _block(g, blk, res, dense)
    x = g.op("Concat", [res, dense], "conv5_x_x_cat-final", axis=1)
    x = g.bn_relu(x, variants.FINAL + "__bn", variants.FEATURES_TAP)
    w, b = classifier + "_weight", classifier + "_bias"
    if mean_max:
        x = g.op("AveragePool", [g.min_size_guard(x, 7, GUARD)], "pool5", kernel_shape=[7, 7],
                 strides=[1, 1])
        x = g.op("Conv", [x, g.weight(w, (classes, arch.num_features, 1, 1)), g.weight(b)],
                 classifier, kernel_shape=[1, 1])
        both = g.op("Add", [g.op("GlobalAveragePool", [x], "mean_pool"),
                            g.op("GlobalMaxPool", [x], "max_pool")], "mean_max_sum")
        half = "const_half"
        g.initializers[half] = g.numpy_helper.from_array(np.array(0.5, g.dtype), half)
        g.op("Flatten", [g.op("Mul", [both, half], "mean_max")], logits)
    else:
        x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool5")], "flatten")
        g.op("Gemm", [x, g.weight(w), g.weight(b)], logits, transB=1)
    if fp16:
        g.op("Cast", [logits], OUTPUT, to=TensorProto.FLOAT)

    unused = sorted(set(tensors) - set(g.initializers))
    if unused:
        raise CheckpointError("%d tensors unused by the %s graph: %s" % (len(unused), arch.name,
                                                                        ", ".join(unused[:4])))
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", classes])]
    if tap_outputs:
        inner = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
        outputs += [helper.make_tensor_value_info(t, inner, ["batch", c, None, None])
                    for t, c in _tap_channels(arch).items()]
    head = "mean_max" if mean_max else "global"
    graph = helper.make_graph(
        g.nodes, "%s%s%s" % (arch.name, "_mean_max" if mean_max else "", "_fp16" if fp16 else ""),
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        outputs, initializer=list(g.initializers.values()))
    opset_id = helper.make_opsetid("", opset)
    model = helper.make_model(graph, opset_imports=[opset_id], producer_name="dpn-gluon",
                              producer_version=__version__)
    model.ir_version = max(IR_VERSION, helper.find_min_ir_version_for([opset_id]))
    props = model_metadata(arch, classes, classifier, head, "float16" if fp16 else "float32",
                           normalization)
    clash = sorted(set(props) & set(metadata or ()))
    if clash:
        raise DPNError("ONNX metadata: %s is written by the exporter, not the caller" % clash[0])
    props.update(metadata or {})
    helper.set_model_props(model, props)
    return model


def model_metadata(arch: variants.Arch, classes: int, classifier: str, head: str,
                   dtype: str, normalization: str = "authors") -> Dict[str, str]:
    """The metadata properties every exported model carries (all strings; JSON for lists).

    ``arch``, ``classes``, ``classifier`` and ``head`` are what
    :func:`dpn_gluon.convert.parity.read_onnx` reads back; keep their names and forms.
    """
    mean = [float(m) for m in variants.MEAN_RGB]
    props = {
        "arch": arch.name, "classes": str(classes), "classifier": classifier, "head": head,
        "dtype": dtype, "producer": "dpn-gluon", "producer_version": __version__,
        "input_layout": "NCHW", "color_order": "RGB", "pixel_range": "0-255",
        "normalization": "(pixel - mean_rgb) * scale",
        "mean_rgb": json.dumps(mean), "scale": "%g" % variants.SCALE,
        # std in the usual (pixel - mean) / std form, on 0..255 pixels
        "std_rgb": json.dumps([round(1.0 / variants.SCALE, 4)] * 3),
        "input_size": str(DEFAULT_SIZE[head]), "min_input_size": str(MIN_SIZE[head]),
        # the authors' test preprocessing: bicubic short-side resize to input_size, 100 % crop
        "interpolation": "bicubic", "crop_pct": "1.0",
    }
    if normalization != "authors":     # PaddleClas's weights: ImageNet's mean and std
        norm = variants.NORMALIZATIONS[normalization]
        del props["scale"]
        props.update({"normalization": "(pixel - mean_rgb) / std_rgb",
                      "normalization_name": normalization,
                      "mean_rgb": json.dumps([round(m * 255.0, 4) for m in norm.mean]),
                      "std_rgb": json.dumps([round(v * 255.0, 4) for v in norm.std])})
    return props


def check_opset(opset: int) -> int:
    if opset not in OPSETS:
        raise DPNError("ONNX opset %s is not supported: choose %d to %d"
                       % (opset, OPSETS[0], OPSETS[-1]))
    return opset


def label_metadata(labels: Sequence[str], classes: int) -> Dict[str, str]:
    """``{'labels': JSON list}`` after checking there is one string per class."""
    labels = list(labels)
    if len(labels) != classes or not all(isinstance(v, str) for v in labels):
        raise DPNError("ONNX labels: need %d strings (one per class), got %d"
                       % (classes, len(labels)))
    return {"labels": json.dumps(labels, ensure_ascii=False)}


def onnx_bytes(tensors: Mapping[str, np.ndarray], arch: Optional[str] = None,
               classes: Optional[int] = None, classifier: Optional[str] = None,
               mean_max: bool = False, opset: int = DEFAULT_OPSET, tap_outputs: bool = False,
               source: str = "checkpoint", fp16: bool = False,
               labels: Optional[Sequence[str]] = None,
               metadata: Optional[Mapping[str, str]] = None,
               normalization: str = "authors") -> bytes:
    """Canonical tensors as a checked, serialized ONNX model; writes nothing (the caller
    writes the bytes through its own transaction).

    The architecture, class count and classifier name are read from the tensors' names and
    shapes (validated strictly against the variant table) unless given. ``labels`` (one
    string per class) are stored as the ``labels`` metadata property, a JSON list;
    ``metadata`` adds other string properties (not the exporter's own keys).
    """
    check_opset(opset)
    import onnx
    if opset > onnx.defs.onnx_opset_version():
        raise DPNError("ONNX opset %d: the installed onnx %s knows opsets up to %d"
                       % (opset, onnx.__version__, onnx.defs.onnx_opset_version()))

    shapes = {name: np.shape(v) for name, v in tensors.items()}
    found, found_classes, found_classifier = variants.identify(shapes, arch, source)
    if classes is not None and classes != found_classes:
        raise CheckpointError("%s: has %d classes, not %d" % (source, found_classes, classes))
    if classifier is not None and classifier != found_classifier:
        raise CheckpointError("%s: the classifier is %s, not %s" % (source, found_classifier, classifier))
    extra = dict(metadata or {})
    if labels is not None:
        extra.update(label_metadata(labels, found_classes))
    model = build_onnx(tensors, found, found_classes, found_classifier, mean_max, opset,
                       tap_outputs, fp16, extra, normalization)
    data = model.SerializeToString()   # once: 100s of MB for the large variants
    onnx.checker.check_model(data)
    return data


def export_onnx(tensors: Mapping[str, np.ndarray], path: Union[str, Path],
                arch: Optional[str] = None, force: bool = False, **options) -> Path:
    """:func:`onnx_bytes` written at ``path`` atomically (for library callers); returns the
    path. ``options`` are :func:`onnx_bytes`'s."""
    path = check_writable(path, force)
    data = onnx_bytes(tensors, arch, **options)
    with atomic_write(path, force) as f:
        f.write(data)
    return path
