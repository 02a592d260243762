#!/usr/bin/env python3
"""report.py — turns bench/run.sh's JSON lines into the benchmark table.

    report.py RESULTS.jsonl [--root REPO] [--docs docs/BENCHMARKS.md]

Prints the table (markdown) with the machine it ran on; with --docs, also writes it into
that file between the markers `<!-- bench:begin -->` and `<!-- bench:end -->` (appended
if they are missing). Standard library only.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
MODELS = ("resnet18", "mobilenet_v2", "bert")
LOAD_TARGET = 5.0      # load-to-ready at least 5x faster than ORT session creation
FORWARD_TARGET = 1.1   # forward within 1.1x of ORT


def machine(root):
    cpu, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "model name" and cpu == "unknown CPU":
                    cpu = v.strip()
                elif k == "flags" and not flags:
                    flags = set(v.split())
    except OSError:
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    try:
        commit = "`" + (subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip() or "?") + "`"
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no",
                                "--", "src", "include"], capture_output=True, text=True).stdout.strip()
        if dirty:
            commit += " + uncommitted changes in src/"
    except OSError:
        commit = "?"
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        node = "?"
    try:
        with open("/proc/loadavg") as f:
            loadavg = " / ".join(f.read().split()[:2])
    except OSError:
        loadavg = "?"
    return {"cpu": cpu, "loadavg": loadavg, "cpus": os.cpu_count(), "isa": isa, "kernel": platform.release(),
            "commit": commit, "node": node,
            "date": datetime.date.today().isoformat()}


def load(path):
    by = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            by.setdefault((r["model"], r["kind"]), []).append(r["data"])
    return by


def fmt_ms(x):
    if x is None:
        return "-"
    return f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


def fmt_mb(b):
    return "-" if b is None else f"{b / 1e6:.1f} MB"


def ratio(kiln, ort, target, faster):
    """kiln/ORT, with how that compares to the target."""
    if kiln is None or ort is None or kiln <= 0:
        return "-"
    r = kiln / ort
    if faster:  # target: ORT/kiln >= target
        verdict = "met" if ort / kiln >= target else "missed"
        return f"{r:.2f} ({ort / kiln:.1f}x faster; {verdict})"
    verdict = "met" if r <= target else "missed"
    return f"{r:.2f} ({verdict})"


def table(by, m):
    models = [n for n in MODELS if any(k[0] == n for k in by)]

    def get(name, kind, *keys, agg=None):
        rs = by.get((name, kind))
        if not rs:
            return None
        vals = []
        for r in rs:
            v = r
            for k in keys:
                v = v.get(k) if isinstance(v, dict) else None
            if v is not None:
                vals.append(v)
        if not vals:
            return None
        if agg:
            return agg(vals)
        # Several rounds of the same measurement: the median of their medians, the best of
        # their bests; anything else from the last round.
        if keys and keys[-1] == "best":
            return min(vals)
        if keys and keys[-1] == "median":
            return statistics.median(vals)
        return vals[-1]

    med = statistics.median
    rows = []

    def row(label, f):
        rows.append("| " + label + " | " + " | ".join(f(n) for n in models) + " |")

    n_rounds = max([len(by.get((n, "kiln"), [])) for n in models] +
                   [len(by.get((n, "ort"), [])) for n in models] + [1])
    n_loads = next((get(n, "kiln", "load_ms", "n") for n in models if get(n, "kiln", "load_ms", "n")), "N")
    n_sess = next((get(n, "ort", "session_ms", "n") for n in models if get(n, "ort", "session_ms", "n")), "N")
    n_runs = next((get(n, "ort", "forward_ms", "n") for n in models if get(n, "ort", "forward_ms", "n")), "N")
    n_fresh = max([len(by.get((n, "ort_first"), [])) for n in models] + [0])

    def med_best(kind, key):
        def f(n):
            m, b = get(n, kind, key, "median"), get(n, kind, key, "best")
            return "-" if m is None else f"{fmt_ms(m)} (best {fmt_ms(b)})"
        return f
    rounds = f" x {n_rounds} rounds" if n_rounds > 1 else ""
    row(f"kiln load-to-ready, warm process (median of {n_loads}{rounds})", med_best("kiln", "load_ms"))
    row(f"ONNX Runtime session creation, warm process (median of {n_sess}{rounds})",
        med_best("ort", "session_ms"))
    row(f"**load: kiln / ORT** (target: {LOAD_TARGET:g}x faster)",
        lambda n: ratio(get(n, "kiln", "load_ms", "median"), get(n, "ort", "session_ms", "median"),
                        LOAD_TARGET, True))
    row(f"kiln first load, fresh process (median of {n_fresh})",
        lambda n: fmt_ms(get(n, "kiln_first", "first_load_ms", agg=med)))
    row(f"ONNX Runtime first session, fresh process (median of {n_fresh})",
        lambda n: fmt_ms(get(n, "ort_first", "first_session_ms", agg=med)))
    row("**first load: kiln / ORT**",
        lambda n: ratio(get(n, "kiln_first", "first_load_ms", agg=med),
                        get(n, "ort_first", "first_session_ms", agg=med), LOAD_TARGET, True))
    row("raw read of the .kiln file into a fresh buffer (floor)",
        lambda n: fmt_ms(get(n, "kiln", "read_ms", "median")))
    row(f"kiln forward, 1 thread (median of {n_runs}{rounds})", med_best("kiln", "forward_ms"))
    row(f"ONNX Runtime forward, 1 thread (median of {n_runs}{rounds})", med_best("ort", "forward_ms"))
    row(f"**forward: kiln / ORT** (target: <= {FORWARD_TARGET:g})",
        lambda n: ratio(get(n, "kiln", "forward_ms", "median"), get(n, "ort", "forward_ms", "median"),
                        FORWARD_TARGET, False))
    row("forward: kiln / ORT, best against best",
        lambda n: ratio(get(n, "kiln", "forward_ms", "best"), get(n, "ort", "forward_ms", "best"),
                        FORWARD_TARGET, False))

    def phases(n):
        r = get(n, "kiln", "report")
        if not r:
            return "-"
        return (f"{r['read_ms']:.2f} / {r['verify_ms']:.2f} / {r['place_ms']:.2f} / "
                f"{r['kernels_ms']:.2f} ms")
    row("kiln load phases: read / verify / place / kernels", phases)

    def copied(n):
        r = get(n, "kiln", "report")
        if not r:
            return "-"
        return f"{fmt_mb(r['copied_bytes'])} of {fmt_mb(r['weight_bytes'])}"
    row("kiln weights copied at load", copied)
    row("artifact .kiln / .onnx size",
        lambda n: "-" if get(n, "sizes", "kiln_bytes") is None else
        f"{fmt_mb(get(n, 'sizes', 'kiln_bytes'))} / {fmt_mb(get(n, 'sizes', 'onnx_bytes'))}")
    row("kiln trace + save", lambda n: "-" if get(n, "make", "trace_ms") is None else
        f"{fmt_ms(get(n, 'make', 'trace_ms'))} + {fmt_ms(get(n, 'make', 'save_ms'))}")
    row("ONNX Runtime vs PyTorch, max rel err",
        lambda n: "-" if get(n, "ort", "rel_err") is None else f"{get(n, 'ort', 'rel_err'):.1e}")

    ort_v = next((get(n, "ort", "ort_version") for n in models if get(n, "ort", "ort_version")), "?")
    head = [
        f"Measured {m['date']} at kiln commit {m['commit']} on **{m['cpu']}** "
        f"({m['cpus']} CPUs visible, {m['isa']}, Linux {m['kernel']}); ONNX Runtime {ort_v} "
        f"(onnxruntime-node, Node {m['node']}). One thread each, both pinned to CPU 0. "
        f"Load average at the end of the run (1 / 5 min): {m['loadavg']} — the machine is "
        f"shared, so single numbers move by 10% or more between runs.",
        "",
        "| | " + " | ".join(models) + " |",
        "| --- |" + " --- |" * len(models),
    ]
    return "\n".join(head + rows) + "\n"


def write_docs(path, text):
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = "# Benchmarks\n\n"
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in doc and END in doc and doc.index(BEGIN) < doc.index(END):
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--root", default=".")
    ap.add_argument("--docs")
    a = ap.parse_args()
    text = table(load(a.results), machine(a.root))
    print(text, end="")
    if a.docs:
        write_docs(a.docs, text)
        print(f"(written into {a.docs})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
