"""`bench latency`'s compute ceiling and machine record, without a server."""

from __future__ import annotations

from pathlib import Path

from bonescan.benchmarks.latency import (
    TARGETS,
    best_of,
    compute_ceiling,
    cpu_info,
    model_convs,
    ratios,
    verdicts,
)
from bonescan.data.dataset import BoneScanDataset
from bonescan.model.checkpoint import Predictor


def test_cpu_info_reads_model_name_and_isa_flags(tmp_path: Path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma avx512f\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 fma avx512f\n")
    info = cpu_info(str(fake))
    assert info["cpu"] == "AMD EPYC 7B13"
    assert info["isa"] == {"avx2": True, "fma": True, "avx512f": True, "avx512_vnni": False, "avx512_bf16": False,
                           "amx_tile": False, "amx_int8": False}
    assert cpu_info()["cpu"] != "unknown"  # this machine's /proc/cpuinfo


def test_compute_ceiling_is_the_best_of_its_microbenchmarks(checkpoints, dataset):
    pred = Predictor(checkpoints["dualpath"], threads=2)
    s = BoneScanDataset(dataset, "test")[0]
    convs = model_convs(pred, s.image, s.report, top=2)
    assert len(convs) == 2 and convs[0]["flops"] * convs[0]["count"] >= convs[1]["flops"] * convs[1]["count"]
    assert all(c["flops"] > 0 and len(c["hw"]) == 2 for c in convs)
    ceil = compute_ceiling(2, convs, seconds=0.05, gemms=((256, 256, 256),))
    rows = ceil["microbenchmarks"]
    assert {(r["op"], r["engine"]) for r in rows} == {(op, e) for op in ("gemm", "conv") for e in ("torch", "onnxruntime")}
    assert len(rows) == 2 * (1 + len(convs)) and all(r["gflops"] > 0 for r in rows)
    assert ceil["gflops"] == max(r["gflops"] for r in rows) and ceil["threads"] == 2


def test_the_ceiling_keeps_each_microbenchmark_at_its_best_pass():
    def ceiling(gemm: float, conv: float) -> dict:
        rows = [{"op": "gemm", "engine": "torch", "shape": "2x2 @ 2x2", "gflops": gemm},
                {"op": "conv", "engine": "onnxruntime", "shape": "16to16", "gflops": conv}]
        return {"gflops": max(gemm, conv), "threads": 2, "seconds_per_microbenchmark": 1.0, "microbenchmarks": rows}

    busy, quiet = ceiling(gemm=30.0, conv=50.0), ceiling(gemm=90.0, conv=40.0)  # the machine got quieter
    both = best_of(busy, quiet)
    assert both["gflops"] == 90.0 and both["best"] == "gemm 2x2 @ 2x2 (torch)"
    assert [(r["gflops"], r["passes"]) for r in both["microbenchmarks"]] == [(90.0, [30.0, 90.0]), (50.0, [50.0, 40.0])]


def _result(triton_p50_ms: float, flops: float, ceiling_gflops: float) -> dict:
    row = {"concurrency": 1, "p50_ms": triton_p50_ms, "throughput_per_s": 1000 / triton_p50_ms, "errors": 0}
    return {"triton": [row], "onnxruntime": {"p50_ms": triton_p50_ms}, "pytorch": {"p50_ms": 2 * triton_p50_ms},
            "flops_per_scan": {"total": flops}, "compute_ceiling": {"gflops": ceiling_gflops}, "targets": TARGETS["paper"]}


def test_efficiency_above_its_ceiling_fails_the_run():
    ok = _result(triton_p50_ms=100.0, flops=8e9, ceiling_gflops=100.0)  # 80 GFLOP/s against a 100 GFLOP/s ceiling
    ok["ratios"] = ratios(ok)
    assert ok["ratios"]["compute_efficiency"] == 0.8 and verdicts(ok)["ceiling_holds"]
    beaten = _result(triton_p50_ms=100.0, flops=12e9, ceiling_gflops=100.0)  # the model beat every microbenchmark
    beaten["ratios"] = ratios(beaten)
    assert beaten["ratios"]["compute_efficiency"] == 1.2 and not verdicts(beaten)["ceiling_holds"]


def test_reports_say_when_where_and_how_they_were_measured(tmp_path: Path):
    from bonescan.benchmarks.latency import run_info
    from bonescan.benchmarks.report import provenance, write_fault_report

    run = run_info()
    assert run["commit"] and run["measured_at"].endswith("UTC")
    res = {"requests": 3, "lost": 0, "machine": cpu_info(), "run": {**run, "command": "bonescan bench kill --requests 3"}}
    line = provenance(res)
    assert line.startswith(f"Measured {run['measured_at']} by `bonescan bench kill --requests 3` on {res['machine']['cpu']}")
    md = write_fault_report("kill", res, tmp_path, "kill/restart: 3 requests").read_text()
    assert line in md and "| lost | 0 |" in md


def test_the_serving_tax_is_measured_against_the_served_runtime(exports, tmp_path: Path):
    """An openvino repository is compared with OpenVINO in-process, and must serve --export's graph."""
    import pytest

    from bonescan.benchmarks.latency import check_repo_serves, served_runtime
    from bonescan.errors import BonescanError
    from bonescan.serving.repository import RepoOptions, build_repository

    repo = tmp_path / "repo_ov"
    build_repository(exports["dualpath"], repo, RepoOptions(flavor="openvino", warmup=False))
    assert served_runtime(repo) == "openvino" and served_runtime(None) == "onnxruntime"
    check_repo_serves(repo, exports["dualpath"])  # the same graph: no error
    (repo / "segmenter" / "1" / "model.onnx").write_bytes(b"another graph")
    with pytest.raises(BonescanError, match="another segmenter graph"):
        check_repo_serves(repo, exports["dualpath"])
    res = _result(triton_p50_ms=100.0, flops=8e9, ceiling_gflops=100.0)
    res["same_runtime"] = {"p50_ms": 80.0}  # OpenVINO in-process, faster than onnxruntime's 100 ms
    r = ratios(res)
    assert r["triton_c1_p50_over_onnxruntime_p50"] == 1.0 and r["triton_c1_p50_over_same_runtime_p50"] == 1.25
    res["ratios"] = r
    assert not verdicts(res)["serving_overhead"]  # 1.25 > 1.10: measured against the served runtime, it fails
