#!/usr/bin/python3
"""export_models.py — exports the real models kiln is tested and benchmarked on.

    export_models.py OUTDIR [--only NAME]... [--force]

For each model (resnet18, mobilenet_v2, bert) it writes into OUTDIR:
    NAME.onnx           the model, exported by torch.onnx.export at opset 17 (eval mode,
                        constant folding on)
    NAME.input_0.npy    a random input (token ids in range for bert)
    NAME.output_0.npy   PyTorch's own output for that input (eval mode, torch.no_grad())
    NAME.json           input names/shapes/dtypes and output names
    NAME.stamp          hash of this script and the torch version; when it matches and every
                        file is there, the model is not exported again

Weights are random (no network), seeded, so every run produces the same files. Needs
Debian's python3-torch (1.13) and python3-torchvision (0.14): run it with /usr/bin/python3.
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torchvision

OPSET = 17
MODELS = ("resnet18", "mobilenet_v2", "bert")
# Ops a plain exporter emits; anything outside the default ONNX domain (e.g. the fast
# path's torch._transformer_encoder_layer_fwd turned into an ATen op) is an export bug.
ONNX_DOMAINS = ("", "ai.onnx")


class BertLike(nn.Module):
    """A BERT-like encoder: token + learned position embeddings, 4 post-norm layers, a
    final LayerNorm. Input: int64 token ids [1, 64]; output: f32 [1, 64, 256]."""

    def __init__(self, vocab=1000, d=256, heads=4, ff=1024, layers=4, seq=64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=heads, dim_feedforward=ff,
                                           activation="gelu", batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers,
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, ids):
        return self.norm(self.encoder(self.tok(ids) + self.pos))


def build(name):
    """(module, example input, input name, output name) for a model name."""
    torch.manual_seed(0)
    if name == "resnet18":
        m = torchvision.models.resnet18(weights=None)
        x = torch.randn(1, 3, 224, 224)
        return m, x, "input", "logits"
    if name == "mobilenet_v2":
        m = torchvision.models.mobilenet_v2(weights=None)
        x = torch.randn(1, 3, 224, 224)
        return m, x, "input", "logits"
    if name == "bert":
        m = BertLike()
        x = torch.randint(0, 1000, (1, 64), dtype=torch.int64)
        return m, x, "input_ids", "hidden"
    raise SystemExit(f"export_models.py: unknown model '{name}' (have: {', '.join(MODELS)})")


def script_stamp():
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(torch.__version__.encode())
    h.update(torchvision.__version__.encode())
    return h.hexdigest()


def files_of(outdir, name):
    base = os.path.join(outdir, name)
    return [base + ".onnx", base + ".input_0.npy", base + ".output_0.npy", base + ".json"]


def up_to_date(outdir, name, stamp):
    try:
        with open(os.path.join(outdir, name + ".stamp")) as f:
            if f.read().strip() != stamp:
                return False
    except OSError:
        return False
    return all(os.path.isfile(p) for p in files_of(outdir, name))


def check_plain_ops(path):
    """Fails if the exported graph holds anything but standard ONNX ops."""
    import onnx
    model = onnx.load(path)
    bad = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node
                  if n.domain not in ONNX_DOMAINS})
    if bad:
        raise SystemExit(f"export_models.py: {path}: non-standard ops {bad}")
    onnx.checker.check_model(model)
    counts = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def write_atomic(path, write):
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def export(outdir, name, stamp):
    t0 = time.time()
    m, x, in_name, out_name = build(name)
    m.eval()
    with torch.no_grad():
        ref = m(x)
    onnx_path = os.path.join(outdir, name + ".onnx")
    # Grad stays enabled while exporting: torch 1.13's TransformerEncoderLayer and
    # MultiheadAttention take a fused "fast path" (not exportable) when grad is off.
    with torch.enable_grad():
        write_atomic(onnx_path, lambda tmp: torch.onnx.export(
            m, (x,), tmp, opset_version=OPSET, do_constant_folding=True,
            input_names=[in_name], output_names=[out_name], training=torch.onnx.TrainingMode.EVAL))
    counts = check_plain_ops(onnx_path)
    base = os.path.join(outdir, name)
    write_atomic(base + ".input_0.npy", lambda tmp: np.save(open(tmp, "wb"), x.numpy()))
    write_atomic(base + ".output_0.npy",
                 lambda tmp: np.save(open(tmp, "wb"), ref.detach().numpy().astype(np.float32)))
    meta = {
        "name": name,
        "opset": OPSET,
        "inputs": [{"name": in_name, "shape": list(x.shape), "dtype": str(x.numpy().dtype),
                    "file": name + ".input_0.npy"}],
        "outputs": [{"name": out_name, "shape": list(ref.shape), "dtype": "float32",
                     "file": name + ".output_0.npy"}],
        "ops": counts,
    }
    write_atomic(base + ".json", lambda tmp: open(tmp, "w").write(json.dumps(meta, indent=1) + "\n"))
    with open(base + ".stamp", "w") as f:
        f.write(stamp + "\n")
    print(f"export_models: {name}: {sum(counts.values())} nodes, "
          f"{os.path.getsize(onnx_path) / 1e6:.1f} MB, {time.time() - t0:.1f} s")


def main():
    ap = argparse.ArgumentParser(description="Export kiln's test models (PyTorch -> ONNX).")
    ap.add_argument("outdir")
    ap.add_argument("--only", action="append", choices=MODELS,
                    help="export only this model (may repeat)")
    ap.add_argument("--force", action="store_true", help="export even if up to date")
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    torch.set_num_threads(1)
    stamp = script_stamp()
    for name in args.only or MODELS:
        if not args.force and up_to_date(args.outdir, name, stamp):
            print(f"export_models: {name}: up to date")
            continue
        export(args.outdir, name, stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
