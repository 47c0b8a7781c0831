"""Text -> image fusion blocks for the decoder.

``CrossAttentionFusion`` follows GuideDecoder (Zhong et al., MICCAI 2023): text tokens go through
a Conv1d over the token axis + GELU + Linear to the stage's channels; pixels (plus a fixed 2-D
position code, so "left 5th rib" can be grounded) are the queries, text tokens the keys and
values, padding masked; the result enters through ``x + scale * LayerNorm(attn)`` with a learned
scalar ``scale``. ``GateFusion`` is the TGANet-style ablation: pooled text -> sigmoid channel gate.

Both are export-friendly (plain MatMul / Softmax / LayerNorm; the mask is an additive -1e4, which
FP16 TensorRT engines can represent).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MASK_NEG = -1.0e4


def check_heads(channels: int, heads: int) -> int:
    """The head count for ``channels``; a ValueError when it does not divide them (never a silent change)."""
    if heads < 1 or channels % heads:
        raise ValueError(f"{heads} attention heads do not divide {channels} channels; choose a divisor of {channels}")
    return heads


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention of queries over text tokens with padding masked.

    q [B or 1, N, C] (a batch of 1 is broadcast), k, v [B, T, C], mask [B, T] (1 = token) -> [B, N, C].
    Plain MatMul / Softmax with an additive -1e4 mask: exports to ONNX as is and is representable
    in FP16 TensorRT engines.
    """
    b, t, c = k.shape
    dh = c // heads
    q = q.reshape(q.shape[0], -1, heads, dh).transpose(1, 2)  # [B, h, N, dh]
    k = k.reshape(b, t, heads, dh).transpose(1, 2)  # [B, h, T, dh]
    v = v.reshape(b, t, heads, dh).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(dh))
    scores = scores + (1.0 - mask.to(scores.dtype))[:, None, None, :] * MASK_NEG
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, h, N, dh]
    return out.transpose(1, 2).reshape(b, -1, c)


def sincos_2d(channels: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sine/cosine position code [1, channels, h, w] (half rows, half columns)."""
    c = max(channels // 4, 1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(c, dtype=torch.float32) / c)
    ys = torch.arange(h, dtype=torch.float32)[:, None] * freq[None]  # [h, c]
    xs = torch.arange(w, dtype=torch.float32)[:, None] * freq[None]  # [w, c]
    pe_y = torch.cat([ys.sin(), ys.cos()], dim=1)  # [h, 2c]
    pe_x = torch.cat([xs.sin(), xs.cos()], dim=1)  # [w, 2c]
    pe = torch.cat([pe_y[:, None, :].expand(h, w, 2 * c), pe_x[None, :, :].expand(h, w, 2 * c)], dim=2)
    pe = pe[..., :channels]
    if pe.shape[-1] < channels:
        pe = torch.cat([pe, torch.zeros(h, w, channels - pe.shape[-1])], dim=-1)
    return pe.permute(2, 0, 1)[None].contiguous()


class TextProjection(nn.Module):
    """[B, T, Dt] token features (padding zeroed) -> [B, T, C]: Conv1d(k=3) over tokens + GELU + Linear."""

    def __init__(self, text_dim: int, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(text_dim, text_dim, 3, padding=1)
        self.act = nn.GELU()
        self.fc = nn.Linear(text_dim, channels)

    def forward(self, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = text * mask[..., None].to(text.dtype)  # padded positions contribute nothing
        t = self.act(self.conv(t.transpose(1, 2))).transpose(1, 2)
        return self.fc(t)


class CrossAttentionFusion(nn.Module):
    """x [B, C, H, W], text [B, T, Dt], mask [B, T] -> x + scale * LN(CrossAttn(x + pos, text)).

    Args:
        channels: C of the decoder stage. text_dim: Dt of the text encoder.
        heads: attention heads; must divide ``channels`` (ValueError otherwise).
        hw: the stage's (H, W) at full-image inference (training crops take rows of its position code).
        scale_init: the residual gain's start value.

    Examples::

        >>> f = CrossAttentionFusion(64, 128, heads=4, hw=(32, 8))
        >>> f(torch.zeros(1, 64, 32, 8), torch.zeros(1, 10, 128), torch.ones(1, 10)).shape
        torch.Size([1, 64, 32, 8])
    """

    pos: torch.Tensor  # a buffer

    def __init__(self, channels: int, text_dim: int, heads: int, hw: tuple[int, int], scale_init: float = 0.1):
        super().__init__()
        self.heads = check_heads(channels, heads)
        self.text = TextProjection(text_dim, channels)
        self.register_buffer("pos", sincos_2d(channels, *hw), persistent=False)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.o = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, row0: int = 0) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.text(text, mask)  # [B, T, C]
        pos = self.pos[:, :, row0 : row0 + h] if (row0 or h != self.pos.shape[2]) else self.pos
        q = self.q((x + pos).flatten(2).transpose(1, 2))  # [B, HW, C]
        out = self.o(masked_attention(q, self.k(t), self.v(t), mask, self.heads))
        out = self.norm(out).transpose(1, 2).reshape(b, c, h, w)
        return x + self.scale * out


class GateFusion(nn.Module):
    """x [B, C, H, W] * 2 sigmoid(Linear(masked-mean(text))) per channel (starts as identity)."""

    def __init__(self, channels: int, text_dim: int, heads: int = 0, hw: tuple[int, int] = (1, 1)):
        super().__init__()
        self.text = TextProjection(text_dim, text_dim)
        self.fc = nn.Linear(text_dim, channels)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, row0: int = 0) -> torch.Tensor:
        m = mask.to(text.dtype)
        t = self.text(text, mask)
        pooled = (t * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)
        gate = 2.0 * torch.sigmoid(self.fc(pooled))  # [B, C]
        return x * gate[:, :, None, None]


class TextPrior(nn.Module):
    """What the report says about each place, read from the report alone: two coarse maps.

    * channel 0, ``allow``: log-odds that the report allows a metastasis there. It enters the
      segmenter's logits as ``scale * log(sigmoid(allow))`` (see Segmenter): a veto that explains
      hot spots away (benign findings, negative studies) but never creates a lesion. Trained
      against the lesion mask max-pooled to the grid (with no report nothing is ruled out: 1
      everywhere).
    * channel 1, ``mention``: log-odds that the report describes a finding there at all,
      metastasis or benign (a degenerative knee, a rib fracture, an injection site). Trained
      against every finding's box (with no report: 0 everywhere). It is what lets the fail-safe
      (bonescan.failsafe) see a report that does not describe the image in front of it: hot spots
      of the image that the report never mentions.

    Queries are positions only (a learned code over the coarse grid, initialised from the 2-D
    sine/cosine code), keys / values the report's tokens (padding masked): the maps can only be
    learned from the text.

    text [B, T, Dt], mask [B, T] -> logits [B, 2, h, w].
    """

    CHANNELS = ("allow", "mention")

    def __init__(self, text_dim: int, channels: int, heads: int, hw: tuple[int, int]):
        super().__init__()
        self.hw = hw
        self.heads = check_heads(channels, heads)
        self.text = TextProjection(text_dim, channels)
        self.queries = nn.Parameter(sincos_2d(channels, *hw).flatten(2).transpose(1, 2).clone())  # [1, h*w, C]
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, len(self.CHANNELS)))

    def forward(self, text: torch.Tensor, mask: torch.Tensor, rows: tuple[int, int] | None = None) -> torch.Tensor:
        b = text.shape[0]
        h, w = self.hw
        t = self.text(text, mask)
        out = masked_attention(self.q(self.queries), self.k(t), self.v(t), mask, self.heads)  # [B, h*w, C]
        logits = self.mlp(self.norm(out)).transpose(1, 2).reshape(b, len(self.CHANNELS), h, w)
        return logits[:, :, rows[0] : rows[1]] if rows is not None else logits


FUSIONS = {"xattn": CrossAttentionFusion, "gate": GateFusion}


def named_map(region_logits: torch.Tensor, report_regions: torch.Tensor) -> torch.Tensor:
    """Where the report's named bones are, per view: the anatomy output's class probabilities summed over
    the classes the report names as metastatic.

    region_logits [B, views, classes, h, w] (the U-Net's AnatomyNet), report_regions [B, classes]
    (1 = named; contract.REPORT_REGIONS) -> [B, views, h, w] in [0, 1].
    """
    p = torch.softmax(region_logits, dim=2)
    return torch.einsum("bvchw,bc->bvhw", p, report_regions.to(p.dtype))


class NamedPlaces(nn.Module):
    """The report's named places fed to the decoder (issue 26): at every decoder stage, the stage's
    features are modulated by the map of the bones the report names as metastatic (:func:`named_map`),
    ``x * (1 + gamma(named)) + beta(named)`` (FiLM, Perez et al. 2018) with a 1 x 1 convolution per stage.

    Where TextPrior's veto can only take hot spots away, this lets the decoder take weaker evidence
    where the report says a metastasis is: the named place is an explicit map (the tokenizer's lexicon
    over the anatomy output), not something cross-attention has to learn from a few hundred steps.
    Zero-initialised, so a model warm-started from the U-Net starts as that U-Net.

    x [B, C_j, H / s_j, W / s_j] at stage j, named [B, views, H / r, W / r] (r = the anatomy grid's
    stride) -> x modulated.
    """

    def __init__(self, channels: list[int], strides: list[int], views: int, grid_stride: int):
        super().__init__()
        self.strides, self.grid_stride = strides, grid_stride
        convs = [nn.Conv2d(views, 2 * c, 1) for c in channels]
        for conv in convs:
            nn.init.zeros_(conv.weight)
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)
        self.films = nn.ModuleList(convs)

    def at_stage(self, named: torch.Tensor, j: int) -> torch.Tensor:
        """The named map at stage ``j``'s resolution (static factors: every dim stays static in the graph)."""
        s, r = self.strides[j], self.grid_stride
        if s > r:
            return F.avg_pool2d(named, s // r)
        if s < r:
            return F.interpolate(named, scale_factor=float(r // s), mode="nearest")
        return named

    def forward(self, x: torch.Tensor, named: torch.Tensor, j: int) -> torch.Tensor:
        gamma, beta = self.films[j](self.at_stage(named, j)).chunk(2, dim=1)
        return x * (1.0 + gamma) + beta
