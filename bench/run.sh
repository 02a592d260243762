#!/bin/bash
# run.sh — kiln against ONNX Runtime on the real models, one thread each.
#
#   bench/run.sh [--build DIR] [--runs N] [--loads N] [--fresh N] [--rounds N] [--no-docs]
#                [--only NAME]...
#
# 1. makes sure onnxruntime-node is in bench/node_modules (npm install without its install
#    script: the CPU library ships in the package);
# 2. builds kiln (cmake, target kiln_bench) in DIR (default: build-bench beside bench/);
# 3. exports the models with tests/models/export_models.py into DIR/models (re-used while
#    the script is unchanged) and traces each into an eager artifact;
# 4. measures kiln (bench/bench_kiln.c) and ONNX Runtime (bench/ort_bench.js), first in
#    --fresh (3) fresh processes each (first load / first session), then warm in one
#    process each, --rounds (3) times, kiln and ONNX Runtime taking turns;
# 5. prints the table and writes it into docs/BENCHMARKS.md between the bench markers
#    (unless --no-docs). Raw JSON lines are kept in DIR/bench-results.jsonl.
# kiln runs on one core of one CPU (KILN_VISIBLE_CORES=0 KILN_CORE_SIZE=1); ONNX Runtime
# with intraOpNumThreads = interOpNumThreads = 1, graphOptimizationLevel 'all'. Both are
# pinned to CPU 0 with taskset when it is available.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=$ROOT/build-bench
RUNS=50
LOADS=10
FRESH=3
ROUNDS=3
DOCS=1
ONLY=()
while [ $# -gt 0 ]; do
    case $1 in
        --build) BUILD=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --loads) LOADS=$2; shift 2 ;;
        --fresh) FRESH=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --no-docs) DOCS=0; shift ;;
        --only) ONLY+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#ONLY[@]} -gt 0 ] || ONLY=(resnet18 mobilenet_v2 bert)

# Debian's python3 has torch; a python3 earlier on PATH (pyenv, venv) may not.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for p in /usr/bin/python3 python3; do
        if "$p" -c 'import torch, torchvision, onnx' 2>/dev/null; then PY=$p; break; fi
    done
fi
[ -n "$PY" ] || { echo "run.sh: no python3 with torch, torchvision and onnx" >&2; exit 1; }

say() { printf '== %s\n' "$*" >&2; }

# 1. ONNX Runtime for Node.
if ! (cd "$HERE" && node -e "require('onnxruntime-node')" 2>/dev/null); then
    say "installing onnxruntime-node into bench/node_modules"
    (cd "$HERE" && npm install --ignore-scripts --no-audit --no-fund >&2)
    (cd "$HERE" && node -e "require('onnxruntime-node')") ||
        { echo "run.sh: onnxruntime-node does not load (see docs/BENCHMARKS.md)" >&2; exit 1; }
fi

# 2. kiln_bench. A kiln that does not build leaves the ONNX Runtime side still measured.
build_bench() {
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_TESTS=OFF >/dev/null &&
        cmake --build "$BUILD" -j2 --target kiln_bench >&2
}
say "building kiln_bench in $BUILD"
BENCH=$BUILD/bench/kiln_bench
rm -f "$BENCH"
build_bench || echo "run.sh: kiln_bench did not build: measuring ONNX Runtime only" >&2

# 3. Models and artifacts.
MODELS=$BUILD/models
say "exporting models into $MODELS"
"$PY" "$ROOT/tests/models/export_models.py" "$MODELS" "${ONLY[@]/#/--only=}" >&2

PIN=()
if command -v taskset >/dev/null && taskset -c 0 true 2>/dev/null; then PIN=(taskset -c 0); fi
export KILN_VISIBLE_CORES=0 KILN_CORE_SIZE=1 OMP_NUM_THREADS=1

OUT=$BUILD/bench-results.jsonl
: >"$OUT"
emit() { # emit KIND MODEL JSON
    printf '{"kind": "%s", "model": "%s", "data": %s}\n' "$1" "$2" "$3" >>"$OUT"
}
# measure KIND MODEL COMMAND...: runs a measurement; a failure is reported and left out of
# the table (a "-" there), not fatal, so one broken model still leaves the others measured.
measure() {
    local kind=$1 name=$2 line
    shift 2
    if line=$("$@") && [ -n "$line" ]; then
        emit "$kind" "$name" "$line"
    else
        echo "run.sh: $name: $kind failed: $*" >&2
        return 1
    fi
}

for name in "${ONLY[@]}"; do
    art=$MODELS/$name.kiln
    say "$name: trace"
    rm -f "$art"
    [ ! -x "$BENCH" ] || measure make "$name" "${PIN[@]}" "$BENCH" --make "$art" "$MODELS/$name.onnx" || true
    have_kiln=0
    if [ -f "$art" ]; then
        have_kiln=1
        emit sizes "$name" "{\"kiln_bytes\": $(stat -c %s "$art"), \"onnx_bytes\": $(stat -c %s "$MODELS/$name.onnx")}"
    fi
    say "$name: $FRESH fresh processes each"
    for _ in $(seq "$FRESH"); do
        [ $have_kiln = 0 ] || measure kiln_first "$name" "${PIN[@]}" "$BENCH" "$art" --first-only || true
        measure ort_first "$name" "${PIN[@]}" node "$HERE/ort_bench.js" "$MODELS" "$name" --first-only || true
    done
    # Warm measurements in interleaved rounds, so that a burst of other load on this shared
    # machine hits both sides rather than one.
    say "$name: warm, $ROUNDS rounds (loads $LOADS, forwards $RUNS)"
    for _ in $(seq "$ROUNDS"); do
        [ $have_kiln = 0 ] || measure kiln "$name" "${PIN[@]}" "$BENCH" "$art" --loads "$LOADS" --runs "$RUNS" || true
        measure ort "$name" "${PIN[@]}" node "$HERE/ort_bench.js" "$MODELS" "$name" --runs "$RUNS" --sessions "$LOADS" || true
    done
done

# 4. The table.
args=("$OUT" --root "$ROOT")
[ $DOCS = 1 ] && args+=(--docs "$ROOT/docs/BENCHMARKS.md")
"$PY" "$HERE/report.py" "${args[@]}"
