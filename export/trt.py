"""TensorRT engines for the two graphs (GPU machines only).

``bonescan export trt --onnx DIR --precision {fp32,fp16,int8} --max-batch N --out DIR`` builds
``text_encoder.plan`` and ``segmenter.plan`` with Polygraphy's loaders:

* one optimisation profile per graph, from the contract's graph declarations: every dynamic axis
  gets its range (:func:`bonescan.contract.axis_range`: batch 1 .. N, N = the Triton
  ``max_batch_size``, default ``contract.MAX_BATCH_SIZE``; tokens 8 .. 256, the tokenizer's fixed
  length is the optimum);
* a timing cache reused across builds;
* FP16 with the numerically sensitive layers kept in FP32 (normalisation, softmax, reductions,
  pow, and the unary ops of the count normalisation: log / exp), precision constraints obeyed;
* INT8 calibrated on synthetic cases (entropy calibration, cache saved next to the engine);
* ``<engine>.json`` beside every engine: TensorRT version, precision, profile, ONNX hash, GPU.
  ``bonescan repo build --flavor tensorrt`` refuses engines whose TensorRT version differs
  from the target Triton container's (an engine is only valid for the TensorRT that built it).

Nothing here runs without an NVIDIA GPU and TensorRT: :func:`require_gpu` stops first with a
message. The TensorRT API calls are type-checked in CI with mypy against ``tensorrt-stubs``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bonescan import contract as C
from bonescan.errors import BonescanError

if TYPE_CHECKING:  # the stubs (tensorrt-stubs) type-check this module; TensorRT itself is imported lazily
    import tensorrt as trt

#: Triton container release -> the TensorRT version inside it (NGC support matrix).
TRITON_TENSORRT = {"24.10": "10.5.0", "24.11": "10.6.0", "24.12": "10.7.0", "25.01": "10.8.0"}
#: The container that matches the Triton server this project serves on the CPU (2.51.0).
TRITON_RELEASE = "24.10"
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Shapes:
    """min / opt / max shape of one input in an optimisation profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


def profile_shapes(graph: str | C.GraphSpec, max_batch: int, text_hidden: int | None,
                   tokens: int = C.TOKENIZER.max_tokens) -> dict[str, Shapes]:
    """The optimisation profile of a graph (a contract graph or its name), input by input.

    Dynamic axes span :func:`bonescan.contract.axis_range` (max batch = the Triton max_batch_size),
    static dims stay, and a -1 dim that is not a dynamic axis (the text width) is ``text_hidden``.
    """
    if max_batch < 1:
        raise BonescanError("--max-batch must be at least 1")
    spec = graph if isinstance(graph, C.GraphSpec) else C.GRAPHS.get(graph)
    if spec is None:
        raise BonescanError(f"unknown graph {graph!r}")
    shapes: dict[str, Shapes] = {}
    for t in spec.inputs:
        axes = spec.dynamic_axes[t.name]
        ranges: list[tuple[int, int, int]] = []
        for k, d in enumerate((C.DYN, *t.dims)):
            if k in axes:
                ranges.append(C.axis_range(axes[k], max_batch, tokens))
            elif d != C.DYN:
                ranges.append((d, d, d))
            elif text_hidden:
                ranges.append((text_hidden, text_hidden, text_hidden))
            else:
                raise BonescanError(f"{spec.name}: input {t.name} needs the text width (text_hidden in model.json)")
        shapes[t.name] = Shapes(tuple(r[0] for r in ranges), tuple(r[1] for r in ranges), tuple(r[2] for r in ranges))
    return shapes


def require_gpu() -> str:
    """Return the TensorRT version if TensorRT and an NVIDIA GPU are usable; otherwise stop with why."""
    try:
        import tensorrt as trt_mod
    except Exception as e:  # ImportError, or OSError when libnvinfer is missing
        raise BonescanError(
            "TensorRT is not usable here "
            f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'no details'}). "
            "Engines are built on a machine with an NVIDIA GPU, inside the Triton container they will run in "
            f"(nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3 has TensorRT {TRITON_TENSORRT[TRITON_RELEASE]}); "
            "see README, 'Serving on a GPU'."
        ) from None
    smi = shutil.which("nvidia-smi")
    gpus = ""
    if smi:
        try:
            gpus = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001
            gpus = ""
    if not gpus:
        raise BonescanError("no NVIDIA GPU found (nvidia-smi -L lists none); TensorRT engines need one to build and run")
    return str(trt_mod.__version__)


def gpu_name() -> str:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "unknown"
    out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


def keep_sensitive_layers_fp32(network: trt.INetworkDefinition) -> int:
    """Pin the layers that overflow or lose accuracy in FP16 to FP32; returns how many were pinned.

    LayerNorm / softmax / reductions (the count normalisation sums 262,144 counts up to 65,535:
    far beyond FP16's 65,504), pow, and log / exp unary ops.
    """
    import tensorrt as trt

    always = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    pinned = 0
    for i in range(network.num_layers):
        layer: trt.ILayer = network.get_layer(i)
        sensitive = layer.type in always
        if layer.type == trt.LayerType.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer
            ew: Any = layer
            sensitive = ew.op == trt.ElementWiseOperation.POW
        elif layer.type == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer
            un: Any = layer
            sensitive = un.op in (trt.UnaryOperation.LOG, trt.UnaryOperation.EXP)
        if sensitive:
            layer.precision = trt.DataType.FLOAT
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.DataType.FLOAT)
            pinned += 1
    return pinned


def engine_info_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def check_engine_version(plan: Path, expected: str | None = None) -> dict[str, Any]:
    """Refuse an engine built by another TensorRT than the target container's (runs on any machine)."""
    expected = expected or TRITON_TENSORRT[TRITON_RELEASE]
    info_path = engine_info_path(plan)
    if not info_path.is_file():
        raise BonescanError(f"{plan}: no {info_path.name} beside it; the TensorRT version that built it is unknown, rebuild it")
    info = json.loads(info_path.read_text())
    built = str(info.get("tensorrt_version", ""))
    if built.split(".")[:2] != expected.split(".")[:2]:
        raise BonescanError(
            f"{plan}: built with TensorRT {built}, but the target Triton {TRITON_RELEASE} container runs TensorRT {expected}. "
            "TensorRT engines only load in the TensorRT version that built them; rebuild inside that container."
        )
    return info


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    shapes: dict[str, Shapes],
    precision: str,
    timing_cache: Path,
    calibration: Iterator[dict[str, Any]] | None = None,
    calibration_cache: Path | None = None,
    workspace_gib: float = 4.0,
) -> dict[str, Any]:
    """Build one engine with Polygraphy's loaders; writes plan_path and its .json."""
    import tensorrt as trt
    from polygraphy.backend.trt import (
        Calibrator,
        CreateConfig,
        PostprocessNetwork,
        Profile,
        engine_from_network,
        network_from_onnx_path,
        save_engine,
    )

    if precision not in PRECISIONS:
        raise BonescanError(f"precision must be one of {PRECISIONS}")
    t0 = time.perf_counter()
    profile = Profile()
    for name, s in shapes.items():
        profile.add(name, min=s.min, opt=s.opt, max=s.max)
    network = network_from_onnx_path(str(onnx_path))
    pinned: list[int] = [0]
    if precision in ("fp16", "int8"):

        def pin(net: trt.INetworkDefinition) -> None:
            pinned[0] = keep_sensitive_layers_fp32(net)

        network = PostprocessNetwork(network, func=pin, name="keep-sensitive-layers-fp32")
    calibrator = None
    if precision == "int8":
        if calibration is None:
            raise BonescanError("INT8 needs calibration data")
        calibrator = Calibrator(calibration, cache=str(calibration_cache) if calibration_cache else None)
    config = CreateConfig(
        fp16=precision in ("fp16", "int8"),
        int8=precision == "int8",
        tf32=False,
        profiles=[profile],
        calibrator=calibrator,
        precision_constraints="obey" if precision != "fp32" else None,
        load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * (1 << 30))},
    )
    engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    save_engine(engine, path=str(plan_path))
    from bonescan.export.onnx_export import sha256

    info = {
        "tensorrt_version": trt.__version__,
        "precision": precision,
        "profile": {k: {"min": list(v.min), "opt": list(v.opt), "max": list(v.max)} for k, v in shapes.items()},
        "layers_pinned_fp32": pinned[0],
        "onnx": onnx_path.name,
        "onnx_sha256": sha256(onnx_path),
        "gpu": gpu_name(),
        "build_seconds": round(time.perf_counter() - t0, 1),
        "target_triton": TRITON_RELEASE,
    }
    engine_info_path(plan_path).write_text(json.dumps(info, indent=1) + "\n")
    return info


def calibration_feeds(graph: str, export_dir: Path, n: int = 64, batch: int = 4, seed: int = 1234) -> Iterator[dict[str, Any]]:
    """Synthetic cases as calibration batches for ``graph`` (its export name; the segmenter's text
    features come from the exported text encoder run in onnxruntime)."""
    import numpy as np

    from bonescan.contract import to_model_frame
    from bonescan.data.synth import synth_case
    from bonescan.serving.ort_pipeline import OrtPipeline

    pipe = OrtPipeline(export_dir)
    for start in range(0, n, batch):
        cases = [synth_case(seed, start + k) for k in range(batch)]
        reports = [c.report for c in cases]
        images = np.stack([to_model_frame(c.anterior, c.posterior) for c in cases])
        if pipe.tokenizer is not None and pipe.text is not None:
            ids, mask = pipe.tokenizer(reports)
            text = {C.INPUT_IDS.name: ids, C.ATTENTION_MASK.name: mask}
            if graph == C.TEXT_ENCODER_GRAPH.export_name:
                yield text
                continue
            feats = pipe.text.run([C.TEXT_FEATURES.name], text)[0]
            yield {C.IMAGE.name: images, C.TEXT_FEATURES.name: feats, C.ATTENTION_MASK.name: mask,
                   C.REPORT_REGIONS.name: pipe.tokenizer.report_regions(reports)}
        else:
            yield {C.IMAGE.name: images}


def export_trt(onnx_dir: str | Path, out: str | Path, precision: str = "fp16", max_batch: int = C.MAX_BATCH_SIZE,
               timing_cache: str | Path | None = None, calibration_cases: int = 64) -> dict[str, Any]:
    """Build the engines of an ONNX export folder. Stops before any work without a GPU.

    ``max_batch`` must reach the ``repo build --max-batch-size`` the engines will serve under; both
    default to ``contract.MAX_BATCH_SIZE``.
    """
    if precision not in PRECISIONS:
        raise BonescanError(f"--precision must be one of {PRECISIONS}")
    version = require_gpu()
    from bonescan.export.onnx_export import read_description

    onnx_dir, out = Path(onnx_dir), Path(out)
    desc = read_description(onnx_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(timing_cache) if timing_cache else out / "timing.cache"
    built: dict[str, Any] = {"tensorrt_version": version, "precision": precision, "max_batch": max_batch, "engines": {}}
    for spec in C.MODEL_GRAPHS[desc["model"]]:
        graph = spec.export_name
        shapes = profile_shapes(spec, max_batch, desc.get("text_hidden"))
        calib = calibration_feeds(graph, onnx_dir, calibration_cases, max(1, max_batch // 2)) if precision == "int8" else None
        plan = out / f"{graph}.plan"
        print(f"building {plan} ({precision}, batch 1..{max_batch}) ...", flush=True)
        built["engines"][graph] = build_engine(onnx_dir / spec.onnx_file, plan, shapes, precision, cache, calib,
                                               out / f"{graph}.calib" if precision == "int8" else None)
    shutil.copy(onnx_dir / "model.json", out / "model.json")
    if (onnx_dir / "tokenizer").is_dir():
        shutil.copytree(onnx_dir / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    (out / "engines.json").write_text(json.dumps(built, indent=1) + "\n")
    return built
