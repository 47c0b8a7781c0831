"""The openvino flavor (issue 25, item 1): OpenVINO in the python backend, served by a real tritonserver,
against the embedded flavor's answers; its compiled-model cache across a restart; the NGC container's
``openvino`` backend configs, parsed (they cannot be served here).

The embedded flavor's answers come from :class:`OrtPipeline`, which ``test_server`` holds equal to the
embedded ensemble bit for bit: one extra tritonserver for this module instead of two on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from bonescan import contract as C
from bonescan.benchmarks.faults import grpc_inputs
from bonescan.data.dataset import BoneScanDataset
from bonescan.serving.ort_pipeline import OrtPipeline
from bonescan.serving.repository import RepoOptions, build_repository, parse_config, read_manifest

NETWORKS = ("text_encoder", "segmenter", "segmenter_unet")


def _cache_files(repo: Path) -> dict[str, tuple[int, int]]:
    """Every compiled-model cache file of the repository: path -> (size, mtime in ns)."""
    return {str(f.relative_to(repo)): (f.stat().st_size, f.stat().st_mtime_ns)
            for m in NETWORKS for f in sorted((repo / m / "ov_cache").glob("**/*")) if f.is_file()}


@pytest.fixture(scope="module")
def ov_repo(exports, work):
    out = work / "repo_openvino"
    build_repository(exports["dualpath"], out, RepoOptions(flavor="openvino", max_batch_size=4), baseline=exports["unet"])
    return out


@pytest.fixture(scope="module")
def ov_server(ov_repo, work):
    from bonescan.serving.server import TritonServer, free_ports

    grpc, http, metrics = free_ports(3)
    srv = TritonServer(ov_repo, grpc, http, metrics, log_file=work / "tritonserver_openvino.log")
    srv.start(timeout=240)
    yield srv
    srv.stop()


def test_openvino_configs_are_generated_from_the_contract(ov_repo):
    manifest = read_manifest(ov_repo)
    assert manifest["flavor"] == "openvino" and any(p.startswith("openvino==") for p in manifest["python_requirements"])
    for m in NETWORKS:
        cfg = parse_config(ov_repo / m / "config.pbtxt")
        assert cfg.backend == "python" and (ov_repo / m / "1" / "model.onnx").is_file()
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["performance_hint"] == "LATENCY" and params["inference_num_threads"] == "2"
        assert params["cache_dir"] == "ov_cache" and params["inference_precision"] == "f32"
        assert "OpenVinoRunnerModel" in (ov_repo / m / "1" / "model.py").read_text()
    seg = parse_config(ov_repo / "segmenter" / "config.pbtxt")
    assert [t.name for t in seg.input] == [t.name for t in C.SEGMENTER_INPUTS]
    assert [t.name for t in seg.output] == [t.name for t in C.SEGMENTER_OUTPUTS]


def test_openvino_answers_as_the_embedded_flavor(ov_server, exports, dataset):
    """Same requests: masks agree on >= 99.9 % of pixels, probabilities close, same fail-safe choice."""
    pipe = OrtPipeline(exports["dualpath"])
    client = grpcclient.InferenceServerClient(ov_server.grpc_url)
    outs = [grpcclient.InferRequestedOutput(n) for n in ("MASK", "PROBABILITY", "LESIONS")]
    agree, total = 0, 0
    for s in BoneScanDataset(dataset, "test").load_all()[:4]:
        sp = np.array([s.pixel_spacing], np.float32)
        res = client.infer("bonescan", grpc_inputs(s.image[None].astype(np.float32), [s.report], sp), outputs=outs, client_timeout=120)
        want_mask, want_prob, want_les = pipe.answer(s.image[None], sp, [s.report])
        agree += int((res.as_numpy("MASK") == want_mask).sum())
        total += want_mask.size
        assert np.abs(res.as_numpy("PROBABILITY") - want_prob).max() < 1e-3
        assert json.loads(res.as_numpy("LESIONS")[0, 0])["answered_by"] == json.loads(want_les[0])["answered_by"]
    assert agree / total >= 0.999, f"mask agreement {agree / total:.5f}"


def test_a_restart_reads_the_compiled_model_cache(ov_server, ov_repo, work):
    """The first start wrote the cache; a second server on the same repository loads it and writes nothing new."""
    from bonescan.serving.server import TritonServer, free_ports

    before = _cache_files(ov_repo)
    assert before and all(any(k.startswith(m + "/") for k in before) for m in NETWORKS), before
    grpc, http, metrics = free_ports(3)
    log = work / "tritonserver_openvino_restart.log"
    srv = TritonServer(ov_repo, grpc, http, metrics, log_file=log)
    try:
        srv.start(timeout=240)
    finally:
        srv.stop()
    assert _cache_files(ov_repo) == before
    text = log.read_text(errors="replace")
    assert text.count("from the cache") >= len(NETWORKS) and "cache was empty" not in text


def test_openvino_ngc_configs_parse(exports, work):
    """Triton's own openvino backend for the NGC container: model.onnx in the version folder, the latency
    hint and threads as its parameters, the container's image files; parsed as Triton's ModelConfig."""
    out = work / "repo_openvino_ngc"
    build_repository(exports["dualpath"], out, RepoOptions(flavor="openvino-ngc", max_batch_size=4), baseline=exports["unet"])
    for m in NETWORKS:
        cfg = parse_config(out / m / "config.pbtxt")
        assert cfg.backend == "openvino" and cfg.default_model_filename == "model.onnx"
        assert (out / m / "1" / "model.onnx").is_file() and not (out / m / "1" / "model.py").exists()
        assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
        assert {k: v.string_value for k, v in cfg.parameters.items()} == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": "2"}
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 0
    assert (out / "Dockerfile").is_file()
    assert parse_config(out / "postprocess" / "config.pbtxt").backend == "python"
