"""Which answer a scan gets: the text-guided one (with the U-Net's hot spots where the report names a
metastasis), or the image-only U-Net's.

The dual-path model reads the report to explain hot spots away (a degenerative knee, a negative
study). That is its gain, and its danger: a report the model cannot read, a text that is no report
at all, or a report that belongs to another study makes it veto real metastases. So every
dual-path answer comes with the answer of the image-only U-Net it was trained beside (one graph,
see ``model.network.DeployedSegmenter``), and the decision is made per scan (and, for hot spots the
report names, per hot spot):

1. **No report**: an empty text gives the U-Net's answer.
2. **Report names no finding**: a text that states nothing about the skeleton ("see attached",
   "待复查", a file path, an empty template, a method line alone) is no report: the U-Net answers.
   Two signals, either suffices: the text holds no word of a finding (a bone, an uptake, a verdict:
   ``report_text.finding_terms``; checked first, whatever the model could read of the text), or the
   model reads it as no report (its ``allow`` map, trained to be 1 everywhere for texts without
   findings, averages at least ``no_finding_allow`` over the scan; checked after rule 3). Such a
   text never gives an empty answer, whatever the model makes of it.
3. **Report not read**: more than ``max_unknown_share`` of the report's tokens (after
   normalisation, bonescan.report_text) are unknown to the text encoder ([UNK], or characters no
   training text held). A report the model cannot read is not guessed at.
4. **A negative report** (``allow`` below ``negative_report_allow`` everywhere: an explicit negative
   statement, "未见骨转移") makes the report-guided answer empty: the dual-path model's veto is soft,
   and a hot spot it leaves behind on a scan its report calls negative is one the report ruled out.
5. **A report that does not fit the image**: a confident U-Net lesion (highest probability at least
   ``min_confidence``) that the report-guided answer drops, at a place the report does not mention
   at all (its ``mention`` map below ``mention_threshold`` there), is unexplained. A report explains
   a hot spot away by naming it (a degenerative knee, a healed fracture); one that drops confident hot
   spots it never mentions is not describing them: another patient's report, or a misread one. More
   than ``max_unexplained`` of them: the U-Net answers the whole scan (a report that fits the image
   leaves few, if any). (Adding the unexplained hot spots back one by one was tried as well: the
   calibration never served it on three seeds, so it is gone.) With ``parsed_mentions`` the report's
   places are read as well (issue 26): a hot spot on a bone the report names as a metastasis or calls
   benign (the tokenizer's report_regions / report_benign over the anatomy output,
   postprocess.parsed_mentions) is explained, whatever the model's mention map says there.
6. **Named hot spots are kept**: with ``add_named_lesions``, a confident U-Net lesion where the report
   names a metastasis (``allow`` at least ``allow_threshold``) is added too: the report's location
   guides the answer but does not drop a lesion the image shows where the report puts one. The calibration
   chooses it together with the named-place prior (``calibrate.pick_place_rule``), which adds the U-Net's hot
   spots in the named bones as well: beside the prior, rule 6 may add little but false positives and the
   U-Net's pixels around lesions the answer holds already.

7. **Lesions only the text sees are held to more**: with ``min_text_only_confidence`` > 0, a lesion of the
   report-guided answer that the U-Net does not see at all (its highest U-Net probability below
   :data:`TEXT_ONLY_UNET_BELOW`, touching no U-Net lesion) is kept only when the dual-path model's own
   highest probability in it reaches that level. The report can make the decoder paint a lesion into a
   bone it names; with another study's report such lesions are mostly false, with the scan's own report
   a good share of them are too (on make demo's validation scans, seeds 1 and 2 of ``bench text-gain``,
   those below 0.95 where the U-Net's probability stays below 0.05 were 3 to 7 false positives to 1
   true lesion with the scans' own reports, 3 to 17 to 1 with another study's).

Rules 1-3 and 5-7 are the fail-safe (``enabled``); rule 4 is how the dual-path model answers with
the fail-safe off as well, but never for a text rule 2 calls no report. The thresholds are
calibrated on the validation split at the end of training (``evaluate.calibrate_failsafe``: lesion
detection on or above the U-Net's FROC curve with true reports, other studies' reports and texts
that are no report; the estimate out of sample beside the one in sample) and travel with the
checkpoint, the export and the Triton config. Needs numpy and scipy only: the Triton
``postprocess`` step runs this file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bonescan.contract import EIGHT, MIN_LESION_PIXELS

DUALPATH = "dualpath"
UNET = "unet"
#: the reasons a scan gets the U-Net's answer (the start of ``reason``), and the rest
NO_REPORT = "no report"
NOT_READ = "report not read"
NO_FINDING = "report names no finding"
DOES_NOT_FIT = "report does not fit the image"


#: FailSafeSettings.image_only_confidence's default: off. ``bench second-reader`` chooses it on half of a data set
#: with lesions left out of the reports (the best F1 of ``not_in_report``) and chose off: the image-only
#: network's confident false positives cost the flag more precision than its finds add recall (README "Second reader")
IMAGE_ONLY_CONFIDENCE = 2.0


@dataclass(frozen=True)
class FailSafeSettings:
    enabled: bool = True
    #: more than this share of the report's tokens unknown to the model: the report is not read. Fixed,
    #: not calibrated: training turns 3 % of the tokens into [UNK]; a report a fifth unknown is not one
    #: the model learned to read past (traditional characters and English shorthand are normalised first)
    max_unknown_share: float = 0.2
    #: the report's allow map averaging at least this over the scan: the model reads the text as no report
    #: (> 1: the model is not asked)
    no_finding_allow: float = 0.8
    #: a text with no word of a skeletal finding (report_text.finding_terms) is no report
    require_finding_terms: bool = True
    #: a U-Net lesion counts as confident when its highest probability reaches this
    min_confidence: float = 0.8
    #: a lesion counts as mentioned where sigmoid(mention) reaches this at one of its pixels; a confident
    #: U-Net lesion the report-guided answer drops where none does is unexplained
    mention_threshold: float = 0.5
    #: more than this many unexplained hot spots: the U-Net answers the whole scan
    max_unexplained: float = 1.0e9
    #: rule 5 reads the report's places too: a dropped U-Net lesion at a bone the report names (as a metastasis,
    #: neighbours within one, or as benign: report_regions / report_benign over the anatomy output) is explained,
    #: whatever the model's mention map says there (issue 26: the report's places grounded explicitly)
    parsed_mentions: bool = True
    #: the report names a metastasis where sigmoid(allow) reaches this at one of the lesion's pixels
    allow_threshold: float = 0.7
    #: add confident U-Net lesions at places the report names as metastases
    add_named_lesions: bool = True
    #: a report whose allow map stays below this everywhere names no metastasis: the report-guided answer
    #: is empty (0 = never; applies with the fail-safe off too, see the module docstring)
    negative_report_allow: float = 0.0
    #: rule 7: a lesion of the report-guided answer the U-Net does not see (TEXT_ONLY_UNET_BELOW) is kept only
    #: when the dual-path model's highest probability in it reaches this; 0 = kept whatever it is (off)
    min_text_only_confidence: float = 0.0
    #: the named-place prior (issue 26): the bundled U-Net's hot spots at this probability or more that lie
    #: mostly in a bone the report names as metastatic (report_regions x the anatomy output) are added to the
    #: report-guided answer; 0 = off. Chosen on the validation split (calibrate.calibrate_named_place)
    named_place_threshold: float = 0.0
    #: the second reader's image-only evidence (issue 26): the bundled U-Net's lesions the answer does not
    #: hold, at this highest probability or more, are listed beside the answer (LESIONS ``image_only``, named
    #: by bone), so a lesion the report left out, which the report-guided answer follows the report in
    #: dropping, can still be flagged ``not_in_report``; > 1 = not listed (the default, IMAGE_ONLY_CONFIDENCE)
    image_only_confidence: float = IMAGE_ONLY_CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any] | None, prefix: str = "") -> FailSafeSettings:
        """From a dict of values, or of strings (a Triton config's parameters, keys ``prefix + field``);
        keys of fields this version no longer has are ignored."""
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


#: rule 7: a lesion of the report-guided answer whose highest U-Net probability stays below this (and that touches
#: no U-Net lesion) is one only the text sees; the FROC's candidate level (metrics.FROC_CANDIDATE_THRESHOLD):
#: the U-Net does not even offer it as a candidate
TEXT_ONLY_UNET_BELOW = 0.1

#: a hot spot counts as in a named bone when at least this share of its pixels lies in the prior
NAMED_PLACE_SHARE = 0.5


def add_in_named_places(answer: np.ndarray, logits: np.ndarray, prior: np.ndarray, threshold: float,
                        min_pixels: int = MIN_LESION_PIXELS) -> np.ndarray:
    """``answer`` [H, W] bool | the hot spots of ``logits`` at probability >= ``threshold`` with at least
    NAMED_PLACE_SHARE of their pixels in ``prior`` (bool [H, W]: the bones the report names) and
    ``min_pixels`` pixels, that the answer does not overlap. The named-place prior: the report says where, the
    image-only network's weaker evidence there is taken. (Until 2026-12-06 the hot spots overlapping the answer
    joined it too: the same lesions found, each widened by the U-Net's low-threshold blob; DSC on scans with
    metastases -0.010 on the 3 grounding seeds, README.)"""
    from scipy.ndimage import label

    if not 0.0 < threshold < 1.0 or not prior.any():
        return answer
    lab, n = label(np.asarray(logits) >= float(np.log(threshold / (1.0 - threshold))), structure=EIGHT)
    if n == 0:
        return answer
    inside = np.bincount(lab[prior & (lab > 0)], minlength=n + 1)
    area = np.bincount(lab.ravel(), minlength=n + 1)
    keep = (inside >= NAMED_PLACE_SHARE * area) & (area >= min_pixels)
    # new hot spots only: at the prior's low threshold the U-Net's blob around a lesion the answer holds already is
    # wider than the lesion, and joining it only widens that lesion (no lesion found, DSC lost)
    keep &= np.bincount(lab[answer & (lab > 0)], minlength=n + 1) == 0
    keep[0] = False
    return answer | keep[lab]


def with_named_places(answer: np.ndarray, fallback_logits: np.ndarray, report_regions: np.ndarray | None,
                      region_labels: np.ndarray | None, settings: FailSafeSettings, answered_by: str) -> np.ndarray:
    """The served rule for one scan: the answer [H, W] bool grown by :func:`add_in_named_places` from the
    U-Net's ``fallback_logits`` [H, W] in the bones ``report_regions`` [N_REGION_CLASSES] names, located by the
    anatomy output ``region_labels`` [2, h, w], when ``settings.named_place_threshold`` > 0, the report names a
    bone and the U-Net does not answer the scan; else ``answer`` as it is. Postprocess, evaluation's
    ablation and calibration all apply it through here."""
    from bonescan.anatomy import named_prior
    from bonescan.contract import REGION_STRIDE

    if (settings.named_place_threshold <= 0 or answered_by == UNET or report_regions is None or region_labels is None
            or not np.any(report_regions)):
        return answer
    return add_in_named_places(answer, fallback_logits, named_prior(report_regions, region_labels, REGION_STRIDE),
                               settings.named_place_threshold)


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
    #: words of a skeletal finding in the normalised report (-1: not known, e.g. stats without the text)
    terms: int = -1
    #: the highest sigmoid(allow) anywhere: how strongly the report names a metastasis at its most
    allow_max: float = 1.0
    #: the mean sigmoid(allow) over the scan: near 1 for a text the model reads as no report
    allow_mean: float = 0.0
    #: ``labels`` indexed by component (bonescan.components.Components): added lesions' pixels without a
    #: pass over the image
    components: Any = None
    #: rule 7: the dual-path answer's lesions (Components of ``mask``), per lesion the dual-path model's highest
    #: probability and the U-Net's (1.0 where it touches a U-Net lesion); None: not measured, never dropped
    dual: Any = None
    dual_confidence: np.ndarray | None = None
    dual_unet_max: np.ndarray | None = None
    #: rule 5 with ``parsed_mentions``: per U-Net lesion, at a bone the report names as a metastasis or calls
    #: benign (postprocess.parsed_mentions); None: not read
    parsed: np.ndarray | None = None


def measure(mask: np.ndarray, fallback_mask: np.ndarray, fallback_prob: np.ndarray | None, text_map: np.ndarray,
            text_stats: np.ndarray, fallback=None, confidence: np.ndarray | None = None, prob: np.ndarray | None = None,
            dual=None, dual_confidence: np.ndarray | None = None, dual_unet_max: np.ndarray | None = None) -> Measured:
    """mask, fallback_mask: [H, W] the dual-path and the U-Net answers, cleaned binary masks;
    fallback_prob: [H, W] the U-Net's probabilities; text_map: [2, h, w] allow / mention logits;
    text_stats: [3] (report tokens, of them unknown to the model, finding terms; a [2] of an older
    tokenizer: terms unknown); fallback: ``fallback_mask``'s components (bonescan.components) when the
    caller labelled it already (postprocess does, to clean the mask): not labelled twice; confidence: the
    U-Net's highest probability per component of ``fallback`` when the caller has it (then ``fallback_prob``
    is not read: postprocess computes it from the components' pixels alone). Rule 7's measurements: ``prob``
    ([H, W] the dual-path model's probabilities, with ``fallback_prob``), or ``dual`` (``mask``'s components)
    with ``dual_confidence`` and ``dual_unet_max`` when the caller has them; neither: rule 7 never drops."""
    from bonescan.components import components

    mask = np.asarray(mask).astype(bool)
    comps = fallback if fallback is not None else components(fallback_mask, min_pixels=1)
    p = _sigmoid(np.asarray(text_map, np.float32))
    stats = np.asarray(text_stats).ravel()
    if confidence is None:
        confidence = comps.max_of(np.asarray(fallback_prob, np.float32))
    fallback_mask = np.asarray(fallback_mask).astype(bool)
    if dual_confidence is None and prob is not None and fallback_prob is not None:
        dual = components(mask, min_pixels=1)
        dual_confidence, dual_unet_max = text_only_measures(dual, np.asarray(prob, np.float32).ravel()[dual.order],
                                                            np.asarray(fallback_prob, np.float32).ravel()[dual.order], fallback_mask)
    return Measured(mask, fallback_mask, comps.labels, confidence,
                    comps.gather_max(p[1]), comps.gather_max(p[0]), comps.max_of(mask), comps.area,
                    int(stats[0]), int(stats[1]), int(stats[2]) if len(stats) > 2 else -1, float(p[0].max()), float(p[0].mean()),
                    comps, dual if dual_confidence is not None else None, dual_confidence, dual_unet_max)


def text_only_measures(dual, prob_at: np.ndarray, unet_prob_at: np.ndarray, fallback_mask: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Rule 7's measurements of the report-guided answer's lesions ``dual`` (Components), from the dual-path and
    the U-Net probabilities at its pixels (in ``dual.order``): per lesion the dual-path model's highest
    probability, and the U-Net's (1.0 where the lesion touches the U-Net's answer ``fallback_mask``)."""
    return dual.max_of_flat(prob_at), np.maximum(dual.max_of_flat(unet_prob_at), dual.max_of(fallback_mask))


def text_only(m: Measured, s: FailSafeSettings) -> np.ndarray:
    """Rule 7: the labels (1..n of ``m.dual``) of the report-guided answer's lesions it drops."""
    if not s.enabled or s.min_text_only_confidence <= 0 or m.dual_confidence is None or m.dual_unet_max is None:
        return np.zeros(0, np.int64)
    return np.flatnonzero((m.dual_unet_max < TEXT_ONLY_UNET_BELOW) & (m.dual_confidence < s.min_text_only_confidence)) + 1


def added_pixels(m: Measured, add: np.ndarray) -> np.ndarray:
    """Flat indices of the pixels of U-Net lesions ``add`` (labels 1..n): what ``np.isin(m.labels, add)``
    marks, from the components' index instead of a pass (and a sort) over the image."""
    if m.components is not None:
        return m.components.pixels_of(add)
    return np.flatnonzero(np.isin(m.labels, add))


def says_nothing(m: Measured, s: FailSafeSettings) -> bool:
    """A text that states no skeletal finding (rule 3 of the module docstring); never an empty text."""
    return m.tokens > 0 and ((s.require_finding_terms and m.terms == 0) or m.allow_mean >= s.no_finding_allow)


def negative_report(m: Measured, s: FailSafeSettings) -> bool:
    """The report names no metastasis anywhere (rule 4); never without a report, never for a text
    that states no finding at all."""
    return m.tokens > 0 and m.allow_max < s.negative_report_allow and not says_nothing(m, s)


def choose(m: Measured, s: FailSafeSettings) -> dict[str, Any]:
    """The decision from the measurements: which path answers, why, the signals, whether the
    report-guided answer is empty, and which U-Net lesions it adds (their labels)."""
    confident = m.confidence >= s.min_confidence
    negative = negative_report(m, s)
    kept = m.kept & (not negative)  # an empty report-guided answer keeps nothing
    unexplained = ~kept & confident & (m.mention < s.mention_threshold)
    if s.parsed_mentions and m.parsed is not None:
        unexplained &= ~m.parsed
    named = confident & (m.named >= s.allow_threshold) & (s.add_named_lesions and not negative)
    sig: dict[str, Any] = {
        "report_tokens": m.tokens,
        "unknown_share": round(m.unknown / m.tokens, 4) if m.tokens else None,
        "finding_terms": m.terms,
        "allow_mean": round(float(m.allow_mean), 4),
        "allow_max": round(float(m.allow_max), 4),
        "names_no_finding": says_nothing(m, s),
        "names_no_metastasis": negative,
        "unet_lesions": int(len(m.kept)),
        "dropped_lesions": int((~kept).sum()),
        "unexplained_lesions": int(unexplained.sum()),
    }
    info: dict[str, Any] = {"signals": sig, "thresholds": {k: v for k, v in s.to_dict().items() if k != "enabled"}}
    reason = None
    if not s.enabled:
        reason = None
    elif m.tokens == 0:
        reason = f"{NO_REPORT}: the image-only answer"
    elif s.require_finding_terms and m.terms == 0:  # whatever the model could read of it
        reason = f"{NO_FINDING} (no word of a bone, an uptake or a verdict): the image-only answer"
    elif sig["unknown_share"] > s.max_unknown_share:
        reason = (f"{NOT_READ}: {100 * sig['unknown_share']:.0f} % of its characters are unknown to the model "
                  f"(limit {100 * s.max_unknown_share:.0f} %)")
    elif sig["names_no_finding"]:
        reason = (f"{NO_FINDING} (the model reads it as no report: allow map {m.allow_mean:.2f} on average, limit "
                  f"{s.no_finding_allow:g}): the image-only answer")
    elif sig["unexplained_lesions"] > s.max_unexplained:
        reason = (f"{DOES_NOT_FIT}: the report-guided answer would drop {sig['unexplained_lesions']} confident hot spot(s) "
                  f"at places the report does not mention (limit {s.max_unexplained:g})")
    if reason is not None:
        info.update(answered_by=UNET, reason=reason, add=np.zeros(0, np.int64), drop=np.zeros(0, np.int64), empty=False)
        return info
    reason = "report read and consistent with the image" if s.enabled else "fail-safe off"
    if negative:
        reason += f"; the report names no metastasis (allow map at most {m.allow_max:.2f}, below {s.negative_report_allow:g})"
    add = np.nonzero(named)[0] + 1 if s.enabled else np.zeros(0, np.int64)
    drop = text_only(m, s) if not negative else np.zeros(0, np.int64)
    if len(drop):
        reason += f"; {len(drop)} lesion(s) only the text sees, below {s.min_text_only_confidence:g}, left out"
    info.update(answered_by=DUALPATH, reason=reason, unet_lesions_added=int((~kept[add - 1]).sum()) if len(add) else 0,
                add=add, drop=drop, empty=negative)
    info["signals"]["text_only_dropped"] = int(len(drop))
    return info


def answer_mask(m: Measured, info: dict[str, Any]) -> np.ndarray:
    """The mask the decision gives: the U-Net's, or the report-guided one (empty for a negative
    report) plus the added U-Net lesions."""
    if info["answered_by"] == UNET:
        return m.fallback_mask.astype(np.uint8)
    out = np.zeros(m.mask.shape, np.uint8) if info["empty"] else m.mask.astype(np.uint8)
    drop = info.get("drop", ())
    if len(drop) and not info["empty"]:
        out.ravel()[m.dual.pixels_of(drop)] = 0
    if len(info["add"]):
        out.ravel()[added_pixels(m, info["add"])] = 1
    return out


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
    info["added_labels"] = info.pop("add")
    info["dropped_labels"] = info.pop("drop")
    return out, info


# ----------------------------------------------------------------------------- scoring many settings at once


def answer_counts(m: Measured, gt: np.ndarray) -> dict[str, Any]:
    """Per scan, once for all settings: the pixel and lesion counts :func:`answer_scores` needs. A
    ground-truth lesion (8-connected component) is detected when the answer covers one of its
    pixels, as in bonescan.metrics; a lesion of the answer touching none is a false positive."""
    from scipy.ndimage import label

    from bonescan.contract import EIGHT

    g = np.asarray(gt).astype(bool)
    n = len(m.kept)
    gl, n_gt = label(g, structure=EIGHT)
    dl, n_d = label(m.mask, structure=EIGHT)
    # hits[k, j]: U-Net lesion k (0 = the dual-path answer) covers a pixel of ground-truth lesion j
    hits = np.zeros((n + 1, n_gt + 1), dtype=bool)
    if n_gt:
        hits[0, np.unique(gl[m.mask & (gl > 0)])] = True
        both = (m.labels > 0) & (gl > 0)
        hits[m.labels[both], gl[both]] = True
    extra = m.fallback_mask & ~m.mask  # what an added U-Net lesion brings beyond the dual-path answer
    unet_fp = ~hits[1:, 1:].any(axis=1) if n_gt else np.ones(n, bool)
    dual_fp = n_d - (len(np.unique(dl[g & (dl > 0)])) if n_d else 0)
    per_dual: dict[str, Any] = {}
    if m.dual is not None:  # rule 7 drops the dual-path answer's lesions by m.dual's labels: its counts per lesion
        ld, nd = m.dual.labels, m.dual.n
        dh = np.zeros((nd + 1, n_gt + 1), dtype=bool)
        both_d = (ld > 0) & (gl > 0)
        dh[ld[both_d], gl[both_d]] = True
        per_dual = {"dual_px": np.bincount(ld.ravel(), minlength=nd + 1), "dual_gt_px": np.bincount(ld[g], minlength=nd + 1),
                    "dual_hits": dh[:, 1:], "dual_lesion_fp": ~dh[1:, 1:].any(axis=1)}
    return {"gt": int(g.sum()), "unet": int(m.fallback_mask.sum()), "unet_gt": int((m.fallback_mask & g).sum()),
            "dual": int(m.mask.sum()), "dual_gt": int((m.mask & g).sum()),
            "lesion_px": np.bincount(m.labels.ravel(), minlength=n + 1), "lesion_gt_px": np.bincount(m.labels[g], minlength=n + 1),
            "extra": np.bincount(m.labels[extra], minlength=n + 1), "extra_gt": np.bincount(m.labels[extra & g], minlength=n + 1),
            "gt_lesions": int(n_gt), "hits": hits[:, 1:], "unet_fp": unet_fp, "unet_fp_count": int(unet_fp.sum()), "dual_fp": int(dual_fp),
            **per_dual}


def answer_scores(m: Measured, info: dict[str, Any], counts: dict[str, Any]) -> tuple[float, int, int]:
    """(DSC, ground-truth lesions detected, false-positive lesions) of the decision's answer, from the
    counts of :func:`answer_counts`: what calibration scores hundreds of settings with. DSC and
    detections are exact; false positives count the dual-path answer's and each added U-Net lesion
    touching no ground truth (exact unless an added lesion touches a kept one without overlapping it)."""
    hits = counts["hits"]
    if info["answered_by"] == UNET:
        a, inter = counts["unet"], counts["unet_gt"]
        found = int(hits[1:].any(axis=0).sum()) if counts["gt_lesions"] else 0
        fp = counts["unet_fp_count"]
    else:
        add = info["add"]
        empty = info["empty"]
        if empty:
            a, inter = int(counts["lesion_px"][add].sum()), int(counts["lesion_gt_px"][add].sum())
            det = hits[add].any(axis=0) if len(add) else np.zeros(hits.shape[1], bool)
            fp = int(counts["unet_fp"][add - 1].sum())
        else:
            drop = info.get("drop", ())
            a = counts["dual"] + int(counts["extra"][add].sum())
            inter = counts["dual_gt"] + int(counts["extra_gt"][add].sum())
            det0, fp = hits[0], counts["dual_fp"]
            if len(drop):  # rule 7's dropped lesions (they touch no U-Net lesion: ``extra`` is as it was)
                kept_d = np.ones(len(counts["dual_px"]), bool)
                kept_d[0] = False
                kept_d[drop] = False
                a -= int(counts["dual_px"][drop].sum())
                inter -= int(counts["dual_gt_px"][drop].sum())
                det0 = counts["dual_hits"][kept_d].any(axis=0)
                fp -= int(counts["dual_lesion_fp"][drop - 1].sum())
            det = det0 | (hits[add].any(axis=0) if len(add) else False)
            new = add[~m.kept[add - 1]] if len(add) else add
            fp += int(counts["unet_fp"][new - 1].sum())
        found = int(np.sum(det)) if counts["gt_lesions"] else 0
    total = a + counts["gt"]
    return (1.0 if total == 0 else 2.0 * inter / total), found, fp


def served_probability(prob_dual: np.ndarray, prob_unet: np.ndarray, m: Measured, info: dict[str, Any]) -> np.ndarray:
    """The probability map behind the decision's answer: the U-Net's when it answers, else the
    dual-path model's, with the U-Net's where a U-Net lesion was added."""
    if info["answered_by"] == UNET:
        return prob_unet
    add = info.get("added_labels", info.get("add"))
    if add is None or not len(add):
        return prob_dual
    idx = added_pixels(m, add)
    out = np.array(prob_dual, dtype=np.result_type(prob_dual, prob_unet), copy=True)
    out.ravel()[idx] = np.maximum(np.ravel(prob_dual)[idx], np.ravel(prob_unet)[idx])
    return out
