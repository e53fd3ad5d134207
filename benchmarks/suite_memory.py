"""Memory of the test suite (``make test``): the whole process tree, and which tests hold it.

    python -m benchmarks.suite_memory [PYTEST ARGS ...]    (pytest's report goes to stderr)

Runs pytest as a child process, samples the summed proportional set size (PSS: shared pages
counted once over the tree) of pytest and every process under it every 0.2 s, and knows
which test runs from a small plugin that writes the current test id to a file. Prints the
peak, the wall time, and the ten tests with the highest peaks, as one JSON record.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.train_memory import _children

ROOT = Path(__file__).resolve().parents[1]


def _pss(pid: int) -> int:
    for line in Path("/proc/%d/smaps_rollup" % pid).read_text().splitlines()[1:]:
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_pss(pid: int) -> int:
    total = 0
    for p in [pid] + _children(pid):
        try:
            total += _pss(p)
        except OSError:          # ended between the listing and the read
            pass
    return total


# -- the plugin (pytest -p benchmarks.suite_memory) -----------------------------------------

def pytest_runtest_setup(item):
    where = os.environ.get("DPN_SUITE_MEMORY_NOW")
    if where:
        Path(where).write_text(item.nodeid)


def main(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        now = Path(tmp) / "now"
        env = dict(os.environ, DPN_SUITE_MEMORY_NOW=str(now),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p",
                                 "benchmarks.suite_memory"] + list(args), cwd=ROOT, env=env,
                                stdout=sys.stderr)
        peak, per_test = 0, {}
        try:
            while proc.poll() is None:
                used = tree_pss(proc.pid)
                test = now.read_text() if now.exists() else "(collection)"
                per_test[test] = max(per_test.get(test, 0), used)
                peak = max(peak, used)
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    top = sorted(per_test.items(), key=lambda kv: -kv[1])[:10]
    return {"exit": proc.returncode, "seconds": round(time.monotonic() - start, 1),
            "peak_pss_mib": round(peak / 2 ** 20), "tests": len(per_test),
            "highest": [{"test": t, "pss_mib": round(m / 2 ** 20)} for t, m in top]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1))
