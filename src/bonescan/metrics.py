"""Segmentation metrics per scan and over a split.

Conventions (written into every evaluation JSON):

* DSC and IoU per scan come from MONAI (``compute_dice`` / ``compute_iou``, ``ignore_empty=False``):
  a scan with no lesion scores 1.0 when the prediction is empty too and 0.0 otherwise, so false
  positives on negative scans count;
* pixel precision is averaged over scans with a non-empty prediction, pixel recall over scans with
  lesions (undefined values are left out, not set to 0 or 1); pooled (micro) values are given too;
* lesion level: ground-truth lesions are 8-connected components of the mask; one is detected when
  any predicted pixel touches it; a predicted component touching no lesion is a false positive;
* FROC (lesion detection over all operating points, as LUNA16 / Camelyon16 report it): an answer's
  lesion candidates are the 8-connected components (of at least MIN_LESION_PIXELS pixels) of its
  probability map at FROC_CANDIDATE_THRESHOLD, each scored by its highest probability; a candidate
  the answer itself does not give (no pixel of it in the answer's mask) is scored just below the
  answer's threshold. A ground-truth lesion is found at a score level when a candidate of at least
  that score touches it; every other candidate at that level is a false positive. The curve is
  sensitivity against false positives per scan (MONAI's compute_froc_curve_data); the CPM is the
  mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan (LUNA16), linear
  between the curve's points and held at its last sensitivity beyond its highest false-positive rate. The answer's own operating point is its lesion sensitivity and
  false positives per scan above;
* faint lesions (synthetic data): the true lesions whose generator contrast is in the lowest third of the
  split's (:func:`faint_cut`, from the truth alone); their sensitivity is reported beside the overall one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import label

from bonescan.contract import EIGHT, MIN_LESION_PIXELS, THRESHOLD

#: probability at which lesion candidates for the FROC curve are cut out of a probability map: low,
#: so the curve reaches operating points far below and above the answer's own
FROC_CANDIDATE_THRESHOLD = 0.1
#: false positives per scan at which the CPM averages sensitivity (LUNA16's competition performance metric)
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: the score of a candidate the answer does not give: below its threshold, above every lower candidate
_BELOW = np.nextafter(np.float32(THRESHOLD), np.float32(0))


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


def froc_scan(gt: np.ndarray, prob: np.ndarray, answer: np.ndarray | None = None,
              threshold: float = THRESHOLD) -> dict[str, list[float]]:
    """One scan's FROC scores (see the module docstring).

    Args:
        gt: [H, W] binary ground-truth mask.
        prob: [H, W] the answer's probability map.
        answer: [H, W] the answer's binary mask (default: ``prob >= threshold``): a candidate with no
            pixel in it is scored just below ``threshold``.

    Returns:
        ``{"tp": [...], "fp": [...]}``: per ground-truth lesion the highest score of a candidate
        touching it (0.0: none does), and the scores of the candidates touching no lesion.
    """
    from scipy.ndimage import label

    g = np.asarray(gt).astype(bool)
    p = np.asarray(prob, np.float32)
    cand, n = label(p >= FROC_CANDIDATE_THRESHOLD, structure=EIGHT)
    gl, n_gt = label(g, structure=EIGHT)
    if n == 0:
        return {"tp": [0.0] * n_gt, "fp": []}
    idx = cand.ravel()
    sel = idx > 0
    size = np.bincount(idx, minlength=n + 1)[1:]
    score = np.zeros(n, np.float32)
    np.maximum.at(score, idx[sel] - 1, p.ravel()[sel])
    a = (p >= threshold) if answer is None else np.asarray(answer).astype(bool)
    given = np.bincount(idx[sel & a.ravel()], minlength=n + 1)[1:] > 0
    score = np.where(given, score, np.minimum(score, _BELOW))
    valid = size >= MIN_LESION_PIXELS
    both = (cand > 0) & (gl > 0)
    tp = np.zeros(n_gt, np.float32)
    touches = np.zeros(n, bool)
    if both.any():
        c, l_ = cand[both] - 1, gl[both] - 1
        ok = valid[c]
        np.maximum.at(tp, l_[ok], score[c[ok]])
        touches[c] = True
    fp = score[valid & ~touches]
    return {"tp": [float(x) for x in tp], "fp": [float(x) for x in fp]}


def froc(per_scan: list[dict[str, Any]], rates: tuple[float, ...] = FROC_FP_RATES) -> dict[str, Any] | None:
    """The FROC curve and CPM over scans whose rows carry ``froc_tp`` / ``froc_fp`` (:func:`scan_metrics`
    with ``prob``); None when a row has none, or no scan has a lesion.

    The curve's points come from MONAI (``compute_froc_curve_data``, one per score level); where
    several levels give the same false-positive rate the best sensitivity is kept, so the curve is a
    function and the interpolation at a rate well defined (MONAI's ``compute_froc_score`` interpolates
    over the raw points, whose repeated rates make it depend on their order)."""
    if not per_scan or any("froc_tp" not in s for s in per_scan):
        return None
    from monai.metrics import compute_froc_curve_data

    tp = np.asarray([x for s in per_scan for x in s["froc_tp"]], np.float64)
    fp = np.asarray([x for s in per_scan for x in s["froc_fp"]] + [0.0], np.float64)  # a 0 keeps the lowest score a level
    if len(tp) == 0:
        return None
    fps, sens = compute_froc_curve_data(fp, tp, len(tp), len(per_scan))
    xs = np.unique(fps)
    best = np.array([sens[fps == x].max() for x in xs])
    curve = {"fp_per_scan": [float(x) for x in xs], "sensitivity": [float(y) for y in np.maximum.accumulate(best)]}
    at = {f"{r:g}": sensitivity_at(curve, r) for r in rates}
    return {"cpm": float(np.mean(list(at.values()))), "sensitivity_at": at, "curve": curve}


def sensitivity_at(curve: dict[str, Any], fp_per_scan: float) -> float:
    """A FROC curve's sensitivity at a false-positive rate: linear between its points, its last
    sensitivity beyond its highest rate (the CPM's interpolation)."""
    return float(np.interp(fp_per_scan, curve["fp_per_scan"], curve["sensitivity"]))


def scan_metrics(pred: np.ndarray, gt: np.ndarray, prob: np.ndarray | None = None) -> dict[str, Any]:
    """pred, gt: [H, W] binary masks -> per-scan metrics; with the answer's probability map ``prob``
    also its FROC scores (``froc_tp``, ``froc_fp``: :func:`froc_scan`)."""
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
    out: dict[str, Any] = {
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
    if prob is not None:
        f = froc_scan(gt, prob, pred)
        out["froc_tp"], out["froc_fp"] = f["tp"], f["fp"]
    return out


def faint_cut(metas: list[dict[str, Any] | None]) -> float | None:
    """The contrast at or below which a true lesion counts as **faint**: the lowest third of the lesions'
    contrasts in these cases' ground truth (``meta.json``). It depends on the truth only, never on an answer;
    None when no case records contrasts (real data)."""
    c = sorted(les["contrast"] for m in metas for les in (m or {}).get("lesions", []) if "contrast" in les)
    return float(c[len(c) // 3]) if c else None


def faint_detected(pred: np.ndarray, gt: np.ndarray, meta: dict[str, Any] | None, cut: float) -> tuple[int, int]:
    """(faint true lesions, of them detected): the true lesions (8-connected components of ``gt``) whose
    generator contrast (``meta["lesions"]``) is at most ``cut``, each found by its centre; detected = the answer
    touches it (the lesion-sensitivity rule)."""
    gl, _ = label(np.asarray(gt, bool), structure=EIGHT)
    hit = np.unique(gl[np.asarray(pred, bool) & (gl > 0)])
    n = k = 0
    for les in (meta or {}).get("lesions", []):
        if les.get("contrast", np.inf) > cut:
            continue
        y = min(max(int(round(les["center"][0])), 0), gl.shape[0] - 1)
        x = min(max(int(round(les["center"][1])), 0), gl.shape[1] - 1)
        if gl[y, x]:
            n += 1
            k += int(gl[y, x] in hit)
    return n, k


def _mean_sd(values: list[float]) -> dict[str, float | int | None]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def _faint(per_scan: list[dict[str, Any]]) -> dict[str, Any]:
    """Faint-lesion sensitivity when the rows carry it (``faint_lesions`` / ``faint_detected``: :func:`faint_detected`)."""
    rows = [s for s in per_scan if "faint_lesions" in s]
    if not rows:
        return {}
    n = sum(s["faint_lesions"] for s in rows)
    return {"faint_lesions": n, "faint_sensitivity": sum(s["faint_detected"] for s in rows) / n if n else None}


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
        "fp_per_positive_scan": (sum(s["fp_components"] for s in positives) / len(positives)) if positives else None,
        **_faint(per_scan),
        "froc": froc(per_scan),
        "conventions": __doc__.split("Conventions (written into every evaluation JSON):")[1].strip() if __doc__ else "",
    }
