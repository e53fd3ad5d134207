"""Run one command and print its wall time and peak RSS as JSON: ``python -I -S spawn.py ARGV...``.

Peak RSS is ``ru_maxrss`` from ``os.wait4``. On Linux a child's ``maxrss`` starts at the
high-water mark of the process it was forked from (exec keeps the larger of the two), so
the parent must be small: this launcher imports nothing beyond ``os``, ``sys``, ``time`` and
``json`` (about 10 MB), instead of the runner with numpy and friends loaded. Anything it
reports below that launcher floor is reported as the floor.
"""
import json
import os
import sys
import time


def main(argv):
    t0 = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, dict(os.environ))
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall": wall, "rss": usage.ru_maxrss * 1024,
                      "exit": os.waitstatus_to_exitcode(status)}))


if __name__ == "__main__":
    main(sys.argv[1:])
