"""``--to openvino``: the OpenVINO IR (``NAME.xml`` + ``NAME.bin``) of the ONNX graph that
``--to onnx`` writes, staged into the conversion's transaction like every other target.

What it must stay compatible with: ``openvino.Core().read_model("NAME.xml")`` (the weights
file found beside it), ``dpn-evaluate --runtime openvino NAME.xml`` and ``dpn-convert check
SRC NAME.xml``. The weights are float32 (no fp16 compression); rt_info ``dpn`` carries the
ONNX file's metadata_props (architecture, classes, classifier, head, normalization, labels,
...). The same weights and options give the same bytes (tests/test_openvino_ir.py).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import List

from ..deps import require
from ..safeio.atomic import Transaction

#: The ONNX options the IR takes (the graph it compiles is the ONNX one).
OPTIONS = ("mean_max",)


def write_openvino(weights, files: List[Path], tx: Transaction, log, mean_max: bool = False):
    require("openvino", "--to openvino")
    require("onnx", "--to openvino")
    from ..openvino_ir import from_tensors, write_ir
    model = from_tensors(weights.tensors, weights.arch, weights.classes, weights.classifier,
                         mean_max, labels=weights.labels, normalization=weights.normalization)
    # OpenVINO serializes only to names ending in .xml, which the transaction's temps do
    # not: serialize into a private folder, then copy into the temps (removed on every exit)
    with tempfile.TemporaryDirectory(prefix="dpn-convert-ir-") as private:
        staged = Path(private) / "model.xml"
        write_ir(model, staged, staged.with_suffix(".bin"))
        del model
        for final, written in zip(files, (staged, staged.with_suffix(".bin"))):
            with tx.file(final) as f, open(written, "rb") as src:
                shutil.copyfileobj(src, f, 16 << 20)
