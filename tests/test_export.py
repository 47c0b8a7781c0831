"""ONNX export, parity with PyTorch, the TensorRT-compatibility lint, engine version checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bonescan import contract as C
from bonescan.errors import BonescanError
from bonescan.export.onnx_export import read_description
from bonescan.export.parity import check_parity
from bonescan.export.trt import TRITON_TENSORRT, check_engine_version, export_trt, profile_shapes, require_gpu
from bonescan.export.trt_compat import check_export, check_model
from bonescan.serving.ort_pipeline import OrtPipeline


def _tensorrt_and_gpu() -> bool:
    """TensorRT imports and nvidia-smi lists a GPU: the engine-building path can run here."""
    try:
        require_gpu()
    except BonescanError:
        return False
    return True


GPU = _tensorrt_and_gpu()


def test_export_writes_graphs_and_description(exports):
    d = read_description(exports["dualpath"])
    te, seg = d["graphs"]["text_encoder"], d["graphs"]["segmenter"]
    assert [i["name"] for i in te["inputs"]] == ["input_ids", "attention_mask"]
    assert te["inputs"][0]["dtype"] == "int32" and te["inputs"][0]["shape"] == ["batch", "tokens"]
    assert seg["inputs"][0] == {"name": "image", "dtype": "float32", "shape": ["batch", *C.IMAGE_DIMS]}
    assert seg["inputs"][1]["shape"] == ["batch", "tokens", d["text_hidden"]]
    assert seg["outputs"][0]["shape"] == ["batch", 1, C.IMAGE_HEIGHT, C.IMAGE_WIDTH]
    assert (exports["dualpath"] / "tokenizer" / "tokenizer.json").is_file()
    for p in exports["dualpath"].glob("*.onnx"):
        m = onnx.load(str(p))
        onnx.checker.check_model(m, full_check=True)
    u = read_description(exports["unet"])
    assert list(u["graphs"]) == ["segmenter"] and [i["name"] for i in u["graphs"]["segmenter"]["inputs"]] == ["image"]


def test_exported_graphs_are_simplified(checkpoints, exports, tmp_path):
    """onnxslim ran: no Identity nodes and no Constant nodes (folded into initializers) are left, and
    the U-Net's graph has fewer nodes than the same checkpoint exported without simplification."""
    from bonescan.export.onnx_export import export_onnx

    for m in ("dualpath", "unet"):
        for p in exports[m].glob("*.onnx"):
            ops = {n.op_type for n in onnx.load(str(p)).graph.node}
            assert not ops & {"Identity", "Constant"}, f"{m}/{p.name}: {sorted(ops & {'Identity', 'Constant'})} left"
    export_onnx(checkpoints["unet"], tmp_path / "raw", simplify_graphs=False)
    raw = onnx.load(str(tmp_path / "raw" / "segmenter.onnx")).graph.node
    slim = onnx.load(str(exports["unet"] / "segmenter.onnx")).graph.node
    assert len(slim) < len(raw), (len(slim), len(raw))
    assert {n.op_type for n in raw} & {"Identity", "Constant"}  # the check above can fail: an unsimplified export has them


@pytest.mark.parametrize("model", ["dualpath", "unet"])
def test_onnxruntime_matches_pytorch(model, checkpoints, exports, dataset, tmp_path):
    res = check_parity(checkpoints[model], exports[model], dataset, split="test", n=4, max_batch=3,
                       json_out=tmp_path / "parity.json", progress=False)
    assert res["max_abs_logit_diff"] <= 1e-3
    assert res["mean_mask_dsc"] >= 0.999
    # dynamic batch 1..max gives every sample its batch-1 answer
    assert set(res["batch_consistency_max_diff"]) == {"1", "2", "3"}
    assert max(res["batch_consistency_max_diff"].values()) <= 1e-4
    assert json.loads((tmp_path / "parity.json").read_text())["ok"] is True


def test_export_without_the_anatomy_output_and_the_region_check_failing(checkpoints, exports, dataset, tmp_path):
    """--no-anatomy: a segmenter graph without the region argmax whose region_labels is background everywhere, and parity holds
    against that promise; an export whose region labels disagree with PyTorch fails the check (here: the same
    graph described as carrying the anatomy output)."""
    from bonescan.export.onnx_export import DESCRIPTION, export_onnx

    assert read_description(exports["dualpath"])["anatomy"] is True
    desc = export_onnx(checkpoints["dualpath"], tmp_path / "plain", anatomy=False)
    assert desc["anatomy"] is False
    import onnx

    def ops(d):
        return {n.op_type for n in onnx.load(str(d / "segmenter.onnx")).graph.node}

    # no argmax over the region classes; the anatomy network itself stays, since it locates the bones the
    # report names for the decoder (NamedPlaces)
    assert "ArgMax" in ops(exports["dualpath"]) and "ArgMax" not in ops(tmp_path / "plain")
    pipe = OrtPipeline(tmp_path / "plain")
    ds_img = np.random.default_rng(0).uniform(0, 50, (1, *C.IMAGE_DIMS)).astype(np.float32)
    out = pipe.outputs(ds_img, ["检查所见：T7椎体见放射性浓聚。"])
    assert out[C.REGION_LABELS.name].shape == (1, *C.REGION_LABELS.dims) and not out[C.REGION_LABELS.name].any()
    res = check_parity(checkpoints["dualpath"], tmp_path / "plain", dataset, split="test", n=2, max_batch=1, progress=False)
    assert res["ok"] is True and res["min_region_agreement"] == 1.0
    d = json.loads((tmp_path / "plain" / DESCRIPTION).read_text())
    (tmp_path / "plain" / DESCRIPTION).write_text(json.dumps({**d, "anatomy": True}))
    res = check_parity(checkpoints["dualpath"], tmp_path / "plain", dataset, split="test", n=2, max_batch=1, progress=False)
    assert res["min_region_agreement"] < 0.9 and res["ok"] is False  # (the tiny model labels a third of the cells as bone)
    assert res["max_abs_logit_diff"] <= 1e-3  # the logits still agree: the region check alone failed


def test_token_dimension_is_dynamic(exports, dataset):
    pipe = OrtPipeline(exports["dualpath"])
    ids, mask = pipe.tokenizer(["检查所见：T7椎体见放射性浓聚。"])
    n = int(mask.sum())
    full = pipe.text.run(["text_features"], {"input_ids": ids, "attention_mask": mask})[0]
    short = pipe.text.run(["text_features"], {"input_ids": ids[:, : n + 2], "attention_mask": mask[:, : n + 2]})[0]
    assert short.shape[1] == n + 2
    assert np.abs(full[:, :n] - short[:, :n]).max() < 1e-4


def test_exported_graphs_pass_the_tensorrt_lint(exports):
    for m in ("dualpath", "unet"):
        res = check_export(exports[m])
        assert res["ok"], res["graphs"]


def _graph(nodes, inputs, outputs, initializers=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_lint_names_an_unsupported_node():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])
    m = _graph([helper.make_node("Unique", ["x"], ["y"], name="dedupe_lesions")], [x], [y])
    findings = check_model(m)
    assert any(f.node == "dedupe_lesions" and f.op == "Unique" and "not supported" in f.rule for f in findings)
    assert any(f.node == "y" and "dynamic" in f.rule for f in findings)  # only batch may be dynamic


def test_lint_checks_documented_restrictions():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 16, 16])
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up_cubic", mode="cubic")
    findings = check_model(_graph([resize], [x], [y], [scales], opset=18))
    assert [str(f) for f in findings] == ["node 'up_cubic' (Resize): mode 'cubic' unsupported (nearest / linear only)"]
    axes_in = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch"])
    red = helper.make_node("ReduceSum", ["x", "axes"], ["z"], name="sum_dynamic_axes", keepdims=0)
    findings = check_model(_graph([red], [x, axes_in], [z], opset=18))
    assert any(f.node == "sum_dynamic_axes" and "axes" in f.rule for f in findings)
    assert any("opset" in f.rule for f in check_model(_graph([red], [x, axes_in], [z], opset=8)))


def test_profiles_cover_the_triton_batch():
    p = profile_shapes("segmenter", 8, 128)
    assert p["image"].max == (8, *C.IMAGE_DIMS) and p["image"].min[0] == 1
    assert p["text_features"].opt == (4, C.TOKENIZER.max_tokens, 128)
    assert profile_shapes("text_encoder", 8, None)["input_ids"].max == (8, C.TOKENIZER.max_tokens)
    with pytest.raises(BonescanError):
        profile_shapes("segmenter", 0, 128)


def test_engine_from_another_tensorrt_is_refused(tmp_path: Path):
    plan = tmp_path / "segmenter.plan"
    plan.write_bytes(b"not an engine")
    with pytest.raises(BonescanError, match="unknown"):
        check_engine_version(plan)
    expected = TRITON_TENSORRT["24.10"]
    (tmp_path / "segmenter.plan.json").write_text(json.dumps({"tensorrt_version": "8.6.1.6"}))
    with pytest.raises(BonescanError, match=r"built with TensorRT 8\.6\.1\.6.*runs TensorRT 10\.5"):
        check_engine_version(plan)
    (tmp_path / "segmenter.plan.json").write_text(json.dumps({"tensorrt_version": expected + ".18"}))
    assert check_engine_version(plan)["tensorrt_version"].startswith("10.5")


def test_tensorrt_flavor_refuses_mismatched_engines(exports, tmp_path: Path):
    import shutil

    from bonescan.serving.repository import RepoOptions, build_repository

    eng = tmp_path / "engines"
    shutil.copytree(exports["dualpath"], eng)
    profile = {"input_ids": {"max": [8, 256]}, "image": {"max": [8, 2, 1024, 256]}}
    for g in ("text_encoder", "segmenter"):
        (eng / f"{g}.plan").write_bytes(b"x")
        (eng / f"{g}.plan.json").write_text(json.dumps({"tensorrt_version": "10.13.3.9", "profile": profile}))
    with pytest.raises(BonescanError, match="TensorRT 10.13.3.9"):
        build_repository(eng, tmp_path / "repo", RepoOptions(flavor="tensorrt", max_batch_size=8))
    for g in ("text_encoder", "segmenter"):
        (eng / f"{g}.plan.json").write_text(json.dumps({"tensorrt_version": "10.5.0.18", "profile": profile}))
    m = build_repository(eng, tmp_path / "repo", RepoOptions(flavor="tensorrt", max_batch_size=8))
    assert m["engines"]["segmenter"]["tensorrt_version"] == "10.5.0.18"
    cfg = (tmp_path / "repo" / "segmenter" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in cfg and "graphs: true" in cfg
    with pytest.raises(BonescanError, match="batch <= 8"):
        build_repository(eng, tmp_path / "repo", RepoOptions(flavor="tensorrt", max_batch_size=16))


@pytest.mark.skipif(GPU, reason="TensorRT and a GPU are usable here: test_trt_engines_build_and_run_on_a_gpu runs instead")
def test_trt_export_stops_before_work_without_a_gpu(exports, tmp_path: Path):
    with pytest.raises(BonescanError, match="TensorRT is not usable here|no NVIDIA GPU"):
        require_gpu()
    out = tmp_path / "engines"
    with pytest.raises(BonescanError):
        export_trt(exports["dualpath"], out, "fp16", 4)
    assert not out.exists()  # stopped before any work


def test_check_names_an_export_made_from_another_checkpoint(checkpoints, exports, dataset, tmp_path, capsys):
    """Same weights, another file (its metadata differ): the check says so first and fails."""
    import torch

    body = torch.load(checkpoints["dualpath"], map_location="cpu", weights_only=True)
    body["metadata"] = {**body["metadata"], "note": "another training run"}
    other = tmp_path / "other.pt"
    torch.save(body, other)
    res = check_parity(other, exports["dualpath"], dataset, split="test", n=2, max_batch=1, progress=False)
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("export made from another checkpoint (sha ") and str(other) in first
    assert res["same_checkpoint"] is False and res["ok"] is False
    res = check_parity(checkpoints["dualpath"], exports["dualpath"], dataset, split="test", n=1, max_batch=1, progress=False)
    assert res["same_checkpoint"] is True and "another checkpoint" not in capsys.readouterr().out


def test_an_export_under_another_contract_version_is_refused_and_the_demo_re_exports_it(checkpoints, exports, tmp_path):
    """The graphs' inputs change with the contract (7: report_regions feeds the segmenter): an older export is
    refused with the fix in the message, and the demo's reuse check asks for a new one."""
    import shutil

    from bonescan.benchmarks.demo import _export_current

    old = tmp_path / "old"
    shutil.copytree(exports["dualpath"], old)
    assert _export_current(old, Path(checkpoints["dualpath"]))  # as made: reused
    d = json.loads((old / "model.json").read_text())
    d["contract"]["contract_version"] = C.CONTRACT_VERSION - 1
    (old / "model.json").write_text(json.dumps(d))
    with pytest.raises(BonescanError, match=rf"contract version {C.CONTRACT_VERSION - 1}.*bonescan export onnx"):
        read_description(old)
    assert read_description(exports["dualpath"])["contract"]["contract_version"] == C.CONTRACT_VERSION
    assert not _export_current(old, Path(checkpoints["dualpath"]))


def test_eval_shuffled_needs_two_scans_and_takes_the_first_n(checkpoints, dataset, tmp_path, capsys):
    import json

    from bonescan.cli import main

    ck = str(checkpoints["dualpath"])
    assert main(["eval", "--checkpoint", ck, "--data", str(dataset), "--n", "1", "--reports", "shuffled", "--quiet"]) == 2
    assert "--reports shuffled needs two scans or more" in capsys.readouterr().err
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", ck, "--data", str(dataset), "--n", "2", "--reports", "shuffled", "--quiet",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["summary"]["scans"] == 2 and len(res["per_scan"]) == 2


@pytest.mark.skipif(not GPU, reason="needs TensorRT and an NVIDIA GPU (see README, 'Verifying the TensorRT path on a GPU')")
def test_trt_engines_build_and_run_on_a_gpu(exports, tmp_path: Path):
    """The real engine path: build FP32 engines of the U-Net export with a batch profile of 1..2, check
    their recorded version and profile, load one with TensorRT and compare it with onnxruntime."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    out = tmp_path / "engines"
    built = export_trt(exports["unet"], out, "fp32", 2)
    plan = out / "segmenter.plan"
    info = check_engine_version(plan, expected=built["tensorrt_version"])
    assert plan.stat().st_size > 0 and info["precision"] == "fp32"
    assert info["profile"][C.IMAGE.name]["max"][0] == 2 and info["profile"][C.IMAGE.name]["min"][0] == 1
    image = np.random.default_rng(0).poisson(20.0, (2, *C.IMAGE_DIMS)).astype(np.float32)
    with TrtRunner(EngineFromBytes(BytesFromPath(str(plan)))) as runner:
        trt_logits = runner.infer(feed_dict={C.IMAGE.name: image})[C.LOGITS.name]
    ort_logits = OrtPipeline(exports["unet"]).logits(image, None)
    assert trt_logits.shape == ort_logits.shape
    assert float(np.abs(np.asarray(trt_logits) - ort_logits).max()) <= 1e-2
