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
                    answer: str = "dualpath", normalize: bool | None = None, variants: dict[str, Any] | None = None,
                    faint: float | None = None) -> dict[str, Any]:
    """ckpt: Checkpoint or Predictor; arrays: a SplitArrays -> {"per_scan", "summary", "answers", ...}.

    texts: the reports to use instead of the split's own (e.g. re-written in one house style, or
    written by hand); ``reports`` then selects among them (true / shuffled / empty) as usual.
    A dual-path checkpoint is scored three ways from one pass: its own answer ("dualpath": what the
    decision gives with the fail-safe off, i.e. empty where the report names no metastasis), the
    fail-safe's choice ("failsafe", settings from the checkpoint unless given) and the bundled
    image-only U-Net's ("unet"); ``summary`` is the one named by ``answer``. Every answer is scored
    with its probability map too: its FROC curve and CPM (bonescan.metrics). ``normalize``: read the
    reports with (True) or without (False) the tokenizer's normalisation (default: as the
    contract says; False measures what normalisation buys). ``variants``: name -> FailSafeSettings,
    each also scored from the same pass (``res["variants"]``: the ablation of the fail-safe's rules, the
    named-place prior included). ``faint``: the contrast cut of faint lesions (metrics.faint_cut); every answer
    then also reports its faint-lesion sensitivity (synthetic cases with their ``meta.json``).
    """
    from tqdm import tqdm

    from bonescan.failsafe import (
        UNET,
        FailSafeSettings,
        answer_mask,
        choose,
        measure,
        served_probability,
        with_named_places,
    )
    from bonescan.metrics import faint_detected
    from bonescan.model.checkpoint import Predictor
    from bonescan.postprocess import postprocess_failsafe, read_places

    pred = ckpt if isinstance(ckpt, Predictor) else Predictor(ckpt)
    texts = select_reports(list(texts) if texts is not None else arrays.reports, reports, seed)
    if failsafe is None:
        failsafe = FailSafeSettings.from_dict((pred.ckpt.metadata.get("failsafe") or {}).get("settings"))
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in ANSWERS}
    per_variant: dict[str, list[dict[str, Any]]] = {k: [] for k in (variants or {})}
    decisions: list[dict[str, Any]] = []
    tok = pred.tokenizer
    normalizing = tok.normalizing if tok is not None else None
    if tok is not None and normalize is not None:
        tok.normalizing = normalize
    try:
        for i in tqdm(range(0, len(arrays), batch), desc=f"eval ({reports} reports)", unit="batch", disable=not progress, leave=False):
            imgs = arrays.images[i : i + batch].astype(np.float32)
            out = pred.outputs(imgs, texts[i : i + batch])
            sp = np.array(arrays.spacings[i : i + batch], np.float32)
            m_d, p_d, _ = postprocess(out["logits"], sp, threshold)
            answers = {"dualpath": (m_d, p_d)}
            if "fallback_logits" in out:
                m_u, p_u, _ = postprocess(out["fallback_logits"], sp, threshold)
                answers["unet"] = (m_u, p_u)
                # the anatomy output and the report's places: the named-place prior and rule 5's parsed mentions
                places = {"regions": out.get("region_labels"), "report_regions": out.get("report_regions"),
                          "report_benign": out.get("report_benign"), "images": imgs}
                fs, p_fs, _, dec = postprocess_failsafe(out["logits"], out["fallback_logits"], out["text_map"], out["text_stats"],
                                                        sp, failsafe, threshold, **places)
                answers["failsafe"] = (fs, p_fs)
                for k in range(len(imgs) if variants else 0):
                    meas = measure(m_d[k, 0], m_u[k, 0], p_u[k, 0], out["text_map"][k], out["text_stats"][k], prob=p_d[k, 0])
                    read_places(meas, out.get("region_labels"), k, out.get("report_regions"), out.get("report_benign"), imgs)
                    for name, st in (variants or {}).items():
                        info = choose(meas, st)
                        mask = with_named_places(answer_mask(meas, info).astype(bool), out["fallback_logits"][k, 0],
                                                 _at(out.get("report_regions"), k), _at(out.get("region_labels"), k), st,
                                                 info["answered_by"])
                        prob = served_probability(p_d[k, 0], p_u[k, 0], meas, info)
                        grown = mask & ~answer_mask(meas, info).astype(bool)
                        prob = np.where(grown, np.maximum(prob, p_u[k, 0]), prob)
                        row = scan_metrics(mask, arrays.masks[i + k], prob)
                        row["answered_by_unet"] = info["answered_by"] == UNET
                        if faint is not None:
                            row["faint_lesions"], row["faint_detected"] = faint_detected(mask, arrays.masks[i + k],
                                                                                         arrays.metas[i + k], faint)
                        per_variant[name].append(row)
                # the dual-path answer (the decision with the fail-safe off): empty where the report names no metastasis
                for k, d in enumerate(dec):
                    if d["signals"]["names_no_metastasis"]:
                        m_d[k] = 0
                decisions.extend({"case_id": arrays.ids[i + k], "answered_by": d["answered_by"], "reason": d["reason"],
                                  **d["signals"]} for k, d in enumerate(dec))
            for name, (m, p) in answers.items():
                for k in range(len(imgs)):
                    row = scan_metrics(m[k, 0], arrays.masks[i + k], p[k, 0])
                    row["case_id"] = arrays.ids[i + k]
                    if faint is not None:
                        row["faint_lesions"], row["faint_detected"] = faint_detected(m[k, 0], arrays.masks[i + k],
                                                                                     arrays.metas[i + k], faint)
                    per[name].append(row)
    finally:
        if tok is not None:
            tok.normalizing = normalizing
    answers_ = {k: summarize(v) for k, v in per.items() if v}
    if answer not in answers_:
        answer = "dualpath"
    res: dict[str, Any] = {"reports": reports, "threshold": threshold, "answer": answer, "per_scan": per[answer],
                           "summary": answers_[answer], "answers": answers_}
    if decisions:
        res["failsafe"] = {"settings": failsafe.to_dict(), "decisions": decisions,
                           "answered_by_unet": sum(d["answered_by"] == "unet" for d in decisions)}
        res["per_scan_all"] = per
    if variants:
        res["variants"] = {k: {**summarize(v), "answered_by_unet": sum(r["answered_by_unet"] for r in v)} for k, v in per_variant.items()}
    return res


def _at(batch: np.ndarray | None, k: int) -> np.ndarray | None:
    return None if batch is None else batch[k]


def cpm(summary: dict[str, Any]) -> str:
    """A summary's CPM (mean FROC sensitivity at 1/8 ... 8 false positives per scan) for printing."""
    f = summary.get("froc")
    return f"{f['cpm']:.3f}" if f else "-"


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
        errors = [e for e in arrays.errors if getattr(e, "case_id", None) in given]  # unreadable cases it has a report for
        arrays = arrays.select(keep)
        arrays.errors = errors
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
    skipped = arrays.errors  # the cases meant for this evaluation that could not be read
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
        "skipped_cases": [str(e) for e in skipped],
    })
    s = res["summary"]
    print(f"{ckpt.cfg.model:8s} reports={reports:8s} {split or 'all'} ({res['answer']} answer): DSC {s['dsc']['mean']:.4f} "
          f"+- {s['dsc']['sd']:.4f} IoU {s['iou']['mean']:.4f} lesion sens {s['lesion_sensitivity'] or 0:.3f} "
          f"FP/scan {s['fp_per_scan']:.2f} CPM {cpm(s)} ({s['scans']} scans, {len(skipped)} skipped as unreadable)")
    if "failsafe" in res:
        a_ = res["answers"]
        print(f"  dual-path {a_['dualpath']['dsc']['mean']:.4f} (CPM {cpm(a_['dualpath'])}), fail-safe {a_['failsafe']['dsc']['mean']:.4f} "
              f"(CPM {cpm(a_['failsafe'])}; {res['failsafe']['answered_by_unet']} of {s['scans']} answered by the U-Net), "
              f"U-Net {a_['unet']['dsc']['mean']:.4f} (CPM {cpm(a_['unet'])})")
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(res, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return res
