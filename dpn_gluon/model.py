"""Dual Path Networks as MXNet Gluon HybridBlocks, computing exactly the authors' graphs.

The blocks compute the same function as :mod:`dpn_gluon.symbols` (cypw/DPNs) imperative and
hybridized, on any input of at least 32x32, and must stay compatible with two name schemes:

- **Parameter names** (``collect_params()`` keys, and the names ``export()`` writes) are the
  authors' checkpoint names with Gluon's ``running_mean``/``running_var`` for
  ``moving_mean``/``moving_var`` (:func:`dpn_gluon.formats.names.gluon_param_name`). The
  model's prefix is empty and each block's prefix is a piece of the authors' layer name, so
  ``conv2_x__1_`` + ``c1x1-a`` + ``__bn__bn_`` + ``gamma`` is the authors'
  ``conv2_x__1_c1x1-a__bn__bn_gamma``.
- **Structural names** (``save_parameters()``) follow timm's module tree
  (``features.conv2_1.c1x1_a.bn.gamma``): the ``gluon`` scheme of
  :mod:`dpn_gluon.formats.names`.

Numerics (docs/reference/original-dpn.md, sections 3, 4 and 10): BatchNorm epsilon 1e-3
(MXNet's symbol default, which the checkpoints were trained with; Gluon's own 1e-5 is
wrong here), momentum 0.9; pre-activation BN-ReLU-Conv units; bias-free convolutions;
concatenation order [residual, dense]; the only bias is the classifier's.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from mxnet import gluon
from mxnet.gluon import nn

from . import variants
from .variants import BN_EPS, BN_MOMENTUM, Arch, BlockSpec


def _bn(channels: int, prefix: str, epsilon: float = BN_EPS) -> nn.BatchNorm:
    return nn.BatchNorm(epsilon=epsilon, momentum=BN_MOMENTUM, center=True, scale=True,
                        in_channels=channels, prefix=prefix)


def _conv(cin: int, cout: int, prefix: str, kernel: int = 1, stride: int = 1, pad: int = 0,
          groups: int = 1) -> nn.Conv2D:
    return nn.Conv2D(cout, kernel, strides=stride, padding=pad, groups=groups, use_bias=False,
                     in_channels=cin, prefix=prefix)


class BnAct(gluon.HybridBlock):
    """BN -> ReLU: the authors' ``BN_AC(name=X)``, BatchNorm ``X__bn_*`` (single ``__bn``)."""

    def __init__(self, channels: int, prefix: str, epsilon: float = BN_EPS, **kwargs):
        super().__init__(prefix=prefix, **kwargs)
        with self.name_scope():
            self.bn = _bn(channels, "__bn_", epsilon)

    def hybrid_forward(self, F, x):
        return F.Activation(self.bn(x), act_type="relu")


class BnActConv(gluon.HybridBlock):
    """BN -> ReLU -> Conv: ``BN_AC_Conv(name=X)``, BatchNorm ``X__bn__bn_*``, conv ``X__conv``."""

    def __init__(self, cin: int, cout: int, prefix: str, kernel: int = 1, stride: int = 1,
                 groups: int = 1, epsilon: float = BN_EPS, **kwargs):
        super().__init__(prefix=prefix, **kwargs)
        with self.name_scope():
            self.bn = _bn(cin, "__bn__bn_", epsilon)
            self.conv = _conv(cin, cout, "__conv_", kernel, stride, kernel // 2, groups)

    def hybrid_forward(self, F, x):
        return self.conv(F.Activation(self.bn(x), act_type="relu"))


class Stem(gluon.HybridBlock):
    """Conv (stride 2) -> BN -> ReLU -> max pool 3x3/2 pad 1: ``conv1_x_1`` ... ``pool1``."""

    def __init__(self, arch: Arch, epsilon: float = BN_EPS, **kwargs):
        super().__init__(prefix=variants.STEM, **kwargs)
        with self.name_scope():
            self.conv = _conv(3, arch.stem_channels, "__conv_", arch.stem_kernel, 2, arch.stem_pad)
            self.bn = _bn(arch.stem_channels, "__relu-sp__bn_", epsilon)

    def hybrid_forward(self, F, x):
        x = F.Activation(self.bn(self.conv(x)), act_type="relu")
        return F.Pooling(x, pool_type="max", kernel=(3, 3), stride=(2, 2), pad=(1, 1))


class DualPathBlock(gluon.HybridBlock):
    """One dual-path block (the authors' ``DualPathFactory``), all widths from a BlockSpec.

    ``block(x)`` for the first block (input: pool1), else ``block(res, dense)``; returns
    ``(res, dense)``, the authors' ``<name>_sum`` and ``<name>_cat``. Projection blocks
    (``proj``/``down``) read ``[res, dense]`` concatenated and split their 1x1 projection
    into the new residual and dense paths; the stride sits on the projection and the
    grouped 3x3. In the b unit the last BN-ReLU feeds two convs (residual, dense) instead
    of one conv split in two: the same function, parameterized differently.
    """

    def __init__(self, spec: BlockSpec, epsilon: float = BN_EPS, **kwargs):
        super().__init__(prefix=spec.name + "_", **kwargs)
        self.spec = spec
        self._bw, self._inc = spec.bw, spec.inc
        with self.name_scope():
            if spec.has_proj:
                # timm's child names c1x1_w_s1 / c1x1_w_s2, the authors' c1x1-w(s/1) / (s/2)
                self._proj = "c1x1_w_s%d" % spec.stride
                self.register_child(BnActConv(spec.in_channels, spec.bw + 2 * spec.inc,
                                              spec.proj_unit, stride=spec.stride, epsilon=epsilon),
                                    self._proj)
            else:
                self._proj = None
            self.c1x1_a = BnActConv(spec.in_channels, spec.r, variants.UNIT_A, epsilon=epsilon)
            self.c3x3_b = BnActConv(spec.r, spec.r, variants.UNIT_B, kernel=3, stride=spec.stride,
                                    groups=spec.groups, epsilon=epsilon)
            if spec.b:
                self.c1x1_c = BnAct(spec.r, variants.UNIT_C, epsilon=epsilon)
                self.c1x1_c1 = _conv(spec.r, spec.bw, variants.UNIT_C1 + "__conv_")
                self.c1x1_c2 = _conv(spec.r, spec.inc, variants.UNIT_C2 + "__conv_")
            else:
                self.c1x1_c = BnActConv(spec.r, spec.bw + spec.inc, variants.UNIT_C, epsilon=epsilon)

    def hybrid_forward(self, F, x, dense=None):
        data_in = x if dense is None else F.concat(x, dense, dim=1)
        bw, inc = self._bw, self._inc
        if self._proj is not None:
            w = self._children[self._proj](data_in)
            res = F.slice_axis(w, axis=1, begin=0, end=bw)
            dense = F.slice_axis(w, axis=1, begin=bw, end=bw + 2 * inc)
        else:
            res = x
        y = self.c3x3_b(self.c1x1_a(data_in))
        if self.spec.b:
            y = self.c1x1_c(y)
            c_res, c_dense = self.c1x1_c1(y), self.c1x1_c2(y)
        else:
            y = self.c1x1_c(y)
            c_res = F.slice_axis(y, axis=1, begin=0, end=bw)
            c_dense = F.slice_axis(y, axis=1, begin=bw, end=bw + inc)
        return res + c_res, F.concat(dense, c_dense, dim=1)


class Features(gluon.HybridBlock):
    """Stem, every dual-path block, ``cat-final`` and the final BN-ReLU: (N, C, H/32, W/32).

    Children are ``conv1_1``, ``conv2_1`` ... ``conv5_K`` and ``conv5_bn_ac``, as timm names
    them; see :meth:`run` for the parity taps.
    """

    def __init__(self, arch: Arch, epsilon: float = BN_EPS, **kwargs):
        super().__init__(prefix="", **kwargs)
        with self.name_scope():
            self.register_child(Stem(arch, epsilon), "conv1_1")
            names = []
            for spec in arch.blocks():
                names.append("conv%d_%d" % (spec.stage, spec.index))
                self.register_child(DualPathBlock(spec, epsilon), names[-1])
            self.register_child(BnAct(arch.num_features, variants.FINAL, epsilon), "conv5_bn_ac")
        self._block_names = tuple(names)

    def run(self, F, x, taps: Optional[dict] = None):
        """The forward pass; with ``taps``, also record each parity tap's output in it."""
        children = self._children
        x = children["conv1_1"](x)
        if taps is not None:
            taps["pool1"] = x
        out = (x,)
        for name in self._block_names:
            block = children[name]
            out = block(*out)
            if taps is not None:
                taps[block.spec.name + "_sum"], taps[block.spec.name + "_cat"] = out
        x = children["conv5_bn_ac"](F.concat(out[0], out[1], dim=1))
        if taps is not None:
            taps[variants.FEATURES_TAP] = x
        return x

    def hybrid_forward(self, F, x):
        return self.run(F, x)


class Classifier(nn.Dense):
    """The head: global average pool + FC ``(classes, C)`` named like the authors' ``fc6``.

    With ``mean_max=True``, the authors' test head (score.py): average pool 7x7 stride 1,
    the same FC weight used as a 1x1 convolution (reshaped to (N, C, 1, 1) in the graph),
    then 0.5 * (global average + global max) of the logit map. Both heads are the same
    function at 224x224; mean-max needs at least 224x224.
    """

    def __init__(self, classes: int, in_units: int, prefix: str, mean_max: bool = False, **kwargs):
        super().__init__(classes, in_units=in_units, prefix=prefix, **kwargs)
        self.mean_max = mean_max

    def hybrid_forward(self, F, x, weight, bias=None):
        if not self.mean_max:
            x = F.Pooling(x, pool_type="avg", global_pool=True, kernel=(1, 1))
            return F.FullyConnected(x, weight, bias, num_hidden=self._units, flatten=True)
        x = F.Pooling(x, pool_type="avg", kernel=(7, 7), stride=(1, 1), pad=(0, 0))
        x = F.Convolution(x, F.reshape(weight, shape=(0, 0, 1, 1)), bias, kernel=(1, 1),
                          num_filter=self._units, no_bias=False)
        x = 0.5 * (F.Pooling(x, pool_type="avg", global_pool=True, kernel=(1, 1))
                   + F.Pooling(x, pool_type="max", global_pool=True, kernel=(1, 1)))
        return F.flatten(x)


class DPN(gluon.HybridBlock):
    """A Dual Path Network: ``net(x)`` on a normalized NCHW batch returns logits (N, classes).

    ``arch`` is a :class:`variants.Arch` or an architecture name; ``classifier`` is ``fc6``
    or ``fc6-1k`` (the names of the released checkpoints' classifiers, see
    :mod:`dpn_gluon.variants`). The model's prefix is empty so that parameter names are the
    authors'; ``epsilon`` exists for the tests' negative control and should not be changed.
    """

    def __init__(self, arch, classes: int = 1000, classifier: str = "fc6", mean_max: bool = False,
                 epsilon: float = BN_EPS, **kwargs):
        super().__init__(prefix="", **kwargs)
        self.arch = variants.get_arch(arch) if isinstance(arch, str) else arch
        self.classes, self.classifier_name = classes, classifier
        with self.name_scope():
            self.features = Features(self.arch, epsilon)
            self.classifier = Classifier(classes, self.arch.num_features, classifier + "_",
                                         mean_max=mean_max)

    @property
    def mean_max(self) -> bool:
        return self.classifier.mean_max

    def hybrid_forward(self, F, x):
        return self.classifier(self.features(x))

    def tap_outputs(self, x) -> "OrderedDict":
        """Imperative run that returns {tap: NDArray} for every :func:`variants.tap_names` tap."""
        from mxnet import nd
        taps: "OrderedDict" = OrderedDict()
        feats = self.features.run(nd, x, taps)
        taps["logits"] = self.classifier(feats)
        return taps


def tap_outputs(net: DPN, x) -> "OrderedDict":
    """{tap name: NDArray} for ``variants.tap_names(net.arch)``: see :meth:`DPN.tap_outputs`."""
    return net.tap_outputs(x)


def get_model(name: str, classes: Optional[int] = None, mean_max: bool = False,
              classifier: Optional[str] = None, **kwargs) -> DPN:
    """An uninitialized DPN for an architecture (``dpn92``) or checkpoint (``dpn68-extra``) name."""
    arch, classes, classifier = variants.resolve(name, classes, classifier)
    return DPN(arch, classes, classifier, mean_max=mean_max, **kwargs)


def set_canonical(net: DPN, tensors, ctx=None) -> DPN:
    """Give ``net`` the weights of canonical (authors'-named) tensors; every one, exactly once.

    Tensors are cast to each parameter's dtype. Raises :class:`KeyMismatch` if the names or
    shapes are not exactly the network's.
    """
    import mxnet as mx

    from .formats.names import gluon_param_name
    params = net.collect_params()
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    spec = variants.tensor_spec(net.arch, net.classes, net.classifier_name)
    err = variants.compare(shapes, spec, net.arch.name, "weights")
    if err is not None:
        raise err
    ctx = ctx or mx.cpu()
    ctx = ctx if isinstance(ctx, list) else [ctx]
    arrays = {gluon_param_name(k): mx.nd.array(v, dtype=params[gluon_param_name(k)].dtype, ctx=ctx[0])
              for k, v in tensors.items()}
    params.load_dict(arrays, ctx=ctx)
    return net


def load_checkpoint(path, ctx=None, mean_max: bool = False, epoch: int = 0, **kwargs) -> DPN:
    """A ready DPN from an authors'-format checkpoint (``PREFIX``, ``PREFIX-0000.params`` or
    ``PREFIX-symbol.json``; the JSON itself is not needed).

    The variant, unit type, classifier name and class count come from the tensors' names and
    shapes (:func:`variants.identify`); anything else raises :class:`CheckpointError`.
    """
    from .checkpoint import read_checkpoint
    arch, classes, classifier, tensors = read_checkpoint(path, epoch)
    net = DPN(arch, classes, classifier, mean_max=mean_max, **kwargs)
    return set_canonical(net, tensors, ctx)


def dpn68(**kwargs):
    return get_model("dpn68", **kwargs)


def dpn68b(**kwargs):
    return get_model("dpn68b", **kwargs)


def dpn92(**kwargs):
    return get_model("dpn92", **kwargs)


def dpn98(**kwargs):
    return get_model("dpn98", **kwargs)


def dpn107(**kwargs):
    return get_model("dpn107", **kwargs)


def dpn131(**kwargs):
    return get_model("dpn131", **kwargs)


# -- Inference-only BatchNorm folding ------------------------------------------------------
#
# In these pre-activation units a BatchNorm directly follows a convolution in three places:
# the stem (conv -> BN), c1x1-a's conv -> c3x3-b's BN, and c3x3-b's conv -> c1x1-c's BN.
# With moving statistics that BN is an affine map per output channel of the conv, so it
# becomes the conv's weight scale and bias: W' = W * s, b' = beta - mean * s with
# s = gamma / sqrt(var + eps). The BNs that read a concatenation or a sum (every unit's
# first BN, the projections', the final one) have no conv to go into and stay BatchNorm.
# The folded network is a separate block tree with its own (unnamed) parameters: the
# normal model and its authors' names are untouched, and it cannot be trained.

class _FoldedUnit(gluon.HybridBlock):
    """[BN ->] ReLU -> Conv (+ bias): a BnActConv whose BN was folded into the previous conv
    (``bn=False``) and/or whose conv absorbed the next BN (``bias=True``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 bn: bool = True, bias: bool = False, epsilon: float = BN_EPS, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.bn = _bn(cin, "bn_", epsilon) if bn else None
            self.conv = nn.Conv2D(cout, kernel, strides=stride, padding=kernel // 2, groups=groups,
                                  use_bias=bias, in_channels=cin, prefix="conv_")

    def hybrid_forward(self, F, x):
        if self.bn is not None:
            x = self.bn(x)
        return self.conv(F.Activation(x, act_type="relu"))


class _FoldedStem(gluon.HybridBlock):
    """Conv (+ the folded stem BN as bias) -> ReLU -> max pool 3x3/2 pad 1."""

    def __init__(self, arch: Arch, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(arch.stem_channels, arch.stem_kernel, strides=2,
                                  padding=arch.stem_pad, use_bias=True, in_channels=3, prefix="conv_")

    def hybrid_forward(self, F, x):
        x = F.Activation(self.conv(x), act_type="relu")
        return F.Pooling(x, pool_type="max", kernel=(3, 3), stride=(2, 2), pad=(1, 1))


class _FoldedBlock(DualPathBlock):
    """A DualPathBlock with c3x3-b's and c1x1-c's BatchNorms folded into the convs before them.

    Only the children differ (same attribute names), so DualPathBlock's forward is reused;
    its __init__ is skipped because it would build the unfolded children and their names.
    """

    def __init__(self, spec: BlockSpec, epsilon: float = BN_EPS, **kwargs):
        gluon.HybridBlock.__init__(self, **kwargs)
        self.spec = spec
        self._bw, self._inc = spec.bw, spec.inc
        with self.name_scope():
            self._proj = "proj" if spec.has_proj else None
            if spec.has_proj:
                self.proj = _FoldedUnit(spec.in_channels, spec.bw + 2 * spec.inc,
                                        stride=spec.stride, epsilon=epsilon)
            self.c1x1_a = _FoldedUnit(spec.in_channels, spec.r, bias=True, epsilon=epsilon)
            self.c3x3_b = _FoldedUnit(spec.r, spec.r, kernel=3, stride=spec.stride,
                                      groups=spec.groups, bn=False, bias=True)
            if spec.b:
                self.c1x1_c = nn.Activation("relu")
                self.c1x1_c1 = nn.Conv2D(spec.bw, 1, use_bias=False, in_channels=spec.r)
                self.c1x1_c2 = nn.Conv2D(spec.inc, 1, use_bias=False, in_channels=spec.r)
            else:
                self.c1x1_c = _FoldedUnit(spec.r, spec.bw + spec.inc, bn=False)


class FoldedDPN(gluon.HybridBlock):
    """Inference-only DPN with BatchNorm folded into convolutions: see :func:`fold_batchnorm`."""

    def __init__(self, arch: Arch, classes: int, mean_max: bool = False,
                 epsilon: float = BN_EPS, **kwargs):
        super().__init__(**kwargs)
        self.arch, self.classes = arch, classes
        with self.name_scope():
            self.stem = _FoldedStem(arch)
            self.blocks = nn.HybridSequential()
            with self.blocks.name_scope():
                for spec in arch.blocks():
                    self.blocks.add(_FoldedBlock(spec, epsilon))
            self.final = BnAct(arch.num_features, "final_", epsilon)
            self.classifier = Classifier(classes, arch.num_features, "fc_", mean_max=mean_max)

    def hybrid_forward(self, F, x):
        out = (self.stem(x),)
        for block in self.blocks:
            out = block(*out)
        return self.classifier(self.final(F.concat(out[0], out[1], dim=1)))


def _bn_affine(bn: nn.BatchNorm):
    """(scale, shift) in float64 of an inference-mode BatchNorm: y = x * scale + shift."""
    eps = bn._kwargs["eps"]
    gamma, beta, mean, var = (p.data().asnumpy().astype("float64") for p in
                              (bn.gamma, bn.beta, bn.running_mean, bn.running_var))
    scale = gamma / (var + eps) ** 0.5
    return scale, beta - mean * scale


def _fold_into(conv: nn.Conv2D, bn: nn.BatchNorm):
    """(weight, bias) of ``conv`` followed by ``bn``, in float64."""
    scale, shift = _bn_affine(bn)
    weight = conv.weight.data().asnumpy().astype("float64")
    return weight * scale.reshape(-1, 1, 1, 1), shift


def fold_batchnorm(net: DPN, ctx=None) -> FoldedDPN:
    """An inference-only copy of ``net`` with each BatchNorm that directly follows a conv
    folded into it; the same logits (float32 rounding aside) in far fewer ops.

    ``net`` must be initialized and is not modified. The copy's weights are computed in
    float64 and cast to each conv's dtype; BN epsilon is read from ``net`` itself. ``ctx`` is
    a context or a list of them (several devices), default the CPU.
    """
    import mxnet as mx
    ctx = ctx or mx.cpu()
    first = ctx[0] if isinstance(ctx, (list, tuple)) else ctx
    feats = net.features._children
    eps = feats["conv5_bn_ac"].bn._kwargs["eps"]
    folded = FoldedDPN(net.arch, net.classes, net.mean_max, epsilon=eps)
    folded.initialize(ctx=ctx)
    values = {}

    def put(param, value):
        values[param] = value

    def copy_bn(dst: nn.BatchNorm, src: nn.BatchNorm):
        for name in ("gamma", "beta", "running_mean", "running_var"):
            put(getattr(dst, name), getattr(src, name).data().asnumpy())

    stem = feats["conv1_1"]
    w, b = _fold_into(stem.conv, stem.bn)
    put(folded.stem.conv.weight, w)
    put(folded.stem.conv.bias, b)
    for block, dst in zip((feats[n] for n in net.features._block_names), folded.blocks):
        if block._proj is not None:
            src = block._children[block._proj]
            copy_bn(dst.proj.bn, src.bn)
            put(dst.proj.conv.weight, src.conv.weight.data().asnumpy())
        copy_bn(dst.c1x1_a.bn, block.c1x1_a.bn)
        w, b = _fold_into(block.c1x1_a.conv, block.c3x3_b.bn)
        put(dst.c1x1_a.conv.weight, w)
        put(dst.c1x1_a.conv.bias, b)
        w, b = _fold_into(block.c3x3_b.conv, block.c1x1_c.bn)
        put(dst.c3x3_b.conv.weight, w)
        put(dst.c3x3_b.conv.bias, b)
        if block.spec.b:
            put(dst.c1x1_c1.weight, block.c1x1_c1.weight.data().asnumpy())
            put(dst.c1x1_c2.weight, block.c1x1_c2.weight.data().asnumpy())
        else:
            put(dst.c1x1_c.conv.weight, block.c1x1_c.conv.weight.data().asnumpy())
    copy_bn(folded.final.bn, feats["conv5_bn_ac"].bn)
    put(folded.classifier.weight, net.classifier.weight.data().asnumpy())
    put(folded.classifier.bias, net.classifier.bias.data().asnumpy())
    for param in folded.collect_params().values():
        param.set_data(mx.nd.array(values.pop(param), ctx=first, dtype=param.dtype))
    assert not values, "fold_batchnorm: %d values had no parameter" % len(values)
    return folded
