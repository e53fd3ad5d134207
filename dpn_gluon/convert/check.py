"""The post-write check of ``dpn-convert``: reload what was written and prove it is the source.

Two parts:

1. **Exact**: the written files are read back through the same detect/read path a user's
   next program would take, and every tensor is compared with the source bit for bit
   (dtype, shape and bytes: float16 must stay float16, -0.0 must stay -0.0). The stored key
   list is compared too, against the name table's expectation for that target (timm keys
   with their ``num_batches_tracked`` counters, Gluon's structural names, ``arg:``/``aux:``).
2. **Numerical**, when MXNet and torch are both importable: the per-layer parity report
   (:func:`dpn_gluon.convert.parity.layer_parity`): a fixed seeded batch runs through the
   authors' MXNet graph (:mod:`dpn_gluon.symbols`) and through the PyTorch DPN
   (:mod:`dpn_gluon.torch_dpn`) built from the written weights, compared at every
   tap (stem, each block's residual and dense paths, final BN-ReLU, logits); the summary
   keeps the max relative logit difference and top-5 agreement. Without MXNet the report
   says so and the exact comparison stands alone.

Neither MXNet nor torch is imported unless the numerical part runs (or the target is .pth).
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional

import numpy as np

from .. import variants
from ..deps import importable
from ..errors import DPNError
from ..formats import canonical as formats
from ..formats import names, registry
from ..onnx_graph import FP16_RTOL

if TYPE_CHECKING:
    from .parity import ParityReport

#: Max relative logit difference (max |a - b| / max |a|) the numerical check accepts.
RTOL = 1e-5
#: Input side for a mean-max ONNX file: an 8x8 final map gives a 2x2 class map, where the
#: head's mean and max differ (at 193-224 the map is 1x1 and they coincide).
MEAN_MAX_SIZE = 256
#: Mismatches listed in a report (the count of the rest follows).
MAX_LISTED = 20


@dataclass
class NumericReport:
    batch: int
    size: int
    max_abs: float
    max_rel: float
    top5_agreement: float
    passed: bool


@dataclass
class CheckReport:
    exact: Optional[bool] = None          # None: not applicable (onnx)
    tensors: int = 0
    mismatches: List[str] = field(default_factory=list)
    numeric: Optional[NumericReport] = None
    notes: List[str] = field(default_factory=list)
    parity: Optional["ParityReport"] = None      # the per-layer table behind ``numeric``

    @property
    def ok(self) -> bool:
        return self.exact is not False and (self.numeric is None or self.numeric.passed)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["parity"] = self.parity.to_dict() if self.parity else None
        d["ok"] = self.ok
        return d


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical: same dtype, same shape, same bytes."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return np.array_equal(np.ascontiguousarray(a).view(np.uint8),
                          np.ascontiguousarray(b).view(np.uint8))


def compare_tensors(expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> List[str]:
    """Every difference between two {name: array} mappings, one short line each.

    Memory-mapped pages of both sides are released tensor by tensor as they are compared.
    """
    problems = ["missing %s" % k for k in expected if k not in got]
    problems += ["unexpected %s" % k for k in got if k not in expected]
    for k, a in expected.items():
        if k not in got:
            continue
        b = got[k]
        problems += _compare_one(k, a, b)
        formats.release((a, b))
    return problems


def _compare_one(k: str, a: np.ndarray, b: np.ndarray) -> List[str]:
    if a.dtype != b.dtype:
        return ["%s: dtype %s, expected %s" % (k, b.dtype, a.dtype)]
    if a.shape != b.shape:
        return ["%s: shape %s, expected %s" % (k, b.shape, a.shape)]
    return [] if same_bits(a, b) else ["%s: values differ" % k]


def expected_stored_keys(weights: "formats.Weights", target: str) -> Dict[str, tuple]:
    """Key -> shape a target file must hold, from the variant table and the name table."""
    spec = variants.tensor_spec(weights.arch, weights.classes, weights.classifier)
    if target == "mxnet":      # the reader strips arg:/aux: after checking each prefix
        return dict(spec)
    scheme = "gluon" if target == "gluon" else "timm"
    return dict(names.expected_keys(spec, scheme, weights.unit, weights.classifier))


class Stages:
    """The check's progress bar (tqdm, stderr): one step per stage, the stage named beside it.

    Called with a stage's name when it begins (the previous one is then done); a no-op
    unless ``enabled``. The check's 10-15 s are mostly MXNet and torch building and running.
    """

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="check", unit="step", file=sys.stderr,
                            leave=False, dynamic_ncols=True)
        self.begun = False

    def __call__(self, stage: str):
        if self.bar is not None:
            if self.begun:
                self.bar.update(1)
            self.bar.set_postfix_str(stage)
        self.begun = True

    def close(self):
        if self.bar is not None:
            self.bar.close()


def check_written(weights: "formats.Weights", target: str, files: List[Path], numeric: bool = True,
                  log=None, device: str = "cpu", tolerance: Optional[float] = None,
                  progress: bool = False) -> CheckReport:
    """Reload the files a conversion wrote and compare them with its source weights.

    ``device`` and ``tolerance`` are the PyTorch side's device and the per-tap relative
    tolerance of the numerical part (default :data:`RTOL`); ``progress`` shows a bar over
    the check's stages on stderr.
    """
    stages = Stages(6 if numeric else 2, progress)
    try:
        return _check_written(weights, target, files, numeric, log, device, tolerance, stages)
    finally:
        stages.close()


def _check_written(weights, target, files, numeric, log, device, tolerance, stages):
    log = log or (lambda msg: None)
    report = CheckReport()
    if target in ("onnx", "openvino"):
        report.notes.append("%s: no tensor-by-tensor check (the exporter checks its graph)"
                            % target)
        log("check: " + report.notes[-1])
        if numeric:
            _numeric(report, weights, log, device, tolerance, onnx_file=files[0],
                     stages=stages)
        return report
    main = files[-1]       # mxnet: PREFIX-0000.params comes after the symbol
    if target == "paddle":
        return _check_paddle(report, weights, main, numeric, log, device, tolerance, stages)
    formats.release(weights.tensors.values())    # the write touched them all
    stages("reading back")
    try:
        source = registry.detect(main)
        fmt = source.format
        raw, metadata = registry.read_raw(source)
        back = formats.canonicalize(raw, metadata, main, fmt, classifier=weights.classifier)
    except DPNError as e:
        report.exact = False
        report.mismatches = ["cannot read the output back: %s" % e]
        log("check: " + report.mismatches[0])
        return report
    stored = {k: tuple(v.shape) for k, v in raw.items()}
    key_problems = compare_shapes(expected_stored_keys(weights, target), stored)
    if (back.arch.name, back.classes) != (weights.arch.name, weights.classes):
        key_problems.append("read back as %s with %d classes" % (back.arch.name, back.classes))
    if fmt in ("mxnet", "safetensors", "timm") and back.classifier != weights.classifier:
        key_problems.append("classifier read back as %s" % back.classifier)
    if fmt in ("safetensors", "timm") and back.labels != weights.labels:
        key_problems.append("class names read back differ from the ones written")
    report.tensors = len(back.tensors)
    stages("comparing %d tensors" % len(back.tensors))
    problems = key_problems + compare_tensors(weights.tensors, back.tensors)
    report.exact = not problems
    report.mismatches = problems[:MAX_LISTED] + (
        ["... %d more" % (len(problems) - MAX_LISTED)] if len(problems) > MAX_LISTED else [])
    if report.exact:
        log("check: %d tensors bit-identical to the source (%s)"
            % (report.tensors, ", ".join(weights.dtypes)))
    else:
        log("check: %d problems, first: %s" % (len(problems), problems[0]))
    if numeric:
        _numeric(report, back, log, device, tolerance, reference=weights, stages=stages)
    return report


def _check_paddle(report, weights, main, numeric, log, device, tolerance, stages):
    """A .pdparams holds PaddleClas's tensors, not the source's: its BatchNorm gammas are
    refolded to epsilon 1e-5 (and dpn68b's c1x1_c is one convolution). So the file is
    compared exactly with what :func:`paddle.to_paddle` makes of the source, and the numbers
    it computes, read back, with the authors' graph on the source."""
    from ..formats import paddle
    stages("reading back")
    try:
        raw, _ = registry.read_file(main)
        back = formats.canonicalize(raw, {}, main, "paddle", classifier=weights.classifier)
    except DPNError as e:
        report.exact = False
        report.mismatches = ["cannot read the output back: %s" % e]
        log("check: " + report.mismatches[0])
        return report
    expected = paddle.to_paddle(weights.arch, weights.classifier, weights.tensors)
    raw = {k: v for k, v in raw.items() if k != paddle.STRUCTURE_KEY}
    stages("comparing %d tensors" % len(raw))
    problems = compare_tensors(expected, raw)
    report.tensors = len(raw)
    report.exact = not problems
    report.mismatches = problems[:MAX_LISTED]
    if report.exact:
        log("check: %d tensors bit-identical to PaddleClas's form of the source (gammas "
            "refolded to epsilon 1e-5)" % report.tensors)
    else:
        log("check: %d problems, first: %s" % (len(problems), problems[0]))
    if numeric:
        _numeric(report, back, log, device, tolerance, reference=weights, stages=stages)
    return report


def _numeric(report: CheckReport, weights, log, device, tolerance, reference=None, onnx_file=None,
             stages=None):
    report.parity, note = numeric_parity(weights, device=device, tolerance=tolerance, log=log,
                                         reference=reference, onnx_file=onnx_file,
                                         progress=stages)
    if note:
        report.notes.append(note)
        log("check: " + note)
    elif report.parity:
        report.numeric = summary(report.parity)
        n, first = report.numeric, report.parity.first_failure
        log("check: MXNet graph vs %s on %dx3x%dx%d, %d taps: logits max rel %.2e, "
            "top-5 agreement %.0f%% (%s)"
            % ("the written %s model" % report.parity.runtime if onnx_file else "the PyTorch DPN",
               n.batch, n.size,
               n.size, len(report.parity.rows), n.max_rel, 100 * n.top5_agreement,
               "ok" if n.passed else "FAILED at %s, tolerance %g"
               % (first.name if first else "the logits' top-5", report.parity.tolerance)))


def summary(parity: "ParityReport") -> NumericReport:
    """The logits row of a per-layer report; ``passed`` means every tap passed."""
    logits = parity.logits
    return NumericReport(parity.batch, parity.size, logits.max_abs, logits.max_rel,
                         parity.top5_agreement, parity.passed)


def compare_shapes(want: Mapping[str, tuple], got: Mapping[str, tuple]) -> List[str]:
    problems = ["missing key %s" % k for k in want if k not in got]
    problems += ["unexpected key %s" % k for k in got if k not in want]
    problems += ["%s stored as %s, expected %s" % (k, got[k], s)
                 for k, s in want.items() if k in got and tuple(got[k]) != tuple(s)]
    return problems


def numeric_parity(weights: "formats.Weights", batch: int = 2, size: int = 64, seed: int = 0,
                   device: str = "cpu", tolerance: Optional[float] = None, log=None,
                   reference: Optional["formats.Weights"] = None,
                   onnx_file: Optional[Path] = None, progress=None):
    """(ParityReport, None), or (None, why it did not run).

    The per-layer report of ``weights`` (the written file, read back) in the PyTorch DPN
    (or of the written ``onnx_file`` in onnxruntime, as it is, or of an OpenVINO IR
    ``NAME.xml`` in OpenVINO at float32) against the authors' graph on
    ``reference`` (the conversion's source; default ``weights`` itself). Both models use a
    global-average head (the authors' 7x7 ``pool5`` is the same function at 224x224 and
    runs only there), so a small seeded batch suffices; float32. ``progress`` is called
    with each stage's name (:func:`dpn_gluon.convert.parity.layer_parity`).
    """
    # look before importing: MXNet and torch cost ~150 MB each, only worth it if both run
    ir = onnx_file is not None and Path(onnx_file).suffix == ".xml"
    runtime = ("mxnet", "openvino" if ir else "onnxruntime" if onnx_file else "torch")
    missing = [m for m in runtime if not importable(m)]
    if missing:
        what = " and ".join({"mxnet": "MXNet"}.get(m, m) for m in missing)
        return None, ("%s %s not installed: numerical check skipped (the written tensors were "
                      "compared exactly with the source)" % (what, "is" if len(missing) == 1 else "are"))
    absent = [m for m in ("dpn_gluon.symbols", "dpn_gluon.torch_dpn") if not importable(m)]
    if absent and not onnx_file:
        return None, "numerical check skipped: %s not available" % ", ".join(absent)
    try:
        for module in runtime:
            importlib.import_module(module)
        from .parity import layer_parity, read_onnx
    except (ImportError, OSError) as e:
        return None, "numerical check skipped: %s" % e
    if ir:
        from ..openvino_ir import read_ir
        candidate = read_ir(onnx_file)
    else:
        candidate = read_onnx(onnx_file) if onnx_file else weights
    mean_max = bool(onnx_file) and candidate.mean_max
    if tolerance is None:       # a --fp16 ONNX file: its measured bound (onnx_export.FP16_RTOL)
        tolerance = FP16_RTOL if onnx_file and getattr(candidate, "dtype", "") == "float16" \
            else RTOL
    report = layer_parity(weights if reference is None else reference, candidate,
                          "openvino" if ir else "onnx" if onnx_file else "torch", device,
                          "float32", batch,
                          MEAN_MAX_SIZE if mean_max else size, seed, tolerance=tolerance,
                          mean_max=mean_max, log=log, progress=progress)
    return report, None
