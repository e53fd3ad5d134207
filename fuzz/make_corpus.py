"""Write the seed corpus for the .params fuzz target with MXNet's own writer.

One small file per dtype MXNet 1.9.1 can save (dict containers, 1-D..4-D, a few names),
plus a list container and hand-built V1 / pre-V1 (legacy) files, which only old MXNet wrote.
Run from the repository root (needs MXNet):  python fuzz/make_corpus.py
The outputs are committed under fuzz/corpus/params/; rerunning gives the same bytes.
"""
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "corpus" / "params"
DTYPES = ["float16", "float32", "float64", "uint8", "int8", "int32", "int64", "bool"]


def _values(dtype, shape, rng):
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    return (rng.standard_normal(shape) * 10).astype(dtype)


def main() -> int:
    import mxnet as mx
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        arrays = OrderedDict([
            ("arg:conv_weight", _values(dtype, (2, 1, 3, 3), rng)),
            ("arg:bn_gamma", _values(dtype, (2,), rng)),
            ("aux:bn_moving_var", _values(dtype, (2,), rng)),
            ("arg:fc_weight", _values(dtype, (3, 2), rng)),
        ])
        mx.nd.save(str(OUT / ("%s.params" % dtype)),
                   {k: mx.nd.array(v, dtype=dtype) for k, v in arrays.items()})
    mx.nd.save(str(OUT / "list.params"), [mx.nd.array(_values("float32", (2, 3, 1), rng))])
    with mx.util.np_shape(True):
        mx.nd.save(str(OUT / "v3_np_shape.params"),
                   {"scalar": mx.nd.array(np.float32(1.5)), "empty": mx.nd.zeros((2, 0))})
    data = _values("float32", (2, 3), rng).tobytes()
    head = struct.pack("<QQQ", 0x112, 0, 1)
    tail = struct.pack("<Q", 1) + struct.pack("<Q", 1) + b"w"
    (OUT / "legacy.params").write_bytes(
        head + struct.pack("<III", 2, 2, 3) + struct.pack("<iii", 1, 0, 0) + data + tail)
    (OUT / "v1.params").write_bytes(
        head + struct.pack("<Iiqq", 0xF993FAC8, 2, 2, 3) + struct.pack("<iii", 1, 0, 0) + data + tail)
    for path in sorted(OUT.iterdir()):        # every seed is a file MXNet itself reads
        with mx.util.np_shape(path.name.startswith("v3")):
            mx.nd.load(str(path))
        print(path.name, path.stat().st_size, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
