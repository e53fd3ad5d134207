"""dpn-convert's formats: detection, readers, writers and round trips, for every released config.

References are independent of the code under test: the seeded source arrays themselves
(compared bit for bit after a round trip), the timm keys recorded from timm 1.0.31
(tests/data/timm_state_dict_keys.json), hand-written name pairs for a few tensors,
MXNet's own ``mx.nd.load`` and torch's own ``torch.load``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from dpn_gluon import variants
from dpn_gluon.checkpoint import seeded_tensors
from dpn_gluon.convert.pipeline import convert
from dpn_gluon.errors import CheckpointError, KeyMismatch
from dpn_gluon.formats import canonical as formats
from dpn_gluon.formats import mxparams, registry

#: timm 1.0.31's keys and shapes, recorded (docs/reference/README.md)
REFERENCE = Path(__file__).parent / "data" / "timm_state_dict_keys.json"

TARGETS = ("torch", "safetensors", "timm", "gluon", "mxnet")


def seeded_params(name: str, dtype=np.float32, seed: int = 0, bits: bool = True
                  ) -> "dict[str, np.ndarray]":
    """An authors'-format {'arg:..'/'aux:..': array} for a checkpoint row, seeded.

    ``bits=True``: random bit patterns (NaN payloads, -0.0 and subnormals included) to prove
    copies are bit-exact; otherwise :func:`dpn_gluon.checkpoint.seeded_tensors` (He-init
    convolutions, randomized BatchNorm statistics), which a network can run.
    """
    arch, classes, fc = variants.resolve(name)
    if not bits:
        tensors = seeded_tensors(name, seed, dtype=np.dtype(dtype).name)
        return {("aux:" if variants.is_aux(k) else "arg:") + k: v for k, v in tensors.items()}
    rng = np.random.default_rng(seed)
    width = {2: np.uint16, 4: np.uint32}[np.dtype(dtype).itemsize]
    out = {}
    for key, shape in variants.tensor_spec(arch, classes, fc).items():
        arr = rng.integers(0, np.iinfo(width).max, size=shape, dtype=width, endpoint=True)
        out[("aux:" if variants.is_aux(key) else "arg:") + key] = arr.view(dtype)
    return out


def write_seeded(folder: Path, name: str, dtype=np.float32, seed: int = 0, prefix=None,
                 bits: bool = True):
    """Write PREFIX-0000.params for a checkpoint row; returns (path, arrays)."""
    arrays = seeded_params(name, dtype, seed, bits)
    path = Path(folder) / ("%s-0000.params" % (prefix or name))
    with open(path, "wb") as f:
        mxparams.write(f, arrays)
    return path, arrays


def assert_same_params(path: Path, expected: "dict[str, np.ndarray]"):
    got = mxparams.load(path)
    assert sorted(got) == sorted(expected)
    for k, a in expected.items():
        b = got[k]
        assert b.dtype == a.dtype and b.shape == a.shape, k
        assert a.tobytes() == b.tobytes(), k


def fast_folder(tmp_path_factory, name: str) -> Path:
    """A scratch folder on tmpfs where there is one: the writers fsync, and a disk makes
    the hundreds of MB these tests move ten times slower."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="dpn-convert-%s-" % name, dir=shm))
    return tmp_path_factory.mktemp(name)


@pytest.fixture
def scratch(tmp_path_factory):
    """A scratch folder, on tmpfs where there is one."""
    folder = fast_folder(tmp_path_factory, "t")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def reference_keys():
    return json.loads(REFERENCE.read_text())["models"]


def small_dtype(name):
    """float16 for the big rows keeps the suite fast; dpn68 rows stay float32."""
    return np.float32 if variants.CHECKPOINTS[name].mib < 100 else np.float16


# -- every released configuration, every target, and back ---------------------------------

@pytest.fixture(scope="module", params=list(variants.CHECKPOINTS))
def source(request, tmp_path_factory):
    name = request.param
    folder = fast_folder(tmp_path_factory, name)
    path, arrays = write_seeded(folder, name, small_dtype(name), bits=True)
    yield name, path, arrays
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("target", TARGETS)
def test_round_trip_every_checkpoint(source, target, scratch):
    name, path, arrays = source
    ckpt = variants.CHECKPOINTS[name]
    first = convert(path, target, out=scratch / ("one" if target != "gluon" else "one.params"),
                    check=False)
    assert (first.arch, first.classes, first.classifier) == (ckpt.arch, ckpt.classes, ckpt.classifier)
    # a state_dict and a Gluon file cannot record fc6 vs fc6-1k: say it on the way back
    said = None if target in ("safetensors", "timm", "mxnet") else ckpt.classifier
    back = convert(first.outputs[-1], "mxnet", out=scratch / "back", classifier=said, check=False)
    assert back.classifier == ckpt.classifier
    assert_same_params(scratch / "back-0000.params", arrays)


def test_chain_original_safetensors_gluon_original(scratch):
    path, arrays = write_seeded(scratch, "dpn92-places365", np.float16, bits=True)
    convert(path, "safetensors", out=scratch / "a.safetensors", numeric=False)
    convert(scratch / "a.safetensors", "gluon", out=scratch / "b.params", numeric=False)
    convert(scratch / "b.params", "mxnet", out=scratch / "c", classifier="fc6", numeric=False)
    assert_same_params(scratch / "c-0000.params", arrays)


def test_timm_original_timm_is_identical(scratch):
    path, _ = write_seeded(scratch, "dpn68-extra")
    convert(path, "timm", out=scratch / "t1", numeric=False)
    convert(scratch / "t1", "mxnet", out=scratch / "orig", numeric=False)
    convert(scratch / "orig-0000.params", "timm", out=scratch / "t2", numeric=False)
    from safetensors.numpy import load_file
    a, b = load_file(scratch / "t1" / "model.safetensors"), load_file(scratch / "t2" / "model.safetensors")
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    c1 = json.loads((scratch / "t1" / "config.json").read_text())
    c2 = json.loads((scratch / "t2" / "config.json").read_text())
    assert c1["pretrained_cfg"] == c2["pretrained_cfg"]
    assert c1["dpn"]["classifier"] == c2["dpn"]["classifier"] == "fc6-1k"


# -- timm's layout -------------------------------------------------------------------------

@pytest.mark.parametrize("arch", list(variants.ARCHS))
def test_keys_and_shapes_equal_timm(arch, scratch):
    dtype = np.float32 if arch.startswith("dpn68") else np.float16   # big ones: half the bytes
    path, _ = write_seeded(scratch, arch, dtype)
    convert(path, "safetensors", out=scratch / "x.safetensors", check=False)
    from safetensors import safe_open
    with safe_open(str(scratch / "x.safetensors"), framework="np") as f:
        got = [(k, list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()]
    st = {"float32": "F32" if dtype == np.float32 else "F16", "int64": "I64"}
    want = [(k, shape, st[dt]) for k, shape, dt in reference_keys()[arch]]
    assert sorted(got) == sorted(want)


def test_torch_state_dict_in_timm_order_with_known_pairs(scratch):
    torch = pytest.importorskip("torch")
    path, arrays = write_seeded(scratch, "dpn68b", np.float32)
    convert(path, "torch", out=scratch / "m.pth", numeric=False)
    sd = torch.load(scratch / "m.pth", weights_only=True)
    assert [k for k in sd] == [k for k, _, _ in reference_keys()["dpn68b"]]
    pairs = {  # written by hand from docs/reference/original-dpn.md section 8, not names.py
        "features.conv1_1.bn.weight": "arg:conv1_x_1__relu-sp__bn_gamma",
        "features.conv1_1.bn.bias": "arg:conv1_x_1__relu-sp__bn_beta",
        "features.conv1_1.bn.running_var": "aux:conv1_x_1__relu-sp__bn_moving_var",
        "features.conv2_1.c1x1_w_s1.conv.weight": "arg:conv2_x__1_c1x1-w(s/1)__conv_weight",
        "features.conv3_1.c1x1_w_s2.bn.running_mean": "aux:conv3_x__1_c1x1-w(s/2)__bn__bn_moving_mean",
        "features.conv2_1.c1x1_c.bn.weight": "arg:conv2_x__1_c1x1-c__bn_gamma",
        "features.conv2_1.c1x1_c1.weight": "arg:conv2_x__1_c1x1-c1__conv_weight",
        "features.conv4_12.c1x1_c2.weight": "arg:conv4_x__12_c1x1-c2__conv_weight",
        "features.conv5_bn_ac.bn.running_var": "aux:conv5_x_x__relu-sp__bn_moving_var",
        "classifier.bias": "arg:fc6-1k_bias",
    }
    for key, mx_name in pairs.items():
        np.testing.assert_array_equal(sd[key].numpy(), arrays[mx_name], err_msg=key)
    np.testing.assert_array_equal(sd["classifier.weight"].numpy()[:, :, 0, 0], arrays["arg:fc6-1k_weight"])
    assert sd["features.conv1_1.bn.num_batches_tracked"].dtype == torch.int64
    assert int(sd["features.conv1_1.bn.num_batches_tracked"]) == 0


def test_timm_folder_config(scratch):
    path, _ = write_seeded(scratch, "dpn107-extra", np.float16)
    convert(path, "timm", out=scratch / "hub", check=False)
    cfg = json.loads((scratch / "hub" / "config.json").read_text())
    assert cfg["architecture"] == "dpn107" and cfg["num_classes"] == 1000
    assert cfg["num_features"] == 2688
    pc = cfg["pretrained_cfg"]
    np.testing.assert_allclose(pc["mean"], [124 / 255, 117 / 255, 104 / 255], rtol=1e-9)
    np.testing.assert_allclose(pc["std"], [1 / (0.0167 * 255)] * 3, rtol=1e-9)
    assert (pc["interpolation"], pc["crop_pct"], pc["input_size"]) == ("bicubic", 1.0, [3, 224, 224])
    assert (pc["first_conv"], pc["classifier"], pc["num_classes"]) == ("features.conv1_1.conv", "classifier", 1000)
    assert cfg["dpn"]["classifier"] == "fc6-1k"
    assert cfg["dpn"]["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_safetensors_metadata(scratch):
    path, _ = write_seeded(scratch, "dpn68-5k", np.float16)
    convert(path, "safetensors", out=scratch / "x.safetensors", check=False)
    from safetensors import safe_open
    with safe_open(str(scratch / "x.safetensors"), framework="np") as f:
        meta = f.metadata()
    assert (meta["architecture"], meta["classes"], meta["classifier"]) == ("dpn68b", "4786", "fc6")
    assert meta["source_file"] == path.name
    assert meta["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads(meta["mean"])[0] == pytest.approx(124 / 255)
    assert meta["crop_pct"] == "1.0" and meta["interpolation"] == "bicubic"


# -- classifier names ----------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("dpn107-extra", "fc6-1k"), ("dpn68-extra", "fc6-1k"), ("dpn92", "fc6"),
    ("dpn92-places365", "fc6"), ("dpn68-5k", "fc6"),
])
def test_classifier_default_from_a_state_dict(name, expected, scratch):
    pytest.importorskip("torch")
    path, _ = write_seeded(scratch, name, np.float16)
    convert(path, "torch", out=scratch / "m.pth", check=False)
    back = convert(scratch / "m.pth", "mxnet", out=scratch / "back", check=False)
    assert back.classifier == expected
    assert ("arg:%s_weight" % expected) in mxparams.load(scratch / "back-0000.params")


def test_classifier_override(scratch):
    path, arrays = write_seeded(scratch, "dpn92", np.float16, bits=True)
    res = convert(path, "mxnet", out=scratch / "x", classifier="fc6-1k", numeric=False)
    assert res.classifier == "fc6-1k" and res.ok
    got = mxparams.load(scratch / "x-0000.params")
    assert got["arg:fc6-1k_weight"].tobytes() == arrays["arg:fc6_weight"].tobytes()
    assert "arg:fc6_weight" not in got


# -- detection and bad input ----------------------------------------------------------------

def test_detect_every_format(scratch):
    pytest.importorskip("torch")
    path, _ = write_seeded(scratch, "dpn68", np.float16)
    assert registry.detect(path).format == "mxnet"
    # names that say nothing of the format (.bin is torch's: refused for the others, outputs.py)
    for target, out in [("torch", "a.bin"), ("safetensors", "b.dat"), ("gluon", "c.dat"), ("timm", "d.dat")]:
        convert(path, target, out=scratch / out, check=False)
        assert registry.detect(scratch / out).format == target


@pytest.mark.parametrize("content, message", [
    (b"", "not a checkpoint"),
    (np.random.default_rng(1).bytes(4096), "not a checkpoint"),
    (b'{"nodes": [], "arg_nodes": []}', "symbol file"),
])
def test_detect_refuses(content, message, scratch):
    p = scratch / "x.params"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        formats.read(p)


def test_truncated_params(scratch):
    path, _ = write_seeded(scratch, "dpn68", np.float16)
    data = path.read_bytes()
    bad = scratch / "cut-0000.params"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut-0000.params"):
        formats.read(bad)


def test_missing_and_misshapen_listed_together(scratch):
    arrays = seeded_params("dpn68", np.float16)
    del arrays["arg:conv2_x__1_c1x1-a__conv_weight"]
    arrays["aux:conv3_x__2_c3x3-b__bn__bn_moving_var"] = np.zeros(3, np.float16)
    p = scratch / "broken-0000.params"
    with open(p, "wb") as f:
        mxparams.write(f, arrays)
    with pytest.raises(KeyMismatch) as e:
        formats.read(p)
    assert "conv2_x__1_c1x1-a__conv_weight" in e.value.missing
    assert [m[0] for m in e.value.misshapen] == ["conv3_x__2_c3x3-b__bn__bn_moving_var"]


def test_wrong_arch_is_refused(scratch):
    path, _ = write_seeded(scratch, "dpn68", np.float16)
    with pytest.raises(KeyMismatch, match="dpn92"):
        formats.read(path, arch="dpn92")


def test_arg_aux_prefix_checked(scratch):
    arrays = seeded_params("dpn68", np.float16)
    arrays["arg:conv1_x_1__relu-sp__bn_moving_mean"] = arrays.pop("aux:conv1_x_1__relu-sp__bn_moving_mean")
    p = scratch / "odd-0000.params"
    with open(p, "wb") as f:
        mxparams.write(f, arrays)
    with pytest.raises(CheckpointError, match="wrong arg:/aux:"):
        formats.read(p)


def test_torch_wrappers_and_refusals(scratch):
    torch = pytest.importorskip("torch")
    path, arrays = write_seeded(scratch, "dpn68", np.float16)
    convert(path, "torch", out=scratch / "plain.pth", check=False)
    sd = torch.load(scratch / "plain.pth", weights_only=True)
    torch.save({"state_dict": sd, "epoch": 3}, scratch / "wrapped.pth")
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, scratch / "model.pth")
    for name in ("wrapped.pth", "model.pth"):
        convert(scratch / name, "mxnet", out=scratch / name.replace(".pth", ""), check=False)
        assert_same_params(scratch / (name.replace(".pth", "") + "-0000.params"), arrays)
    torch.save({"lr": 0.1, "names": ["a"]}, scratch / "notsd.pth")
    with pytest.raises(CheckpointError, match="not a state_dict|not named tensors"):
        formats.read(scratch / "notsd.pth")
    torch.save(_Opaque(), scratch / "obj.pth")
    with pytest.raises(CheckpointError, match="refused"):
        formats.read(scratch / "obj.pth")


class _Opaque:
    """A pickled object that is not a state_dict; weights_only loading must refuse it."""


def test_input_is_never_modified(scratch):
    path, _ = write_seeded(scratch, "dpn68", np.float16)
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    for target in ("gluon", "safetensors", "timm"):
        convert(path, target, out=scratch / ("o_" + target), numeric=False)
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) == before


def test_output_over_input_refused_even_with_force(scratch):
    path, _ = write_seeded(scratch, "dpn68", np.float16)
    with pytest.raises(Exception, match="overwrite the input"):
        convert(path, "mxnet", out=scratch / "dpn68", force=True)


# -- MXNet itself as the reference ----------------------------------------------------------

def test_mxnet_reads_what_we_write(scratch):
    mx = pytest.importorskip("mxnet")
    path, arrays = write_seeded(scratch, "dpn68-extra", np.float32)
    convert(scratch / path.name, "mxnet", out=scratch / "out", check=False)
    loaded = mx.nd.load(str(scratch / "out-0000.params"))
    assert sorted(loaded) == sorted(arrays)
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype
        np.testing.assert_array_equal(loaded[k].asnumpy(), v)


def test_mxnet_load_checkpoint(scratch):
    mx = pytest.importorskip("mxnet")
    pytest.importorskip("dpn_gluon.symbols")
    path, arrays = write_seeded(scratch, "dpn68", np.float32)
    res = convert(path, "mxnet", out=scratch / "ck", check=False)
    assert len(res.outputs) == 2
    sym, args, aux = mx.model.load_checkpoint(str(scratch / "ck"), 0)
    assert set(args) | set(aux) == {k.split(":", 1)[1] for k in arrays}
    assert set(sym.list_arguments()) - {"data", "softmax_label"} == set(args)


def test_gluon_model_loads_gluon_file(scratch):
    pytest.importorskip("mxnet")
    model = pytest.importorskip("dpn_gluon.model")
    path, arrays = write_seeded(scratch, "dpn68-extra", np.float32)
    convert(path, "gluon", out=scratch / "g.params", check=False)
    net = model.get_model("dpn68b", classes=1000)
    net.load_parameters(str(scratch / "g.params"))


# -- the converted PyTorch model against the authors' MXNet graph --------------------------

def _parity_modules():
    pytest.importorskip("mxnet")
    pytest.importorskip("torch")
    pytest.importorskip("dpn_gluon.symbols")
    pytest.importorskip("dpn_gluon.torch_dpn")
    return pytest.importorskip("dpn_gluon.checkpoint")


@pytest.mark.parametrize("name", list(variants.CHECKPOINTS))
def test_torch_model_matches_mxnet_graph(name, scratch):
    """Every released configuration: the written .pth, rebuilt as a PyTorch DPN, gives the
    authors' MXNet graph's logits (seeded He-init weights, randomized BN statistics)."""
    checkpoint = _parity_modules()
    dtype = "float32" if variants.CHECKPOINTS[name].mib < 200 else "float16"
    tensors = checkpoint.seeded_tensors(name, seed=1, dtype=dtype)
    arch, classes, fc = variants.resolve(name)
    with open(scratch / "s-0000.params", "wb") as f:
        mxparams.write(f, {("aux:" if variants.is_aux(k) else "arg:") + k: v for k, v in tensors.items()})
    res = convert(scratch / "s-0000.params", "torch", out=scratch / "s.pth")
    assert res.check.exact, res.check.mismatches
    n = res.check.numeric
    assert n is not None, res.check.notes
    assert n.max_rel <= 1e-5 and n.top5_agreement == 1.0 and n.passed


def test_numeric_check_catches_a_wrong_model(scratch, monkeypatch):
    """Negative control: a PyTorch model with BN gamma/beta swapped must fail the check."""
    checkpoint = _parity_modules()
    from dpn_gluon import torch_dpn
    real = torch_dpn.from_canonical

    def swapped(tensors, *args, **kwargs):
        t = dict(tensors)
        g, b = "conv2_x__1_c1x1-a__bn__bn_gamma", "conv2_x__1_c1x1-a__bn__bn_beta"
        t[g], t[b] = t[b], t[g]
        return real(t, *args, **kwargs)

    monkeypatch.setattr(torch_dpn, "from_canonical", swapped)
    tensors = checkpoint.seeded_tensors("dpn68", seed=2)
    with open(scratch / "s-0000.params", "wb") as f:
        mxparams.write(f, {("aux:" if variants.is_aux(k) else "arg:") + k: v for k, v in tensors.items()})
    res = convert(scratch / "s-0000.params", "safetensors", out=scratch / "s.safetensors")
    assert res.check.exact and not res.check.numeric.passed and not res.ok


@pytest.mark.parametrize("save", ["save_parameters", "collect_params"])
def test_reads_files_the_gluon_model_saves(save, scratch):
    """What Gluon itself writes: ``save_parameters`` (structural names) and
    ``collect_params().save`` (parameter names: the authors' names with running_*)."""
    pytest.importorskip("mxnet")
    dpn_gluon = pytest.importorskip("dpn_gluon")
    pytest.importorskip("dpn_gluon.model")
    path, arrays = write_seeded(scratch, "dpn68-extra", np.float32, bits=False)
    net = dpn_gluon.load_checkpoint(str(path))
    out = scratch / "net.params"
    if save == "save_parameters":
        net.save_parameters(str(out))
    else:
        net.collect_params().save(str(out))
    assert registry.detect(out).format == "gluon"
    res = convert(out, "mxnet", out=scratch / "back", classifier="fc6-1k", numeric=False)
    assert res.ok and (res.arch, res.classes) == ("dpn68b", 1000)
    assert_same_params(scratch / "back-0000.params", arrays)


@pytest.mark.parametrize("name", ["dpn68-5k", "dpn92-places365"])
def test_pth_loads_strict_into_the_timm_layout_model(name, scratch):
    """--to torch for non-1000-class rows loads with strict=True into a DPN built with
    timm's module tree (timm itself cannot be imported here; its keys are checked above)."""
    torch = pytest.importorskip("torch")
    torch_dpn = pytest.importorskip("dpn_gluon.torch_dpn")
    path, arrays = write_seeded(scratch, name, np.float32, bits=False)
    res = convert(path, "torch", out=scratch / "m.pth", numeric=False)
    model = torch_dpn.build_model(res.arch, classes=res.classes)
    missing, unexpected = model.load_state_dict(torch.load(scratch / "m.pth", weights_only=True),
                                                strict=True)
    assert not missing and not unexpected
    fc = variants.CHECKPOINTS[name].classifier
    np.testing.assert_array_equal(model.classifier.weight.detach().numpy()[:, :, 0, 0],
                                  arrays["arg:%s_weight" % fc])
