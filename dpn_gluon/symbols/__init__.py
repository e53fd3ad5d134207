"""The authors' DPN graphs, rebuilt with ``mx.sym`` from the variant table.

The graphs reproduce cypw/DPNs (``settings/symbol_basic.py``, ``symbol_dpn.py``,
``symbol_dpn_b.py``, ``symbol_dpn-*.py`` and the mean-max head of ``score.py``) layer for
layer, so that their argument and auxiliary-state names are exactly the names stored in the
released ``PREFIX-0000.params`` (without ``arg:``/``aux:``) and their op names are the
authors' (``pool1``, ``conv3_x__1_sum``, ``conv5_x_x__relu-sp__relu``, ``fc6``...).
Written from the facts in docs/reference/original-dpn.md, sections 3-5; every width
comes from :mod:`dpn_gluon.variants`.

BatchNorm is built as the authors built it: ``fix_gamma=False``, momentum 0.9 and **no
eps argument**, so MXNet's own default (1e-3) applies, as it did for the checkpoints. That
keeps these graphs an independent reference for the Gluon blocks, which set the epsilon
explicitly from :data:`dpn_gluon.variants.BN_EPS`.

MXNet is imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

from typing import Optional

from .. import variants
from ..variants import BN_MOMENTUM, FINAL, STEM, BlockSpec

HEADS = ("global", "authors", "mean_max", "none")


def _mx():
    import mxnet as mx
    return mx


# -- symbol_basic.py ---------------------------------------------------------------------

def bn(data, name):
    """``BN(name=X)``: op ``X__bn`` with ``X__bn_{gamma,beta,moving_mean,moving_var}``."""
    return _mx().sym.BatchNorm(data=data, fix_gamma=False, momentum=BN_MOMENTUM, name=name + "__bn")


def act(data, name):
    """``AC(name=X)``: ReLU op ``X__relu``."""
    return _mx().sym.Activation(data=data, act_type="relu", name=name + "__relu")


def bn_act(data, name):
    """``BN_AC(name=X)``: BN ``X__bn`` (single), ReLU ``X__relu``."""
    return act(bn(data, name), name)


def conv(data, name, num_filter, kernel=1, stride=1, pad=0, num_group=1):
    """``Conv(name=X)``: bias-free convolution ``X__conv`` with ``X__conv_weight``."""
    return _mx().sym.Convolution(data=data, num_filter=num_filter, kernel=(kernel, kernel),
                                 stride=(stride, stride), pad=(pad, pad), num_group=num_group,
                                 no_bias=True, name=name + "__conv")


def bn_act_conv(data, name, num_filter, kernel=1, stride=1, pad=0, num_group=1):
    """``BN_AC_Conv(name=X)``: BN ``X__bn__bn`` (double), ReLU ``X__ac__relu``, conv ``X__conv``."""
    x = act(bn(data, name + "__bn"), name + "__ac")
    return conv(x, name, num_filter, kernel, stride, pad, num_group)


# -- symbol_dpn.py / symbol_dpn_b.py -----------------------------------------------------

def dual_path_block(data, blk: BlockSpec):
    """One ``DualPathFactory`` call: ``data`` is pool1 (conv2_x__1) or ``[res, dense]``.

    Returns ``[res, dense]``: ``<name>_sum`` and ``<name>_cat``.
    """
    mx = _mx()
    p = blk.name + "_"
    if isinstance(data, (list, tuple)):
        data_in = mx.sym.Concat(data[0], data[1], dim=1, name=p + "cat-input")
    else:
        data_in = data
    if blk.has_proj:
        unit = p + blk.proj_unit
        w = bn_act_conv(data_in, unit, blk.bw + 2 * blk.inc, stride=blk.stride)
        res = mx.sym.slice_axis(w, axis=1, begin=0, end=blk.bw, name=unit + "-split1")
        dense = mx.sym.slice_axis(w, axis=1, begin=blk.bw, end=blk.bw + 2 * blk.inc,
                                  name=unit + "-split2")
    else:
        res, dense = data
    x = bn_act_conv(data_in, p + variants.UNIT_A, blk.r)
    x = bn_act_conv(x, p + variants.UNIT_B, blk.r, kernel=3, stride=blk.stride, pad=1,
                    num_group=blk.groups)
    if blk.b:
        x = bn_act(x, p + variants.UNIT_C)
        c_res = conv(x, p + variants.UNIT_C1, blk.bw)
        c_dense = conv(x, p + variants.UNIT_C2, blk.inc)
    else:
        unit = p + variants.UNIT_C
        x = bn_act_conv(x, unit, blk.bw + blk.inc)
        c_res = mx.sym.slice_axis(x, axis=1, begin=0, end=blk.bw, name=unit + "-split1")
        c_dense = mx.sym.slice_axis(x, axis=1, begin=blk.bw, end=blk.bw + blk.inc,
                                    name=unit + "-split2")
    res = mx.sym.ElementWiseSum(res, c_res, name=p + "sum")
    dense = mx.sym.Concat(dense, c_dense, dim=1, name=p + "cat")
    return [res, dense]


# -- symbol_dpn-*.py ---------------------------------------------------------------------

def features(arch: variants.Arch, data=None):
    """``get_before_pool()``: stem, every dual-path block, ``cat-final``, final BN-ReLU."""
    mx = _mx()
    data = mx.sym.var("data") if data is None else data
    x = conv(data, STEM, arch.stem_channels, kernel=arch.stem_kernel, stride=2, pad=arch.stem_pad)
    x = bn_act(x, STEM + "__relu-sp")
    x = mx.sym.Pooling(x, pool_type="max", kernel=(3, 3), stride=(2, 2), pad=(1, 1), name="pool1")
    for blk in arch.blocks():
        x = dual_path_block(x, blk)
    x = mx.sym.Concat(x[0], x[1], dim=1, name="conv5_x_x_cat-final")
    return bn_act(x, FINAL)


def get_symbol(name: str, classes: Optional[int] = None, classifier: Optional[str] = None,
               head: str = "global", softmax: bool = False):
    """The authors' graph for an architecture or checkpoint name; input ``data``.

    ``head``:

    - ``'authors'``: ``get_linear()``: ``pool5`` (avg 7x7, stride 1), ``flatten`` and the
      FullyConnected classifier. Exactly the training graph; runs at 224x224 only.
    - ``'global'``: the same with a global average ``pool5``: the same function at 224,
      and any input of at least 32x32.
    - ``'mean_max'``: score.py's test head: ``pool5`` avg 7x7 stride 1, the classifier as a
      1x1 Convolution over the FC weight reshaped to (N, C, 1, 1) inside the graph (so the
      arguments keep the checkpoint's names and shapes), then 0.5 * (global average +
      global max) of the logit map and ``flatten``. Needs at least 224x224.
    - ``'none'``: the features, ``conv5_x_x__relu-sp__relu``.

    ``softmax=True`` appends ``SoftmaxOutput`` named ``softmax``, like the authors'
    ``get_symbol`` (and adds the ``softmax_label`` argument).
    """
    if head not in HEADS:
        raise ValueError("unknown head %r (choose from %s)" % (head, ", ".join(HEADS)))
    mx = _mx()
    arch, classes, classifier = variants.resolve(name, classes, classifier)
    x = features(arch)
    if head == "none":
        return x
    if head == "mean_max":
        weight = mx.sym.var(classifier + "_weight", shape=(classes, arch.num_features))
        bias = mx.sym.var(classifier + "_bias", shape=(classes,))
        x = mx.sym.Pooling(x, pool_type="avg", kernel=(7, 7), stride=(1, 1), pad=(0, 0), name="pool5")
        x = mx.sym.Convolution(x, weight=mx.sym.Reshape(weight, shape=(classes, arch.num_features, 1, 1)),
                               bias=bias, num_filter=classes, kernel=(1, 1), no_bias=False,
                               name=classifier)
        avg = mx.sym.Pooling(x, pool_type="avg", global_pool=True, kernel=(1, 1), name="pool6_avg")
        top = mx.sym.Pooling(x, pool_type="max", global_pool=True, kernel=(1, 1), name="pool6_max")
        x = mx.sym.Flatten(0.5 * (avg + top), name="flatten")
    else:
        if head == "authors":
            x = mx.sym.Pooling(x, pool_type="avg", kernel=(7, 7), stride=(1, 1), name="pool5")
        else:
            x = mx.sym.Pooling(x, pool_type="avg", global_pool=True, kernel=(1, 1), name="pool5")
        x = mx.sym.Flatten(x, name="flatten")
        x = mx.sym.FullyConnected(x, num_hidden=classes, name=classifier)
    if softmax:
        x = mx.sym.SoftmaxOutput(x, name="softmax")
    return x


def inference_symbol(name: str, classes: Optional[int] = None, classifier: Optional[str] = None):
    """The graph ``dpn-convert --to mxnet`` writes: input ``data``, output the logits.

    :func:`get_symbol` with the global-average head and no ``SoftmaxOutput``: a graph ending
    in ``SoftmaxOutput`` has a ``softmax_label`` argument, which
    ``gluon.SymbolBlock.imports(sym, ['data'], params)`` then asks for (apache/mxnet#19351,
    docs/reference/mxnet-1.9.md section 7), and it returns probabilities, not logits. The global
    ``pool5`` is the authors' 7x7 one at 224x224 and runs at any input of at least 32x32.
    ``mx.mod.Module`` binds it with ``label_names=None``. The argument names are the
    authors', so the released ``.params`` load into it unchanged.
    """
    return get_symbol(name, classes, classifier, head="global")


def tap_symbol(name: str, classes: Optional[int] = None, classifier: Optional[str] = None,
               head: str = "global"):
    """A ``mx.sym.Group`` of every parity tap, in :func:`variants.tap_names` order.

    Each tap but the last is ``get_internals()['<tap>_output']``; the last (``logits``) is
    the output of :func:`get_symbol` with ``head``.
    """
    mx = _mx()
    arch, _, _ = variants.resolve(name, classes, classifier)
    sym = get_symbol(name, classes, classifier, head=head)
    internals = sym.get_internals()
    taps = variants.tap_names(arch)
    outputs = [internals[t + "_output"] for t in taps[:-1]]
    return mx.sym.Group(outputs + [sym])


def block_symbol(blk: BlockSpec):
    """One dual-path block alone: inputs ``data`` (proj blocks) or ``res`` and ``dense``.

    Outputs a group ``[<name>_sum, <name>_cat]``; for the per-block tests.
    """
    mx = _mx()
    if blk.kind == "proj":
        data = mx.sym.var("data")
    else:
        data = [mx.sym.var("res"), mx.sym.var("dense")]
    return mx.sym.Group(dual_path_block(data, blk))


def run_symbol(sym, tensors, ctx=None, **inputs):
    """Run ``sym`` in inference mode (``is_train=False``: moving statistics) with an executor.

    ``tensors`` maps canonical names to arrays (aux states by :func:`variants.is_aux`);
    ``inputs`` gives the data arguments (``data=...``). Arguments the graph does not use are
    ignored; a missing one is an error. Returns a list of numpy arrays, one per output.
    """
    import numpy as np
    mx = _mx()
    ctx = ctx or mx.cpu()
    arrays = dict(tensors)
    arrays.update(inputs)
    args = {n: mx.nd.array(np.asarray(arrays[n]), ctx=ctx, dtype=np.asarray(arrays[n]).dtype)
            for n in sym.list_arguments()}
    aux = {n: mx.nd.array(np.asarray(arrays[n]), ctx=ctx, dtype=np.asarray(arrays[n]).dtype)
           for n in sym.list_auxiliary_states()}
    exe = sym.bind(ctx, args, aux_states=aux, grad_req="null")
    return [o.asnumpy() for o in exe.forward(is_train=False)]
