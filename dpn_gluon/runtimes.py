"""Where dpn-evaluate and dpn-predict run a checkpoint: MXNet Gluon, PyTorch or ONNX Runtime.

:func:`load_runtime` returns a :class:`Runtime`: a callable from a float32 NCHW numpy batch
(already preprocessed by :mod:`dpn_gluon.data.preprocess`, the same for every runtime) to
float32 logits ``(n, classes)``. Every runtime starts from :func:`read_model`, the one place
that reads a checkpoint (any format dpn-convert reads) into canonical tensors.

- ``gluon``: the Gluon DPN of :mod:`dpn_gluon.model` (as :func:`dpn_gluon.load_checkpoint`),
  hybridized; several MXNet devices split each
  batch with ``mx.gluon.utils.split_and_load`` (data parallel over one machine's GPUs).
- ``torch``: :func:`dpn_gluon.torch_dpn.from_canonical` (timm's layout), eval mode,
  ``torch.inference_mode``; one device.
- ``onnx``: :func:`dpn_gluon.onnx_graph.onnx_bytes`, built in memory, in an
  ``onnxruntime.InferenceSession`` (CUDA provider on a GPU device when available).
- ``openvino``: the same ONNX graph read by OpenVINO and compiled for the CPU at
  ``precision`` (fp32 unless asked; :mod:`dpn_gluon.openvino_ir` sets it explicitly, never
  OpenVINO's own bfloat16 default); also an IR dpn-convert wrote (``NAME.xml``), run as it is.

``precision`` (``fp32``, ``bf16``, ``int8``) applies to openvino; the other runtimes run fp32
only. ``int8`` needs a :class:`Calibration` (``--calibration DIR``, the user's images
through the command's own preprocessing): four images in five calibrate NNCF's
post-training quantization, the fifth are held out, and the runtime reports the int8
model's top-1 agreement with the fp32 one on them (:attr:`Runtime.quantization`).

MXNet, torch and onnxruntime are imported only by the runtime that needs them; a missing one
is a one-line :class:`~dpn_gluon.deps.MissingDependency` naming the extra that installs it
and the runtimes that would work here.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from .deps import require_choice
from .errors import CheckpointError, DPNError
from .files import require_regular

RUNTIMES = ("gluon", "torch", "onnx", "openvino")
#: What each runtime imports (checked in this order).
RUNTIME_PACKAGES = {"gluon": ("mxnet",), "torch": ("torch",), "onnx": ("onnxruntime", "onnx"),
                    "openvino": ("openvino", "onnx")}
#: Every precision any runtime offers (--precision); which runtime offers which: PRECISIONS.
ALL_PRECISIONS = ("fp32", "bf16", "int8")
PRECISIONS = {"gluon": ("fp32",), "torch": ("fp32",), "onnx": ("fp32",),
              "openvino": ALL_PRECISIONS}


@dataclass
class Runtime:
    kind: str
    arch: str
    classes: int
    classifier: str
    devices: List[str]
    forward: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    #: class names the checkpoint file carries (its metadata), None when it has none
    labels: Optional[List[str]] = None
    #: the input normalization the weights expect (variants.NORMALIZATIONS): what the
    #: preprocessing applies before this runtime sees a batch
    normalization: str = "authors"
    #: the precision it computes in (set explicitly where the runtime has a choice)
    precision: str = "fp32"
    #: int8 only: calibration images, held-out images, top-1 agreement with fp32 on them
    quantization: Optional[dict] = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.forward(np.ascontiguousarray(batch, dtype=np.float32)),
                          dtype=np.float32)


def read_weights(path):
    """Any checkpoint dpn-convert reads, as canonical :class:`~dpn_gluon.formats.canonical.Weights`.

    The authors' ``PREFIX-0000.params`` (or ``PREFIX``), a Gluon ``.params``, a PyTorch
    ``.pth`` (timm's keys), ``.safetensors``, a timm folder or PaddleClas's ``.pdparams``:
    detected from the content, validated against the variant table.
    """
    from .formats.canonical import read
    from .formats.registry import resolve
    source = resolve(path)
    if not source.is_dir():       # a FIFO or a device would block or read without end
        require_regular(source, "checkpoint file")
    return read(source, hash_source=False)


def read_model(path):
    """(Arch, classes, classifier name, canonical tensors, carried class names or None) of a
    checkpoint trained on the authors' normalization: what dpn-train starts from (its recipe
    feeds that normalization only)."""
    w = read_weights(path)
    if w.normalization != "authors":
        raise CheckpointError("%s: %s weights expect the %s input normalization; dpn-train's "
                              "recipe feeds the authors' (pixel - (124, 117, 104)) * 0.0167"
                              % (path, w.weight_set, w.normalization))
    return w.arch, w.classes, w.classifier, w.tensors, w.labels


def parse_devices(spec: str) -> Tuple[str, List[int]]:
    """``cpu`` / ``gpu`` / ``gpu:0,1`` / ``cuda`` / ``cuda:1`` -> ('cpu'|'gpu', [ids]).

    ``cpu:0,1`` (several MXNet CPU contexts) exercises the Gluon batch split without a GPU.
    """
    spec = (spec or "cpu").strip().lower()
    kind, _, ids = spec.partition(":")
    if kind == "cpu" and not ids:
        return "cpu", []
    if kind in ("cpu", "gpu", "cuda"):
        try:
            numbers = [int(i) for i in ids.split(",")] if ids else [0]
        except ValueError:
            numbers = []
        if numbers and all(i >= 0 for i in numbers) and len(set(numbers)) == len(numbers):
            return ("cpu" if kind == "cpu" else "gpu"), numbers
    raise DPNError("bad --device %r (use cpu, gpu, gpu:0,1, cuda or cuda:N)" % spec)


@dataclass
class Calibration:
    """``--calibration DIR``: the user's images (any depth, sorted), preprocessed as the
    command's inputs are (``size``, ``protocol``)."""

    folder: Path
    size: int
    protocol: str = "authors"
    #: the weights' input normalization (set from the checkpoint by load_runtime)
    normalization: str = "authors"
    #: images read at most (memory: 3 x size x size float32 each)
    limit: int = 500
    #: one image in ``held_out_every`` is held out (never calibrates) to measure agreement
    held_out_every: int = 5

    def files(self) -> List[Path]:
        from .data.datasets import IMAGE_SUFFIXES
        folder = Path(self.folder)
        if not folder.is_dir():
            raise DPNError("--calibration %s: not a folder" % folder)
        found = sorted(p for p in folder.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:self.limit]
        if len(found) < self.held_out_every:
            raise DPNError("--calibration %s: %d image(s); int8 needs at least %d (a few "
                           "hundred calibrate well)" % (folder, len(found), self.held_out_every))
        return found

    def load(self) -> Tuple[np.ndarray, np.ndarray]:
        """(calibration batch, held-out batch); an unreadable image is one line."""
        from .data.preprocess import preprocess
        files = self.files()
        arrays = [preprocess(f, self.size, self.protocol, name=str(f),
                             normalization=self.normalization) for f in files]
        held = [i % self.held_out_every == self.held_out_every - 1 for i in range(len(files))]
        return (np.stack([a for a, h in zip(arrays, held) if not h]),
                np.stack([a for a, h in zip(arrays, held) if h]))


def load_runtime(kind: str, checkpoint, devices: str = "cpu", mean_max: bool = False,
                 precision: str = "fp32", threads: Optional[int] = None,
                 calibration: Optional[Calibration] = None) -> Runtime:
    """A :class:`Runtime` of ``kind`` (gluon, torch, onnx, openvino) for a checkpoint file,
    computing in ``precision``; ``threads`` (openvino only) sets its thread count;
    ``calibration`` is required by, and only by, ``int8``."""
    if kind not in RUNTIMES:
        raise DPNError("unknown runtime %r (choose from %s)" % (kind, ", ".join(RUNTIMES)))
    check_precision(kind, precision)
    if (precision == "int8") != (calibration is not None):
        raise DPNError("--precision int8 needs --calibration DIR (a few hundred of your "
                       "images)" if precision == "int8" else
                       "--calibration applies to --precision int8 only")
    dev_kind, ids = parse_devices(devices)
    require_runtime(kind)
    if kind == "openvino":
        from .openvino_ir import check_precision as cpu_has
        cpu_has(precision)              # before the checkpoint is read: one line, no work
        if precision == "int8":
            from .openvino_ir import import_nncf
            import_nncf()
        from .openvino_ir import is_ir
        if is_ir(checkpoint):
            if precision == "int8":
                raise DPNError("%s: --precision int8 quantizes a checkpoint, not an IR" % checkpoint)
            return _openvino_ir(checkpoint, dev_kind, ids, mean_max, precision, threads)
    w = read_weights(checkpoint)
    model = (w.arch, w.classes, w.classifier, w.tensors)
    quantization = None
    if kind == "openvino":
        if calibration is not None:     # calibrated on what the weights will be fed
            calibration = dataclasses.replace(calibration, normalization=w.normalization)
        forward, names, quantization = _openvino(checkpoint, model, dev_kind, ids, mean_max,
                                                 precision, threads, w.labels, calibration)
    else:
        make = {"gluon": _gluon, "torch": _torch, "onnx": _onnx}[kind]
        forward, names = make(checkpoint, model, dev_kind, ids, mean_max)
    return Runtime(kind, w.arch.name, int(w.classes), w.classifier, names, forward, w.labels,
                   w.normalization, precision, quantization)


def check_precision(kind: str, precision: str) -> None:
    """Refuse a precision the runtime does not offer, in one line."""
    if precision not in ALL_PRECISIONS:
        raise DPNError("unknown --precision %r (choose from %s)"
                       % (precision, ", ".join(ALL_PRECISIONS)))
    if precision not in PRECISIONS[kind]:
        offer = [k for k in RUNTIMES if precision in PRECISIONS[k]]
        raise DPNError("--runtime %s runs %s only; --precision %s needs --runtime %s"
                       % (kind, "/".join(PRECISIONS[kind]), precision, " or ".join(offer)))


def require_runtime(kind: str) -> None:
    """Import what runtime ``kind`` needs, or one line naming the extra that installs it
    and the runtimes that would work here."""
    require_choice("--runtime", kind, RUNTIME_PACKAGES)


def _gluon(checkpoint, model, dev_kind, ids, mean_max):
    import mxnet as mx

    from .model import DPN, fold_batchnorm, set_canonical
    arch, classes, classifier, tensors = model
    if dev_kind == "gpu":
        if mx.context.num_gpus() < len(ids) or max(ids) >= mx.context.num_gpus():
            raise DPNError("--device gpu:%s: MXNet sees %d GPU(s)"
                           % (",".join(map(str, ids)), mx.context.num_gpus()))
        ctx = [mx.gpu(i) for i in ids]
    else:
        ctx = [mx.cpu(i) for i in ids] or [mx.cpu()]
    # dpn_gluon.load_checkpoint() without reading the file a second time.
    net = set_canonical(DPN(arch, classes, classifier, mean_max=mean_max), tensors, ctx)
    # The fast path by default: each BatchNorm that follows a conv folded into it (inference
    # only; benchmarks/ measures 1.3-1.7x over plain hybridize on CPU, tests/test_fold.py the
    # parity), then a static hybridized graph.
    net = fold_batchnorm(net, ctx)
    net.hybridize(static_alloc=True, static_shape=True)

    def forward(batch):
        if len(ctx) == 1:
            return net(mx.nd.array(batch, ctx=ctx[0])).asnumpy()
        parts = mx.gluon.utils.split_and_load(batch, ctx[:len(batch)], even_split=False)
        return np.concatenate([net(p).asnumpy() for p in parts])

    return forward, [str(c) for c in ctx]


def _torch(checkpoint, model, dev_kind, ids, mean_max):
    import torch

    from .torch_dpn import from_canonical
    if dev_kind == "gpu":
        if len(ids) != 1:
            raise DPNError("the torch runtime uses one device; use --device cuda:N")
        if not torch.cuda.is_available() or ids[0] >= torch.cuda.device_count():
            raise DPNError("--device cuda:%d: torch sees no such CUDA device" % ids[0])
        device = torch.device("cuda", ids[0])
    elif len(ids) > 1:
        raise DPNError("the torch runtime uses one device; use --device cpu or cuda:N")
    else:
        device = torch.device("cpu")
    with warnings.catch_warnings():
        # The tensors are read-only views of the file; load_state_dict copies them anyway.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        net = from_canonical(model[3], mean_max=mean_max, source=str(checkpoint))
    net = net.to(device).eval()

    def forward(batch):
        with torch.inference_mode():
            return net(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    return forward, [str(device)]


def _onnx(checkpoint, model, dev_kind, ids, mean_max):
    import onnxruntime as ort

    from .onnx_graph import onnx_bytes
    providers = ["CPUExecutionProvider"]
    if len(ids) > 1:
        raise DPNError("the onnx runtime uses one device; use --device cpu or cuda:N")
    if dev_kind == "gpu":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DPNError("--device cuda:%d: onnxruntime has no CUDA provider here" % ids[0])
        providers = [("CUDAExecutionProvider", {"device_id": ids[0]})] + providers
    # built in memory: no file to clean up on any exit path
    session = ort.InferenceSession(onnx_bytes(model[3], mean_max=mean_max,
                                              source=str(checkpoint)), providers=providers)
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def forward(batch):
        return session.run([output_name], {input_name: batch})[0]

    names = ["cuda:%d" % ids[0]] if dev_kind == "gpu" else ["cpu"]
    return forward, names



def _cpu_only(dev_kind: str, ids) -> None:
    if dev_kind == "gpu" or len(ids) > 1:
        raise DPNError("the openvino runtime runs on the CPU here; use --device cpu")


def _openvino(checkpoint, model, dev_kind, ids, mean_max, precision, threads, labels,
              calibration=None):
    from .openvino_ir import compile_model, from_tensors
    _cpu_only(dev_kind, ids)
    arch, classes, classifier, tensors = model
    if precision != "int8":
        compiled = compile_model(from_tensors(tensors, arch, classes, classifier, mean_max,
                                              labels=labels), precision, threads)
        return _openvino_forward(compiled), ["cpu"], None
    calib, held_out = calibration.load()
    fp32 = _openvino_forward(compile_model(from_tensors(tensors, arch, classes, classifier,
                                                        mean_max), "fp32", threads))
    int8 = _openvino_forward(compile_model(from_tensors(tensors, arch, classes, classifier,
                                                        mean_max, labels=labels,
                                                        calibration=calib), "int8", threads))
    agree = float(np.mean(fp32(held_out).argmax(1) == int8(held_out).argmax(1)))
    return int8, ["cpu"], {"calibration": str(calibration.folder),
                           "calibration_images": len(calib), "held_out_images": len(held_out),
                           "top1_agreement_with_fp32": agree}


def _openvino_ir(path, dev_kind, ids, mean_max, precision, threads) -> Runtime:
    """An IR dpn-convert wrote, run as it is (its head must be the one asked for)."""
    from .openvino_ir import compile_model, read_ir
    _cpu_only(dev_kind, ids)
    ir = read_ir(path)
    if ir.mean_max != mean_max:
        raise DPNError("%s: the IR has the %s head: %s --mean-max"
                       % (path, "mean-max" if ir.mean_max else "global",
                          "pass" if ir.mean_max else "drop"))
    compiled = compile_model(ir.load(), precision, threads)
    return Runtime("openvino", ir.arch.name, int(ir.classes), ir.classifier, ["cpu"],
                   _openvino_forward(compiled), ir.labels,
                   ir.metadata.get("normalization_name", "authors"), precision)


def _openvino_forward(compiled):
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def forward(batch):
        # the result tensor is reused by the next call: copy it out
        return np.array(request.infer({0: batch})[output], copy=True)

    return forward
