"""``bonescan bench parity``: does deployment change the answer? PyTorch vs onnxruntime vs Triton (vs TensorRT).

On held-out cases: each engine's DSC against the ground truth, its difference from PyTorch's, the
largest logit (or probability) difference from PyTorch, and how well its masks agree with PyTorch's.
Target: |delta DSC| <= 0.001 between Triton and PyTorch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C

DSC_DELTA_TARGET = 0.001


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def bench_parity(checkpoint: Path, export: Path, data: Path, server_url: str, model: str | None = None, n: int = 40,
                 split: str = "test", out: Path | None = None, threads: int = 2, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    from bonescan.client import BoneScanClient
    from bonescan.client.inputs import Request
    from bonescan.data.dataset import BoneScanDataset
    from bonescan.failsafe import FailSafeSettings
    from bonescan.metrics import scan_metrics
    from bonescan.model.checkpoint import Predictor
    from bonescan.postprocess import postprocess, served_failsafe, sigmoid
    from bonescan.serving.ort_pipeline import OrtPipeline

    t0 = time.perf_counter()
    pred = Predictor(checkpoint, threads=threads)
    ort = OrtPipeline(export, threads=threads)
    model = model or (C.ENSEMBLE_MODEL if pred.text_guided else C.ENSEMBLE_UNET_MODEL)
    samples = []
    for s in BoneScanDataset(data, split).samples():
        samples.append(s)
        if len(samples) >= n:
            break
    engines: dict[str, dict[str, list]] = {e: {"dsc": [], "agree": [], "diff": []} for e in ("pytorch", "onnxruntime", "triton")}
    # a dual-path model's Triton answer is the fail-safe's (postprocess): compared with PyTorch's served answer
    # (failsafe.served_failsafe on the checkpoint's outputs, with the scan for the naming), path and lesion names too
    settings = FailSafeSettings.from_dict((pred.ckpt.metadata.get("failsafe") or {}).get("settings")) if pred.text_guided else None
    if settings is not None:
        engines = {"pytorch_served": {"dsc": [], "agree": [], "diff": []}, **engines}
    served = {"same_path": 0, "same_lesion_names": 0, "same_bsi": 0, "bsi_left_out": 0, "text_only_dropped": 0, "answered_by_unet": 0}
    trt = None
    try:
        from bonescan.export.trt import require_gpu

        require_gpu()
        from bonescan.export.verify_gpu import TrtPipeline

        eng_dir = Path(export).parent / "trt_fp16"
        if (eng_dir / "segmenter.plan").exists():
            trt = TrtPipeline(eng_dir, Path(export))
            engines["tensorrt_fp16"] = {"dsc": [], "agree": [], "diff": []}
    except Exception:  # noqa: BLE001 - no GPU here: TensorRT is left out of the table
        trt = None
    with BoneScanClient(server_url, model=model, timeout_s=600) as client:
        for s in tqdm(samples, desc="parity", unit="case", disable=not progress, leave=False):
            sp = np.array([s.pixel_spacing], np.float32)
            lt = pred.logits(s.image[None], [s.report])
            m_t = postprocess(lt, sp)[0][0, 0]
            outs = {"pytorch": (m_t, 0.0)}
            lo = ort.logits(s.image[None], [s.report])
            outs["onnxruntime"] = (postprocess(lo, sp)[0][0, 0], float(np.abs(lo - lt).max()))
            r = client.segment_prepared([Request(s.image, s.report, tuple(s.pixel_spacing), s.case_id)])[0]
            ref_mask, ref_prob = m_t, sigmoid(lt)[0, 0]
            if settings is not None:
                o = pred.outputs(s.image[None], [s.report])
                sm, sprob, sj, sd = served_failsafe(o, sp, settings, images=np.asarray(s.image[None], np.float32))
                ref_mask, ref_prob = sm[0, 0], sprob[0, 0]
                outs["pytorch_served"] = (ref_mask, 0.0)
                for k, same in served_agreement(json.loads(sj[0]), sd[0], r).items():
                    served[k] += same
                served["bsi_left_out"] += int((r.anatomy or {}).get("bsi_left_out", 0))
                served["text_only_dropped"] += sd[0]["signals"].get("text_only_dropped", 0) > 0
                served["answered_by_unet"] += sd[0]["answered_by"] == "unet"
            outs["triton"] = (r.mask, float(np.abs(r.probability - ref_prob).max()))
            if trt is not None:
                lr = trt.logits(s.image[None], [s.report])
                outs["tensorrt_fp16"] = (postprocess(lr, sp)[0][0, 0], float(np.abs(lr - lt).max()))
            for e, (m, diff) in outs.items():
                engines[e]["dsc"].append(scan_metrics(m, s.mask)["dsc"])
                engines[e]["agree"].append(scan_metrics(m, ref_mask if e in ("triton", "pytorch_served") else m_t)["dsc"])
                engines[e]["diff"].append(diff)
    if trt is not None:
        trt.close()
    base = float(np.mean(engines["pytorch"]["dsc"]))
    base_served = float(np.mean(engines["pytorch_served"]["dsc"])) if settings is not None else base
    table: dict[str, dict[str, Any]] = {}
    for e, v in engines.items():
        table[e] = {
            "dsc": float(np.mean(v["dsc"])),
            # Triton's answer against PyTorch's answer of the same kind (the served one for a dual-path model)
            "delta_dsc_vs_pytorch": float(np.mean(v["dsc"])) - (base_served if e in ("triton", "pytorch_served") else base),
            "max_diff_vs_pytorch": float(np.max(v["diff"])),
            "diff_kind": "probability" if e in ("triton", "pytorch_served") else "logit",
            "mask_agreement_dsc": float(np.mean(v["agree"])),
            "identical_masks": int(sum(a == 1.0 for a in v["agree"])),
        }
    res = {"model": model, "cases": len(samples), "split": split, "engines": table, "target_abs_delta_dsc": DSC_DELTA_TARGET,
           **({"served": served} if settings is not None else {}),
           "ok": abs(table["triton"]["delta_dsc_vs_pytorch"]) <= DSC_DELTA_TARGET
           and (settings is None or served["same_path"] == len(samples)), "seconds": round(time.perf_counter() - t0, 1)}
    print(parity_table(res))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"parity_{model}.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def parity_table(res: dict[str, Any]) -> str:
    lines = [f"\n## Parity: {res['model']} on {res['cases']} held-out scans", "",
             "| engine | DSC | delta DSC vs PyTorch | max diff vs PyTorch | mask agreement (DSC) | identical masks |",
             "|---|---|---|---|---|---|"]
    for e, r in res["engines"].items():
        lines.append(f"| {e} | {r['dsc']:.4f} | {r['delta_dsc_vs_pytorch']:+.5f} | {r['max_diff_vs_pytorch']:.2e} ({r['diff_kind']}) | "
                     f"{r['mask_agreement_dsc']:.5f} | {r['identical_masks']}/{res['cases']} |")
    if "served" in res:
        sv = res["served"]
        lines.append(f"\nTriton's answers against PyTorch's served ones (the fail-safe, `pytorch_served`): same path {sv['same_path']}/"
                     f"{res['cases']}, same lesion names {sv['same_lesion_names']}/{res['cases']}, same BSI {sv['same_bsi']}/{res['cases']} "
                     f"({sv['bsi_left_out']} lesions the reports call benign left out of it); the U-Net answered "
                     f"{sv['answered_by_unet']}, rule 7 left out a lesion on {sv['text_only_dropped']}")
    lines.append(f"\nTriton vs PyTorch |delta DSC| {abs(res['engines']['triton']['delta_dsc_vs_pytorch']):.5f} "
                 f"(target <= {res['target_abs_delta_dsc']}): {'meets' if res['ok'] else 'MISSES'}")
    return "\n".join(lines)


def served_agreement(answer: dict[str, Any], decision: dict[str, Any], result: Any) -> dict[str, bool]:
    """Triton's answer (a client result: ``answered_by``, ``lesions``, ``anatomy``) beside PyTorch's served one (its
    LESIONS JSON and the fail-safe's decision): the same path, the same lesion names in the same order, the same
    BSI (to 1e-3, with the same count of lesions left out: report_benign reaches postprocess)."""
    bsi, got = answer.get("anatomy", {}), result.anatomy or {}
    return {"same_path": decision["answered_by"] == result.answered_by,
            "same_lesion_names": [(les.get("site") or {}).get("region") for les in answer["lesions"]]
            == [(les.get("site") or {}).get("region") for les in result.lesions],
            "same_bsi": abs(bsi.get("bsi", -1.0) - got.get("bsi", -2.0)) <= 1e-3
            and bsi.get("bsi_left_out") == got.get("bsi_left_out")}
