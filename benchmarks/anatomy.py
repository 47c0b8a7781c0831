"""``bonescan bench anatomy``: how well the anatomy output names lesions and measures the Bone Scan Index.

On held-out synthetic scans (the split's ``regions.png`` is the truth), with a checkpoint's own anatomy
output (a U-Net's head, or the dual-path model's bundled U-Net), in-process PyTorch:

* **anatomy DSC** per region class between the predicted label map (repeated to full resolution) and the
  true one, both views, over the scans where the class occurs; its mean and the worst classes;
* **region accuracy**: every true lesion the model detects (its predicted mask overlaps it) is named from
  the *predicted* label map (``anatomy.lesion_sites``, the clearer view deciding) and compared with where
  the generator placed it (``meta.json``): exact, and with rib / vertebra numbers within one. Beside it the
  same naming from the *true* label map: the ceiling a perfect anatomy output reaches (lesions where bones
  overlap in both views stay ambiguous);
* **BSI**: the served Bone Scan Index (the served answer's mask: the U-Net's, or the dual-path model's
  after the fail-safe with the case's report; predicted regions) against the true one (true mask,
  true regions): median absolute error in percentage points and Spearman's rho; and with the true mask and
  the predicted regions (the anatomy output's share of the error);
* **cost**: the anatomy network's time per scan in the segmenter graph (PyTorch, batch 1, median of runs)
  against the graph without it, and the naming's time in postprocess.

The BSI here is computed from a 2-D atlas on synthetic data: a check of this code, not a validated
clinical measurement.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bonescan import contract as C

#: groups whose numbers may be off by one and still count (``rib numbers within one``)
_NUMBERED = ("rib", "cervical", "thoracic", "lumbar")


def within_one(named: str, truth: str) -> bool:
    """Same region, or a rib of the same side / a vertebra whose number differs by one (C7 / T1 adjacent)."""
    from bonescan.anatomy import REGIONS
    from bonescan.report_sites import SPINE_ORDER

    if named == truth:
        return True
    a, b = REGIONS.get(named), REGIONS.get(truth)
    if a is None or b is None or a.group not in _NUMBERED or b.group not in _NUMBERED:
        return False
    if a.group == "rib" or b.group == "rib":
        return a.group == b.group and a.side == b.side and abs(a.index - b.index) <= 1
    if named in SPINE_ORDER and truth in SPINE_ORDER:
        return abs(SPINE_ORDER.index(named) - SPINE_ORDER.index(truth)) <= 1
    return False


def share(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def _spearman(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return round(float(spearmanr(x, y).statistic), 4)


def _head_cost(net, runs: int = 7) -> dict[str, float]:
    """ms per scan (median of ``runs``, batch 1) of the U-Net with and without its anatomy network."""
    import torch

    seg = net.fallback if net.fallback is not None else net.segmenter
    seg = seg.eval().to(memory_format=torch.channels_last)
    x = (torch.rand(1, *C.IMAGE_DIMS) * 50).contiguous(memory_format=torch.channels_last)
    t_plain, t_head = [], []
    with torch.no_grad():
        for i in range(runs + 1):
            t0 = time.perf_counter()
            seg(x)
            t1 = time.perf_counter()
            seg(x, with_regions=True)
            t2 = time.perf_counter()
            if i:  # the first run plans memory
                t_plain.append(t1 - t0)
                t_head.append(t2 - t1)
    plain, head = float(np.median(t_plain)) * 1e3, float(np.median(t_head)) * 1e3
    return {"unet_ms": round(plain, 2), "unet_with_anatomy_ms": round(head, 2), "anatomy_head_ms": round(head - plain, 2)}


def bench_anatomy(checkpoint: str | Path, data: str | Path, split: str = "test", n: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    from bonescan.anatomy import (
        N_REGION_CLASSES,
        REGION_CLASSES,
        bone_burden,
        full_resolution,
        grid_of,
        name_lesions,
    )
    from bonescan.components import components
    from bonescan.data.arrays import load_split
    from bonescan.data.second_reader import true_lesions
    from bonescan.failsafe import FailSafeSettings
    from bonescan.model.checkpoint import Predictor

    arr = load_split(data, split, progress=progress, n=n, regions=True)
    true_regions = arr.require_regions()
    pred = Predictor(checkpoint)
    settings = FailSafeSettings.from_dict((pred.ckpt.metadata.get("failsafe") or {}).get("settings"))
    inter = np.zeros(N_REGION_CLASSES)
    sizes = np.zeros(N_REGION_CLASSES)
    dsc_per_scan: list[list[float]] = [[] for _ in range(N_REGION_CLASSES)]
    exact = near = ceiling_exact = ceiling_near = detected = total_true = exact_r = near_r = 0
    bsi_true: list[float] = []
    bsi_pred: list[float] = []
    bsi_true_mask: list[float] = []
    left_out = left_out_true = 0  # served lesions the BSI left out (at bones the report calls benign); of them on a true lesion
    naming_ms: list[float] = []
    for i in tqdm(range(len(arr)), desc="anatomy", unit="scan", disable=not progress):
        image = arr.images[i].astype(np.float32)
        out = pred.outputs(image[None], [arr.reports[i]] if pred.text_guided else None)
        if C.REGION_LABELS.name not in out:
            raise ValueError(f"{checkpoint}: gives no anatomy output")
        grid = grid_of(out[C.REGION_LABELS.name][0])  # as postprocess names on it
        regions = full_resolution(grid, C.REGION_STRIDE)  # for the per-class DSC against the true map
        if not regions.any():
            raise ValueError(f"{checkpoint}: its anatomy output is background everywhere (trained without region maps)")
        truth = true_regions[i]
        for v in range(2):
            t, p = truth[v].ravel().astype(np.int64), regions[v].ravel().astype(np.int64)
            same = np.bincount(t[t == p], minlength=N_REGION_CLASSES)
            ct, cp = np.bincount(t, minlength=N_REGION_CLASSES), np.bincount(p, minlength=N_REGION_CLASSES)
            inter += same
            sizes += ct + cp
            for k in np.nonzero(ct)[0]:
                dsc_per_scan[k].append(2 * same[k] / (ct[k] + cp[k]))
        # the served answer: the U-Net's, or the dual-path model's after the fail-safe (with the true report), and
        # the report's bones as the served naming reads them (not when the U-Net answers)
        served = served_answer(pred, out, settings, image)
        pm, named = served.mask, served.named
        # naming: true lesions, detected by the predicted mask, named from the predicted and from the true label map
        cl = true_lesions(arr.masks[i], truth, image, arr.metas[i])
        t0 = time.perf_counter()
        sites_pred, _ = name_lesions(cl.labels, len(cl.sites), grid, image, C.REGION_STRIDE)
        naming_ms.append((time.perf_counter() - t0) * 1e3)
        sites_served = name_lesions(cl.labels, len(cl.sites), grid, image, C.REGION_STRIDE, named)[0] if named is not None else sites_pred
        by_id = {int(les["id"]): les["region"] for les in (arr.metas[i] or {}).get("lesions", [])}
        hit = np.bincount(cl.labels[pm], minlength=len(cl.sites) + 1)[1:] > 0 if len(cl.sites) else np.zeros(0, bool)
        for k, (sp, sr, st, mid) in enumerate(zip(sites_pred, sites_served, cl.sites, cl.meta_ids, strict=True)):
            if mid not in by_id:
                continue
            total_true += 1
            if not hit[k]:
                continue
            detected += 1
            exact += sp.region == by_id[mid]
            near += within_one(sp.region, by_id[mid])
            exact_r += sr.region == by_id[mid]
            near_r += within_one(sr.region, by_id[mid])
            ceiling_exact += st.region == by_id[mid]
            ceiling_near += within_one(st.region, by_id[mid])
        tc = components(arr.masks[i] > 0)
        bsi_true.append(bone_burden(tc.labels, tc.n, truth).bsi)
        bsi_true_mask.append(bone_burden(tc.labels, tc.n, grid, stride=C.REGION_STRIDE).bsi)
        # the served BSI: the lesion pixels at BSI_THRESHOLD or more, lesions the report calls benign left out
        bsi_pred.append(float(served.anatomy["bsi"]))
        left_out += int(served.anatomy.get("bsi_left_out", 0))
        left_out_true += _left_out_on_truth(served, arr.masks[i] > 0)
    present = [k for k in range(1, N_REGION_CLASSES) if dsc_per_scan[k]]
    per_class = {REGION_CLASSES[k]: round(float(np.mean(dsc_per_scan[k])), 4) for k in present}
    err = np.abs(np.array(bsi_pred) - np.array(bsi_true))
    err_regions = np.abs(np.array(bsi_true_mask) - np.array(bsi_true))
    from bonescan.benchmarks.latency import cpu_info

    return {
        "checkpoint": str(checkpoint), "data": str(data), "split": split, "scans": len(arr),
        "anatomy_dsc": {"mean_over_classes": round(float(np.mean(list(per_class.values()))), 4) if per_class else None,
                        "pooled_bone_pixels": round(float(inter[1:].sum() * 2 / max(sizes[1:].sum(), 1)), 4),
                        "worst": dict(sorted(per_class.items(), key=lambda kv: kv[1])[:8]), "per_class": per_class},
        "region_accuracy": {"true_lesions": total_true, "detected": detected,
                            "exact": share(exact, detected), "within_one": share(near, detected),
                            # as served: the report's named bones preferred among a lesion's candidate bones
                            "with_report": {"exact": share(exact_r, detected), "within_one": share(near_r, detected)},
                            "ceiling_true_map": {"exact": share(ceiling_exact, detected), "within_one": share(ceiling_near, detected)}},
        "bsi": {"true_median_pct": round(float(np.median(bsi_true)), 4), "true_max_pct": round(float(np.max(bsi_true)), 4),
                "abs_error_median_pp": round(float(np.median(err)), 4), "abs_error_p90_pp": round(float(np.percentile(err, 90)), 4),
                "spearman": _spearman(bsi_pred, bsi_true), "served_lesions_left_out": left_out,
                "of_them_on_a_true_lesion": left_out_true,
                "true_mask_pred_regions": {"abs_error_median_pp": round(float(np.median(err_regions)), 4),
                                           "spearman": _spearman(bsi_true_mask, bsi_true)}},
        "cost": {**_head_cost(pred.net), "naming_ms_median": round(float(np.median(naming_ms)), 2) if naming_ms else None},
        "cpu": cpu_info(),
        "note": "BSI from a 2-D atlas on synthetic scans: a check of this code, not a validated clinical measurement",
    }


def format_anatomy(r: dict[str, Any]) -> str:
    ra, b, c, a = r["region_accuracy"], r["bsi"], r["cost"], r["anatomy_dsc"]
    worst = ", ".join(f"{k} {v:.2f}" for k, v in list(a["worst"].items())[:5])
    return "\n".join([
        f"anatomy output of {r['checkpoint']} on {r['scans']} {r['split']} scans ({r['cpu'].get('cpu', '?')})",
        f"  anatomy DSC: mean over region classes {a['mean_over_classes']}, pooled over bone pixels {a['pooled_bone_pixels']}; "
        f"worst: {worst}",
        f"  region of each detected true lesion ({ra['detected']} of {ra['true_lesions']}): exact {ra['exact']}, "
        f"rib / vertebra numbers within one {ra['within_one']} (target >= 0.95); from the true label map: exact "
        f"{ra['ceiling_true_map']['exact']}, within one {ra['ceiling_true_map']['within_one']}"
        + (f"\n  the same named as served, the bones the report names itself preferred among those a lesion lies on: exact "
           f"{ra['with_report']['exact']}, within one {ra['with_report']['within_one']}" if "with_report" in ra else ""),
        f"  BSI: true median {b['true_median_pct']} %, max {b['true_max_pct']} %; served vs true: median |error| "
        f"{b['abs_error_median_pp']} pp (target <= 0.1), p90 {b['abs_error_p90_pp']} pp, Spearman {b['spearman']} "
        f"(target >= 0.95; {b.get('served_lesions_left_out', 0)} served lesions left out, at bones the report calls benign, "
        f"{b.get('of_them_on_a_true_lesion', 0)} of them on a true lesion); "
        f"true mask with predicted regions: median |error| {b['true_mask_pred_regions']['abs_error_median_pp']} "
        f"pp, Spearman {b['true_mask_pred_regions']['spearman']}",
        f"  cost per scan (PyTorch, batch 1): U-Net {c['unet_ms']} ms, with the anatomy network {c['unet_with_anatomy_ms']} ms "
        f"(+{c['anatomy_head_ms']} ms); naming the lesions {c['naming_ms_median']} ms",
        f"  {r['note']}",
    ])


def run_anatomy(checkpoint: str | Path, data: str | Path, out: str | Path | None, split: str = "test", n: int | None = None,
                progress: bool = True) -> dict[str, Any]:
    r = bench_anatomy(checkpoint, data, split, n, progress)
    print(format_anatomy(r))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "anatomy.json").write_text(json.dumps(r, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return r


def _left_out_on_truth(served: Served, truth: np.ndarray) -> int:
    """How many of the served lesions the BSI left out overlap a true lesion (a metastasis the report called benign,
    or one the model merged with a benign hot spot: the cost of leaving them out)."""
    from bonescan.components import components

    gone = [les for les in served.lesions if les.get("in_bsi") is False]
    if not gone:
        return 0
    c = components(served.mask)
    hits = 0
    for les in gone:
        y0, x0, y1, x1 = les["bbox"]
        window = c.labels[y0:y1 + 1, x0:x1 + 1]
        label = next(k for k in np.unique(window[window > 0]) if c.area[k - 1] == les["area_px"])
        hits += bool(truth[c.labels == label].any())
    return hits


class Served(NamedTuple):
    """One scan's served answer (:func:`served_answer`)."""

    mask: np.ndarray  #: bool [H, W]
    prob: np.ndarray  #: float32 [H, W], the map behind the answer
    named: np.ndarray | None  #: the report's bones the served naming reads (postprocess.naming_bones; None for the U-Net)
    anatomy: dict[str, Any]  #: LESIONS' ``anatomy``: the BSI as served, the grade, the hot spots
    lesions: list[dict[str, Any]]  #: LESIONS' ``lesions``


def served_answer(pred, out: dict[str, np.ndarray], settings, image: np.ndarray) -> Served:
    """The served answer from a checkpoint's outputs and the scan (``image`` [2, H, W]): the U-Net's, or the
    dual-path model's after the fail-safe (the case's report was in ``out``), as postprocess gives it in Triton."""
    from bonescan.postprocess import naming_bones, postprocess, served_failsafe

    spacing = np.array([C.DEFAULT_PIXEL_SPACING_MM], np.float32)
    if pred.text_guided:
        masks, probs, answers, dec = served_failsafe(out, spacing, settings, images=image[None])
        named = naming_bones(out.get(C.REPORT_NAMED.name), 0, dec[0]["answered_by"])
    else:
        masks, probs, answers = postprocess(out[C.LOGITS.name], spacing, regions=out.get(C.REGION_LABELS.name), images=image[None])
        named = None
    answer = json.loads(answers[0])
    return Served(masks[0, 0] > 0, probs[0, 0], named, answer.get("anatomy", {}), answer["lesions"])


def bench_second_reader(checkpoint: str | Path, data: str | Path, split: str | None = None, n: int | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """The second reader on a model's served answers (its lesions, named by its anatomy output) beside the same
    reader on the true lesions and label maps, over a data set written with lesions left out of reports and
    sites invented (``bonescan data synth --omit-lesion-rate R --invent-site-rate R``)."""
    from tqdm import tqdm

    from bonescan.anatomy import grid_of
    from bonescan.data.arrays import load_split
    from bonescan.data.second_reader import answer_lesions, score_cases, true_lesions
    from bonescan.failsafe import FailSafeSettings
    from bonescan.model.checkpoint import Predictor
    from bonescan.report_sites import FLAG_CONFIDENCE

    arr = load_split(data, split, progress=progress, n=n, regions=True)
    regions = arr.require_regions()
    if not any((m or {}).get("report_truth", {}).get("omitted") or (m or {}).get("report_truth", {}).get("invented")
               for m in arr.metas):
        raise ValueError(f"{data}: no report leaves a lesion out or invents a site; make the data with "
                         "`bonescan data synth --omit-lesion-rate 0.2 --invent-site-rate 0.5`")
    pred = Predictor(checkpoint)
    settings = FailSafeSettings.from_dict((pred.ckpt.metadata.get("failsafe") or {}).get("settings"))
    answers, true_masks, evidence = [], [], []
    sites: list[tuple[int, bool, float]] = []  # the reported sites the served answer does not find (_unfound_sites)
    for i in tqdm(range(len(arr)), desc="second reader", unit="scan", disable=not progress):
        image = arr.images[i].astype(np.float32)
        out = pred.outputs(image[None], [arr.reports[i]] if pred.text_guided else None)
        grid = grid_of(out[C.REGION_LABELS.name][0])
        truth = true_lesions(arr.masks[i], regions[i], image, arr.metas[i])
        served, prob, named, _, _ = served_answer(pred, out, settings, image)  # lesions named as served (the report's bones)
        answers.append(answer_lesions(served, grid, C.REGION_STRIDE, image, truth, prob, named))
        true_masks.append(answer_lesions(arr.masks[i] > 0, grid, C.REGION_STRIDE, image, truth, named=named))  # detection perfect
        if pred.text_guided:
            u = out[C.FALLBACK_LOGITS.name][0, 0]
            # where the U-Net's lesions join the answer, the probability is the U-Net's
            evidence.append((served, _unet_lesions(u, served), grid, image, truth,
                             np.where(served, prob, 1.0 / (1.0 + np.exp(-u))).astype(np.float32), named))
            sites.extend(_unfound_sites(i, arr.reports[i], arr.metas[i], answers[-1], grid, out[C.LOGITS.name][0, 0]))
    from bonescan.benchmarks.latency import cpu_info

    res = {"checkpoint": str(checkpoint), "data": str(data), "split": split, "scans": len(arr),
           "flag_confidence": FLAG_CONFIDENCE,
           "served": score_cases(arr.images, arr.masks, regions, arr.reports, arr.metas, answers=answers),
           "true_mask_pred_anatomy": score_cases(arr.images, arr.masks, regions, arr.reports, arr.metas, answers=true_masks),
           "true_lesions": score_cases(arr.images, arr.masks, regions, arr.reports, arr.metas), "cpu": cpu_info()}
    if evidence:
        res["chosen_out_of_sample"] = _choose_second_reader(arr, regions, evidence)
        res["unfound_site_evidence"] = _site_evidence(sites, len(arr) // 2)
    return res


def _unfound_sites(i: int, report: str, meta: dict | None, answer, grid: np.ndarray, logits: np.ndarray) -> list[tuple[int, bool, float]]:
    """Case ``i``'s reported metastatic sites the served answer does not find (the second reader's ``not_found``),
    on a report with a site invented (those ``score_cases`` scores): per site (i, invented, the dual-path model's
    highest probability in the bones the site names, either view of the anatomy output): the evidence a
    ``not_found`` flag could ask for before it calls a report's claim unsupported."""
    from bonescan.anatomy import CLASS_REGION
    from bonescan.report_sites import benign_sites, report_sites, second_read, site_matches

    meta = meta or {}
    invented = {inv["region"] for inv in (meta.get("report_truth") or {}).get("invented", [])}
    if not invented or meta.get("report", {}).get("style") == "vague":
        return []
    read = second_read([s.candidates for s in answer.sites], report_sites(report), benign_sites(report),
                       answer.confidence)
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    out = []
    for site, found in zip(read.sites, read.found, strict=True):
        if found:
            continue
        cells = np.array([bool(r) and site_matches(site, r) for r in CLASS_REGION])[grid]
        either = np.repeat(np.repeat(cells[0] | cells[1], C.REGION_STRIDE, axis=0), C.REGION_STRIDE, axis=1)
        out.append((i, site.region in invented, float(p[either].max()) if either.any() else 0.0))
    return out


def _site_evidence(sites: list[tuple[int, bool, float]], half: int) -> dict[str, Any]:
    """Whether the model's probability in a reported site's bones tells an invented site from a reported lesion the
    answer misses: the quantiles of both, and ``not_found`` only below a highest probability chosen on the first half
    of the scans (the most precision at recall >= 0.9 among the invented sites the answer does not find) scored on
    the second half."""
    inv = np.array([e for _, v, e in sites if v])
    real = np.array([e for _, v, e in sites if not v])
    q = (0.25, 0.5, 0.75, 0.9)

    def pr(rows: list[tuple[int, bool, float]], t: float) -> dict[str, Any]:
        tp = sum(v and e < t for _, v, e in rows)
        fp = sum(not v and e < t for _, v, e in rows)
        n = sum(v for _, v, _ in rows)
        return {"precision": round(tp / (tp + fp), 4) if tp + fp else None, "recall_of_unfound": round(tp / n, 4) if n else None}

    first = [r for r in sites if r[0] < half]
    second = [r for r in sites if r[0] >= half]
    best = 1.01
    cands = sorted({e for _, _, e in first} | {1.01})
    ok = [t for t in cands if (pr(first, t)["recall_of_unfound"] or 0) >= 0.9]
    if ok:
        best = max(ok, key=lambda t: (pr(first, t)["precision"] or 0.0, -t))
    return {"invented": len(inv), "reported_lesion_missed": len(real),
            "invented_quantiles": [round(float(v), 4) for v in np.quantile(inv, q)] if len(inv) else None,
            "missed_quantiles": [round(float(v), 4) for v in np.quantile(real, q)] if len(real) else None,
            "quantiles_at": list(q), "chosen_below": round(float(best), 4), "second_half_as_flagged": pr(second, 1.01),
            "second_half_chosen": pr(second, best)}


#: the image-only evidence's confidences tried (2.0 = off: the answer alone)
IMAGE_ONLY_GRID = (2.0, 0.99, 0.95, 0.9, 0.8, 0.7, 0.5)
#: the flag's confidences tried (report_sites.FLAG_CONFIDENCE; 0 = every lesion outside the report is flagged)
FLAG_GRID = (0.0, 0.5, 0.8, 0.85, 0.9, 0.92, 0.95)
#: the precision the chosen confidences must give not_in_report on the first half (issue 26's target)
FLAG_PRECISION = 0.9


def _choose_second_reader(arr, regions: np.ndarray, evidence: list) -> dict[str, Any]:
    """The image-only evidence's confidence (FailSafeSettings.image_only_confidence) and the flag's
    (report_sites.FLAG_CONFIDENCE), chosen together on the first half of the scans (``not_in_report`` at
    FLAG_PRECISION or more, then the most recall of the two flags) and scored on the second half, beside the
    defaults there."""
    from bonescan.data.second_reader import answer_lesions, score_cases
    from bonescan.report_sites import FLAG_CONFIDENCE

    half = len(arr) // 2
    halves = {"first_half": np.arange(half), "second_half": np.arange(half, len(arr))}
    sweep: list[dict[str, Any]] = []
    for tau in IMAGE_ONLY_GRID:
        with_ev = [answer_lesions(s_ | _confident(u_, tau), g_, C.REGION_STRIDE, im_, t_, p_, n_)
                   for s_, u_, g_, im_, t_, p_, n_ in evidence]
        for flag in FLAG_GRID:
            row: dict[str, Any] = {"image_only_confidence": tau, "flag_confidence": flag}
            for h, idx in halves.items():
                r = score_cases(arr.images[idx], arr.masks[idx], regions[idx], [arr.reports[i] for i in idx],
                                [arr.metas[i] for i in idx], answers=[with_ev[i] for i in idx], min_confidence=flag)
                row[h] = {q: r[q] for q in ("not_in_report", "not_found")}
            sweep.append(row)

    def score(r: dict[str, Any]) -> tuple[bool, float]:
        # the target asks both flags for precision and recall: a not_in_report flag precise enough first,
        # then the most recall of the two flags; no setting precise enough: the most precise
        a, b = r["first_half"]["not_in_report"], r["first_half"]["not_found"]
        precise = (a.get("precision") or 0.0) >= FLAG_PRECISION
        return precise, ((a.get("recall") or 0.0) + (b.get("recall") or 0.0)) / 2 if precise else (a.get("precision") or 0.0)

    def at(tau: float, flag: float) -> dict[str, Any] | None:
        return next((r["second_half"] for r in sweep if r["image_only_confidence"] == tau and r["flag_confidence"] == flag), None)

    best = max(sweep, key=lambda r: (score(r), r["image_only_confidence"], r["flag_confidence"]))
    return {"rule": f"on the first half, not_in_report precision >= {FLAG_PRECISION:g} and then the most recall of the two "
                    "flags (none that precise: the most precise); image-only > 1 = off",
            "image_only_confidence": best["image_only_confidence"], "flag_confidence": best["flag_confidence"],
            "chosen_second_half": best["second_half"], "defaults_second_half": at(IMAGE_ONLY_GRID[0], FLAG_CONFIDENCE),
            "unflagged_second_half": at(IMAGE_ONLY_GRID[0], 0.0), "sweep": sweep}


def _unet_lesions(u: np.ndarray, served: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The U-Net's lesions the served answer does not touch: (labels [H, W], highest probability per label 1..n)."""
    from bonescan.components import components
    from bonescan.failsafe import label_max

    c = components(u >= 0.0)
    conf = 1.0 / (1.0 + np.exp(-label_max(u, c.labels, c.n))) if c.n else np.zeros(0, np.float32)
    touched = np.zeros(c.n + 1, bool)
    touched[c.labels[served]] = True
    conf = np.where(touched[1:], -1.0, conf)  # in the answer already: never evidence of its own
    return c.labels, conf


def _confident(u: tuple[np.ndarray, np.ndarray], tau: float) -> np.ndarray:
    labels, conf = u
    keep = np.concatenate([[False], conf >= tau])
    return keep[labels]


def format_second_reader(r: dict[str, Any]) -> str:
    lines = [f"second reader on {r['scans']} scans of {r['data']} ({r['split'] or 'all splits'}), target precision and recall >= 0.9"]
    if "chosen_out_of_sample" in r:
        ch = r["chosen_out_of_sample"]

        def pr(q: dict[str, Any]) -> str:
            a, b = q["not_in_report"], q["not_found"]
            return f"not_in_report P {a['precision']} R {a['recall']}; not_found P {b['precision']} R {b['recall']}"

        io = ch["image_only_confidence"]
        lines.append(f"  chosen on the first half: image-only evidence {io:g}{' (off)' if io > 1 else ''}, flag confidence "
                     f"{ch['flag_confidence']:g}; the second half: {pr(ch['chosen_second_half'])}")
        if ch["defaults_second_half"] is not None:
            lines.append(f"    the second half with the defaults (image-only off, flag {r['flag_confidence']:g}): "
                         f"{pr(ch['defaults_second_half'])}")
        lines.append(f"    the second half, every lesion outside the report flagged (no confidence): {pr(ch['unflagged_second_half'])}")
    if "unfound_site_evidence" in r:
        e = r["unfound_site_evidence"]
        lines.append(f"  reported sites the answer does not find, on reports with a site invented: {e['invented']} invented, "
                     f"{e['reported_lesion_missed']} a reported lesion missed; the dual-path model's highest probability in the "
                     f"site's bones, quantiles {e['quantiles_at']}: invented {e['invented_quantiles']}, missed "
                     f"{e['missed_quantiles']}")
        lines.append(f"    not_found only below the probability chosen on the first half ({e['chosen_below']:g}), the second half: "
                     f"P {e['second_half_chosen']['precision']} (as flagged {e['second_half_as_flagged']['precision']}), "
                     f"recall of the unfound invented sites {e['second_half_chosen']['recall_of_unfound']}")
    for key, label in (("served", f"on the served answers of {r['checkpoint']}"),
                       ("true_mask_pred_anatomy", "on the true lesions named by the model's anatomy output"),
                       ("true_lesions", "on the true lesions and label maps")):
        s = r[key]
        a, b, f = s["not_in_report"], s["not_found"], s["false_flags"]
        lines.append(f"  {label}: not_in_report P {a['precision']} R {a['recall']} (tp {a['tp']}, fp {a['fp']}, fn {a['fn']}); "
                     f"not_found P {b['precision']} R {b['recall']} (tp {b['tp']}, fp {b['fp']}, fn {b['fn']}); "
                     f"on faithful reports: lesions flagged {f['lesions_not_in_report']} of {f['lesions']}, "
                     f"sites flagged {f['sites_not_found']} of {f['sites']}; vague reports skipped {s['skipped_vague']}")
    return "\n".join(lines)
