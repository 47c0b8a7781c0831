"""``bonescan bench grounding``: does the report's *where* find lesions? One checkpoint, issue 26 item 5.

The report names bones as metastatic (``report_sites``: "T7", "左侧第5肋" ...); the anatomy output says which
pixels are those bones. Their union is the **named-place prior**, which the served fail-safe applies
(``failsafe.add_in_named_places``, its threshold calibrated on the validation split). This bench takes the
answer without it (the fail-safe's, with the case's report) and adds every hot spot of the bundled same-budget U-Net whose pixels lie mostly
in a named bone, at a lower threshold ``t`` there (the "U-Net in named bones" variant), or the dual-path
model's own sub-threshold hot spots there ("dual-path in named bones"). ``t`` is chosen on the validation
split (the highest lesion sensitivity whose false positives per scan stay at or below the U-Net's there) and
the test split is scored with it: never chosen on the scans it is scored on.

Scored against the U-Net with the dual-path model's image budget (the bundled fall-back, issue 26's
baseline), on the scans with metastases: lesion sensitivity, false positives per scan, DSC, and the
sensitivity for faint lesions (the lowest-contrast third of the true lesions, by ``meta.json``'s contrast).

This is one checkpoint (one seed), in-style reports, in-process; the issue's target (3 seeds, the left-out
style) is ``bench text-gain``'s, whose training now calibrates the prior with the rest of the fail-safe.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C

THRESHOLDS = (0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05)
VARIANTS = ("unet in named bones", "dual-path in named bones")


def score(rows: list[dict[str, Any]], answer_of, faint_cut: float) -> dict[str, Any]:
    """Lesion sensitivity, false positives per scan and DSC on the scans with metastases; faint sensitivity;
    false positives per scan over all scans."""
    from bonescan.metrics import faint_detected, scan_metrics

    gt_n = det = fp = fp_all = faint_n = faint_k = 0
    dscs = []
    for r in rows:
        pred = answer_of(r)
        m = scan_metrics(pred, r["gt"])
        fp_all += m["fp_components"]
        if r["gt"].any():
            gt_n += m["gt_lesions"]
            det += m["detected_lesions"]
            fp += m["fp_components"]
            dscs.append(m["dsc"])
            n, k = faint_detected(pred, r["gt"], r["meta"], faint_cut)
            faint_n += n
            faint_k += k
    n_mets = len(dscs)
    return {"sensitivity": round(det / max(gt_n, 1), 4), "fp_per_scan": round(fp / max(n_mets, 1), 3),
            "dsc": round(float(np.mean(dscs)), 4) if dscs else None, "faint_sensitivity": round(faint_k / max(faint_n, 1), 4),
            "faint_lesions": faint_n, "fp_per_scan_all": round(fp_all / max(len(rows), 1), 3), "scans_with_metastases": n_mets,
            "scans": len(rows)}


def _rows(pred, settings, data: Path, split: str, n: int | None, progress: bool) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from bonescan.anatomy import named_prior
    from bonescan.data.arrays import load_split
    from bonescan.postprocess import served_failsafe

    arr = load_split(data, split, progress=progress, n=n)
    sp = np.array([C.DEFAULT_PIXEL_SPACING_MM], np.float32)
    rows = []
    for i in tqdm(range(len(arr)), desc=f"grounding {split}", unit="scan", disable=not progress):
        image = arr.images[i].astype(np.float32)[None]
        out = pred.outputs(image, [arr.reports[i]])
        served = served_failsafe(out, sp, replace(settings, named_place_threshold=0.0), images=image)[0][0, 0] > 0
        grid = out[C.REGION_LABELS.name][0]
        rows.append({"gt": arr.masks[i] > 0, "meta": arr.metas[i], "served": served, "d": out[C.LOGITS.name][0, 0],
                     "u": out[C.FALLBACK_LOGITS.name][0, 0],
                     "prior": named_prior(out[C.REPORT_REGIONS.name][0].astype(bool), grid, C.REGION_STRIDE)})
    return rows


def bench_grounding(checkpoint: str | Path, data: str | Path, n: int | None = None, progress: bool = True) -> dict[str, Any]:
    from bonescan.benchmarks.latency import cpu_info, run_info
    from bonescan.failsafe import FailSafeSettings, add_in_named_places
    from bonescan.metrics import faint_cut as metrics_faint_cut
    from bonescan.model.checkpoint import Predictor

    pred = Predictor(checkpoint)
    if not pred.text_guided:
        raise ValueError(f"{checkpoint}: a U-Net; the named-place prior needs the dual-path model (the report) and its bundled U-Net")
    settings = FailSafeSettings.from_dict((pred.ckpt.metadata.get("failsafe") or {}).get("settings"))
    val = _rows(pred, settings, Path(data), "val", n, progress)
    test = _rows(pred, settings, Path(data), "test", n, progress)
    cut = metrics_faint_cut([r["meta"] for r in val + test])
    faint_cut = cut if cut is not None else float("inf")
    thr = float(np.log(C.THRESHOLD / (1 - C.THRESHOLD)))
    answers = {
        "U-Net, same image budget (baseline)": lambda t: (lambda r: r["u"] >= thr),
        "served (fail-safe, no prior)": lambda t: (lambda r: r["served"]),
        VARIANTS[0]: lambda t: (lambda r: add_in_named_places(r["served"], r["u"], r["prior"], t)),
        VARIANTS[1]: lambda t: (lambda r: add_in_named_places(r["served"], r["d"], r["prior"], t)),
    }
    base_val = score(val, answers["U-Net, same image budget (baseline)"](0), faint_cut)
    sweep: dict[str, list[dict[str, Any]]] = {}
    chosen: dict[str, float] = {}
    for v in VARIANTS:
        sweep[v] = [{"t": t, **score(val, answers[v](t), faint_cut)} for t in THRESHOLDS]
        ok = [row for row in sweep[v] if row["fp_per_scan"] <= base_val["fp_per_scan"]]
        chosen[v] = max(ok, key=lambda row: (row["sensitivity"], row["t"]))["t"] if ok else THRESHOLDS[0]
    test_scores = {name: score(test, make(chosen.get(name, 0.5)), faint_cut) for name, make in answers.items()}
    base = test_scores["U-Net, same image budget (baseline)"]
    gains = {v: {"sensitivity": round(test_scores[v]["sensitivity"] - base["sensitivity"], 4),
                 "dsc": round(test_scores[v]["dsc"] - base["dsc"], 4),
                 "faint_sensitivity": round(test_scores[v]["faint_sensitivity"] - base["faint_sensitivity"], 4),
                 "fp_per_scan": round(test_scores[v]["fp_per_scan"] - base["fp_per_scan"], 3)} for v in VARIANTS}
    return {"checkpoint": str(checkpoint), "data": str(data), "faint_contrast_cut": round(faint_cut, 3),
            "validation": {"baseline": base_val, "sweep": sweep, "chosen_t": chosen}, "test": test_scores,
            "gains_vs_unet": gains, "targets": {"sensitivity": 0.05, "dsc": 0.03, "fp_per_scan": 0.0},
            "machine": cpu_info(), "run": run_info()}


def format_grounding(r: dict[str, Any]) -> str:
    lines = [f"named-place prior, {r['checkpoint']} on {r['data']} (t chosen on val: "
             + ", ".join(f"{k} {v}" for k, v in r["validation"]["chosen_t"].items())
             + f"; faint = contrast <= {r['faint_contrast_cut']}); {r['run']['measured_at']}, commit {r['run']['commit']}", "",
             "| test split, scans with metastases | lesion sensitivity | FP per scan | DSC | faint-lesion sensitivity |",
             "|---|---|---|---|---|"]
    for name, s in r["test"].items():
        lines.append(f"| {name} | {s['sensitivity']:.3f} | {s['fp_per_scan']:.2f} | {s['dsc']:.4f} | {s['faint_sensitivity']:.3f} "
                     f"({s['faint_lesions']}) |")
    lines.append("")
    for v, g in r["gains_vs_unet"].items():
        lines.append(f"{v} vs the U-Net: sensitivity {g['sensitivity']:+.3f} (target +0.05), DSC {g['dsc']:+.4f} (target +0.03), "
                     f"faint {g['faint_sensitivity']:+.3f}, FP per scan {g['fp_per_scan']:+.2f} (target <= 0)")
    lines.append("one checkpoint (one seed), in-style reports, in-process: a probe, not the issue's 3-seed claim")
    return "\n".join(lines)


def run_grounding(checkpoint: str | Path, data: str | Path, out: str | Path | None, n: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    r = bench_grounding(checkpoint, data, n, progress)
    print(format_grounding(r))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "grounding.json").write_text(json.dumps(r, indent=1) + "\n")
    return r
