"""The weights of an ONNX model that ``dpn-convert --to onnx`` wrote (read only).

Its initializers carry the canonical names and values (float32, or float16 with ``--fp16``);
the mean-max head stores the classifier as a 1x1 convolution, reshaped back here. Its
``metadata_props`` carry the architecture, classes, classifier, class names and the input
normalization, mapped to the metadata the other readers give. So the project reads what it
writes: an ``.onnx`` output converts, checks, evaluates and predicts like any checkpoint.

Bounded like every reader: the file is a regular file of at most :data:`MAX_BYTES`, parsed
by onnx's protobuf reader without external data (a model that points outside itself is
refused), and only initializers become arrays. An ONNX model some other tool wrote is not
detected as one of ours; it is refused by name.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .. import variants
from ..errors import CheckpointError
from .base import MAX_TENSORS, require_file

SUFFIX = ".onnx"
SUFFIXES = (SUFFIX,)
#: protobuf's own limit on one message: a larger file is not a model onnx can parse.
MAX_BYTES = 2 ** 31 - 1
#: What every file the exporter writes opens with: ModelProto field 1 (ir_version, a
#: one-byte varint), then field 2, producer_name "dpn-gluon".
_HEAD = b"\x12\x09dpn-gluon"
#: Initializers of the graph that are not weights (Reshape shapes, the mean-max 0.5).
_CONSTANTS = ("const_i64_", "const_half")


def is_ours(head: bytes) -> bool:
    return len(head) >= 13 and head[0] == 0x08 and head[2:13] == _HEAD


def read(path: Path):
    size = require_file(path)
    if size > MAX_BYTES:
        raise CheckpointError("%s: %d bytes, more than an ONNX model can hold" % (path, size))
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        from ..deps import MissingDependency, message
        raise MissingDependency("%s: %s" % (path, message("onnx", "reading an ONNX model"))) \
            from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:     # protobuf's DecodeError, and what onnx raises around it
        raise CheckpointError("%s: not a readable ONNX model: %s"
                              % (path, (str(e) or type(e).__name__).splitlines()[0][:120])) \
            from None
    inits = model.graph.initializer
    if len(inits) > MAX_TENSORS + 8:
        raise CheckpointError("%s: %d initializers, more than any DPN holds" % (path, len(inits)))
    props = {p.key: p.value for p in model.metadata_props}
    head = props.get("head", "global")
    classifier = props.get("classifier", "")
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for init in inits:
        if init.name.startswith(_CONSTANTS):
            continue
        if init.data_location == onnx.TensorProto.EXTERNAL or init.external_data:
            raise CheckpointError("%s: %s is stored outside the file (refused)" % (path, init.name))
        arr = numpy_helper.to_array(init)
        if head == "mean_max" and init.name == classifier + "_weight" and arr.ndim == 4:
            arr = arr.reshape(arr.shape[:2])       # the 1x1 convolution, back to (N, C)
        out[init.name] = arr
    try:
        return out, _metadata(props)
    except CheckpointError as e:
        raise CheckpointError("%s: %s" % (path, e)) from None


def _metadata(props) -> dict:
    """The ONNX properties as the metadata canonical form reads (names as safetensors')."""
    meta = {}
    for ours, theirs in (("arch", "architecture"), ("classes", "classes"),
                         ("classifier", "classifier"), ("labels", "labels")):
        if ours in props:
            meta[theirs] = props[ours]
    norm = variants.NORMALIZATIONS.get(props.get("normalization_name", "authors"))
    if norm is None:
        raise CheckpointError("unknown normalization_name %r in the model's metadata"
                              % props["normalization_name"][:60])
    meta["mean"], meta["std"] = json.dumps(list(norm.mean)), json.dumps(list(norm.std))
    if props.get("weight_set"):
        meta["weight_set"] = props["weight_set"]
    return meta
