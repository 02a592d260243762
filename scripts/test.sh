#!/usr/bin/env bash
# test.sh — builds kiln and runs every test: the whole suite in a release build, then again
# under ASan+UBSan (the corrupt-input, importer, artifact and kernel tests especially).
# Prints ctest's summary per build and a closing "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh || exit 1

jobs=$(nproc 2>/dev/null || echo 2)
passed=0
failed=0

run_build() { # name, cmake args...
  local name=$1; shift
  local dir=build/$name
  echo "== [$name] configure and build"
  if ! cmake -S . -B "$dir" "$@" >"$dir.configure.log" 2>&1 && ! { mkdir -p "$dir" && cmake -S . -B "$dir" "$@" >"$dir.configure.log" 2>&1; }; then
    cat "$dir.configure.log"; failed=$((failed + 1)); return
  fi
  if ! cmake --build "$dir" -j"$jobs" >"$dir.build.log" 2>&1; then
    tail -50 "$dir.build.log"; echo "[$name] build FAILED"; failed=$((failed + 1)); return
  fi
  echo "== [$name] test"
  local out
  out=$(cd "$dir" && ctest --output-on-failure -j"$jobs" --timeout 1500 2>&1)
  echo "$out" | tail -n 60
  local line
  line=$(echo "$out" | grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" | tail -1)
  if [[ $line =~ ([0-9]+)%\ tests\ passed,\ ([0-9]+)\ tests\ failed\ out\ of\ ([0-9]+) ]]; then
    local f=${BASH_REMATCH[2]} t=${BASH_REMATCH[3]}
    passed=$((passed + t - f)); failed=$((failed + f))
  else
    echo "[$name] no ctest summary"; failed=$((failed + 1))
  fi
}

mkdir -p build
run_build release -DCMAKE_BUILD_TYPE=RelWithDebInfo
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_build asan -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=address -DCMAKE_C_COMPILER=clang

echo "kiln tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
