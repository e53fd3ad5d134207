"""dpn-train end to end on CPU: it learns, two workers learn the same and compute the same
first step, a resumed run equals an uninterrupted one, bad input is one line.

References: ``dpn-evaluate`` (the project's evaluation, an independent code path) on a
held-out split; MXNet's own ``mx.model.load_checkpoint`` and ``mx.nd.load`` for the files;
the single-process run for the two-worker one; the uninterrupted run for the resumed one.
Data: tests/train_patterns.py (four classes of 64x64 patterns), dpn68 at 32x32.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from train_patterns import CLASSES, write_folder

from dpn_gluon import write_seeded_checkpoint
from dpn_gluon.formats import mxparams
from dpn_gluon.train import recipe

ROOT = Path(__file__).resolve().parents[1]
#: Fine-tuning that learns the patterns: 16 epochs of 15 steps (about 2 min on 2 idle cores;
#: the issue asks for learning shown end to end in CI, so these run there).
EPOCHS = 16
LEARN = ["--size", "32", "--batch-size", "16", "--lr", "0.01", "--epochs", str(EPOCHS),
         "--threads", "1"]


TRAIN = ["-m", "dpn_gluon.train.cli"]
EVALUATE = ["-c", "from dpn_gluon.evaluate.cli import evaluate_main; evaluate_main()"]


def run_cli(args, command=TRAIN, wait=True, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable] + command + [str(a) for a in args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def evaluate(params: Path, data: Path) -> float:
    """Held-out top-1 accuracy (%) by dpn-evaluate, the authors' protocol at 32x32."""
    res = run_cli([params, "--data", data, "--size", "32", "--json", "-q", "--workers", "0"],
                  command=EVALUATE)
    assert res.returncode == 0, res.stderr
    return 100.0 - json.loads(res.stdout)["top1_error"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("patterns")
    return write_folder(root / "train", 60, seed=0), write_folder(root / "held_out", 15, seed=1)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    return write_seeded_checkpoint(tmp_path_factory.mktemp("seeded") / "dpn68", "dpn68", seed=3)


@pytest.fixture(scope="module")
def learned(data, seeded, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "pat"
    res = run_cli(["--from", seeded, "--data", data[0], "--val-data", data[1], "--out", out,
                   "--json", "-q"] + LEARN)
    assert res.returncode == 0, res.stderr
    return out, json.loads(res.stdout)


def test_fine_tune_learns(learned, data):
    out, record = learned
    assert record["workers"] == 1 and record["epochs"] == EPOCHS
    assert record["classes"] == len(CLASSES)
    assert record["checkpoint"] == str(out) + "-%04d.params" % EPOCHS
    assert evaluate(Path(record["checkpoint"]), data[1]) >= 90.0
    assert record["top1"] >= 90.0          # the in-training validation agrees
    assert record["img_per_s"] > 0 and record["loss"] < 1.0


def test_files_read_by_mxnet(data, seeded, tmp_path):
    mx = pytest.importorskip("mxnet")
    out = tmp_path / "small"
    res = run_cli(["--from", seeded, "--data", data[0], "--val-data", data[1], "--out", out,
                   "--json", "-q", "--size", "32", "--batch-size", "8", "--epochs", "2",
                   "--max-steps", "2", "--threads", "0"])
    assert res.returncode == 0 and res.stderr == "", res.stderr     # -q: stderr stays empty
    record = json.loads(res.stdout)
    assert record["checkpoint"] == str(out) + "-0002.params" and record["epochs"] == 2
    assert 0 <= record["top1"] <= 100 and record["loss"] > 0 and record["img_per_s"] > 0
    sym, args, aux = mx.model.load_checkpoint(str(out), 2)
    assert "fc6_weight" in args and args["fc6_weight"].shape == (len(CLASSES), 832)
    assert set(sym.list_arguments()) - {"data", "softmax_label"} == set(args)
    assert set(sym.list_auxiliary_states()) == set(aux)
    states = mx.nd.load(str(out) + "-0002.states")
    assert {k[len("mom:"):] for k in states} == set(args)
    assert all(states["mom:" + k].shape == v.shape for k, v in args.items())
    history = json.loads(Path(str(out) + "-train.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all("top1" in h for h in history)
    assert Path(str(out) + ".log").read_text().count(" epoch ") == 2
    pytest.importorskip("matplotlib")
    assert Path(str(out) + "-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_workers_learn_the_same(data, seeded, tmp_path):
    res = run_cli(["--from", seeded, "--data", data[0], "--out", tmp_path / "w2", "--json",
                   "-q", "--workers", "2", "--kvstore", "dist_sync"] + LEARN)
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["workers"] == 2 and record["kvstore"] == "dist_sync"
    assert evaluate(Path(record["checkpoint"]), data[1]) >= 90.0
    assert not list(tmp_path.glob(".*part"))


def first_step(seeded, data, out, *extra):
    """Weights after one plain SGD step (momentum 0, no weight decay, no augmentation)."""
    res = run_cli(["--from", seeded, "--data", data, "--out", out, "--json", "-q",
                   "--size", "32", "--batch-size", "8", "--epochs", "1", "--max-steps", "1",
                   "--lr", "1.0", "--momentum", "0", "--wd", "0", "--no-augment", "--freeze-bn",
                   "--threads", "0"] + list(extra))
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout), mxparams.load(str(out) + "-0001.params")


def test_first_step_gradient_equals_single_process(data, seeded, tmp_path):
    record, one = first_step(seeded, data[0], tmp_path / "one")
    assert record["workers"] == 1
    record, two = first_step(seeded, data[0], tmp_path / "two", "--workers", "2")
    assert record["workers"] == 2 and record["kvstore"] == "dist_sync"
    start = mxparams.load(seeded)
    assert set(one) == set(two)
    moved = 0
    for key in one:
        if key in start and start[key].shape == one[key].shape:
            step = start[key] - one[key]           # lr 1: the aggregated gradient
            moved += bool(np.abs(step).max() > 0)
            # Both steps are read back as differences of float32 weights, so each carries
            # one rounding of the weight (a unit in the last place of |weight|, 1.2e-7 near
            # 1) however exact the gradient is: allow two of them beside the 1e-5 bound.
            ulp = np.spacing(np.abs(start[key]).max().astype(np.float32))
            np.testing.assert_allclose(start[key] - two[key], step, rtol=1e-3,
                                       atol=1e-5 * np.abs(step).max() + 2 * ulp, err_msg=key)
        else:                                      # the new classifier: same start, same step
            np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert moved > 100                             # the step changed the network


def test_resume_equals_uninterrupted(data, seeded, tmp_path):
    common = ["--from", seeded, "--data", data[0], "--size", "32", "--batch-size", "8",
              "--epochs", "3", "--max-steps", "8", "--threads", "0", "-q"]
    whole = run_cli(common + ["--out", tmp_path / "whole"])
    assert whole.returncode == 0, whole.stderr
    prefix = tmp_path / "cut"
    proc = run_cli(common + ["--out", prefix], wait=False)
    record = Path(str(prefix) + "-train.json")
    deadline = time.monotonic() + 300
    while not record.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)                           # written atomically: complete once there
    rate = json.loads(record.read_text())["history"][0]["img_per_s"]
    time.sleep(0.5 * 8 * 8 / rate)                 # half of epoch 2 (8 steps of 8 images)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cut"))
    assert "cut-0001.params" in names and "cut-0002.params" not in names, names
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    resumed = run_cli(common + ["--out", prefix, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a = mxparams.load(str(tmp_path / "whole") + "-0003.params")
    b = mxparams.load(str(prefix) + "-0003.params")
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def refused(args, tmp_path):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    before = sorted(out.iterdir())
    res = run_cli(list(args) + ["--out", out / "run"])
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpn-train: error: "), res.stderr
    assert sorted(out.iterdir()) == before and res.stdout == ""
    return lines[0]


def test_bad_input_is_one_line(data, seeded, tmp_path):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    junk = tmp_path / "junk.params"
    junk.write_bytes(b"not a checkpoint")
    base = ["--from", seeded, "--data", data[0]]
    assert "no images" in refused(["--from", seeded, "--data", empty], tmp_path)
    assert "4 class folders, but --classes is 2" in refused(base + ["--classes", "2"], tmp_path)
    assert "at least 32" in refused(base + ["--size", "16"], tmp_path)
    assert "mean-max" in refused(base + ["--val-data", data[1], "--val-mean-max", "--size", "64"],
                                 tmp_path)
    refused(["--from", junk, "--data", data[0]], tmp_path)
    assert "--resume" in refused(base + ["--resume"], tmp_path)
    assert "exactly one" in refused(["--data", data[0]], tmp_path)


def test_existing_run_is_refused(data, seeded, tmp_path):
    mine = tmp_path / "out" / "run-0001.params"
    mine.parent.mkdir()
    mine.write_bytes(b"the user's")
    res = run_cli(["--from", seeded, "--data", data[0], "--out", tmp_path / "out" / "run"])
    assert res.returncode == 2 and "--resume" in res.stderr
    assert mine.read_bytes() == b"the user's"



def _tree(folder: Path):
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_outputs_never_land_in_the_data(data, seeded, tmp_path):
    """--out inside --data or --val-data: refused before anything is written (a curves PNG in
    a class folder would be trained on as an image of that class after --resume)."""
    train, held_out = data
    before = _tree(train), _tree(held_out)
    quick = ["--from", seeded, "--data", train, "--val-data", held_out, "--size", "32",
             "--batch-size", "4", "--epochs", "1", "--max-steps", "1", "--threads", "0", "-q"]
    for out in (train / CLASSES[0] / "run", held_out / "run"):
        res = run_cli(quick + ["--out", out])
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert lines[0].startswith("dpn-train: error: ") and "inside the input folder" in lines[0]
    assert (_tree(train), _tree(held_out)) == before



EDITED_RECORDS = [
    ([1], "not a JSON object"),
    ({"epoch": "1", "recipe": {}, "history": []}, "epoch is not a count"),
    ({"epoch": True, "recipe": {}, "history": []}, "epoch is not a count"),
    ({"epoch": 1, "recipe": 5, "history": []}, "recipe is not an object"),
    ({"epoch": 1, "recipe": {}, "history": None}, "history is not a list of 1"),
    ({"epoch": 1, "recipe": {}, "history": [{"epoch": 1, "loss": "x", "train_top1": 1.0}]},
     "history entry 1"),
]


@pytest.mark.parametrize("record,why", EDITED_RECORDS)
def test_an_edited_run_record_is_one_line(record, why, tmp_path):
    from dpn_gluon.errors import DPNError
    from dpn_gluon.train.checkpoints import Run
    (tmp_path / "run-train.json").write_text(json.dumps(record))
    with pytest.raises(DPNError, match=why):
        Run(tmp_path / "run").read_record()


def test_resume_from_an_edited_record_is_one_line(data, seeded, tmp_path):
    """Through the command: a record --resume cannot use is one line, no traceback; a
    hand-written valid record is read (and then asks for more --epochs)."""
    base = ["--from", seeded, "--data", data[0], "--out", tmp_path / "run", "--epochs", "1",
            "--resume", "--threads", "0", "-q"]
    for record, why in ((EDITED_RECORDS[0][0], "not a JSON object"),
                        ({"epoch": 1, "recipe": {}, "history": [
                            {"epoch": 1, "loss": 1.5, "train_top1": 25.0}]}, "raise --epochs")):
        (tmp_path / "run-train.json").write_text(json.dumps(record))
        res = run_cli(base)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and why in lines[0], res.stderr



def test_kvstore_misuse_is_one_line(data, seeded, tmp_path):
    """Each of these ended in an UnboundLocalError traceback once (the except clause named a
    class imported later in the try)."""
    base = ["--from", seeded, "--data", data[0]]
    assert "--workers N" in refused(base + ["--kvstore", "dist_sync"], tmp_path)
    assert "distributed --kvstore" in refused(base + ["--workers", "2", "--kvstore", "device"],
                                              tmp_path)
    assert "missing.rec" in refused(["--from", seeded, "--data", tmp_path / "missing.rec",
                                     "--workers", "2", "--kvstore", "dist_sync"], tmp_path)


@pytest.mark.parametrize("flag,value", [("--lr", "1e308"), ("--lr", "nan"), ("--lr", "-1"),
                                        ("--wd", "inf"), ("--momentum", "nan"),
                                        ("--warmup-epochs", "inf"), ("--warmup-epochs", "1e300"),
                                        ("--size", "100000"), ("--batch-size", "1e9"),
                                        ("--batch-size", "1000000000"), ("--epochs", "10**9"),
                                        ("--epochs", "1000000000"), ("--seed", "-1"),
                                        ("--seed", "99999999999"), ("--threads", "100000"),
                                        ("--workers", "100000"), ("--max-steps", "0"),
                                        ("--momentum", "1.5"), ("--wd", "-0.1"),
                                        ("--lr", "1e-400x")])
def test_numbers_out_of_range_are_one_line(data, seeded, tmp_path, flag, value):
    line = refused(["--from", seeded, "--data", data[0], flag, value], tmp_path)
    assert flag in line


@pytest.fixture(scope="module")
def one_epoch(data, seeded, tmp_path_factory):
    """A finished one-epoch run: (its folder, its command line without --out)."""
    args = ["--from", seeded, "--data", data[0], "--size", "32", "--batch-size", "8",
            "--max-steps", "1", "--threads", "0", "-q"]
    folder = tmp_path_factory.mktemp("one_epoch")
    res = run_cli(args + ["--epochs", "1", "--out", folder / "r"])
    assert res.returncode == 0, res.stderr
    return folder, args + ["--epochs", "2", "--resume"]


def _edit_states(path: Path, edit):
    mx = pytest.importorskip("mxnet")             # MXNet's own reader and writer
    states = {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}
    edit(states)
    mx.nd.save(str(path), {k: mx.nd.array(v, dtype=v.dtype) for k, v in states.items()})


def _first(states):
    return sorted(k for k in states if states[k].ndim == 4)[0]


RESUME_FAULTS = {
    "nested": ("r-train.json", lambda p: p.write_text("[" * 100000 + "]" * 100000),
               "not a dpn-train run record"),
    "shape": ("r-0001.states", lambda p: _edit_states(p, lambda s: s.__setitem__(
        _first(s), s[_first(s)][:1])), "has shape"),
    "integer": ("r-0001.states", lambda p: _edit_states(p, lambda s: s.__setitem__(
        _first(s), s[_first(s)].astype(np.int32))), "not float32"),
    "nan": ("r-0001.states", lambda p: _edit_states(p, lambda s: s[_first(s)].fill(np.nan)),
            "NaN or Inf"),
    "unknown": ("r-0001.states", lambda p: _edit_states(p, lambda s: s.__setitem__(
        "mom:no_such_weight", np.zeros(3, np.float32))), "names no trained weight"),
    "aux state": ("r-0001.states", lambda p: _edit_states(p, lambda s: s.__setitem__(
        "mom:conv1_x_1__relu-sp__bn_moving_mean", np.zeros(64, np.float32))),
        "names no trained weight"),
    "no params": ("r-0001.params", lambda p: p.unlink(), "r-0001.params: no such checkpoint file"),
    "missing state": ("r-0001.states", lambda p: _edit_states(p, lambda s: s.pop(_first(s))),
                      "no state for"),
    "params dtype": ("r-0001.params", lambda p: _edit_params(p, lambda k, v: v.astype(
        np.float64) if v.ndim == 4 else v), "not float32"),
    "params int": ("r-0001.params", lambda p: _edit_params(p, lambda k, v: v.astype(
        np.int32) if v.ndim == 4 else v), "r-0001.params"),
    "params shape": ("r-0001.params", lambda p: _edit_params(p, lambda k, v: v[:1]
                                                             if v.ndim == 4 else v), "r-0001"),
    "params nan": ("r-0001.params", lambda p: _edit_params(p, lambda k, v: v * np.nan
                                                           if v.ndim == 4 else v), "NaN or Inf"),
    "other network": ("r-0001.params", lambda p: write_seeded_checkpoint(
        p.parent / "x", "dpn92", seed=1) and os.replace(p.parent / "x-0000.params", p),
        "not the run's network"),
    "symbol edited": ("r-symbol.json", lambda p: p.write_text("{}"), "r-symbol.json"),
    "states list": ("r-0001.states", lambda p: p.write_bytes(mxparams.dumps(
        [np.zeros(3, np.float32)])), "r-0001.states"),
}
#: Every file of a run folder damaged in the ways any input can be: each is one line.
for _name in ("r-train.json", "r-0001.params", "r-0001.states", "r-symbol.json"):
    RESUME_FAULTS["truncated " + _name] = (
        _name, lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), _name)
    RESUME_FAULTS["empty " + _name] = (_name, lambda p: p.write_bytes(b""), _name)
for _name in ("r-train.json", "r-0001.params", "r-0001.states", "r-symbol.json", "r.log",
              "r-curves.png"):
    RESUME_FAULTS["fifo " + _name] = (_name, lambda p: (p.unlink(), os.mkfifo(p)), _name)
    RESUME_FAULTS["symlink " + _name] = (_name, lambda p: (
        os.replace(p, p.parent.parent / (p.name + ".real")),
        p.symlink_to(p.parent.parent / (p.name + ".real"))), _name)
RESUME_FAULTS["nested states"] = ("r-train.json", lambda p: p.write_text(
    '{"epoch": 1, "recipe": ' + "[" * 50000 + "]" * 50000 + "}"), "r-train.json")


def _edit_params(path: Path, edit):
    mx = pytest.importorskip("mxnet")             # MXNet's own reader and writer
    arrays = {k: edit(k, v.asnumpy()) for k, v in mx.nd.load(str(path)).items()}
    mx.nd.save(str(path), {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})


@pytest.mark.parametrize("fault", sorted(RESUME_FAULTS))
def test_resume_from_damaged_files_is_one_line(one_epoch, tmp_path, fault):
    """--resume reads its own files as strictly as dpn-convert reads a checkpoint."""
    folder, args = one_epoch
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    name, damage, why = RESUME_FAULTS[fault]
    damage(run / name)
    before = sorted((p.name, p.lstat().st_size, p.lstat().st_mtime_ns) for p in run.iterdir())
    res = run_cli(args + ["--out", run / "r"])
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("dpn-train: error: ") and why in lines[0], lines[0]
    assert "looked for" not in lines[0]
    assert sorted((p.name, p.lstat().st_size, p.lstat().st_mtime_ns)
                  for p in run.iterdir()) == before        # nothing written, nothing removed


def test_summary_prints_zero_accuracy_as_zero():
    from dpn_gluon.train.cli import summary
    line = summary({"arch": "dpn68", "classes": 4, "epochs": 1, "workers": 1, "loss": 0.0,
                    "train_top1": 0.0, "top1": 0.0, "img_per_s": None,
                    "checkpoint": "r-0001.params"})
    assert "loss 0.0000, train top-1 0.0 %, val top-1 0.00 %, nan img/s" in line



def test_a_new_run_that_fails_in_its_first_epoch_leaves_nothing(data, seeded, tmp_path):
    """No PREFIX.log, no half-written epoch, no folder it created: else the retry is refused
    (PREFIX.log exists) and --resume has no epoch to continue."""
    broken = tmp_path / "broken"
    shutil.copytree(data[0], broken)
    for image in broken.rglob("*.png"):
        image.write_bytes(b"not an image")
    res = run_cli(["--from", seeded, "--data", broken, "--out", tmp_path / "new" / "run",
                   "--size", "32", "--batch-size", "4", "--epochs", "1", "--threads", "0", "-q"])
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "cannot decode" in lines[0], res.stderr
    assert not (tmp_path / "new").exists()



@pytest.mark.parametrize("out", ["w/run", "w/run.params", "w/run-0003.params", "w/run-symbol.json"])
def test_out_names_the_prefix_as_dpn_convert_does(out):
    from dpn_gluon.train.checkpoints import Run
    run = Run(out)
    assert (str(run.params(1)), str(run.symbol)) == ("w/run-0001.params", "w/run-symbol.json")


def test_out_naming_a_folder_is_one_line(data, seeded, tmp_path):
    (tmp_path / "runs").mkdir()
    res = run_cli(["--from", seeded, "--data", data[0], "--out", tmp_path / "runs", "-q"])
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "is a folder" in lines[0], res.stderr
    assert sorted(tmp_path.iterdir()) == [tmp_path / "runs"]
    assert not list((tmp_path / "runs").iterdir())



def test_a_huge_label_in_a_list_is_one_line(data, seeded, tmp_path):
    """One .lst line with label 999999999 asked for a 10^9-class classifier (6 TiB):
    a MemoryError traceback, or on a smaller count an OOM kill."""
    image = sorted((data[0] / CLASSES[0]).iterdir())[0]
    lst = tmp_path / "huge.lst"
    lst.write_text("0\t999999999\t%s\n1\t0\t%s\n" % (image, image))
    for extra in ([], ["--classes", "100000000"]):
        res = run_cli(["--from", seeded, "--data", lst if not extra else data[0],
                       "--out", tmp_path / "run", "-q"] + extra)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        # refused by the list's reader (label) or by the class-count bound (--classes)
        assert ("label 999999999 is beyond the 1000000 classes" in lines[0]
                or "whole number from 1 to 1000000" in lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.lst"]


def test_linear_scaling_and_schedules():
    assert recipe.scaled_lr(1280) == pytest.approx(0.316)
    assert recipe.scaled_lr(256) == pytest.approx(0.316 / 5)
    lr = [recipe.lr_at(s, 10, 9, 1.0, "step") for s in range(90)]
    assert lr[29] == 1.0 and lr[30] == pytest.approx(0.1) and lr[60] == pytest.approx(0.01)
    assert lr[80] == pytest.approx(0.001)
    cos = [recipe.lr_at(s, 10, 9, 1.0, "cosine", warmup_epochs=1) for s in range(90)]
    assert cos[0] == pytest.approx(0.1) and cos[9] == 1.0
    assert cos[10] == pytest.approx(1.0) and cos[-1] < 1e-3
    assert all(a >= b for a, b in zip(cos[9:], cos[10:]))


def test_record_file_trains_through_image_record_iter(data, seeded, tmp_path):
    mx = pytest.importorskip("mxnet")
    rec = mx.recordio.MXIndexedRecordIO(str(tmp_path / "p.idx"), str(tmp_path / "p.rec"), "w")
    files = sorted(data[0].rglob("*.png"))
    for i, f in enumerate(files):
        label = float(CLASSES.index(f.parent.name))
        rec.write_idx(i, mx.recordio.pack(mx.recordio.IRHeader(0, label, i, 0), f.read_bytes()))
    rec.close()
    res = run_cli(["--from", seeded, "--data", tmp_path / "p.rec", "--classes", "4",
                   "--out", tmp_path / "r", "--json", "-q", "--size", "32", "--batch-size", "8",
                   "--epochs", "1", "--max-steps", "2", "--threads", "1"])
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["classes"] == 4 and record["loss"] > 0
    assert (tmp_path / "r-0001.params").is_file()


def children(pid: int):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_launcher_forwards_sigterm_and_leaves_nothing(data, seeded, tmp_path):
    prefix = tmp_path / "w"
    proc = run_cli(["--from", seeded, "--data", data[0], "--out", prefix, "-q", "--workers", "2",
                    "--size", "32", "--batch-size", "8", "--epochs", "3", "--max-steps", "8",
                    "--threads", "0"], wait=False)
    record = Path(str(prefix) + "-train.json")
    deadline = time.monotonic() + 300
    while not record.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    started = children(proc.pid)
    assert len(started) == 4, started            # scheduler, server, two workers
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not [p for p in started if Path("/proc/%d" % p).exists()]
    assert (tmp_path / "w-0001.params").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_lst_list_trains(data, seeded, tmp_path):
    files = sorted(data[0].rglob("*.png"))
    lines = ["%d\t%d\t%s" % (i, CLASSES.index(f.parent.name), f) for i, f in enumerate(files)]
    lst = tmp_path / "train.lst"               # absolute paths: no --root needed
    lst.write_text("\n".join(lines) + "\n")
    res = run_cli(["--from", seeded, "--data", lst, "--out", tmp_path / "l", "--json", "-q",
                   "--size", "32", "--batch-size", "8", "--epochs", "1", "--max-steps", "2",
                   "--threads", "2"])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["classes"] == 4


#: A process that opens the real writer's temporaries of argv[2:] in folder argv[1], writes a
#: byte into each and dies by SIGKILL before committing.
KILLED_WRITER = ("import os, signal, sys\n"
                 "from dpn_gluon.safeio.atomic import Transaction\n"
                 "t = Transaction(); t.__enter__()\n"
                 "held = [t.file(os.path.join(sys.argv[1], n)) for n in sys.argv[2:]]\n"
                 "for f in held: f.__enter__().write(b'x')\n"
                 "os.kill(os.getpid(), signal.SIGKILL)\n")


def killed_while_writing(folder: Path, names) -> int:
    """The pid of a process that opened its atomic writes of ``names`` in ``folder`` and died
    by SIGKILL before committing them: its temporaries are the real writer's."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(folder)] + list(names),
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return proc.pid


def test_temporaries_are_only_this_runs(tmp_path):
    from dpn_gluon.train.checkpoints import Run
    ours = ["w-0002.params", "w-0002.states", "w-train.json", "w-curves.png", "w-symbol.json"]
    others = ["w-big-0001.params", "wx-0001.params", "w-notes.txt", "w-0002.params.bak"]
    pid = killed_while_writing(tmp_path, ours + others)
    (tmp_path / "w-0001.params").write_bytes(b"")            # an output, not a temporary
    (tmp_path / ".w-0003.params.part").write_bytes(b"")      # not the writer's pattern
    # the writer's rule for its temporaries (README): .NAME.<pid>.<8 random>.part
    temps = {m.group(1): p for p in tmp_path.iterdir()
             for m in [re.fullmatch(r"\.(.+)\.%d\.[a-z0-9_]{8}\.part" % pid, p.name)] if m}
    assert sorted(temps) == sorted(ours + others)            # the writer left them all
    run = Run(tmp_path / "w")
    assert run.temporaries() == sorted(temps[n] for n in ours)
    assert run.temporaries([pid]) == run.temporaries()
    assert run.temporaries([pid + 1]) == []                  # another process's: never touched


def test_the_temp_rule_is_atomics_own(tmp_path):
    """Names the real writer makes (a file's temp and the set-aside ``.old`` of a replaced
    file) are what the one rule, and so the run, recognises."""
    from dpn_gluon.safeio.atomic import Transaction, temp_owner, temp_prefix
    from dpn_gluon.train.checkpoints import Run
    (tmp_path / "w-train.json").write_text("{}")
    with Transaction() as tx:
        with tx.file(tmp_path / "w-train.json") as f:
            f.write(b"[]")
        staged = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        tx.commit()
        aside = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(staged) == 1 and staged[0].startswith(temp_prefix("w-train.json"))
    assert len(aside) == 1 and aside[0].endswith(".old")
    for name in staged + aside:
        assert temp_owner(name) == ("w-train.json", os.getpid())
        assert Run(tmp_path / "w").owns(temp_owner(name)[0])


def test_the_launcher_removes_its_killed_workers_temporaries(tmp_path):
    """Workers killed (SIGKILL) in the middle of writing the run's files: once the launcher
    has ended every role, their temporaries are gone, and nothing else is touched."""
    pytest.importorskip("mxnet")
    from dpn_gluon.train.launch import launch
    ours = ["w-0002.params", "w-0002.states", "w-train.json"]
    others = ["w-notes.txt", "x-0001.params"]
    (tmp_path / "w-0001.params").write_bytes(b"kept")
    env = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + env if env else "")
    try:
        status = launch([str(tmp_path)] + ours + others, 2, tmp_path / "w",
                        worker_command=[sys.executable, "-c", KILLED_WRITER])
    finally:
        os.environ.pop("PYTHONPATH") if env is None else os.environ.__setitem__("PYTHONPATH",
                                                                                env)
    assert status == 128 + signal.SIGKILL
    left = sorted(p.name for p in tmp_path.iterdir())
    from dpn_gluon.safeio.atomic import temp_owner
    # the workers' temps of the run's files are gone; theirs of other files are left to
    # the next transaction's sweep in that folder (a later worker may have swept an
    # earlier one's already)
    assert {temp_owner(n)[0] for n in left if temp_owner(n)} == set(others)
    assert (tmp_path / "w-0001.params").read_bytes() == b"kept"
