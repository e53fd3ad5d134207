"""``convert()``: one conversion end to end, as a library call (the CLI is a thin shell on it).

read (detect the format) -> canonical tensors validated against the variant table -> rename
for the target -> write atomically -> check (:mod:`.formats`, :mod:`.writers`, :mod:`.check`).
Every output (the target's files and the ``--report``) is planned by :mod:`.outputs` before
anything is read or written, and lands in one :class:`.atomic.Transaction`: a failure or an
interruption anywhere, the check and the report included, leaves what was there before. The
source is opened read-only and never written.
Values no trained network has (NaN/Inf, BatchNorm variances <= 0; :mod:`.sanity`) are
warnings naming the tensors, or with ``strict`` an error before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Union

from .. import deps
from .. import labels as class_labels
from ..errors import DPNError
from ..formats import canonical as formats
from ..formats import registry, sanity
from ..safeio.outputs import TARGETS, conversion_plan
from . import card, writers
from .check import CheckReport, check_written, importable

PathLike = Union[str, Path]


@dataclass
class ConversionResult:
    source: str
    source_format: str
    target: str
    outputs: List[str]
    arch: str
    classes: int
    classifier: str
    tensors: int
    dtypes: List[str]
    source_sha256: Optional[str] = None
    report: Optional[str] = None
    check: Optional[CheckReport] = None
    notes: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.check is None or self.check.ok

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("source", "source_format", "target", "outputs", "arch",
                                           "classes", "classifier", "tensors", "dtypes",
                                           "source_sha256", "notes", "warnings")}
        d["check"] = self.check.to_dict() if self.check else None
        d["ok"] = self.ok
        return d


def convert(src: PathLike, to: str, out: Optional[PathLike] = None, arch: Optional[str] = None,
            classifier: Optional[str] = None, epoch: Optional[int] = None, force: bool = False,
            check: bool = True, numeric: bool = True, strict: bool = False, log=None,
            device: str = "cpu", tolerance: Optional[float] = None,
            onnx_options: Optional[Mapping] = None,
            labels: Optional[PathLike] = None, license: Optional[str] = None,
            progress: bool = False, report: Optional[PathLike] = None) -> ConversionResult:
    """Convert the checkpoint at ``src`` to format ``to``; see :mod:`dpn_gluon.formats.canonical`.

    ``out`` is the output path (for ``mxnet``, the prefix), or a folder for the default
    name. ``device`` and ``tolerance`` go to the check's per-layer parity
    (:func:`dpn_gluon.convert.check.check_written`; ``progress``: its bar on stderr);
    ``report`` is where the check's per-layer plot goes (.png/.svg/.html), written only when
    the numeric check ran. ``onnx_options`` (``mean_max``, ``fp16``, ``opset``) go to the
    ONNX writer; refused for other targets. ``labels`` is a class-names file
    (:func:`dpn_gluon.labels.read_file`) that replaces the names the source carries;
    ``license`` goes into a timm folder's card and config. Raises
    :class:`dpn_gluon.errors.DPNError` on bad input (with ``strict``, on wrong values too),
    leaving no output.
    """
    notes: List[str] = []

    def note(msg: str):
        notes.append(msg)
        if log:
            log(msg)

    if to not in TARGETS:
        raise DPNError("unknown target format %r (choose from %s)" % (to, ", ".join(TARGETS)))
    writers.check_onnx_options(to, onnx_options)
    if to in ("onnx", "openvino"):      # before reading a checkpoint of hundreds of MB
        deps.require("onnx", "--to " + to)
    if to == "openvino":
        deps.require("openvino", "--to openvino")
    source = registry.detect(registry.resolve(src, epoch))      # resolved and detected once
    path, fmt = source.path, source.format
    plan = conversion_plan(path, fmt, to, out, force, report)   # refuse early, before any work
    weights = formats.read_source(source, arch=arch, classifier=classifier)
    if labels is not None:
        weights.labels = list(class_labels.read_file(labels, weights.classes).names)
    if license is not None:
        weights.license = card.check_license(license)
    if log:
        log("read %s: %s, %s, %d classes, classifier %s, %d tensors (%s)"
            % (weights.source, weights.format, weights.arch.name, weights.classes,
               weights.classifier, len(weights.tensors), ", ".join(weights.dtypes)))
    warned: List[str] = []
    sanity.enforce(sanity.check_values(weights.tensors), strict, warned.append, str(path))
    formats.release(weights.tensors.values())     # the scan mapped every page in
    for msg in warned if log else ():
        log("warning: " + msg)
    if warned and check and numeric and importable("mxnet") and importable("torch"):
        # it would run, and NaN logits on both sides would read as a failed conversion
        note("numeric check skipped: the source's values are wrong (see the warnings); "
             "the tensors are still compared bit for bit")
        numeric = False
    written = None
    with plan.transaction() as tx:
        writers.stage(weights, to, plan.files, tx, log=note, onnx_options=onnx_options)
        tx.commit()
        files = [f for f in plan.files if f.exists()]
        if log:
            log("wrote " + ", ".join(str(f) for f in files))
        checked = (check_written(weights, to, files, numeric=numeric, log=log, device=device,
                                 tolerance=tolerance, progress=progress) if check else None)
        if checked is not None and to == "timm":     # the card gets the check's summary
            card.rewrite(plan.files[0], weights, checked)
        where = plan.output("report")
        if where is not None and checked is not None and checked.parity is not None:
            with tx.file(where) as f:
                f.write(checked.parity.render(where))
            tx.commit()
            written = str(where)
    return ConversionResult(
        source=str(weights.source), source_format=weights.format, target=to,
        outputs=[str(f) for f in files], arch=weights.arch.name, classes=weights.classes,
        classifier=weights.classifier, tensors=len(weights.tensors), dtypes=weights.dtypes,
        source_sha256=weights.sha256, report=written, check=checked, notes=notes,
        warnings=warned)
