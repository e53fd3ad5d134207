"""Every CPU runtime x precision side by side: speed, and the accuracy it costs.

    python -m benchmarks.runtimes_cpu [--arch dpn68 dpn92] [--batch 1 8] [--threads 2]
                                      [--rounds 7] [--images 16] [--json FILE]

Run by hand (never by the tests). Per architecture, every runtime is built once from the same
seeded weights (randomized BatchNorm statistics), then timed in interleaved rounds: each
round runs every (runtime, batch) cell once, back to back, so load from elsewhere on a shared
machine falls on all cells alike; a cell's figure is the median over rounds of ms per batch
(each round's time is the median of a few calls). 224x224, ``--threads`` for every runtime
(torch.set_num_threads, onnxruntime's intra-op threads, OpenVINO's INFERENCE_NUM_THREADS,
MXNet's OpenMP threads), one stream.

Beside each speed, its cost: on ``--images`` seeded images (uniform in the normalized pixel
range, the parity tool's batch), the max abs and max relative logit difference from the
authors' MXNet graph in float32 (max |a - b| / max |ref|), and the share of images whose top-1
class is the reference's.

Cells:

- ``torch eager fp32``: the timm-layout PyTorch DPN (:mod:`dpn_gluon.torch_dpn`), eval,
  ``inference_mode``: what timm's ``dpn*`` runs;
- ``torch bf16 autocast``: the same under ``torch.autocast("cpu", torch.bfloat16)``;
- ``gluon fp32``: ``--runtime gluon`` (BatchNorm folded, hybridized);
- ``onnxruntime fp32``: our ONNX file, all graph optimizations;
- ``openvino fp32`` / ``openvino bf16``: ``--runtime openvino --precision ...`` (the hint set
  explicitly); ``openvino int8``: the model ``--precision int8`` builds (NNCF post-training
  quantization plus the grouped convolutions' weights), calibrated on 16 seeded images other
  than the accuracy ones; ``openvino, no hint``: what a plain ``compile_model`` gives, with the
  precision it chose read from the compiled model (bf16 on a CPU with bf16 instructions).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import OrderedDict

import numpy as np

SIZE = 224


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def isa() -> str:
    from dpn_gluon.openvino_ir import cpu_flags
    have = cpu_flags() or set()
    named = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    return ", ".join(f.upper() for f in named if f in have) or "?"


def build(arch: str, folder: str, threads: int, int8: bool = True) -> "OrderedDict[str, tuple]":
    """{cell: (precision as run, forward)} for one architecture."""
    import onnxruntime as ort
    import openvino as ov
    import torch

    from dpn_gluon import openvino_ir, torch_dpn
    from dpn_gluon.checkpoint import seeded_tensors, write_seeded_checkpoint
    from dpn_gluon.onnx_graph import export_onnx
    from dpn_gluon.runtimes import load_runtime
    tensors = seeded_tensors(arch, 0)
    ckpt = write_seeded_checkpoint(os.path.join(folder, arch), name=arch, seed=0, symbol=False)
    cells = OrderedDict()
    torch.set_num_threads(threads)
    net = torch_dpn.from_canonical(tensors).eval()

    def eager(x):
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    def autocast(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net(torch.from_numpy(x)).float().numpy()

    cells["torch eager"] = ("fp32", eager)
    cells["torch autocast"] = ("bf16", autocast)
    cells["gluon"] = ("fp32", load_runtime("gluon", ckpt))
    onnx_file = export_onnx(tensors, os.path.join(folder, arch + ".onnx"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    cells["onnxruntime"] = ("fp32", lambda x: sess.run(["logits"], {"data": x})[0])
    for precision in ("fp32", "bf16"):
        try:
            cells["openvino " + precision] = (precision, load_runtime(
                "openvino", ckpt, precision=precision, threads=threads))
        except Exception as e:        # bf16 on a CPU without it: a missing cell, said why
            print("%s: openvino %s: %s" % (arch, precision, e), file=sys.stderr)
    if int8:
        from dpn_gluon import variants
        from dpn_gluon.convert.parity import seeded_batch
        a, classes, fc = variants.identify({k: v.shape for k, v in tensors.items()})
        quantized = openvino_ir.compile_model(openvino_ir.from_tensors(
            tensors, a, classes, fc, calibration=seeded_batch(16, SIZE, seed=1)), "int8", threads)
        int8_request = quantized.create_infer_request()
        cells["openvino int8"] = ("int8", lambda x: np.array(int8_request.infer({0: x})[0],
                                                              copy=True))
    plain = ov.Core().compile_model(ov.Core().read_model(str(onnx_file)), "CPU",
                                    {"INFERENCE_NUM_THREADS": threads})
    request = plain.create_infer_request()
    cells["openvino, no hint"] = (openvino_ir.compiled_precision(plain).replace("f32", "fp32"),
                                  lambda x: np.array(request.infer({0: x})[0], copy=True))
    return cells


def reference(arch: str, x: np.ndarray) -> np.ndarray:
    from dpn_gluon.checkpoint import seeded_tensors
    from dpn_gluon.symbols import get_symbol, run_symbol
    return run_symbol(get_symbol(arch, head="global"), seeded_tensors(arch, 0), data=x)[0]


def accuracy(forward, x: np.ndarray, ref: np.ndarray) -> dict:
    got = np.concatenate([forward(x[i:i + 8]) for i in range(0, len(x), 8)]).astype(np.float64)
    diff = np.abs(got - ref)
    return {"max_abs": float(diff.max()), "max_rel": float(diff.max() / np.abs(ref).max()),
            "top1": float(np.mean(got.argmax(1) == ref.argmax(1)))}


def time_cells(cells, batches, rounds: int, calls: int = 3) -> dict:
    """{(cell, batch): [ms per batch, one per round]}, cells interleaved within each round."""
    rng = np.random.RandomState(7)
    inputs = {b: rng.uniform(-2, 2, (b, 3, SIZE, SIZE)).astype(np.float32) for b in batches}
    for _, forward in cells.values():             # warm-up: first-call allocations, JIT
        for b in batches:
            forward(inputs[b])
            forward(inputs[b])
    times = {(c, b): [] for c in cells for b in batches}
    for _ in range(rounds):
        for c, (_, forward) in cells.items():
            for b in batches:
                per_call = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    forward(inputs[b])
                    per_call.append(1e3 * (time.perf_counter() - t0))
                times[(c, b)].append(statistics.median(per_call))
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.runtimes_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["dpn68", "dpn92"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--json", default=None, help="also write the measurements here")
    p.add_argument("--no-int8", action="store_true", help="without the int8 cell (NNCF)")
    a = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MXNET_OMP_MAX_THREADS"):
        os.environ[var] = str(a.threads)          # before MXNet and torch are imported
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    import onnxruntime
    import openvino
    import torch

    from dpn_gluon.convert.parity import seeded_batch
    x = seeded_batch(a.images, SIZE, seed=0)
    results = OrderedDict()
    with tempfile.TemporaryDirectory(prefix="dpn-bench-") as folder:
        for arch in a.arch:
            print("%s: building the runtimes" % arch, file=sys.stderr)
            cells = build(arch, folder, a.threads, not a.no_int8)
            ref = reference(arch, x)
            acc = {c: accuracy(f, x, ref) for c, (_, f) in cells.items()}
            print("%s: timing %d rounds" % (arch, a.rounds), file=sys.stderr)
            times = time_cells(cells, a.batch, a.rounds)
            results[arch] = {c: {"precision": cells[c][0], **acc[c],
                                 "ms": {b: statistics.median(times[(c, b)]) for b in a.batch},
                                 "rounds": {b: times[(c, b)] for b in a.batch}}
                             for c in cells}
            del cells
    env = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "isa": isa(),
           "cores": os.cpu_count(), "threads": a.threads, "python": platform.python_version(),
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "openvino": openvino.__version__.split("-")[0], "images": a.images,
           "rounds": a.rounds}
    print(table(results, a.batch, env))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"env": env, "results": results}, f, indent=1, default=str)
    return 0


def table(results, batches, env) -> str:
    archs = list(results)
    cells = list(next(iter(results.values())))
    head = ["runtime", "precision"] + ["%s bs%d ms (x eager)" % (a, b) for a in archs
                                       for b in batches]
    head += ["%s logits max abs / rel, top-1" % a for a in archs]
    lines = ["%s, %s; %d cores, %d threads; %s; Python %s, torch %s, onnxruntime %s, "
             "openvino %s; 224x224, medians of %d interleaved rounds; accuracy on %d seeded "
             "images against the authors' MXNet graph in float32."
             % (env["cpu"], env["isa"], env["cores"], env["threads"], env["date"],
                env["python"], env["torch"], env["onnxruntime"], env["openvino"],
                env["rounds"], env["images"]), "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c in cells:
        row = [c, next(r[c]["precision"] for r in results.values() if c in r)]
        for a in archs:
            for b in batches:
                r = results[a].get(c)
                eager = results[a]["torch eager"]["ms"][b]
                row.append("-" if r is None else "%.1f (%.2fx)" % (r["ms"][b], eager / r["ms"][b]))
        for a in archs:
            r = results[a].get(c)
            row.append("-" if r is None else "%.1e / %.1e, %.0f%%"
                       % (r["max_abs"], r["max_rel"], 100 * r["top1"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
