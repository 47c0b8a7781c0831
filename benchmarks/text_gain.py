"""``bonescan bench text-gain``: is the dual-path model's gain over the U-Net real, and from the report?

For each training seed: train the U-Net and the dual-path model (demo config, same data, steps and
seed; checkpoints already in OUT are reused), then evaluate on the held-out test split with true,
shuffled (another scan's report) and empty reports. Targets (mean over seeds): dual-path >= U-Net
+ 0.03 with true reports; <= U-Net with shuffled reports; within 0.03 of the U-Net with empty ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("true", "shuffled", "empty")


def run_text_gain(data: Path, out: Path, seeds: list[int], config: str = "demo", fusion: str | None = None,
                  prior: bool = True, tag: str = "") -> dict[str, Any]:
    from bonescan.data.arrays import load_split
    from bonescan.evaluate import evaluate_arrays
    from bonescan.model.checkpoint import load_checkpoint
    from bonescan.model.config import preset
    from bonescan.train import train

    out.mkdir(parents=True, exist_ok=True)
    test = load_split(data, "test")
    rows: dict[str, Any] = {}
    for seed in seeds:
        for model in ("unet", "dualpath"):
            ck = out / f"{model}{tag if model == 'dualpath' else ''}_s{seed}.pt"
            if not ck.exists():
                m, t = preset(config, model, fusion if model == "dualpath" else None)
                if model == "dualpath":
                    m.prior = prior
                train(data, ck, m, t, seed=seed, command=f"bonescan bench text-gain (seed {seed})", config_name=config)
            c = load_checkpoint(ck)
            modes = MODES if model == "dualpath" else ("true",)
            for mode in modes:
                key = f"{model}{tag if model == 'dualpath' else ''}_s{seed}_{mode}"
                res = evaluate_arrays(c, test, mode, seed=1000 + seed, progress=True)
                s = res["summary"]
                rows[key] = {"seed": seed, "model": model, "reports": mode, "dsc": s["dsc"]["mean"], "dsc_sd": s["dsc"]["sd"],
                             "iou": s["iou"]["mean"], "precision": s["precision"]["mean"], "recall": s["recall"]["mean"],
                             "lesion_sensitivity": s["lesion_sensitivity"], "fp_per_scan": s["fp_per_scan"],
                             "negative_scans_clean": s["negative_scans_clean"], "train_seconds": c.metadata.get("train_seconds")}
                print(f"seed {seed} {model:8s} reports={mode:8s} DSC {s['dsc']['mean']:.4f}", flush=True)
    summary = summarize(rows, seeds, tag)
    result = {"data": str(data), "config": config, "fusion": fusion or "xattn", "prior": prior, "seeds": seeds,
              "test_scans": len(test), "rows": rows, "summary": summary}
    (out / f"text_gain{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return result


def summarize(rows: dict[str, Any], seeds: list[int], tag: str = "") -> dict[str, Any]:
    def mean(model: str, mode: str, field: str = "dsc") -> float:
        return float(np.mean([rows[f"{model}{tag if model == 'dualpath' else ''}_s{s}_{mode}"][field] for s in seeds]))

    unet = mean("unet", "true")
    d = {m: mean("dualpath", m) for m in MODES}
    return {
        "unet_dsc": unet,
        "dualpath_dsc": d,
        "gain_true": d["true"] - unet,
        "gain_shuffled": d["shuffled"] - unet,
        "gain_empty": d["empty"] - unet,
        "targets_met": {
            "true_gain_at_least_0.03": d["true"] - unet >= 0.03,
            "shuffled_not_above_unet": d["shuffled"] <= unet,
            "empty_within_0.03": abs(d["empty"] - unet) <= 0.03,
        },
    }


def table(result: dict[str, Any]) -> str:
    rows, seeds = result["rows"], result["seeds"]
    lines = [f"\n## Text gain: {result['config']} config, fusion {result['fusion']}, veto map {'on' if result['prior'] else 'off'}, "
             f"{result['test_scans']} test scans, seeds {seeds}", "",
             "| model | reports | " + " | ".join(f"DSC seed {s}" for s in seeds) + " | mean | sd over seeds | lesion sens. | FP/scan | negatives clean |",
             "|---|---|" + "---|" * (len(seeds) + 5)]
    groups = [("unet", "true")] + [("dualpath", m) for m in MODES]
    for model, mode in groups:
        keys = [k for k in rows if rows[k]["model"] == model and rows[k]["reports"] == mode]
        keys.sort(key=lambda k: rows[k]["seed"])
        vals = [rows[k]["dsc"] for k in keys]
        sens = np.mean([rows[k]["lesion_sensitivity"] or 0 for k in keys])
        fp = np.mean([rows[k]["fp_per_scan"] for k in keys])
        neg = np.mean([rows[k]["negative_scans_clean"] or 0 for k in keys])
        label = "U-Net" if model == "unet" else "dual-path"
        mode_label = "(none used)" if model == "unet" else mode
        lines.append(f"| {label} | {mode_label} | " + " | ".join(f"{v:.4f}" for v in vals) +
                     f" | **{np.mean(vals):.4f}** | {np.std(vals, ddof=1) if len(vals) > 1 else 0:.4f} | {sens:.3f} | {fp:.2f} | {neg:.2f} |")
    s = result["summary"]
    ok = lambda b: "meets" if b else "MISSES"  # noqa: E731
    lines += ["", f"- dual-path (true reports) - U-Net: {s['gain_true']:+.4f} (target >= +0.03): {ok(s['targets_met']['true_gain_at_least_0.03'])}",
              f"- dual-path (shuffled reports) - U-Net: {s['gain_shuffled']:+.4f} (target <= 0): {ok(s['targets_met']['shuffled_not_above_unet'])}",
              f"- dual-path (empty reports) - U-Net: {s['gain_empty']:+.4f} (target within +-0.03): {ok(s['targets_met']['empty_within_0.03'])}"]
    return "\n".join(lines)
