"""Per-layer parity: the authors' MXNet graph against a converted PyTorch or ONNX model.

The same batch (seeded, or real images with the authors' preprocessing) goes through

- the **reference**: the authors' graph rebuilt by :mod:`dpn_gluon.symbols`
  (:func:`~dpn_gluon.symbols.tap_symbol`), run by MXNet in float32 on the CPU, or on an MXNet
  GPU where the installed build has kernels for the card (MXNet 1.9.1 has none for Hopper,
  sm_90: docs/reference/mxnet-1.9.md section 2.2; then it says so and uses the CPU);
- the **candidate**: the timm-layout PyTorch DPN (:mod:`dpn_gluon.torch_dpn`, on
  cpu/cuda in float32, float16 or bfloat16), or the ONNX graph of
  :mod:`dpn_gluon.onnx_graph` with every tap as an output, run by onnxruntime
  (CPU, or the CUDA provider); or an ONNX file dpn-convert wrote, run as written with its
  tap nodes added as outputs (:func:`read_onnx`); or that ONNX graph compiled by OpenVINO
  for the CPU in float32 or bfloat16 (:mod:`dpn_gluon.openvino_ir`, the precision set
  explicitly), or an OpenVINO IR dpn-convert wrote, its tap tensors added as outputs.

Both are tapped at :func:`dpn_gluon.variants.tap_names`: ``pool1``, every block's
``<block>_sum`` (residual path) and ``<block>_cat`` (dense path), the final BN-ReLU and the
logits. One row per tap: max |a - b|, max |a - b| / max |ref| (the relative difference every
figure in this project uses), cosine similarity, and pass/fail against the tolerance, which
applies to every tap. The first failing row is where two models part.

Tolerances (:data:`TOLERANCES`): float32 1e-5 (both sides compute in float32; the measured
worst tap is 1.4e-6, docs/parity.md). float16 and bfloat16 bounds were measured on the CPU
(``python -m dpn_gluon.convert.parity --all``; torch's CPU kernels for half types) and set
with a margin over the worst tap of any architecture at 64x64; they also require top-1
agreement on every image. GPU kernels accumulate differently; the bounds were not measured
there (no GPU was available), which the ``gpu`` tests are for.

MXNet, torch, onnx/onnxruntime and matplotlib are imported inside the functions that need
them, so importing this module costs numpy only.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Union

import numpy as np

from .. import variants
from ..deps import require, require_choice
from ..errors import DPNError
from ..onnx_graph import FP16_RTOL  # a constant: onnx itself is imported only to run
from ..openvino_ir import BF16_RTOL as OPENVINO_BF16_RTOL

RUNTIMES = ("torch", "onnx", "openvino")
DEVICES = ("cpu", "cuda")
MX_DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "float16", "bfloat16")

#: Default max relative difference per tap (max |a - b| / max |ref|), by candidate dtype.
#: float16 / bfloat16: measured on the CPU with ``python -m dpn_gluon.convert.parity --all``
#: (seeded weights, 2x3x64x64, torch 2.13 CPU kernels; docs/parity.md): the worst tap of
#: any architecture is 3.0e-3 in float16 and 2.0e-2 in bfloat16 (dpn131, deep in conv4),
#: a few units of each type's rounding (2^-11, 2^-8) compounded over 100+ layers. The
#: bounds leave >3x margin for other inputs and kernels. A real conversion error (a swapped
#: gamma/beta) is >0.1 at the first tap it touches, so it still fails in half precision;
#: subtler ones (eps 1e-5 instead of 1e-3, ~1e-3) need the float32 check.
TOLERANCES = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 6e-2}
#: Candidate dtypes that must also agree with the reference's top-1 class on every image.
TOP1_DTYPES = ("float16", "bfloat16")

MIN_SIZE, MIN_SIZE_MEAN_MAX = variants.MIN_INPUT_SIZE["global"], variants.MIN_INPUT_SIZE["mean_max"]

WeightsLike = Union["object", Mapping[str, np.ndarray]]   # formats.Weights or canonical tensors


@dataclass
class TapRow:
    name: str
    shape: List[int]
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool


@dataclass
class ParityReport:
    """One row per tap, in graph order, and how the two models were run."""

    arch: str
    classes: int
    runtime: str
    device: str
    mx_device: str
    dtype: str
    batch: int
    size: int
    tolerance: float
    rows: List[TapRow]
    top1_agreement: float
    top1_required: bool
    top5_agreement: float = 1.0
    inputs: str = "seeded"
    notes: List[str] = field(default_factory=list)

    @property
    def first_failure(self) -> Optional[TapRow]:
        return next((r for r in self.rows if not r.passed), None)

    @property
    def logits(self) -> TapRow:
        return self.rows[-1]

    @property
    def worst(self) -> TapRow:
        return max(self.rows, key=lambda r: r.max_rel)

    @property
    def passed(self) -> bool:
        return (self.first_failure is None
                and (not self.top1_required or self.top1_agreement == 1.0))

    def to_dict(self) -> dict:
        first = self.first_failure
        return {
            "arch": self.arch, "classes": self.classes, "runtime": self.runtime,
            "device": self.device, "mx_device": self.mx_device, "dtype": self.dtype,
            "batch": self.batch, "size": self.size, "inputs": self.inputs,
            "tolerance": self.tolerance, "top1_agreement": self.top1_agreement,
            "top1_required": self.top1_required,
            "top5_agreement": self.top5_agreement, "passed": self.passed,
            "first_failure": first.name if first else None, "notes": list(self.notes),
            "rows": [dict(name=r.name, shape=list(r.shape), max_abs=r.max_abs, max_rel=r.max_rel,
                          cosine=r.cosine, passed=r.passed) for r in self.rows],
        }

    def title(self) -> str:
        return ("%s, %d classes: MXNet (%s, float32) vs %s (%s, %s), %s batch %dx3x%dx%d"
                % (self.arch, self.classes, self.mx_device, self.runtime, self.device, self.dtype,
                   self.inputs, self.batch, self.size, self.size))

    def table(self) -> str:
        """The plain-text table: one line per tap, the first failing one marked."""
        first = self.first_failure
        head = "%-30s %-18s %10s %10s %12s  %s" % ("tap", "shape", "max abs", "max rel",
                                                   "cosine", "ok")
        lines = [self.title(), head, "-" * len(head)]
        for r in self.rows:
            line = "%-30s %-18s %10.2e %10.2e %12.9f  %s" % (
                r.name, "x".join(str(d) for d in r.shape), r.max_abs, r.max_rel, r.cosine,
                "ok" if r.passed else "FAIL")
            if r is first:
                line += "  <-- first failure"
            lines.append(line)
        lines.append("-" * len(head))
        verdict = "PASS" if self.passed else "FAIL"
        summary = ("%s: %d/%d taps within %g (worst %s %.2e); top-1 agreement %.0f%%%s"
                   % (verdict, sum(r.passed for r in self.rows), len(self.rows), self.tolerance,
                      self.worst.name, self.worst.max_rel, 100 * self.top1_agreement,
                      " (required)" if self.top1_required else ""))
        lines.append(summary)
        lines += ["note: " + n for n in self.notes]
        return "\n".join(lines)

    def write(self, path: Union[str, Path], force: bool = True) -> Path:
        """:meth:`render` into ``path``, atomically."""
        from ..safeio.atomic import atomic_write
        data = self.render(path)
        with atomic_write(path, force) as f:
            f.write(data)
        return Path(path)

    def render(self, path: Union[str, Path]) -> bytes:
        """Max rel diff per tap on a log scale, as ``path``'s suffix says: ``.png`` (or
        ``.svg``), or ``.html`` (the table and the plot inline, self-contained)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".png", ".svg", ".html", ".htm"):
            raise DPNError("%s: the report must be .png, .svg or .html" % path)
        if suffix in (".png", ".svg"):
            return self._plot(suffix[1:])
        return self._html().encode("utf-8")

    def _plot(self, fmt: str) -> bytes:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise DPNError("--report needs matplotlib (pip install matplotlib)") from None
        n = len(self.rows)
        fig, ax = plt.subplots(figsize=(max(8.0, 0.16 * n + 2), 4.5))
        try:
            x = np.arange(n)
            floor = 1e-12
            rel = np.array([max(r.max_rel, floor) for r in self.rows])
            ok = np.array([r.passed for r in self.rows])
            ax.plot(x, rel, "-", color="0.6", lw=1)
            ax.scatter(x[ok], rel[ok], s=14, color="tab:blue", label="within tolerance", zorder=3)
            if (~ok).any():
                ax.scatter(x[~ok], rel[~ok], s=22, color="tab:red", label="fails", zorder=3)
            ax.axhline(self.tolerance, color="tab:red", ls="--", lw=1,
                       label="tolerance %g" % self.tolerance)
            ax.set_yscale("log")
            ax.set_xticks(x)
            ax.set_xticklabels([r.name for r in self.rows], rotation=90, fontsize=6)
            ax.set_ylabel("max |a - b| / max |ref|")
            ax.set_title(self.title(), fontsize=8)
            ax.legend(fontsize=7, loc="upper left")
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=110)
        finally:
            plt.close(fig)
        return buf.getvalue()

    def _html(self) -> str:
        import base64
        import html
        try:
            img = '<img alt="max rel diff per tap" src="data:image/png;base64,%s">' % (
                base64.b64encode(self._plot("png")).decode("ascii"))
        except DPNError as e:
            img = "<p>(no plot: %s)</p>" % html.escape(str(e))
        first = self.first_failure
        rows = "\n".join(
            "<tr%s><td>%s</td><td>%s</td><td>%.3e</td><td>%.3e</td><td>%.9f</td><td>%s</td></tr>"
            % (' class="first"' if r is first else (' class="fail"' if not r.passed else ""),
               html.escape(r.name), "x".join(map(str, r.shape)), r.max_abs, r.max_rel, r.cosine,
               "ok" if r.passed else "FAIL" + (" &larr; first failure" if r is first else ""))
            for r in self.rows)
        summary = html.escape(self.table().splitlines()[-1 - len(self.notes)])
        return """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>DPN parity: %s</title>
<style>body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse;font-size:13px}
td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right} td:first-child{text-align:left}
tr.fail{background:#fde2e2} tr.first{background:#f8b4b4;font-weight:bold}</style></head>
<body><h2>%s</h2><p>%s</p>%s
<table><tr><th>tap</th><th>shape</th><th>max abs</th><th>max rel</th><th>cosine</th><th>ok</th></tr>
%s</table></body></html>
""" % (html.escape(self.arch), html.escape(self.title()), summary, img, rows)


# -- inputs --------------------------------------------------------------------------------

def seeded_batch(batch: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
    """Uniform(-2, 2): the range of normalized pixels, (0..255 - mean) * 0.0167."""
    return np.random.RandomState(seed).uniform(-2, 2, (batch, 3, size, size)).astype(np.float32)


def load_images(paths: Sequence[Union[str, Path]], size: int) -> np.ndarray:
    """Images -> (N, 3, size, size) float32 with the authors' preprocessing
    (:func:`dpn_gluon.data.preprocess.preprocess`, protocol ``authors``: bicubic resize
    of the short side to ``size``, 100 % center crop, ``(pixel - MEAN_RGB) * SCALE``)."""
    from ..data.preprocess import preprocess
    return np.ascontiguousarray(np.stack([preprocess(p, size, "authors") for p in paths]),
                                dtype=np.float32)


# -- the two sides -----------------------------------------------------------------------------

def _unpack(w: WeightsLike, what: str):
    """(arch, classes, classifier, tensors) from formats.Weights or canonical tensors."""
    tensors = getattr(w, "tensors", w)
    if not isinstance(tensors, Mapping):
        raise DPNError("%s: expected canonical tensors or Weights, got %s" % (what, type(w).__name__))
    source = str(getattr(w, "source", what))
    arch, classes, classifier = variants.identify({k: np.shape(v) for k, v in tensors.items()},
                                                  source=source)
    return arch, classes, classifier, tensors


def _float32(tensors: Mapping[str, np.ndarray]) -> "OrderedDict[str, np.ndarray]":
    """float32 views (copies only of other dtypes); made per side, so that the two sides'
    widened copies of a float16 checkpoint are never held at once."""
    return OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in tensors.items())


def mx_context(mx_device: str = "cpu", log=None):
    """(context, name used): an MXNet GPU only if the build has kernels for the card."""
    import mxnet as mx
    if mx_device == "cpu":
        return mx.cpu(), "cpu"
    why = None
    try:
        n = mx.context.num_gpus()
    except Exception as e:         # a CPU build raises or reports 0 depending on version
        n, why = 0, str(e).splitlines()[0] if str(e) else type(e).__name__
    if n > 0:
        try:
            ctx = mx.gpu(0)
            (mx.nd.ones((2, 2), ctx=ctx) * 2).asnumpy()     # runs an MXNet kernel on the card
            return ctx, "gpu"
        except Exception as e:      # e.g. "no kernel image is available" on Hopper (sm_90)
            why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    else:
        why = why or "this MXNet build sees no GPU (a CPU build, or no CUDA device)"
    msg = ("MXNet cannot run on the GPU (%s); MXNet 1.9.1 has no kernels for Hopper (sm_90) "
           "GPUs: running the reference on the CPU" % why)
    if log:
        log(msg)
    return mx.cpu(), "cpu (gpu unavailable)"


def reference_taps(arch: variants.Arch, classes: int, classifier: str, tensors, x: np.ndarray,
                   ctx=None, mean_max: bool = False) -> "OrderedDict[str, np.ndarray]":
    """Every tap of the authors' graph, run by MXNet in float32."""
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    from ..symbols import run_symbol, tap_symbol
    sym = tap_symbol(arch.name, classes, classifier, head="mean_max" if mean_max else "global")
    outs = run_symbol(sym, tensors, ctx=ctx, data=x)
    return OrderedDict(zip(variants.tap_names(arch), outs))


#: What each runtime of the candidate imports.
RUNTIME_PACKAGES = {"torch": ("torch",), "onnx": ("onnxruntime", "onnx"),
                    "openvino": ("openvino", "onnx")}
#: What OpenVINO's --precision calls each candidate dtype it runs.
OPENVINO_PRECISION = {"float32": "fp32", "bfloat16": "bf16"}


def require_runtime(runtime: str) -> None:
    require_choice("--runtime", runtime, RUNTIME_PACKAGES)


def torch_taps(arch: variants.Arch, classes: int, classifier: str, tensors, x: np.ndarray,
               device: str = "cpu", dtype: str = "float32",
               mean_max: bool = False) -> "OrderedDict[str, np.ndarray]":
    """Every tap of the timm-layout PyTorch DPN, on ``device`` in ``dtype``."""
    require_runtime("torch")
    import torch

    from .. import torch_dpn
    if device == "cuda" and not torch.cuda.is_available():
        raise DPNError("--device cuda: torch sees no CUDA device (torch %s)" % torch.__version__)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        model = torch_dpn.from_canonical(tensors, arch.name, classes, classifier, mean_max=mean_max)
    tdtype = getattr(torch, dtype)
    model = model.to(device=device, dtype=tdtype)
    # float32 on Ampere+ GPUs: cuDNN convolutions default to TF32 (10-bit mantissa), ~1e-3
    # off; a float32 check must compute in float32.
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            taps = model.taps(torch.from_numpy(x).to(device=device, dtype=tdtype))
            return OrderedDict((k, v.float().cpu().numpy()) for k, v in taps.items())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


@dataclass
class OnnxModel:
    """An ONNX file written by :mod:`dpn_gluon.onnx_graph`, to be run as it is."""

    path: Path
    arch: variants.Arch
    classes: int
    classifier: str
    mean_max: bool
    dtype: str = "float32"      # float16: written with --fp16 (float32 input and logits)


def read_onnx(path: Union[str, Path]) -> OnnxModel:
    """The variant of an ONNX model from the metadata dpn-convert writes (arch, classes,
    classifier, head); raises :class:`DPNError` for anything else."""
    path = Path(path)
    onnx = require("onnx", "reading the ONNX model %s" % path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:       # protobuf's DecodeError and friends
        raise DPNError("%s: not an ONNX model (%s)" % (path, str(e).splitlines()[0][:100])) from None
    props = {p.key: p.value for p in model.metadata_props}
    if "arch" not in props or "classes" not in props:
        raise DPNError("%s: an ONNX model without dpn-convert's metadata (arch, classes)" % path)
    try:
        classes = int(props["classes"])
    except ValueError:
        raise DPNError("%s: metadata classes=%r is not a number" % (path, props["classes"])) from None
    arch, classes, classifier = variants.resolve(props["arch"], classes, props.get("classifier"))
    dtype = props.get("dtype", "float32")
    if dtype not in ("float32", "float16"):
        raise DPNError("%s: metadata dtype=%r is not float32 or float16" % (path, dtype))
    return OnnxModel(path, arch, classes, classifier, props.get("head") == "mean_max", dtype)


def onnx_taps(arch: variants.Arch, classes: int, classifier: str, tensors, x: np.ndarray,
              device: str = "cpu", mean_max: bool = False, log=None,
              model_path: Optional[Path] = None,
              dtype: str = "float32") -> "OrderedDict[str, np.ndarray]":
    """Every tap of an ONNX graph, run by onnxruntime: the export of ``tensors`` with
    ``tap_outputs=True``, or the file ``model_path`` as written (its inner ``dtype``), with
    every tap (node outputs named after the authors' ops) added as a graph output."""
    require_runtime("onnx")
    import onnx
    import onnxruntime as ort

    from ..onnx_graph import onnx_bytes
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DPNError("--device cuda: this onnxruntime has no CUDAExecutionProvider "
                           "(install onnxruntime-gpu)")
        providers = ["CUDAExecutionProvider"]
    taps = variants.tap_names(arch)
    if model_path is None:       # built in memory: onnxruntime takes the bytes
        model = onnx_bytes(tensors, arch.name, classes, classifier, mean_max=mean_max,
                           tap_outputs=True)
    else:
        proto = onnx.load(str(model_path))
        produced = {o for n in proto.graph.node for o in n.output}
        missing = [t for t in taps[:-1] if t not in produced]
        if missing or "logits" not in {o.name for o in proto.graph.output}:
            raise DPNError("%s: not dpn-convert's %s graph: no node output %s"
                           % (model_path, arch.name, (missing or ["logits"])[0]))
        outputs = {o.name for o in proto.graph.output}
        inner = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        proto.graph.output.extend(onnx.helper.make_tensor_value_info(t, inner, None)
                                  for t in taps[:-1] if t not in outputs)
        model = proto.SerializeToString()
        del proto
    sess = ort.InferenceSession(model, providers=providers)
    del model
    if device == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
        raise DPNError("--device cuda: onnxruntime's CUDA provider did not load")
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"data": x})))
    return OrderedDict((t, got[t]) for t in taps)


def openvino_taps(arch: variants.Arch, classes: int, classifier: str, tensors, x: np.ndarray,
                  dtype: str = "float32", mean_max: bool = False,
                  ir=None) -> "OrderedDict[str, np.ndarray]":
    """Every tap of the ONNX graph (or of ``ir``, an IR dpn-convert wrote, as written)
    compiled by OpenVINO for the CPU in ``dtype``, set explicitly. Taps made outputs keep
    their tensors in memory, which can stop OpenVINO fusing a node into the next: the logits
    of the untapped model are within the same bound (tests/test_openvino.py)."""
    require_runtime("openvino")
    from ..openvino_ir import add_tap_outputs, compile_model, from_tensors, run_named
    if ir is None:
        model = from_tensors(tensors, arch, classes, classifier, mean_max, tap_outputs=True)
    else:
        model = ir.load()
        add_tap_outputs(model, arch, str(ir.path))
    got = run_named(compile_model(model, OPENVINO_PRECISION[dtype]), x)
    return OrderedDict((t, got[t]) for t in variants.tap_names(arch))


# -- the comparison ------------------------------------------------------------------------------

def compare_tap(name: str, ref: np.ndarray, got: np.ndarray, tolerance: float) -> TapRow:
    a, b = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if a.shape != b.shape:
        return TapRow(name, list(b.shape), float("inf"), float("inf"), float("nan"), False)
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / max(float(np.abs(a).max()) if a.size else 0.0, 1e-30)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = float(np.dot(a.ravel(), b.ravel()) / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
    finite = bool(np.isfinite(b).all())
    passed = finite and max_rel <= tolerance
    if not finite:
        max_abs = max_rel = float("inf")
    return TapRow(name, list(a.shape), max_abs, max_rel, cosine, passed)


def topk_agreement(ref: np.ndarray, got: np.ndarray):
    """(top-1 agreement, top-5 set agreement): fractions of images, logits (N, classes)."""
    ref, got = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    top1 = float(np.mean(ref.argmax(1) == got.argmax(1)))
    k = min(5, ref.shape[1])
    a, b = np.argsort(-ref, axis=1)[:, :k], np.argsort(-got, axis=1)[:, :k]
    return top1, float(np.mean([set(i) == set(j) for i, j in zip(a, b)]))


def layer_parity(reference: WeightsLike, candidate: WeightsLike, runtime: str = "torch",
                 device: str = "cpu", dtype: str = "float32", batch: int = 2, size: int = 64,
                 seed: int = 0, images: Optional[Sequence[Union[str, Path]]] = None,
                 tolerance: Optional[float] = None, mx_device: str = "cpu",
                 mean_max: bool = False, log=None, progress=None) -> ParityReport:
    """Run ``reference`` in the authors' MXNet graph and ``candidate`` in ``runtime``; compare
    every tap. Both are :class:`~dpn_gluon.formats.canonical.Weights` or canonical tensors of
    the same architecture and class count; with ``runtime='onnx'`` the candidate may also be
    an ONNX file dpn-convert wrote (:func:`read_onnx`), run as it is, and with
    ``runtime='openvino'`` an IR dpn-convert wrote (:func:`dpn_gluon.openvino_ir.read_ir`).

    ``images`` (paths) replace the seeded batch (``batch``, ``seed``); ``size`` is the input
    side (at least 32; 193 for the mean-max head). ``tolerance`` defaults to
    :data:`TOLERANCES` for ``dtype``. ``progress``, when given, is called with the name of
    each stage as it begins (loading MXNet, the reference run, the candidate run, comparing).
    Raises :class:`DPNError` on bad input.
    """
    progress = progress or (lambda stage: None)
    for value, allowed, what in ((runtime, RUNTIMES, "runtime"), (device, DEVICES, "device"),
                                 (dtype, DTYPES, "dtype"), (mx_device, MX_DEVICES, "mx_device")):
        if value not in allowed:
            raise DPNError("unknown %s %r (choose from %s)" % (what, value, ", ".join(allowed)))
    if isinstance(candidate, OnnxModel) and dtype == "float32":
        dtype = candidate.dtype     # a --fp16 file runs as written
    need = MIN_SIZE_MEAN_MAX if mean_max else MIN_SIZE
    if size < need:
        raise DPNError("--size %d is too small: at least %d%s" % (size, need,
                                                                  " for the mean-max head" if mean_max else ""))
    if batch < 1 and not images:
        raise DPNError("--batch must be at least 1")
    onnx_fp16 = runtime == "onnx" and dtype == "float16" and isinstance(candidate, OnnxModel)
    if runtime == "onnx" and dtype != "float32" and not onnx_fp16:
        raise DPNError("--runtime onnx runs the exported float32 graph only, or a file written "
                       "with --fp16 as it is (use --runtime torch for %s)" % dtype)
    if runtime == "openvino" and dtype not in OPENVINO_PRECISION:
        raise DPNError("--runtime openvino runs float32 or bfloat16, not %s" % dtype)
    default_tolerance = FP16_RTOL if onnx_fp16 else TOLERANCES[dtype]
    if runtime == "openvino" and dtype == "bfloat16":
        default_tolerance = OPENVINO_BF16_RTOL
    if tolerance is None:
        tolerance = default_tolerance
    if not tolerance > 0:
        raise DPNError("--tolerance must be positive, got %g" % tolerance)
    r_arch, r_classes, r_fc, r_tensors = _unpack(reference, "reference")
    from ..openvino_ir import IRModel
    as_written = {IRModel: ("openvino", "an OpenVINO IR", "the IR"),
                  OnnxModel: ("onnx", "an ONNX model", "the ONNX model")}.get(type(candidate))
    if as_written is not None:       # a model file run as it is: its runtime, its head
        kind, what, it = as_written
        if runtime != kind:
            raise DPNError("%s: %s runs with --runtime %s only" % (candidate.path, what, kind))
        if candidate.mean_max != mean_max:
            raise DPNError("%s: %s has the %s head: %s --mean-max"
                           % (candidate.path, it, "mean-max" if candidate.mean_max else "global",
                              "pass" if candidate.mean_max else "drop"))
        c_arch, c_classes, c_fc, c_tensors = (candidate.arch, candidate.classes,
                                              candidate.classifier, {})
    else:
        c_arch, c_classes, c_fc, c_tensors = _unpack(candidate, "candidate")
    if (variants.standard_form(r_arch), r_classes) != (variants.standard_form(c_arch), c_classes):
        raise DPNError("the two checkpoints differ: %s with %d classes vs %s with %d classes"
                       % (r_arch.name, r_classes, c_arch.name, c_classes))
    progress("loading MXNet")
    try:
        importlib.import_module("mxnet")
    except (ImportError, OSError) as e:
        raise DPNError("per-layer parity needs MXNet, which runs the authors' graph (%s): pip "
                       "install mxnet==1.9.1 (Python <= 3.11)" % str(e).splitlines()[0]) from None
    require_runtime(runtime)      # before the authors' graph runs, not after
    if runtime == "openvino":
        from ..openvino_ir import check_precision
        check_precision(OPENVINO_PRECISION[dtype], "--runtime openvino")
    x = load_images(images, size) if images else seeded_batch(batch, size, seed)
    inputs = "%d image%s" % (len(x), "s" if len(x) > 1 else "") if images else "seeded(%d)" % seed
    ctx, mx_used = mx_context(mx_device, log)
    progress("MXNet: the authors' graph")
    ref = reference_taps(r_arch, r_classes, r_fc, _float32(r_tensors), x, ctx, mean_max)
    progress("%s: the candidate" % runtime)
    if runtime == "torch":
        got = torch_taps(c_arch, c_classes, c_fc, _float32(c_tensors), x, device, dtype, mean_max)
    elif runtime == "openvino":
        if device != "cpu":
            raise DPNError("--runtime openvino runs on the CPU here; use --device cpu")
        got = openvino_taps(c_arch, c_classes, c_fc, _float32(c_tensors), x, dtype, mean_max,
                            ir=candidate if isinstance(candidate, IRModel) else None)
    else:
        got = onnx_taps(c_arch, c_classes, c_fc, _float32(c_tensors), x, device, mean_max, log,
                        model_path=candidate.path if isinstance(candidate, OnnxModel) else None,
                        dtype=dtype)
    progress("comparing taps")
    rows = [compare_tap(t, ref[t], got[t], tolerance) for t in variants.tap_names(r_arch)]
    top1, top5 = topk_agreement(ref["logits"], got["logits"])
    notes = []
    if dtype != "float32":
        how = ("benchmarks.onnx_fp16" if onnx_fp16 else "dpn_gluon.convert.parity --all"
               + (" --runtime openvino" if runtime == "openvino" else ""))
        notes.append("%s tolerance %g measured on the CPU (python -m %s)"
                     % (dtype, default_tolerance, how))
    if mx_used != mx_device:
        notes.append("reference ran on the CPU: MXNet could not use the GPU")
    return ParityReport(r_arch.name, r_classes, runtime, device, mx_used, dtype, len(x), size,
                        tolerance, rows, top1, dtype in TOP1_DTYPES, top5, inputs, notes)


# -- python -m dpn_gluon.convert.parity --all: the docs/parity.md table ---------------------

def _measure(archs: Sequence[str], dtypes: Sequence[str], runtimes: Sequence[str], batch: int,
             size: int, seed: int, device: str) -> List[dict]:
    from ..checkpoint import seeded_tensors
    rows = []
    for name in archs:
        tensors = seeded_tensors(name, seed=0)
        for runtime in runtimes:
            for dtype in dtypes:
                if (runtime == "onnx" and dtype != "float32"
                        or runtime == "openvino" and dtype not in OPENVINO_PRECISION):
                    continue
                rep = layer_parity(tensors, tensors, runtime, device, dtype, batch, size, seed)
                rows.append(dict(arch=name, runtime=runtime, dtype=dtype, worst_tap=rep.worst.name,
                                 worst=rep.worst.max_rel, logits=rep.logits.max_rel,
                                 min_cosine=min(r.cosine for r in rep.rows),
                                 top1=rep.top1_agreement, tolerance=rep.tolerance,
                                 passed=rep.passed))
                print("%-7s %-6s %-9s worst %.2e (%s) logits %.2e top-1 %.0f%% %s"
                      % (name, runtime, dtype, rep.worst.max_rel, rep.worst.name,
                         rep.logits.max_rel, 100 * rep.top1_agreement,
                         "ok" if rep.passed else "FAIL"), file=sys.stderr)
        del tensors
    return rows


def main(argv=None) -> int:
    import argparse
    import json
    import platform
    p = argparse.ArgumentParser(
        prog="python -m dpn_gluon.convert.parity",
        description="Measure per-layer parity (seeded weights, MXNet float32 reference) for "
                    "every architecture and dtype; prints the Markdown table of docs/parity.md.")
    p.add_argument("--all", action="store_true", help="every architecture (default: dpn68)")
    p.add_argument("--arch", nargs="*", default=None, choices=list(variants.ARCHS))
    p.add_argument("--dtype", nargs="*", default=list(DTYPES), choices=DTYPES)
    p.add_argument("--runtime", nargs="*", default=["torch"], choices=RUNTIMES)
    p.add_argument("--device", default="cpu", choices=DEVICES)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON record instead of Markdown")
    a = p.parse_args(argv)
    archs = list(variants.ARCHS) if a.all else (a.arch or ["dpn68"])
    try:
        rows = _measure(archs, a.dtype, a.runtime, a.batch, a.size, a.seed, a.device)
    except DPNError as e:        # --device cuda without a GPU, a missing runtime: one line
        print("%s: error: %s" % (p.prog, " ".join(str(e).split())), file=sys.stderr)
        return 2
    import mxnet
    import torch
    env = dict(machine=platform.machine(), cpu=platform.processor() or platform.machine(),
               python=platform.python_version(), torch=torch.__version__, mxnet=mxnet.__version__,
               device=(torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"),
               batch=a.batch, size=a.size, seed=a.seed)
    if "onnx" in a.runtime:
        import onnxruntime
        env["onnxruntime"] = onnxruntime.__version__
    if "openvino" in a.runtime:
        import openvino
        env["openvino"] = openvino.__version__
    if a.json:
        print(json.dumps(dict(env=env, rows=rows), indent=1))
        return 0
    print("Device: %(device)s (%(machine)s); Python %(python)s, torch %(torch)s, mxnet %(mxnet)s%(ort)s; "
          "seeded weights, %(batch)dx3x%(size)dx%(size)d, seed %(seed)d."
          % dict(env, ort="".join(", %s %s" % (k, env[k]) for k in ("onnxruntime", "openvino")
                                  if k in env)))
    print()
    print("| arch | runtime | dtype | worst tap | max rel (worst tap) | max rel (logits) "
          "| min cosine | top-1 | tolerance | result |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| %s | %s | %s | %s | %.1e | %.1e | %.7f | %.0f%% | %g | %s |"
              % (r["arch"], r["runtime"], r["dtype"], r["worst_tap"], r["worst"], r["logits"],
                 r["min_cosine"], 100 * r["top1"], r["tolerance"], "pass" if r["passed"] else "FAIL"))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
