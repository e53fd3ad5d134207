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
``mean_max=True`` gives the authors' test head (avg-pool 7x7 stride 1 -> classifier as a
1x1 Conv -> 0.5 * (global average + global max)), which needs inputs of at least 193 pixels.
Node outputs carry the authors' op names (``pool1``, ``conv2_x__1_sum``, ...), so with
``tap_outputs=True`` every tap of :func:`variants.tap_names` is also a graph output, for the
per-layer parity report. Weights are stored as float32 (float16 checkpoints are widened).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import numpy as np

from .. import variants
from ..errors import CheckpointError
from .atomic import atomic_write, check_writable

#: IR version written: 9 (onnx 1.15, opset <= 20), which onnxruntime >= 1.16 accepts.
IR_VERSION = 9
DEFAULT_OPSET = 17
INPUT, OUTPUT = "data", "logits"


class _Graph:
    """Collects nodes and initializers; each method emits one op and returns its output name."""

    def __init__(self, tensors: Mapping[str, np.ndarray]):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.tensors = tensors
        self.nodes: list = []
        self.initializers: Dict[str, object] = {}

    def weight(self, name: str, shape=None) -> str:
        if name not in self.initializers:
            value = np.asarray(self.tensors[name], dtype=np.float32)
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
               tap_outputs: bool = False):
    """The ``onnx.ModelProto`` of ``arch`` with ``tensors`` (canonical names) as initializers.

    Not yet checked: :func:`export_onnx` runs ``onnx.checker`` on the serialized bytes it writes.
    """
    from onnx import TensorProto, helper

    g = _Graph(tensors)
    k = arch.stem_kernel
    stem = variants.STEM
    x = g.op("Conv", [INPUT, g.weight(stem + "__conv_weight")], stem + "__conv",
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
        x = g.op("AveragePool", [x], "pool5", kernel_shape=[7, 7], strides=[1, 1])
        x = g.op("Conv", [x, g.weight(w, (classes, arch.num_features, 1, 1)), g.weight(b)],
                 classifier, kernel_shape=[1, 1])
        both = g.op("Add", [g.op("GlobalAveragePool", [x], "mean_pool"),
                            g.op("GlobalMaxPool", [x], "max_pool")], "mean_max_sum")
        half = "const_f32_half"
        g.initializers[half] = g.numpy_helper.from_array(np.array(0.5, np.float32), half)
        g.op("Flatten", [g.op("Mul", [both, half], "mean_max")], OUTPUT)
    else:
        x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool5")], "flatten")
        g.op("Gemm", [x, g.weight(w), g.weight(b)], OUTPUT, transB=1)

    unused = sorted(set(tensors) - set(g.initializers))
    if unused:
        raise CheckpointError("%d tensors unused by the %s graph: %s" % (len(unused), arch.name,
                                                                        ", ".join(unused[:4])))
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", classes])]
    if tap_outputs:
        outputs += [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["batch", c, None, None])
                    for t, c in _tap_channels(arch).items()]
    graph = helper.make_graph(
        g.nodes, "%s%s" % (arch.name, "_mean_max" if mean_max else ""),
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        outputs, initializer=list(g.initializers.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="dpn-gluon")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"arch": arch.name, "classes": str(classes),
                                   "classifier": classifier, "head": "mean_max" if mean_max else "global",
                                   "mean_rgb": ",".join("%g" % m for m in variants.MEAN_RGB),
                                   "scale": "%g" % variants.SCALE})
    return model


def export_onnx(tensors: Mapping[str, np.ndarray], path: Union[str, Path], arch: Optional[str] = None,
                classes: Optional[int] = None, classifier: Optional[str] = None,
                mean_max: bool = False, opset: int = DEFAULT_OPSET, force: bool = False,
                tap_outputs: bool = False, source: str = "checkpoint") -> Path:
    """Write canonical tensors as an ONNX model at ``path`` (atomically); returns the path.

    The architecture, class count and classifier name are read from the tensors' names and
    shapes (validated strictly against the variant table) unless given.
    """
    path = check_writable(path, force)
    import onnx

    shapes = {name: np.shape(v) for name, v in tensors.items()}
    found, found_classes, found_classifier = variants.identify(shapes, arch, source)
    if classes is not None and classes != found_classes:
        raise CheckpointError("%s: has %d classes, not %d" % (source, found_classes, classes))
    if classifier is not None and classifier != found_classifier:
        raise CheckpointError("%s: the classifier is %s, not %s" % (source, found_classifier, classifier))
    model = build_onnx(tensors, found, found_classes, found_classifier, mean_max, opset, tap_outputs)
    data = model.SerializeToString()   # once: 100s of MB for the large variants
    onnx.checker.check_model(data)
    with atomic_write(path, force) as f:
        f.write(data)
    return path
