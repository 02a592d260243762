#!/usr/bin/python3
"""torch_bench.py — the PyTorch side of kiln's benchmark: a traced TorchScript module.

    torch_bench.py --make MODELDIR NAME        trace the seeded model, save MODELDIR/NAME.pt
    torch_bench.py MODELDIR NAME --first [--threads N]
    torch_bench.py MODELDIR NAME [--loads N] [--cold-loads N] [--evict CMD]
                                 [--runs N] [--warmup N] [--threads N] [--budget S]

--make builds the same seeded model tests/models/export_models.py exports (its build()),
runs torch.jit.trace on it with the exported input (MODELDIR/NAME.input_0.npy) and saves it
with torch.jit.save, once: NAME.pt.stamp remembers the export's stamp and the torch version.

The measurement prints one JSON line. Always:
  import_ms        `import torch` (not part of any figure below)
  rss_before_kb    resident memory after the import and reading the input
  first_load_ms    the first torch.jit.load of NAME.pt in this process
  first_forward_ms its first forward (torch.no_grad()); ttfi_ms the two together
  maxrss_kb        peak resident memory (getrusage ru_maxrss) after that forward
  rel_err          max|torchscript - torch| / max|torch| against NAME.output_0.npy
--first stops there (the fresh-process measurement; the caller sets the page cache).
Otherwise, in this warm process (medians / bests):
  load_ms          --loads (10) further torch.jit.load, warm page cache
  cold_load_ms     --cold-loads (3) loads, each after `CMD --evict NAME.pt` (bench_kiln's
                   page-cache tool) dropped the file from the page cache
  forward_ms       --runs (50) forwards after --warmup (5)
--budget S stops the forward and warm-load loops early once they have 5 samples and have taken
S seconds each (default: no limit); "n" says how many ran.
torch.set_num_threads(--threads, default 1), torch.set_num_interop_threads(1).
Needs Debian's python3-torch: run it with /usr/bin/python3.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

T0 = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402
IMPORT_MS = (time.perf_counter() - T0) * 1e3

HERE = os.path.dirname(os.path.abspath(__file__))


def now_ms():
    return time.perf_counter() * 1e3


def stat(xs):
    return {"median": statistics.median(xs), "best": min(xs), "n": len(xs)}


def over_budget(ts, t0, budget_s):
    """A timed loop stops early once it has 5 samples and has run budget_s (0: never)."""
    return len(ts) >= 5 and budget_s > 0 and now_ms() - t0 > budget_s * 1e3


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def rel_err(got, ref):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return float("inf")
    m = np.abs(ref).max()
    d = np.abs(got - ref).max()
    return float(d / m if m > 0 else d)


def make(d, name):
    """Trace and save NAME.pt unless it is there for this export and torch version."""
    pt, stamp_path = os.path.join(d, name + ".pt"), os.path.join(d, name + ".pt.stamp")
    with open(os.path.join(d, name + ".stamp")) as f:
        stamp = f.read().strip() + " torch " + torch.__version__
    try:
        with open(stamp_path) as f:
            if f.read().strip() == stamp and os.path.exists(pt):
                return 0
    except FileNotFoundError:
        pass
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "models"))
    import export_models  # noqa: E402  (its build() is the seeded model)
    m, _, _, _ = export_models.build(name)
    m.eval()
    x = torch.from_numpy(np.load(os.path.join(d, name + ".input_0.npy")))
    with torch.no_grad():
        traced = torch.jit.trace(m, x)
    tmp = pt + ".tmp"
    torch.jit.save(traced, tmp)
    os.replace(tmp, pt)
    with open(stamp_path, "w") as f:
        f.write(stamp + "\n")
    print(f"torch_bench: traced {name} into {pt}", file=sys.stderr)
    return 0


def main():
    ap = argparse.ArgumentParser(description="PyTorch (TorchScript) side of kiln's benchmark")
    ap.add_argument("--make", action="store_true")
    ap.add_argument("modeldir")
    ap.add_argument("name")
    ap.add_argument("--first", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--loads", type=int, default=10)
    ap.add_argument("--cold-loads", type=int, default=3)
    ap.add_argument("--evict")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0)
    a = ap.parse_args()
    if a.make:
        return make(a.modeldir, a.name)
    if a.threads < 1 or a.loads < 1 or a.runs < 1:
        ap.error("--threads, --loads and --runs must be at least 1")
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    pt = os.path.join(a.modeldir, a.name + ".pt")
    x = torch.from_numpy(np.load(os.path.join(a.modeldir, a.name + ".input_0.npy")))
    ref = np.load(os.path.join(a.modeldir, a.name + ".output_0.npy"))
    rss0 = rss_kb()

    t = now_ms()
    m = torch.jit.load(pt, map_location="cpu")
    first_load = now_ms() - t
    with torch.no_grad():
        t = now_ms()
        y = m(x)
        first_fwd = now_ms() - t
    cfg = torch.__config__.show()
    blas = cfg.split("BLAS_INFO=", 1)[1].split(",", 1)[0] if "BLAS_INFO=" in cfg else "?"
    res = {"model": a.name, "torch_version": torch.__version__, "threads": a.threads, "blas": blas,
           "import_ms": IMPORT_MS, "rss_before_kb": rss0, "first_load_ms": first_load,
           "first_forward_ms": first_fwd, "ttfi_ms": first_load + first_fwd,
           "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "rel_err": rel_err(y.numpy(), ref)}
    if not a.first:
        with torch.no_grad():
            for _ in range(a.warmup):
                y = m(x)
            ts, t0 = [], now_ms()
            for _ in range(a.runs):
                if over_budget(ts, t0, a.budget):
                    break
                t = now_ms()
                y = m(x)
                ts.append(now_ms() - t)
        res["forward_ms"] = stat(ts)
        res["rel_err"] = max(res["rel_err"], rel_err(y.numpy(), ref))
        del m
        ts, t0 = [], now_ms()
        for _ in range(a.loads):
            if over_budget(ts, t0, a.budget):
                break
            t = now_ms()
            m = torch.jit.load(pt, map_location="cpu")
            ts.append(now_ms() - t)
            del m
        res["load_ms"] = stat(ts)
        if a.evict and a.cold_loads > 0:
            ts, worst, pages = [], 0, 0
            for _ in range(a.cold_loads):
                ev = json.loads(subprocess.run([a.evict, "--evict", pt], capture_output=True,
                                               text=True).stdout)["files"][0]
                pages = ev["pages"]
                worst = max(worst, pages if ev["resident"] < 0 else ev["resident"])
                t = now_ms()
                m = torch.jit.load(pt, map_location="cpu")
                ts.append(now_ms() - t)
                del m
            res["cold_load_ms"] = stat(ts)
            res["cold_evict"] = {"method": "posix_fadvise", "pages": pages, "max_resident": worst}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
