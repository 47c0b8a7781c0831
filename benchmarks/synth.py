"""``bonescan bench synth``: how long synthesising N cases takes (target: 1000 cases <= 2 min on 2 cores)."""

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
    result = {
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
    return result
