"""Logits -> mask, probability map and a lesion list (the Triton ``postprocess`` model runs this file).

Needs numpy and scipy only. A lesion is an 8-connected component of the thresholded probability
map with at least ``contract.MIN_LESION_PIXELS`` pixels; for each one the list gives its area in
pixels and mm² (from the pixel spacing), bounding box, centroid, mean and max probability, and the
side of the patient it lies on (the model frame is the anterior view: image left = patient right).
Given the anatomy output (``region_labels``), each lesion is also named by the skeleton region
holding most of it (``anatomy.lesion_sites``: region, English and Chinese name, side, share), and
the scan gets its Bone Scan Index, Soloway grade and hot spots per region (``anatomy.bone_burden``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from bonescan.anatomy import grid_of, name_lesions
from bonescan.components import Components, components
from bonescan.contract import (
    BSI_THRESHOLD,
    FALLBACK_LOGITS,
    IMAGE_WIDTH,
    LOGITS,
    REGION_LABELS,
    REGION_STRIDE,
    REPORT_BENIGN,
    REPORT_NAMED,
    REPORT_REGIONS,
    TEXT_MAP,
    TEXT_STATS,
    THRESHOLD,
)


def sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float32)
    np.negative(x, out=out)
    np.exp(np.clip(out, -80, 80, out=out), out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


#: logits this far below logit(threshold) are below the threshold whatever float32 rounding the sigmoid does
_BAND = 1e-3


def above(logits: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """``sigmoid(logits) >= threshold`` as :func:`sigmoid` computes it, with the sigmoid evaluated only where
    the logit is within :data:`_BAND` of logit(threshold) or above (the few lesion pixels), not over the whole map."""
    x = np.asarray(logits, dtype=np.float32)
    cut = float(np.log(threshold / (1.0 - threshold))) - _BAND
    idx = np.flatnonzero(x >= cut)
    out = np.zeros(x.shape, dtype=bool)
    out.ravel()[idx[sigmoid(x.ravel()[idx]) >= threshold]] = True
    return out


def bsi_labels(c: Components, prob: np.ndarray, threshold: float = BSI_THRESHOLD) -> np.ndarray:
    """The lesion labels the Bone Scan Index counts: ``c.labels`` without the pixels below ``threshold``
    (contract.BSI_THRESHOLD; the lesions, their names and the mask keep them)."""
    out = c.labels.copy()
    if c.n:
        out.ravel()[c.order[np.asarray(prob).ravel()[c.order] < threshold]] = 0
    return out


def lesions_of(mask: np.ndarray, prob: np.ndarray, spacing: tuple[float, float],
               comps: Components | None = None, anatomy: dict[str, Any] | None = None,
               regions: np.ndarray | None = None, image: np.ndarray | None = None,
               stride: int = 1, named: np.ndarray | None = None,
               benign: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """mask [H, W] bool, prob [H, W] -> (mask without specks, lesion list sorted by area, largest first);
    ``comps``: the mask's components when the caller has them already (then ``mask`` is not read).
    ``regions`` (uint8 [2, H / stride, W / stride]: the anatomy output on its grid, or a full-resolution map
    with stride 1; ``image`` [2, H, W] lets the clearer view name a lesion): each lesion gets its site, and
    ``anatomy`` (a dict) is filled with the scan's burden; ``named`` [N_REGION_CLASSES]: the bones the report
    names, preferred among a lesion's candidate bones (anatomy.lesion_sites); ``benign`` (the scan's report_regions
    and report_benign rows): a lesion at a bone the report calls benign and names as no metastasis is left out of
    the Bone Scan Index (report_sites.called_benign_classes; each lesion says ``in_bsi``)."""
    c = comps if comps is not None else components(mask)
    keep = c.mask
    sites = None
    left_out: tuple[int, ...] = ()
    if regions is not None:
        leave_out = None
        if benign is not None:
            from bonescan.report_sites import called_benign_classes

            leave_out = lambda found: called_benign_classes([s.candidates for s in found], *benign)  # noqa: E731
        sites, burden = name_lesions(c.labels, c.n, regions, image, stride, named, burden_labels=bsi_labels(c, prob),
                                     leave_out=leave_out)
        left_out = burden.left_out
        if anatomy is not None:
            anatomy.update(burden.to_dict())
    if c.n == 0:
        return keep, []
    ys, xs = np.divmod(c.order, c.labels.shape[1])
    y0, y1 = np.minimum.reduceat(ys, c.starts), np.maximum.reduceat(ys, c.starts)
    x0, x1 = np.minimum.reduceat(xs, c.starts), np.maximum.reduceat(xs, c.starts)
    # centroid as the per-component loop had it: mean of bbox-local coordinates, plus the corner
    cy = (np.add.reduceat(ys, c.starts) - y0 * c.area) / c.area + y0
    cx = (np.add.reduceat(xs, c.starts) - x0 * c.area) / c.area + x0
    p = np.asarray(prob).ravel()[c.order]
    pmax = c.max_of_flat(p)
    ends = c.starts + c.area
    px_area = float(spacing[0]) * float(spacing[1])
    lesions = [_lesion(int(c.area[k]), px_area, (y0[k], x0[k], y1[k], x1[k]), float(cy[k]), float(cx[k]),
                       float(p[c.starts[k]:ends[k]].mean()), float(pmax[k])) for k in range(c.n)]
    if sites is not None:
        for k, (les, site) in enumerate(zip(lesions, sites, strict=True)):
            les["site"] = site.to_dict()
            les["in_bsi"] = k + 1 not in left_out
    lesions.sort(key=lambda d: -d["area_px"])
    for i, les in enumerate(lesions):
        les["id"] = i
    return keep, lesions


def _lesion(area: int, px_area: float, bbox: tuple, cy: float, cx: float, mean_p: float, max_p: float) -> dict[str, Any]:
    """One lesion's JSON entry. The mean probability is numpy's float32 mean of the component's pixels in
    raster order (the same summation as before, so the rounded figures are identical)."""
    return {
        "area_px": area,
        "area_mm2": round(area * px_area, 1),
        "bbox": [int(v) for v in bbox],  # y0, x0, y1, x1
        "centroid": [round(cy, 1), round(cx, 1)],
        "mean_probability": round(mean_p, 4),
        "max_probability": round(max_p, 4),
        "side": "right" if cx < IMAGE_WIDTH / 2 else "left",  # patient's side
    }


def _regions_of(regions: np.ndarray | None, b: int) -> np.ndarray | None:
    """Scan ``b``'s anatomy output on its grid (one class per REGION_STRIDE² cell: lesions are named on it
    without upsampling), or None (no anatomy output, or one that is all background: a U-Net trained on data
    without region maps)."""
    if regions is None or not np.any(regions[b]):
        return None
    return grid_of(regions[b])


def _anatomy_json(anatomy: dict[str, Any], regions: np.ndarray | None) -> dict[str, Any]:
    return {"anatomy": anatomy} if regions is not None else {}


def postprocess(logits: np.ndarray, spacing: np.ndarray, threshold: float = THRESHOLD,
                extra: dict[str, Any] | None = None, regions: np.ndarray | None = None,
                images: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """logits float32 [B, 1, H, W], spacing float32 [B, 2] ->
    (mask uint8 [B, 1, H, W], probability float32 [B, 1, H, W], B lesion-list JSON strings);
    ``extra`` keys are added to every JSON. ``regions`` int [B, 2, H / REGION_STRIDE, W / REGION_STRIDE]
    (the anatomy output) and ``images`` [B, 2, H, W]: lesions named by bone, the scan's ``anatomy``."""
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must be [B, 1, H, W], got {list(logits.shape)}")
    spacing = np.asarray(spacing, dtype=np.float32).reshape(len(logits), 2)
    prob = sigmoid(logits)
    masks = np.zeros(logits.shape, dtype=np.uint8)
    out_json: list[str] = []
    for b in range(len(logits)):
        reg, anatomy = _regions_of(regions, b), dict[str, Any]()
        keep, lesions = lesions_of(prob[b, 0] >= threshold, prob[b, 0], (float(spacing[b, 0]), float(spacing[b, 1])),
                                   anatomy=anatomy, regions=reg, image=None if images is None else images[b], stride=REGION_STRIDE)
        masks[b, 0] = keep
        out_json.append(json.dumps({"lesions": lesions, "count": len(lesions), "threshold": threshold,
                                    "pixel_spacing_mm": [round(float(v), 4) for v in spacing[b]], **(extra or {}),
                                    **_anatomy_json(anatomy, reg)}, ensure_ascii=False))
    return masks, prob, out_json


def postprocess_failsafe(logits: np.ndarray, fallback_logits: np.ndarray, text_map: np.ndarray, text_stats: np.ndarray,
                         spacing: np.ndarray, settings, threshold: float = THRESHOLD, regions: np.ndarray | None = None,
                         images: np.ndarray | None = None, report_regions: np.ndarray | None = None,
                         report_named: np.ndarray | None = None,
                         report_benign: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[str], list[dict[str, Any]]]:
    """The dual-path graph's three answers -> one per scan (bonescan.failsafe decides which).

    logits, fallback_logits float32 [B, 1, H, W]; text_map [B, 2, h, w]; text_stats int32 [B, 3];
    spacing [B, 2] -> (mask uint8 [B, 1, H, W], probability [B, 1, H, W] (the map behind each answer:
    failsafe.served_probability), B lesion-list JSON strings that also say which path answered and
    why, B decision dicts). ``regions`` / ``images``: lesions named by bone, as :func:`postprocess`.
    ``report_regions`` [B, N_REGION_CLASSES], 1 = a bone the report names as metastatic, with ``regions``:
    the named-place prior, where ``settings.named_place_threshold`` > 0 (failsafe.add_in_named_places): the
    U-Net's weaker hot spots in the named bones join the report-guided answer. ``report_named`` [B,
    N_REGION_CLASSES], 1 = a bone the report names itself (no neighbour): it names a lesion the image leaves
    between bones (:func:`naming_bones`; without it, lesions are named from the image alone). ``report_benign`` [B,
    N_REGION_CLASSES], 1 = a bone the report calls benign: with ``report_regions``, the lesions there that the report
    names as no metastasis are left out of the Bone Scan Index, whichever path answers (:func:`lesions_of`).
    """
    from bonescan.failsafe import (
        UNET,
        added_pixels,
        answer_mask,
        choose,
        measure,
        text_only_measures,
        with_named_places,
    )

    logits = np.asarray(logits, dtype=np.float32)
    fallback_logits = np.asarray(fallback_logits, dtype=np.float32)
    spacing = np.asarray(spacing, dtype=np.float32).reshape(len(logits), 2)
    masks = np.zeros(logits.shape, dtype=np.uint8)
    probs = np.zeros(logits.shape, dtype=np.float32)
    out_json: list[str] = []
    decisions: list[dict[str, Any]] = []
    for b in range(len(logits)):
        # one sigmoid over the whole map per scan (the answer's); the masks and the U-Net's confidence need
        # it only at the few pixels near or above the threshold
        d, u = logits[b, 0], fallback_logits[b, 0]
        sp = (float(spacing[b, 0]), float(spacing[b, 1]))
        comp_d, comp_u = components(above(d, threshold)), components(above(u, threshold))
        confidence = comp_u.max_of_flat(sigmoid(u.ravel()[comp_u.order]))
        # rule 7 (failsafe.text_only): per lesion of the report-guided answer its highest probability and the U-Net's
        dual_conf, dual_unet = text_only_measures(comp_d, sigmoid(d.ravel()[comp_d.order]), sigmoid(u.ravel()[comp_d.order]),
                                                  comp_u.mask)
        m = measure(comp_d.mask, comp_u.mask, None, text_map[b], text_stats[b], fallback=comp_u, confidence=confidence,
                    dual=comp_d, dual_confidence=dual_conf, dual_unet_max=dual_unet)
        reg, anatomy = _regions_of(regions, b), dict[str, Any]()
        if settings.parsed_mentions:
            read_places(m, regions, b, report_regions, report_benign, images)
        info = choose(m, settings)
        final = answer_mask(m, info).astype(bool)
        # failsafe.served_probability, computed from the logits: the U-Net's map, or the dual-path one with
        # the U-Net's probability where it added a lesion
        prob = probs[b, 0]
        prob[...] = sigmoid(u if info["answered_by"] == UNET else d)
        if info["answered_by"] != UNET and len(info["add"]):
            idx = added_pixels(m, info["add"])
            prob.ravel()[idx] = np.maximum(prob.ravel()[idx], sigmoid(u.ravel()[idx]))
        comps = _answer_components(info, comp_d, comp_u)
        prior_on = report_regions is not None and reg is not None and settings.named_place_threshold > 0
        if prior_on:
            info["named_place_pixels"] = 0
        if prior_on and report_regions is not None:
            grown = with_named_places(final, u, report_regions[b], reg, settings, info["answered_by"])
            idx = np.flatnonzero(grown & ~final)
            if len(idx):
                prob.ravel()[idx] = np.maximum(prob.ravel()[idx], sigmoid(u.ravel()[idx]))
                final, comps = grown, None  # lesions joined: label the answer again
                info["named_place_pixels"] = int(len(idx))
        named = naming_bones(report_named, b, info["answered_by"])
        benign = (report_regions[b], report_benign[b]) if report_regions is not None and report_benign is not None else None
        keep, lesions = lesions_of(final, prob, sp, comps, anatomy=anatomy, regions=reg,
                                   image=None if images is None else images[b], stride=REGION_STRIDE, named=named,
                                   benign=benign)
        masks[b, 0] = keep
        image_only = _image_only(comp_u, confidence, keep, u, sp, reg, images, b, settings) if info["answered_by"] != UNET else None
        info["added_labels"] = info.pop("add")
        info["dropped_labels"] = info.pop("drop")
        decisions.append(info)
        out_json.append(json.dumps({"lesions": lesions, "count": len(lesions), "threshold": threshold,
                                    "pixel_spacing_mm": [round(float(v), 4) for v in spacing[b]],
                                    "answered_by": info["answered_by"], "reason": info["reason"],
                                    "signals": info["signals"], **_anatomy_json(anatomy, reg),
                                    # pixels the named-place prior added (when it is on: a threshold and the report's bones)
                                    **({"named_place_pixels": info["named_place_pixels"]} if prior_on else {}),
                                    **({"image_only": image_only} if image_only is not None else {})},
                                   ensure_ascii=False))
    return masks, probs, out_json, decisions


def read_places(m, regions: np.ndarray | None, b: int, report_regions: np.ndarray | None, report_benign: np.ndarray | None,
                images: np.ndarray | None = None) -> None:
    """Scan ``b``'s :func:`parsed_mentions` into ``m.parsed`` (failsafe.Measured), given the anatomy output and the
    report's places (the tokenizer's report_regions and report_benign, [B, N_REGION_CLASSES]); left None without
    them. The served answer and the evaluation read them with this one function; the calibration does not (it
    chooses the thresholds on the model's own mention map: README, "The grounding table")."""
    reg = _regions_of(regions, b)
    if reg is not None and report_regions is not None and report_benign is not None:
        m.parsed = parsed_mentions(m, reg, report_regions[b], report_benign[b], None if images is None else images[b])


def parsed_mentions(m, reg: np.ndarray, wide: np.ndarray, benign: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """Rule 5 with ``parsed_mentions`` (bonescan.failsafe): per U-Net lesion of ``m`` (failsafe.Measured), whether
    one of its candidate bones on the anatomy output ``reg`` (anatomy.lesion_sites) is one the report names as a
    metastasis (``wide``: report_regions, neighbours within one) or calls benign (``benign``: report_benign). Only
    the lesions the report-guided answer drops are looked at (rule 5 counts no other); the rest are False. The
    lesions are named only when the answer drops one and the report names a place."""
    from bonescan.anatomy import lesion_sites, view_weights
    from bonescan.report_sites import flagged_regions

    n = len(m.kept)
    out = np.zeros(n, bool)
    ask = ~np.asarray(m.kept, bool)
    if not ask.any():
        return out
    places = flagged_regions(wide, benign)
    if not places:
        return out
    w = view_weights(image, m.labels, n) if image is not None else None
    for k, site in enumerate(lesion_sites(m.labels, n, reg, w, REGION_STRIDE)):
        out[k] = bool(ask[k]) and any(r in places for r in site.candidates)
    return out


def naming_bones(report_named: np.ndarray | None, b: int, answered_by: str) -> np.ndarray | None:
    """The bones the report of scan ``b`` names (bool [N_REGION_CLASSES]) as the served naming reads them: they
    name a lesion the image leaves between bones it touches (anatomy.lesion_sites), unless the U-Net answers (then
    the report was not trusted); None without them. ``report_named``: the tokenizer's (the bones the report wrote,
    no neighbour)."""
    from bonescan.failsafe import UNET

    return np.asarray(report_named[b]) > 0 if report_named is not None and answered_by != UNET else None


def _image_only(comp_u: Components, confidence: np.ndarray, answer: np.ndarray, u: np.ndarray, sp: tuple[float, float],
                reg: np.ndarray | None, images: np.ndarray | None, b: int, settings) -> list[dict[str, Any]] | None:
    """The second reader's image-only evidence: the bundled U-Net's lesions that the answer does not touch, at
    ``settings.image_only_confidence`` or more, named by bone like the answer's (None without the anatomy
    output or with the listing off). The report-guided answer follows the report, so a lesion the report left
    out is usually not in it; the image-only network still sees it."""
    if reg is None or settings.image_only_confidence > 1.0:
        return None
    touched = np.zeros(comp_u.n + 1, bool)
    touched[comp_u.labels.ravel()[np.flatnonzero(answer)]] = True
    chosen = np.flatnonzero((np.asarray(confidence) >= settings.image_only_confidence) & ~touched[1:]) + 1
    if not len(chosen):
        return []
    mask = np.zeros(u.shape, bool)
    mask.ravel()[comp_u.pixels_of(chosen)] = True
    _, lesions = lesions_of(mask, sigmoid(u), sp, regions=reg, image=None if images is None else images[b], stride=REGION_STRIDE)
    return lesions


def served_failsafe(out: dict[str, np.ndarray], spacing: np.ndarray, settings, threshold: float = THRESHOLD,
                    images: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[str], list[dict[str, Any]]]:
    """The served ensemble's answer from a dual-path graph's outputs by name (PyTorch's ``Predictor.outputs``,
    onnxruntime's ``OrtPipeline.outputs``): :func:`postprocess_failsafe` with everything postprocess gets in
    Triton, the anatomy output and the report's bones included (the named-place prior), so in-process
    answers are the served ones. The one place that maps those outputs to its arguments."""
    return postprocess_failsafe(out[LOGITS.name], out[FALLBACK_LOGITS.name], out[TEXT_MAP.name], out[TEXT_STATS.name], spacing,
                                settings, threshold, regions=out.get(REGION_LABELS.name), images=images,
                                report_regions=out.get(REPORT_REGIONS.name), report_named=out.get(REPORT_NAMED.name),
                                report_benign=out.get(REPORT_BENIGN.name))


def _answer_components(info: dict[str, Any], comp_d: Components, comp_u: Components) -> Components | None:
    """The answer's components when they are one of the two already labelled (the U-Net's mask, or the
    report-guided one alone); None when lesions were added (they may join a kept one: label again).
    The cleaned masks hold no speck, so their components are the answer's as they are."""
    from bonescan.failsafe import UNET

    if info["answered_by"] == UNET:
        return comp_u
    if len(info["add"]) or len(info.get("drop", ())):
        return None
    return None if info["empty"] else comp_d
