"""Markdown reports with plots for the benchmarks.

Every report starts with :func:`provenance`: when, by which command, on which CPU and at which
commit it was measured, so a figure copied from it into the README carries its origin, and
replacing it after a new run is copying the new file's lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def provenance(res: dict[str, Any]) -> str:
    """'Measured <UTC date> by `<command>` on <CPU> (<ISA flags>, <cores> cores), commit <sha>.' from a
    result's ``run`` and ``machine`` records (``latency.run_info`` / ``cpu_info``)."""
    from bonescan.benchmarks.latency import cpu_info

    m = res.get("machine") or cpu_info()
    r = res.get("run") or {}
    isa = ", ".join(m.get("simd", [])) or "none of the AVX2 / AVX-512 / AMX flags"
    return (f"Measured {r.get('measured_at', '(time not recorded)')} by `{r.get('command', '?')}` on {m['cpu']} ({isa}, "
            f"{m['cores']} cores), commit {r.get('commit', 'unknown')}.")


def write_fault_report(name: str, res: dict[str, Any], out: Path, summary: str) -> Path:
    """``out/<name>.md``: the provenance line, the printed summary and the result's counters."""
    rows = [(k, v) for k, v in res.items() if isinstance(v, int | float | bool | str) and k != "request_log"]
    text = [f"# bench {name}", "", provenance(res), "", "```", summary, "```", "",
            "| counter | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    path = out / f"{name}.md"
    path.write_text("\n".join(text), encoding="utf-8")
    return path


def latency_plots(res: dict[str, Any], out: Path, tag: str = "") -> dict[str, Path]:
    from bonescan import viz

    viz.use_agg()
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = res["triton"]
    cs = [r["concurrency"] for r in rows]
    paths = {}
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for q, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^:")):
        ax.plot(cs, [r[q] for r in rows], style, label=f"Triton {q[:3]}")
    pa = res.get("perf_analyzer", {}).get("rows", [])
    if pa:
        ax.plot([r["concurrency"] for r in pa], [r["p50_ms"] for r in pa], "x-", color="grey", label="perf_analyzer p50")
    ax.axhline(res["onnxruntime"]["p50_ms"], color="tab:green", lw=1, label="in-process onnxruntime p50")
    ax.axhline(res["pytorch"]["p50_ms"], color="tab:red", lw=1, label="in-process PyTorch p50")
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{res['config']}: latency vs concurrency", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths["latency"] = out / f"latency{tag}.png"
    fig.savefig(paths["latency"], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(cs, [r["throughput_per_s"] for r in rows], "o-", label="Triton (harness)")
    if pa:
        ax.plot([r["concurrency"] for r in pa], [r["throughput_per_s"] for r in pa], "x-", color="grey", label="perf_analyzer")
    ax.axhline(res["onnxruntime"]["throughput_per_s"], color="tab:green", lw=1, label="in-process onnxruntime (1 at a time)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("scans / s")
    ax.set_title(f"{res['config']}: throughput vs concurrency", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths["throughput"] = out / f"throughput{tag}.png"
    fig.savefig(paths["throughput"], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    members = list(rows[0]["members"])
    bottom = [0.0] * len(rows)
    for m in members:
        vals = []
        for r in rows:
            row = r["members"][m]
            vals.append(sum(row.get(k) or 0 for k in ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms")))
        ax.bar([str(c) for c in cs], vals, bottom=bottom, label=m)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("ms per request (queue + compute)")
    ax.set_title("per-member time (Triton statistics)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths["members"] = out / f"members{tag}.png"
    fig.savefig(paths["members"], dpi=120)
    plt.close(fig)
    return paths


def write_latency_report(res: dict[str, Any], out: Path) -> Path:
    from bonescan.benchmarks.latency import latency_table

    plots = latency_plots(res, out)
    m = res["machine"]
    text = [f"# Latency benchmark: {res['config']} configuration", "", provenance(res), "",
            f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), {m['memory_gib']} GiB; "
            f"Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}; {m['threads_per_engine']} threads per engine.",
            latency_table(res), ""]
    text += [f"![{k}]({p.name})" for k, p in plots.items()]
    path = out / "latency.md"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path
