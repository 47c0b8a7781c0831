"""Segmentation metrics per scan and over a split.

Conventions (written into every evaluation JSON):

* DSC and IoU per scan come from MONAI (``compute_dice`` / ``compute_iou``, ``ignore_empty=False``):
  a scan with no lesion scores 1.0 when the prediction is empty too and 0.0 otherwise, so false
  positives on negative scans count;
* pixel precision is averaged over scans with a non-empty prediction, pixel recall over scans with
  lesions (undefined values are left out, not set to 0 or 1); pooled (micro) values are given too;
* lesion level: ground-truth lesions are 8-connected components of the mask; one is detected when
  any predicted pixel touches it; a predicted component touching no lesion is a false positive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import label

from bonescan.contract import EIGHT


def dsc(a: np.ndarray, b: np.ndarray) -> float:
    """DSC between two binary masks with numpy alone; 1.0 when both are empty (the same masks).

    For comparing two predictions (export parity); the per-scan metrics against the ground truth
    come from MONAI (:func:`scan_metrics`) and agree with this one.
    """
    a = np.asarray(a).astype(bool)
    b = np.asarray(b).astype(bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def _monai(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    import torch
    from monai.metrics import compute_dice, compute_iou

    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    g = torch.from_numpy(gt.astype(np.float32))[None, None]
    dice = float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])
    iou = float(compute_iou(p, g, include_background=True, ignore_empty=False)[0, 0])
    return dice, iou


def scan_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """pred, gt: [H, W] binary masks -> per-scan metrics."""
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and mask {gt.shape} differ in shape")
    dsc, iou = _monai(pred, gt)
    tp = int((pred & gt).sum())
    fp = int((pred & ~gt).sum())
    fn = int((~pred & gt).sum())
    gl, n_gt = label(gt, structure=EIGHT)
    pl, n_pred = label(pred, structure=EIGHT)
    detected = len(np.unique(gl[pred & (gl > 0)])) if n_gt else 0
    touching = len(np.unique(pl[gt & (pl > 0)])) if n_pred else 0
    return {
        "dsc": dsc,
        "iou": iou,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "gt_lesions": int(n_gt),
        "detected_lesions": int(detected),
        "pred_components": int(n_pred),
        "fp_components": int(n_pred - touching),
    }


def _mean_sd(values: list[float]) -> dict[str, float | int | None]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def summarize(per_scan: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-scan metrics over a split."""
    tp = sum(s["tp"] for s in per_scan)
    fp = sum(s["fp"] for s in per_scan)
    fn = sum(s["fn"] for s in per_scan)
    n_gt = sum(s["gt_lesions"] for s in per_scan)
    positives = [s for s in per_scan if s["gt_lesions"] > 0]
    negatives = [s for s in per_scan if s["gt_lesions"] == 0]
    return {
        "scans": len(per_scan),
        "dsc": _mean_sd([s["dsc"] for s in per_scan]),
        "dsc_positive_scans": _mean_sd([s["dsc"] for s in positives]),
        "negative_scans_clean": (sum(s["pred_components"] == 0 for s in negatives) / len(negatives)) if negatives else None,
        "iou": _mean_sd([s["iou"] for s in per_scan]),
        "precision": _mean_sd([s["precision"] for s in per_scan]),
        "recall": _mean_sd([s["recall"] for s in per_scan]),
        "pixel_precision_pooled": tp / (tp + fp) if tp + fp else None,
        "pixel_recall_pooled": tp / (tp + fn) if tp + fn else None,
        "dsc_pooled": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "lesion_sensitivity": (sum(s["detected_lesions"] for s in per_scan) / n_gt) if n_gt else None,
        "fp_per_scan": sum(s["fp_components"] for s in per_scan) / max(len(per_scan), 1),
        "conventions": __doc__.split("Conventions (written into every evaluation JSON):")[1].strip() if __doc__ else "",
    }
