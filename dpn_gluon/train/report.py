"""``PREFIX-curves.png``: training loss, and top-1 accuracy (train and validation), per epoch.

matplotlib is optional (the ``report`` extra); without it the curves are skipped with one
warning, and the same numbers stay in ``PREFIX-train.json`` and ``PREFIX.log``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List

from ..deps import MissingDependency, require
from ..safeio.atomic import atomic_path

_warned = False


def curves(path: Path, history: List[dict]) -> None:
    global _warned
    try:
        matplotlib = require("matplotlib", "the training curves (PREFIX-curves.png)")
    except MissingDependency as err:
        if not _warned:
            print("dpn-train: warning: %s" % err, file=sys.stderr)
            _warned = True
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [h["loss"] for h in history], "o-", label="train")
    left.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    right.plot(epochs, [h["train_top1"] for h in history], "o-", label="train (augmented)")
    if any("top1" in h for h in history):
        right.plot([h["epoch"] for h in history if "top1" in h],
                   [h["top1"] for h in history if "top1" in h], "s-", label="validation")
    right.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(str(tmp), format="png", dpi=100)
    plt.close(fig)
