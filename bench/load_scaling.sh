#!/bin/bash
# load_scaling.sh — how loading the four-model pipeline scales with CPUs, in one process and
# across processes: the measurement behind docs/BENCHMARKS.md's explanation of why loading
# the models all at once (async) is not much faster than one after another (eager) here.
#
#   bench/load_scaling.sh [--build DIR] [--runs N]
#
# Uses the SD-shaped artifacts bench/pipeline.sh makes in DIR/sd-models (run it first) and
# `kiln load-bench --no-run` (time from the first kiln_load until every model is loaded).
# Each figure is the median of --runs (9) fresh processes:
#   one process, 1 CPU    all four, eager, the process pinned to CPU 0 (taskset)
#   one process, 2 CPUs   all four, eager and async, CPUs 0-1 (kernel creation on both)
#   two processes         unet pinned to CPU 0 and the other three pinned to CPU 1 (about
#                         half the work each), started together: the later finish
#   each half alone       the same halves, one at a time, each on its CPU
# If two processes on two CPUs finish together about as fast as each half alone, while one
# process gains little from its second CPU, the limit is inside the process (creating
# oneDNN's JIT kernels maps and protects code pages, which serialises threads of one
# address space), not the machine.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=$ROOT/build-bench
RUNS=9
while [ $# -gt 0 ]; do
    case $1 in
        --build) BUILD=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "load_scaling.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
KILN=$BUILD/kiln
M=$BUILD/sd-models
for f in "$KILN" "$M/text_encoder.kiln" "$M/unet.kiln" "$M/post_quant_conv.kiln" "$M/vae_decoder.kiln"; do
    [ -e "$f" ] || { echo "load_scaling.sh: $f missing: run bench/pipeline.sh first" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "load_scaling.sh: needs 2 CPUs" >&2; exit 1; }
ALL=("$M/text_encoder.kiln" "$M/unet.kiln" "$M/post_quant_conv.kiln" "$M/vae_decoder.kiln")
A=("$M/unet.kiln")
B=("$M/text_encoder.kiln" "$M/post_quant_conv.kiln" "$M/vae_decoder.kiln")
cat "${ALL[@]}" >/dev/null

ready() { # ready CPUS MODE ARTIFACT... -> ms until all loaded
    local cpus=$1 mode=$2
    shift 2
    taskset -c "$cpus" "$KILN" load-bench "$@" --mode "$mode" --no-run | sed -n 's/^all ready: \([0-9.]*\) ms.*/\1/p'
}
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

declare -A R
for i in $(seq "$RUNS"); do
    R[one1]+="$(ready 0 eager "${ALL[@]}") "
    R[one2e]+="$(ready 0,1 eager "${ALL[@]}") "
    R[one2a]+="$(ready 0,1 async "${ALL[@]}") "
    ready 0 eager "${A[@]}" >/tmp/kiln-scaling-a.$$ &
    b=$(ready 1 eager "${B[@]}")
    wait
    a=$(cat /tmp/kiln-scaling-a.$$)
    R[two]+="$(awk -v a="$a" -v b="$b" 'BEGIN {print (a > b ? a : b)}') "
    R[halfa]+="$(ready 0 eager "${A[@]}") "
    R[halfb]+="$(ready 1 eager "${B[@]}") "
done
rm -f /tmp/kiln-scaling-a.$$
med() { printf '%s\n' ${R[$1]} | median; }
one1=$(med one1) one2e=$(med one2e) one2a=$(med one2a) two=$(med two) ha=$(med halfa) hb=$(med halfb)
echo "| loading the four SD-shaped models (median of $RUNS fresh processes) | ready |"
echo "| --- | --- |"
echo "| one process, 1 CPU, eager | $one1 ms |"
echo "| one process, 2 CPUs, eager | $one2e ms ($(awk -v a="$one1" -v b="$one2e" 'BEGIN {printf "%.2fx", a / b}') the 1-CPU speed) |"
echo "| one process, 2 CPUs, async | $one2a ms ($(awk -v a="$one1" -v b="$one2a" 'BEGIN {printf "%.2fx", a / b}')) |"
echo "| two processes, one CPU each, together (the later) | $two ms ($(awk -v a="$one1" -v b="$two" 'BEGIN {printf "%.2fx", a / b}')) |"
echo "| ... each half alone: unet / the other three | $ha / $hb ms |"
