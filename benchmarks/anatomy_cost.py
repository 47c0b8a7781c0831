"""``bonescan bench anatomy-cost``: what the anatomy output costs the served ensemble, A/B in one run.

The same checkpoint is exported twice, with its anatomy network and without it (``bonescan export onnx
--no-anatomy``: ``region_labels`` then is background everywhere, postprocess names no lesion and computes
no Bone Scan Index), each export built into a repository of the same flavor, and the two served one after
the other by their own tritonserver (never sharing the cores), in alternating order over ``rounds``
(A B, B A, ...: this machine's speed moves from minute to minute). Each round measures the dual-path
ensemble at concurrency 1 on the same held-out scans with the project's harness, and Triton's per-step
statistics. The anatomy output's cost is ``(p50 with - p50 without) / p50 with``, per round, and its median
(issue 26's target: <= 15 % at c=1); the per-step rows show where it goes (the anatomy network inside the
segmenter graph, the naming and the BSI inside postprocess). The postprocess step without the anatomy is
the fail-safe alone (issue 25's target: < 5 ms in Triton's statistics).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C
from bonescan.errors import BonescanError

ARMS = ("with anatomy", "without anatomy")
#: issue 26: the anatomy output costs at most this share of the ensemble's p50 at c=1
MAX_COST_SHARE = 0.15
FLAVORS = ("embedded", "openvino", "openvino-int8")
#: issue 25, 0(c): the postprocess step (the fail-safe) in Triton's statistics, c=1
MAX_FAILSAFE_MS = 5.0


def bench_anatomy_cost(checkpoint: Path, data: Path, out: Path, flavor: str = "embedded", rounds: int = 3,
                       requests: int = 32, n_cases: int = 8, threads: int = 2) -> dict[str, Any]:
    """Export, build, serve and measure both arms; writes out/anatomy_cost.json and .md."""
    from bonescan.benchmarks.flavors import _cases, _serve_and_measure
    from bonescan.benchmarks.latency import cpu_info, run_info
    from bonescan.export.onnx_export import export_onnx
    from bonescan.serving.repository import RepoOptions, build_repository

    if rounds < 1:
        raise BonescanError(f"--rounds must be 1 or more, got {rounds}")
    if flavor not in FLAVORS:
        raise BonescanError(f"--flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
    out.mkdir(parents=True, exist_ok=True)
    exports = {ARMS[0]: out / "export_anatomy", ARMS[1]: out / "export_no_anatomy"}
    for arm, folder in exports.items():
        print(f"[anatomy-cost] exporting {checkpoint} {arm} -> {folder} ...", flush=True)
        desc = export_onnx(checkpoint, folder, anatomy=arm == ARMS[0])
        if arm == ARMS[0] and not desc["anatomy"]:
            raise BonescanError(f"{checkpoint}: has no anatomy network (trained on data without region maps): nothing to measure")
        if desc["model"] != "dualpath":
            raise BonescanError(f"{checkpoint}: a {desc['model']} checkpoint; this measures the dual-path ensemble (give dualpath.pt)")
    gates = {}
    if flavor == "openvino-int8":  # both arms quantized the same way, each gated on the held-out scans
        from bonescan.export.quantize import format_gate, quantize_export

        for arm, folder in list(exports.items()):
            print(f"[anatomy-cost] quantizing the export {arm} (calibration on the train split, gate on the test split) ...", flush=True)
            gates[arm] = quantize_export(folder, data, folder.with_name(folder.name + "_int8"), threads=threads)
            print(format_gate(gates[arm]), flush=True)
            if not gates[arm].get("passed"):
                raise BonescanError(f"the INT8 export {arm} missed its accuracy gate; see {folder.name}_int8/model.json")
            exports[arm] = folder.with_name(folder.name + "_int8")
    cases, masks = _cases(data, n_cases)
    repos = {}
    for arm, folder in exports.items():
        repos[arm] = out / ("repo_" + arm.replace(" ", "_"))
        build_repository(folder, repos[arm], RepoOptions(flavor="embedded" if flavor == "embedded" else "openvino",
                                                         intra_op_threads=threads))
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for r in range(rounds):
        for arm in (ARMS if r % 2 == 0 else tuple(reversed(ARMS))):
            print(f"[anatomy-cost] round {r + 1}/{rounds}: {arm}", flush=True)
            name = f"{arm.replace(' ', '_')}_r{r + 1}"
            row = _serve_and_measure(repos[arm], out, name, cases, masks, (1,), requests, {}, False, (C.ENSEMBLE_MODEL,))
            runs[arm].append(_level(row))
    res: dict[str, Any] = {"machine": {**cpu_info(), "threads_per_engine": threads}, "run": run_info(),
                           "checkpoint": str(checkpoint), "flavor": flavor, "rounds": rounds, "scans": len(cases),
                           "requests_per_round": requests, **cost_of(runs)}
    if gates:
        res["int8_gates"] = {arm: {k: g.get(k) for k in ("passed", "max_delta_dsc")} | {"last": (g.get("attempts") or [{}])[-1]}
                             for arm, g in gates.items()}
    (out / "anatomy_cost.json").write_text(json.dumps(res, indent=1) + "\n")
    table = format_cost(res)
    (out / "anatomy_cost.md").write_text(table + "\n")
    print(table)
    return res


def cost_of(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Both arms' rounds (:func:`_level` rows, in the order measured) -> each arm's medians, the anatomy output's
    share of the p50 per round (each round's two arms measured minutes apart) and its median, the verdicts."""
    per_round = [(a["p50_ms"] - b["p50_ms"]) / a["p50_ms"] for a, b in zip(runs[ARMS[0]], runs[ARMS[1]], strict=True)]
    arms = {arm: _summary(rows) for arm, rows in runs.items()}
    share = round(float(statistics.median(per_round)), 4)
    return {"arms": arms, "cost_share_per_round": [round(x, 4) for x in per_round], "cost_share": share,
            "targets": {"cost_share_max": MAX_COST_SHARE, "failsafe_postprocess_ms_max": MAX_FAILSAFE_MS},
            "verdicts": {"anatomy cost <= 15 % of p50 c=1": share <= MAX_COST_SHARE,
                         "postprocess without anatomy (the fail-safe) < 5 ms": arms[ARMS[1]]["postprocess_ms"] < MAX_FAILSAFE_MS},
            "dsc": {arm: runs[arm][0]["dsc"] for arm in ARMS}}


def _level(row: dict[str, Any]) -> dict[str, Any]:
    """One round of one arm: the dual-path ensemble's c=1 figures and its steps' compute times."""
    r = row[C.ENSEMBLE_MODEL]
    c1 = r["levels"][0]
    steps = {m: (c1["members"].get(m) or {}).get("compute_infer_ms") for m in C.ENSEMBLES[C.ENSEMBLE_MODEL].models}
    return {"p50_ms": c1["p50_ms"], "p99_ms": c1["p99_ms"], "steps_ms": steps, "dsc": round(float(r["dsc"]), 4)}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """An arm's medians over the rounds, every round kept."""
    steps = {m: round(float(np.median([x["steps_ms"][m] for x in rows if x["steps_ms"][m] is not None])), 2)
             for m in rows[0]["steps_ms"]}
    return {"p50_ms": round(float(np.median([x["p50_ms"] for x in rows])), 2),
            "p99_ms": round(float(np.median([x["p99_ms"] for x in rows])), 2),
            "segmenter_ms": steps.get("segmenter"), "postprocess_ms": steps.get("postprocess"), "steps_ms": steps,
            "rounds": rows}


def format_cost(res: dict[str, Any]) -> str:
    m = res["machine"]
    a, b = res["arms"][ARMS[0]], res["arms"][ARMS[1]]
    lines = [f"## The anatomy output's cost, A/B in one run: {m['cpu']}, {m['cores']} cores, ISA {' '.join(m['simd'])}; "
             f"{res['flavor']} flavor, {m['threads_per_engine']} threads per engine; {res['scans']} held-out scans, "
             f"{res['requests_per_round']} requests per round at c=1, medians of {res['rounds']} rounds (order alternating); "
             f"{res['run']['measured_at']}, commit {res['run']['commit']}", "",
             "| dual-path ensemble | p50 c=1 ms | p99 c=1 ms | segmenter ms | postprocess ms | DSC (these scans) |",
             "|---|---|---|---|---|---|"]
    for arm in ARMS:
        x = res["arms"][arm]
        lines.append(f"| {arm} | {x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['segmenter_ms']:.1f} | {x['postprocess_ms']:.2f} | {res['dsc'][arm]:.4f} |")
    lines += ["", f"anatomy output's cost: {res['cost_share']:.1%} of the ensemble's p50 (per round: "
              + " / ".join(f"{x:.1%}" for x in res["cost_share_per_round"]) + f"; target <= {MAX_COST_SHARE:.0%}); "
              f"segmenter +{a['segmenter_ms'] - b['segmenter_ms']:.1f} ms (the anatomy network; with NamedPlaces, which keeps it, the labels' argmax), postprocess "
              f"+{a['postprocess_ms'] - b['postprocess_ms']:.2f} ms (naming and BSI)",
              f"postprocess without the anatomy (the fail-safe alone): {b['postprocess_ms']:.2f} ms (target < {MAX_FAILSAFE_MS:g} ms)"]
    for arm, g in (res.get("int8_gates") or {}).items():
        last = g["last"]
        lines.append(f"INT8 gate, export {arm}: {last.get('scans')} held-out scans, DSC fp32 {last.get('dsc_fp32', float('nan')):.4f}, "
                     f"INT8 {last.get('dsc_int8', float('nan')):.4f} (limit {g['max_delta_dsc']}) -> {'PASS' if g['passed'] else 'FAIL'}")
    lines += ["", "verdicts: " + "; ".join(f"{k}: {'meets' if v else 'MISSES'}" for k, v in res["verdicts"].items())]
    return "\n".join(lines)
