"""Gluon DPN (dpn_gluon.model) against the authors' graphs (dpn_gluon.symbols) on seeded weights.

The reference is the symbol run by an MXNet executor: its BatchNorm takes MXNet's default
epsilon (the authors' 1e-3, checked in test_symbols.py), and every weight, gamma, beta and
moving statistic is random (checkpoint.seeded_tensors), so a wrong epsilon or swapped
gamma/beta breaks the 1e-5 tolerance (negative controls below show it does).
"""
from collections import OrderedDict

import numpy as np
import pytest

from dpn_gluon import variants
from dpn_gluon.formats import mxparams, names

mx = pytest.importorskip("mxnet")
from dpn_gluon import model, symbols

TOL = 1e-5


def _unit(arch):
    return "b" if arch.b else "standard"


# -- names -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(variants.ARCHS) + ["dpn68-extra", "dpn92-5k", "dpn107-extra"])
def test_param_names_are_the_authors(name):
    arch, classes, classifier = variants.resolve(name)
    net = model.get_model(name)
    spec = variants.tensor_spec(arch, classes, classifier)
    params = net.collect_params()
    assert list(params.keys()) == [names.gluon_param_name(k) for k in spec]
    assert [tuple(p.shape) for p in params.values()] == list(spec.values())


@pytest.mark.parametrize("name", list(variants.ARCHS) + ["dpn68-extra", "dpn92-5k"])
def test_structural_names_are_the_gluon_scheme(name):
    """The keys save_parameters() writes (Block._collect_params_with_prefix, which it calls)."""
    arch, classes, classifier = variants.resolve(name)
    net = model.get_model(name)
    spec = variants.tensor_spec(arch, classes, classifier)
    want = names.expected_keys(spec, "gluon", _unit(arch), classifier)
    got = net._collect_params_with_prefix()
    assert {k: tuple(p.shape) for k, p in got.items()} == dict(want)


@pytest.mark.parametrize("name", ["dpn68", "dpn68-extra"])
def test_save_parameters_writes_the_gluon_scheme(name, tmp_path):
    arch, classes, classifier = variants.resolve(name)
    net = model.get_model(name)
    net.initialize(mx.init.Zero())
    path = tmp_path / "net.params"
    net.save_parameters(str(path))
    spec = variants.tensor_spec(arch, classes, classifier)
    want = names.expected_keys(spec, "gluon", _unit(arch), classifier)
    assert [(k, v.shape) for k, v in mxparams.load(path).items()] == list(want.items())


def test_get_model_resolves_checkpoint_names():
    net = model.get_model("dpn68-5k")
    assert (net.arch.name, net.classes, net.classifier_name) == ("dpn68b", 4786, "fc6")
    net = model.get_model("dpn92-extra")
    assert (net.arch.name, net.classes, net.classifier_name) == ("dpn92", 1000, "fc6-1k")
    net = model.get_model("dpn92", classes=10)
    assert (net.classes, net.classifier_name, net.mean_max) == (10, "fc6", False)
    assert model.get_model("dpn68", mean_max=True).mean_max


# -- parity with the authors' graph, every architecture ------------------------------------

@pytest.fixture(scope="module", params=list(variants.ARCHS))
def parity(request, seeded_weights, seeded_input, run_symbol, gluon_net):
    name = request.param
    x = seeded_input((2, 3, 32, 32))
    ref = run_symbol(symbols.get_symbol(name), seeded_weights(name), data=x)[0]
    return name, x, ref, gluon_net(name)


def test_imperative_equals_symbol(parity, rel_diff):
    name, x, ref, net = parity
    out = net(mx.nd.array(x)).asnumpy()
    assert out.shape == ref.shape == (2, variants.resolve(name)[1])
    assert np.abs(ref).max() > 0.5 and ref.std() > 0.1       # logits O(1), with a real spread
    assert rel_diff(out, ref) < TOL


def test_hybridized_equals_symbol(parity, rel_diff):
    name, x, ref, net = parity
    net.hybridize()
    try:
        assert rel_diff(net(mx.nd.array(x)).asnumpy(), ref) < TOL
    finally:
        net.hybridize(False)


@pytest.mark.parametrize("name", ["dpn68", "dpn68b"])
def test_taps_equal_symbol_taps(name, seeded_weights, seeded_input, run_symbol, gluon_net, rel_diff):
    x = seeded_input((1, 3, 64, 64))
    ref = run_symbol(symbols.tap_symbol(name), seeded_weights(name), data=x)
    taps = model.tap_outputs(gluon_net(name), mx.nd.array(x))
    assert list(taps) == variants.tap_names(variants.ARCHS[name])
    for (tap, got), want in zip(taps.items(), ref):
        assert rel_diff(got.asnumpy(), want) < TOL, tap


def test_other_input_sizes(seeded_weights, seeded_input, run_symbol, gluon_net, rel_diff):
    net = gluon_net("dpn68-5k", hybridize=True)
    w = seeded_weights("dpn68-5k")
    for shape in [(1, 3, 64, 96), (1, 3, 47, 33)]:
        x = seeded_input(shape)
        ref = run_symbol(symbols.get_symbol("dpn68-5k"), w, data=x)[0]
        assert rel_diff(net(mx.nd.array(x)).asnumpy(), ref) < TOL


# -- negative controls: the tolerance catches the classic porting mistakes ----------------

@pytest.fixture(scope="module")
def dpn68_ref(seeded_weights, seeded_input, run_symbol):
    x = seeded_input((2, 3, 32, 32))
    return x, run_symbol(symbols.get_symbol("dpn68"), seeded_weights("dpn68"), data=x)[0]


def test_gluon_default_epsilon_fails(dpn68_ref, gluon_net, rel_diff):
    x, ref = dpn68_ref
    assert rel_diff(gluon_net("dpn68")(mx.nd.array(x)).asnumpy(), ref) < TOL
    wrong = gluon_net("dpn68", epsilon=1e-5)
    assert rel_diff(wrong(mx.nd.array(x)).asnumpy(), ref) > 100 * TOL


def test_swapped_gamma_beta_fails(dpn68_ref, seeded_weights, rel_diff):
    x, ref = dpn68_ref
    w = OrderedDict(seeded_weights("dpn68"))
    for key in [k for k in w if k.endswith("_gamma")]:
        beta = key[: -len("gamma")] + "beta"
        w[key], w[beta] = w[beta], w[key]
    net = model.set_canonical(model.get_model("dpn68"), w)
    assert rel_diff(net(mx.nd.array(x)).asnumpy(), ref) > 100 * TOL


def test_swapped_moving_stats_fail(dpn68_ref, seeded_weights, rel_diff):
    x, ref = dpn68_ref
    w = OrderedDict(seeded_weights("dpn68"))
    key = "conv3_x__1_c1x1-a__bn__bn_moving_mean"
    var = key.replace("mean", "var")
    w[key], w[var] = w[var], w[key]
    net = model.set_canonical(model.get_model("dpn68"), w)
    assert rel_diff(net(mx.nd.array(x)).asnumpy(), ref) > 100 * TOL


# -- DualPathBlock alone, against one block of the authors' graph --------------------------

def _first(arch, kind):
    return next(b for b in variants.ARCHS[arch].blocks() if b.kind == kind)


@pytest.mark.parametrize("arch", ["dpn68", "dpn68b"])
@pytest.mark.parametrize("kind", ["proj", "down", "normal"])
@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_dual_path_block(arch, kind, hybridize, seeded_weights, run_symbol, rel_diff):
    spec = _first(arch, kind)
    w = {k: v for k, v in seeded_weights(arch).items() if k.startswith(spec.name + "_")}
    block = model.DualPathBlock(spec)
    assert list(block.collect_params().keys()) == [
        names.gluon_param_name(k) for k, _ in variants.block_tensors(spec)]
    block.collect_params().load_dict(
        {names.gluon_param_name(k): mx.nd.array(v) for k, v in w.items()})
    if hybridize:
        block.hybridize()
    rng = np.random.default_rng(3)
    size = 8
    if kind == "proj":
        inputs = {"data": rng.normal(size=(2, spec.in_channels, size, size)).astype("float32")}
    else:
        dense = spec.in_channels - (spec.bw if kind == "normal" else _res_in(arch, spec))
        inputs = {"res": rng.normal(size=(2, spec.in_channels - dense, size, size)).astype("float32"),
                  "dense": rng.normal(size=(2, dense, size, size)).astype("float32")}
    ref = run_symbol(symbols.block_symbol(spec), w, **inputs)
    out = block(*[mx.nd.array(v) for v in inputs.values()])
    assert len(out) == 2
    stride = spec.stride
    assert ref[0].shape == (2, spec.bw, size // stride, size // stride)
    for got, want in zip(out, ref):
        assert rel_diff(got.asnumpy(), want) < TOL


def _res_in(arch, spec):
    """Residual width entering a 'down' block: the previous stage's bw."""
    prev = [b for b in variants.ARCHS[arch].blocks() if b.stage == spec.stage - 1]
    return prev[-1].bw


# -- the b unit is a reparameterization of the standard unit ------------------------------

def test_b_unit_equals_standard_with_concatenated_convs(seeded_weights, seeded_input, run_symbol,
                                                        gluon_net, rel_diff):
    wb = seeded_weights("dpn68b")
    ws = OrderedDict()
    for key, shape in variants.tensor_spec(variants.ARCHS["dpn68"]).items():
        if "_c1x1-c__bn__bn_" in key:
            ws[key] = wb[key.replace("__bn__bn_", "__bn_")]
        elif key.endswith("_c1x1-c__conv_weight"):
            p = key[: -len("c__conv_weight")]
            ws[key] = np.concatenate([wb[p + "c1__conv_weight"], wb[p + "c2__conv_weight"]])
        else:
            ws[key] = wb[key.replace("fc6", "fc6-1k")] if key.startswith("fc6") else wb[key]
        assert ws[key].shape == shape
    x = seeded_input()
    ref = run_symbol(symbols.get_symbol("dpn68b"), wb, data=x)[0]
    b = gluon_net("dpn68b")(mx.nd.array(x)).asnumpy()
    standard = model.set_canonical(model.get_model("dpn68"), ws)(mx.nd.array(x)).asnumpy()
    assert rel_diff(b, ref) < TOL
    assert rel_diff(standard, b) < TOL


# -- the authors' mean-max test head ------------------------------------------------------

@pytest.fixture(scope="module")
def mean_max_net(gluon_net):
    return gluon_net("dpn68", mean_max=True)


@pytest.fixture(scope="module")
def ref320(seeded_weights, seeded_input, run_symbol):
    x = seeded_input((1, 3, 320, 320))
    w = seeded_weights("dpn68")
    mean_max = run_symbol(symbols.get_symbol("dpn68", head="mean_max"), w, data=x)[0]
    plain = run_symbol(symbols.get_symbol("dpn68"), w, data=x)[0]
    return x, mean_max, plain


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_mean_max_head_at_320(hybridize, mean_max_net, ref320, rel_diff):
    x, ref, plain = ref320
    mean_max_net.hybridize(hybridize)
    got = mean_max_net(mx.nd.array(x)).asnumpy()
    assert rel_diff(got, ref) < TOL
    assert rel_diff(got, plain) > 1e-2


def test_plain_head_at_320(ref320, gluon_net, rel_diff):
    x, _, plain = ref320
    assert rel_diff(gluon_net("dpn68")(mx.nd.array(x)).asnumpy(), plain) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", [a for a in variants.ARCHS if a != "dpn68"])
def test_mean_max_head_at_320_every_arch(name, seeded_weights, seeded_input, run_symbol, gluon_net,
                                         rel_diff):
    x = seeded_input((1, 3, 320, 320))
    ref = run_symbol(symbols.get_symbol(name, head="mean_max"), seeded_weights(name), data=x)[0]
    got = gluon_net(name, mean_max=True, hybridize=True)(mx.nd.array(x)).asnumpy()
    assert rel_diff(got, ref) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", list(variants.CHECKPOINTS))
def test_full_size_224_every_checkpoint(name, seeded_weights, seeded_input, run_symbol, gluon_net,
                                        rel_diff):
    x = seeded_input((2, 3, 224, 224))
    ref = run_symbol(symbols.get_symbol(name, head="authors"), seeded_weights(name), data=x)[0]
    got = gluon_net(name, hybridize=True)(mx.nd.array(x)).asnumpy()
    assert rel_diff(got, ref) < TOL


def test_mean_max_head_equals_plain_at_224(mean_max_net, seeded_input, gluon_net, rel_diff):
    x = mx.nd.array(seeded_input((1, 3, 224, 224)))
    mean_max_net.hybridize(False)
    assert rel_diff(mean_max_net(x).asnumpy(), gluon_net("dpn68")(x).asnumpy()) < TOL


# -- export and reload --------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(gluon_net, seeded_input, tmp_path_factory):
    net = gluon_net("dpn68-extra", hybridize=True)
    x = mx.nd.array(seeded_input())
    out = net(x).asnumpy()
    prefix = tmp_path_factory.mktemp("export") / "dpn68-extra"
    net.export(str(prefix))
    return net, x, out, prefix


@pytest.mark.filterwarnings("ignore:Cannot decide type")
def test_export_symbol_block(exported, rel_diff):
    _, x, out, prefix = exported
    block = mx.gluon.SymbolBlock.imports(str(prefix) + "-symbol.json", ["data"],
                                         str(prefix) + "-0000.params")
    assert rel_diff(block(x).asnumpy(), out) < 1e-6


def test_export_module(exported, rel_diff):
    _, x, out, prefix = exported
    sym, args, aux = mx.model.load_checkpoint(str(prefix), 0)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", x.shape)], for_training=False)
    mod.set_params(args, aux)
    mod.forward(mx.io.DataBatch([x]), is_train=False)
    assert rel_diff(mod.get_outputs()[0].asnumpy(), out) < 1e-6


def test_export_names_are_the_authors(exported):
    _, _, _, prefix = exported
    saved = mxparams.load(str(prefix) + "-0000.params")
    spec = variants.tensor_spec(*variants.resolve("dpn68-extra"))
    want = {("aux:" if variants.is_aux(k) else "arg:") + names.gluon_param_name(k): s
            for k, s in spec.items()}
    assert {k: v.shape for k, v in saved.items()} == want


def test_save_and_load_parameters(exported, tmp_path, rel_diff):
    net, x, out, _ = exported
    structural = tmp_path / "structural.params"
    net.save_parameters(str(structural))
    legacy = tmp_path / "legacy.params"
    net.collect_params().save(str(legacy))           # keys are the Gluon parameter names
    assert next(iter(mxparams.load(legacy))) == "conv1_x_1__conv_weight"
    for path in (structural, legacy):
        fresh = model.get_model("dpn68-extra")
        fresh.load_parameters(str(path))
        assert rel_diff(fresh(x).asnumpy(), out) == 0


# -- load_checkpoint ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dpn68", "dpn68-extra", "dpn68-5k"])
def test_load_checkpoint(name, seeded_checkpoint, seeded_weights, seeded_input, run_symbol, rel_diff):
    path = seeded_checkpoint(name, symbol=False)
    net = model.load_checkpoint(path)
    arch, classes, classifier = variants.resolve(name)
    assert (net.arch, net.classes, net.classifier_name) == (arch, classes, classifier)
    x = seeded_input()
    ref = run_symbol(symbols.get_symbol(name), seeded_weights(name), data=x)[0]
    assert rel_diff(net(mx.nd.array(x)).asnumpy(), ref) < TOL


def test_load_checkpoint_path_forms(seeded_checkpoint, seeded_input, rel_diff):
    import dpn_gluon
    params = seeded_checkpoint("dpn68")
    prefix = str(params)[: -len("-0000.params")]
    x = mx.nd.array(seeded_input())
    ref = model.load_checkpoint(params)(x).asnumpy()
    for path in (prefix, prefix + "-symbol.json"):
        assert rel_diff(dpn_gluon.load_checkpoint(path)(x).asnumpy(), ref) == 0
    assert dpn_gluon.load_checkpoint(prefix, mean_max=True).mean_max


def test_set_canonical_rejects_wrong_tensors(seeded_weights):
    w = OrderedDict(seeded_weights("dpn68"))
    w.pop("fc6_bias")
    with pytest.raises(variants.KeyMismatch, match="fc6_bias"):
        model.set_canonical(model.get_model("dpn68"), w)


def test_demo():
    import io

    from dpn_gluon import demo
    out = io.StringIO()
    assert demo.run("dpn68", batch=1, out=out)
    text = out.getvalue()
    assert "imperative" in text and "hybridized" in text and "match" in text
