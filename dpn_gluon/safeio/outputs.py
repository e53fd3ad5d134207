"""Where outputs go: the one rule for every path a command writes (converted files, timm
folders, mxnet's pair, reports), checked for all of them before the first byte is written.

- An output name says what it is: a known suffix of another format is refused
  (``--to torch -o x.safetensors``); an mxnet ``-o`` ending in ``.params`` / ``-0000.params`` /
  ``-symbol.json`` is taken as the prefix. Unknown suffixes are allowed.
- Nothing the tool did not create is deleted or overwritten: ``--force`` replaces a regular
  file, an empty folder, or a folder holding nothing but an earlier timm folder's files
  (:data:`TIMM_FILES`, at least config.json and model.safetensors); a symbolic link, a folder of other files, a file where a folder
  goes (or the reverse) are refused, naming what is in the way.
- No output may be an input: same real path, same device and inode (hard links), an output
  folder containing an input, or an output inside an input folder; nor another output.
- Missing parent folders are created (and removed again if the command fails).

The plan then hands the paths to an :class:`.atomic.Transaction`, which stages every output
as a temp, commits them together and rolls back on failure or interruption.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

from .. import deps
from ..errors import DPNError
from ..formats import mxnet, registry, timm
from .atomic import OutputExists, Transaction

PathLike = Union[str, Path]

#: What an earlier timm folder output may hold, and what every one holds.
TIMM_FILES, TIMM_WRITTEN = timm.FILES, timm.WRITTEN
#: Targets that are not checkpoint formats: model exports, built above the formats.
EXPORTS = {"onnx": ".onnx", "openvino": ".xml"}
#: Every target dpn-convert writes.
TARGETS = registry.WRITABLE + tuple(EXPORTS)
#: The default suffix of each target (timm is a folder, mxnet a prefix).
SUFFIX = {**registry.SUFFIX, **EXPORTS}
#: Suffixes of reports (``--report``).
REPORT_SUFFIXES = (".png", ".svg", ".html", ".htm")
#: Suffixes that say which format a file is; a name with one of these is refused for any
#: other target. ``.params`` is Gluon's (mxnet takes it as its prefix's), ``.json`` no target's.
KNOWN_SUFFIXES = {**registry.KNOWN_SUFFIXES, **{s: t for t, s in EXPORTS.items()},
                  ".json": None, **{s: None for s in REPORT_SUFFIXES}}


@dataclass(frozen=True)
class Output:
    path: Path
    folder: bool = False
    role: str = "output"


# -- names ---------------------------------------------------------------------------------

def _absolute_if_bare(path: Path) -> Path:
    """``.``, ``..`` and ``/`` have no name to put a temp beside: use the absolute path."""
    return Path(os.path.abspath(path)) if path.name in ("", ".", "..") else path


def target_path(src: Path, src_format: str, target: str, out: Optional[PathLike] = None) -> Path:
    """Where ``target`` goes: ``out`` itself, a name derived from SRC inside the folder
    ``out``, or beside SRC (``dpn68-0000.params`` -> ``dpn68.pth``). For ``mxnet`` this is
    the prefix of ``PREFIX-symbol.json`` / ``PREFIX-0000.params``; for ``timm``, ``out`` is
    always the timm folder itself."""
    if out is not None and (target == "timm" or not Path(out).is_dir()):
        out = _absolute_if_bare(Path(out))
        if target == "openvino" and out.suffix.lower() not in KNOWN_SUFFIXES:  # NAME.xml
            out = out.with_name(out.name + ".xml")
        return mxnet.prefix_of(out) if target == "mxnet" else out
    stem = src.name
    if src_format == "mxnet" and mxnet.is_epoch_file(src):
        stem = mxnet.prefix_of(src).name
    elif src_format != "timm":
        stem = src.stem if src.suffix else stem
    folder = _absolute_if_bare(Path(out)) if out is not None else src.parent
    return folder / (stem + SUFFIX[target])


def output_files(target: str, out: Path) -> List[Path]:
    """The paths a target writes at ``out``."""
    if target == "openvino":        # OpenVINO reads NAME.bin beside NAME.xml
        return [out, out.with_suffix(".bin")]
    return registry.FORMATS[target].files(out) if target in registry.FORMATS else [out]


def _check_suffix(path: Path, target: str) -> None:
    suffix = path.suffix.lower()
    if suffix not in KNOWN_SUFFIXES or KNOWN_SUFFIXES[suffix] == target:
        return
    what = {"timm": "a folder", "mxnet": "PREFIX-symbol.json and PREFIX-0000.params"}.get(
        target, "a %s file (%s)" % (target, SUFFIX.get(target)))
    raise DPNError("%s: a %s name, but --to %s writes %s; choose another -o"
                   % (path, suffix, target, what))


# -- inputs ----------------------------------------------------------------------------------

def input_paths(src: Path, src_format: str) -> List[Path]:
    """The files a conversion reads (and so must never write): SRC, a timm folder's files,
    an mxnet checkpoint's symbol JSON."""
    paths = [src]
    if src_format == "timm" and src.is_dir():
        paths += [p for p in src.iterdir()]
    if src_format == "mxnet":
        paths += mxnet.companions(src)
    return paths


def _identity(path: PathLike):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


# -- the plan --------------------------------------------------------------------------------

class Plan:
    """Every output of one command, checked together against the inputs and each other."""

    def __init__(self, outputs: Sequence[Output], inputs: Iterable[PathLike], force: bool):
        self.outputs = list(outputs)
        self.inputs = [Path(p) for p in inputs]
        self.force = force
        self.check()

    @property
    def files(self) -> List[Path]:
        return [o.path for o in self.outputs if o.role == "output"]

    def output(self, role: str) -> Optional[Path]:
        return next((o.path for o in self.outputs if o.role == role), None)

    def check(self) -> None:
        seen = {}
        for o in self.outputs:
            self._check_input(o)
            real = os.path.realpath(o.path)
            for other, (other_real, other_folder) in seen.items():
                if real == other_real or (other_folder and _inside(real, other_real)) \
                        or (o.folder and _inside(other_real, real)):
                    raise DPNError("%s: the %s would be written where the %s goes (%s)"
                                   % (o.path, o.role, other.role, other.path))
            seen[o] = (real, o.folder)
            check_replaceable(o, self.force)

    def _check_input(self, o: Output) -> None:
        real = os.path.realpath(o.path)
        ident = _identity(o.path)
        inside = []
        if o.folder and os.path.isdir(o.path):
            inside = [_identity(os.path.join(o.path, n)) for n in os.listdir(o.path)]
        for src in self.inputs:
            src_real, src_id = os.path.realpath(src), _identity(src)
            if real == src_real or (src_id and (src_id == ident or src_id in inside)):
                raise DPNError("%s: the %s would overwrite the input %s; choose another path"
                               % (o.path, o.role, src))
            if o.folder and _inside(src_real, real):
                raise DPNError("%s: the %s folder would replace the folder holding the input "
                               "%s; choose another path" % (o.path, o.role, src))
            if os.path.isdir(src) and _inside(real, src_real):
                raise DPNError("%s: the %s would be written inside the input folder %s; "
                               "choose another path" % (o.path, o.role, src))

    def transaction(self) -> Transaction:
        """A transaction for these outputs: missing parent folders created (removed again on
        failure), each output re-checked under the folder lock just before it is replaced."""
        by_path = {o.path: o for o in self.outputs}
        tx = Transaction(verify=lambda final: check_replaceable(by_path[final], self.force)
                         if final in by_path else None)
        try:
            for o in self.outputs:
                tx.make_folders(o.path.parent)
        except BaseException:
            tx.rollback()
            raise
        return tx


def check_replaceable(o: Output, force: bool) -> None:
    """Refuse what the tool may not replace (see the module docstring)."""
    path = o.path
    _check_parent(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise DPNError("%s: %s" % (path, e.strerror)) from None
    kind = "folder" if o.folder else "file"
    if stat.S_ISLNK(st.st_mode):
        raise DPNError("%s is a symbolic link: refusing to replace it with the %s %s"
                       % (path, o.role, kind))
    if o.folder:
        if not stat.S_ISDIR(st.st_mode):
            raise DPNError("%s is a file, not an output folder" % path)
        names = os.listdir(path)
        foreign = sorted(n for n in names if n not in TIMM_FILES
                         or not stat.S_ISREG(os.lstat(os.path.join(path, n)).st_mode))
        if foreign:
            raise DPNError("%s holds other files (%s%s): not an earlier timm folder, refusing "
                           "to replace it" % (path, ", ".join(foreign[:5]),
                                              ", ..." if len(foreign) > 5 else ""))
        missing = sorted(set(TIMM_WRITTEN) - set(names))
        if names and missing:       # a user's README.md (or config.json) alone is not ours
            raise DPNError("%s holds %s but no %s: not an earlier timm folder, refusing to "
                           "replace it" % (path, ", ".join(sorted(names)), " or ".join(missing)))
    elif stat.S_ISDIR(st.st_mode):
        raise DPNError("%s is a folder, not an output file" % path)
    elif not stat.S_ISREG(st.st_mode):
        raise DPNError("%s is not a regular file: refusing to replace it" % path)
    if not force:
        raise OutputExists("%s exists (use --force to replace it)" % path)


def _check_parent(path: Path) -> None:
    folder = Path(os.path.abspath(path)).parent
    while not os.path.lexists(folder):
        folder = folder.parent
    if not folder.is_dir():
        raise DPNError("%s is a file, not a folder (in the output path %s)" % (folder, path))
    if not os.access(folder, os.W_OK):
        raise DPNError("output folder %s is not writable" % folder)


def _report_output(report: Path) -> Output:
    suffix = report.suffix.lower()
    if suffix not in REPORT_SUFFIXES:
        raise DPNError("%s: --report must name a .png, .svg or .html file" % report)
    if suffix in (".png", ".svg"):
        deps.require("matplotlib", "--report %s" % report.name, instead="--report FILE.html")
    return Output(_absolute_if_bare(report), role="report")


def conversion_plan(src: Path, src_format: str, target: str, out: Optional[PathLike],
                    force: bool, report: Optional[PathLike] = None) -> Plan:
    """The plan of ``dpn-convert SRC --to TARGET [-o OUT] [--report FILE]``."""
    where = target_path(src, src_format, target, out)
    _check_suffix(where, target)
    folder = target in registry.FORMATS and registry.FORMATS[target].folder
    outputs = [Output(p, folder=folder) for p in output_files(target, where)]
    if report is not None:
        outputs.append(_report_output(Path(report)))
    return Plan(outputs, input_paths(src, src_format), force)


def report_plan(report: PathLike, inputs: Iterable[PathLike], force: bool) -> Plan:
    """The plan of ``dpn-convert check A B --report FILE``: FILE must be neither A nor B."""
    return Plan([_report_output(Path(report))], inputs, force)
