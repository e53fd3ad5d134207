"""More hostile cases, found after the merge (docs/hostile.md, "Red team, after the merge").

References: hand-chosen values and files; every public entry that builds a model (the Gluon
model, the PyTorch model, torch.hub) refuses them in one line before allocating anything.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dpn_gluon import variants
from dpn_gluon.errors import DPNError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("classes", [10 ** 8, 1_000_001, 0, -3, True, 2.5, "10"])
def test_class_counts_no_model_can_have_are_refused_before_allocating(classes):
    """A classifier of 10^8 classes is hundreds of GB: refused, not a MemoryError (or an OOM
    kill); 0 is not "the default"; bools, floats and strings are not counts."""
    with pytest.raises(DPNError, match="whole number from 1 to 1000000"):
        variants.resolve("dpn68", classes)
    sys.path.insert(0, str(ROOT))
    try:
        import hubconf
    finally:
        sys.path.remove(str(ROOT))
    pytest.importorskip("torch")
    with pytest.raises(DPNError, match="whole number"):
        hubconf.dpn68(classes=classes)


def test_the_bound_is_the_readers_bound():
    from dpn_gluon.formats import base
    assert base.MAX_CLASSES == variants.MAX_CLASSES == 1_000_000
    assert variants.resolve("dpn68", 1_000_000)[1] == 1_000_000
    assert variants.resolve("dpn68-5k")[1] == 4786
