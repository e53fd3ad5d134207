"""Build each reader attack of docs/hostile.md ("The readers, part B") and measure dpn-convert
on it: exit code, wall time and peak RSS (``/usr/bin/time -v``), printed as a Markdown table.

Run from the repository root (needs torch to build the .pth attacks; each case runs
``python -m dpn_gluon.convert.cli FILE --to safetensors -o OUT --no-check`` in a fresh
process, the numpy-only cases with ``import torch`` made to fail):

    PYTHONPATH=. python fuzz/attacks.py [--bound-mb 600]

Exits 1 if a case does not exit 2, runs over 60 s, or peaks above the bound.
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
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = "from dpn_gluon.convert.cli import main; main()"
NO_TORCH = "import sys; sys.modules['torch'] = None; " + CLI
TIMEOUT = 60


def _torch_save(obj, legacy=False) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _laughs(depth: int, width: int, kind=list):
    x = []
    for _ in range(depth):
        x = kind([x] * width) if kind is not dict else {str(i): x for i in range(width)}
    return x


def _views(n: int, numel: int, size, stride) -> "OrderedDict":
    import torch
    base = torch.zeros(numel)
    return OrderedDict(("v%d" % i, torch.as_strided(base, size, stride, 0)) for i in range(n))


def _many_arrays(n: int) -> bytes:
    record = struct.pack("<Iiiq", 0xF993FAC9, 0, 1, 1) + struct.pack("<iii", 1, 0, 0) + b"\0" * 4
    names = b"".join(struct.pack("<Q", 8) + b"a%07d" % i for i in range(n))
    return struct.pack("<QQQ", 0x112, 0, n) + record * n + struct.pack("<Q", n) + names


def _flipped_pth() -> bytes:
    import torch

    from dpn_gluon.checkpoint import seeded_tensors
    data = bytearray(_torch_save({"w": torch.from_numpy(seeded_tensors("dpn68")["fc6_weight"])}))
    data[len(data) // 2] ^= 1              # inside the tensor's record
    return bytes(data)


def _mx2_dtype() -> bytes:
    record = struct.pack("<Iiiq", 0xF993FAC9, 0, 1, 4) + struct.pack("<iii", 1, 0, 9) + b"\0" * 8
    return struct.pack("<QQQ", 0x112, 0, 1) + record + struct.pack("<QQ", 1, 15) + b"arg:conv_weight"


def cases():
    """(name, file name, bytes or a special kind, run without torch)."""
    import torch
    return [
        ("billion laughs, legacy .pth: lists 40 deep", "laughs-list.pth",
         _torch_save({"w": torch.zeros(2), "x": _laughs(40, 2)}, legacy=True), False),
        ("billion laughs, legacy .pth: dicts 6 deep x 40 wide", "laughs-dict.pth",
         _torch_save({"w": torch.zeros(2), "x": _laughs(6, 40, dict)}, legacy=True), False),
        ("billion laughs, zip .pth: tuples 40 deep, numpy-only", "laughs-tuple.pth",
         _torch_save({"w": torch.zeros(2), "x": _laughs(40, 2, tuple)}), True),
        ("FIFO as the checkpoint", "fifo.pth", "fifo", False),
        ("/dev/zero as the checkpoint", "zero.pth", "chardev", False),
        ("stride-0 view of 2^29 floats, numpy-only", "stride0.pth",
         _torch_save(_views(1, 1, (1 << 29,), (0,))), True),
        ("stride-0 view of 2^29 floats, torch", "stride0.pth",
         _torch_save(_views(1, 1, (1 << 29,), (0,))), False),
        ("400 views of one 8 MiB storage, numpy-only", "views.pth",
         _torch_save(_views(400, 1 << 21, (1 << 21,), (1,))), True),
        ("400 views of one 8 MiB storage, torch", "views.pth",
         _torch_save(_views(400, 1 << 21, (1 << 21,), (1,))), False),
        (".params of 1,000,000 tiny arrays", "many.params", _many_arrays(1_000_000), True),
        ("flipped bit in a .pth's tensor data, torch", "flipped.pth", _flipped_pth(), False),
        ("MXNet 2.x uint16 array", "mx2.params", _mx2_dtype(), True),
    ]


def run(path: Path, out: Path, no_torch: bool):
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", NO_TORCH if no_torch else CLI,
           str(path), "--to", "safetensors", "-o", str(out), "--no-check"]
    start = time.perf_counter()
    try:
        got = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    except subprocess.TimeoutExpired:
        return None, TIMEOUT, 0, "timed out"
    wall = time.perf_counter() - start
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", got.stderr).group(1))
    rc = int(re.search(r"Exit status: (\d+)", got.stderr).group(1))
    error = next((line for line in got.stderr.splitlines() if "error:" in line), "")
    return rc, wall, rss // 1024, error.split(": ", 2)[-1].replace(str(path.parent) + "/", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bound-mb", type=int, default=600)
    args = parser.parse_args()
    bad = 0
    print("| Attack | File | Exit | Wall (s) | Peak RSS (MB) | Error line (shortened) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, file_name, data, no_torch in cases():
            path = Path(tmp) / file_name
            if path.exists() or path.is_symlink():
                path.unlink()
            if data == "fifo":
                os.mkfifo(path)
            elif data == "chardev":
                os.symlink("/dev/zero", path)
            else:
                path.write_bytes(data)
            size = "-" if isinstance(data, str) else "%d B" % len(data) if len(data) < 1 << 20 \
                else "%.1f MB" % (len(data) / 1e6)
            rc, wall, rss, error = run(path, Path(tmp) / "out.safetensors", no_torch)
            bad += rc != 2 or wall >= TIMEOUT or rss > args.bound_mb
            print("| %s | %s | %s | %.1f | %d | `%s` |" % (name, size, rc, wall, rss, error[:90]))
            path.unlink()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
