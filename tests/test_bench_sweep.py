"""bench sweep (issue 25, item 4): the Pareto front and the best point under a budget, the grid's
checks, and one configuration served for real, measured by perf_analyzer, whose printed
`bonescan repo build` line rebuilds the very repository that was measured."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from bonescan.benchmarks.sweep import Point, best_under, grid, pareto_front, sweep_table
from bonescan.errors import BonescanError


def _r(name: str, c: int, tput: float, p99: float) -> dict:
    return {"name": name, "concurrency": c, "throughput_per_s": tput, "p50_ms": p99 * 0.7, "p99_ms": p99}


def test_pareto_front_and_the_best_under_a_budget():
    rows = [_r("a", 1, 8.0, 130.0), _r("a", 4, 12.0, 400.0), _r("b", 1, 7.0, 150.0),  # b@1 is beaten by a@1
            _r("b", 4, 14.0, 520.0), _r("c", 2, 11.0, 260.0)]
    front = [(r["name"], r["concurrency"]) for r in pareto_front(rows)]
    assert front == [("a", 1), ("c", 2), ("a", 4), ("b", 4)]
    assert best_under(rows, 300.0)["name"] == "c"
    assert best_under(rows, None)["name"] == "b"
    assert best_under(rows, 100.0) is None


def test_grid_refuses_what_cannot_be_served():
    assert len(grid(("embedded", "openvino"), (1, 2), (1,), (1, 4))) == 8
    with pytest.raises(BonescanError, match="unknown flavor tensorrt"):
        grid(("tensorrt",), (1,), (1,), (1,))
    with pytest.raises(BonescanError, match="--threads"):
        grid(("embedded",), (1,), (0,), (1,))
    cmd = Point("openvino-int8", 2, 1, 4).build_command(Path("E"), None, Path("E8"))
    assert cmd == "bonescan repo build --from E8 --flavor openvino --instances 2 --threads 1 --max-batch-size 4 --out REPO"


def test_table_marks_the_front_and_names_the_command():
    res = {"machine": {"cpu": "test", "cores": 2, "simd": ["avx2"], "isa_limit": None}, "run": {"measured_at": "now", "commit": "x"},
           "model": "bonescan", "scans": 2, "concurrency": [1, 4], "measurement_ms": 1000, "p99_budget_ms": 300.0,
           "points": [{"name": "embedded_i1_t2_b1", "flavor": "embedded", "instances": 1, "threads": 2, "max_batch": 1,
                       "build_command": "bonescan repo build --from E --flavor embedded --instances 1 --threads 2 --max-batch-size 1 --out REPO",
                       "rows": [_r("embedded_i1_t2_b1", 1, 8.0, 130.0), _r("embedded_i1_t2_b1", 4, 12.0, 290.0)],
                       "memory_peak_mib": 900.0, "ready_s": 5.0, "scaling": 1.5}]}
    from bonescan.benchmarks.sweep import _summarise

    _summarise(res)
    table = sweep_table(res)
    assert "8.00, 91 / 130 *" in table and "1.50x" in table
    assert "Highest throughput with p99 <= 300 ms: embedded_i1_t2_b1 at concurrency 4" in table
    assert "--max-batch-size 1 --out REPO`" in table


def _configs(repo: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in sorted(repo.glob("*/config.pbtxt"))}


def test_one_point_served_and_its_build_command_rebuilds_it(exports: dict[str, Path], dataset: Path, work: Path):
    from bonescan.benchmarks.sweep import bench_sweep
    from bonescan.cli import main

    out = work / "sweep"
    res = bench_sweep(exports["dualpath"], dataset, out, flavors=("embedded",), instances=(2,), threads=(1,), max_batch=(1,),
                      concurrency=(1,), n_cases=2, measurement_ms=1000, keep_repos=True)
    (point,) = res["points"]
    assert "error" not in point, point.get("error")
    (row,) = point["rows"]
    assert row["concurrency"] == 1 and row["throughput_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert res["machine"]["cpu"] and res["machine"]["simd"]
    assert (out / "pareto.png").stat().st_size > 0 and "Lowest latency at c=1: embedded_i2_t1_b1" in (out / "sweep.md").read_text()
    measured = _configs(out / "repos" / point["name"])
    assert "count: 2" in measured["segmenter"] and "max_batch_size: 1" in measured["segmenter"]
    rebuilt = work / "sweep_rebuilt"
    argv = shlex.split(point["build_command"].replace("REPO", str(rebuilt)))[1:]
    assert main(argv) == 0
    assert _configs(rebuilt) == measured
