"""PaddleClas's own DPN, run by paddlepaddle in a process of its own: the independent
reference of test_paddle_reference.py (paddle does not share a process with MXNet or torch).

The model is PaddleClas's ``ppcls/arch/backbone/model_zoo/dpn.py``, read from the paddleclas
2.6.0 wheel given by ``--wheel`` (tests/paddle_helpers.py downloads and checks it) and
compiled by path: the ``paddleclas`` package is never imported (it pulls faiss, scikit-learn
and an OpenCV that upgrades numpy). The file's one foreign import, ``load_dygraph_pretrain``
(downloads only), is a stub that refuses. Nothing of dpn_gluon is imported here.

Modes (each also a job of ``serve``):

- ``checkpoint ARCH OUT.pdparams --classes N --seed S``: PaddleClas's model with seeded
  weights and BatchNorm statistics (about one channel in eight with a variance of 1e-5 to
  1e-3, whose gamma keeps it O(1): a wrong epsilon moves those channels by up to 7x),
  written by ``paddle.save(model.state_dict(), OUT)``.
- ``logits ARCH PDPARAMS PIXELS.npy OUT.npz --classes N [--float64] [--taps]``:
  ``model.set_state_dict(paddle.load(PDPARAMS))`` after checking that the file's keys and
  shapes are exactly the model's (else one line, exit 3; the reply also says whether they
  come in the model's state-dict order); then the logits of the already-normalized NCHW pixels, and with ``--taps`` every block's outputs (PaddleClas's
  layer names: ``pool2d_max``, ``dpnN.sum``, ``dpnN.dense``, ``conv5_x_x_bn``).
- ``serve``: one JSON job per line on stdin (``{"mode": ..., the options by name}``), one
  JSON reply per line on stdout (``{"ok": true, ...}`` or ``{"ok": false, "exit": 3,
  "error": ...}``): one paddle start for a whole test session.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import types
import zipfile

import numpy as np

#: Where the file sits in the wheel.
DPN_PATH = "paddleclas/ppcls/arch/backbone/model_zoo/dpn.py"
#: PaddleClas's constructors.
CONSTRUCTORS = {"dpn68": "DPN68", "dpn92": "DPN92", "dpn98": "DPN98", "dpn107": "DPN107",
                "dpn131": "DPN131"}
EXIT_MISMATCH = 3


class Mismatch(Exception):
    """The file is not exactly the model's state dict."""


def load_dpn_module(wheel: str):
    """PaddleClas's dpn.py as a module, compiled from the wheel with a stubbed save_load."""
    with zipfile.ZipFile(wheel) as z:
        source = z.read(DPN_PATH).decode("utf-8")
    package = DPN_PATH[: -len("/dpn.py")].replace("/", ".")
    ppcls = ".".join(package.split(".")[:2])        # four levels up from model_zoo
    # ``from ....utils.save_load import load_dygraph_pretrain`` resolves to
    # paddleclas.ppcls.utils.save_load: stub it and its parents, nothing else
    stub_names = ["paddleclas", ppcls, ppcls + ".utils", ppcls + ".utils.save_load"]
    for name in stub_names:
        mod = types.ModuleType(name)
        mod.__path__ = []
        sys.modules[name] = mod

    def load_dygraph_pretrain(*args, **kwargs):
        raise RuntimeError("the reference never downloads PaddleClas's pretrained weights")

    sys.modules[stub_names[-1]].load_dygraph_pretrain = load_dygraph_pretrain
    module = types.ModuleType(package + ".dpn")
    module.__package__ = package
    module.__file__ = "%s!/%s" % (wheel, DPN_PATH)
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def build(dpn, arch: str, classes: int, dtype: str = "float32"):
    import paddle
    # Every weight is replaced from a file or a seed: constant initial values, which cost
    # nothing, in place of Paddle's random ones (seconds for the large DPNs).
    init = paddle.nn.initializer.Constant(0.0)
    paddle.nn.initializer.set_global_initializer(init, init)
    # PaddleClas names every parameter (ParamAttr), and dygraph refuses a name twice in one
    # name space: each model gets a fresh one, so that one process builds many.
    with paddle.utils.unique_name.guard():
        model = getattr(dpn, CONSTRUCTORS[arch])(class_num=classes)
    if dtype != "float32":      # its BatchNorm(dtype="float32") ignores the default dtype
        model.to(dtype=dtype)
    model.eval()
    return model


# -- checkpoint ------------------------------------------------------------------------------

def seeded_state(model, seed: int):
    """name -> float32 array for every entry of ``model.state_dict()``: He-normal convs (the
    last conv of each block scaled by 1/sqrt(blocks)), BatchNorm gamma U(0.5, 1.5), beta
    N(0, 0.2), mean N(0, 0.5), variance U(0.5, 2) with ~1/8 of the channels at 1e-5..1e-3
    (their gamma times sqrt(var + 1e-5), so they stay O(1) under Paddle's epsilon),
    classifier N(0, 1/C)."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    blocks = sum(1 for k in state if k.endswith("c1x1_c_func._conv.weight"))
    out = {}
    for key, value in state.items():
        shape = tuple(value.shape)
        if key.endswith("_conv.weight"):
            a = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
            if key.endswith("c1x1_c_func._conv.weight"):
                a /= np.sqrt(blocks)
        elif key == "out.weight":                       # Paddle's Linear: (in, out)
            a = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), shape)
        elif key == "out.bias":
            a = rng.normal(0.0, 0.1, shape)
        elif key.endswith("._mean"):
            a = rng.normal(0.0, 0.5, shape)
        elif key.endswith("._variance"):              # after its gamma, in state-dict order
            a = rng.uniform(0.5, 2.0, shape)
            small = rng.random(shape) < 0.125
            var = 10.0 ** rng.uniform(-5.0, -3.0, shape)
            a = np.where(small, var, a)
            gamma = key[: -len("_variance")] + "weight"
            out[gamma] = np.where(small, out[gamma] * np.sqrt(var + 1e-5),
                                  out[gamma]).astype(np.float32)
        elif key.endswith(".weight"):
            a = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(".bias"):
            a = rng.normal(0.0, 0.2, shape)
        else:
            raise Mismatch("an entry the seeding does not know: %s" % key)
        out[key] = a.astype(np.float32)       # one float64 array at a time
    return out


def checkpoint(dpn, arch: str, out: str, classes: int = 1000, seed: int = 0) -> dict:
    import paddle
    model = build(dpn, arch, classes)
    model.set_state_dict(seeded_state(model, seed))
    paddle.save(model.state_dict(), out)
    return {"path": out, "tensors": len(model.state_dict())}


# -- logits ----------------------------------------------------------------------------------

def check_keys(model, loaded) -> None:
    """The file holds exactly the model's keys, at the model's shapes (PaddleClas's
    set_state_dict only warns and skips)."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in loaded.items()}
    missing = sorted(set(own) - set(got))
    unexpected = sorted(set(got) - set(own))
    misshapen = sorted(k for k in set(own) & set(got) if own[k] != got[k])
    if missing or unexpected or misshapen:
        raise Mismatch("the file is not PaddleClas's state dict: %d missing (%s), %d "
                       "unexpected (%s), %d misshapen (%s)"
                       % (len(missing), ", ".join(missing[:3]), len(unexpected),
                          ", ".join(unexpected[:3]), len(misshapen), ", ".join(misshapen[:3])))


def _tap_hooks(model, taps: dict):
    def keep(name, split):
        def hook(layer, inputs, output):
            if split:
                taps[name + ".sum"], taps[name + ".dense"] = (o.numpy() for o in output)
            else:
                taps[name] = output.numpy()
        return hook

    hooks = [model.pool2d_max.register_forward_post_hook(keep("pool2d_max", False)),
             model.conv5_x_x_bn.register_forward_post_hook(keep("conv5_x_x_bn", False))]
    blocks = {id(layer) for layer in model.dpn_func_list}
    for name, layer in model.named_children():          # dpn1 .. dpnN, as add_sublayer named them
        if id(layer) in blocks:
            hooks.append(layer.register_forward_post_hook(keep(name, True)))
    return hooks


def logits(dpn, arch: str, pdparams: str, pixels: str, out: str, classes: int = 1000,
           float64: bool = False, taps: bool = False) -> dict:
    import paddle
    dtype = "float64" if float64 else "float32"
    model = build(dpn, arch, classes, dtype)
    loaded = paddle.load(pdparams)
    loaded.pop("StructuredToParameterName@@", None)
    check_keys(model, loaded)
    in_order = list(loaded) == list(model.state_dict())      # as paddle.save would write it
    if float64:
        loaded = {k: np.asarray(loaded.pop(k), np.float64) for k in list(loaded)}
    model.set_state_dict(loaded)
    del loaded
    if any(str(v.dtype) != "paddle." + dtype for v in model.state_dict().values()):
        raise Mismatch("the %s model holds a tensor of another dtype" % dtype)
    tapped: dict = {}
    hooks = _tap_hooks(model, tapped) if taps else []
    with paddle.no_grad():
        x = paddle.to_tensor(np.load(pixels).astype(dtype))
        y = model(x).numpy()
    for h in hooks:
        h.remove()
    np.savez(out, logits=y, **{"tap:" + k: v for k, v in tapped.items()})
    return {"path": out, "shape": list(y.shape), "dtype": str(y.dtype),
            "in_state_dict_order": in_order}


# -- command line ----------------------------------------------------------------------------

def _reset_peak_rss() -> None:
    try:      # Linux >= 4.0: "5" resets VmHWM, so each job reports its own peak
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0    # KiB on Linux


def run_job(dpn, job: dict) -> dict:
    """One job; its reply carries the peak resident memory of the process during it."""
    job = dict(job)
    mode = job.pop("mode")
    gc.collect()
    _reset_peak_rss()
    try:
        result = {"checkpoint": checkpoint, "logits": logits}[mode](dpn, **job)
        peak = _peak_rss_mib()
    finally:
        gc.collect()
    return dict(result, ok=True, peak_rss_mib=round(peak, 1))


def serve(dpn) -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = run_job(dpn, json.loads(line))
        except Mismatch as e:
            reply = {"ok": False, "exit": EXIT_MISMATCH, "error": str(e)}
        except Exception as e:       # the client shows it; the server keeps serving
            reply = {"ok": False, "exit": 1, "error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", required=True, help="the paddleclas 2.6.0 wheel")
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("checkpoint")
    c.add_argument("arch", choices=sorted(CONSTRUCTORS))
    c.add_argument("out")
    c.add_argument("--classes", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    lg = sub.add_parser("logits")
    lg.add_argument("arch", choices=sorted(CONSTRUCTORS))
    lg.add_argument("pdparams")
    lg.add_argument("pixels")
    lg.add_argument("out")
    lg.add_argument("--classes", type=int, default=1000)
    lg.add_argument("--float64", action="store_true")
    lg.add_argument("--taps", action="store_true")
    sub.add_parser("serve")
    args = vars(p.parse_args(argv))
    dpn = load_dpn_module(args.pop("wheel"))
    if args["mode"] == "serve":
        return serve(dpn)
    try:
        print(json.dumps(run_job(dpn, args)))
    except Mismatch as e:
        print("paddle_reference: %s" % e, file=sys.stderr)
        return EXIT_MISMATCH
    return 0


if __name__ == "__main__":
    sys.exit(main())
