#!/bin/bash
# pipeline.sh — load benchmark of a four-model pipeline: kiln eager vs kiln async vs ONNX
# Runtime creating the same four sessions one after another and all at once.
#
#   bench/pipeline.sh [--build DIR] [--runs N] [--no-docs]
#
# 1. makes sure onnxruntime-node is in bench/node_modules (as bench/run.sh does: npm install
#    --ignore-scripts);
# 2. builds the kiln command line (target kiln_cli) in DIR (default: build-bench beside
#    bench/);
# 3. exports the Stable-Diffusion-shaped models (tests/models/export_sd.py: text_encoder,
#    unet, post_quant_conv, vae_decoder) into DIR/sd-models and traces each into an artifact
#    (unet lazy+async, the others async, as a server would save them);
# 4. measures, each in a fresh process, --runs (7, at least 5) times, the variants taking
#    turns so that a burst of other work on this shared machine hits all of them:
#      kiln eager   `kiln load-bench A B C D --mode eager`  (one kiln_load after another,
#                    each placing before it returns; then one forward each)
#      kiln async   `kiln load-bench A B C D --mode async`  (every kiln_load returns at once,
#                    placements overlap on the visible cores; forwards start at once)
#      kiln async, heavy first: the same with the artifacts ordered unet, vae_decoder,
#                    text_encoder, post_quant_conv (the least-used-core rule then puts the
#                    two heavy models on different cores)
#      ORT sequential   bench/ort_pipeline.js --mode seq (create, create, ..., then run each)
#      ORT concurrent   bench/ort_pipeline.js --mode concurrent (Promise.all of
#                    InferenceSession.create, then Promise.all of the forwards)
#      ORT workers      bench/ort_pipeline.js --mode workers (one worker_thread per session)
#    Both sides report "ready and run once" (first load to the last first output, forwards
#    on zero inputs) and "ready" (every model loaded / every session created). kiln's
#    "ready" comes from a second process per variant that runs nothing (load-bench
#    --no-run): an async load-bench starts its forwards at once, and they would share the
#    CPUs with the loads;
# 5. prints the table (medians) and, unless --no-docs, writes it with the SVG timeline of a
#    kiln async run (docs/pipeline-timeline.svg) into docs/BENCHMARKS.md between
#    <!-- pipeline:begin --> and <!-- pipeline:end -->. Raw results: DIR/pipeline-results.jsonl.
# kiln sees every CPU (KILN_VISIBLE_CORES unset: one core per CPU); ONNX Runtime sessions use
# intraOpNumThreads = interOpNumThreads = 1, graphOptimizationLevel 'all'. Nothing is pinned.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=$ROOT/build-bench
RUNS=7
DOCS=1
while [ $# -gt 0 ]; do
    case $1 in
        --build) BUILD=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --no-docs) DOCS=0; shift ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "pipeline.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ "$RUNS" -ge 5 ] 2>/dev/null || { echo "pipeline.sh: --runs wants 5 or more" >&2; exit 2; }
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for p in /usr/bin/python3 python3; do
        if "$p" -c 'import torch, onnx, numpy' 2>/dev/null; then PY=$p; break; fi
    done
fi
[ -n "$PY" ] || { echo "pipeline.sh: no python3 with torch, onnx and numpy" >&2; exit 1; }
say() { printf '== %s\n' "$*" >&2; }

# 1. ONNX Runtime for Node (the package ships its CPU library; its install script is not run).
if ! (cd "$HERE" && node -e "require('onnxruntime-node')" 2>/dev/null); then
    say "installing onnxruntime-node into bench/node_modules"
    (cd "$HERE" && npm install --ignore-scripts --no-audit --no-fund >&2)
    (cd "$HERE" && node -e "require('onnxruntime-node')") ||
        { echo "pipeline.sh: onnxruntime-node does not load (see docs/BENCHMARKS.md)" >&2; exit 1; }
fi

# 2. The kiln command line.
say "building kiln in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j2 --target kiln_cli >&2
KILN=$BUILD/kiln

# 3. Models and artifacts.
MODELS=$BUILD/sd-models
say "exporting the SD-shaped models into $MODELS"
"$PY" "$ROOT/tests/models/export_sd.py" "$MODELS" >&2
ORDER=(text_encoder unet post_quant_conv vae_decoder)
HEAVY=(unet vae_decoder text_encoder post_quant_conv)
for name in "${ORDER[@]}"; do
    flags=(--async)
    [ "$name" = unet ] && flags=(--lazy --async)
    "$KILN" trace "$MODELS/$name.onnx" -o "$MODELS/$name.kiln" "${flags[@]}" >/dev/null
done
ARTS=() ONNX=() ARTS_HEAVY=()
for name in "${ORDER[@]}"; do ARTS+=("$MODELS/$name.kiln"); ONNX+=("$MODELS/$name.onnx"); done
for name in "${HEAVY[@]}"; do ARTS_HEAVY+=("$MODELS/$name.kiln"); done

# 4. Fresh processes, variants taking turns.
OUT=$BUILD/pipeline-results.jsonl
: >"$OUT"
LOG=$BUILD/pipeline-loadbench.log
: >"$LOG"
# kiln_run KIND [--no-run] ARTIFACT...: one load-bench process as a JSON line: with
# --no-run, "ready_ms" (every model loaded, nothing run: load-to-ready alone); else
# "ready_and_run_ms" (its "all ready and run once") and the cores the models went to.
kiln_run() {
    local kind=$1 mode=eager text norun=()
    shift
    [ "$1" = --no-run ] && { norun=(--no-run); shift; }
    case $kind in kiln_async*) mode=async ;; esac
    text=$("$KILN" load-bench "$@" --mode "$mode" "${norun[@]}") || { echo "pipeline.sh: kiln load-bench failed" >&2; return 1; }
    printf '%s\n' "$text" >>"$LOG"
    printf '%s\n' "$text" | KIND=$kind "$PY" -c '
import json, os, re, sys
text = sys.stdin.read()
total = re.search(r"all ready( and run once)?: ([0-9.]+) ms", text)
cores = [int(m.group(1)) for m in re.finditer(r"^\S+\s+(-?\d+)\s+[0-9.]+ ms", text, re.M)]
key = "ready_and_run_ms" if total.group(1) else "ready_ms"
print(json.dumps({"kind": os.environ["KIND"], key: float(total.group(2)), "cores": cores}))' >>"$OUT"
}
ort_run() {
    local mode=$1 line
    line=$(cd "$HERE" && node ort_pipeline.js "${ONNX[@]}" --mode "$mode") ||
        { echo "pipeline.sh: ort_pipeline.js --mode $mode failed" >&2; return 1; }
    printf '{"kind": "ort_%s", "data": %s}\n' "$mode" "$line" >>"$OUT"
}
say "measuring: $RUNS fresh processes per variant"
for r in $(seq "$RUNS"); do
    say "round $r/$RUNS"
    kiln_run kiln_eager "${ARTS[@]}"
    kiln_run kiln_async "${ARTS[@]}"
    ort_run seq
    kiln_run kiln_eager --no-run "${ARTS[@]}"
    kiln_run kiln_async --no-run "${ARTS[@]}"
    ort_run concurrent
    kiln_run kiln_async_heavy_first "${ARTS_HEAVY[@]}"
    kiln_run kiln_async_heavy_first --no-run "${ARTS_HEAVY[@]}"
    ort_run workers
done

# 5. The table, and the SVG of one more async run.
SVG=$BUILD/pipeline-timeline.svg
[ $DOCS = 1 ] && SVG=$ROOT/docs/pipeline-timeline.svg
"$KILN" load-bench "${ARTS[@]}" --mode async --svg "$SVG" >>"$LOG"
CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
AVX=$(grep -q avx512f /proc/cpuinfo && echo ", AVX-512" || true)
export CPU="${CPU:-unknown CPU}$AVX" NCPU=$(nproc) KERNEL=$(uname -r) NODEV=$(node --version)
export COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
export DIRTY=$(git -C "$ROOT" status --porcelain -- src 2>/dev/null | grep -q . && echo 1 || echo 0)
export LOADAVG=$(cut -d' ' -f1,2 /proc/loadavg)
export SIZES=$(for n in "${ORDER[@]}"; do printf '%s=%s,%s ' "$n" "$(stat -c %s "$MODELS/$n.kiln")" "$(stat -c %s "$MODELS/$n.onnx")"; done)
args=("$OUT" "$RUNS")
[ $DOCS = 1 ] && args+=("$ROOT/docs/BENCHMARKS.md")
"$PY" - "${args[@]}" <<'EOF'
import json, os, re, statistics, sys, time

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runs = int(sys.argv[2])
docs = sys.argv[3] if len(sys.argv) > 3 else None

def med(kind, key):
    xs = [(r["data"] if "data" in r else r).get(key) for r in rows if r["kind"] == kind]
    xs = [x for x in xs if x is not None]
    return (statistics.median(xs), min(xs), max(xs), len(xs)) if xs else None

def cell(v):
    return "-" if v is None else f"{v[0]:.1f} ms ({v[1]:.1f}-{v[2]:.1f})"

def ratio(a, b):
    return None if a is None or b is None else a[0] / b[0]

kinds = [("kiln_eager", "kiln eager, one after another"),
         ("kiln_async", "kiln async, all at once"),
         ("kiln_async_heavy_first", "kiln async, heavy models first"),
         ("ort_seq", "ONNX Runtime, sessions one after another"),
         ("ort_concurrent", "ONNX Runtime, Promise.all of the creations"),
         ("ort_workers", "ONNX Runtime, one worker thread per session")]
run = {k: med(k, "ready_and_run_ms") for k, _ in kinds}
ready = {k: med(k, "ready_ms") for k, _ in kinds}
cores = next((r["cores"] for r in rows if r["kind"] == "kiln_async" and "ready_and_run_ms" in r), [])
heavy_cores = next((r["cores"] for r in rows if r["kind"] == "kiln_async_heavy_first" and "ready_and_run_ms" in r), [])
ortv = next((r["data"].get("ort_version") for r in rows if r["kind"].startswith("ort")), None)

def fmt_ratio(x, target, better_low):
    if x is None:
        return "-"
    met = (x <= target) if better_low else (x >= target)
    return f"{x:.2f} ({'met' if met else 'missed'})" if better_low else f"{x:.1f}x ({'met' if met else 'missed'})"

sizes = dict((s.split("=")[0], s.split("=")[1].split(",")) for s in os.environ["SIZES"].split())
lines = []
lines.append(f"Measured {time.strftime('%Y-%m-%d')} at kiln commit `{os.environ['COMMIT']}`"
             + (" + uncommitted changes in src/" if os.environ["DIRTY"] == "1" else "")
             + f" on **{os.environ['CPU']}** ({os.environ['NCPU']} CPUs, Linux {os.environ['KERNEL']});"
             f" ONNX Runtime {ortv or '?'} (onnxruntime-node, Node {os.environ['NODEV']}). Each figure is the"
             f" median of {runs} fresh processes (min-max in brackets). Load average at the end"
             f" (1 / 5 min): {os.environ['LOADAVG'].replace(' ', ' / ')}.")
lines.append("")
lines.append("Models (`tests/models/export_sd.py`, random weights), artifact / ONNX size: "
             + ", ".join(f"{n} {int(k) / 1e6:.2f} / {int(o) / 1e6:.2f} MB" for n, (k, o) in sizes.items()) + ".")
lines.append("")
lines.append("| | all ready and run once | all ready (load-to-ready) |")
lines.append("| --- | --- | --- |")
for k, label in kinds:
    lines.append(f"| {label} | {cell(run[k])} | {cell(ready[k])} |")
lines.append(f"| **kiln async / kiln eager** (target <= 0.6) | {fmt_ratio(ratio(run['kiln_async'], run['kiln_eager']), 0.6, True)} | {fmt_ratio(ratio(ready['kiln_async'], ready['kiln_eager']), 0.6, True)} |")
lines.append(f"| kiln async heavy first / kiln eager | {fmt_ratio(ratio(run['kiln_async_heavy_first'], run['kiln_eager']), 0.6, True)} | {fmt_ratio(ratio(ready['kiln_async_heavy_first'], ready['kiln_eager']), 0.6, True)} |")
lines.append(f"| **ORT sequential / kiln eager** (target >= 5x) | {fmt_ratio(ratio(run['ort_seq'], run['kiln_eager']), 5, False)} | {fmt_ratio(ratio(ready['ort_seq'], ready['kiln_eager']), 5, False)} |")
lines.append(f"| **ORT concurrent / kiln async** (target >= 5x) | {fmt_ratio(ratio(run['ort_concurrent'], run['kiln_async']), 5, False)} | {fmt_ratio(ratio(ready['ort_concurrent'], ready['kiln_async']), 5, False)} |")
def best(a, b):
    return None if a is None or b is None else a[1] / b[1]
lines.append(f"| kiln async / kiln eager, best against best | {fmt_ratio(best(run['kiln_async'], run['kiln_eager']), 0.6, True)} | {fmt_ratio(best(ready['kiln_async'], ready['kiln_eager']), 0.6, True)} |")
lines.append(f"| ORT sequential / kiln eager, best against best | {fmt_ratio(best(run['ort_seq'], run['kiln_eager']), 5, False)} | {fmt_ratio(best(ready['ort_seq'], ready['kiln_eager']), 5, False)} |")
best_ort = min((run[k] for k in ("ort_seq", "ort_concurrent", "ort_workers") if run[k]), key=lambda v: v[0], default=None)
best_ort_ready = min((ready[k] for k in ("ort_seq", "ort_concurrent", "ort_workers") if ready[k]), key=lambda v: v[0], default=None)
lines.append(f"| ORT's best / kiln async (target >= 5x) | {fmt_ratio(ratio(best_ort, run['kiln_async']), 5, False)} | {fmt_ratio(ratio(best_ort_ready, ready['kiln_async']), 5, False)} |")
lines.append("")
lines.append(f"Cores kiln placed the models on (least-used core, in load order): pipeline order "
             f"{', '.join(f'{n} {c}' for n, c in zip(['text_encoder', 'unet', 'post_quant_conv', 'vae_decoder'], cores))}; "
             f"heavy first {', '.join(f'{n} {c}' for n, c in zip(['unet', 'vae_decoder', 'text_encoder', 'post_quant_conv'], heavy_cores))}.")
text = "\n".join(lines) + "\n"
print(text)
if docs:
    doc = open(docs).read()
    b, e = "<!-- pipeline:begin -->", "<!-- pipeline:end -->"
    if b not in doc or e not in doc:
        doc = doc.rstrip("\n") + f"\n\n{b}\n{e}\n"
    head, rest = doc.split(b, 1)
    _, tail = rest.split(e, 1)
    old = rest.split(e, 1)[0]
    # Keep any hand-written prose above the generated part (between the begin marker and
    # <!-- pipeline:table -->); the table and the picture below it are regenerated.
    keep = old.split("<!-- pipeline:table -->", 1)[0] if "<!-- pipeline:table -->" in old else "\n"
    new = (b + keep + "<!-- pipeline:table -->\n" + text + "\n![kiln async load timeline](pipeline-timeline.svg)\n" + e)
    open(docs + ".tmp", "w").write(head + new + tail)
    os.replace(docs + ".tmp", docs)
    print(f"pipeline.sh: table written into {docs}", file=sys.stderr)
EOF
