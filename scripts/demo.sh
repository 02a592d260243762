#!/usr/bin/env bash
# demo.sh — builds kiln and runs its demo: a Stable-Diffusion-shaped pipeline of four PyTorch
# models (CLIP-like text encoder, UNet, post-quant conv, VAE decoder; random weights) exported
# to ONNX, traced, saved with lazy/async flags, loaded as a server would (placements in the
# background), run end to end into build/demo/image.ppm, and each compared with PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
mkdir -p build/release build/demo
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo >build/release.configure.log
cmake --build build/release -j"$(nproc)" --target kiln_sd_demo kiln_cli >build/release.build.log
/usr/bin/python3 tests/models/export_sd.py build/demo/sd-models
./build/release/kiln_sd_demo build/demo/sd-models build/demo
