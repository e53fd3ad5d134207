"""dpn-train's settings, their defaults, and the checks that make bad input one line (exit 2).

The fields that define the training run (:data:`RECIPE_FIELDS`) are stored in the run record
and must be the same on ``--resume``; ``epochs`` may grow.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

from ..errors import DPNError
from . import recipe

KVSTORES = ("local", "device", "dist_sync", "dist_device_sync")
RECIPE_FIELDS = ("start", "arch", "classes", "data", "size", "batch_size", "lr", "wd", "momentum",
                 "lr_schedule", "warmup_epochs", "freeze_bn", "seed", "augment", "max_steps")


@dataclass
class Options:
    out: Path
    data: Path
    start: Optional[str] = None          # --from CKPT
    arch: Optional[str] = None           # --arch NAME (from scratch)
    classes: Optional[int] = None
    val_data: Optional[Path] = None
    val_mean_max: bool = False
    size: int = recipe.DEFAULT_SIZE
    epochs: int = recipe.DEFAULT_EPOCHS
    batch_size: int = recipe.DEFAULT_BATCH
    lr: Optional[float] = None           # None: recipe.scaled_lr(batch_size)
    wd: float = recipe.DEFAULT_WD
    momentum: float = recipe.DEFAULT_MOMENTUM
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    freeze_bn: bool = False
    devices: str = "cpu"
    kvstore: str = "device"
    resume: bool = False
    seed: int = 0
    threads: int = 4                     # decoding processes / ImageRecordIter threads
    augment: bool = True
    max_steps: Optional[int] = None      # steps per epoch (tests, quick checks)
    progress: bool = True
    as_json: bool = False

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else recipe.scaled_lr(self.batch_size)

    @property
    def distributed(self) -> bool:
        return self.kvstore.startswith("dist")

    def recipe_dict(self) -> dict:
        d = asdict(self)
        out = {k: (str(d[k]) if isinstance(d[k], Path) else d[k]) for k in RECIPE_FIELDS}
        out["lr"] = self.base_lr
        return out


def check(opts: Options) -> None:
    """Refuse inconsistent settings before anything is read or started."""
    if (opts.start is None) == (opts.arch is None):
        raise DPNError("give exactly one of --from CKPT (fine-tune) and --arch NAME (from scratch)")
    if opts.size < 32:
        raise DPNError("--size must be at least 32 (the network's stride), got %d" % opts.size)
    if opts.val_data is not None:
        from ..evaluate import settings
        settings(opts.size, "authors", opts.val_mean_max)
    if opts.lr_schedule not in recipe.SCHEDULES:
        raise DPNError("--lr-schedule must be one of %s" % ", ".join(recipe.SCHEDULES))
    if opts.kvstore not in KVSTORES:
        raise DPNError("--kvstore must be one of %s" % ", ".join(KVSTORES))
    if opts.classes is not None and opts.classes < 1:
        raise DPNError("--classes must be positive, got %d" % opts.classes)


def parse_devices(spec: str):
    """``cpu``, ``cpu:0,1`` (several CPU contexts) or ``gpu:0,1`` -> a list of MXNet contexts."""
    import mxnet as mx

    from ..runtimes import parse_devices as parse
    kind, ids = parse(spec)
    if kind == "gpu":
        if mx.context.num_gpus() <= max(ids):
            raise DPNError("--devices %s: MXNet sees %d GPU(s)" % (spec, mx.context.num_gpus()))
        return [mx.gpu(i) for i in ids]
    return [mx.cpu(i) for i in ids] or [mx.cpu()]


def worker_args(argv: List[str]) -> List[str]:
    """The command line of one worker: ``argv`` without ``--workers N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out
