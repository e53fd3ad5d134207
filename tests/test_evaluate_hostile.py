"""Hostile inputs to dpn-evaluate and dpn-predict: every one a one-line error (exit 2), never
a hang, a MemoryError or a traceback; images of every mode scaled correctly.

References are independent of the code under test: ``.rec`` records are built here byte by
byte (checked against ``mx.recordio.pack``), image modes against numpy arithmetic and PIL's
own ``convert``, the bounded timm resize against PIL's full resize then crop. FIFOs and
``/dev/zero`` are real; a test that would hang is stopped by an alarm.
"""
import io
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_evaluate_data import LinearRuntime, make_jpegs

from dpn_gluon.data import datasets as evdata
from dpn_gluon.data import images
from dpn_gluon.data import preprocess as pp
from dpn_gluon.errors import DPNError
from dpn_gluon.evaluate import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def alarm():
    """A regression that blocks on a FIFO fails the test instead of hanging CI."""
    def stop(*_):
        raise TimeoutError("blocked: a FIFO or device was read")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    return path


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.jpg"
    path.write_bytes(make_jpegs(2)[0])
    return path


def one_line(res, prog):
    """The CLI failed the way the project promises: exit 2, one stderr line, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prog + ": error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


# -- files that are not regular ------------------------------------------------------------

def test_fifo_checkpoint_is_refused_not_waited_for(fifo, good):
    res = CliRunner().invoke(cli.predict_main, [str(fifo), str(good), "--size", "32"])
    assert "a FIFO" in one_line(res, "dpn-predict") and res.stdout == ""


def test_fifo_and_device_images_are_reported_and_the_others_predicted(monkeypatch, fifo, good,
                                                                     tmp_path):
    monkeypatch.setattr("dpn_gluon.runtimes.load_runtime",
                        lambda *a, **k: LinearRuntime(32, classes=1000))
    ckpt = tmp_path / "x-0000.params"
    ckpt.write_bytes(b"stand-in")
    missing = tmp_path / "missing.jpg"
    args = [str(ckpt), str(fifo), str(good), "/dev/zero", str(missing), str(good), "--size", "32"]
    res = CliRunner().invoke(cli.predict_main, args)
    assert res.exit_code == 2, res.stderr
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("dpn-predict: error: ") for e in errors)
    assert "a FIFO" in errors[0] and "a character device" in errors[1]
    assert "missing.jpg" in errors[2]
    assert res.stdout.count(str(good)) == 2 and "Traceback" not in res.stderr
    assert "Exit 0: every image predicted; 2: some image" in " ".join(cli.predict_main.help.split())


@pytest.mark.parametrize("name", ["val.lst", "val.rec", "val.idx"])
def test_fifo_data_files_are_refused(tmp_path, name):
    (tmp_path / "val.rec").write_bytes(b"")
    (tmp_path / "val.idx").write_bytes(b"")
    (tmp_path / name).unlink(missing_ok=True)
    os.mkfifo(tmp_path / name)
    with pytest.raises(DPNError, match="a FIFO"):
        evdata.open_dataset(tmp_path / name)


def test_list_entries_naming_devices_and_fifos_are_skipped_in_one_line(tmp_path, fifo, good):
    lst = tmp_path / "val.lst"
    lst.write_text("0\t1\t/dev/zero\n1\t2\t%s\n2\t3\t%s\n" % (fifo.name, good.name))
    ds = evdata.open_dataset(lst)
    batches = list(evdata.iter_batches(ds, 32, "authors", 8))
    assert [b.indices.tolist() for b in batches] == [[2]]
    skipped = batches[0].skipped
    assert "/dev/zero: a character device" in skipped[0] and "a FIFO" in skipped[1]
    with pytest.raises(DPNError, match="/dev/zero: a character device"):
        list(evdata.iter_batches(ds, 32, "authors", 8, strict=True))


# -- .lst and .idx: strict text ------------------------------------------------------------

BAD_LST_LINES = [
    b"0\tinf\ta.jpg", b"0\t1e30\ta.jpg", b"0\tnan\ta.jpg", b"0\t-1\ta.jpg", b"0\t1.5\ta.jpg",
    b"0\t1_0\ta.jpg", b"0\t 3\ta.jpg", b"0\t0x10\ta.jpg", b"0\t99999999\ta.jpg", b"x\t1\ta.jpg",
    b"-1\t1\ta.jpg", b"0\t1", b"0\t1\t", b"0\t1\tinf\ta.jpg", b"0\t1\ta\x00b.jpg",
    b"0\t1\t\xff\xfe.jpg", b"0\t1\t" + b"a" * 70000,
]


@pytest.mark.parametrize("line", BAD_LST_LINES, ids=range(len(BAD_LST_LINES)))
def test_bad_lst_lines_are_one_line_errors_naming_the_line(tmp_path, line):
    lst = tmp_path / "val.lst"
    lst.write_bytes(b"0\t3.000000\tok.jpg\n\n" + line + b"\n")
    with pytest.raises(DPNError, match=r"val\.lst:3: ") as err:
        evdata.open_dataset(lst)
    assert "\n" not in str(err.value)


def test_good_lst_lines_as_im2rec_writes_them(tmp_path):
    lst = tmp_path / "val.lst"
    lst.write_text("0\t3.000000\ta.jpg\n1\t7\t0.5\t-2e3\tsub/b c.jpg\r\n")
    ds = evdata.open_dataset(lst)
    assert ds.labels.tolist() == [3, 7]
    assert ds.sources == [str(tmp_path / "a.jpg"), str(tmp_path / "sub/b c.jpg")]


@pytest.mark.parametrize("line", [b"0\t-8", b"0\tabc", b"0", b"0\t1\t2", b"\xff\t0", b"0\t1e3",
                                  b"0\t4096", b"0\t99999999999999999999999"])
def test_bad_idx_lines_are_one_line_errors(tmp_path, line):
    write_rec(tmp_path, [record(1.0)])
    (tmp_path / "val.idx").write_bytes(b"0\t0\n" + line + b"\n")
    with pytest.raises(DPNError, match=r"val\.idx:2: "):
        evdata.open_dataset(tmp_path / "val.rec")


# -- .rec: every length and label checked --------------------------------------------------

MAGIC = 0xCED7230A


def record(label, image=b"img", flag=0, labels=(), magic=MAGIC, cflag=0, length=None):
    """One RecordIO record as dmlc-core writes it: magic, (cflag << 29 | length), IRHeader
    ('IfQQ': flag, label, id, id2), ``flag`` float labels, the image; padded to 4 bytes."""
    payload = struct.pack("<IfQQ", flag, label, 0, 0) + struct.pack("<%df" % len(labels), *labels)
    payload += image
    n = len(payload) if length is None else length
    pad = b"\0" * (-len(payload) % 4)
    return struct.pack("<II", magic, (cflag << 29) | n) + payload + pad


def write_rec(folder, records):
    blob, offsets = b"", []
    for r in records:
        offsets.append(len(blob))
        blob += r
    (folder / "val.rec").write_bytes(blob)
    (folder / "val.idx").write_text("".join("%d\t%d\n" % (i, o) for i, o in enumerate(offsets)))
    return folder / "val.rec"


def test_hand_built_records_are_mxnets():
    mx = pytest.importorskip("mxnet")
    ours = record(5.0, b"abcde")
    theirs = mx.recordio.pack(mx.recordio.IRHeader(0, 5.0, 0, 0), b"abcde")
    assert ours[8:8 + len(theirs)] == theirs
    assert struct.unpack("<I", ours[4:8])[0] == len(theirs)


BAD_RECORDS = {
    "nan label": record(float("nan")), "inf label": record(float("inf")),
    "negative label": record(-1.0), "fractional label": record(2.5), "huge label": record(1e30),
    "nan in label vector": record(0.0, flag=2, labels=(float("nan"), 1.0)),
    "bad magic": record(1.0, magic=0x12345678), "split record": record(1.0, cflag=1),
    "length past the end": record(1.0, length=1 << 28), "too short": record(1.0, length=4),
    "label vector too long": record(1.0, flag=1 << 30), "truncated header": record(1.0)[:6],
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_records_are_one_line_errors(tmp_path, case):
    rec = write_rec(tmp_path, [record(1.0), BAD_RECORDS[case]])
    with pytest.raises(DPNError, match=r"val\.rec: record at offset %d: " % len(record(1.0))):
        evdata.open_dataset(rec)


def test_good_hand_built_records_read_back(tmp_path):
    jpeg = make_jpegs(3)[0]
    rec = write_rec(tmp_path, [record(4.0, jpeg), record(0.0, jpeg, flag=2, labels=(9.0, 1.0))])
    ds = evdata.open_dataset(rec)
    assert ds.labels.tolist() == [4, 9]
    assert all(evdata.read_source(s) == jpeg for s in ds.sources)


def test_cli_reports_a_bad_label_in_one_line(tmp_path):
    lst = tmp_path / "val.lst"
    lst.write_text("0\tinf\ta.jpg\n")
    res = CliRunner().invoke(cli.evaluate_main, ["x-0000.params", "--data", str(lst)])
    assert "val.lst:1: " in one_line(res, "dpn-evaluate")
    res = CliRunner().invoke(cli.evaluate_main, ["x-0000.params", "--data", str(tmp_path / "no")])
    one_line(res, "dpn-evaluate")


# -- images: modes, bounds ----------------------------------------------------------------

def png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_16_bit_gray_is_scaled_not_clipped():
    v = np.array([[0, 1, 128, 129, 257, 32767, 32768, 65279, 65534, 65535]] * 4, dtype=np.uint16)
    data = png(Image.fromarray(v))
    decoded = np.asarray(images.load_image(data))
    expected = np.floor(v.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert decoded.shape == v.shape + (3,)
    np.testing.assert_array_equal(decoded, np.repeat(expected[..., None], 3, axis=2))
    assert decoded.max() == 255 and decoded[0, 5, 0] == 127        # not clipped at 255


def test_32_bit_int_and_float_modes():
    gray = np.arange(0, 60000, 1000, dtype=np.int32).reshape(6, 10)
    out = np.asarray(images.load_image(Image.fromarray(gray, "I")))[..., 0]
    np.testing.assert_array_equal(out, np.floor(gray * 255 / 65535 + 0.5))
    f = np.array([[-3.0, 0.4, 0.6, 127.5, 254.49, 300.0]], dtype=np.float32)
    out = np.asarray(images.load_image(Image.fromarray(f, "F")))[..., 0]
    np.testing.assert_array_equal(out, [[0, 0, 1, 128, 254, 255]])
    f[0, 0] = np.nan
    with pytest.raises(images.ImageError, match="NaN"):
        images.load_image(Image.fromarray(f, "F"))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr"])
def test_other_modes_are_pils_rgb(mode):
    rgb = Image.fromarray(np.random.RandomState(0).randint(0, 256, (20, 30, 3)).astype(np.uint8))
    img = rgb.convert(mode)
    np.testing.assert_array_equal(np.asarray(images.load_image(img)),
                                  np.asarray(img.convert("RGB")))


def png_header(width, height):
    """A PNG declaring ``width x height`` in its IHDR, with one tiny IDAT: 60 bytes."""
    import zlib

    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [(9000, 9000), (20000, 20000), (1, 1 << 27)])
def test_pixel_bombs_are_refused_before_decoding(size):
    with pytest.raises(images.ImageError, match="pixels"):
        images.load_image(png_header(*size))


def test_file_size_bound(monkeypatch, good):
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(images.ImageError, match="more than the 100"):
        images.load_image(good)
    with pytest.raises(images.ImageError, match="more than the 100"):
        images.load_image(good.read_bytes())


def test_extreme_aspect_ratio_timm_resizes_the_crop_box_only():
    strip = Image.fromarray(np.random.RandomState(1).randint(0, 256, (20000, 1, 3)).astype(np.uint8))
    assert pp.resize_crop(strip, 224, "timm").shape == (224, 224, 3)
    with pytest.raises(images.ImageError, match="aspect ratio"):
        pp.resize_crop(strip, 224, "authors", "strip.png")


def test_crop_box_resize_is_the_full_resize_within_one_level(monkeypatch):
    rng = np.random.RandomState(2)
    img = Image.fromarray(rng.randint(0, 256, (40, 300, 3)).astype(np.uint8))
    full = pp.resize_crop(img, 64, "timm").astype(int)             # resize, then crop
    monkeypatch.setattr(pp, "MAX_RESIZED_PIXELS", 100)
    boxed = pp.resize_crop(img, 64, "timm").astype(int)
    assert np.abs(boxed - full).max() <= 1 and (boxed != full).mean() < 0.01


# -- a missing optional package: one line, exit 2 ------------------------------------------

SHIM = """
import sys
for hidden in sys.argv.pop(1).split(','):
    sys.modules[hidden] = None
module, function = sys.argv.pop(1).split(':')
prog = sys.argv[0] = sys.argv.pop(1)
getattr(__import__(module, fromlist=[function]), function)()
"""


def run_hiding(hide, entry, prog, *args):
    proc = subprocess.run([sys.executable, "-c", SHIM, hide, entry, prog] + [str(a) for a in args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return proc.returncode, proc.stdout, proc.stderr


PREDICT = "dpn_gluon.evaluate.cli:predict_main"
EVALUATE = "dpn_gluon.evaluate.cli:evaluate_main"
CONVERT = "dpn_gluon.convert.cli:main"


@pytest.mark.parametrize("hide, entry, prog, runtime, package, extra", [
    ("mxnet", PREDICT, "dpn-predict", "gluon", "mxnet", "mxnet"),
    ("torch", EVALUATE, "dpn-evaluate", "torch", "torch", "torch"),
    ("onnxruntime", PREDICT, "dpn-predict", "onnx", "onnxruntime", "onnx"),
])
def test_missing_runtime_is_one_line(seeded_checkpoint, good, hide, entry, prog, runtime,
                                     package, extra):
    ckpt = seeded_checkpoint("dpn68", symbol=False)
    data = ["--data", str(good.parent / "val.lst")] if prog == "dpn-evaluate" else [good]
    (good.parent / "val.lst").write_text("0\t1\t%s\n" % good.name)
    code, out, err = run_hiding(hide, entry, prog, ckpt, *data, "--runtime", runtime,
                                "--size", "32", "-q" if prog == "dpn-evaluate" else "--top=1")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("%s: error: --runtime %s needs %s" % (prog, runtime, package))
    assert 'pip install "dpn-gluon[%s]"' % extra in err and "--runtime " in err.split(";")[-1]


def test_convert_to_onnx_without_onnx_is_one_line(seeded_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    code, stdout, err = run_hiding("onnx", CONVERT, "dpn-convert",
                                   seeded_checkpoint("dpn68", symbol=False), "--to", "onnx",
                                   "-o", out)
    assert code == 2 and stdout == "" and not out.exists() and not list(tmp_path.iterdir())
    assert "Traceback" not in err and err.strip().splitlines()[-1] == ('dpn-convert: error: --to onnx needs onnx, which is not installed: '
                           'pip install "dpn-gluon[onnx]"')


def test_convert_check_without_torch_is_one_line(seeded_checkpoint):
    ckpt = seeded_checkpoint("dpn68", symbol=False)
    code, _, err = run_hiding("torch", CONVERT, "dpn-convert", "check", ckpt, ckpt,
                              "--runtime", "torch", "--size", "32", "--batch", "1")
    assert code == 2 and "Traceback" not in err, err
    err = err.strip().splitlines()[-1]        # after the two lines naming what was read
    assert err.startswith("dpn-convert: error: --runtime torch needs torch")
    assert 'pip install "dpn-gluon[torch]"; or use --runtime onnx' in err


def test_authors_protocol_without_opencv_notes_and_runs_numpy(tmp_path, good,
                                                              seeded_checkpoint):
    pytest.importorskip("cv2")
    script = ("import sys; sys.modules['cv2'] = None; import numpy as np; "
              "from dpn_gluon.data import preprocess as pp; "
              "np.save(sys.argv[1], pp.preprocess(sys.argv[2], 224)); "
              "print(pp.authors_resize_backend())")
    proc = subprocess.run([sys.executable, "-c", script, tmp_path / "x.npy", good], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and "in numpy" in proc.stdout, proc.stderr
    numpy_path = np.load(tmp_path / "x.npy")
    with_cv2 = pp.preprocess(good, 224)
    assert np.abs(numpy_path - with_cv2).max() <= 1.01 * pp.SCALE
    ckpt = seeded_checkpoint("dpn68", symbol=False)
    code, _, err = run_hiding("cv2", PREDICT, "dpn-predict", ckpt, good, "--size", "32")
    assert code == 0 and err.startswith("dpn-predict: note: opencv-python-headless is not "
                                        "installed") and len(err.splitlines()) == 1, err
    # a refusal stays one line without OpenCV too: the note comes only once inputs are fine
    fifo = tmp_path / "fifo-0000.params"
    os.mkfifo(fifo)
    (tmp_path / "val.lst").write_text("0\t1\t%s\n" % good)
    (tmp_path / "labels.lst").write_text("0\t5000\t%s\n" % good)   # 1000 classes only
    for hide, entry, prog, args in [
            ("cv2", PREDICT, "dpn-predict", [tmp_path / "none", good]),
            ("cv2", PREDICT, "dpn-predict", [fifo, good]),
            ("cv2,mxnet", PREDICT, "dpn-predict", [ckpt, good]),
            ("cv2", EVALUATE, "dpn-evaluate", [fifo, "--data", tmp_path / "val.lst"]),
            ("cv2,mxnet", EVALUATE, "dpn-evaluate", [ckpt, "--data", tmp_path / "val.lst"]),
            ("cv2", EVALUATE, "dpn-evaluate", [ckpt, "--data", tmp_path / "no.lst"]),
            ("cv2", EVALUATE, "dpn-evaluate", [ckpt, "--data", tmp_path / "labels.lst",
                                               "--size", "32"])]:
        code, out, err = run_hiding(hide, entry, prog, *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (args, err)
        assert err.startswith("%s: error: " % prog), err


def test_forked_workers_resize_after_the_parent_did(tmp_path):
    """OpenCV's thread pool does not survive fork(): with threads on, workers forked after
    the parent resized a large image deadlocked (the alarm turns a hang into a failure)."""
    pp.resize_crop(Image.fromarray(np.zeros((1500, 2000, 3), np.uint8)), 320, "authors")
    for i, data in enumerate(make_jpegs(4)[:4]):
        (tmp_path / "c" / "n0").mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / "n0" / ("%d.jpg" % i)).write_bytes(data)
    ds = evdata.open_dataset(tmp_path / "c")
    serial = np.concatenate([b.data for b in evdata.iter_batches(ds, 32, "authors", 2)])
    forked = np.concatenate([b.data for b in evdata.iter_batches(ds, 32, "authors", 2, workers=2)])
    np.testing.assert_array_equal(serial, forked)
