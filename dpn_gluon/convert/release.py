"""``dpn-convert release``: every DPN checkpoint in a folder, as Hub-ready outputs.

For each ``PREFIX-NNNN.params`` (the authors') or ``NAME.pdparams`` (PaddleClas's) in SRC_DIR
(named PREFIX, or PREFIX-NNNN where a prefix has several epochs; the architecture is
identified from the tensors) it writes ``OUT/NAME/`` (a
timm folder with its model card) and ``OUT/NAME.onnx``, each through
:func:`dpn_gluon.convert.pipeline.convert`, and records them in ``OUT/MANIFEST.json`` (and the
same as tables in ``MANIFEST.md``), rewritten atomically after every checkpoint so that an
interrupted release resumes: an entry that finished, whose input still has the recorded
sha256 and whose outputs (exactly ``NAME/`` 's files and ``NAME.onnx``) still hash as recorded,
is skipped. A manifest whose entries name any other path is not one a release wrote.

A bad checkpoint is recorded with its one-line error and the others still convert. The
outcome (:attr:`Release.exit_code`): 0 every entry ok, 1 a parity check failed, 2 some input
was bad (2 wins over 1). Outputs this release did not create (not in its manifest) are
refused unless ``force``; so are a MANIFEST.json that does not read as a manifest and a
MANIFEST.md that is not the table of that manifest (a user's file of that name), through the
rules of :mod:`.outputs`.

MANIFEST.json must stay readable by later releases (the resume reads it): a ``version``, and
``entries``, a list of objects with ``name``, ``source``, ``source_sha256``, ``arch``,
``classes``, ``classifier``, ``outputs`` (path relative to OUT -> sha256), ``worst_parity``
(max relative difference over every tap of every check, or null), ``checked``, ``ok`` and
``error`` (null, or the one-line reason).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

from .. import labels as class_labels
from .. import variants
from ..errors import DPNError
from ..files import read_bounded
from ..formats import mxnet, paddle
from ..formats.canonical import read, sha256_of
from ..safeio.atomic import Transaction, check_writable
from ..safeio.outputs import TIMM_FILES, Output, Plan
from .pipeline import ConversionResult, convert

MANIFEST_JSON, MANIFEST_MD = "MANIFEST.json", "MANIFEST.md"
MANIFEST_VERSION = 1
#: The most a MANIFEST.json may hold (ten checkpoints take about 6 KB).
MAX_MANIFEST_BYTES = 16 << 20


@dataclass
class Release:
    out: Path
    entries: List[dict] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if any(e["error"] for e in self.entries):
            return 2
        return 0 if all(e["ok"] for e in self.entries) else 1

    def to_dict(self) -> dict:
        return {"version": MANIFEST_VERSION, "entries": self.entries}


def find_checkpoints(src_dir: Path) -> List[Tuple[str, Path]]:
    """(name, path) of every ``PREFIX-NNNN.params`` (the authors') and ``NAME.pdparams``
    (PaddleClas's) file in ``src_dir``, sorted by name; names are unique (the file names
    without their suffix where prefixes would collide)."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise DPNError("%s: not a folder" % src_dir)
    found: Dict[str, List[Path]] = {}
    for path in sorted(src_dir.iterdir()):
        if not path.is_file():
            continue
        if mxnet.is_epoch_file(path):
            found.setdefault(mxnet.prefix_of(path).name, []).append(path)
        elif path.suffix == paddle.SUFFIX:
            found.setdefault(path.stem, []).append(path)
    out = []
    for prefix, paths in found.items():
        for path in paths:
            out.append((prefix if len(paths) == 1 else _stem(path), path))
    if not out:
        raise DPNError("%s: no PREFIX-NNNN.params or NAME.pdparams checkpoint in the folder"
                       % src_dir)
    if len({name for name, _ in out}) < len(out):
        # a-0000.params + a-0001.params are a-0000 and a-0001, as is a-0000-0000.params
        # alone: two entries would share outputs; the file names themselves are unique
        out = [(_stem(path), path) for _, path in out]
    return sorted(out)


def _stem(path: Path) -> str:
    return path.name[:-len(path.suffix)]


def entry_files(name: str) -> Set[str]:
    """The outputs of one entry, relative to OUT_DIR: what its manifest entry may record."""
    return {"%s/%s" % (name, f) for f in TIMM_FILES} | {name + ".onnx"}


def load_manifest(out: Path) -> Optional[Dict[str, dict]]:
    """The entries of an earlier release into ``out`` by name (None when there is none)."""
    path = Path(out) / MANIFEST_JSON
    if not os.path.lexists(path):
        return None
    try:
        data = json.loads(read_bounded(path, MAX_MANIFEST_BYTES, "manifest").decode("utf-8"))
        entries = {e["name"]: e for e in data["entries"]}
        for name, e in entries.items():
            if not isinstance(name, str) or not isinstance(e.get("outputs"), dict):
                raise TypeError("outputs")
            if not set(e["outputs"]) <= entry_files(name):     # an edited manifest
                raise ValueError("outputs")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise DPNError("%s: not a manifest dpn-convert release wrote (%s); choose another "
                       "OUT_DIR" % (path, type(e).__name__)) from None
    return entries


def unchanged(entry: Optional[dict], source_sha256: str, out: Path) -> bool:
    """A finished entry for the same input whose outputs (all of them) still hash as recorded."""
    if not entry or not entry.get("ok") or entry.get("source_sha256") != source_sha256 \
            or set(entry["outputs"]) != entry_files(entry["name"]):
        return False
    return all((out / rel).is_file() and sha256_of(out / rel) == digest
               for rel, digest in entry["outputs"].items())


def ours(entry: Optional[dict], out: Path, name: str) -> bool:
    """Whether every output of ``name`` now in ``out`` is one the earlier release recorded
    (so its to replace): a file of that name it never wrote is the user's."""
    if entry is None:
        return False
    return all(rel in entry["outputs"] for rel in entry_files(name)
               if os.path.lexists(out / rel))


def check_manifest_outputs(out: Path, done: Optional[Dict[str, dict]], inputs: List[Path],
                           force: bool) -> None:
    """Refuse to replace a MANIFEST.json / MANIFEST.md no release wrote (see the module
    docstring): the JSON is ours when it read as a manifest, the table when its bytes are
    that manifest's table."""
    table = out / MANIFEST_MD
    table_ours = done is not None and table.is_file() and not table.is_symlink() \
        and table.stat().st_size <= MAX_MANIFEST_BYTES \
        and table.read_bytes() == manifest_markdown(list(done.values())).encode("utf-8")
    for path, mine in ((out / MANIFEST_JSON, done is not None), (table, table_ours)):
        Plan([Output(path, role="release manifest")], inputs, force or mine)


def output_hashes(out: Path, results: List[ConversionResult]) -> Dict[str, str]:
    """Path relative to ``out`` -> sha256 of every file these conversions wrote."""
    files = []
    for written in (Path(p) for r in results for p in r.outputs):
        files += sorted(p for p in written.iterdir() if p.is_file()) if written.is_dir() \
            else [written]
    return {p.relative_to(out).as_posix(): sha256_of(p) for p in files if p.is_file()}


def worst_parity(results: List[ConversionResult]) -> Optional[float]:
    rows = [r.check.parity.worst.max_rel for r in results
            if r.check is not None and r.check.parity is not None]
    return max(rows) if rows else None


def release(src_dir, out, check: bool = True, force: bool = False,
            license: Optional[str] = None, labels_file=None, log=None,
            progress: bool = True) -> Release:
    """Convert every checkpoint in ``src_dir`` into ``out`` (created if missing); see the
    module docstring. ``labels_file`` names the classes of the checkpoints whose class count
    matches it (ImageNet-5k's, say); ``log`` gets one line per checkpoint."""
    from tqdm import tqdm
    log = log or (lambda msg: None)
    out = Path(out)
    found = find_checkpoints(Path(src_dir))
    user_labels = class_labels.read_file(labels_file) if labels_file is not None else None
    done = load_manifest(out) if out.is_dir() else None
    check_manifest_outputs(out, done, [path for _, path in found], force)
    done = done or {}
    if not out.exists():
        out.mkdir(parents=True)
    result = Release(out)
    kept = {name: e for name, e in done.items() if name not in {n for n, _ in found}}
    bar = tqdm(total=len(found), desc="release", unit="ckpt", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        for name, path in found:
            bar.set_postfix_str(name)
            entry = _one(name, path, out, done.get(name), check, force, license, labels_file,
                         user_labels)
            if entry is None:
                entry = done[name]
                result.skipped.append(name)
                message = "%s: unchanged since the last release, skipped" % name
            else:
                worst = entry["worst_parity"]
                message = "%s: %s%s" % (name, status(entry), "" if worst is None
                                        else " (worst parity max rel %.2e)" % worst)
            with tqdm.external_write_mode(file=sys.stderr):    # the line above the bar
                log(message)
            result.entries.append(entry)
            write_manifest(out, list(kept.values()) + result.entries)
            bar.update(1)
    finally:
        bar.close()
    return result


def status(entry: dict) -> str:
    """``ok``, ``written, not checked``, ``check FAILED`` or ``error: REASON``."""
    if entry["error"]:
        return "error: " + entry["error"]
    if not entry["checked"]:
        return "written, not checked"
    return "ok" if entry["ok"] else "check FAILED"


def _one(name, path, out, previous, check, force, license, labels_file, user_labels):
    entry = {"name": name, "source": path.name, "source_sha256": None, "arch": None,
             "classes": None, "classifier": None, "outputs": {}, "worst_parity": None,
             "checked": check, "ok": False, "error": None}
    results: List[ConversionResult] = []
    try:
        entry["source_sha256"] = sha256_of(path)
        if unchanged(previous, entry["source_sha256"], out):
            return None
        mine = ours(previous, out, name)     # outputs an earlier release wrote: ours to replace
        weights = read(path, hash_source=False)
        entry.update(arch=weights.arch.name, classes=weights.classes,
                     classifier=weights.classifier)
        names = labels_file if user_labels is not None and len(user_labels) == weights.classes \
            else None
        results.append(convert(path, "timm", out=out / name, force=force or mine,
                               check=check, labels=names, license=license))
        results.append(convert(path, "onnx", out=out / (name + ".onnx"), force=force or mine,
                               check=check))
    except DPNError as e:
        entry["error"] = " ".join(str(e).split())
        # still ours to replace next time: what an earlier release or this one wrote
        entry["outputs"] = {rel: digest for rel, digest in (previous or {}).get("outputs",
                                                                                {}).items()
                            if os.path.lexists(out / rel)}
        entry["outputs"].update(output_hashes(out, results))
        return entry
    entry["outputs"] = output_hashes(out, results)
    entry["worst_parity"] = worst_parity(results)
    entry["ok"] = all(r.ok for r in results)
    return entry


def write_manifest(out: Path, entries: List[dict]) -> None:
    """MANIFEST.json and MANIFEST.md in one transaction: both land, or neither (a kill
    between two separate writes left them disagreeing)."""
    data = {"version": MANIFEST_VERSION, "entries": entries}
    texts = {MANIFEST_JSON: json.dumps(data, indent=2, sort_keys=True) + "\n",
             MANIFEST_MD: manifest_markdown(entries)}
    with Transaction() as tx:
        for name, text in texts.items():
            with tx.file(check_writable(out / name, force=True)) as f:
                f.write(text.encode("utf-8"))
        tx.commit()


def manifest_markdown(entries: List[dict]) -> str:
    lines = ["# Release manifest", "",
             "Written by `dpn-convert release`; the same data as MANIFEST.json.", "",
             "| name | source | source sha256 | architecture | classes | classifier | "
             "worst parity (max rel) | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        worst = e["worst_parity"]
        lines.append("| %s | %s | `%s` | %s | %s | %s | %s | %s |" % (
            e["name"], e["source"], e["source_sha256"] or "", e["arch"] or "",
            e["classes"] or "", e["classifier"] or "",
            "%.2e" % worst if worst is not None else ("not checked" if not e["checked"] else ""),
            status(e).replace("|", "/")))
    lines += ["", "| output | sha256 |", "| --- | --- |"]
    for e in entries:
        lines += ["| %s | `%s` |" % (rel, digest) for rel, digest in sorted(e["outputs"].items())]
    return "\n".join(lines) + "\n"


def catalog() -> List[dict]:
    """``dpn-convert list``: the authors' released checkpoints, with their published errors."""
    rows = []
    for c in variants.CHECKPOINTS.values():
        row = {"name": c.name, "arch": c.arch, "classes": c.classes, "classifier": c.classifier,
               "dataset": c.dataset,
               "params": variants.count_params(variants.ARCHS[c.arch], c.classes),
               "weight_set": "authors"}
        for setting, (top1, top5) in zip(variants.PUBLISHED_SETTINGS, c.published or ()):
            key = setting.replace(" ", "_").replace("-", "_")
            row["top1_err_" + key], row["top5_err_" + key] = top1, top5
        rows.append(row)
    for p in variants.PADDLECLAS_CHECKPOINTS.values():
        # published as accuracy; shown as error (%) like the authors' table
        rows.append({"name": p.name, "arch": p.arch, "classes": 1000, "classifier": "fc6",
                     "dataset": "ImageNet-1k",
                     "params": variants.count_params(variants.ARCHS[p.arch], 1000),
                     "weight_set": "paddleclas", "top1_err_224": round(100 * (1 - p.top1), 2),
                     "top5_err_224": round(100 * (1 - p.top5), 2)})
    return rows
