"""``bonescan train``: fit the dual-path model or the U-Net baseline on a data folder.

:func:`train` is the list of jobs: load the splits, set up the tokenizer, build the network and
its optimizer, run :func:`train_step` until the schedule ends, validate, save a checkpoint with
:func:`checkpoint_metadata`. One generator, seeded with the run's seed, draws the batch order,
the augmentation, the crops and the report dropout: the same seed gives the same run.
"""

from __future__ import annotations

import json
import math
import os
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
import torch.nn.functional as F

from bonescan import contract as C
from bonescan.calibrate import calibrate_failsafe
from bonescan.data.arrays import SplitArrays, load_split, manifest_hash
from bonescan.data.rewrite import rewrite_split, training_report
from bonescan.errors import BonescanError
from bonescan.evaluate import evaluate_arrays
from bonescan.model.checkpoint import Checkpoint, read_tokenizer_files, save_checkpoint, write_tokenizer_files
from bonescan.model.config import ModelConfig, TrainConfig
from bonescan.model.network import BoneScanNet
from bonescan.model.unet import normalize_counts

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


def grounding_loss(g: torch.Tensor, mask: torch.Tensor, findings: torch.Tensor, no_report: torch.Tensor,
                   pos_weight: float = 5.0, mention_weight: float = 1.0, mention_pos_weight: float = 2.0) -> torch.Tensor:
    """Loss of the report's maps g [B, 2, h, w] (allow, mention; model.fusion.TextPrior) against
    the lesion mask and the findings mask, both [B, 1, H, W].

    allow: the lesion mask max-pooled to the grid and grown by two cells (the report names a bone,
    the exact place varies with the patient's size and position); with no report, 1 everywhere
    (nothing is ruled out); positives weigh ``pos_weight``: a veto on a real lesion costs more than
    a missed veto. mention: every finding the report describes (metastases, benign findings,
    artefacts; data.dataset.findings_mask), pooled and grown by one cell only (the fail-safe asks
    whether the report mentions the place of a hot spot, so this map must stay local); with no
    report, 0 everywhere.
    """
    import torch.nn.functional as F

    def pooled(m: torch.Tensor, grow: int) -> torch.Tensor:
        cells = F.adaptive_max_pool2d(m, g.shape[-2:])
        return F.max_pool2d(cells, 2 * grow + 1, stride=1, padding=grow) if grow else cells

    allow, mention = pooled(mask, 2), pooled(findings, 1)
    allow[no_report] = 1.0
    mention[no_report] = 0.0
    loss = F.binary_cross_entropy_with_logits(g[:, :1], allow, pos_weight=torch.tensor(pos_weight))
    return loss + mention_weight * F.binary_cross_entropy_with_logits(g[:, 1:2], mention,
                                                                       pos_weight=torch.tensor(mention_pos_weight))


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


@dataclass
class Preflight:
    """What :func:`preflight` loaded: the splits a run trains and validates on."""

    train_set: SplitArrays
    val_set: SplitArrays


def _load_for_preflight(data: Path, split: str, progress: bool, problems: list[str], regions: bool = False) -> SplitArrays | None:
    try:
        return load_split(data, split, progress, regions=regions)
    except BonescanError as e:
        problems.append(str(e))
        return None


def _checkpoint_problem(path: Path, option: str, model: str | None = None) -> tuple[Any, str | None]:
    """(the checkpoint's config, None) or (None, the problem) for ``--init-from`` / ``--fallback``."""
    from bonescan.model.checkpoint import load_checkpoint

    try:
        with torch.random.fork_rng(devices=[]):  # loading builds a network: its random init must not move training's RNG
            cfg = load_checkpoint(path).cfg
    except BonescanError as e:
        return None, f"{option} {e}"
    if model is not None and cfg.model != model:
        return None, f"{option} {path}: holds a {cfg.model} model; {option} takes a {model} checkpoint"
    return cfg, None


def anatomy_job(mcfg: ModelConfig, tcfg: TrainConfig) -> bool:
    """Whether the run trains the U-Net's anatomy network (it needs the split's region label maps)."""
    return mcfg.model == "unet" and mcfg.anatomy and tcfg.anatomy_steps > 0


def preflight(data: str | Path, out: str | Path, mcfg: ModelConfig, tcfg: TrainConfig, *,
              text_encoder_dir: str | Path | None = None, init_from: str | Path | None = None,
              fallback: str | Path | None = None, styles: list[str] | None = None, seed: int = 0,
              progress: bool = True) -> Preflight:
    """Everything a run needs, checked before its first step (pretraining included); raises one
    BonescanError listing every problem found (never report text).

    A run fails late, after minutes of training, on: an empty or unreadable train / val split; a
    dual-path fail-safe calibration (``fallback`` and steps > 0) on validation scans it cannot run
    on (calibrate.calibration_problem: fewer than two, or too few with metastases); a dual-path
    model whose training cases carry no report (or whose validation cases carry none, to
    calibrate with); an ``init_from`` / ``fallback`` checkpoint that is missing, unreadable, of
    another kind or of another U-Net shape; a missing ``text_encoder_dir``; unknown house
    ``styles``; a crop height the U-Net cannot take; an ``out`` that cannot be written.
    Returns the loaded splits.
    """
    from bonescan.calibrate import calibration_problem

    data, out = Path(data), Path(out)
    problems: list[str] = []
    dual = mcfg.model == "dualpath"
    # files first: cheap, and a wrong path is the commonest mistake
    if out.is_dir():
        problems.append(f"--out {out}: is a folder; give the checkpoint file to write (.pt)")
    else:
        parent = next((p for p in out.absolute().parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
            problems.append(f"--out {out}: cannot be written ({parent} is not a writable folder)")
    if init_from is not None:
        cfg, problem = _checkpoint_problem(Path(init_from), "--init-from")
        if problem:
            problems.append(problem)
        elif (cfg.width, cfg.depth, cfg.stem_stride) != (mcfg.width, mcfg.depth, mcfg.stem_stride):
            problems.append(f"--init-from {init_from}: its U-Net (width {cfg.width}, depth {cfg.depth}, stem stride "
                            f"{cfg.stem_stride}) differs from this configuration's (width {mcfg.width}, depth {mcfg.depth}, "
                            f"stem stride {mcfg.stem_stride})")
    if fallback is not None:
        if not dual:
            problems.append("--fallback: only the dual-path model carries a fallback U-Net")
        else:
            _, problem = _checkpoint_problem(Path(fallback), "--fallback", "unet")
            if problem:
                problems.append(problem)
    if dual and text_encoder_dir is not None and not (Path(text_encoder_dir) / "config.json").is_file():
        problems.append(f"--text-encoder {text_encoder_dir}: no config.json there (a local pretrained BERT folder)")
    if dual and styles is not None:
        from bonescan.data.styles import STYLE_NAMES

        unknown = sorted(set(styles) - set(STYLE_NAMES))
        if unknown:
            problems.append(f"--styles: unknown house style {', '.join(unknown)}; known: {', '.join(STYLE_NAMES)}")
    if tcfg.steps < 0:
        problems.append(f"--steps {tcfg.steps}: must be 0 (initialise only) or more")
    if tcfg.batch_size < 1:
        problems.append(f"--batch-size {tcfg.batch_size}: must be 1 or more")
    multiple = mcfg.stem_stride * 2**mcfg.depth
    if tcfg.crop_rows and tcfg.crop_rows % multiple:
        problems.append(f"--crop-rows {tcfg.crop_rows}: must be a multiple of {multiple} (the U-Net's coarsest stride) or 0")
    # the data: every split the run reads, and what the model needs from it
    train_set = _load_for_preflight(data, "train", progress, problems, regions=anatomy_job(mcfg, tcfg))
    val_set = _load_for_preflight(data, "val", progress, problems)
    calibrating = dual and fallback is not None and tcfg.steps > 0
    problem = calibration_problem(val_set.masks, seed) if val_set is not None and calibrating else None
    if problem and val_set is not None:
        problems.append(f"{data}: split 'val' (readable cases: {len(val_set)}) cannot calibrate the dual-path model's "
                        f"fail-safe (--fallback): {problem}; re-split with `bonescan data manifest --data {data} --force "
                        "--val SHARE`")
    if dual and train_set is not None and tcfg.steps > 0 and not any(train_set.reports):
        problems.append(f"{data}: no case of split 'train' has a report (report.txt); the dual-path model learns from "
                        "reports (train --model unet for an image-only model)")
    if val_set is not None and calibrating and not any(val_set.reports):
        problems.append(f"{data}: no case of split 'val' has a report (report.txt); the fail-safe is calibrated with them")
    if problems:
        raise BonescanError(f"cannot train, {len(problems)} problem{'s' if len(problems) > 1 else ''} found before the first "
                            "step (nothing was trained or written):\n  - " + "\n  - ".join(problems))
    assert train_set is not None and val_set is not None
    return Preflight(train_set, val_set)


def setup_tokenizer(mcfg: ModelConfig, text_encoder_dir: str | Path | None,
                    tmp: Path) -> tuple[dict[str, str], ReportTokenizer | None]:
    """The tokenizer files the checkpoint will carry, and a tokenizer made from them.

    Args:
        mcfg: the model configuration; a U-Net (``model="unet"``) reads no text and gets none.
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
            from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # a lazy alias mypy cannot see

            BertTokenizerFast.from_pretrained(str(text_encoder_dir), local_files_only=True).save_pretrained(tmp)
            tok_files = read_tokenizer_files(tmp)
    else:
        from bonescan.tokenize import build_tokenizer

        build_tokenizer(tmp)  # every character of Chinese text, not only those of the training reports
        tok_files = read_tokenizer_files(tmp)
    if not tok_files:
        return tok_files, None
    from bonescan.tokenize import ReportTokenizer

    return tok_files, ReportTokenizer(write_tokenizer_files(tok_files, tmp / "final") / "tokenizer.json")


def load_fallback(net: BoneScanNet, ckpt_path: str | Path) -> dict[str, Any]:
    """Load a trained U-Net into the dual-path network's fallback (the fail-safe's image-only answer,
    frozen); returns what was loaded. The network's config must already carry the U-Net's config."""
    from bonescan.model.checkpoint import load_checkpoint, sha256_16

    src = load_checkpoint(ckpt_path)
    if src.cfg.model != "unet":
        raise BonescanError(f"{ckpt_path}: holds a {src.cfg.model} model; --fallback takes a U-Net checkpoint")
    if net.fallback is None:
        raise BonescanError("only the dual-path model carries a fallback U-Net")
    net.fallback.load_state_dict(src.net.segmenter.state_dict())
    return {"checkpoint": str(ckpt_path), "sha256_16": sha256_16(ckpt_path), "seed": src.metadata.get("seed"),
            "validation_dsc": (src.metadata.get("validation") or {}).get("dsc", {}).get("mean")}


def build_model(mcfg: ModelConfig, tokenizer: ReportTokenizer | None, text_encoder_dir: str | Path | None,
                init_from: str | Path | None, fallback: str | Path | None = None
                ) -> tuple[BoneScanNet, dict[str, Any] | None, dict[str, Any] | None]:
    """A fresh network (channels-last for speed on the CPU), its image path optionally copied from
    ``init_from`` and, for the dual-path model, the trained U-Net ``fallback`` bundled as the
    fail-safe's answer; returns it, what was copied and what was bundled (None when nothing was)."""
    if fallback is not None and mcfg.model == "dualpath":
        from bonescan.model.checkpoint import load_checkpoint

        mcfg.fallback = load_checkpoint(fallback).cfg
    net = BoneScanNet(mcfg, vocab_size=tokenizer.vocab_size if tokenizer else 0, pretrained_text=text_encoder_dir)
    fallback_info = load_fallback(net, fallback) if fallback is not None and net.fallback is not None else None
    init_info = None
    if init_from is not None:
        init_info = warm_start(net, init_from)
        print(f"initialised {init_info['loaded']} tensors of the image path from {init_from}")
    return net.to(memory_format=torch.channels_last), init_info, fallback_info  # type: ignore[call-overload]  # torch stubs lack memory_format


def build_optimizer(net: BoneScanNet, tcfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with up to four parameter groups: the image path and fusion at ``lr``, the text encoder at
    ``text_lr``, the scalar gains at 10 x ``lr`` without weight decay, and NamedPlaces at
    ``named_lr_scale`` x ``lr``."""
    text_params = list(net.text_encoder.parameters()) if net.text_encoder is not None else []
    # scalar gains (fusion residual scales, prior scales): Adam moves every parameter by ~lr per
    # step, so a gain that must travel from 0.1 to 1 needs a larger step to get there in time
    gains = [p for n, p in net.named_parameters() if n.endswith("scale") and p.ndim <= 1 and p.requires_grad]
    named = list(net.segmenter.named.parameters()) if net.segmenter.named is not None else []
    special = {id(p) for p in text_params + gains + named}
    # the bundled fallback U-Net is frozen: it stays the model it was trained as
    groups: list[dict[str, Any]] = [{"params": [p for p in net.parameters() if id(p) not in special and p.requires_grad],
                                     "lr": tcfg.lr}]
    if text_params:
        groups.append({"params": text_params, "lr": tcfg.text_lr})
    if gains:
        groups.append({"params": gains, "lr": tcfg.lr * 10, "weight_decay": 0.0})
    if named:
        groups.append({"params": named, "lr": tcfg.lr * tcfg.named_lr_scale})
    return torch.optim.AdamW(groups, weight_decay=tcfg.weight_decay, fused=True)


class ReportSource:
    """The reports of a training batch, tokenized: each case's report re-written in a random house
    style and augmented every time it is drawn (:func:`training_report`), replaced by the empty
    report where it is dropped, a share of its tokens turned into [UNK] (the model learns to read
    past characters it does not know). Records every token id it hands out: after training the
    ids never seen are the characters the model cannot read (tokenize.TRAINED_TOKENS_FILE)."""

    def __init__(self, tokenizer: ReportTokenizer, arrays: SplitArrays, tcfg: TrainConfig, styles: list[str] | None,
                 rng: np.random.Generator):
        self.tokenizer, self.arrays, self.tcfg, self.styles, self.rng = tokenizer, arrays, tcfg, styles, rng
        self.seen: set[int] = set()

    def batch(self, idx: np.ndarray, drop: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, torch.Tensor]:
        """(input_ids, attention_mask, no_report [B] bool, report_regions [B, classes]) for cases ``idx``;
        ``drop``: report dropout. The named bones are read from the text as written (before [UNK] noise),
        as the tokenizer step reads them in the ensemble.
        A dropped report is an empty text, or (``nonreport_share`` of them) a text that is no report
        (data.nonreport): both train as no report."""
        from bonescan.data.nonreport import nonreport

        texts = [("" if self.rng.random() >= self.tcfg.nonreport_share else nonreport(self.rng)) if d
                 else training_report(self.arrays.metas[i], self.arrays.reports[i], self.rng, self.styles, self.tcfg.text_augment,
                                      self.tcfg.report_part_share, self.tcfg.omit_lesion_share)
                 for i, d in zip(idx, drop)]
        ids, am = self.tokenizer(texts)
        length = max(int(am.sum(1).max()), 2)  # padding changes nothing (it is masked) but costs attention
        ids, am = ids[:, :length], am[:, :length]
        self.seen.update(np.unique(ids[am > 0]).tolist())
        ids = unk_noise(ids, am, self.tokenizer, self.tcfg.unk_noise, self.rng)
        no_report = np.asarray(drop, bool) | (self.tokenizer.text_stats(ids, am)[:, 0] == 0)
        regions = self.tokenizer.report_regions(texts)
        if self.tcfg.named_mismatch > 0:
            for k in np.flatnonzero(~np.asarray(drop, bool) & (self.rng.random(len(idx)) < self.tcfg.named_mismatch)):
                j = int(self.rng.integers(len(self.arrays)))
                other = training_report(self.arrays.metas[j], self.arrays.reports[j], self.rng, self.styles,
                                        self.tcfg.text_augment, self.tcfg.report_part_share)
                regions[k] = self.tokenizer.report_regions([other])[0]
        return torch.from_numpy(ids), torch.from_numpy(am), no_report, torch.from_numpy(regions)


def unk_noise(ids: np.ndarray, mask: np.ndarray, tokenizer: ReportTokenizer, share: float,
              rng: np.random.Generator) -> np.ndarray:
    """Replace ``share`` of the report tokens by [UNK]."""
    if share <= 0 or tokenizer.unk_id is None:
        return ids
    content = (mask > 0) & ~np.isin(ids, tokenizer.special_ids)
    out = ids.copy()
    out[content & (rng.random(ids.shape) < share)] = tokenizer.unk_id
    return out


class Batches:
    """Where training steps draw from: the split in memory, its reports (None for the U-Net) and
    the run's generator. Cases come in random order without replacement; a new order
    starts when fewer than a batch are left."""

    def __init__(self, arrays: SplitArrays, reports: ReportSource | None, batch_size: int, gen: torch.Generator):
        self.arrays, self.reports, self.batch_size, self.gen = arrays, reports, batch_size, gen
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

    A batch of cases, augmented (:func:`augment`; the lesion and findings masks move with the
    image), cropped to ``tcfg.crop_rows`` random rows (the counts are normalised on the whole image
    inside the network; the crop starts on a multiple of the network's coarsest stride), its
    reports drawn from the ReportSource with ``tcfg.report_dropout`` of them dropped, forward,
    Dice + CE loss plus the loss of the report's maps, backward, clipped step.
    """
    gen = batches.gen
    idx = batches.next_indices()
    img = torch.from_numpy(batches.arrays.images[idx].astype(np.float32))
    targets = torch.from_numpy(np.stack([batches.arrays.masks[idx], batches.arrays.findings[idx]], axis=1).astype(np.float32))
    img, targets = augment(img, targets, gen)
    img = img.contiguous(memory_format=torch.channels_last)
    rows = None
    if tcfg.crop_rows and tcfg.crop_rows < img.shape[2]:
        mult = net.segmenter.row_multiple
        r0 = int(torch.randint(0, (img.shape[2] - tcfg.crop_rows) // mult + 1, (1,), generator=gen)) * mult
        rows = (r0, r0 + tcfg.crop_rows)
        targets = targets[:, :, r0 : r0 + tcfg.crop_rows]
    msk, findings = targets[:, :1], targets[:, 1:]
    no_report = np.ones(len(idx), dtype=bool)
    if batches.reports is not None:
        drop = torch.rand(len(idx), generator=gen).numpy() < tcfg.report_dropout
        ids, am, no_report, regions = batches.reports.batch(idx, drop)
        logits, grounding = net(img, ids, am, rows=rows, return_grounding=True, report_regions=regions)
    else:
        logits, grounding = net(img, rows=rows, return_grounding=True)
    loss = loss_fn(logits, msk)
    for g in grounding:
        loss = loss + tcfg.grounding_weight * grounding_loss(g, msk, findings, torch.from_numpy(no_report),
                                                              mention_weight=tcfg.mention_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 5.0)
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


def train_anatomy(net: BoneScanNet, train_set: SplitArrays, tcfg: TrainConfig, seed: int, progress: bool) -> dict[str, Any]:
    """The U-Net's anatomy network on the skeleton's region label maps.

    Whole images (which vertebra is T7 is counted from landmarks far away), counts jittered as in
    :func:`augment` (Poisson at 50-100 %) but not shifted; the target of a cell of the anatomy grid
    (``contract.REGION_STRIDE`` pixels) is the label at its centre; cross-entropy per view with the
    background weighted ``tcfg.anatomy_background_weight`` (three cells in four are background: at full
    weight the bones' classes learn slowly); one-cycle learning rate. Only the anatomy network's
    parameters move: the lesion logits are those of the segmentation training.
    """
    from tqdm import tqdm

    seg = net.segmenter
    anat = seg.anatomy
    assert anat is not None
    regions = train_set.require_regions()
    s = C.REGION_STRIDE
    target = torch.from_numpy(np.ascontiguousarray(regions[:, :, s // 2 :: s, s // 2 :: s]).astype(np.int64))
    weight = torch.ones(anat.n_classes)
    weight[0] = tcfg.anatomy_background_weight
    gen = torch.Generator().manual_seed(seed + 26)
    torch.manual_seed(seed + 26)
    opt = torch.optim.AdamW(anat.parameters(), lr=tcfg.anatomy_lr, weight_decay=tcfg.weight_decay)
    total = tcfg.anatomy_steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.anatomy_lr, total_steps=max(total, 1), pct_start=0.1)
    seg.eval()
    anat.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(total), desc="train anatomy", unit="step", disable=not progress)
    for _ in bar:
        idx = torch.randint(0, len(train_set), (tcfg.anatomy_batch,), generator=gen).numpy()
        img = torch.from_numpy(train_set.images[idx].astype(np.float32))
        level = torch.empty(len(idx), 1, 1, 1).uniform_(0.5, 1.0, generator=gen)
        img = torch.poisson(img * level, generator=gen)
        logits = anat(normalize_counts(img).contiguous(memory_format=torch.channels_last))  # [B, 2, K, h, w]
        loss = F.cross_entropy(logits.flatten(0, 1), target[idx].flatten(0, 1), weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    anat.eval()
    return {"steps": total, "batch": tcfg.anatomy_batch, "lr": tcfg.anatomy_lr, "background_weight": tcfg.anatomy_background_weight,
            "final_loss": float(np.mean(losses[-20:])) if losses else None, "seconds": round(time.perf_counter() - t0, 1)}


def pretrain_text_encoder(net: BoneScanNet, tokenizer: ReportTokenizer, tcfg: TrainConfig, styles: list[str] | None,
                          seed: int, progress: bool) -> tuple[dict[str, Any] | None, set[int]]:
    """Masked-language-model pretraining of the text encoder on a fresh corpus of generated reports
    in ``styles`` every step (model.text_pretrain); returns its record and the token ids it saw."""
    if net.text_encoder is None or tcfg.pretrain_text_steps <= 0 or tcfg.steps <= 0:
        return None, set()
    from bonescan.data.corpus import report_corpus
    from bonescan.model.text_pretrain import describe_stage, pretrain_text

    def corpus(n: int, rng: np.random.Generator) -> list[str]:
        texts = report_corpus(n, int(rng.integers(2**31)), styles)
        return [training_report(None, t, rng, None, tcfg.text_augment) for t in texts]

    info = pretrain_text(net.text_encoder, tokenizer, corpus, tcfg.pretrain_text_steps, tcfg.pretrain_text_batch,
                         lr=tcfg.pretrain_text_lr, seed=seed, progress=progress)
    seen = set(info.pop("token_ids_seen"))
    print(f"text encoder pretrained as a masked language model: {describe_stage(info)}")
    return info, seen


def pooled_cells(masks: np.ndarray, hw: tuple[int, int], chunk: int = 64) -> torch.Tensor:
    """Masks [N, H, W] -> [N, 1, h, w] float: 1 where any pixel of the cell is set."""
    import torch.nn.functional as F

    out = [F.adaptive_max_pool2d(torch.from_numpy(masks[i : i + chunk].astype(np.float32))[:, None], hw)
           for i in range(0, len(masks), chunk)]
    return torch.cat(out) if out else torch.zeros(0, 1, *hw)


def pretrain_report_maps(net: BoneScanNet, reports: ReportSource, tcfg: TrainConfig, seed: int,
                         progress: bool) -> dict[str, Any] | None:
    """Train the text encoder and the report's maps (model.fusion.TextPrior) from the reports
    alone: each step a batch of training cases' reports (re-written and augmented as in
    training, ``tcfg.report_dropout`` of them empty), their maps against the lesion and findings
    masks pooled to the maps' cells (:func:`grounding_loss`). No image goes through the network,
    so a step costs a small fraction of a segmentation step: the report path learns where a
    report points before the segmenter learns to trust it. Returns the record (loss curve,
    seconds); None when there is nothing to train."""
    seg = net.segmenter
    if net.text_encoder is None or seg.prior is None or tcfg.pretrain_maps_steps <= 0 or tcfg.steps <= 0:
        return None
    from tqdm import tqdm

    from bonescan.model.text_pretrain import (
        describe_stage,
        stage_record,
        take_step,
        warmup_linear,
        warmup_steps,
        weight_sample,
        weights_moved,
    )

    steps, arrays = tcfg.pretrain_maps_steps, reports.arrays
    lesion, findings = pooled_cells(arrays.masks, seg.prior.hw), pooled_cells(arrays.findings, seg.prior.hw)
    params = list(net.text_encoder.parameters()) + list(seg.prior.parameters())
    opt = torch.optim.AdamW(params, lr=tcfg.pretrain_maps_lr, weight_decay=0.01, fused=True)
    sched = warmup_linear(opt, steps)
    gen = torch.Generator().manual_seed(seed + 1)
    net.text_encoder.train()
    seg.prior.train()
    losses: list[float] = []
    lrs: list[float] = []
    before = weight_sample(params)
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc="pretrain report maps", unit="step", disable=not progress)
    for step in bar:
        idx = torch.randint(len(arrays), (tcfg.pretrain_maps_batch,), generator=gen).numpy()
        drop = torch.rand(len(idx), generator=gen).numpy() < tcfg.report_dropout
        ids, am, no_report, _ = reports.batch(idx, drop)
        maps, _ = seg.report_maps(net.text_encoder(ids, am), am)
        loss = grounding_loss(maps, lesion[idx], findings[idx], torch.from_numpy(no_report), mention_weight=tcfg.mention_weight)
        lrs.append(float(opt.param_groups[0]["lr"]))
        losses.append(take_step(loss, opt, sched, params))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    net.eval()
    info = {**stage_record(losses, lrs, tcfg.pretrain_maps_lr, warmup_steps(steps), weights_moved(before, params),
                           time.perf_counter() - t0), "batch_size": tcfg.pretrain_maps_batch}
    print(f"report maps pretrained from the reports alone: {describe_stage(info)}")
    return info


def finish_text_encoder(net: BoneScanNet, tokenizer: ReportTokenizer, tok_files: dict[str, str], seen: set[int]) -> int:
    """After training a text encoder from scratch: characters no training text held keep random
    embeddings; give them the embedding of [UNK] (which the [UNK] noise trained), and write the ids
    that were trained next to the tokenizer (tokenize.TRAINED_TOKENS_FILE): their share in a report
    is one of the fail-safe's signals. Returns how many ids were trained."""
    from bonescan.tokenize import TRAINED_TOKENS_FILE

    assert net.text_encoder is not None
    emb = net.text_encoder.bert.get_input_embeddings().weight
    known = np.zeros(tokenizer.vocab_size, bool)
    known[sorted(i for i in seen if 0 <= i < tokenizer.vocab_size)] = True
    known[tokenizer.special_ids] = True
    with torch.no_grad():
        emb[torch.from_numpy(~known)] = emb[tokenizer.unk_id].clone()
    known[tokenizer.unk_id] = False
    tok_files[TRAINED_TOKENS_FILE] = json.dumps({"ids": np.nonzero(known)[0].tolist(),
                                                 "note": "token ids the text encoder was trained on; others read as [UNK]"})
    return int(known.sum())


def checkpoint_metadata(*, command: str | None, config_name: str, mcfg: ModelConfig, tcfg: TrainConfig, seed: int,
                        data: Path, train_set: SplitArrays, val_set: SplitArrays, result: FitResult,
                        text_encoder_dir: str | Path | None, tok_files: dict[str, str], init_info: dict[str, Any] | None,
                        validation: dict[str, Any], t_start: float, fallback_info: dict[str, Any] | None = None,
                        pretraining: dict[str, Any] | None = None, styles: list[str] | None = None,
                        failsafe: dict[str, Any] | None = None, maps_pretraining: dict[str, Any] | None = None) -> dict[str, Any]:
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
        "text_pretraining": pretraining,
        "maps_pretraining": maps_pretraining,
        "report_styles": styles,
        "init_from": init_info,
        "fallback": fallback_info,
        "failsafe": failsafe,
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
    fallback: str | Path | None = None,
    styles: list[str] | None = None,
) -> Path:
    """Train and save a checkpoint; returns its path. Validation metrics go into the metadata.

    fallback: a trained U-Net checkpoint, bundled into the dual-path model as the fail-safe's
    image-only answer (without it the dual-path model carries an untrained U-Net and its fail-safe
    cannot be calibrated: only for cost measurements). styles: the house styles synthetic cases'
    reports are re-written in (default all; ``bench text-gain`` leaves one out).
    """
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    torch.set_num_threads(tcfg.threads)
    data = Path(data)
    # everything the run needs, before its first step: a problem found after minutes of training saves nothing
    loaded = preflight(data, out, mcfg, tcfg, text_encoder_dir=text_encoder_dir, init_from=init_from, fallback=fallback,
                       styles=styles, seed=seed, progress=progress)
    train_set, val_set = loaded.train_set, loaded.val_set
    if anatomy_job(mcfg, tcfg) and train_set.regions is None:
        # a hospital's data carries no region maps: the U-Net has no anatomy output then (its graph
        # answers background everywhere, lesions are not named by bone)
        print(f"note: {len(train_set.regions_missing)} of {len(train_set)} training cases have no regions.png: the U-Net is "
              "trained without its anatomy output (lesions will not be named by bone)", file=sys.stderr)
        mcfg = ModelConfig.from_dict({**mcfg.to_dict(), "anatomy": False})
    if mcfg.model == "dualpath" and tcfg.rerender_reports:
        from bonescan.data.styles import STYLES

        styles = list(styles) if styles is not None else list(STYLES)
    else:
        styles = None

    with tempfile.TemporaryDirectory(prefix="bonescan-tok-") as tmp:
        tok_files, tokenizer = setup_tokenizer(mcfg, text_encoder_dir, Path(tmp))
        net, init_info, fallback_info = build_model(mcfg, tokenizer, text_encoder_dir, init_from, fallback)
        pretraining, seen = pretrain_text_encoder(net, tokenizer, tcfg, styles, seed, progress) if tokenizer else (None, set())
        reports = ReportSource(tokenizer, train_set, tcfg, styles, rng) if tokenizer is not None else None
        maps_pretraining = pretrain_report_maps(net, reports, tcfg, seed, progress) if reports is not None else None
        opt = build_optimizer(net, tcfg)
        total = [max(tcfg.steps, 0)]  # the schedule's length; a time budget shrinks it
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg.warmup_steps, total))
        batches = Batches(train_set, reports, tcfg.batch_size, torch.Generator().manual_seed(seed))
        validate = partial(validation_dsc, net, mcfg, tok_files, out, val_set) if len(val_set) else None
        result = fit(net, opt, sched, total, batches, tcfg, validate, progress, f"train {mcfg.model}")
        anatomy = None
        if anatomy_job(mcfg, tcfg):
            with torch.random.fork_rng():  # its own draws: what follows in this run is as without it
                anatomy = train_anatomy(net, train_set, tcfg, seed, progress)
        net = net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # torch stubs lack memory_format
        if tokenizer is not None and reports is not None and text_encoder_dir is None:
            finish_text_encoder(net, tokenizer, tok_files, seen | reports.seen)

        # an initialise-only checkpoint (--steps 0, e.g. the paper configuration for cost benchmarks) is not validated
        ckpt = Checkpoint(net, mcfg, tok_files, {}, Path(out))
        trained = len(val_set) > 0 and result.steps > 0
        failsafe, val = None, {}
        if trained and net.fallback is not None and fallback_info is not None:
            # its pass with the true reports (re-written in the training styles) gives the validation metrics too
            # the reports hospitals send: re-written in the training styles, a share as terse as training's (impression or findings only)
            texts = rewrite_split(val_set.metas, val_set.reports, styles, seed, tcfg.report_part_share)
            failsafe = calibrate_failsafe(ckpt, val_set, texts, seed=seed, progress=progress)
            val = {"summary": failsafe.pop("validation")}
        elif trained:
            val = evaluate_arrays(ckpt, val_set, progress=progress)
        metadata = checkpoint_metadata(command=command, config_name=config_name, mcfg=mcfg, tcfg=tcfg, seed=seed, data=data,
                                       train_set=train_set, val_set=val_set, result=result, text_encoder_dir=text_encoder_dir,
                                       tok_files=tok_files, init_info=init_info, validation=val, t_start=t_start,
                                       fallback_info=fallback_info, pretraining=pretraining, styles=styles, failsafe=failsafe,
                                       maps_pretraining=maps_pretraining)
        metadata["anatomy_training"] = anatomy
        path = save_checkpoint(out, net, tok_files, metadata)
    v = metadata["validation"]
    took = f"{result.steps} steps in {result.seconds / 60:.1f} min"
    if 0 < result.steps < tcfg.warmup_steps:
        from bonescan.model.text_pretrain import lr_state

        took += f"; {lr_state(result.steps, tcfg.warmup_steps)}"
    if v:
        print(f"saved {path}: val DSC {v['dsc']['mean']:.4f} (sd {v['dsc']['sd']:.3f}, {v['scans']} scans), {took}")
    else:
        print(f"saved {path}: {took}")
    return path
