#!/usr/bin/env python3
"""report.py — turns bench/run.sh's JSON lines into the benchmark tables.

    report.py RESULTS.jsonl [--root REPO] [--docs docs/BENCHMARKS.md]

Prints the tables (markdown) with the machine, date and commit; with --docs, also writes
them into that file between the markers `<!-- bench:begin -->` and `<!-- bench:end -->`
(appended if they are missing; nothing else in the file is touched). Standard library only.

Aggregation: a figure measured in fresh processes is the median over the processes; a
figure measured in warm processes is the median of the rounds' medians (and the best of
their bests). Ratios are kiln / peer of those medians, within the one run.
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
SIDES = ("kiln", "ort", "torch")
PEERS = {"ort": "ONNX Runtime", "torch": "PyTorch"}
LOAD_TARGET = 5.0      # load-to-ready at least 5x faster than ORT session creation
READ_TARGET = 2.0      # ... and within 2x of reading the artifact file
FORWARD_TARGET = 1.1   # forward within 1.1x of ORT at the same thread count


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

    def run(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    commit = "`" + (run("git", "-C", root, "rev-parse", "--short", "HEAD") or "?") + "`"
    if run("git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "src", "include"):
        commit += " + uncommitted changes in src/"
    return {"cpu": cpu, "cpus": os.cpu_count(), "isa": isa, "kernel": platform.release(),
            "commit": commit, "node": run("node", "--version") or "?",
            "date": datetime.date.today().isoformat()}


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                recs.append(json.loads(line))
    return recs


# ---- formatting ----

def fmt_ms(x):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f} ms"
    if x >= 10:
        return f"{x:.1f} ms"
    if x >= 1:
        return f"{x:.2f} ms"
    return f"{x:.3f} ms"


def fmt_mb(b):
    return "-" if b is None else f"{b / 1e6:.1f} MB"


def fmt_ratio(r):
    if r is None:
        return "-"
    return f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"


def speed(kiln, peer):
    """'0.06 (17x faster)' / '1.07 (1.07x slower)'."""
    if kiln is None or peer is None or kiln <= 0 or peer <= 0:
        return "-"
    r = kiln / peer
    if r < 1:
        return f"{fmt_ratio(r)} ({peer / kiln:.1f}x faster)"
    return f"{fmt_ratio(r)} ({r:.2f}x slower)"


# ---- the figures ----

class Figures:
    def __init__(self, recs):
        self.recs = recs
        self.run = next((r["data"] for r in recs if r["kind"] == "run"), {})

    def select(self, kind, model, **match):
        out = []
        for r in self.recs:
            if r["kind"] != kind or r["model"] != model:
                continue
            if all(r.get(k) == v for k, v in match.items()):
                out.append(r["data"])
        return out

    @staticmethod
    def dig(d, keys):
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return d

    def fresh(self, side, model, cache, *keys, which="median"):
        """Median (or best) over fresh processes of a number."""
        vals = [self.dig(d, keys) for d in self.select(side + "_first", model, cache=cache)]
        vals = [v for v in vals if isinstance(v, (int, float))]
        if not vals:
            return None
        return min(vals) if which == "best" else statistics.median(vals)

    def count_fresh(self, cache):
        ns = [len(self.select(s + "_first", m, cache=cache)) for s in SIDES for m in MODELS]
        return max(ns + [0])

    def warm(self, side, model, threads, key, which="median"):
        """Median of the rounds' medians (or best of their bests) of a {median, best} stat."""
        vals = [self.dig(d, (key, which)) for d in self.select(side + "_warm", model, threads=threads)]
        vals = [v for v in vals if isinstance(v, (int, float))]
        if not vals:
            return None
        return min(vals) if which == "best" else statistics.median(vals)

    def last(self, kind, model, *keys, **match):
        for d in reversed(self.select(kind, model, **match)):
            v = self.dig(d, keys)
            if v is not None:
                return v
        return None


# Names of each side's figures.
LOAD_KEY = {"kiln": "load_ms", "ort": "session_ms", "torch": "load_ms"}
COLD_LOAD_KEY = {"kiln": "cold_load_ms", "ort": "cold_session_ms", "torch": "cold_load_ms"}
FIRST_LOAD_KEY = {"kiln": "first_load_ms", "ort": "first_session_ms", "torch": "first_load_ms"}


def summary(F, models, m):
    """The targets, met or missed, one column per model."""
    rows = []

    def row(label, f):
        rows.append("| " + label + " | " + " | ".join(f(n) for n in models) + " |")

    def load_target(get):
        def f(n):
            k, o = get("kiln", n), get("ort", n)
            if k is None or o is None or k <= 0:
                return "-"
            x = o / k
            verdict = "met" if x >= LOAD_TARGET else f"**missed** by {LOAD_TARGET / x:.2f}x"
            return f"{x:.1f}x faster ({fmt_ms(k)} vs {fmt_ms(o)}; {verdict})"
        return f

    row("load-to-ready >= 5x faster than ORT session creation: warm process, warm cache",
        load_target(lambda s, n: F.warm(s, n, 1, LOAD_KEY[s])))
    row("... warm process, model file evicted from the page cache",
        load_target(lambda s, n: F.warm(s, n, 1, COLD_LOAD_KEY[s])))
    row("... fresh process, warm cache",
        load_target(lambda s, n: F.fresh(s, n, "warm", FIRST_LOAD_KEY[s])))
    row(f"... fresh process, cold cache ({F.run.get('cold_method', '?')})",
        load_target(lambda s, n: F.fresh(s, n, "cold", FIRST_LOAD_KEY[s])))

    def read_target(load_key, read_key):
        def f(n):
            k, r = F.warm("kiln", n, 1, load_key), F.warm("kiln", n, 1, read_key)
            if k is None or r is None or r <= 0:
                return "-"
            x = k / r
            verdict = "met" if x <= READ_TARGET else f"**missed** by {x / READ_TARGET:.2f}x"
            return f"{fmt_ratio(x)} of the read ({fmt_ms(k)} vs {fmt_ms(r)}; {verdict})"
        return f
    row("load-to-ready within 2x of reading the file: warm cache (warm process)",
        read_target("load_ms", "read_ms"))
    row("... cold cache (file evicted, warm process)", read_target("cold_load_ms", "cold_read_ms"))

    def fwd_target(t, which="median"):
        def f(n):
            k, o = F.warm("kiln", n, t, "forward_ms", which), F.warm("ort", n, t, "forward_ms", which)
            if k is None or o is None or o <= 0:
                return "-"
            x = k / o
            verdict = "met" if x <= FORWARD_TARGET else f"**missed** by {x / FORWARD_TARGET:.2f}x"
            return f"{fmt_ratio(x)} ({fmt_ms(k)} vs {fmt_ms(o)}; {verdict})"
        return f
    row("forward within 1.1x of ORT, 1 thread (kiln / ORT, medians)", fwd_target(1))
    row("... best against best", fwd_target(1, "best"))
    row("forward within 1.1x of ORT, 2 threads (kiln / ORT, medians)", fwd_target(2))
    row("... best against best", fwd_target(2, "best"))
    head = ["| target (SPEC section 7) | " + " | ".join(models) + " |",
            "| --- |" + " --- |" * len(models)]
    return "\n".join(head + rows) + "\n"


def model_table(F, n):
    """One model: kiln, ONNX Runtime, PyTorch and the ratios."""
    run = F.run
    rounds, loads, cold_loads = run.get("rounds", "N"), run.get("loads", "N"), run.get("cold_loads", "N")
    runs = run.get("runs", "N")
    nf, nc = F.count_fresh("warm"), F.count_fresh("cold")
    rows = []

    def row(label, get, ratio=speed, fmt=fmt_ms, best=None):
        """A row of medians (and, given best(side), the best in brackets); ratios of medians."""
        vals = {s: get(s) for s in SIDES}
        cells = []
        for s in SIDES:
            b = best(s) if best else None
            cell = fmt(vals[s]) if vals[s] is not None else "-"
            cells.append(cell if b is None or vals[s] is None else f"{cell} (best {fmt(b)})")
        cells += [ratio(vals["kiln"], vals["ort"]), ratio(vals["kiln"], vals["torch"])]
        rows.append("| " + label + " | " + " | ".join(cells) + " |")

    def warm_row(label, t, keyf):
        row(label, lambda s: F.warm(s, n, t, keyf(s)),
            best=lambda s: F.warm(s, n, t, keyf(s), "best"))

    def fresh_row(label, cache, keyf):
        row(label, lambda s: F.fresh(s, n, cache, keyf(s)),
            best=lambda s: F.fresh(s, n, cache, keyf(s), which="best"))

    wp = f"median of {loads} x {rounds}"
    warm_row(f"load-to-ready, warm process, warm cache, 1 thread ({wp})", 1, LOAD_KEY.get)
    warm_row(f"load-to-ready, warm process, warm cache, 2 threads ({wp})", 2, LOAD_KEY.get)
    warm_row(f"load-to-ready, warm process, file evicted ({cold_loads} x {rounds}, posix_fadvise)",
             1, COLD_LOAD_KEY.get)
    fresh_row(f"load-to-ready, fresh process, warm cache (median of {nf})", "warm", FIRST_LOAD_KEY.get)
    fresh_row(f"load-to-ready, fresh process, cold cache (median of {nc}, {run.get('cold_method', '?')})",
              "cold", FIRST_LOAD_KEY.get)
    fresh_row("time to first inference (load + first forward), fresh process, warm cache", "warm",
              lambda s: "ttfi_ms")
    fresh_row("time to first inference, fresh process, cold cache", "cold", lambda s: "ttfi_ms")
    fresh_row("first forward alone, fresh process, warm cache", "warm", lambda s: "first_forward_ms")
    warm_row(f"forward, 1 thread (median of {runs} x {rounds})", 1, lambda s: "forward_ms")
    warm_row(f"forward, 2 threads (median of {runs} x {rounds})", 2, lambda s: "forward_ms")

    def speedup(s):
        a, b = F.warm(s, n, 1, "forward_ms"), F.warm(s, n, 2, "forward_ms")
        return a / b if a and b else None
    row("forward speed-up, 2 threads over 1", speedup,
        ratio=lambda k, p: fmt_ratio(k / p) if k and p else "-",
        fmt=lambda x: f"{x:.2f}x")

    def kb(key):
        def get(s):
            v = F.fresh(s, n, "warm", key)
            return v * 1024 if v is not None else None
        return get

    def growth(s):
        a, b = F.fresh(s, n, "warm", "maxrss_kb"), F.fresh(s, n, "warm", "rss_before_kb")
        return (a - b) * 1024 if a is not None and b is not None else None
    mem_ratio = lambda k, p: fmt_ratio(k / p) if k and p else "-"  # noqa: E731
    row("peak RSS of a fresh process that loads and runs once (ru_maxrss)", kb("maxrss_kb"),
        ratio=mem_ratio, fmt=fmt_mb)
    row("... of which the process had before the load (runtime, inputs)", kb("rss_before_kb"),
        ratio=mem_ratio, fmt=fmt_mb)
    row("... peak minus that: what loading and running the model added", growth,
        ratio=mem_ratio, fmt=fmt_mb)
    head = ["| | kiln | ONNX Runtime | PyTorch | kiln / ORT | kiln / PyTorch |",
            "| --- | --- | --- | --- | --- | --- |"]
    return "\n".join(head + rows) + "\n"


def floor_table(F, models):
    rows = []

    def row(label, f):
        rows.append("| " + label + " | " + " | ".join(f(n) for n in models) + " |")

    run = F.run
    row(f"read the .kiln file into a fresh buffer, warm cache (median of {run.get('loads', 'N')} x "
        f"{run.get('rounds', 'N')})", lambda n: fmt_ms(F.warm("kiln", n, 1, "read_ms")))
    row("... into a buffer already touched (the copy alone)",
        lambda n: fmt_ms(F.warm("kiln", n, 1, "read_prefaulted_ms")))
    row("... into a fresh buffer, file evicted (posix_fadvise)",
        lambda n: fmt_ms(F.warm("kiln", n, 1, "cold_read_ms")))

    def ratio(load_key, read_key):
        def f(n):
            k, r = F.warm("kiln", n, 1, load_key), F.warm("kiln", n, 1, read_key)
            return fmt_ratio(k / r) if k and r else "-"
        return f
    row("**kiln load-to-ready / read**, warm cache", ratio("load_ms", "read_ms"))
    row("**kiln load-to-ready / read**, file evicted", ratio("cold_load_ms", "cold_read_ms"))

    def phases(key, kind="kiln_warm", **match):
        def f(n):
            r = F.last(kind, n, key, **match)
            if not r:
                return "-"
            return (f"{r['read_ms']:.2f} / {r['verify_ms']:.2f} / {r['place_ms']:.2f} / "
                    f"{r['kernels_ms']:.2f} ms")
        return f
    row("kiln load phases, read / verify / place / kernels: fresh process, warm cache",
        phases("first_report", "kiln_first", cache="warm"))
    row("... fresh process, cold cache", phases("first_report", "kiln_first", cache="cold"))
    row("... warm process, warm cache", phases("report", threads=1))
    row("... warm process, file evicted", phases("cold_report", threads=1))

    def checksum_share(n):
        """What verifying adds to a load (SPEC section 3: under 10%): fresh load-only
        processes hashing the weights against twins that read every page of them instead
        (kiln_bench --no-verify), medians, on one CPU and on two; and in a warm process the
        verify phase against the rest (an unchanged file verified once is not hashed again
        in the process)."""
        out = []
        for cpus in (1, 2):
            a = [d["first_load_ms"] for d in F.select("kiln_verify", n, cpus=cpus, verify=1)]
            b = [d["first_load_ms"] for d in F.select("kiln_verify", n, cpus=cpus, verify=0)]
            if a and b:
                ma, mb = statistics.median(a), statistics.median(b)
                out.append(f"{100 * (ma - mb) / mb:+.0f}% ({fmt_ms(ma)} vs {fmt_ms(mb)})")
            else:
                out.append("-")
        adds = []
        for d in F.select("kiln_warm", n, threads=1):
            r = d.get("report")
            if r and r["total_ms"] > r["verify_ms"] >= 0:
                adds.append(r["verify_ms"] / (r["total_ms"] - r["verify_ms"]))
        out.append(f"{100 * statistics.median(adds):.0f}%" if adds else "-")
        return " / ".join(out)
    row("what verifying the checksums adds to load-to-ready (SPEC: under 10%): fresh process "
        "on 1 CPU / on 2 CPUs (hashing vs only reading every weight page) / warm process",
        checksum_share)

    def faults(n):
        ld = F.last("kiln_first", n, "load_faults", cache="warm")
        fw = F.last("kiln_first", n, "forward_faults", cache="warm")
        return "-" if not ld or not fw else f"{ld[0]} / {fw[0]}"
    row("kiln page faults (minor) in a fresh process: load / first forward", faults)

    def copied(n):
        r = F.last("kiln_warm", n, "report")
        return "-" if not r else f"{fmt_mb(r['copied_bytes'])} of {fmt_mb(r['weight_bytes'])}"
    row("kiln weights copied at load", copied)
    row("file sizes: .kiln / .onnx / .pt",
        lambda n: "-" if F.last("sizes", n, "kiln_bytes") is None else
        f"{fmt_mb(F.last('sizes', n, 'kiln_bytes'))} / {fmt_mb(F.last('sizes', n, 'onnx_bytes'))} / "
        f"{fmt_mb(F.last('sizes_pt', n, 'pt_bytes'))}")
    row("kiln trace + save", lambda n: "-" if F.last("make", n, "trace_ms") is None else
        f"{fmt_ms(F.last('make', n, 'trace_ms'))} + {fmt_ms(F.last('make', n, 'save_ms'))}")
    row("not counted above, fresh process, warm cache: `require('onnxruntime-node')` / `import torch`",
        lambda n: f"{fmt_ms(F.fresh('ort', n, 'warm', 'require_ms'))} / "
                  f"{fmt_ms(F.fresh('torch', n, 'warm', 'import_ms'))}")
    row("... cold cache (the runtime's libraries read from disk here, before the timed load)",
        lambda n: f"{fmt_ms(F.fresh('ort', n, 'cold', 'require_ms'))} / "
                  f"{fmt_ms(F.fresh('torch', n, 'cold', 'import_ms'))}")

    def err(side):
        def f(n):
            vs = [d.get("rel_err") for k in ("_warm", "_first") for d in F.select(side + k, n)]
            vs = [v for v in vs if isinstance(v, (int, float))]
            return f"{max(vs):.1e}" if vs else "-"
        return f
    row("ONNX Runtime vs PyTorch eager, max rel err", err("ort"))
    row("TorchScript vs PyTorch eager, max rel err", err("torch"))

    def evicted(n):
        worst = 0
        for side in SIDES:
            for d in F.select(side + "_warm", n):
                ce = d.get("cold_evict")
                if ce:
                    worst = max(worst, ce["max_resident"])
            for r in F.recs:
                if r["kind"] == side + "_first" and r["model"] == n and r.get("evict"):
                    for fl in r["evict"].get("files", []):
                        worst = max(worst, fl["resident"] if fl["resident"] >= 0 else fl["pages"])
        return f"{worst} pages"
    row("most pages of a model file still cached after evicting/dropping (0: all cold)", evicted)
    head = ["| | " + " | ".join(models) + " |", "| --- |" + " --- |" * len(models)]
    return "\n".join(head + rows) + "\n"


PIPELINE_KINDS = (("kiln_eager", "kiln eager: one kiln_load after another"),
                  ("kiln_async", "kiln async: all loads at once"),
                  ("kiln_async_heavy_first", "kiln async, heavy models first"),
                  ("ort_seq", "ONNX Runtime: sessions one after another"),
                  ("ort_concurrent", "ONNX Runtime: Promise.all of the creations"),
                  ("ort_workers", "ONNX Runtime: one worker thread per session"))
PIPELINE_TARGET = 0.6  # async pipeline ready in at most 0.6x the eager time


def pipeline_part(F):
    """The four-model pipeline from bench/pipeline.sh's raw results, if it ran."""
    recs = [r["data"] for r in F.recs if r["kind"] == "pipeline"]
    if not recs:
        return ""

    def vals(kind, key):
        xs = [(d.get("data") or d).get(key) for d in recs if d.get("kind") == kind]
        return [x for x in xs if isinstance(x, (int, float))]

    def med(kind, key):
        xs = vals(kind, key)
        return statistics.median(xs) if xs else None

    n = max((len(vals(k, "ready_ms")) for k, _ in PIPELINE_KINDS), default=0)
    rows = ["| | all ready (load-to-ready) | all ready and run once |", "| --- | --- | --- |"]
    for k, label in PIPELINE_KINDS:
        rows.append(f"| {label} | {fmt_ms(med(k, 'ready_ms'))} | {fmt_ms(med(k, 'ready_and_run_ms'))} |")

    def target_row(label, num, den, target, low):
        cells = []
        for key in ("ready_ms", "ready_and_run_ms"):
            a = num(key)
            b = den(key)
            if a is None or b is None or b <= 0:
                cells.append("-")
                continue
            x = a / b
            if low:
                verdict = "met" if x <= target else f"**missed** by {x / target:.2f}x"
                cells.append(f"{x:.2f} ({verdict})")
            else:
                verdict = "met" if x >= target else f"**missed** by {target / x:.2f}x"
                cells.append(f"{x:.1f}x ({verdict})")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    def best_ort(key):
        xs = [med(k, key) for k in ("ort_seq", "ort_concurrent", "ort_workers")]
        xs = [x for x in xs if x is not None]
        return min(xs) if xs else None
    target_row(f"**kiln async / kiln eager** (target <= {PIPELINE_TARGET:g})",
               lambda k: med("kiln_async", k), lambda k: med("kiln_eager", k), PIPELINE_TARGET, True)
    target_row(f"**ORT one after another / kiln eager** (target >= {LOAD_TARGET:g}x)",
               lambda k: med("ort_seq", k), lambda k: med("kiln_eager", k), LOAD_TARGET, False)
    target_row(f"**ORT's best / kiln async** (target >= {LOAD_TARGET:g}x)",
               best_ort, lambda k: med("kiln_async", k), LOAD_TARGET, False)
    return ("### Four-model pipeline\n\n"
            f"`bench/pipeline.sh --runs {F.run.get('pipeline_runs', '?')} --no-docs`, run by "
            f"`bench/run.sh` in the same run: the SD-shaped text encoder, UNet, post-quant conv "
            f"and VAE decoder of `tests/models/export_sd.py`, each figure the median of {n} fresh "
            f"processes (its own section below explains the variants and the numbers).\n\n"
            + "\n".join(rows) + "\n")


def render(recs, m):
    F = Figures(recs)
    models = [n for n in MODELS if any(r["model"] == n for r in recs)]
    run = F.run
    if run.get("commit"):  # what was measured, not what HEAD is now
        commit = f"`{run['commit']}`" + (" + uncommitted changes in src/" if run.get("dirty") else "")
        m = dict(m, commit=commit, date=run.get("date", m["date"]))
    ort_v = next((d.get("ort_version") for r in recs for d in [r["data"]]
                  if r["kind"].startswith("ort") and isinstance(d, dict) and d.get("ort_version")), "?")
    torch_v = next((d.get("torch_version") for r in recs for d in [r["data"]]
                    if r["kind"].startswith("torch") and isinstance(d, dict) and d.get("torch_version")), None)
    blas = next((d.get("blas") for r in recs for d in [r["data"]]
                 if r["kind"].startswith("torch") and isinstance(d, dict) and d.get("blas")), "?")
    peers = f"ONNX Runtime {ort_v} (onnxruntime-node, Node {m['node']})"
    if torch_v:
        peers += f"; PyTorch {torch_v} (Debian, BLAS: {blas}), TorchScript via torch.jit.trace"
    mins = run.get("seconds", 0) / 60
    parts = [
        f"Measured {m['date']} at kiln commit {m['commit']} on **{m['cpu']}** "
        f"({m['cpus']} CPUs, {m['isa']}, Linux {m['kernel']}); {peers}. "
        f"Load average (1 / 5 / 15 min) at the start: {run.get('loadavg_start', '?')}, at the end: "
        f"{run.get('loadavg_end', '?')} — the machine is shared, so single numbers move by 10% "
        f"or more between runs; ratios are taken within the run. The run took {mins:.1f} min "
        f"(fresh processes {run.get('fresh', '?')} warm + {run.get('cold', '?')} cold per side, "
        f"{run.get('rounds', '?')} warm-process rounds per thread count). Cold fresh processes: "
        f"{run.get('cold_method', '?')}.",
        "",
        "### Targets",
        "",
        summary(F, models, m),
    ]
    for n in models:
        parts += [f"### {n}", "", model_table(F, n)]
    pp = pipeline_part(F)
    if pp:
        parts += [pp]
    parts += ["### The read floor, kiln's load phases, sizes, correctness", "",
              floor_table(F, models)]
    return "\n".join(parts)


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
    text = render(load(a.results), machine(a.root))
    print(text, end="")
    if a.docs:
        write_docs(a.docs, text)
        print(f"(written into {a.docs})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
