"""Markdown reports with plots for the benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
    text = [f"# Latency benchmark: {res['config']} configuration", "",
            f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), {m['memory_gib']} GiB; "
            f"Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}; {m['threads_per_engine']} threads per engine.",
            latency_table(res), ""]
    text += [f"![{k}]({p.name})" for k, p in plots.items()]
    path = out / "latency.md"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path
