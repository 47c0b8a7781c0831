"""``bonescan train``: fit the dual-path model or the U-Net baseline on a data folder.

:func:`train` is the list of jobs: load the splits, set up the tokenizer, build the network and
its optimizer, run :func:`train_step` until the schedule ends, validate, save a checkpoint with
:func:`checkpoint_metadata`. One generator, seeded with the run's seed, draws the batch order,
the augmentation, the crops and the report dropout: the same seed gives the same run.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bonescan.data.arrays import SplitArrays, load_split, manifest_hash
from bonescan.errors import BonescanError
from bonescan.evaluate import evaluate_arrays
from bonescan.model.checkpoint import Checkpoint, read_tokenizer_files, save_checkpoint, write_tokenizer_files
from bonescan.model.config import ModelConfig, TrainConfig
from bonescan.model.network import BoneScanNet

if TYPE_CHECKING:
    from bonescan.tokenize import ReportTokenizer


def warm_start(net: BoneScanNet, ckpt_path: str | Path) -> dict[str, Any]:
    """Copy the image path (encoder, decoder, head) of another checkpoint, e.g. the U-Net baseline,
    into ``net``; the text encoder and the fusion blocks keep their fresh initialisation."""
    from bonescan.model.checkpoint import load_checkpoint

    src = load_checkpoint(ckpt_path)
    theirs = src.net.segmenter.state_dict()
    mine = net.segmenter.state_dict()
    if (src.cfg.width, src.cfg.depth, src.cfg.stem_stride) != (net.cfg.width, net.cfg.depth, net.cfg.stem_stride):
        raise BonescanError(f"{ckpt_path}: its U-Net shape differs from this configuration's; cannot initialise from it")
    loaded = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape and not k.startswith("fusions.")}
    net.segmenter.load_state_dict(loaded, strict=False)
    return {"checkpoint": str(ckpt_path), "model": src.cfg.model, "seed": src.metadata.get("seed"),
            "steps_done": src.metadata.get("steps_done"), "loaded": len(loaded)}


def grounding_loss(g: torch.Tensor, mask: torch.Tensor, no_report: torch.Tensor, pos_weight: float = 5.0) -> torch.Tensor:
    """Loss of the report's veto map g [B, 1, h, w] against the lesion mask [B, 1, H, W].

    Target: the mask max-pooled to the grid and grown by one cell (the report names a bone, the
    exact place varies with the patient's size and position); with no report, 1 everywhere
    (nothing is ruled out). Positives weigh ``pos_weight``: a veto on a real lesion costs more
    than a missed veto.
    """
    import torch.nn.functional as F

    target = F.max_pool2d(F.adaptive_max_pool2d(mask, g.shape[-2:]), 3, stride=1, padding=1)
    target[no_report] = 1.0
    return F.binary_cross_entropy_with_logits(g, target, pos_weight=torch.tensor(pos_weight))


def augment(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts and geometry jitter: [B, 2, H, W] counts, [B, 1, H, W] masks.

    * lower count statistics: Poisson resampling at 50-100 % of the counts;
    * a shift of up to 24 rows / 6 columns (zero fill). No left-right flips: the report's
      左 / 右 would no longer match the image.
    """
    b = images.shape[0]
    level = torch.empty(b, 1, 1, 1).uniform_(0.5, 1.0, generator=gen)
    images = torch.poisson(images * level, generator=gen)
    out_i = torch.zeros_like(images)
    out_m = torch.zeros_like(masks)
    H, W = images.shape[-2:]
    for k in range(b):
        dy = int(torch.randint(-24, 25, (1,), generator=gen))
        dx = int(torch.randint(-6, 7, (1,), generator=gen))
        ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
        xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
        out_i[k, :, yd, xd] = images[k, :, ys, xs]
        out_m[k, :, yd, xd] = masks[k, :, ys, xs]
    return out_i, out_m


def lr_lambda(warmup: int, total: list[int]):
    """Linear warm-up then cosine decay to 5 %; ``total`` is a one-element list so it can shrink."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min((step - warmup) / max(total[0] - warmup, 1), 1.0)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    return f



# ----------------------------------------------------------------------------- the jobs of a run


def setup_tokenizer(mcfg: ModelConfig, reports: list[str], text_encoder_dir: str | Path | None,
                    tmp: Path) -> tuple[dict[str, str], ReportTokenizer | None]:
    """The tokenizer files the checkpoint will carry, and a tokenizer made from them.

    Args:
        mcfg: the model configuration; a U-Net (``model="unet"``) reads no text and gets none.
        reports: the training reports; without ``text_encoder_dir`` a WordPiece vocabulary is
            trained on them.
        text_encoder_dir: a local pretrained MacBERT folder; its tokenizer is used (converted to
            ``tokenizer.json`` when the folder has only ``vocab.txt``).
        tmp: a scratch folder, removed by the caller.

    Returns:
        ``(files, tokenizer)``: file name -> text, ``({}, None)`` for the U-Net.
    """
    if mcfg.model != "dualpath":
        return {}, None
    if text_encoder_dir is not None:
        tok_files = read_tokenizer_files(text_encoder_dir)
        if "tokenizer.json" not in tok_files:
            from transformers import BertTokenizerFast

            BertTokenizerFast.from_pretrained(str(text_encoder_dir), local_files_only=True).save_pretrained(tmp)
            tok_files = read_tokenizer_files(tmp)
    else:
        from bonescan.tokenize import train_wordpiece

        train_wordpiece(reports, tmp)
        tok_files = read_tokenizer_files(tmp)
    if not tok_files:
        return tok_files, None
    from bonescan.tokenize import ReportTokenizer

    return tok_files, ReportTokenizer(write_tokenizer_files(tok_files, tmp / "final") / "tokenizer.json")


def build_model(mcfg: ModelConfig, tokenizer: ReportTokenizer | None, text_encoder_dir: str | Path | None,
                init_from: str | Path | None) -> tuple[BoneScanNet, dict[str, Any] | None]:
    """A fresh network (channels-last for speed on the CPU), its image path optionally copied from
    ``init_from``; returns it and what was copied (None when nothing was)."""
    net = BoneScanNet(mcfg, vocab_size=tokenizer.vocab_size if tokenizer else 0, pretrained_text=text_encoder_dir)
    init_info = None
    if init_from is not None:
        init_info = warm_start(net, init_from)
        print(f"initialised {init_info['loaded']} tensors of the image path from {init_from}")
    return net.to(memory_format=torch.channels_last), init_info


def build_optimizer(net: BoneScanNet, tcfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with three parameter groups: the image path and fusion at ``lr``, the text encoder at
    ``text_lr``, and the scalar gains at 10 x ``lr`` without weight decay."""
    text_params = list(net.text_encoder.parameters()) if net.text_encoder is not None else []
    # scalar gains (fusion residual scales, prior scales): Adam moves every parameter by ~lr per
    # step, so a gain that must travel from 0.1 to 1 needs a larger step to get there in time
    gains = [p for n, p in net.named_parameters() if n.endswith("scale") and p.ndim <= 1]
    special = {id(p) for p in text_params + gains}
    groups: list[dict[str, Any]] = [{"params": [p for p in net.parameters() if id(p) not in special], "lr": tcfg.lr}]
    if text_params:
        groups.append({"params": text_params, "lr": tcfg.text_lr})
    if gains:
        groups.append({"params": gains, "lr": tcfg.lr * 10, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, weight_decay=tcfg.weight_decay)


@dataclass
class ReportTokens:
    """The training reports tokenized once, and the empty report that replaces a dropped one."""

    ids: np.ndarray  # int32 [N, T]
    mask: np.ndarray  # int32 [N, T]
    empty_ids: np.ndarray  # int32 [1, T]
    empty_mask: np.ndarray  # int32 [1, T]

    @classmethod
    def of(cls, tokenizer: ReportTokenizer, reports: list[str]) -> ReportTokens:
        return cls(*tokenizer(reports), *tokenizer([""]))

    def batch(self, idx: np.ndarray, drop: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The reports of cases ``idx``, the empty report where ``drop`` is True."""
        ids = self.ids[idx].copy()
        am = self.mask[idx].copy()
        ids[drop] = self.empty_ids[0]
        am[drop] = self.empty_mask[0]
        return torch.from_numpy(ids), torch.from_numpy(am)


class Batches:
    """Where training steps draw from: the split in memory, its reports tokenized (None for the
    U-Net) and the run's generator. Cases come in random order without replacement; a new order
    starts when fewer than a batch are left."""

    def __init__(self, arrays: SplitArrays, tokens: ReportTokens | None, batch_size: int, gen: torch.Generator):
        self.arrays, self.tokens, self.batch_size, self.gen = arrays, tokens, batch_size, gen
        self.order = torch.randperm(len(arrays), generator=gen)
        self.pos = 0

    def next_indices(self) -> np.ndarray:
        if self.pos + self.batch_size > len(self.arrays):
            self.order = torch.randperm(len(self.arrays), generator=self.gen)
            self.pos = 0
        idx = self.order[self.pos : self.pos + self.batch_size].numpy()
        self.pos += self.batch_size
        return idx


def train_step(net: BoneScanNet, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batches: Batches, tcfg: TrainConfig) -> float:
    """One optimisation step; returns its loss.

    A batch of cases, augmented (:func:`augment`), cropped to ``tcfg.crop_rows`` random rows (the
    counts are normalised on the whole image inside the network; the crop starts on a multiple
    of the network's coarsest stride), ``tcfg.report_dropout`` of the reports replaced by the
    empty one, forward, Dice + CE loss plus the veto-map loss, backward, clipped step.
    """
    gen = batches.gen
    idx = batches.next_indices()
    img = torch.from_numpy(batches.arrays.images[idx].astype(np.float32))
    msk = torch.from_numpy(batches.arrays.masks[idx].astype(np.float32))[:, None]
    img, msk = augment(img, msk, gen)
    img = img.contiguous(memory_format=torch.channels_last)
    rows = None
    if tcfg.crop_rows and tcfg.crop_rows < img.shape[2]:
        mult = net.segmenter.row_multiple
        r0 = int(torch.randint(0, (img.shape[2] - tcfg.crop_rows) // mult + 1, (1,), generator=gen)) * mult
        rows = (r0, r0 + tcfg.crop_rows)
        msk = msk[:, :, r0 : r0 + tcfg.crop_rows]
    drop = np.zeros(len(idx), dtype=bool)
    if batches.tokens is not None:
        drop = torch.rand(len(idx), generator=gen).numpy() < tcfg.report_dropout
        ids, am = batches.tokens.batch(idx, drop)
        logits, grounding = net(img, ids, am, rows=rows, return_grounding=True)
    else:
        logits, grounding = net(img, rows=rows, return_grounding=True)
    loss = loss_fn(logits, msk)
    for g in grounding:
        loss = loss + tcfg.grounding_weight * grounding_loss(g, msk, torch.from_numpy(drop))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def validation_dsc(net: BoneScanNet, mcfg: ModelConfig, tok_files: dict[str, str], out: str | Path,
                   val_set: SplitArrays, n: int = 50) -> str:
    """The mean DSC on the first ``n`` validation cases, as a progress line."""
    sub = val_set.subset(n)
    r = evaluate_arrays(Checkpoint(net, mcfg, tok_files, {}, Path(out)), sub, progress=False)["summary"]
    return f"val[{len(sub)}] DSC {r['dsc']['mean']:.4f}"


@dataclass
class FitResult:
    steps: int
    losses: list[float]
    seconds: float


def fit(net: BoneScanNet, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, total: list[int],
        batches: Batches, tcfg: TrainConfig, validate: Callable[[], str] | None, progress: bool, desc: str) -> FitResult:
    """Training steps until ``total[0]``; every ``tcfg.eval_every`` steps a ``validate()`` line.

    With ``tcfg.max_minutes`` the time of the first 5 steps sets how many fit in the budget and
    ``total[0]`` (which the learning-rate schedule reads) shrinks to that (not below warm-up + 1).
    Leaves the network in eval mode.
    """
    from monai.losses import DiceCELoss
    from tqdm import tqdm

    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    losses: list[float] = []
    net.train()
    bar = tqdm(total=tcfg.steps, desc=desc, unit="step", disable=not progress)
    step = 0
    t_loop = time.perf_counter()
    while step < total[0]:
        losses.append(train_step(net, opt, sched, loss_fn, batches, tcfg))
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if validate is not None and tcfg.eval_every and step % tcfg.eval_every == 0 and step < total[0]:
            net.eval()
            line = validate()
            bar.write(f"step {step}: {line} loss {np.mean(losses[-20:]):.3f} ({(time.perf_counter() - t_loop) / 60:.1f} min)")
            net.train()
        if tcfg.max_minutes and step == 5:
            per_step = (time.perf_counter() - t_loop) / 5
            steps_in_budget = int(tcfg.max_minutes * 60 / per_step)
            if steps_in_budget < total[0]:
                total[0] = max(steps_in_budget, tcfg.warmup_steps + 1)
                bar.total = total[0]
                bar.write(f"time budget {tcfg.max_minutes} min: {total[0]} steps at {per_step:.2f} s/step")
    bar.close()
    seconds = time.perf_counter() - t_loop
    net.eval()
    return FitResult(step, losses, seconds)


def checkpoint_metadata(*, command: str | None, config_name: str, mcfg: ModelConfig, tcfg: TrainConfig, seed: int,
                        data: Path, train_set: SplitArrays, val_set: SplitArrays, result: FitResult,
                        text_encoder_dir: str | Path | None, tok_files: dict[str, str], init_info: dict[str, Any] | None,
                        validation: dict[str, Any], t_start: float) -> dict[str, Any]:
    """What a checkpoint records about its making: command, seed, data (manifest hash, skipped
    cases), configuration, steps, final loss, times, text encoder, validation metrics, versions.
    Plain data only: checkpoints load with ``weights_only=True``."""
    metadata: dict[str, Any] = {
        "command": command or " ".join(sys.argv),
        "config_name": config_name,
        "model": mcfg.model,
        "seed": seed,
        "data": str(data),
        "data_manifest_sha256_16": manifest_hash(data),
        "train_cases": len(train_set),
        "val_cases": len(val_set),
        "skipped_cases": [str(e) for e in train_set.errors + val_set.errors],
        "train_config": asdict(tcfg),
        "steps_done": result.steps,
        "final_loss_mean20": float(np.mean(result.losses[-20:])) if result.losses else None,
        "train_seconds": round(result.seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "text_encoder": str(text_encoder_dir) if text_encoder_dir else ("trained from scratch" if tok_files else None),
        "init_from": init_info,
        "validation": validation.get("summary", {}),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }
    return json.loads(json.dumps(metadata))


def train(
    data: str | Path,
    out: str | Path,
    mcfg: ModelConfig,
    tcfg: TrainConfig,
    seed: int = 0,
    text_encoder_dir: str | Path | None = None,
    progress: bool = True,
    command: str | None = None,
    config_name: str = "",
    init_from: str | Path | None = None,
) -> Path:
    """Train and save a checkpoint; returns its path. Validation metrics go into the metadata."""
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(tcfg.threads)
    data = Path(data)
    train_set = load_split(data, "train", progress)
    val_set = load_split(data, "val", progress)

    with tempfile.TemporaryDirectory(prefix="bonescan-tok-") as tmp:
        tok_files, tokenizer = setup_tokenizer(mcfg, train_set.reports, text_encoder_dir, Path(tmp))
        net, init_info = build_model(mcfg, tokenizer, text_encoder_dir, init_from)
        opt = build_optimizer(net, tcfg)
        total = [max(tcfg.steps, 0)]  # the schedule's length; a time budget shrinks it
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg.warmup_steps, total))
        tokens = ReportTokens.of(tokenizer, train_set.reports) if tokenizer is not None else None
        batches = Batches(train_set, tokens, tcfg.batch_size, torch.Generator().manual_seed(seed))
        validate = partial(validation_dsc, net, mcfg, tok_files, out, val_set) if len(val_set) else None
        result = fit(net, opt, sched, total, batches, tcfg, validate, progress, f"train {mcfg.model}")
        net = net.to(memory_format=torch.contiguous_format)

        # an initialise-only checkpoint (--steps 0, e.g. the paper configuration for cost benchmarks) is not validated
        ckpt = Checkpoint(net, mcfg, tok_files, {}, Path(out))
        val = evaluate_arrays(ckpt, val_set, progress=progress) if len(val_set) and result.steps > 0 else {}
        metadata = checkpoint_metadata(command=command, config_name=config_name, mcfg=mcfg, tcfg=tcfg, seed=seed, data=data,
                                       train_set=train_set, val_set=val_set, result=result, text_encoder_dir=text_encoder_dir,
                                       tok_files=tok_files, init_info=init_info, validation=val, t_start=t_start)
        path = save_checkpoint(out, net, tok_files, metadata)
    v = metadata["validation"]
    took = f"{result.steps} steps in {result.seconds / 60:.1f} min"
    if v:
        print(f"saved {path}: val DSC {v['dsc']['mean']:.4f} (sd {v['dsc']['sd']:.3f}, {v['scans']} scans), {took}")
    else:
        print(f"saved {path}: {took}")
    return path
