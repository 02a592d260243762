#!/bin/bash
# streaming.sh — time to first inference of a cold model: loaded eagerly and then run,
# against loaded asynchronously with the forward streaming through the placement (each op
# runs as soon as its kernel exists and its weights passed their checksums).
#
#   bench/streaming.sh [--build DIR] [--runs N] [MODEL...]
#
# Uses the artifacts bench/run.sh makes in DIR/models (default models: resnet18
# mobilenet_v2 bert). One core of one CPU (KILN_VISIBLE_CORES=0: the forward runs on CPU 0,
# kernels are made on the other CPU), fresh processes, warm page cache, `kiln load-bench`;
# each figure the median of --runs (9) processes:
#   load      --mode eager --no-run: kiln_load until the model is loaded
#   eager     --mode eager: load, then the first forward (their sum)
#   async     --mode async: kiln_load returns at once, the first forward starts at once
# and the ideal, max(load, first forward) with the first forward taken as eager - load.
# Prints a markdown table.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=$ROOT/build-bench
RUNS=9
NAMES=()
while [ $# -gt 0 ]; do
    case $1 in
        --build) BUILD=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        -*) echo "streaming.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
        *) NAMES+=("$1"); shift ;;
    esac
done
[ ${#NAMES[@]} -gt 0 ] || NAMES=(resnet18 mobilenet_v2 bert)
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
KILN=${KILN:-$BUILD/kiln}
[ -x "$KILN" ] || { echo "streaming.sh: $KILN missing: run bench/run.sh first" >&2; exit 1; }

one() { # one ART ARGS... -> the round's time in ms
    local art=$1
    shift
    KILN_VISIBLE_CORES=0 "$KILN" load-bench "$art" "$@" |
        sed -n 's/^all ready\( and run once\)\{0,1\}: \([0-9.]*\) ms.*/\2/p'
}
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

echo "| model | load | eager: load + first forward | async: streaming | ideal: max(load, first forward) | async / eager | async / ideal |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for name in "${NAMES[@]}"; do
    art=$BUILD/models/$name.kiln
    [ -f "$art" ] || { echo "streaming.sh: $art missing: run bench/run.sh first" >&2; exit 1; }
    cat "$art" >/dev/null
    L="" E="" A=""
    for i in $(seq "$RUNS"); do   # the variants take turns
        L+="$(one "$art" --mode eager --no-run) "
        E+="$(one "$art" --mode eager) "
        A+="$(one "$art" --mode async) "
    done
    l=$(printf '%s\n' $L | median) e=$(printf '%s\n' $E | median) a=$(printf '%s\n' $A | median)
    awk -v n="$name" -v l="$l" -v e="$e" -v a="$a" 'BEGIN {
        f = e - l; ideal = l > f ? l : f
        printf "| %s | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.2f | %.2f |\n", n, l, e, a, ideal, a / e, a / ideal }'
done
