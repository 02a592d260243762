#!/bin/bash
# profile.sh — where kiln's time goes: a load and a forward of one model, profiled.
#
#   bench/profile.sh [--build DIR] [--model NAME] [--procs N] [--runs N] [--threads 1|2]
#
# Uses the artifacts bench/run.sh made in DIR/models (makes them if missing) and kiln_bench:
#   1. load, fresh processes: --procs (30) processes that only load (kiln_bench --load-only,
#      warm page cache) under `perf record --call-graph dwarf`, each sample put in one part
#      of the load by the functions on its stack (checksums, oneDNN primitive creation, ...);
#      `perf stat` for their page faults;
#   2. forward: one process running --runs (300) forwards under `perf record`, by library
#      and function, oneDNN's JIT code named through its perf map (DNNL_JIT_PROFILE=2);
#   3. ONEDNN_VERBOSE=2 on a fresh process (load, then forwards): primitive creation time by
#      primitive kind and implementation (the load), and execution time per forward by kind
#      (the forward), reorders included.
# perf samples on cpu-clock when the machine has no hardware counters. Prints a text report
# (kept in DIR/profile-NAME.txt); docs/BENCHMARKS.md's "where the time goes" is written
# from it.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=$ROOT/build-bench
MODEL=resnet18 PROCS=30 RUNS=300 THREADS=1
while [ $# -gt 0 ]; do
    case $1 in
        --build) BUILD=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --procs) PROCS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "profile.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
command -v perf >/dev/null || { echo "profile.sh: needs perf (linux-perf)" >&2; exit 1; }
PY=/usr/bin/python3
[ -x $PY ] || PY=python3

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j2 --target kiln_bench >/dev/null
BENCH=$BUILD/bench/kiln_bench
ART=$BUILD/models/$MODEL.kiln
if [ ! -f "$ART" ]; then
    "$PY" "$ROOT/tests/models/export_models.py" "$BUILD/models" --only="$MODEL" >&2
    "$BENCH" --make "$ART" "$BUILD/models/$MODEL.onnx" >/dev/null
fi
if [ "$THREADS" = 1 ]; then
    export KILN_VISIBLE_CORES=0 KILN_CORE_SIZE=1 OMP_NUM_THREADS=1
    PIN=(taskset -c 0)
else
    export KILN_VISIBLE_CORES=0-$((THREADS - 1)) KILN_CORE_SIZE=$THREADS OMP_NUM_THREADS=$THREADS
    PIN=(taskset -c "0-$((THREADS - 1))")
fi
command -v taskset >/dev/null || PIN=()
REPORT=$BUILD/profile-$MODEL.txt
exec > >(tee "$REPORT")
cat "$ART" >/dev/null

# perf's event: cycles where the machine counts them, else the cpu-clock timer.
EVENT=cycles
perf stat -e cycles true 2>&1 | grep -q "not supported" && EVENT=cpu-clock

echo "# kiln profile: $MODEL, $THREADS thread(s), $(date -I), commit $(git -C "$ROOT" rev-parse --short HEAD)"
echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(getconf _NPROCESSORS_ONLN) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg); perf event $EVENT"
echo
echo "## 1. Load in fresh processes ($PROCS x kiln_bench --load-only, warm page cache)"
LOADS=$BUILD/profile-loads.txt
perf stat -o "$BUILD/perf-load.stat" -e task-clock,page-faults,minor-faults,major-faults -- \
    bash -c 'for i in $(seq '"$PROCS"'); do "$@"; done' _ "${PIN[@]}" "$BENCH" "$ART" --load-only >"$LOADS"
"$PY" - "$LOADS" <<'EOF2'
import json, statistics, sys
xs = [json.loads(l)["first_load_ms"] for l in open(sys.argv[1]) if l.startswith("{")]
print(f"first load (median of {len(xs)}): {statistics.median(xs):.2f} ms, best {min(xs):.2f} ms")
EOF2
echo "perf stat over all $PROCS processes (process start-up and exit included):"
grep -E "task-clock|faults|elapsed" "$BUILD/perf-load.stat" | sed 's/^ */    /'
# DWARF unwinding: libdnnl has no frame pointers, so -g alone loses the callers.
perf record -q -F 10000 -e $EVENT --call-graph dwarf,32768 -o "$BUILD/perf-load.data" -- \
    bash -c 'for i in $(seq '"$PROCS"'); do "$@" >/dev/null; done' _ "${PIN[@]}" "$BENCH" "$ART" --load-only 2>/dev/null
perf script -i "$BUILD/perf-load.data" -F comm,tid,ip,sym,dso 2>/dev/null >"$BUILD/perf-load.txt"
echo
"$PY" - "$BUILD/perf-load.txt" <<'EOF2'
import collections, sys
# Each sample's stack (leaf first) goes to the first part one of whose function names (exact,
# or a prefix ending in "*") is on it. Samples whose user-space callers perf could not unwind
# are placed by what they were doing (an mprotect is oneDNN making JIT code executable, an
# madvise is the artifact's read-ahead, ...).
RULES = [
    ("verify: XXH3 checksums of the weights", ("ka_verify_weights", "XXH3_*", "XXH_*")),
    ("oneDNN primitive creation (JIT code generation, mprotect of the code)",
     ("dnnl_primitive_create", "__x64_sys_mprotect")),
    ("oneDNN primitive descriptors (choosing an implementation)",
     ("dnnl_primitive_desc_create", "dnnl_primitive_desc_iterator*", "dnnl_*_desc_init")),
    ("kiln kernel set-up around oneDNN (kd_create, reference kernels)",
     ("kd_create", "kk_create*", "create_ref")),
    ("opening the artifact (ka_open: map, parse, MADV_WILLNEED read-ahead)",
     ("ka_open", "parse_program", "parse_header", "generic_fadvise", "madvise_vma_behavior")),
    ("the rest of kiln_load (placement, arena, loader threads)",
     ("kiln_load", "place_on", "replica_new", "build_kernels", "create_loop", "kiln_wait")),
    ("CPU feature detection (cpuid, which a VM traps)", ("handle_amd", "handle_intel", "init_cpu_features*", "init_cacheinfo*")),
    ("dynamic linking (process start-up, lazy symbol binding)",
     ("_dl_*", "dl_main", "do_lookup_x", "check_match", "call_init", "_GLOBAL__sub_I*")),
    ("unmapping and exit (the model freed, process exit)",
     ("exit", "__run_exit_handlers", "do_exit", "_dl_fini", "__x64_sys_munmap", "__munmap", "kiln_model_free")),
    ("malloc/free, callers not unwound", ("_int_malloc", "_int_free", "malloc", "free", "__GI___libc_malloc",
                                          "__GI___libc_free", "tcache_get", "unlink_chunk", "malloc_consolidate")),
    ("first touch of fresh anonymous memory, callers not unwound", ("do_anonymous_page",)),
]


def matches(name, key):
    return name.startswith(key[:-1]) if key.endswith("*") else name == key


def classify(stack):
    names = [f.split()[0] if f.split() else "" for f in stack]
    for cat, keys in RULES:
        if any(matches(nm, k) for nm in names for k in keys):
            return cat
    return "unattributed (frames perf could not unwind)"

n, total, faults, comm, stack = collections.Counter(), 0, collections.Counter(), None, []

def flush():
    global total
    if comm and stack and (comm == "kiln_bench" or comm.startswith("kiln-")):
        c = classify(stack)
        n[c] += 1
        total += 1
        if any("asm_exc_page_fault" in s for s in stack):
            faults[c] += 1

for line in open(sys.argv[1], errors="replace"):
    if not line.strip():
        flush()
        comm, stack = None, []
    elif not line.startswith((" ", "\t")):
        flush()
        comm, stack = line.split()[0], []
    else:
        parts = line.split(None, 1)  # "ADDRESS NAME (DSO)"
        stack.append(parts[1] if len(parts) > 1 else "")
flush()
print(f"where a fresh process's time goes ({total} samples in kiln_bench's threads;"
      " in brackets the part of it spent in page faults):")
for c, k in n.most_common():
    pf = f"  ({100 * faults[c] / total:.1f}% in page faults)" if faults[c] else ""
    print(f"    {100 * k / total:5.1f}%  {c}{pf}")
EOF2

echo
echo "## 2. Forward ($RUNS forwards in one process)"
perf record -q -F 5000 -e $EVENT -o "$BUILD/perf-fwd.data" -- \
    env DNNL_JIT_PROFILE=2 ONEDNN_JIT_PROFILE=2 "${PIN[@]}" "$BENCH" "$ART" --loads 1 --cold-loads 0 \
    --runs "$RUNS" >"$BUILD/profile-fwd.json" 2>/dev/null
"$PY" - "$BUILD/profile-fwd.json" <<'EOF2'
import json, sys
f = json.load(open(sys.argv[1]))["forward_ms"]
print(f"forward: median {f['median']:.2f} ms, best {f['best']:.2f} ms")
EOF2
perf script -i "$BUILD/perf-fwd.data" -F comm,ip,sym,dso 2>/dev/null >"$BUILD/perf-fwd.txt"
"$PY" - "$BUILD/perf-fwd.txt" <<'EOF2'
import collections, re, sys
by_dso, by_sym, total = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\s*(\S+)\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
    if not m or not (m.group(1) == "kiln_bench" or m.group(1).startswith("kiln-")):
        continue
    comm, sym, dso = m.groups()
    sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
    dso = "oneDNN JIT code" if dso.startswith("/tmp/perf-") or "JIT" in dso or dso.startswith("//anon") \
        else dso.rsplit("/", 1)[-1]
    total += 1
    by_dso[dso] += 1
    by_sym[(dso, sym)] += 1
print(f"{total} samples of the process (its load and first forward included); by library:")
for d, k in by_dso.most_common(8):
    print(f"    {100 * k / total:5.1f}%  {d}")
print("by function (>= 0.5%):")
for (d, sym), k in by_sym.most_common(20):
    if 100 * k / total >= 0.5:
        print(f"    {100 * k / total:5.1f}%  {sym}  [{d}]")
EOF2

echo "## 3. oneDNN verbose (ONEDNN_VERBOSE=2): a fresh process, load then 1 + 5 + 20 forwards"
ONEDNN_VERBOSE=2 "${PIN[@]}" "$BENCH" "$ART" --loads 1 --cold-loads 0 --warmup 5 --runs 20 \
    >"$BUILD/profile-verbose.txt" 2>&1 || true
"$PY" - "$BUILD/profile-verbose.txt" 26 <<'EOF'
import collections, re, sys
lines = open(sys.argv[1]).read().splitlines()
n_fwd = int(sys.argv[2])
create = collections.defaultdict(lambda: [0, 0.0])
execs = collections.defaultdict(lambda: [0, 0.0])
first_load = None
for l in lines:
    m = re.search(r'"first_load_ms": ([0-9.]+)', l)
    if m:
        first_load = m.group(1)
    if not l.startswith("onednn_verbose,"):
        continue
    f = l.split(",")
    if len(f) < 6:
        continue
    what, kind, impl = f[1], f[3], f[4]
    try:
        t = float(f[-1])
    except ValueError:
        continue
    if what.startswith("create"):
        key = (kind, impl, what.split(":")[1] if ":" in what else "")
        create[key][0] += 1
        create[key][1] += t
    elif what == "exec":
        execs[(kind, impl)][0] += 1
        execs[(kind, impl)][1] += t
tot_c = sum(v[1] for v in create.values())
print(f"kiln's first load in that process: {first_load} ms (verbose timing slows it)")
print(f"primitive creation, all loads of the process: {tot_c:.2f} ms")
for (kind, impl, c), (n, t) in sorted(create.items(), key=lambda kv: -kv[1][1]):
    print(f"    {kind:14s} {impl:28s} {c:11s} x{n:<4d} {t:8.2f} ms")
tot_e = sum(v[1] for v in execs.values())
print(f"primitive execution per forward (average over {n_fwd} forwards): {tot_e / n_fwd:.2f} ms")
for (kind, impl), (n, t) in sorted(execs.items(), key=lambda kv: -kv[1][1]):
    print(f"    {kind:14s} {impl:28s} x{n / n_fwd:<5.1f} {t / n_fwd:8.3f} ms")
EOF
echo
echo "(report kept in $REPORT)"
