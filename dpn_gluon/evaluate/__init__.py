"""Evaluation under the authors' ImageNet protocol (and timm's): the library behind the CLIs.

:func:`evaluate` runs a :class:`~dpn_gluon.runtimes.Runtime` over a labelled
:class:`~dpn_gluon.data.datasets.Dataset` and returns top-1/top-5 error, throughput and the
exact settings; :func:`predict` gives the top classes of single images. ``dpn-evaluate`` and
``dpn-predict`` (:mod:`dpn_gluon.evaluate.cli`) are thin commands over these two.

Imports neither MXNet nor torch; the runtime does, when it is loaded.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, List, Optional, Sequence

import numpy as np

from .. import deps, labels, variants
from ..data.datasets import Dataset, iter_batches, open_dataset
from ..data.preprocess import PROTOCOLS, authors_resize_backend, resize_size
from ..data.preprocess import preprocess as preprocess_image
from ..errors import DPNError
from .metrics import TopKError

__all__ = ["evaluate", "predict", "classify", "settings", "class_names", "open_dataset", "PROTOCOLS"]



def settings(size: int, protocol: str, mean_max: bool, normalization: str = "authors") -> dict:
    """The preprocessing and head settings, validated, as reported beside the results;
    ``normalization`` is the checkpoint's (its weight set's)."""
    if protocol not in PROTOCOLS:
        raise DPNError("unknown protocol %r (choose from %s)" % (protocol, ", ".join(PROTOCOLS)))
    if size < variants.MIN_INPUT_SIZE["global"]:
        raise DPNError("--size must be at least %d (the network's stride), got %d"
                       % (variants.MIN_INPUT_SIZE["global"], size))
    if mean_max and size < variants.MIN_INPUT_SIZE["mean_max"]:
        raise DPNError("--mean-max needs --size >= %d (a 7x7 final feature map), got %d"
                       % (variants.MIN_INPUT_SIZE["mean_max"], size))
    if protocol == "paddleclas":
        deps.require("cv2", "--protocol paddleclas (PaddleClas resizes with OpenCV's bilinear)")
    record = {"protocol": protocol, "size": size, "resize_short": resize_size(size, protocol),
              "crop": size, "interpolation": _INTERPOLATION[protocol],
              "resize": authors_resize_backend() if protocol == "authors" else _RESIZE[protocol],
              "normalization": normalization}
    if normalization == "authors":
        record.update({"mean_rgb": list(variants.MEAN_RGB), "scale": variants.SCALE})
    else:
        norm = variants.NORMALIZATIONS[normalization]
        record.update({"mean_rgb": [round(m * 255, 6) for m in norm.mean],
                       "std_rgb": [round(s * 255, 6) for s in norm.std]})
    record["mean_max"] = bool(mean_max)
    return record


_INTERPOLATION = {"authors": "bicubic (OpenCV)", "timm": "bicubic (PIL)",
                  "paddleclas": "bilinear (OpenCV)"}
_RESIZE = {"timm": "PIL Image.resize BICUBIC", "paddleclas": "OpenCV cv2.resize INTER_LINEAR"}


def evaluate(runtime, dataset: Dataset, size: int, protocol: str = "authors",
             mean_max: bool = False, batch_size: int = 32, workers: int = 0,
             strict: bool = False, progress: bool = True,
             class_names: Optional[labels.Labels] = None,
             starting: Optional[Callable[[], None]] = None) -> dict:
    """Top-1/top-5 error (%) of ``runtime`` on ``dataset``; one JSON-ready record.

    ``mean_max`` only labels the record: the head is part of the runtime already loaded.
    Class folders named after ImageNet synsets are labelled by synset (the authors' order)
    for 1000-class checkpoints, so a folder with only some synsets is scored correctly.
    Labels are checked against the runtime's classes before any image is decoded. Images
    that cannot be decoded are skipped and listed in ``skipped_files`` (one line each), or
    raise with ``strict``. ``class_names`` (``--labels``) label class folders named after
    them in their order instead. ``starting`` is called once the first images are decoded and
    resized, before they are scored (a command's notes go there: a path that ends in a
    refusal, every image unreadable included, prints none, so the refusal stays one line).
    """
    from tqdm import tqdm
    normalization = getattr(runtime, "normalization", "authors")
    record = settings(size, protocol, mean_max, normalization)
    if class_names is not None:
        labels.check_count(class_names, runtime.classes, class_names.source)
        dataset = dataset.relabel(list(class_names.names))
    elif runtime.classes == 1000:
        dataset = dataset.relabel([synset for synset, _ in imagenet_synsets()])
    dataset.check_labels(runtime.classes)
    metric = TopKError((1, min(5, runtime.classes)))
    skipped: List[str] = []
    bar, done = None, 0
    start = time.perf_counter()
    try:
        for batch in iter_batches(dataset, size, protocol, batch_size, workers, strict,
                                  normalization):
            if len(batch.labels) and bar is None:
                # the notes and the bar start with the first scored images: a data set with
                # none readable ends in one line
                if starting is not None:
                    starting()
                bar = tqdm(total=len(dataset), initial=done, unit="img", file=sys.stderr,
                           disable=not progress, dynamic_ncols=True,
                           desc="%s %s@%d" % (runtime.arch, protocol, size))
            if len(batch.labels):
                metric.update(runtime(batch.data), batch.labels)
            skipped += batch.skipped
            done += len(batch.labels) + len(batch.skipped)
            if bar is not None:
                bar.update(len(batch.labels) + len(batch.skipped))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if not metric.count:
        raise DPNError("%s: none of the %d images could be decoded" % (dataset.path, len(dataset)))
    k5 = metric.ks[-1]
    record.update({
        "checkpoint_arch": runtime.arch, "classes": runtime.classes,
        "classifier": runtime.classifier, "runtime": runtime.kind, "devices": runtime.devices,
        "batch_size": batch_size, "workers": workers,
        "data": str(dataset.path), "data_format": dataset.kind,
        "images": metric.count, "skipped": len(skipped), "skipped_files": skipped,
        "top1_error": metric.error(1), "top5_error": metric.error(k5),
        "seconds": seconds, "images_per_s": metric.count / seconds if seconds else float("nan"),
    })
    return record


def predict(runtime, images: Sequence, size: int = 224, protocol: str = "authors",
            top: int = 5, names: Optional[labels.Labels] = None) -> List[dict]:
    """Top ``top`` classes with softmax probabilities for each image (path or bytes).

    Each hit has the class ``index``, its ``label`` (the identifier: a synset, a Places365
    path, the user's name) and ``name`` (what a person reads), both None without names.
    ``names`` default to those the checkpoint carries, else the built-in ones.
    """
    if names is None:
        names = labels.for_checkpoint(getattr(runtime, "labels", None), runtime.classes)
    normalization = getattr(runtime, "normalization", "authors")
    batch = np.stack([preprocess_image(img, size, protocol, normalization=normalization)
                      for img in images])
    return classify(runtime, [str(img) for img in images], batch, top, names)


def classify(runtime, images: Sequence[str], batch: np.ndarray, top: int = 5,
             names: Optional[labels.Labels] = None) -> List[dict]:
    """Top ``top`` classes with softmax probabilities of each preprocessed image of ``batch``
    (``images``: their names), each hit named as :func:`predict` says."""
    logits = runtime(batch).astype(np.float64)
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    out = []
    for image, p in zip(images, prob):
        order = np.argsort(-p, kind="stable")[:min(top, runtime.classes)]
        out.append({"image": image, "top": [
            {"index": int(i), "label": names.names[i] if names else None,
             "name": names.display(i) if names else None,
             "probability": float(p[i])} for i in order]})
    return out


def imagenet_synsets() -> tuple:
    """((synset, name), ...) of ImageNet-1k in sorted synset order: the authors' label order."""
    return labels.imagenet_synsets()


def class_names(classes: int) -> Optional[List[str]]:
    """Human-readable names of the built-in class sets (ImageNet-1k, Places365); None for
    others (ImageNet-5k: ``--labels``)."""
    names = labels.builtin(classes)
    return [names.display(i) for i in range(len(names))] if names else None
