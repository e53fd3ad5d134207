"""``dpn-convert``: the authors' DPN checkpoints to and from PyTorch, safetensors, timm, Gluon.

    dpn-convert SRC --to {torch,safetensors,timm,mxnet,gluon,onnx,openvino} [-o OUT] [--arch NAME]
                [--classifier fc6|fc6-1k] [--epoch N] [--force] [--check/--no-check] [--strict]
                [--json] [--device cpu|cuda] [--tolerance X] [--report FILE.png|.html]
                [--mean-max] [--fp16] [--opset N]            (the last three: --to onnx;
                                                               --mean-max: also openvino)
                [--labels FILE] [--license ID] [-q|--quiet] [-v|--verbose]
    dpn-convert list [--json]
    dpn-convert release SRC_DIR -o OUT_DIR [--check/--no-check] [--labels FILE] [--license ID]
                [--force] [--json] [-q]
    dpn-convert check A B [--runtime torch|onnx|openvino] [--device cpu|cuda] [--mx-device cpu|gpu]
                [--dtype float32|float16|bfloat16] [--size N] [--batch N] [--seed N]
                [--image FILE ...] [--tolerance X] [--report FILE] [--json]

Thin shells over :func:`dpn_gluon.convert.pipeline.convert`,
:func:`dpn_gluon.convert.parity.layer_parity` and :mod:`dpn_gluon.convert.release`. The
command is a group whose default subcommand is ``convert``, so ``dpn-convert SRC --to X`` and
``dpn-convert convert SRC --to X`` are the same; ``check``, ``list`` and ``release`` sit
beside it.

Results on stdout (the output paths, or one JSON record with ``--json``); progress and logs on
stderr. Exit 0 ok, 1 the check failed, 2 bad input or usage (one line ``dpn-convert: error:``
on stderr, no traceback, no output file left behind; :mod:`dpn_gluon.cliutil`).
"""
from __future__ import annotations

import glob
import json
from pathlib import Path

import click

from .. import variants
from ..cliutil import Number, OneLineGroup, labels_option, quiet_stderr, version_option
from ..errors import DPNError
from ..onnx_graph import DEFAULT_OPSET, OPSETS
from ..safeio.outputs import TARGETS
from .parity import DEVICES, DTYPES, MX_DEVICES, RUNTIMES

PROG = "dpn-convert"


class _DefaultGroup(OneLineGroup):
    """A group that runs ``convert`` when the first argument is a checkpoint or ``--to``
    follows it, and says so when it is neither a subcommand nor a file: ``dpn-convert lsit``
    is a typo, not a file to convert. Errors: one line, exit 2 (:mod:`dpn_gluon.cliutil`)."""

    default_command = "convert"
    own_options = ("--help", "-h", "--version")

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in self.own_options:
            first = args[0]
            converting = any(a == "--to" or a.startswith("--to=") for a in args[1:])
            if not first.startswith("-") and not converting and not _names_a_checkpoint(first):
                raise click.UsageError("no subcommand %r and no such file (subcommands: %s)"
                                       % (first, ", ".join(self.commands)))
            args = [self.default_command] + list(args)
        return super().parse_args(ctx, args)


def _names_a_checkpoint(arg: str) -> bool:
    """SRC of ``convert``: a file or folder, or the PREFIX of ``PREFIX-NNNN.params`` /
    ``PREFIX-symbol.json`` (formats.registry.resolve says the rest)."""
    path = Path(arg)
    return (path.exists() or Path(arg + "-symbol.json").exists()
            or any(path.parent.glob(glob.escape(path.name) + "-*.params")))


def _log(msg: str):
    click.echo("%s: %s" % (PROG, msg), err=True)


@click.group(cls=_DefaultGroup, prog=PROG, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@version_option(PROG)
@click.pass_context
def main(ctx):
    """Convert the authors' Dual Path Network checkpoints between formats.

    \b
    dpn-convert SRC --to FORMAT [options]     (same as: dpn-convert convert SRC ...)
    dpn-convert check REFERENCE CANDIDATE     per-layer parity of two checkpoints
    dpn-convert list [--json]                 the authors' released checkpoints
    dpn-convert release SRC_DIR -o OUT_DIR    every checkpoint in a folder, Hub-ready
    Run `dpn-convert SUBCOMMAND --help` for the options.
    """
    if ctx.invoked_subcommand is None:      # no arguments at all: the help, on stdout
        click.echo(ctx.get_help())


@main.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, type=click.Choice(TARGETS),
              help="Target format: torch (.pth state_dict, timm keys), safetensors, timm "
                   "(folder: config.json + model.safetensors), mxnet (PREFIX-symbol.json + "
                   "PREFIX-0000.params), gluon (save_parameters file), onnx, openvino "
                   "(IR: NAME.xml + NAME.bin, float32 weights).")
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
@click.option("--tolerance", type=Number(0, min_open=True), default=None,
              help="Max relative difference per tap for the check (default 1e-5).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the check's per-layer errors: FILE.png, .svg or .html.")
@click.option("--mean-max", is_flag=True,
              help="--to onnx or openvino: the authors' test head (classifier as a 1x1 conv over the 7x7 "
                   "average-pooled map, mean of global average and max); inputs >= 193 px, "
                   "the authors tested at 320.")
@click.option("--fp16", is_flag=True,
              help="--to onnx: float16 weights and compute, float32 input and logits (checked "
                   "against MXNet within the measured bound, docs/onnx.md).")
@click.option("--opset", type=click.IntRange(OPSETS[0], OPSETS[-1]), default=None,
              help="--to onnx: the ONNX opset (%d to %d; default %d)."
                   % (OPSETS[0], OPSETS[-1], DEFAULT_OPSET))
@labels_option
@click.option("--license", "license_", default=None,
              help="Licence identifier for a timm folder's model card and config (default: "
                   "other; cypw/DPNs states none).")
@click.option("-q", "--quiet", is_flag=True,
              help="Nothing on stderr on success (a failed check still prints its table); stdout "
                   "still lists the written paths, one per line, as a script expects.")
@click.option("-v", "--verbose", is_flag=True,
              help="Print the check's per-layer table even when it passes.")
def convert_command(src, to, out, arch, classifier, epoch, force, check, strict, as_json,
                    device, tolerance, report, mean_max, fp16, opset, labels_file, license_,
                    quiet, verbose):
    """Convert SRC (an authors' .params, Gluon file, .pth, .safetensors or timm folder).

    The format is detected from the content, the architecture and class count from the
    tensor names and shapes. The check (on by default) prints one summary line on stderr;
    its per-layer table on failure, with --verbose or with --report. Exit 0 ok, 1 check
    failed, 2 bad input.
    """
    from .pipeline import convert
    if check and device == "cuda":
        _require_cuda()
    with quiet_stderr(quiet):
        result = convert(src, to, out=out, arch=arch, classifier=classifier, epoch=epoch,
                         force=force, check=check, strict=strict, log=_log, device=device,
                         tolerance=tolerance, labels=labels_file, license=license_,
                         onnx_options=dict(mean_max=mean_max, fp16=fp16, opset=opset),
                         progress=True, report=report)
        parity = result.check.parity if result.check else None
        if result.report is not None:
            _log("report: %s" % result.report)
        elif report is not None:
            _log("no report written: the numerical check did not run")
    if parity is not None and (verbose or report is not None or not parity.passed):
        if not quiet or not result.ok:
            click.echo(parity.table(), err=True)
    if as_json:
        click.echo(json.dumps(result.to_dict(), sort_keys=True))
    else:
        for path in result.outputs:
            click.echo(path)
    if not result.ok:
        _log("check FAILED: %s" % _failure(result.check))
        return 1
    return 0


def _failure(check) -> str:
    first = check.parity.first_failure if check.parity is not None else None
    return "; ".join(check.mismatches[:3]
                     or ["first failing tap %s" % first.name if first else "logits differ"])


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
              help="Run CANDIDATE in PyTorch (the timm-layout DPN), in onnxruntime (its ONNX "
                   "export with every tap as an output) or in OpenVINO (that graph, compiled "
                   "for the CPU). Default: torch; onnx when CANDIDATE is an ONNX model, "
                   "openvino when it is an IR (NAME.xml) dpn-convert wrote, which run as they "
                   "are.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
              help="Device of CANDIDATE's runtime.")
@click.option("--mx-device", type=click.Choice(MX_DEVICES), default="cpu", show_default=True,
              help="Device of the MXNet reference; gpu falls back to the CPU, with a message, "
                   "where the MXNet build has no kernels for the card (Hopper and newer).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="CANDIDATE's compute dtype (PyTorch; OpenVINO: float32 or bfloat16, set "
                   "explicitly); REFERENCE runs in float32.")
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
@click.option("--tolerance", type=Number(0, min_open=True), default=None,
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
    from ..formats.canonical import read
    from ..openvino_ir import IRModel, is_ir, read_ir
    from ..safeio.outputs import report_plan
    from .parity import OnnxModel, layer_parity, read_onnx
    plan = report_plan(report, _inputs(reference, candidate), force) if report else None
    from ..formats import registry
    ref = read(reference, hash_source=False)
    source = registry.detect(registry.resolve(candidate)) if not is_ir(candidate) else None
    # an ONNX candidate runs as written (its dtype, its head), not as weights in torch; so
    # does an OpenVINO IR
    if source is None:
        cand = read_ir(candidate)
    elif source.format == "onnx":
        cand = read_onnx(candidate)
    else:
        cand = read(candidate, hash_source=False)
    for w, role in ((ref, "reference"), (cand, "candidate")):
        if isinstance(w, (OnnxModel, IRModel)):
            _log("%s: %s, %s, %s, %d classes, %s head"
                 % (role, w.path, "onnx" if isinstance(w, OnnxModel) else "openvino IR",
                    w.arch.name, w.classes, "mean-max" if w.mean_max else "global"))
            continue
        _log("%s: %s, %s, %s, %d classes, %d tensors (%s)" % (
            role, w.source, w.format, w.arch.name, w.classes, len(w.tensors), ", ".join(w.dtypes)))
    runtime = runtime or ("onnx" if isinstance(cand, OnnxModel)
                          else "openvino" if isinstance(cand, IRModel) else "torch")
    rep = layer_parity(ref, cand, runtime=runtime, device=device, dtype=dtype, batch=batch,
                       size=size, seed=seed, images=list(images) or None, tolerance=tolerance,
                       mx_device=mx_device, mean_max=mean_max, log=_log)
    if as_json:
        d = rep.to_dict()
        d.update(reference=str(ref.source),
                 candidate=str(cand.path if isinstance(cand, (OnnxModel, IRModel))
                               else cand.source))
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


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON record (a list of rows) on stdout.")
def list_command(as_json):
    """Every published DPN weight set: the authors' ten checkpoints and PaddleClas's five, with
    architecture, classes, classifier, parameters and the published single-crop ImageNet-1k
    top-1 / top-5 error (%) at 224 (and, the authors', at 320 with the mean-max head; none
    for ImageNet-5k and Places365)."""
    from .release import catalog
    rows = catalog()
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return 0
    head = "%-16s %-7s %7s %-10s %8s   %-13s %-13s" % (
        "checkpoint", "arch", "classes", "classifier", "params", "224 top-1/5", "320mm top-1/5")
    click.echo(head)
    click.echo("-" * len(head))
    for r in rows:
        if r["weight_set"] != "authors":
            continue
        pair = ["%5.2f / %-5.2f" % (r[k1], r[k5]) if k1 in r else "%-13s" % "-"
                for k1, k5 in (("top1_err_224", "top5_err_224"),
                               ("top1_err_320_mean_max", "top5_err_320_mean_max"))]
        click.echo(("%-16s %-7s %7d %-10s %7.2fM   %s %s" % (
            r["name"], r["arch"], r["classes"], r["classifier"], r["params"] / 1e6,
            *pair)).rstrip())
    click.echo("errors (%) as the authors published them (cypw/DPNs README); 320mm: 320 x 320 "
               "with their mean-max head")
    click.echo("")
    head = "%-16s %-7s %7s %-10s %8s   %-13s" % (
        "PaddleClas", "arch", "classes", "classifier", "params", "224 top-1/5")
    click.echo(head.rstrip())
    click.echo("-" * len(head.rstrip()))
    for r in rows:
        if r["weight_set"] == "paddleclas":
            click.echo(("%-16s %-7s %7d %-10s %7.2fM   %5.2f / %-5.2f" % (
                r["name"], r["arch"], r["classes"], "out", r["params"] / 1e6,
                r["top1_err_224"], r["top5_err_224"])).rstrip())
    click.echo("errors (%%) from the accuracy PaddleClas published (its model zoo): %s, trained "
               "by PaddleClas's recipe for its ImageNet normalization; .pdparams files, read and "
               "written by dpn-convert (--to paddle)" % variants.WEIGHT_SETS["paddleclas"].url)
    return 0


@main.command("release")
@click.argument("src_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Output folder (created if missing): NAME/ (timm folder), NAME.onnx, "
                   "MANIFEST.json and MANIFEST.md.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Check every output (exact reload, and the per-layer parity where MXNet "
                   "and torch/onnxruntime are installed).")
@click.option("--force", is_flag=True,
              help="Overwrite outputs that an earlier release into OUT_DIR did not write.")
@labels_option
@click.option("--license", "license_", default=None,
              help="Licence identifier for the model cards (default: other).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Nothing on stderr when every entry is ok.")
def release_command(src_dir, out, check, force, labels_file, license_, as_json, quiet):
    """Every authors' checkpoint (PREFIX-NNNN.params) in SRC_DIR, Hub-ready, in OUT_DIR.

    Per checkpoint: OUT_DIR/NAME/ (a timm folder with config.json, model.safetensors and a
    model card) and OUT_DIR/NAME.onnx; MANIFEST.json / MANIFEST.md record the sha256 of the
    input and of each output, the architecture and the worst parity error. A rerun skips
    entries whose input and outputs are unchanged. --labels names the classes of the
    checkpoints with as many classes as the file has names. Exit 0 all ok, 1 a parity check
    failed, 2 some input was bad (each reported in one line; the others still convert).
    """
    from .release import MANIFEST_JSON, release
    if license_ is not None:
        from .card import check_license
        check_license(license_)
    from .release import status
    with quiet_stderr(quiet):
        rel = release(src_dir, out, check=check, force=force, license=license_,
                      labels_file=labels_file, log=_log, progress=True)
    for entry in rel.entries if quiet else ():
        if entry["error"] or not entry["ok"]:
            _log("%s: %s" % (entry["name"], status(entry)))
    if as_json:
        click.echo(json.dumps(rel.to_dict(), sort_keys=True))
    else:
        click.echo(out / MANIFEST_JSON)
    return rel.exit_code


def _inputs(*paths: Path):
    """The files a check reads, as the reader resolves them (a PREFIX names PREFIX-0000.params)."""
    from ..formats.registry import resolve
    found = []
    for path in paths:
        found.append(path)
        try:
            found.append(resolve(path))
        except DPNError:
            pass                # the reader says what is wrong with it, after the plan
    return found


if __name__ == "__main__":
    main()
