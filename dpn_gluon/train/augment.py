"""The authors' training augmentation in numpy, drawing what MXNet's ``ImageRecordIter`` draws.

For class folders and ``.lst`` lists (a ``.rec`` goes through MXNet's C++ iterator with
:func:`dpn_gluon.train.recipe.record_iter_args`). Per image, as MXNet 1.9's default
augmenter and record parser do it (``src/io/image_aug_default.cc``, ``iter_image_recordio_2.cc``):

1. random-area crop: up to 10 tries of an area fraction ~ U(8 %, 100 %) and an aspect ratio
   ~ U(3/4, 4/3), width and height swapped with probability 1/2; a uniformly placed box that
   fits is kept, else a centred square of the short side;
2. bicubic resize of the box to ``size x size`` (OpenCV's kernel, from
   :func:`dpn_gluon.data.preprocess.cv_bicubic_resize_crop`);
3. random HSL: OpenCV's 8-bit HLS (H 0-180, L and S 0-255); integer shifts
   ``int(r * 2b - b)`` (truncated towards zero), ``r = (u1 + 4 u2) / 5`` of two uniforms
   (MXNet's "approximation of gaussian" that makes extremes rare; measured in the tests),
   with b = 20 / 50 / 40 for H / L / S, each channel clamped to its range (hue is clamped,
   not wrapped, as MXNet does);
4. mirror with probability 1/2; then ``(pixel - [124, 117, 104]) * 0.0167`` (by the caller).

tests/test_train_augment.py compares the distributions of both paths on images where each
draw is measurable. Imports neither MXNet nor OpenCV.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from ..data.preprocess import cv_bicubic_resize_crop, resize_crop
from .recipe import AREA, ASPECT, RANDOM_H, RANDOM_L, RANDOM_S

ATTEMPTS = 10


def crop_box(height: int, width: int, rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """(top, left, box height, box width) of one random-area crop."""
    area = height * width
    for _ in range(ATTEMPTS):
        target = area * rng.uniform(*AREA)
        ratio = rng.uniform(*ASPECT)
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if rng.uniform() > 0.5:
            w, h = h, w
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def rgb_to_hls(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HLS as ``cv2.cvtColor(..., COLOR_RGB2HLS)`` (H in 0..180)."""
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    vmax, vmin = x.max(-1), x.min(-1)
    diff, total = vmax - vmin, vmax + vmin
    light = total / 2
    grey = diff <= np.float32(1e-6)
    safe = np.where(grey, 1, diff)
    sat = np.where(light < 0.5, diff / np.where(grey, 1, total),
                   diff / np.where(grey, 1, 2 - total))
    hue = np.where(vmax == r, (g - b) * 60 / safe,
                   np.where(vmax == g, (b - r) * 60 / safe + 120, (r - g) * 60 / safe + 240))
    hue = np.where(hue < 0, hue + 360, hue)
    hue, sat = np.where(grey, 0, hue), np.where(grey, 0, sat)
    out = np.stack([hue / 2, light * 255, sat * 255], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def hls_to_rgb(hls: np.ndarray) -> np.ndarray:
    """uint8 HLS (H in 0..180) -> uint8 RGB, as ``cv2.cvtColor(..., COLOR_HLS2RGB)``."""
    h = hls[..., 0].astype(np.float32) * 2 / 60      # sector units, 0..6
    light = hls[..., 1].astype(np.float32) / 255
    sat = hls[..., 2].astype(np.float32) / 255
    p2 = np.where(light <= 0.5, light * (1 + sat), light + sat - light * sat)
    p1 = 2 * light - p2

    def channel(offset):
        t = np.mod(h + offset, 6)
        return np.where(t < 1, p1 + (p2 - p1) * t,
                        np.where(t < 3, p2, np.where(t < 4, p1 + (p2 - p1) * (4 - t), p1)))

    rgb = np.stack([channel(2), channel(0), channel(4)], -1)
    rgb = np.where((sat == 0)[..., None], light[..., None], rgb)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


HSL = (RANDOM_H, RANDOM_S, RANDOM_L)


def hls_shift(rng: np.random.Generator, bounds: Tuple[int, int, int] = HSL
              ) -> Tuple[int, int, int]:
    """(dH, dL, dS), drawn as MXNet does: h, s, l in that order, each from
    ``r = (u1 + 4 * u2) / 5`` ("an approximation of gaussian distribution to reduce extreme
    value", as in the authors' own MXNet fork) as ``int(r * 2b - b)``, truncated to zero."""
    def one(bound: int) -> int:
        r = (rng.uniform() + 4 * rng.uniform()) / 5
        return int(r * bound * 2 - bound)
    hue, saturation, lightness = (one(b) for b in bounds)
    return hue, lightness, saturation


def apply_hls(rgb: np.ndarray, shift: Tuple[int, int, int]) -> np.ndarray:
    if not any(shift):
        return rgb
    hls = rgb_to_hls(rgb).astype(np.int32) + np.asarray(shift, np.int32)
    hls = np.clip(hls, 0, np.asarray([180, 255, 255]))
    return hls_to_rgb(hls.astype(np.uint8))


def augment(img, size: int, rng: np.random.Generator,
            hsl: Tuple[int, int, int] = HSL) -> np.ndarray:
    """One training sample: a PIL image -> uint8 HWC RGB ``size x size`` with the recipe
    (``hsl``: the (H, S, L) bounds, as ``random_h/s/l``)."""
    hwc = np.asarray(img.convert("RGB"))
    top, left, h, w = crop_box(hwc.shape[0], hwc.shape[1], rng)
    out = cv_bicubic_resize_crop(hwc[top:top + h, left:left + w], (size, size), (0, 0, size, size))
    out = apply_hls(out, hls_shift(rng, hsl))
    if rng.uniform() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def center(img, size: int) -> np.ndarray:
    """Without augmentation: the authors' test protocol (short side to ``size``, centre crop)."""
    return resize_crop(img, size, "authors")
