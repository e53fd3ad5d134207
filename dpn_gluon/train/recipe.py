"""The authors' training recipe: the numbers, where they come from, and the learning rate.

Sources (docs/reference/original-dpn.md section 6; docs/train.md):

- cypw/DPNs README, "Training" table: random mirror; random crop of 8-100 % of the area with
  aspect ratio 3/4-4/3; random HSL [20, 40, 50] (MXNet ``ImageRecordIter``'s ``random_h``,
  ``random_s``, ``random_l``); bicubic resizing; no PCA lighting; input
  ``(pixel - [124, 117, 104]) * 0.0167``. Trained on 10 nodes x 4 K80s with ``dist_sync``.
- timm's metadata for dpn68: global batch 1280, learning rate 0.316, SGD with momentum and
  weight decay, 40 K80 GPUs. Other batch sizes scale the rate linearly (Goyal et al. 2017).

Must stay compatible with MXNet 1.9's ``ImageRecordIter`` parameter names (:func:`record_iter_args`)
and with :mod:`dpn_gluon.train.augment`, which draws the same distributions in numpy.
"""
from __future__ import annotations

import math

from ..variants import MEAN_RGB, SCALE

#: The authors' global batch and learning rate (timm's metadata for dpn68: 40 K80s).
AUTHORS_BATCH = 1280
AUTHORS_LR = 0.316
#: Random-area crop: fraction of the image area, and width / height.
AREA = (0.08, 1.0)
ASPECT = (3.0 / 4.0, 4.0 / 3.0)
#: Random HSL shift bounds, in OpenCV's 8-bit HLS units (H 0-180, L and S 0-255).
RANDOM_H, RANDOM_S, RANDOM_L = 20, 40, 50
#: cv::resize interpolation code for bicubic (``inter_method=2``).
BICUBIC = 2

DEFAULT_BATCH = 256
DEFAULT_MOMENTUM = 0.9
DEFAULT_WD = 1e-4
DEFAULT_EPOCHS = 90
DEFAULT_SIZE = 224
SCHEDULES = ("step", "cosine")
#: The largest values dpn-train accepts: far beyond the recipe (224 px, 90 epochs, batches of
#: 1280 over 40 GPUs), short of what only ends in a MemoryError or a million processes.
MAX_SIZE = 1024
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_PROCESSES = 256
#: Step schedule: the rate is divided by 10 at these fractions of training (30/60/80 of 90).
STEP_AT = (1 / 3, 2 / 3, 8 / 9)


def scaled_lr(batch_size: int) -> float:
    """The linear-scaling rule from the authors' 1280 / 0.316: lr = 0.316 * batch / 1280."""
    return AUTHORS_LR * batch_size / AUTHORS_BATCH


def lr_at(step: int, steps_per_epoch: int, epochs: int, base_lr: float, schedule: str,
          warmup_epochs: float = 0.0) -> float:
    """The learning rate of global step ``step`` (0-based): linear warm-up from 0, then
    ``step`` (/10 at :data:`STEP_AT`) or ``cosine`` (half a cosine down to 0)."""
    total = max(1, steps_per_epoch * epochs)
    warm = int(round(warmup_epochs * steps_per_epoch))
    if step < warm:
        return base_lr * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    drops = sum(step >= round(f * total) for f in STEP_AT)
    return base_lr * 0.1 ** drops


def record_iter_args(size: int, augment: bool = True) -> dict:
    """``mx.io.ImageRecordIter`` keyword arguments for the recipe at ``size`` (without the
    file, batch, shuffle, seed and sharding arguments)."""
    args = dict(data_shape=(3, size, size), inter_method=BICUBIC,
                mean_r=MEAN_RGB[0], mean_g=MEAN_RGB[1], mean_b=MEAN_RGB[2], scale=SCALE)
    if augment:
        args.update(rand_mirror=True, random_resized_crop=True,
                    min_random_area=AREA[0], max_random_area=AREA[1],
                    min_aspect_ratio=ASPECT[0], max_aspect_ratio=ASPECT[1],
                    random_h=RANDOM_H, random_s=RANDOM_S, random_l=RANDOM_L)
    else:   # the authors' test protocol: short side to size, centre crop
        args.update(resize=size)
    return args
