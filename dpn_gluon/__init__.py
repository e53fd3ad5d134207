"""dpn-gluon: the authors' Dual Path Networks in MXNet Gluon, and their checkpoints in any framework.

Public API (other code and users depend on these names):

- :func:`list_models` -- the architecture names of the variant table;
- :func:`get_model` -- an uninitialized Gluon HybridBlock for an architecture or checkpoint name;
- :func:`load_checkpoint` -- a ready HybridBlock from an authors'-format ``PREFIX-0000.params``;
- :func:`write_seeded_checkpoint` -- an authors'-format checkpoint with seeded weights.

Importing this package does not import MXNet or torch; the functions that need MXNet import it.
"""
from .errors import CheckpointError, DPNError, KeyMismatch
from .variants import ARCHS, CHECKPOINTS
from .version import __version__ as __version__  # the public dpn_gluon.__version__

__all__ = ["list_models", "list_checkpoints", "get_model", "load_checkpoint",
           "write_seeded_checkpoint", "DPNError", "CheckpointError", "KeyMismatch"]


def list_models():
    """The architecture names: dpn68, dpn68b, dpn92, dpn98, dpn107, dpn131."""
    return list(ARCHS)


def list_checkpoints():
    """The names of the checkpoints the authors released (dpn68-extra, dpn92-5k, ...)."""
    return list(CHECKPOINTS)


def get_model(name, classes=None, mean_max=False, classifier=None, **kwargs):
    """An uninitialized Gluon HybridBlock; see :func:`dpn_gluon.model.get_model`."""
    from .model import get_model as _get_model
    return _get_model(name, classes=classes, mean_max=mean_max, classifier=classifier, **kwargs)


def load_checkpoint(path, ctx=None, mean_max=False, **kwargs):
    """A ready HybridBlock from an authors' checkpoint; see :func:`dpn_gluon.model.load_checkpoint`."""
    from .model import load_checkpoint as _load_checkpoint
    return _load_checkpoint(path, ctx=ctx, mean_max=mean_max, **kwargs)


def write_seeded_checkpoint(prefix, name="dpn68", seed=0, **kwargs):
    """Write an authors'-format checkpoint with seeded weights; see :mod:`dpn_gluon.checkpoint`."""
    from .checkpoint import write_seeded_checkpoint as _write
    return _write(prefix, name=name, seed=seed, **kwargs)
