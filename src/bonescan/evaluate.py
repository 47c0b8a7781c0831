"""``bonescan eval``: segmentation quality of a checkpoint on a split, with true, shuffled or no reports.

``--reports shuffled`` gives every scan another scan's report (a fixed derangement), ``empty``
gives none: if the dual-path model's gain comes from the text, it must vanish with shuffled
reports and fall back to U-Net level without reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bonescan.contract import THRESHOLD
from bonescan.data.arrays import SplitArrays, load_split, manifest_hash
from bonescan.errors import BonescanError
from bonescan.metrics import scan_metrics, summarize
from bonescan.postprocess import postprocess

REPORT_MODES = ("true", "shuffled", "empty")


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation with no fixed point (n >= 2): scan i gets the report of scan perm[i]."""
    if n < 2:
        raise BonescanError(f"shuffled reports need two scans or more (every scan gets another scan's report); got {n}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    perm = np.empty(n, dtype=int)
    perm[order] = np.roll(order, 1)
    return perm


def select_reports(reports: list[str], mode: str, seed: int = 0) -> list[str]:
    if mode == "true":
        return list(reports)
    if mode == "empty":
        return [""] * len(reports)
    if mode == "shuffled":
        perm = derangement(len(reports), seed)
        return [reports[j] for j in perm]
    raise ValueError(f"reports must be one of {REPORT_MODES}, got {mode!r}")


def evaluate_arrays(ckpt, arrays: SplitArrays, reports: str = "true", seed: int = 0, batch: int = 4, progress: bool = True,
                    threshold: float = THRESHOLD) -> dict[str, Any]:
    """ckpt: Checkpoint or Predictor; arrays: a split in memory -> {"per_scan": [...], "summary": {...}}."""
    from tqdm import tqdm

    from bonescan.model.checkpoint import Predictor

    pred = ckpt if isinstance(ckpt, Predictor) else Predictor(ckpt)
    texts = select_reports(arrays.reports, reports, seed)
    per_scan = []
    for i in tqdm(range(0, len(arrays), batch), desc=f"eval ({reports} reports)", unit="batch", disable=not progress, leave=False):
        imgs = arrays.images[i : i + batch].astype(np.float32)
        logits = pred.logits(imgs, texts[i : i + batch])
        masks, _, _ = postprocess(logits, np.array(arrays.spacings[i : i + batch], np.float32), threshold)
        for k in range(len(imgs)):
            m = scan_metrics(masks[k, 0], arrays.masks[i + k])
            m["case_id"] = arrays.ids[i + k]
            per_scan.append(m)
    return {"reports": reports, "threshold": threshold, "per_scan": per_scan, "summary": summarize(per_scan)}


def evaluate(checkpoint: str | Path, data: str | Path, split: str = "test", reports: str = "true",
             json_out: str | Path | None = None, seed: int = 0, progress: bool = True, n: int | None = None) -> dict[str, Any]:
    """``n``: only the first n cases of the split (None: all)."""
    from bonescan.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    arrays = load_split(data, split, progress, n=n)
    if reports == "shuffled" and len(arrays) < 2:
        raise BonescanError(f"--reports shuffled needs two scans or more (every scan gets another scan's report); "
                            f"split {split!r} of {data} gives {len(arrays)}")
    res = evaluate_arrays(ckpt, arrays, reports, seed, progress=progress)
    res.update({
        "checkpoint": str(checkpoint),
        "model": ckpt.cfg.model,
        "fusion": ckpt.cfg.fusion if ckpt.cfg.model == "dualpath" else None,
        "train_seed": ckpt.metadata.get("seed"),
        "data": str(data),
        "split": split,
        "data_manifest_sha256_16": manifest_hash(Path(data)),
        "skipped_cases": [str(e) for e in arrays.errors],
    })
    s = res["summary"]
    print(f"{ckpt.cfg.model:8s} reports={reports:8s} {split}: DSC {s['dsc']['mean']:.4f} +- {s['dsc']['sd']:.4f} "
          f"IoU {s['iou']['mean']:.4f} lesion sens {s['lesion_sensitivity'] or 0:.3f} FP/scan {s['fp_per_scan']:.2f} "
          f"({s['scans']} scans)")
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(res, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return res
