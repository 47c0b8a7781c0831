"""The vectorised fail-safe postprocess (issue 25, item 0c) gives exactly what the per-component loops gave.

The implementation before issue 25 is kept below as the reference (temporarily: remove it, and this
comparison, once the new one has served a release). Old and new must agree bit for bit on masks,
probabilities, the lesion JSON and the decisions, on random maps (hypothesis) and on synthetic segmenter
outputs (benchmarks.postprocess_speed). ``python tests/test_postprocess_speed.py`` prints both per-scan
times on this machine.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bonescan.benchmarks.postprocess_speed import synthetic_outputs
from bonescan.contract import EIGHT, IMAGE_WIDTH, MIN_LESION_PIXELS, THRESHOLD
from bonescan.failsafe import (
    UNET,
    FailSafeSettings,
    Measured,
    _sigmoid,
    choose,
    measure,
    upsample,
)
from bonescan.postprocess import lesions_of, postprocess_failsafe, sigmoid

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- the reference: the code before issue 25

def old_label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Per label 1..n (each present in ``labels``) the highest of ``values`` over its pixels, as
    float32 [n]: what ``scipy.ndimage.maximum(values, labels, 1..n)`` gives, without its argsort
    over the whole image (most of the fail-safe's time per scan)."""
    lab = np.asarray(labels).ravel()
    sel = lab > 0
    out = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(out, lab[sel] - 1, np.asarray(values, np.float32).ravel()[sel])
    return out


def old_measure(mask: np.ndarray, fallback_mask: np.ndarray, fallback_prob: np.ndarray, text_map: np.ndarray,
            text_stats: np.ndarray) -> Measured:
    """mask, fallback_mask: [H, W] the dual-path and the U-Net answers, cleaned binary masks;
    fallback_prob: [H, W] the U-Net's probabilities; text_map: [2, h, w] allow / mention logits;
    text_stats: [3] (report tokens, of them unknown to the model, finding terms; a [2] of an older
    tokenizer: terms unknown)."""
    from scipy.ndimage import label

    from bonescan.contract import EIGHT

    mask, fallback_mask = np.asarray(mask).astype(bool), np.asarray(fallback_mask).astype(bool)
    p = _sigmoid(np.asarray(text_map, np.float32))
    mention = upsample(p[1], mask.shape)
    named = upsample(p[0], mask.shape)
    lab, n = label(fallback_mask, structure=EIGHT)
    kept = old_label_max(mask, lab, n) > 0
    prob = np.asarray(fallback_prob, np.float32)
    area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    stats = np.asarray(text_stats).ravel()
    return Measured(mask, fallback_mask, lab, old_label_max(prob, lab, n), old_label_max(mention, lab, n), old_label_max(named, lab, n), kept,
                    area, int(stats[0]), int(stats[1]), int(stats[2]) if len(stats) > 2 else -1, float(p[0].max()), float(p[0].mean()))


def old_answer_mask(m: Measured, info: dict[str, Any]) -> np.ndarray:
    """The mask the decision gives: the U-Net's, or the report-guided one (empty for a negative
    report) plus the added U-Net lesions."""
    if info["answered_by"] == UNET:
        return m.fallback_mask.astype(np.uint8)
    out = np.zeros(m.mask.shape, bool) if info["empty"] else m.mask.copy()
    if len(info["add"]):
        out |= np.isin(m.labels, info["add"])
    return out.astype(np.uint8)


def old_served_probability(prob_dual: np.ndarray, prob_unet: np.ndarray, m: Measured, info: dict[str, Any]) -> np.ndarray:
    """The probability map behind the decision's answer: the U-Net's when it answers, else the
    dual-path model's, with the U-Net's where a U-Net lesion was added."""
    if info["answered_by"] == UNET:
        return prob_unet
    add = info.get("added_labels", info.get("add"))
    if add is None or not len(add):
        return prob_dual
    return np.where(np.isin(m.labels, add), np.maximum(prob_dual, prob_unet), prob_dual)


def old_lesions_of(mask: np.ndarray, prob: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """mask [H, W] bool, prob [H, W] -> (mask without specks, lesion list sorted by area, largest first)."""
    from scipy.ndimage import find_objects, label

    lab, n = label(mask, structure=EIGHT)
    keep = np.zeros(mask.shape, dtype=bool)
    lesions: list[dict[str, Any]] = []
    if n == 0:
        return keep, lesions
    px_area = float(spacing[0]) * float(spacing[1])
    for k, sl in enumerate(find_objects(lab), start=1):
        if sl is None:
            continue
        comp = lab[sl] == k
        area = int(comp.sum())
        if area < MIN_LESION_PIXELS:
            continue
        keep[sl] |= comp
        ys, xs = np.nonzero(comp)
        p = prob[sl][comp]
        cy, cx = float(ys.mean() + sl[0].start), float(xs.mean() + sl[1].start)
        lesions.append({
            "area_px": area,
            "area_mm2": round(area * px_area, 1),
            "bbox": [int(sl[0].start), int(sl[1].start), int(sl[0].stop - 1), int(sl[1].stop - 1)],  # y0, x0, y1, x1
            "centroid": [round(cy, 1), round(cx, 1)],
            "mean_probability": round(float(p.mean()), 4),
            "max_probability": round(float(p.max()), 4),
            "side": "right" if cx < IMAGE_WIDTH / 2 else "left",  # patient's side
        })
    lesions.sort(key=lambda d: -d["area_px"])
    for i, les in enumerate(lesions):
        les["id"] = i
    return keep, lesions


def old_postprocess_failsafe(logits: np.ndarray, fallback_logits: np.ndarray, text_map: np.ndarray, text_stats: np.ndarray,
                         spacing: np.ndarray, settings, threshold: float = THRESHOLD
                         ) -> tuple[np.ndarray, np.ndarray, list[str], list[dict[str, Any]]]:
    """The dual-path graph's three answers -> one per scan (bonescan.failsafe decides which).

    logits, fallback_logits float32 [B, 1, H, W]; text_map [B, 2, h, w]; text_stats int32 [B, 3];
    spacing [B, 2] -> (mask uint8 [B, 1, H, W], probability [B, 1, H, W] (the map behind each answer:
    failsafe.served_probability), B lesion-list JSON strings that also say which path answered and
    why, B decision dicts).
    """

    logits = np.asarray(logits, dtype=np.float32)
    spacing = np.asarray(spacing, dtype=np.float32).reshape(len(logits), 2)
    prob_d = sigmoid(logits)
    prob_u = sigmoid(np.asarray(fallback_logits, dtype=np.float32))
    masks = np.zeros(logits.shape, dtype=np.uint8)
    probs = np.zeros(logits.shape, dtype=np.float32)
    out_json: list[str] = []
    decisions: list[dict[str, Any]] = []
    for b in range(len(logits)):
        sp = (float(spacing[b, 0]), float(spacing[b, 1]))
        keep_d, _ = old_lesions_of(prob_d[b, 0] >= threshold, prob_d[b, 0], sp)
        keep_u, _ = old_lesions_of(prob_u[b, 0] >= threshold, prob_u[b, 0], sp)
        m = old_measure(keep_d, keep_u, prob_u[b, 0], text_map[b], text_stats[b])
        info = choose(m, settings)
        final = old_answer_mask(m, info)
        prob = old_served_probability(prob_d[b, 0], prob_u[b, 0], m, info)
        keep, lesions = old_lesions_of(final.astype(bool), prob, sp)
        masks[b, 0] = keep
        probs[b, 0] = prob
        info["added_labels"] = info.pop("add")
        info["dropped_labels"] = info.pop("drop")  # rule 7 (text-only lesions) came later: never drops here
        decisions.append(info)
        out_json.append(json.dumps({"lesions": lesions, "count": len(lesions), "threshold": threshold,
                                    "pixel_spacing_mm": [round(float(v), 4) for v in spacing[b]],
                                    "answered_by": info["answered_by"], "reason": info["reason"],
                                    "signals": info["signals"]}, ensure_ascii=False))
    return masks, probs, out_json, decisions


# ----------------------------------------------------------------------------- old == new


def _same_outputs(old, new) -> None:
    (m0, p0, j0, d0), (m1, p1, j1, d1) = old, new
    np.testing.assert_array_equal(m0, m1)
    np.testing.assert_array_equal(p0, p1)
    assert p0.dtype == p1.dtype and m0.dtype == m1.dtype
    assert j0 == j1  # the JSON strings, byte for byte
    assert len(d0) == len(d1)
    for a, b in zip(d0, d1):
        assert a.keys() == b.keys()
        np.testing.assert_array_equal(a.pop("added_labels"), b.pop("added_labels"))
        np.testing.assert_array_equal(a.pop("dropped_labels"), b.pop("dropped_labels"))
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _settings(draw) -> FailSafeSettings:
    return FailSafeSettings(enabled=draw(st.booleans()), min_confidence=draw(st.sampled_from([0.5, 0.8, 0.95])),
                            max_unexplained=draw(st.sampled_from([0.0, 1.0, 1e9])), allow_threshold=draw(st.sampled_from([0.3, 0.7])),
                            add_named_lesions=draw(st.booleans()), negative_report_allow=draw(st.sampled_from([0.0, 0.5, 0.99])),
                            no_finding_allow=draw(st.sampled_from([0.6, 0.8, 2.0])))


@st.composite
def random_scans(draw):
    """A small batch of random maps: sparse bright pixels and blocks (specks, touching lesions, ties in
    area), text maps of a few cells, token stats of every kind; the image the contract's size or smaller."""
    seed = draw(st.integers(0, 2**32 - 1))
    b = draw(st.integers(1, 3))
    h, w = draw(st.sampled_from([(64, 32), (128, 64), (1024, 256)]))
    cells = draw(st.sampled_from([(8, 4), (16, 8), (4, 2)]))
    density = draw(st.sampled_from([0.001, 0.01, 0.05, 0.2]))
    rng = np.random.default_rng(seed)

    def logits():
        x = rng.normal(-4.0, 2.0, (b, 1, h, w)).astype(np.float32)
        x[rng.random(x.shape) < density] = rng.normal(3.0, 2.0)
        for _ in range(int(rng.integers(0, 6))):  # blocks: lesions of many pixels
            y0, x0 = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
            x[:, :, y0 : y0 + int(rng.integers(1, 12)), x0 : x0 + int(rng.integers(1, 12))] = rng.normal(2.0, 1.5)
        x[rng.random(x.shape) < 0.001] = 0.0  # exactly at the threshold
        return x

    text_map = rng.normal(0.0, 2.5, (b, 2, *cells)).astype(np.float32)
    stats = np.array([draw(st.sampled_from([(0, 0, 0), (60, 2, 3), (60, 30, 2), (40, 0, 0), (50, 1, -1)])) for _ in range(b)], np.int32)
    spacing = rng.uniform(1.0, 4.0, (b, 2)).astype(np.float32)
    return logits(), logits(), text_map, stats, spacing, _settings(draw)


@SETTINGS
@given(random_scans())
def test_failsafe_postprocess_same_as_reference_random(case):
    logits, fallback, text_map, stats, spacing, s = case
    _same_outputs(old_postprocess_failsafe(logits, fallback, text_map, stats, spacing, s),
                  postprocess_failsafe(logits, fallback, text_map, stats, spacing, s))


@pytest.mark.parametrize("seed", range(4))
def test_failsafe_postprocess_same_as_reference_synthetic(seed):
    """Segmenter-like outputs (lesion blobs, specks), under the default and a stricter fail-safe."""
    for s in (FailSafeSettings(), FailSafeSettings(max_unexplained=1.0, negative_report_allow=0.6, min_confidence=0.6)):
        for scan in synthetic_outputs(12, seed=seed):
            _same_outputs(old_postprocess_failsafe(*scan, s), postprocess_failsafe(*scan, s))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), density=st.sampled_from([0.0, 0.01, 0.1, 0.4]), dtype=st.sampled_from([np.float32, np.float64]))
def test_lesions_of_same_as_reference(seed, density, dtype):
    rng = np.random.default_rng(seed)
    prob = rng.random((96, 48)).astype(dtype)
    mask = rng.random((96, 48)) < density
    spacing = (float(rng.uniform(1, 4)), float(rng.uniform(1, 4)))
    k0, l0 = old_lesions_of(mask, prob, spacing)
    k1, l1 = lesions_of(mask, prob, spacing)
    np.testing.assert_array_equal(k0, k1)
    assert json.dumps(l0) == json.dumps(l1)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), density=st.sampled_from([0.005, 0.05, 0.3]))
def test_measure_same_as_reference(seed, density):
    """measure() as evaluate / calibrate call it (no components given: the U-Net mask labelled as it is)."""
    rng = np.random.default_rng(seed)
    mask, fallback = rng.random((64, 32)) < density, rng.random((64, 32)) < density
    prob, text_map = rng.random((64, 32)).astype(np.float32), rng.normal(0, 2, (2, 8, 4)).astype(np.float32)
    a = old_measure(mask, fallback, prob, text_map, np.array([60, 2, 3]))
    b = measure(mask, fallback, prob, text_map, np.array([60, 2, 3]))
    for f in ("mask", "fallback_mask", "labels", "confidence", "mention", "named", "kept", "area"):
        x, y = getattr(a, f), getattr(b, f)
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype, f
    assert (a.tokens, a.unknown, a.terms, a.allow_max, a.allow_mean) == (b.tokens, b.unknown, b.terms, b.allow_max, b.allow_mean)


def test_min_lesion_pixels_and_threshold_unchanged():
    """The reference reads the same contract constants (a guard against comparing two changed things)."""
    assert MIN_LESION_PIXELS == 3 and THRESHOLD == 0.5 and IMAGE_WIDTH == 256


if __name__ == "__main__":  # before / after on this machine: python tests/test_postprocess_speed.py [scans]
    import sys

    from bonescan.benchmarks.postprocess_speed import bench_postprocess, format_result

    print(format_result(bench_postprocess(int(sys.argv[1]) if len(sys.argv) > 1 else 50, reference=old_postprocess_failsafe)))


@pytest.mark.parametrize("seed", range(2))
def test_text_only_rule_serves_what_calibration_scores(seed):
    """Rule 7 (failsafe.text_only) in the served postprocess drops the same lesions as the calibration's path
    (measure with the dual-path probabilities, choose, answer_mask), and only lesions no U-Net lesion touches."""
    from dataclasses import replace

    from bonescan.failsafe import answer_mask, measure
    from bonescan.postprocess import postprocess

    s = replace(FailSafeSettings(), min_text_only_confidence=0.9)
    rng = np.random.default_rng(seed)
    dropped = 0
    for logits, fallback, text_map, stats, spacing in synthetic_outputs(16, seed=seed):
        # a lesion only the dual-path model sees, at probability 0.82 or 0.95 at its peak (dropped / kept at 0.9)
        h, w = logits.shape[2:]
        y, x = int(rng.integers(8, h - 8)), int(rng.integers(8, w - 8))
        if fallback[0, 0, y - 8 : y + 9, x - 8 : x + 9].max() < -3.0:
            yy, xx = np.mgrid[:h, :w]
            bump = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 3.0**2)).astype(np.float32)
            logits = np.maximum(logits, (-6.0 + (6.0 + rng.choice([1.5, 3.0])) * bump)[None, None])
        served, _, _, dec = postprocess_failsafe(logits, fallback, text_map, stats, spacing, s)
        md, pd, _ = postprocess(logits, spacing)
        mu, pu, _ = postprocess(fallback, spacing)
        m = measure(md[0, 0], mu[0, 0], pu[0, 0], text_map[0], stats[0], prob=pd[0, 0])
        info = choose(m, s)
        np.testing.assert_array_equal(served[0, 0], answer_mask(m, info))
        np.testing.assert_array_equal(dec[0]["dropped_labels"], info["drop"])
        if len(info["drop"]):
            gone = np.isin(m.dual.labels, info["drop"])
            assert not (gone & mu[0, 0].astype(bool)).any() and not served[0, 0][gone].any()
            assert dec[0]["signals"]["text_only_dropped"] == len(info["drop"])
        dropped += len(info["drop"])
        off, _, _, _ = postprocess_failsafe(logits, fallback, text_map, stats, spacing, replace(s, min_text_only_confidence=0.0))
        assert (off[0, 0] >= served[0, 0]).all()  # the rule only takes away
    assert dropped > 0
