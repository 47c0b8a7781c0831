"""``bonescan export check``: do the exported graphs compute what the checkpoint computes?

On held-out cases it runs PyTorch (the checkpoint) and onnxruntime (the export) on the same
inputs and reports the largest difference over every float output of the segmenter graph (for the
dual-path model: logits, the report's maps and the bundled U-Net's logits) and the DSC between the
two answers (for the dual-path model: after the fail-safe's choice, which must pick the same path);
it also runs the graphs at every batch size 1..max and checks each sample's result equals the
batch-1 result. Targets (FP32): max |logit diff| <= 1e-3, mean mask DSC >= 0.999.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C
from bonescan.contract import THRESHOLD
from bonescan.failsafe import FailSafeSettings
from bonescan.metrics import dsc as mask_dsc
from bonescan.postprocess import served_failsafe

MAX_LOGIT_DIFF = 1e-3
MIN_MASK_DSC = 0.999
#: share of the anatomy output's cells with the same region class (an argmax: a near-tie may flip)
MIN_REGION_AGREEMENT = 0.999


def check_parity(checkpoint: str | Path, export_dir: str | Path, data: str | Path, split: str = "test", n: int = 16,
                 max_batch: int = 4, json_out: str | Path | None = None, threads: int = 2, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    from bonescan.data.dataset import BoneScanDataset
    from bonescan.export.onnx_export import read_description, sha256
    from bonescan.model.checkpoint import Predictor
    from bonescan.serving.ort_pipeline import OrtPipeline

    t0 = time.perf_counter()
    desc = read_description(export_dir)
    made_from, given = desc["checkpoint"].get("sha256"), sha256(Path(checkpoint))
    if made_from != given:  # then the numbers below compare two different models
        print(f"export made from another checkpoint (sha {str(made_from)[:16]}, {desc['checkpoint'].get('file')}); "
              f"{checkpoint} has sha {given[:16]}")
    torch_model = Predictor(checkpoint, threads=threads)
    ort_model = OrtPipeline(export_dir, threads=threads)
    ds = BoneScanDataset(data, split, require_mask=False)
    samples = []
    for s in ds.samples():
        samples.append(s)
        if len(samples) >= n:
            break
    thr = float(np.log(THRESHOLD / (1 - THRESHOLD)))
    with_anatomy = desc.get("anatomy", True)
    per_case = []
    settings = FailSafeSettings.from_dict((desc.get("failsafe") or {}).get("settings"))
    for s in tqdm(samples, desc="parity", unit="case", disable=not progress, leave=False):
        img = s.image[None]
        ot = torch_model.outputs(img, [s.report])
        oo = ort_model.outputs(img, [s.report])
        lt, lo = ot[C.LOGITS.name], oo[C.LOGITS.name]
        row = {
            "case_id": s.case_id,
            # every float output of the segmenter graph (the dual-path one also has the report's maps and the U-Net's logits)
            "max_abs_logit_diff": max(float(np.abs(ot[k] - oo[k]).max()) for k in ot if ot[k].dtype.kind == "f"),
            "mask_dsc": mask_dsc(lt[0, 0] >= thr, lo[0, 0] >= thr),
            "pixels_differing": int(((lt >= thr) != (lo >= thr)).sum()),
            # the anatomy output: an argmax inside the graph, so agreement, not a difference
            # (an export made with --no-anatomy must give background everywhere)
            "region_agreement": float(np.mean((ot[C.REGION_LABELS.name] if with_anatomy else 0) == oo[C.REGION_LABELS.name])),
        }
        if C.TEXT_STATS.name in ot:
            # the answer the ensemble gives: the fail-safe's choice on each side must agree
            sp = np.array([s.pixel_spacing], np.float32)
            mt = served_failsafe(ot, sp, settings)
            mo = served_failsafe(oo, sp, settings)
            row["text_stats_equal"] = bool(np.array_equal(ot[C.TEXT_STATS.name], oo[C.TEXT_STATS.name]))
            row["answer_dsc"] = mask_dsc(mt[0][0, 0], mo[0][0, 0])
            row["same_path"] = mt[3][0]["answered_by"] == mo[3][0]["answered_by"]
        per_case.append(row)
    # dynamic batch: every batch size gives each sample its batch-1 answer
    imgs = np.stack([s.image for s in samples[:max_batch]])
    reps = [s.report for s in samples[:max_batch]]
    single = np.concatenate([ort_model.logits(imgs[i : i + 1], reps[i : i + 1]) for i in range(len(imgs))])
    batch_diffs = {}
    for b in range(1, len(imgs) + 1):
        out = ort_model.logits(imgs[:b], reps[:b])
        batch_diffs[str(b)] = float(np.abs(out - single[:b]).max())
    max_diff = max(c["max_abs_logit_diff"] for c in per_case)
    mean_dsc = float(np.mean([c.get("answer_dsc", c["mask_dsc"]) for c in per_case]))
    region_agreement = float(min(c["region_agreement"] for c in per_case))
    same_path = all(c.get("same_path", True) and c.get("text_stats_equal", True) for c in per_case)
    res = {
        "export": str(export_dir),
        "checkpoint": str(checkpoint),
        "model": desc["model"],
        "config_name": desc["checkpoint"].get("config_name"),
        "split": split,
        "cases": len(per_case),
        "precision": "fp32",
        "max_abs_logit_diff": max_diff,
        "mean_mask_dsc": mean_dsc,
        "min_mask_dsc": float(min(c["mask_dsc"] for c in per_case)),
        "min_region_agreement": region_agreement,
        "batch_consistency_max_diff": batch_diffs,
        "targets": {"max_abs_logit_diff": MAX_LOGIT_DIFF, "mean_mask_dsc": MIN_MASK_DSC, "min_region_agreement": MIN_REGION_AGREEMENT},
        "failsafe_same_path_everywhere": same_path,
        "same_checkpoint": made_from == given,
        "ok": bool(made_from == given and max_diff <= MAX_LOGIT_DIFF and mean_dsc >= MIN_MASK_DSC and same_path
                   and region_agreement >= MIN_REGION_AGREEMENT
                   and max(batch_diffs.values()) <= MAX_LOGIT_DIFF),
        "per_case": per_case,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"parity {desc['model']} ({res['config_name']}): onnxruntime vs PyTorch on {len(per_case)} {split} cases: "
          f"max |logit diff| {max_diff:.2e} (target <= {MAX_LOGIT_DIFF:g}), mean mask DSC {mean_dsc:.6f} "
          f"(target >= {MIN_MASK_DSC}), region labels agree on >= {region_agreement:.4%} of cells (target >= "
          f"{MIN_REGION_AGREEMENT:.1%}); batch 1..{len(imgs)} max diff {max(batch_diffs.values()):.2e} -> "
          f"{'OK' if res['ok'] else 'FAILED'}")
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(res, indent=1) + "\n")
    return res
