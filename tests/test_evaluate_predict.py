"""dpn-predict: ImageNet-1k names in the authors' (sorted synset) label order, indices otherwise.

The stand-in runtime (tests/test_evaluate_data.py) replaces the network; the expected
classes and probabilities are computed here with numpy from the same preprocessed pixels.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_evaluate_data import LinearRuntime, make_jpegs

from dpn_gluon.data.preprocess import preprocess
from dpn_gluon.evaluate import class_names, cli, imagenet_synsets


def test_imagenet_synsets_are_the_1000_sorted_wordnet_ids():
    rows = imagenet_synsets()
    ids = [s for s, _ in rows]
    assert len(ids) == len(set(ids)) == 1000 and ids == sorted(ids)
    assert all(s.startswith("n") and len(s) == 9 and s[1:].isdigit() for s in ids)
    # Well-known indices of the sorted order (Keras / torchvision / timm use the same).
    assert rows[0] == ("n01440764", "tench, Tinca tinca")
    assert rows[1][1].startswith("goldfish")
    assert rows[207][1] == "golden retriever"
    assert rows[281][1] == "tabby, tabby cat"
    assert rows[999] == ("n15075141", "toilet tissue, toilet paper, bathroom tissue")
    assert class_names(1000)[0] == "n01440764 tench, Tinca tinca"
    assert class_names(4786) is None        # ImageNet-5k's table is not public: --labels
    places = class_names(365)                # tests/test_labels.py checks them in full
    assert places[0] == "airfield" and places[8] == "apartment building (outdoor)"


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, b in enumerate(make_jpegs(1)[:3]):
        p = tmp_path / ("photo%d.jpg" % i)
        p.write_bytes(b)
        paths.append(p)
    return paths


@pytest.mark.parametrize("classes", [1000, 4786])
def test_predict_names_and_probabilities(monkeypatch, images, classes):
    rt = LinearRuntime(32, classes=classes, seed=3)
    monkeypatch.setattr("dpn_gluon.runtimes.load_runtime", lambda *a, **k: rt)
    ckpt = images[0].with_name("x-0000.params")
    ckpt.write_bytes(b"stand-in")
    args = [str(ckpt)] + [str(p) for p in images] + ["--size", "32", "--top", "3"]
    res = CliRunner().invoke(cli.predict_main, args + ["--json"])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)["predictions"]
    logits = rt(np.stack([preprocess(p, 32, "authors") for p in images])).astype(np.float64)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    lines = ((Path(cli.__file__).parents[1] / "data" / "imagenet_classes.txt")
             .read_text(encoding="utf-8").splitlines())
    for p, row, pred in zip(images, prob, out):
        top = np.argsort(-row)[:3]
        assert pred["image"] == str(p)
        assert [t["index"] for t in pred["top"]] == top.tolist()
        np.testing.assert_allclose([t["probability"] for t in pred["top"]], row[top], rtol=1e-6)
        names = [t["name"] for t in pred["top"]]
        assert names == ([lines[i] for i in top] if classes == 1000 else [None] * 3)
    res = CliRunner().invoke(cli.predict_main, args)
    assert res.exit_code == 0
    first = res.stdout.splitlines()[1]
    if classes == 1000:
        assert lines[int(np.argsort(-prob[0])[0])] in first
    else:
        assert "class %d" % np.argsort(-prob[0])[0] in first


def test_predict_bad_image_exit_2(monkeypatch, tmp_path):
    monkeypatch.setattr("dpn_gluon.runtimes.load_runtime",
                        lambda *a, **k: LinearRuntime(32, classes=1000))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    ckpt = tmp_path / "x-0000.params"
    ckpt.write_bytes(b"stand-in")
    res = CliRunner().invoke(cli.predict_main, [str(ckpt), str(bad), "--size", "32"])
    assert res.exit_code == 2 and "bad.png: cannot decode image" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
