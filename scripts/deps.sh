#!/usr/bin/env bash
# deps.sh — installs the Debian packages kiln needs to build and test, if any is missing.
# Sourced or run by scripts/demo.sh and scripts/test.sh. Needs root (apt-get) only when
# something is missing.
set -euo pipefail

KILN_DEB_PACKAGES=(
  build-essential cmake pkg-config clang libclang-rt-14-dev
  libdnnl-dev libprotobuf-c-dev protobuf-c-compiler libonnx-dev libxxhash-dev
  python3 python3-numpy python3-onnx python3-torch python3-torchvision python3-pytest
  libonnx-testdata
)

missing=()
for p in "${KILN_DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "kiln: installing missing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "kiln: error: run as root (or install them yourself): apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
