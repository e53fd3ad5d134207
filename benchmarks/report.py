"""Markdown tables from a results.json of ``python -m benchmarks`` (for docs/benchmarks.md).

    python -m benchmarks.report [benchmarks/results/results.json]
"""
import json
import os
import sys

from . import ROOT
from .inference import BACKENDS

COMMANDS = ("cp", "cp+fsync", "classic", "ours-safetensors", "ours-torch", "ours-safetensors-check",
            "ours-torch-check")


def _ordered(rows, order):
    return [k for k in order if k in rows] + [k for k in rows if k not in order]

MIB = 2.0 ** 20


def _r(r):
    return "%.2fx (%.2f-%.2f)" % (r["median"], r["low"], r["high"])


def markdown(res) -> str:
    m = res["machine"]
    lines = ["Machine: %s, %d cores (`nproc`), %s. Python %s, %s. Command: `%s` (%s, %.0f s)."
             % (m["cpu"], m["nproc"], m["platform"], m["python"],
                ", ".join("%s %s" % kv for kv in m["versions"].items() if kv[1]),
                res["command"].strip(), res["date"], res["seconds"]), ""]
    for c in res.get("conversion", []):
        lines += ["**Conversion, %s** (%.1f MiB `.params`), whole process, %d runs: wall s median "
                  "(min-max), peak RSS" % (c["arch"], c["file_bytes"] / MIB, c["rows"]["cp"]["wall"]["n"]), "",
                  "| command | wall s | peak RSS MiB | RSS / file |", "|---|---|---|---|"]
        for label in _ordered(c["rows"], COMMANDS):
            r = c["rows"][label]
            w = r["wall"]
            lines.append("| %s | %.3f (%.3f-%.3f) | %.0f | %.2f |" % (
                label, w["median"], w["min"], w["max"], r["rss"]["max"] / MIB, r["rss_over_file"]))
        for t, s in c["in_process"].items():
            lines.append("| in-process `convert(..., %r, check=False)` | %.3f (%.3f-%.3f) | | |"
                         % (t, s["median"], s["min"], s["max"]))
        lines += ["", "| ratios | classic / ours | ours / cp | in-process / cp | in-process / (cp+fsync) |",
                  "|---|---|---|---|---|"]
        for t, r in c["ratios"].items():
            lines.append("| --to %s | %s | %s | %s | %s |" % (
                t, _r(r["classic_over_ours"]), _r(r["ours_over_cp"]), _r(r["inproc_over_cp"]),
                _r(r["inproc_over_cp_fsync"])))
        lines.append("")
    if res.get("inference"):
        backends = _ordered(res["inference"][0]["rows"], BACKENDS)
        lines += ["**CPU inference**, 224x224, %d threads, images/s median (IQR; min-max), and "
                  "the max relative logit difference from the Module path" % res["settings"]["threads"], "",
                  "| | " + " | ".join("%s bs%d" % (r["arch"], r["batch"]) for r in res["inference"])
                  + " | logits vs Module |", "|---" * (len(res["inference"]) + 2) + "|"]
        for b in backends:
            cells = []
            for r in res["inference"]:
                s = r["rows"][b]["images_s"]
                cells.append("%.2f (%.2f-%.2f; %.2f-%.2f)" % (s["median"], s["q1"], s["q3"], s["min"], s["max"]))
            diff = max(r["rows"][b].get("max_rel_vs_module", 0.0) for r in res["inference"])
            lines.append("| %s | %s | %.1e |" % (b, " | ".join(cells), diff))
        lines += ["", "| ratio (per round) | " + " | ".join("%s bs%d" % (r["arch"], r["batch"])
                                                          for r in res["inference"]) + " |",
                  "|---" * (len(res["inference"]) + 1) + "|"]
        for key in res["inference"][0]["ratios"]:
            lines.append("| %s | %s |" % (key.replace("_over_", " / "),
                                          " | ".join(_r(r["ratios"][key]) for r in res["inference"])))
        lines.append("")
    if res.get("targets"):
        lines += ["| target | measured (median) | |", "|---|---|---|"]
        lines += ["| %s | %.2f | %s |" % (d, v, "met" if ok else "**missed**") for d, v, ok in res["targets"]]
    return "\n".join(lines)


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "benchmarks", "results", "results.json")
    with open(path) as f:
        print(markdown(json.load(f)))
