"""The model card (``README.md``) of a timm folder: what makes the folder a Hub model repo.

The YAML front matter follows what timm's ``push_to_hf_hub`` writes (``library_name: timm``,
``tags``, ``license``, ``datasets``, ``pipeline_tag``) and must stay parseable by
``huggingface_hub.ModelCard``. The body states the model's facts from the variant table
(parameters, GMACs, input sizes, the authors' published errors, labelled as theirs), usage
for timm, torch.hub and ONNX, the conversion's provenance and its parity summary, and the
citation. :func:`rewrite` replaces the card after the check, atomically.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

from .. import variants
from ..errors import DPNError
from ..formats import timm
from ..safeio.atomic import atomic_write

CARD = timm.CARD
#: cypw/DPNs states no licence: the Hub's "other", and the card says so.
DEFAULT_LICENSE = "other"
#: What a --license value may look like: a Hub licence identifier (apache-2.0, mit, other).
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")

CITATION = """@inproceedings{chen2017dpn,
  title     = {Dual Path Networks},
  author    = {Chen, Yunpeng and Li, Jianan and Xiao, Huaxin and Jin, Xiaojie and
               Yan, Shuicheng and Feng, Jiashi},
  booktitle = {Advances in Neural Information Processing Systems 30 (NIPS 2017)},
  pages     = {4467--4475},
  year      = {2017}
}"""

NOT_CHECKED = ("Not checked: converted with `--no-check` (or the check did not finish). "
               "Run `dpn-convert check SOURCE THIS_FOLDER` for the per-layer parity.")


def check_license(value: str) -> str:
    """A licence identifier for the card's YAML, refused (one line) unless it is one."""
    if not _LICENSE.match(value or ""):
        raise DPNError("--license %r: give a Hub licence identifier such as other, mit, "
                       "apache-2.0 (lower case, no spaces)" % (value or "")[:60])
    return value


def released(arch: str, classes: int, classifier: str) -> Optional[variants.Checkpoint]:
    """The authors' released checkpoint with this architecture, class count and classifier."""
    for ckpt in variants.CHECKPOINTS.values():
        if (ckpt.arch, ckpt.classes, ckpt.classifier) == (arch, classes, classifier):
            return ckpt
    return None


def datasets_of(ckpt: Optional[variants.Checkpoint], classes: int) -> List[str]:
    """Hub dataset ids for the card's metadata, from the class count of the released sets
    (the one the built-in class names follow) and, for 1000, the -extra 5k pre-training."""
    if classes == 1000:
        return ["imagenet-1k", "imagenet-5k"] if ckpt and "5k" in ckpt.dataset else ["imagenet-1k"]
    return {365: ["places365"], 4786: ["imagenet-5k"]}.get(classes, [])


def front_matter(weights, ckpt: Optional[variants.Checkpoint]) -> str:
    lines = ["---", "library_name: timm", "license: %s" % check_license(weights.license)]
    if weights.license == DEFAULT_LICENSE:
        lines.append("license_name: unspecified")
    lines += ["tags:", "- image-classification", "- timm", "- dpn",
              "pipeline_tag: image-classification"]
    datasets = datasets_of(ckpt, weights.classes)
    if datasets:
        lines += ["datasets:"] + ["- %s" % d for d in datasets]
    return "\n".join(lines + ["---", ""])


def parity_summary(report) -> str:
    """One paragraph from a :class:`~dpn_gluon.convert.check.CheckReport` (None: not checked)."""
    if report is None:
        return NOT_CHECKED
    parts = []
    if report.exact:
        parts.append("All %d tensors read back from this folder are bit-identical to the "
                     "source." % report.tensors)
    elif report.exact is False:
        parts.append("FAILED: the tensors read back differ from the source (%s)."
                     % "; ".join(report.mismatches[:3]))
    parity = report.parity
    if parity is not None:
        worst = parity.worst
        parts.append("Per-layer parity, the authors' MXNet graph vs the PyTorch DPN built from "
                     "this folder, %s batch %dx3x%dx%d, %d taps: %s; worst tap %s, max rel "
                     "%.2e (tolerance %g); logits max rel %.2e; top-5 agreement %.0f %%."
                     % (parity.inputs, parity.batch, parity.size, parity.size, len(parity.rows),
                        "PASS" if parity.passed else "FAIL", worst.name, worst.max_rel,
                        parity.tolerance, parity.logits.max_rel, 100 * parity.top5_agreement))
    parts += ["(%s)" % n for n in report.notes]
    return " ".join(parts) if parts else NOT_CHECKED


def _paddle_published(arch: str) -> List[str]:
    found = [p for p in variants.PADDLECLAS_CHECKPOINTS.values() if p.arch == arch]
    if not found:
        return ["PaddleClas published no accuracy for this architecture."]
    p = found[0]
    return ["Single-crop ImageNet-1k validation accuracy **published by PaddleClas** for its "
            "`%s` weights (224 crop after a 256 short-side resize), not measured by this "
            "conversion; it holds for these weights only if they are that file (compare the "
            "source sha256 below)." % p.name, "",
            "| setting | top-1 | top-5 |", "| --- | --- | --- |",
            "| 224 | %.3f | %.3f |" % (p.top1, p.top5)]


def _input_line(weights) -> str:
    if weights.normalization == "authors":
        return ("- input: RGB, `(pixel - (124, 117, 104)) * 0.0167`; 224 x 224 with a bicubic "
                "short-side resize and a 100 % center crop")
    norm = weights.norm
    return ("- input: RGB, `(pixel / 255 - %s) / %s` (the %s normalization these weights were "
            "trained with, in `config.json`); PaddleClas evaluates at 224 x 224 after a "
            "bilinear short-side resize to 256" % (norm.mean, norm.std, norm.name))


def _published_table(ckpt: Optional[variants.Checkpoint]) -> List[str]:
    if ckpt is None or ckpt.published is None:
        return ["The authors published no ImageNet-1k error for this checkpoint."]
    rows = ["Single-crop ImageNet-1k validation error (%%) **published by the authors** for "
            "their `%s` checkpoint (cypw/DPNs README), not measured by this conversion; it "
            "holds for these weights only if they are that file (compare the source sha256 "
            "below)." % ckpt.name, "",
            "| setting | top-1 error | top-5 error |", "| --- | --- | --- |"]
    for setting, (top1, top5) in zip(variants.PUBLISHED_SETTINGS, ckpt.published):
        rows.append("| %s | %.2f | %.2f |" % (setting, top1, top5))
    return rows


def model_card(weights, report=None, checked: bool = False) -> str:
    """The card's text. ``report`` is the conversion's CheckReport once the check has run."""
    arch = weights.arch
    ckpt = released(arch.name, weights.classes, weights.classifier)
    params = variants.count_params(arch, weights.classes)
    gmacs = {s: variants.conv_flops(arch, s, weights.classes) / 2e9 for s in (224, 320)}
    labels = ("%d class names in `config.json` (`pretrained_cfg.label_names`)" % len(weights.labels)
              if weights.labels else "no class names (pass `dpn-convert --labels FILE`)")
    licence = ("`%s`" % weights.license if weights.license != DEFAULT_LICENSE else
               "`other`: cypw/DPNs, where the weights come from, states no licence; ask the "
               "authors before redistributing" if weights.weight_set == "authors" else
               "`other`: PaddleClas publishes these weights in its repository (Apache-2.0); "
               "check its terms before redistributing")
    theirs = weights.weight_set == "authors"
    ckpt = ckpt if theirs else None
    wset = variants.WEIGHT_SETS[weights.weight_set]
    name = ckpt.name if ckpt else arch.name
    intro = ("The authors' (Chen et al., NIPS 2017) %s weights, converted from MXNet by "
             "`dpn-convert` (dpn-gluon) to a timm folder." % arch.paper if theirs else
             "%s's %s weights (%s; %s), converted from PaddlePaddle's `.pdparams` by "
             "`dpn-convert` (dpn-gluon) to a timm folder. PaddleClas's BatchNorm epsilon "
             "(1e-5) is folded into the scales, so the graph is the authors' (epsilon 1e-3)."
             % (wset.publisher, arch.paper, wset.url, wset.recipe))
    out = [front_matter(weights, ckpt),
           "# %s: Dual Path Network (%s)%s" % (name, arch.paper,
                                                "" if theirs else ", PaddleClas's weights"), "",
           intro, "",
           "## Model details", "",
           "- architecture: `%s` (timm's name), %s unit" % (arch.name, weights.unit),
           "- parameters: %.2f M" % (params / 1e6),
           "- GMACs: %.2f at 224 x 224, %.2f at 320 x 320" % (gmacs[224], gmacs[320]),
           "- classes: %d%s, classifier `%s` in the authors' graph; %s"
           % (weights.classes, " (%s)" % ckpt.dataset if ckpt else "", weights.classifier, labels),
           "- weight set: %s (%s), trained by %s" % (wset.publisher, wset.url, wset.recipe),
           _input_line(weights),
           "- the authors' test setting: 320 x 320 (100 % crop) with the mean-max head "
           "(average pool 7x7 stride 1, the classifier as a 1x1 conv, then the mean of global "
           "average and max pooling); `pretrained_cfg.test_input_size` is 320, and timm "
           "applies the same head with `validate.py --test-pool`",
           "- licence: %s" % licence,
           "- paper: [Dual Path Networks](https://arxiv.org/abs/1707.01629); original code and "
           "weights: https://github.com/cypw/DPNs", "",
           "## Published accuracy", ""] + (_published_table(ckpt) if theirs else
                                           _paddle_published(arch.name)) + [
           "",
           "## Usage", "",
           "timm (this folder, or `hf-hub:USER/REPO` once uploaded):", "",
           "```python",
           "import timm",
           "model = timm.create_model('local-dir:PATH/TO/THIS/FOLDER', pretrained=True).eval()",
           "config = timm.data.resolve_data_config({}, model=model)",
           "transform = timm.data.create_transform(**config)",
           "```", "",
           "PyTorch without timm (dpn-gluon's `hubconf.py`; any format `dpn-convert` reads):", "",
           "```python",
           "import torch",
           "model = torch.hub.load('PATH/TO/dpn-gluon', '%s', source='local',"
           % arch.name,
           "                       checkpoint='PATH/TO/THIS/FOLDER').eval()",
           "```", "",
           "ONNX:", "",
           "```sh",
           "dpn-convert PATH/TO/THIS/FOLDER --to onnx -o %s.onnx" % name,
           "```", "",
           "## Conversion", "",
           "- source: `%s` (%s), sha256 `%s`"
           % (weights.source.name, weights.format, weights.sha256 or "not computed"),
           "- check: " + (parity_summary(report) if checked else NOT_CHECKED), "",
           "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(out)


def rewrite(folder: Path, weights, report) -> Path:
    """Replace the card in ``folder`` (written by the conversion) with the check's summary."""
    path = Path(folder) / CARD
    with atomic_write(path, force=True) as f:
        f.write(model_card(weights, report, checked=True).encode("utf-8"))
    return path
