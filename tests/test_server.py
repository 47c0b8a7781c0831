"""The model repository and a real tritonserver (python backend on the CPU), over gRPC."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from bonescan import contract as C
from bonescan.benchmarks.faults import grpc_inputs
from bonescan.data.dataset import BoneScanDataset
from bonescan.serving.ort_pipeline import OrtPipeline
from bonescan.serving.repository import parse_config, read_manifest

MARKER = "标记MARKER7781不应出现在日志"  # a report string that must never reach a log


def _inputs(images: np.ndarray, reports: list[str] | None, spacing: np.ndarray):
    return grpc_inputs(images.astype(np.float32), reports, spacing.astype(np.float32))


def _outputs():
    return [grpcclient.InferRequestedOutput(n) for n in ("MASK", "PROBABILITY", "LESIONS")]


@pytest.fixture(scope="module")
def samples(dataset):
    return BoneScanDataset(dataset, "test").load_all()


@pytest.fixture(scope="module")
def client(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


def test_every_config_parses_as_model_config(repo: Path):
    manifest = read_manifest(repo)
    seen = set()
    for cfg_path in sorted(repo.glob("*/config.pbtxt")):
        cfg = parse_config(cfg_path)
        assert cfg.name == cfg_path.parent.name
        seen.add(cfg.name)
        if cfg.platform == "ensemble":
            steps = [s.model_name for s in cfg.ensemble_scheduling.step]
            assert set(steps) <= set(manifest["models"])
        else:
            assert cfg.dynamic_batching is not None and cfg.max_batch_size == 4
    assert seen == set(manifest["models"])
    assert {"bonescan", "bonescan_unet", "tokenizer", "text_encoder", "segmenter", "postprocess"} <= seen
    seg = parse_config(repo / "segmenter" / "config.pbtxt")
    assert seg.parameters["run_batch"].string_value == "1" and seg.parameters["intra_op_threads"].string_value == "2"
    assert seg.dynamic_batching.max_queue_delay_microseconds == 20000  # conftest's explicit value


def test_chunked_runs_equal_one_batched_run(exports, samples):
    """The embedded runner splits a dynamic batch into runs of run_batch rows: same outputs."""
    from bonescan.serving.onnx_runner import cpu_session, run_in_chunks

    sess = cpu_session(exports["unet"] / "segmenter.onnx")
    feeds = {C.IMAGE.name: np.stack([samples[i % len(samples)].image for i in range(3)]).astype(np.float32)}
    whole = run_in_chunks(sess, [C.LOGITS.name], feeds, 0)[0]
    for rows in (1, 2):
        chunked = run_in_chunks(sess, [C.LOGITS.name], feeds, rows)[0]
        assert chunked.shape == whole.shape == (3, 1, C.IMAGE_HEIGHT, C.IMAGE_WIDTH)
        np.testing.assert_allclose(chunked, whole, atol=1e-4)


def test_the_onnx_runner_checks_its_config_against_the_graph(exports):
    """The embedded runner reads names and dtypes from its config; a config that is not the graph's fails the load."""
    from dataclasses import replace

    from bonescan.serving.onnx_runner import config_mismatches, cpu_session
    from bonescan.serving.pybackend import ConfigTensor

    sess = cpu_session(exports["dualpath"] / C.TEXT_ENCODER_GRAPH.onnx_file)
    inputs, outputs = ([ConfigTensor(t.name, np.dtype(t.dtype), t.dims) for t in ts] for ts in (C.TEXT_ENCODER_INPUTS, C.TEXT_ENCODER_OUTPUTS))
    assert config_mismatches(sess, inputs, outputs) == []
    wrong = [inputs[0], replace(inputs[1], dtype=np.dtype("int64"))]
    assert config_mismatches(sess, wrong, outputs) == ["input attention_mask is tensor(int32) in the graph, int64 in the config"]
    assert "config outputs ['logits']" in config_mismatches(sess, inputs, [ConfigTensor("logits", np.dtype("float32"), ())])[0]


def test_model_metadata_matches_the_export(client, exports):
    desc = json.loads((exports["dualpath"] / "model.json").read_text())
    for model, graph in (("text_encoder", "text_encoder"), ("segmenter", "segmenter")):
        meta = client.get_model_metadata(model)
        want = desc["graphs"][graph]["inputs"]
        got = [(i.name, i.datatype, list(i.shape)) for i in meta.inputs]
        expect = [(w["name"], C.NUMPY_TO_TRITON[w["dtype"]], [-1 if isinstance(d, str) else d for d in w["shape"]]) for w in want]
        assert got == expect
    ens = client.get_model_metadata("bonescan")
    assert [i.name for i in ens.inputs] == [t.name for t in C.ENSEMBLE_INPUTS]
    assert [o.name for o in ens.outputs] == [t.name for t in C.ENSEMBLE_OUTPUTS]
    cfg = client.get_model_config("bonescan").config
    assert cfg.parameters["bonescan_contract_version"].string_value == str(C.CONTRACT_VERSION)


def test_ensemble_equals_in_process_onnxruntime(client, exports, samples):
    pipe = OrtPipeline(exports["dualpath"])
    for s in samples[:3]:
        sp = np.array([s.pixel_spacing], np.float32)
        res = client.infer("bonescan", _inputs(s.image[None], [s.report], sp), outputs=_outputs(), client_timeout=120)
        want_mask, want_prob, want_les = pipe.answer(s.image[None], sp, [s.report])
        assert np.array_equal(res.as_numpy("MASK"), want_mask)
        assert np.abs(res.as_numpy("PROBABILITY") - want_prob).max() < 1e-5
        got, want = json.loads(res.as_numpy("LESIONS")[0, 0]), json.loads(want_les[0])
        assert got["count"] == want["count"] and got["pixel_spacing_mm"] == [round(float(v), 4) for v in sp[0]]
        # the fail-safe's choice and its reasons travel with the answer
        assert got["answered_by"] == want["answered_by"] in ("dualpath", "unet") and got["signals"] == want["signals"]
        # the anatomy output travels through the ensemble: the same names and Bone Scan Index as in-process
        assert got.get("anatomy") == want.get("anatomy") and [x.get("site") for x in got["lesions"]] == [
            x.get("site") for x in want["lesions"]]


def test_failsafe_answers_a_missing_report_with_the_unet(client, exports, samples):
    """No report: the dual-path ensemble gives the bundled U-Net's answer, which is bonescan_unet's."""
    s = samples[0]
    sp = np.array([s.pixel_spacing], np.float32)
    dual = client.infer("bonescan", _inputs(s.image[None], [""], sp), outputs=_outputs(), client_timeout=120)
    unet = client.infer("bonescan_unet", _inputs(s.image[None], None, sp), outputs=_outputs(), client_timeout=120)
    info = json.loads(dual.as_numpy("LESIONS")[0, 0])
    assert info["answered_by"] == "unet" and "no report" in info["reason"]
    assert np.array_equal(dual.as_numpy("MASK"), unet.as_numpy("MASK"))
    assert json.loads(unet.as_numpy("LESIONS")[0, 0])["answered_by"] == "unet"


def test_unet_ensemble(client, exports, samples):
    pipe = OrtPipeline(exports["unet"])
    s = samples[0]
    sp = np.array([s.pixel_spacing], np.float32)
    res = client.infer("bonescan_unet", _inputs(s.image[None], None, sp), outputs=_outputs(), client_timeout=120)
    mask, _, lesions = pipe.answer(s.image[None], sp)
    assert np.array_equal(res.as_numpy("MASK"), mask)
    # LESIONS as in-process, the anatomy output's Bone Scan Index and names included
    got = json.loads(res.as_numpy("LESIONS")[0, 0])
    assert got == json.loads(lesions[0]) and "anatomy" in got


def test_concurrent_requests_are_batched_and_answered(client, server, exports, samples):
    pipe = OrtPipeline(exports["dualpath"])
    n = 8
    cases = [samples[i % len(samples)] for i in range(n)]
    before = client.get_inference_statistics("segmenter").model_stats[0]

    def one(s):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        sp = np.array([s.pixel_spacing], np.float32)
        return c.infer("bonescan", _inputs(s.image[None], [s.report], sp), outputs=[grpcclient.InferRequestedOutput("MASK")], client_timeout=120).as_numpy("MASK")

    with ThreadPoolExecutor(n) as ex:
        masks = list(ex.map(one, cases))
    for s, m in zip(cases, masks):
        assert np.array_equal(m, pipe.answer(s.image[None], np.array([s.pixel_spacing], np.float32), [s.report])[0])
    after = client.get_inference_statistics("segmenter").model_stats[0]
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == n
    assert executions < n, f"{executions} executions for {n} requests: no dynamic batching happened"


def test_server_log_has_no_report_text(client, server, samples):
    s = samples[0]
    sp = np.array([s.pixel_spacing], np.float32)
    client.infer("bonescan", _inputs(s.image[None], [MARKER + s.report], sp), outputs=_outputs(), client_timeout=120)
    bad = MARKER.encode("utf-8")[:-1]  # cut inside a character: invalid UTF-8 carrying the marker's bytes
    r = grpcclient.InferInput("REPORT", [1, 1], "BYTES")
    r.set_data_from_numpy(np.array([[bad]], dtype=np.object_))
    ins = _inputs(s.image[None], None, sp) + [r]
    with pytest.raises(Exception) as e:
        client.infer("bonescan", ins, outputs=_outputs(), client_timeout=120)
    assert "UTF-8" in str(e.value) and "MARKER" not in str(e.value)
    log = Path(server.log_file).read_text(errors="replace")
    assert "tokenizer" in log  # the log is being written
    assert "MARKER7781" not in log and MARKER not in log


def test_server_refuses_a_report_naming_another_study(client, samples):
    """ACCESSION_NUMBER / STUDY_INSTANCE_UID beside the report: the preprocess step refuses a report
    that names another study (naming the field, not the value or the report); the same request with
    the report's own accession number, with an empty one, or with none at all is answered."""
    s = samples[0]
    sp = np.array([s.pixel_spacing], np.float32)
    report = "检查号：ACC20240012\n" + s.report

    def ids(name: str, value: str):
        t = grpcclient.InferInput(name, [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[value.encode("utf-8")]], dtype=np.object_))
        return t

    base = _inputs(s.image[None], [report], sp)
    with pytest.raises(Exception) as e:
        client.infer("bonescan", base + [ids(C.ENS_ACCESSION.name, "ACC20249999")], outputs=_outputs(), client_timeout=120)
    msg = str(e.value)
    assert "ACCESSION_NUMBER" in msg and "another study" in msg
    assert "ACC2024" not in msg and s.report[:8] not in msg
    with pytest.raises(Exception) as e:
        client.infer("bonescan", _inputs(s.image[None], [f"StudyInstanceUID: 1.2.3.4 {s.report}"], sp)
                     + [ids(C.ENS_STUDY_UID.name, "1.2.3.5")], outputs=_outputs(), client_timeout=120)
    assert "STUDY_INSTANCE_UID" in str(e.value) and "1.2.3" not in str(e.value)
    for extra in ([ids(C.ENS_ACCESSION.name, "acc20240012")], [ids(C.ENS_ACCESSION.name, "")], []):
        res = client.infer("bonescan", base + extra, outputs=_outputs(), client_timeout=120)
        assert res.as_numpy("MASK").shape == (1, 1, C.IMAGE_HEIGHT, C.IMAGE_WIDTH)
