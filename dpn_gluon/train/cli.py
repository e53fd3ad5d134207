"""``dpn-train``: a thin click command over :func:`dpn_gluon.train.loop.train` and the launcher.

Summary on stdout (one JSON record with ``--json``), progress bar and log lines on stderr.
Exit 0 done, 2 bad input (one line ``dpn-train: error: ...``, no traceback, no output
written), 128+N when stopped by signal N (the last complete checkpoint stays).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from pathlib import Path

import click

from ..cliutil import Number, OneLineCommand, version_option
from ..deps import MissingDependency, importable, message
from ..errors import DPNError
from ..safeio.atomic import Interrupted
from ..variants import ARCHS
from . import recipe
from .options import KVSTORES, Options, check, worker_args

PROG = "dpn-train"


@click.command(cls=OneLineCommand, prog=PROG,
               context_settings={"help_option_names": ["-h", "--help"]})
@version_option(PROG)
@click.option("--from", "start", metavar="CKPT",
              help="Fine-tune this checkpoint (any format dpn-convert reads).")
@click.option("--arch", type=click.Choice(list(ARCHS)),
              help="Train this architecture from scratch.")
@click.option("--classes", type=int, help="Classes (default: the data's). A count other than "
                                          "the checkpoint's draws a new classifier named fc6.")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Training images: class folders, an im2rec .lst, or a .rec with its .idx.")
@click.option("--val-data", type=click.Path(path_type=Path),
              help="Evaluated after each epoch under the authors' test protocol.")
@click.option("--val-mean-max", is_flag=True, help="Validate with the authors' mean-max head.")
# Upper bounds on counts: what one machine's training can use, so that a typo is one line
# instead of a MemoryError, a million processes or an overflow inside MXNet.
@click.option("--size", type=click.IntRange(max=recipe.MAX_SIZE), default=recipe.DEFAULT_SIZE,
              show_default=True,
              help="Training crop size (bicubic resize of the random crop).")
@click.option("--epochs", type=click.IntRange(1, recipe.MAX_EPOCHS), default=recipe.DEFAULT_EPOCHS,
              show_default=True)
@click.option("--batch-size", type=click.IntRange(1, recipe.MAX_BATCH),
              default=recipe.DEFAULT_BATCH,
              show_default=True, help="Global batch: over all devices and workers.")
# Upper bounds: a rate of 10 (30x the authors' largest) or a decay of 1 already destroys the
# weights in one step; larger ones only overflow inside MXNet's optimizer.
@click.option("--lr", type=Number(0.0, 10.0), default=None,
              help="Base learning rate [default: 0.316 * batch-size / 1280, the authors' "
                   "rate scaled linearly].")
@click.option("--wd", type=Number(0.0, 1.0), default=recipe.DEFAULT_WD, show_default=True,
              help="Weight decay (on weights and gammas, as MXNet's Module).")
@click.option("--momentum", type=Number(0.0, 1.0), default=recipe.DEFAULT_MOMENTUM,
              show_default=True)
@click.option("--lr-schedule", type=click.Choice(recipe.SCHEDULES), default="cosine",
              show_default=True, help="step: /10 at 1/3, 2/3 and 8/9 of training.")
@click.option("--warmup-epochs", type=Number(0.0, float(recipe.MAX_EPOCHS)), default=0.0,
              show_default=True)
@click.option("--freeze-bn", is_flag=True, help="Keep BatchNorm statistics fixed (small batches).")
@click.option("--devices", default="cpu", show_default=True, help="cpu, cpu:0,1 or gpu:0,1,...")
@click.option("--kvstore", type=click.Choice(KVSTORES), default=None,
              help="[default: device; dist_sync with --workers]")
@click.option("--workers", type=click.IntRange(1, recipe.MAX_PROCESSES), default=None,
              help="Start a scheduler, a server and N workers on this machine (dist kvstore).")
@click.option("--stall-timeout", type=Number(1.0, 86400.0), default=600.0, show_default=True,
              metavar="SECONDS", help="With --workers: end the run (one line naming the role, "
                                      "exit 1) when no worker makes progress for this long.")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="PREFIX",
              help="Writes PREFIX-symbol.json, PREFIX-%04d.params/.states, PREFIX-train.json, "
                   "PREFIX.log, PREFIX-curves.png.")
@click.option("--resume", is_flag=True, help="Continue the run at PREFIX from its last epoch.")
@click.option("--seed", type=click.IntRange(0, 2 ** 31 - 1), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(0, recipe.MAX_PROCESSES), default=4,
              show_default=True,
              help="Image decoding processes (0: in the training process).")
@click.option("--json", "as_json", is_flag=True, help="One JSON summary record on stdout.")
@click.option("--quiet", "-q", is_flag=True,
              help="Nothing on stderr on success: no bar, no epoch lines (the summary still "
                   "goes to stdout).")
@click.option("--no-augment", is_flag=True, hidden=True,
              help="Centre crops instead of the recipe (tests: exact gradients).")
@click.option("--max-steps", type=click.IntRange(1, 2 ** 31 - 1), hidden=True,
              help="At most this many steps per epoch (tests, quick checks).")
def main(start, arch, classes, data, val_data, val_mean_max, size, epochs, batch_size, lr, wd,
         momentum, lr_schedule, warmup_epochs, freeze_bn, devices, kvstore, workers, stall_timeout,
         out, resume,
         seed, threads, as_json, quiet, no_augment, max_steps):
    """Train a DPN with the authors' recipe; checkpoints in their format after every epoch.

    Fine-tune a checkpoint (--from) or train from scratch (--arch) on one CPU, several GPUs
    (--devices gpu:0,1) or several processes (--workers N, or the DMLC_* environment of
    MXNet's parameter server across machines: docs/train.md).
    """
    kvstore = kvstore or ("dist_sync" if workers else "device")
    opts = Options(out=out, data=data, start=start, arch=arch, classes=classes,
                   val_data=val_data, val_mean_max=val_mean_max, size=size, epochs=epochs,
                   batch_size=batch_size, lr=lr, wd=wd, momentum=momentum,
                   lr_schedule=lr_schedule, warmup_epochs=warmup_epochs, freeze_bn=freeze_bn,
                   devices=devices, kvstore=kvstore, resume=resume, seed=seed, threads=threads,
                   augment=not no_augment, max_steps=max_steps, progress=not quiet,
                   as_json=as_json)
    check(opts)
    if not importable("mxnet"):      # found, not imported: the launcher itself never needs it
        raise MissingDependency(message("mxnet", PROG))
    try:
        if workers and not opts.distributed:
            raise DPNError("--workers needs a distributed --kvstore "
                           "(dist_sync or dist_device_sync)")
        if workers:
            _precheck(opts)
            from .launch import launch
            # the workers' kvstore explicitly: without --workers their default is "device"
            return launch(worker_args(sys.argv[1:]) + ["--kvstore", opts.kvstore], workers,
                          opts.out, stall_s=stall_timeout)
        if opts.distributed and "DMLC_ROLE" not in os.environ:
            raise DPNError("--kvstore %s needs --workers N, or the DMLC_* environment of "
                           "MXNet's parameter server (docs/train.md)" % opts.kvstore)
        from .loop import train
        # SIGINT/SIGTERM/SIGHUP raise Interrupted through OneLineCommand's one handler
        record = train(opts, " ".join(shlex.quote(a) for a in [PROG] + sys.argv[1:]))
    except Interrupted as sig:
        click.echo("%s: stopped by %s; the last complete checkpoint is kept"
                   % (PROG, signal.Signals(sig.signum).name), err=True)
        if opts.distributed:    # skip the kvstore's exit barrier: the peers may be gone
            sys.stderr.flush()
            os._exit(128 + sig.signum)
        return 128 + sig.signum
    if record.pop("rank"):
        return 0
    if as_json:
        click.echo(json.dumps(record))
    else:
        click.echo(summary(record))


def summary(record: dict) -> str:
    """The line printed after training."""
    from .loop import figures
    return "trained %s (%d classes) for %d epoch(s) on %d worker(s): %s; last checkpoint %s" % (
        record["arch"], record["classes"], record["epochs"], record["workers"],
        figures(record), record["checkpoint"])


def _precheck(opts: Options) -> None:
    """The launcher's checks of the inputs, so a bad one is one line before any process starts."""
    from ..data.datasets import open_dataset
    from .checkpoints import Run
    from .loop import check_outputs
    check_outputs(Run(opts.out), opts)
    open_dataset(opts.data)
    if opts.val_data is not None:
        open_dataset(opts.val_data)
    if opts.start is not None:
        from ..runtimes import read_model
        read_model(opts.start)


if __name__ == "__main__":
    from ..lifeline import follow_launcher
    follow_launcher()            # a worker of dpn-train --workers dies with its launcher
    main(prog_name=PROG)
