"""A Triton python-backend model that runs one ONNX graph with the OpenVINO runtime on the CPU.

It serves ``text_encoder``, ``segmenter`` and ``segmenter_unet`` in the *openvino* flavor: the same
ONNX files as the embedded flavor, compiled by OpenVINO's CPU plugin instead of run by onnxruntime
(issue 25: on Intel CPUs with VNNI / AMX, OpenVINO runs the INT8 graphs of ``bonescan export
quantize`` several times faster than onnxruntime). Everything else (config checks, batching, errors
per request) is :class:`bonescan.serving.onnx_runner.OnnxRunnerModel`'s: this module only opens the
model, behind onnxruntime's session face (``run``, ``get_inputs``, ``get_outputs``).

Config parameters (string values): ``inference_num_threads`` (OpenVINO's INFERENCE_NUM_THREADS),
``performance_hint`` (LATENCY: one stream, one request at a time, what a Triton instance sends it),
``cache_dir`` (OpenVINO's CACHE_DIR, relative to the model's folder unless absolute; default
``ov_cache``): the compiled model is written there at the first load and read back at every later
one, so a restart does not compile again. ``inference_precision`` (INFERENCE_PRECISION_HINT, default
f32): OpenVINO would run fp32 layers in bf16 on CPUs with native bf16, which changes the answers; the
INT8 layers of a quantized graph stay INT8 either way. ``run_batch`` as in the embedded flavor.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bonescan.serving.onnx_runner import ORT_TO_NUMPY, OnnxRunnerModel

#: numpy dtype name -> onnxruntime's type string (what onnx_runner.config_mismatches compares)
NUMPY_TO_ORT = {v: k for k, v in ORT_TO_NUMPY.items()}
DEFAULT_CACHE_DIR = "ov_cache"


def port_name(port) -> str:
    """The port's graph name: OpenVINO keeps every name a tensor had, and where it folds a node away (the Cast
    after the anatomy output's ArgMax: its TopK gives int32 itself) ``get_any_name`` may return the inner one
    (``/fallback/ArgMax_output_0``); the ONNX graph's own names never start with "/", its inner ones do."""
    return sorted(port.get_names(), key=lambda n: (n.startswith("/"), n))[0]


class _Port:
    """An OpenVINO port as onnxruntime's NodeArg: ``name`` and ``type``."""

    def __init__(self, port) -> None:
        self.name = port_name(port)
        self.type = NUMPY_TO_ORT.get(port.get_element_type().to_dtype().name, str(port.get_element_type()))


class OpenVinoSession:
    """An OpenVINO compiled model with onnxruntime's ``InferenceSession`` face, one infer request reused."""

    def __init__(self, path: str | Path, threads: int = 2, hint: str = "LATENCY", cache_dir: str | Path | None = None,
                 precision: str = "f32") -> None:
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": int(threads),
                                  "INFERENCE_PRECISION_HINT": precision}
        if cache_dir:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        started = time.perf_counter()
        # compiled from the file's path (not a read model): with CACHE_DIR, a cached blob is loaded without reading the ONNX
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.compile_seconds = time.perf_counter() - started
        self.request = self.compiled.create_infer_request()
        self.output_ports = {name: port for port in self.compiled.outputs for name in port.get_names()}

    def get_inputs(self) -> list[_Port]:
        return [_Port(p) for p in self.compiled.inputs]

    def get_outputs(self) -> list[_Port]:
        return [_Port(p) for p in self.compiled.outputs]

    def run(self, outputs: list[str], feeds: dict) -> list:
        """Outputs by name, copied: the request's output tensors are overwritten by its next run."""
        import numpy as np

        result = self.request.infer(feeds)
        return [np.array(result[self.output_ports[name]], copy=True) for name in outputs]


def cache_dir_of(params: dict[str, str], model_dir: Path) -> Path:
    """The compiled-model cache: ``cache_dir`` relative to the model's folder (absolute stays as it is)."""
    return model_dir / (params.get("cache_dir") or DEFAULT_CACHE_DIR)


class OpenVinoRunnerModel(OnnxRunnerModel):
    def open(self, path: Path, params: dict[str, str], model_dir: Path) -> tuple[Any, str]:
        import openvino as ov

        threads = int(params.get("inference_num_threads", "2") or 2)
        hint = params.get("performance_hint", "LATENCY") or "LATENCY"
        precision = params.get("inference_precision", "f32") or "f32"
        cache = cache_dir_of(params, model_dir)
        cached = cache.is_dir() and any(cache.iterdir())
        session = OpenVinoSession(path, threads, hint, cache, precision)
        return session, (f"openvino {ov.__version__} CPU, {threads} threads, hint {hint}, precision {precision}, compiled in "
                         f"{session.compile_seconds:.2f} s ({'from the cache' if cached else 'cache was empty'}: {cache})")
