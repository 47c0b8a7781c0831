"""Masked-language-model pretraining of the report encoder (``bonescan train --pretrain-text``).

A text encoder trained from scratch only on the segmentation loss learns the few words that move
the loss in the training reports, in the wording of those reports. Pretraining it first as a
masked language model on many reports of every house style (the generator writes thousands per
second without images) teaches it the language of bone-scan reports: that 浓聚 and 摄取增高 sit
in the same places, that 胸7 and 第七胸椎 name one bone, that 未见 negates what follows. This is
what MacBERT's pretraining gives a real deployment (``--text-encoder DIR``); here the small BERT
gets the same kind of start from the reports themselves.

BERT's recipe: 15 % of the tokens are chosen; of those 80 % become [MASK], 10 % a random token,
10 % stay; the loss is cross-entropy on the chosen ones, through a head tied to the input
embeddings (kept only during pretraining). The softmax runs over the characters the corpus has
used so far, not the whole 28,000-entry vocabulary: every target is one of them, and the head's
cost drops twentyfold (it was most of a step). Batches are cut to their longest report: padding
changes nothing (it is masked) but costs attention.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from bonescan.model.network import TextEncoder

MASK_SHARE = 0.15


class MLMHead(nn.Module):
    """hidden [N, D] -> logits over the vocabulary ids ``vocab`` [K] (default all), decoder weights
    tied to the word embeddings."""

    def __init__(self, embeddings: nn.Embedding, hidden: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.embeddings = embeddings
        self.bias = nn.Parameter(torch.zeros(embeddings.num_embeddings))

    def forward(self, h: torch.Tensor, vocab: torch.Tensor | None = None) -> torch.Tensor:
        w: torch.Tensor = self.embeddings.weight
        b: torch.Tensor = self.bias
        if vocab is not None:
            w, b = w[vocab], b[vocab]
        return self.transform(h) @ w.T + b


def mask_tokens(ids: torch.Tensor, attention: torch.Tensor, special: torch.Tensor, mask_id: int,
                candidates: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: (ids [B, T], attention [B, T]) -> (corrupted ids, chosen positions [B, T] bool).

    Random replacements are drawn from ``candidates`` (the ids that occur in the corpus), so the
    encoder is not taught that unseen characters appear in reports."""
    content = (attention > 0) & ~torch.isin(ids, special)
    chosen = (torch.rand(ids.shape, generator=gen) < MASK_SHARE) & content
    r = torch.rand(ids.shape, generator=gen)
    out = ids.clone()
    out[chosen & (r < 0.8)] = mask_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    out[rand] = candidates[torch.randint(len(candidates), (int(rand.sum()),), generator=gen)].to(out.dtype)
    return out, chosen


def warmup_linear(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first tenth of ``steps``, then linear decay to 5 %: the schedule of
    the text-only stages (MLM here, the report's maps in bonescan.train)."""
    warm = max(steps // 10, 1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min((k + 1) / warm, max(0.05, 1 - (k - warm) / max(steps - warm, 1))))


def take_step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
              params: Sequence[torch.Tensor]) -> float:
    """Backward, gradients clipped to norm 5, optimizer and schedule step; returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def loss_curve(losses: list[float], every: int) -> list[float]:
    """Mean loss of each ``every`` steps."""
    return [round(float(np.mean(losses[i : i + every])), 4) for i in range(0, len(losses), every)]


def pretrain_text(encoder: TextEncoder, tokenizer, corpus: Callable[[int, np.random.Generator], Sequence[str]],
                  steps: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 0, progress: bool = True,
                  log_every: int = 50) -> dict[str, Any]:
    """Pretrain ``encoder`` (a model.network.TextEncoder) in place; returns the loss curve.

    corpus(n, rng) gives n report texts (a fresh draw every step, so the encoder never sees the
    same report twice); tokenizer is a bonescan.tokenize.ReportTokenizer.
    """
    from tqdm import tqdm

    bert = encoder.bert
    emb = cast(nn.Embedding, bert.get_input_embeddings())
    head = MLMHead(emb, encoder.hidden)
    params = list(encoder.parameters()) + [p for n, p in head.named_parameters() if not n.startswith("embeddings.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
    sched = warmup_linear(opt, steps)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    special = torch.from_numpy(tokenizer.special_ids)
    mask_id = tokenizer.tok.token_to_id("[MASK]")
    seen: set[int] = set()
    specials = set(tokenizer.special_ids.tolist())
    candidates = torch.zeros(0, dtype=torch.int64)  # the corpus's tokens: random replacements and the softmax's classes
    index = torch.full((tokenizer.vocab_size,), -1, dtype=torch.int64)  # vocabulary id -> class
    losses: list[float] = []
    encoder.train()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="pretrain text (MLM)", unit="step", disable=not progress)
    for step in bar:
        ids_np, att_np = tokenizer(list(corpus(batch_size, rng)))
        length = max(int(att_np.sum(1).max()), 2)
        ids_np, att_np = ids_np[:, :length], att_np[:, :length]
        new = set(np.unique(ids_np[att_np > 0]).tolist()) - seen
        if new:
            seen |= new
            candidates = torch.tensor(sorted(seen - specials), dtype=torch.int64)
            index[:] = -1
            index[candidates] = torch.arange(len(candidates))
        ids, att = torch.from_numpy(ids_np).long(), torch.from_numpy(att_np)
        corrupted, chosen = mask_tokens(ids, att, special, mask_id, candidates, gen)
        hidden = encoder(corrupted.to(torch.int32), att)  # [B, T, D]
        logits = head(hidden[chosen], candidates)
        loss = nn.functional.cross_entropy(logits, index[ids[chosen]])
        losses.append(take_step(loss, opt, sched, params))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    encoder.eval()
    curve = loss_curve(losses, log_every)
    return {"steps": steps, "batch_size": batch_size, "loss_first": curve[0] if curve else None,
            "loss_last": curve[-1] if curve else None, "loss_curve": curve, "seconds": round(time.perf_counter() - t0, 1),
            "token_ids_seen": sorted(seen)}
