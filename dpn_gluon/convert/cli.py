"""``dpn-convert``: the authors' DPN checkpoints to and from PyTorch, safetensors, timm, Gluon.

    dpn-convert SRC --to {torch,safetensors,timm,mxnet,gluon,onnx} [-o OUT] [--arch NAME]
                [--classifier fc6|fc6-1k] [--epoch N] [--force] [--check/--no-check] [--json]

A thin shell over :func:`dpn_gluon.convert.pipeline.convert`. The command is a group whose
default subcommand is ``convert``, so ``dpn-convert SRC --to X`` and ``dpn-convert convert
SRC --to X`` are the same, and further subcommands (``dpn-convert check A B``) fit beside it.

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
from ..errors import DPNError
from .formats import TARGETS

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
            rv = super().main(args=args, prog_name=prog_name or PROG, standalone_mode=False,
                              **extra)
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record on stdout.")
def convert_command(src, to, out, arch, classifier, epoch, force, check, as_json):
    """Convert SRC (an authors' .params, Gluon file, .pth, .safetensors or timm folder).

    The format is detected from the content, the architecture and class count from the
    tensor names and shapes. Exit 0 ok, 1 check failed, 2 bad input.
    """
    from .pipeline import convert
    result = convert(src, to, out=out, arch=arch, classifier=classifier, epoch=epoch,
                     force=force, check=check, log=_log)
    if as_json:
        click.echo(json.dumps(result.to_dict(), sort_keys=True))
    else:
        for path in result.outputs:
            click.echo(path)
    if not result.ok:
        _log("check FAILED: %s" % "; ".join(result.check.mismatches[:3] or ["logits differ"]))
        return 1
    return 0


if __name__ == "__main__":
    main()
