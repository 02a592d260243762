#!/usr/bin/python3
"""pipeline.py — a multi-model pipeline with kiln's Python API, shaped like the Stable
Diffusion sample the torch_neuronx lazy/async loading guide points to.

    /usr/bin/python3 python/examples/pipeline.py [--workdir DIR] [--steps N]

Four small PyTorch modules (random weights) stand in for the sample's four models:
    text_encoder     token ids -> hidden states               async_load
    unet             (latents, timestep, hidden) -> noise       lazy_load + async_load,
                                                                then DataParallel on cores 0,1
    post_quant_conv  latents -> latents (1x1 conv)              async_load
    decoder          latents -> image (upsampling convs)        async_load

Each is traced and saved with its flags; then, as a serving process would, all four are
loaded: the async ones start placing in the background at once and load concurrently, the
lazy unet waits for DataParallel to place it on exactly the cores it names. The pipeline
runs a few guided denoising steps and the result is compared with the same modules run by
PyTorch.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

try:
    import kiln
except ImportError:  # running from a checkout without installing: use ../kiln
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import kiln

VOCAB, SEQ, D = 100, 16, 64
LATENT, SIZE = 4, 16


class TextEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D)
        self.pos = nn.Parameter(torch.randn(1, SEQ, D) * 0.02)
        layer = nn.TransformerEncoderLayer(D, nhead=4, dim_feedforward=2 * D, dropout=0.0,
                                           batch_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D)

    def forward(self, ids):
        return self.norm(self.enc(self.tok(ids) + self.pos))


class UNet(nn.Module):
    """A tiny conditional denoiser: down, middle (conditioned on text and time), up."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(LATENT, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.time = nn.Sequential(nn.Linear(1, 64), nn.SiLU(), nn.Linear(64, 64))
        self.text = nn.Linear(D, 64)
        self.mid = nn.Conv2d(64, 64, 3, padding=1)
        self.norm = nn.GroupNorm(8, 64)
        self.up = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
        self.out = nn.Conv2d(64, LATENT, 3, padding=1)

    def forward(self, sample, timestep, hidden):
        h0 = torch.nn.functional.silu(self.inp(sample))
        h = torch.nn.functional.silu(self.down(h0))
        cond = self.time(timestep[:, None]) + self.text(hidden.mean(1))
        h = h + cond[:, :, None, None]
        h = torch.nn.functional.silu(self.norm(self.mid(h)))
        h = torch.nn.functional.silu(self.up(h))
        return self.out(torch.cat([h, h0], 1))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(LATENT, 64, 3, padding=1), nn.SiLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(64, 32, 3, padding=1), nn.SiLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(32, 16, 3, padding=1), nn.SiLU(),
            nn.Conv2d(16, 3, 3, padding=1), nn.Tanh())

    def forward(self, z):
        return self.net(z)


def build():
    torch.manual_seed(0)
    text_encoder = TextEncoder().eval()
    unet = UNet().eval()
    post_quant_conv = nn.Conv2d(LATENT, LATENT, 1).eval()
    decoder = Decoder().eval()
    examples = {
        "text_encoder": torch.randint(0, VOCAB, (1, SEQ)),
        "unet": (torch.randn(1, LATENT, SIZE, SIZE), torch.tensor([1.0]), torch.randn(1, SEQ, D)),
        "post_quant_conv": torch.randn(1, LATENT, SIZE, SIZE),
        "decoder": torch.randn(1, LATENT, SIZE, SIZE),
    }
    return {"text_encoder": text_encoder, "unet": unet, "post_quant_conv": post_quant_conv,
            "decoder": decoder}, examples


# (lazy, async) per model, as in the sample
FLAGS = {"text_encoder": (False, True), "unet": (True, True),
         "post_quant_conv": (False, True), "decoder": (False, True)}


def run_pipeline(text_encoder, unet, post_quant_conv, decoder, ids, latents, steps,
                 guidance=7.5):
    """Classifier-free guidance: the unet sees the unconditional and the conditional half of
    a batch of 2 (on two cores with DataParallel)."""
    hidden = torch.cat([text_encoder(ids[0:1]), text_encoder(ids[1:2])])
    for k in range(steps):
        t = torch.full((2,), float(steps - k))
        noise = unet(torch.cat([latents, latents]), t, hidden)
        uncond, cond = noise[0:1], noise[1:2]
        latents = latents - (uncond + guidance * (cond - uncond)) / steps
    return decoder(post_quant_conv(latents / 0.18215))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", help="where the artifacts go (default: a temporary directory)")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="kiln-pipeline-")
        args.workdir = tmp.name
    os.makedirs(args.workdir, exist_ok=True)
    modules, examples = build()
    cores = [0, 1] if kiln.num_cores() >= 2 else [0]
    print(f"kiln pipeline: {kiln.num_cores()} core(s) visible, library {kiln.library_path}\n")

    print("1. trace, set the load flags, save")
    paths = {}
    for name, module in modules.items():
        t0 = time.perf_counter()
        neuron_model = kiln.trace(module, examples[name])
        lazy, is_async = FLAGS[name]
        kiln.lazy_load(neuron_model, lazy)
        kiln.async_load(neuron_model, is_async)
        paths[name] = os.path.join(args.workdir, name + ".kiln")
        kiln.save(neuron_model, paths[name])
        neuron_model.close()
        flags = " + ".join(f for f, on in (("lazy", lazy), ("async", is_async)) if on) or "eager"
        print(f"   {name:16s} traced in {(time.perf_counter() - t0) * 1e3:7.1f} ms   {flags}")

    print("\n2. load all four (the async ones load concurrently in the background)")
    t0 = time.perf_counter()
    loaded = {name: kiln.load(path) for name, path in paths.items()}
    issued = (time.perf_counter() - t0) * 1e3
    for name, m in loaded.items():
        print(f"   {name:16s} state right after kiln.load: {m.state:8s} placements {m.placements()}")
    # DataParallel places the lazy unet on exactly these cores (in the background: async),
    # without dynamic batching — the batch of 2 is one sample per core.
    unet_dp = kiln.DataParallel(loaded["unet"], cores, set_dynamic_batching=len(cores) == 1)
    for m in loaded.values():
        m.wait()
    ready = (time.perf_counter() - t0) * 1e3
    print(f"   kiln.load calls returned after {issued:.1f} ms; all placed after {ready:.1f} ms")
    for name, m in loaded.items():
        r = m.load_report()
        on = ", ".join(str(c) for c in range(kiln.num_cores()) if m.placements(c))
        print(f"   {name:16s} {m.state}: {m.placements()} placement(s) on core(s) {on}; read "
              f"{r['read_ms']:.2f} ms, verify {r['verify_ms']:.2f} ms, place {r['place_ms']:.2f} ms, "
              f"kernels {r['kernels_ms']:.2f} ms")
    assert loaded["unet"].placements() == len(cores)

    print(f"\n3. run the pipeline ({args.steps} guided steps) and compare with PyTorch")
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, SEQ))
    latents = torch.randn(1, LATENT, SIZE, SIZE)
    t0 = time.perf_counter()
    image = run_pipeline(loaded["text_encoder"], unet_dp, loaded["post_quant_conv"],
                         loaded["decoder"], ids, latents, args.steps)
    t_kiln = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = run_pipeline(modules["text_encoder"], modules["unet"], modules["post_quant_conv"],
                           modules["decoder"], ids, latents, args.steps)
    t_torch = (time.perf_counter() - t0) * 1e3
    err = float((image - ref).abs().max() / ref.abs().max())
    print(f"   image {tuple(image.shape)}: kiln {t_kiln:.1f} ms, PyTorch {t_torch:.1f} ms, "
          f"max relative difference {err:.2e}")

    unet_dp.close()
    for m in loaded.values():
        m.close()
    if tmp is not None:
        tmp.cleanup()
    if not err <= 1e-4:
        print("kiln pipeline: outputs differ from PyTorch", file=sys.stderr)
        return 1
    print("\nall outputs match PyTorch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
