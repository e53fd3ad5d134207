"""The variant table against the literal figures of docs/reference/original-dpn.md (sections 2, 5, 7)."""
import sys
from pathlib import Path

import pytest

from dpn_gluon import variants
from dpn_gluon.errors import CheckpointError, DPNError, KeyMismatch

# original-dpn.md section 2: stem (out, kernel), k_R, G, k_sec, inc_sec, feature channels.
CONFIG = {
    "dpn68": (10, 3, 128, 32, (3, 4, 12, 3), (16, 32, 32, 64), 832),
    "dpn68b": (10, 3, 128, 32, (3, 4, 12, 3), (16, 32, 32, 64), 832),
    "dpn92": (64, 7, 96, 32, (3, 4, 20, 3), (16, 32, 24, 128), 2688),
    "dpn98": (96, 7, 160, 40, (3, 6, 20, 3), (16, 32, 32, 128), 2688),
    "dpn107": (128, 7, 200, 50, (4, 8, 20, 3), (20, 64, 64, 128), 2688),
    "dpn131": (128, 7, 160, 40, (4, 8, 28, 3), (16, 32, 32, 128), 2688),
}
# original-dpn.md section 2: bottleneck width R per stage.
R = {"dpn68": (128, 256, 512, 1024), "dpn92": (96, 192, 384, 768),
     "dpn98": (160, 320, 640, 1280), "dpn107": (200, 400, 800, 1600),
     "dpn131": (160, 320, 640, 1280)}
# original-dpn.md section 7: learned parameters of each released checkpoint.
PARAMS = {"dpn68": 12611602, "dpn68-extra": 12611602, "dpn68-5k": 15765340,
          "dpn92": 37668392, "dpn92-extra": 37668392, "dpn92-5k": 47848946,
          "dpn92-places365": 35960877, "dpn98": 61570728, "dpn107-extra": 86917800,
          "dpn131": 79254504}
CHECKPOINTS = {"dpn68": ("dpn68", 1000, "fc6"), "dpn68-extra": ("dpn68b", 1000, "fc6-1k"),
               "dpn68-5k": ("dpn68b", 4786, "fc6"), "dpn92": ("dpn92", 1000, "fc6"),
               "dpn92-extra": ("dpn92", 1000, "fc6-1k"), "dpn92-5k": ("dpn92", 4786, "fc6"),
               "dpn92-places365": ("dpn92", 365, "fc6"), "dpn98": ("dpn98", 1000, "fc6"),
               "dpn107-extra": ("dpn107", 1000, "fc6-1k"), "dpn131": ("dpn131", 1000, "fc6")}


@pytest.mark.parametrize("name", list(CONFIG))
def test_architecture_config(name):
    a = variants.ARCHS[name]
    stem, kernel, k_r, g, k_sec, inc_sec, features = CONFIG[name]
    assert (a.stem_channels, a.stem_kernel, a.k_r, a.groups, a.k_sec, a.inc_sec,
            a.num_features) == (stem, kernel, k_r, g, k_sec, inc_sec, features)
    blocks = list(a.blocks())
    assert 1 + 3 * len(blocks) + 1 == int(name[3:].rstrip("b"))     # the name counts layers
    assert tuple(next(b.r for b in blocks if b.stage == s) for s in (2, 3, 4, 5)) == R[name.rstrip("b")]
    kinds = [(b.stage, b.index, b.kind) for b in blocks if b.kind != "normal"]
    assert kinds == [(2, 1, "proj"), (3, 1, "down"), (4, 1, "down"), (5, 1, "down")]
    assert all(b.b == name.endswith("b") for b in blocks)


def test_checkpoint_rows():
    assert {k: (c.arch, c.classes, c.classifier) for k, c in variants.CHECKPOINTS.items()} == CHECKPOINTS
    for name, want in CHECKPOINTS.items():
        arch, classes, classifier = variants.resolve(name)
        assert (arch.name, classes, classifier) == want


@pytest.mark.parametrize("name", list(PARAMS))
def test_count_params(name):
    arch, classes, _ = variants.resolve(name)
    assert variants.count_params(arch, classes) == PARAMS[name]


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_identify_every_row(name):
    arch, classes, classifier = variants.resolve(name)
    assert variants.identify(variants.tensor_spec(arch, classes, classifier)) == (arch, classes, classifier)


def test_identify_reports_mismatch():
    spec = dict(variants.tensor_spec(variants.ARCHS["dpn92"]))
    spec.pop("conv4_x__7_c1x1-a__conv_weight")
    spec["conv2_x__1_c3x3-b__conv_weight"] = (96, 4, 3, 3)
    with pytest.raises(KeyMismatch) as err:
        variants.identify(spec, source="x.params")
    msg = str(err.value)
    assert msg.startswith("x.params does not match dpn92")
    assert "conv4_x__7_c1x1-a__conv_weight" in msg and "(96, 4, 3, 3)" in msg


def test_resolve_rejects_bad_names():
    with pytest.raises(CheckpointError, match="dpn69"):
        variants.resolve("dpn69")
    with pytest.raises(CheckpointError, match="fc7"):
        variants.resolve("dpn68", classifier="fc7")
    assert variants.resolve("dpn92", 365)[1:] == (365, "fc6")


def test_tap_names():
    taps = variants.tap_names(variants.ARCHS["dpn68"])
    assert taps[:3] == ["pool1", "conv2_x__1_sum", "conv2_x__1_cat"]
    assert taps[-2:] == ["conv5_x_x__relu-sp__relu", "logits"]
    assert len(taps) == 2 + 2 * 22 + 1


# -- class counts: one bound for every reader and model (was test_hostile_more.py) ------------

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
