#!/usr/bin/env bash
# fuzz.sh — builds kiln's libFuzzer targets (clang, ASan+UBSan, in build-fuzz/), makes seed
# corpora from real files (fuzz/make_corpus.py) and runs the targets one after another.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      default: 600 s; artifact onnx npy
#
# Each target runs in libFuzzer's fork mode with one job (-fork=1), so a crash, leak,
# timeout or out-of-memory is recorded and fuzzing goes on. The corpus grows in
# build-fuzz/corpus/<target>/, findings land in build-fuzz/findings/<target>/ (crash-*,
# leak-*, timeout-*, oom-*), the log in build-fuzz/fuzz-<target>.log. A finding worth
# keeping is minimised (fuzz_<target> -minimize_crash=1 -runs=10000 FILE) and copied to
# fuzz/regressions/<target>/, where tests/test_fuzz_regressions.c replays it in every test
# run. Prints, per target: executions, coverage, corpus size and findings.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
[ $# -gt 0 ] && shift
targets=${*:-artifact onnx npy}
dir=build-fuzz
mkdir -p "$dir"

echo "== configure and build ($dir)"
if ! cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
     -DKILN_SANITIZE=address -DKILN_FUZZ=ON -DKILN_BUILD_TESTS=OFF >"$dir.configure.log" 2>&1; then
  cat "$dir.configure.log"; exit 1
fi
if ! cmake --build "$dir" -j2 --target fuzz_artifact fuzz_onnx fuzz_npy kiln_cli >"$dir.build.log" 2>&1; then
  tail -40 "$dir.build.log"; exit 1
fi

echo "== seed corpora"
/usr/bin/python3 fuzz/make_corpus.py "$dir/kiln" "$dir/seeds" || exit 1

declare -A max_len=([artifact]=65536 [onnx]=16384 [npy]=4096)
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:handle_abort=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
for t in $targets; do
  mkdir -p "$dir/corpus/$t" "$dir/findings/$t"
  echo "== fuzz_$t for ${secs}s"
  start=$(date +%s)
  "$dir/fuzz/fuzz_$t" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
      -max_total_time="$secs" -timeout=20 -rss_limit_mb=2560 -max_len="${max_len[$t]}" \
      -artifact_prefix="$dir/findings/$t/" "$dir/corpus/$t" "$dir/seeds/$t" >"$dir/fuzz-$t.log" 2>&1
  end=$(date +%s)
  # fork mode prints "#EXECS: cov: N ft: N corp: N exec/s N oom/timeout/crash: a/b/c time: Ns ..."
  last=$(grep -E '^#[0-9]+: cov:' "$dir/fuzz-$t.log" | tail -1)
  found=$(find "$dir/findings/$t" -type f | wc -l)
  echo "fuzz_$t: $((end - start)) s; ${last:-no stats (see $dir/fuzz-$t.log)}; files in findings/$t: $found"
  [ "$found" -eq 0 ] || status=1
done
exit $status
