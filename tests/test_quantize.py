"""``bonescan export quantize`` (issue 25, item 2) on the tiny session models: an INT8 export folder that
``repo build --flavor openvino`` takes, and a gate that fails when it should.

The tiny models are barely trained (12 steps), so the test relaxes the gate for the passing run; the
failing run asks for the impossible (DSC must rise by 1) and must exit non-zero.
"""

from __future__ import annotations

import json

import onnx

from bonescan import contract as C
from bonescan.cli import main


def _args(exports, dataset, out, *extra: str) -> list[str]:
    return ["export", "quantize", "--export", str(exports["dualpath"]), "--data", str(dataset), "--out", str(out),
            "--calibration-cases", "6", *extra]


def test_quantize_writes_an_export_folder_that_repo_build_takes(exports, dataset, work, capsys):
    from bonescan.export.onnx_export import read_description, sha256
    from bonescan.serving.repository import RepoOptions, build_repository

    out = work / "export_int8"
    assert main(_args(exports, dataset, out, "--max-delta-dsc", "0.05")) == 0
    text = capsys.readouterr().out
    assert "mask agreement" in text and "gate passed" in text
    desc = read_description(out)
    seg = desc["graphs"][C.SEGMENTER_GRAPH.export_name]
    assert seg["sha256"] == sha256(out / C.SEGMENTER_GRAPH.onnx_file)
    assert desc["quantization"]["passed"] and desc["quantization"]["calibration"].startswith("train split")
    ops = {n.op_type for n in onnx.load(str(out / C.SEGMENTER_GRAPH.onnx_file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the text encoder and the tokenizer come over as they were
    assert sha256(out / C.TEXT_ENCODER_GRAPH.onnx_file) == sha256(exports["dualpath"] / C.TEXT_ENCODER_GRAPH.onnx_file)
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    repo = work / "repo_openvino_int8"
    build_repository(out, repo, RepoOptions(flavor="openvino", warmup=False))
    assert (repo / "segmenter" / "1" / "model.onnx").read_bytes() == (out / C.SEGMENTER_GRAPH.onnx_file).read_bytes()


def test_quantize_gate_fails_when_it_should(exports, dataset, work, capsys):
    """An impossible gate: exit 1, both tries shown, the second keeping the attention and the heads fp32."""
    out = work / "export_int8_fail"
    assert main(_args(exports, dataset, out, "--max-delta-dsc", "-1")) == 1
    text = capsys.readouterr().out
    assert "gate FAILED" in text and text.count("-> FAIL") == 2
    info = json.loads((out / "model.json").read_text(encoding="utf-8"))["quantization"]
    assert not info["passed"] and len(info["attempts"]) == 2
    kept = info["attempts"][1]["kept_fp32"]
    assert {"MatMul", "Softmax"} <= set(kept["types"]) and kept["names"]


def test_the_gate_can_be_scored_as_on_an_avx2_cpu(exports, dataset, work, capsys):
    """--isa avx2: the gate runs in a child process with ONEDNN_MAX_CPU_ISA=AVX2 and says so."""
    out = work / "export_int8_avx2"
    assert main(_args(exports, dataset, out, "--max-delta-dsc", "0.05", "--isa", "avx2")) == 0
    text = capsys.readouterr().out
    assert "scored on ISA AVX2 (ONEDNN_MAX_CPU_ISA)" in text
    info = json.loads((out / "model.json").read_text(encoding="utf-8"))["quantization"]
    assert info["gate_isa"] == "AVX2 (ONEDNN_MAX_CPU_ISA)" and info["attempts"]
