#!/bin/sh
# cli_test.sh KILN SCRATCH — end-to-end tests of the `kiln` command line.
#
# KILN is the kiln binary, SCRATCH a directory this script may wipe. Models, inputs and
# NumPy references come from tests/cli_models.py (python3 with numpy and onnx; set
# KILN_PYTHON to choose the interpreter). Without one, only the argument tests run.
# Every failure is printed; the last line is "cli tests: N passed, N failed".
set -u

KILN=${1:?usage: cli_test.sh KILN SCRATCH}
WORK=${2:?usage: cli_test.sh KILN SCRATCH}
HERE=$(cd "$(dirname "$0")" && pwd)
case $KILN in /*) ;; *) KILN=$(pwd)/$KILN ;; esac

passed=0
failed=0
pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }

rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK" || { echo "cannot use $WORK"; exit 1; }

# ok NAME CMD...: CMD must succeed; its stdout is kept in NAME.out.
ok() {
    name=$1
    shift
    if "$@" >"$name.out" 2>"$name.err"; then
        pass
    else
        fail "$name: exit $? from: $*"
        sed 's/^/    /' "$name.err"
    fi
}

# err NAME TEXT CMD...: CMD must fail with exactly one stderr line "kiln: error: ...",
# containing TEXT (a fixed string; empty: anything).
err() {
    name=$1
    text=$2
    shift 2
    if "$@" >"$name.out" 2>"$name.err"; then
        fail "$name: succeeded but should have failed: $*"
        return
    fi
    lines=$(grep -c '^kiln: error: ' "$name.err")
    if [ "$lines" != 1 ] || [ "$(wc -l <"$name.err")" != 1 ]; then
        fail "$name: wanted exactly one 'kiln: error:' line on stderr, got:"
        sed 's/^/    /' "$name.err"
    elif [ -n "$text" ] && ! grep -qF -- "$text" "$name.err"; then
        fail "$name: error does not mention '$text':"
        sed 's/^/    /' "$name.err"
    else
        pass
    fi
}

# has NAME TEXT: NAME.out contains TEXT (case-insensitive fixed string)
has() {
    if grep -qiF -- "$2" "$1.out"; then
        pass
    else
        fail "$1: output does not mention '$2':"
        sed 's/^/    /' "$1.out"
    fi
}

# ---- the command line itself (needs no model) ----

ok help "$KILN" --help
has help "usage: kiln"
ok help2 "$KILN" help
has help2 "trace MODEL.onnx"
ok help_run "$KILN" help run
has help_run "--no-dynamic-batching"
ok run_help "$KILN" run --help
has run_help "--cores"
ok trace_help "$KILN" trace -h
has trace_help "--shape"
ok inspect_help "$KILN" inspect --help
has inspect_help "checksum"
ok version "$KILN" --version
has version "kiln 0."
err no_command "no command" "$KILN"
err bad_command "frobnicate" "$KILN" frobnicate
err bad_help "frobnicate" "$KILN" help frobnicate
err trace_no_model "ONNX model" "$KILN" trace -o x.kiln
err trace_no_out "-o OUT.kiln" "$KILN" trace m.onnx
err trace_bad_opt "--frob" "$KILN" trace m.onnx -o x.kiln --frob
err trace_no_value "--shape needs a value" "$KILN" trace m.onnx -o x.kiln --shape
err trace_shape_z "'z' is not a digit" "$KILN" trace m.onnx -o x.kiln --shape x=1x3xz
err trace_shape_xx "dimension 1 is empty" "$KILN" trace m.onnx -o x.kiln --shape x=1xx3
err trace_shape_big "too large" "$KILN" trace m.onnx -o x.kiln --shape x=99999999999999999999x3
err trace_shape_many "too many elements" "$KILN" trace m.onnx -o x.kiln --shape x=4294967296x4294967296
err trace_shape_zero "is 0" "$KILN" trace m.onnx -o x.kiln --shape x=0x3
err trace_shape_neg "'-' is not a digit" "$KILN" trace m.onnx -o x.kiln --shape x=-1x3
err trace_shape_noname "NAME=DIMS" "$KILN" trace m.onnx -o x.kiln --shape 1x3
err trace_shape_empty "empty" "$KILN" trace m.onnx -o x.kiln --shape x=
err trace_shape_twice "twice" "$KILN" trace m.onnx -o x.kiln --shape x=1 --shape x=2
err trace_two_models "unexpected argument" "$KILN" trace a.onnx b.onnx -o x.kiln
err run_no_artifact "artifact" "$KILN" run
err run_dim_alone "--dim only applies with --cores" "$KILN" run m.kiln --dim 0
err run_nodyn_alone "--no-dynamic-batching only applies" "$KILN" run m.kiln --no-dynamic-batching
err run_bad_cores "--cores" "$KILN" run m.kiln --cores a,b
err run_cores_twice "listed twice" "$KILN" run m.kiln --cores 0,0
err run_bad_repeat "--repeat" "$KILN" run m.kiln --repeat 0
err run_bad_dim "--dim" "$KILN" run m.kiln --cores 0 --dim -1
err run_bad_opt "--frob" "$KILN" run m.kiln --frob
err inspect_nothing "artifact" "$KILN" inspect
err inspect_missing "no-such.kiln" "$KILN" inspect no-such.kiln
err run_missing "no-such.kiln" "$KILN" run no-such.kiln

# ---- models ----

PY=
for p in "${KILN_PYTHON:-}" python3 /usr/bin/python3; do
    if [ -n "$p" ] && "$p" -c 'import numpy, onnx' >/dev/null 2>&1; then
        PY=$p
        break
    fi
done
if [ -z "$PY" ]; then
    echo "note: no python3 with numpy and onnx (set KILN_PYTHON): model tests skipped"
    echo "cli tests: $passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit
fi
if ! "$PY" "$HERE/cli_models.py" make m; then
    fail "cli_models.py make"
    echo "cli tests: $passed passed, $failed failed"
    exit 1
fi

# same NAME GOT REF: GOT.npy equals REF.npy within 1e-4 relative
same() {
    if [ ! -f "$2" ]; then
        fail "$1: no output file $2"
    elif "$PY" "$HERE/cli_models.py" compare "$2" "$3"; then
        pass
    else
        fail "$1: $2 differs from $3"
    fi
}

# trace
err trace_dynamic "dynamic dimension 0" "$KILN" trace m/mlp.onnx -o mlp.kiln
grep -qF "'x'" trace_dynamic.err && pass || fail "trace_dynamic: error does not name input 'x'"
err trace_unknown_input "(inputs: x)" "$KILN" trace m/mlp.onnx -o mlp.kiln --shape y=4x16
err trace_rank "2 dimensions" "$KILN" trace m/mlp.onnx -o mlp.kiln --shape x=4x16x1
err trace_fixed_dim "fixed at 16" "$KILN" trace m/mlp.onnx -o mlp.kiln --shape x=4x15
err trace_missing_model "no-such.onnx" "$KILN" trace no-such.onnx -o z.kiln
err trace_not_onnx "KILN_ERR_FORMAT" "$KILN" trace m/not_onnx.onnx -o z.kiln
[ ! -e z.kiln ] && pass || fail "a failed trace left z.kiln behind"

ok trace_mlp "$KILN" trace m/mlp.onnx -o mlp.kiln --shape x=4x16
has trace_mlp "x: f32 4x16"
has trace_mlp "y: f32 4x8"
has trace_mlp "saved mlp.kiln"
ok trace_mlp_lazy "$KILN" trace m/mlp.onnx --lazy -o mlp_lazy.kiln --shape=x=4,16
has trace_mlp_lazy "lazy"
ok trace_mlp_async "$KILN" trace --async m/mlp.onnx --output mlp_async.kiln --shape x=4x16
has trace_mlp_async "async"
ok trace_mlp_both "$KILN" trace m/mlp.onnx -o mlp_both.kiln --shape x=4x16 --lazy --async
has trace_mlp_both "lazy + async"
ok trace_conv "$KILN" trace m/conv.onnx -o conv.kiln
has trace_conv "conv/relu:0: f32 1x4x8x8"
ok trace_two "$KILN" trace m/two.onnx -o two.kiln

# inspect
ok inspect_mlp "$KILN" inspect mlp.kiln
for word in flags 4x16 4x8 ok; do has inspect_mlp "$word"; done
ok inspect_lazy "$KILN" inspect mlp_lazy.kiln
has inspect_lazy lazy
ok inspect_async "$KILN" inspect mlp_async.kiln
has inspect_async async
ok inspect_both "$KILN" inspect mlp_both.kiln
has inspect_both lazy
has inspect_both async

# run
ok run_mlp "$KILN" run mlp.kiln --input x=m/x4.npy --out out_mlp
has run_mlp "forward"
has run_mlp "load report"
has run_mlp "y: f32 4x8"
same run_mlp out_mlp/y.npy m/mlp_ref4.npy
ok run_mlp_pos "$KILN" run mlp.kiln -i m/x4.npy --out=out_pos
same run_mlp_pos out_pos/y.npy m/mlp_ref4.npy
ok run_mlp_fortran "$KILN" run mlp.kiln --input m/x4_fortran.npy --out out_f
same run_mlp_fortran out_f/y.npy m/mlp_ref4.npy
for v in lazy async both; do
    ok "run_$v" "$KILN" run "mlp_$v.kiln" --input x=m/x4.npy --out "out_$v"
    same "run_$v" "out_$v/y.npy" m/mlp_ref4.npy
done
has run_lazy "lazy"
has run_async "async"
ok run_repeat "$KILN" run mlp.kiln --input x=m/x4.npy --out out_rep --repeat 5
has run_repeat "median"
mkdir -p cwd && (cd cwd && "$KILN" run ../mlp.kiln --input x=../m/x4.npy >../cwd.out 2>../cwd.err) \
    && pass || fail "run in the current directory"
same run_cwd cwd/y.npy m/mlp_ref4.npy

ok run_conv "$KILN" run conv.kiln --input m/img.npy --out out_conv
same run_conv out_conv/conv_relu_0.npy m/conv_ref.npy
[ -z "$(find . -name 'relu:0.npy')" ] && pass || fail "run_conv: an unsanitised file name was written"

ok run_two_pos "$KILN" run two.kiln --input m/a.npy --input m/b.npy --out out_two
same run_two_pos out_two/sum.npy m/two_sum_ref.npy
same run_two_pos out_two/diff.npy m/two_diff_ref.npy
ok run_two_named "$KILN" run two.kiln --input b=m/b.npy --input a=m/a.npy --out out_two_n
same run_two_named out_two_n/sum.npy m/two_sum_ref.npy
same run_two_named out_two_n/diff.npy m/two_diff_ref.npy
ok run_two_mixed "$KILN" run two.kiln --input m/a.npy --input b=m/b.npy --out out_two_m
same run_two_mixed out_two_m/diff.npy m/two_diff_ref.npy

# data-parallel: two cores when the machine has them
cores=0
[ "$(nproc 2>/dev/null || echo 1)" -ge 2 ] && cores=0,1
ok dp_4 "$KILN" run mlp.kiln --input x=m/x4.npy --cores $cores --out out_dp4
has dp_4 "data-parallel"
same dp_4 out_dp4/y.npy m/mlp_ref4.npy
ok dp_6 "$KILN" run mlp_lazy.kiln --input x=m/x6.npy --cores $cores --dim 0 --out out_dp6
has dp_6 "y: f32 6x8"
same dp_6 out_dp6/y.npy m/mlp_ref6.npy
if [ $cores = 0,1 ]; then
    ok dp_8_nodyn "$KILN" run mlp.kiln --input x=m/x8.npy --cores 0-1 --no-dynamic-batching --out out_dp8
    same dp_8_nodyn out_dp8/y.npy m/mlp_ref8.npy
fi
err dp_6_nodyn "KILN_ERR_SHAPE" "$KILN" run mlp.kiln --input x=m/x6.npy --cores $cores --no-dynamic-batching --out out_x
err dp_bad_core "KILN_ERR_CORE" "$KILN" run mlp.kiln --input x=m/x4.npy --cores 4096 --out out_x
err dp_dim_range "--dim 3" "$KILN" run mlp.kiln --input x=m/x4.npy --cores 0 --dim 3 --out out_x

# run errors
err run_missing_input "missing input 'a'" "$KILN" run two.kiln --input b=m/b.npy
err run_twice "already given" "$KILN" run two.kiln --input a=m/a.npy --input a=m/b.npy
err run_too_many "too many inputs" "$KILN" run mlp.kiln --input m/x4.npy --input m/x4.npy
err run_unknown_name "no input 'z' (inputs: x)" "$KILN" run mlp.kiln --input z=m/x4.npy
err run_wrong_shape "expected f32 4x16, got f32 4x15" "$KILN" run mlp.kiln --input x=m/x_bad.npy
err run_wrong_dtype "expected f32 4x16, got f64 4x16" "$KILN" run mlp.kiln --input x=m/x_f64.npy
err run_not_npy "input 'x'" "$KILN" run mlp.kiln --input x=m/not_npy.npy
err run_no_npy "input 'x'" "$KILN" run mlp.kiln --input x=m/no-such.npy
err run_out_file "not a directory" "$KILN" run mlp.kiln --input x=m/x4.npy --out m/x4.npy
err run_not_artifact "KILN_ERR_FORMAT" "$KILN" run m/mlp.onnx --input x=m/x4.npy

# damaged artifacts
cp mlp.kiln bad.kiln && "$PY" "$HERE/cli_models.py" corrupt bad.kiln
err run_corrupt "" "$KILN" run bad.kiln --input x=m/x4.npy --out out_bad
[ ! -e out_bad/y.npy ] && pass || fail "run_corrupt wrote an output"
if "$KILN" inspect bad.kiln >inspect_bad.out 2>inspect_bad.err; then
    fail "inspect of a corrupt artifact exited 0"
else
    pass
fi
cp mlp_lazy.kiln bad_lazy.kiln && "$PY" "$HERE/cli_models.py" corrupt bad_lazy.kiln
err run_corrupt_lazy "" "$KILN" run bad_lazy.kiln --input x=m/x4.npy --out out_bad
head -c 100 mlp.kiln >short.kiln
err run_truncated "" "$KILN" run short.kiln --input x=m/x4.npy
err inspect_truncated "" "$KILN" inspect short.kiln
: >empty.kiln
err run_empty "" "$KILN" run empty.kiln --input x=m/x4.npy

echo "cli tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
