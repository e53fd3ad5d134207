"""What every dpn-gluon command line shares: one error format, signals, ``--version``, ``--labels``.

Every command (``dpn-convert``, ``dpn-evaluate``, ``dpn-predict``, and any later one) reports
bad input, click's usage errors included, as one line ``PROG: error: ...`` on stderr with
exit 2 and no traceback; SIGINT, SIGTERM and SIGHUP run every cleanup, then exit
128 + the signal with one line; a command's own return value is its exit status (1: a check
failed). Build a command with ``@click.command(cls=OneLineCommand, prog="dpn-x")`` (or a
group with :class:`OneLineGroup`) and add :func:`version_option`.
"""
from __future__ import annotations

import contextlib
import io
import math
import sys
from pathlib import Path

import click

from .errors import DPNError

DISTRIBUTION = "dpn-gluon"


def version() -> str:
    """The installed distribution's version (setup.py), or ``unknown`` when run from a tree
    that was never installed."""
    from importlib import metadata
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def version_option(prog: str):
    """``--version``: ``PROG, dpn-gluon VERSION`` on stdout, exit 0."""
    return click.version_option(version(), "--version", prog_name=prog,
                                message="%(prog)s, " + DISTRIBUTION + " %(version)s")


class Number(click.FloatRange):
    """A float flag within its bounds, and finite: click's own range lets NaN through (it
    compares false with every bound), and Inf where a side is open."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail("%r is not a finite number" % (value,), param, ctx)
        return number


def labels_option(fn):
    """``--labels FILE``: one class name per line, or ``index name`` lines."""
    return click.option(
        "--labels", "labels_file", type=click.Path(path_type=Path), default=None,
        help="Class names, one per line in class order (or 'index name' lines, each index "
             "0..N-1 once): UTF-8, exactly one name per class. Needed for ImageNet-5k; "
             "ImageNet-1k and Places365 names are built in.")(fn)


def fail(prog: str, message: str, code: int = 2):
    """``PROG: error: MESSAGE`` (on one line) on stderr, then exit ``code``."""
    click.echo("%s: error: %s" % (prog, " ".join(str(message).split())), err=True)
    sys.exit(code)


class OneLineErrors:
    """Mixin for click commands and groups: run without click's standalone error handling,
    so every failure leaves as one line and the command's return value is the exit status."""

    prog = "dpn"

    def main(self, args=None, prog_name=None, **extra):
        from .safeio.atomic import Interrupted, handling_signals
        extra.pop("standalone_mode", None)
        try:
            # SIGINT/SIGTERM/SIGHUP unwind (temps and half-done commits undone); args is None
            # when this is the process's own command line, which ends right after
            with handling_signals(exiting=args is None):
                rv = super().main(args=args, prog_name=prog_name or self.prog,
                                  standalone_mode=False, **extra)
        except Interrupted as e:
            fail(self.prog, str(e), e.exit_code)
        except click.exceptions.Exit as e:        # --help, --version
            sys.exit(e.exit_code)
        except click.ClickException as e:
            fail(self.prog, e.format_message(), e.exit_code)
        except click.Abort:
            fail(self.prog, "aborted", 130)
        except (DPNError, OSError) as e:
            fail(self.prog, str(e) if isinstance(e, DPNError)
                 else "%s: %s" % (e.filename or "", e.strerror or e), 2)
        sys.exit(rv if isinstance(rv, int) else 0)


class OneLineCommand(OneLineErrors, click.Command):
    def __init__(self, *args, prog: str = "dpn", **kwargs):
        super().__init__(*args, **kwargs)
        self.prog = prog


class OneLineGroup(OneLineErrors, click.Group):
    def __init__(self, *args, prog: str = "dpn", **kwargs):
        super().__init__(*args, **kwargs)
        self.prog = prog


@contextlib.contextmanager
def quiet_stderr(quiet: bool):
    """With ``quiet``, everything written to stderr inside is dropped (logs, progress bars:
    tqdm shows no bar on a non-terminal); the caller reports failures after it."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield
