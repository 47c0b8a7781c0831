"""``bonescan calibrate``: the fail-safe's thresholds (bonescan.failsafe), chosen out of sample.

What a setting must do is judged as lesion detection is judged: by where its answer lies against
the image-only U-Net's FROC curve (sensitivity against false positives per scan, bonescan.metrics).
A setting is **safe** on a set of scans when, with each kind of report, its answer's operating
point (lesion sensitivity at its false positives per scan) lies on or above the U-Net's curve on
those scans, less :data:`MARGIN`, and its lesion sensitivity is no lower than that of the U-Net's own
answer (its operating point), less :data:`MARGIN`: on the curve alone a setting could trade lesions the
image-only answer finds for fewer false positives (with rule 7 a setting reached the margin with another
study's reports at sensitivity 0.61 against the U-Net's 0.87 on seed 0's validation scans, and lay 0.12
below the curve out of sample), and the fail-safe's promise is that a report does not lose what the image
shows. The kinds of report (:data:`CONDITIONS`): the scans' true reports
(re-written in the training house styles), other studies' reports (:data:`SHUFFLES` derangements,
pooled) and texts that are no report (data.nonreport). The true reports are those hospitals send:
re-written in the training styles, a share of them (the training's ``report_part_share``) only their
impression or only their findings. Among the safe settings of :data:`GRID` the
one with the best mean DSC with true reports is chosen (ties: the better DSC with other studies'
reports, then the fewer rules in use); when none is safe, the one that misses by least.

One of hundreds of settings chosen on a few dozen scans scores better on them than it will on the
next scans. So the procedure is cross-validated (:data:`FOLDS` folds of the validation split): each
fold's scans are answered with the setting chosen on the other folds, and those answers give the
**out-of-sample** estimate stored with the checkpoint beside the in-sample scores of the setting
served (chosen on the whole split). Both are exact (the real answer masks, bonescan.metrics); the
grid itself is scored from per-scan counts (failsafe.answer_scores).

One forward pass per scan and kind of report (the U-Net's answer, which does not depend on the
report, is computed once); every setting is scored from those passes' measurements.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bonescan.contract import THRESHOLD
from bonescan.data.arrays import load_split
from bonescan.data.rewrite import rewrite_split
from bonescan.errors import BonescanError
from bonescan.evaluate import select_reports
from bonescan.metrics import froc, scan_metrics, sensitivity_at, summarize
from bonescan.postprocess import postprocess

#: the settings calibration chooses among (the other fields of FailSafeSettings keep their defaults:
#: max_unknown_share, no_finding_allow and require_finding_terms are fixed by design). allow_threshold
#: None: no named lesions added; negative_report_allow 0: no empty answer for a negative report;
#: max_unexplained 1e9: never the U-Net for the whole scan
GRID: dict[str, tuple[Any, ...]] = {
    "min_confidence": (0.5, 0.7, 0.9),
    "mention_threshold": (0.3, 0.5, 0.7),
    "allow_threshold": (None, 0.5, 0.7, 0.9),
    "negative_report_allow": (0.0, 0.1, 0.2, 0.3),
    "max_unexplained": (1.0e9, 1.0, 2.0, 4.0),
    "min_text_only_confidence": (0.0, 0.9, 0.97),
}
#: a safe setting's operating point may lie this far below the U-Net's FROC curve (in sensitivity)
#: on the scans it is chosen on: the targets allow 0.02 on new scans; 0.005 of it is kept for the
#: optimism of choosing on these scans (the cross-validated estimate says how much there was)
MARGIN = 0.015
#: other-study report assignments (derangements) per scan
SHUFFLES = 2
#: cross-validation folds of the validation split for the out-of-sample estimate
FOLDS = 5
#: the kinds of report a setting must be safe with
CONDITIONS = ("true", "shuffled", "nonreport")
#: how many of the grid's settings (best first) a checkpoint keeps in its metadata
GRID_KEPT = 20
#: the fewest validation scans calibration runs on: other studies' reports are a derangement (every
#: scan gets another scan's report), and cross-validation needs a scan to hold out
MIN_SCANS = 2


def fold_assignment(n: int, seed: int, folds: int = FOLDS) -> np.ndarray:
    """The cross-validation fold of each of ``n`` scans (at least 2 folds, at most ``n``)."""
    return np.random.default_rng([seed, 11]).permutation(n) % max(2, min(folds, n))


def calibration_problem(masks, seed: int = 0, folds: int = FOLDS) -> str | None:
    """Why the fail-safe cannot be calibrated on scans with these lesion masks ([N, H, W]), or None.

    A setting is judged against the U-Net's FROC curve on the scans it is chosen on, so those need
    a metastasis: the whole split, and for the out-of-sample estimate every fold's complement."""
    n = len(masks)
    if n < MIN_SCANS:
        return (f"{n} scan{'s' if n != 1 else ''}; calibrating the fail-safe needs {MIN_SCANS} or more (every scan gets "
                "another scan's report)")
    lesion = np.array([bool(np.any(m)) for m in masks])
    if not lesion.any():
        return (f"none of its {n} scans has a metastasis (mask.png); the fail-safe is calibrated against the U-Net's FROC "
                "curve, which needs lesions")
    fold_of = fold_assignment(n, seed, folds)
    k = len(np.unique(fold_of))
    if any(not lesion[fold_of != f].any() for f in range(k)):
        m = int(lesion.sum())
        return (f"its {m} scan{'s' if m != 1 else ''} with metastases {'all fall' if m != 1 else 'falls'} in one of the {k} "
                "cross-validation folds; every fold's complement needs one (more validation cases with metastases)")
    return None


def collect(pred, arrays, texts: list[str], threshold: float = THRESHOLD, batch: int = 4,
            dualpath_metrics: list[dict[str, Any]] | None = None, cache: dict[str, Any] | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """One pass over ``arrays`` with ``texts``: per scan the fail-safe's measurements
    (failsafe.measure) and the counts that score its answers (failsafe.answer_counts).

    ``dualpath_metrics`` gets the dual-path answer's :func:`scan_metrics` per scan. ``cache`` keeps
    what does not depend on the report, filled by the first pass and reused by the next: the U-Net's
    cleaned masks and probabilities per batch (``"unet"``), its FROC rows per scan (``"froc"``)."""
    from bonescan.failsafe import answer_counts, measure
    from bonescan.metrics import froc_scan
    from bonescan.postprocess import sigmoid

    cache = cache if cache is not None else {}
    unet, frocs = cache.setdefault("unet", {}), cache.setdefault("froc", {})
    rows = []
    for i in range(0, len(arrays), batch):
        imgs = arrays.images[i : i + batch].astype(np.float32)
        known = i in unet
        out = pred.outputs(imgs, texts[i : i + batch], fallback=not known)
        sp = np.array(arrays.spacings[i : i + batch], np.float32)
        md, pd, _ = postprocess(out["logits"], sp, threshold)
        if not known:
            unet[i] = (postprocess(out["fallback_logits"], sp, threshold)[0], sigmoid(out["fallback_logits"]))
        mu, pu = unet[i]
        for k in range(len(imgs)):
            m = measure(md[k, 0], mu[k, 0], pu[k, 0], out["text_map"][k], out["text_stats"][k], prob=pd[k, 0])
            gt = arrays.masks[i + k]
            if i + k not in frocs:
                f = froc_scan(gt, pu[k, 0], mu[k, 0])
                frocs[i + k] = {"froc_tp": f["tp"], "froc_fp": f["fp"]}
            rows.append((m, answer_counts(m, gt)))
            if dualpath_metrics is not None:
                dualpath_metrics.append({**scan_metrics(md[k, 0], gt), "case_id": arrays.ids[i + k]})
    return rows


def combos() -> list[dict[str, Any]]:
    """The grid's settings that change the report-guided answer (all but max_unexplained), as dicts."""
    keys = [k for k in GRID if k != "max_unexplained"]
    return [dict(zip(keys, v)) for v in itertools.product(*(GRID[k] for k in keys))]


def settings_of(combo: dict[str, Any], max_unexplained: float, base=None):
    """The FailSafeSettings of one grid point."""
    from bonescan.failsafe import FailSafeSettings

    base = base if base is not None else FailSafeSettings()
    allow = combo["allow_threshold"]
    return replace(base, min_confidence=float(combo["min_confidence"]), mention_threshold=float(combo["mention_threshold"]),
                   add_named_lesions=allow is not None, allow_threshold=float(allow) if allow is not None else base.allow_threshold,
                   negative_report_allow=float(combo["negative_report_allow"]), max_unexplained=float(max_unexplained),
                   min_text_only_confidence=float(combo.get("min_text_only_confidence", 0.0)))


def tables(rows: list[tuple[Any, dict[str, Any]]], base=None) -> dict[str, np.ndarray]:
    """Per grid combo (:func:`combos`) and scan, what the answer scores when the report is trusted,
    and per scan what the U-Net's answer scores and whether a setting-independent rule (no report,
    report not read, no finding) gives it anyway: the arrays every setting is scored from.

    Returns dsc / found / fp / unexplained [combos, scans] of the trusted answer; unet_dsc /
    unet_found / unet_fp / forced [scans]; gt [scans] lesions."""
    from bonescan.failsafe import DUALPATH, UNET, answer_scores, choose

    cs = combos()
    n = len(rows)
    t = {k: np.zeros((len(cs), n)) for k in ("dsc", "found", "fp", "unexplained")}
    u = {k: np.zeros(n) for k in ("unet_dsc", "unet_found", "unet_fp", "gt")}
    forced = np.zeros(n, bool)
    for j, (m, counts) in enumerate(rows):
        u["unet_dsc"][j], u["unet_found"][j], u["unet_fp"][j] = answer_scores(m, {"answered_by": UNET}, counts)
        u["gt"][j] = counts["gt_lesions"]
        for c, combo in enumerate(cs):
            info = choose(m, settings_of(combo, 1.0e9, base))
            if info["answered_by"] == UNET:  # rules that do not depend on the grid
                forced[j] = True
                break
            assert info["answered_by"] == DUALPATH
            t["dsc"][c, j], t["found"][c, j], t["fp"][c, j] = answer_scores(m, info, counts)
            t["unexplained"][c, j] = info["signals"]["unexplained_lesions"]
    for k in ("dsc", "found", "fp"):
        t[k][:, forced] = u["unet_" + k][forced]
    return {**t, **u, "forced": forced}


def _points(tab: dict[str, np.ndarray], scans: np.ndarray) -> dict[str, np.ndarray]:
    """[combos, len(GRID max_unexplained)] DSC mean, sensitivity and false positives per scan of every
    setting on ``scans`` (indexes into the tables' scans)."""
    k = np.asarray(GRID["max_unexplained"], np.float64)[None, :, None]
    whole = tab["unexplained"][:, None, scans] > k  # [combos, k, scans]: the U-Net answers the whole scan
    pick = lambda name: np.where(whole, tab["unet_" + name][scans], tab[name][:, None, scans])  # noqa: E731
    n_gt = tab["gt"][scans].sum()
    return {"dsc": pick("dsc").mean(-1), "sensitivity": pick("found").sum(-1) / max(n_gt, 1),
            "fp_per_scan": pick("fp").mean(-1)}


def unet_curve(cache: dict[str, Any], scans: np.ndarray) -> dict[str, Any]:
    """The U-Net's FROC curve on ``scans`` (from the FROC rows :func:`collect` cached)."""
    f = froc([cache["froc"][int(i)] for i in scans])
    assert f is not None, "the U-Net's FROC curve needs scans with lesions"
    return f["curve"]


def select(tabs: dict[str, list[dict[str, np.ndarray]]], cache: dict[str, Any], scans: np.ndarray,
           keep: int = 0, floor: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The setting chosen on ``scans`` (see the module docstring) and, with ``keep``, the first
    ``keep`` settings of the ranking with their scores.

    tabs: condition -> the :func:`tables` of each of its passes (several for other studies' reports).
    floor: False: the curve alone judges safety (the U-Net's own sensitivity is no floor; for tests)."""
    curve = unet_curve(cache, scans)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for cond, passes in tabs.items():
        pts = [_points(t, scans) for t in passes]
        sens = np.mean([p["sensitivity"] for p in pts], axis=0)
        fpr = np.mean([p["fp_per_scan"] for p in pts], axis=0)
        ref = np.interp(fpr, curve["fp_per_scan"], curve["sensitivity"])
        # the U-Net's own answer's sensitivity (its operating point; the same scans in every condition)
        unet_sens = float(np.mean([t["unet_found"][scans].sum() / max(t["gt"][scans].sum(), 1) for t in passes]))
        scores[cond] = {"dsc": np.mean([p["dsc"] for p in pts], axis=0), "sensitivity": sens, "fp_per_scan": fpr,
                        "margin": sens - ref, "below_unet": unet_sens - sens}
    # on or above the curve, and no less sensitive than the U-Net's own answer, each less the margin
    miss = np.sum([np.maximum(0.0, -MARGIN - s["margin"]) + floor * np.maximum(0.0, s["below_unet"] - MARGIN)
                   for s in scores.values()], axis=0)
    cs = combos()
    # rules in use: fewer is better at equal scores (the simplest setting that is as good)
    rules = np.array([[sum((c["allow_threshold"] is not None, c["negative_report_allow"] > 0, k < 1e9, c["min_text_only_confidence"] > 0))
                       for k in GRID["max_unexplained"]] for c in cs])
    order = np.lexsort((rules.ravel(), -np.round(scores["shuffled"]["dsc"].ravel(), 4) if "shuffled" in scores else rules.ravel(),
                        -np.round(scores["true"]["dsc"].ravel(), 4), np.round(miss.ravel(), 5)))

    def entry(flat: int) -> dict[str, Any]:
        c, k = divmod(int(flat), len(GRID["max_unexplained"]))
        e: dict[str, Any] = {**cs[c], "max_unexplained": GRID["max_unexplained"][k], "safe": bool(miss.ravel()[flat] == 0),
                             "miss": round(float(miss.ravel()[flat]), 5)}
        for cond, s in scores.items():
            e[cond] = {q: round(float(v.ravel()[flat]), 4) for q, v in s.items()}
        return e

    return entry(order[0]), [entry(i) for i in order[:keep]]


def exact_scores(rows: list[tuple[Any, dict[str, Any]]], settings_per_scan: list, arrays, scans: np.ndarray) -> list[dict[str, Any]]:
    """The real answers (failsafe.choose + answer_mask) of ``scans`` under each scan's setting, scored
    with bonescan.metrics."""
    from bonescan.failsafe import UNET, answer_mask, choose

    out = []
    for j, s in zip(scans, settings_per_scan):
        m, _ = rows[int(j)]
        info = choose(m, s)
        row = scan_metrics(answer_mask(m, info), arrays.masks[int(j)])
        row["answered_by_unet"] = info["answered_by"] == UNET
        out.append(row)
    return out


def _estimate(per: dict[str, list[list[dict[str, Any]]]], curve: dict[str, Any]) -> dict[str, Any]:
    """Per condition: DSC, lesion sensitivity, false positives per scan, U-Net answers, and the margin
    to the U-Net's FROC curve at that false-positive rate (the passes of a condition pooled)."""
    out = {}
    for cond, passes in per.items():
        rows = [r for p in passes for r in p]
        s = summarize(rows)
        sens, fpr = s["lesion_sensitivity"] or 0.0, s["fp_per_scan"]
        out[cond] = {"dsc": round(s["dsc"]["mean"], 4), "lesion_sensitivity": round(sens, 4), "fp_per_scan": round(fpr, 3),
                     "unet_sensitivity_at_fp": round(sensitivity_at(curve, fpr), 4),
                     "margin": round(sens - sensitivity_at(curve, fpr), 4),
                     "answered_by_unet": round(float(np.mean([r["answered_by_unet"] for r in rows])), 3)}
    return out


def calibrate_failsafe(ckpt, arrays, texts: list[str] | None = None, seed: int = 0, progress: bool = True,
                       threshold: float = THRESHOLD, folds: int = FOLDS) -> dict[str, Any]:
    """The fail-safe's settings from the validation split, with their in-sample and out-of-sample
    scores (see the module docstring).

    texts: the true reports (e.g. re-written in the training house styles); default the split's own.
    The result's ``settings`` are what is served; ``in_sample`` scores exactly them on the split,
    ``out_of_sample`` the cross-validated procedure; ``validation`` summarises the dual-path
    network's own mask with the true reports (from the same pass).
    """
    from bonescan.data.nonreport import nonreport
    from bonescan.failsafe import FailSafeSettings
    from bonescan.model.checkpoint import Predictor

    n = len(arrays)
    problem = calibration_problem(arrays.masks, seed, folds)
    if problem:
        raise BonescanError(f"cannot calibrate the fail-safe on these scans: {problem}")
    pred = ckpt if isinstance(ckpt, Predictor) else Predictor(ckpt)
    true = list(texts) if texts is not None else list(arrays.reports)
    base = FailSafeSettings()
    dual_metrics: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}
    rng = np.random.default_rng([seed, 7])
    passes = {"true": [true], "shuffled": [select_reports(true, "shuffled", seed + 100 * j) for j in range(SHUFFLES)],
              "nonreport": [[nonreport(rng) for _ in range(n)]]}
    rows: dict[str, list[list]] = {}
    from tqdm import tqdm

    with tqdm(total=sum(len(v) for v in passes.values()), desc="calibrating the fail-safe", unit="pass", disable=not progress,
              leave=False) as bar:
        for cond, texts_ in passes.items():
            rows[cond] = []
            for t in texts_:
                rows[cond].append(collect(pred, arrays, t, threshold, dualpath_metrics=dual_metrics if not dual_metrics else None,
                                          cache=cache))
                bar.update()
    tabs = {cond: [tables(r, base) for r in rs] for cond, rs in rows.items()}
    everything = np.arange(n)
    best, ranking = select(tabs, cache, everything, keep=GRID_KEPT)
    settings = settings_of(best, best["max_unexplained"], base)
    curve = unet_curve(cache, everything)
    in_sample = _estimate({cond: [exact_scores(r, [settings] * n, arrays, everything) for r in rs] for cond, rs in rows.items()}, curve)
    # out of sample: each fold answered with the setting chosen on the others
    fold_of = fold_assignment(n, seed, folds)
    per: dict[str, list[list[dict[str, Any]]]] = {cond: [[] for _ in rs] for cond, rs in rows.items()}
    chosen = []
    for f in np.unique(fold_of):
        held, rest = np.nonzero(fold_of == f)[0], np.nonzero(fold_of != f)[0]
        b, _ = select(tabs, cache, rest)
        s_f = settings_of(b, b["max_unexplained"], base)
        chosen.append({k: b[k] for k in GRID})
        for cond, rs in rows.items():
            for p, r in enumerate(rs):
                per[cond][p].extend(exact_scores(r, [s_f] * len(held), arrays, held))
    out_of_sample = _estimate(per, curve)
    unet_rows = exact_scores(rows["true"][0], [replace(base, max_unknown_share=-1.0)] * n, arrays, everything)
    u = summarize(unet_rows)
    res = {"settings": settings.to_dict(), "val_scans": n, "grid_size": len(combos()) * len(GRID["max_unexplained"]),
           "grid": ranking, "safe": best["safe"], "margin": MARGIN, "folds": int(len(np.unique(fold_of))),
           "in_sample": in_sample, "out_of_sample": out_of_sample, "fold_settings": chosen,
           "unet": {"dsc": round(u["dsc"]["mean"], 4), "lesion_sensitivity": round(u["lesion_sensitivity"] or 0.0, 4),
                    "fp_per_scan": round(u["fp_per_scan"], 3), "froc_curve": curve},
           "validation": summarize(dual_metrics)}
    res["named_place"] = calibrate_named_place(pred, arrays, true, settings, threshold, progress,
                                               other_texts=passes["shuffled"][0])
    res["settings"]["named_place_threshold"] = res["named_place"]["chosen"]
    res["settings"]["add_named_lesions"] = res["named_place"].get("add_named_lesions", settings.add_named_lesions)
    if progress:
        print(describe(res))
    return res


#: the thresholds the named-place prior is chosen among (0: off)
NAMED_PLACE_GRID = (0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05)


def calibrate_named_place(pred, arrays, texts: list[str], settings, threshold: float = THRESHOLD, progress: bool = True,
                          batch: int = 4, other_texts: list[str] | None = None) -> dict[str, Any]:
    """The named-place prior's threshold (FailSafeSettings.named_place_threshold) on these scans, judged as
    lesion detection is: on the scans with metastases, each threshold's answer (sensitivity at its false
    positives per scan) against the bundled U-Net's FROC curve on the same scans. The one of
    :data:`NAMED_PLACE_GRID` whose answer lies furthest above that curve is chosen, provided it lies further
    above it than the answer without the prior and its false positives per scan stay at or below the U-Net's;
    else 0 (off), as for a model without an anatomy output. A prior that buys sensitivity with more false
    positives than lowering the U-Net's own threshold would cost is not one (the rule before, the highest
    sensitivity at no more false positives than the U-Net's, spent the whole budget: +0.15 false positives
    per scan with metastases for +0.015 sensitivity on make demo's test scans, 3 seeds). Chosen on the
    validation split, like the rest of the fail-safe. ``other_texts``: another study's report per scan; with rule
    6 on, the answers with them give each row its ``shuffled_margin`` as well (:func:`pick_place_rule` reads it)."""
    from dataclasses import replace as _replace

    from tqdm import tqdm

    from bonescan.anatomy import named_prior
    from bonescan.contract import REGION_STRIDE
    from bonescan.failsafe import UNET, add_in_named_places
    from bonescan.metrics import froc_scan, scan_metrics
    from bonescan.postprocess import postprocess_failsafe, sigmoid

    grid = (0.0, *NAMED_PLACE_GRID)
    # rule 6 as calibrated first (its row at 0 is the answer without the prior), then without it when it is on
    rule6 = (settings.add_named_lesions, *((False,) if settings.add_named_lesions else ()))
    # per (rule 6, threshold): true lesions, detected, FP components, scans with metastases
    passes = [("true", texts)] + ([("shuffled", other_texts)] if other_texts is not None and len(rule6) > 1 else [])
    counts = {(cond, a, t): [0, 0, 0, 0] for cond, _ in passes for a in rule6 for t in grid}
    unet = [0, 0]  # FP components, scans with metastases
    unet_froc: list[dict[str, Any]] = []  # the U-Net's FROC rows of those scans
    anatomy = True
    steps = [(cond, txt, i) for cond, txt in passes for i in range(0, len(arrays), batch)]
    for cond, txt, i in tqdm(steps, desc="calibrating the named-place prior", unit="batch", disable=not progress, leave=False):
        imgs = arrays.images[i : i + batch].astype(np.float32)
        out = pred.outputs(imgs, txt[i : i + batch])
        if not np.any(out.get("region_labels", 0)):
            anatomy = False
            break
        sp = np.array(arrays.spacings[i : i + batch], np.float32)
        if cond == "true":  # the U-Net reads no report: its answer and curve once, on the first pass
            um = postprocess(out["fallback_logits"], sp, threshold)[0]
            pu = sigmoid(out["fallback_logits"])
        # the answer without the prior once per rule 6, then each threshold's additions (the rule postprocess_failsafe
        # applies)
        answers = {a: postprocess_failsafe(out["logits"], out["fallback_logits"], out["text_map"], out["text_stats"], sp,
                                           _replace(settings, named_place_threshold=0.0, add_named_lesions=a), threshold)
                   for a in rule6}
        for k in range(len(imgs)):
            gt = arrays.masks[i + k]
            if not gt.any():
                continue
            if cond == "true":
                mu = scan_metrics(um[k, 0], gt)
                unet[0] += mu["fp_components"]
                unet[1] += 1
                f = froc_scan(gt, pu[k, 0], um[k, 0])
                unet_froc.append({"froc_tp": f["tp"], "froc_fp": f["fp"]})
            for a, (served, _, _, decisions) in answers.items():
                base = served[k, 0] > 0
                applies = decisions[k]["answered_by"] != UNET and bool(np.any(out["report_regions"][k]))
                prior = named_prior(out["report_regions"][k], out["region_labels"][k], REGION_STRIDE) if applies else None
                for t in grid:
                    mask = add_in_named_places(base, out["fallback_logits"][k, 0], prior, t) if prior is not None and t > 0 else base
                    m = scan_metrics(mask, gt)
                    c = counts[cond, a, t]
                    c[0] += m["gt_lesions"]
                    c[1] += m["detected_lesions"]
                    c[2] += m["fp_components"]
                    c[3] += 1
    if not anatomy:
        return {"chosen": 0.0, "reason": "no anatomy output", "sweep": []}
    curve = (froc(unet_froc) or {}).get("curve")
    if curve is None:
        return {"chosen": 0.0, "reason": "no scan with metastases", "sweep": []}

    def margin(c: list[int]) -> tuple[float, float, float]:
        sens, fpr = c[1] / max(c[0], 1), c[2] / max(c[3], 1)
        return sens, fpr, sens - sensitivity_at(curve, fpr)

    sweep = []
    for (cond, a, t), c in counts.items():
        if cond != "true":
            continue
        sens, fpr, mg = margin(c)
        row = {"t": t, "add_named_lesions": a, "sensitivity": round(sens, 4), "fp_per_scan": round(fpr, 3), "margin": round(mg, 4)}
        if ("shuffled", a, t) in counts:
            row["shuffled_margin"] = round(margin(counts["shuffled", a, t])[2], 4)
        sweep.append(row)
    unet_fp = round(unet[0] / max(unet[1], 1), 3)
    best = pick_place_rule(sweep, unet_fp)
    return {"chosen": float(best["t"]), "add_named_lesions": bool(best.get("add_named_lesions", settings.add_named_lesions)),
            "unet_fp_per_scan": unet_fp, "sweep": sweep,
            "rule": "the largest margin above the U-Net's FROC curve on scans with metastases, if larger than without the "
                    "prior, at FP per scan <= the U-Net's; else 0; then rule 6 (add_named_lesions) off where, at that "
                    "threshold, the answer without it is as sensitive at fewer FP per scan, and with another study's "
                    "reports no further below the U-Net's FROC curve"}


def pick_place_rule(sweep: list[dict[str, Any]], unet_fp: float) -> dict[str, Any]:
    """The row :func:`calibrate_named_place` chooses from its sweep (rows ``t`` / ``sensitivity`` / ``fp_per_scan``
    / ``margin``, and ``add_named_lesions`` when rule 6 is looked at beside the prior; the first row is the answer
    as calibrated before, without the prior). The threshold, with rule 6 as calibrated: the largest margin above
    the U-Net's FROC curve, if larger than the first row's, among the rows at no more false positives per scan than
    the U-Net's (ties: the higher threshold, fewer additions); else the first row. Then rule 6 (it adds the U-Net's
    confident lesions where the report names a metastasis, whole, also where the answer holds them already) is left
    off when, at that threshold, the answer without it is as sensitive with fewer false positives: the prior, which
    adds the U-Net's hot spots in the bones the report names, found every lesion rule 6 found, and rule 6 added only
    false positives and the U-Net's pixels around kept lesions; and, where the rows carry ``shuffled_margin`` (the
    same answers with another study's reports), that margin is no lower without rule 6: rule 6 also keeps the
    U-Net's confident lesions when a wrong report's named places fall on them. (Choosing both by the margin alone
    traded lesions for false positives: 3 seeds of ``bench text-gain`` lost 0.02 of lesion sensitivity, README.)"""
    off = sweep[0]
    same = off.get("add_named_lesions")
    ok = [r for r in sweep[1:] if r.get("add_named_lesions") == same and r["fp_per_scan"] <= unet_fp and r["margin"] > off["margin"]]
    best = max(ok, key=lambda r: (r["margin"], r["t"])) if ok else off
    if same:
        lean = next((r for r in sweep if r.get("add_named_lesions") is False and r["t"] == best["t"]), None)
        safe = lean is not None and lean.get("shuffled_margin", 0.0) >= best.get("shuffled_margin", 0.0)
        if lean is not None and safe and lean["sensitivity"] >= best["sensitivity"] and lean["fp_per_scan"] < best["fp_per_scan"]:
            return lean
    return best


def pick_named_place(sweep: list[dict[str, Any]], unet_fp: float) -> float:
    """The threshold :func:`pick_place_rule` chooses (0: off)."""
    return float(pick_place_rule(sweep, unet_fp)["t"])


def describe(res: dict[str, Any]) -> str:
    """One paragraph: the chosen setting and its scores in and out of sample."""
    s = res["settings"]
    rules = []
    if s["add_named_lesions"]:
        rules.append(f"adds those where the report names a metastasis (allow >= {s['allow_threshold']:g})")
    if s["negative_report_allow"] > 0:
        rules.append(f"no lesion when the report names none (allow map below {s['negative_report_allow']:g})")
    if s["max_unexplained"] < 1e9:
        rules.append(f"the U-Net above {s['max_unexplained']:g} unexplained hot spot(s) (confident >= {s['min_confidence']:g}, "
                     f"mention < {s['mention_threshold']:g})")
    if s.get("min_text_only_confidence", 0) > 0:
        rules.append(f"leaves out lesions only the text sees below {s['min_text_only_confidence']:g}")
    ins, oos = res["in_sample"], res["out_of_sample"]
    line = lambda e: ", ".join(f"{c} DSC {v['dsc']:.4f} sens {v['lesion_sensitivity']:.3f} at {v['fp_per_scan']:.2f} FP/scan "  # noqa: E731
                               f"(U-Net curve {v['unet_sensitivity_at_fp']:.3f})" for c, v in e.items())
    return (f"fail-safe calibrated on {res['val_scans']} validation scans: " + ("; ".join(rules) or "the dual-path answer as it is") +
            f".\n  in sample: {line(ins)}\n  out of sample ({res['folds']}-fold): {line(oos)}"
            + ("" if res["safe"] else "\n  NO setting met every safety constraint on these scans: the closest is used")
            + _named_place_line(res.get("named_place")))


def _named_place_line(r: dict[str, Any] | None) -> str:
    if not r or not r.get("sweep"):
        return ""
    off = r["sweep"][0]
    on = next((row for row in r["sweep"] if row["t"] == r["chosen"]
               and row.get("add_named_lesions") == r.get("add_named_lesions", off.get("add_named_lesions"))), off)
    rule6 = ("; rule 6 left off beside it (it added false positives the prior does not need)"
             if off.get("add_named_lesions") and on.get("add_named_lesions") is False else "")
    if not r["chosen"] and on is not off:
        return (f"\n  named-place prior: off; rule 6 left off (on scans with metastases sensitivity {off['sensitivity']:.3f} -> "
                f"{on['sensitivity']:.3f}, FP/scan {off['fp_per_scan']:.2f} -> {on['fp_per_scan']:.2f})")
    if on is off:
        return (f"\n  named-place prior: off (no threshold lay further above the U-Net's FROC curve than the answer without it, "
                f"sensitivity {off['sensitivity']:.3f} at {off['fp_per_scan']:.2f} FP/scan"
                + (f", margin {off['margin']:+.3f}" if "margin" in off else "") + ")")
    return (f"\n  named-place prior: U-Net hot spots >= {r['chosen']:g} in the bones the report names; on scans with metastases "
            f"sensitivity {off['sensitivity']:.3f} -> {on['sensitivity']:.3f}, FP/scan {off['fp_per_scan']:.2f} -> "
            f"{on['fp_per_scan']:.2f} (U-Net {r['unet_fp_per_scan']:.2f}"
            + (f", margin to the U-Net's FROC curve {off['margin']:+.3f} -> {on['margin']:+.3f}" if "margin" in on else "") + ")"
            + rule6)


def recalibrate(checkpoint: str | Path, data: str | Path, split: str = "val", out: str | Path | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Calibrate a dual-path checkpoint's fail-safe again on a split (e.g. a hospital's own validation
    cases and reports) and write it into the checkpoint (or a copy at ``out``); returns the calibration."""
    from bonescan.model.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if ckpt.net.fallback is None:
        raise BonescanError(f"{checkpoint}: a {ckpt.cfg.model} model has no fail-safe to calibrate")
    arrays = load_split(data, split, progress)
    seed = int(ckpt.metadata.get("seed") or 0)
    part_share = float((ckpt.metadata.get("train_config") or {}).get("report_part_share", 0.0))
    texts = rewrite_split(arrays.metas, arrays.reports, ckpt.metadata.get("report_styles"), seed, part_share)
    res = calibrate_failsafe(ckpt, arrays, texts, seed=seed, progress=progress)
    res["data"], res["split"] = str(data), split
    metadata = {**ckpt.metadata, "failsafe": json.loads(json.dumps(res))}
    save_checkpoint(out or checkpoint, ckpt.net, ckpt.tokenizer_files, metadata)
    return res
