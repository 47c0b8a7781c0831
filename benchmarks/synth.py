"""``bonescan bench synth``: how long synthesising N cases takes (target: 1000 cases <= 2 min on 2 cores), and
how many text-only reports a second one core writes for pretraining (target: >= 2000 a second;
``data.corpus.report_corpus``, written fresh every pretraining step)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from bonescan.data.generate import generate_dataset


def bench_synth(n: int = 1000, workers: int = 2, out: Path | None = None) -> dict:
    tmp = None
    if out is None:
        tmp = tempfile.mkdtemp(prefix="bonescan-synth-")
        out = Path(tmp)
    try:
        stats = generate_dataset(out, n, seed=0, workers=workers, progress=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    from bonescan.benchmarks.latency import cpu_info, run_info

    rates = corpus_rates()
    result = {
        "run": run_info(),
        "machine": cpu_info(),
        "corpus_reports_per_second": rates,
        "corpus_target_per_second": 2000,
        "cases": n,
        "workers": workers,
        "cpu_count": os.cpu_count(),
        "seconds": stats["seconds"],
        "cases_per_second": round(n / stats["seconds"], 2),
        "seconds_per_1000": round(stats["seconds"] / n * 1000, 1),
        "target_seconds_per_1000": 120,
        "statistics": {k: v for k, v in stats.items() if k not in ("seconds",)},
    }
    print(json.dumps(result, ensure_ascii=False, indent=1))
    verdict = "meets" if result["seconds_per_1000"] <= 120 else "MISSES"
    print(f"synthesis: {result['seconds_per_1000']} s per 1000 cases with {workers} workers ({verdict} the 120 s target)")
    best = max(rates)
    print(f"text-only reports: {best:.0f} a second on one core, best of {len(rates)} runs of 2000 "
          f"({'meets' if best >= 2000 else 'MISSES'} the 2000 / s target)")
    return result


def corpus_rates(n: int = 2000, runs: int = 3) -> list[float]:
    """Reports a second of ``report_corpus`` (one process), per run of ``n`` after a warm-up."""
    import time

    from bonescan.data.corpus import report_corpus

    report_corpus(200, 0)  # warm up (template cache)
    rates = []
    for k in range(runs):
        t0 = time.perf_counter()
        report_corpus(n, 100 + k)
        rates.append(round(n / (time.perf_counter() - t0), 1))
    return rates
