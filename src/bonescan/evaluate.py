"""``bonescan eval``: segmentation quality of a checkpoint on a split, with true, shuffled or no reports.

``--reports shuffled`` gives every scan another scan's report (a fixed derangement), ``empty``
gives none: if the dual-path model's gain comes from the text, it must vanish with shuffled
reports and fall back to U-Net level without reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bonescan.contract import THRESHOLD
from bonescan.data.arrays import SplitArrays, load_split, manifest_hash
from bonescan.data.rewrite import rewrite_split
from bonescan.errors import BonescanError
from bonescan.metrics import scan_metrics, summarize
from bonescan.postprocess import postprocess

REPORT_MODES = ("true", "shuffled", "empty")


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation with no fixed point (n >= 2): scan i gets the report of scan perm[i]."""
    if n < 2:
        raise BonescanError(f"shuffled reports need two scans or more (every scan gets another scan's report); got {n}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    perm = np.empty(n, dtype=int)
    perm[order] = np.roll(order, 1)
    return perm


def select_reports(reports: list[str], mode: str, seed: int = 0) -> list[str]:
    if mode == "true":
        return list(reports)
    if mode == "empty":
        return [""] * len(reports)
    if mode == "shuffled":
        perm = derangement(len(reports), seed)
        return [reports[j] for j in perm]
    raise ValueError(f"reports must be one of {REPORT_MODES}, got {mode!r}")


ANSWERS = ("dualpath", "failsafe", "unet")


def evaluate_arrays(ckpt, arrays, reports: str = "true", seed: int = 0, batch: int = 4, progress: bool = True,
                    threshold: float = THRESHOLD, texts: list[str] | None = None, failsafe=None,
                    answer: str = "dualpath") -> dict[str, Any]:
    """ckpt: Checkpoint or Predictor; arrays: a SplitArrays -> {"per_scan", "summary", "answers", ...}.

    texts: the reports to use instead of the split's own (e.g. re-written in one house style, or
    written by hand); ``reports`` then selects among them (true / shuffled / empty) as usual.
    A dual-path checkpoint is scored three ways from one pass: its own answer ("dualpath": what the
    decision gives with the fail-safe off, i.e. empty where the report names no metastasis), the
    fail-safe's choice ("failsafe", settings from the checkpoint unless given) and the bundled
    image-only U-Net's ("unet"); ``summary`` is the one named by ``answer``.
    """
    from tqdm import tqdm

    from bonescan.failsafe import FailSafeSettings
    from bonescan.model.checkpoint import Predictor
    from bonescan.postprocess import postprocess_failsafe

    pred = ckpt if isinstance(ckpt, Predictor) else Predictor(ckpt)
    texts = select_reports(list(texts) if texts is not None else arrays.reports, reports, seed)
    if failsafe is None:
        failsafe = FailSafeSettings.from_dict((pred.ckpt.metadata.get("failsafe") or {}).get("settings"))
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in ANSWERS}
    decisions: list[dict[str, Any]] = []
    for i in tqdm(range(0, len(arrays), batch), desc=f"eval ({reports} reports)", unit="batch", disable=not progress, leave=False):
        imgs = arrays.images[i : i + batch].astype(np.float32)
        out = pred.outputs(imgs, texts[i : i + batch])
        sp = np.array(arrays.spacings[i : i + batch], np.float32)
        masks = {"dualpath": postprocess(out["logits"], sp, threshold)[0]}
        if "fallback_logits" in out:
            masks["unet"] = postprocess(out["fallback_logits"], sp, threshold)[0]
            fs, _, _, dec = postprocess_failsafe(out["logits"], out["fallback_logits"], out["text_map"], out["text_stats"],
                                                 sp, failsafe, threshold)
            masks["failsafe"] = fs
            # the dual-path answer (the decision with the fail-safe off): empty where the report names no metastasis
            for k, d in enumerate(dec):
                if d["signals"]["names_no_metastasis"]:
                    masks["dualpath"][k] = 0
            decisions.extend({"case_id": arrays.ids[i + k], "answered_by": d["answered_by"], "reason": d["reason"],
                              **d["signals"]} for k, d in enumerate(dec))
        for name, m in masks.items():
            for k in range(len(imgs)):
                row = scan_metrics(m[k, 0], arrays.masks[i + k])
                row["case_id"] = arrays.ids[i + k]
                per[name].append(row)
    answers = {k: summarize(v) for k, v in per.items() if v}
    if answer not in answers:
        answer = "dualpath"
    res: dict[str, Any] = {"reports": reports, "threshold": threshold, "answer": answer, "per_scan": per[answer],
                           "summary": answers[answer], "answers": answers}
    if decisions:
        res["failsafe"] = {"settings": failsafe.to_dict(), "decisions": decisions,
                           "answered_by_unet": sum(d["answered_by"] == "unet" for d in decisions)}
        res["per_scan_all"] = per
    return res


def _collect(pred, arrays, texts: list[str], threshold: float, batch: int = 4,
             dualpath_metrics: list[dict[str, Any]] | None = None,
             fallback: dict[int, tuple[np.ndarray, np.ndarray]] | None = None) -> list[tuple[Any, dict[str, Any], bool]]:
    """One pass: per scan the fail-safe's measurements, the pixel counts that score its answers,
    and whether the scan has metastases. ``dualpath_metrics``: a list that gets the dual-path
    answer's :func:`scan_metrics` per scan (the validation metrics, without another pass).
    ``fallback``: the U-Net's cleaned masks and probabilities per batch, filled by the first pass
    over these images and reused by the next ones (they do not depend on the report)."""
    from bonescan.failsafe import answer_counts, measure
    from bonescan.postprocess import sigmoid

    rows = []
    for i in range(0, len(arrays), batch):
        imgs = arrays.images[i : i + batch].astype(np.float32)
        known = fallback is not None and i in fallback
        out = pred.outputs(imgs, texts[i : i + batch], fallback=not known)
        sp = np.array(arrays.spacings[i : i + batch], np.float32)
        md = postprocess(out["logits"], sp, threshold)[0]
        if known:
            mu, pu = fallback[i]  # type: ignore[index]
        else:
            mu, pu = postprocess(out["fallback_logits"], sp, threshold)[0], sigmoid(out["fallback_logits"])
            if fallback is not None:
                fallback[i] = (mu, pu)
        for k in range(len(imgs)):
            m = measure(md[k, 0], mu[k, 0], pu[k, 0], out["text_map"][k], out["text_stats"][k])
            gt = arrays.masks[i + k]
            rows.append((m, answer_counts(m, gt), bool(gt.any())))
            if dualpath_metrics is not None:
                dualpath_metrics.append({**scan_metrics(md[k, 0], gt), "case_id": arrays.ids[i + k]})
    return rows


def _scores(rows: list[tuple[Any, dict[str, Any], bool]], settings) -> dict[str, float]:
    """Mean DSC over all scans and over the scans with metastases, and lesion sensitivity, with the
    fail-safe's answers."""
    from bonescan.failsafe import answer_dsc, answer_hits, choose

    infos = [choose(m, settings) for m, _, _ in rows]
    d = [answer_dsc(m, info, None, counts) for info, (m, counts, _) in zip(infos, rows)]
    pos = [x for x, (_, _, positive) in zip(d, rows) if positive]
    n_gt = sum(counts["gt_lesions"] for _, counts, _ in rows)
    hits = sum(answer_hits(info, counts) for info, (_, counts, _) in zip(infos, rows))
    return {"all": float(np.mean(d)), "positive": float(np.mean(pos)) if pos else float("nan"),
            "sensitivity": hits / n_gt if n_gt else float("nan")}


#: how many of the calibration grid's settings (best first) a checkpoint keeps in its metadata
GRID_KEPT = 20
#: the calibration grid (see :func:`search_settings`); max_unexplained_area 1e9 = not used
GRID: dict[str, tuple[Any, ...]] = {"mention_threshold": (0.3, 0.5, 0.7), "min_confidence": (0.5, 0.7, 0.9, 0.97), "max_unexplained": (0, 1, 2, 3, 5, 1000),
        "allow_threshold": (None, 0.5, 0.7, 0.9), "max_unseen_named": (0, 1000),
        "max_unexplained_area": (50, 100, 150, 200, 300, 1.0e9), "negative_report_allow": (0.0, 0.1, 0.2, 0.3)}
#: how far below the U-Net's answer on the validation split a safe setting may score (see
#: :func:`calibrate_failsafe`): with true reports on the scans with metastases (DSC) and in lesion
#: sensitivity, with other studies' reports on those scans and on all
TOLERANCE = {"true_positive": 0.005, "true_sensitivity": 0.015, "shuffled_positive": 0.01, "shuffled": 0.005}
#: how many different other-study report assignments (derangements) calibration scores each setting on
SHUFFLES = 3


def _answers(rows: list, conf: float, allow: float | None, allow_threshold: float, negative: float) -> dict[str, np.ndarray]:
    """Per scan, the DSC and detected lesions of the trusted dual-path answer (with the U-Net lesions
    it adds at ``allow``, or none; empty when the report names no metastasis, allow map below
    ``negative``) and of the U-Net's; what every setting with this confidence, allow threshold and
    negative-report level chooses between."""
    from bonescan.failsafe import DUALPATH, UNET, answer_dsc, answer_hits

    out: dict[str, list] = {"dual": [], "dual_hits": [], "unet": [], "unet_hits": []}
    for m, counts, _ in rows:
        add = np.nonzero((m.confidence >= conf) & (m.named >= allow_threshold))[0] + 1 if allow is not None else np.zeros(0, np.int64)
        empty = m.tokens > 0 and m.allow_max < negative
        for name, info in (("dual", {"answered_by": DUALPATH, "add": add[:0] if empty else add, "empty": empty}),
                           ("unet", {"answered_by": UNET, "add": add[:0]})):
            out[name].append(answer_dsc(m, info, None, counts))
            out[name + "_hits"].append(answer_hits(info, counts))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _grid_scores(rows: list, base, conf: float, allow: float | None, negative: float = 0.0) -> dict[str, np.ndarray]:
    """Mean DSC, over scans with metastases, and lesion sensitivity of every (mention threshold,
    max unexplained, max unexplained area, max unseen named) setting at this confidence, allow
    threshold and negative-report level, as arrays indexed in that order: what :func:`_scores`
    gives, for the whole grid at once."""
    allow_t = allow if allow is not None else base.allow_threshold
    a = _answers(rows, conf, allow, allow_t, negative)
    mention = np.asarray(GRID["mention_threshold"])[:, None]
    n_un = np.zeros((len(mention), len(rows)))
    area = np.zeros((len(mention), len(rows)))
    unseen = np.zeros(len(rows))
    not_read = np.zeros(len(rows), bool)
    for i, (m, _, _) in enumerate(rows):
        un = (~m.kept & (m.confidence >= conf))[None] & (m.mention[None] < mention)  # [mention, lesions]
        n_un[:, i] = un.sum(axis=1)
        area[:, i] = (un * m.area[None]).sum(axis=1)
        unseen[i] = np.sum((m.place_allow >= allow_t) & (m.place_prob < 0.5))
        not_read[i] = m.tokens == 0 or m.unknown / m.tokens > base.max_unknown_share
    k = np.asarray(GRID["max_unexplained"], np.float64)[None, :, None, None, None]
    big = np.asarray(GRID["max_unexplained_area"], np.float64)[None, None, :, None, None]
    seen = np.asarray(GRID["max_unseen_named"], np.float64)[None, None, None, :, None]
    fb = (not_read | (unseen > seen) | (n_un[:, None, None, None] > k) | (area[:, None, None, None] > big))  # [..., scans]
    dsc = np.where(fb, a["unet"], a["dual"])
    hits = np.where(fb, a["unet_hits"], a["dual_hits"])
    pos = np.asarray([p for _, _, p in rows], bool)
    n_gt = sum(c["gt_lesions"] for _, c, _ in rows)
    return {"all": dsc.mean(axis=-1), "positive": dsc[..., pos].mean(axis=-1) if pos.any() else np.full(dsc.shape[:-1], np.nan),
            "sensitivity": hits.sum(axis=-1) / n_gt if n_gt else np.full(dsc.shape[:-1], np.nan)}


def search_settings(true_rows: list, shuf_rows: list | list[list], base) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The fail-safe's threshold grid (:data:`GRID`) scored on one pass's measurements
    (:func:`_collect`) with true reports and with other studies' (one list of rows, or several:
    their scores are averaged); returns every setting's scores, best first, and the chosen one (the
    first; see :func:`calibrate_failsafe`). Scores all settings at once from per-scan answers
    (:func:`_grid_scores`); ``tests/test_report_path.py`` checks them against :func:`choose`."""
    import itertools

    if shuf_rows and not isinstance(shuf_rows[0], list):
        shuf_rows = [shuf_rows]
    from bonescan.failsafe import FailSafeSettings

    unet = _scores(true_rows, FailSafeSettings(max_unknown_share=-1.0))  # every scan answered by the U-Net
    unet_all, unet_pos, unet_sens = unet["all"], unet["positive"], unet["sensitivity"]
    grid: list[dict[str, Any]] = []
    for conf, allow, negative in itertools.product(GRID["min_confidence"], GRID["allow_threshold"], GRID["negative_report_allow"]):
        t = _grid_scores(true_rows, base, conf, allow, negative)
        shs = [_grid_scores(rows, base, conf, allow, negative) for rows in shuf_rows]
        sh = {q: np.mean([x[q] for x in shs], axis=0) for q in ("all", "positive")}
        # how far each safety constraint is missed (0 = met)
        tol = TOLERANCE
        miss = (np.maximum(0.0, unet_pos - tol["true_positive"] - t["positive"])
                + np.maximum(0.0, unet_sens - tol["true_sensitivity"] - t["sensitivity"])
                + np.maximum(0.0, unet_pos - tol["shuffled_positive"] - sh["positive"]) + np.maximum(0.0, unet_all - tol["shuffled"] - sh["all"]))
        for (i, mention), (j, k), (a, area), (u, unseen) in itertools.product(*(enumerate(GRID[n]) for n in (
                "mention_threshold", "max_unexplained", "max_unexplained_area", "max_unseen_named"))):
            ix = (i, j, a, u)
            grid.append({"max_unexplained": k, "max_unexplained_area": area, "min_confidence": conf, "mention_threshold": mention,
                         "add_named_lesions": allow is not None,
                         "allow_threshold": allow if allow is not None else base.allow_threshold, "max_unseen_named": unseen,
                         "negative_report_allow": negative,
                         "true": round(float(t["all"][ix]), 4), "true_positive": round(float(t["positive"][ix]), 4),
                         "true_sensitivity": round(float(t["sensitivity"][ix]), 4), "shuffled": round(float(sh["all"][ix]), 4),
                         "shuffled_positive": round(float(sh["positive"][ix]), 4), "safe": bool(miss[ix] == 0),
                         "miss": round(float(miss[ix]), 5), "objective": round(float(t["all"][ix]), 5)})
    # among the safe settings, the best answer to true reports (another study's report is the
    # exception the constraints guard against, not what the answer is tuned for); ties to the
    # better answer to other studies' reports, then to fewer fall-backs
    ranked = sorted(grid, key=lambda g: (-g["miss"], g["objective"], g["shuffled"], g["max_unexplained"], g["max_unexplained_area"],
                                         g["max_unseen_named"], -g["min_confidence"]), reverse=True)
    return ranked, ranked[0]


def calibrate_failsafe(ckpt, arrays, texts: list[str] | None = None, seed: int = 0, progress: bool = True,
                       threshold: float = THRESHOLD) -> dict[str, Any]:
    """Thresholds of the fail-safe from the validation split (bonescan.failsafe).

    * max_unexplained, max_unexplained_area, min_confidence, mention_threshold, max_unseen_named,
      negative_report_allow, add_named_lesions and
      allow_threshold (which U-Net lesions a trusted answer adds: none, or those where the
      report's allow map reaches it): of a grid (:func:`search_settings`), the setting with
      the best mean DSC over the split given its true reports, among the settings that keep the
      answers to true reports and to other studies' (:data:`SHUFFLES` fixed derangements, scores averaged) safe: with true
      reports the scans with metastases score at least the U-Net's DSC there and lesion
      sensitivity stays near the U-Net's, with other studies' reports those scans and the split
      score at least the U-Net's (each within :data:`TOLERANCE`). Ties go to the
      better answer to another study's reports, then to fewer fall-backs; when no setting is safe, the one that misses the constraints by least.
    * max_unknown_share: the largest share of characters unknown to the model (replaced on purpose
      in the true reports; 0.4, 0.3, 0.2, 0.1 tried from the largest down) at which the dual-path
      answer still scores at least the U-Net's.
    texts: the true reports (e.g. re-written in the training house styles); default the split's own.
    The result's ``validation`` summarises the dual-path network's mask (before any decision, so
    without the negative-report rule) to the true reports,
    from the same pass.
    """
    from dataclasses import replace

    from bonescan.failsafe import FailSafeSettings
    from bonescan.model.checkpoint import Predictor

    pred = ckpt if isinstance(ckpt, Predictor) else Predictor(ckpt)
    true = list(texts) if texts is not None else list(arrays.reports)
    base = FailSafeSettings()
    dual_metrics: list[dict[str, Any]] = []
    unet_answers: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # the U-Net's, from the first pass: the same in every pass
    true_rows = _collect(pred, arrays, true, threshold, dualpath_metrics=dual_metrics, fallback=unet_answers)
    shuf_rows = [_collect(pred, arrays, select_reports(true, "shuffled", seed + 100 * j), threshold, fallback=unet_answers)
                 for j in range(SHUFFLES)]
    grid, best = search_settings(true_rows, shuf_rows, base)
    unet = _scores(true_rows, FailSafeSettings(max_unknown_share=-1.0))  # every scan answered by the U-Net
    unet_all, unet_pos, unet_sens = unet["all"], unet["positive"], unet["sensitivity"]
    settings = replace(base, max_unexplained=float(best["max_unexplained"]), min_confidence=best["min_confidence"],
                       mention_threshold=best["mention_threshold"], add_named_lesions=best["add_named_lesions"],
                       allow_threshold=best["allow_threshold"], max_unseen_named=float(best["max_unseen_named"]),
                       max_unexplained_area=float(best["max_unexplained_area"]), negative_report_allow=float(best["negative_report_allow"]))
    # unknown characters: replace a share of each report's characters by ones the model never trained on
    tok = pred.tokenizer
    assert tok is not None  # the fail-safe belongs to the dual-path model
    unknown_chars = [t for t, i in tok.tok.get_vocab().items() if len(t) == 1 and "\u4e00" <= t <= "\u9fff" and not tok.known[i]]
    rng = np.random.default_rng(seed)
    curve = {}
    max_unknown = 0.0
    sub = arrays.subset(min(len(arrays), 25))  # enough to see where reading breaks down
    if unknown_chars:
        unet_sub = _scores(true_rows[: len(sub)], FailSafeSettings(max_unknown_share=-1.0))["all"]
        for share in (0.4, 0.3, 0.2, 0.1):  # from the largest down: one pass when reading holds up (the usual case)
            noisy = ["".join(str(rng.choice(unknown_chars)) if ("\u4e00" <= c <= "\u9fff" and rng.random() < share) else c
                             for c in t) for t in true[: len(sub)]]
            d = _scores(_collect(pred, sub, noisy, threshold, fallback=unet_answers), replace(settings, enabled=False))["all"]  # the dual-path answer
            curve[str(share)] = round(d, 4)
            if d >= unet_sub:
                max_unknown = share
                break
    settings = replace(settings, max_unknown_share=max(max_unknown, 0.05))
    res = {"settings": settings.to_dict(), "val_scans": len(arrays), "unet_dsc": round(unet_all, 4),
           "unet_dsc_positive": round(unet_pos, 4), "unet_lesion_sensitivity": round(unet_sens, 4), "safe": best["safe"],
           "grid_size": len(grid), "grid": grid[:GRID_KEPT], "dualpath_dsc_by_unknown_share": curve,
           "dsc_true": best["true"], "dsc_true_positive": best["true_positive"], "dsc_shuffled": best["shuffled"],
           "lesion_sensitivity_true": best["true_sensitivity"], "validation": summarize(dual_metrics)}
    if progress:
        area = f" or {best['max_unexplained_area']:g} px" if best["max_unexplained_area"] < 1e9 else ""
        negative = (f", no lesion when the report names no metastasis (allow map below {best['negative_report_allow']:g})"
                    if best["negative_report_allow"] > 0 else "")
        print(f"fail-safe calibrated on {len(arrays)} validation scans: falls back above {best['max_unexplained']} "
              f"unexplained lesion(s){area} of confidence >= {best['min_confidence']}, or above {100 * settings.max_unknown_share:.0f} % "
              f"unknown characters{', adds confident U-Net lesions the report names' if best['add_named_lesions'] else ''}"
              f"{negative}; "
              f"DSC true {best['true']:.4f} (with metastases {best['true_positive']:.4f}, lesion sensitivity "
              f"{best['true_sensitivity']:.3f}), another study's {best['shuffled']:.4f}; U-Net {unet_all:.4f} ({unet_pos:.4f}, "
              f"{unet_sens:.3f}){'' if best['safe'] else '; NO setting met every safety constraint: the closest is used'}")
    return res


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
    texts = rewrite_split(arrays.metas, arrays.reports, ckpt.metadata.get("report_styles"), seed)
    res = calibrate_failsafe(ckpt, arrays, texts, seed=seed, progress=progress)
    res["data"], res["split"] = str(data), split
    metadata = {**ckpt.metadata, "failsafe": json.loads(json.dumps(res))}
    save_checkpoint(out or checkpoint, ckpt.net, ckpt.tokenizer_files, metadata)
    return res


def report_texts(arrays: SplitArrays, reports_dir: str | Path | None = None, style: str | None = None,
                 seed: int = 0) -> tuple[SplitArrays, list[str]]:
    """The cases to evaluate and the report each one gets: its own, the one in ``reports_dir``
    (only the cases that have a ``<case_id>.txt`` there), or its ground truth re-written in a house
    ``style`` (synthetic cases)."""
    if reports_dir is not None:
        from bonescan.data.io import load_reports

        given = load_reports(reports_dir)
        keep = [i for i, cid in enumerate(arrays.ids) if cid in given]
        if not keep:
            raise BonescanError(f"{reports_dir}: none of its <case_id>.txt names a case of this split")
        arrays = arrays.select(keep)
        return arrays, [given[cid] for cid in arrays.ids]
    if style is not None:
        from bonescan.data.rewrite import rewritable
        from bonescan.data.styles import STYLES

        if style not in STYLES:
            raise BonescanError(f"--style must be one of {sorted(STYLES)}")
        if not all(rewritable(m) for m in arrays.metas):
            raise BonescanError("--style re-writes reports from the ground truth (meta.json) of synthetic cases; these cases have none")
        return arrays, rewrite_split(arrays.metas, arrays.reports, [style], seed)
    return arrays, list(arrays.reports)


def evaluate(checkpoint: str | Path, data: str | Path, split: str | None = "test", reports: str = "true",
             json_out: str | Path | None = None, seed: int = 0, progress: bool = True, reports_dir: str | Path | None = None,
             style: str | None = None, answer: str = "failsafe", n: int | None = None) -> dict[str, Any]:
    """``n``: only the first n cases of the split (None: all); ``reports_dir`` / ``style``: see report_texts."""
    from bonescan.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    arrays, texts = report_texts(load_split(data, split, progress, n=n), reports_dir, style, seed)
    if reports == "shuffled" and len(arrays) < 2:
        raise BonescanError(f"--reports shuffled needs two scans or more (every scan gets another scan's report); "
                            f"split {split!r} of {data} gives {len(arrays)}")
    res = evaluate_arrays(ckpt, arrays, reports, seed, progress=progress, texts=texts, answer=answer)
    res.pop("per_scan_all", None)
    res.update({
        "checkpoint": str(checkpoint),
        "model": ckpt.cfg.model,
        "fusion": ckpt.cfg.fusion if ckpt.cfg.model == "dualpath" else None,
        "train_seed": ckpt.metadata.get("seed"),
        "data": str(data),
        "split": split,
        "reports_source": str(reports_dir) if reports_dir else (f"re-written in style {style}" if style else "the cases' own"),
        "data_manifest_sha256_16": manifest_hash(Path(data)),
        "skipped_cases": [str(e) for e in arrays.errors],
    })
    s = res["summary"]
    print(f"{ckpt.cfg.model:8s} reports={reports:8s} {split or 'all'} ({res['answer']} answer): DSC {s['dsc']['mean']:.4f} "
          f"+- {s['dsc']['sd']:.4f} IoU {s['iou']['mean']:.4f} lesion sens {s['lesion_sensitivity'] or 0:.3f} "
          f"FP/scan {s['fp_per_scan']:.2f} ({s['scans']} scans)")
    if "failsafe" in res:
        a_ = res["answers"]
        print(f"  dual-path {a_['dualpath']['dsc']['mean']:.4f}, fail-safe {a_['failsafe']['dsc']['mean']:.4f} "
              f"({res['failsafe']['answered_by_unet']} of {s['scans']} answered by the U-Net), U-Net {a_['unet']['dsc']['mean']:.4f}")
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(res, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return res
