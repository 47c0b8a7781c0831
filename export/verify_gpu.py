"""``bonescan export verify-gpu --checkpoint CKPT``: everything about the TensorRT path, in one command.

For a user with an NVIDIA GPU and TensorRT (e.g. inside ``nvcr.io/nvidia/tritonserver:24.10-py3``
with this package installed). It stops with a clear message on a machine without them.

1. exports the checkpoint to ONNX (``work/onnx``) and lints it for TensorRT;
2. for every precision (fp32, fp16, int8): builds the engines (``work/trt_<precision>``);
3. compares each engine with onnxruntime through ``polygraphy run --trt --onnxrt`` on real
   (synthetic) inputs, with per-precision tolerances and the median error as the statistic;
4. runs the whole model with the engines on held-out cases and compares its masks with PyTorch's:
   DSC against the ground truth for both, their difference (target |delta DSC| <= 0.005 for FP16),
   and the DSC between the two masks.

It prints one table and writes ``work/verify_gpu.json``. How to read it: see the README section
"Verifying the TensorRT path on a GPU".
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C
from bonescan.contract import THRESHOLD

#: polygraphy --atol/--rtol with --check-error-stat median, per precision
TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (2e-2, 2e-2), "int8": (2e-1, 1e-1)}
DSC_DELTA_TARGET = {"fp32": 0.001, "fp16": 0.005, "int8": 0.02}

LOADER_SCRIPT = """
# written by `bonescan export verify-gpu`: polygraphy --data-loader-script for graph {graph!r}
from pathlib import Path
from bonescan.export.trt import calibration_feeds

def load_data():
    yield from calibration_feeds({graph!r}, Path({onnx_dir!r}), n={n}, batch={batch}, seed=4321)
"""


def _polygraphy_cmd(onnx: Path, precision: str, shapes, loader: Path) -> list[str]:
    atol, rtol = TOLERANCES[precision]
    cmd = [sys.executable, "-m", "polygraphy", "run", str(onnx), "--trt", "--onnxrt",
           "--data-loader-script", str(loader), "--atol", str(atol), "--rtol", str(rtol), "--check-error-stat", "median"]
    if precision in ("fp16", "int8"):
        cmd.append("--fp16")
    if precision == "int8":
        cmd.append("--int8")
    for flag, attr in (("--trt-min-shapes", "min"), ("--trt-opt-shapes", "opt"), ("--trt-max-shapes", "max")):
        cmd.append(flag)
        cmd.extend(f"{name}:[{','.join(str(d) for d in getattr(s, attr))}]" for name, s in shapes.items())
    return cmd


class TrtPipeline:
    """text_encoder + segmenter engines run with polygraphy's TrtRunner."""

    def __init__(self, engine_dir: Path, onnx_dir: Path):
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        from bonescan.tokenize import ReportTokenizer

        te, seg = C.TEXT_ENCODER_GRAPH, C.SEGMENTER_GRAPH
        self.seg = TrtRunner(EngineFromBytes(BytesFromPath(str(engine_dir / f"{seg.export_name}.plan"))))
        self.text = TrtRunner(EngineFromBytes(BytesFromPath(str(engine_dir / f"{te.export_name}.plan"))))
        self.tok = ReportTokenizer(onnx_dir / "tokenizer" / "tokenizer.json")
        self.seg.activate()
        self.text.activate()

    def logits(self, images: np.ndarray, reports: list[str]) -> np.ndarray:
        ids, mask = self.tok(reports)
        feats = self.text.infer({C.INPUT_IDS.name: ids, C.ATTENTION_MASK.name: mask})[C.TEXT_FEATURES.name]
        out = self.seg.infer({C.IMAGE.name: images.astype(np.float32), C.TEXT_FEATURES.name: np.asarray(feats),
                              C.ATTENTION_MASK.name: mask, C.REPORT_REGIONS.name: self.tok.report_regions(reports)})
        return np.asarray(out[C.LOGITS.name])

    def close(self) -> None:
        self.seg.deactivate()
        self.text.deactivate()


def _cases(data: Path | None, n: int):
    from bonescan.contract import to_model_frame

    if data is not None:
        from bonescan.data.dataset import BoneScanDataset

        out = []
        for s in BoneScanDataset(data, "test").samples():
            out.append((s.image, s.report, s.mask, s.pixel_spacing))
            if len(out) >= n:
                break
        return out
    from bonescan.data.synth import synth_case

    cases = [synth_case(98765, i) for i in range(n)]
    return [(to_model_frame(c.anterior, c.posterior), c.report, c.mask, tuple(c.meta["pixel_spacing_mm"])) for c in cases]


def verify_gpu(checkpoint: str | Path, work: str | Path, precisions: list[str], max_batch: int = C.MAX_BATCH_SIZE,
               data: str | Path | None = None, n: int = 64) -> dict[str, Any]:
    from bonescan.export.onnx_export import export_onnx
    from bonescan.export.trt import export_trt, profile_shapes, require_gpu
    from bonescan.export.trt_compat import check_export
    from bonescan.metrics import scan_metrics
    from bonescan.model.checkpoint import Predictor
    from bonescan.postprocess import postprocess

    trt_version = require_gpu()  # before any work
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    onnx_dir = work / "onnx"
    desc = export_onnx(checkpoint, onnx_dir)
    lint = check_export(onnx_dir)
    cases = _cases(Path(data) if data else None, n)
    torch_model = Predictor(checkpoint)
    torch_masks = []
    for img, rep, _gt, sp in cases:
        m, _, _ = postprocess(torch_model.logits(img[None], [rep]), np.array([sp], np.float32), THRESHOLD)
        torch_masks.append(m[0, 0])
    torch_dsc = float(np.mean([scan_metrics(m, c[2])["dsc"] for m, c in zip(torch_masks, cases)]))
    result: dict[str, Any] = {"tensorrt_version": trt_version, "model": desc["model"], "cases": len(cases),
                              "trt_lint_ok": lint["ok"], "pytorch_dsc": torch_dsc, "precisions": {}}
    for prec in precisions:
        eng_dir = work / f"trt_{prec}"
        built = export_trt(onnx_dir, eng_dir, prec, max_batch)
        checks = {}
        for spec in C.MODEL_GRAPHS[desc["model"]]:
            graph = spec.export_name
            loader = eng_dir / f"loader_{graph}.py"
            loader.write_text(textwrap.dedent(LOADER_SCRIPT.format(graph=graph, onnx_dir=str(onnx_dir), n=8, batch=2)))
            shapes = profile_shapes(spec, max_batch, desc.get("text_hidden"))
            cmd = _polygraphy_cmd(onnx_dir / spec.onnx_file, prec, shapes, loader)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            (eng_dir / f"polygraphy_{graph}.log").write_text(proc.stdout + proc.stderr)
            checks[graph] = {"passed": proc.returncode == 0, "command": " ".join(cmd), "log": str(eng_dir / f"polygraphy_{graph}.log")}
        pipe = TrtPipeline(eng_dir, onnx_dir)
        trt_dsc, agree = [], []
        for (img, rep, gt, sp), tm in zip(cases, torch_masks):
            m, _, _ = postprocess(pipe.logits(img[None], [rep]), np.array([sp], np.float32), THRESHOLD)
            trt_dsc.append(scan_metrics(m[0, 0], gt)["dsc"])
            agree.append(scan_metrics(m[0, 0], tm)["dsc"])
        pipe.close()
        delta = float(np.mean(trt_dsc)) - torch_dsc
        result["precisions"][prec] = {
            "engines": built["engines"],
            "polygraphy_vs_onnxruntime": checks,
            "tolerance_atol_rtol_median": TOLERANCES[prec],
            "trt_dsc": float(np.mean(trt_dsc)),
            "delta_dsc_vs_pytorch": delta,
            "delta_dsc_target": DSC_DELTA_TARGET[prec],
            "mask_agreement_dsc_mean": float(np.mean(agree)),
            "ok": all(c["passed"] for c in checks.values()) and abs(delta) <= DSC_DELTA_TARGET[prec],
        }
    result["ok"] = lint["ok"] and all(p["ok"] for p in result["precisions"].values())
    result["seconds"] = round(time.perf_counter() - t0, 1)
    (work / "verify_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nTensorRT {trt_version}, {len(cases)} held-out cases, PyTorch DSC {torch_dsc:.4f}; TensorRT lint: {'OK' if lint['ok'] else 'FAILED'}")
    print(f"{'precision':10s} {'polygraphy vs ORT':>18s} {'TRT DSC':>8s} {'delta':>8s} {'target':>7s} {'mask agree':>10s}  verdict")
    for prec, r in result["precisions"].items():
        pg = "pass" if all(c["passed"] for c in r["polygraphy_vs_onnxruntime"].values()) else "FAIL"
        print(f"{prec:10s} {pg:>18s} {r['trt_dsc']:8.4f} {r['delta_dsc_vs_pytorch']:+8.4f} {r['delta_dsc_target']:7.3f} "
              f"{r['mask_agreement_dsc_mean']:10.4f}  {'OK' if r['ok'] else 'FAILED'}")
    print(f"wrote {work / 'verify_gpu.json'}")
    return result
