"""demo_out/report.md: the demo's table, overlays a person can read, and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pick(samples: list, served: dict[str, list]) -> list[int]:
    """Two scans with metastases where the report helped most, one typical one, one negative study."""
    from bonescan.metrics import scan_metrics

    d_u = [scan_metrics(served["unet"][i].mask, s.mask)["dsc"] for i, s in enumerate(samples)]
    d_d = [scan_metrics(served["dualpath"][i].mask, s.mask)["dsc"] for i, s in enumerate(samples)]
    pos = [i for i, s in enumerate(samples) if s.mask.any()]
    neg = [i for i, s in enumerate(samples) if not s.mask.any()]
    helped = sorted(pos, key=lambda i: d_d[i] - d_u[i], reverse=True)[:2]
    typical = sorted((i for i in pos if i not in helped), key=lambda i: abs(d_d[i] - float(np.median([d_d[j] for j in pos]))))[:1]
    neg_helped = sorted(neg, key=lambda i: d_d[i] - d_u[i], reverse=True)[:1]
    return helped + typical + neg_helped


def overlays(out: Path, samples: list, served: dict[str, list], idx: list[int]) -> Path:
    from bonescan import viz
    from bonescan.contract import from_model_frame
    from bonescan.metrics import scan_metrics

    viz.use_agg()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(idx), 4, figsize=(9, 5.6 * len(idx)), gridspec_kw={"width_ratios": [1, 1, 1, 1.3]}, squeeze=False)
    for row, i in zip(axes, idx):
        s = samples[i]
        ant, _ = from_model_frame(s.image)
        y0, y1 = viz.body_rows(ant)
        for ax, (title, mask, color) in zip(row[:3], ((f"{s.case_id}\ntruth", s.mask, "lime"),
                                                       ("U-Net", served["unet"][i].mask, "tab:blue"),
                                                       ("dual-path", served["dualpath"][i].mask, "red"))):
            d = "" if mask is s.mask else f"\nDSC {scan_metrics(mask, s.mask)['dsc']:.2f}"
            viz.show_view(ax, ant[y0:y1], f"{title}{d}")
            viz.overlay_mask(ax, mask[y0:y1], color)
        # the served answer's lesions named by their bone (the anatomy output), beside the dual-path panel
        for les in served["dualpath"][i].lesions[:8]:
            site = les.get("site") or {}
            if site.get("region") and site["region"] != "background":
                by0, bx0, by1, bx1 = les["bbox"]
                flag = {"not_in_report": "?", "called_benign": " (benign?)"}.get(les.get("second_reader", ""), "")
                row[2].annotate(f"{site['region']}{flag}", (bx1, by0 - y0), xytext=(3, 0), textcoords="offset points",
                                fontsize=5.5, color="darkred")
        viz.text_panel(row[3], s.report, width=24, fontsize=7)
    fig.suptitle("anterior views; outlines: green = truth, blue = U-Net, red = dual-path (masks served by Triton);\n"
                 "dual-path lesions named by bone (? = not in the report; benign? = where the report calls it benign)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.978))
    p = out / "overlays.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def anatomy_section(samples: list, served: dict[str, list], idx: list[int]) -> list[str]:
    """report.md's table of where and how much: each shown scan's served lesions named by bone, its Bone Scan
    Index served and true (true mask on the true label map), Soloway's grade and the second reader's flags."""
    from bonescan.anatomy import bone_burden
    from bonescan.components import components
    from bonescan.report_sites import FLAG_CONFIDENCE

    rows = ["| scan | lesions named by bone (served, dual-path ensemble) | BSI served | BSI true | Soloway | second reader |",
            "|---|---|---|---|---|---|"]
    for i in idx:
        s, r = samples[i], served["dualpath"][i]
        names = "; ".join(f"{les['site']['name_en']} / {les['site']['name_zh']}" for les in r.lesions[:6] if les.get("site")) or "none"
        if len(r.lesions) > 6:
            names += f"; +{len(r.lesions) - 6} more"
        true_bsi = "n/a"
        if getattr(s, "regions", None) is not None:
            c = components(s.mask > 0)
            true_bsi = f"{bone_burden(c.labels, c.n, s.regions).bsi:.2f} %"
        a = r.anatomy or {}
        missed = sum(1 for les in r.lesions if les.get("second_reader") == "not_in_report")
        benign = sum(1 for les in r.lesions if les.get("second_reader") == "called_benign")
        unseen = [x["site"] for x in (r.report_sites or []) if x["flag"] == "not_found"]
        flags = (f"{missed} lesion(s) not in the report" if missed else "no confident lesion outside the report") + (
            f"; {benign} where the report calls it benign" if benign else "") + (
            f"; report sites not found: {', '.join(unseen)}" if unseen else "; every report site found")
        left = f" ({a['bsi_left_out']} left out: report says benign)" if a.get("bsi_left_out") else ""
        rows.append(f"| {s.case_id} | {names} | {a.get('bsi', float('nan')):.2f} %{left} | {true_bsi} | {a.get('eod', '-')} | {flags} |")
    return ["## Where, and how much", "",
            "Each lesion is named by the skeleton region holding most of it in the U-Net's anatomy output (the clearer "
            "view deciding; where the lesion also lies on a bone the report names itself, that one); "
            "the Bone Scan Index is the lesions' share of each region's pixels weighted by the region's "
            "share of the skeletal mass (`bonescan.anatomy`), the true one from the true mask and label map; the served one "
            "leaves out the lesions at bones the report calls benign and names as no metastasis. The second "
            "reader matches the report's named metastatic sites with the lesions' regions (`bonescan.report_sites`): a "
            "lesion outside them is flagged only when the model is sure of it (mean probability >= "
            f"{FLAG_CONFIDENCE:g}) and the report does not call its bone benign (degenerative, old fracture ...). "
            "Computed from a 2-D atlas on synthetic scans: a check of this code, not a validated clinical measurement.", "",
            *rows, ""]


def write_demo_report(out: Path, samples: list, served: dict[str, list], results: dict[str, Any], lat: dict[str, Any], table: str,
                      froc_png: Path | None = None) -> Path:
    from bonescan import viz

    viz.use_agg()
    import matplotlib.pyplot as plt

    picked = _pick(samples, served)
    ov = overlays(out, samples, served, picked)
    # DSC per scan, both models
    from bonescan.metrics import scan_metrics

    d_u = [scan_metrics(r.mask, s.mask)["dsc"] for r, s in zip(served["unet"], samples)]
    d_d = [scan_metrics(r.mask, s.mask)["dsc"] for r, s in zip(served["dualpath"], samples)]
    fig, ax = plt.subplots(figsize=(4.2, 4))
    neg = np.array([not s.mask.any() for s in samples])
    ax.scatter(np.array(d_u)[~neg], np.array(d_d)[~neg], s=9, label="scans with metastases")
    ax.scatter(np.array(d_u)[neg], np.array(d_d)[neg], s=9, marker="x", color="tab:red", label="negative scans (counts)")
    for (xu, xd) in {(float(a), float(b)) for a, b in zip(np.array(d_u)[neg], np.array(d_d)[neg])}:
        n = int(sum(1 for a, b in zip(np.array(d_u)[neg], np.array(d_d)[neg]) if (a, b) == (xu, xd)))
        ax.annotate(str(n), (xu, xd), textcoords="offset points", xytext=(6, -10 if xd > 0.5 else 4), fontsize=7, color="tab:red")
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
            "Lesion detection: FROC curve = lesion sensitivity against false positives per scan over all score levels "
            "(candidates: connected components of the probability map at 0.1, scored by their highest probability); "
            "CPM = its mean sensitivity at 1/8 ... 8 false positives per scan; the margin is the served answer's "
            "sensitivity minus the same-budget U-Net's curve at the served answer's false positives per scan.", "",
            *([f"![FROC]({froc_png.name})", ""] if froc_png else []),
            f"![overlays]({ov.name})", "", *anatomy_section(samples, served, picked),
            f"![per-scan DSC]({scatter.name})", "", f"![latency]({latp.name})", ""]
    p = out / "report.md"
    p.write_text("\n".join(text), encoding="utf-8")
    return p
