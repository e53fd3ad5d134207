"""The recipe's augmentation: the numpy path (folders, .lst) against MXNet's C++
ImageRecordIter (.rec), on images where each random draw can be read back from the output.

- geometry: an image whose red channel is the x coordinate and green the y coordinate, so
  the corners of an output give the crop box: its area fraction, aspect ratio and mirror;
- colour: a flat image of known HLS, so each output's HLS minus the input's is the shift.
Both paths must stay in the stated ranges (8-100 % area, 3/4-4/3, [20, 40, 50], 50 %
mirror) and draw the same distributions (two-sample Kolmogorov-Smirnov distance).
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dpn_gluon.train import augment, recipe

mx = pytest.importorskip("mxnet")

N = 400
SIZE = 64
SIDE = 200
FLAT_RGB = (60, 180, 150)     # H 82, L 120, S 128 in OpenCV's 8-bit HLS: no shift clamps


def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov distance."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


#: KS distance beyond which two samples of N differ (alpha ~ 0.001: 1.95 * sqrt(2 / N)).
KS_LIMIT = 1.95 * np.sqrt(2.0 / N)


def coordinate_image() -> np.ndarray:
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    return np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8)


def write_rec(tmp_path, rgb: np.ndarray):
    import io
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    rec = mx.recordio.MXIndexedRecordIO(str(tmp_path / "a.idx"), str(tmp_path / "a.rec"), "w")
    for i in range(N):
        rec.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, 0.0, i, 0), buf.getvalue()))
    rec.close()
    return tmp_path / "a.rec"


def record_outputs(rec, **override) -> np.ndarray:
    """N uint8 NHWC outputs of MXNet's ImageRecordIter with the recipe's arguments."""
    args = recipe.record_iter_args(SIZE)
    args.update(override)
    it = mx.io.ImageRecordIter(path_imgrec=str(rec), path_imgidx=str(rec)[:-4] + ".idx",
                               batch_size=N, seed_aug=7, preprocess_threads=1, **args)
    data = it.next().data[0].asnumpy()
    pixels = data / recipe.SCALE + np.asarray(recipe.MEAN_RGB).reshape(1, 3, 1, 1)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def numpy_outputs(rgb: np.ndarray, hsl=augment.HSL) -> np.ndarray:
    img = Image.fromarray(rgb)
    return np.stack([augment.augment(img, SIZE, np.random.default_rng([7, i]), hsl)
                     for i in range(N)])


def geometry(out: np.ndarray):
    """(area fraction, aspect w/h, mirrored) of each output of the coordinate image."""
    x = out[..., 0].astype(float)
    y = out[..., 1].astype(float)
    mid = SIZE // 2
    left, right = x[:, mid, 0], x[:, mid, -1]
    top, bottom = y[:, 0, mid], y[:, -1, mid]
    # corner pixels are pixel centres: the box spans SIZE/(SIZE-1) of their distance
    w = np.abs(right - left) * SIZE / (SIZE - 1)
    h = (bottom - top) * SIZE / (SIZE - 1)
    return w * h / SIDE ** 2, w / h, left > right


@pytest.fixture(scope="module")
def geometry_samples(tmp_path_factory):
    rgb = coordinate_image()
    rec = write_rec(tmp_path_factory.mktemp("rec"), rgb)
    # colour shifts off here: they would move the coordinates the colours encode
    return (geometry(record_outputs(rec, random_h=0, random_s=0, random_l=0)),
            geometry(numpy_outputs(rgb, hsl=(0, 0, 0))))


@pytest.mark.parametrize("path", [0, 1], ids=["ImageRecordIter", "numpy"])
def test_geometry_in_stated_ranges(geometry_samples, path):
    area, aspect, mirrored = geometry_samples[path]
    assert area.min() >= recipe.AREA[0] * 0.9 and area.max() <= recipe.AREA[1] * 1.03
    assert aspect.min() >= recipe.ASPECT[0] * 0.97 and aspect.max() <= recipe.ASPECT[1] * 1.03
    # the whole range is used, not a corner of it
    assert area.min() < 0.15 and area.max() > 0.9
    assert aspect.min() < 0.8 and aspect.max() > 1.25
    assert abs(mirrored.mean() - 0.5) < 0.08


def test_geometry_same_distributions(geometry_samples):
    (area_a, aspect_a, mir_a), (area_b, aspect_b, mir_b) = geometry_samples
    assert ks(area_a, area_b) < KS_LIMIT
    assert ks(np.log(aspect_a), np.log(aspect_b)) < KS_LIMIT
    assert abs(mir_a.mean() - mir_b.mean()) < 0.1


def hls_shifts(out: np.ndarray) -> np.ndarray:
    """(N, 3) mean (dH, dL, dS) of each output against the flat input's HLS."""
    base = augment.rgb_to_hls(np.asarray(FLAT_RGB, np.uint8)[None]).astype(float)
    return augment.rgb_to_hls(out).reshape(len(out), -1, 3).astype(float).mean(1) - base


@pytest.fixture(scope="module")
def colour_samples(tmp_path_factory):
    rgb = np.tile(np.asarray(FLAT_RGB, np.uint8), (SIDE, SIDE, 1))
    rec = write_rec(tmp_path_factory.mktemp("flat"), rgb)
    return hls_shifts(record_outputs(rec)), hls_shifts(numpy_outputs(rgb))


def test_flat_colour_is_what_opencv_says():
    # cv2.cvtColor(COLOR_RGB2HLS), from OpenCV's documented formulas; halves round to even
    # (cvRound): FLAT_RGB is H 165 deg / 2 = 82.5 -> 82, S 0.5 * 255 = 127.5 -> 128
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], FLAT_RGB], np.uint8)
    assert augment.rgb_to_hls(rgb).tolist() == [[0, 128, 255], [60, 128, 255], [120, 128, 255],
                                                [0, 128, 0], [82, 120, 128]]


def test_hls_round_trip():
    pure = np.array([[0, 128, 255], [60, 128, 255], [120, 128, 255], [30, 64, 0]], np.uint8)
    # OpenCV's formula: L = 128/255 > 0.5 gives max 1 and min 2L - 1 = 1/255
    assert augment.hls_to_rgb(pure).tolist() == [[255, 1, 1], [1, 255, 1], [1, 1, 255],
                                                 [64, 64, 64]]
    # 8-bit HLS is lossy (dark, unsaturated colours most), as OpenCV's is
    rgb = np.random.default_rng(0).integers(0, 256, (1000, 3)).astype(np.uint8)
    err = np.abs(augment.hls_to_rgb(augment.rgb_to_hls(rgb)).astype(int) - rgb)
    assert err.max() <= 6 and err.mean() < 0.6


@pytest.mark.parametrize("path", [0, 1], ids=["ImageRecordIter", "numpy"])
def test_colour_shifts_in_stated_ranges(colour_samples, path):
    shifts = colour_samples[path]
    for k, bound in enumerate((recipe.RANDOM_H, recipe.RANDOM_L, recipe.RANDOM_S)):
        assert np.abs(shifts[:, k]).max() <= bound + 1.5
        assert np.abs(shifts[:, k]).max() >= 0.8 * bound     # the range is used (extremes are rare)
        assert abs(shifts[:, k].mean()) < bound * 0.15
        # r = (u1 + 4 u2) / 5 mapped to [-b, b]: std 2b * sqrt(17/12) / 5, not uniform's
        # b / sqrt(3) (which is 21 % more and fails here)
        assert abs(shifts[:, k].std() - 2 * bound * np.sqrt(17 / 12) / 5) < bound * 0.05


def test_colour_same_distributions(colour_samples):
    a, b = colour_samples
    for k in range(3):
        assert ks(a[:, k], b[:, k]) < KS_LIMIT
