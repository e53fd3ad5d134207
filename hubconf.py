"""torch.hub entry points: one per architecture of the variant table (dpn_gluon/variants.py).

    model = torch.hub.load("PATH/TO/dpn-gluon", "dpn92", source="local",
                           checkpoint="dpn92-0000.params")     # or .pth, .safetensors, timm folder

returns the PyTorch DPN with timm's state_dict layout (dpn_gluon/convert/torch_dpn.py), in eval
mode, with the weights of any checkpoint ``dpn-convert`` reads (dpn_gluon.formats.canonical.read;
a file of another architecture is refused). Without ``checkpoint`` the model is uninitialized.
``mean_max=True`` gives the authors' test head (use it at 320 x 320); ``classes`` sets the
class count of an uninitialized model. The model's ``labels`` attribute holds the class names
the checkpoint carries (or the built-in ImageNet-1k / Places365 names), else None.

torch.hub must keep finding: ``dependencies`` and one public callable per architecture.
"""
import warnings as _warnings

from dpn_gluon import variants as _variants

dependencies = ["torch"]


def _entry(arch: str):
    def load(checkpoint=None, mean_max: bool = False, classes=None):
        from dpn_gluon import torch_dpn
        if checkpoint is None:
            model = torch_dpn.build_model(arch, classes, mean_max=mean_max)
            model.labels = None
            return model
        from dpn_gluon.formats.canonical import read
        weights = read(checkpoint, arch=arch, hash_source=False)
        with _warnings.catch_warnings():
            # the tensors are read-only views of the file; load_state_dict copies them
            _warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            model = torch_dpn.from_canonical(weights.tensors, arch, classes, weights.classifier,
                                             mean_max=mean_max, source=str(checkpoint))
        model.labels = weights.labels
        return model

    load.__name__ = load.__qualname__ = arch
    load.__doc__ = ("%s (%s): the PyTorch DPN; ``checkpoint`` is any file dpn-convert reads "
                    "(None: uninitialized)." % (arch, _variants.ARCHS[arch].paper))
    return load


for _arch in _variants.ARCHS:
    globals()[_arch] = _entry(_arch)
