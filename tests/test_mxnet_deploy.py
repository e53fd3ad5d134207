"""``dpn-convert --to mxnet`` writes the inference graph: what MXNet's own loaders do with it.

References: MXNet's own ``gluon.SymbolBlock.imports``, ``mx.model.load_checkpoint`` and
``mx.mod.Module`` on the written files, against the Gluon DPN (:mod:`dpn_gluon.model`) given
the same seeded weights; the seeded checkpoint writer's training graph (``SoftmaxOutput``,
like the released files) is read beside it by every reader of the project.
"""
import json
import warnings
from pathlib import Path

import pytest

mx = pytest.importorskip("mxnet")
pytest.importorskip("dpn_gluon.symbols")

from dpn_gluon import load_checkpoint
from dpn_gluon.convert.pipeline import convert
from dpn_gluon.formats import canonical as formats
from dpn_gluon.runtimes import load_runtime

TOL = 1e-5


@pytest.fixture(scope="module")
def written(seeded_checkpoint, tmp_path_factory):
    """(the seeded training-graph checkpoint, the prefix ``--to mxnet`` wrote from it)."""
    src = seeded_checkpoint("dpn68")
    prefix = tmp_path_factory.mktemp("deploy") / "dpn68-deploy"
    convert(src, "mxnet", out=prefix, check=False)
    return src, prefix


@pytest.fixture(scope="module")
def gluon_logits(gluon_net, seeded_input):
    x = seeded_input((2, 3, 64, 64))
    return x, gluon_net("dpn68")(mx.nd.array(x)).asnumpy()


def test_graph_ends_in_the_logits_without_a_label(written):
    _, prefix = written
    graph = json.loads((prefix.parent / (prefix.name + "-symbol.json")).read_text())
    ops = [n["op"] for n in graph["nodes"]]
    assert "SoftmaxOutput" not in ops
    assert graph["nodes"][graph["heads"][0][0]]["name"] == "fc6"
    sym = mx.sym.load(str(prefix) + "-symbol.json")
    assert "softmax_label" not in sym.list_arguments()


def test_symbol_block_imports_returns_the_gluon_logits(written, gluon_logits, rel_diff):
    _, prefix = written
    x, want = gluon_logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # MXNet's "Cannot decide type" for the inputs
        block = mx.gluon.SymbolBlock.imports(str(prefix) + "-symbol.json", ["data"],
                                             str(prefix) + "-0000.params")
    got = block(mx.nd.array(x)).asnumpy()
    assert got.shape == want.shape == (2, 1000)
    assert rel_diff(got, want) < TOL


def test_module_and_load_checkpoint(written, gluon_logits, rel_diff):
    _, prefix = written
    x, want = gluon_logits
    sym, args, aux = mx.model.load_checkpoint(str(prefix), 0)
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[("data", x.shape)], for_training=False)
    mod.set_params(args, aux)
    mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    assert rel_diff(mod.get_outputs()[0].asnumpy(), want) < TOL


def test_seeded_checkpoint_keeps_the_training_graph(written):
    src, _ = written
    sym = mx.sym.load(str(src.with_name("dpn68-symbol.json")))
    assert "softmax_label" in sym.list_arguments()
    # what --to mxnet avoids (apache/mxnet#19351): the label is asked for, and not in the file
    with pytest.raises(AssertionError, match="softmax_label"), warnings.catch_warnings():
        warnings.simplefilter("ignore")     # "Cannot decide type" for softmax_label
        mx.gluon.SymbolBlock.imports(str(src.with_name("dpn68-symbol.json")), ["data"], str(src))


def test_project_readers_take_both_graphs(written, gluon_logits, rel_diff, tmp_path):
    src, deployed = written
    x, want = gluon_logits
    # the training graph (SoftmaxOutput) and the inference graph, by prefix and by symbol file
    for i, prefix in enumerate((str(src)[: -len("-0000.params")], str(deployed))):
        net = load_checkpoint(prefix + "-symbol.json")
        assert rel_diff(net(mx.nd.array(x)).asnumpy(), want) < TOL
        runtime = load_runtime("gluon", Path(prefix + "-symbol.json"))     # dpn-evaluate's
        assert rel_diff(runtime(x), want) < TOL
        assert formats.read(prefix).arch.name == "dpn68"
        assert convert(prefix, "safetensors", out=tmp_path / ("%d.safetensors" % i),
                       numeric=False).ok
