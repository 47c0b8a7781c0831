"""``bonescan bench flavors``: the CPU repository flavors side by side, in one run (issue 25, item 3).

Each flavor (``embedded``: onnxruntime in the python backend; ``openvino``: OpenVINO fp32;
``openvino-int8``: OpenVINO running the INT8 export of ``bonescan export quantize``) is built from
the same exports, served by its own tritonserver (one after the other: never two servers sharing
the cores), and measured on the same held-out scans with the same threads: the project's harness at
concurrency 1 and 4 for the dual-path and the U-Net ensembles, Triton's per-step statistics, the
server's peak memory, perf_analyzer at concurrency 1 beside the harness, and the answers' DSC against
the ground truth on the benchmark's scans next to the first flavor's. Ratios are computed within the
run only (these machines differ from day to day), and the JSON records the CPU model and ISA flags.

``--isa avx2`` sets ``ONEDNN_MAX_CPU_ISA=AVX2`` in every server (OpenVINO's oneDNN then behaves as on
an AVX2-only CPU; onnxruntime's own kernels cannot be restricted that way, so the embedded flavor
still uses what the CPU has: the note in the table says so).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C
from bonescan.errors import BonescanError

FLAVOR_CHOICES = ("embedded", "openvino", "openvino-int8")


def _cases(data: Path, n: int) -> tuple[list, list[np.ndarray]]:
    """n held-out scans (image, report, spacing) and their true masks."""
    from bonescan.data.dataset import BoneScanDataset

    cases, masks = [], []
    for s in BoneScanDataset(data, "test").samples():
        if s.mask is None:
            continue
        cases.append((s.image, s.report, s.pixel_spacing))
        masks.append(s.mask)
        if len(cases) >= n:
            break
    if not cases:
        raise BonescanError(f"{data}: no test cases with masks")
    return cases, masks


def _int8_exports(export: Path, baseline: Path | None, data: Path, out: Path, given: Path | None,
                  given_baseline: Path | None, isa: str | None = None) -> tuple[Path, Path | None, dict[str, Any]]:
    """The INT8 exports to serve: the ones given, else quantized here (gate included, recorded).

    The dual-path export must pass its gate (it is what the flavor is about). A U-Net export that
    misses its gate is not served: the flavor's bonescan_unet ensemble keeps the fp32 U-Net, and
    the table says so (a gate that could be waved through would not be a gate)."""
    from bonescan.export.quantize import format_gate, quantize_export_isa

    gates: dict[str, Any] = {}
    pairs = (("dualpath", export, given, out / "export_int8"), ("unet", baseline, given_baseline, out / "export_unet_int8"))
    result: dict[str, Path | None] = {}
    for name, src, ready, target in pairs:
        if src is None:
            result[name] = None
            continue
        if ready is not None:
            info = json.loads((ready / "model.json").read_text()).get("quantization") or {}
        else:
            print(f"[flavors] quantizing the {name} export (calibration on the train split, gate on the test split) ...", flush=True)
            info = quantize_export_isa(src, data, target, isa)  # the gate scored on the ISA the run serves on
            print(format_gate(info), flush=True)
        gates[name] = info
        if info.get("passed"):
            result[name] = ready or target
        elif name == "dualpath":
            raise BonescanError(f"the INT8 dual-path export missed its accuracy gate; see {(ready or target)}/model.json")
        else:
            print(f"[flavors] the INT8 {name} export missed its gate: openvino-int8 serves the fp32 {name}", flush=True)
            info["served"] = "fp32 (INT8 missed the gate)"
            result[name] = src
    assert result["dualpath"] is not None
    return result["dualpath"], result["unet"], gates


def _serve_and_measure(repo: Path, out: Path, name: str, cases: list, masks: list, concurrency: tuple[int, ...],
                       requests: int, env: dict[str, str], perf_analyzer: bool, models: tuple[str, ...]) -> dict[str, Any]:
    from bonescan.benchmarks.latency import (
        MemorySampler,
        harness,
        member_stats,
        perf_analyzer_data,
        run_perf_analyzer,
    )
    from bonescan.client import BoneScanClient
    from bonescan.client.inputs import Request
    from bonescan.metrics import dsc
    from bonescan.serving.server import TritonServer, free_ports

    g, h, m = free_ports(3)
    server = TritonServer(repo, g, h, m, log_file=out / f"tritonserver_{name}.log", environment=env)
    t0 = time.perf_counter()
    server.start(timeout=900)
    assert server.proc is not None
    row: dict[str, Any] = {"ready_s": round(time.perf_counter() - t0, 1)}
    try:
        with MemorySampler(server.proc.pid) as mem:
            for model in models:
                guided = model == C.ENSEMBLE_MODEL
                harness(server.grpc_url, model, cases, 1, 4, guided)  # warm-up
                levels = []
                for c in concurrency:
                    before = member_stats(server.grpc_url, list(C.ENSEMBLES[model].models))
                    r = harness(server.grpc_url, model, cases, c, max(requests, 2 * c), guided)
                    r["members"] = member_stats(server.grpc_url, list(C.ENSEMBLES[model].models), before)
                    levels.append(r)
                    print(f"[flavors] {name} {model} c={c}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                          f"{r['throughput_per_s']:.2f}/s, errors {r['errors']}", flush=True)
                with BoneScanClient(server.grpc_url, model=model, timeout_s=600) as client:
                    answers = [client.segment_prepared([Request(img, rep, sp, f"case{i}")])[0].mask
                               for i, (img, rep, sp) in enumerate(cases)]
                row[model] = {"levels": levels, "masks": answers,
                              "dsc": float(np.mean([dsc(a, t) for a, t in zip(answers, masks)]))}
                if perf_analyzer and guided:
                    data_json = perf_analyzer_data(cases, out / f"perf_analyzer_{name}.json", True)
                    # windows of several requests each: perf_analyzer's stability check fails on 2-request windows
                    # (the paper configuration answers in seconds)
                    window = max(4000, int(8 * levels[0]["p50_ms"]))
                    row["perf_analyzer"] = run_perf_analyzer(server.grpc_url, model, data_json, [1], out, measurement_ms=window)
            row["memory_peak_mib"] = round(mem.peak / 2**20, 1)
    finally:
        server.stop()
    return row


def bench_flavors(export: Path, data: Path, out: Path, flavors: tuple[str, ...] = FLAVOR_CHOICES,
                  baseline: Path | None = None, int8_export: Path | None = None, int8_baseline: Path | None = None,
                  threads: int = 2, concurrency: tuple[int, ...] = (1, 4), requests: int = 32, n_cases: int = 8,
                  isa: str | None = None, perf_analyzer: bool = True, rounds: int = 1) -> dict[str, Any]:
    """Build, serve and measure each flavor; writes out/flavors.json and out/flavors.md.

    ``rounds`` > 1 serves and measures every flavor again, in reversed order every other round (A B C,
    C B A, ...): this machine's speed itself moves by up to ~1.8x from one minute to the next (the same
    graph, process and input measured 43 and 78 ms), so a flavor measured in a slow minute looks slower.
    The table then gives each flavor's median over the rounds, and each speed-up as the median of the
    per-round ratios (each taken between measurements minutes apart, not tens of minutes); perf_analyzer
    runs in the first round only."""
    if rounds < 1:
        raise BonescanError(f"--rounds must be 1 or more, got {rounds}")
    from bonescan.benchmarks.latency import cpu_info, run_info
    from bonescan.serving.repository import RepoOptions, build_repository

    unknown = sorted(set(flavors) - set(FLAVOR_CHOICES))
    if unknown:
        raise BonescanError(f"unknown flavor {', '.join(unknown)}; choose from {', '.join(FLAVOR_CHOICES)}")
    out.mkdir(parents=True, exist_ok=True)
    cases, masks = _cases(data, n_cases)
    env = {"ONEDNN_MAX_CPU_ISA": isa.upper()} if isa else {}
    res: dict[str, Any] = {"machine": {**cpu_info(), "threads_per_engine": threads, "isa_limit": env.get("ONEDNN_MAX_CPU_ISA")},
                           "run": run_info(), "scans": len(cases), "requests_per_level": requests, "rounds": rounds, "flavors": {}}
    sources = {f: (export, baseline) for f in flavors}
    models = (C.ENSEMBLE_MODEL, C.ENSEMBLE_UNET_MODEL) if baseline is not None else (C.ENSEMBLE_MODEL,)
    if "openvino-int8" in flavors:
        e8, b8, res["int8_gates"] = _int8_exports(export, baseline, data, out, int8_export, int8_baseline, isa)
        sources["openvino-int8"] = (e8, b8)
    repos = {}
    for f in flavors:
        src, base = sources[f]
        repos[f] = out / f"repo_{f}"
        opts = RepoOptions(flavor="embedded" if f == "embedded" else "openvino", intra_op_threads=threads)
        print(f"[flavors] {f}: building {repos[f]} ...", flush=True)
        build_repository(src, repos[f], opts, baseline=base)
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in flavors}
    for r in range(rounds):
        for f in (flavors if r % 2 == 0 else tuple(reversed(flavors))):
            if rounds > 1:
                print(f"[flavors] round {r + 1}/{rounds}: {f}", flush=True)
            runs[f].append(_serve_and_measure(repos[f], out, f, cases, masks, concurrency, requests, env, perf_analyzer and r == 0, models))
    for f in flavors:
        res["flavors"][f] = _over_rounds(runs[f])
    _compare(res, flavors)
    (out / "flavors.json").write_text(json.dumps(res, indent=1, default=_plain) + "\n")
    table = flavor_table(res)
    (out / "flavors.md").write_text(table + "\n")
    print(table)
    return res


def _over_rounds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One flavor's rounds -> the first round's row (answers, per-step times, perf_analyzer) with each level's
    p50 / p99 / throughput the median over the rounds, and every round's figures kept under ``rounds``."""
    row = rows[0]
    row["memory_peak_mib"] = max(r["memory_peak_mib"] for r in rows)
    for model in _ensembles(row):
        for k, level in enumerate(row[model]["levels"]):
            per_round = [r[model]["levels"][k] for r in rows]
            level["rounds"] = [{key: x[key] for key in ("p50_ms", "p99_ms", "throughput_per_s")} for x in per_round]
            for key in ("p50_ms", "p99_ms", "throughput_per_s"):
                level[key] = float(np.median([x[key] for x in per_round]))
            level["errors"] = sum(x["errors"] for x in per_round)
    return row


def _plain(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return None  # masks are compared in the run, not stored
    return str(o)


def _compare(res: dict[str, Any], flavors: tuple[str, ...]) -> None:
    """Ratios and mask agreement against the first flavor (the reference), measured in this run."""
    ref = res["flavors"][flavors[0]]
    for f in flavors:
        row = res["flavors"][f]
        for model in _ensembles(row):
            mine, base = row[model], ref[model]
            c1 = lambda r: next(x for x in r["levels"] if x["concurrency"] == 1)  # noqa: E731
            # the median of the per-round ratios (one round: the ratio of the two p50s)
            pairs = zip(c1(base).get("rounds") or [c1(base)], c1(mine).get("rounds") or [c1(mine)])
            mine["speedup_rounds"] = [round(b["p50_ms"] / m["p50_ms"], 3) for b, m in pairs]
            mine["speedup_p50_c1"] = round(float(np.median(mine["speedup_rounds"])), 3)
            mine["delta_dsc"] = round(base["dsc"] - mine["dsc"], 4)
            agree = [float((a == b).mean()) for a, b in zip(mine["masks"], base["masks"])]
            mine["mask_agreement"] = round(float(np.mean(agree)), 6)
    for f in flavors:
        for model in _ensembles(res["flavors"][f]):
            res["flavors"][f][model].pop("masks")


def _ensembles(row: dict[str, Any]) -> list[str]:
    """The ensembles a flavor's row measured (bonescan_unet only when a U-Net export was given)."""
    return [m for m in (C.ENSEMBLE_MODEL, C.ENSEMBLE_UNET_MODEL) if m in row]


def flavor_table(res: dict[str, Any]) -> str:
    m = res["machine"]
    # throughput at the highest concurrency measured (4 by default)
    top = max(x["concurrency"] for row in res["flavors"].values() for model in _ensembles(row) for x in row[model]["levels"])
    isa = f"; oneDNN limited to {m['isa_limit']} (OpenVINO only)" if m.get("isa_limit") else ""
    lines = [f"## CPU flavors, one run: {m['cpu']}, {m['cores']} cores, ISA {' '.join(m['simd'])}{isa}; "
             f"{m['threads_per_engine']} threads per engine; {res['scans']} held-out scans, {res['requests_per_level']} requests per level"
             f"{'' if res.get('rounds', 1) == 1 else ', medians of ' + str(res['rounds']) + ' rounds (order reversed every other round)'}; "
             f"{res['run']['measured_at']}, commit {res['run']['commit']}", "",
             f"| flavor | ensemble | p50 c=1 ms | p99 c=1 ms | throughput c={top} /s | speed-up p50 vs first | text_encoder ms | "
             "segmenter ms | postprocess ms | DSC | delta DSC | mask agreement | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    unet_fp32 = bool((res.get("int8_gates") or {}).get("unet", {}).get("served"))
    for f, row in res["flavors"].items():
        for model in _ensembles(row):
            r = row[model]
            shown = f"{f} (U-Net fp32: gate)" if f == "openvino-int8" and model == C.ENSEMBLE_UNET_MODEL and unet_fp32 else f
            by_c = {x["concurrency"]: x for x in r["levels"]}
            c1 = by_c[1]
            seg_name = "segmenter" if model == C.ENSEMBLE_MODEL else "segmenter_unet"
            seg = (c1["members"].get(seg_name) or {}).get("compute_infer_ms")
            post = (c1["members"].get("postprocess") or {}).get("compute_infer_ms")
            text = (c1["members"].get("text_encoder") or {}).get("compute_infer_ms")
            tput = by_c[top]["throughput_per_s"] if top in by_c else float("nan")
            lines.append(f"| {shown} | {model} | {c1['p50_ms']:.1f} | {c1['p99_ms']:.1f} | {tput:.2f} | {r['speedup_p50_c1']:.2f}x | "
                         f"{'-' if text is None else f'{text:.1f}'} | {seg or float('nan'):.1f} | {post or float('nan'):.1f} | {r['dsc']:.4f} | {r['delta_dsc']:+.4f} | "
                         f"{100 * r['mask_agreement']:.3f} % | {row['memory_peak_mib']:.0f} |")
    pa = {f: row.get("perf_analyzer", {}).get("rows") for f, row in res["flavors"].items()}
    if any(pa.values()):
        lines.append("")
        lines.append("perf_analyzer, dual-path ensemble, c=1 (p50 ms): " + ", ".join(
            f"{f} {rows[0].get('p50_ms', float('nan')):.1f}" for f, rows in pa.items() if rows))
    if res.get("rounds", 1) > 1:
        lines.append("")
        lines.append("speed-up p50 c=1 per round (vs the first flavor): " + "; ".join(
            f"{f} {model}: " + " / ".join(f"{x:.2f}x" for x in row[model]["speedup_rounds"])
            for f, row in list(res["flavors"].items())[1:] for model in _ensembles(row)))
    failed = [f"{f}: {row['perf_analyzer']['error']}" for f, row in res["flavors"].items() if (row.get("perf_analyzer") or {}).get("error")]
    if failed:
        lines.append("perf_analyzer failed: " + "; ".join(failed))
    for name, gate in (res.get("int8_gates") or {}).items():
        if gate:
            a = gate["attempts"][-1]
            kept = ", ".join(f"{k} {v}" for k, v in a["kept_fp32"].items() if v) or "nothing"
            lines.append(f"\nINT8 gate ({name}): {a['scans']} held-out scans, DSC fp32 {a['dsc_fp32']:.4f}, INT8 {a['dsc_int8']:.4f}, "
                         f"delta {a['delta_dsc']:+.4f} (limit {gate['max_delta_dsc']}), mask agreement {100 * a['mask_agreement']:.3f} %, "
                         f"kept fp32: {kept} -> {'PASS' if gate['passed'] else 'FAIL: ' + gate.get('served', 'not served')}")
    return "\n".join(lines)
