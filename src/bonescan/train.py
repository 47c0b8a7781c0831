"""``bonescan train``: fit the dual-path model or the U-Net baseline on a data folder."""

from __future__ import annotations

import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bonescan.data.arrays import load_split, manifest_hash
from bonescan.errors import BonescanError
from bonescan.model.checkpoint import Checkpoint, read_tokenizer_files, save_checkpoint, write_tokenizer_files
from bonescan.model.config import ModelConfig, TrainConfig
from bonescan.model.network import BoneScanNet


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
    from monai.losses import DiceCELoss
    from tqdm import tqdm

    from bonescan.evaluate import evaluate_arrays

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(tcfg.threads)
    data = Path(data)
    train_set = load_split(data, "train", progress)
    val_set = load_split(data, "val", progress)

    with tempfile.TemporaryDirectory(prefix="bonescan-tok-") as tmp:
        if mcfg.model == "dualpath":
            if text_encoder_dir is not None:
                tok_files = read_tokenizer_files(text_encoder_dir)
                if "tokenizer.json" not in tok_files:
                    from transformers import BertTokenizerFast

                    BertTokenizerFast.from_pretrained(str(text_encoder_dir), local_files_only=True).save_pretrained(tmp)
                    tok_files = read_tokenizer_files(tmp)
            else:
                from bonescan.tokenize import train_wordpiece

                train_wordpiece(train_set.reports, tmp)
                tok_files = read_tokenizer_files(tmp)
        else:
            tok_files = {}
        tokenizer = None
        if tok_files:
            from bonescan.tokenize import ReportTokenizer

            tokenizer = ReportTokenizer(write_tokenizer_files(tok_files, Path(tmp) / "final") / "tokenizer.json")

        net = BoneScanNet(mcfg, vocab_size=tokenizer.vocab_size if tokenizer else 0, pretrained_text=text_encoder_dir)
        init_info = None
        if init_from is not None:
            init_info = warm_start(net, init_from)
            print(f"initialised {init_info['loaded']} tensors of the image path from {init_from}")
        net = net.to(memory_format=torch.channels_last)
        text_params = list(net.text_encoder.parameters()) if net.text_encoder is not None else []
        # scalar gains (fusion residual scales, prior scales): Adam moves every parameter by ~lr per
        # step, so a gain that must travel from 0.1 to 1 needs a larger step to get there in time
        gains = [p for n, p in net.named_parameters() if n.endswith("scale") and p.ndim <= 1]
        special = {id(p) for p in text_params + gains}
        groups = [{"params": [p for p in net.parameters() if id(p) not in special], "lr": tcfg.lr}]
        if text_params:
            groups.append({"params": text_params, "lr": tcfg.text_lr})
        if gains:
            groups.append({"params": gains, "lr": tcfg.lr * 10, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, weight_decay=tcfg.weight_decay)
        total = [max(tcfg.steps, 0)]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg.warmup_steps, total))
        loss_fn = DiceCELoss(sigmoid=True, batch=True)

        if tokenizer is not None:
            ids_all, mask_all = tokenizer(train_set.reports)
            empty_ids, empty_mask = tokenizer([""])
        gen = torch.Generator().manual_seed(seed)
        n = len(train_set)
        order = torch.randperm(n, generator=gen)
        pos = 0
        losses: list[float] = []
        net.train()
        bar = tqdm(total=tcfg.steps, desc=f"train {mcfg.model}", unit="step", disable=not progress)
        step = 0
        t_loop = time.perf_counter()
        while step < total[0]:
            if pos + tcfg.batch_size > n:
                order = torch.randperm(n, generator=gen)
                pos = 0
            idx = order[pos : pos + tcfg.batch_size].numpy()
            pos += tcfg.batch_size
            img = torch.from_numpy(train_set.images[idx].astype(np.float32))
            msk = torch.from_numpy(train_set.masks[idx].astype(np.float32))[:, None]
            img, msk = augment(img, msk, gen)
            img = img.contiguous(memory_format=torch.channels_last)
            rows = None
            if tcfg.crop_rows and tcfg.crop_rows < img.shape[2]:
                mult = net.segmenter.row_multiple
                r0 = int(torch.randint(0, (img.shape[2] - tcfg.crop_rows) // mult + 1, (1,), generator=gen)) * mult
                rows = (r0, r0 + tcfg.crop_rows)
                msk = msk[:, :, r0 : r0 + tcfg.crop_rows]
            drop = np.zeros(len(idx), dtype=bool)
            if tokenizer is not None:
                ids = ids_all[idx].copy()
                am = mask_all[idx].copy()
                drop = torch.rand(len(idx), generator=gen).numpy() < tcfg.report_dropout
                ids[drop] = empty_ids[0]
                am[drop] = empty_mask[0]
                logits, grounding = net(img, torch.from_numpy(ids), torch.from_numpy(am), rows=rows, return_grounding=True)
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
            losses.append(float(loss.detach()))
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if tcfg.eval_every and step % tcfg.eval_every == 0 and step < total[0] and len(val_set):
                net.eval()
                sub = val_set.subset(50)
                r = evaluate_arrays(Checkpoint(net, mcfg, tok_files, {}, Path(out)), sub, progress=False)["summary"]
                bar.write(f"step {step}: val[{len(sub)}] DSC {r['dsc']['mean']:.4f} loss {np.mean(losses[-20:]):.3f} "
                          f"({(time.perf_counter() - t_loop) / 60:.1f} min)")
                net.train()
            if tcfg.max_minutes and step == 5:
                per_step = (time.perf_counter() - t_loop) / 5
                fit = int(tcfg.max_minutes * 60 / per_step)
                if fit < total[0]:
                    total[0] = max(fit, tcfg.warmup_steps + 1)
                    bar.total = total[0]
                    bar.write(f"time budget {tcfg.max_minutes} min: {total[0]} steps at {per_step:.2f} s/step")
        bar.close()
        train_seconds = time.perf_counter() - t_loop
        net.eval()
        net = net.to(memory_format=torch.contiguous_format)

        ckpt = Checkpoint(net, mcfg, tok_files, {}, Path(out))
        # an initialise-only checkpoint (--steps 0, e.g. the paper configuration for cost benchmarks) is not validated
        val = evaluate_arrays(ckpt, val_set, progress=progress) if len(val_set) and step > 0 else {}
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
            "steps_done": step,
            "final_loss_mean20": float(np.mean(losses[-20:])) if losses else None,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.perf_counter() - t_start, 1),
            "text_encoder": str(text_encoder_dir) if text_encoder_dir else ("trained from scratch" if tok_files else None),
            "init_from": init_info,
            "validation": val.get("summary", {}),
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        }
        metadata = json.loads(json.dumps(metadata))  # plain data only: checkpoints load with weights_only=True
        path = save_checkpoint(out, net, tok_files, metadata)
    v = metadata["validation"]
    if v:
        print(f"saved {path}: val DSC {v['dsc']['mean']:.4f} (sd {v['dsc']['sd']:.3f}, {v['scans']} scans), "
              f"{step} steps in {train_seconds / 60:.1f} min")
    else:
        print(f"saved {path}: {step} steps in {train_seconds / 60:.1f} min")
    return path


def describe(path: str | Path) -> str:
    from bonescan.model.checkpoint import load_checkpoint

    c = load_checkpoint(path)
    return json.dumps({"config": c.cfg.to_dict(), "metadata": c.metadata}, ensure_ascii=False, indent=1)
