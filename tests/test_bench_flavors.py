"""bench flavors' arithmetic (issue 25, item 3): ratios and agreement against the first flavor, and a
U-Net whose INT8 graph missed its gate shown as served in fp32. The serving itself is measured by the
command (three servers one after the other: not a unit test's job)."""

from __future__ import annotations

import numpy as np

from bonescan import contract as C
from bonescan.benchmarks.flavors import _compare, flavor_table


def _row(p50: float, masks: list[np.ndarray], dsc: float) -> dict:
    levels = [{"concurrency": 1, "p50_ms": p50, "p99_ms": p50 * 1.5, "throughput_per_s": 1000 / p50, "errors": 0,
               "members": {"segmenter": {"compute_infer_ms": p50 * 0.8}, "postprocess": {"compute_infer_ms": 3.0}}}]
    return {"levels": levels, "masks": masks, "dsc": dsc}


def test_ratios_and_agreement_are_against_the_first_flavor():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[0, 0] = 1  # one pixel of 16 differs
    res = {"machine": {"cpu": "test", "cores": 2, "simd": ["avx2"], "threads_per_engine": 2, "isa_limit": None},
           "run": {"measured_at": "now", "commit": "x"}, "scans": 1, "requests_per_level": 4,
           "int8_gates": {"unet": {"served": "fp32 (INT8 missed the gate)", "passed": False, "max_delta_dsc": 0.005,
                                   "attempts": [{"scans": 1, "dsc_fp32": 0.5, "dsc_int8": 0.4, "delta_dsc": 0.1,
                                                 "mask_agreement": 0.9, "kept_fp32": {}}]}},
           "flavors": {"embedded": {C.ENSEMBLE_MODEL: _row(120.0, [a], 0.70), C.ENSEMBLE_UNET_MODEL: _row(60.0, [a], 0.6),
                                    "memory_peak_mib": 1000.0},
                       "openvino-int8": {C.ENSEMBLE_MODEL: _row(60.0, [b], 0.69), C.ENSEMBLE_UNET_MODEL: _row(60.0, [a], 0.6),
                                         "memory_peak_mib": 1100.0}}}
    _compare(res, ("embedded", "openvino-int8"))
    int8 = res["flavors"]["openvino-int8"][C.ENSEMBLE_MODEL]
    assert int8["speedup_p50_c1"] == 2.0 and int8["delta_dsc"] == 0.01
    assert int8["mask_agreement"] == round(15 / 16, 6) and "masks" not in int8
    table = flavor_table(res)
    assert "| openvino-int8 (U-Net fp32: gate) | bonescan_unet |" in table
    assert "| openvino-int8 | bonescan | 60.0 |" in table and "2.00x" in table
    assert "FAIL: fp32 (INT8 missed the gate)" in table


def test_without_a_unet_export_only_the_dual_path_ensemble_is_measured():
    a = np.zeros((4, 4), np.uint8)
    res = {"machine": {"cpu": "test", "cores": 2, "simd": ["avx2"], "threads_per_engine": 2, "isa_limit": "AVX2"},
           "run": {"measured_at": "now", "commit": "x"}, "scans": 1, "requests_per_level": 4,
           "flavors": {f: {C.ENSEMBLE_MODEL: _row(p50, [a], 0.7), "memory_peak_mib": 900.0}
                       for f, p50 in (("embedded", 100.0), ("openvino", 80.0))}}
    _compare(res, ("embedded", "openvino"))
    table = flavor_table(res)
    assert "bonescan_unet" not in table and "| openvino | bonescan | 80.0 |" in table and "1.25x" in table
    assert "oneDNN limited to AVX2" in table


def test_rounds_give_medians_and_the_median_of_per_round_ratios():
    """Three rounds where the machine slowed down in the middle one: the speed-up is the median of the
    per-round ratios (2x each round), not the ratio of the medians, and every round is kept."""
    from bonescan.benchmarks.flavors import _over_rounds

    a = np.zeros((4, 4), np.uint8)
    base = _over_rounds([{C.ENSEMBLE_MODEL: _row(p, [a], 0.7), "memory_peak_mib": 900.0} for p in (100.0, 180.0, 110.0)])
    fast = _over_rounds([{C.ENSEMBLE_MODEL: _row(p, [a], 0.7), "memory_peak_mib": m} for p, m in ((50.0, 950.0), (90.0, 990.0),
                                                                                                 (55.0, 960.0))])
    assert base[C.ENSEMBLE_MODEL]["levels"][0]["p50_ms"] == 110.0 and fast["memory_peak_mib"] == 990.0
    assert [x["p50_ms"] for x in fast[C.ENSEMBLE_MODEL]["levels"][0]["rounds"]] == [50.0, 90.0, 55.0]
    res = {"machine": {"cpu": "test", "cores": 2, "simd": ["avx2"], "threads_per_engine": 2, "isa_limit": None},
           "run": {"measured_at": "now", "commit": "x"}, "scans": 1, "requests_per_level": 4, "rounds": 3,
           "flavors": {"embedded": base, "openvino-int8": fast}}
    _compare(res, ("embedded", "openvino-int8"))
    int8 = res["flavors"]["openvino-int8"][C.ENSEMBLE_MODEL]
    assert int8["speedup_rounds"] == [2.0, 2.0, 2.0] and int8["speedup_p50_c1"] == 2.0
    table = flavor_table(res)
    assert "medians of 3 rounds" in table and "openvino-int8 bonescan: 2.00x / 2.00x / 2.00x" in table


def test_anatomy_cost_is_the_median_of_per_round_shares():
    """bench anatomy-cost's arithmetic: the share of the p50 per round, its median (not the medians' ratio),
    the per-step medians, and verdicts that fail when the share or the fail-safe's step is over its limit."""
    from bonescan.benchmarks.anatomy_cost import ARMS, cost_of, format_cost

    def level(p50: float, seg: float, post: float) -> dict:
        steps = {m: 1.0 for m in C.ENSEMBLES[C.ENSEMBLE_MODEL].models} | {"segmenter": seg, "postprocess": post}
        return {"p50_ms": p50, "p99_ms": 2 * p50, "steps_ms": steps, "dsc": 0.75}

    runs = {ARMS[0]: [level(110, 90, 7), level(200, 170, 8), level(100, 80, 7)],
            ARMS[1]: [level(100, 80, 4.8), level(150, 130, 6.0), level(90, 70, 4.7)]}
    res = cost_of(runs)
    assert res["cost_share_per_round"] == [0.0909, 0.25, 0.1] and res["cost_share"] == 0.1
    assert res["arms"][ARMS[1]]["postprocess_ms"] == 4.8 and res["arms"][ARMS[0]]["segmenter_ms"] == 90
    assert all(res["verdicts"].values())
    runs[ARMS[1]][0] = level(80, 60, 5.5)  # a slower fail-safe, and shares of 27 % and 30 %
    runs[ARMS[1]][2] = level(70, 50, 5.2)
    res = cost_of(runs)
    assert res["cost_share"] == 0.2727 and res["arms"][ARMS[1]]["postprocess_ms"] == 5.5 and not any(res["verdicts"].values())
    res |= {"machine": {"cpu": "test", "cores": 2, "simd": ["avx2"], "threads_per_engine": 2}, "flavor": "embedded",
            "scans": 8, "requests_per_round": 4, "rounds": 3, "run": {"measured_at": "now", "commit": "x"}}
    text = format_cost(res)
    assert "27.3% of the ensemble's p50" in text and "MISSES" in text and "| without anatomy | 80.0 |" in text
