"""OpenVINO: the ONNX graph of :mod:`dpn_gluon.onnx_graph` as an OpenVINO model, compiled for
the CPU at a precision the caller chose, and written as OpenVINO's IR (``NAME.xml`` +
``NAME.bin``).

Why the precision is always set: OpenVINO's CPU plugin runs float32 models in bfloat16 by
default wherever the CPU has bfloat16 instructions (AVX512_BF16 or AMX), without saying
so. A parity tool must not report bfloat16 numbers as float32 ones, so every compile here
passes ``INFERENCE_PRECISION_HINT`` explicitly (:data:`HINTS`) and then reads the compiled
model's property back, refusing a compile that ended at another precision.

The model is what onnxruntime runs (the same ONNX bytes, read by OpenVINO's ONNX frontend):
node outputs carry the authors' op names, so the parity taps are tensor names here too.
OpenVINO imports the ONNX ``metadata_props`` under rt_info ``framework``; the IR carries
them under rt_info ``dpn`` instead (:data:`RT_SECTION`: architecture, classes, classifier,
head, normalization, labels, ...), where :func:`read_ir` reads them back.

int8 is post-training quantization by NNCF 2.14.1's ONNX backend (:func:`quantize_onnx`:
QuantizeLinear/DequantizeLinear pairs around the convolutions, scales from the user's
calibration images), compiled with the hint ``f32`` so that whatever OpenVINO does not run
in int8 runs in float32, not in a silent bf16. It is never applied without
``--precision int8`` and a calibration set (docs/openvino.md says what it costs and why
it is not faster than bf16 here).

``openvino`` and ``nncf`` are imported inside the functions that need them (the
``openvino`` and ``int8`` extras).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from . import variants
from .deps import require
from .errors import DPNError

#: What ``--precision`` offers, and OpenVINO's INFERENCE_PRECISION_HINT for each.
PRECISIONS = ("fp32", "bf16", "int8")
#: int8: the quantized ops run in int8 (OpenVINO reads the QDQ pairs), the rest in float32.
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
#: What each precision needs: OpenVINO's OPTIMIZATION_CAPABILITIES entry, the CPU flags
#: (/proc/cpuinfo) that give it natively, and how a user knows the instruction sets.
NEEDS = {"bf16": ("BF16", ("avx512_bf16", "amx_bf16"), "AVX512_BF16 or AMX"),
         "int8": ("INT8", ("avx512_vnni", "avx_vnni", "amx_int8"),
                  "VNNI (AVX512_VNNI or AVX_VNNI) or AMX")}
#: The rt_info section of the IR that holds the ONNX metadata_props.
RT_SECTION = "dpn"
#: Max relative difference per tap (max |a - b| / max |ref|) of OpenVINO bf16 against the
#: authors' graph in float32: measured over seeded checkpoints of every architecture with
#: ``python -m dpn_gluon.convert.parity --all --runtime openvino --dtype bfloat16``
#: (docs/openvino.md): worst tap 9.7e-3 (dpn68, 2x3x64x64), so 3e-2.
BF16_RTOL = 3e-2


def _openvino(purpose: str):
    return require("openvino", purpose)


def cpu_flags() -> Optional[set]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), None where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def check_precision(precision: str, purpose: str = "--runtime openvino") -> None:
    """Refuse, in one line, a precision that is unknown or that this CPU cannot run natively
    (OpenVINO would emulate or silently fall back)."""
    if precision not in PRECISIONS:
        raise DPNError("unknown --precision %r (choose from %s)"
                       % (precision, ", ".join(PRECISIONS)))
    if precision not in NEEDS:
        return
    capability, flags, isa = NEEDS[precision]
    ov = _openvino(purpose)
    found = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    have = cpu_flags()
    if capability not in found or (have is not None and not have & set(flags)):
        raise DPNError("--precision %s needs a CPU with %s, which this one (%s) lacks: use "
                       "--precision fp32" % (precision, isa, cpu_name()))


def cpu_name() -> str:
    try:
        return str(_openvino("the CPU's name").Core().get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception:          # the name only decorates a message
        return "this CPU"


def from_onnx(proto):
    """An ``ov.Model`` read from an ``onnx.ModelProto`` (or its bytes) by OpenVINO's ONNX
    frontend, its metadata moved from rt_info ``framework`` to :data:`RT_SECTION`."""
    ov = _openvino("--runtime openvino")
    data = proto if isinstance(proto, (bytes, bytearray)) else proto.SerializeToString()
    model = ov.Core().read_model(bytes(data))
    rt = model.get_rt_info()
    framework = {}
    if "framework" in rt:
        framework = {k: str(v.astype(str)) for k, v in dict(rt["framework"]).items()}
        del rt["framework"]
    for key in sorted(framework):
        model.set_rt_info(framework[key], [RT_SECTION, key])
    return model


def from_tensors(tensors: Mapping[str, np.ndarray], arch: variants.Arch, classes: int,
                 classifier: str, mean_max: bool = False, tap_outputs: bool = False,
                 labels: Optional[Sequence[str]] = None, normalization: str = "authors",
                 calibration: Optional[np.ndarray] = None):
    """The ``ov.Model`` of the ONNX graph :func:`dpn_gluon.onnx_graph.build_onnx` builds;
    with ``calibration`` (a preprocessed batch), that graph quantized to int8 first."""
    _openvino("--runtime openvino")
    from .onnx_graph import build_onnx, label_metadata
    extra = label_metadata(labels, classes) if labels is not None else None
    proto = build_onnx(tensors, arch, classes, classifier, mean_max=mean_max,
                       tap_outputs=tap_outputs, metadata=extra, normalization=normalization)
    ours = {n.name for n in proto.graph.node} | {i.name for i in proto.graph.initializer} \
        | {i.name for i in proto.graph.input}
    if calibration is not None:
        proto = quantize_onnx(proto, calibration)
    data = proto.SerializeToString()
    del proto
    model = from_onnx(data)
    number_unnamed_ops(model, ours)
    return model


def number_unnamed_ops(model, ours) -> None:
    """Name the ops OpenVINO's ONNX frontend creates (``Constant_379``: a counter global to
    the process, so a second conversion in the same process would get other names, and
    other bytes) by their type and place in topological order instead."""
    for index, op in enumerate(model.get_ordered_ops()):
        if op.get_friendly_name() not in ours:
            op.set_friendly_name("%s_%d" % (op.get_type_name(), index))


def compile_model(model, precision: str = "fp32", threads: Optional[int] = None):
    """``model`` compiled for the CPU at ``precision`` (set explicitly, then checked on the
    compiled model); ``threads`` sets INFERENCE_NUM_THREADS, else OpenVINO's default."""
    check_precision(precision)
    ov = _openvino("--runtime openvino")
    quantized = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    if quantized != (precision == "int8"):
        raise DPNError("--precision %s: the model is %squantized" % (precision, "" if quantized
                                                                     else "not "))
    config = {"INFERENCE_PRECISION_HINT": HINTS[precision]}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(model, "CPU", config)
    got = compiled_precision(compiled)
    if got != HINTS[precision]:
        raise DPNError("OpenVINO compiled the model in %s, not the %s asked for"
                       % (got, HINTS[precision]))
    return compiled


def compiled_precision(compiled) -> str:
    """The compiled model's INFERENCE_PRECISION_HINT as OpenVINO names it (f32, bf16)."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


def metadata(model) -> Dict[str, str]:
    """The :data:`RT_SECTION` rt_info of ``model`` as strings (empty when it has none)."""
    rt = model.get_rt_info()
    if RT_SECTION not in rt:
        return {}
    return {k: str(v.astype(str)) for k, v in dict(rt[RT_SECTION]).items()}


def write_ir(model, xml_path: Union[str, Path], bin_path: Union[str, Path]) -> None:
    """Serialize ``model`` to ``xml_path`` and ``bin_path`` as they are: float32 weights
    (no fp16 compression: ``ov.save_model``'s default would compress), explicit paths (so a
    transaction's temps can be written), the same bytes for the same model."""
    _openvino("--to openvino")
    from openvino.passes import Manager, Serialize
    manager = Manager()
    manager.register_pass(Serialize(str(xml_path), str(bin_path)))
    manager.run_passes(model)


@dataclass
class IRModel:
    """An OpenVINO IR dpn-convert wrote, identified from its rt_info."""

    path: Path
    arch: variants.Arch
    classes: int
    classifier: str
    mean_max: bool
    labels: Optional[List[str]]
    metadata: Dict[str, str]

    def load(self):
        ov = _openvino("reading the OpenVINO IR %s" % self.path)
        return ov.Core().read_model(str(self.path), str(bin_path(self.path)))


def bin_path(xml: Union[str, Path]) -> Path:
    return Path(xml).with_suffix(".bin")


def is_ir(path: Union[str, Path]) -> bool:
    """Whether ``path`` names an IR file (``.xml``): dispatch by suffix only here, where the
    user named the IR as a model to run; :func:`read_ir` checks what it holds."""
    return Path(path).suffix.lower() == ".xml"


def read_ir(path: Union[str, Path]) -> IRModel:
    """The variant of an IR dpn-convert wrote (its rt_info :data:`RT_SECTION`); one line
    (:class:`DPNError`) for anything else."""
    from . import labels as class_labels
    from .files import require_regular
    path = Path(path)
    weights = bin_path(path)
    for f in (path, weights):
        if not os.path.exists(f):
            raise DPNError("%s: no such file (an OpenVINO IR is NAME.xml with NAME.bin)" % f)
        require_regular(f, "OpenVINO IR file")
    ov = _openvino("reading the OpenVINO IR %s" % path)
    try:
        model = ov.Core().read_model(str(path), str(weights))
    except Exception as e:     # OpenVINO's parse errors: several lines, one kept
        raise DPNError("%s: not an OpenVINO IR (%s)"
                       % (path, " ".join(str(e).split())[:160])) from None
    props = metadata(model)
    if "arch" not in props or "classes" not in props:
        raise DPNError("%s: an OpenVINO IR without dpn-convert's rt_info (%s/arch, classes)"
                       % (path, RT_SECTION))
    try:
        classes = int(props["classes"])
    except ValueError:
        raise DPNError("%s: rt_info classes=%r is not a number" % (path, props["classes"])) from None
    arch, classes, classifier = variants.resolve(props["arch"], classes, props.get("classifier"))
    names = class_labels.from_metadata(props, classes, str(path)) if "labels" in props else None
    return IRModel(path, arch, classes, classifier, props.get("head") == "mean_max", names, props)


def add_tap_outputs(model, arch: variants.Arch, where: str) -> None:
    """Make every parity tap (a tensor named after the authors' op) an output of ``model``."""
    taps = variants.tap_names(arch)[:-1]
    known = {name for op in model.get_ops() for out in op.outputs() for name in out.names}
    missing = [t for t in taps if t not in known]
    if missing:
        raise DPNError("%s: not dpn-convert's %s graph: no tensor %s" % (where, arch.name, missing[0]))
    have = {name for out in model.outputs for name in out.names}
    model.add_outputs([t for t in taps if t not in have])


def run_named(compiled, x: np.ndarray) -> Dict[str, np.ndarray]:
    """Every output of ``compiled`` on ``x``, by each of its tensor names.

    Through an infer request with the input copied (``infer``'s default), never
    ``compiled(x)``: that shares the caller's array (``share_inputs=True``), and with
    openvino 2026.4.1 two calls on two arrays of one shape gave the second wrong logits
    (max rel 9.9e-2; docs/openvino.md)."""
    result = compiled.create_infer_request().infer({0: np.ascontiguousarray(x, np.float32)})
    out = {}
    for port in compiled.outputs:
        value = np.asarray(result[port], dtype=np.float32)
        for name in port.names:
            out[name] = value
    return out



def _quiet():
    """stdout and stderr swallowed: NNCF logs and draws progress bars on both."""
    import contextlib
    import io
    sink = io.StringIO()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(sink))
    stack.enter_context(contextlib.redirect_stderr(sink))
    return stack


def import_nncf():
    """NNCF, imported without its "INFO:nncf:NNCF initialized" line on stdout (which would
    break a command's --json output), its logger then set to errors only, and without its
    usage telemetry: NNCF 2.14.1 sends events (openvino-telemetry, no opt-in dialog) unless
    ``NNCF_CI`` is set when it is imported, its only use of that variable."""
    import logging
    saved = os.environ.get("NNCF_CI")
    os.environ["NNCF_CI"] = "1"
    try:
        with _quiet():
            nncf = require("nncf", "--precision int8")
    finally:
        if saved is None:
            del os.environ["NNCF_CI"]
        else:
            os.environ["NNCF_CI"] = saved
    logging.getLogger("nncf").setLevel(logging.ERROR)
    return nncf


def quantize_onnx(proto, calibration: np.ndarray, grouped: bool = True):
    """The ``onnx.ModelProto`` ``proto`` quantized by NNCF's post-training quantization
    (its ONNX backend, onnxruntime collecting the statistics) over ``calibration``, a float32
    NCHW batch already preprocessed, then (``grouped``) :func:`quantize_grouped_weights`;
    NNCF's logs and
    progress bars are kept off the command's stdout and stderr."""
    nncf = import_nncf()
    require("onnxruntime", "--precision int8")
    samples = [calibration[i:i + 1] for i in range(len(calibration))]
    with _quiet():
        quantized = nncf.quantize(proto, nncf.Dataset(samples, lambda x: {"data": x}),
                                  subset_size=len(samples))
    return quantize_grouped_weights(quantized) if grouped else quantized


def quantize_grouped_weights(proto):
    """Give the grouped 3x3 convolutions int8 weights where NNCF left them float32.

    NNCF 2.14.1's ONNX backend quantizes the input of a grouped (not depthwise) Conv but
    not its weights (its GroupConvolution metatype is in no list of weighted ops), and
    OpenVINO's CPU plugin runs a convolution in int8 only when both are quantized: every
    ``c3x3-b`` convolution of a DPN then runs in float32, with a reorder back to u8 after it,
    and int8 trails bf16 (docs/openvino.md has the profile). Each such weight gets a
    QuantizeLinear/DequantizeLinear pair: symmetric, per output channel, scale
    max |w| / 127, the weight scheme NNCF uses for the other convolutions."""
    from onnx import helper, numpy_helper
    weights = {i.name: i for i in proto.graph.initializer}
    produced_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    added = []
    for node in proto.graph.node:
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if (node.op_type != "Conv" or groups == 1 or node.input[1] not in weights
                or produced_by.get(node.input[0]) != "DequantizeLinear"):
            continue
        name = node.input[1]
        w = numpy_helper.to_array(weights[name])
        scale = (np.abs(w).reshape(len(w), -1).max(1) / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        proto.graph.initializer.extend([numpy_helper.from_array(scale, name + "_scale"),
                                        numpy_helper.from_array(np.zeros(len(w), np.int8),
                                                                name + "_zero_point")])
        q_dq = [name, name + "_scale", name + "_zero_point"]
        added += [helper.make_node("QuantizeLinear", q_dq, [name + "_q"], name=name + "_q", axis=0),
                  helper.make_node("DequantizeLinear", [name + "_q"] + q_dq[1:], [name + "_dq"],
                                   name=name + "_dq", axis=0)]
        node.input[1] = name + "_dq"
    nodes = added + list(proto.graph.node)     # weights first: the graph stays sorted
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto
