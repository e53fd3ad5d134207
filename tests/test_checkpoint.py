"""The authors' checkpoint format (dpn_gluon.checkpoint): seeded writing, reading, bad input."""
import numpy as np
import pytest

from dpn_gluon import checkpoint, variants
from dpn_gluon.errors import CheckpointError, KeyMismatch
from dpn_gluon.formats import mxparams
from dpn_gluon.safeio.atomic import OutputExists


def _one_line(err):
    assert "\n" not in str(err.value)
    return str(err.value)


# -- seeded tensors -----------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.slow] if ckpt.mib > 150 else [])
    for name, ckpt in variants.CHECKPOINTS.items()])
def test_seeded_tensors_follow_the_spec(name):
    w = checkpoint.seeded_tensors(name)
    spec = variants.tensor_spec(*variants.resolve(name))
    assert [(k, v.shape, v.dtype) for k, v in w.items()] == [(k, s, np.float32) for k, s in spec.items()]


def test_seeded_tensors_are_deterministic_and_randomized(seeded_weights):
    a, b = checkpoint.seeded_tensors("dpn68", seed=0), seeded_weights("dpn68", 0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = checkpoint.seeded_tensors("dpn68", seed=1)
    assert not np.array_equal(a["fc6_weight"], c["fc6_weight"])
    gammas = np.concatenate([v for k, v in a.items() if k.endswith("_gamma")])
    betas = np.concatenate([v for k, v in a.items() if k.endswith("_beta")])
    means = np.concatenate([v for k, v in a.items() if k.endswith("_moving_mean")])
    var = np.concatenate([v for k, v in a.items() if k.endswith("_moving_var")])
    assert 0.5 <= gammas.min() and gammas.max() <= 1.5 and abs(gammas.mean() - 1) < 0.05
    assert 0.15 < betas.std() < 0.25 and 0.4 < means.std() < 0.6
    assert 0.5 <= var.min() and var.max() <= 2.0 and var.std() > 0.3
    assert checkpoint.seeded_tensors("dpn68", dtype="float16")["fc6_weight"].dtype == np.float16


# -- writing ------------------------------------------------------------------------------

def test_write_seeded_checkpoint_layout(seeded_checkpoint, seeded_weights):
    path = seeded_checkpoint("dpn68-extra")
    assert path.name == "dpn68-extra-0000.params"
    assert path.with_name("dpn68-extra-symbol.json").is_file()
    raw = mxparams.load(path)
    w = seeded_weights("dpn68-extra")
    want = (["arg:" + k for k in w if not variants.is_aux(k)]
            + ["aux:" + k for k in w if variants.is_aux(k)])
    assert list(raw) == want
    assert all(np.array_equal(raw[k], w[k.partition(":")[2]]) for k in raw)


def test_write_without_symbol(seeded_checkpoint):
    path = seeded_checkpoint("dpn68", seed=5, symbol=False)
    assert not path.with_name("dpn68-symbol.json").exists()


def test_refuses_to_overwrite(tmp_path):
    path = checkpoint.write_seeded_checkpoint(tmp_path / "m", "dpn68", symbol=False)
    before = path.read_bytes()
    with pytest.raises(OutputExists):
        checkpoint.write_seeded_checkpoint(tmp_path / "m", "dpn68", seed=1, symbol=False)
    assert path.read_bytes() == before
    checkpoint.write_seeded_checkpoint(tmp_path / "m", "dpn68", seed=1, symbol=False, force=True)
    assert path.read_bytes() != before


def test_mxnet_reads_the_seeded_checkpoint(seeded_checkpoint, seeded_weights):
    mx = pytest.importorskip("mxnet")
    path = seeded_checkpoint("dpn68")
    sym, args, aux = mx.model.load_checkpoint(str(path)[: -len("-0000.params")], 0)
    assert sym.list_outputs() == ["softmax_output"]
    w = seeded_weights("dpn68")
    assert set(args) | set(aux) == set(w)
    assert all(np.array_equal(v.asnumpy(), w[k]) for k, v in {**args, **aux}.items())
    mod = mx.mod.Module(sym, data_names=["data"], label_names=["softmax_label"], context=mx.cpu())
    mod.bind(data_shapes=[("data", (1, 3, 224, 224))], label_shapes=[("softmax_label", (1,))],
             for_training=False)
    mod.set_params(args, aux)
    mod.forward(mx.io.DataBatch([mx.nd.ones((1, 3, 224, 224))]), is_train=False)
    probs = mod.get_outputs()[0].asnumpy()
    assert probs.shape == (1, 1000) and abs(probs.sum() - 1) < 1e-4


# -- reading ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dpn68", "dpn68-extra", "dpn68-5k"])
def test_read_checkpoint_identifies(name, seeded_checkpoint, seeded_weights):
    path = seeded_checkpoint(name)
    for form in (path, str(path)[: -len("-0000.params")], path.with_name(name + "-symbol.json")):
        arch, classes, classifier, tensors = checkpoint.read_checkpoint(form)
        assert (arch, classes, classifier) == variants.resolve(name)
    w = seeded_weights(name)
    assert list(tensors) == list(w)
    assert all(np.array_equal(tensors[k], w[k]) for k in w)
    _, _, _, mapped = checkpoint.read_checkpoint(path, mmap=True)
    assert all(np.array_equal(mapped[k], w[k]) for k in w)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(variants.CHECKPOINTS))
def test_read_checkpoint_identifies_every_row(name, tmp_path):
    path = checkpoint.write_seeded_checkpoint(tmp_path / name, name, symbol=False)
    assert checkpoint.read_checkpoint(path, mmap=True)[:3] == variants.resolve(name)


def test_params_path_epoch(tmp_path):
    tensors = checkpoint.seeded_tensors("dpn68")
    path = checkpoint.write_checkpoint(tmp_path / "m", tensors, epoch=7)
    assert path.name == "m-0007.params"
    assert checkpoint.params_path(tmp_path / "m", epoch=7) == path
    assert checkpoint.params_path(tmp_path / "m-symbol.json", epoch=7) == path


# -- bad input: one clear CheckpointError naming the file and the problem -------------------

def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as err:
        checkpoint.read_checkpoint(tmp_path / "nothing")
    msg = _one_line(err)
    assert "nothing" in msg and "no such" in msg
    with pytest.raises(CheckpointError, match="folder"):
        checkpoint.read_checkpoint(tmp_path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes-0000.params"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError) as err:
        checkpoint.read_checkpoint(path)
    msg = _one_line(err)
    assert str(path) in msg and "not a valid MXNet .params file" in msg


def test_unnamed_array_list(tmp_path):
    path = tmp_path / "list.params"
    path.write_bytes(mxparams.dumps([np.zeros((2, 2), "float32")]))
    with pytest.raises(CheckpointError) as err:
        checkpoint.read_checkpoint(path)
    assert str(path) in _one_line(err) and "not a checkpoint" in _one_line(err)


def _rewrite(src, dst, edit):
    raw = mxparams.load(src)
    edit(raw)
    dst.write_bytes(mxparams.dumps(raw))
    return dst


def test_missing_tensor(seeded_checkpoint, tmp_path):
    path = _rewrite(seeded_checkpoint("dpn68"), tmp_path / "m-0000.params",
                    lambda raw: raw.pop("arg:conv3_x__2_c3x3-b__conv_weight"))
    with pytest.raises(KeyMismatch) as err:
        checkpoint.read_checkpoint(path)
    msg = _one_line(err)
    assert str(path) in msg and "missing 1: conv3_x__2_c3x3-b__conv_weight" in msg


def test_misshapen_tensor(seeded_checkpoint, tmp_path):
    def edit(raw):
        raw["arg:conv2_x__1_c1x1-a__conv_weight"] = np.zeros((128, 11, 1, 1), "float32")
    path = _rewrite(seeded_checkpoint("dpn68"), tmp_path / "m-0000.params", edit)
    with pytest.raises(KeyMismatch) as err:
        checkpoint.read_checkpoint(path)
    msg = _one_line(err)
    assert str(path) in msg and "misshapen 1: conv2_x__1_c1x1-a__conv_weight (128, 11, 1, 1)" in msg


def test_aux_stored_as_arg(seeded_checkpoint, tmp_path):
    def edit(raw):
        raw["arg:fc6_bias_moving_mean"] = raw.pop("aux:conv1_x_1__relu-sp__bn_moving_mean")
    path = _rewrite(seeded_checkpoint("dpn68"), tmp_path / "m-0000.params", edit)
    with pytest.raises(CheckpointError) as err:
        checkpoint.read_checkpoint(path)
    assert str(path) in _one_line(err) and "arg:fc6_bias_moving_mean" in _one_line(err)


def test_no_classifier(seeded_checkpoint, tmp_path):
    path = _rewrite(seeded_checkpoint("dpn68"), tmp_path / "m-0000.params",
                    lambda raw: raw.pop("arg:fc6_weight"))
    with pytest.raises(CheckpointError) as err:
        checkpoint.read_checkpoint(path)
    assert str(path) in _one_line(err) and "classifier" in _one_line(err)


def test_load_checkpoint_raises_the_same(tmp_path):
    pytest.importorskip("mxnet")
    import dpn_gluon
    path = tmp_path / "junk-0000.params"
    path.write_bytes(b"\0" * 40)
    with pytest.raises(CheckpointError) as err:
        dpn_gluon.load_checkpoint(path)
    assert str(path) in _one_line(err)


def test_seeded_checkpoint_creates_its_folder(tmp_path):
    """The README's example writes into a folder that does not exist yet."""
    path = checkpoint.write_seeded_checkpoint(tmp_path / "new" / "dpn68", name="dpn68", symbol=False)
    assert path == tmp_path / "new" / "dpn68-0000.params" and path.is_file()
    assert checkpoint.read_checkpoint(path)[0].name == "dpn68"
