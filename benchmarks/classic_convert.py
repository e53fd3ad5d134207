"""The classic conversion route, as the older MXNet -> PyTorch DPN converters do it.

``mx.nd.load`` the whole ``.params`` file into NDArrays, ``asnumpy()`` each, rename to timm's
keys, ``torch.from_numpy`` + reshape into a state dict, ``torch.save``. Both MXNet and torch
are imported and the file is held in memory several times over (NDArrays, numpy copies,
the state dict, the pickle buffer). This is the baseline ``dpn-convert`` is measured
against; it is not part of the package.

    python -m benchmarks.classic_convert SRC.params OUT.pth
"""
import sys
from collections import OrderedDict


def convert(src: str, dst: str) -> None:
    import mxnet as mx
    import numpy as np
    import torch

    from dpn_gluon import variants
    from dpn_gluon.formats import names

    loaded = mx.nd.load(src)
    canonical = OrderedDict((k.split(":", 1)[1], v.asnumpy()) for k, v in loaded.items())
    arch, classes, classifier = variants.identify({k: v.shape for k, v in canonical.items()})
    unit = "b" if arch.b else "standard"
    mapping = names.rename_all(canonical, "mxnet", "timm", unit, classifier, src)
    state = OrderedDict()
    for key, (new, reshape) in mapping.items():
        value = canonical[key]
        state[new] = torch.from_numpy(np.array(value).reshape(
            names.reshape_for(reshape, "timm", value.shape)))
    torch.save(state, dst)


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2])
