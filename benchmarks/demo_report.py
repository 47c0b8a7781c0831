"""demo_out/report.md: the demo's table, overlays a person can read, and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pick(samples: list, served: dict[str, list], k: int = 4) -> list[int]:
    """Cases where the report made the biggest difference, plus one negative study."""
    from bonescan.metrics import scan_metrics

    gains = []
    for i, s in enumerate(samples):
        d = scan_metrics(served["dualpath"][i].mask, s.mask)["dsc"] - scan_metrics(served["unet"][i].mask, s.mask)["dsc"]
        gains.append((d, i))
    gains.sort(reverse=True)
    chosen = [i for _, i in gains[: k - 1]]
    neg = [i for i, s in enumerate(samples) if not s.mask.any() and i not in chosen]
    return chosen + neg[:1]


def overlays(out: Path, samples: list, served: dict[str, list], idx: list[int]) -> Path:
    from bonescan import viz
    from bonescan.contract import from_model_frame
    from bonescan.metrics import scan_metrics

    viz.use_agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(idx), 4, figsize=(11, 5.2 * len(idx)), gridspec_kw={"width_ratios": [1, 1, 1, 1.5]}, squeeze=False)
    for row, i in zip(axes, idx):
        s = samples[i]
        ant, _ = from_model_frame(s.image)
        y0, y1 = viz.body_rows(ant)
        for ax, (title, mask, color) in zip(row[:3], (("ground truth", s.mask, "lime"),
                                                       ("U-Net (image only)", served["unet"][i].mask, "tab:blue"),
                                                       ("dual-path (image + report)", served["dualpath"][i].mask, "red"))):
            d = "" if mask is s.mask else f"  DSC {scan_metrics(mask, s.mask)['dsc']:.2f}"
            viz.show_view(ax, ant[y0:y1], f"{s.case_id} {title}{d}")
            viz.overlay_mask(ax, mask[y0:y1], color)
        viz.text_panel(row[3], s.report, width=24, fontsize=7)
    fig.suptitle("anterior view; outlines: green = truth, blue = U-Net, red = dual-path (through Triton)", fontsize=9)
    fig.tight_layout()
    p = out / "overlays.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def write_demo_report(out: Path, samples: list, served: dict[str, list], results: dict[str, Any], lat: dict[str, Any], table: str) -> Path:
    from bonescan import viz

    viz.use_agg()
    import matplotlib.pyplot as plt

    ov = overlays(out, samples, served, _pick(samples, served))
    # DSC per scan, both models
    from bonescan.metrics import scan_metrics

    d_u = [scan_metrics(r.mask, s.mask)["dsc"] for r, s in zip(served["unet"], samples)]
    d_d = [scan_metrics(r.mask, s.mask)["dsc"] for r, s in zip(served["dualpath"], samples)]
    fig, ax = plt.subplots(figsize=(4.2, 4))
    neg = np.array([not s.mask.any() for s in samples])
    ax.scatter(np.array(d_u)[~neg], np.array(d_d)[~neg], s=9, label="scans with metastases")
    ax.scatter(np.array(d_u)[neg], np.array(d_d)[neg], s=9, marker="x", color="tab:red", label="negative scans")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set_xlabel("U-Net DSC")
    ax.set_ylabel("dual-path DSC")
    ax.set_title("per-scan DSC through Triton", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    scatter = out / "dsc_scatter.png"
    fig.savefig(scatter, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for k, label in (("unet", "bonescan_unet"), ("dualpath", "bonescan")):
        cs = sorted(lat[k])
        ax.plot(cs, [lat[k][c]["p50_ms"] for c in cs], "o-", label=f"{label} p50")
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("latency (ms)")
    ax.set_xticks(sorted(lat["unet"]))
    ax.legend(fontsize=7)
    ax.set_title("gRPC latency, embedded Triton on the CPU", fontsize=9)
    fig.tight_layout()
    latp = out / "latency.png"
    fig.savefig(latp, dpi=120)
    plt.close(fig)
    text = ["# BoneScan-Triton demo", "",
            "Everything below ran on this machine from `make demo`: synthetic data, training, ONNX export, "
            "the embedded Triton server and the gRPC client.", table, "",
            "Per-scan DSC convention: a negative scan scores 1 with an empty prediction and 0 with any false positive.", "",
            f"![overlays]({ov.name})", "", f"![per-scan DSC]({scatter.name})", "", f"![latency]({latp.name})", ""]
    p = out / "report.md"
    p.write_text("\n".join(text), encoding="utf-8")
    return p
