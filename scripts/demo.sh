#!/usr/bin/env bash
# demo.sh — builds kiln and runs its demo: three PyTorch models (random weights) exported to
# ONNX, traced, saved with lazy/async flags, loaded as a server would and run, each output
# compared with PyTorch's.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
mkdir -p build/release build/demo
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo >build/release.configure.log
cmake --build build/release -j"$(nproc)" --target kiln_demo kiln_cli >build/release.build.log
/usr/bin/python3 tests/models/export_models.py build/demo/models
./build/release/kiln_demo build/demo/models build/demo
