#!/bin/bash
# models_cli_test.sh — the real models through the command line: `kiln trace`, `kiln run`,
# `kiln inspect`, outputs compared with PyTorch's by numpy.
#
#   models_cli_test.sh KILN_BINARY MODELDIR [WORKDIR]
#
# MODELDIR is what tests/models/export_models.py writes. PYTHON (default python3) must
# have numpy. Prints one line per model and closes with `models cli: N passed, N failed`.
set -u

KILN=${1:?usage: models_cli_test.sh KILN_BINARY MODELDIR [WORKDIR]}
DIR=${2:?usage: models_cli_test.sh KILN_BINARY MODELDIR [WORKDIR]}
WORK=${3:-$(mktemp -d "${TMPDIR:-/tmp}/kiln-models-cli.XXXXXX")}
PY=${PYTHON:-python3}
TOL=1e-4
mkdir -p "$WORK" || exit 1

passed=0
failed=0

# json FIELD MODEL: a field of MODEL.json ("in_name", "in_shape" as 1x3x224x224, "out_name").
json() {
    "$PY" - "$DIR/$2.json" "$1" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
f = sys.argv[2]
if f == "in_name": print(m["inputs"][0]["name"])
elif f == "in_shape": print("x".join(str(d) for d in m["inputs"][0]["shape"]))
elif f == "out_name": print(m["outputs"][0]["name"])
EOF
}

# relerr GOT.npy REF.npy: prints max|got-ref|/max|ref|; fails on shape or dtype mismatch.
relerr() {
    "$PY" - "$1" "$2" <<'EOF'
import sys
import numpy as np
got, ref = np.load(sys.argv[1]), np.load(sys.argv[2])
if got.shape != ref.shape or got.dtype != ref.dtype:
    print(f"shape/dtype {got.shape} {got.dtype} != {ref.shape} {ref.dtype}")
    sys.exit(1)
d = np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()
r = np.abs(ref.astype(np.float64)).max()
e = d / r if r > 0 else d
print(f"{e:.2e}")
sys.exit(0 if np.isfinite(e) else 1)
EOF
}

# one MODEL [trace options...]
one() {
    local name=$1
    shift
    local art="$WORK/$name.kiln" out="$WORK/$name.out" log="$WORK/$name.log"
    local ok=1 why="" err="-"
    rm -rf "$out" "$art"
    mkdir -p "$out"
    if ! "$KILN" trace "$DIR/$name.onnx" -o "$art" "$@" >"$log" 2>&1; then
        ok=0; why="trace failed"
    elif ! "$KILN" inspect "$art" >"$WORK/$name.inspect" 2>>"$log"; then
        ok=0; why="inspect failed"
    elif ! grep -q -- "$(json in_name "$name")" "$WORK/$name.inspect" ||
         ! grep -q -- "$(json out_name "$name")" "$WORK/$name.inspect"; then
        ok=0; why="inspect does not name the input and output"
    elif ! "$KILN" run "$art" --input "$DIR/$name.input_0.npy" --out "$out" >>"$log" 2>&1; then
        ok=0; why="run failed"
    elif [ ! -f "$out/$(json out_name "$name").npy" ]; then
        ok=0; why="run wrote no $(json out_name "$name").npy"
    elif ! err=$(relerr "$out/$(json out_name "$name").npy" "$DIR/$name.output_0.npy"); then
        ok=0; why="output: $err"; err="-"
    elif ! "$PY" -c "import sys; sys.exit(0 if float('$err') <= $TOL else 1)"; then
        ok=0; why="rel err $err > $TOL"
    fi
    # Named input (NAME=FILE) must work as well as positional.
    if [ $ok = 1 ] && ! "$KILN" run "$art" --input "$(json in_name "$name")=$DIR/$name.input_0.npy" \
            --out "$out" >>"$log" 2>&1; then
        ok=0; why="run --input NAME=FILE failed"
    fi
    if [ $ok = 1 ]; then
        passed=$((passed + 1))
        printf '%-13s ok    rel err %s\n' "$name" "$err"
    else
        failed=$((failed + 1))
        printf '%-13s FAIL  %s\n' "$name" "$why"
        sed 's/^/    /' "$log" | tail -n 20
    fi
}

# A wrong input must be a clean error: non-zero exit and one `kiln: error:` line.
wrong_input() {
    local art="$WORK/resnet18.kiln"
    [ -f "$art" ] && [ -f "$DIR/bert.input_0.npy" ] || return 0
    local rc=0
    "$KILN" run "$art" --input "$DIR/bert.input_0.npy" --out "$WORK" >/dev/null 2>"$WORK/wrong.err" || rc=$?
    if [ $rc -ne 0 ] && grep -q '^kiln: error: ' "$WORK/wrong.err"; then
        passed=$((passed + 1))
        printf '%-13s ok    (%s)\n' "wrong input" "$(head -n 1 "$WORK/wrong.err")"
    else
        failed=$((failed + 1))
        printf '%-13s FAIL  exit %d, stderr: %s\n' "wrong input" $rc "$(head -n 3 "$WORK/wrong.err")"
    fi
}

if [ ! -x "$KILN" ]; then
    echo "models_cli_test: $KILN is not an executable" >&2
    echo "models cli: 0 passed, 1 failed"
    exit 1
fi

for name in resnet18 mobilenet_v2 bert; do
    [ -f "$DIR/$name.onnx" ] || { echo "$name: missing in $DIR"; continue; }
    case $name in
        # --shape on a static input (same value) must be accepted; --lazy --async artifacts
        # must run like eager ones.
        resnet18) one "$name" --shape "$(json in_name "$name")=$(json in_shape "$name")" ;;
        bert)     one "$name" --lazy --async ;;
        *)        one "$name" ;;
    esac
done
wrong_input

if [ $((passed + failed)) = 0 ]; then
    echo "models_cli_test: no model in $DIR" >&2
    failed=1
fi
echo "models cli: $passed passed, $failed failed"
[ $failed = 0 ]
