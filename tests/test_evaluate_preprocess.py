"""dpn_gluon.data.preprocess against independent implementations.

- ``authors``: MXNet's own ``mx.image.imdecode`` / ``resize_short(interp=2)`` / ``center_crop``
  (the OpenCV 3.x bundled in MXNet 1.9.1, cv::resize INTER_CUBIC), pixel for pixel within 1
  gray level. Measured on this project's images, shrinking and enlarging, smooth and pure
  noise: with cv2 4.11 (SIMD off) 0-3 pixels per image differ by 1 (< 1e-4 of them); with
  the numpy fallback ~3-5 % (OpenCV's 11-bit fixed point, emulated in float).
- ``timm``: PIL's bicubic resize to floor(crop / 0.875) and torchvision's CenterCrop offsets,
  written out here step by step.
- normalization: ``(pixel - [124, 117, 104]) * 0.0167`` in numpy, CHW.
"""
import io

import numpy as np
import pytest
from PIL import Image

from dpn_gluon.data import preprocess as pp
from dpn_gluon.variants import MEAN_RGB, SCALE

SHAPES = [(300, 400), (200, 150), (375, 500), (40, 70), (224, 224), (33, 47)]


def synthetic(h, w, seed, noise=4.0):
    """A smooth random picture with some pixel noise, uint8 HWC RGB."""
    rng = np.random.RandomState(seed)
    small = rng.uniform(0, 255, (max(2, h // 16), max(2, w // 16), 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float64)
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(hwc, fmt="PNG", **kw):
    buf = io.BytesIO()
    Image.fromarray(hwc).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("noise", [4.0, 1000.0], ids=["smooth", "noise"])
@pytest.mark.parametrize("crop", [64, 224, 320])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "%dx%d" % s)
def test_authors_resize_crop_matches_mxnet_within_one_level(shape, crop, noise):
    mx = pytest.importorskip("mxnet")
    data = encode(synthetic(*shape, seed=shape[0] * 7 + crop, noise=noise))   # lossless
    ours = pp.resize_crop(pp.load_image(data), crop, "authors").astype(int)
    ref = mx.image.resize_short(mx.image.imdecode(data), crop, interp=2)
    ref = mx.image.center_crop(ref, (crop, crop), interp=2)[0].asnumpy().astype(int)
    assert ours.shape == ref.shape == (crop, crop, 3)
    diff = np.abs(ours - ref)
    assert diff.max() <= 1
    assert (diff > 0).mean() < (1e-4 if pp._cv2() is not None else 0.1)


@pytest.mark.parametrize("size", [(85, 64), (426, 320), (298, 224), (640, 480)])
def test_opencv_resize_matches_mxnet_imresize(size):
    """cv2 (the ``opencv`` extra) against MXNet's bundled OpenCV on whole images."""
    mx = pytest.importorskip("mxnet")
    cv2 = pytest.importorskip("cv2")
    for seed, noise in ((1, 4.0), (2, 1000.0)):
        hwc = synthetic(300, 400, seed=seed, noise=noise)
        ref = mx.image.imresize(mx.nd.array(hwc, dtype="uint8"), *size, interp=2).asnumpy()
        ours = pp._cv_resize(cv2, hwc, size)
        diff = np.abs(ours.astype(int) - ref)
        assert ours.shape == ref.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-4


def test_numpy_fallback_is_opencv_within_one_level():
    cv2 = pytest.importorskip("cv2")
    hwc = synthetic(375, 500, seed=9, noise=30)
    for h, w in ((224, 298), (600, 800)):
        ref = pp._cv_resize(cv2, hwc, (w, h))[10:74, 20:84]
        ours = pp.cv_bicubic_resize_crop(hwc, (h, w), (10, 20, 64, 64))
        assert np.abs(ours.astype(int) - ref).max() <= 1


def test_pil_and_opencv_bicubic_really_differ_when_shrinking():
    """Why the protocols keep their own kernels: one for both would shift one protocol."""
    img = Image.fromarray(synthetic(480, 640, seed=3, noise=30))
    authors = pp.resize_crop(img, 224, "authors").astype(int)
    w, h = pp.short_side_size(640, 480, 224)
    pil = np.asarray(img.resize((w, h), Image.BICUBIC))[:, (w - 224) // 2:][:, :224].astype(int)
    assert np.abs(authors - pil).max() > 5


@pytest.mark.parametrize("crop,short", [(224, 256), (320, 365), (64, 73), (32, 36)])
def test_timm_resize_size(crop, short):
    assert pp.resize_size(crop, "timm") == short
    assert pp.resize_size(crop, "authors") == crop


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "%dx%d" % s)
def test_timm_is_pil_bicubic_and_torchvision_center_crop(shape):
    h, w = shape
    img = Image.fromarray(synthetic(h, w, seed=h + w))
    crop = 64
    short = int(crop / 0.875)
    nw, nh = (short, short * h // w) if w <= h else (short * w // h, short)
    resized = img.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
    expected = np.asarray(resized)[top:top + crop, left:left + crop]
    np.testing.assert_array_equal(pp.resize_crop(img, crop, "timm"), expected)


def test_short_side_becomes_crop_and_center_crop_is_full_for_authors():
    # A square image of the crop size is left untouched: 100 % crop, no resize.
    hwc = synthetic(96, 96, seed=1)
    np.testing.assert_array_equal(pp.resize_crop(Image.fromarray(hwc), 96, "authors"), hwc)
    # A 96x192 image keeps its whole height and the middle 96 columns.
    wide = synthetic(96, 192, seed=2)
    np.testing.assert_array_equal(pp.resize_crop(Image.fromarray(wide), 96, "authors"),
                                  wide[:, 48:144])


def test_normalize_is_subtract_then_scale_rgb_chw():
    hwc = synthetic(8, 10, seed=4)
    out = pp.normalize(hwc)
    assert out.dtype == np.float32 and out.shape == (3, 8, 10)
    ref = (hwc.astype(np.float64) - np.array(MEAN_RGB)) * SCALE
    np.testing.assert_allclose(out, ref.transpose(2, 0, 1), rtol=0, atol=1e-5)
    assert MEAN_RGB == (124.0, 117.0, 104.0) and SCALE == 0.0167


def test_imagenet_normalization_is_paddleclas_normalize_image():
    """PaddleClas's NormalizeImage (scale 1/255, then mean and std of 0..1 RGB), in float64."""
    hwc = synthetic(8, 10, seed=4)
    out = pp.normalize(hwc, "imagenet")
    assert out.dtype == np.float32 and out.shape == (3, 8, 10)
    ref = (hwc.astype(np.float64) / 255.0 - np.array([0.485, 0.456, 0.406])) / \
        np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out, ref.transpose(2, 0, 1), rtol=0, atol=1e-5)
    batch = pp.normalize(np.stack([hwc, hwc]), "imagenet")
    np.testing.assert_array_equal(batch[1], out)


@pytest.mark.parametrize("shape,scaled,offset", [
    ((200, 300), (384, 256), (80, 16)),        # percent 256/200: 300 x 1.28 = 384
    ((375, 500), (341, 256), (58, 16)),        # 500 x 256/375 = 341.33 -> 341
    ((301, 217), (256, 355), (16, 65)),        # 301 x 256/217 = 355.1 -> 355 (tall)
])
def test_paddleclas_protocol_is_its_resize_short_and_crop(shape, scaled, offset):
    """PaddleClas's ResizeImage(resize_short=256): both sides times 256/short, rounded, OpenCV
    INTER_LINEAR; then CropImage(224) with a floored offset. Sizes worked out by hand here."""
    cv2 = pytest.importorskip("cv2")
    h, w = shape
    hwc = synthetic(h, w, seed=7)
    assert pp.resize_size(224, "paddleclas") == 256
    got = pp.resize_crop(Image.fromarray(hwc), 224, "paddleclas")
    want = cv2.resize(hwc, scaled, interpolation=cv2.INTER_LINEAR)
    x, y = offset
    np.testing.assert_array_equal(got, want[y:y + 224, x:x + 224])


def test_preprocess_decodes_rgb_from_any_mode(tmp_path):
    gray = synthetic(50, 60, seed=5)[..., 0]
    path = tmp_path / "gray.png"
    Image.fromarray(gray).save(path)
    rgba = Image.fromarray(synthetic(50, 60, seed=5)).convert("RGBA")
    out = pp.preprocess(path, 32, "authors")
    assert out.shape == (3, 32, 32)
    pixels = out / SCALE + np.array(MEAN_RGB, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(pixels[0], pixels[1], atol=1e-3)   # gray -> equal R, G, B
    np.testing.assert_allclose(pixels[0], pixels[2], atol=1e-3)
    assert pp.preprocess(rgba, 32, "timm").shape == (3, 32, 32)
    np.testing.assert_array_equal(pp.preprocess(encode(gray), 32), out)


def test_jpeg_decode_matches_mxnet_within_one_level():
    mx = pytest.importorskip("mxnet")
    data = encode(synthetic(120, 160, seed=6), "JPEG", quality=90)
    ours = np.asarray(pp.load_image(data)).astype(int)
    ref = mx.image.imdecode(data).asnumpy().astype(int)
    assert np.abs(ours - ref).max() <= 1


def test_corrupt_and_unknown_protocol_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(pp.ImageError, match="bad.jpg: cannot decode image"):
        pp.preprocess(bad, 32)
    with pytest.raises(pp.DPNError, match="unknown protocol"):
        pp.resize_size(224, "caffe")
