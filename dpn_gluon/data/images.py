"""Decoding one image for evaluation: bounded, and always 8-bit RGB with the right scale.

What it must stay compatible with: the 8-bit RGB pictures the authors' MXNet iterator (and
timm's PIL transforms) decoded; for those, the result is exactly PIL's ``convert("RGB")``.
Other modes are brought to 0..255 by their own scale, not clipped:

- 16-bit gray (``I;16*``, and ``I`` as PNG/TIFF decode 16-bit gray): ``round(v * 255 / 65535)``;
- ``F`` (32-bit float): PIL's own convention for ``F`` -> ``L``, values on the 0..255 scale,
  rounded and clipped (NaN is refused);
- 16-bit RGB PNGs: Pillow itself decodes them to 8-bit RGB (the high byte, at most 1 level
  from the rounded scale);
- everything else PIL converts (``1``, ``L``, ``LA``, ``P``, ``PA``, ``RGBA``, ``CMYK``,
  ``YCbCr``...): PIL's ``convert("RGB")``, alpha dropped as timm and OpenCV's imdecode do.

Bounds, checked before pixels are decoded: a file (or a record's image) of at most
:data:`MAX_IMAGE_BYTES`, at most :data:`MAX_PIXELS` pixels; PIL's decompression-bomb
warning and error become the same one-line :class:`ImageError`. Needs only numpy and Pillow
(it runs in the data-loading worker processes).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from ..errors import DPNError
from ..files import open_regular

#: Largest image file (or record payload) read: a 16-bit RGB TIFF of ~20 Mpx, uncompressed.
MAX_IMAGE_BYTES = 128 << 20
#: Largest decoded image: 64 Mi pixels (8192 x 8192), ~200 MB as 8-bit RGB; ImageNet's
#: largest validation image has 0.02 % of that. Below PIL's own bomb limit (89 Mpx).
MAX_PIXELS = 1 << 26

ImageSource = Union[str, Path, bytes, Image.Image]

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: round(v * 255 / 65535) for every 16-bit value, in integers.
_SCALE16 = ((np.arange(65536, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
_ROWS = 512


class ImageError(DPNError):
    """An image file that cannot be read or decoded, or that is too large."""


def load_image(source: ImageSource, name: str = None) -> Image.Image:
    """Decode a file path, encoded bytes or a PIL image into an 8-bit RGB PIL image."""
    name = name or source_name(source)
    if isinstance(source, Image.Image):
        return to_rgb8(source, name)
    if isinstance(source, bytes):
        if len(source) > MAX_IMAGE_BYTES:
            raise ImageError("%s: %d bytes, more than the %d an image may have"
                             % (name, len(source), MAX_IMAGE_BYTES))
        fp = io.BytesIO(source)
    else:
        fp = open_regular(source, "regular file")     # a FIFO or /dev/zero: refused, not read
        size = fp.seek(0, io.SEEK_END)
        fp.seek(0)
        if size > MAX_IMAGE_BYTES:
            fp.close()
            raise ImageError("%s: %d bytes, more than the %d an image may have"
                             % (name, size, MAX_IMAGE_BYTES))
    try:
        with fp, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                check_pixels(img, name)
                img.load()
                return to_rgb8(img, name)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageError("%s: more than %d pixels (a decompression bomb?)" % (name, MAX_PIXELS)) from None
    except Image.UnidentifiedImageError:
        raise ImageError("%s: cannot decode image: not an image, or its header is corrupt"
                         % name) from None
    except Exception as err:  # PIL raises several kinds (OSError, SyntaxError, ValueError...)
        raise ImageError("%s: cannot decode image: %s" % (name, " ".join(str(err).split())
                                                          or type(err).__name__)) from None


def source_name(source: ImageSource) -> str:
    """How errors name an image: its path, or what it is."""
    if isinstance(source, (str, Path)):
        return str(source)
    return "<image>" if isinstance(source, Image.Image) else "<bytes>"


def check_pixels(img: Image.Image, name: str) -> None:
    """Refuse an image whose header declares more than :data:`MAX_PIXELS` (before decoding)."""
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError("%s: an empty image (%dx%d)" % (name, w, h))
    if w * h > MAX_PIXELS:
        raise ImageError("%s: %dx%d is %d pixels, more than the %d allowed"
                         % (name, w, h, w * h, MAX_PIXELS))


def to_rgb8(img: Image.Image, name: str = "<image>") -> Image.Image:
    """``img`` as 8-bit RGB, each mode scaled by its own range (module docstring)."""
    check_pixels(img, name)
    if img.mode in _SIXTEEN_BIT:
        v = np.asarray(img)
        gray = np.empty(v.shape, np.uint8)
        for top in range(0, len(v), _ROWS):     # in bands: no full-size wide temporaries
            gray[top:top + _ROWS] = _SCALE16[np.clip(v[top:top + _ROWS], 0, 65535)]
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode == "F":
        v = np.asarray(img, dtype=np.float32)
        if np.isnan(v).any():
            raise ImageError("%s: a float image with NaN pixels" % name)
        gray = np.clip(np.floor(v + 0.5), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as err:      # a mode PIL cannot convert to RGB (e.g. LAB, HSV)
        raise ImageError("%s: cannot convert %s pixels to RGB: %s" % (name, img.mode, err)) from None
