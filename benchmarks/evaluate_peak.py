"""Peak memory and wall time of a plain ``dpn-evaluate`` run (README's figures).

    python -m benchmarks.evaluate_peak [--arch dpn92] [--images 64] [--runtime gluon]

Writes a seeded authors'-format checkpoint and a two-class folder of 500x375 JPEGs into a
temporary folder, then runs the real command under ``/usr/bin/time -v`` at the authors'
three settings (224, 320, 320 with the mean-max head; default batch and workers) and prints
one Markdown row each: peak RSS of the largest process and wall time. Run by hand (Linux).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dpn_gluon import write_seeded_checkpoint

SETTINGS = (["--size", "224"], ["--size", "320"], ["--size", "320", "--mean-max"])


def _images(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        sub = folder / ("class%d" % (i % 2))
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), np.uint8)).save(sub / ("%03d.jpg" % i))


def _command() -> list:
    """The installed ``dpn-evaluate`` beside this interpreter, else the same entry point."""
    script = Path(sys.executable).parent / "dpn-evaluate"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from dpn_gluon.evaluate.cli import evaluate_main; "
            "evaluate_main()"]


def _peak_mib(stderr: str) -> float:
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1)) / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="dpn92")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--runtime", default="gluon")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = write_seeded_checkpoint(tmp / args.arch, name=args.arch, symbol=False)
        _images(tmp / "val", args.images)
        print("| %s, %d images, runtime %s | peak RSS (MiB) | wall (s) |" % (
            args.arch, args.images, args.runtime))
        print("| --- | --- | --- |")
        for setting in SETTINGS:
            cmd = ["/usr/bin/time", "-v"] + _command() + [
                str(ckpt), "--data", str(tmp / "val"), "--runtime", args.runtime, "-q",
                "--json"] + setting
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                sys.exit("dpn-evaluate failed: %s" % proc.stderr.strip().splitlines()[-1])
            print("| `dpn-evaluate %s` | %.0f | %.1f |" % (" ".join(setting), _peak_mib(proc.stderr),
                                                         wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
