"""``python -m benchmarks.onnx_fp16``: the error bound of ``dpn-convert --to onnx --fp16``.

For seeded checkpoints of every architecture, the float16 ONNX model and the float32 one
(the same tensors, :func:`dpn_gluon.onnx_graph.build_onnx`) run in onnxruntime's
CPU provider on the seeded batch of the post-write check
(:func:`dpn_gluon.convert.parity.seeded_batch`); the float32 model is the reference. Per
architecture and input size: max relative difference of the logits (max |a - b| / max
|ref|), the worst tap and its difference, and top-1 agreement. The worst tap over all rows,
rounded up, is :data:`dpn_gluon.onnx_graph.FP16_RTOL` (docs/onnx.md).

    python -m benchmarks.onnx_fp16 [--arch dpn68 ...] [--size 64 224] [--batch 8] [--mean-max]
                                   [--json]
"""
import argparse
import gc
import json

import numpy as np

from dpn_gluon import variants


def rel(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def run_taps(model, x: np.ndarray) -> dict:
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": x})))


def measure(name: str, sizes, batch: int, seed: int = 0, mean_max: bool = False):
    from dpn_gluon.checkpoint import seeded_tensors
    from dpn_gluon.convert.parity import seeded_batch
    from dpn_gluon.onnx_graph import build_onnx

    arch, classes, classifier = variants.resolve(name)
    tensors = seeded_tensors(name, seed=0)
    models = {fp16: build_onnx(tensors, arch, classes, classifier, mean_max=mean_max,
                               tap_outputs=True, fp16=fp16)
              for fp16 in (False, True)}
    rows = []
    for size in sizes:
        x = seeded_batch(batch, size, seed)
        ref, got = run_taps(models[False], x), run_taps(models[True], x)
        worst = max((rel(got[t], ref[t]), t) for t in ref)
        rows.append({"arch": name, "head": "mean_max" if mean_max else "global",
                     "size": size, "batch": batch,
                     "logits_rel": rel(got["logits"], ref["logits"]),
                     "worst_tap": worst[1], "worst_rel": worst[0],
                     "top1": float(np.mean(ref["logits"].argmax(1) == got["logits"].argmax(1)))})
        del ref, got
        gc.collect()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.onnx_fp16", description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", default=list(variants.ARCHS), choices=list(variants.ARCHS))
    p.add_argument("--size", nargs="+", type=int, default=[64, 224])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--mean-max", action="store_true", help="the mean-max head (sizes >= 193)")
    p.add_argument("--json", action="store_true", help="one JSON record per row")
    args = p.parse_args(argv)
    if not args.json:
        print("| arch | head | size | batch | logits rel | worst tap (rel) | top-1 agreement |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.arch:
        for row in measure(name, args.size, args.batch, mean_max=args.mean_max):
            print(json.dumps(row) if args.json else
                  "| %(arch)s | %(head)s | %(size)d | %(batch)d | %(logits_rel).1e | %(worst_tap)s (%(worst_rel).1e) "
                  "| %(top1).2f |" % row, flush=True)
        gc.collect()


if __name__ == "__main__":
    main()
