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


def _weight_range(path) -> int:
    """The largest |int8 weight| of a QDQ graph (the int8 initializers DequantizeLinear reads)."""
    import numpy as np
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    reads = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return max(int(np.abs(numpy_helper.to_array(inits[k]).astype(np.int16)).max()) for k in reads & set(inits))


def test_int8_saturates_without_vnni():
    from bonescan.export.quantize import int8_saturates

    assert int8_saturates("AVX2") and int8_saturates("avx512_core") and int8_saturates("SSE41")
    assert not int8_saturates("AVX512_CORE_VNNI") and not int8_saturates("AVX512_CORE_BF16") and not int8_saturates("AVX2_VNNI")
    assert not int8_saturates("AVX512_CORE_AMX")
    assert int8_saturates("", ["avx2", "fma", "avx512f"]) and not int8_saturates("", ["avx2", "avx512f", "avx512_vnni"])
    assert not int8_saturates("ALL", ["avx2", "amx_int8"])


def test_quantize_writes_an_export_folder_that_repo_build_takes(exports, dataset, work, capsys):
    from bonescan.export.onnx_export import read_description, sha256
    from bonescan.serving.repository import RepoOptions, build_repository

    out = work / "export_int8"
    assert main(_args(exports, dataset, out, "--max-delta-dsc", "0.05", "--weight-bits", "8")) == 0
    text = capsys.readouterr().out
    assert "mask agreement" in text and "gate passed" in text
    desc = read_description(out)
    seg = desc["graphs"][C.SEGMENTER_GRAPH.export_name]
    assert seg["sha256"] == sha256(out / C.SEGMENTER_GRAPH.onnx_file)
    assert desc["quantization"]["passed"] and desc["quantization"]["calibration"].startswith("train split")
    ops = {n.op_type for n in onnx.load(str(out / C.SEGMENTER_GRAPH.onnx_file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert desc["quantization"]["weight_bits"] == 8 and _weight_range(out / C.SEGMENTER_GRAPH.onnx_file) == 127
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
    """--isa avx2: the gate runs in a child process with ONEDNN_MAX_CPU_ISA=AVX2 and says so, and the weights
    are 7-bit (AVX2's u8 x s8 pair products would saturate with 8-bit ones)."""
    out = work / "export_int8_avx2"
    assert main(_args(exports, dataset, out, "--max-delta-dsc", "0.05", "--isa", "avx2")) == 0
    text = capsys.readouterr().out
    assert "scored on ISA AVX2 (ONEDNN_MAX_CPU_ISA)" in text
    info = json.loads((out / "model.json").read_text(encoding="utf-8"))["quantization"]
    assert info["gate_isa"] == "AVX2 (ONEDNN_MAX_CPU_ISA)" and info["attempts"]
    assert info["weight_bits"] == 7 and "7-bit weights" in text
    assert _weight_range(out / C.SEGMENTER_GRAPH.onnx_file) <= 64


def test_the_text_encoder_can_be_quantized_too(exports, dataset, work, capsys):
    """--text-encoder: the text encoder's graph gets QDQ MatMuls, model.json describes both new graphs."""
    from bonescan.export.onnx_export import read_description, sha256

    out = work / "export_int8_text"
    assert main(_args(exports, dataset, out, "--max-delta-dsc", "0.05", "--text-encoder")) == 0
    assert "INT8 segmenter + text_encoder" in capsys.readouterr().out
    desc = read_description(out)
    for graph in (C.SEGMENTER_GRAPH, C.TEXT_ENCODER_GRAPH):
        assert desc["graphs"][graph.export_name]["sha256"] == sha256(out / graph.onnx_file)
    text = onnx.load(str(out / C.TEXT_ENCODER_GRAPH.onnx_file))
    assert any(n.op_type == "DequantizeLinear" for n in text.graph.node)
    assert desc["quantization"]["graphs"] == [C.SEGMENTER_GRAPH.export_name, C.TEXT_ENCODER_GRAPH.export_name]
