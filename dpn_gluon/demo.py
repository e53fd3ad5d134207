"""``python -m dpn_gluon.demo`` (``make demo``): the main job on one seeded checkpoint.

Part 1, the model: writes an authors'-format checkpoint with seeded weights (``PREFIX-0000.params`` and
``PREFIX-symbol.json``) into a temporary folder, loads it twice -- as the authors did
(``mx.model.load_checkpoint`` + ``mx.mod.Module``) and with :func:`dpn_gluon.load_checkpoint`
-- runs the same seeded batch through both (Gluon imperative and hybridized) and prints
max-abs / max-rel differences and top-5 agreement. Results go to stdout; exit status 1 if
the Gluon model does not match the symbol within 1e-5.

Part 2, the converter (:mod:`dpn_gluon.convert.demo`): the same kind of checkpoint converted
to a PyTorch state_dict and a timm folder and back, bit for bit, with the MXNet-vs-PyTorch
parity figures. ``--no-convert`` skips it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import variants

TOLERANCE = 1e-5


def _compare(out: np.ndarray, ref: np.ndarray) -> dict:
    diff = np.abs(out - ref).max()
    top_out = np.argsort(-out, axis=1)[:, :5]
    top_ref = np.argsort(-ref, axis=1)[:, :5]
    return {"max_abs": float(diff), "max_rel": float(diff / np.abs(ref).max()),
            "top5": float(np.mean([set(a) == set(b) for a, b in zip(top_out, top_ref)])),
            "top1": float(np.mean(top_out[:, 0] == top_ref[:, 0]))}


def run(name: str = "dpn68", batch: int = 2, seed: int = 0, out=sys.stdout) -> bool:
    """Print the comparison; True if the Gluon model matches the symbol within 1e-5."""
    import mxnet as mx

    from .checkpoint import write_seeded_checkpoint
    from .model import load_checkpoint

    arch, classes, classifier = variants.resolve(name)
    size = 224             # the released graph's pool5 is a fixed 7x7: it runs at 224 only
    x = np.random.default_rng(seed + 1).normal(size=(batch, 3, size, size)).astype("float32")
    with tempfile.TemporaryDirectory(prefix="dpn-demo-") as tmp:
        prefix = Path(tmp) / name
        t0 = time.time()
        params = write_seeded_checkpoint(prefix, name=name, seed=seed)
        print("checkpoint  %s (%s, %d classes, classifier %s, seed %d), %.1f MiB"
              % (params.name, arch.name, classes, classifier, seed,
                 params.stat().st_size / 2 ** 20), file=out)

        sym, args, aux = mx.model.load_checkpoint(str(prefix), 0)
        # the released graph ends in SoftmaxOutput; compare logits, the classifier's output
        mod = mx.mod.Module(sym.get_internals()[classifier + "_output"], data_names=["data"], label_names=None, context=mx.cpu())
        mod.bind(data_shapes=[("data", x.shape)], for_training=False)
        mod.set_params(args, aux)
        mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
        ref = mod.get_outputs()[0].asnumpy()

        net = load_checkpoint(prefix)
        imperative = net(mx.nd.array(x)).asnumpy()
        net.hybridize()
        hybridized = net(mx.nd.array(x)).asnumpy()

    print("input       %dx3x%dx%d, seeded N(0, 1); reference: the authors' symbol (mx.mod.Module)"
          % (batch, size, size), file=out)
    print("%-12s %11s %11s %6s %6s" % ("gluon", "max-abs", "max-rel", "top-1", "top-5"), file=out)
    ok = True
    for label, logits in (("imperative", imperative), ("hybridized", hybridized)):
        c = _compare(logits, ref)
        ok &= c["max_rel"] < TOLERANCE
        print("%-12s %11.3e %11.3e %5.0f%% %5.0f%%"
              % (label, c["max_abs"], c["max_rel"], 100 * c["top1"], 100 * c["top5"]), file=out)
    print("%s (tolerance %.0e relative), %.1f s" % ("match" if ok else "MISMATCH", TOLERANCE,
                                                    time.time() - t0), file=out)
    return ok


def main(argv=None) -> int:
    import os
    import warnings
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")   # MXNet's "Subgraph backend ... activated"
    warnings.filterwarnings("ignore", category=DeprecationWarning)   # MXNet 1.9.1 on numpy 1.23
    parser = argparse.ArgumentParser(prog="python -m dpn_gluon.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dpn68", choices=list(variants.ARCHS) + [
        c for c in variants.CHECKPOINTS if c not in variants.ARCHS], help="architecture or checkpoint name")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-convert", action="store_true", help="skip part 2, the converter")
    args = parser.parse_args(argv)
    print("== 1. the authors' graph vs the Gluon DPN")
    ok = run(args.model, args.batch, args.seed)
    if not args.no_convert:
        from .convert import demo as convert_demo
        print("\n== 2. dpn-convert: original -> torch / timm folder -> original")
        with tempfile.TemporaryDirectory(prefix="dpn-convert-demo-") as tmp:
            ok &= convert_demo.run(Path(tmp), args.model, args.seed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
