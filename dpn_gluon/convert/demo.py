"""``python -m dpn_gluon.convert.demo``: the converter's round trip on one seeded checkpoint.

Writes an authors'-format dpn68 checkpoint with seeded weights, converts it to a PyTorch
state_dict and to a timm folder, converts each back to the original format, and prints one
line per step: tensors compared bit for bit and, with MXNet and torch installed, the max
relative logit difference and top-5 agreement between the authors' MXNet graph and the
PyTorch DPN. Results go to stdout, the converter's log to stderr; exit 1 if a step fails.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .. import variants
from ..checkpoint import write_seeded_checkpoint
from ..formats import mxparams
from .check import same_bits
from .pipeline import convert


def _line(step: str, result) -> str:
    c = result.check
    parity = "numerical check skipped"
    if c.numeric:
        parity = "MXNet vs PyTorch: max rel %.2e, top-5 agreement %.0f%%" % (
            c.numeric.max_rel, 100 * c.numeric.top5_agreement)
    return "%-20s %-48s %d tensors %s; %s" % (
        step, ", ".join(Path(p).name for p in result.outputs), c.tensors,
        "bit-identical" if c.exact else "DIFFER", parity)


def run(folder: Path, name: str = "dpn68", seed: int = 0, out=sys.stdout, log=None) -> bool:
    src = Path(write_seeded_checkpoint(folder / name, name=name, seed=seed, symbol=False))
    print("seeded %s checkpoint: %s" % (name, src), file=out)
    steps = [
        ("original -> torch", src, "torch", folder / ("%s.pth" % name), None),
        ("original -> timm", src, "timm", folder / ("%s-timm" % name), None),
        ("torch -> original", folder / ("%s.pth" % name), "mxnet", folder / "from-torch", None),
        ("timm -> original", folder / ("%s-timm" % name), "mxnet", folder / "from-timm", None),
    ]
    ok = True
    for step, source, to, target, classifier in steps:
        result = convert(source, to, out=target, classifier=classifier, force=True, log=log)
        print(_line(step, result), file=out)
        ok &= result.ok
    original = mxparams.load(src)
    for back in ("from-torch", "from-timm"):
        again = mxparams.load(folder / ("%s-0000.params" % back))
        same = again.keys() == original.keys() and all(
            same_bits(original[k], again[k]) for k in original)
        print("%-20s %s" % ("original vs " + back, "bit-identical, %d tensors" % len(original)
                            if same else "DIFFER"), file=out)
        ok &= same
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="dpn68", choices=list(variants.CHECKPOINTS))
    p.add_argument("--keep", type=Path, help="write into this folder and keep the files")
    args = p.parse_args(argv)
    log = lambda msg: print("dpn-convert: " + msg, file=sys.stderr)   # noqa: E731
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return 0 if run(args.keep, args.name, log=log) else 1
    with tempfile.TemporaryDirectory(prefix="dpn-convert-demo-") as tmp:
        return 0 if run(Path(tmp), args.name, log=log) else 1


if __name__ == "__main__":
    sys.exit(main())
