"""``bonescan bench sweep``: the Model Analyzer job for this project (issue 25, item 4).

A grid of serving configurations (flavor x instances of the networks x threads per instance x Triton
max_batch_size) is built with ``bonescan repo build``, each point served by its own tritonserver (one
after the other: never two servers sharing the cores) and measured by Triton's ``perf_analyzer`` over
real held-out scans and reports at several concurrency levels. Written: ``sweep.json`` (every point,
the CPU model and ISA flags), ``sweep.md`` (the table), ``pareto.png`` (p99 latency against
throughput, the Pareto front drawn) and the best configuration under a latency budget (``--p99-ms``)
as the ``bonescan repo build`` command that produces it.

Why not Triton's own ``model-analyzer``: it was tried first (README, "Sweeping serving configurations"):
it profiles the ensemble here, but its search varies instance counts, max batch size and concurrency
only, not the threads of the runtime inside the python backend nor the flavor (another repository).
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bonescan import contract as C
from bonescan.errors import BonescanError

FLAVORS = ("embedded", "openvino", "openvino-int8")


@dataclass(frozen=True)
class Point:
    """One serving configuration of the sweep."""

    flavor: str
    instances: int  # instances of text_encoder / segmenter (and segmenter_unet)
    threads: int  # onnxruntime / OpenVINO threads per instance
    max_batch: int  # Triton max_batch_size of every model (1: no batching)

    @property
    def name(self) -> str:
        return f"{self.flavor}_i{self.instances}_t{self.threads}_b{self.max_batch}"

    def build_command(self, export: Path, baseline: Path | None, int8_export: Path | None) -> str:
        """The ``bonescan repo build`` line that produces this configuration."""
        src = int8_export if self.flavor == "openvino-int8" and int8_export is not None else export
        flavor = "embedded" if self.flavor == "embedded" else "openvino"
        parts = ["bonescan repo build", f"--from {src}"]
        if baseline is not None:
            parts.append(f"--baseline {baseline}")
        parts += [f"--flavor {flavor}", f"--instances {self.instances}", f"--threads {self.threads}",
                  f"--max-batch-size {self.max_batch}", "--out REPO"]
        return " ".join(parts)


def grid(flavors: tuple[str, ...], instances: tuple[int, ...], threads: tuple[int, ...],
         max_batch: tuple[int, ...]) -> list[Point]:
    unknown = sorted(set(flavors) - set(FLAVORS))
    if unknown:
        raise BonescanError(f"unknown flavor {', '.join(unknown)}; choose from {', '.join(FLAVORS)}")
    for name, values in (("--instances", instances), ("--threads", threads), ("--max-batch", max_batch)):
        if not values or min(values) < 1:
            raise BonescanError(f"{name}: give one or more whole numbers >= 1")
    return [Point(f, i, t, b) for f, i, t, b in itertools.product(flavors, instances, threads, max_batch)]


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows no other row beats on both p99 latency (lower) and throughput (higher), by latency."""
    ok = [r for r in rows if r.get("throughput_per_s") and r.get("p99_ms")]
    front = [r for r in ok if not any(
        o["p99_ms"] <= r["p99_ms"] and o["throughput_per_s"] >= r["throughput_per_s"]
        and (o["p99_ms"] < r["p99_ms"] or o["throughput_per_s"] > r["throughput_per_s"]) for o in ok)]
    return sorted(front, key=lambda r: r["p99_ms"])


def best_under(rows: list[dict[str, Any]], p99_ms: float | None) -> dict[str, Any] | None:
    """The highest throughput whose p99 is within the budget (every row when there is no budget)."""
    ok = [r for r in rows if r.get("throughput_per_s") and r.get("p99_ms")
          and (p99_ms is None or r["p99_ms"] <= p99_ms)]
    return max(ok, key=lambda r: (r["throughput_per_s"], -r["p99_ms"])) if ok else None


def _measure(repo: Path, out: Path, point: Point, model: str, data_json: Path, concurrency: list[int],
             env: dict[str, str], measurement_ms: int) -> dict[str, Any]:
    from bonescan.benchmarks.latency import MemorySampler, run_perf_analyzer
    from bonescan.serving.server import TritonServer, free_ports

    g, h, m = free_ports(3)
    work = out / "points" / point.name
    work.mkdir(parents=True, exist_ok=True)
    server = TritonServer(repo, g, h, m, log_file=work / "tritonserver.log", environment=env)
    t0 = time.perf_counter()
    server.start(timeout=900)
    assert server.proc is not None
    res: dict[str, Any] = {"ready_s": round(time.perf_counter() - t0, 1)}
    try:
        with MemorySampler(server.proc.pid) as mem:
            pa = run_perf_analyzer(server.grpc_url, model, data_json, concurrency, work, measurement_ms)
        res["memory_peak_mib"] = round(mem.peak / 2**20, 1)
    finally:
        server.stop()
    if "error" in pa:
        res["error"] = pa["error"]
        res["rows"] = []
    else:
        res["rows"] = pa["rows"]
        res["perf_analyzer_command"] = pa["command"]
    return res


def bench_sweep(export: Path, data: Path, out: Path, flavors: tuple[str, ...] = ("embedded", "openvino-int8"),
                instances: tuple[int, ...] = (1, 2), threads: tuple[int, ...] = (1, 2), max_batch: tuple[int, ...] = (1, 4),
                concurrency: tuple[int, ...] = (1, 2, 4), p99_ms: float | None = None, baseline: Path | None = None,
                int8_export: Path | None = None, model: str = C.ENSEMBLE_MODEL, n_cases: int = 8,
                measurement_ms: int = 3000, isa: str | None = None, keep_repos: bool = False) -> dict[str, Any]:
    """Serve and measure every point of the grid; writes out/sweep.json, sweep.md and pareto.png."""
    from tqdm import tqdm

    from bonescan.benchmarks.flavors import _int8_exports
    from bonescan.benchmarks.latency import cpu_info, load_cases, perf_analyzer_data, run_info
    from bonescan.serving.repository import RepoOptions, build_repository

    if model not in C.ENSEMBLES:
        raise BonescanError(f"--model: {model!r} is not an ensemble of this project ({', '.join(C.ENSEMBLES)})")
    if model == C.ENSEMBLE_UNET_MODEL and baseline is None:
        raise BonescanError("--model bonescan_unet needs --baseline (the U-Net's export)")
    points = grid(flavors, instances, threads, max_batch)
    out.mkdir(parents=True, exist_ok=True)
    cases = load_cases(data, n_cases)
    data_json = perf_analyzer_data(cases, out / "perf_analyzer_data.json", model == C.ENSEMBLE_MODEL, n=n_cases)
    env = {"ONEDNN_MAX_CPU_ISA": isa.upper()} if isa else {}
    res: dict[str, Any] = {"machine": {**cpu_info(), "isa_limit": env.get("ONEDNN_MAX_CPU_ISA")}, "run": run_info(),
                           "model": model, "scans": len(cases), "concurrency": list(concurrency),
                           "measurement_ms": measurement_ms, "p99_budget_ms": p99_ms, "points": []}
    int8 = None
    if "openvino-int8" in flavors:
        unet = baseline if model == C.ENSEMBLE_UNET_MODEL else None  # quantize only the network measured
        e8, b8, res["int8_gates"] = _int8_exports(export, unet, data, out, int8_export, None, isa)
        int8 = (e8, b8)
    for p in tqdm(points, desc="sweep", unit="config"):
        src, base = int8 if p.flavor == "openvino-int8" and int8 else (export, baseline)
        base = base if model == C.ENSEMBLE_UNET_MODEL else None  # the dual-path ensemble needs no U-Net ensemble
        repo = out / "repos" / p.name
        opts = RepoOptions(flavor="embedded" if p.flavor == "embedded" else "openvino", instances=p.instances,
                           intra_op_threads=p.threads, max_batch_size=p.max_batch)
        if repo.exists():
            shutil.rmtree(repo)
        build_repository(src, repo, opts, baseline=base)
        m = _measure(repo, out, p, model, data_json, list(concurrency), env, measurement_ms)
        if not keep_repos:
            shutil.rmtree(repo, ignore_errors=True)
        entry = {**asdict(p), "name": p.name, **m,
                 "build_command": p.build_command(export, baseline, int8[0] if int8 else None)}
        res["points"].append(entry)
        for r in m["rows"]:
            tqdm.write(f"[sweep] {p.name} c={r['concurrency']}: {r['throughput_per_s']:.2f}/s, "
                       f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
        if m.get("error"):
            tqdm.write(f"[sweep] {p.name}: {m['error']}")
    _summarise(res)
    (out / "sweep.json").write_text(json.dumps(res, indent=1) + "\n")
    pareto_plot(res, out / "pareto.png")
    table = sweep_table(res)
    (out / "sweep.md").write_text(table + "\n")
    print(table)
    return res


def _flat(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (configuration, concurrency)."""
    return [{**{k: p[k] for k in ("name", "flavor", "instances", "threads", "max_batch", "build_command")}, **r}
            for p in res["points"] for r in p["rows"]]


def _summarise(res: dict[str, Any]) -> None:
    rows = _flat(res)
    res["pareto"] = [(r["name"], r["concurrency"]) for r in pareto_front(rows)]
    best = best_under(rows, res["p99_budget_ms"])
    res["best"] = best
    c1 = [r for r in rows if r["concurrency"] == 1]
    res["lowest_latency_c1"] = min(c1, key=lambda r: r["p50_ms"]) if c1 else None
    cmax = max(res["concurrency"])
    for p in res["points"]:  # throughput scaling of each configuration, measured in this run
        by_c = {r["concurrency"]: r for r in p["rows"]}
        if 1 in by_c and cmax in by_c and cmax > 1:
            p["scaling"] = round(by_c[cmax]["throughput_per_s"] / by_c[1]["throughput_per_s"], 3)
    ref = next((p for p in res["points"] if p["flavor"] == "embedded" and p["instances"] == 1 and p["threads"] == 2
                and p["rows"]), None)
    res["reference"] = ref["name"] if ref else None
    if ref:
        ref_c1 = next((r for r in ref["rows"] if r["concurrency"] == 1), None)
        if ref_c1 and res["lowest_latency_c1"]:
            res["lowest_latency_speedup_vs_reference"] = round(ref_c1["p50_ms"] / res["lowest_latency_c1"]["p50_ms"], 3)
        ref_best = max((r["throughput_per_s"] for r in ref["rows"]), default=None)
        if ref_best and best:
            res["best_throughput_vs_reference"] = round(best["throughput_per_s"] / ref_best, 3)


def sweep_table(res: dict[str, Any]) -> str:
    m = res["machine"]
    isa = f"; oneDNN limited to {m['isa_limit']} (OpenVINO only)" if m.get("isa_limit") else ""
    cs = res["concurrency"]
    lines = [f"## Serving sweep, {res['model']}: {m['cpu']}, {m['cores']} cores, ISA {' '.join(m['simd'])}{isa}; "
             f"perf_analyzer, {res['scans']} held-out scans, {res['measurement_ms']} ms windows; "
             f"{res['run']['measured_at']}, commit {res['run']['commit']}", "",
             "| flavor | instances | threads | max batch | " + " | ".join(f"c={c} /s, p50 / p99 ms" for c in cs)
             + f" | throughput c={max(cs)} / c=1 | peak MiB | ready s |",
             "|---|---|---|---|" + "---|" * len(cs) + "---|---|---|"]
    front = {tuple(x) for x in res.get("pareto", [])}
    for p in res["points"]:
        by_c = {r["concurrency"]: r for r in p["rows"]}
        cells = []
        for c in cs:
            r = by_c.get(c)
            star = " *" if (p["name"], c) in front else ""
            cells.append(f"{r['throughput_per_s']:.2f}, {r['p50_ms']:.0f} / {r['p99_ms']:.0f}{star}" if r else "failed")
        scaling = f"{p['scaling']:.2f}x" if p.get("scaling") else "-"
        lines.append(f"| {p['flavor']} | {p['instances']} | {p['threads']} | {p['max_batch']} | " + " | ".join(cells)
                     + f" | {scaling} | {p.get('memory_peak_mib', float('nan')):.0f} | {p.get('ready_s', float('nan'))} |")
    lines += ["", "\\* on the Pareto front (no other point has both a lower p99 and a higher throughput)."]
    low = res.get("lowest_latency_c1")
    if low:
        sp = res.get("lowest_latency_speedup_vs_reference")
        ref = f" ({sp:.2f}x the p50 of {res['reference']})" if sp else ""
        lines.append(f"\nLowest latency at c=1: {low['name']}, p50 {low['p50_ms']:.1f} ms{ref}:\n`{low['build_command']}`")
    best = res.get("best")
    budget = res.get("p99_budget_ms")
    if best:
        what = f"with p99 <= {budget:g} ms" if budget else "(no latency budget given: --p99-ms)"
        vs = res.get("best_throughput_vs_reference")
        ref = f" ({vs:.2f}x the best of {res['reference']})" if vs else ""
        lines.append(f"\nHighest throughput {what}: {best['name']} at concurrency {best['concurrency']}, "
                     f"{best['throughput_per_s']:.2f}/s{ref}, p50 {best['p50_ms']:.1f} ms, p99 {best['p99_ms']:.1f} ms:\n"
                     f"`{best['build_command']}`")
    elif budget:
        lines.append(f"\nNo configuration kept p99 within {budget:g} ms.")
    for name, gate in (res.get("int8_gates") or {}).items():
        if gate:
            a = gate["attempts"][-1]
            lines.append(f"\nINT8 gate ({name}): delta DSC {a['delta_dsc']:+.4f} (limit {gate['max_delta_dsc']}) over {a['scans']} "
                         f"held-out scans -> {'PASS' if gate['passed'] else 'FAIL'}")
    return "\n".join(lines)


def pareto_plot(res: dict[str, Any], path: Path) -> None:
    """p99 latency against throughput, one marker per configuration and concurrency, the front joined."""
    from bonescan.viz import use_agg

    use_agg()
    import matplotlib.pyplot as plt

    rows = _flat(res)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {"embedded": "o", "openvino": "s", "openvino-int8": "^"}
    cmap = plt.get_cmap("tab10")
    configs = sorted({(r["instances"], r["threads"], r["max_batch"]) for r in rows})
    for r in rows:
        k = configs.index((r["instances"], r["threads"], r["max_batch"]))
        ax.scatter(r["throughput_per_s"], r["p99_ms"], marker=markers.get(r["flavor"], "x"), color=cmap(k % 10), s=18 + 10 * r["concurrency"],
                   alpha=0.8)
    front = pareto_front(rows)
    ax.plot([r["throughput_per_s"] for r in front], [r["p99_ms"] for r in front], "k--", lw=1, label="Pareto front")
    for f, mk in markers.items():
        if any(r["flavor"] == f for r in rows):
            ax.scatter([], [], marker=mk, color="grey", label=f)
    for k, (i, t, b) in enumerate(configs):
        ax.scatter([], [], marker="o", color=cmap(k % 10), label=f"{i} inst, {t} thr, batch {b}")
    if res.get("p99_budget_ms"):
        ax.axhline(res["p99_budget_ms"], color="red", lw=0.8, ls=":", label=f"p99 budget {res['p99_budget_ms']:g} ms")
    best = res.get("best")
    if best:
        ax.scatter([best["throughput_per_s"]], [best["p99_ms"]], s=160, facecolors="none", edgecolors="red", label="best under budget")
    m = res["machine"]
    ax.set_xlabel("throughput (requests / s, perf_analyzer)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(f"{res['model']}: serving configurations (marker size = concurrency)\n{m['cpu']}, {m['cores']} cores, "
                 f"{res['run']['measured_at'][:10]}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
