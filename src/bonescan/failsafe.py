"""Which answer a scan gets: the text-guided one, or the image-only U-Net's when the report cannot be trusted.

The dual-path model reads the report to explain hot spots away (a degenerative knee, a negative
study). That is its gain, and its danger: a report the model cannot read, or a report that belongs
to another study, makes it veto real metastases. So every dual-path answer comes with the answer of
the image-only U-Net it was trained beside (one graph, see ``model.network.DeployedSegmenter``) and
measured signals decide, per scan, which one is given:

* ``unknown share``: the share of the report's tokens the text encoder never saw in training
  ([UNK], or characters absent from every training text). A report written in other words than
  any the model learned is not read; it is not guessed at either.
* ``unexplained lesions``: lesions the image-only U-Net finds with confidence, that the dual-path
  answer drops, at places the report does not mention at all (the report's ``mention`` map,
  trained on every finding a report describes: metastases, benign findings, artefacts). A report
  that explains a hot spot away names it (a degenerative knee, a healed fracture); one that drops
  confident hot spots it never mentions is not describing this study: another patient's report,
  or one the model misread. Hot spots the U-Net finds with low confidence are not counted: most of
  them are its own false positives, which the report rightly does not mention. Counted two ways:
  how many such lesions, and how many pixels they cover together (``unexplained area``). A true
  negative report explains away a U-Net false positive here and there, mostly small; another
  study's negative report put on a scan with metastases drops several, or large, ones. The area
  tells these apart where the count alone cannot.

A report that names no metastasis anywhere (its ``allow`` map below a calibrated level
everywhere: a negative study) gives an empty answer when it is trusted, with the fail-safe on or
off: the dual-path model's veto is soft, and a hot spot it leaves behind on a scan its report
calls negative is a false positive the report has already ruled out. It is reading the report,
so a wrong negative report costs lesions unless the fail-safe catches it (the hot spots it would
drop are unexplained, see above), which is why it is calibrated with the fail-safe.

No report (or an empty one) gives the U-Net's answer too. When the report is trusted, the answer
is the dual-path mask plus any confident U-Net lesion at a place the report allows a metastasis
(its ``allow`` map high: the report names a metastasis there): the report's location guides the
answer but does not drop a lesion the image shows where the report puts one. The dual-path model
explains hot spots away; this keeps it from explaining away the ones the report itself names.

The thresholds are calibrated on the validation split at the end of training (true reports against
another study's reports) and travel with the checkpoint, the export and the Triton config.
Needs numpy and scipy only: the Triton ``postprocess`` step runs this file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DUALPATH = "dualpath"
UNET = "unet"


@dataclass(frozen=True)
class FailSafeSettings:
    enabled: bool = True
    #: more than this share of the report's tokens unknown to the model: the report is not read
    max_unknown_share: float = 0.15
    #: more than this many unexplained lesions (see the module docstring): the report does not fit the image
    max_unexplained: float = 1.0
    #: a U-Net lesion counts as confident when its highest probability reaches this
    min_confidence: float = 0.8
    #: a lesion counts as mentioned where sigmoid(mention) reaches this at one of its pixels
    mention_threshold: float = 0.5
    #: the report names a metastasis where sigmoid(allow) reaches this at one of the lesion's pixels
    allow_threshold: float = 0.7
    #: add confident U-Net lesions at places the report names as metastases to a trusted dual-path answer
    add_named_lesions: bool = True
    #: more than this many pixels (of the model's 1024 x 256 input grid) covered by unexplained lesions:
    #: the report does not fit the image
    max_unexplained_area: float = 1.0e9
    #: more than this many places the report names as metastases (allow map >= allow_threshold) where
    #: the image shows no hot spot at all (U-Net probability below 0.5 everywhere there): the report
    #: does not fit the image
    max_unseen_named: float = 1000.0
    #: a report whose allow map stays below this everywhere names no metastasis: the report-guided answer
    #: is empty (0 = never; applies with the fail-safe off too, see the module docstring)
    negative_report_allow: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any] | None, prefix: str = "") -> FailSafeSettings:
        """From a dict of values, or of strings (a Triton config's parameters, keys ``prefix + field``)."""
        default = FailSafeSettings()
        if not d:
            return default
        values: dict[str, Any] = {}
        for name in default.to_dict():
            if prefix + name not in d:
                continue
            v = d[prefix + name]
            if isinstance(getattr(default, name), bool):
                values[name] = v if isinstance(v, bool) else str(v).strip().lower() in ("1", "true", "yes")
            else:
                values[name] = float(v)
        return FailSafeSettings(**values)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def upsample(cells: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A coarse [h, w] map to full resolution by repeating each cell (no interpolation: a cell is a place)."""
    h, w = cells.shape
    return np.repeat(np.repeat(cells, shape[0] // h, axis=0), shape[1] // w, axis=1)


def label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Per label 1..n (each present in ``labels``) the highest of ``values`` over its pixels, as
    float32 [n]: what ``scipy.ndimage.maximum(values, labels, 1..n)`` gives, without its argsort
    over the whole image (most of the fail-safe's time per scan)."""
    lab = np.asarray(labels).ravel()
    sel = lab > 0
    out = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(out, lab[sel] - 1, np.asarray(values, np.float32).ravel()[sel])
    return out


def cell_max(img: np.ndarray, cells: tuple[int, int]) -> np.ndarray:
    """[H, W] -> [h, w]: the highest value in each cell of a coarse map (the inverse of :func:`upsample`)."""
    h, w = cells
    return np.asarray(img).reshape(h, img.shape[0] // h, w, img.shape[1] // w).max(axis=(1, 3))


@dataclass
class Measured:
    """What one scan's decision depends on, measured once (thresholds are applied by :func:`choose`).

    Per U-Net lesion k (an 8-connected component of its cleaned mask): its highest probability,
    the highest ``mention`` and ``allow`` probabilities over its pixels, and whether the dual-path
    answer keeps any of it. The masks stay for building the answer.
    """

    mask: np.ndarray  # [H, W] bool, the dual-path answer
    fallback_mask: np.ndarray  # [H, W] bool, the U-Net's
    labels: np.ndarray  # [H, W] int, U-Net lesion k = k (0 = none)
    confidence: np.ndarray  # [n]
    mention: np.ndarray  # [n]
    named: np.ndarray  # [n]
    kept: np.ndarray  # [n] bool
    area: np.ndarray  # [n] pixels
    tokens: int
    unknown: int
    #: per place the report may name (8-connected cells of sigmoid(allow) >= 0.5): its highest allow
    #: probability and the U-Net's highest probability there
    place_allow: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    place_prob: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    #: the highest sigmoid(allow) anywhere: how strongly the report names a metastasis at its most
    allow_max: float = 1.0


def measure(mask: np.ndarray, fallback_mask: np.ndarray, fallback_prob: np.ndarray, text_map: np.ndarray,
            text_stats: np.ndarray) -> Measured:
    """mask, fallback_mask: [H, W] the dual-path and the U-Net answers, cleaned binary masks;
    fallback_prob: [H, W] the U-Net's probabilities; text_map: [2, h, w] allow / mention logits;
    text_stats: [2] (report tokens, of them unknown to the model)."""
    from scipy.ndimage import label

    from bonescan.contract import EIGHT

    mask, fallback_mask = np.asarray(mask).astype(bool), np.asarray(fallback_mask).astype(bool)
    p = _sigmoid(np.asarray(text_map, np.float32))
    mention = upsample(p[1], mask.shape)
    named = upsample(p[0], mask.shape)
    lab, n = label(fallback_mask, structure=EIGHT)
    kept = label_max(mask, lab, n) > 0
    prob = np.asarray(fallback_prob, np.float32)
    places, n_places = label(p[0] >= 0.5, structure=EIGHT)
    place_allow = label_max(p[0], places, n_places)
    place_prob = label_max(cell_max(prob, p[0].shape), places, n_places)
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return Measured(mask, fallback_mask, lab, label_max(prob, lab, n), label_max(mention, lab, n), label_max(named, lab, n), kept,
                    area, int(text_stats[0]), int(text_stats[1]), place_allow, place_prob, float(p[0].max()))


def choose(m: Measured, s: FailSafeSettings) -> dict[str, Any]:
    """The decision from the measurements: which path answers, why, the signals, and which U-Net
    lesions a trusted dual-path answer adds (their labels)."""
    confident = m.confidence >= s.min_confidence
    unexplained = ~m.kept & confident & (m.mention < s.mention_threshold)
    unseen = (m.place_allow >= s.allow_threshold) & (m.place_prob < 0.5)
    sig: dict[str, Any] = {
        "report_tokens": m.tokens,
        "unknown_share": round(m.unknown / m.tokens, 4) if m.tokens else None,
        "unet_lesions": int(len(m.kept)),
        "dropped_lesions": int((~m.kept).sum()),
        "unexplained_lesions": int(unexplained.sum()),
        "unexplained_area_px": int(m.area[unexplained].sum()),
        "unseen_named_places": int(unseen.sum()),
        "allow_max": round(float(m.allow_max), 4),
        "names_no_metastasis": negative_report(m, s),
    }
    info: dict[str, Any] = {"signals": sig, "thresholds": {"max_unknown_share": s.max_unknown_share,
                                                           "max_unexplained": s.max_unexplained,
                                                           "max_unexplained_area": s.max_unexplained_area,
                                                           "min_confidence": s.min_confidence,
                                                           "max_unseen_named": s.max_unseen_named,
                                                           "negative_report_allow": s.negative_report_allow}}
    reason = None
    if not s.enabled:
        reason = None
    elif m.tokens == 0:
        reason = "no report: the image-only answer"
    elif sig["unknown_share"] > s.max_unknown_share:
        reason = (f"report not read: {100 * sig['unknown_share']:.0f} % of its characters are unknown to the model "
                  f"(limit {100 * s.max_unknown_share:.0f} %)")
    elif sig["unexplained_lesions"] > s.max_unexplained:
        reason = (f"report does not fit the image: the report-guided answer would drop {sig['unexplained_lesions']} "
                  f"confident hot spot(s) at places the report does not mention (limit {s.max_unexplained:g})")
    elif sig["unexplained_area_px"] > s.max_unexplained_area:
        reason = (f"report does not fit the image: the report-guided answer would drop confident hot spots of "
                  f"{sig['unexplained_area_px']} pixels at places the report does not mention (limit {s.max_unexplained_area:g})")
    elif sig["unseen_named_places"] > s.max_unseen_named:
        reason = (f"report does not fit the image: it names {sig['unseen_named_places']} place(s) as metastases where "
                  f"the image shows no hot spot (limit {s.max_unseen_named:g})")
    if reason is not None:
        info.update(answered_by=UNET, reason=reason, add=np.zeros(0, np.int64))
        return info
    add = np.zeros(0, np.int64)
    reason = "report read and consistent with the image" if s.enabled else "fail-safe off"
    if sig["names_no_metastasis"]:
        reason += f"; the report names no metastasis (allow map at most {m.allow_max:.2f}, below {s.negative_report_allow:g}): no lesion"
        info.update(answered_by=DUALPATH, reason=reason, unet_lesions_added=0, add=add, empty=True)
        return info
    if s.enabled and s.add_named_lesions:
        add = np.nonzero(confident & (m.named >= s.allow_threshold))[0] + 1
    info.update(answered_by=DUALPATH, reason=reason, unet_lesions_added=int((~m.kept[add - 1]).sum()) if len(add) else 0, add=add)
    return info


def negative_report(m: Measured, s: FailSafeSettings) -> bool:
    """The report names no metastasis anywhere (see the module docstring); never without a report."""
    return m.tokens > 0 and m.allow_max < s.negative_report_allow


def answer_mask(m: Measured, info: dict[str, Any]) -> np.ndarray:
    """The mask the decision gives: the U-Net's, or the dual-path one plus the added U-Net lesions."""
    if info["answered_by"] == UNET:
        return m.fallback_mask.astype(np.uint8)
    if info.get("empty"):
        return np.zeros(m.mask.shape, np.uint8)
    out = m.mask.copy()
    if len(info["add"]):
        out |= np.isin(m.labels, info["add"])
    return out.astype(np.uint8)


def decide(mask: np.ndarray, fallback_mask: np.ndarray, fallback_prob: np.ndarray, text_map: np.ndarray,
           text_stats: np.ndarray, s: FailSafeSettings) -> tuple[np.ndarray, dict[str, Any]]:
    """One scan: (dual-path mask, U-Net mask and probabilities, report maps, report token stats)
    -> (mask to give, why).

    Masks are [H, W] binary, cleaned by postprocess. The returned dict says which path answered
    (``answered_by``), the reason in words, and the signals with the thresholds they were held to.
    """
    m = measure(mask, fallback_mask, fallback_prob, text_map, text_stats)
    info = choose(m, s)
    out = answer_mask(m, info)
    info.pop("add")
    info.pop("empty", None)
    return out, info


def answer_dsc(m: Measured, info: dict[str, Any], gt: np.ndarray | None, counts: dict[str, Any] | None = None) -> float:
    """DSC of the decision's answer against a ground-truth mask, from pixel counts (what calibration
    scores hundreds of threshold settings with; equal to dsc(answer_mask(m, info), gt))."""
    if counts is None:
        assert gt is not None, "answer_dsc needs gt or its counts"
        counts = answer_counts(m, gt)
    if info["answered_by"] == UNET:
        a, inter = counts["unet"], counts["unet_gt"]
    elif info.get("empty"):
        a, inter = 0, 0
    else:
        a, inter = counts["dual"], counts["dual_gt"]
        if len(info["add"]):
            a += int(counts["extra"][info["add"]].sum())
            inter += int(counts["extra_gt"][info["add"]].sum())
    total = a + counts["gt"]
    return 1.0 if total == 0 else 2.0 * inter / total


def answer_counts(m: Measured, gt: np.ndarray) -> dict[str, Any]:
    """The pixel and lesion counts :func:`answer_dsc` and :func:`answer_hits` need, per scan (once
    for all settings). A ground-truth lesion (8-connected component) is detected when the answer
    covers one of its pixels, as in bonescan.metrics."""
    from scipy.ndimage import label

    from bonescan.contract import EIGHT

    g = np.asarray(gt).astype(bool)
    extra = m.fallback_mask & ~m.mask  # what an added U-Net lesion brings beyond the dual-path answer
    n = len(m.kept)
    gl, n_gt = label(g, structure=EIGHT)
    # hits[k, j]: U-Net lesion k (0 = the dual-path answer) covers a pixel of ground-truth lesion j
    hits = np.zeros((n + 1, n_gt + 1), dtype=bool)
    if n_gt:
        hits[0, np.unique(gl[m.mask & (gl > 0)])] = True
        both = (m.labels > 0) & (gl > 0)
        hits[m.labels[both], gl[both]] = True
    return {"gt": int(g.sum()), "unet": int(m.fallback_mask.sum()), "unet_gt": int((m.fallback_mask & g).sum()),
            "dual": int(m.mask.sum()), "dual_gt": int((m.mask & g).sum()),
            "extra": np.bincount(m.labels[extra], minlength=n + 1), "extra_gt": np.bincount(m.labels[extra & g], minlength=n + 1),
            "gt_lesions": int(n_gt), "hits": hits[:, 1:]}


def answer_hits(info: dict[str, Any], counts: dict[str, Any]) -> int:
    """Ground-truth lesions the decision's answer detects (from :func:`answer_counts`)."""
    hits = counts["hits"]
    if not counts["gt_lesions"]:
        return 0
    if info["answered_by"] == UNET:
        return int(hits[1:].any(axis=0).sum())
    if info.get("empty"):
        return 0
    found = hits[0] | (hits[info["add"]].any(axis=0) if len(info["add"]) else False)
    return int(np.sum(found))
