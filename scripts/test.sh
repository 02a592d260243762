#!/usr/bin/env bash
# test.sh — builds kiln and runs every test: the whole suite in a release build, again under
# ASan+UBSan, and the threaded tests under TSan.
# Prints ctest's summary per build and a closing "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh || exit 1

jobs=$(nproc 2>/dev/null || echo 2)
passed=0
failed=0

run_build() { # name, ctest filter (regex, "" for all), cmake args...
  local name=$1 filter=$2; shift 2
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
  out=$(cd "$dir" && ctest --output-on-failure -j"$jobs" --timeout 1500 ${filter:+-R "$filter"} 2>&1)
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
run_build release "" -DCMAKE_BUILD_TYPE=RelWithDebInfo
# Everything again under ASan+UBSan (leaks included): corrupt and hostile inputs above all.
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_build asan "" -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=address -DCMAKE_C_COMPILER=clang
# The threaded tests under ThreadSanitizer (oneDNN's OpenMP runtime is not instrumented).
TSAN_OPTIONS=ignore_noninstrumented_modules=1:halt_on_error=1 \
  run_build tsan "test_load|test_dp|test_soak|test_kernels_threads" -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=thread -DCMAKE_C_COMPILER=clang

echo "kiln tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
