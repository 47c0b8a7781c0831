"""The contract drives the graph tensors: export names and dynamic axes, the TensorRT lint and
profiles, the batch-size defaults (no server, no training)."""

from __future__ import annotations

import inspect
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from bonescan import contract as C
from bonescan.export.trt import export_trt, profile_shapes
from bonescan.export.trt_compat import check_file
from bonescan.export.verify_gpu import verify_gpu
from bonescan.serving.repository import RepoOptions


def test_every_graph_tensor_has_a_dynamic_batch_and_text_tensors_a_token_axis():
    text = {C.INPUT_IDS.name, C.ATTENTION_MASK.name, C.TEXT_FEATURES.name}
    for g in C.GRAPHS.values():
        for t in g.inputs + g.outputs:
            want = {0: C.BATCH, 1: C.TOKENS} if t.name in text else {0: C.BATCH}
            assert dict(g.dynamic_axes[t.name]) == want, (g.name, t.name)
    assert [g.name for g in C.MODEL_GRAPHS["dualpath"]] == ["text_encoder", "segmenter"]
    assert [g.onnx_file for g in C.MODEL_GRAPHS["unet"]] == ["segmenter.onnx"]


def test_a_dynamic_axis_must_be_a_dynamic_dim_of_the_contract():
    with pytest.raises(ValueError, match="not a dynamic dim"):
        C.GraphSpec("g", (C.IMAGE,), (C.LOGITS,), export_name="g",
                    dynamic_axes={C.IMAGE.name: {0: C.BATCH, 2: C.TOKENS}, C.LOGITS.name: {0: C.BATCH}})
    with pytest.raises(ValueError, match="axis 0"):
        C.GraphSpec("g", (C.IMAGE,), (C.LOGITS,), export_name="g", dynamic_axes={C.IMAGE.name: {0: C.BATCH}})


@pytest.mark.parametrize("graph", sorted(C.GRAPHS))
def test_tensorrt_profiles_follow_the_contract(graph):
    spec = C.GRAPHS[graph]
    hidden = 64
    shapes = profile_shapes(graph, 6, hidden)
    assert list(shapes) == list(spec.input_names)
    for t in spec.inputs:
        s = shapes[t.name]
        for k, d in enumerate((C.DYN, *t.dims)):
            got = (s.min[k], s.opt[k], s.max[k])
            if k in spec.dynamic_axes[t.name]:
                assert got == C.axis_range(spec.dynamic_axes[t.name][k], 6), (t.name, k)
            else:
                assert got == ((d,) * 3 if d != C.DYN else (hidden,) * 3), (t.name, k)


def _io(name: str, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def test_lint_allows_exactly_the_contracts_dynamic_axes(tmp_path: Path):
    """A segmenter whose text tensors vary in batch and tokens passes; a symbolic image height fails."""
    h, w = C.IMAGE_HEIGHT, C.IMAGE_WIDTH
    ok_image = _io(C.IMAGE.name, [C.BATCH, 2, h, w])
    bad_image = _io(C.IMAGE.name, [C.BATCH, 2, "height", w])
    feats = _io(C.TEXT_FEATURES.name, [C.BATCH, C.TOKENS, 32])
    mask = helper.make_tensor_value_info(C.ATTENTION_MASK.name, TensorProto.INT32, [C.BATCH, C.TOKENS])
    logits = _io(C.LOGITS.name, [C.BATCH, 1, h, w])
    node = helper.make_node("Slice", [C.IMAGE.name, "s", "e", "a"], [C.LOGITS.name], name="first_view")
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s", 0), ("e", 1), ("a", 1))]
    for image, findings in ((ok_image, 0), (bad_image, 1)):
        g = helper.make_graph([node], "segmenter", [image, feats, mask], [logits], initializer=consts)
        path = tmp_path / C.SEGMENTER_GRAPH.onnx_file
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        got = check_file(path)
        assert len(got) == findings, [str(f) for f in got]
        assert all(f.node == C.IMAGE.name and "dimension 2" in f.rule for f in got)


def test_batch_size_defaults_come_from_the_contract():
    """Engines built with the defaults serve in a repository built with the defaults."""
    assert RepoOptions().max_batch_size == C.MAX_BATCH_SIZE
    assert inspect.signature(export_trt).parameters["max_batch"].default == C.MAX_BATCH_SIZE
    assert inspect.signature(verify_gpu).parameters["max_batch"].default == C.MAX_BATCH_SIZE


@pytest.mark.parametrize("name", sorted(C.ENSEMBLES))
def test_generated_ensemble_configs_parse_and_equal_the_chain(name, tmp_path: Path):
    from tritonclient.grpc.model_config_pb2 import DataType

    from bonescan.serving.repository import ensemble_config, parse_config

    chain = C.ENSEMBLES[name]
    path = tmp_path / "config.pbtxt"
    path.write_text(ensemble_config(chain, 6, {"bonescan_flavor": "embedded"}), encoding="utf-8")
    cfg = parse_config(path)
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == (name, "ensemble", 6)
    for got, want in ((cfg.input, chain.inputs), (cfg.output, chain.outputs)):
        assert [(t.name, t.data_type, list(t.dims)) for t in got] == [(t.name, DataType.Value(t.config_dtype), list(t.dims)) for t in want]
    steps = [(s.model_name, s.model_version, dict(s.input_map), dict(s.output_map)) for s in cfg.ensemble_scheduling.step]
    assert steps == [(s.model.name, -1, dict(s.input_map), dict(s.output_map)) for s in chain.steps]
    assert cfg.parameters["bonescan_flavor"].string_value == "embedded"


def test_a_parallel_or_broken_chain_is_refused():
    """The earlier layout (the text branch beside preprocess) deadlocked Triton 2.51; the contract refuses it."""
    pre = C.step(C.PREPROCESS_SPEC, C.ENSEMBLE_UNET_INPUTS, (C.IMAGE, C.PIXEL_SPACING))
    tok_from_request = C.Step(C.TOKENIZER_SPEC, ((C.REPORT.name, C.ENS_REPORT.name),), C.ENSEMBLE_CHAIN.steps[1].output_map)
    steps = C.ENSEMBLE_CHAIN.steps
    with pytest.raises(ValueError, match="first step must read every ensemble input"):
        C.EnsembleSpec("x", "", C.ENSEMBLE_INPUTS, C.ENSEMBLE_OUTPUTS, (pre, tok_from_request, *steps[2:]))
    with pytest.raises(ValueError, match="postprocess can start before text_encoder ends"):
        C.EnsembleSpec("x", "", C.ENSEMBLE_INPUTS, C.ENSEMBLE_OUTPUTS, (*steps[:3], steps[4], steps[3]))
    with pytest.raises(ValueError, match="no step produces"):
        C.EnsembleSpec("x", "", C.ENSEMBLE_INPUTS, C.ENSEMBLE_OUTPUTS, C.ENSEMBLE_CHAIN.steps[:-1])
    with pytest.raises(ValueError, match="must feed"):
        C.step(C.SEGMENTER_GRAPH, (C.IMAGE,))


@pytest.mark.parametrize("spec", [C.PREPROCESS_SPEC, C.TOKENIZER_SPEC, C.POSTPROCESS_SPEC, *C.GRAPHS.values()],
                         ids=lambda s: s.name)
def test_python_models_read_the_contracts_tensors_from_their_config(spec, tmp_path: Path):
    """What a python-backend model's initialize() reads back from its generated config is the contract."""
    import numpy as np
    from google.protobuf.json_format import MessageToDict

    from bonescan.serving.pybackend import config_tensors
    from bonescan.serving.repository import parse_config, tensor_block

    path = tmp_path / "config.pbtxt"
    path.write_text(f'name: "{spec.name}"\n{tensor_block("input", spec.inputs)}\n{tensor_block("output", spec.outputs)}\n')
    inputs, outputs = config_tensors(MessageToDict(parse_config(path), preserving_proto_field_name=True))
    for got, want in ((inputs, spec.inputs), (outputs, spec.outputs)):
        assert [(t.name, t.dtype, t.dims, t.optional) for t in got] == \
            [(t.name, np.dtype(t.dtype), t.dims, t.optional) for t in want]


def test_python_steps_keep_request_memory_instead_of_faulting_it_in_again():
    """keep_request_memory (called by postprocess, preprocess and the runners at initialize): a request's arrays
    (here 4 of 4 MiB alive together, as a batch's counts, logits and probabilities) no longer cost fresh page
    faults on every request. Without it glibc hands the freed heap top back to the OS (above its trim threshold)
    and faults it in again on the next request. Measured as minor page faults in a fresh interpreter."""
    import subprocess
    import sys

    code = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from bonescan.serving.pybackend import keep_request_memory
    assert keep_request_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def request():
    held = [np.ones(1 << 20, np.float32) for _ in range(4)]
    return sum(float(h[0]) for h in held)
for _ in range(3):
    request()
before = faults()
for _ in range(50):
    request()
print(faults() - before)
"""
    got = {arm: int(subprocess.run([sys.executable, "-c", code, arm], capture_output=True, text=True, check=True).stdout)
           for arm in ("default", "keep")}
    assert got["default"] > 50 * 1000, got  # ~4 x 1024 pages faulted in again per request
    assert got["keep"] < 50 * 10, got
