#!/usr/bin/python3
"""export_sd.py — exports four small models shaped like Stable Diffusion's pipeline.

    export_sd.py OUTDIR [--only NAME]... [--force]

The models (random seeded weights, opset 17, eval mode, constant folding on):
    text_encoder     CLIP-like: token ids 1x77 int64 -> embedding + learned positions,
                     3 pre-norm transformer layers with CLIP's causal mask (a triu(-inf)
                     matrix added to the scores), QuickGELU MLPs, final LayerNorm -> 1x77x128
    unet             timestep (1 f32) -> sinusoidal embedding -> MLP with SiLU; latent
                     1x4x32x32; encoder hidden states 1x77x128. ResBlocks (GroupNorm, SiLU,
                     3x3 convs, time embedding added), stride-2 downsampling, a mid block
                     with a transformer (self-attention, cross-attention, GEGLU), nearest
                     x2 upsampling and torch.cat skips -> 1x4x32x32
    vae_decoder      latent 1x4x32x32 -> conv_in, ResBlocks, a mid attention block, two
                     nearest x2 upsamplings, GroupNorm + SiLU + conv_out -> 1x3x128x128
    post_quant_conv  1x1 conv 4->4 on 1x4x32x32

For each it writes into OUTDIR:
    NAME.onnx           the model
    NAME.input_K.npy    input K (seeded random; token ids in range)
    NAME.output_0.npy   PyTorch's output for those inputs (eval mode, torch.no_grad())
    NAME.json           input/output names, shapes and dtypes, op counts
    NAME.stamp          hash of this script and the torch version; when it matches and every
                        file is there, the model is not exported again

Needs Debian's python3-torch (1.13) and python3-onnx: run it with /usr/bin/python3.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

OPSET = 17
MODELS = ("text_encoder", "unet", "vae_decoder", "post_quant_conv")
ONNX_DOMAINS = ("", "ai.onnx")

SEQ = 77          # tokens (CLIP's context length)
VOCAB = 1000
D_TEXT = 128      # text embedding width, the UNet's cross-attention context width
LATENT = (1, 4, 32, 32)


def norm_groups(ch):
    """SD uses 32 groups; the narrow 32-channel stages here use 16 (2 channels a group)."""
    return 32 if ch >= 64 else 16


# ---------------------------------------------------------------------------------------
# text encoder (CLIP-like)

class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ClipAttention(nn.Module):
    """CLIP's attention: q/k/v projections, heads split by view/transpose, scores as bmm,
    the causal mask added, softmax, bmm, out projection."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.scale = self.hd ** -0.5
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def _shape(self, t, seq, bsz):
        return t.view(bsz, seq, self.heads, self.hd).transpose(1, 2).contiguous()

    def forward(self, x, causal_mask):
        bsz, seq, d = x.size()
        q = self.q_proj(x) * self.scale
        k = self._shape(self.k_proj(x), seq, bsz)
        v = self._shape(self.v_proj(x), seq, bsz)
        shape = (bsz * self.heads, -1, self.hd)
        q = self._shape(q, seq, bsz).view(*shape)
        k = k.view(*shape)
        v = v.view(*shape)
        w = torch.bmm(q, k.transpose(1, 2))
        w = w.view(bsz, self.heads, seq, seq) + causal_mask
        w = w.view(bsz * self.heads, seq, seq)
        w = F.softmax(w, dim=-1)
        o = torch.bmm(w, v)
        o = o.view(bsz, self.heads, seq, self.hd).transpose(1, 2).reshape(bsz, seq, d)
        return self.out_proj(o)


class ClipLayer(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(d)
        self.self_attn = ClipAttention(d, heads)
        self.layer_norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ff)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(ff, d)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.fc2(self.act(self.fc1(self.layer_norm2(x))))


class TextEncoder(nn.Module):
    """Token ids [1, 77] int64 -> last hidden state [1, 77, 128]."""

    def __init__(self, vocab=VOCAB, d=D_TEXT, heads=4, ff=512, layers=3, seq=SEQ):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, d)
        self.position_embedding = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        self.layers = nn.ModuleList([ClipLayer(d, heads, ff) for _ in range(layers)])
        self.final_layer_norm = nn.LayerNorm(d)

    @staticmethod
    def causal_mask(bsz, seq, dtype):
        # As CLIP builds it: -inf above the diagonal, 0 on and below, added to the scores.
        mask = torch.empty(bsz, seq, seq, dtype=dtype)
        mask.fill_(float("-inf"))
        mask.triu_(1)
        return mask.unsqueeze(1)

    def forward(self, input_ids):
        bsz, seq = input_ids.size()
        x = self.token_embedding(input_ids) + self.position_embedding[:, :seq]
        mask = self.causal_mask(bsz, seq, x.dtype)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_layer_norm(x)


# ---------------------------------------------------------------------------------------
# UNet

def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of timesteps t [N] -> [N, dim] (cos, sin halves as SD does)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32) / half
    args = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv3x3, (+ time embedding), GroupNorm, SiLU, conv3x3, + skip
    (a 1x1 conv when the width changes)."""

    def __init__(self, cin, cout, temb=None):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb, cout) if temb else None
        self.norm2 = nn.GroupNorm(norm_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb_proj is not None:
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else x) + h


class CrossAttention(nn.Module):
    """diffusers' attention: to_q/to_k/to_v without bias, heads into the batch by
    reshape/permute, bmm scores * scale, softmax, bmm, to_out with bias."""

    def __init__(self, dq, dctx=None, heads=4):
        super().__init__()
        dctx = dctx or dq
        self.heads, self.hd = heads, dq // heads
        self.scale = self.hd ** -0.5
        self.to_q = nn.Linear(dq, dq, bias=False)
        self.to_k = nn.Linear(dctx, dq, bias=False)
        self.to_v = nn.Linear(dctx, dq, bias=False)
        self.to_out = nn.Linear(dq, dq)

    def heads_to_batch(self, t):
        b, n, d = t.shape
        return t.reshape(b, n, self.heads, self.hd).permute(0, 2, 1, 3).reshape(b * self.heads, n, self.hd)

    def batch_to_heads(self, t):
        bh, n, hd = t.shape
        b = bh // self.heads
        return t.reshape(b, self.heads, n, hd).permute(0, 2, 1, 3).reshape(b, n, self.heads * hd)

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        q = self.heads_to_batch(self.to_q(x))
        k = self.heads_to_batch(self.to_k(ctx))
        v = self.heads_to_batch(self.to_v(ctx))
        scores = torch.bmm(q, k.transpose(-1, -2)) * self.scale
        probs = scores.softmax(dim=-1)
        return self.to_out(self.batch_to_heads(torch.bmm(probs, v)))


class GEGLU(nn.Module):
    def __init__(self, d, inner):
        super().__init__()
        self.proj = nn.Linear(d, inner * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class SpatialTransformer(nn.Module):
    """SD's transformer over the pixels of a feature map: GroupNorm, 1x1 proj_in, a block of
    self-attention, cross-attention on the text and a GEGLU feed-forward (each pre-LayerNorm,
    residual), 1x1 proj_out, residual."""

    def __init__(self, ch, dctx, heads=4):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups(ch), ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.norm1 = nn.LayerNorm(ch)
        self.attn1 = CrossAttention(ch, heads=heads)
        self.norm2 = nn.LayerNorm(ch)
        self.attn2 = CrossAttention(ch, dctx, heads=heads)
        self.norm3 = nn.LayerNorm(ch)
        self.ff = GEGLU(ch, ch * 2)
        self.ff_out = nn.Linear(ch * 2, ch)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x, ctx):
        b, c, h, w = x.shape
        r = x
        x = self.proj_in(self.norm(x))
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), ctx)
        x = x + self.ff_out(self.ff(self.norm3(x)))
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return self.proj_out(x) + r


class UNet(nn.Module):
    """(latent [1,4,32,32], timestep [1], text [1,77,128]) -> noise prediction [1,4,32,32].
    Widths 32 (32x32) -> 64 (16x16) -> 128 (8x8)."""

    def __init__(self, chs=(32, 64, 128), dctx=D_TEXT):
        super().__init__()
        c0, c1, c2 = chs
        self.tdim = c0
        temb = c0 * 4
        self.time_mlp = nn.Sequential(nn.Linear(c0, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(4, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, temb)
        self.ds0 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.down1 = ResBlock(c0, c1, temb)
        self.ds1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.down2 = ResBlock(c1, c2, temb)
        self.mid_res1 = ResBlock(c2, c2, temb)
        self.mid_attn = SpatialTransformer(c2, dctx)
        self.mid_res2 = ResBlock(c2, c2, temb)
        self.up2 = ResBlock(c2 + c2, c1, temb)
        self.us1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.us1_conv = nn.Conv2d(c1, c1, 3, padding=1)
        self.up1 = ResBlock(c1 + c1, c0, temb)
        self.us0 = nn.Upsample(scale_factor=2, mode="nearest")
        self.us0_conv = nn.Conv2d(c0, c0, 3, padding=1)
        self.up0 = ResBlock(c0 + c0, c0, temb)
        self.norm_out = nn.GroupNorm(norm_groups(c0), c0)
        self.conv_out = nn.Conv2d(c0, 4, 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states):
        temb = self.time_mlp(timestep_embedding(timestep, self.tdim))
        h0 = self.down0(self.conv_in(sample), temb)            # 32x32, c0
        h1 = self.down1(self.ds0(h0), temb)                    # 16x16, c1
        h2 = self.down2(self.ds1(h1), temb)                    # 8x8, c2
        m = self.mid_res1(h2, temb)
        m = self.mid_attn(m, encoder_hidden_states)
        m = self.mid_res2(m, temb)
        u = self.up2(torch.cat([m, h2], dim=1), temb)          # 8x8 -> c1
        u = self.us1_conv(self.us1(u))                         # 16x16
        u = self.up1(torch.cat([u, h1], dim=1), temb)          # -> c0
        u = self.us0_conv(self.us0(u))                         # 32x32
        u = self.up0(torch.cat([u, h0], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(u)))


# ---------------------------------------------------------------------------------------
# VAE decoder

class VaeAttention(nn.Module):
    """The VAE's single-head attention over pixels: GroupNorm, (b, c, hw) -> (b, hw, c),
    q/k/v linears, softmax(q k^T / sqrt(c)) v, out linear, back to (b, c, h, w), residual."""

    def __init__(self, ch):
        super().__init__()
        self.group_norm = nn.GroupNorm(norm_groups(ch), ch, eps=1e-6)
        self.query = nn.Linear(ch, ch)
        self.key = nn.Linear(ch, ch)
        self.value = nn.Linear(ch, ch)
        self.proj_attn = nn.Linear(ch, ch)

    def forward(self, x):
        b, c, h, w = x.shape
        r = x
        x = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        q, k, v = self.query(x), self.key(x), self.value(x)
        scale = 1 / math.sqrt(math.sqrt(c))
        scores = torch.matmul(q * scale, k.transpose(-1, -2) * scale)
        probs = torch.softmax(scores.float(), dim=-1).type(scores.dtype)
        x = self.proj_attn(torch.matmul(probs, v))
        return x.transpose(-1, -2).reshape(b, c, h, w) + r


class VaeDecoder(nn.Module):
    """latent [1,4,32,32] -> image [1,3,128,128]. Widths 64 (32x32, 64x64) -> 32 (128x128)."""

    def __init__(self, chs=(64, 64, 32)):
        super().__init__()
        c0, c1, c2 = chs
        self.conv_in = nn.Conv2d(4, c0, 3, padding=1)
        self.mid_res1 = ResBlock(c0, c0)
        self.mid_attn = VaeAttention(c0)
        self.mid_res2 = ResBlock(c0, c0)
        self.up0_res = ResBlock(c0, c1)
        self.up0 = nn.Upsample(scale_factor=2, mode="nearest")
        self.up0_conv = nn.Conv2d(c1, c1, 3, padding=1)
        self.up1_res = ResBlock(c1, c2)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.up1_conv = nn.Conv2d(c2, c2, 3, padding=1)
        self.up2_res = ResBlock(c2, c2)
        self.norm_out = nn.GroupNorm(norm_groups(c2), c2, eps=1e-6)
        self.conv_out = nn.Conv2d(c2, 3, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h)))
        h = self.up0_conv(self.up0(self.up0_res(h)))            # 64x64
        h = self.up1_conv(self.up1(self.up1_res(h)))            # 128x128
        h = self.up2_res(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------

def randomize_norms(m):
    """Norm layers start as identity affines; give them random scales and shifts so the
    affine parts are really checked."""
    for mod in m.modules():
        if isinstance(mod, (nn.GroupNorm, nn.LayerNorm)):
            with torch.no_grad():
                mod.weight.copy_(1 + 0.1 * torch.randn_like(mod.weight))
                mod.bias.copy_(0.1 * torch.randn_like(mod.bias))
    return m


def build(name):
    """(module, inputs, input names, output name) for a model name."""
    torch.manual_seed(0)
    if name == "text_encoder":
        m = randomize_norms(TextEncoder())
        ids = torch.randint(0, VOCAB, (1, SEQ), dtype=torch.int64)
        return m, (ids,), ["input_ids"], "last_hidden_state"
    if name == "unet":
        m = randomize_norms(UNet())
        sample = torch.randn(*LATENT)
        t = torch.tensor([981.0], dtype=torch.float32)
        ctx = torch.randn(1, SEQ, D_TEXT)
        return m, (sample, t, ctx), ["sample", "timestep", "encoder_hidden_states"], "out_sample"
    if name == "vae_decoder":
        m = randomize_norms(VaeDecoder())
        return m, (torch.randn(*LATENT),), ["latent_sample"], "sample"
    if name == "post_quant_conv":
        m = nn.Conv2d(4, 4, 1)
        return m, (torch.randn(*LATENT),), ["latent"], "latent_out"
    raise SystemExit(f"export_sd.py: unknown model '{name}' (have: {', '.join(MODELS)})")


def script_stamp():
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(torch.__version__.encode())
    return h.hexdigest()


def files_of(outdir, name, n_inputs):
    base = os.path.join(outdir, name)
    return ([base + ".onnx", base + ".output_0.npy", base + ".json"] +
            [f"{base}.input_{k}.npy" for k in range(n_inputs)])


def up_to_date(outdir, name, stamp):
    try:
        with open(os.path.join(outdir, name + ".stamp")) as f:
            if f.read().strip() != stamp:
                return False
        with open(os.path.join(outdir, name + ".json")) as f:
            n_inputs = len(json.load(f)["inputs"])
    except (OSError, ValueError, KeyError):
        return False
    return all(os.path.isfile(p) for p in files_of(outdir, name, n_inputs))


def check_plain_ops(path):
    """Fails if the exported graph holds anything but standard ONNX ops."""
    import onnx
    model = onnx.load(path)
    bad = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node
                  if n.domain not in ONNX_DOMAINS})
    if bad:
        raise SystemExit(f"export_sd.py: {path}: non-standard ops {bad}")
    onnx.checker.check_model(model)
    counts = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def write_atomic(path, write):
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def save_npy(path, a):
    def w(tmp):
        with open(tmp, "wb") as f:
            np.save(f, a)
    write_atomic(path, w)


def export(outdir, name, stamp):
    t0 = time.time()
    m, xs, in_names, out_name = build(name)
    m.eval()
    with torch.no_grad():
        ref = m(*xs)
        t1 = time.time()
        m(*xs)
        fwd_ms = (time.time() - t1) * 1e3
    onnx_path = os.path.join(outdir, name + ".onnx")
    write_atomic(onnx_path, lambda tmp: torch.onnx.export(
        m, xs, tmp, opset_version=OPSET, do_constant_folding=True,
        input_names=in_names, output_names=[out_name], training=torch.onnx.TrainingMode.EVAL))
    counts = check_plain_ops(onnx_path)
    base = os.path.join(outdir, name)
    inputs = []
    for k, (x, n) in enumerate(zip(xs, in_names)):
        save_npy(f"{base}.input_{k}.npy", x.numpy())
        inputs.append({"name": n, "shape": list(x.shape), "dtype": str(x.numpy().dtype),
                       "file": f"{name}.input_{k}.npy"})
    save_npy(base + ".output_0.npy", ref.detach().numpy().astype(np.float32))
    meta = {
        "name": name,
        "opset": OPSET,
        "inputs": inputs,
        "outputs": [{"name": out_name, "shape": list(ref.shape), "dtype": "float32",
                     "file": name + ".output_0.npy"}],
        "ops": counts,
    }
    write_atomic(base + ".json", lambda tmp: open(tmp, "w").write(json.dumps(meta, indent=1) + "\n"))
    with open(base + ".stamp", "w") as f:
        f.write(stamp + "\n")
    print(f"export_sd: {name}: {sum(counts.values())} nodes, "
          f"{os.path.getsize(onnx_path) / 1e6:.2f} MB, torch forward {fwd_ms:.1f} ms, "
          f"{time.time() - t0:.1f} s")


def main():
    ap = argparse.ArgumentParser(description="Export the SD-shaped pipeline (PyTorch -> ONNX).")
    ap.add_argument("outdir")
    ap.add_argument("--only", action="append", choices=MODELS,
                    help="export only this model (may repeat)")
    ap.add_argument("--force", action="store_true", help="export even if up to date")
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    torch.set_num_threads(1)
    # The tracer's notes (shapes read as Python ints, constant folding) are expected for
    # fixed-shape exports; keep the demo's output readable.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    stamp = script_stamp()
    for name in args.only or MODELS:
        if not args.force and up_to_date(args.outdir, name, stamp):
            print(f"export_sd: {name}: up to date")
            continue
        export(args.outdir, name, stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
