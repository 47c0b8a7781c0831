"""Write a synthetic data set to disk (``bonescan data synth``)."""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bonescan.contract import IMAGE_HEIGHT, IMAGE_WIDTH
from bonescan.data.dataset import CaseRef, assign_splits, write_manifest
from bonescan.data.io import REGIONS_FILE, write_mask, write_png16, write_regions
from bonescan.data.synth import GENERATOR_VERSION, REPORT_TRUTH_FIELDS, SynthConfig, meta_json, synth_case


def write_case(root: Path, seed: int, index: int, cfg: SynthConfig) -> dict[str, Any]:
    """Generate and write one case; returns its summary line for the manifest statistics."""
    case = synth_case(seed, index, cfg)
    d = root / "cases" / case.case_id
    d.mkdir(parents=True, exist_ok=True)
    write_png16(d / "anterior.png", case.anterior)
    write_png16(d / "posterior.png", case.posterior)
    write_mask(d / "mask.png", case.mask)
    if case.regions is not None:  # not in manifest.json: its bytes (and hash, which results quote) stay as they were
        write_regions(d / REGIONS_FILE, case.regions)
    (d / "report.txt").write_text(case.report, encoding="utf-8")
    (d / "meta.json").write_text(meta_json(case.meta), encoding="utf-8")
    return {
        "id": case.case_id,
        "n_lesions": len(case.meta["lesions"]),
        "n_benign": len(case.meta["benign"]),
        "benign_types": sorted({b["type"] for b in case.meta["benign"]}),
        "report_chars": len(case.report),
        "report_style": case.meta["report"]["style"],
        "report_house_style": case.meta["report"]["house_style"],
        "mask_pixels": int(case.mask.sum()),
    }


def _work(args: tuple[str, int, int, dict]) -> dict[str, Any]:
    root, seed, index, cfg = args
    return write_case(Path(root), seed, index, SynthConfig(**cfg))


def generate_dataset(
    out: str | Path, n: int, seed: int = 0, workers: int = 1, progress: bool = True, cfg: SynthConfig | None = None
) -> dict[str, Any]:
    """Write n cases plus manifest.json; returns statistics. Same (n, seed) -> same bytes."""
    if n < 1:
        raise ValueError("n must be at least 1")
    cfg = cfg or SynthConfig()
    root = Path(out)
    (root / "cases").mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), seed, i, asdict(cfg)) for i in range(n)]
    t0 = time.perf_counter()
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="synthesising", unit="case")
    summaries: list[dict[str, Any]] = []
    if workers > 1:
        ctx = mp.get_context("fork")
        with ctx.Pool(workers) as pool:
            for s in pool.imap_unordered(_work, jobs, chunksize=4):
                summaries.append(s)
                if bar:
                    bar.update()
    else:
        for j in jobs:
            summaries.append(_work(j))
            if bar:
                bar.update()
    if bar:
        bar.close()
    summaries.sort(key=lambda s: s["id"])
    splits = assign_splits([s["id"] for s in summaries], seed)
    refs = [CaseRef(s["id"], splits[s["id"]], root / "cases" / s["id"]) for s in summaries]
    stats = dataset_statistics(summaries)
    write_manifest(
        root,
        refs,
        {
            "format": "bonescan-dataset/1",
            "generator": {"name": GENERATOR_VERSION, "seed": seed, "n": n, "config": _config(cfg)},
            "image_size": [IMAGE_HEIGHT, IMAGE_WIDTH],
            "conventions": {
                "views": "anterior.png and posterior.png as acquired (posterior seen from behind)",
                "mask_frame": "anterior (patient's right on the image's left)",
                "model_frame": "[anterior, posterior mirrored left-right]",
            },
            "statistics": stats,
        },
    )
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    stats["splits"] = {s: sum(1 for r in refs if r.split == s) for s in ("train", "val", "test")}
    return stats


def _config(cfg: SynthConfig) -> dict[str, Any]:
    """The generator's settings for manifest.json, without the report-truth options while they are off."""
    return {k: v for k, v in asdict(cfg).items() if k not in REPORT_TRUTH_FIELDS or v}


def dataset_statistics(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    n = len(summaries)
    les = np.array([s["n_lesions"] for s in summaries])
    chars = np.array([s["report_chars"] for s in summaries])
    benign_types: dict[str, int] = {}
    for s in summaries:
        for t in s["benign_types"]:
            benign_types[t] = benign_types.get(t, 0) + 1
    styles: dict[str, int] = {}
    house_styles: dict[str, int] = {}
    for s in summaries:
        styles[s["report_style"]] = styles.get(s["report_style"], 0) + 1
        house_styles[s["report_house_style"]] = house_styles.get(s["report_house_style"], 0) + 1
    return {
        "cases": n,
        "lesions_per_scan_mean": round(float(les.mean()), 3),
        "lesions_per_scan_max": int(les.max()),
        "negative_share": round(float((les == 0).mean()), 3),
        "benign_mimic_share": round(float(np.mean([s["n_benign"] > 0 for s in summaries])), 3),
        "negative_with_mimic_share": round(float(np.mean([(s["n_lesions"] == 0) and s["n_benign"] > 0 for s in summaries])), 3),
        "scans_with_benign_type": dict(sorted(benign_types.items())),
        "report_style": dict(sorted(styles.items())),
        "report_house_style": dict(sorted(house_styles.items())),
        "report_chars_mean": round(float(chars.mean()), 1),
        "report_chars_p5_p95": [int(np.percentile(chars, 5)), int(np.percentile(chars, 95))],
        "mask_pixels_mean": round(float(np.mean([s["mask_pixels"] for s in summaries])), 1),
    }
