"""Memory of a ``dpn-train`` run per epoch: the process and its loader processes, summed.

    python -m benchmarks.train_memory [--epochs 20] [--size 64] [--images 32] [--batch 8]
                                      [--threads 2] [--png docs/train_memory.png]

Runs ``dpn-train`` (dpn68, seeded) as a child process on a folder of generated patterns
with validation, samples the unique set size (USS) and RSS of the trainer and every process
under it every 0.1 s, and reads the run's ``PREFIX.log`` to know which epoch is running.
Prints one JSON record: per epoch the peak summed USS, the peak main-process RSS, the peak
RSS summed over the loaders (MiB); with ``--png``, a plot of them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _memory(pid: int):
    """(USS, RSS) of one process in bytes, from Linux's ``/proc/PID/smaps_rollup`` (what
    psutil's ``memory_full_info`` reads, without the dependency)."""
    fields = {}
    for line in Path("/proc/%d/smaps_rollup" % pid).read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields["Private_Clean"] + fields["Private_Dirty"], fields["Rss"]


def _children(pid: int) -> list:
    """Every process under ``pid`` (parents read from ``/proc/*/stat``)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        here = todo.pop()
        kids = [p for p, pp in parent.items() if pp == here]
        found.extend(kids)
        todo.extend(kids)
    return found


def _sample(pid: int):
    """(USS of the tree, RSS of the main process, RSS summed over its children), MiB."""
    uss, rss = _memory(pid)
    loaders = 0
    for child in _children(pid):
        try:
            c_uss, c_rss = _memory(child)
        except OSError:
            continue
        uss += c_uss
        loaders += c_rss
    return uss / 2 ** 20, rss / 2 ** 20, loaders / 2 ** 20


def _epochs_done(log: Path) -> int:
    try:
        return sum(1 for line in log.read_text().splitlines() if " epoch " in line)
    except OSError:
        return 0


def measure(args, out: Path, interval: float = 0.1, timeout: float = 1800) -> list:
    """Run ``dpn-train args --out out``; the peaks of each epoch (a list of dicts)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "dpn_gluon.train.cli"] + [str(a) for a in args] + [
        "--out", str(out), "-q"]
    log = out.with_name(out.name + ".log")
    peaks = {}
    with subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as child:
        deadline = time.monotonic() + timeout
        while child.poll() is None and time.monotonic() < deadline:
            epoch = _epochs_done(log) + 1
            try:
                uss, rss, loaders = _sample(child.pid)
            except OSError:
                break
            old = peaks.get(epoch, (0, 0, 0))
            peaks[epoch] = (max(old[0], uss), max(old[1], rss), max(old[2], loaders))
            time.sleep(interval)
        if child.poll() is None:
            child.kill()
        err = child.stderr.read()
        if child.wait() != 0:
            raise RuntimeError("dpn-train failed: %s" % err.strip())
    done = _epochs_done(log)
    return [{"epoch": e, "uss_mib": round(v[0], 1), "main_rss_mib": round(v[1], 1),
             "loaders_rss_mib": round(v[2], 1)}
            for e, v in sorted(peaks.items()) if e <= done]


def prepare(root: Path, images: int, val_images: int):
    """(train folder, validation folder, seeded dpn68 checkpoint) under ``root``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from train_patterns import write_folder

    from dpn_gluon import write_seeded_checkpoint
    train = write_folder(root / "train", max(1, images // 4), seed=0)
    val = write_folder(root / "val", max(1, val_images // 4), seed=1)
    return train, val, write_seeded_checkpoint(root / "seeded" / "dpn68", "dpn68", seed=3)


def plot(rows, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("uss_mib", "USS, trainer + loaders"), ("main_rss_mib", "RSS, trainer"),
                       ("loaders_rss_mib", "RSS, loaders summed")):
        ax.plot(epochs, [r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("peak MiB during the epoch")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--val-images", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--png", type=Path)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        train, val, seeded = prepare(Path(tmp), a.images, a.val_images)
        rows = measure(["--from", seeded, "--data", train, "--val-data", val,
                        "--size", a.size, "--epochs", a.epochs, "--batch-size", a.batch,
                        "--threads", a.threads, "--lr", "0.01"], Path(tmp) / "run" / "m")
    if a.png:
        plot(rows, a.png)
    for r in rows:
        print("epoch %(epoch)3d  uss %(uss_mib)8.1f  main rss %(main_rss_mib)8.1f  "
              "loaders rss %(loaders_rss_mib)8.1f MiB" % r, file=sys.stderr)
    print(json.dumps({"args": vars(a) | {"png": str(a.png) if a.png else None},
                      "epochs": rows}))


if __name__ == "__main__":
    main()
