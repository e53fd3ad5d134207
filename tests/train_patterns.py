"""A small learnable image set for dpn-train's tests: four classes of 64x64 patterns that
survive random crops, mirroring and colour jitter (horizontal stripes, vertical stripes,
checkerboard, smooth noise), each image in two random colours."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("h_stripes", "v_stripes", "checker", "smooth")


def pattern(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    period = rng.integers(6, 12)
    phase = rng.integers(0, period)
    if label == 0:
        mask = ((y + phase) // (period // 2)) % 2
    elif label == 1:
        mask = ((x + phase) // (period // 2)) % 2
    elif label == 2:
        mask = (((x + phase) // (period // 2)) + ((y + phase) // (period // 2))) % 2
    else:
        coarse = rng.uniform(0, 1, (4, 4))
        mask = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC)) / 255.0
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    while np.abs(a - b).sum() < 200:
        b = rng.integers(0, 256, 3)
    img = a * (1 - mask[..., None]) + b * mask[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_folder(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / ("%03d.png" % i)).write_bytes(png(pattern(label, rng)))
    return root
