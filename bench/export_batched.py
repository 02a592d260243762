#!/usr/bin/python3
"""export_batched.py OUTDIR — resnet18 and the BERT-like encoder with a dynamic batch
dimension (for the data-parallel throughput benchmark), random seeded weights, opset 17."""
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "models"))
from export_models import BertLike  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
for name, model, x in (
    ("resnet18", torchvision.models.resnet18(weights=None), torch.randn(2, 3, 224, 224)),
    ("bert", BertLike(), torch.randint(0, 1000, (2, 64))),
):
    path = os.path.join(out, name + "_dyn.onnx")
    if os.path.exists(path):
        continue
    model.eval()
    torch.onnx.export(model, x, path, opset_version=17, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, do_constant_folding=True)
    print("exported", path)
