"""A Triton python-backend model that runs one ONNX graph with onnxruntime on the CPU.

It serves ``text_encoder``, ``segmenter`` and ``segmenter_unet`` in the *embedded* flavor (the
pip-installed Triton has the python backend only). Input / output names and dtypes come from the
model's config.pbtxt, and must be the graph's (checked when the model loads: a repository built
from another export fails to load instead of failing requests); ``parameters { key:
"intra_op_threads" }`` sets onnxruntime's threads and ``run_batch`` how many rows one
``session.run`` takes (0: the whole batch). The session is opened
once in initialize(); execute() gathers all queued requests into one batch and runs it in chunks of
``run_batch`` rows. On a CPU a bigger run does not pay: the paper-size segmenter took longer per
scan in a batch of 2 or 4 than alone (its activations leave the caches), and memory grows with the
batch; so the embedded flavor runs one scan at a time by default. ``bonescan bench latency``
measures it (the README lists the figures).

:func:`cpu_session` is the one onnxruntime session setup of the project: the served models and the
in-process pipeline (:mod:`bonescan.serving.ort_pipeline`) both open their sessions with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def cpu_session(path: str | Path, threads: int = 2, spinning: bool = False):
    """An onnxruntime CPU session with the project's settings, the same served and in-process.

    Idle intra-op threads do not spin: the pipeline's steps (text encoder, segmenter, the python
    steps) share the cores, and a pool spinning after one step steals a core from the next one.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_in_chunks(session, outputs: list[str], feeds: dict, rows: int) -> list:
    """``session.run`` over the batch in chunks of at most ``rows`` rows (0: all at once)."""
    import numpy as np

    n = next(iter(feeds.values())).shape[0]
    if rows <= 0 or n <= rows:
        return session.run(outputs, feeds)
    parts = [session.run(outputs, {k: v[i : i + rows] for k, v in feeds.items()}) for i in range(0, n, rows)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(outputs))]


#: onnxruntime's tensor types -> numpy dtype names (the ones a config can declare)
ORT_TO_NUMPY = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32",
                "tensor(int64)": "int64", "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(string)": "object"}


def config_mismatches(session, inputs: list, outputs: list) -> list[str]:
    """Where the graph's inputs / outputs differ from the config's (names in order, dtypes)."""
    problems = []
    for kind, graph, config in (("input", session.get_inputs(), inputs), ("output", session.get_outputs(), outputs)):
        if [g.name for g in graph] != [c.name for c in config]:
            problems.append(f"graph {kind}s {[g.name for g in graph]}, config {kind}s {[c.name for c in config]}")
            continue
        for g, c in zip(graph, config):
            if ORT_TO_NUMPY.get(g.type) != c.dtype.name:
                problems.append(f"{kind} {g.name} is {g.type} in the graph, {c.dtype.name} in the config")
    return problems


class OnnxRunnerModel:
    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        from bonescan.serving.pybackend import config_tensors, keep_request_memory

        keep_request_memory()  # the batch's arrays reuse the heap from one request to the next
        self.pb = pb_utils
        cfg = json.loads(args["model_config"])
        self.name = cfg["name"]
        self.inputs, self.outputs = config_tensors(cfg)
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / params.get("onnx_file", "model.onnx")
        self.session, runtime = self.open(path, params, Path(args["model_repository"]))
        problems = config_mismatches(self.session, self.inputs, self.outputs)
        if problems:  # a repository built from another export than the one beside it: refuse to load
            raise ValueError(f"{self.name}: {path.name} does not match config.pbtxt: " + "; ".join(problems))
        self.run_batch = int(params.get("run_batch", "0") or 0)
        pb_utils.Logger.log_info(f"{self.name}: {runtime}, run batch {self.run_batch or 'whole'}, {path.name}")

    def open(self, path: Path, params: dict[str, str], model_dir: Path) -> tuple[Any, str]:
        """The session that runs ``path`` (``run``, ``get_inputs``, ``get_outputs`` as onnxruntime's) and how
        it runs, for the log: onnxruntime here; the openvino flavor overrides only this."""
        import onnxruntime as ort

        threads = int(params.get("intra_op_threads", "2") or 2)
        session = cpu_session(path, threads, spinning=params.get("allow_spinning", "0") == "1")
        return session, f"onnxruntime {ort.__version__}, {threads} threads"

    def execute(self, requests: list) -> list:
        from bonescan.serving.pybackend import concat_padded, fail_all, gather, respond

        arrays, good, sizes, errors = gather(self.pb, requests, [t.name for t in self.inputs])
        outputs = {}
        if good:
            feeds = {t.name: concat_padded(arrays[t.name]).astype(t.dtype, copy=False) for t in self.inputs}
            try:
                result = run_in_chunks(self.session, [t.name for t in self.outputs], feeds, self.run_batch)
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
                return fail_all(self.pb, len(requests), f"{self.name} failed: {type(e).__name__}")
            outputs = {t.name: r.astype(t.dtype, copy=False) for t, r in zip(self.outputs, result)}
        return respond(self.pb, len(requests), good, sizes, errors, outputs)

    def finalize(self) -> None:
        self.session = None
