"""``dpn-evaluate`` and ``dpn-predict``: thin click commands over :mod:`dpn_gluon.evaluate`.

Results on stdout (a short report, or one JSON record with ``--json``); progress bar,
warnings and errors on stderr. Exit 0 ok, 2 bad input or usage (one line ``PROG: error: ...``,
no traceback); dpn-predict exits 2 when any image was bad, after predicting the others.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np

from .. import labels
from ..cliutil import OneLineCommand, labels_option, version_option
from ..data.preprocess import PROTOCOLS, authors_resize_backend
from ..errors import DPNError
from ..runtimes import ALL_PRECISIONS, RUNTIMES


def _error(prog: str, message) -> None:
    """One line on stderr for a bad input that does not end the command (dpn-predict's images)."""
    click.echo("%s: error: %s" % (prog, " ".join(str(message).split())), err=True)


def _note_resize(prog: str, protocol: str) -> None:
    """Say once, on stderr, when the authors' resize runs without OpenCV."""
    if protocol == "authors" and not authors_resize_backend().startswith("OpenCV "):
        click.echo("%s: note: opencv-python-headless is not installed: the authors' bicubic "
                   "resize runs in numpy, within 1 gray level of OpenCV "
                   '(pip install "dpn-gluon[opencv]")' % prog, err=True)


def _common(fn):
    """Options shared by both commands."""
    for option in reversed([
        click.option("--size", type=click.IntRange(min=32), default=224, show_default=True,
                     help="Crop size: 224 and 320 are the authors' table columns."),
        click.option("--protocol", type=click.Choice(PROTOCOLS), default="authors",
                     show_default=True,
                     help="authors: bicubic short side = crop, 100% center crop. "
                          "timm: short side = crop/0.875, center crop. paddleclas: OpenCV "
                          "bilinear short side = crop*256/224, center crop (PaddleClas's "
                          "eval). Pixels are then normalized as the checkpoint's weights "
                          "expect: the authors' (pixel - [124,117,104]) * 0.0167, or "
                          "ImageNet's mean/std for PaddleClas's weights."),
        click.option("--mean-max", is_flag=True,
                     help="The authors' mean-max test head (needs --size >= 193; "
                          "their third column at 320)."),
        click.option("--runtime", type=click.Choice(RUNTIMES), default="gluon",
                     show_default=True, help="Run the checkpoint in MXNet Gluon, PyTorch, "
                                             "ONNX Runtime or OpenVINO (same preprocessing); "
                                             "openvino also runs an IR (NAME.xml) "
                                             "dpn-convert wrote."),
        click.option("--precision", type=click.Choice(ALL_PRECISIONS), default="fp32",
                     show_default=True,
                     help="Compute precision, always set explicitly: bf16 with --runtime "
                          "openvino on a CPU with AVX512_BF16 or AMX; int8 (openvino) needs "
                          "--calibration (docs/openvino.md)."),
        click.option("--calibration", type=click.Path(exists=True, file_okay=False,
                                                       path_type=Path), default=None,
                     help="--precision int8: a folder of your images (a few hundred) that "
                          "calibrate the quantization, preprocessed as --size/--protocol say; "
                          "one in five is held out to report top-1 agreement with fp32."),
        click.option("--device", default="cpu", show_default=True,
                     help="cpu, gpu, gpu:0,1 (Gluon splits each batch over the GPUs), "
                          "cuda or cuda:N."),
        click.option("--json", "as_json", is_flag=True, help="One JSON record on stdout."),
        labels_option,
    ]):
        fn = option(fn)
    return fn


def _calibration(folder, size: int, protocol: str):
    from ..runtimes import Calibration
    return Calibration(folder, size, protocol) if folder is not None else None


def _note_quantization(prog: str, rt) -> None:
    """int8 is never silent: what calibrated it and what it costs, on stderr."""
    q = rt.quantization
    if q is not None:
        click.echo("%s: int8: NNCF post-training quantization calibrated on %d images of %s; "
                   "top-1 agreement with fp32 on %d held-out images: %.1f %%"
                   % (prog, q["calibration_images"], q["calibration"], q["held_out_images"],
                      100 * q["top1_agreement_with_fp32"]), err=True)


def _json_safe(value):
    return None if isinstance(value, float) and math.isnan(value) else value


@click.command(cls=OneLineCommand, prog="dpn-evaluate",
               context_settings={"help_option_names": ["-h", "--help"]})
@version_option("dpn-evaluate")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path),
              help="ImageNet-style folder (one sub-folder per class, sorted synset order), "
                   "an im2rec .lst list (index<TAB>label<TAB>path) or a .rec with its .idx.")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder the paths of a .lst are relative to (default: the list's folder).")
@_common
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=4, show_default=True,
              help="Processes that decode and resize images (0: in the main process).")
@click.option("--limit", type=click.IntRange(min=1),
              help="Evaluate N images evenly spaced over the set (a quick check).")
@click.option("--strict", is_flag=True,
              help="Fail on an unreadable image instead of skipping it with a warning.")
@click.option("--quiet", "-q", is_flag=True,
              help="Nothing on stderr on success: no bar, no notes (the report still goes to "
                   "stdout).")
def evaluate_main(checkpoint, data, root, size, protocol, mean_max, runtime, precision,
                  calibration, device, as_json, labels_file, batch_size, workers, limit, strict, quiet):
    """Top-1 / top-5 error (%) of CHECKPOINT on a labelled image set.

    CHECKPOINT is any file dpn-convert reads: the authors' PREFIX-0000.params (or PREFIX),
    a Gluon .params, a PyTorch .pth, a .safetensors or a timm folder.

    Reproduces the authors' single-crop table with --protocol authors at --size 224,
    --size 320 and --size 320 --mean-max (docs/evaluate.md lists the published numbers).
    """
    from ..data.datasets import open_dataset
    from ..runtimes import load_runtime
    from . import evaluate, settings
    settings(size, protocol, mean_max)
    names = labels.read_file(labels_file) if labels_file is not None else None
    dataset = open_dataset(data, root).subset(limit)
    rt = load_runtime(runtime, checkpoint, device, mean_max, precision,
                      calibration=_calibration(calibration, size, protocol))
    if not quiet:
        _note_quantization("dpn-evaluate", rt)
    # the note only once every input is accepted: a refusal stays one line
    starting = None if quiet else (lambda: _note_resize("dpn-evaluate", protocol))
    record = evaluate(rt, dataset, size, protocol, mean_max, batch_size, workers, strict,
                      progress=not quiet, class_names=names, starting=starting)
    record["checkpoint"] = str(checkpoint)
    record["precision"] = rt.precision
    if rt.quantization is not None:
        record["quantization"] = rt.quantization
    if record["skipped"]:
        shown = record["skipped_files"][:3]
        click.echo("dpn-evaluate: warning: skipped %d unreadable image(s): %s%s" % (
            record["skipped"], "; ".join(shown),
            " ..." if record["skipped"] > len(shown) else ""), err=True)
    if as_json:
        click.echo(json.dumps({k: _json_safe(v) for k, v in record.items()}))
        return
    click.echo("checkpoint  %s  (%s, %d classes, %s)" % (
        checkpoint, record["checkpoint_arch"], record["classes"], record["classifier"]))
    click.echo("data        %s  (%s: %d images, %d skipped)" % (
        record["data"], record["data_format"], record["images"], record["skipped"]))
    norm = ("mean=(124,117,104) scale=0.0167" if record["normalization"] == "authors" else
            "normalization=%s mean=(%s) std=(%s)" % (
                record["normalization"], ",".join("%g" % m for m in record["mean_rgb"]),
                ",".join("%g" % s for s in record["std_rgb"])))
    click.echo("settings    protocol=%s size=%d resize_short=%d crop=%d %s "
               "%s mean_max=%s runtime=%s precision=%s device=%s batch=%d"
               % (record["protocol"], record["size"], record["resize_short"], record["crop"],
                  record["interpolation"].replace(" ", ""), norm,
                  "on" if record["mean_max"] else "off", record["runtime"], rt.precision,
                  ",".join(record["devices"]), record["batch_size"]))
    click.echo("top-1 error %.2f %%" % record["top1_error"])
    click.echo("top-5 error %.2f %%" % record["top5_error"])
    click.echo("speed       %.1f images/s (%.1f s)" % (record["images_per_s"], record["seconds"]))


@click.command(cls=OneLineCommand, prog="dpn-predict",
               context_settings={"help_option_names": ["-h", "--help"]})
@version_option("dpn-predict")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True)
@_common
@click.option("--quiet", "-q", is_flag=True, help="Nothing on stderr on success.")
def predict_main(checkpoint, images, top, size, protocol, mean_max, runtime, precision,
                 calibration, device, as_json, labels_file, quiet):
    """The top classes of each IMAGE with softmax probabilities.

    Classes are named from --labels, else from the names the checkpoint file carries (a
    converted timm folder or .safetensors), else the built-in sets: ImageNet-1k (synset and
    names, sorted synset order: the authors' labels) and Places365. Without names (the
    ImageNet-5k checkpoints) it prints indices and says so once on stderr.

    An image that cannot be read is reported in one line on stderr and the others are
    still predicted. Exit 0: every image predicted; 2: some image (or the checkpoint, or
    an option) was bad.
    """
    from ..data.preprocess import preprocess
    from ..runtimes import load_runtime
    from . import classify, settings
    settings(size, protocol, mean_max)
    user = labels.read_file(labels_file) if labels_file is not None else None
    rt = load_runtime(runtime, checkpoint, device, mean_max, precision,
                      calibration=_calibration(calibration, size, protocol))
    if not quiet:
        _note_quantization("dpn-predict", rt)
    names = labels.for_checkpoint(rt.labels, rt.classes, None) if user is None else user
    if user is not None:
        labels.check_count(user, rt.classes, str(labels_file))
    results, bad, noted = [], 0, quiet
    for start in range(0, len(images), PREDICT_BATCH):     # bounded memory for many images
        files, arrays = [], []
        for image in images[start:start + PREDICT_BATCH]:
            try:
                arrays.append(preprocess(image, size, protocol, name=str(image),
                                         normalization=rt.normalization))
                files.append(str(image))
            except DPNError as err:
                bad += 1
                _error("dpn-predict", err)
                continue
            if not noted:       # notes only on the path that predicts: a refusal is one line
                noted = True
                _predict_notes(protocol, names, rt.classes)
        if not arrays:
            continue
        chunk = classify(rt, files, np.stack(arrays), top, names)
        if as_json:
            results += chunk
        else:
            _print_predictions(chunk)
    if as_json:
        click.echo(json.dumps({"checkpoint": str(checkpoint), "classes": rt.classes,
                               "protocol": protocol, "size": size, "mean_max": mean_max,
                               "normalization": rt.normalization,
                               "runtime": rt.kind, "precision": rt.precision,
                               "quantization": rt.quantization, "predictions": results,
                               "bad_images": bad}))
    return 2 if bad else 0


def _predict_notes(protocol: str, names, classes: int) -> None:
    _note_resize("dpn-predict", protocol)
    if names is None:
        click.echo("dpn-predict: no class names for these %d classes: printing indices "
                   "(pass --labels FILE, one name per line)" % classes, err=True)


#: Images preprocessed and run at once by dpn-predict.
PREDICT_BATCH = 32


def _print_predictions(results):
    for res in results:
        click.echo(res["image"])
        for rank, hit in enumerate(res["top"], 1):
            label = hit["name"] if hit["name"] else "class %d" % hit["index"]
            click.echo("  %d. %6.2f %%  %4d  %s" % (rank, 100 * hit["probability"],
                                                    hit["index"], label))
