"""Class names of a checkpoint: ImageNet-1k synsets, Places365 categories, or the user's file.

Where the names come from, in order: the user's ``--labels FILE``; the names a converted
file carries (safetensors metadata ``labels``, a JSON list, which a timm folder's
``model.safetensors`` holds too); the shipped list for the class count of a released
checkpoint (1000: ImageNet-1k in sorted synset order, the authors' label order; 365:
Places365-Standard). ImageNet-5k's 4786-class table is not public: it comes from the user.

What travels with converted files must stay compatible with timm's ``PretrainedCfg``:
``label_names`` (one identifier per class, in class order) and ``label_descriptions``
(identifier -> readable text), as timm's ``ImageNetInfo`` uses them (synset -> description).

Numpy-free; reads only regular files of bounded size (:mod:`dpn_gluon.files`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import CheckpointError, DPNError
from .files import read_bounded

_HERE = Path(__file__).parent
IMAGENET_FILE = _HERE / "data" / "imagenet_classes.txt"
#: CSAILVision/places365 categories_places365.txt (MIT licence; see data/README.md).
PLACES365_FILE = _HERE / "data" / "places365_categories.txt"

#: The most a labels file may hold (ImageNet-21k's 21843 names take about 700 KB).
MAX_LABELS_BYTES = 4 << 20
#: The longest one name may be.
MAX_NAME_CHARS = 128

_INDEX_FIRST = re.compile(r"^(\d+)\s+(\S.*)$")
_INDEX_LAST = re.compile(r"^(\S.*?)\s+(\d+)$")
_PLACES = re.compile(r"^/[a-z]/[^/\s]+(/[^/\s]+)?$")


@dataclass(frozen=True)
class Labels:
    """One name per class, in class order, with where they came from.

    ``names`` are identifiers (``n01440764``, ``/a/airfield``, or the user's names);
    ``descriptions`` the readable text of each where the identifier is not readable itself
    (ImageNet synsets, Places365's ``/letter/`` paths), else None.
    """

    names: Tuple[str, ...]
    source: str
    descriptions: Optional[Tuple[str, ...]] = None

    def __len__(self) -> int:
        return len(self.names)

    def display(self, index: int) -> str:
        """What a person reads: ``n01440764 tench, Tinca tinca``, ``airfield``, ``cat``."""
        name = self.names[index]
        if self.descriptions is None:
            return name
        text = self.descriptions[index]
        return text if name.startswith("/") else "%s %s" % (name, text)

    def description_map(self) -> Optional[Dict[str, str]]:
        """timm's ``label_descriptions``: identifier -> description, or None."""
        if self.descriptions is None:
            return None
        return dict(zip(self.names, self.descriptions))


def places_display(name: str) -> str:
    """A readable Places365 name: ``/a/airfield`` -> ``airfield``,
    ``/a/apartment_building/outdoor`` -> ``apartment building (outdoor)``."""
    parts = name.strip("/").split("/")[1:]
    text = parts[0].replace("_", " ")
    return "%s (%s)" % (text, parts[1].replace("_", " ")) if len(parts) > 1 else text


@lru_cache(maxsize=None)
def imagenet_synsets() -> Tuple[Tuple[str, str], ...]:
    """((synset, description), ...) of ImageNet-1k in sorted synset order."""
    rows = []
    for line in IMAGENET_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip():
            synset, _, text = line.partition(" ")
            rows.append((synset, text.strip()))
    return tuple(rows)


@lru_cache(maxsize=None)
def places365() -> Labels:
    return parse(PLACES365_FILE.read_bytes(), "Places365-Standard", str(PLACES365_FILE))


def from_names(names: Sequence[str], source: str) -> Labels:
    """Labels over ``names``, with descriptions where the names are a known scheme."""
    names = tuple(names)
    synsets = imagenet_synsets()
    if names == tuple(s for s, _ in synsets):
        return Labels(names, source, tuple(t for _, t in synsets))
    if names and all(_PLACES.match(n) for n in names):
        return Labels(names, source, tuple(places_display(n) for n in names))
    return Labels(names, source)


def builtin(classes: int) -> Optional[Labels]:
    """The shipped names for a released checkpoint's class count, or None (ImageNet-5k)."""
    if classes == 1000:
        return from_names([s for s, _ in imagenet_synsets()], "ImageNet-1k")
    if classes == 365:
        return places365()
    return None


def parse(data: bytes, source: str, where: str) -> Labels:
    """A labels file's bytes: one name per line, or ``index name`` / ``name index`` lines
    (Places365's own file) with every index 0..N-1 exactly once. Blank lines are skipped."""
    try:
        text = data.decode("utf-8-sig")      # a BOM, as Windows editors write, is no name
    except UnicodeDecodeError as e:
        raise DPNError("%s: not UTF-8 text (byte %d)" % (where, e.start)) from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise DPNError("%s: no names in the file" % where)
    names = [line for _, line in lines]
    for pattern, index_group in ((_INDEX_FIRST, 1), (_INDEX_LAST, 2)):
        matches = [pattern.match(line) for line in names]
        if all(matches):
            names = _by_index(matches, index_group, lines, where)
            break
    for (n, _), name in zip(lines, names):
        if len(name) > MAX_NAME_CHARS:
            raise DPNError("%s: line %d: a name of %d characters (at most %d)"
                           % (where, n, len(name), MAX_NAME_CHARS))
    seen: Dict[str, int] = {}
    for (n, _), name in zip(lines, names):
        if name in seen:
            raise DPNError("%s: line %d repeats the name %r of line %d"
                           % (where, n, name[:60], seen[name]))
        seen[name] = n
    return from_names(names, source)


def _by_index(matches, index_group: int, lines, where: str) -> List[str]:
    name_group = 3 - index_group
    by_index: Dict[int, str] = {}
    for m, (n, _) in zip(matches, lines):
        i = int(m.group(index_group))
        if i in by_index:
            raise DPNError("%s: line %d: index %d appears twice" % (where, n, i))
        by_index[i] = m.group(name_group).strip()
    gaps = sorted(set(range(len(by_index))) - set(by_index))
    if gaps:
        raise DPNError("%s: indices must be 0..%d, each once: %d is missing"
                       % (where, len(by_index) - 1, gaps[0]))
    return [by_index[i] for i in range(len(by_index))]


def read_file(path, classes: Optional[int] = None) -> Labels:
    """``--labels FILE``: a regular UTF-8 file of at most :data:`MAX_LABELS_BYTES`, with
    exactly ``classes`` names when that is given."""
    where = str(path)
    labels = parse(read_bounded(path, MAX_LABELS_BYTES, "labels file"), where, where)
    if classes is not None:
        check_count(labels, classes, where)
    return labels


def check_count(labels: Labels, classes: int, where: str) -> None:
    if len(labels) != classes:
        raise DPNError("%s: %d names, but the checkpoint has %d classes"
                       % (where, len(labels), classes))


# -- the names a converted file carries --------------------------------------------------

METADATA_KEY = "labels"


def to_metadata(labels: Optional[Sequence[str]]) -> Dict[str, str]:
    """safetensors metadata (string values only): ``{"labels": "[...]"}``, or nothing."""
    return {METADATA_KEY: json.dumps(list(labels), ensure_ascii=False)} if labels else {}


def from_metadata(metadata: Mapping[str, str], classes: int, where: str) -> Optional[List[str]]:
    """The names under ``labels`` in a file's metadata, refused unless they are a JSON list of
    ``classes`` distinct strings; None when the file has none."""
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    try:
        names = json.loads(text)
    except (ValueError, RecursionError):
        raise CheckpointError("%s: metadata labels is not JSON" % where) from None
    if not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS
                                              for n in names):
        raise CheckpointError("%s: metadata labels is not a list of names" % where)
    if len(names) != classes or len(set(names)) != len(names):
        raise CheckpointError("%s: metadata labels holds %d names (%d distinct) for %d classes"
                              % (where, len(names), len(set(names)), classes))
    return names


def timm_fields(names: Optional[Sequence[str]]) -> dict:
    """``label_names`` (and ``label_descriptions``) for timm's ``pretrained_cfg``."""
    if not names:
        return {}
    labels = from_names(names, "")
    fields = {"label_names": list(labels.names)}
    descriptions = labels.description_map()
    if descriptions:
        fields["label_descriptions"] = descriptions
    return fields


def for_checkpoint(carried: Optional[Sequence[str]], classes: int,
                   user_file=None) -> Optional[Labels]:
    """The names to use, in order: ``user_file``, ``carried`` (from the file), built in."""
    if user_file is not None:
        return read_file(user_file, classes)
    if carried:
        return from_names(carried, "the checkpoint's metadata")
    return builtin(classes)
