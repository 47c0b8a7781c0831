"""``bonescan bench first-request``: the first request after a (re)start, with and without warm-up.

For each mode (a repository built with ``model_warmup`` and one built with ``--no-warmup``, else the
same), ``--restarts`` times: start a tritonserver, note how long it took to be ready, then time the
first dual-path request, the first U-Net request and ``--steady`` more dual-path requests (their
median is the warm figure). The scan and report are a synthetic case other than the warm-up's. The
CPU model is printed with the figures: they are of this machine only.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _case():
    from bonescan.data.synth import synth_case

    case = synth_case(7, 3)  # not the warm-up's case (serving.warmup.WARMUP_CASE)
    image = C.to_model_frame(case.anterior, case.posterior)[None].astype(np.float32)
    spacing = np.asarray([case.meta["pixel_spacing_mm"]], np.float32)
    return image, case.report, spacing


def _timed(client, model: str, inputs: list, outputs: list) -> float:
    t = time.perf_counter()
    client.infer(model, inputs, outputs=outputs, client_timeout=600)
    return (time.perf_counter() - t) * 1000.0


def one_start(repo: Path, log_file: Path, steady: int) -> dict[str, float]:
    import tritonclient.grpc as grpcclient

    from bonescan.benchmarks.faults import grpc_inputs
    from bonescan.serving.server import TritonServer, free_ports

    image, report, spacing = _case()
    grpc, http, metrics = free_ports(3)
    t0 = time.perf_counter()
    server = TritonServer(repo, grpc, http, metrics, log_file=log_file).start(timeout=600)
    try:
        ready_s = time.perf_counter() - t0
        client = grpcclient.InferenceServerClient(server.grpc_url)
        outs = [grpcclient.InferRequestedOutput(n) for n in ("MASK", "LESIONS")]
        first = _timed(client, C.ENSEMBLE_MODEL, grpc_inputs(image, [report], spacing), outs)
        models = set(json.loads((repo / "bonescan_repo.json").read_text())["models"])
        first_unet = (_timed(client, C.ENSEMBLE_UNET_MODEL, grpc_inputs(image, None, spacing), outs)
                      if C.ENSEMBLE_UNET_MODEL in models else float("nan"))
        warm = [_timed(client, C.ENSEMBLE_MODEL, grpc_inputs(image, [report], spacing), outs) for _ in range(steady)]
        client.close()
    finally:
        server.stop()
    return {"ready_s": ready_s, "first_ms": first, "first_unet_ms": first_unet, "steady_median_ms": statistics.median(warm)}


def run_first_request(export: Path, baseline: Path | None, out: Path, restarts: int = 3, steady: int = 5) -> dict[str, Any]:
    from bonescan.serving.repository import RepoOptions, build_repository

    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"cpu": cpu_model(), "restarts": restarts, "steady": steady, "modes": {}}
    runs: dict[str, list[dict[str, float]]] = {}
    repos = {}
    for mode, warm in (("no warm-up", False), ("warm-up", True)):
        repos[mode] = out / ("repo_warmup" if warm else "repo_no_warmup")
        build_repository(export, repos[mode], RepoOptions(warmup=warm), baseline=baseline)
        runs[mode] = []
    for r in range(restarts):  # alternate the modes: a drift of the machine hits both alike
        for mode in runs:
            runs[mode].append(one_start(repos[mode], out / f"tritonserver_{mode.replace(' ', '_')}_{r}.log", steady))
    for mode, rs in runs.items():
        result["modes"][mode] = {k: statistics.median(x[k] for x in rs) for k in rs[0]} | {"runs": rs}
    (out / "first_request.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"CPU: {result['cpu']}; medians of {result['restarts']} starts each",
             "| repository | ready after (s) | first dual-path request (ms) | first U-Net request (ms) | "
             f"dual-path, median of the next {result['steady']} (ms) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for mode, m in result["modes"].items():
        lines.append(f"| {mode} | {m['ready_s']:.1f} | {m['first_ms']:.0f} | {m['first_unet_ms']:.0f} | {m['steady_median_ms']:.0f} |")
    return "\n".join(lines)
