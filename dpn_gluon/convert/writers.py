"""Writers: one per target format, each atomic (see :mod:`.atomic`), fed by :mod:`.formats`.

What each target must stay compatible with is listed in :mod:`.formats` (``torch.load``
with ``weights_only=True``, safetensors, ``timm.create_model('local-dir:PATH')``, MXNet's
``mx.model.load_checkpoint``, Gluon's ``load_parameters``, onnxruntime). Writers stream
from the (memory-mapped) canonical arrays; none holds a second copy of the checkpoint.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from ..errors import DPNError
from . import mxparams
from .atomic import atomic_path, atomic_write, check_writable, check_writable_folder
from .formats import (CROP_PCT, INPUT_SIZE, INTERPOLATION, MEAN, STD, TARGETS, TIMM_CONFIG,
                      TIMM_WEIGHTS, Weights, rename_for)

PathLike = Union[str, Path]

_SUFFIX = {"torch": ".pth", "safetensors": ".safetensors", "gluon": ".params", "onnx": ".onnx",
           "timm": "", "mxnet": ""}


def default_output(src: Path, src_format: str, target: str, out: Optional[PathLike] = None) -> Path:
    """Where ``target`` goes: ``out`` itself, a name derived from SRC inside the folder
    ``out``, or beside SRC (``dpn68-0000.params`` -> ``dpn68.pth``). For ``mxnet`` this is
    the prefix of ``PREFIX-symbol.json`` / ``PREFIX-0000.params``; for ``timm``, ``out`` is
    always the timm folder itself."""
    if out is not None and (target == "timm" or not Path(out).is_dir()):   # timm: OUT is the folder
        out = Path(out)
        if target == "mxnet" and out.name.endswith(".params") and out.stem[-5:-4] == "-" \
                and out.stem[-4:].isdigit():
            return out.with_name(out.stem[:-5])
        return out
    stem = src.name
    if src_format == "mxnet" and stem.endswith(".params") and stem[-12:-11] == "-":
        stem = stem[:-12]
    elif src_format != "timm":
        stem = src.stem if src.suffix else stem
    folder = Path(out) if out is not None else src.parent
    return folder / (stem + _SUFFIX[target])


def output_files(target: str, out: Path) -> List[Path]:
    """The paths a target writes at ``out``."""
    if target == "mxnet":
        return [Path("%s-symbol.json" % out), Path("%s-0000.params" % out)]
    return [out]


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
        "mean": json.dumps(list(MEAN)),
        "std": json.dumps(list(STD)),
        "interpolation": INTERPOLATION,
        "crop_pct": str(CROP_PCT),
        "input_size": json.dumps(list(INPUT_SIZE)),
        "converter": "dpn-convert (dpn-gluon)",
    }


def timm_config(weights: Weights) -> dict:
    """config.json as timm's ``save_config_for_hf`` lays it out, for the authors' protocol.

    ``pretrained_cfg`` holds only fields of timm's PretrainedCfg (timm builds the dataclass
    from it); the authors' classifier name and provenance go under a separate ``dpn`` key.
    """
    return {
        "architecture": weights.arch.name,
        "num_classes": weights.classes,
        "num_features": weights.arch.num_features,
        "global_pool": "avg",
        "pretrained_cfg": {
            "custom_load": False,
            "input_size": list(INPUT_SIZE),
            "fixed_input_size": False,
            "interpolation": INTERPOLATION,
            "crop_pct": CROP_PCT,
            "crop_mode": "center",
            "mean": list(MEAN),
            "std": list(STD),
            "num_classes": weights.classes,
            "pool_size": [7, 7],
            "first_conv": "features.conv1_1.conv",
            "classifier": "classifier",
            "license": "apache-2.0",
            "origin_url": "https://github.com/cypw/DPNs",
            "paper_ids": "arXiv:1707.01629",
            "paper_name": "Dual Path Networks",
        },
        "dpn": {
            "classifier": weights.classifier,
            "source_file": weights.source.name,
            "source_sha256": weights.sha256,
            "source_format": weights.format,
        },
    }


def write(weights: Weights, target: str, out: Path, force: bool = False,
          log=None) -> List[Path]:
    """Write ``weights`` as ``target`` at ``out`` (see :func:`default_output`); atomic."""
    if target not in TARGETS:
        raise DPNError("unknown target format %r (choose from %s)" % (target, ", ".join(TARGETS)))
    files = check_outputs(weights.source, weights.format, target, out, force)
    _WRITERS[target](weights, out, force, log or (lambda msg: None))
    return [f for f in files if f.exists()]


def check_outputs(src: Path, src_format: str, target: str, out: Path,
                  force: bool = False) -> List[Path]:
    """The files ``target`` will write at ``out``, after refusing the input itself, existing
    files (without ``force``) and missing or read-only folders: before any work is done."""
    files = output_files(target, out)
    sources = {_real(src)}
    if src_format == "timm":
        sources.add(_real(src / TIMM_WEIGHTS))
    for path in files:
        if _real(path) in sources:
            raise DPNError("%s: the output would overwrite the input; choose another with -o"
                           % path)
        if target == "timm":
            check_writable_folder(path, force)
        else:
            check_writable(path, force)
    return files


def _contiguous(arr: np.ndarray) -> np.ndarray:
    """C-contiguous without a copy where it already is (np.ascontiguousarray turns 0-d into 1-d)."""
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _write_torch(weights: Weights, out: Path, force: bool, log):
    # torch.save's zip format written from the arrays (torchzip.py): no torch import (about
    # a second and ~200 MB of RSS) and the bytes streamed from the memory-mapped source
    from .torchzip import write_state_dict
    with atomic_write(out, force) as f:
        bar = _Progress(f, weights.nbytes, out.name).bar
        write_state_dict(f, rename_for(weights, "timm"),
                         progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()


def _write_safetensors(weights: Weights, out: Path, force: bool, log):
    from safetensors.numpy import save_file
    tensors = OrderedDict((k, _contiguous(v)) for k, v in rename_for(weights, "timm").items())
    with atomic_path(out, force) as tmp:
        save_file(tensors, str(tmp), metadata=safetensors_metadata(weights))


def _write_timm(weights: Weights, out: Path, force: bool, log):
    from safetensors.numpy import save_file
    tensors = OrderedDict((k, _contiguous(v)) for k, v in rename_for(weights, "timm").items())
    with atomic_path(out, force, directory=True) as tmp:
        save_file(tensors, str(tmp / TIMM_WEIGHTS), metadata=safetensors_metadata(weights))
        (tmp / TIMM_CONFIG).write_text(json.dumps(timm_config(weights), indent=2) + "\n",
                                       encoding="utf-8")


def _write_gluon(weights: Weights, out: Path, force: bool, log):
    with atomic_write(out, force) as f:
        mxparams.write(_Progress(f, weights.nbytes, out.name), rename_for(weights, "gluon"))


def symbol_json(weights: Weights) -> Optional[str]:
    """The authors' graph for these weights as ``-symbol.json`` text; None without MXNet."""
    try:
        importlib.import_module("mxnet")    # dpn_gluon.symbols imports it only when building
        from ..symbols import get_symbol
    except ImportError:
        return None
    sym = get_symbol(weights.arch.name, weights.classes, weights.classifier,
                     head="authors", softmax=True)
    return sym.tojson()


def _write_mxnet(weights: Weights, out: Path, force: bool, log):
    symbol_file, params_file = output_files("mxnet", out)
    text = symbol_json(weights)   # built first: a failure leaves no file behind
    with atomic_write(params_file, force) as f:
        mxparams.write(_Progress(f, weights.nbytes, params_file.name), rename_for(weights, "mxnet"))
    if text is None:
        log("MXNet (or dpn_gluon.symbols) is not available: wrote only %s, no %s"
            % (params_file, symbol_file.name))
        return
    with atomic_write(symbol_file, force) as f:
        f.write(text.encode("utf-8"))


def _write_onnx(weights: Weights, out: Path, force: bool, log):
    try:
        from .onnx_export import export_onnx
    except ImportError as e:
        raise DPNError("--to onnx is not available: %s" % e) from None
    export_onnx(weights.tensors, out, weights.arch.name, weights.classes, weights.classifier,
                mean_max=False, force=force)


_WRITERS = {"torch": _write_torch, "safetensors": _write_safetensors, "timm": _write_timm,
            "gluon": _write_gluon, "mxnet": _write_mxnet, "onnx": _write_onnx}


class _Progress:
    """A write-only file wrapper that shows a byte progress bar on stderr for big files."""

    MIN_BYTES = 64 << 20

    def __init__(self, f, total: int, desc: str):
        self.f = f
        self.bar = None
        if total >= self.MIN_BYTES:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr,
                            leave=False, disable=None)

    def write(self, data) -> int:
        n = self.f.write(data)
        if self.bar is not None:
            self.bar.update(memoryview(data).nbytes)
        return n

    def flush(self):
        self.f.flush()

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __del__(self):
        if self.bar is not None:
            self.bar.close()
