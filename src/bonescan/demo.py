"""``make demo``: the whole pipeline on the embedded synthetic data set, one step line each."""

from __future__ import annotations

import json
import time
from pathlib import Path


def step(msg: str) -> float:
    print(f"\n==> {msg}", flush=True)
    return time.perf_counter()


def run_demo(out: Path, n: int = 1000, seed: int = 0, workers: int = 2) -> int:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    t = step(f"1/2 synthesising {n} cases (seed {seed}) into {data}")
    if (data / "manifest.json").exists() and json.loads((data / "manifest.json").read_text())["generator"]["n"] == n:
        print("    already there; reusing")
    else:
        from bonescan.data.generate import generate_dataset

        stats = generate_dataset(data, n, seed, workers)
        print(json.dumps(stats, ensure_ascii=False))
    print(f"    {time.perf_counter() - t:.1f} s")
    t = step("2/2 drawing a preview of the test split")
    from bonescan.data.preview import preview

    p = preview(data, out / "preview.png", n=6, split="test")
    print(f"    wrote {p} ({time.perf_counter() - t:.1f} s)")
    return 0
