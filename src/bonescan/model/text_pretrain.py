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


def warmup_steps(steps: int) -> int:
    """The warm-up of :func:`warmup_linear`: the first tenth of ``steps``, at least one."""
    return max(steps // 10, 1)


def warmup_linear(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first tenth of ``steps``, then linear decay to 5 %: the schedule of
    the text-only stages (MLM here, the report's maps in bonescan.train)."""
    warm = warmup_steps(steps)
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


def weight_sample(params: Sequence[torch.Tensor], per_tensor: int = 4096) -> list[torch.Tensor]:
    """A fixed, evenly strided sample of each parameter's values (at most about ``per_tensor``): enough
    to tell afterwards whether and how far the weights moved, without copying a large encoder."""
    out = []
    for p in params:
        flat = p.detach().reshape(-1)
        out.append(flat[:: max(1, flat.numel() // per_tensor)].clone())
    return out


def weights_moved(before: list[torch.Tensor], params: Sequence[torch.Tensor], per_tensor: int = 4096) -> float:
    """The relative L2 change of the weights sampled by :func:`weight_sample` (0.0: unchanged)."""
    after = weight_sample(params, per_tensor)
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(after, before))
    den = sum(float(b.pow(2).sum()) for b in before)
    return float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))


def stage_record(losses: list[float], lrs: list[float], lr_base: float, warmup: int, moved: float, seconds: float,
                 every: int = 50) -> dict[str, Any]:
    """What a training stage did: its first and last losses, the learning-rate schedule's state, how
    far the weights moved. ``loss_first`` / ``loss_last`` are the mean losses of the first and the last
    ``loss_window`` steps (``every``, or half the steps when there are fewer than 2 x ``every``): two
    different stretches of the run, never one number twice. ``lrs``: the learning rate of each step."""
    n = len(losses)
    k = max(1, min(every, n // 2))
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731
    return {"steps": n, "loss_first": mean(losses[:k]), "loss_last": mean(losses[-k:]), "loss_window": k,
            "loss_curve": loss_curve(losses, every), "lr_base": lr_base, "lr_peak": max(lrs, default=0.0),
            "lr_last": lrs[-1] if lrs else 0.0, "warmup_steps": warmup, "weights_moved": round(moved, 6),
            "seconds": round(seconds, 1)}


def lr_state(steps: int, warmup: int, lr_peak: float | None = None, lr_last: float | None = None) -> str:
    """Where the learning-rate schedule stood after ``steps`` steps with a linear warm-up of ``warmup``."""
    if steps < warmup:
        return f"learning rate still in warm-up: {steps} of {warmup} warm-up steps done"
    if lr_peak is None or lr_last is None:
        return f"learning rate past its warm-up ({warmup} steps)"
    return (f"learning rate {lr_peak:.2g} at its peak after {warmup} warm-up step{'s' if warmup != 1 else ''}, "
            f"{lr_last:.2g} at the last step")


def describe_stage(info: dict[str, Any]) -> str:
    """The log line of a stage recorded by :func:`stage_record`: what the loss did over which steps,
    whether the weights changed, where the learning rate stood."""
    n, k = info["steps"], info["loss_window"]
    if n == 0:
        return "no steps"
    if n == 1:
        loss = f"loss {info['loss_first']:.4f} (one step: no trend)"
    else:
        first = "step 1" if k == 1 else f"mean of steps 1-{k}"
        last = f"step {n}" if k == 1 else f"steps {n - k + 1}-{n}"
        loss = f"loss {info['loss_first']:.4f} ({first}) -> {info['loss_last']:.4f} ({last}), a new batch each step"
    if info["weights_moved"] > 0:
        weights = f"weights moved {100 * info['weights_moved']:.3g} % (relative L2)"
    else:
        weights = "the weights did not change" + (" (learning rate 0)" if info["lr_peak"] == 0 else "")
    lr = lr_state(n, info["warmup_steps"], info["lr_peak"], info["lr_last"])
    probe = info.get("probe_loss") or {}
    if probe.get("before") is not None and probe.get("after") is not None:
        b, a = probe["before"], probe["after"]
        verdict = "lower" if a < b else "unchanged" if a == b else "higher"
        loss += (f"; on {probe['reports']} held-out reports (never trained on) {b:.4f} before -> {a:.4f} after "
                 f"({verdict})")
    return f"{n} step{'s' if n != 1 else ''} in {info['seconds']} s: {loss}; {weights}; {lr}"


class Probe:
    """A fixed batch of reports the stage never trains on, masked once: its loss before and after
    training says whether the encoder learned (the step losses come from a fresh batch every step,
    and over a few steps their noise is larger than what the encoder learns). The softmax runs over
    the probe's own characters, the same set before and after."""

    def __init__(self, tokenizer, corpus: Callable[[int, np.random.Generator], Sequence[str]], batch_size: int, seed: int):
        ids_np, att_np = tokenizer(list(corpus(batch_size, np.random.default_rng([seed, 0x9B0E]))))
        length = max(int(att_np.sum(1).max()), 2)
        self.ids, self.att = torch.from_numpy(ids_np[:, :length]).long(), torch.from_numpy(att_np[:, :length])
        special = torch.from_numpy(tokenizer.special_ids)
        content = self.ids[(self.att > 0) & ~torch.isin(self.ids, special)]
        self.candidates = torch.unique(content)
        self.index = torch.full((tokenizer.vocab_size,), -1, dtype=torch.int64)
        self.index[self.candidates] = torch.arange(len(self.candidates))
        gen = torch.Generator().manual_seed(seed + 0x9B0E)
        self.corrupted, self.chosen = mask_tokens(self.ids, self.att, special, tokenizer.tok.token_to_id("[MASK]"),
                                                  self.candidates, gen)

    def loss(self, encoder: TextEncoder, head: MLMHead) -> float | None:
        """The masked-token loss on the probe (eval mode, no gradient); None when nothing was masked."""
        if not bool(self.chosen.any()) or len(self.candidates) == 0:
            return None
        modes = encoder.training, head.training
        encoder.eval()
        head.eval()
        with torch.no_grad():
            hidden = encoder(self.corrupted.to(torch.int32), self.att)
            loss = nn.functional.cross_entropy(head(hidden[self.chosen], self.candidates), self.index[self.ids[self.chosen]])
        encoder.train(modes[0])
        head.train(modes[1])
        return round(float(loss), 4)


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
    lrs: list[float] = []
    before = weight_sample(list(encoder.parameters()))
    probe = Probe(tokenizer, corpus, batch_size, seed)
    probe_before = probe.loss(encoder, head)
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
        lrs.append(float(opt.param_groups[0]["lr"]))
        losses.append(take_step(loss, opt, sched, params))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    info = stage_record(losses, lrs, lr, warmup_steps(steps), weights_moved(before, list(encoder.parameters())),
                        time.perf_counter() - t0, log_every)
    info["probe_loss"] = {"before": probe_before, "after": probe.loss(encoder, head), "reports": batch_size}
    encoder.eval()
    return {**info, "batch_size": batch_size, "token_ids_seen": sorted(seen)}
