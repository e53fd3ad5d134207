"""A small PyTorch DPN whose ``state_dict`` is timm's, key for key, so converted weights can run.

``dpn-convert --check`` and the parity report run converted checkpoints through this model.
timm itself is not a dependency (it imports torchvision, which has no CPU build on the
project's machines), so this module must stay compatible with timm's ``models/dpn.py``: the
same module tree, hence the same keys, order and shapes as
``tests/data/timm_state_dict_keys.json``, including ``num_batches_tracked``, and
``classifier`` as a 1x1 ``Conv2d`` with bias. Widths come from :mod:`dpn_gluon.variants` only.

Numerics follow the authors' MXNet graphs: BatchNorm eps 1e-3 (momentum 0.1 = MXNet's 0.9),
pre-activation BN -> ReLU -> Conv units, stem Conv -> BN -> ReLU -> MaxPool(3, 2, 1), and
every block concatenates [residual, dense]. Two heads: global average pool -> classifier
(timm's default, any input size) and the authors' test head (``mean_max=True``: avg-pool 7x7
stride 1 -> classifier -> 0.5 * (global average + global max)).

This module imports torch; import it only where torch is needed. It runs on any device
and dtype (``model.to('cuda', torch.float16)``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import variants
from .errors import CheckpointError, KeyMismatch
from .formats import names


def _bn(channels: int) -> nn.BatchNorm2d:
    # eps 1e-3: MXNet's symbol default, which the checkpoints were trained with.
    return nn.BatchNorm2d(channels, eps=variants.BN_EPS, momentum=1.0 - variants.BN_MOMENTUM)


class CatBnAct(nn.Module):
    """BN -> ReLU, on a tensor or on a (residual, dense) pair concatenated in that order."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = _bn(channels)

    def forward(self, x):
        if isinstance(x, tuple):
            x = torch.cat(x, dim=1)
        return F.relu(self.bn(x))


class BnActConv2d(nn.Module):
    """The authors' BN_AC_Conv: BN -> ReLU -> Conv (no bias)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.bn = _bn(cin)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)

    def forward(self, x):
        return self.conv(F.relu(self.bn(x)))


class InputBlock(nn.Module):
    """The stem: Conv (stride 2) -> BN -> ReLU -> MaxPool(3, 2, 1) (the authors' ``pool1``)."""

    def __init__(self, arch: variants.Arch):
        super().__init__()
        k = arch.stem_kernel
        self.conv = nn.Conv2d(3, arch.stem_channels, k, 2, arch.stem_pad, bias=False)
        self.bn = _bn(arch.stem_channels)
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        return self.pool(F.relu(self.bn(self.conv(x))))


class DualPathBlock(nn.Module):
    """One dual-path block; returns the pair (residual ``<block>_sum``, dense ``<block>_cat``)."""

    def __init__(self, spec: variants.BlockSpec):
        super().__init__()
        self.spec = spec
        cin, bw, inc, r = spec.in_channels, spec.bw, spec.inc, spec.r
        if spec.has_proj:
            # c1x1_w_s1 (conv2_1, stride 1) or c1x1_w_s2 (first block of conv3..5, stride 2)
            self._proj = "c1x1_w_s%d" % spec.stride
            setattr(self, self._proj, BnActConv2d(cin, bw + 2 * inc, stride=spec.stride))
        self.c1x1_a = BnActConv2d(cin, r)
        self.c3x3_b = BnActConv2d(r, r, 3, spec.stride, spec.groups)
        if spec.b:
            self.c1x1_c = CatBnAct(r)
            self.c1x1_c1 = nn.Conv2d(r, bw, 1, bias=False)
            self.c1x1_c2 = nn.Conv2d(r, inc, 1, bias=False)
        else:
            self.c1x1_c = BnActConv2d(r, bw + inc)

    def forward(self, x):
        x_in = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        bw = self.spec.bw
        if self.spec.has_proj:
            x_s = getattr(self, self._proj)(x_in)
            res, dense = x_s[:, :bw], x_s[:, bw:]
        else:
            res, dense = x
        x_in = self.c3x3_b(self.c1x1_a(x_in))
        if self.spec.b:
            x_in = self.c1x1_c(x_in)
            out_res, out_dense = self.c1x1_c1(x_in), self.c1x1_c2(x_in)
        else:
            x_in = self.c1x1_c(x_in)
            out_res, out_dense = x_in[:, :bw], x_in[:, bw:]
        return res + out_res, torch.cat([dense, out_dense], dim=1)


class DPN(nn.Module):
    """A DPN with timm's module tree; ``forward`` gives logits (N, classes)."""

    def __init__(self, arch: variants.Arch, classes: int = 1000, mean_max: bool = False):
        super().__init__()
        self.arch, self.classes, self.mean_max = arch, classes, mean_max
        blocks = OrderedDict([("conv1_1", InputBlock(arch))])
        for spec in arch.blocks():
            blocks["conv%d_%d" % (spec.stage, spec.index)] = DualPathBlock(spec)
        blocks["conv5_bn_ac"] = CatBnAct(arch.num_features)
        self.features = nn.Sequential(blocks)
        self.classifier = nn.Conv2d(arch.num_features, classes, 1, bias=True)

    def head(self, x):
        if self.mean_max:
            # score.py: avg 7x7 s1 -> fc as a 1x1 conv -> (avg + max) / 2 over the logit map.
            x = self.classifier(F.avg_pool2d(x, 7, 1))
            x = 0.5 * (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1))
        else:
            x = self.classifier(F.adaptive_avg_pool2d(x, 1))
        return x.flatten(1)

    def forward(self, x):
        return self.head(self.features(x))

    def taps(self, x) -> "OrderedDict[str, torch.Tensor]":
        """Every parity tap of :func:`variants.tap_names`, in graph order."""
        out = OrderedDict()
        mods = iter(self.features.children())
        x = next(mods)(x)
        out["pool1"] = x
        for spec in self.arch.blocks():
            x = next(mods)(x)
            out[spec.name + "_sum"], out[spec.name + "_cat"] = x
        x = next(mods)(x)
        out[variants.FEATURES_TAP] = x
        out["logits"] = self.head(x)
        return out


def build_model(name: str, classes: Optional[int] = None, classifier: Optional[str] = None,
                mean_max: bool = False) -> DPN:
    """An uninitialized DPN, in eval mode, for an architecture or checkpoint name.

    ``classifier`` only validates (the timm layout names it ``classifier`` either way).
    """
    arch, classes, _ = variants.resolve(name, classes, classifier)
    return DPN(arch, classes, mean_max).eval()


def load_canonical(model: DPN, tensors: Mapping[str, np.ndarray], classifier: Optional[str] = None,
                   source: str = "checkpoint") -> DPN:
    """Load the authors' canonical tensors (name -> array) into ``model``, strictly.

    Every tensor must map to exactly one of the model's keys with the right shape; a
    mismatch raises :class:`KeyMismatch` listing every offending key. Counters
    (``num_batches_tracked``) are set to 0. Tensors are cast to the model's dtype and device.
    """
    unit = "b" if model.arch.b else "standard"
    classifier = classifier or names.classifier_of(tensors) or "fc6"
    mapping = names.rename_all(tensors, "mxnet", "timm", unit, classifier, source)
    own = model.state_dict()
    state, misshapen, bad = OrderedDict(), [], set()
    for src, (key, reshape) in mapping.items():
        value = np.asarray(tensors[src])
        shape = names.reshape_for(reshape, "timm", value.shape)
        if key in own and tuple(own[key].shape) != shape:
            misshapen.append((src, shape, tuple(own[key].shape)))
            bad.add(key)
            continue
        state[key] = torch.from_numpy(np.ascontiguousarray(value).reshape(shape))
    for key in own:
        if key.endswith(names.TIMM_ONLY_SUFFIX):
            state[key] = torch.zeros((), dtype=torch.int64)
    missing = [k for k in own if k not in state and k not in bad]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or misshapen:
        raise KeyMismatch(source, "the PyTorch %s" % model.arch.name, missing, unexpected, misshapen)
    model.load_state_dict(state, strict=True)
    return model


def from_canonical(tensors: Mapping[str, np.ndarray], arch: Optional[str] = None,
                   classes: Optional[int] = None, classifier: Optional[str] = None,
                   mean_max: bool = False, source: str = "checkpoint") -> DPN:
    """A ready, eval-mode DPN from canonical tensors (arch/classes inferred when not given)."""
    shapes = {k: np.shape(v) for k, v in tensors.items()}
    found, found_classes, found_classifier = variants.identify(shapes, arch, source)
    if classes is not None and classes != found_classes:
        raise CheckpointError("%s: has %d classes, not %d" % (source, found_classes, classes))
    model = DPN(found, found_classes, mean_max).eval()
    return load_canonical(model, tensors, classifier or found_classifier, source)
