"""`make demo` fails (exit code 1, "FAILED: ..." lines) when a check it prints fails."""

from __future__ import annotations

import copy

import pytest

from bonescan.benchmarks.demo import demo_checks, finish
from bonescan.export.parity import MAX_LOGIT_DIFF, MIN_MASK_DSC

N = 200


def passing() -> dict:
    """The checks' inputs as a good demo run leaves them."""
    parity = {k: {"max_abs_logit_diff": d, "mean_mask_dsc": 1.0, "ok": True, "batch_consistency_max_diff": {"1": 0.0},
                  "targets": {"max_abs_logit_diff": MAX_LOGIT_DIFF, "mean_mask_dsc": MIN_MASK_DSC}}
              for k, d in (("unet", 3.9e-5), ("dualpath", 3.5e-4))}
    results = {k: {"triton": {"dsc": {"mean": m}}, "pytorch": {"dsc": {"mean": m}}, "identical": N}
               for k, m in (("unet", 0.5481), ("dualpath", 0.7038))}
    results["unet_short"] = {"pytorch": {"dsc": {"mean": 0.51}}}  # the shorter U-Net: a row of its own, no Triton parity
    lat = {k: {c: {"errors": 0, "p50_ms": 60.0} for c in (1, 4)} for k in ("unet", "dualpath")}
    return {"lint": {"unet": {"ok": True, "graphs": {}}, "dualpath": {"ok": True, "graphs": {}}}, "parity": parity,
            "results": results, "lat": lat, "request_errors": {"unet": [], "dualpath": []}, "n": N}


def broken(what: str) -> dict:
    a = copy.deepcopy(passing())
    if what == "lint":
        a["lint"]["dualpath"] = {"ok": False, "graphs": {"segmenter": ["node 'up' (Resize): mode 'cubic' unsupported"]}}
    elif what == "logit diff":
        a["parity"]["dualpath"].update(max_abs_logit_diff=2.5e-3, ok=False)
    elif what == "mask DSC":
        a["parity"]["unet"].update(mean_mask_dsc=0.98, ok=False)
    elif what == "delta DSC":
        a["results"]["dualpath"]["triton"]["dsc"]["mean"] = 0.7031
    elif what == "identical":
        a["results"]["unet"]["identical"] = N - 1
    elif what == "latency errors":
        a["lat"]["dualpath"][4]["errors"] = 2
    elif what == "request errors":
        a["request_errors"]["unet"] = ["case0007: server refused the request: IMAGE contains NaN or infinite values"]
    return a


def test_a_good_run_passes(capsys):
    assert demo_checks(**passing()) == []
    assert finish([]) == 0
    assert "FAILED" not in capsys.readouterr().out


@pytest.mark.parametrize("what, words", [
    ("lint", "dualpath: TensorRT lint"),
    ("logit diff", "dualpath: ONNX vs PyTorch max |logit diff| 2.50e-03 > target 1e-03"),
    ("mask DSC", "unet: ONNX vs PyTorch mean mask DSC 0.98000 < target 0.999"),
    ("delta DSC", "dualpath: delta DSC Triton - PyTorch -0.000700 (target 0)"),
    ("identical", "unet: 199/200 masks from Triton identical to PyTorch's"),
    ("latency errors", "dualpath: 2 request errors in the latency run at concurrency 4"),
    ("request errors", "unet: 1 of 200 segmentation requests failed"),
])
def test_a_failed_check_makes_the_demo_fail(what, words, capsys):
    fails = demo_checks(**broken(what))
    assert len(fails) == 1 and words in fails[0], fails
    assert finish(fails) == 1
    out = capsys.readouterr().out
    assert f"FAILED: {fails[0]}" in out.splitlines()


def test_the_parity_target_is_the_one_check_parity_reports():
    """A tighter target in the parity result (as check_parity writes it) fails the demo's good run."""
    a = passing()
    a["parity"]["dualpath"]["targets"]["max_abs_logit_diff"] = 1e-4
    fails = demo_checks(**a)
    assert fails == ["dualpath: ONNX vs PyTorch max |logit diff| 3.50e-04 > target 1e-04"]


def test_the_fastest_flavor_rows_show_int8_only_when_its_gate_passed():
    from bonescan.benchmarks.demo import flavor_rows

    row = lambda p50, tput: {"p50_ms": p50, "throughput_per_s": tput, "errors": 0}  # noqa: E731
    lat = {"dualpath": {1: row(104.0, 9.0), 4: row(410.0, 9.7)}, "dualpath_openvino_int8": {1: row(65.0, 15.0), 4: row(240.0, 16.4)}}
    gate = {"isa": ["avx2", "avx512_vnni"], "dsc_fp32": 0.7448, "dsc_int8": 0.7446, "delta_dsc": 0.0002, "scans": 160,
            "mask_agreement": 0.99998, "gate_passed": True}
    text = flavor_rows(lat, gate)
    assert "| openvino-int8 | 65 | 240 | 16.4 | 1.60x | 0.7448 -> 0.7446 (delta +0.0002, 160 scans" in text
    assert "ISA avx2 avx512_vnni" in text
    del lat["dualpath_openvino_int8"]
    text = flavor_rows(lat, {**gate, "gate_passed": False, "delta_dsc": 0.04, "dsc_int8": 0.7048})
    assert "not served: missed its gate" in text and "delta +0.0400" in text
