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
from bonescan.metrics import scan_metrics, summarize
from bonescan.postprocess import postprocess

REPORT_MODES = ("true", "shuffled", "empty")


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation with no fixed point (n >= 2): scan i gets the report of scan perm[i]."""
    if n < 2:
        return np.arange(n)
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
    A dual-path checkpoint is scored three ways from one pass: its own answer ("dualpath"), the
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


def _collect(pred, arrays, texts: list[str], threshold: float, batch: int = 4) -> list[dict[str, Any]]:
    """One pass: per scan the cleaned dual-path and U-Net masks and the fail-safe's inputs."""
    rows = []
    for i in range(0, len(arrays), batch):
        imgs = arrays.images[i : i + batch].astype(np.float32)
        out = pred.outputs(imgs, texts[i : i + batch])
        sp = np.array(arrays.spacings[i : i + batch], np.float32)
        md = postprocess(out["logits"], sp, threshold)[0]
        mu = postprocess(out["fallback_logits"], sp, threshold)[0]
        for k in range(len(imgs)):
            rows.append({"dual": md[k, 0], "unet": mu[k, 0], "text_map": out["text_map"][k], "stats": out["text_stats"][k],
                         "gt": arrays.masks[i + k]})
    return rows


def _mean_dsc(rows: list[dict[str, Any]], settings) -> float:
    from bonescan.failsafe import decide
    from bonescan.metrics import dsc

    return float(np.mean([dsc(decide(r["dual"], r["unet"], r["text_map"], r["stats"], settings)[0], r["gt"]) for r in rows]))


def calibrate_failsafe(ckpt, arrays, texts: list[str] | None = None, seed: int = 0, progress: bool = True,
                       threshold: float = THRESHOLD) -> dict[str, Any]:
    """Thresholds of the fail-safe from the validation split (bonescan.failsafe).

    * max_unexplained_share: the value that maximises the mean DSC over the split with its true
      reports and with another study's reports (a fixed derangement) alike; ties go to the larger
      value (fewer fall-backs);
    * max_unknown_share: the largest share of characters unknown to the model (replaced on purpose
      in the true reports) at which the dual-path answer still scores at least the U-Net's.
    texts: the true reports to use (e.g. re-written in the training house styles); default the split's.
    """
    from dataclasses import replace

    from bonescan.failsafe import FailSafeSettings
    from bonescan.metrics import dsc
    from bonescan.model.checkpoint import Predictor

    pred = ckpt if isinstance(ckpt, Predictor) else Predictor(ckpt)
    true = list(texts) if texts is not None else list(arrays.reports)
    base = FailSafeSettings()
    true_rows = _collect(pred, arrays, true, threshold)
    shuf_rows = _collect(pred, arrays, select_reports(true, "shuffled", seed), threshold)
    grid = [round(x, 2) for x in np.arange(0.1, 1.01, 0.05)]
    scores = {g: (_mean_dsc(true_rows, replace(base, max_unexplained_share=g)) +
                  _mean_dsc(shuf_rows, replace(base, max_unexplained_share=g))) / 2 for g in grid}
    best = max(scores.values())
    unexplained = max(g for g, v in scores.items() if v >= best - 1e-9)
    # unknown characters: replace a share of each report's characters by ones the model never trained on
    tok = pred.tokenizer
    unknown_chars = [t for t, i in tok.tok.get_vocab().items() if len(t) == 1 and "\u4e00" <= t <= "\u9fff" and not tok.known[i]]
    rng = np.random.default_rng(seed)
    unet_dsc = float(np.mean([dsc(r["unet"], r["gt"]) for r in true_rows]))
    curve = {}
    max_unknown = 0.0
    for share in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4):
        noisy = ["".join(str(rng.choice(unknown_chars)) if ("\u4e00" <= c <= "\u9fff" and rng.random() < share) else c for c in t)
                 for t in true]
        rows = _collect(pred, arrays, noisy, threshold)
        d = _mean_dsc(rows, replace(base, enabled=False))
        curve[str(share)] = round(d, 4)
        if d >= unet_dsc:
            max_unknown = share
        else:
            break
    settings = replace(base, max_unexplained_share=unexplained, max_unknown_share=max(max_unknown, 0.05))
    res = {"settings": settings.to_dict(), "val_scans": len(arrays),
           "mean_dsc_true_and_shuffled_by_max_unexplained": {str(g): round(v, 4) for g, v in scores.items()},
           "unet_dsc": round(unet_dsc, 4), "dualpath_dsc_by_unknown_share": curve,
           "dsc_true": round(_mean_dsc(true_rows, settings), 4), "dsc_shuffled": round(_mean_dsc(shuf_rows, settings), 4)}
    if progress:
        print(f"fail-safe calibrated on {len(arrays)} validation scans: max unexplained share {unexplained}, "
              f"max unknown share {settings.max_unknown_share}; DSC true {res['dsc_true']:.4f}, shuffled {res['dsc_shuffled']:.4f}, "
              f"U-Net {unet_dsc:.4f}")
    return res


def report_texts(arrays: SplitArrays, reports_dir: str | Path | None = None, style: str | None = None,
                 seed: int = 0) -> tuple[SplitArrays, list[str]]:
    """The cases to evaluate and the report each one gets: its own, the one in ``reports_dir``
    (only the cases that have a ``<case_id>.txt`` there), or its ground truth re-written in a house
    ``style`` (synthetic cases)."""
    from bonescan.errors import BonescanError

    if reports_dir is not None:
        from bonescan.data.handwritten import load_reports

        given = load_reports(reports_dir)
        keep = [i for i, cid in enumerate(arrays.ids) if cid in given]
        if not keep:
            raise BonescanError(f"{reports_dir}: none of its <case_id>.txt names a case of this split")
        arrays = arrays.select(keep)
        return arrays, [given[cid] for cid in arrays.ids]
    if style is not None:
        from bonescan.data.report import report_from_meta
        from bonescan.data.styles import STYLES

        if style not in STYLES:
            raise BonescanError(f"--style must be one of {sorted(STYLES)}")
        if not all(m and m.get("generator") for m in arrays.metas):
            raise BonescanError("--style re-writes reports from the ground truth (meta.json) of synthetic cases; these cases have none")
        return arrays, [report_from_meta(m, style, seed + k).text for k, m in enumerate(arrays.metas)]
    return arrays, list(arrays.reports)


def evaluate(checkpoint: str | Path, data: str | Path, split: str | None = "test", reports: str = "true",
             json_out: str | Path | None = None, seed: int = 0, progress: bool = True, reports_dir: str | Path | None = None,
             style: str | None = None, answer: str = "failsafe") -> dict[str, Any]:
    from bonescan.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    arrays, texts = report_texts(load_split(data, split, progress), reports_dir, style, seed)
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
