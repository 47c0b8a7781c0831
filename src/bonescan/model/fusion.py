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
from torch import nn

MASK_NEG = -1.0e4


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
    """x [B, C, H, W], text [B, T, Dt], mask [B, T] -> x + scale * LN(CrossAttn(x + pos, text))."""

    def __init__(self, channels: int, text_dim: int, heads: int, hw: tuple[int, int], scale_init: float = 0.1):
        super().__init__()
        if channels % heads:
            heads = math.gcd(channels, heads)
        self.heads = heads
        self.dh = channels // heads
        self.text = TextProjection(text_dim, channels)
        self.register_buffer("pos", sincos_2d(channels, *hw), persistent=False)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.o = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def attention(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, row0: int = 0) -> torch.Tensor:
        """Attention output [B, H*W, C] (before norm and residual). row0: first row of a training crop."""
        b, c, h, w = x.shape
        t = self.text(text, mask)  # [B, T, C]
        pos = self.pos[:, :, row0 : row0 + h] if (row0 or h != self.pos.shape[2]) else self.pos
        q = self.q((x + pos).flatten(2).transpose(1, 2))  # [B, HW, C]
        k = self.k(t)
        v = self.v(t)
        q = q.reshape(b, h * w, self.heads, self.dh).transpose(1, 2)  # [B, h, HW, dh]
        k = k.reshape(b, -1, self.heads, self.dh).transpose(1, 2)  # [B, h, T, dh]
        v = v.reshape(b, -1, self.heads, self.dh).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(self.dh))
        scores = scores + (1.0 - mask.to(scores.dtype))[:, None, None, :] * MASK_NEG
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, h * w, c)
        return self.o(out)

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, row0: int = 0) -> torch.Tensor:
        b, c, h, w = x.shape
        out = self.norm(self.attention(x, text, mask, row0)).transpose(1, 2).reshape(b, c, h, w)
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
    """What the report says about each place: a coarse map of log-odds that a lesion may be there.

    Queries are positions only (a learned code over the coarse grid, initialised from the 2-D
    sine/cosine code), keys / values the report's tokens (padding masked): the map is read from the
    report alone, so it can only be learned from the text. It is trained against the lesion mask
    max-pooled to the grid (with no report, nothing is ruled out: target 1 everywhere), and enters
    the segmenter's logits as ``scale * log(sigmoid(map))`` (see Segmenter): a veto that explains
    hot spots away (benign findings, negative studies) but never creates a lesion.

    text [B, T, Dt], mask [B, T] -> logits [B, 1, h, w].
    """

    def __init__(self, text_dim: int, channels: int, heads: int, hw: tuple[int, int]):
        super().__init__()
        self.hw = hw
        self.heads = heads if channels % heads == 0 else math.gcd(channels, heads)
        self.dh = channels // self.heads
        self.text = TextProjection(text_dim, channels)
        self.queries = nn.Parameter(sincos_2d(channels, *hw).flatten(2).transpose(1, 2).clone())  # [1, h*w, C]
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, 1))

    def forward(self, text: torch.Tensor, mask: torch.Tensor, rows: tuple[int, int] | None = None) -> torch.Tensor:
        b = text.shape[0]
        h, w = self.hw
        t = self.text(text, mask)
        q = self.q(self.queries).expand(b, -1, -1).reshape(b, h * w, self.heads, self.dh).transpose(1, 2)
        k = self.k(t).reshape(b, -1, self.heads, self.dh).transpose(1, 2)
        v = self.v(t).reshape(b, -1, self.heads, self.dh).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(self.dh))
        scores = scores + (1.0 - mask.to(scores.dtype))[:, None, None, :] * MASK_NEG
        out = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, h * w, -1)
        logits = self.mlp(self.norm(out)).transpose(1, 2).reshape(b, 1, h, w)
        return logits[:, :, rows[0] : rows[1]] if rows is not None else logits


FUSIONS = {"xattn": CrossAttentionFusion, "gate": GateFusion}
