#!/usr/bin/python3
"""operators_doc.py — writes docs/OPERATORS.md from the conformance runner's table and the
compiler's op table.

    onnx_node_tests --ops-out ops.txt --table-out table.tsv
    operators_doc.py table.tsv src/compiler/lower_ops.c docs/OPERATORS.md

table.tsv is what tests/onnx_node_tests.c writes with --table-out; lower_ops.c holds
kc_op_table, the op types kiln lowers. The limits and reasons below that are not in the
runner's messages (the notes per op, the reasons an op is not implemented) are kept here, by
hand, next to the generator.
"""
import collections
import re
import sys

# Notable limits of supported ops, beyond what the node tests show.
NOTES = {
    "BatchNormalization": "inference only: training_mode 1 and the running-statistics outputs are refused",
    "Dropout": "an identity at inference; training_mode with a non-zero ratio (random) is refused",
    "Resize": "nearest/linear/cubic with every coordinate_transformation_mode but "
              "tf_half_pixel_for_nn and tf_crop_and_resize; antialias and keep_aspect_ratio_policy "
              "other than stretch are refused; scales/sizes must be known at trace time",
    "Upsample": "as Resize (opset 7-9); nearest enlarging some axes and shrinking others is refused",
    "Einsum": "one or two operands; repeated labels within an operand (diagonals) are refused",
    "ScatterND": "indices known at trace time or only at run time (an out-of-range one then fails "
                 "the run); reductions only when every input is constant",
    "ScatterElements": "indices known at trace time or only at run time (an out-of-range one then "
                       "fails the run); reduction other than none is refused",
    "Scatter": "as ScatterElements (opset 9-10)",
    "Max": "f16 is refused by the kernels",
    "Min": "f16 is refused by the kernels",
    "Mod": "f16 is refused by the kernels",
    "Pad": "constant, reflect, edge and wrap; pads must be known at trace time",
    "Gelu": "approximate none and tanh (an opset 20 op; kiln accepts it at any opset)",
    "Clip": "bounds must be known at trace time; integer tensors with bounds a float cannot hold exactly are refused",
    "MaxPool": "storage_order 1 indices only for 2-D pooling",
    "Cast": "no string tensors",
    "CastLike": "no string tensors",
    "Identity": "tensors only (no sequences or optionals)",
    "Range": "start, limit and delta must be known at trace time (the output shape depends on them)",
    "ConstantOfShape": "the shape must be known at trace time",
    "OneHot": "depth must be known at trace time",
    "Reshape": "the shape must be known at trace time (as everything that decides a shape)",
    "TopK": "k must be known at trace time (it is the output's extent); the output is always "
            "sorted, ties by lower index, NaN above every number",
    "NonZero": "only of a tensor known at trace time (torch exports arange at opsets 9-10 so); "
               "on run-time data the output shape would depend on the data",
    "RNN": "unrolled over time at trace time (at most 4096 steps); sequence_lens may be given at run time",
    "GRU": "as RNN; every linear_before_reset, layout and activation of the spec",
    "LSTM": "as RNN; peepholes, input_forget and clip included",
    "GroupNormalization": "opset 18 form; torch 1.13 exports GroupNorm as InstanceNormalization on a reshape",
}

# Where ops kiln lowers that no node test covers are checked instead.
ZOO = "the model zoo (tests/test_zoo.c)"
COVERED = {
    "HardSigmoid": ZOO + ": mobilenet_v3",
    "GlobalAveragePool": ZOO + ": every CNN",
    "InstanceNormalization": ZOO + ": unet, vae (GroupNorm as exported by torch); tests/lower_cases.py",
    "Not": ZOO + ": swin_t",
    "GroupNormalization": "tests/lower_cases.py (opset 18)",
    "Elu": "kernel: tests/test_ref_kernels.c",
    "Selu": "kernel: tests/test_ref_kernels.c",
    "Softplus": "kernel: tests/test_ref_kernels.c",
    "Mish": "kernel: tests/test_ref_kernels.c",
    "Gelu": "kernel: tests/test_ref_kernels.c",
}

# Why op types the node tests have are not implemented.
NOT_IMPLEMENTED = [
    ("Output shape depends on the data (kiln compiles for fixed shapes)",
     ["Unique", "Compress", "NonMaxSuppression"]),
    ("Control flow and subgraphs (If, Loop, Scan are refused at import)",
     ["If", "Loop", "Scan"]),
    ("Sequences, optionals, maps and strings (tensors only)",
     ["SequenceInsert", "SequenceMap", "OptionalGetElement", "OptionalHasElement",
      "StringNormalizer", "TfIdfVectorizer"]),
    ("Training: losses and optimisers",
     ["NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss", "Adagrad", "Adam", "Momentum"]),
    ("Random numbers", ["Bernoulli", "RandomUniformLike", "RandomNormalLike", "RandomUniform",
                        "RandomNormal", "Multinomial"]),
    ("Quantised integer arithmetic",
     ["QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
      "QLinearMatMul", "ConvInteger", "MatMulInteger"]),
    ("Signal processing", ["DFT", "STFT", "MelWeightMatrix", "BlackmanWindow", "HammingWindow",
                           "HannWindow"]),
    ("Not implemented yet (no model kiln targets has needed them)",
     ["GridSample", "RoiAlign", "MaxUnpool", "LRN", "Hardmax", "Shrink", "Det",
      "ReverseSequence", "MeanVarianceNormalization"]),
]


def clean(msg):
    """A runner message without the test data's directory."""
    msg = re.sub(r"\S*/(model\.onnx)", r"\1", msg)
    return msg.replace("KILN_ERR_UNSUPPORTED: ", "")


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: operators_doc.py TABLE.tsv LOWER_OPS_C OUT.md")
    table_path, lower_ops, out_path = sys.argv[1:]
    lowered = re.findall(r'\{"(\w+)", kc_lower_\w+\}', open(lower_ops).read())
    ops, unsup, expanded, untested, tests = {}, collections.defaultdict(list), {}, {}, []
    for line in open(table_path):
        f = line.rstrip("\n").split("\t")
        if f[0] == "op":
            ops[f[1]] = (int(f[2]), int(f[3]), int(f[4]))
        elif f[0] == "unsupported":
            unsup[f[1]].append((f[2], clean(f[3])))
        elif f[0] == "expanded":
            expanded[f[1]] = (int(f[2]), int(f[3]), int(f[4]))
        elif f[0] == "untested":
            untested[f[1]] = (int(f[2]), int(f[3]), clean(f[4]))
        elif f[0] == "test":
            tests.append(f[1:] + [""] * (6 - len(f)))
    verdicts = collections.Counter(t[2] for t in tests)
    n_bound = sum(1 for t in tests if t[2] == "P" and t[3])
    by_op = collections.defaultdict(list)
    for t in tests:
        by_op[t[1]].append(t)

    o = []
    w = o.append
    w("# ONNX operators")
    w("")
    w("<!-- Generated by tests/operators_doc.py from the conformance runner "
      "(tests/onnx_node_tests.c --table-out) and kc_op_table (src/compiler/lower_ops.c); "
      "edit those, not this file. -->")
    w("")
    w(f"kiln lowers **{len(lowered)} ONNX op types** (default domain, opsets 7 to 18). "
      f"**{len(ops)}** of them pass ONNX's backend node tests (Debian's `libonnx-testdata`, "
      f"ONNX 1.12) — every test of every such op passes, apart from the variants listed "
      f"below as refused; the other {len(lowered) - len(ops)} have no node test kiln can run "
      f"(see [below](#ops-kiln-lowers-that-no-node-test-covers)).")
    w("")
    w(f"Node tests: **{verdicts['P']} passed, {verdicts['F']} failed, {verdicts['U']} unsupported, "
      f"{verdicts['X']} excluded** (of {len(tests)}); {n_bound} of the passes with parameters "
      f"bound at trace time.")
    w("")
    w("Run it yourself: `build/release/tests/onnx_node_tests [-v] [--filter NAME]`; regenerate "
      "this page with `onnx_node_tests --table-out t.tsv && tests/operators_doc.py t.tsv "
      "src/compiler/lower_ops.c docs/OPERATORS.md`.")
    w("")
    w("## What \"known at trace time\" means")
    w("")
    w("kiln compiles a model ahead of time for fixed input shapes. Whatever decides a shape or "
      "how an op is lowered — Reshape's shape, Slice's starts/ends/axes/steps, Squeeze/Unsqueeze "
      "axes, Split sizes, Pad pads, Resize scales/sizes, Tile repeats, Expand's shape, Range's "
      "inputs, ConstantOfShape's shape, OneHot's depth, Clip's bounds, Trilu's k, CumSum's axis, "
      "TopK's k, reduction axes — must be a constant at trace time: an initializer, a "
      "Constant, or computed from those (the Shape/Gather/Concat arithmetic exporters emit is "
      "folded). Exported models have them so. When one is a graph input, trace fails with "
      "`KILN_ERR_UNSUPPORTED: ... input 'NAME' must be known at trace time`; make it an "
      "initializer.")
    w("")
    w("Many node tests feed those parameters as graph inputs. The runner then does what a user "
      "would: it turns that graph input (or the graph inputs the value is computed from) into an "
      "initializer holding the test's data and traces again. Those passes are counted in the "
      "column *bound*.")
    w("")
    w("## Supported ops")
    w("")
    w("| op | node tests passed / run | bound | notes |")
    w("| --- | --- | --- | --- |")
    for op in sorted(ops):
        p, r, b = ops[op]
        notes = []
        if op in NOTES:
            notes.append(NOTES[op])
        if unsup[op]:
            notes.append("refused: " + ", ".join(f"`{t}`" for t, _ in unsup[op]))
        w(f"| {op} | {p} / {r} | {b or ''} | {'; '.join(notes)} |")
    w("")
    w("### Refused variants of supported ops")
    w("")
    w("Each returns `KILN_ERR_UNSUPPORTED` with this message (never a wrong answer):")
    w("")
    for op in sorted(unsup):
        for t, m in unsup[op]:
            w(f"- `{t}` ({op}): {m}")
    w("")
    w("## Ops kiln lowers that no node test covers")
    w("")
    w("Their node tests are written at an opset below 7, which the importer refuses (kiln "
      "implements opsets 7 to 18), or the test data (ONNX 1.12) has none. These ops' "
      "definitions did not change between the tests' opset and 7: with the models' "
      "`opset_import` raised to 7 the 23 such tests of the data all pass (checked by hand, "
      "not in the suite, since kiln itself refuses the original files).")
    w("")
    w("| op | node tests passed / run | why | checked instead by |")
    w("| --- | --- | --- | --- |")
    for op in lowered:
        if op in untested:
            p, r, why = untested[op]
            w(f"| {op} | {p} / {r} | {why} | {COVERED.get(op, '')} |")
    w("")
    if expanded:
        w("## Functions that run written out")
        w("")
        w("kiln does not lower these function ops, but their `_expanded` tests (the function body "
          "in primitive ops) pass:")
        w("")
        for op in sorted(expanded):
            p, r, b = expanded[op]
            w(f"- {op}: {p} of {r} tests (the expanded ones" + (f"; {b} bound" if b else "") + ")")
        w("")
    w("## Not supported")
    w("")
    w("Op types of the node tests that kiln does not lower; tracing a model with one fails "
      "with `KILN_ERR_UNSUPPORTED: ... operator X is not supported`, naming the node.")
    w("")
    listed = set()
    for why, names in NOT_IMPLEMENTED:
        present = [n for n in names if n in by_op and n not in lowered]
        if not present:
            continue
        listed.update(present)
        w(f"- **{why}**: " + ", ".join(
            f"{n} ({len(by_op[n])} tests)" for n in present))
    rest = sorted(op for op in by_op if op not in lowered and op not in listed
                  and op not in expanded and op != "(unknown)")
    if rest:
        w("- **Other**: " + ", ".join(f"{n} ({len(by_op[n])} tests)" for n in rest))
    w("")
    w("Besides op types: tensors of dtype int16, uint16, uint32, uint64, string and complex, "
      "external data, sparse tensors and opsets outside 7 to 18 are refused at import. Calls of "
      "model-local functions (what torch writes with `export_modules_as_functions`) are "
      "replaced by the functions' bodies at import.")
    w("")
    w("## Excluded tests")
    w("")
    w("Listed in `tests/onnx_node_exclusions.txt`, with the reason:")
    w("")
    for t in tests:
        if t[2] == "X":
            w(f"- `{t[0]}`: {t[4]}")
    w("")
    with open(out_path, "w") as f:
        f.write("\n".join(o))


if __name__ == "__main__":
    main()
