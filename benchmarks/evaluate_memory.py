"""Peak memory of dpn-evaluate / dpn-predict on hostile inputs (docs/hostile.md's table).

    python -m benchmarks.evaluate_memory [--out FILE.md]

Builds each attack in a temporary folder (a FIFO, a ``.lst`` naming ``/dev/zero``, thin
PNG strips, a pixel bomb, broken ``.lst``/``.idx``/``.rec`` files, a 16-bit PNG), runs the real
command under ``/usr/bin/time -v`` with a 120 s timeout, and prints one Markdown row per
attack: exit code, peak RSS and the first stderr line. The seeded dpn68 checkpoint runs in
ONNX Runtime (``--runtime onnx``), the lightest runtime to start, so the peak is the
command's own. Run by hand (Linux); it is not a test.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
#: The bound the table is held to: every attack's peak RSS, runtime included.
BOUND_MIB = 1024


def _png(array, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def _record(label: float, image: bytes) -> bytes:
    payload = struct.pack("<IfQQ", 0, label, 0, 0) + image
    return struct.pack("<II", 0xCED7230A, len(payload)) + payload + b"\0" * (-len(payload) % 4)


def attacks(tmp: Path, ckpt: Path):
    """(description, argv) of each attack, its files written under ``tmp``."""
    good = tmp / "good.png"
    good.write_bytes(_png(np.random.RandomState(0).randint(0, 256, (48, 64, 3), np.uint8)))
    fifo = tmp / "fifo.params"
    os.mkfifo(fifo)
    for w, h in ((1, 20000), (1, 60000)):
        (tmp / ("strip%d.png" % h)).write_bytes(_png(np.zeros((h, w), np.uint8)))
    (tmp / "bomb.png").write_bytes(_png_header(30000, 30000))
    (tmp / "gray16.png").write_bytes(_png(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16))
    side = 8192           # the largest image accepted (MAX_PIXELS), 8-bit RGB and 16-bit gray
    (tmp / "big.png").write_bytes(_png(np.zeros((side, side, 3), np.uint8)))
    (tmp / "big16.png").write_bytes(_png(np.full((side, side), 40000, np.uint16)))
    (tmp / "zero.lst").write_text("0\t1\t/dev/zero\n1\t1\tgood.png\n")
    (tmp / "inf.lst").write_text("0\tinf\tgood.png\n")
    (tmp / "latin1.lst").write_bytes(b"0\t1\tcaf\xe9.png\n")
    rec = tmp / "nan.rec"
    rec.write_bytes(_record(float("nan"), good.read_bytes()))
    (tmp / "nan.idx").write_text("0\t0\n")
    (tmp / "neg.rec").write_bytes(_record(1.0, good.read_bytes()))
    (tmp / "neg.idx").write_text("0\t-8\n")
    run = ["--runtime", "onnx", "--size", "64"]
    predict, evaluate = ["dpn-predict", str(ckpt)], ["dpn-evaluate", str(ckpt), "--workers", "0",
                                                    "-q", "--data"]
    return [
        ("FIFO as the checkpoint (dpn-predict)", ["dpn-predict", str(fifo), str(good)] + run),
        (".lst entry naming /dev/zero (dpn-evaluate)", evaluate + [str(tmp / "zero.lst")] + run),
        ("1x20000 PNG, --protocol timm", predict + [str(tmp / "strip20000.png"), "--protocol", "timm"] + run),
        ("1x60000 PNG, --protocol timm", predict + [str(tmp / "strip60000.png"), "--protocol", "timm"] + run),
        ("1x60000 PNG, --protocol authors", predict + [str(tmp / "strip60000.png")] + run),
        ("PNG header declaring 30000x30000", predict + [str(tmp / "bomb.png")] + run),
        ("16-bit gray PNG", predict + [str(tmp / "gray16.png")] + run),
        ("8192x8192 RGB PNG (largest accepted), authors", predict + [str(tmp / "big.png")] + run),
        ("8192x8192 RGB PNG (largest accepted), timm", predict + [str(tmp / "big.png"), "--protocol", "timm"] + run),
        ("8192x8192 16-bit gray PNG", predict + [str(tmp / "big16.png")] + run),
        (".lst label inf", evaluate + [str(tmp / "inf.lst")] + run),
        (".lst not UTF-8", evaluate + [str(tmp / "latin1.lst")] + run),
        (".rec NaN label", evaluate + [str(rec)] + run),
        (".idx negative offset", evaluate + [str(tmp / "neg.rec")] + run),
    ]


ENTRIES = {"dpn-predict": "dpn_gluon.evaluate.cli:predict_main",
           "dpn-evaluate": "dpn_gluon.evaluate.cli:evaluate_main"}


def measure(argv, cwd: Path):
    """(exit code, peak RSS in MiB, first stderr line) of one command under /usr/bin/time -v."""
    module, function = ENTRIES[argv[0]].split(":")
    code = "import sys; sys.argv[0] = %r; from %s import %s as m; m()" % (argv[0], module, function)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(["/usr/bin/time", "-v", "timeout", "120", sys.executable, "-c", code]
                          + argv[1:], cwd=cwd, env=env, capture_output=True, text=True)
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    lines = [line for line in proc.stderr.splitlines() if line.startswith(argv[0])]
    status = re.search(r"Exit status: (\d+)", proc.stderr)
    return int(status.group(1)) if status else proc.returncode, peak / 1024, (lines or ["-"])[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    a = p.parse_args(argv)
    from dpn_gluon.checkpoint import write_seeded_checkpoint
    rows = ["| input | exit | peak RSS (MiB) | stderr (first line) |", "| --- | --- | --- | --- |"]
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="dpn-evaluate-memory-") as tmp:
        tmp = Path(tmp)
        ckpt = write_seeded_checkpoint(tmp / "dpn68", "dpn68", symbol=False)
        for what, cmd in attacks(tmp, ckpt):
            code, peak, line = measure(cmd, tmp)
            worst = max(worst, peak)
            line = line.replace(str(tmp) + "/", "").replace("|", "\\|")
            rows.append("| %s | %d | %.0f | `%s` |" % (what, code, peak, line[:110]))
            print(rows[-1], file=sys.stderr)
    rows.append("")
    rows.append("Worst peak %.0f MiB (bound %d MiB), Python %s, %s." % (
        worst, BOUND_MIB, sys.version.split()[0], os.uname().machine))
    text = "\n".join(rows)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0 if worst < BOUND_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
