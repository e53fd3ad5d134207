"""CPU training throughput: dpn-train's step against timm's DPN in a plain PyTorch loop.

    python -m benchmarks.training [--arch dpn68] [--batch 32] [--size 64] [--steps 8] [--repeats 3]

Both run SGD (momentum 0.9, weight decay 1e-4) with softmax cross-entropy on the same
seeded in-memory batch, so the numbers compare the frameworks' forward + backward + update,
not image decoding:

- ``gluon``: :func:`dpn_gluon.train.loop.train_step` on the hybridized Gluon DPN, exactly
  what ``dpn-train`` runs per step (one CPU context, no kvstore);
- ``torch``: :mod:`dpn_gluon.torch_dpn`, which has timm's exact module tree and
  state_dict layout (timm itself cannot be imported here: it needs torchvision, which has no
  CPU build on these machines), ``model.train()``, ``torch.optim.SGD``.

Each sample is a child process (same thread settings, a warm-up step not timed); the
backends alternate for ``--repeats`` rounds and the medians are compared. Prints one JSON
record (median img/s of each, the samples, the ratio) and a line per sample.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def _batch(batch, size, classes, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, 3, size, size)).astype(np.float32),
            rng.integers(0, classes, batch).astype(np.int64))


def run_gluon(arch, batch, size, steps, classes):
    import mxnet as mx
    from mxnet import gluon

    from dpn_gluon import variants
    from dpn_gluon.checkpoint import seeded_tensors
    from dpn_gluon.train.loop import build_net, make_trainer, train_step
    arch_, classes, classifier = variants.resolve(arch, classes)
    ctx = [mx.cpu()]
    net = build_net(arch_, classes, classifier, seeded_tensors(arch, classes=classes), ctx,
                    seed=0, freeze_bn=False)
    trainer = make_trainer(net, 0.01, 0.9, 1e-4, "device")
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    data, label = _batch(batch, size, classes)
    train_step(net, trainer, loss_fn, data, label, ctx, batch)        # warm-up, graph build
    mx.nd.waitall()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(net, trainer, loss_fn, data, label, ctx, batch)
    mx.nd.waitall()
    return batch * steps / (time.perf_counter() - start)


def run_torch(arch, batch, size, steps, classes):
    import torch

    from dpn_gluon.checkpoint import seeded_tensors
    from dpn_gluon.torch_dpn import from_canonical
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    model = from_canonical(seeded_tensors(arch, classes=classes)).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    data, label = (torch.from_numpy(a) for a in _batch(batch, size, classes))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(data), label)
        loss.backward()
        opt.step()
        return loss.item()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="dpn68")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="child runs per backend (median)")
    p.add_argument("--backend", choices=("gluon", "torch"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.backend:
        fn = run_gluon if a.backend == "gluon" else run_torch
        print(json.dumps({"img_per_s": fn(a.arch, a.batch, a.size, a.steps, a.classes)}))
        return
    threads = str(os.cpu_count())
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", threads))
    record = {"arch": a.arch, "batch": a.batch, "size": a.size, "steps": a.steps,
              "threads": env["OMP_NUM_THREADS"]}
    samples = {"gluon": [], "torch": []}
    for _ in range(a.repeats):          # interleaved, so a busy spell hits both backends
        for backend in samples:
            out = subprocess.run([sys.executable, "-m", "benchmarks.training", "--backend",
                                  backend, "--arch", a.arch, "--batch", str(a.batch),
                                  "--size", str(a.size), "--steps", str(a.steps),
                                  "--classes", str(a.classes)],
                                 env=env, stdout=subprocess.PIPE, check=True, text=True).stdout
            samples[backend].append(json.loads(out.strip().splitlines()[-1])["img_per_s"])
            print("%-6s %8.1f img/s" % (backend, samples[backend][-1]), file=sys.stderr)
    for backend, values in samples.items():
        record[backend] = float(np.median(values))
        record[backend + "_samples"] = values
    record["gluon_over_torch"] = record["gluon"] / record["torch"]
    print(json.dumps(record))


if __name__ == "__main__":
    main()
