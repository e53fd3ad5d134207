"""Data sets, metrics and the dpn-evaluate plumbing, with a stand-in runtime (no DPN).

Image sets are generated here: real JPEG files in the folder layout, an im2rec ``.lst``
and a ``.rec``/``.idx`` pair written by MXNet's own ``mx.recordio.MXIndexedRecordIO``.
The stand-in runtime is a fixed random linear map of the preprocessed pixels, so the
reported errors depend on every pixel the pipeline produced; the expected errors come from
``np.argsort`` over logits computed here on images preprocessed one by one.
"""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dpn_gluon.data import datasets as evdata
from dpn_gluon.data.preprocess import preprocess
from dpn_gluon.errors import DPNError
from dpn_gluon.evaluate import cli, evaluate
from dpn_gluon.evaluate.metrics import TopKError, label_rank
from dpn_gluon.runtimes import Runtime, parse_devices

#: Rank of each sample's label among its logits: 3 top-1 hits, 6 top-5 hits of 8.
TARGET_RANKS = [0, 3, 0, 9, 4, 1, 6, 0]
SHAPES = [(60, 80), (90, 64), (48, 48), (75, 100), (64, 120), (100, 70), (52, 61), (80, 80)]


def make_jpegs(seed=0, shapes=SHAPES):
    """Encoded JPEG bytes of smooth random pictures of several shapes."""
    rng = np.random.RandomState(seed)
    out = []
    for h, w in shapes:
        small = rng.randint(0, 256, (4, 5, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=92)
        out.append(buf.getvalue())
    return out


def labels_at_ranks(logits, ranks=TARGET_RANKS):
    """Labels whose rank among each row's logits is the given one."""
    order = np.argsort(-logits, axis=1, kind="stable")
    return np.array([order[i, r] for i, r in enumerate(ranks[:len(logits)])], dtype=np.int64)


def expected_errors(logits, labels):
    """Top-1/top-5 error (%) by np.argsort: the independent computation."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    top1 = 100.0 * np.mean(top[:, 0] != labels)
    top5 = 100.0 * np.mean([lab not in row for row, lab in zip(top, labels)])
    return top1, top5


def write_layouts(root: Path, jpegs, labels, classes, extra=()):
    """The same JPEGs as a class folder tree, a .lst list and a .rec/.idx pair.

    ``extra``: (name, bytes, label) of further files (e.g. corrupt ones), in every layout.
    """
    mx = pytest.importorskip("mxnet")
    items = [("img%03d.jpg" % i, b, int(lab)) for i, (b, lab) in enumerate(zip(jpegs, labels))]
    items += list(extra)
    folder = root / "folder"
    for c in range(classes):
        (folder / ("n%05d" % c)).mkdir(parents=True)
    listdir = root / "list"
    (listdir / "images").mkdir(parents=True)
    lines = []
    recdir = root / "rec"
    recdir.mkdir()
    writer = mx.recordio.MXIndexedRecordIO(str(recdir / "val.idx"), str(recdir / "val.rec"), "w")
    for i, (name, payload, label) in enumerate(items):
        (folder / ("n%05d" % label) / name).write_bytes(payload)
        (listdir / "images" / name).write_bytes(payload)
        lines.append("%d\t%d.000000\timages/%s\n" % (i, label, name))
        writer.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), i, 0), payload))
    writer.close()
    (listdir / "val.lst").write_text("".join(lines))
    return {"folder": folder, "list": listdir / "val.lst", "record": recdir / "val.rec"}


class LinearRuntime(Runtime):
    """Stand-in model: logits = flattened preprocessed pixels @ a fixed random matrix."""

    def __init__(self, crop, classes=10, seed=0):
        w = np.random.RandomState(seed).normal(0, 1, (3 * crop * crop, classes)).astype(np.float32)
        super().__init__("linear", "dpn68", classes, "fc6", ["cpu"],
                         lambda b: b.reshape(len(b), -1) @ w)


@pytest.fixture(scope="module")
def jpegs():
    return make_jpegs()


def reference(jpegs, crop, protocol, runtime):
    batch = np.stack([preprocess(b, crop, protocol) for b in jpegs])
    return runtime(batch)


@pytest.mark.parametrize("protocol", ["authors", "timm"])
@pytest.mark.parametrize("layout", ["folder", "list", "record"])
def test_errors_equal_argsort_on_every_layout(tmp_path, jpegs, layout, protocol):
    rt = LinearRuntime(32)
    logits = reference(jpegs, 32, protocol, rt)
    labels = labels_at_ranks(logits)
    paths = write_layouts(tmp_path, jpegs, labels, rt.classes)
    ds = evdata.open_dataset(paths[layout])
    assert ds.kind == layout and len(ds) == len(jpegs)
    assert sorted(ds.labels.tolist()) == sorted(labels.tolist())
    rec = evaluate(rt, ds, 32, protocol, batch_size=3, progress=False)
    top1, top5 = expected_errors(logits, labels)
    assert (rec["top1_error"], rec["top5_error"]) == (top1, top5) == (62.5, 25.0)
    assert rec["images"] == 8 and rec["skipped"] == 0
    assert rec["resize_short"] == (32 if protocol == "authors" else 36)


def test_worker_processes_give_the_same_batches(tmp_path, jpegs):
    paths = write_layouts(tmp_path, jpegs, [0] * len(jpegs), 2)
    ds = evdata.open_dataset(paths["record"])
    serial = list(evdata.iter_batches(ds, 32, "authors", 3, workers=0))
    parallel = list(evdata.iter_batches(ds, 32, "authors", 3, workers=2))
    assert [len(b.labels) for b in parallel] == [3, 3, 2]
    by_file = np.stack([preprocess(evdata.read_source(s), 32, "authors") for s in ds.sources])
    np.testing.assert_array_equal(np.concatenate([b.data for b in serial]), by_file)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.indices, b.indices)


def test_record_reader_matches_mxnet_and_vector_labels(tmp_path, jpegs):
    mx = pytest.importorskip("mxnet")
    rec, idx = tmp_path / "v.rec", tmp_path / "v.idx"
    w = mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "w")
    for i, b in enumerate(jpegs[:3]):
        w.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, [i + 1.0, 7.0], i, 0), b))
    w.close()
    ds = evdata.open_dataset(rec)
    assert ds.labels.tolist() == [1, 2, 3]
    r = mx.recordio.MXIndexedRecordIO(str(idx), str(rec), "r")
    for i, src in enumerate(ds.sources):
        assert evdata.read_source(src) == mx.recordio.unpack(r.read_idx(i))[1] == jpegs[i]


def test_list_root_and_multi_label_lines(tmp_path, jpegs):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(jpegs[0])
    lst = tmp_path / "lists" / "val.lst"
    lst.parent.mkdir()
    lst.write_text("0\t4\t0.5\ta.jpg\n\n")
    ds = evdata.open_dataset(lst, root=tmp_path / "imgs")
    assert ds.labels.tolist() == [4] and Path(ds.sources[0]).exists()
    lst.write_text("0\tcat\ta.jpg\n")
    with pytest.raises(DPNError, match=r"val.lst:1: not a .lst line"):
        evdata.open_dataset(lst)


def test_metrics_streaming_equals_one_shot_and_argsort():
    rng = np.random.RandomState(0)
    logits = rng.normal(size=(50, 12))
    labels = rng.randint(0, 12, 50)
    one, many = TopKError(), TopKError()
    one.update(logits, labels)
    for s in range(0, 50, 7):
        many.update(logits[s:s + 7], labels[s:s + 7])
    assert one.errors() == many.errors() == dict(zip(("top1_error", "top5_error"),
                                                     expected_errors(logits, labels)))
    assert label_rank(np.array([[0.1, 0.9, 0.5]]), np.array([2])).tolist() == [1]
    assert np.isnan(TopKError().error(1))


@pytest.mark.parametrize("spec,parsed", [("cpu", ("cpu", [])), ("gpu", ("gpu", [0])),
                                         ("gpu:0,1", ("gpu", [0, 1])), ("cuda:1", ("gpu", [1])),
                                         ("cpu:0,1", ("cpu", [0, 1]))])
def test_parse_devices(spec, parsed):
    assert parse_devices(spec) == parsed


@pytest.mark.parametrize("spec", ["tpu", "gpu:a", "gpu:0,0", "cuda:-1"])
def test_parse_devices_rejects(spec):
    with pytest.raises(DPNError, match="bad --device"):
        parse_devices(spec)


# -- the command line, with the stand-in runtime -------------------------------------------

@pytest.fixture
def fake_runtime(monkeypatch):
    made = {}

    def load(kind, checkpoint, devices="cpu", mean_max=False, precision="fp32", **options):
        made["rt"] = LinearRuntime(32, classes=made.get("classes", 10))
        return made["rt"]

    monkeypatch.setattr("dpn_gluon.runtimes.load_runtime", load)
    return made


def run(command, args):
    result = CliRunner().invoke(command, [str(a) for a in args])
    return result


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "fake-0000.params"
    path.write_bytes(b"unused by the stand-in runtime")
    return path


def test_cli_json_and_text(tmp_path, jpegs, fake_runtime, checkpoint):
    logits = reference(jpegs, 32, "authors", LinearRuntime(32))
    labels = labels_at_ranks(logits)
    paths = write_layouts(tmp_path, jpegs, labels, 10)
    res = run(cli.evaluate_main, [checkpoint, "--data", paths["list"], "--size", 32,
                                  "--workers", 0, "--json", "--limit", 5])
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)
    keep = [0, 1, 3, 4, 6]          # 5 of 8, evenly spaced
    assert (rec["top1_error"], rec["top5_error"]) == expected_errors(logits[keep], labels[keep])
    assert rec["images"] == 5 and rec["data_format"] == "list" and rec["protocol"] == "authors"
    assert "img/s" in res.stderr or "img" in res.stderr        # the progress bar
    res = run(cli.evaluate_main, [checkpoint, "--data", paths["folder"], "--size", 32,
                                  "--workers", 0, "-q"])
    assert res.exit_code == 0 and res.stderr == "", res.stderr   # -q: the report, stdout only
    assert "top-1 error 62.50 %" in res.stdout and "top-5 error 25.00 %" in res.stdout
    assert "protocol=authors size=32 resize_short=32 crop=32 bicubic(OpenCV)" in res.stdout


def test_cli_corrupt_image_skipped_or_strict(tmp_path, jpegs, fake_runtime, checkpoint):
    logits = reference(jpegs, 32, "authors", LinearRuntime(32))
    labels = labels_at_ranks(logits)
    bad = [("zz_bad.jpg", b"\xff\xd8\xff\xe0 truncated", 1), ("zz_empty.jpg", b"", 2)]
    paths = write_layouts(tmp_path, jpegs, labels, 10, extra=bad)
    for layout in ("folder", "list", "record"):
        res = run(cli.evaluate_main, [checkpoint, "--data", paths[layout], "--size", 32,
                                      "--workers", 0, "--json", "-q"])
        assert res.exit_code == 0, res.stderr
        rec = json.loads(res.stdout)
        assert rec["skipped"] == 2 and rec["images"] == 8
        assert (rec["top1_error"], rec["top5_error"]) == (62.5, 25.0)
        assert "warning: skipped 2 unreadable image(s)" in res.stderr
        assert "cannot decode image" in res.stderr
        res = run(cli.evaluate_main, [checkpoint, "--data", paths[layout], "--size", 32,
                                      "--workers", 0, "--strict", "-q"])
        assert res.exit_code == 2 and res.stdout == ""
        assert "cannot decode image" in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_cli_label_out_of_range(tmp_path, jpegs, fake_runtime, checkpoint):
    paths = write_layouts(tmp_path, jpegs, [0] * 7 + [12], 13)
    for layout in ("list", "record"):
        res = run(cli.evaluate_main, [checkpoint, "--data", paths[layout], "--size", 32, "-q"])
        assert res.exit_code == 2, res.stderr
        assert "label 12" in res.stderr and "out of range" in res.stderr
        assert "10 classes" in res.stderr and "Traceback" not in res.stderr
    res = run(cli.evaluate_main, [checkpoint, "--data", paths["folder"], "--size", 32, "-q"])
    assert res.exit_code == 2 and "13 class folders" in res.stderr


@pytest.mark.parametrize("setup,message", [
    (lambda p: p.mkdir(), "no class sub-folders"),
    (lambda p: [(p / c).mkdir(parents=True) for c in ("a", "b")], "no images found"),
])
def test_cli_empty_folder(tmp_path, fake_runtime, checkpoint, setup, message):
    data = tmp_path / "val"
    setup(data)
    res = run(cli.evaluate_main, [checkpoint, "--data", data, "-q"])
    assert res.exit_code == 2 and message in res.stderr and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1


def test_cli_usage_errors(tmp_path, fake_runtime, checkpoint, jpegs):
    paths = write_layouts(tmp_path, jpegs, [0] * 8, 2)
    res = run(cli.evaluate_main, [checkpoint, "--data", paths["folder"], "--size", 64,
                                  "--mean-max"])
    assert res.exit_code == 2 and "--mean-max needs --size >= 193" in res.stderr
    res = run(cli.evaluate_main, [checkpoint, "--data", paths["folder"], "--protocol", "caffe"])
    assert res.exit_code == 2
    other = tmp_path / "notes.txt"
    other.write_text("x")
    res = run(cli.evaluate_main, [checkpoint, "--data", other])
    assert res.exit_code == 2 and "not a folder, a .lst list or a .rec" in res.stderr
    res = run(cli.evaluate_main, ["--help"])
    assert res.exit_code == 0 and "authors" in res.stdout


def test_dataset_errors_are_one_line(tmp_path):
    with pytest.raises(DPNError, match="a record set needs both"):
        (tmp_path / "x.rec").write_bytes(b"")
        evdata.open_dataset(tmp_path / "x.rec")
    (tmp_path / "y.rec").write_bytes(b"garbage!" * 4)
    (tmp_path / "y.idx").write_text("0\t0\n")
    with pytest.raises(DPNError, match="bad magic"):
        evdata.open_dataset(tmp_path / "y.rec")


def test_synset_folders_are_labelled_by_synset_for_1000_classes(tmp_path, jpegs):
    """A folder with 3 of the 1000 synsets: labels 0, 1 and 999, not 0, 1, 2."""
    synsets = ["n01440764", "n01443537", "n15075141"]
    for i, b in enumerate(jpegs[:6]):
        d = tmp_path / "val" / synsets[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        (d / ("%d.jpg" % i)).write_bytes(b)
    ds = evdata.open_dataset(tmp_path / "val")
    assert ds.relabel(["x", "y"]) is ds            # not synset folders: sorted order kept
    bias = np.zeros(1000, np.float32)
    bias[999], bias[1] = 2.0, 1.0                  # everything looks like toilet tissue
    rt = Runtime("bias", "dpn68", 1000, "fc6", ["cpu"],
                 lambda b: np.tile(bias, (len(b), 1)) + 1e-3 * b.mean(axis=(1, 2, 3))[:, None])
    rec = evaluate(rt, ds, 32, "authors", progress=False)
    # 2 of 6 images are in n15075141: top-1 only if it is class 999 (sorted folders: 2).
    # Classes 1 and 0 rank 2nd and 3rd (all others tie below), so top-5 is always right.
    assert rec["top1_error"] == 100.0 * 4 / 6 and rec["top5_error"] == 0.0


def test_decoding_workers_do_not_inherit_the_commands_signal_handlers():
    """The commands' SIGTERM/SIGHUP handlers unwind for the parent's cleanup; a pool worker
    that ran them could die holding the task queue's lock, and Pool.terminate() would then
    wait forever (seen: dpn-evaluate hung in the full suite). Workers get the defaults."""
    import signal

    from dpn_gluon.data import datasets as data
    from dpn_gluon.safeio.atomic import handling_signals
    with handling_signals():
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        try:
            data._init_worker(32, "authors")
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        finally:
            data._WORKER_ARGS = None
