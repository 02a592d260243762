#!/bin/bash
# run.sh — kiln's benchmark suite: kiln against ONNX Runtime and PyTorch on the real models,
# one command. Prints the table and writes it into docs/BENCHMARKS.md.
#
#   bench/run.sh [--build DIR] [--only NAME]... [--no-docs] [--quick]
#                [--fresh N] [--cold N] [--rounds N] [--loads N] [--cold-loads N]
#                [--runs N] [--warmup N] [--budget S] [--pipeline-runs N]
#                [--no-torch] [--no-cold] [--no-pipeline]
#
# Models: resnet18, mobilenet_v2, bert (tests/models/export_models.py); and the four-model
# pipeline through bench/pipeline.sh (--pipeline-runs (5) fresh processes per variant, its
# --no-docs: that script writes its own section of docs/BENCHMARKS.md when run alone) when
# the script is there and works.
# For each model and each side (kiln, ONNX Runtime, PyTorch TorchScript):
#   --fresh (5)  fresh processes, warm page cache: first load, time to first inference,
#                peak RSS (one thread, CPU 0); for kiln also load-only processes on one
#                and on two CPUs, each with a twin that reads every page of the weights
#                instead of hashing them (kiln_bench --no-verify): what verifying the
#                checksums adds to a load
#   --cold (3)   fresh processes after dropping the page cache (drop_caches when root may,
#                else posix_fadvise on the model file; residency checked with mincore)
#   --rounds (3) warm processes at 1 thread and at 2 threads: --loads (10) loads, warm
#                cache; --cold-loads (3) loads each after evicting the model file (1 thread
#                only); --runs (50) forwards after --warmup (5); kiln also reads its file
#                (the floor); a forward or load loop stops early after --budget (3)
#                seconds once it has 5 samples (PyTorch's forwards are slow here)
# Sides take turns (the order rotates each repetition) so that other work on this shared
# machine lands on all of them. kiln at 1 thread: KILN_VISIBLE_CORES=0 KILN_CORE_SIZE=1,
# pinned to CPU 0; at 2 threads: one core of CPUs 0-1 (KILN_VISIBLE_CORES=0-1
# KILN_CORE_SIZE=2). ONNX Runtime: intraOpNumThreads 1 / 2. PyTorch: set_num_threads 1 / 2.
# --quick is --fresh 2 --cold 1 --rounds 1 --loads 3 --cold-loads 1 --runs 10 without the
# pipeline (a smoke run; --no-docs unless --docs is also given).
# Raw JSON lines: DIR/bench-results.jsonl. Where the time goes: bench/profile.sh.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=$ROOT/build-bench
FRESH=5 COLD=3 ROUNDS=3 LOADS=10 COLD_LOADS=3 RUNS=50 WARMUP=5 BUDGET=3 PIPE_RUNS=5
DOCS=1 TORCH=1 DO_COLD=1 PIPELINE=1 QUICK=0 FORCE_DOCS=0
ONLY=()
while [ $# -gt 0 ]; do
    case $1 in
        --build) BUILD=$2; shift 2 ;;
        --only) ONLY+=("$2"); shift 2 ;;
        --fresh) FRESH=$2; shift 2 ;;
        --cold) COLD=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --loads) LOADS=$2; shift 2 ;;
        --cold-loads) COLD_LOADS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        --pipeline-runs) PIPE_RUNS=$2; shift 2 ;;
        --no-docs) DOCS=0; shift ;;
        --docs) FORCE_DOCS=1; shift ;;
        --no-torch) TORCH=0; shift ;;
        --no-cold) DO_COLD=0; shift ;;
        --no-pipeline) PIPELINE=0; shift ;;
        --quick) QUICK=1; FRESH=2 COLD=1 ROUNDS=1 LOADS=3 COLD_LOADS=1 RUNS=10 PIPELINE=0; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ $QUICK = 0 ] || [ $FORCE_DOCS = 1 ] || DOCS=0
[ $DO_COLD = 1 ] || { COLD=0; COLD_LOADS=0; }
[ ${#ONLY[@]} -gt 0 ] || ONLY=(resnet18 mobilenet_v2 bert)
T_START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
# The commit measured (the table is written at the end, when HEAD may have moved on).
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?") DIRTY=false
git -C "$ROOT" status --porcelain --untracked-files=no -- src include 2>/dev/null | grep -q . && DIRTY=true
DATE=$(date +%F)

# Debian's python3 has torch; a python3 earlier on PATH (pyenv, venv) may not.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for p in /usr/bin/python3 python3; do
        if "$p" -c 'import torch, torchvision, onnx' 2>/dev/null; then PY=$p; break; fi
    done
fi
[ -n "$PY" ] || { echo "run.sh: no python3 with torch, torchvision and onnx" >&2; exit 1; }

say() { printf '== [%3ds] %s\n' $(($(date +%s) - T_START)) "$*" >&2; }

# 1. ONNX Runtime for Node (the CPU library ships in the npm package; no install script).
if ! (cd "$HERE" && node -e "require('onnxruntime-node')" 2>/dev/null); then
    say "installing onnxruntime-node into bench/node_modules"
    (cd "$HERE" && npm install --ignore-scripts --no-audit --no-fund >&2)
    (cd "$HERE" && node -e "require('onnxruntime-node')") ||
        { echo "run.sh: onnxruntime-node does not load (see docs/BENCHMARKS.md)" >&2; exit 1; }
fi

# 2. kiln_bench. It is also the page-cache tool every side uses, so it must build.
say "building kiln_bench in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j2 --target kiln_bench >&2
BENCH=$BUILD/bench/kiln_bench

# 3. Models, artifacts, TorchScript modules.
MODELS=$BUILD/models
say "exporting models into $MODELS"
"$PY" "$ROOT/tests/models/export_models.py" "$MODELS" "${ONLY[@]/#/--only=}" >&2

OUT=$BUILD/bench-results.jsonl
: >"$OUT"
emit() { # emit KIND MODEL EXTRA-JSON-FIELDS DATA-JSON
    printf '{"kind": "%s", "model": "%s"%s, "data": %s}\n' "$1" "$2" "$3" "$4" >>"$OUT"
}
# measure KIND MODEL EXTRA COMMAND...: one measurement; a failure is reported and left out
# of the table (a "-" there), not fatal, so one broken side still leaves the others.
measure() {
    local kind=$1 name=$2 extra=$3 line
    shift 3
    if line=$("$@" 2>"$BUILD/bench-last.err" | tail -n 1) && [ "${line:0:1}" = "{" ]; then
        emit "$kind" "$name" "$extra" "$line"
    else
        echo "run.sh: $name: $kind failed: $*" >&2
        sed 's/^/    /' "$BUILD/bench-last.err" | tail -n 5 >&2
        return 1
    fi
}

have_kiln=()
for name in "${ONLY[@]}"; do
    art=$MODELS/$name.kiln
    rm -f "$art"
    if measure make "$name" "" "$BENCH" --make "$art" "$MODELS/$name.onnx"; then
        have_kiln+=("$name")
        emit sizes "$name" "" "{\"kiln_bytes\": $(stat -c %s "$art"), \"onnx_bytes\": $(stat -c %s "$MODELS/$name.onnx")}"
    fi
    if [ $TORCH = 1 ]; then
        "$PY" "$HERE/torch_bench.py" --make "$MODELS" "$name" >&2 ||
            echo "run.sh: $name: torch.jit.trace failed; PyTorch left out" >&2
        [ ! -f "$MODELS/$name.pt" ] ||
            emit sizes_pt "$name" "" "{\"pt_bytes\": $(stat -c %s "$MODELS/$name.pt")}"
    fi
done

# Pinning and thread settings.
PIN1=() PIN2=()
if command -v taskset >/dev/null && taskset -c 0 true 2>/dev/null; then
    PIN1=(taskset -c 0)
    taskset -c 0,1 true 2>/dev/null && PIN2=(taskset -c 0,1)
fi
THREADS=(1)
[ "$(getconf _NPROCESSORS_ONLN)" -ge 2 ] && THREADS=(1 2)
kiln_env() { # kiln_env THREADS: one core of THREADS CPUs starting at CPU 0
    if [ "$1" = 1 ]; then echo "KILN_VISIBLE_CORES=0 KILN_CORE_SIZE=1 OMP_NUM_THREADS=1"
    else echo "KILN_VISIBLE_CORES=0-$(($1 - 1)) KILN_CORE_SIZE=$1 OMP_NUM_THREADS=$1"; fi
}
pin() { if [ "$1" = 1 ]; then echo "${PIN1[@]}"; else echo "${PIN2[@]}"; fi; }

# The file each side loads, and its commands.
model_file() { # model_file SIDE NAME
    case $1 in kiln) echo "$MODELS/$2.kiln" ;; ort) echo "$MODELS/$2.onnx" ;; torch) echo "$MODELS/$2.pt" ;; esac
}
side_cmd() { # side_cmd SIDE NAME THREADS first|warm -> the command line, one word a line
    local side=$1 name=$2 t=$3 mode=$4
    local cold=$COLD_LOADS
    [ "$t" = 1 ] || cold=0
    case $side in
    kiln)
        if [ "$mode" = first ]; then
            printf '%s\n' env $(kiln_env "$t") $(pin "$t") "$BENCH" "$MODELS/$name.kiln" --first
        else
            printf '%s\n' env $(kiln_env "$t") $(pin "$t") "$BENCH" "$MODELS/$name.kiln" \
                --loads "$LOADS" --cold-loads "$cold" --runs "$RUNS" --warmup "$WARMUP" --budget "$BUDGET"
        fi ;;
    ort)
        if [ "$mode" = first ]; then
            printf '%s\n' env OMP_NUM_THREADS="$t" $(pin "$t") node "$HERE/ort_bench.js" "$MODELS" "$name" --first --threads "$t"
        else
            printf '%s\n' env OMP_NUM_THREADS="$t" $(pin "$t") node "$HERE/ort_bench.js" "$MODELS" "$name" \
                --sessions "$LOADS" --cold-sessions "$cold" --evict "$BENCH" --runs "$RUNS" \
                --warmup "$WARMUP" --threads "$t" --budget "$BUDGET"
        fi ;;
    torch)
        if [ "$mode" = first ]; then
            printf '%s\n' env OMP_NUM_THREADS="$t" $(pin "$t") "$PY" "$HERE/torch_bench.py" "$MODELS" "$name" --first --threads "$t"
        else
            printf '%s\n' env OMP_NUM_THREADS="$t" $(pin "$t") "$PY" "$HERE/torch_bench.py" "$MODELS" "$name" \
                --loads "$LOADS" --cold-loads "$cold" --evict "$BENCH" --runs "$RUNS" \
                --warmup "$WARMUP" --threads "$t" --budget "$BUDGET"
        fi ;;
    esac
}
sides_of() { # sides_of NAME ROTATION -> the sides measurable for NAME, rotated
    local s=() r
    [[ " ${have_kiln[*]} " == *" $1 "* ]] && s+=(kiln)
    s+=(ort)
    [ $TORCH = 1 ] && [ -f "$MODELS/$1.pt" ] && s+=(torch)
    r=$(($2 % ${#s[@]}))
    echo "${s[@]:$r}" "${s[@]:0:$r}"
}

# How to make the page cache cold for a fresh process: drop every cache when allowed
# (the libraries are then cold too, as after a reboot), else evict the model file.
COLD_METHOD=posix_fadvise
if [ $COLD -gt 0 ]; then
    probe=$MODELS/${ONLY[0]}.onnx
    cat "$probe" >/dev/null
    if (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null &&
        "$BENCH" --resident "$probe" | grep -q '"resident": 0}'; then
        COLD_METHOD=drop_caches
    fi
    say "cold page cache for fresh processes: $COLD_METHOD"
fi
make_cold() { # make_cold FILE -> prints the residency JSON of FILE afterwards
    if [ $COLD_METHOD = drop_caches ]; then
        sync
        echo 3 >/proc/sys/vm/drop_caches
        "$BENCH" --resident "$1"
    else
        "$BENCH" --evict "$1"
    fi
}

# 4. Measurements.
for name in "${ONLY[@]}"; do
    say "$name: $FRESH fresh processes per side, warm page cache"
    for i in $(seq "$FRESH"); do
        for side in $(sides_of "$name" "$i"); do
            cat "$(model_file $side "$name")" >/dev/null
            mapfile -t cmd < <(side_cmd $side "$name" 1 first)
            measure "${side}_first" "$name" ', "cache": "warm"' "${cmd[@]}" || true
        done
        # What verifying adds: fresh loads that hash the weights against twins that only
        # read every page of them (kiln_bench --no-verify), on one CPU and on two.
        for t in "${THREADS[@]}"; do
            for v in 1 0; do
                flag=()
                [ $v = 1 ] || flag=(--no-verify)
                cat "$MODELS/$name.kiln" >/dev/null
                measure kiln_verify "$name" ", \"cpus\": $t, \"verify\": $v" \
                    env $(kiln_env "$t") $(pin "$t") "$BENCH" "$MODELS/$name.kiln" --load-only "${flag[@]}" || true
            done
        done
    done
    [ "$COLD" -gt 0 ] && say "$name: $COLD fresh processes per side, cold page cache ($COLD_METHOD)"
    for i in $(seq "$COLD"); do
        for side in $(sides_of "$name" "$i"); do
            res=$(make_cold "$(model_file $side "$name")" | tr -d '\n')
            mapfile -t cmd < <(side_cmd $side "$name" 1 first)
            measure "${side}_first" "$name" ", \"cache\": \"cold\", \"evict\": $res" "${cmd[@]}" || true
        done
    done
    for r in $(seq "$ROUNDS"); do
        for t in "${THREADS[@]}"; do
            say "$name: warm processes, round $r of $ROUNDS, $t thread(s)"
            for side in $(sides_of "$name" "$((r + t))"); do
                mapfile -t cmd < <(side_cmd $side "$name" "$t" warm)
                measure "${side}_warm" "$name" ", \"threads\": $t" "${cmd[@]}" || true
            done
        done
    done
done

# 5. The four-model pipeline (bench/pipeline.sh, another engineer's), if it is there. Its
# raw results (DIR/pipeline-results.jsonl) go into this run's table.
if [ $PIPELINE = 1 ] && [ -f "$HERE/pipeline.sh" ]; then
    say "pipeline: bench/pipeline.sh --runs $PIPE_RUNS"
    rm -f "$BUILD/pipeline-results.jsonl"
    if bash "$HERE/pipeline.sh" --build "$BUILD" --runs "$PIPE_RUNS" --no-docs \
        >"$BUILD/pipeline.out" 2>"$BUILD/pipeline.err" && [ -s "$BUILD/pipeline-results.jsonl" ]; then
        while read -r line; do
            [ -z "$line" ] || emit pipeline pipeline "" "$line"
        done <"$BUILD/pipeline-results.jsonl"
    else
        echo "run.sh: bench/pipeline.sh failed (see $BUILD/pipeline.err); pipeline left out" >&2
        tail -n 5 "$BUILD/pipeline.err" >&2 || true
    fi
fi

# 6. The table.
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
emit run run "" "{\"commit\": \"$COMMIT\", \"dirty\": $DIRTY, \"date\": \"$DATE\", \"seconds\": $(($(date +%s) - T_START)), \"loadavg_start\": \"$LOAD_START\", \"loadavg_end\": \"$LOAD_END\", \"cold_method\": \"$COLD_METHOD\", \"fresh\": $FRESH, \"cold\": $COLD, \"rounds\": $ROUNDS, \"loads\": $LOADS, \"cold_loads\": $COLD_LOADS, \"runs\": $RUNS, \"warmup\": $WARMUP, \"budget\": $BUDGET, \"pipeline_runs\": $PIPE_RUNS}"
say "done measuring; the table:"
args=("$OUT" --root "$ROOT")
[ $DOCS = 1 ] && args+=(--docs "$ROOT/docs/BENCHMARKS.md")
"$PY" "$HERE/report.py" "${args[@]}"
