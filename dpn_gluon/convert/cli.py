"""``dpn-convert``: the authors' DPN checkpoints to and from PyTorch, safetensors, timm, Gluon.

    dpn-convert SRC --to {torch,safetensors,timm,mxnet,gluon,onnx} [-o OUT] [--arch NAME]
                [--classifier fc6|fc6-1k] [--epoch N] [--force] [--check/--no-check] [--strict]
                [--json] [--device cpu|cuda] [--tolerance X] [--report FILE.png|.html]
    dpn-convert check A B [--runtime torch|onnx] [--device cpu|cuda] [--mx-device cpu|gpu]
                [--dtype float32|float16|bfloat16] [--size N] [--batch N] [--seed N]
                [--image FILE ...] [--tolerance X] [--report FILE] [--json]

Thin shells over :func:`dpn_gluon.convert.pipeline.convert` and
:func:`dpn_gluon.convert.parity.layer_parity`. The command is a group whose default
subcommand is ``convert``, so ``dpn-convert SRC --to X`` and ``dpn-convert convert SRC --to X``
are the same, and ``dpn-convert check A B`` sits beside it.

Results on stdout (the output paths, or one JSON record with ``--json``); progress and logs on
stderr. Exit 0 ok, 1 the check failed, 2 bad input or usage (one line on stderr, no
traceback, no output file left behind).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import variants
from ..errors import CheckpointError, DPNError
from .atomic import Interrupted, handling_signals
from .formats import TARGETS
from .parity import DEVICES, DTYPES, MX_DEVICES, RUNTIMES

PROG = "dpn-convert"


class _DefaultGroup(click.Group):
    """A group that runs ``convert`` when the first argument names no subcommand, and
    reports every error in one line on stderr with exit 2 (1 for a failed check)."""

    default_command = "convert"

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command] + list(args)
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, **extra):
        extra.pop("standalone_mode", None)
        try:
            # SIGTERM/SIGHUP/SIGINT unwind (temps and half-done commits undone); args is None
            # when this is the process's own command line, which ends right after
            with handling_signals(exiting=args is None):
                rv = super().main(args=args, prog_name=prog_name or PROG, standalone_mode=False,
                                  **extra)
        except Interrupted as e:
            _fail(str(e), e.exit_code)
        except click.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except click.Abort:
            _fail("aborted", 130)
        except (DPNError, OSError) as e:
            _fail(str(e) if isinstance(e, DPNError) else "%s: %s" % (e.filename or "", e.strerror or e), 2)
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(message: str, code: int):
    click.echo("%s: error: %s" % (PROG, " ".join(str(message).split())), err=True)
    sys.exit(code)


def _log(msg: str):
    click.echo("%s: %s" % (PROG, msg), err=True)


@click.group(cls=_DefaultGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx):
    """Convert the authors' Dual Path Network checkpoints between formats.

    \b
    dpn-convert SRC --to FORMAT [options]     (same as: dpn-convert convert SRC ...)
    Run `dpn-convert convert --help` for the options.
    """
    if ctx.invoked_subcommand is None:      # no arguments at all: the help, on stdout
        click.echo(ctx.get_help())


@main.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, type=click.Choice(TARGETS),
              help="Target format: torch (.pth state_dict, timm keys), safetensors, timm "
                   "(folder: config.json + model.safetensors), mxnet (PREFIX-symbol.json + "
                   "PREFIX-0000.params), gluon (save_parameters file), onnx.")
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), default=None,
              help="Output path (for mxnet: the PREFIX), or an existing folder for the default "
                   "name. Default: beside SRC, named after it (dpn68-0000.params -> dpn68.pth).")
@click.option("--arch", type=click.Choice(list(variants.ARCHS)), default=None,
              help="Architecture, only where the tensors are ambiguous (they rarely are).")
@click.option("--classifier", type=click.Choice(variants.CLASSIFIERS), default=None,
              help="The authors' classifier name for the output (fc6, or fc6-1k for the "
                   "-extra checkpoints). Default: from SRC's names or metadata, else the "
                   "released checkpoint of that architecture and class count.")
@click.option("--epoch", type=click.IntRange(0, 9999), default=None,
              help="Read PREFIX-EPOCH.params when SRC is a prefix (default: PREFIX-0000.params).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Reload the output and compare every tensor exactly with SRC; with MXNet and "
                   "torch installed also run a seeded batch through both frameworks.")
@click.option("--strict", is_flag=True,
              help="Refuse (exit 2, no output) a checkpoint with NaN/Inf weights or BatchNorm "
                   "variances <= 0; without it these are warnings naming the tensors.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record on stdout.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Where the check runs the PyTorch DPN (MXNet runs on the CPU).")
@click.option("--tolerance", type=click.FloatRange(0, min_open=True), default=None,
              help="Max relative difference per tap for the check (default 1e-5).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the check's per-layer errors: FILE.png, .svg or .html.")
def convert_command(src, to, out, arch, classifier, epoch, force, check, strict, as_json,
                    device, tolerance, report):
    """Convert SRC (an authors' .params, Gluon file, .pth, .safetensors or timm folder).

    The format is detected from the content, the architecture and class count from the
    tensor names and shapes. The check (on by default) prints the per-layer parity table
    on stderr. Exit 0 ok, 1 check failed, 2 bad input.
    """
    from .pipeline import convert
    if check and device == "cuda":
        _require_cuda()
    result = convert(src, to, out=out, arch=arch, classifier=classifier, epoch=epoch,
                     force=force, check=check, strict=strict, log=_log, device=device,
                     tolerance=tolerance, report=report)
    parity = result.check.parity if result.check else None
    if parity is not None:
        click.echo(parity.table(), err=True)
    if result.report is not None:
        _log("report: %s" % result.report)
    elif report is not None:
        _log("no report written: the numerical check did not run")
    if as_json:
        click.echo(json.dumps(result.to_dict(), sort_keys=True))
    else:
        for path in result.outputs:
            click.echo(path)
    if not result.ok:
        first = parity.first_failure if parity is not None else None
        _log("check FAILED: %s" % "; ".join(
            result.check.mismatches[:3]
            or ["first failing tap %s" % first.name if first else "logits differ"]))
        return 1
    return 0


def _require_cuda():
    """Refuse --device cuda before writing anything when torch sees no CUDA device."""
    try:
        import torch
    except ImportError:
        raise DPNError("--device cuda needs torch") from None
    if not torch.cuda.is_available():
        raise DPNError("--device cuda: torch %s sees no CUDA device" % torch.__version__)


@main.command("check")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--runtime", type=click.Choice(RUNTIMES), default=None,
              help="Run CANDIDATE in PyTorch (the timm-layout DPN) or in onnxruntime (its ONNX "
                   "export with every tap as an output). Default: torch, or onnx when CANDIDATE "
                   "is an ONNX model dpn-convert wrote, which runs as it is.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Device of CANDIDATE's runtime.")
@click.option("--mx-device", type=click.Choice(MX_DEVICES), default="cpu", show_default=True,
              help="Device of the MXNet reference; gpu falls back to the CPU, with a message, "
                   "where the MXNet build has no kernels for the card (Hopper and newer).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="CANDIDATE's compute dtype (PyTorch only); REFERENCE runs in float32.")
@click.option("--size", type=click.IntRange(32, 1024), default=64, show_default=True,
              help="Input height and width (at least 193 with --mean-max).")
@click.option("--batch", type=click.IntRange(1, 256), default=2, show_default=True,
              help="Seeded images (ignored with --image).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the batch.")
@click.option("--image", "images", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An image to use instead of the seeded batch (repeatable); preprocessed as "
                   "the authors did: bicubic short-side resize to --size, center crop, "
                   "(pixel - (124, 117, 104)) * 0.0167.")
@click.option("--mean-max", is_flag=True,
              help="Compare the authors' mean-max test head instead of global average pooling.")
@click.option("--tolerance", type=click.FloatRange(0, min_open=True), default=None,
              help="Max relative difference per tap, max|a-b|/max|a| (default: 1e-5 for "
                   "float32; the measured bounds for float16 and bfloat16).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw max rel diff per tap on a log scale: FILE.png, .svg or .html.")
@click.option("--force", is_flag=True, help="Overwrite an existing --report file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record (the rows) on stdout.")
def check_command(reference, candidate, runtime, device, mx_device, dtype, size, batch, seed,
                  images, mean_max, tolerance, report, force, as_json):
    """Per-layer parity: REFERENCE in the authors' MXNet graph, CANDIDATE in PyTorch or ONNX.

    REFERENCE and CANDIDATE are any checkpoints dpn-convert reads (the authors' .params,
    Gluon, .pth, .safetensors, timm folder) of the same architecture and class count. The same batch
    goes through both; outputs are compared at the stem (pool1), every dual-path block's
    residual (_sum) and dense (_cat) paths, the final BN-ReLU and the logits. Prints one row
    per tap (max abs, max rel, cosine, ok) and marks the first failing one: where the two
    models part. Exit 0 every tap within the tolerance (and, for float16/bfloat16, the same
    top-1 class on every image), 1 otherwise, 2 bad input.
    """
    from .formats import read
    from .outputs import report_plan
    from .parity import OnnxModel, layer_parity, read_onnx
    plan = report_plan(report, _inputs(reference, candidate), force) if report else None
    ref = read(reference, hash_source=False)
    try:
        cand = read(candidate, hash_source=False)
    except CheckpointError as e:
        if not candidate.is_file():
            raise
        try:
            cand = read_onnx(candidate)
        except DPNError:
            raise e from None
    for w, role in ((ref, "reference"), (cand, "candidate")):
        if isinstance(w, OnnxModel):
            _log("%s: %s, onnx, %s, %d classes, %s head"
                 % (role, w.path, w.arch.name, w.classes, "mean-max" if w.mean_max else "global"))
            continue
        _log("%s: %s, %s, %s, %d classes, %d tensors (%s)" % (
            role, w.source, w.format, w.arch.name, w.classes, len(w.tensors), ", ".join(w.dtypes)))
    runtime = runtime or ("onnx" if isinstance(cand, OnnxModel) else "torch")
    rep = layer_parity(ref, cand, runtime=runtime, device=device, dtype=dtype, batch=batch,
                       size=size, seed=seed, images=list(images) or None, tolerance=tolerance,
                       mx_device=mx_device, mean_max=mean_max, log=_log)
    if as_json:
        d = rep.to_dict()
        d.update(reference=str(ref.source),
                 candidate=str(cand.path if isinstance(cand, OnnxModel) else cand.source))
        click.echo(json.dumps(d, sort_keys=True))
    else:
        click.echo(rep.table())
    if plan is not None:
        where = plan.output("report")
        with plan.transaction() as tx:
            with tx.file(where) as f:
                f.write(rep.render(where))
            tx.commit()
        _log("report: %s" % where)
    if not rep.passed:
        first = rep.first_failure
        _log("parity FAILED: %s" % ("first failing tap %s (max rel %.2e > %g)"
                                    % (first.name, first.max_rel, rep.tolerance) if first
                                    else "top-1 classes differ"))
        return 1
    return 0


def _inputs(*paths: Path):
    """The files a check reads, as the reader resolves them (a PREFIX names PREFIX-0000.params)."""
    from .formats import resolve_source
    found = []
    for path in paths:
        found.append(path)
        try:
            found.append(resolve_source(path))
        except DPNError:
            pass                # the reader says what is wrong with it, after the plan
    return found


if __name__ == "__main__":
    main()
