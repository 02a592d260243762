#!/usr/bin/python3
"""export_zoo.py — exports the model zoo: real architectures, exported from PyTorch as a
user would, that kiln must trace and run without hand edits (tests/test_zoo.c).

    export_zoo.py OUTDIR [--only NAME]... [--force] [--list]

The zoo (random seeded weights, opset 17, eval mode, constant folding on):
    resnext50      torchvision resnext50_32x4d: residual blocks, grouped 3x3 convs    1x3x64x64
    mobilenet_v3   torchvision mobilenet_v3_large: inverted residuals, depthwise convs,
                   squeeze-excite, hardswish/hardsigmoid                               1x3x64x64
    shufflenet_v2  torchvision shufflenet_v2_x1_0: channel split + channel shuffle     1x3x64x64
    densenet121    torchvision densenet121: dense concatenation                        1x3x64x64
    googlenet      torchvision googlenet (no aux heads): inception branches            1x3x64x64
    inception_v3   torchvision inception_v3 (no aux head): factorised 1x7/7x1 branches 1x3x80x80
    convnext_tiny  torchvision convnext_tiny: 7x7 depthwise, LayerNorm over channels
                   (permutes), layer scale                                             1x3x64x64
    efficientnet   torchvision efficientnet_b0: MBConv, SiLU, squeeze-excite           1x3x64x64
    regnet         torchvision regnet_y_400mf: grouped convs, squeeze-excite           1x3x64x64
    squeezenet     torchvision squeezenet1_1: fire modules (1x1/3x3 expand concat)     1x3x64x64
    mnasnet        torchvision mnasnet1_0: NAS-found inverted residuals               1x3x64x64
    efficientnet_v2  torchvision efficientnet_v2_s: fused MBConv, stochastic depth     1x3x64x64
    swin_t         torchvision swin_t: shifted windows (roll, padding, window masks),
                   relative position bias, patch merging                               1x3x64x64
    alexnet        torchvision alexnet: large fully connected layers                   1x3x224x224
                   (its adaptive pool exports only when the features come out 6x6)
    vit            torchvision VisionTransformer, small: patch 16, 2 layers, 4 heads,
                   hidden 128, MLP 256: class token, position embedding, MHA           1x3x64x64
    gpt2           a GPT-2-style causal decoder written in torch: token + position
                   embeddings, fused QKV Linear split in three, causal masks built with
                   torch.tril + torch.where (HF's style) and masked_fill (nanoGPT's), tanh
                   GELU with x**3, pre-norm LayerNorm, tied LM head                   ids 1x32
    unet           a diffusers-like UNet: sinusoidal timestep embedding, ResNet blocks
                   (GroupNorm, SiLU, time embedding), spatial transformer with einsum
                   self/cross attention and GEGLU, F.pad + stride-2 conv downsampling,
                   nearest x2 upsampling, concatenated skips        1x4x16x16, t [1], ctx 1x8x32
    vae            a diffusers-like VAE (encode to the mean, decode): GroupNorm/SiLU ResNet
                   blocks, single-head mid attention, asymmetric-pad downsampling, one
                   ConvTranspose2d and one nearest upsampling                          1x3x32x32
    t5_encoder     a T5-style encoder: RMS LayerNorm written out (pow, mean, rsqrt), relative
                   position buckets computed in forward (abs, log, truncation to int64,
                   min, where), a bias Embedding shared by the layers, unscaled attention,
                   gated-GELU feed-forward                                            ids 1x24
    decoder_step   one decoding step of a GPT-style decoder with a static KV cache: this
                   step's keys and values written at a run-time position (index_copy and
                   index assignment: ScatterElements/ScatterND with run-time indices), a
                   mask from that position, and torch.topk over the logits (values and
                   int64 token ids)       ids 1x1, pos [1], caches 2x1x4x16x16 each
    rnn_tagger     a sequence tagger: embedding, 2-layer bidirectional LSTM (exported as
                   ONNX LSTM), a GRU over its output, a plain tanh RNN, a Linear head   ids 2x12

For each it writes into OUTDIR:
    NAME.onnx           the model (torch.onnx.export, opset 17)
    NAME.input_K.npy    input K (seeded random; token ids in range)
    NAME.output_K.npy   PyTorch's output K for those inputs (eval mode, torch.no_grad()):
                        float32, or the integer dtype of an integer output
    NAME.json           input/output names, shapes and dtypes, op counts, export seconds
    NAME.stamp          hash of this script and the torch version; when it matches and every
                        file is there, the model is not exported again
    NAME.error          (instead, when the export itself fails) the exception, so that the
                        test reports the model as failed with its cause
and zoo.list, the names of the whole zoo, one a line (a model missing from OUTDIR fails
the test, so an --only run does not hide the others).

Normalisation statistics and scales are randomised too (not left at their 0/1 init), so
that folding them into convolutions is actually checked. Needs Debian's python3-torch
(1.13), python3-torchvision (0.14) and python3-onnx: run it with /usr/bin/python3.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time
import traceback

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

OPSET = 17
ONNX_DOMAINS = ("", "ai.onnx")


# ---- GPT-2-style decoder ------------------------------------------------------------------

class GPT2Attention(nn.Module):
    """Causal self-attention as GPT-2 has it: one Linear makes q, k and v, split in three."""

    def __init__(self, d, heads, seq, hf_mask):
        super().__init__()
        self.heads, self.hf_mask = heads, hf_mask
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        # HF GPT-2 keeps the lower-triangular mask as a bool buffer and slices it.
        self.register_buffer("bias", torch.tril(torch.ones(seq, seq, dtype=torch.bool))
                             .view(1, 1, seq, seq))

    def forward(self, x):
        b, t, c = x.shape
        hd = c // self.heads
        q, k, v = self.c_attn(x).split(c, dim=2)
        q = q.view(b, t, self.heads, hd).transpose(1, 2)
        k = k.view(b, t, self.heads, hd).transpose(1, 2)
        v = v.view(b, t, self.heads, hd).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-1, -2))
        if self.hf_mask:
            att = att / torch.full([], v.size(-1) ** 0.5, dtype=att.dtype)
            causal = self.bias[:, :, :t, :t]
            att = torch.where(causal, att, torch.tensor(torch.finfo(att.dtype).min, dtype=att.dtype))
        else:
            att = att * (1.0 / math.sqrt(hd))
            tril = torch.tril(torch.ones(t, t, device=x.device)).view(1, 1, t, t)
            att = att.masked_fill(tril == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


def gelu_new(x):
    """GPT-2's tanh approximation of GELU."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2Block(nn.Module):
    def __init__(self, d, heads, seq, hf_mask):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = GPT2Attention(d, heads, seq, hf_mask)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(gelu_new(self.c_fc(self.ln_2(x))))


class GPT2Like(nn.Module):
    """Token ids [1, T] int64 -> logits [1, T, vocab]."""

    def __init__(self, vocab=1000, d=128, heads=4, layers=2, seq=64):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq, d)
        self.h = nn.ModuleList(GPT2Block(d, heads, seq, hf_mask=(i % 2 == 0)) for i in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids):
        t = ids.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=ids.device).unsqueeze(0)
        x = self.wte(ids) + self.wpe(pos)
        for blk in self.h:
            x = blk(x)
        x = self.ln_f(x)
        return torch.matmul(x, self.wte.weight.t())   # tied LM head


# ---- diffusers-like UNet and VAE -----------------------------------------------------------

def timestep_embedding(t, dim):
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, temb=None, groups=8):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout) if temb else None
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.dropout = nn.Dropout(0.1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.shortcut(x) if self.shortcut is not None else x) + h


class CrossAttention(nn.Module):
    """CompVis/ldm attention: einsum scores, softmax, einsum with v."""

    def __init__(self, dq, dctx=None, heads=4, dhead=16):
        super().__init__()
        inner = heads * dhead
        self.heads, self.scale = heads, dhead ** -0.5
        self.to_q = nn.Linear(dq, inner, bias=False)
        self.to_k = nn.Linear(dctx or dq, inner, bias=False)
        self.to_v = nn.Linear(dctx or dq, inner, bias=False)
        self.to_out = nn.Linear(inner, dq)

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        b, n, _ = x.shape
        h = self.heads

        def split(t):
            return t.reshape(b, t.shape[1], h, -1).permute(0, 2, 1, 3).reshape(b * h, t.shape[1], -1)

        q, k, v = split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx))
        sim = torch.einsum("b i d, b j d -> b i j", q, k) * self.scale
        attn = sim.softmax(dim=-1)
        out = torch.einsum("b i j, b j d -> b i d", attn, v)
        out = out.reshape(b, h, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.proj = nn.Linear(din, dout * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class SpatialTransformer(nn.Module):
    def __init__(self, c, dctx, groups=8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.proj_in = nn.Conv2d(c, c, 1)
        self.norm1, self.attn1 = nn.LayerNorm(c), CrossAttention(c)
        self.norm2, self.attn2 = nn.LayerNorm(c), CrossAttention(c, dctx)
        self.norm3 = nn.LayerNorm(c)
        self.ff = nn.Sequential(GEGLU(c, 4 * c), nn.Dropout(0.0), nn.Linear(4 * c, c))
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x, ctx):
        b, c, hh, ww = x.shape
        r = x
        x = self.proj_in(self.norm(x))
        x = x.permute(0, 2, 3, 1).reshape(b, hh * ww, c)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), ctx)
        x = x + self.ff(self.norm3(x))
        x = x.reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        return self.proj_out(x) + r


class Downsample(nn.Module):
    """diffusers' Downsample2D with padding=0: pad right/bottom by one, 3x3 conv stride 2."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, c, transposed=False):
        super().__init__()
        self.transposed = transposed
        self.conv = (nn.ConvTranspose2d(c, c, 4, stride=2, padding=1) if transposed
                     else nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        if self.transposed:
            return self.conv(x)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetLike(nn.Module):
    """(sample [1,4,16,16], timestep [1] f32, context [1,8,32]) -> noise [1,4,16,16]."""

    def __init__(self, cin=4, ch=(32, 64), dctx=32):
        super().__init__()
        temb = ch[0] * 4
        self.temb_ch = ch[0]
        self.time_embedding = nn.Sequential(nn.Linear(ch[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(cin, ch[0], 3, padding=1)
        self.down0 = ResnetBlock(ch[0], ch[0], temb)
        self.attn0 = SpatialTransformer(ch[0], dctx)
        self.downsample = Downsample(ch[0])
        self.down1 = ResnetBlock(ch[0], ch[1], temb)
        self.mid_res1 = ResnetBlock(ch[1], ch[1], temb)
        self.mid_attn = SpatialTransformer(ch[1], dctx)
        self.mid_res2 = ResnetBlock(ch[1], ch[1], temb)
        self.up1 = ResnetBlock(ch[1] + ch[1], ch[1], temb)
        self.upsample = Upsample(ch[1])
        self.up0 = ResnetBlock(ch[1] + ch[0], ch[0], temb)
        self.attn_up0 = SpatialTransformer(ch[0], dctx)
        self.norm_out = nn.GroupNorm(8, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], cin, 3, padding=1)

    def forward(self, sample, timestep, context):
        emb = self.time_embedding(timestep_embedding(timestep, self.temb_ch))
        h = self.conv_in(sample)
        s0 = self.attn0(self.down0(h, emb), context)
        h = self.downsample(s0)
        s1 = self.down1(h, emb)
        h = self.mid_res2(self.mid_attn(self.mid_res1(s1, emb), context), emb)
        h = self.up1(torch.cat([h, s1], dim=1), emb)
        h = self.upsample(h)
        h = self.attn_up0(self.up0(torch.cat([h, s0], dim=1), emb), context)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAEAttention(nn.Module):
    """The VAE's single-head mid-block attention (bmm form, as diffusers' AttnProcessor)."""

    def __init__(self, c, groups=8):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, c, eps=1e-6)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.Linear(c, c)
        self.scale = 1.0 / math.sqrt(c)

    def forward(self, x):
        b, c, h, w = x.shape
        r = x
        x = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        scores = torch.baddbmm(torch.empty(b, h * w, h * w, dtype=q.dtype, device=q.device),
                               q, k.transpose(-1, -2), beta=0, alpha=self.scale)
        out = torch.bmm(scores.softmax(dim=-1), v)
        out = self.to_out(out).transpose(-1, -2).reshape(b, c, h, w)
        return out + r


class VAELike(nn.Module):
    """image [1,3,32,32] -> encoder -> mean of the latent distribution -> decoder -> image."""

    def __init__(self, ch=(32, 64), zc=4):
        super().__init__()
        # encoder
        self.enc_conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        self.enc_res0 = ResnetBlock(ch[0], ch[0])
        self.enc_down0 = Downsample(ch[0])
        self.enc_res1 = ResnetBlock(ch[0], ch[1])
        self.enc_down1 = Downsample(ch[1])
        self.enc_mid_res = ResnetBlock(ch[1], ch[1])
        self.enc_mid_attn = VAEAttention(ch[1])
        self.enc_norm_out = nn.GroupNorm(8, ch[1], eps=1e-6)
        self.enc_conv_out = nn.Conv2d(ch[1], 2 * zc, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * zc, 2 * zc, 1)
        # decoder
        self.post_quant_conv = nn.Conv2d(zc, zc, 1)
        self.dec_conv_in = nn.Conv2d(zc, ch[1], 3, padding=1)
        self.dec_mid_res1 = ResnetBlock(ch[1], ch[1])
        self.dec_mid_attn = VAEAttention(ch[1])
        self.dec_mid_res2 = ResnetBlock(ch[1], ch[1])
        self.dec_up1 = Upsample(ch[1], transposed=True)
        self.dec_res1 = ResnetBlock(ch[1], ch[0])
        self.dec_up0 = Upsample(ch[0])
        self.dec_res0 = ResnetBlock(ch[0], ch[0])
        self.dec_norm_out = nn.GroupNorm(8, ch[0], eps=1e-6)
        self.dec_conv_out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, x):
        h = self.enc_conv_in(x)
        h = self.enc_down0(self.enc_res0(h))
        h = self.enc_down1(self.enc_res1(h))
        h = self.enc_mid_attn(self.enc_mid_res(h))
        moments = self.quant_conv(self.enc_conv_out(F.silu(self.enc_norm_out(h))))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        logvar = torch.clamp(logvar, -30.0, 20.0)   # as DiagonalGaussianDistribution does
        z = mean + 0.0 * torch.exp(0.5 * logvar)      # the mode (no sampling noise)
        h = self.dec_conv_in(self.post_quant_conv(z))
        h = self.dec_mid_res2(self.dec_mid_attn(self.dec_mid_res1(h)))
        h = self.dec_res1(self.dec_up1(h))
        h = self.dec_res0(self.dec_up0(h))
        return self.dec_conv_out(F.silu(self.dec_norm_out(h)))


# ---- T5-style encoder -----------------------------------------------------------------------

class T5LayerNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


class T5Block(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = T5LayerNorm(d), T5LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.wi0, self.wi1 = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False)
        self.wo = nn.Linear(ff, d, bias=False)

    def forward(self, x, bias):
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (m(h).view(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = F.softmax(torch.matmul(q, k.transpose(3, 2)) + bias, dim=-1)   # T5: no 1/sqrt(d)
        x = x + self.o(torch.matmul(a, v).transpose(1, 2).reshape(b, t, d))
        h = self.ln2(x)
        return x + self.wo(F.gelu(self.wi0(h), approximate="tanh") * self.wi1(h))


class T5EncoderLike(nn.Module):
    """Token ids [1, T] -> hidden states [1, T, d]."""

    def __init__(self, vocab=300, d=64, heads=4, ff=128, layers=2, buckets=32, max_distance=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.rel_bias = nn.Embedding(buckets, heads)
        self.buckets, self.max_distance = buckets, max_distance
        self.blocks = nn.ModuleList(T5Block(d, heads, ff) for _ in range(layers))
        self.ln = T5LayerNorm(d)

    def bucket(self, rel):
        """HF T5's bidirectional relative-position bucket."""
        nb = self.buckets // 2
        ret = (rel > 0).to(torch.long) * nb
        rel = torch.abs(rel)
        exact = nb // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(self.max_distance / exact)
                         * (nb - exact)).to(torch.long)
        large = torch.min(large, torch.full_like(large, nb - 1))
        return ret + torch.where(rel < exact, rel, large)

    def forward(self, ids):
        t = ids.shape[1]
        pos = torch.arange(t, dtype=torch.long)
        bias = self.rel_bias(self.bucket(pos[None, :] - pos[:, None])).permute(2, 0, 1)[None]
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, bias)
        return self.ln(x)


# ---- one decoding step with a static KV cache ------------------------------------------------

class DecoderStep(nn.Module):
    """(ids [1, 1], pos [1], cache_k, cache_v [layers, 1, heads, S, hd]) -> top-5 logits and
    their token ids, and both caches with this step written at pos."""

    def __init__(self, vocab=500, d=64, heads=4, layers=2, seq=16):
        super().__init__()
        self.d, self.heads, self.seq = d, heads, seq
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.ln1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d) for _ in range(layers))
        self.proj = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
        self.ln2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
                                 for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, ids, pos, cache_k, cache_v):
        hd = self.d // self.heads
        x = self.wte(ids) + self.wpe(pos)[None]
        visible = torch.arange(self.seq) <= pos          # the cache up to this step
        new_k, new_v = [], []
        for i in range(len(self.qkv)):
            q, k, v = self.qkv[i](self.ln1[i](x)).split(self.d, dim=-1)
            q, k, v = (t.view(1, 1, self.heads, hd).transpose(1, 2) for t in (q, k, v))
            ck = cache_k[i].index_copy(2, pos, k)
            cv = cache_v[i].clone()
            cv[:, :, pos] = v
            att = (q @ ck.transpose(-1, -2)) * hd ** -0.5
            att = att.masked_fill(~visible, float("-inf")).softmax(-1)
            x = x + self.proj[i]((att @ cv).transpose(1, 2).reshape(1, 1, self.d))
            x = x + self.mlp[i](self.ln2[i](x))
            new_k.append(ck)
            new_v.append(cv)
        logits = torch.matmul(self.ln_f(x), self.wte.weight.t())[:, -1]
        top, ids_out = torch.topk(logits, 5, dim=-1)
        return top, ids_out, torch.stack(new_k), torch.stack(new_v)


# ---- recurrent tagger -----------------------------------------------------------------------

class RNNTagger(nn.Module):
    """Token ids [B, T] -> tag logits [B, T, tags]: torch exports each recurrent layer as one
    ONNX LSTM/GRU/RNN node (bidirectional, stacked, batch_first)."""

    def __init__(self, vocab=200, d=24, hidden=32, tags=9):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.rnn = nn.RNN(hidden, hidden, batch_first=True, nonlinearity="tanh")
        self.head = nn.Linear(hidden, tags)

    def forward(self, ids):
        y, _ = self.lstm(self.emb(ids))
        y, _ = self.gru(y)
        y, _ = self.rnn(y)
        return self.head(y)


# ---- the zoo ---------------------------------------------------------------------------------

def tv(builder, **kw):
    return lambda: getattr(torchvision.models, builder)(weights=None, **kw)


# name -> (constructor, [(input name, shape or ("ids", shape, vocab) / "timestep")], outputs)
ZOO = {
    "resnext50": (tv("resnext50_32x4d"), [("input", (1, 3, 64, 64))], ["logits"]),
    "mobilenet_v3": (tv("mobilenet_v3_large"), [("input", (1, 3, 64, 64))], ["logits"]),
    "shufflenet_v2": (tv("shufflenet_v2_x1_0"), [("input", (1, 3, 64, 64))], ["logits"]),
    "densenet121": (tv("densenet121"), [("input", (1, 3, 64, 64))], ["logits"]),
    "googlenet": (tv("googlenet", aux_logits=False, init_weights=True),
                  [("input", (1, 3, 64, 64))], ["logits"]),
    "inception_v3": (tv("inception_v3", aux_logits=False, init_weights=True),
                     [("input", (1, 3, 80, 80))], ["logits"]),
    "convnext_tiny": (tv("convnext_tiny"), [("input", (1, 3, 64, 64))], ["logits"]),
    "efficientnet": (tv("efficientnet_b0"), [("input", (1, 3, 64, 64))], ["logits"]),
    "regnet": (tv("regnet_y_400mf"), [("input", (1, 3, 64, 64))], ["logits"]),
    "squeezenet": (tv("squeezenet1_1"), [("input", (1, 3, 64, 64))], ["logits"]),
    "mnasnet": (tv("mnasnet1_0"), [("input", (1, 3, 64, 64))], ["logits"]),
    "efficientnet_v2": (tv("efficientnet_v2_s"), [("input", (1, 3, 64, 64))], ["logits"]),
    "swin_t": (tv("swin_t"), [("input", (1, 3, 64, 64))], ["logits"]),
    "alexnet": (tv("alexnet"), [("input", (1, 3, 224, 224))], ["logits"]),
    "vit": (lambda: torchvision.models.VisionTransformer(
                image_size=64, patch_size=16, num_layers=2, num_heads=4, hidden_dim=128,
                mlp_dim=256, num_classes=1000),
            [("input", (1, 3, 64, 64))], ["logits"]),
    "gpt2": (lambda: GPT2Like(), [("input_ids", ("ids", (1, 32), 1000))], ["logits"]),
    "unet": (lambda: UNetLike(),
             [("sample", (1, 4, 16, 16)), ("timestep", "timestep"), ("context", (1, 8, 32))],
             ["noise"]),
    "vae": (lambda: VAELike(), [("image", (1, 3, 32, 32))], ["reconstruction"]),
    "t5_encoder": (lambda: T5EncoderLike(), [("input_ids", ("ids", (1, 24), 300))], ["hidden"]),
    "decoder_step": (lambda: DecoderStep(),
                     [("input_ids", ("ids", (1, 1), 500)), ("pos", ("ids", (1,), 16)),
                      ("cache_k", (2, 1, 4, 16, 16)), ("cache_v", (2, 1, 4, 16, 16))],
                     ["top_logits", "top_ids", "new_cache_k", "new_cache_v"]),
    "rnn_tagger": (lambda: RNNTagger(), [("input_ids", ("ids", (2, 12), 200))], ["tags"]),
}


def randomise_norms(m, gen):
    """Non-trivial statistics and affine parameters for every normalisation layer (and
    ConvNeXt's layer scale), so that their folding and arithmetic show in the output;
    random weights for Linear layers initialised to zero (ViT's head), whose output would
    otherwise be all zeros."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) + 0.5)
            if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) \
                    and getattr(mod, "weight", None) is not None:
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
            if isinstance(mod, nn.Linear) and not mod.weight.any():   # e.g. ViT's zero head
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) * 0.02)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.02)
            if hasattr(mod, "layer_scale") and isinstance(mod.layer_scale, torch.Tensor):
                mod.layer_scale.copy_(torch.rand(mod.layer_scale.shape, generator=gen) * 0.4 + 0.1)


def make_input(spec, gen):
    if spec == "timestep":
        return torch.tensor([417.0])
    if isinstance(spec, tuple) and spec and spec[0] == "ids":
        return torch.randint(0, spec[2], spec[1], dtype=torch.int64, generator=gen)
    return torch.randn(spec, generator=gen)


def build(name):
    ctor, ins, outs = ZOO[name]
    torch.manual_seed(0)
    m = ctor()
    gen = torch.Generator().manual_seed(1)
    randomise_norms(m, gen)
    m.eval()
    xs = [make_input(spec, gen) for _, spec in ins]
    return m, xs, [n for n, _ in ins], outs


def script_stamp():
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(torch.__version__.encode())
    h.update(torchvision.__version__.encode())
    return h.hexdigest()


def files_of(outdir, name):
    base = os.path.join(outdir, name)
    _, ins, outs = ZOO[name]
    return ([base + ".onnx", base + ".json"] + [f"{base}.input_{i}.npy" for i in range(len(ins))]
            + [f"{base}.output_{i}.npy" for i in range(len(outs))])


def up_to_date(outdir, name, stamp):
    try:
        with open(os.path.join(outdir, name + ".stamp")) as f:
            if f.read().strip() != stamp:
                return False
    except OSError:
        return False
    return all(os.path.isfile(p) for p in files_of(outdir, name))


def check_plain_ops(path):
    """Fails if the exported graph holds anything but standard ONNX ops; returns op counts."""
    import onnx
    model = onnx.load(path)
    bad = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ONNX_DOMAINS})
    if bad:
        raise RuntimeError(f"{path}: non-standard ops {bad}")
    onnx.checker.check_model(model)
    counts = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def write_atomic(path, write):
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def write_text(path, text):
    def w(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    write_atomic(path, w)


def save_npy(path, a):
    def w(tmp):
        with open(tmp, "wb") as f:
            np.save(f, a)
    write_atomic(path, w)


def export(outdir, name, stamp):
    t0 = time.time()
    base = os.path.join(outdir, name)
    for p in files_of(outdir, name) + [base + ".stamp", base + ".error"]:
        if os.path.exists(p):
            os.unlink(p)
    m, xs, in_names, out_names = build(name)
    with torch.no_grad():
        ref = m(*xs)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    onnx_path = base + ".onnx"
    # Grad stays enabled while exporting: torch 1.13's MultiheadAttention takes a fused
    # "fast path" (not exportable) when grad is off.
    with torch.enable_grad():
        write_atomic(onnx_path, lambda tmp: torch.onnx.export(
            m, tuple(xs), tmp, opset_version=OPSET, do_constant_folding=True,
            input_names=in_names, output_names=out_names, training=torch.onnx.TrainingMode.EVAL))
    counts = check_plain_ops(onnx_path)
    for i, x in enumerate(xs):
        save_npy(f"{base}.input_{i}.npy", x.numpy())
    refs = [r.detach().numpy() for r in refs]
    refs = [r if r.dtype.kind in "iub" else r.astype(np.float32) for r in refs]  # ids stay ints
    for i, r in enumerate(refs):
        save_npy(f"{base}.output_{i}.npy", r)
    seconds = time.time() - t0
    meta = {
        "name": name,
        "opset": OPSET,
        "inputs": [{"name": n, "shape": list(x.shape), "dtype": str(x.numpy().dtype)}
                   for n, x in zip(in_names, xs)],
        "outputs": [{"name": n, "shape": list(r.shape), "dtype": str(r.dtype)}
                    for n, r in zip(out_names, refs)],
        "ops": counts,
        "export_seconds": round(seconds, 2),
    }
    write_text(base + ".json", json.dumps(meta, indent=1) + "\n")
    with open(base + ".stamp", "w") as f:
        f.write(stamp + "\n")
    print(f"export_zoo: {name}: {sum(counts.values())} nodes, {len(counts)} op types, "
          f"{os.path.getsize(onnx_path) / 1e6:.1f} MB, {seconds:.1f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description="Export kiln's model zoo (PyTorch -> ONNX).")
    ap.add_argument("outdir")
    ap.add_argument("--only", action="append", choices=list(ZOO), help="only this model (may repeat)")
    ap.add_argument("--force", action="store_true", help="export even if up to date")
    ap.add_argument("--list", action="store_true", help="print the zoo's names and exit")
    args = ap.parse_args()
    if args.list:
        print("\n".join(ZOO))
        return 0
    os.makedirs(args.outdir, exist_ok=True)
    torch.set_num_threads(1)
    stamp = script_stamp()
    names = args.only or list(ZOO)
    t0 = time.time()
    failed = 0
    for name in names:
        if not args.force and up_to_date(args.outdir, name, stamp):
            print(f"export_zoo: {name}: up to date")
            continue
        try:
            export(args.outdir, name, stamp)
        except Exception as e:  # reported by the test as this model's failure
            failed += 1
            msg = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
            with open(os.path.join(args.outdir, name + ".error"), "w") as f:
                f.write(msg[:2000] + "\n")
            print(f"export_zoo: {name}: export FAILED: {msg[:500]}", flush=True)
            traceback.print_exc()
    write_text(os.path.join(args.outdir, "zoo.list"), "".join(n + "\n" for n in ZOO))
    print(f"export_zoo: {len(names)} models, {failed} export failures, {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
