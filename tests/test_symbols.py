"""The authors' graphs (dpn_gluon.symbols) against the reference's literal names, shapes and counts.

The expected values here are copied from docs/reference/original-dpn.md (sections 5
and 7), which recorded them from the authors' own symbol files under MXNet 1.9.1: they are
independent of dpn_gluon.variants, which the symbols are built from.
"""
import numpy as np
import pytest

from dpn_gluon import variants

mx = pytest.importorskip("mxnet")
from dpn_gluon import symbols

# original-dpn.md section 5: DPN-92, stem and first two blocks (list_arguments order).
DPN92_ARGS_HEAD = """
conv1_x_1__conv_weight                      (64, 3, 7, 7)
conv1_x_1__relu-sp__bn_gamma                (64,)
conv1_x_1__relu-sp__bn_beta                 (64,)
conv2_x__1_c1x1-w(s/1)__bn__bn_gamma        (64,)
conv2_x__1_c1x1-w(s/1)__bn__bn_beta         (64,)
conv2_x__1_c1x1-w(s/1)__conv_weight         (288, 64, 1, 1)
conv2_x__1_c1x1-a__bn__bn_gamma             (64,)
conv2_x__1_c1x1-a__bn__bn_beta              (64,)
conv2_x__1_c1x1-a__conv_weight              (96, 64, 1, 1)
conv2_x__1_c3x3-b__bn__bn_gamma             (96,)
conv2_x__1_c3x3-b__bn__bn_beta              (96,)
conv2_x__1_c3x3-b__conv_weight              (96, 3, 3, 3)
conv2_x__1_c1x1-c__bn__bn_gamma             (96,)
conv2_x__1_c1x1-c__bn__bn_beta              (96,)
conv2_x__1_c1x1-c__conv_weight              (272, 96, 1, 1)
conv2_x__2_c1x1-a__bn__bn_gamma             (304,)
conv2_x__2_c1x1-a__bn__bn_beta              (304,)
conv2_x__2_c1x1-a__conv_weight              (96, 304, 1, 1)
conv2_x__2_c3x3-b__bn__bn_gamma             (96,)
conv2_x__2_c3x3-b__bn__bn_beta              (96,)
conv2_x__2_c3x3-b__conv_weight              (96, 3, 3, 3)
conv2_x__2_c1x1-c__bn__bn_gamma             (96,)
conv2_x__2_c1x1-c__bn__bn_beta              (96,)
conv2_x__2_c1x1-c__conv_weight              (272, 96, 1, 1)
"""
DPN92_ARGS_TAIL = """
conv5_x_x__relu-sp__bn_gamma                (2688,)
conv5_x_x__relu-sp__bn_beta                 (2688,)
fc6_weight                                  (1000, 2688)
fc6_bias                                    (1000,)
"""
DPN92_AUX_HEAD = """
conv1_x_1__relu-sp__bn_moving_mean          (64,)
conv1_x_1__relu-sp__bn_moving_var           (64,)
conv2_x__1_c1x1-w(s/1)__bn__bn_moving_mean  (64,)
conv2_x__1_c1x1-w(s/1)__bn__bn_moving_var   (64,)
conv2_x__1_c1x1-a__bn__bn_moving_mean       (64,)
conv2_x__1_c1x1-a__bn__bn_moving_var        (64,)
conv2_x__1_c3x3-b__bn__bn_moving_mean       (96,)
conv2_x__1_c3x3-b__bn__bn_moving_var        (96,)
conv2_x__1_c1x1-c__bn__bn_moving_mean       (96,)
conv2_x__1_c1x1-c__bn__bn_moving_var        (96,)
conv2_x__2_c1x1-a__bn__bn_moving_mean       (304,)
conv2_x__2_c1x1-a__bn__bn_moving_var        (304,)
conv2_x__2_c3x3-b__bn__bn_moving_mean       (96,)
conv2_x__2_c3x3-b__bn__bn_moving_var        (96,)
conv2_x__2_c1x1-c__bn__bn_moving_mean       (96,)
conv2_x__2_c1x1-c__bn__bn_moving_var        (96,)
"""
DPN92_AUX_TAIL = """
conv5_x_x__relu-sp__bn_moving_mean          (2688,)
conv5_x_x__relu-sp__bn_moving_var           (2688,)
"""
# original-dpn.md section 5: the b unit's c1x1-c entries (dpn68-extra / dpn68-5k).
DPN68B_C_UNIT = """
conv2_x__1_c1x1-c__bn_gamma        (128,)
conv2_x__1_c1x1-c__bn_beta         (128,)
conv2_x__1_c1x1-c1__conv_weight    (64, 128, 1, 1)
conv2_x__1_c1x1-c2__conv_weight    (16, 128, 1, 1)
conv2_x__1_c1x1-c__bn_moving_mean  (128,)
conv2_x__1_c1x1-c__bn_moving_var   (128,)
"""
# original-dpn.md section 5: DPN-68 shapes that differ from DPN-92.
DPN68_SHAPES = {
    "conv1_x_1__conv_weight": (10, 3, 3, 3),
    "conv2_x__1_c1x1-w(s/1)__conv_weight": (96, 10, 1, 1),
    "conv2_x__1_c1x1-a__conv_weight": (128, 10, 1, 1),
    "conv2_x__2_c1x1-a__conv_weight": (128, 112, 1, 1),
    "conv2_x__1_c3x3-b__conv_weight": (128, 4, 3, 3),
    "conv2_x__1_c1x1-c__conv_weight": (80, 128, 1, 1),
    "conv5_x_x__relu-sp__bn_gamma": (832,),
    "fc6_weight": (1000, 832),
}
# original-dpn.md section 5: array counts (arguments without data/softmax_label, aux states).
ARRAY_COUNTS = {"dpn68": (217, 144), "dpn68b": (239, 144), "dpn92": (289, 192),
                "dpn98": (307, 204), "dpn107": (334, 222), "dpn131": (406, 270)}
# original-dpn.md section 7 (and the issue): published parameter counts.
PARAM_COUNTS = {"dpn68": 12611602, "dpn68-extra": 12611602, "dpn68-5k": 15765340,
                "dpn92": 37668392, "dpn92-extra": 37668392, "dpn92-5k": 47848946,
                "dpn92-places365": 35960877, "dpn98": 61570728, "dpn107-extra": 86917800,
                "dpn131": 79254504}
# original-dpn.md section 2: (residual, dense) channels after each stage at 224.
STAGE_OUTPUTS = {
    "dpn68": [(64, 80), (128, 192), (256, 448), (512, 320)],
    "dpn92": [(256, 80), (512, 192), (1024, 528), (2048, 640)],
    "dpn98": [(256, 80), (512, 256), (1024, 704), (2048, 640)],
    "dpn107": [(256, 120), (512, 640), (1024, 1408), (2048, 640)],
    "dpn131": [(256, 96), (512, 320), (1024, 960), (2048, 640)],
}


def _listing(text):
    out = []
    for line in text.strip().splitlines():
        name, shape = line.split(None, 1)
        out.append((name, tuple(int(d) for d in shape.strip("()").split(",") if d.strip())))
    return out


def _shapes(sym, data=(1, 3, 224, 224)):
    args, _, aux = sym.infer_shape(data=data)
    arg = [(n, tuple(s)) for n, s in zip(sym.list_arguments(), args)
           if n not in ("data", "softmax_label")]
    return arg, [(n, tuple(s)) for n, s in zip(sym.list_auxiliary_states(), aux)]


@pytest.fixture(scope="module", params=list(variants.CHECKPOINTS))
def authors(request):
    name = request.param
    sym = symbols.get_symbol(name, head="authors", softmax=True)
    return name, sym, _shapes(sym)


def test_names_and_shapes_equal_tensor_spec(authors):
    name, sym, (args, aux) = authors
    spec = variants.tensor_spec(*variants.resolve(name))
    assert args == [(k, s) for k, s in spec.items() if not variants.is_aux(k)]
    assert aux == [(k, s) for k, s in spec.items() if variants.is_aux(k)]
    assert sym.list_outputs() == ["softmax_output"]


def test_parameter_count_is_published(authors):
    name, _, (args, _) = authors
    assert sum(int(np.prod(s)) for _, s in args) == PARAM_COUNTS[name]


def test_array_counts(authors):
    name, _, (args, aux) = authors
    arch = variants.CHECKPOINTS[name].arch
    assert (len(args), len(aux)) == ARRAY_COUNTS[arch]


@pytest.mark.parametrize("name", ["dpn92", "dpn92-extra", "dpn92-5k", "dpn92-places365"])
def test_dpn92_listing_from_reference(name):
    args, aux = _shapes(symbols.get_symbol(name, head="authors"))
    head, tail = _listing(DPN92_ARGS_HEAD), _listing(DPN92_ARGS_TAIL)
    ckpt = variants.CHECKPOINTS[name]
    tail[2:] = [(n.replace("fc6", ckpt.classifier), (ckpt.classes,) + s[1:]) for n, s in tail[2:]]
    assert args[:len(head)] == head
    assert args[-len(tail):] == tail
    assert aux[:len(_listing(DPN92_AUX_HEAD))] == _listing(DPN92_AUX_HEAD)
    assert aux[-2:] == _listing(DPN92_AUX_TAIL)


@pytest.mark.parametrize("name", ["dpn68-extra", "dpn68-5k"])
def test_b_unit_listing_from_reference(name):
    args, aux = _shapes(symbols.get_symbol(name, head="authors"))
    got = dict(args + aux)
    for key, shape in _listing(DPN68B_C_UNIT):
        assert got[key] == shape
    assert not any("c1x1-c__bn__bn" in k or "c1x1-c__conv" in k for k in got)


def test_dpn68_shapes_from_reference():
    args, _ = _shapes(symbols.get_symbol("dpn68", head="authors"))
    got = dict(args)
    for key, shape in DPN68_SHAPES.items():
        assert got[key] == shape


@pytest.mark.parametrize("arch", list(STAGE_OUTPUTS))
def test_stage_outputs_from_reference(arch):
    sym = symbols.get_symbol(arch, head="none")
    internals = sym.get_internals()
    last = {}
    for blk in variants.ARCHS[arch].blocks():
        last[blk.stage] = blk.name
    outs = []
    for stage in (2, 3, 4, 5):
        res = internals[last[stage] + "_sum_output"].infer_shape(data=(1, 3, 224, 224))[1][0]
        dense = internals[last[stage] + "_cat_output"].infer_shape(data=(1, 3, 224, 224))[1][0]
        assert res[2] == dense[2] == 224 // 2 ** stage
        outs.append((res[1], dense[1]))
    assert outs == STAGE_OUTPUTS[arch]


def test_op_names():
    def ops(name, head):
        nodes = symbols.get_symbol(name, head=head, softmax=True).get_internals().list_outputs()
        return {n[: -len("_output")] for n in nodes if n.endswith("_output")}
    std = ops("dpn92", "authors")
    for op in ["pool1", "conv1_x_1__relu-sp__bn", "conv1_x_1__relu-sp__relu",
               "conv2_x__1_c1x1-w(s/1)__bn__bn", "conv2_x__1_c1x1-w(s/1)__ac__relu",
               "conv2_x__1_c1x1-w(s/1)-split1", "conv2_x__1_c1x1-w(s/1)-split2",
               "conv3_x__1_c1x1-w(s/2)-split1", "conv2_x__2_cat-input", "conv3_x__1_cat-input",
               "conv2_x__1_c1x1-c-split1", "conv2_x__1_c1x1-c-split2", "conv2_x__1_sum",
               "conv2_x__1_cat", "conv5_x__3_c3x3-b__conv", "conv5_x_x_cat-final",
               "conv5_x_x__relu-sp__bn", "conv5_x_x__relu-sp__relu", "pool5", "flatten", "fc6",
               "softmax"]:
        assert op in std, op
    assert "conv2_x__1_cat-input" not in std      # the first block reads pool1 directly
    b = ops("dpn68-extra", "authors")
    assert {"conv2_x__1_c1x1-c__bn", "conv2_x__1_c1x1-c__relu", "conv2_x__1_c1x1-c1__conv",
            "conv2_x__1_c1x1-c2__conv", "fc6-1k"} <= b
    assert "conv2_x__1_c1x1-c-split1" not in b


def test_heads_keep_the_checkpoint_names():
    authors = _shapes(symbols.get_symbol("dpn68-extra", head="authors"))
    for head in ("global", "mean_max"):
        assert _shapes(symbols.get_symbol("dpn68-extra", head=head)) == authors
    args, _ = _shapes(symbols.get_symbol("dpn68-extra", head="none"))
    assert args == authors[0][:-2]
    with pytest.raises(ValueError):
        symbols.get_symbol("dpn68", head="gap")


def test_global_head_runs_at_any_size():
    sym = symbols.get_symbol("dpn92-places365")
    for hw in [(32, 32), (64, 96), (225, 227)]:
        assert sym.infer_shape(data=(2, 3) + hw)[1] == [(2, 365)]


def test_authors_head_equals_global_and_mean_max_at_224(seeded_weights, seeded_input, run_symbol,
                                                        rel_diff):
    w, x = seeded_weights("dpn68"), seeded_input((1, 3, 224, 224))
    ref = run_symbol(symbols.get_symbol("dpn68", head="authors"), w, data=x)[0]
    for head in ("global", "mean_max"):
        assert rel_diff(run_symbol(symbols.get_symbol("dpn68", head=head), w, data=x)[0], ref) < 1e-5


def test_tap_symbol(seeded_weights, seeded_input, run_symbol, rel_diff):
    arch = variants.ARCHS["dpn68b"]
    sym = symbols.tap_symbol("dpn68b")
    taps = variants.tap_names(arch)
    classifier = variants.resolve("dpn68b")[2]      # fc6-1k, as the released dpn68-extra
    assert sym.list_outputs() == [t + "_output" for t in taps[:-1]] + [classifier + "_output"]
    w, x = seeded_weights("dpn68b"), seeded_input()
    outs = run_symbol(sym, w, data=x)
    assert rel_diff(outs[-1], run_symbol(symbols.get_symbol("dpn68b"), w, data=x)[0]) == 0
    assert outs[0].shape == (2, 10, 8, 8)


def test_symbol_bn_uses_mxnet_default_eps_1e3(run_symbol):
    """The symbols pass no eps, like the authors; MXNet's default must be the 1e-3 they ran with."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 3, 3)).astype("float32")
    w = {"t__bn_gamma": rng.uniform(0.5, 1.5, 4), "t__bn_beta": rng.normal(0, 0.2, 4),
         "t__bn_moving_mean": rng.normal(0, 0.5, 4), "t__bn_moving_var": rng.uniform(1e-4, 2e-3, 4)}
    w = {k: v.astype("float32") for k, v in w.items()}
    got = run_symbol(symbols.bn(mx.sym.var("data"), "t"), w, data=x)[0]
    c = (slice(None), None, None)
    want = ((x - w["t__bn_moving_mean"][c]) / np.sqrt(w["t__bn_moving_var"][c] + 1e-3)
            * w["t__bn_gamma"][c] + w["t__bn_beta"][c])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert variants.BN_EPS == 1e-3
