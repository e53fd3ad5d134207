"""Writers: one per target format, fed by :mod:`.formats`, each staging its files into an
:class:`.atomic.Transaction` whose paths :mod:`.outputs` chose and checked (:func:`write`
does all three for a library caller). safetensors is written here, not by the library's
``save_file``: streamed, with a progress bar, plain OSErrors on a full disk, and the same
bytes for the same tensors.

What each target must stay compatible with is listed in :mod:`.formats` (``torch.load``
with ``weights_only=True``, safetensors, ``timm.create_model('local-dir:PATH')``, MXNet's
``mx.model.load_checkpoint``, Gluon's ``load_parameters``, onnxruntime). Writers stream
from the (memory-mapped) canonical arrays; none holds a second copy of the checkpoint.
"""
from __future__ import annotations

import importlib
import json
import struct
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np

from .. import labels as class_labels
from ..errors import DPNError
from ..formats import mxparams
from ..formats.canonical import (
    CROP_PCT,
    INPUT_SIZE,
    INTERPOLATION,
    TARGETS,
    TEST_INPUT_SIZE,
    Weights,
    rename_for,
)
from ..safeio.atomic import Transaction
from ..safeio.outputs import TIMM_CONFIG, TIMM_WEIGHTS, conversion_plan
from . import openvino_writer

#: A bar on every write phase that takes a couple of seconds or more.
PROGRESS_MIN_BYTES = 64 << 20
_CHUNK = 16 << 20

def safetensors_metadata(weights: Weights) -> Dict[str, str]:
    """String metadata: what the tensors are, where they came from, how to feed them."""
    return {
        "format": "pt",
        "architecture": weights.arch.name,
        "classes": str(weights.classes),
        "classifier": weights.classifier,
        "source_file": weights.source.name,
        "source_sha256": weights.sha256 or "",
        "source_format": weights.format,
        "mean": json.dumps(list(weights.norm.mean)),
        "std": json.dumps(list(weights.norm.std)),
        "interpolation": INTERPOLATION,
        "crop_pct": str(CROP_PCT),
        "input_size": json.dumps(list(INPUT_SIZE)),
        "converter": "dpn-convert (dpn-gluon)",
        # the authors' files stay as they were; another weight set says whose it is
        **({} if weights.weight_set == "authors" else {"weight_set": weights.weight_set}),
        **class_labels.to_metadata(weights.labels),
    }


def timm_config(weights: Weights) -> dict:
    """config.json as timm's ``save_config_for_hf`` lays it out, for the authors' protocol.

    ``pretrained_cfg`` holds only fields of timm's PretrainedCfg (timm builds the dataclass
    from it): the authors' test setting (320, a 100 % crop; the mean-max head is timm's
    ``--test-pool``) as ``test_input_size`` / ``test_crop_pct``, the class names as
    ``label_names`` / ``label_descriptions``. The authors' classifier name and provenance go
    under a separate ``dpn`` key.
    """
    return {
        "architecture": weights.arch.name,
        "num_classes": weights.classes,
        "num_features": weights.arch.num_features,
        "global_pool": "avg",
        "pretrained_cfg": {
            "custom_load": False,
            "input_size": list(INPUT_SIZE),
            "test_input_size": list(TEST_INPUT_SIZE),
            "fixed_input_size": False,
            "interpolation": INTERPOLATION,
            "crop_pct": CROP_PCT,
            "test_crop_pct": CROP_PCT,
            "crop_mode": "center",
            "mean": list(weights.norm.mean),
            "std": list(weights.norm.std),
            "num_classes": weights.classes,
            "pool_size": [7, 7],
            "first_conv": "features.conv1_1.conv",
            "classifier": "classifier",
            "license": weights.license,
            "origin_url": "https://github.com/cypw/DPNs",
            "paper_ids": "arXiv:1707.01629",
            "paper_name": "Dual Path Networks",
            **class_labels.timm_fields(weights.labels),
        },
        "dpn": {
            "classifier": weights.classifier,
            "source_file": weights.source.name,
            "source_sha256": weights.sha256,
            "source_format": weights.format,
        },
    }


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
    taken = openvino_writer.OPTIONS if target == "openvino" else ("mean_max", "fp16", "opset")
    extra = {k: v for k, v in (onnx_options or {}).items() if k in taken} \
        if target in ("onnx", "openvino") else {}
    _WRITERS[target](weights, files, tx, log or (lambda msg: None), **extra)


def check_onnx_options(target: str, options: Optional[Mapping]) -> None:
    """Refuse ONNX-only options (``--mean-max``, ``--fp16``, ``--opset``) for other targets."""
    given = sorted(k for k, v in (options or {}).items() if v not in (None, False)
                   and not (target == "openvino" and k in openvino_writer.OPTIONS))
    if given and target != "onnx":
        raise DPNError("--%s applies to --to onnx only, not --to %s"
                       % (given[0].replace("_", "-"), target))


def _contiguous(arr: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian, without a copy where it already is (np.ascontiguousarray
    turns 0-d into 1-d)."""
    little = arr.dtype.newbyteorder("<")
    if arr.flags.c_contiguous and arr.dtype == little:
        return arr
    return np.ascontiguousarray(arr, dtype=little).reshape(arr.shape)


def _write_torch(weights: Weights, files: List[Path], tx: Transaction, log):
    # torch.save's zip format written from the arrays (torchzip.py): no torch import (about
    # a second and ~200 MB of RSS) and the bytes streamed from the memory-mapped source
    from ..formats.torchzip import write_state_dict
    out, = files
    with tx.file(out) as f, _Progress(f, weights.nbytes, out.name) as bar:
        write_state_dict(f, rename_for(weights, "timm"), progress=bar.update)


#: numpy dtype -> safetensors dtype (the ones a checkpoint here can hold).
_ST_DTYPE = {"float16": "F16", "float32": "F32", "float64": "F64", "int64": "I64",
             "int32": "I32", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def write_safetensors(f, tensors, metadata: Dict[str, str]) -> None:
    """The safetensors format, streamed from the arrays: u64 header length, the JSON header
    (``__metadata__`` first, keys sorted, so the same tensors give the same bytes: the
    library's ``save_file`` orders metadata by a hash map, differently on every run), padded
    with spaces to 8 bytes, then each tensor's bytes in header order."""
    arrays = [(name, _contiguous(np.asarray(arr))) for name, arr in tensors.items()]
    header = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, arr in arrays:
        header[name] = {"dtype": _ST_DTYPE[arr.dtype.name], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    f.write(struct.pack("<Q", len(text)) + text)
    for _, arr in arrays:
        flat = memoryview(arr.reshape(-1).view(np.uint8))
        for start in range(0, arr.nbytes, _CHUNK):
            f.write(flat[start:start + _CHUNK])


def _write_safetensors(weights: Weights, files: List[Path], tx: Transaction, log):
    out, = files
    with tx.file(out) as f, _Progress(f, weights.nbytes, out.name) as bar:
        write_safetensors(bar, rename_for(weights, "timm"), safetensors_metadata(weights))


def _write_timm(weights: Weights, files: List[Path], tx: Transaction, log):
    out, = files
    with tx.path(out, directory=True) as tmp:
        with open(tmp / TIMM_WEIGHTS, "wb") as f, \
                _Progress(f, weights.nbytes, "%s/%s" % (out.name, TIMM_WEIGHTS)) as bar:
            write_safetensors(bar, rename_for(weights, "timm"), safetensors_metadata(weights))
        (tmp / TIMM_CONFIG).write_text(json.dumps(timm_config(weights), indent=2) + "\n",
                                       encoding="utf-8")
        # the Hub's model card; the conversion rewrites it with the check's summary
        from .card import CARD, model_card
        (tmp / CARD).write_text(model_card(weights), encoding="utf-8")


def _write_gluon(weights: Weights, files: List[Path], tx: Transaction, log):
    out, = files
    with tx.file(out) as f, _Progress(f, weights.nbytes, out.name) as bar:
        mxparams.write(bar, rename_for(weights, "gluon"))


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


def _write_mxnet(weights: Weights, files: List[Path], tx: Transaction, log):
    symbol_file, params_file = files
    text = symbol_json(weights)
    with tx.file(params_file) as f, _Progress(f, weights.nbytes, params_file.name) as bar:
        mxparams.write(bar, rename_for(weights, "mxnet"))
    if text is None:
        log("MXNet (or dpn_gluon.symbols) is not available: wrote only %s, no %s"
            % (params_file, symbol_file.name))
        return
    with tx.file(symbol_file) as f:
        f.write(text.encode("utf-8"))


def _write_onnx(weights: Weights, files: List[Path], tx: Transaction, log,
                mean_max: bool = False, fp16: bool = False, opset: Optional[int] = None):
    from ..deps import require
    require("onnx", "--to onnx")
    from ..onnx_graph import DEFAULT_OPSET, export_onnx
    out, = files
    with tx.path(out) as tmp:      # export_onnx replaces the (empty) temp atomically itself
        try:
            export_onnx(weights.tensors, tmp, weights.arch.name, weights.classes,
                        weights.classifier, mean_max=mean_max,
                        opset=DEFAULT_OPSET if opset is None else opset, force=True, fp16=fp16,
                        labels=weights.labels, normalization=weights.normalization)
        except DPNError as e:      # it names the path it was given: say which output failed
            raise DPNError(str(e).replace(str(tmp), str(out))) from None


def _write_paddle(weights: Weights, files: List[Path], tx: Transaction, log):
    # PaddleClas's names, (in, out) classifier and BatchNorm epsilon 1e-5, numpy's pickling:
    # what paddle.save writes, without paddle (formats/paddle.py)
    from ..formats import paddle
    out, = files
    state = paddle.to_paddle(weights.arch, weights.classifier, weights.tensors)
    log("PaddleClas's BatchNorm epsilon is 1e-5: each gamma is rescaled so that the graph "
        "computes what the source's does")
    if weights.normalization != "imagenet":
        log("these weights expect the %s normalization, not PaddleClas's default ImageNet one: "
            "set NormalizeImage mean %s and std %s (of 0..1 pixels) in the config"
            % (weights.normalization, list(weights.norm.mean), list(weights.norm.std)))
    with tx.file(out) as f, _Progress(f, weights.nbytes, out.name) as bar:
        paddle.write(bar, state, paddle.structure_map(weights.arch))


_WRITERS = {"paddle": _write_paddle, "torch": _write_torch, "safetensors": _write_safetensors, "timm": _write_timm,
            "gluon": _write_gluon, "mxnet": _write_mxnet, "onnx": _write_onnx,
            "openvino": openvino_writer.write_openvino}


class _Progress:
    """A write-only file wrapper that shows a byte progress bar on stderr for big files
    (tqdm, silent when stderr is not a terminal); closes the bar on leaving the block."""

    def __init__(self, f, total: int, desc: str):
        self.f = f
        self.bar = None
        if total >= PROGRESS_MIN_BYTES:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr,
                            leave=False, disable=None)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def update(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def write(self, data) -> int:
        n = self.f.write(data)
        self.update(memoryview(data).nbytes)
        return n

    def flush(self):
        self.f.flush()

    def __getattr__(self, name):
        return getattr(self.f, name)
