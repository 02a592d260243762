#!/usr/bin/env bash
# soak.sh — the soak test (tests/test_soak.c) for minutes under ThreadSanitizer and under
# AddressSanitizer+UBSan (leaks checked at exit), each in a build of its own:
# build-soak-tsan and build-soak-asan (clang, RelWithDebInfo for throughput).
#
#   scripts/soak.sh [SECONDS] [THREADS] [SANITIZERS]     default: 300 s, 6 threads, "tsan asan"
#
# Prints test_soak's operation counts per build and exits non-zero if either run failed
# (a failed call, a wrong output, a sanitizer report, a leak, or the watchdog firing after
# KILN_SOAK_WATCHDOG seconds without progress, default 60). Logs: build-soak-*/soak.log.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
threads=${2:-6}
sans=${3:-tsan asan}
status=0
for san in $sans; do
  case $san in
    tsan) flag=thread ;;
    asan) flag=address ;;
    *) echo "unknown sanitizer '$san' (tsan, asan)"; exit 2 ;;
  esac
  dir=build-soak-$san
  mkdir -p "$dir"
  echo "== [$san] configure and build ($dir)"
  if ! cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
       -DKILN_SANITIZE=$flag >"$dir/configure.log" 2>&1 ||
     ! cmake --build "$dir" -j2 --target test_soak >"$dir/build.log" 2>&1; then
    tail -40 "$dir/configure.log" "$dir/build.log"; status=1; continue
  fi
  (cd "$dir" && ctest -R "trace_models_make|reliability_models_make" >/dev/null) || { echo "model fixtures failed"; status=1; continue; }
  echo "== [$san] test_soak: ${secs}s, $threads threads"
  if (cd "$dir" && KILN_TEST_TMP="$PWD/test-tmp" KILN_TRACE_MODELS="$PWD/trace-models" \
        KILN_RELIABILITY_MODELS="$PWD/reliability-models" KILN_SOAK_SECONDS="$secs" KILN_SOAK_THREADS="$threads" \
        TSAN_OPTIONS=ignore_noninstrumented_modules=1:halt_on_error=1:second_deadlock_stack=1 \
        ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        tests/test_soak >soak.log 2>&1); then
    grep -E "^test_soak" "$dir/soak.log"
  else
    tail -60 "$dir/soak.log"; echo "[$san] test_soak FAILED"; status=1
  fi
done
exit $status
