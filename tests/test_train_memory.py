"""dpn-train's memory stays flat over epochs: a short run with validation, measured from
outside (USS of the trainer and its loader processes, from /proc, by benchmarks.train_memory).

On main before the fix (a loader pool forked anew each epoch from the grown trainer, a new
hybridized validation network per epoch) the peak grew by a third of epoch 3's per epoch.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.train_memory import measure, prepare

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(),
                                reason="reads Linux /proc")


def test_memory_after_the_last_epoch_is_within_a_quarter_of_epoch_3(tmp_path):
    train, val, seeded = prepare(tmp_path, images=16, val_images=12)
    rows = measure(["--from", seeded, "--data", train, "--val-data", val, "--size", 64,
                    "--epochs", 7, "--batch-size", 8, "--threads", 2, "--lr", "0.01"],
                   tmp_path / "run" / "m", interval=0.05)
    assert [r["epoch"] for r in rows] == list(range(1, 8))
    third, last = rows[2]["uss_mib"], rows[-1]["uss_mib"]
    assert last <= 1.25 * third, rows
