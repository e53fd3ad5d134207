"""Why OpenVINO int8 trailed bf16 on DPNs, and what fixed it: per-layer profiles.

    python -m benchmarks.openvino_int8 [--arch dpn68] [--batch 1] [--threads 2] [--rounds 7]

Run by hand. One architecture, seeded weights, 224x224, compiled four ways with the
precision set explicitly: fp32, bf16, int8 as NNCF 2.14.1's ONNX backend leaves it
(grouped 3x3 weights float32), and int8 as ``--precision int8`` builds it (those weights
quantized too: :func:`dpn_gluon.openvino_ir.quantize_grouped_weights`). Calibration: 16
seeded images; accuracy: 16 other seeded images against fp32 (max relative logit
difference, top-1 agreement). Prints the interleaved median ms per batch, then for each
model the per-layer time OpenVINO's profiler (``PERF_COUNT``, ``request.profiling_info``)
sums by layer type and kernel, which shows which layers ran in which precision.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import OrderedDict

import numpy as np


def models(arch: str, calibration: np.ndarray):
    from dpn_gluon import openvino_ir, variants
    from dpn_gluon.checkpoint import seeded_tensors
    from dpn_gluon.onnx_graph import build_onnx
    tensors = seeded_tensors(arch, 0)
    a, classes, fc = variants.identify({k: v.shape for k, v in tensors.items()})
    proto = build_onnx(tensors, a, classes, fc)
    fp32 = openvino_ir.from_onnx(proto.SerializeToString())
    out = OrderedDict([("fp32", (fp32, "fp32")), ("bf16", (fp32, "bf16"))])
    for label, grouped in (("int8, NNCF as is", False), ("int8 (--precision int8)", True)):
        q = openvino_ir.quantize_onnx(build_onnx(tensors, a, classes, fc), calibration, grouped)
        out[label] = (openvino_ir.from_onnx(q.SerializeToString()), "int8")
    return out


def profile(compiled_model, x, runs: int = 7) -> "OrderedDict[str, float]":
    """ms per (layer type, kernel), summed over layers: the median over ``runs``
    inferences (the profiler reports the last one; the machine may be shared)."""
    request = compiled_model.create_infer_request()
    request.infer({0: x})
    samples = []
    for _ in range(runs):
        request.infer({0: x})
        totals = {}
        for p in request.profiling_info:
            key = "%s %s" % (p.node_type, p.exec_type)
            totals[key] = totals.get(key, 0.0) + 1e3 * p.real_time.total_seconds()
        samples.append(totals)
    keys = set().union(*samples)
    med = {k: statistics.median(s.get(k, 0.0) for s in samples) for k in keys}
    return OrderedDict(sorted(med.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.openvino_int8", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="dpn68")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    import openvino as ov

    from dpn_gluon import openvino_ir
    from dpn_gluon.convert.parity import seeded_batch
    calibration, test = seeded_batch(16, 224, seed=1), seeded_batch(16, 224, seed=0)
    x = seeded_batch(a.batch, 224, seed=2)
    built = models(a.arch, calibration)
    compiled = OrderedDict((k, openvino_ir.compile_model(m, prec, a.threads))
                           for k, (m, prec) in built.items())
    def logits(c):      # inputs copied, outputs copied (docs/openvino.md: never c(x))
        request = c.create_infer_request()
        return np.concatenate([np.array(request.infer({0: test[i:i + 8]})[0], copy=True)
                               for i in (0, 8)])

    ref = logits(compiled["fp32"])
    times = {k: [] for k in compiled}
    requests = {k: c.create_infer_request() for k, c in compiled.items()}
    for r in requests.values():
        r.infer({0: x})
    for _ in range(a.rounds):
        for k, r in requests.items():
            t0 = time.perf_counter()
            r.infer({0: x})
            times[k].append(1e3 * (time.perf_counter() - t0))
    print("%s bs%d, 224x224, %d threads, openvino %s; median of %d interleaved rounds"
          % (a.arch, a.batch, a.threads, ov.__version__.split("-")[0], a.rounds))
    print()
    print("| model | ms per batch | max rel vs fp32 | top-1 vs fp32 |")
    print("| --- | --- | --- | --- |")
    for k, c in compiled.items():
        got = logits(c)
        print("| %s | %.1f | %.1e | %.0f%% |" % (
            k, statistics.median(times[k]), np.abs(got - ref).max() / np.abs(ref).max(),
            100 * np.mean(got.argmax(1) == ref.argmax(1))))
    for k, (m, prec) in built.items():
        core = ov.Core()
        c = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": openvino_ir.HINTS[prec],
                                          "INFERENCE_NUM_THREADS": a.threads,
                                          "PERF_COUNT": True})
        rows = profile(c, x)
        print("\n%s: per-layer time (ms, summed by layer type and kernel; median of 7 runs), "
              "total %.1f"
              % (k, sum(rows.values())))
        for name, ms in list(rows.items())[:6]:
            print("  %-45s %7.2f" % (name, ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
