"""timm folders: ``config.json`` + ``model.safetensors`` (and the Hub's ``README.md`` model
card), as timm's ``push_to_hf_hub`` writes them and ``timm.create_model('local-dir:PATH')``
reads them. The weights are :mod:`.safetensors`'; the card is written above this layer
(it is publishing) and handed to :func:`write`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from .. import labels as class_labels
from .. import variants
from ..errors import CheckpointError
from . import safetensors
from .base import MAX_CLASSES, Progress, check_metadata_types, open_file, require_file

#: A timm folder's two files (the Hub layout: timm.create_model("hf-hub:...") reads them).
CONFIG, WEIGHTS = "config.json", "model.safetensors"
#: The Hub's model card, written beside them.
CARD = "README.md"
#: What an earlier timm folder output may hold.
FILES = frozenset([CONFIG, WEIGHTS, CARD])
#: What every timm folder output holds: a non-empty folder without both is not one.
WRITTEN = (CONFIG, WEIGHTS)
#: The most a config.json may hold: a timm config is about 1 KiB.
MAX_CONFIG_BYTES = 1 << 20


def is_timm(path: Path) -> bool:
    """A folder holding both files (each then required to be a regular file)."""
    if not ((path / CONFIG).exists() and (path / WEIGHTS).exists()):
        return False
    require_file(path / CONFIG, "timm config")
    require_file(path / WEIGHTS, "safetensors file")
    return True


def read_config(path: Path) -> dict:
    config_path = path / CONFIG
    size = require_file(config_path, "timm config")
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError("%s: %s is %d bytes; a timm config is a few KiB (at most %d)"
                              % (path, CONFIG, size, MAX_CONFIG_BYTES))
    try:
        with open_file(config_path, "timm config") as f:
            config = json.loads(f.read(MAX_CONFIG_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e).splitlines()[0][:120] \
            if str(e) else type(e).__name__
        raise CheckpointError("%s: unreadable %s: %s" % (path, CONFIG, reason)) from None
    if not isinstance(config, dict):
        raise CheckpointError("%s: %s holds a JSON %s, not an object"
                              % (path, CONFIG, type(config).__name__))
    arch = config.get("architecture")
    if not isinstance(arch, str):
        raise CheckpointError("%s: %s has no \"architecture\" string" % (path, CONFIG))
    classes = config.get("num_classes")
    if classes is not None and (type(classes) is not int or not 1 <= classes <= MAX_CLASSES):
        raise CheckpointError("%s: %s: num_classes is %r, not a class count"
                              % (path, CONFIG, str(classes)[:60]))
    extra = config.get("dpn")
    if extra is not None and not isinstance(extra, dict):
        raise CheckpointError("%s: %s: \"dpn\" is not an object" % (path, CONFIG))
    fc = (extra or {}).get("classifier")
    if fc is not None and not isinstance(fc, str):
        raise CheckpointError("%s: %s: dpn.classifier is not a string" % (path, CONFIG))
    return config


def read(path: Path):
    config = read_config(path)
    tensors, metadata = safetensors.read(path / WEIGHTS)
    metadata = dict(metadata)
    metadata.update({"config_architecture": config["architecture"],
                     "config_num_classes": str(config.get("num_classes") or "")})
    said = {"architecture": config["architecture"]}
    fc = (config.get("dpn") or {}).get("classifier")
    if fc:
        metadata["classifier"] = said["classifier"] = fc
    check_metadata_types(said, path / CONFIG)
    return tensors, metadata


def config(weights) -> dict:
    """config.json as timm's ``save_config_for_hf`` lays it out, for the authors' protocol.

    ``pretrained_cfg`` holds only fields of timm's PretrainedCfg (timm builds the dataclass
    from it): the authors' test setting (320, a 100 % crop; the mean-max head is timm's
    ``--test-pool``) as ``test_input_size`` / ``test_crop_pct``, the class names as
    ``label_names`` / ``label_descriptions``. The authors' classifier name and provenance go
    under a separate ``dpn`` key.
    """
    return {
        "architecture": weights.arch.name,
        "num_classes": weights.classes,
        "num_features": weights.arch.num_features,
        "global_pool": "avg",
        "pretrained_cfg": {
            "custom_load": False,
            "input_size": list(variants.INPUT_SIZE),
            "test_input_size": list(variants.TEST_INPUT_SIZE),
            "fixed_input_size": False,
            "interpolation": variants.INTERPOLATION,
            "crop_pct": variants.CROP_PCT,
            "test_crop_pct": variants.CROP_PCT,
            "crop_mode": "center",
            "mean": list(weights.norm.mean),
            "std": list(weights.norm.std),
            "num_classes": weights.classes,
            "pool_size": [7, 7],
            "first_conv": "features.conv1_1.conv",
            "classifier": "classifier",
            "license": weights.license,
            "origin_url": variants.WEIGHT_SETS[weights.weight_set].url,
            "paper_ids": "arXiv:1707.01629",
            "paper_name": "Dual Path Networks",
            **class_labels.timm_fields(weights.labels),
        },
        "dpn": {
            "classifier": weights.classifier,
            "source_file": weights.source.name,
            "source_sha256": weights.sha256,
            "source_format": weights.format,
        },
    }


def write(weights, files: List[Path], tx, log, card: Optional[str] = None, **_):
    out, = files
    with tx.path(out, directory=True) as tmp:
        with open(tmp / WEIGHTS, "wb") as f, \
                Progress(f, weights.nbytes, "%s/%s" % (out.name, WEIGHTS)) as bar:
            safetensors.write_safetensors(bar, weights.renamed("timm"),
                                          safetensors.metadata(weights))
        (tmp / CONFIG).write_text(json.dumps(config(weights), indent=2) + "\n",
                                  encoding="utf-8")
        if card is not None:
            (tmp / CARD).write_text(card, encoding="utf-8")
