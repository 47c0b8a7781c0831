"""``bonescan bench postprocess``: the fail-safe's postprocess per scan, timed in-process.

Issue 25 measured 23 ms per scan for the ``postprocess`` step in Triton's statistics (the fail-safe's
per-component Python loops). This times :func:`bonescan.postprocess.postprocess_failsafe` alone on
segmenter outputs shaped like the served ones (:func:`synthetic_outputs`: lesion-like blobs, a few
specks, the report's maps, a mix of reports the fail-safe answers differently), one scan per call as
the step gets them at c=1, with ``time.perf_counter``. The CPU model and ISA flags are printed with the
figure: it holds for this machine only, and on a machine busy with other work it is noisy (the median
of the per-scan times is reported for that reason, beside the mean).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bonescan import contract as C

#: report token stats [tokens, unknown, finding terms] and how often each comes: a read report (most),
#: no report, a report the model cannot read, a text naming no finding
STATS_MIX = (((60, 2, 3), 0.7), ((0, 0, 0), 0.1), ((60, 30, 2), 0.1), ((40, 0, 0), 0.1))


def _add_blobs(logits: np.ndarray, rng: np.random.Generator, centres: np.ndarray, sigmas: np.ndarray, amps: np.ndarray) -> None:
    """Gaussian bumps added in place, each in a window around its centre (a whole-image bump per lesion is slow)."""
    h, w = logits.shape
    for (cy, cx), s, a in zip(centres, sigmas, amps):
        r = int(3 * s) + 1
        y0, y1, x0, x1 = max(0, cy - r), min(h, cy + r + 1), max(0, cx - r), min(w, cx + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        logits[y0:y1, x0:x1] += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))


def synthetic_outputs(n: int, seed: int = 0, text_cells: tuple[int, int] = (32, 8)) -> list[tuple[np.ndarray, ...]]:
    """``n`` single-scan inputs of postprocess_failsafe: (logits, fallback_logits [1, 1, H, W], text_map
    [1, 2, h, w], text_stats [1, 3], spacing [1, 2]). The U-Net's hot spots are most of the dual-path
    answer's plus some the report explains away; small weak bumps make specks to drop."""
    rng = np.random.default_rng(seed)
    h, w = C.IMAGE_HEIGHT, C.IMAGE_WIDTH
    stats = [np.array(s, np.int32) for s, _ in STATS_MIX]
    weights = np.array([p for _, p in STATS_MIX])
    out: list[tuple[np.ndarray, ...]] = []
    for _ in range(n):
        k = int(rng.integers(3, 25))
        centres = np.stack([rng.integers(0, h, k), rng.integers(0, w, k)], axis=1)
        sigmas, amps = rng.uniform(1.0, 6.0, k), rng.uniform(4.0, 14.0, k)
        dual = np.full((h, w), -6.0, np.float32)
        unet = np.full((h, w), -6.0, np.float32)
        keep = rng.random(k) < 0.75
        _add_blobs(dual, rng, centres[keep], sigmas[keep], amps[keep])
        _add_blobs(unet, rng, centres, sigmas * rng.uniform(0.8, 1.2, k), amps)
        specks = int(rng.integers(0, 12))
        for m in (dual, unet):
            _add_blobs(m, rng, np.stack([rng.integers(0, h, specks), rng.integers(0, w, specks)], axis=1),
                       rng.uniform(0.4, 0.9, specks), rng.uniform(5.0, 8.0, specks))
        text_map = rng.normal(0.0, 2.0, (1, 2, *text_cells)).astype(np.float32)
        out.append((dual[None, None], unet[None, None], text_map, stats[rng.choice(len(stats), p=weights)][None],
                    np.array([[2.4, 2.4]], np.float32)))
    return out


def time_per_scan(fn: Callable[..., Any], scans: list[tuple[np.ndarray, ...]], settings: Any, warmup: int = 3) -> dict[str, float]:
    """``fn(*scan, settings)`` over every scan after ``warmup`` untimed calls: mean and median ms per scan."""
    for scan in scans[:warmup]:
        fn(*scan, settings)
    times = []
    for scan in scans:
        t0 = time.perf_counter()
        fn(*scan, settings)
        times.append(1e3 * (time.perf_counter() - t0))
    return {"mean_ms": round(statistics.fmean(times), 3), "median_ms": round(statistics.median(times), 3), "scans": len(times)}


def bench_postprocess(n: int = 50, seed: int = 0, reference: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The current postprocess_failsafe per scan (and ``reference``, another implementation, beside it)."""
    from bonescan.benchmarks.latency import cpu_info, run_info
    from bonescan.failsafe import FailSafeSettings
    from bonescan.postprocess import postprocess_failsafe

    scans = synthetic_outputs(n, seed)
    settings = FailSafeSettings()
    res: dict[str, Any] = {"machine": cpu_info(), **run_info(), "current": time_per_scan(postprocess_failsafe, scans, settings)}
    if reference is not None:
        res["reference"] = time_per_scan(reference, scans, settings)
    return res


def format_result(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"postprocess_failsafe per scan on {m['cpu']} ({', '.join(m['simd']) or 'no AVX2 / AVX-512 / AMX'}, "
             f"{m['cores']} cores; in-process, time.perf_counter, one scan per call; noisy on a busy machine):"]
    for key in ("reference", "current"):
        if key in res:
            r = res[key]
            lines.append(f"  {key:9s} mean {r['mean_ms']:7.2f} ms  median {r['median_ms']:7.2f} ms  ({r['scans']} scans)")
    return "\n".join(lines)
