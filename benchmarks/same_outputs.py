"""Are the converter's outputs byte-identical to an earlier commit's? (run by hand)

    python -m benchmarks.same_outputs --against 52f64d3 [--archs dpn68,dpn68b-extra]

Writes seeded checkpoints once (this tree's ``write_seeded_checkpoint``), converts each with
this tree and with REV's tree (``git archive REV`` unpacked into a temp folder and put first
on ``PYTHONPATH``), to every target and back from the derived formats, and compares every
file written by sha256. Exit 0 when all are equal, 1 otherwise. A restructure that claims
"no change of behaviour" is held to this (issue 17).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: One row per unit type and classifier name: the standard unit, the "b" unit with fc6-1k,
#: and a 5k head (a DPN-68 keeps the run short; every architecture shares the code paths).
CHECKPOINTS = ("dpn68", "dpn68-extra", "dpn68-5k")
#: (source format made first from the authors' file, then target) pairs; "authors" is the
#: seeded PREFIX-0000.params itself.
ROUTES = [("authors", t) for t in ("mxnet", "gluon", "torch", "safetensors", "timm", "onnx",
                                  "paddle")] \
    + [("timm", "mxnet"), ("torch", "gluon"), ("gluon", "safetensors"), ("safetensors", "torch"),
       ("paddle", "timm"), ("paddle", "mxnet"), ("paddle", "onnx"), ("timm", "paddle")]
SOURCE_NAME = {"torch": "x.pth", "safetensors": "x.safetensors", "gluon": "x.params",
               "timm": "x-timm", "paddle": "x.pdparams"}


def convert(tree: Path, src: Path, to: str, out: Path, check: bool) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree))
    args = [sys.executable, "-m", "dpn_gluon.convert.cli", str(src), "--to", to, "-o", str(out)]
    if not check:
        args.append("--no-check")
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, cwd=str(out.parent))


def digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_tree(tree: Path, work: Path, seeds: dict, check: bool) -> dict:
    out = {}
    for name, params in seeds.items():
        base = work / name
        base.mkdir(parents=True)
        made = {"authors": params}
        for src_fmt, to in ROUTES:
            if src_fmt not in made:
                made[src_fmt] = base / SOURCE_NAME[src_fmt]
                convert(tree, params, src_fmt, made[src_fmt], check=False)
            dest = base / ("%s-to-%s" % (src_fmt, to))
            dest.mkdir()
            target = dest / ("y" if to in ("mxnet", "timm") else "y" + {
                "gluon": ".params", "torch": ".pth", "safetensors": ".safetensors",
                "onnx": ".onnx", "paddle": ".pdparams"}[to])
            # the check writes the parity summary into a timm folder's card: run it there
            convert(tree, made[src_fmt], to, target, check=check and to == "timm")
        out.update({"%s/%s" % (name, k): v for k, v in digests(base).items()})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", required=True, help="the commit to compare with")
    ap.add_argument("--checkpoints", default=",".join(CHECKPOINTS))
    ap.add_argument("--no-check", action="store_true", help="skip the timm card's check")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from dpn_gluon import write_seeded_checkpoint
    with tempfile.TemporaryDirectory(prefix="same-outputs-") as tmp:
        tmp = Path(tmp)
        old = tmp / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.against],
                                 check=True, stdout=subprocess.PIPE).stdout
        tar = tmp / "old.tar"
        tar.write_bytes(archive)
        with tarfile.open(tar) as t:
            t.extractall(old)
        seeds = {}
        for name in args.checkpoints.split(","):
            seeds[name] = write_seeded_checkpoint(tmp / "seeds" / name / name, name, seed=3)
        new_d = run_tree(ROOT, tmp / "new", seeds, not args.no_check)
        old_d = run_tree(old, tmp / "oldrun", seeds, not args.no_check)
    differ = sorted(k for k in set(new_d) | set(old_d) if new_d.get(k) != old_d.get(k))
    print("%d files compared, %d differ" % (len(set(new_d) | set(old_d)), len(differ)))
    for k in differ:
        print("  differs: %s (new %s, old %s)" % (k, (new_d.get(k) or "-")[:12],
                                                   (old_d.get(k) or "-")[:12]))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
