"""Class names: the shipped Places365 list, the --labels file rules, names carried in metadata.

References: the Places365 file parsed here by hand (``name index`` per line), hand-written
label files, and the refusals each rule promises (one line, exit 2, nothing written).
"""
import json
import os

import pytest
from click.testing import CliRunner

from dpn_gluon import labels
from dpn_gluon.convert import cli
from dpn_gluon.errors import CheckpointError, DPNError


def test_places365_names_in_the_file_order():
    rows = labels.PLACES365_FILE.read_text(encoding="utf-8").splitlines()
    by_index = {}
    for row in rows:
        name, index = row.rsplit(" ", 1)
        by_index[int(index)] = name
    want = tuple(by_index[i] for i in range(365))
    got = labels.builtin(365)
    assert got.names == want and len(set(want)) == 365
    assert got.display(0) == "airfield" and got.names[0] == "/a/airfield"
    i = want.index("/a/apartment_building/outdoor")
    assert got.display(i) == "apartment building (outdoor)"
    assert got.description_map()["/b/basketball_court/indoor"] == "basketball court (indoor)"


def test_imagenet_names_and_none_for_5k():
    one_k = labels.builtin(1000)
    assert one_k.names[0] == "n01440764" and one_k.display(0) == "n01440764 tench, Tinca tinca"
    assert labels.builtin(4786) is None and labels.builtin(10) is None


@pytest.mark.parametrize("text", [
    "cat\ndog\nbird\n",
    "0 cat\n1 dog\n2 bird\n",
    "2 bird\n0 cat\n1 dog\n",              # any order: the index decides
    "cat 0\n\ndog 1\nbird 2\n",             # Places365's own layout; blank lines skipped
    "\ufeffcat\r\ndog\r\nbird",             # written on Windows, no final newline
])
def test_label_file_layouts(tmp_path, text):
    path = tmp_path / "names.txt"
    path.write_text(text, encoding="utf-8")
    names = labels.read_file(path, 3).names
    assert list(names) == ["cat", "dog", "bird"]


@pytest.mark.parametrize("data, message", [
    (b"cat\ndog\n", "2 names, but the checkpoint has 3 classes"),
    (b"0 cat\n0 dog\n2 bird\n", "index 0 appears twice"),
    (b"0 cat\n1 dog\n3 bird\n", "2 is missing"),
    (b"cat\ndog\ncat\n", "repeats the name 'cat' of line 1"),
    (b"cat\n\xff\xfedog\nbird\n", "not UTF-8"),
    (b"", "no names"),
    (b"cat\n" + b"x" * 200 + b"\nbird\n", "a name of 200 characters"),
])
def test_label_file_refusals(tmp_path, data, message):
    path = tmp_path / "names.txt"
    path.write_bytes(data)
    with pytest.raises(DPNError, match=message):
        labels.read_file(path, 3)


def test_label_file_not_regular_or_huge(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(DPNError, match="a FIFO"):
        labels.read_file(fifo, 3)
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(labels.MAX_LABELS_BYTES + 1)
    with pytest.raises(DPNError, match="larger than"):
        labels.read_file(big, 3)


@pytest.mark.parametrize("value", ['["a", "b"', '{"a": 1}', '["a", 3, "c"]', '["a", "a", "c"]',
                                   '["a", "b"]'])
def test_metadata_labels_refused_unless_one_name_per_class(value):
    with pytest.raises(CheckpointError, match="metadata labels"):
        labels.from_metadata({"labels": value}, 3, "x.safetensors")
    assert labels.from_metadata({}, 3, "x") is None
    assert labels.from_metadata({"labels": json.dumps(["a", "b", "c"])}, 3, "x") == ["a", "b", "c"]


def convert_with_labels(src, tmp_path, text, target, out):
    """dpn-convert SRC --to TARGET -o OUT --labels names.txt (TEXT), without the check."""
    names = tmp_path / "names.txt"
    names.write_text(text, encoding="utf-8")
    res = CliRunner().invoke(cli.main, [str(src), "--to", target, "-o", str(out), "--no-check",
                                        "--labels", str(names)])
    return res, names


def test_convert_refuses_a_wrong_labels_file_before_writing(seeded_checkpoint, tmp_path):
    out = tmp_path / "hub"
    res, names = convert_with_labels(seeded_checkpoint("dpn68", symbol=False), tmp_path,
                                     "a\nb\n", "timm", out)
    assert res.exit_code == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "dpn-convert: error: %s: 2 names, but the checkpoint has 1000 classes" % names]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["names.txt"]


def test_labels_reach_the_onnx_metadata(seeded_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    import onnx
    out = tmp_path / "m.onnx"
    res, _ = convert_with_labels(seeded_checkpoint("dpn68", classes=3, symbol=False), tmp_path,
                                 "zebra\nyak\nxerus\n", "onnx", out)
    assert res.exit_code == 0, res.stderr
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["labels"]) == ["zebra", "yak", "xerus"]


# -- dpn-predict names every class set it can -------------------------------------------

@pytest.mark.parametrize("classes, carried, user, first", [
    (365, None, None, "airfield"),
    (4786, None, "file", "name_0000"),
    (3, ["x", "y", "z"], None, None),
    (4786, None, None, None),
])
def test_predict_names(monkeypatch, tmp_path, classes, carried, user, first):
    from test_evaluate_data import LinearRuntime, make_jpegs

    from dpn_gluon.evaluate import cli as ecli
    rt = LinearRuntime(32, classes=classes, seed=3)
    rt.labels = carried
    monkeypatch.setattr("dpn_gluon.runtimes.load_runtime", lambda *a, **k: rt)
    image = tmp_path / "photo.jpg"
    image.write_bytes(make_jpegs(1)[0])
    ckpt = tmp_path / "x-0000.params"
    ckpt.write_bytes(b"stand-in")
    args = [str(ckpt), str(image), "--size", "32", "--top", "3", "--json"]
    if user:
        names = tmp_path / "names.txt"
        names.write_text("".join("name_%04d\n" % i for i in range(classes)), encoding="utf-8")
        args += ["--labels", str(names)]
    res = CliRunner().invoke(ecli.predict_main, args)
    assert res.exit_code == 0, res.stderr
    top = json.loads(res.stdout)["predictions"][0]["top"]
    if carried is None and user is None and classes == 4786:
        assert [t["name"] for t in top] == [None] * 3
        assert res.stderr.count("no class names for these 4786 classes") == 1
        return
    assert res.stderr == ""
    table = (carried or [labels.builtin(365).display(i) for i in range(365)] if not user
             else ["name_%04d" % i for i in range(classes)])
    assert [t["name"] for t in top] == [table[t["index"]] for t in top]
    if first is not None:
        assert table[0] == first


def test_evaluate_labels_order_the_class_folders(monkeypatch, tmp_path):
    """Class folders named after --labels names score by the file's order, not sorted order."""
    from test_evaluate_data import (
        LinearRuntime,
        expected_errors,
        labels_at_ranks,
        make_jpegs,
        reference,
    )

    from dpn_gluon.evaluate import cli as ecli
    rt = LinearRuntime(32, classes=10)
    monkeypatch.setattr("dpn_gluon.runtimes.load_runtime", lambda *a, **k: rt)
    jpegs = make_jpegs()
    logits = reference(jpegs, 32, "authors", rt)
    truth = labels_at_ranks(logits)
    names = ["kind_%02d" % (9 - i) for i in range(10)]       # class 0 is kind_09
    folder = tmp_path / "val"
    for i, (payload, label) in enumerate(zip(jpegs, truth)):
        (folder / names[label]).mkdir(parents=True, exist_ok=True)
        (folder / names[label] / ("img%d.jpg" % i)).write_bytes(payload)
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(names) + "\n", encoding="utf-8")
    ckpt = tmp_path / "x-0000.params"
    ckpt.write_bytes(b"stand-in")
    args = [str(ckpt), "--data", str(folder), "--size", "32", "--workers", "0", "-q", "--json"]
    res = CliRunner().invoke(ecli.evaluate_main, args + ["--labels", str(names_file)])
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)
    assert (rec["top1_error"], rec["top5_error"]) == expected_errors(logits, truth)
    names_file.write_text("\n".join(names[:9]) + "\n", encoding="utf-8")
    res = CliRunner().invoke(ecli.evaluate_main, args + ["--labels", str(names_file)])
    assert res.exit_code == 2 and res.stderr.strip() == (
        "dpn-evaluate: error: %s: 9 names, but the checkpoint has 10 classes" % names_file)
