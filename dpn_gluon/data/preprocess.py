"""The one preprocessing function of dpn-evaluate and dpn-predict, for every runtime.

Three protocols (resize and crop), each then normalized the way the checkpoint's weight set
expects (``normalize``): the authors' ``(pixel - MEAN_RGB) * SCALE`` on 0..255 RGB values,
or ImageNet's ``(pixel / 255 - mean) / std`` (PaddleClas's weights), float32 CHW:

- ``authors``: resize so the SHORT side equals the crop size, then a 100 % center crop
  (cypw/DPNs ``score.py`` with cypw/mxnet's ``aug_torch``; docs/reference/original-dpn.md
  section 6). This is the protocol of the published 224 / 320 / 320 mean-max table.
- ``timm``: resize the short side to ``floor(crop / 0.875)``, then center crop (timm's
  ``_cfg`` for the ``dpn*.mx_in1k`` weights: crop_pct 0.875, bicubic, mean (124,117,104)/255,
  std 1/(0.0167*255), which is the same normalization; docs/reference/pytorch-ports.md 2.4 and 3.4).
- ``paddleclas``: PaddleClas's eval transforms for its DPN weights (its DPN configs and
  ``deploy/python/preprocess.py``): the short side resized to ``round(crop * 256 / 224)``
  (256 at 224) with OpenCV's ``INTER_LINEAR``, the other side ``round()``-ed, then a center
  crop whose offset floors. It needs OpenCV (the ``opencv`` extra).

Each protocol resizes with the kernel of the pipeline it reproduces: ``authors`` with OpenCV's
bicubic (a = -0.75, no antialiasing when shrinking), which their MXNet iterator called:
``cv2.resize(INTER_CUBIC)`` when opencv-python-headless is installed (the ``opencv`` extra),
else the same kernel re-implemented in numpy (6x slower; the settings record says which ran).
Against ``mx.image.imresize(interp=2)`` (the OpenCV 3.x bundled in MXNet 1.9.1;
tests/test_evaluate_preprocess.py): cv2 4.x with its SIMD kernels off differs by 1 gray level
in a few pixels per image (< 0.01 %), the numpy kernel by 1 level in ~4 % of pixels. ``timm`` resizes with PIL's ``Image.BICUBIC`` (a = -0.5, antialiased), as timm's
transforms. PIL's and OpenCV's kernels differ by up to ~15 gray levels when shrinking a
detailed image, so using either for both would shift one protocol's accuracy. Decoding is
:mod:`dpn_gluon.data.images` (PIL) for both. Every runtime (Gluon, PyTorch, ONNX) gets
its arrays from this one module, so they see identical inputs.

Memory: no resized image has more than :data:`MAX_RESIZED_PIXELS` (an aspect ratio of
~1:330 at 224). Beyond it, ``timm`` resizes only the crop's source box (PIL's
``resize(box=...)``: the same kernel and sampling positions, within 1 gray level of resizing
everything, from PIL's float rounding of the box), so a 1 x 60000 strip costs a 224 x 224
crop; ``authors`` must resize the whole image as OpenCV does, so such an image is refused in
one line.

The long side is ``floor(short_target * long / short)``, as torchvision's ``Resize(int)`` and
``mx.image.resize_short`` both compute it; the crop offset floors (MXNet) for ``authors`` and
rounds half to even (torchvision's ``CenterCrop``) for ``timm``. This module imports neither
MXNet nor torch, and is imported by the data-loading worker processes.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import numpy as np
from PIL import Image

from .. import deps, variants
from ..errors import DPNError
from ..variants import MEAN_RGB, SCALE
from .images import ImageError, ImageSource, load_image, source_name

__all__ = ["PROTOCOLS", "ImageError", "load_image", "resize_crop", "normalize", "preprocess",
           "resize_size", "short_side_size", "authors_resize_backend"]

PROTOCOLS = ("authors", "timm", "paddleclas")
#: timm's crop fraction for the converted DPN weights (``_cfg(crop_pct=0.875)``).
TIMM_CROP_PCT = 0.875

#: Largest resized image (before the crop): 16 Mi pixels, 48 MB as 8-bit RGB.
MAX_RESIZED_PIXELS = 1 << 24


def resize_size(crop: int, protocol: str) -> int:
    """The short side an image is resized to before the center crop."""
    if protocol == "authors":
        return crop
    if protocol == "timm":
        return int(np.floor(crop / TIMM_CROP_PCT))
    if protocol == "paddleclas":
        return int(round(crop * variants.PADDLECLAS_RESIZE / variants.PADDLECLAS_CROP))
    raise DPNError("unknown protocol %r (choose from %s)" % (protocol, ", ".join(PROTOCOLS)))


def short_side_size(width: int, height: int, short: int) -> Tuple[int, int]:
    """(width, height) after resizing so the shorter side is ``short``."""
    if width <= height:
        return short, short * height // width
    return short * width // height, short


def resize_crop(img, crop: int, protocol: str = "authors", name: str = "<image>") -> np.ndarray:
    """Bicubic short-side resize and center crop: uint8 HWC RGB, ``crop x crop``.

    ``authors``: OpenCV's bicubic, as their MXNet pipeline; ``timm``: PIL's bicubic, as
    timm's (torchvision) transforms on PIL images, computed for the crop's box only.
    """
    img = img if img.mode == "RGB" else img.convert("RGB")
    if protocol == "paddleclas":
        return _paddleclas_resize_crop(img, crop, name)
    w, h = short_side_size(img.width, img.height, resize_size(crop, protocol))
    left, top = _crop_offset(w - crop, protocol), _crop_offset(h - crop, protocol)
    if protocol == "authors":
        if w * h > MAX_RESIZED_PIXELS:
            raise ImageError("%s: %dx%d: aspect ratio too extreme: the authors' resize would make "
                             "a %dx%d image (at most %d pixels; --protocol timm crops first)"
                             % (name, img.width, img.height, w, h, MAX_RESIZED_PIXELS))
        cv2 = _cv2()
        if cv2 is None:
            return cv_bicubic_resize_crop(np.asarray(img), (h, w), (top, left, crop, crop))
        resized = _cv_resize(cv2, np.asarray(img), (w, h))
        return np.ascontiguousarray(resized[top:top + crop, left:left + crop])
    if w * h <= MAX_RESIZED_PIXELS:          # exactly timm's resize, then crop
        if (w, h) != img.size:
            img = img.resize((w, h), Image.BICUBIC)
        return np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.uint8)
    # The crop's source box: the same sampling positions and kernel support as resizing
    # to (w, h) and cropping, without the resized image.
    sx, sy = img.width / w, img.height / h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return np.asarray(img.resize((crop, crop), Image.BICUBIC, box=box), dtype=np.uint8)


def _paddleclas_resize_crop(img, crop: int, name: str) -> np.ndarray:
    """PaddleClas's ResizeImage(resize_short) + CropImage: both sides scaled by
    ``short / min(w, h)`` and rounded, ``cv2.resize`` INTER_LINEAR, a center crop that floors."""
    cv2 = _cv2()
    if cv2 is None:
        deps.require("cv2", "--protocol paddleclas (PaddleClas resizes with OpenCV's bilinear)")
    short = resize_size(crop, "paddleclas")
    percent = float(short) / min(img.width, img.height)
    w, h = int(round(img.width * percent)), int(round(img.height * percent))
    if w * h > MAX_RESIZED_PIXELS:
        raise ImageError("%s: %dx%d: aspect ratio too extreme: PaddleClas's resize would make a "
                         "%dx%d image (at most %d pixels)" % (name, img.width, img.height, w, h,
                                                              MAX_RESIZED_PIXELS))
    resized = cv2.resize(np.asarray(img), (w, h), interpolation=cv2.INTER_LINEAR)
    top, left = (h - crop) // 2, (w - crop) // 2
    return np.ascontiguousarray(resized[top:top + crop, left:left + crop])


@lru_cache(maxsize=None)
def _cv2():
    """OpenCV, or None: the authors' protocol then runs the numpy re-implementation."""
    try:
        import cv2
    except ImportError:
        return None
    # One thread, from the start: OpenCV's thread pool does not survive fork(), and a
    # forked data-loading worker that resizes after the parent's pool ran can deadlock
    # (the workers are the parallelism; one 500x375 resize takes ~1.4 ms anyway).
    cv2.setNumThreads(1)
    return cv2


def _cv_resize(cv2, hwc: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``cv2.resize`` bicubic with OpenCV's SIMD kernels off: the plain fixed-point code is
    nearest to MXNet's bundled OpenCV (a few pixels per image 1 level off; with SIMD, whose
    vertical pass rounds in float, ~4 % of pixels). 1.4 ms for 500x375 -> 298x224."""
    optimized = cv2.useOptimized()
    cv2.setUseOptimized(False)
    try:
        return cv2.resize(hwc, size, interpolation=cv2.INTER_CUBIC)
    finally:
        cv2.setUseOptimized(optimized)


def authors_resize_backend() -> str:
    """What resizes under the authors' protocol here, as reported beside the results."""
    if _cv2() is not None:
        return "OpenCV %s cv2.resize INTER_CUBIC" % _cv2().__version__
    return ("OpenCV's bicubic in numpy, within 1 gray level of OpenCV "
            "(pip install \"dpn-gluon[opencv]\" for OpenCV itself)")


#: OpenCV's bicubic coefficient (``cv::resize`` INTER_CUBIC); PIL uses -0.5.
CV_CUBIC_A = -0.75


def _cv_cubic_taps(n_in: int, n_out: int, start: int, count: int):
    """Source indices and weights (4 each) of cv::resize's bicubic for outputs start..start+count.

    Source coordinate ``(i + 0.5) * n_in / n_out - 0.5``, taps at floor - 1 .. floor + 2,
    borders replicated; no antialiasing when shrinking (unlike PIL).
    """
    a = CV_CUBIC_A
    pos = (np.arange(start, start + count) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(pos)
    t = pos - base
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    weights = tuple(w.astype(np.float32) for w in (w0, w1, w2, 1 - w0 - w1 - w2))
    index = [np.clip(base.astype(np.int64) - 1 + k, 0, n_in - 1) for k in range(4)]
    return index, weights


def cv_bicubic_resize_crop(hwc: np.ndarray, size: Tuple[int, int],
                           box: Tuple[int, int, int, int]) -> np.ndarray:
    """``cv2.resize(hwc, size[::-1], interpolation=INTER_CUBIC)`` cropped to ``box``, in numpy.

    ``size`` is (height, width) of the resized image, ``box`` (top, left, height, width) of
    the crop; only the cropped pixels are computed (separably: rows, then columns). OpenCV
    itself works in 11-bit fixed point, so results can differ from it by one gray level.
    """
    top, left, ch, cw = box
    rows, wy = _cv_cubic_taps(hwc.shape[0], size[0], top, ch)
    cols, wx = _cv_cubic_taps(hwc.shape[1], size[1], left, cw)
    # Only the source rows and columns the taps touch (at most 4 per output pixel), so a
    # very long image costs no more than the crop.
    rows, src_rows = _compact(rows)
    cols, src_cols = _compact(cols)
    hwc = hwc[src_rows][:, src_cols]
    tmp = np.zeros((ch,) + hwc.shape[1:], np.float32)
    for i, w in zip(rows, wy):
        tmp += w[:, None, None] * hwc[i]
    out = np.zeros((ch, cw) + hwc.shape[2:], np.float32)
    for i, w in zip(cols, wx):
        out += w[None, :, None] * tmp[:, i]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _compact(index):
    """(indices into the used sources, the used source indices) of four tap arrays."""
    used = np.unique(np.concatenate(index))
    return [np.searchsorted(used, i) for i in index], used


def _crop_offset(excess: int, protocol: str) -> int:
    # timm (torchvision's CenterCrop) rounds half to even; MXNet's center crop floors.
    return int(round(excess / 2.0)) if protocol == "timm" else excess // 2


def normalize(hwc: np.ndarray, normalization: str = "authors") -> np.ndarray:
    """uint8 RGB ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)``, one image (HWC) or a
    batch (NHWC), as the weight set expects (``variants.NORMALIZATIONS``).

    ``authors``: ``(pixel - MEAN_RGB) * SCALE``, subtract then scale, as MXNet's iterator.
    Otherwise ``(pixel * (1/255) - mean) / std`` in float32, as PaddleClas's NormalizeImage.
    """
    if normalization == "authors":
        x = hwc.astype(np.float32) - np.asarray(MEAN_RGB, dtype=np.float32)
        x *= np.float32(SCALE)
    else:
        norm = variants.NORMALIZATIONS[normalization]
        x = hwc.astype(np.float32) * np.float32(1.0 / 255.0)
        x -= np.asarray(norm.mean, dtype=np.float32)
        x /= np.asarray(norm.std, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def preprocess(source: ImageSource, crop: int, protocol: str = "authors",
               name: str = None, normalization: str = "authors") -> np.ndarray:
    """Decode, resize, center crop and normalize one image: float32 ``(3, crop, crop)``."""
    name = name or source_name(source)
    return normalize(resize_crop(load_image(source, name), crop, protocol, name), normalization)
