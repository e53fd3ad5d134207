"""Where outputs go (dpn_gluon.safeio.outputs) and how they land (atomic.Transaction).

Each class of the data-safety review has tests beyond its first example:
data loss (``--force`` into a folder of user files, ``-o`` = the input's folder for every
target, ``-o .``, symlinked and hard-linked inputs, a file where a folder goes and the
reverse), reports that would hit an input / the check's reference / an output, interrupted
and failed writes (SIGTERM/SIGKILL at many points, a real full tmpfs, stale temps of dead
writers, concurrent ``--force`` writers), and outputs that say what they are (suffixes,
the mxnet prefix, byte-identical reruns). Expected values come from outside the code under
test: the bytes of an uninterrupted run in another process, the file system itself
(inodes, listings), os.kill for liveness.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_convert_formats import fast_folder, write_seeded

from dpn_gluon.convert.cli import main
from dpn_gluon.formats import base as format_base
from dpn_gluon.formats import safetensors as st_format
from dpn_gluon.formats.base import Progress
from dpn_gluon.safeio import atomic, outputs

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("torch", "safetensors", "timm", "mxnet", "gluon", "onnx")
NAME = {"torch": "out.pth", "safetensors": "out.safetensors", "timm": "hub", "mxnet": "out",
        "gluon": "out.params", "onnx": "out.onnx"}


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("dpn-convert: error:"), result.stderr
    assert [line for line in lines if "error:" in line] == lines[-1:], result.stderr
    assert "Traceback" not in result.output
    for w in words:
        assert w in lines[-1], lines[-1]


def snapshot(folder: Path) -> dict:
    """Every path under ``folder`` (hidden ones too) -> sha256 of its bytes, 'dir', or a
    symbolic link's target."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            found[os.path.relpath(os.path.join(root, d), folder)] = "dir"
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):
                found[os.path.relpath(p, folder)] = "-> " + os.readlink(p)
                continue
            with open(p, "rb") as fh:
                found[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return found


def temps(folder: Path) -> list:
    return sorted(n for n in os.listdir(folder) if n.endswith((".part", ".old")))


@pytest.fixture(scope="module")
def shm(tmp_path_factory):
    folder = fast_folder(tmp_path_factory, "outputs")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def half(shm):
    """A float16 dpn68 in the authors' format (25 MB): cheap conversions."""
    (shm / "src").mkdir()
    path, _ = write_seeded(shm / "src", "dpn68", np.float16, bits=False)
    return path


@pytest.fixture
def models(shm, half, request):
    """models/ holding the checkpoint and a user's file, as in the review's example."""
    folder = shm / ("models-" + request.node.name.replace("[", "-").replace("]", ""))
    folder.mkdir()
    shutil.copy(half, folder / "x-0000.params")
    (folder / "notes.txt").write_text("mine\n")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# -- 1. data loss ----------------------------------------------------------------------------

def test_force_into_a_folder_of_user_files_is_refused(models):
    before = snapshot(models)
    r = run(models / "x-0000.params", "--to", "timm", "-o", models, "--force", "--no-check")
    assert_one_line_error(r, str(models), "input")
    assert snapshot(models) == before


def test_force_never_replaces_a_folder_of_other_files(models, shm):
    hub = shm / "hub-user"
    hub.mkdir()
    (hub / "config.json").write_text("{}")
    (hub / "photo.jpg").write_bytes(b"\xff\xd8")
    before = snapshot(hub)
    r = run(models / "x-0000.params", "--to", "timm", "-o", hub, "--force", "--no-check")
    assert_one_line_error(r, "photo.jpg", "refusing")
    assert snapshot(hub) == before and temps(shm) == []



@pytest.mark.parametrize("mine", [["README.md"], ["README.md", "config.json"], ["config.json"]])
def test_force_never_replaces_a_folder_that_only_looks_like_a_timm_folder(models, shm, mine):
    """A project folder holding just its README.md (or a config.json) is not an earlier
    output: every timm folder this tool writes holds config.json and model.safetensors."""
    hub = shm / ("look-alike-" + "-".join(n.split(".")[0] for n in mine))
    hub.mkdir()
    for name in mine:
        (hub / name).write_text("the user's " + name)
    before = snapshot(hub)
    r = run(models / "x-0000.params", "--to", "timm", "-o", hub, "--force", "--no-check")
    assert_one_line_error(r, "model.safetensors", "refusing")
    assert snapshot(hub) == before and temps(shm) == []


def test_timm_folder_input_and_its_parent_as_output(models, shm):
    hub = models / "hub"
    assert run(models / "x-0000.params", "--to", "timm", "-o", hub, "--no-check").exit_code == 0
    (models / "x-0000.params").unlink()
    (models / "notes.txt").unlink()
    before = snapshot(models)
    for out in (models, hub):
        assert_one_line_error(run(hub, "--to", "timm", "-o", out, "--force", "--no-check"),
                              "input")
    assert snapshot(models) == before


@pytest.mark.parametrize("target", TARGETS)
def test_output_is_the_inputs_folder(models, target):
    """-o models/ for every target: a new file beside the input, or a refusal; the input and
    the user's file untouched either way."""
    before = snapshot(models)
    r = run(models / "x-0000.params", "--to", target, "-o", models, "--force", "--no-check")
    after = snapshot(models)
    assert {k: after[k] for k in before} == before
    if target in ("timm", "mxnet"):     # the folder itself / models/x-0000.params: the input
        assert_one_line_error(r, "input")
        assert after == before
    else:
        assert r.exit_code == 0, r.output
        assert sorted(set(after) - set(before)) == ["x" + outputs.SUFFIX[target]]


def test_dot_as_output_folder(half, shm, monkeypatch):
    """-o . : refused where . holds the input; replaced in place where it holds only an
    earlier timm output, and the process still stands in it (no ..XXXX.old left)."""
    work = shm / "dot"
    work.mkdir()
    shutil.copy(half, work / "x-0000.params")
    monkeypatch.chdir(work)
    assert_one_line_error(run("x-0000.params", "--to", "timm", "-o", ".", "--force",
                              "--no-check"), "input")
    hub = shm / "dot-hub"
    assert run(work / "x-0000.params", "--to", "timm", "-o", hub, "--no-check").exit_code == 0
    expected = snapshot(hub)
    (hub / "config.json").write_text("{}")             # an earlier output, different bytes
    monkeypatch.chdir(hub)
    r = run(work / "x-0000.params", "--to", "timm", "-o", ".", "--force", "--no-check")
    assert r.exit_code == 0, r.output
    assert snapshot(hub) == expected and temps(shm) == []
    assert os.path.samefile(os.getcwd(), hub)


def test_links_to_the_input(models, shm):
    src = models / "x-0000.params"
    before = snapshot(models)
    (shm / "hard.pth").unlink(missing_ok=True)
    os.link(src, shm / "hard.pth")
    (shm / "soft.pth").unlink(missing_ok=True)
    os.symlink(src, shm / "soft.pth")
    (shm / "soft-src").unlink(missing_ok=True)
    os.symlink(src, shm / "soft-src")
    for argv in ([src, "--to", "torch", "-o", shm / "hard.pth"],
                 [src, "--to", "torch", "-o", shm / "soft.pth"],
                 [shm / "soft-src", "--to", "gluon", "-o", src],
                 [shm / "soft-src", "--to", "mxnet", "-o", models / "x"]):
        assert_one_line_error(run(*argv, "--force", "--no-check"), "input")
    assert snapshot(models) == before


def test_symlink_output_is_not_followed_or_replaced(models, shm):
    victim = shm / "victim.pth"
    victim.write_bytes(b"user data")
    link = shm / "link.pth"
    link.unlink(missing_ok=True)
    os.symlink(victim, link)
    assert_one_line_error(run(models / "x-0000.params", "--to", "torch", "-o", link, "--force",
                              "--no-check"), "symbolic link")
    assert victim.read_bytes() == b"user data" and link.is_symlink()


def test_a_file_where_a_folder_goes_and_the_reverse(models, shm):
    afile = shm / "afile"
    afile.write_bytes(b"user data")
    src = models / "x-0000.params"
    assert_one_line_error(run(src, "--to", "timm", "-o", afile, "--force"), "is a file")
    assert_one_line_error(run(src, "--to", "torch", "-o", afile / "x.pth"), "is a file")
    (shm / "adir-0000.params").mkdir(exist_ok=True)
    assert_one_line_error(run(src, "--to", "mxnet", "-o", shm / "adir", "--force"),
                          "is a folder")
    assert afile.read_bytes() == b"user data" and temps(shm) == []


def test_missing_parents_are_created_and_removed_on_failure(models, shm, monkeypatch):
    out = shm / "new" / "deeper" / "x.pth"
    assert run(models / "x-0000.params", "--to", "torch", "-o", out, "--no-check").exit_code == 0
    assert out.is_file()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(st_format, "write_safetensors", boom)
    out = shm / "fresh" / "deeper" / "x.safetensors"
    assert_one_line_error(run(models / "x-0000.params", "--to", "safetensors", "-o", out,
                              "--no-check"), "No space left")
    assert not (shm / "fresh").exists()


# -- 2. reports ------------------------------------------------------------------------------

def test_report_may_not_be_the_input_or_an_output(models, shm):
    disguised = shm / "m.html"              # an authors' checkpoint under a report's name
    shutil.copy(models / "x-0000.params", disguised)
    before = disguised.read_bytes()
    out = shm / "o.safetensors"
    assert_one_line_error(run(disguised, "--to", "safetensors", "-o", out, "--report", disguised,
                              "--force"), "input")
    r = run(models / "x-0000.params", "--to", "timm", "-o", shm / "rhub", "--report",
            shm / "rhub" / "r.html")
    assert_one_line_error(r, "report")
    assert disguised.read_bytes() == before
    assert not out.exists() and not (shm / "rhub").exists()


def test_report_may_not_be_a_checks_reference_or_candidate(models, shm):
    disguised = shm / "ref.html"
    shutil.copy(models / "x-0000.params", disguised)
    before = snapshot(shm)
    for ref, cand in ((disguised, models / "x-0000.params"), (models / "x-0000.params", disguised)):
        assert_one_line_error(run("check", ref, cand, "--report", disguised, "--force"), "input")
    assert snapshot(shm) == before


def test_missing_matplotlib_refused_before_writing(models, shm, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = shm / "nomatplotlib.pth"
    assert_one_line_error(run(models / "x-0000.params", "--to", "torch", "-o", out, "--report",
                              shm / "r.png"), "matplotlib")
    assert not out.exists()


# -- 5. interrupted and failed writes --------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_sweep_removes_only_dead_writers_temps(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    names = {".x.pth.%d.abcd_123.part" % dead: True, ".hub.%d.zz9_0abc.old" % dead: True,
             ".x.pth.%d.abcd_123.part" % alive: False, ".x.pth.part": False,
             "x.%d.abcd_123.part" % dead: False, ".x.pth.%d.abcd_1234.part" % dead: False,
             ".x.pth.%d.abcd_123.part.keep" % dead: False}
    for name, ours in names.items():
        if name.endswith(".old"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "previous").write_text("x")
        else:
            (tmp_path / name).write_text("x")
    removed = atomic.sweep(tmp_path)
    assert sorted(removed) == sorted(n for n, ours in names.items() if ours)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, ours in names.items() if not ours)




def _write(path: Path) -> None:
    with atomic.atomic_write(path, force=True) as f:
        f.write(b"card")


def test_sweep_keeps_the_temps_of_a_writer_whose_pid_means_nothing_here(tmp_path, monkeypatch):
    """A writer in another pid namespace (a container sharing the folder) or on another host
    has a pid that looks dead here: its temps and set-aside outputs must survive a sweep
    while it runs (it holds their flock), and be swept once it has gone."""
    monkeypatch.setattr(atomic, "_alive", lambda pid: False)
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.json").write_text("previous")
    with atomic.Transaction() as tx:
        with tx.file(tmp_path / "out.pth") as f:
            f.write(b"new")
        with tx.path(tmp_path / "hub", directory=True) as d:
            (d / "config.json").write_text("new")
        assert atomic.sweep(tmp_path) == [] and len(temps(tmp_path)) == 2
        tx.commit()
        assert atomic.sweep(tmp_path) == [] and len(temps(tmp_path)) == 1   # hub's .old
        # a commit into the placed folder (the model card after the check) must not wait
        # for a flock this transaction still holds on it
        card = threading.Thread(target=_write, args=(tmp_path / "hub" / "README.md",),
                                daemon=True)
        card.start()
        card.join(timeout=20)
        assert not card.is_alive(), "deadlock: a commit into the placed folder blocked"
    assert (tmp_path / "out.pth").read_bytes() == b"new"
    assert (tmp_path / "hub" / "config.json").read_text() == "new" and temps(tmp_path) == []
    # a killed writer's temp (no flock held any more) is still swept
    stale = tmp_path / (".x.pth.%d.abcdefgh.part" % _dead_pid())
    stale.write_bytes(b"x")
    assert atomic.sweep(tmp_path) == [stale.name]


def test_next_write_into_the_folder_sweeps(models, shm):
    out_dir = shm / "sweep"
    out_dir.mkdir()
    stale = out_dir / (".out.pth.%d.abcdefgh.part" % _dead_pid())
    stale.write_bytes(b"x" * 1000)
    assert run(models / "x-0000.params", "--to", "torch", "-o", out_dir / "out.pth",
               "--no-check").exit_code == 0
    assert os.listdir(out_dir) == ["out.pth"]


def _in_tmpfs(size: int, argv, setup=""):
    """Run dpn-convert in a private mount namespace with a tmpfs of ``size`` bytes at
    ``$D``; returns (rc, stderr, what $D holds afterwards)."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode:
        pytest.skip("no private mount namespace here (needs unshare and CAP_SYS_ADMIN)")
    d = "/mnt" if os.path.isdir("/mnt") else "/tmp"
    script = ('mount -t tmpfs -o size=%d none %s && %s "$@" 2>/dev/stderr; rc=$?; '
              'echo "::rc=$rc"; echo "::ls=$(ls -A %s | tr "\\n" " ")"' % (size, d, setup, d))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                        sys.executable, "-m", "dpn_gluon.convert.cli",
                        *[str(a).replace("$D", d) for a in argv]],
                       env=env, capture_output=True, text=True, timeout=300)
    fields = dict(line[2:].split("=", 1) for line in p.stdout.splitlines() if line.startswith("::"))
    return int(fields["rc"]), p.stderr, fields["ls"].split()


@pytest.mark.parametrize("target", TARGETS)
def test_real_full_disk(half, target):
    """A 1 MiB tmpfs: every writer (safetensors, the timm folder, ONNX included) fails in one
    line, exit 2, and leaves the folder as empty as it was."""
    rc, err, left = _in_tmpfs(1 << 20, [half, "--to", target, "-o", "$D/" + NAME[target],
                                        "--no-check"])
    assert rc == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("dpn-convert: error:"), err
    assert "No space left on device" in err and left == [], (err, left)
    assert NAME[target] in err and ".part" not in err, err      # names the output, not a temp


@pytest.mark.parametrize("code", ["EIO", "EDQUOT", "EFBIG"])
@pytest.mark.parametrize("target", ["safetensors", "timm", "gluon"])
def test_other_write_errors_are_one_line(models, shm, monkeypatch, target, code):
    """I/O error, quota, file too large (injected: no file system here makes them on demand)
    in the middle of a write: one line naming the output, exit 2, nothing left."""
    import errno

    def write(self, data):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
    monkeypatch.setattr(Progress, "write", write)
    folder = shm / ("errno-%s-%s" % (target, code))
    r = run(models / "x-0000.params", "--to", target, "-o", folder / NAME[target], "--no-check")
    assert_one_line_error(r, NAME[target], os.strerror(getattr(errno, code)))
    assert not folder.exists()


def test_full_disk_during_the_symbol_json_leaves_no_params(half):
    """Room for PREFIX-0000.params but not for its JSON: neither stays."""
    pytest.importorskip("mxnet")
    room = (half.stat().st_size // 4096 + 8) * 4096
    rc, err, left = _in_tmpfs(room, [half, "--to", "mxnet", "-o", "$D/back", "--no-check"])
    assert rc == 2 and "No space left on device" in err and "Traceback" not in err, err
    assert left == []


# -- 8. outputs that say what they are -------------------------------------------------------

OTHER_NAMES = {"torch": ["x.safetensors", "x.onnx", "x.params", "x.json", "x.png"],
               "safetensors": ["x.pth", "x.pt", "x.bin", "x.onnx", "x.params"],
               "timm": ["x.pth", "x.safetensors", "x.onnx", "x.params", "config.json"],
               "mxnet": ["x.pth", "x.safetensors", "x.onnx", "x.bin"],
               "gluon": ["x.pth", "x.safetensors", "x.onnx", "x.html"],
               "onnx": ["x.pth", "x.safetensors", "x.params", "x.pt"]}


@pytest.mark.parametrize("target", TARGETS)
def test_a_name_of_another_format_is_refused(models, shm, target):
    for name in OTHER_NAMES[target]:
        assert_one_line_error(run(models / "x-0000.params", "--to", target, "-o", shm / name,
                                  "--no-check"), name, "--to " + target)
    assert not any((shm / n).exists() for n in OTHER_NAMES[target]) and temps(shm) == []


@pytest.mark.parametrize("name", ["back", "back.params", "back-0003.params", "back-symbol.json"])
def test_mxnet_output_names_are_prefixes(tmp_path, name):
    plan = outputs.conversion_plan(Path("a/x-0000.params"), "mxnet", "mxnet", tmp_path / name,
                                   force=False)
    assert plan.files == [tmp_path / "back-symbol.json", tmp_path / "back-0000.params"]


def test_unknown_suffixes_are_allowed(tmp_path):
    plan = outputs.conversion_plan(Path("a/x-0000.params"), "mxnet", "torch",
                                   tmp_path / "x.weights", force=False)
    assert plan.files == [tmp_path / "x.weights"]


# -- progress bars ---------------------------------------------------------------------------

class _Bar:
    made = []

    def __init__(self, total, **kw):
        self.total, self.n, self.closed = total, 0, False
        _Bar.made.append(self)

    def update(self, n):
        self.n += n

    def close(self):
        self.closed = True


@pytest.mark.parametrize("target", ["torch", "safetensors", "timm", "gluon"])
def test_every_big_write_has_a_progress_bar_that_finishes(models, shm, monkeypatch, target):
    import tqdm
    monkeypatch.setattr(tqdm, "tqdm", _Bar)
    monkeypatch.setattr(format_base, "PROGRESS_MIN_BYTES", 1)
    _Bar.made = []
    r = run(models / "x-0000.params", "--to", target, "-o", shm / ("bar-" + NAME[target]),
            "--force", "--no-check")
    assert r.exit_code == 0, r.output
    assert len(_Bar.made) == 1
    bar = _Bar.made[0]
    assert bar.closed and 0.95 * bar.total <= bar.n <= 1.05 * bar.total + 4096, (bar.n, bar.total)


# -- crash consistency and determinism --------------------------------------------------------

def _files(out: Path, target: str) -> dict:
    if target == "timm":
        return snapshot(out) if out.is_dir() else {}
    paths = outputs.output_files(target, out)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


def _convert(src, target, out, kill=None, after=0.0):
    """Run a conversion in a subprocess; with ``kill``, send it ``after`` seconds after its
    first temp appears. Returns (exit code, stderr, seconds to the first temp, seconds, pid)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "dpn_gluon.convert.cli", str(src), "--to", target, "-o",
            str(out), "--no-check", "--force"]
    start = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_temp = None
    while p.poll() is None and first_temp is None:
        if any(n.endswith(".part") and ".%d." % p.pid in n for n in os.listdir(out.parent)):
            first_temp = time.monotonic() - start
        else:
            time.sleep(0.002)
    if kill is not None and p.poll() is None:
        time.sleep(after)
        p.send_signal(kill)
    stdout, stderr = p.communicate(timeout=300)
    return p.returncode, stderr, first_temp, time.monotonic() - start, p.pid


def _remove(out: Path, target: str):
    if target == "timm":
        shutil.rmtree(out, ignore_errors=True)
    for p in outputs.output_files(target, out):
        if p.is_file():
            p.unlink()


def crash_consistency(src: Path, folder: Path, target: str, points: int, signals):
    """Kill a conversion at ``points`` moments spread over its writing (from the moment its
    first temp appears to the end of an uninterrupted run), alternating ``signals``:
    the output is absent or byte-equal to an uninterrupted run, a caught signal leaves no
    temp of its own (a SIGKILLed run before it may have), and
    the next run into the folder leaves none either and gives the same bytes again."""
    if target == "onnx":
        pytest.importorskip("onnx")
    out = folder / NAME[target]
    rc, err, first_temp, took, _ = _convert(src, target, out)
    assert rc == 0 and first_temp is not None, err
    writing = took - first_temp
    expected = _files(out, target)
    assert expected
    outcomes = []
    for i in range(points):
        _remove(out, target)
        sig = signals[i % len(signals)]
        at = writing * i / points          # from the first temp to near the end of the run
        rc, err, _, _, pid = _convert(src, target, out, kill=sig, after=at)
        got = _files(out, target)
        assert got in ({}, expected), (sig, at, rc, err)
        outcomes.append("complete" if got else "absent")
        assert "Traceback" not in err, err
        if sig != signal.SIGKILL:          # caught: the cleanup ran, one line
            assert rc in (0, -sig, 128 + sig), (rc, err)
            if rc == 128 + sig:
                assert err.strip().splitlines()[-1] == \
                    "dpn-convert: error: interrupted by %s" % signal.Signals(sig).name, err
            assert [n for n in temps(folder) if ".%d." % pid in n] == [], (at, rc, err)
    _remove(out, target)
    rc, err, _, _, _ = _convert(src, target, out)
    assert rc == 0, err
    assert _files(out, target) == expected        # the same input gives the same bytes
    assert temps(folder) == []
    return outcomes


@pytest.fixture(scope="module")
def float32(shm):
    """The seeded float32 dpn68 (48 MB) the crash tests interrupt."""
    (shm / "f32").mkdir()
    path, _ = write_seeded(shm / "f32", "dpn68", np.float32, bits=False)
    return path


@pytest.mark.parametrize("target", TARGETS)
def test_crash_consistency(float32, shm, target):
    """CI: 4 kill points per target (24 in all: SIGTERM and SIGKILL), about 25 s on 2 cores;
    the full matrix (10 points per signal, SIGTERM/SIGKILL/SIGHUP/SIGINT, per target: 240) is
    test_crash_consistency_full (slow, about 8 min)."""
    folder = shm / ("crash-" + target)
    folder.mkdir()
    outcomes = crash_consistency(float32, folder, target, 4, (signal.SIGTERM, signal.SIGKILL))
    assert "absent" in outcomes, outcomes     # some of the points did hit the conversion


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGHUP, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("target", TARGETS)
def test_crash_consistency_full(float32, shm, target, sig):
    folder = shm / ("crash-full-%s-%d" % (target, sig))
    folder.mkdir()
    outcomes = crash_consistency(float32, folder, target, 10, (sig,))
    assert "absent" in outcomes, outcomes     # some of the points did hit the conversion


def test_concurrent_force_writers_on_one_timm_folder(float32, shm):
    """Two --force writers into one timm folder: each wins completely or fails in one line;
    the folder ends as one complete output, with nothing left beside it."""
    folder = shm / "race"
    folder.mkdir()
    hub = folder / "hub"
    assert _convert(float32, "timm", hub)[0] == 0
    expected = snapshot(hub)
    (hub / "config.json").write_text("{}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "dpn_gluon.convert.cli", str(float32), "--to", "timm", "-o",
            str(hub), "--no-check", "--force"]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert "Traceback" not in err
        assert p.returncode == 0 or (p.returncode == 2 and len(err.strip().splitlines()) == 1), err
    assert snapshot(hub) == expected
    assert os.listdir(folder) == ["hub"]


def test_every_command_turns_signals_into_one_line(capsys):
    """dpn-convert, dpn-evaluate and dpn-predict share the handlers (dpn_gluon.cliutil): a
    SIGTERM mid-run runs the cleanup (finally blocks) and exits 143 with one line."""
    import click

    from dpn_gluon.cliutil import OneLineCommand
    cleaned = []

    @click.command(cls=OneLineCommand, prog="dpn-evaluate")
    def command():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            cleaned.append(True)

    with pytest.raises(SystemExit) as e:
        command.main(args=[])
    assert e.value.code == 143 and cleaned == [True]
    assert capsys.readouterr().err == "dpn-evaluate: error: interrupted by SIGTERM\n"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL       # handlers put back


@pytest.mark.parametrize("target", ["mxnet", "timm"])
@pytest.mark.parametrize("failure", ["sigterm", "error"])
def test_a_failure_after_the_commit_puts_the_previous_outputs_back(models, shm, monkeypatch,
                                                                    target, failure):
    """The check runs after the outputs are in place; if it is interrupted or fails, every
    output of the command (mxnet's pair, the timm folder) is put back as it was."""
    from dpn_gluon.convert import pipeline
    from dpn_gluon.errors import DPNError
    out = shm / ("after-" + failure) / NAME[target]
    out.parent.mkdir(exist_ok=True)
    for p in outputs.output_files(target, out):
        if target == "timm":
            p.mkdir()
            (p / "config.json").write_text("previous")
            (p / "model.safetensors").write_text("previous")
        else:
            p.write_text("previous")
    before = snapshot(out.parent)

    def check_written(*a, **k):
        if failure == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        raise DPNError("the check could not run")
    monkeypatch.setattr(pipeline, "check_written", check_written)
    r = run(models / "x-0000.params", "--to", target, "-o", out, "--force")
    if failure == "sigterm":
        assert r.exit_code == 143 and r.stderr.strip().splitlines()[-1] == \
            "dpn-convert: error: interrupted by SIGTERM", r.stderr
    else:
        assert_one_line_error(r, "could not run")
    assert snapshot(out.parent) == before


def test_our_safetensors_writer_reads_back_with_the_library(tmp_path):
    """formats.safetensors.write_safetensors against safetensors' own reader: every dtype a checkpoint
    here holds, 0-d and big-endian arrays, metadata; and the same bytes whatever the order
    the metadata dict was built in."""
    from safetensors import safe_open
    from safetensors.numpy import load_file
    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.standard_normal((3, 4, 1, 1)).astype(np.float32),
               "a.half": rng.standard_normal(5).astype(np.float16),
               "b.big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
               "n": np.zeros((), np.int64), "u": np.arange(3, dtype=np.uint8),
               "d": np.ones(2, np.float64), "flag": np.array([True, False])}
    meta = {"z": "1", "architecture": "dpn68", "a": "x"}
    paths = []
    for i, order in enumerate((meta, dict(reversed(list(meta.items()))))):
        paths.append(tmp_path / ("t%d.safetensors" % i))
        with open(paths[-1], "wb") as f:
            st_format.write_safetensors(f, tensors, order)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    got = load_file(str(paths[0]))
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype.newbyteorder("=") and np.array_equal(got[k], v), k
    with safe_open(str(paths[0]), "np") as f:
        assert f.metadata() == meta
