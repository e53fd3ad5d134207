"""CPU inference: images/s of one DPN at 224x224 through each engine, in a child process.

Backends (the same seeded weights in each, checked by comparing logits with the Module path):

- ``gluon``         Gluon DPN, imperative (NDArray ops one by one);
- ``gluon-hybrid``  Gluon DPN hybridized with ``static_alloc`` and ``static_shape``;
- ``gluon-mkldnn``  hybridized through ``optimize_for(backend="MKLDNN")``: the subgraph
  fusion (conv+BN+ReLU, ...) that ``Module``'s executor applies by default in MXNet 1.9;
- ``gluon-folded``  hybridized after :func:`dpn_gluon.model.fold_batchnorm` (BN into convs);
- ``module``        the authors' symbol bound by ``mx.mod.Module`` (``for_training=False``);
- ``torch``         the PyTorch DPN in eval mode under ``torch.inference_mode``;
- ``ort``           the exported ONNX model in ONNX Runtime, all graph optimizations on.

Each sample times ``iters`` forward passes (enough for about ``min_time`` seconds, chosen
after warm-up) and records images/s; the parent reports the median and spread of samples.
Threads are pinned by the parent's environment (OMP/MKL) and here: ``torch.set_num_threads``
and ORT's ``intra_op_num_threads`` (inter-op 1).
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np

BACKENDS = ("gluon", "gluon-hybrid", "gluon-mkldnn", "gluon-folded", "module", "torch", "ort")
SIZE = 224


def _gluon(name, tensors, batch, mode):
    import mxnet as mx

    from dpn_gluon import model
    net = model.get_model(name)
    model.set_canonical(net, tensors)
    if mode == "folded":
        net = model.fold_batchnorm(net)
    if mode == "mkldnn":
        # what Module's executor does by default: MKLDNN subgraph fusion (conv+BN+ReLU, ...)
        net.optimize_for(mx.nd.zeros((batch, 3, SIZE, SIZE)), backend="MKLDNN",
                         static_alloc=True, static_shape=True)
    elif mode != "imperative":
        net.hybridize(static_alloc=True, static_shape=True)

    def run(x):
        return net(x).asnumpy()
    return run, lambda a: mx.nd.array(a)


def _module(name, tensors, batch):
    import mxnet as mx

    from dpn_gluon import symbols, variants
    sym = symbols.get_symbol(name, head="global")
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", (batch, 3, SIZE, SIZE))], for_training=False)
    arg = {k: mx.nd.array(v) for k, v in tensors.items() if not variants.is_aux(k)}
    aux = {k: mx.nd.array(v) for k, v in tensors.items() if variants.is_aux(k)}
    mod.set_params(arg, aux)

    def run(x):
        mod.forward(mx.io.DataBatch([x]), is_train=False)
        return mod.get_outputs()[0].asnumpy()
    return run, lambda a: mx.nd.array(a)


def _torch(name, tensors, batch, threads):
    import torch

    from dpn_gluon import torch_dpn
    torch.set_num_threads(threads)
    net = torch_dpn.from_canonical(tensors).eval()

    def run(x):
        with torch.inference_mode():
            return net(x).numpy()
    return run, torch.from_numpy


def _ort(name, tensors, batch, threads, tmp):
    import onnxruntime as ort

    from dpn_gluon.onnx_graph import export_onnx
    path = os.path.join(tmp, name + ".onnx")
    if not os.path.exists(path):    # one export serves every batch size (batch is dynamic)
        export_onnx(tensors, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def run(x):
        return sess.run(None, {"data": x})[0]
    return run, lambda a: a


def make_runner(backend, name, tensors, batch, threads, tmp):
    if backend == "gluon":
        return _gluon(name, tensors, batch, "imperative")
    if backend == "gluon-hybrid":
        return _gluon(name, tensors, batch, "hybrid")
    if backend == "gluon-mkldnn":
        return _gluon(name, tensors, batch, "mkldnn")
    if backend == "gluon-folded":
        return _gluon(name, tensors, batch, "folded")
    if backend == "module":
        return _module(name, tensors, batch)
    if backend == "torch":
        return _torch(name, tensors, batch, threads)
    if backend == "ort":
        return _ort(name, tensors, batch, threads, tmp)
    raise ValueError("unknown backend %r" % backend)


def measure(backends, name, batches, threads, repeats, warmup, min_time, seed=0):
    """{backend: {batch: {"samples": [images/s...], "iters": n, "logits": first row}}}.

    All backends live in this one process and their samples are interleaved round-robin
    (the starting backend rotates each round), so that load from elsewhere on a shared
    machine falls on every backend alike and the ratios stay meaningful.
    """
    from dpn_gluon.checkpoint import seeded_tensors
    tensors = seeded_tensors(name, seed)
    rng = np.random.default_rng(seed)
    out = {b: {} for b in backends}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batches:
            data = rng.normal(size=(batch, 3, SIZE, SIZE)).astype("float32")
            runners, iters = {}, {}
            for backend in backends:
                run, convert = make_runner(backend, name, tensors, batch, threads, tmp)
                x = convert(data)
                t0 = time.perf_counter()
                logits = run(x)
                per = time.perf_counter() - t0     # the first run, if there is no warm-up
                if warmup:
                    t0 = time.perf_counter()
                    for _ in range(warmup):
                        run(x)
                    per = (time.perf_counter() - t0) / warmup
                iters[backend] = max(1, int(round(min_time / max(per, 1e-6))))
                runners[backend] = (run, x)
                out[backend][str(batch)] = {"samples": [], "iters": iters[backend],
                                            "logits": [float(v) for v in np.asarray(logits)[0]]}
            for r in range(repeats):
                for i in range(len(backends)):
                    backend = backends[(i + r) % len(backends)]
                    run, x = runners[backend]
                    t0 = time.perf_counter()
                    for _ in range(iters[backend]):
                        run(x)
                    out[backend][str(batch)]["samples"].append(
                        batch * iters[backend] / (time.perf_counter() - t0))
            del runners
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated, from: " + ", ".join(BACKENDS))
    p.add_argument("--arch", default="dpn68")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-time", type=float, default=0.5)
    a = p.parse_args(argv)
    res = measure(a.backends.split(","), a.arch, [int(b) for b in a.batches.split(",")], a.threads,
                  a.repeats, a.warmup, a.min_time)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
