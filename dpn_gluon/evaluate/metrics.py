"""Top-1 / top-5 error (%) from logits and labels, accumulated batch by batch (numpy only).

A sample counts as correct at k when fewer than k classes score strictly higher than its
true class: the rank of the label, computed without sorting (the tests check it against an
independent ``np.argsort``). Exact ties, which a real network's float logits do not produce,
count in the label's favour.
"""
from __future__ import annotations

import numpy as np


def label_rank(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How many classes score strictly higher than the true one, per sample (0 = top-1)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError("logits must be (n, classes) and labels (n,), got %s and %s"
                         % (logits.shape, labels.shape))
    true = logits[np.arange(len(labels)), labels]
    return (logits > true[:, None]).sum(axis=1)


class TopKError:
    """Streaming top-k error: ``update(logits, labels)`` per batch, then :meth:`errors`."""

    def __init__(self, ks=(1, 5)):
        self.ks = tuple(ks)
        self.count = 0
        self.correct = {k: 0 for k in self.ks}

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        rank = label_rank(logits, labels)
        self.count += len(rank)
        for k in self.ks:
            self.correct[k] += int((rank < k).sum())

    def error(self, k: int) -> float:
        """Top-k error in percent (NaN before any sample)."""
        if not self.count:
            return float("nan")
        return 100.0 * (self.count - self.correct[k]) / self.count

    def errors(self) -> dict:
        return {"top%d_error" % k: self.error(k) for k in self.ks}
