"""Which answer a scan gets: the text-guided one, or the image-only U-Net's when the report cannot be trusted.

The dual-path model reads the report to explain hot spots away (a degenerative knee, a negative
study). That is its gain, and its danger: a report the model cannot read, or a report that belongs
to another study, makes it veto real metastases. So every dual-path answer comes with the answer of
the image-only U-Net it was trained beside (one graph, see ``model.network.DeployedSegmenter``) and
two measured signals decide, per scan, which one is given:

* ``unknown share``: the share of the report's tokens the text encoder never saw in training
  ([UNK], or characters absent from every training text). A report written in other words than
  any the model learned is not read; it is not guessed at either.
* ``unexplained share``: the share of the U-Net's lesions at places the report does not mention at
  all (the report's ``mention`` map, trained on every finding a report describes: metastases,
  benign findings, artefacts). A report that describes the study in front of it accounts for the
  hot spots the image shows; another patient's report, or one the model misread, does not.

No report (or an empty one) gives the U-Net's answer too. When the report is trusted, the answer
is the dual-path mask plus any U-Net lesion at a place the report names as a metastasis (its
``allow`` and ``mention`` maps both high): the report's location guides the answer but does not
drop a lesion both models see there.

The thresholds are calibrated on the validation split at the end of training (true reports against
another study's reports) and travel with the checkpoint, the export and the Triton config.
Needs numpy and scipy only: the Triton ``postprocess`` step runs this file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DUALPATH = "dualpath"
UNET = "unet"


@dataclass(frozen=True)
class FailSafeSettings:
    enabled: bool = True
    #: more than this share of the report's tokens unknown to the model: the report is not read
    max_unknown_share: float = 0.15
    #: more than this share of the U-Net's lesions unmentioned by the report: it does not fit the image
    max_unexplained_share: float = 0.5
    #: a lesion counts as mentioned where sigmoid(mention) reaches this at one of its pixels
    mention_threshold: float = 0.5
    #: the report allows a metastasis where sigmoid(allow) reaches this
    allow_threshold: float = 0.5
    #: add U-Net lesions at places the report names as metastases to a trusted dual-path answer
    add_named_lesions: bool = True

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


def upsample(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A coarse [h, w] map to full resolution by repeating each cell (no interpolation: a cell is a place)."""
    h, w = cells.shape
    return np.repeat(np.repeat(cells, shape[0] // h, axis=0), shape[1] // w, axis=1)


def signals(fallback_mask: np.ndarray, text_map: np.ndarray, text_stats: np.ndarray,
            s: FailSafeSettings) -> dict[str, Any]:
    """The measured signals of one scan.

    fallback_mask: [H, W] the U-Net's cleaned binary mask; text_map: [2, h, w] allow / mention
    logits; text_stats: [2] (report tokens, of them unknown to the model).
    """
    from scipy.ndimage import label

    from bonescan.postprocess import EIGHT

    tokens, unknown = int(text_stats[0]), int(text_stats[1])
    mention = upsample(_sigmoid(np.asarray(text_map[1], np.float32)), fallback_mask.shape) >= s.mention_threshold
    lab, n = label(fallback_mask, structure=EIGHT)
    explained = len(np.unique(lab[mention & (lab > 0)])) if n else 0
    return {
        "report_tokens": tokens,
        "unknown_share": round(unknown / tokens, 4) if tokens else None,
        "unet_lesions": int(n),
        "unexplained_lesions": int(n - explained),
        "unexplained_share": round((n - explained) / n, 4) if n else 0.0,
    }


def decide(mask: np.ndarray, fallback_mask: np.ndarray, text_map: np.ndarray, text_stats: np.ndarray,
           s: FailSafeSettings) -> tuple[np.ndarray, dict[str, Any]]:
    """One scan: (dual-path mask, U-Net mask, report maps, report token stats) -> (mask to give, why).

    Masks are [H, W] binary, cleaned by postprocess. The returned dict says which path answered
    (``answered_by``), the reason in words, and the signals with the thresholds they were held to.
    """
    sig = signals(fallback_mask, text_map, text_stats, s)
    info: dict[str, Any] = {"signals": sig, "thresholds": {"max_unknown_share": s.max_unknown_share,
                                                           "max_unexplained_share": s.max_unexplained_share}}
    reason = None
    if not s.enabled:
        reason = None
    elif sig["report_tokens"] == 0:
        reason = "no report: the image-only answer"
    elif sig["unknown_share"] > s.max_unknown_share:
        reason = (f"report not read: {100 * sig['unknown_share']:.0f} % of its characters are unknown to the model "
                  f"(limit {100 * s.max_unknown_share:.0f} %)")
    elif sig["unexplained_share"] > s.max_unexplained_share:
        reason = (f"report does not fit the image: it mentions no finding at {sig['unexplained_lesions']} of the "
                  f"{sig['unet_lesions']} hot spots the image-only model finds (limit {100 * s.max_unexplained_share:.0f} %)")
    if reason is not None:
        info.update(answered_by=UNET, reason=reason)
        return fallback_mask.astype(np.uint8), info
    out = mask.astype(bool)
    added = 0
    if s.enabled and s.add_named_lesions and fallback_mask.any():
        from scipy.ndimage import label

        from bonescan.postprocess import EIGHT

        p = _sigmoid(np.asarray(text_map, np.float32))
        named = upsample((p[0] >= s.allow_threshold) & (p[1] >= s.mention_threshold), mask.shape)
        lab, n = label(fallback_mask, structure=EIGHT)
        for k in np.unique(lab[named & (lab > 0)]):
            comp = lab == k
            if not (comp & out).any():
                added += 1
            out |= comp
    info.update(answered_by=DUALPATH, reason="report read and consistent with the image" if s.enabled else "fail-safe off",
                unet_lesions_added=added)
    return out.astype(np.uint8), info
