"""Scoring the second reader on synthetic data: from the ground truth, or on a model's served answers.

Each case's lesions are the true mask's components, named by the true label map (``bonescan.anatomy``),
or, given ``answers``, the served answer's components named by the model's anatomy output (each matched
to the true lesion it overlaps most; a false positive matches none);
the report's metastatic sites come from ``report_sites``; ``meta.json`` says which lesions the report left
out and which site it invented (``SynthConfig.omit_lesion_rate`` / ``invent_site_rate``). Reports of
widespread disease written in coarse groups only (``meta report.style == "vague"``) name no bone and cannot
be checked bone by bone: they are counted apart, not scored.

``bonescan data second-reader --data DATA`` prints :func:`score_cases`' figures. Report text is never printed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from bonescan.anatomy import LesionSite, bone_burden, lesion_sites, view_weights
from bonescan.components import components
from bonescan.report_sites import (
    FLAG_CONFIDENCE,
    ReportSite,
    benign_sites,
    report_sites,
    second_read,
    site_matches,
)


@dataclass
class CaseLesions:
    """A case's true lesions as the second reader sees them: labels, sites, and the meta lesion of each."""

    labels: np.ndarray
    sites: list[LesionSite]
    meta_ids: list[int]  # per component the id of the meta.json lesion nearest its centroid (-1: none)
    confidence: list[float] | None = None  # per component its mean probability (None: true lesions)


def true_lesions(mask: np.ndarray, regions: np.ndarray, image: np.ndarray, meta: dict | None) -> CaseLesions:
    """The true mask's components, named by the true label map (the view that sees each best weighs most)."""
    c = components(np.asarray(mask) > 0)
    sites = lesion_sites(c.labels, c.n, regions, view_weights(image, c.labels, c.n)) if c.n else []
    ids = [-1] * c.n
    les = (meta or {}).get("lesions", [])
    if c.n and les:
        ys, xs = np.divmod(c.order, c.labels.shape[1])
        cy, cx = np.add.reduceat(ys, c.starts) / c.area, np.add.reduceat(xs, c.starts) / c.area
        centers = np.array([les_["center"] for les_ in les], float)
        d = (centers[None, :, 0] - cy[:, None]) ** 2 + (centers[None, :, 1] - cx[:, None]) ** 2
        ids = [int(les[int(k)]["id"]) for k in np.argmin(d, axis=1)]
    return CaseLesions(c.labels, sites, ids)


def answer_lesions(mask: np.ndarray, grid: np.ndarray, stride: int, image: np.ndarray, truth: CaseLesions,
                   prob: np.ndarray | None = None, named: np.ndarray | None = None) -> CaseLesions:
    """A served answer's components, named by the anatomy output on its grid (as postprocess names them), each
    with the meta.json id of the true lesion it overlaps most (-1: a false positive) and, given the answer's
    probability map ``prob``, its mean probability (LESIONS ``mean_probability``). ``named``: the bones the
    report names itself where the served naming reads them (postprocess.naming_bones)."""
    from bonescan.anatomy import name_lesions

    c = components(np.asarray(mask) > 0)
    sites = name_lesions(c.labels, c.n, grid, image, stride, named)[0] if c.n else []
    ids = [-1] * c.n
    if c.n and truth.meta_ids:
        sel = (c.labels > 0) & (truth.labels > 0)
        pairs = np.zeros((c.n + 1, len(truth.meta_ids) + 1), np.int64)
        np.add.at(pairs, (c.labels[sel], truth.labels[sel]), 1)
        for k in range(c.n):
            if pairs[k + 1].any():
                ids[k] = truth.meta_ids[int(np.argmax(pairs[k + 1])) - 1]
    conf = None
    if prob is not None:
        sums = np.bincount(c.labels.ravel(), weights=np.asarray(prob, np.float64).ravel(), minlength=c.n + 1)[1:]
        conf = [float(v) for v in sums / np.maximum(np.bincount(c.labels.ravel(), minlength=c.n + 1)[1:], 1)]
    return CaseLesions(c.labels, sites, ids, conf)


def _pr(tp: int, fp: int, fn: int) -> dict[str, Any]:
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None}


def score_cases(images: np.ndarray, masks: np.ndarray, regions: np.ndarray, reports: list[str],
                metas: list[dict[str, Any] | None], answers: list[CaseLesions] | None = None,
                min_confidence: float = FLAG_CONFIDENCE) -> dict[str, Any]:
    """The second reader's figures over cases with ground truth.

    ``answers``: per case the served answer's lesions (:func:`answer_lesions`); the flags are then those the
    client gives on the model's answer: an omitted lesion the model missed is a miss of ``not_in_report``, a
    false positive flagged ``not_in_report`` a false alarm, and a true report site whose lesion the model
    missed a false ``not_found``. Default: the true lesions. ``min_confidence``: an answer's lesion below it is
    ``uncertain``, not flagged (``report_sites.FLAG_CONFIDENCE``; true lesions are always flagged).

    Returns:
        ``not_in_report`` / ``not_found``: precision and recall on the reports written with lesions left out /
        a site invented; ``false_flags``: on the other checkable reports, the share of lesions flagged
        ``not_in_report`` and of sites flagged ``not_found`` (flags a faithful report should not get);
        ``region_parse``: per house style, the share of lesions whose region the report's parsed sites name
        exactly (and within the matching tolerance), on reports with nothing left out or invented;
        ``naming``: the share of lesions whose region the label map names as meta.json does; ``bsi``: the
        true Bone Scan Index's spread; ``skipped_vague`` reports.
    """
    omit = [0, 0, 0]
    invent = [0, 0, 0]
    false_lesion, n_lesion, false_site, n_site = 0, 0, 0, 0
    parse: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    named = [0, 0]
    bsis: list[float] = []
    vague = 0
    for i, meta_or_none in enumerate(metas):
        meta = meta_or_none or {}  # a case without meta.json has no ground truth: its lesions are still named
        cl = true_lesions(masks[i], regions[i], images[i], meta)
        if answers is not None:
            cl = answers[i]
        bsis.append(bone_burden(cl.labels, len(cl.sites), regions[i], cl.sites).bsi)
        by_id = {int(les["id"]): les for les in meta.get("lesions", [])}
        for s, k in zip(cl.sites, cl.meta_ids, strict=True):
            if k in by_id:
                named[0] += 1
                named[1] += s.region == by_id[k]["region"]
        if meta.get("report", {}).get("style") == "vague":
            vague += 1
            continue
        sites = report_sites(reports[i])
        read = second_read([s.candidates for s in cl.sites], sites, benign_sites(reports[i]), cl.confidence, min_confidence)
        truth = meta.get("report_truth") or {}
        omitted = set(truth.get("omitted", []))
        invented = [inv["region"] for inv in truth.get("invented", [])]
        if omitted:
            for flagged, k in zip(read.not_in_report, cl.meta_ids, strict=True):
                actual = k in omitted
                omit[0] += flagged and actual
                omit[1] += flagged and not actual
                omit[2] += (not flagged) and actual
            if answers is not None:  # omitted lesions the answer missed: the reader cannot flag them
                omit[2] += len({k for k in omitted if k in by_id} - set(cl.meta_ids))
        if invented:
            for site, found in zip(read.sites, read.found, strict=True):
                if not found:
                    hit = any(site.region == r for r in invented)
                    invent[0] += hit
                    invent[1] += not hit
            invent[2] += sum(1 for r in invented if not any(site.region == r and not f
                                                             for site, f in zip(read.sites, read.found, strict=True)))
        if not omitted and not invented:
            n_lesion += len(read.in_report)
            false_lesion += sum(read.not_in_report)
            n_site += len(read.found)
            false_site += sum(1 for x in read.found if not x)
            _count_parse(parse[meta.get("report", {}).get("house_style", "?")], meta, sites)
    return {
        "cases": len(metas),
        "skipped_vague": vague,
        "not_in_report": _pr(*omit),
        "not_found": _pr(*invent),
        "false_flags": {"lesions_not_in_report": _share(false_lesion, n_lesion), "lesions": n_lesion,
                        "sites_not_found": _share(false_site, n_site), "sites": n_site},
        "region_parse": {hs: {"lesions": n, "exact": _share(ok, n), "within_tolerance": _share(near, n)}
                         for hs, (n, ok, near) in sorted(parse.items())},
        "naming": {"lesions": named[0], "region_as_meta": _share(named[1], named[0])},
        "bsi": {"median": round(float(np.median(bsis)), 4) if bsis else None,
                "max": round(float(np.max(bsis)), 4) if bsis else None},
    }


def _count_parse(row: list[int], meta: dict, sites: list[ReportSite]) -> None:
    for les in meta.get("lesions", []):
        row[0] += 1
        row[1] += any(s.region == les["region"] and not s.groups for s in sites)
        row[2] += any(site_matches(s, les["region"]) for s in sites)


def _share(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None
