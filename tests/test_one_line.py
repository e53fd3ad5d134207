"""One line means one line: every refusal of every command is exactly one line on stderr,
exit 2, whichever optional packages are installed.

The refusals are the kinds the suite covers command by command (a FIFO, a missing file,
junk bytes, an option out of range, a data set without one readable image, a runtime that
is not installed...); each runs in a subprocess as installed, and again with OpenCV, torch
and MXNet made unavailable (tests/blocked/sitecustomize.py: importing one fails as if it
were not installed). A note (the missing-OpenCV one, the no-class-names one) may only come
on a path that goes on to do the work, never before a refusal.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpn_gluon import write_seeded_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BLOCKERS = Path(__file__).resolve().parent / "blocked"
COMMANDS = {
    "dpn-convert": "from dpn_gluon.convert.cli import main; main()",
    "dpn-evaluate": "from dpn_gluon.evaluate.cli import evaluate_main; evaluate_main()",
    "dpn-predict": "from dpn_gluon.evaluate.cli import predict_main; predict_main()",
    "dpn-train": "from dpn_gluon.train.cli import main; main(prog_name='dpn-train')",
}
#: Packages made unavailable in turn ("" : as installed).
WITHOUT = ["", "cv2", "torch", "mxnet", "cv2,torch,mxnet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp("inputs")
    ckpt = write_seeded_checkpoint(root / "dpn68", "dpn68", seed=1, classes=4)
    os.mkfifo(root / "fifo.params")
    (root / "junk.params").write_bytes(b"not a checkpoint at all")
    (root / "junk.png").write_bytes(b"\x89PNG not an image")
    for name in ("a", "b"):
        (root / "bad" / name).mkdir(parents=True)
        (root / "bad" / name / "x.png").write_bytes(b"not an image")
        (root / "good" / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), (10, 200, 30)).save(root / "good" / name / "x.png")
    (root / "empty" / "a").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "three.txt").write_text("x\ny\nz\n")         # 3 names for 4 classes
    (root / "taken.pth").write_bytes(b"the user's")
    return root, ckpt


def refusals(root: Path, ckpt: Path):
    """(command, arguments, what the line must say) for each kind of refusal."""
    good, bad, out = root / "good", root / "bad", root / "out"
    return [
        ("dpn-convert", [root / "fifo.params", "--to", "torch", "-o", out / "a.pth"], "FIFO"),
        ("dpn-convert", [root / "missing.params", "--to", "torch", "-o", out / "a.pth"], ""),
        ("dpn-convert", [root / "junk.params", "--to", "torch", "-o", out / "a.pth"], ""),
        ("dpn-convert", [ckpt, "--to", "nothing", "-o", out / "a.pth"], "nothing"),
        ("dpn-convert", [ckpt, "--to", "torch", "-o", root / "taken.pth"], "exists"),
        ("dpn-evaluate", [root / "fifo.params", "--data", good, "--size", "32"], "FIFO"),
        ("dpn-evaluate", [root / "junk.params", "--data", good, "--size", "32"], ""),
        ("dpn-evaluate", [ckpt, "--data", good, "--size", "16"], "16"),
        ("dpn-evaluate", [ckpt, "--data", good, "--size", "64", "--mean-max"], "mean-max"),
        ("dpn-evaluate", [ckpt, "--data", root / "empty", "--size", "32"], ""),
        ("dpn-evaluate", [ckpt, "--data", bad, "--size", "32", "--workers", "0"], "decoded"),
        ("dpn-evaluate", [ckpt, "--data", good, "--size", "32", "--labels",
                          root / "three.txt"], "three.txt"),
        ("dpn-predict", [ckpt, good / "a" / "x.png", "--size", "32", "--labels",
                         root / "three.txt"], "three.txt"),
        ("dpn-predict", [root / "fifo.params", root / "junk.png", "--size", "32"], "FIFO"),
        ("dpn-predict", [ckpt, root / "junk.png", "--size", "32"], "junk.png"),
        ("dpn-predict", [ckpt, root / "missing.png", "--size", "32"], "missing.png"),
        ("dpn-predict", [ckpt, good / "a" / "x.png", "--size", "16"], "16"),
        ("dpn-train", ["--from", root / "fifo.params", "--data", good, "--out", out / "r"], ""),
        ("dpn-train", ["--from", ckpt, "--data", good, "--out", out / "r", "--lr", "1e308"],
         "--lr"),
        ("dpn-train", ["--from", ckpt, "--data", root / "empty", "--out", out / "r",
                       "--size", "32"], ""),
        ("dpn-train", ["--from", ckpt, "--data", good, "--out", out / "r", "--resume"],
         "--resume"),
    ]


def run(command, args, without: str):
    env = dict(os.environ, DPN_TEST_BLOCK=without,
               PYTHONPATH=os.pathsep.join([str(BLOCKERS), str(ROOT)]
                                          + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.run([sys.executable, "-c", COMMANDS[command]] + [str(a) for a in args],
                          env=env, capture_output=True, text=True, timeout=600)


def test_the_blocker_blocks():
    res = run("dpn-predict", ["--version"], "cv2")
    assert res.returncode == 0
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u, sys; import dpn_gluon.deps as d; "
                               "print(d.importable('cv2'), u.find_spec('numpy') is not None)"],
        env=dict(os.environ, DPN_TEST_BLOCK="cv2", PYTHONPATH=os.pathsep.join(
            [str(BLOCKERS), str(ROOT)])), capture_output=True, text=True)
    assert probe.stdout.split() == ["False", "True"], probe.stderr


@pytest.mark.parametrize("without", WITHOUT, ids=lambda w: "without " + (w or "nothing"))
def test_every_refusal_is_one_line(inputs, without):
    root, ckpt = inputs
    failures = []
    for command, args, says in refusals(root, ckpt):
        before = sorted(p.name for p in (root / "out").iterdir())
        res = run(command, args, without)
        lines = res.stderr.strip().splitlines()
        ok = (res.returncode == 2 and len(lines) == 1
              and lines[0].startswith(command + ": error: ")
              # a blocked package may be what is refused first
              and (says in lines[0] or (without and "not installed" in lines[0]))
              and sorted(p.name for p in (root / "out").iterdir()) == before)
        if not ok:
            failures.append((command, [str(a) for a in args], res.returncode, res.stderr[-600:]))
    assert not failures, failures


def test_the_note_comes_with_the_work(inputs):
    """Without OpenCV, the note comes on a run that predicts (and evaluates) images, once."""
    root, ckpt = inputs
    res = run("dpn-predict", [ckpt, root / "good" / "a" / "x.png", "--size", "32"], "cv2")
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stderr.splitlines() if "opencv-python-headless" in line]
    assert len(notes) == 1 and "note:" in notes[0], res.stderr
    res = run("dpn-evaluate", [ckpt, "--data", root / "good", "--size", "32", "--workers", "0",
                               "--json"], "cv2")
    assert res.returncode == 0, res.stderr
    assert sum("opencv-python-headless" in line for line in res.stderr.splitlines()) == 1
