"""Writers: every target, each staging its files into an :class:`.atomic.Transaction` whose
paths :mod:`.outputs` chose and checked (:func:`write` does all three for a library caller).

A checkpoint format writes itself (its module in :mod:`dpn_gluon.formats`, through
:data:`.registry.FORMATS`); this layer adds what is built above the formats: the MXNet
``-symbol.json`` graph (it needs MXNet), a timm folder's model card, and the ONNX export.
What each target must stay compatible with: ``torch.load`` with ``weights_only=True``,
safetensors, ``timm.create_model('local-dir:PATH')``, MXNet's ``mx.model.load_checkpoint``,
Gluon's ``load_parameters``, PaddleClas's ``set_state_dict(paddle.load(...))``, onnxruntime.
Writers stream from the (memory-mapped) canonical arrays; none holds a second copy.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import List, Mapping, Optional

from ..errors import DPNError
from ..formats import registry
from ..formats.canonical import Weights
from ..safeio.atomic import Transaction
from ..safeio.outputs import TARGETS, conversion_plan
from . import openvino_writer


def write(weights: Weights, target: str, out: Path, force: bool = False,
          log=None, onnx_options: Optional[Mapping] = None) -> List[Path]:
    """Write ``weights`` as ``target`` at ``out`` (:func:`.outputs.target_path`), checked by
    :mod:`.outputs` and committed atomically; returns the files written. ``onnx_options``
    (``mean_max``, ``fp16``, ``opset``) go to the ONNX exporter."""
    if target not in TARGETS:
        raise DPNError("unknown target format %r (choose from %s)" % (target, ", ".join(TARGETS)))
    check_onnx_options(target, onnx_options)
    plan = conversion_plan(weights.source, weights.format, target, out, force)
    with plan.transaction() as tx:
        stage(weights, target, plan.files, tx, log, onnx_options)
        tx.commit()
    return [f for f in plan.files if f.exists()]


def check_outputs(src: Path, src_format: str, target: str, out: Path,
                  force: bool = False) -> List[Path]:
    """The files ``target`` will write at ``out``, after every refusal of :mod:`.outputs`."""
    return conversion_plan(src, src_format, target, out, force).files


def stage(weights: Weights, target: str, files: List[Path], tx: Transaction, log=None,
          onnx_options: Optional[Mapping] = None) -> None:
    """Write ``weights`` as ``target`` into temps of ``tx`` for ``files``
    (:func:`.outputs.output_files`); the caller commits."""
    log = log or (lambda msg: None)
    if target == "onnx":
        _write_onnx(weights, files, tx, **dict(onnx_options or {}))
        return
    if target == "openvino":
        given = {k: v for k, v in (onnx_options or {}).items() if k in openvino_writer.OPTIONS}
        openvino_writer.write_openvino(weights, files, tx, log, **given)
        return
    extra = {}
    if target == "mxnet":
        extra["graph"] = symbol_json(weights)
    elif target == "timm":
        # the Hub's model card; the conversion rewrites it with the check's summary
        from .card import model_card
        extra["card"] = model_card(weights)
    registry.FORMATS[target].write(weights, files, tx, log, **extra)


def check_onnx_options(target: str, options: Optional[Mapping]) -> None:
    """Refuse ONNX-only options (``--mean-max``, ``--fp16``, ``--opset``) for other targets."""
    given = sorted(k for k, v in (options or {}).items() if v not in (None, False)
                   and not (target == "openvino" and k in openvino_writer.OPTIONS))
    if given and target != "onnx":
        raise DPNError("--%s applies to --to onnx only, not --to %s"
                       % (given[0].replace("_", "-"), target))


def symbol_json(weights: Weights) -> Optional[str]:
    """The inference graph for these weights (logits; no ``SoftmaxOutput``, so
    ``SymbolBlock.imports`` needs no label: :func:`dpn_gluon.symbols.inference_symbol`) as
    ``-symbol.json`` text; None without MXNet."""
    try:
        importlib.import_module("mxnet")    # dpn_gluon.symbols imports it only when building
        from ..symbols import inference_symbol
    except ImportError:
        return None
    return inference_symbol(weights.arch.name, weights.classes, weights.classifier).tojson()


def _write_onnx(weights: Weights, files: List[Path], tx: Transaction,
                mean_max: bool = False, fp16: bool = False, opset: Optional[int] = None):
    from ..deps import require
    require("onnx", "--to onnx")
    from ..onnx_graph import DEFAULT_OPSET, onnx_bytes
    out, = files
    # built in memory, then written through this command's transaction like every output
    data = onnx_bytes(weights.tensors, weights.arch.name, weights.classes, weights.classifier,
                      mean_max=mean_max, opset=DEFAULT_OPSET if opset is None else opset,
                      fp16=fp16, labels=weights.labels, normalization=weights.normalization,
                      metadata=None if weights.weight_set == "authors" else
                      {"weight_set": weights.weight_set})
    with tx.file(out) as f:
        f.write(data)
