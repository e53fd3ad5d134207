"""Benchmarks of dpn-gluon: conversion (dpn-convert vs cp vs the classic MXNet route),
CPU inference (Gluon, Module, PyTorch, ONNX Runtime) and GPU inference (PyTorch).

Run ``python -m benchmarks`` (see ``--help``). Every measured configuration runs in a fresh
child process, so that thread settings, imports and peak memory of one do not leak into
another; results are medians over repeats with their spread (IQR and min-max), and the
comparisons are reported as ratios measured in the same run on the same machine.
Nothing here is imported by the package or by the tests' timing: benchmarks are never
assertions.
"""
import json
import os
import subprocess
import sys
from typing import Dict, List, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def summarize(samples: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles, min and max of repeated measurements."""
    a = np.asarray(samples, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(a.min()),
            "max": float(a.max()), "n": int(a.size)}


def ratio(num: Dict[str, float], den: Dict[str, float]) -> Dict[str, float]:
    """num/den of two summaries: the ratio of medians, with the range min/max .. max/min
    (for measurements that were not taken in the same rounds)."""
    return {"median": num["median"] / den["median"], "low": num["min"] / den["max"],
            "high": num["max"] / den["min"], "paired": False}


def paired(num: Sequence[float], den: Sequence[float]) -> Dict[str, float]:
    """num/den per round of interleaved samples (round r of each was measured back to back,
    so load from elsewhere mostly cancels): median, and min/max as the spread."""
    r = np.asarray(num, dtype=float) / np.asarray(den, dtype=float)
    return {"median": float(np.median(r)), "low": float(r.min()), "high": float(r.max()),
            "paired": True}


def child_env(threads: int) -> Dict[str, str]:
    """The environment of a measuring child: threads pinned for OpenMP, MKL, MXNet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MXNET_OMP_MAX_THREADS"):
        env[var] = str(threads)
    env.setdefault("KMP_AFFINITY", "granularity=fine,compact,1,0")
    return env


def run_child(module: str, args: List[str], threads: int, timeout: float = 600) -> dict:
    """Run ``python -m module args`` with pinned threads; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, "-m", module] + args, env=child_env(threads),
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, text=True)
    if proc.returncode != 0:
        raise RuntimeError("%s %s failed (exit %d): %s" % (module, " ".join(args), proc.returncode,
                                                          proc.stderr.strip()[-2000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])
