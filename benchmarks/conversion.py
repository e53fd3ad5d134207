"""Conversion: wall time and peak memory of ``dpn-convert`` against ``cp`` and the classic route.

For a full-size seeded authors'-format checkpoint (written once into a cache folder with
:func:`dpn_gluon.checkpoint.write_seeded_checkpoint`) each command runs as a fresh process:

- ``cp``: read and write every byte, the floor any converter is measured against;
- ``cp+fsync``: the same, then ``sync`` the copy: ``dpn-convert`` fsyncs its output before
  renaming it into place (atomic_write), which plain ``cp`` does not;
- ``classic``: :mod:`benchmarks.classic_convert` (``mx.nd.load`` + rename + ``torch.save``);
- ``ours-safetensors`` / ``ours-torch``: ``dpn-convert SRC --to ... --no-check``;
- ``ours-*-check``: the same with the default ``--check`` (reload and compare every tensor,
  and run a seeded batch through both frameworks where they are installed).

Wall time and peak RSS (``ru_maxrss`` from ``os.wait4``) are taken by a small launcher,
:mod:`benchmarks.spawn`. Commands are interleaved round-robin over the repeats, after one untimed
round that puts the source file in the page cache for all of them. Separately, a child
times the conversion function itself in-process (imports done, no check): the part of the
work a library user pays for each file.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from . import ROOT, child_env


def ensure_checkpoint(cache: str, name: str) -> str:
    """The cached seeded checkpoint of ``name`` (written once), as its .params path."""
    from dpn_gluon.checkpoint import write_seeded_checkpoint
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, "%s-seed0-0000.params" % name)
    if not os.path.exists(path):
        write_seeded_checkpoint(os.path.join(cache, "%s-seed0" % name), name, seed=0,
                                symbol=False)
    return path


def commands(src: str, work: str):
    """{label: argv} of every command timed as a whole process."""
    py = sys.executable
    out = lambda ext: os.path.join(work, "out" + ext)  # noqa: E731
    cli = [py, "-m", "dpn_gluon.convert.cli", src]
    return {
        "cp": ["cp", src, out(".copy")],
        "cp+fsync": ["sh", "-c", 'cp "$0" "$1" && sync "$1"', src, out(".copy2")],
        "classic": [py, "-m", "benchmarks.classic_convert", src, out(".classic.pth")],
        "ours-safetensors": cli + ["--to", "safetensors", "-o", out(".safetensors"), "--force", "--no-check"],
        "ours-torch": cli + ["--to", "torch", "-o", out(".pth"), "--force", "--no-check"],
        "ours-safetensors-check": cli + ["--to", "safetensors", "-o", out(".c.safetensors"), "--force", "--check"],
        "ours-torch-check": cli + ["--to", "torch", "-o", out(".c.pth"), "--force", "--check"],
    }


def run_process(argv, env) -> dict:
    """Wall seconds and peak RSS (bytes) of one fresh child, via the small launcher
    :mod:`benchmarks.spawn` (see there why the runner itself cannot be the parent)."""
    launcher = [sys.executable, "-I", "-S", os.path.join(ROOT, "benchmarks", "spawn.py")]
    proc = subprocess.run(launcher + argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    if res.get("exit") != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(argv), proc.stderr[-2000:]))
    return res


def in_process(src: str, work: str, targets, repeats: int) -> dict:
    """{target: [seconds...]}: ``pipeline.convert(check=False)`` timed inside one process."""
    from dpn_gluon.convert.pipeline import convert
    times = {t: [] for t in targets}
    for target in targets:
        out = os.path.join(work, "inproc." + target)
        convert(src, target, out=out, force=True, check=False)     # warm: imports, page cache
        for _ in range(repeats):
            t0 = time.perf_counter()
            convert(src, target, out=out, force=True, check=False)
            times[target].append(time.perf_counter() - t0)
    return times


def measure(name: str, cache: str, repeats: int, threads: int, labels=None,
            check_repeats: int = 1) -> dict:
    """Every command of :func:`commands` (the ``-check`` ones ``check_repeats`` times: the
    check runs a batch through both frameworks and would dominate the time budget)."""
    src = ensure_checkpoint(cache, name)
    work = os.path.join(cache, "work-" + name)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = child_env(threads)
    cmds = commands(src, work)
    labels = [k for k in cmds if labels is None or k in labels]
    samples = {k: {"wall": [], "rss": []} for k in labels}
    for r in range(repeats + 1):
        for i in range(len(labels)):
            label = labels[(i + r) % len(labels)]
            if label.endswith("-check") and not 0 < r <= check_repeats:
                continue
            res = run_process(cmds[label], env)
            if r > 0:
                samples[label]["wall"].append(res["wall"])
                samples[label]["rss"].append(res["rss"])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.conversion", "--in-process", src,
                           "--work", work, "--repeats", str(repeats)], env=env, cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError("in-process conversion failed: " + proc.stderr[-2000:])
    inproc = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(work, ignore_errors=True)
    return {"arch": name, "file_bytes": os.path.getsize(src), "process": samples,
            "in_process": inproc}


def main(argv=None):
    p = argparse.ArgumentParser(description="in-process conversion timing (used by the runner)")
    p.add_argument("--in-process", metavar="SRC", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    print(json.dumps(in_process(a.in_process, a.work, ["safetensors", "torch"], a.repeats)))


if __name__ == "__main__":
    main()
