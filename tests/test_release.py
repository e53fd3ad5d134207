"""Hub-ready releases: timm folders with names and a model card, torch.hub, ``release``, ``list``.

References: timm's PretrainedCfg fields (tests/data/timm_pretrained_cfg.json), a re-statement
of timm's ``resolve_data_config`` rule and eval transform, huggingface_hub's ModelCard
parser, torch.save-free state_dict equality and logits of the PyTorch DPN built directly
from the seeded tensors, hashlib over the written files, and README.md's published table.
All on seeded DPN-68 checkpoints (small); one conversion runs the full parity check.
"""
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dpn_gluon import checkpoint, variants
from dpn_gluon.convert import cli

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(__file__).with_name("data") / "timm_pretrained_cfg.json").read_text())


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Seeded authors' checkpoints: ImageNet-1k, ImageNet-5k (4786) and Places365 heads."""
    folder = tmp_path_factory.mktemp("release-src")
    made = {}
    for name, kwargs in (("in1k", dict(name="dpn68")),
                         ("in5k", dict(name="dpn68-5k")),
                         ("places", dict(name="dpn68", classes=365))):
        made[name] = checkpoint.write_seeded_checkpoint(folder / name, seed=len(made),
                                                        symbol=False, **kwargs)
    names5k = folder / "imagenet5k.txt"
    names5k.write_text("".join("%d class_%04d\n" % (i, i) for i in range(4786)), encoding="utf-8")
    made["names5k"] = names5k
    return made


@pytest.fixture(scope="module")
def folders(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("release-timm")
    made = {}
    for name, extra in (("in1k", ["--check"]), ("in5k", ["--labels", ckpts["names5k"]]),
                        ("places", ["--license", "mit"])):
        check = [] if "--check" in extra else ["--no-check"]
        res = run(ckpts[name], "--to", "timm", "-o", out / name, *check,
                  *[e for e in extra if e != "--check"])
        assert res.exit_code == 0, res.stderr
        made[name] = (out / name, res)
    return made


# -- the timm folder --------------------------------------------------------------------

def _kind_ok(value, kind):
    return {
        "null": value is None, "bool": isinstance(value, bool),
        "string": isinstance(value, str), "list": isinstance(value, list),
        "object": isinstance(value, dict),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "int3": isinstance(value, list) and len(value) == 3 and all(type(v) is int for v in value),
        "ints": isinstance(value, list) and all(type(v) is int for v in value),
        "numbers": isinstance(value, list) and all(isinstance(v, (int, float)) for v in value),
        "strings": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "string_map": isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in value.items()),
    }[kind]


def resolve_data_config(cfg, use_test_size=False):
    """timm.data.resolve_data_config from a pretrained_cfg alone (its documented rule): the
    test size and test crop when asked for and present, else input_size / crop_pct; timm's
    defaults otherwise (224, bicubic, crop 0.875, ImageNet mean/std)."""
    size = (cfg.get("test_input_size") if use_test_size and cfg.get("test_input_size")
            else cfg.get("input_size", (3, 224, 224)))
    crop = (cfg.get("test_crop_pct") if use_test_size and cfg.get("test_crop_pct")
            else cfg.get("crop_pct", 0.875))
    return {"input_size": tuple(size), "interpolation": cfg.get("interpolation", "bicubic"),
            "mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(cfg.get("std", (0.229, 0.224, 0.225))), "crop_pct": crop,
            "crop_mode": cfg.get("crop_mode", "center")}


@pytest.mark.parametrize("which, classes", [("in1k", 1000), ("in5k", 4786), ("places", 365)])
def test_timm_config_names_schema_and_the_authors_preprocessing(folders, ckpts, which, classes):
    config = json.loads((folders[which][0] / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    for key, value in cfg.items():
        assert key in SCHEMA["fields"], key
        assert any(_kind_ok(value, k) for k in SCHEMA["fields"][key]), (key, value)
    assert config["num_classes"] == cfg["num_classes"] == classes
    names = cfg["label_names"]
    assert len(names) == len(set(names)) == classes
    if which == "in1k":
        lines = (ROOT / "dpn_gluon/data/imagenet_classes.txt").read_text().splitlines()
        assert names == [line.split(" ", 1)[0] for line in lines]
        assert cfg["label_descriptions"][names[0]] == "tench, Tinca tinca"
    elif which == "in5k":
        assert names[7] == "class_0007" and "label_descriptions" not in cfg
    else:
        assert names[0] == "/a/airfield" and cfg["label_descriptions"]["/a/airfield"] == "airfield"
    for use_test, side in ((False, 224), (True, 320)):
        data = resolve_data_config(cfg, use_test)
        assert data["input_size"] == (3, side, side) and data["crop_pct"] == 1.0
        assert data["interpolation"] == "bicubic" and data["crop_mode"] == "center"
        # timm's eval transform: resize the short side to floor(side / crop_pct), center
        # crop, then (x / 255 - mean) / std: the authors' (x - (124, 117, 104)) * 0.0167
        assert math.floor(side / data["crop_pct"]) == side
        x = np.random.default_rng(0).uniform(0, 255, (3, 4, 4))
        mean, std = np.array(data["mean"])[:, None, None], np.array(data["std"])[:, None, None]
        authors = (x - np.array(variants.MEAN_RGB)[:, None, None]) * variants.SCALE
        np.testing.assert_allclose((x / 255 - mean) / std, authors, atol=1e-6)


def test_predict_and_evaluate_read_the_names_a_folder_carries(folders):
    from dpn_gluon.runtimes import read_model
    assert read_model(folders["in5k"][0])[4] == ["class_%04d" % i for i in range(4786)]


def test_labels_survive_a_round_trip(folders, tmp_path):
    st = tmp_path / "five.safetensors"
    assert run(folders["in5k"][0], "--to", "safetensors", "-o", st, "--no-check").exit_code == 0
    back = tmp_path / "back"
    assert run(st, "--to", "timm", "-o", back, "--no-check").exit_code == 0
    names = json.loads((back / "config.json").read_text())["pretrained_cfg"]["label_names"]
    assert names == ["class_%04d" % i for i in range(4786)]
    from safetensors import safe_open
    with safe_open(str(st), "np") as f:
        assert json.loads(f.metadata()["labels"]) == names


def test_model_card_parses_and_states_the_facts(folders):
    hub = pytest.importorskip("huggingface_hub")
    for which, license_ in (("in1k", "other"), ("places", "mit")):
        path = folders[which][0] / "README.md"
        card = hub.ModelCard.load(path)
        meta = card.data.to_dict()
        assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-classification"
        assert meta["license"] == license_ and {"image-classification", "timm"} <= set(meta["tags"])
        assert meta["datasets"] == (["imagenet-1k"] if which == "in1k" else ["places365"])
        text = path.read_text()
        assert "%.2f M" % (variants.count_params(variants.ARCHS["dpn68"],
                                                 1000 if which == "in1k" else 365) / 1e6) in text
        assert "@inproceedings{chen2017dpn" in text and "320 x 320" in text
    in1k = (folders["in1k"][0] / "README.md").read_text()
    assert "| 320 mean-max | 21.51 | 5.52 |" in in1k and "published by the authors" in in1k
    assert "states no licence" in in1k
    assert re.search(r"Per-layer parity.*PASS", in1k)          # rewritten after the check
    assert "Not checked" in (folders["places"][0] / "README.md").read_text()


def test_check_prints_one_summary_line_not_the_table(folders):
    err = folders["in1k"][1].stderr
    assert "check: MXNet graph vs the PyTorch DPN" in err or "numerical check skipped" in err
    assert "reading back" in err                # the check's progress bar named its stages
    assert "max rel" not in err.split("check:")[0] and "<-- first failure" not in err
    assert not any(line.startswith("tap ") for line in err.splitlines())


# -- torch.hub ------------------------------------------------------------------------

def test_torch_hub_equals_the_converted_model(folders, ckpts, tmp_path):
    torch = pytest.importorskip("torch")
    from dpn_gluon.torch_dpn import from_canonical
    want = from_canonical(checkpoint.seeded_tensors("dpn68", 0))
    pth = tmp_path / "in1k.pth"
    assert run(ckpts["in1k"], "--to", "torch", "-o", pth, "--no-check").exit_code == 0
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype("float32"))
    with torch.no_grad():
        ref = want(x)
    for source in (folders["in1k"][0], pth, ckpts["in1k"]):
        got = torch.hub.load(str(ROOT), "dpn68", source="local", checkpoint=str(source))
        sd, ws = got.state_dict(), want.state_dict()
        assert list(sd) == list(ws)
        assert all(torch.equal(sd[k], ws[k]) and sd[k].dtype == ws[k].dtype for k in ws)
        with torch.no_grad():
            assert torch.equal(got.eval()(x), ref)
        assert got.labels[0] == "n01440764"
    bare = torch.hub.load(str(ROOT), "dpn92", source="local")
    assert type(bare).__name__ == "DPN" and bare.labels is None
    from dpn_gluon.errors import KeyMismatch
    with pytest.raises(KeyMismatch, match="the tensors are dpn68"):
        torch.hub.load(str(ROOT), "dpn92", source="local", checkpoint=str(pth))


# -- dpn-convert release --------------------------------------------------------------

def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_release_manifest_resume_and_a_broken_file(ckpts, tmp_path, monkeypatch):
    pytest.importorskip("mxnet")
    pytest.importorskip("torch")
    from test_parity import _eps_1e5
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "dpn68-0000.params").write_bytes(ckpts["in1k"].read_bytes())
    _eps_1e5(monkeypatch, "conv3_1")           # a PyTorch side that parts at conv3_x__1
    first = run("release", src, "-o", out)     # with the parity check: it fails, exit 1
    monkeypatch.undo()
    assert first.exit_code == 1, first.stderr
    assert "dpn68: check FAILED" in first.stderr
    entry = json.loads((out / "MANIFEST.json").read_text())["entries"][0]
    assert not entry["ok"] and entry["checked"] and entry["arch"] == "dpn68"
    assert entry["worst_parity"] > 1e-5 and entry["error"] is None

    (src / "places-0000.params").write_bytes(ckpts["places"].read_bytes())
    (src / "five-0000.params").write_bytes(ckpts["in5k"].read_bytes())
    (src / "broken-0000.params").write_bytes(b"\x12\x01\x00\x00\x00\x00\x00\x00truncated")
    second = run("release", src, "-o", out, "--no-check", "--labels", ckpts["names5k"])
    assert second.exit_code == 2, second.stderr
    assert "dpn68: unchanged" not in second.stderr      # it failed: done again
    errors = [line for line in second.stderr.splitlines() if "broken: error:" in line]
    assert len(errors) == 1
    manifest = json.loads((out / "MANIFEST.json").read_text())
    by_name = {e["name"]: e for e in manifest["entries"]}
    assert sorted(by_name) == ["broken", "dpn68", "five", "places"]
    assert by_name["broken"]["error"] and not by_name["broken"]["outputs"]
    assert by_name["dpn68"]["ok"] and not by_name["dpn68"]["checked"]
    assert (by_name["five"]["arch"], by_name["five"]["classes"]) == ("dpn68b", 4786)
    for name in ("dpn68", "five", "places"):
        e = by_name[name]
        assert e["source_sha256"] == _sha(src / e["source"])
        files = sorted(str(p.relative_to(out)) for p in (out / name).iterdir())
        assert sorted(e["outputs"]) == sorted(files + [name + ".onnx"])
        assert all(_sha(out / rel) == digest for rel, digest in e["outputs"].items())
    five = json.loads((out / "five/config.json").read_text())["pretrained_cfg"]
    assert five["label_names"][3] == "class_0003"
    table = (out / "MANIFEST.md").read_text()
    assert all(by_name[n]["source_sha256"] in table for n in ("dpn68", "five", "places"))

    (src / "broken-0000.params").unlink()
    (out / "places.onnx").write_bytes(b"tampered")
    third = run("release", src, "-o", out, "--no-check", "--labels", ckpts["names5k"])
    assert third.exit_code == 0, third.stderr
    assert "five: unchanged" in third.stderr and "dpn68: unchanged" in third.stderr
    assert "places: unchanged" not in third.stderr
    redone = {e["name"]: e for e in json.loads((out / "MANIFEST.json").read_text())["entries"]}
    assert redone["places"]["outputs"]["places.onnx"] == _sha(out / "places.onnx")


def test_release_refuses_outputs_it_did_not_write(ckpts, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "dpn68-0000.params").write_bytes(ckpts["in1k"].read_bytes())
    (out / "dpn68").mkdir(parents=True)
    (out / "dpn68" / "mine.txt").write_text("keep me")
    res = run("release", src, "-o", out, "--no-check", "-q")
    assert res.exit_code == 2 and "mine.txt" in res.stderr       # names what is in the way
    assert (out / "dpn68" / "mine.txt").read_text() == "keep me"



def _one_line_refusal(res, *words):
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("dpn-convert: error: ") and all(w in lines[0] for w in words)


def test_release_keeps_a_users_manifest_md(ckpts, tmp_path):
    """MANIFEST.md in OUT_DIR that no release wrote: refused (nothing written), --force
    replaces it; a symbolic link of that name is refused even with --force."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    (src / "dpn68-0000.params").write_bytes(ckpts["in1k"].read_bytes())
    (out / "MANIFEST.md").write_text("my notes")
    _one_line_refusal(run("release", src, "-o", out, "--no-check", "-q"), "MANIFEST.md",
                      "--force")
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.md"]
    assert (out / "MANIFEST.md").read_text() == "my notes"
    (tmp_path / "notes.md").write_text("elsewhere")
    (out / "MANIFEST.md").unlink()
    (out / "MANIFEST.md").symlink_to(tmp_path / "notes.md")
    _one_line_refusal(run("release", src, "-o", out, "--no-check", "--force"), "symbolic link")
    assert (out / "MANIFEST.md").is_symlink() and (tmp_path / "notes.md").read_text() == "elsewhere"
    (out / "MANIFEST.md").unlink()
    (out / "MANIFEST.md").write_text("my notes")
    assert run("release", src, "-o", out, "--no-check", "--force", "-q").exit_code == 0
    assert "| dpn68 |" in (out / "MANIFEST.md").read_text()
    # a rerun replaces the table it wrote; an edited table is the user's again
    assert run("release", src, "-o", out, "--no-check", "-q").exit_code == 0
    with open(out / "MANIFEST.md", "a") as f:
        f.write("my addition\n")
    _one_line_refusal(run("release", src, "-o", out, "--no-check", "-q"), "MANIFEST.md")
    assert (out / "MANIFEST.md").read_text().endswith("my addition\n")


def test_release_does_not_trust_an_edited_manifest(ckpts, tmp_path):
    """A manifest that says an entry is done while its outputs are gone is redone; one naming
    paths outside an entry's outputs is refused; a manifest entry does not make a user's file
    of an output's name replaceable."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "dpn68-0000.params").write_bytes(ckpts["in1k"].read_bytes())
    assert run("release", src, "-o", out, "--no-check", "-q").exit_code == 0
    manifest = json.loads((out / "MANIFEST.json").read_text())
    entry = manifest["entries"][0]

    for f in sorted((out / "dpn68").iterdir()):
        f.unlink()
    (out / "dpn68").rmdir()
    (out / "dpn68.onnx").unlink()
    entry["outputs"] = {}
    (out / "MANIFEST.json").write_text(json.dumps(manifest))
    (out / "MANIFEST.md").unlink()
    res = run("release", src, "-o", out, "--no-check")
    assert res.exit_code == 0 and "unchanged" not in res.stderr, res.stderr
    assert (out / "dpn68" / "model.safetensors").is_file() and (out / "dpn68.onnx").is_file()

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    manifest = json.loads((out / "MANIFEST.json").read_text())
    manifest["entries"][0]["outputs"]["../victim.txt"] = _sha(victim)
    (out / "MANIFEST.json").write_text(json.dumps(manifest))
    _one_line_refusal(run("release", src, "-o", out, "--no-check", "-q"), "MANIFEST.json")
    assert victim.read_text() == "keep"

    del manifest["entries"][0]["outputs"]["../victim.txt"]
    del manifest["entries"][0]["outputs"]["dpn68.onnx"]
    manifest["entries"][0]["ok"] = False
    (out / "MANIFEST.json").write_text(json.dumps(manifest))
    (out / "MANIFEST.md").unlink()
    (out / "dpn68.onnx").write_bytes(b"the user's own export")
    res = run("release", src, "-o", out, "--no-check", "-q")
    assert res.exit_code == 2 and "exists (use --force" in res.stderr, res.stderr
    assert (out / "dpn68.onnx").read_bytes() == b"the user's own export"



def test_release_names_are_unique(tmp_path):
    """a-0000.params and a-0001.params are entries a-0000 and a-0001; a-0000-0000.params
    alone would be a-0000 too, and two entries would write the same outputs."""
    from dpn_gluon.convert.release import find_checkpoints
    for name in ("a-0000.params", "a-0001.params", "a-0000-0000.params", "b-0000.params"):
        (tmp_path / name).write_bytes(b"")
    names = [name for name, _ in find_checkpoints(tmp_path)]
    assert names == ["a-0000", "a-0000-0000", "a-0001", "b-0000"]
    (tmp_path / "a-0000-0000.params").unlink()
    assert [name for name, _ in find_checkpoints(tmp_path)] == ["a-0000", "a-0001", "b"]


def test_release_finds_paddleclas_files_beside_the_authors(tmp_path):
    from dpn_gluon.convert.release import find_checkpoints
    for name in ("a-0000.params", "a.pdparams", "DPN92_pretrained.pdparams", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [name for name, _ in find_checkpoints(tmp_path)] == \
        ["DPN92_pretrained", "a", "a-0000"]


def test_release_of_a_pdparams_writes_its_weight_set(ckpts, tmp_path):
    """A PaddleClas file released: a timm folder and an ONNX file that carry ImageNet's
    normalization and say whose weights they are (the file made by --to paddle, whose
    tensors test_convert_paddle.py checks)."""
    pytest.importorskip("onnx")
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    assert run(ckpts["in1k"], "--to", "paddle", "-o", src / "DPN68.pdparams",
               "--no-check").exit_code == 0
    result = run("release", src, "-o", out, "--no-check")
    assert result.exit_code == 0, result.stderr
    entry = json.loads((out / "MANIFEST.json").read_text())["entries"][0]
    assert (entry["name"], entry["source"], entry["arch"]) == ("DPN68", "DPN68.pdparams", "dpn68")
    config = json.loads((out / "DPN68" / "config.json").read_text())
    assert config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    import onnx
    props = {p.key: p.value for p in onnx.load(str(out / "DPN68.onnx")).metadata_props}
    assert props["normalization_name"] == "imagenet"
    card = (out / "DPN68" / "README.md").read_text()     # whose weights, which recipe, which input
    assert "PaddleClas's weights" in card and "mixup 0.2" in card
    assert "| 224 | 0.768 | 0.934 |" in card and "(0.485, 0.456, 0.406)" in card
    assert "124, 117, 104" not in card and "published by the authors" not in card
    assert config["pretrained_cfg"]["origin_url"] == "https://github.com/PaddlePaddle/PaddleClas"


# -- list and the command line --------------------------------------------------------

def test_list_gives_the_published_table_of_the_readme():
    every = {r["name"]: r for r in json.loads(run("list", "--json").stdout)}
    rows = {n: r for n, r in every.items() if r["weight_set"] == "authors"}
    assert set(rows) == set(variants.CHECKPOINTS)
    paddle_rows = {n: r for n, r in every.items() if r["weight_set"] == "paddleclas"}
    assert set(paddle_rows) == {"DPN68", "DPN92", "DPN98", "DPN107", "DPN131"}
    # PaddleClas's published accuracy (top-1 0.768 for DPN68, top-5 0.951 for DPN131), as errors
    assert (paddle_rows["DPN68"]["top1_err_224"], paddle_rows["DPN131"]["top5_err_224"]) == \
        (23.2, 4.9)
    readme = (ROOT / "README.md").read_text().splitlines()
    start = readme.index("| checkpoint | 224 top-1 | 224 top-5 | 320 top-1 | 320 top-5 | "
                         "320 mean-max top-1 | 320 mean-max top-5 |")
    table = [line for line in readme[start + 2:start + 20] if line.startswith("| dpn")]
    assert len(table) == sum(c.published is not None for c in variants.CHECKPOINTS.values())
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = cells[0].split()[0]
        want = [float(c) for c in cells[1:7]]
        r = rows[name]
        assert [r["top1_err_224"], r["top5_err_224"], r["top1_err_320"], r["top5_err_320"],
                r["top1_err_320_mean_max"], r["top5_err_320_mean_max"]] == want, name
    assert "top1_err_224" not in rows["dpn92-places365"]
    for line in readme:                      # README's checkpoint table: parameter counts
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0].split(" ")[0] in rows and "`fc6" in cells[3]:
            assert rows[cells[0].split(" ")[0]]["params"] == int(cells[4].replace(",", ""))
    text = run("list").stdout
    assert "dpn107-extra" in text and "21.51 / 5.52" in text
    assert "DPN107" in text and "19.10 / 4.70" in text and "PaddleClas" in text


@pytest.mark.parametrize("main", ["convert", "evaluate", "predict"])
def test_version_on_every_command(main):
    from dpn_gluon.evaluate import cli as ecli
    command = {"convert": cli.main, "evaluate": ecli.evaluate_main,
               "predict": ecli.predict_main}[main]
    res = CliRunner().invoke(command, ["--version"])
    assert res.exit_code == 0 and re.match(r"dpn-%s, dpn-gluon \S+$" % main, res.stdout.strip())


def test_unknown_subcommand_and_usage_errors_in_one_line(tmp_path):
    from dpn_gluon.evaluate import cli as ecli
    res = run("lsit")
    assert res.exit_code == 2 and res.stderr.strip() == (
        "dpn-convert: error: no subcommand 'lsit' and no such file "
        "(subcommands: convert, check, list, release)")
    for command, args, prog in ((ecli.predict_main, [], "dpn-predict"),
                                (ecli.evaluate_main, ["x", "--bogus"], "dpn-evaluate"),
                                (ecli.predict_main, ["x", "y", "--top", "zero"], "dpn-predict")):
        res = CliRunner().invoke(command, args)
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1, res.stderr
        assert lines[0].startswith(prog + ": error: ")


def test_quiet_prints_nothing_on_success(ckpts, tmp_path):
    res = run(ckpts["in1k"], "--to", "safetensors", "-o", tmp_path / "q.safetensors", "-q",
              "--no-check")
    assert res.exit_code == 0 and res.stderr == ""
    assert res.stdout.strip() == str(tmp_path / "q.safetensors")


def test_no_doubled_words_in_messages_and_docs():
    doubled = re.compile(r"\b(Converting)\s+\1\b")
    for path in [*ROOT.glob("dpn_gluon/**/*.py"), *ROOT.glob("docs/*.md")]:
        assert not doubled.search(path.read_text(encoding="utf-8")), path


def test_the_manifest_is_one_commit(tmp_path, monkeypatch):
    """MANIFEST.json and MANIFEST.md land together or not at all: a failure while the second
    is written (here its writer fails; a signal or a full disk alike) leaves both as they
    were, where two separate writes had replaced the JSON already."""
    from dpn_gluon.convert import release
    from dpn_gluon.safeio.atomic import Transaction
    (tmp_path / "MANIFEST.json").write_text("old json")
    (tmp_path / "MANIFEST.md").write_text("old md")
    real = Transaction.file

    def second_fails(tx, final):
        if Path(final).name == "MANIFEST.md":
            raise OSError(28, "No space left on device")
        return real(tx, final)

    monkeypatch.setattr(Transaction, "file", second_fails)
    with pytest.raises(OSError):
        release.write_manifest(tmp_path, [])
    assert (tmp_path / "MANIFEST.json").read_text() == "old json"
    assert (tmp_path / "MANIFEST.md").read_text() == "old md"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MANIFEST.json", "MANIFEST.md"]
    monkeypatch.undo()
    release.write_manifest(tmp_path, [])
    assert json.loads((tmp_path / "MANIFEST.json").read_text())["entries"] == []
    assert (tmp_path / "MANIFEST.md").read_text() == release.manifest_markdown([])
