"""Fuzz target for the MXNet ``.params`` reader (dpn_gluon.formats.mxparams.loads).

Property: any input either parses (every array's bytes lie inside the input) or raises
CheckpointError with a one-line message; never another exception, a crash or a hang. The
memory bound is libFuzzer's ``-rss_limit_mb`` (set to 512 below unless given).

Long runs by hand, from the repository root, with atheris (pip install atheris)::

    PYTHONPATH=. python fuzz/fuzz_params.py fuzz/corpus/params -max_total_time=3600
    PYTHONPATH=. python fuzz/fuzz_params.py -runs=100000 fuzz/corpus/params

Give a scratch folder first (``python fuzz/fuzz_params.py /tmp/params-corpus
fuzz/corpus/params``) to keep new inputs out of the committed seeds. A crash is saved as
``crash-<sha1>``; replay it with ``python fuzz/fuzz_params.py crash-<sha1>``. The bounded CI
run is the hypothesis test in tests/test_hostile_params.py, over the same seeds.
"""
import sys

import atheris

with atheris.instrument_imports():
    from dpn_gluon.errors import CheckpointError
    from dpn_gluon.formats import mxparams


def TestOneInput(data: bytes) -> None:
    for copy in (False, True):
        try:
            result = mxparams.loads(data, "<fuzz>", copy=copy)
        except CheckpointError as e:
            if "\n" in str(e):
                raise AssertionError("multi-line error: %r" % str(e))
            return
        arrays = list(result.values()) if isinstance(result, dict) else result
        if sum(a.nbytes for a in arrays) > len(data):
            raise AssertionError("parsed arrays hold more bytes than the input")


def main() -> None:
    argv = list(sys.argv)
    if not any(a.startswith("-rss_limit_mb") for a in argv):
        argv.append("-rss_limit_mb=512")
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
