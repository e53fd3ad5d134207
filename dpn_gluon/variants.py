"""The one table: every DPN architecture and every checkpoint the authors released.

Everything else in the package is derived from this module: the MXNet symbols, the Gluon
blocks, the PyTorch model, the name rules and the expected tensor names and shapes of a
checkpoint. Nothing outside it repeats a width, a block count or a class count.

Facts (docs/reference/original-dpn.md, sections 2, 3, 5 and 7): cypw/DPNs
``settings/symbol_dpn-*.py`` for the architectures, ``run_val.sh`` and the README for the
released checkpoints. Names are the authors' names as stored in ``PREFIX-0000.params``
(without the ``arg:``/``aux:`` prefix).

This module imports neither MXNet nor torch.
"""
from __future__ import annotations

import numbers
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

from .errors import CheckpointError, KeyMismatch

Shape = Tuple[int, ...]

#: BatchNorm epsilon of every layer: MXNet's symbol default, which the checkpoints were
#: trained and tested with (Gluon's own default, 1e-5, changes the logits by percents).
BN_EPS = 1e-3
#: MXNet BatchNorm momentum of the authors' graphs (PyTorch's equivalent is 0.1).
BN_MOMENTUM = 0.9

#: The authors' input normalization: RGB, ``(pixel - MEAN_RGB) * SCALE`` on 0..255 values.
MEAN_RGB = (124.0, 117.0, 104.0)
SCALE = 0.0167
#: The authors' preprocessing in timm's terms: a bicubic resize and a 100 % center crop
#: (score.py; timm uses 0.875), 224 x 224; their test setting is 320 x 320 with the mean-max
#: head. Recorded in every timm config and safetensors file.
CROP_PCT = 1.0
INTERPOLATION = "bicubic"
INPUT_SIZE = (3, 224, 224)
TEST_INPUT_SIZE = (3, 320, 320)
#: The smallest input side each head runs on: the stride (32) for the global average pool;
#: for the authors' mean-max head, the side whose final feature map (stride 32, each
#: stride-2 layer rounding up) still holds its 7x7 average pool.
MIN_INPUT_SIZE = {"global": 32, "mean_max": 193}
#: PaddleClas's eval for its DPNs (ResizeImage resize_short, CropImage size): the config
#: written beside a .pdparams and dpn-evaluate's --protocol paddleclas both say it.
PADDLECLAS_RESIZE, PADDLECLAS_CROP = 256, 224


@dataclass(frozen=True)
class Normalization:
    """How a weight set's pixels are normalized, as mean and std of 0..1 RGB values."""

    name: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


#: The two in use: the authors' (the same map as MEAN_RGB/SCALE, in timm's terms) and
#: ImageNet's, which PaddleClas's DPN weights were trained with.
NORMALIZATIONS: Dict[str, Normalization] = OrderedDict((n.name, n) for n in [
    Normalization("authors", tuple(round(m / 255.0, 10) for m in MEAN_RGB),
                  (round(1.0 / (SCALE * 255.0), 10),) * 3),
    Normalization("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
])


def normalization_of(mean, std) -> Optional[Normalization]:
    """The known normalization with this mean and std (to 1e-6), or None."""
    for norm in NORMALIZATIONS.values():
        try:
            if all(abs(float(a) - b) <= 1e-6 for a, b in zip(mean, norm.mean)) and \
                    all(abs(float(a) - b) <= 1e-6 for a, b in zip(std, norm.std)) and \
                    len(mean) == len(std) == 3:
                return norm
        except (TypeError, ValueError):
            return None
    return None


#: Unit names inside a dual-path block, in graph order.
PROJ_S1, PROJ_S2 = "c1x1-w(s/1)", "c1x1-w(s/2)"
UNIT_A, UNIT_B, UNIT_C = "c1x1-a", "c3x3-b", "c1x1-c"
UNIT_C1, UNIT_C2 = "c1x1-c1", "c1x1-c2"

STEM = "conv1_x_1"            # stem conv: STEM__conv_weight; its BN-ReLU: STEM__relu-sp__bn_*
FINAL = "conv5_x_x__relu-sp"  # final BN-ReLU after conv5_x_x_cat-final
CLASSIFIERS = ("fc6", "fc6-1k")

BN_ARGS = ("gamma", "beta")
BN_AUX = ("moving_mean", "moving_var")


@dataclass(frozen=True)
class BlockSpec:
    """One dual-path block, with every width it needs.

    kind is ``'proj'`` (stride 1 with projection: conv2_x__1 only), ``'down'`` (stride 2 with
    projection: the first block of conv3..conv5) or ``'normal'``.
    """

    stage: int            # 2..5
    index: int            # 1-based within the stage
    kind: str
    in_channels: int      # residual + dense channels entering the block
    r: int                # bottleneck width (num_1x1_a = num_3x3_b)
    bw: int               # residual width (num_1x1_c)
    inc: int              # dense channels added by this block
    groups: int
    b: bool               # the "b" unit: c1x1-c split into c1x1-c1 / c1x1-c2

    @property
    def name(self) -> str:
        return "conv%d_x__%d" % (self.stage, self.index)

    @property
    def stride(self) -> int:
        return 2 if self.kind == "down" else 1

    @property
    def has_proj(self) -> bool:
        return self.kind != "normal"

    @property
    def proj_unit(self) -> Optional[str]:
        return {"proj": PROJ_S1, "down": PROJ_S2}.get(self.kind)

    @property
    def out_channels(self) -> int:
        """Residual + dense channels leaving the block."""
        dense_in = 2 * self.inc if self.has_proj else self.in_channels - self.bw
        return self.bw + dense_in + self.inc


@dataclass(frozen=True)
class Arch:
    """A DPN architecture, as in one of cypw's ``symbol_dpn-*.py`` files."""

    name: str
    small: bool                 # DPN-68 family: 3x3 stem, residual widths 64..512
    stem_channels: int
    k_r: int
    groups: int
    k_sec: Tuple[int, int, int, int]
    inc_sec: Tuple[int, int, int, int]
    b: bool = False
    paper: str = ""

    @property
    def stem_kernel(self) -> int:
        return 3 if self.small else 7

    @property
    def stem_pad(self) -> int:
        return self.stem_kernel // 2

    def blocks(self) -> Iterator[BlockSpec]:
        """Every dual-path block in graph order."""
        base = 64 if self.small else 256
        in_channels = self.stem_channels
        for i, (count, inc) in enumerate(zip(self.k_sec, self.inc_sec)):
            stage = i + 2
            bw = base * 2 ** i
            r = self.k_r * bw // base   # R = k_R*bw/64 (DPN-68) or /256: k_R * 2^(stage-2)
            for index in range(1, count + 1):
                kind = "normal" if index > 1 else ("proj" if stage == 2 else "down")
                blk = BlockSpec(stage, index, kind, in_channels, r, bw, inc, self.groups, self.b)
                yield blk
                in_channels = blk.out_channels

    @property
    def num_features(self) -> int:
        """Channels of the final BN-ReLU (residual + dense after conv5)."""
        *_, last = self.blocks()
        return last.out_channels


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint the authors released: which architecture, classes and classifier name."""

    name: str          # the file prefix in cypw/DPNs' README and run_val.sh
    arch: str
    classes: int
    classifier: str    # "fc6", or "fc6-1k" for the 5k-pretrained, 1k-finetuned "-extra" models
    dataset: str
    mib: int           # the size the README gives (the fp32 .params file, MiB rounded up)
    #: the authors' published single-crop ImageNet-1k validation error (%), (top-1, top-5) at
    #: each of PUBLISHED_SETTINGS; None where they published none (ImageNet-5k, Places365)
    published: Optional[Tuple[Tuple[float, float], ...]] = None


#: The columns of the authors' table (cypw/DPNs README, "Single Model, Single Crop Validation
#: Error"): input side and head; "320 mean-max" is their test setting.
PUBLISHED_SETTINGS = ("224", "320", "320 mean-max")


@dataclass(frozen=True)
class WeightSet:
    """Whose weights: where they were published, how they were trained, what they expect."""

    name: str
    publisher: str
    url: str
    recipe: str
    normalization: str


WEIGHT_SETS: Dict[str, WeightSet] = OrderedDict((w.name, w) for w in [
    WeightSet("authors", "the authors (Chen et al., NIPS 2017)", "https://github.com/cypw/DPNs",
              "the authors' MXNet recipe (SGD, 10 nodes; docs/train.md)", "authors"),
    WeightSet("paddleclas", "PaddleClas (PaddlePaddle)", "https://github.com/PaddlePaddle/PaddleClas",
              "PaddleClas's recipe: 200 epochs, cosine schedule, label smoothing 0.1, mixup 0.2",
              "imagenet"),
])


@dataclass(frozen=True)
class PaddleCheckpoint:
    """One of PaddleClas's released DPNs (ImageNet-1k) and its published accuracy."""

    name: str
    arch: str
    #: top-1 and top-5 accuracy on ImageNet-1k validation, 224 crop after a 256 resize, as
    #: PaddleClas published them (its model zoo table)
    top1: float
    top5: float


PADDLECLAS_CHECKPOINTS: Dict[str, PaddleCheckpoint] = OrderedDict((c.name, c) for c in [
    PaddleCheckpoint("DPN68", "dpn68", 0.768, 0.934),
    PaddleCheckpoint("DPN92", "dpn92", 0.799, 0.948),
    PaddleCheckpoint("DPN98", "dpn98", 0.806, 0.951),
    PaddleCheckpoint("DPN107", "dpn107", 0.809, 0.953),
    PaddleCheckpoint("DPN131", "dpn131", 0.807, 0.951),
])


ARCHS: Dict[str, Arch] = OrderedDict((a.name, a) for a in [
    Arch("dpn68", True, 10, 128, 32, (3, 4, 12, 3), (16, 32, 32, 64), paper="DPN-68"),
    Arch("dpn68b", True, 10, 128, 32, (3, 4, 12, 3), (16, 32, 32, 64), b=True, paper="DPN-68 (b unit)"),
    Arch("dpn92", False, 64, 96, 32, (3, 4, 20, 3), (16, 32, 24, 128), paper="DPN-92"),
    Arch("dpn98", False, 96, 160, 40, (3, 6, 20, 3), (16, 32, 32, 128), paper="DPN-98"),
    Arch("dpn107", False, 128, 200, 50, (4, 8, 20, 3), (20, 64, 64, 128), paper="DPN-107"),
    Arch("dpn131", False, 128, 160, 40, (4, 8, 28, 3), (16, 32, 32, 128), paper="DPN-131"),
])

# Order matters: default_checkpoint() picks the first row matching (arch, classes), so the
# plain ImageNet-1k dpn92 comes before dpn92-extra.
CHECKPOINTS: Dict[str, Checkpoint] = OrderedDict((c.name, c) for c in [
    Checkpoint("dpn68", "dpn68", 1000, "fc6", "ImageNet-1k", 49,
               ((23.57, 6.93), (22.15, 5.9), (21.51, 5.52))),
    Checkpoint("dpn68-extra", "dpn68b", 1000, "fc6-1k", "ImageNet-5k pretrain, ImageNet-1k finetune", 49,
               ((22.45, 6.09), (20.92, 5.26), (20.62, 5.07))),
    Checkpoint("dpn68-5k", "dpn68b", 4786, "fc6", "ImageNet-5k (4786 classes)", 61),
    Checkpoint("dpn92", "dpn92", 1000, "fc6", "ImageNet-1k", 145,
               ((20.73, 5.37), (19.34, 4.66), (19.04, 4.53))),
    Checkpoint("dpn92-extra", "dpn92", 1000, "fc6-1k", "ImageNet-5k pretrain, ImageNet-1k finetune", 145,
               ((19.98, 5.06), (19.00, 4.37), (18.79, 4.19))),
    Checkpoint("dpn92-5k", "dpn92", 4786, "fc6", "ImageNet-5k (4786 classes)", 184),
    Checkpoint("dpn92-places365", "dpn92", 365, "fc6", "Places365-Standard", 138),
    Checkpoint("dpn98", "dpn98", 1000, "fc6", "ImageNet-1k", 236,
               ((20.15, 5.15), (18.94, 4.44), (18.72, 4.4))),
    Checkpoint("dpn107-extra", "dpn107", 1000, "fc6-1k", "ImageNet-5k pretrain, ImageNet-1k finetune", 333,
               ((19.75, 4.94), (18.34, 4.19), (18.15, 4.03))),
    Checkpoint("dpn131", "dpn131", 1000, "fc6", "ImageNet-1k", 304,
               ((19.93, 5.12), (18.62, 4.23), (18.55, 4.16))),
])


def standard_form(arch: Arch) -> Arch:
    """The architecture with one ``c1x1-c`` convolution that computes what ``arch`` does:
    the "b" unit's ``c1x1-c1`` and ``c1x1-c2`` share one BN-ReLU, so they are one convolution
    whose output is split (dpn68b is dpn68 with its ``c1x1-c`` weights concatenated)."""
    if not arch.b:
        return arch
    shape = (arch.small, arch.stem_channels, arch.k_r, arch.groups, arch.k_sec, arch.inc_sec)
    return next(a for a in ARCHS.values() if not a.b and
                (a.small, a.stem_channels, a.k_r, a.groups, a.k_sec, a.inc_sec) == shape)


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise CheckpointError("unknown architecture %r (choose from %s)"
                              % (name, ", ".join(ARCHS))) from None


def default_checkpoint(arch: str, classes: int) -> Optional[Checkpoint]:
    """The released checkpoint an (architecture, classes) pair most likely came from."""
    for ckpt in CHECKPOINTS.values():
        if ckpt.arch == arch and ckpt.classes == classes:
            return ckpt
    return None


def default_classifier(arch: str, classes: int) -> str:
    """``fc6-1k`` where the released checkpoint of that architecture and class count uses it."""
    ckpt = default_checkpoint(arch, classes)
    return ckpt.classifier if ckpt else "fc6"


#: The largest class count anything here builds or reads (the 5k head has 4786): a count from
#: a file or an argument beyond it is refused before a classifier of that size is allocated.
MAX_CLASSES = 1_000_000


def check_classes(classes, what: str = "classes") -> int:
    """``classes`` as an int, refused (one line) unless a whole number in 1..MAX_CLASSES."""
    if isinstance(classes, bool) or not isinstance(classes, numbers.Integral) \
            or not 1 <= classes <= MAX_CLASSES:
        raise CheckpointError("%s must be a whole number from 1 to %d, got %s"
                              % (what, MAX_CLASSES, str(classes)[:40]))
    return int(classes)


def resolve(name: str, classes: Optional[int] = None,
            classifier: Optional[str] = None) -> Tuple[Arch, int, str]:
    """Architecture or checkpoint name -> (arch, classes, classifier name).

    ``resolve('dpn68-extra')`` gives dpn68b with 1000 classes and ``fc6-1k``;
    ``resolve('dpn92', 365)`` gives dpn92 with 365 classes and ``fc6``.
    """
    if name in CHECKPOINTS:
        ckpt = CHECKPOINTS[name]
        arch = ARCHS[ckpt.arch]
        classes = check_classes(ckpt.classes if classes is None else classes)
        classifier = classifier or (ckpt.classifier if classes == ckpt.classes
                                    else default_classifier(ckpt.arch, classes))
    else:
        arch = get_arch(name)
        classes = check_classes(1000 if classes is None else classes)
        classifier = classifier or default_classifier(name, classes)
    if classifier not in CLASSIFIERS:
        raise CheckpointError("unknown classifier name %r (choose from %s)"
                              % (classifier, ", ".join(CLASSIFIERS)))
    return arch, classes, classifier


# -- the tensors of a checkpoint ---------------------------------------------------------

def _bn(prefix: str, channels: int) -> Iterator[Tuple[str, Shape]]:
    for leaf in BN_ARGS + BN_AUX:
        yield prefix + "_" + leaf, (channels,)


def _bn_conv(unit: str, cin: int, cout: int, kernel: int = 1, groups: int = 1):
    """BN_AC_Conv in symbol_basic.py: BN ``<unit>__bn__bn`` (double), conv ``<unit>__conv``."""
    yield from _bn(unit + "__bn__bn", cin)
    yield unit + "__conv_weight", (cout, cin // groups, kernel, kernel)


def block_tensors(blk: BlockSpec) -> Iterator[Tuple[str, Shape]]:
    """Names and shapes of one dual-path block's tensors, in graph order."""
    p = blk.name + "_"
    if blk.has_proj:
        yield from _bn_conv(p + blk.proj_unit, blk.in_channels, blk.bw + 2 * blk.inc)
    yield from _bn_conv(p + UNIT_A, blk.in_channels, blk.r)
    yield from _bn_conv(p + UNIT_B, blk.r, blk.r, 3, blk.groups)
    if blk.b:
        # BN_AC (single __bn) then two bias-free convs: residual part, dense part.
        yield from _bn(p + UNIT_C + "__bn", blk.r)
        yield p + UNIT_C1 + "__conv_weight", (blk.bw, blk.r, 1, 1)
        yield p + UNIT_C2 + "__conv_weight", (blk.inc, blk.r, 1, 1)
    else:
        yield from _bn_conv(p + UNIT_C, blk.r, blk.bw + blk.inc)


def tensor_spec(arch: Arch, classes: int = 1000, classifier: str = "fc6") -> "OrderedDict[str, Shape]":
    """Every tensor of an authors'-format checkpoint: canonical name -> shape, in graph order.

    Canonical names are the names in ``PREFIX-0000.params`` without ``arg:``/``aux:``;
    :func:`is_aux` tells which of them are auxiliary states.
    """
    spec: "OrderedDict[str, Shape]" = OrderedDict()
    k = arch.stem_kernel
    spec[STEM + "__conv_weight"] = (arch.stem_channels, 3, k, k)
    spec.update(_bn(STEM + "__relu-sp__bn", arch.stem_channels))
    for blk in arch.blocks():
        spec.update(block_tensors(blk))
    spec.update(_bn(FINAL + "__bn", arch.num_features))
    spec[classifier + "_weight"] = (classes, arch.num_features)
    spec[classifier + "_bias"] = (classes,)
    return spec


def is_aux(name: str) -> bool:
    """True for BatchNorm moving statistics (``aux:`` in the .params file)."""
    return name.endswith(("_moving_mean", "_moving_var"))


def count_params(arch: Arch, classes: int = 1000) -> int:
    """Learned parameters (arguments, not moving statistics), as the paper counts them."""
    total = 0
    for name, shape in tensor_spec(arch, classes).items():
        if not is_aux(name):
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def conv_flops(arch: Arch, size: int = 224, classes: int = 1000) -> int:
    """Multiply-adds x 2 of the convolutions and the classifier at ``size`` (BN/ReLU ignored).

    GMACs as the paper counts them are ``conv_flops(...) / 2e9``.
    """
    flops = 0
    hw = (size + 2 * arch.stem_pad - arch.stem_kernel) // 2 + 1
    flops += 2 * hw * hw * arch.stem_channels * 3 * arch.stem_kernel ** 2
    hw = (hw + 2 - 3) // 2 + 1
    for blk in arch.blocks():
        out_hw = hw // blk.stride
        if blk.has_proj:
            flops += 2 * out_hw * out_hw * blk.in_channels * (blk.bw + 2 * blk.inc)
        flops += 2 * hw * hw * blk.in_channels * blk.r
        flops += 2 * out_hw * out_hw * blk.r * 9 * blk.r // blk.groups
        flops += 2 * out_hw * out_hw * blk.r * (blk.bw + blk.inc)
        hw = out_hw
    return flops + 2 * arch.num_features * classes


# -- what a set of canonical tensors is --------------------------------------------------

def identify(shapes: Mapping[str, Sequence[int]], arch: Optional[str] = None,
             source: str = "checkpoint") -> Tuple[Arch, int, str]:
    """Infer (arch, classes, classifier) from canonical names and shapes, then validate.

    The classifier name and class count come from ``fc6[-1k]_weight``; the architecture is
    every table row whose full tensor spec matches (exactly one does, unless ``arch`` is
    given). A mismatch raises :class:`KeyMismatch` listing missing, unexpected and
    misshapen tensors against the closest architecture.
    """
    heads = [c for c in CLASSIFIERS if c + "_weight" in shapes]
    if len(heads) != 1:
        found = "both fc6 and fc6-1k" if heads else "no fc6_weight or fc6-1k_weight"
        raise CheckpointError("%s: %s: cannot tell the classifier" % (source, found))
    classifier = heads[0]
    w = tuple(shapes[classifier + "_weight"])
    if len(w) != 2:
        raise CheckpointError("%s: %s_weight has shape %s, expected (classes, channels)"
                              % (source, classifier, w))
    classes = w[0]
    if classes < 1:
        raise CheckpointError("%s: %s_weight has shape %s: a classifier of no classes"
                              % (source, classifier, w))
    candidates = [get_arch(arch)] if arch else list(ARCHS.values())
    best_err = None
    for cand in candidates:
        err = compare(shapes, tensor_spec(cand, classes, classifier), cand.name, source)
        if err is None:
            return cand, classes, classifier
        if best_err is None or err.size < best_err.size:
            best_err = err
    raise best_err


def compare(shapes: Mapping[str, Sequence[int]], spec: Mapping[str, Shape], what: str,
            source: str = "checkpoint") -> Optional[KeyMismatch]:
    """A :class:`KeyMismatch` if ``shapes`` is not exactly ``spec``, else None."""
    missing = [k for k in spec if k not in shapes]
    unexpected = [k for k in shapes if k not in spec]
    misshapen = [(k, tuple(shapes[k]), spec[k]) for k in spec
                 if k in shapes and tuple(shapes[k]) != tuple(spec[k])]
    if missing or unexpected or misshapen:
        return KeyMismatch(source, what, missing, unexpected, misshapen)
    return None


# -- parity taps -------------------------------------------------------------------------

#: Tap after the final BN-ReLU: the authors' ReLU op ``conv5_x_x__relu-sp__relu``.
FEATURES_TAP = FINAL + "__relu"


def tap_names(arch: Arch) -> list:
    """Where parity is measured, in graph order, named after the authors' ops.

    ``pool1`` (the stem), ``<block>_sum`` (residual path) and ``<block>_cat`` (dense path) of
    every dual-path block, ``conv5_x_x__relu-sp__relu`` (final BN-ReLU) and ``logits``.
    In an MXNet symbol each tap but ``logits`` is ``<tap>_output`` of ``get_internals()``.
    """
    taps = ["pool1"]
    for blk in arch.blocks():
        taps += [blk.name + "_sum", blk.name + "_cat"]
    return taps + [FEATURES_TAP, "logits"]
