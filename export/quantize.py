"""``bonescan export quantize``: post-training static INT8 of an export's segmenter graph, with a gate.

Issue 25: on a CPU the segmenter is most of a request's time, and INT8 is where the gain lies (VNNI /
AMX run INT8 several times faster than fp32; AVX2 alone less so). onnxruntime's static quantizer
(``quantize_static``, QDQ format: int8 weights per output channel (7-bit where the CPU has no VNNI:
:func:`int8_saturates`), uint8 activations, min / max
calibration) inserts QuantizeLinear / DequantizeLinear pairs around the convolutions and matrix products (QUANTIZED_TYPES), calibrated on TRAINING-split scans (never
the held-out ones the gate scores); OpenVINO runs the QDQ graph with INT8 kernels, onnxruntime runs it
too. (NNCF 3.4.0, the issue's first choice, installs beside numpy 1.26 but its ONNX backend fails at
import there: ``onnx.TensorProto.DataType | np.dtype`` in a class annotation needs numpy 2, which
nvidia-pytriton's numpy<2 pin rules out.)

The text encoder stays fp32 by default: 4-8 ms of a demo request (issue 25's per-step figures), too little
to pay for a second accuracy risk. The paper configuration's MacBERT-sized one takes ~370 ms, a fifth of
an INT8 request: ``--text-encoder`` quantizes its MatMuls too, under the same gate.

The gate: the served answer (postprocess with the fail-safe, as Triton gives it) of every held-out
(test split) scan, fp32 graph against INT8 graph, both run by the same runtime; the mean DSC against
the ground truth may drop by at most ``max_delta_dsc`` (0.005), and the pixel agreement of the two
answers is printed beside it. When the whole graph misses the gate, a second try keeps fp32 the layers
INT8 hurts most in a segmenter: the attention (MatMul / Softmax: the text fusion and the report's
maps) and the convolutions that write the outputs (the logit heads); the result says which layers were
kept. The output folder is an export folder like the input one (model.json with the new graph's
sha256, the tokenizer, the text encoder as it was), so ``bonescan repo build --flavor openvino --from
EXPORT_INT8`` serves it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C
from bonescan.errors import BonescanError

log = logging.getLogger("bonescan.export")

#: op types quantized: the convolutions and the attention's matrix products, nearly all of the segmenter's
#: arithmetic. Quantizing every op onnxruntime can (also the input's normalisation and the skip
#: connections' Add / Concat) dropped the demo model's held-out DSC from 0.697 to 0.399 (40 scans); these
#: alone: 0.7028 -> 0.7046 (24 scans; convolutions alone 0.7031)
QUANTIZED_TYPES = ("Conv", "ConvTranspose", "MatMul")
#: op types kept fp32 on the second try (attention: the text fusion's and the report maps' MatMul / Softmax)
SENSITIVE_TYPES = ("MatMul", "Softmax")


def _segmenter(desc: dict[str, Any]) -> C.GraphSpec:
    return C.SEGMENTER_GRAPH if desc["model"] == "dualpath" else C.SEGMENTER_UNET_GRAPH


def calibration_items(export_dir: Path, data: Path, n: int) -> list[dict[str, np.ndarray]]:
    """The segmenter's feeds for ``n`` training-split scans, one scan each (text features from the
    fp32 text encoder, as the served chain computes them)."""
    from bonescan.data.arrays import load_split
    from bonescan.serving.ort_pipeline import OrtPipeline

    arrays = load_split(data, "train", progress=False, n=n)
    pipe = OrtPipeline(export_dir)
    items = []
    for k in range(len(arrays)):
        image = arrays.images[k : k + 1].astype(np.float32)
        if pipe.tokenizer is None or pipe.text is None:
            items.append({C.IMAGE.name: image})
            continue
        ids, mask = pipe.tokenizer([arrays.reports[k]])
        feats = pipe.text.run([C.TEXT_FEATURES.name], {C.INPUT_IDS.name: ids, C.ATTENTION_MASK.name: mask})[0]
        items.append({C.IMAGE.name: image, C.TEXT_FEATURES.name: feats, C.ATTENTION_MASK.name: mask,
                      C.REPORT_REGIONS.name: pipe.tokenizer.report_regions([arrays.reports[k]])})
    return items


def text_calibration_items(export_dir: Path, data: Path, n: int) -> list[dict[str, np.ndarray]]:
    """The text encoder's feeds for ``n`` training-split reports, one each (the served tokenizer's ids)."""
    from bonescan.data.arrays import load_split
    from bonescan.serving.ort_pipeline import OrtPipeline

    arrays = load_split(data, "train", progress=False, n=n)
    pipe = OrtPipeline(export_dir)
    assert pipe.tokenizer is not None
    items = []
    for k in range(len(arrays)):
        ids, mask = pipe.tokenizer([arrays.reports[k]])
        items.append({C.INPUT_IDS.name: ids, C.ATTENTION_MASK.name: mask})
    return items


def output_heads(model) -> list[str]:
    """Names of the nodes that write the graph's outputs, and of the Conv feeding each (the logit heads)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    names: list[str] = []
    for out in model.graph.output:
        node = producer.get(out.name)
        while node is not None and len(names) < 4 * len(model.graph.output):
            names.append(node.name)
            if node.op_type == "Conv":
                break
            node = producer.get(node.input[0]) if node.input else None
    return sorted(set(names))


class _Feeds:
    """onnxruntime's CalibrationDataReader over a list of feeds (one scan each)."""

    def __init__(self, items: list[dict[str, np.ndarray]]) -> None:
        self.items = iter(items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


#: oneDNN ISA names (``ONEDNN_MAX_CPU_ISA``) whose INT8 products do not saturate: VNNI and everything above it
_VNNI_ISAS = ("VNNI", "BF16", "FP16", "AMX")
#: CPU flags of the same
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_saturates(limit: str | None = None, flags: list[str] | None = None) -> bool:
    """Whether INT8 convolutions on this CPU (or under the oneDNN ISA ``limit``) go through AVX2's / AVX-512's
    u8 x s8 -> s16 pair products (``vpmaddubsw``), which saturate at 32767: 255 x 127 x 2 overflows. With VNNI
    the products accumulate in 32 bits. Weights quantized to 7 bits (onnxruntime's ``reduce_range``, NNCF's
    "overflow fix") keep every pair below the limit (255 x 64 x 2 = 32640)."""
    import os

    from bonescan.benchmarks.latency import cpu_info

    limit = (os.environ.get("ONEDNN_MAX_CPU_ISA") or "") if limit is None else limit
    if limit and limit.upper() != "ALL":
        return not any(k in limit.upper() for k in _VNNI_ISAS)
    flags = cpu_info()["simd"] if flags is None else flags
    return not any(f in flags for f in _VNNI_FLAGS)


def quantize_graph(src: Path, dst: Path, items: list[dict[str, np.ndarray]], keep_fp32: dict[str, list[str]],
                   quantized_types: tuple[str, ...] = QUANTIZED_TYPES, reduce_range: bool = False) -> None:
    """Static INT8 (QDQ) of one ONNX graph's ``quantized_types`` layers; ``keep_fp32``: {"names": [...],
    "types": [...]} left fp32; ``reduce_range``: 7-bit weights (see :func:`int8_saturates`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    types = set(keep_fp32.get("types", []))
    exclude = sorted(set(keep_fp32.get("names", [])) | {n.name for n in model.graph.node if n.op_type in types})
    quantize_static(str(src), str(dst), _Feeds(items), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    op_types_to_quantize=[t for t in quantized_types if t not in types], calibrate_method=CalibrationMethod.MinMax)


def gate(fp32_dir: Path, int8_dir: Path, data: Path, runtime: str = "openvino", n: int | None = None,
         threads: int = 2) -> dict[str, Any]:
    """Served answers of fp32 and INT8 on the held-out scans: mean DSC of each against the ground
    truth, their difference, and how many pixels the two answers share."""
    from bonescan.data.arrays import load_split
    from bonescan.metrics import dsc

    arrays = load_split(data, "test", progress=False, n=n)
    from bonescan.serving.ort_pipeline import runtime_pipeline

    pipes = {"fp32": runtime_pipeline(fp32_dir, runtime, threads), "int8": runtime_pipeline(int8_dir, runtime, threads)}
    scores: dict[str, list[float]] = {k: [] for k in pipes}
    agree = 0
    for k in range(len(arrays)):
        image = arrays.images[k : k + 1].astype(np.float32)
        sp = np.array([arrays.spacings[k]], np.float32)
        reports = [arrays.reports[k]] if pipes["fp32"].text_guided else None
        masks = {name: p.answer(image, sp, reports)[0][0, 0] for name, p in pipes.items()}
        for name, m in masks.items():
            scores[name].append(dsc(m, arrays.masks[k]))
        agree += int((masks["fp32"] == masks["int8"]).sum())
    fp32, int8 = float(np.mean(scores["fp32"])), float(np.mean(scores["int8"]))
    return {"scans": len(arrays), "runtime": runtime, "dsc_fp32": round(fp32, 5), "dsc_int8": round(int8, 5),
            "delta_dsc": round(fp32 - int8, 5), "mask_agreement": round(agree / (len(arrays) * arrays.masks[0].size), 6)}


def _write_export(src: Path, out: Path, graphs: list[C.GraphSpec], info: dict[str, Any]) -> None:
    """model.json of the INT8 folder: the input's, with the new graphs' descriptions and how they were made."""
    from bonescan.export.onnx_export import DESCRIPTION, describe_graph, read_description

    desc = read_description(src)
    for graph in graphs:
        desc["graphs"][graph.export_name] = describe_graph(out / graph.onnx_file)
    desc["quantization"] = info
    (out / DESCRIPTION).write_text(json.dumps(desc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def quantize_export(export: str | Path, data: str | Path, out: str | Path, max_delta_dsc: float = 0.005,
                    calibration_cases: int = 64, test_cases: int | None = None, runtime: str = "openvino",
                    keep_fp32: dict[str, list[str]] | None = None, retry: bool = True, threads: int = 2,
                    weight_bits: int | None = None, text_encoder: bool = False) -> dict[str, Any]:
    """Quantize ``export``'s segmenter into ``out`` (an export folder) and gate it; returns the result,
    whose ``passed`` says whether the gate held (the folder is written either way, for inspection).

    Args:
        export: the fp32 ONNX export folder (dual-path or U-Net).
        data: a data folder: calibration from its train split, the gate on its test split.
        out: the INT8 export folder to write (replaced).
        max_delta_dsc: the gate, mean DSC fp32 - INT8 on the held-out scans.
        calibration_cases, test_cases: scans of each split (None: the whole test split).
        runtime: which runtime scores both graphs (``openvino``, the one that serves INT8; or ``onnxruntime``).
        keep_fp32: layers left fp32 from the start ({"names": [...], "types": [...]}).
        retry: on a failed gate, try again keeping the attention and the output heads fp32.
        weight_bits: 8, or 7 (for CPUs without VNNI, see :func:`int8_saturates`); None: 7 when the gate's
            ISA has no VNNI, else 8.
        text_encoder: quantize the dual-path model's text encoder too (its MatMuls; the gate then scores
            both): it pays where the encoder is big (the paper configuration's MacBERT-sized one is ~20 % of
            a request once the segmenter is INT8), not for the demo's 4 ms one.
    """
    import onnx

    from bonescan.export.onnx_export import read_description

    export, data, out = Path(export), Path(data), Path(out)
    if runtime not in ("openvino", "onnxruntime"):
        raise BonescanError("--runtime must be openvino or onnxruntime")
    if weight_bits not in (None, 7, 8):
        raise BonescanError(f"--weight-bits must be 7 or 8, got {weight_bits}")
    reduce_range = int8_saturates() if weight_bits is None else weight_bits == 7
    desc = read_description(export)
    graph = _segmenter(desc)
    if out.resolve() == export.resolve():
        raise BonescanError("--out must differ from --export")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(export, out)
    t0 = time.perf_counter()
    items = calibration_items(export, data, calibration_cases)
    text_graph = C.TEXT_ENCODER_GRAPH if C.TEXT_ENCODER_GRAPH.export_name in desc["graphs"] else None
    if text_encoder and text_graph is None:
        raise BonescanError("--text-encoder: this export has no text encoder (a U-Net export)")
    text_items = text_calibration_items(export, data, calibration_cases) if text_encoder else []
    scopes = [keep_fp32 or {}]
    if retry:
        heads = output_heads(onnx.load(str(export / graph.onnx_file), load_external_data=False))
        scopes.append({"names": sorted(set(scopes[0].get("names", [])) | set(heads)),
                       "types": sorted(set(scopes[0].get("types", [])) | set(SENSITIVE_TYPES))})
    attempts = []
    for scope in scopes:
        quantize_graph(export / graph.onnx_file, out / graph.onnx_file, items, scope, reduce_range=reduce_range)
        if text_encoder and text_graph is not None:
            if {"MatMul"} <= set(scope.get("types", [])):  # the retry keeps attention fp32: the whole encoder stays fp32
                shutil.copyfile(export / text_graph.onnx_file, out / text_graph.onnx_file)
            else:
                quantize_graph(export / text_graph.onnx_file, out / text_graph.onnx_file, text_items, scope,
                               quantized_types=("MatMul",), reduce_range=reduce_range)
        result = gate(export, out, data, runtime, test_cases, threads)
        result.update(kept_fp32=scope, passed=result["delta_dsc"] <= max_delta_dsc)
        attempts.append(result)
        log.info("quantize %s keeping %s fp32: %s", graph.export_name, scope or "nothing", result)
        if result["passed"]:
            break
    import os

    from bonescan.benchmarks.latency import cpu_info

    limit = os.environ.get("ONEDNN_MAX_CPU_ISA")
    info = {"gate_isa": f"{limit} (ONEDNN_MAX_CPU_ISA)" if limit else "full: " + " ".join(cpu_info()["simd"]),
            "graph": graph.export_name + (" + " + text_graph.export_name if text_encoder and text_graph else ""),
            "graphs": [graph.export_name] + ([text_graph.export_name] if text_encoder and text_graph else []), "method": f"onnxruntime quantize_static, QDQ, {7 if reduce_range else 8}-bit weights per channel, uint8 activations, "
                                                  f"{' / '.join(QUANTIZED_TYPES)} layers",
            "weight_bits": 7 if reduce_range else 8, "calibration": f"train split, {len(items)} scans",
            "max_delta_dsc": max_delta_dsc, "attempts": attempts, "passed": attempts[-1]["passed"],
            "seconds": round(time.perf_counter() - t0, 1)}
    _write_export(export, out, [graph] + ([text_graph] if text_encoder and text_graph else []), info)
    return info


def quantize_export_isa(export: str | Path, data: str | Path, out: str | Path, isa: str | None = None,
                        **kwargs: Any) -> dict[str, Any]:
    """:func:`quantize_export` with its gate scored as on a CPU limited to ``isa`` (``avx2``,
    ``avx512_core``): INT8 answers differ between ISAs (u8 x s8 products saturate without VNNI), so the
    gate must see the CPU the model will be served on. oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once per
    process, so the work runs in a child process with it set (here, when it is set already)."""
    import os
    import subprocess
    import sys

    if not isa or os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == isa.upper():
        return quantize_export(export, data, out, **kwargs)
    code = ("from bonescan.export.quantize import quantize_export; "
            f"quantize_export({str(export)!r}, {str(data)!r}, {str(out)!r}, **{kwargs!r})")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa.upper()}
    proc = subprocess.run([sys.executable, "-c", code], env=env)
    if proc.returncode != 0:
        raise BonescanError(f"quantizing under ONEDNN_MAX_CPU_ISA={isa.upper()} failed (exit {proc.returncode}); see the messages above")
    return json.loads((Path(out) / "model.json").read_text(encoding="utf-8"))["quantization"]


def format_gate(info: dict[str, Any]) -> str:
    lines = [f"INT8 {info['graph']} ({info['method']}, calibration: {info['calibration']}); gate: delta DSC <= {info['max_delta_dsc']}, "
             f"scored on ISA {info.get('gate_isa', 'unknown')}"]
    for a in info["attempts"]:
        kept = ", ".join(f"{k} {v}" for k, v in a["kept_fp32"].items() if v) or "nothing"
        lines.append(f"  kept fp32: {kept}\n    {a['scans']} held-out scans ({a['runtime']}): DSC fp32 {a['dsc_fp32']:.4f}, "
                     f"INT8 {a['dsc_int8']:.4f}, delta {a['delta_dsc']:+.4f}; mask agreement {100 * a['mask_agreement']:.3f} % "
                     f"-> {'PASS' if a['passed'] else 'FAIL'}")
    lines.append("gate " + ("passed" if info["passed"] else "FAILED"))
    return "\n".join(lines)
