"""``python -m benchmarks``: conversion, CPU inference and GPU benchmarks; a table, JSON, a chart.

    python -m benchmarks [--quick] [--only conversion|inference|gpu] [--out DIR]

Defaults finish in under 10 minutes on a 2-core machine. ``--quick`` is a smoke run (dpn68
only, few repeats): its numbers are not meant to be quoted.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import ROOT, paired, ratio, run_child, summarize
from . import conversion as conv_bench

MIB = 2.0 ** 20
CONV_TARGETS = {"classic_over_ours": 4.0, "rss_over_file": 1.3, "inproc_over_cp": 3.0}


def machine() -> dict:
    info = {"nproc": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                            if line.startswith("Model name")), "?")
    except OSError:
        info["cpu"] = platform.processor() or "?"
    code = ("import json, importlib\nv = {}\n"
            "for m in ('mxnet', 'torch', 'onnxruntime', 'onnx', 'numpy', 'safetensors'):\n"
            "    try: v[m] = importlib.import_module(m).__version__\n"
            "    except Exception: v[m] = None\nprint(json.dumps(v))")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True).stdout
    info["versions"] = json.loads(out.strip().splitlines()[-1])
    return info


def _fmt(s, scale=1.0, digits=2):
    f = "%%.%df" % digits
    return (f + " [" + f + "-" + f + "]") % (s["median"] * scale, s["min"] * scale, s["max"] * scale)


def _rfmt(r):
    return "%.2fx [%.2f-%.2f]%s" % (r["median"], r["low"], r["high"], "" if r.get("paired") else "*")


def run_conversion(archs, cache, repeats, threads, log):
    results = []
    for name in archs:
        log("conversion: %s (%d repeats)" % (name, repeats))
        raw = conv_bench.measure(name, cache, repeats, threads)
        size = raw["file_bytes"]
        rows = {}
        for label, s in raw["process"].items():
            rows[label] = {"wall": summarize(s["wall"]), "rss": summarize(s["rss"]),
                           "rss_over_file": max(s["rss"]) / size, "samples": s["wall"]}
        inproc = {t: summarize(v) for t, v in raw["in_process"].items()}
        ratios = {}
        for target in ("safetensors", "torch"):
            ours = rows["ours-" + target]
            ratios[target] = {
                "classic_over_ours": paired(rows["classic"]["samples"], ours["samples"]),
                "ours_over_cp": paired(ours["samples"], rows["cp"]["samples"]),
                "ours_over_cp_fsync": paired(ours["samples"], rows["cp+fsync"]["samples"]),
                "inproc_over_cp": ratio(inproc[target], rows["cp"]["wall"]),
                "inproc_over_cp_fsync": ratio(inproc[target], rows["cp+fsync"]["wall"]),
                "rss_over_file": ours["rss_over_file"],
                "rss_over_file_check": rows["ours-%s-check" % target]["rss_over_file"],
            }
        results.append({"arch": name, "file_bytes": size, "rows": rows, "in_process": inproc,
                        "ratios": ratios})
    return results


def run_inference(archs, batches, backends, repeats, min_time, threads, log):
    results = []
    for name in archs:
        log("inference: %s, batches %s, %d repeats, %d threads" % (name, batches, repeats, threads))
        raw = run_child("benchmarks.inference",
                        ["--arch", name, "--batches", ",".join(map(str, batches)),
                         "--backends", ",".join(backends), "--threads", str(threads),
                         "--repeats", str(repeats), "--min-time", str(min_time)], threads)
        for batch in batches:
            b = str(batch)
            ref = np.asarray(raw["module"][b]["logits"]) if "module" in raw else None
            rows = {}
            for backend in backends:
                r = raw[backend][b]
                rows[backend] = {"images_s": summarize(r["samples"]), "iters": r["iters"],
                                 "samples": r["samples"]}
                if ref is not None:
                    rows[backend]["max_rel_vs_module"] = float(
                        np.abs(np.asarray(r["logits"]) - ref).max() / np.abs(ref).max())
            ips = {k: v["samples"] for k, v in rows.items()}
            ratios = {}
            pairs = [("gluon_hybrid_over_module", "gluon-hybrid", "module"),
                     ("gluon_mkldnn_over_module", "gluon-mkldnn", "module"),
                     ("gluon_folded_over_module", "gluon-folded", "module"),
                     ("gluon_hybrid_over_torch", "gluon-hybrid", "torch"),
                     ("gluon_mkldnn_over_torch", "gluon-mkldnn", "torch"),
                     ("gluon_folded_over_torch", "gluon-folded", "torch"),
                     ("ort_over_torch", "ort", "torch")]
            for key, a, c in pairs:
                if a in ips and c in ips:
                    ratios[key] = paired(ips[a], ips[c])
            results.append({"arch": name, "batch": batch, "rows": rows, "ratios": ratios})
    return results


def targets(res) -> list:
    """(description, value, met) for each target of the benchmarks issue (#6)."""
    out = []
    for c in res.get("conversion", []):
        for t, r in c["ratios"].items():
            out.append(("%s -> %s: classic/ours >= 4x" % (c["arch"], t), r["classic_over_ours"]["median"],
                        r["classic_over_ours"]["median"] >= 4))
            out.append(("%s -> %s: peak RSS <= 1.3x file" % (c["arch"], t), r["rss_over_file"],
                        r["rss_over_file"] <= 1.3))
            out.append(("%s -> %s: in-process <= 3x cp" % (c["arch"], t), r["inproc_over_cp"]["median"],
                        r["inproc_over_cp"]["median"] <= 3))
    for r in res.get("inference", []):
        k = "%s bs%d: " % (r["arch"], r["batch"])
        q = r["ratios"]
        if "gluon_mkldnn_over_module" in q:
            v = q["gluon_mkldnn_over_module"]["median"]
            out.append((k + "hybridized Gluon (MKLDNN) / Module >= 1", v, v >= 1))
        best = max((q[x]["median"] for x in ("gluon_mkldnn_over_torch", "gluon_folded_over_torch") if x in q),
                   default=None)
        if best is not None:
            out.append((k + "best Gluon / PyTorch >= 1", best, best >= 1))
        if "ort_over_torch" in q:
            v = q["ort_over_torch"]["median"]
            out.append((k + "ONNX Runtime / PyTorch >= 1.3", v, v >= 1.3))
    return out


def print_report(res, out=sys.stdout):
    p = lambda *a: print(*a, file=out)  # noqa: E731
    m = res["machine"]
    p("machine: %s, %d cores (%s); python %s; %s" % (m["cpu"], m["nproc"], m["platform"], m["python"],
      ", ".join("%s %s" % kv for kv in m["versions"].items() if kv[1])))
    p("command: %s" % res["command"])
    p("ratios: median [min-max] of per-round ratios of interleaved runs; * = ratio of medians "
      "[min/max-max/min] (not measured in the same rounds)")
    for c in res.get("conversion", []):
        p("\nconversion %s (%.1f MiB .params): wall s median [min-max], peak RSS" % (c["arch"], c["file_bytes"] / MIB))
        for label, r in c["rows"].items():
            p("  %-24s %-26s %8.1f MiB  %.2fx file" % (label, _fmt(r["wall"], digits=3),
                                                        r["rss"]["max"] / MIB, r["rss_over_file"]))
        for t, s in c["in_process"].items():
            p("  %-24s %-26s" % ("in-process " + t, _fmt(s, digits=3)))
        for t, r in c["ratios"].items():
            p("  ratios %-11s classic/ours %s  ours/cp %s  in-process/cp %s (/cp+fsync %s)  "
              "RSS/file %.2f (with check %.2f)"
              % (t, _rfmt(r["classic_over_ours"]), _rfmt(r["ours_over_cp"]), _rfmt(r["inproc_over_cp"]),
                 _rfmt(r["inproc_over_cp_fsync"]), r["rss_over_file"], r["rss_over_file_check"]))
    if res.get("inference"):
        p("\ninference, CPU, 224x224, %d threads: images/s median [min-max] (IQR), max rel. logit diff vs Module"
          % res["settings"]["threads"])
        for r in res["inference"]:
            p("  %s batch %d" % (r["arch"], r["batch"]))
            for backend, row in r["rows"].items():
                s = row["images_s"]
                p("    %-14s %-24s (IQR %.2f-%.2f)  %.1e" % (backend, _fmt(s), s["q1"], s["q3"],
                                                          row.get("max_rel_vs_module", float("nan"))))
            p("    ratios (per round, median [min-max]): " + "; ".join("%s %s" % (k, _rfmt(v)) for k, v in r["ratios"].items()))
    if res.get("targets"):
        p("\ntargets (medians):")
        for desc, value, met in res["targets"]:
            p("  %-58s %6.2f  %s" % (desc, value, "met" if met else "MISSED"))
    g = res.get("gpu")
    if g is not None:
        if not g:
            p("\ngpu: no GPU (skipped)")
        else:
            p("\ngpu %s, torch %s (PaddleClas V100 DPN92 fp32 bs1: %.2f ms)" % (
                g["device"], g["torch"], g["paddleclas_v100_dpn92_fp32_bs1_ms"]))
            for r in g["rows"]:
                p("  %-7s %-9s %-3s bs%-3d %8.2f ms [%.2f-%.2f] %9.1f img/s %6.1f TFLOP/s %s" % (
                    r["arch"], r["dtype"], "CL" if r["channels_last"] else "", r["batch"], r["ms"],
                    r["ms_min"], r["ms_max"], r["images_s"], r["tflops"],
                    "" if r["of_peak"] is None else "%.0f%% of peak" % (100 * r["of_peak"])))


def _grouped_bars(ax, groups, series, stats, xticklabels, **ticks):
    """One bar per (group, series) at the median, with min-max error bars: ``stats(group,
    series)`` gives the {"median", "min", "max"} dict, ``series`` is [(key, legend label)]."""
    width = 0.8 / len(series)
    for j, (key, label) in enumerate(series):
        st = [stats(g, key) for g in groups]
        med = [x["median"] for x in st]
        err = [[m - x["min"] for m, x in zip(med, st)], [x["max"] - m for m, x in zip(med, st)]]
        ax.bar(np.arange(len(groups)) + j * width, med, width, yerr=err, capsize=2, label=label)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
    ax.set_xticklabels(xticklabels, **ticks)
    ax.legend(fontsize=7)


def chart(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    inf, conv = res.get("inference", []), res.get("conversion", [])
    panels = (1 if inf else 0) + (1 if conv else 0)
    if not panels:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    axes = iter(axes[0])
    if inf:
        ax = next(axes)
        _grouped_bars(ax, inf, [(b, b) for b in inf[0]["rows"]],
                      lambda r, b: r["rows"][b]["images_s"],
                      ["%s bs%d" % (r["arch"], r["batch"]) for r in inf])
        ax.set_ylabel("images/s (median, min-max)")
        ax.set_title("CPU inference 224x224, %d threads" % res["settings"]["threads"])
    if conv:
        ax = next(axes)
        labels = list(conv[0]["rows"])
        _grouped_bars(ax, labels, [(i, "%s (%.0f MiB)" % (c["arch"], c["file_bytes"] / MIB))
                                   for i, c in enumerate(conv)],
                      lambda k, i: conv[i]["rows"][k]["wall"], labels,
                      rotation=30, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("wall s, whole process (median, min-max)")
        ax.set_title("Conversion")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: dpn68 only, few repeats")
    p.add_argument("--only", choices=("conversion", "inference", "gpu"), action="append",
                   help="run only this part (repeatable)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                   help="folder for results.json and chart.png (default: benchmarks/results)")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "dpn-gluon-bench"),
                   help="folder for the seeded checkpoints (written once) and scratch outputs")
    p.add_argument("--threads", type=int, default=2, help="threads for CPU inference (default 2)")
    a = p.parse_args(argv)
    parts = a.only or ["conversion", "inference", "gpu"]
    if a.quick:
        settings = dict(conv_archs=["dpn68"], conv_repeats=1, inf_archs=["dpn68"], batches=[1],
                        inf_repeats=2, min_time=0.1)
    else:
        settings = dict(conv_archs=["dpn68", "dpn131"], conv_repeats=3, inf_archs=["dpn68", "dpn92"],
                        batches=[1, 8], inf_repeats=5, min_time=0.5)
    settings["threads"] = a.threads
    log = lambda msg: print("bench: " + msg, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    res = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(), "settings": settings}
    os.makedirs(a.out, exist_ok=True)

    def save():     # after each part, so that a later failure keeps what was measured
        res["seconds"] = time.time() - t0
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(res, f, indent=1)

    if "conversion" in parts:
        res["conversion"] = run_conversion(settings["conv_archs"], a.cache, settings["conv_repeats"],
                                           a.threads, log)
        save()
    if "inference" in parts:
        from .inference import BACKENDS
        res["inference"] = run_inference(settings["inf_archs"], settings["batches"], list(BACKENDS),
                                         settings["inf_repeats"], settings["min_time"], a.threads, log)
        save()
    if "gpu" in parts:
        from . import gpu
        res["gpu"] = gpu.measure(archs=["dpn68"] if a.quick else None, out=sys.stderr)
    res["targets"] = targets(res)
    save()
    png = chart(res, os.path.join(a.out, "chart.png"))
    print_report(res)
    print("\nwrote %s%s in %.0f s" % (os.path.join(a.out, "results.json"),
                                     " and " + png if png else "", res["seconds"]))


if __name__ == "__main__":
    main()
