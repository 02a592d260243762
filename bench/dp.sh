#!/bin/bash
# dp.sh — data-parallel throughput (issue: cores and data-parallel): resnet18 and the
# BERT-like encoder at batch 8, kiln on one core vs kiln data-parallel on two cores, and
# ONNX Runtime with 2 intra-op threads as the peer, all in one run.
#
#   bench/dp.sh [--build DIR] [--iters N]
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=$ROOT/build-bench
ITERS=20
while [ $# -gt 0 ]; do
    case $1 in
        --build) BUILD=$2; shift 2 ;;
        --iters) ITERS=$2; shift 2 ;;
        *) echo "dp.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j2 --target dp_bench >/dev/null
[ -d "$HERE/node_modules/onnxruntime-node" ] || (cd "$HERE" && npm install --ignore-scripts --no-audit --no-fund >/dev/null)
/usr/bin/python3 "$HERE/export_batched.py" "$BUILD/models-dyn"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs"
for m in resnet18 bert; do
    KILN_CORE_SIZE=1 "$BUILD/bench/dp_bench" "$BUILD/models-dyn/${m}_dyn.onnx" 8 "$ITERS"
    (cd "$HERE" && node ort_dp.js "$BUILD/models-dyn/${m}_dyn.onnx" 8 "$ITERS" 2)
done
