"""The one preprocessing function of dpn-evaluate and dpn-predict, for every runtime.

Two protocols, both bicubic and both ending in the authors' normalization
``(pixel - MEAN_RGB) * SCALE`` on 0..255 RGB values, float32 CHW:

- ``authors``: resize so the SHORT side equals the crop size, then a 100 % center crop
  (cypw/DPNs ``score.py`` with cypw/mxnet's ``aug_torch``; docs/reference/original-dpn.md
  section 6). This is the protocol of the published 224 / 320 / 320 mean-max table.
- ``timm``: resize the short side to ``floor(crop / 0.875)``, then center crop (timm's
  ``_cfg`` for the ``dpn*.mx_in1k`` weights: crop_pct 0.875, bicubic, mean (124,117,104)/255,
  std 1/(0.0167*255), which is the same normalization; docs/reference/pytorch-ports.md 2.4 and 3.4).

Each protocol resizes with the kernel of the pipeline it reproduces: ``authors`` with OpenCV's
bicubic (a = -0.75, no antialiasing when shrinking), which their MXNet iterator called,
re-implemented here in numpy (tests/test_evaluate_preprocess.py: within 1 gray level of
``mx.image.resize_short(interp=2)``, which is cv::resize); ``timm`` with PIL's
``Image.BICUBIC`` (a = -0.5, antialiased), as timm's transforms. PIL's and OpenCV's kernels
differ by up to ~15 gray levels when shrinking a detailed image, so using either for both
would shift one protocol's accuracy. Decoding is PIL's for both. Every runtime (Gluon,
PyTorch, ONNX) gets its arrays from this one module, so they see identical inputs, and
nothing but numpy and Pillow is needed to feed them.

The long side is ``floor(short_target * long / short)``, as torchvision's ``Resize(int)`` and
``mx.image.resize_short`` both compute it; the crop offset floors (MXNet) for ``authors`` and
rounds half to even (torchvision's ``CenterCrop``) for ``timm``. This module imports neither
MXNet nor torch, and is imported by the data-loading worker processes.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Tuple, Union

import numpy as np
from PIL import Image

from ..errors import DPNError
from ..variants import MEAN_RGB, SCALE

PROTOCOLS = ("authors", "timm")
#: timm's crop fraction for the converted DPN weights (``_cfg(crop_pct=0.875)``).
TIMM_CROP_PCT = 0.875

ImageSource = Union[str, Path, bytes, Image.Image]


class ImageError(DPNError):
    """An image file that cannot be read or decoded."""


def resize_size(crop: int, protocol: str) -> int:
    """The short side an image is resized to before the center crop."""
    if protocol == "authors":
        return crop
    if protocol == "timm":
        return int(np.floor(crop / TIMM_CROP_PCT))
    raise DPNError("unknown protocol %r (choose from %s)" % (protocol, ", ".join(PROTOCOLS)))


def load_image(source: ImageSource, name: str = None):
    """Decode a file path, encoded bytes or a PIL image into an RGB PIL image."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    name = name or (str(source) if isinstance(source, (str, Path)) else "<bytes>")
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
        with fp, Image.open(fp) as img:
            return img.convert("RGB")
    except Image.UnidentifiedImageError:
        raise ImageError("%s: cannot decode image: not an image, or its header is corrupt"
                         % name) from None
    except Exception as err:  # PIL raises several kinds (OSError, SyntaxError, ValueError...)
        raise ImageError("%s: cannot decode image: %s" % (name, err)) from None


def short_side_size(width: int, height: int, short: int) -> Tuple[int, int]:
    """(width, height) after resizing so the shorter side is ``short``."""
    if width <= height:
        return short, short * height // width
    return short * width // height, short


def resize_crop(img, crop: int, protocol: str = "authors") -> np.ndarray:
    """Bicubic short-side resize and center crop: uint8 HWC RGB, ``crop x crop``.

    ``authors``: OpenCV's bicubic (:func:`cv_bicubic_resize_crop`), as their MXNet pipeline;
    ``timm``: PIL's bicubic, as timm's (torchvision) transforms on PIL images.
    """
    img = img.convert("RGB")
    w, h = short_side_size(img.width, img.height, resize_size(crop, protocol))
    left, top = _crop_offset(w - crop, protocol), _crop_offset(h - crop, protocol)
    if protocol == "authors":
        return cv_bicubic_resize_crop(np.asarray(img), (h, w), (top, left, crop, crop))
    if (w, h) != img.size:
        img = img.resize((w, h), Image.BICUBIC)
    return np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.uint8)


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
    tmp = np.zeros((ch,) + hwc.shape[1:], np.float32)
    for i, w in zip(rows, wy):
        tmp += w[:, None, None] * hwc[i]
    out = np.zeros((ch, cw) + hwc.shape[2:], np.float32)
    for i, w in zip(cols, wx):
        out += w[None, :, None] * tmp[:, i]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _crop_offset(excess: int, protocol: str) -> int:
    # timm (torchvision's CenterCrop) rounds half to even; MXNet's center crop floors.
    return int(round(excess / 2.0)) if protocol == "timm" else excess // 2


def normalize(hwc: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)``: ``(pixel - MEAN_RGB) * SCALE``.

    Subtract, then scale, as MXNet's iterator; one image (HWC) or a batch (NHWC).
    """
    x = hwc.astype(np.float32) - np.asarray(MEAN_RGB, dtype=np.float32)
    x *= np.float32(SCALE)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def preprocess(source: ImageSource, crop: int, protocol: str = "authors",
               name: str = None) -> np.ndarray:
    """Decode, resize, center crop and normalize one image: float32 ``(3, crop, crop)``."""
    return normalize(resize_crop(load_image(source, name), crop, protocol))
