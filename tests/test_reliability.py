"""Bad input, restricted endpoints, logs without patient data, and short fault runs (real server)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from bonescan.client import BoneScanClient, prepare
from bonescan.export.onnx_export import OrtPipeline

from bonescan import contract as C
from bonescan.data.dataset import BoneScanDataset
from bonescan.data.io import CaseError
from bonescan.errors import BonescanError
from bonescan.postprocess import postprocess
from bonescan.serving.server import ADMIN_HEADER, ADMIN_HEADER_GRPC, TritonServer, free_ports

SECRET = "隐私MARKER5150报告"


@pytest.fixture(scope="module")
def sample(dataset):
    return BoneScanDataset(dataset, "test")[0]


@pytest.fixture(scope="module")
def expected(exports, sample):
    pipe = OrtPipeline(exports["dualpath"])
    sp = np.array([sample.pixel_spacing], np.float32)
    return {
        "true": postprocess(pipe.logits(sample.image[None], [sample.report]), sp)[0],
        "empty": postprocess(pipe.logits(sample.image[None], [""]), sp)[0],
    }


def _request(image, report, spacing, image_dtype="FP32", drop=None):
    ins = []
    if drop != "IMAGE":
        t = grpcclient.InferInput("IMAGE", list(image.shape), image_dtype)
        t.set_data_from_numpy(image)
        ins.append(t)
    if drop != "PIXEL_SPACING":
        t = grpcclient.InferInput("PIXEL_SPACING", list(spacing.shape), "FP32")
        t.set_data_from_numpy(spacing)
        ins.append(t)
    if drop != "REPORT":
        rep = np.array([[r if isinstance(r, bytes) else r.encode("utf-8")] for r in report], dtype=np.object_)
        t = grpcclient.InferInput("REPORT", list(rep.shape), "BYTES")
        t.set_data_from_numpy(rep)
        ins.append(t)
    return ins


def _bad_cases(img, rep, sp):
    big = np.ones((1, 2, 4096, 1024), np.float32)

    def with_value(v):
        x = img.copy()
        x[0, 1, 500, 100] = v
        return x

    return {
        "wrong dtype": ("bonescan", _request(img.astype(np.float64), [rep], sp, "FP64"), "data-type is 'FP64', but model 'bonescan' expects 'FP32'"),
        "wrong rank": ("bonescan", _request(img[:, 0], [rep], sp), "shape"),
        "wrong shape": ("bonescan", _request(img[:, :, :512], [rep], sp), "shape"),
        "huge image": ("bonescan", _request(big, [rep], sp), "shape"),
        "empty image": ("bonescan", _request(np.zeros_like(img), [rep], sp), "anterior view is empty"),
        "NaN": ("bonescan", _request(with_value(np.nan), [rep], sp), "NaN or infinite"),
        "Inf": ("bonescan", _request(with_value(np.inf), [rep], sp), "NaN or infinite"),
        "negative counts": ("bonescan", _request(with_value(-3.0), [rep], sp), "negative counts"),
        "counts above uint16": ("bonescan", _request(with_value(70000.0), [rep], sp), "above 65535"),
        "bad pixel spacing": ("bonescan", _request(img, [rep], np.array([[0.0, 2.4]], np.float32)), "PIXEL_SPACING must be between"),
        "100,000-character report": ("bonescan", _request(img, [SECRET * 10000], sp), "the limit is 20000"),
        "invalid UTF-8": ("bonescan", _request(img, [SECRET.encode("utf-8")[:-1] + b"\xff"], sp), "not valid UTF-8"),
        "batch over max_batch_size": ("bonescan", _request(np.repeat(img, 5, 0), [rep] * 5, np.repeat(sp, 5, 0)), "batch"),
        "missing input": ("bonescan", _request(img, [rep], sp, drop="REPORT"), "input"),
        "unknown model": ("bonescan_v9", _request(img, [rep], sp), "unknown model"),
    }


BAD = ["wrong dtype", "wrong rank", "wrong shape", "huge image", "empty image", "NaN", "Inf", "negative counts",
       "counts above uint16", "bad pixel spacing", "100,000-character report", "invalid UTF-8",
       "batch over max_batch_size", "missing input", "unknown model"]


@pytest.mark.parametrize("name", BAD)
def test_bad_input_gets_a_clear_error_and_the_server_goes_on(name, server, sample, expected):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    img = sample.image[None].astype(np.float32)
    sp = np.array([sample.pixel_spacing], np.float32)
    model, ins, words = _bad_cases(img, sample.report, sp)[name]
    with pytest.raises(Exception) as e:
        client.infer(model, ins, outputs=[grpcclient.InferRequestedOutput("MASK")], client_timeout=120)
    msg = str(e.value)
    assert words.lower() in msg.lower(), f"{name}: {msg}"
    assert "MARKER5150" not in msg and sample.report[:12] not in msg
    # a good request right after is answered, and correctly
    good = client.infer("bonescan", _request(img, [sample.report], sp), outputs=[grpcclient.InferRequestedOutput("MASK")])
    assert np.array_equal(good.as_numpy("MASK"), expected["true"])
    assert client.is_server_live() and client.is_server_ready()


def test_empty_report_is_served_as_no_report(server, sample, expected):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    img = sample.image[None].astype(np.float32)
    sp = np.array([sample.pixel_spacing], np.float32)
    res = client.infer("bonescan", _request(img, [""], sp), outputs=[grpcclient.InferRequestedOutput("MASK")])
    assert np.array_equal(res.as_numpy("MASK"), expected["empty"])


def test_a_bad_request_in_a_batch_does_not_spoil_the_others(server, sample, expected):
    """Concurrent good and bad requests land in the same dynamic batches; only the bad ones fail."""
    from concurrent.futures import ThreadPoolExecutor

    img = sample.image[None].astype(np.float32)
    sp = np.array([sample.pixel_spacing], np.float32)
    nan_img = img.copy()
    nan_img[0, 0, 10, 10] = np.nan

    def send(i):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        bad = i % 2 == 1
        try:
            r = c.infer("bonescan", _request(nan_img if bad else img, [SECRET if bad else sample.report], sp),
                        outputs=[grpcclient.InferRequestedOutput("MASK")])
            return "ok" if np.array_equal(r.as_numpy("MASK"), expected["true"]) else "wrong"
        except Exception as e:  # noqa: BLE001
            return "error-nan" if "NaN" in str(e) else f"error: {e}"

    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(send, range(16)))
    assert out == ["ok", "error-nan"] * 8


def test_client_refuses_bad_arrays_before_sending(tmp_path):
    good = np.ones((2, C.IMAGE_HEIGHT, C.IMAGE_WIDTH), np.float32)
    cases = {
        "NaN or infinite": good.copy(),
        "negative counts": good.copy(),
        "expected 1024x256": np.ones((2, 4096, 1024), np.float32),
        "expected [2, H, W]": np.ones((3, 1024, 256), np.float32),
        "empty": np.zeros_like(good),
    }
    cases["NaN or infinite"][0, 0, 0] = np.inf
    cases["negative counts"][1, 5, 5] = -1
    for words, arr in cases.items():
        with pytest.raises(CaseError) as e:
            prepare(arr)
        assert "<array>" in str(e.value) and words.split(" [")[0].lower() in str(e.value).lower(), (words, str(e.value))


def test_model_control_and_admin_endpoints_are_closed(server):
    g = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(Exception) as e:
        g.unload_model("bonescan")
    assert "restricted" in str(e.value).lower() and ADMIN_HEADER_GRPC in str(e.value)
    with pytest.raises(Exception) as e:  # even with the admin key, model control is off
        g.unload_model("bonescan", headers={ADMIN_HEADER_GRPC: server.admin_key})
    assert "not allowed" in str(e.value).lower() or "explicit" in str(e.value).lower()
    with pytest.raises(Exception) as e:
        g.register_system_shared_memory("x", "/bonescan_probe", 1024)
    assert "restricted" in str(e.value).lower()
    h = httpclient.InferenceServerClient(f"localhost:{server.http_port}")
    with pytest.raises(Exception) as e:
        h.unload_model("bonescan")
    assert "restricted" in str(e.value).lower() or "403" in str(e.value)
    assert g.is_model_ready("bonescan")  # still serving
    assert g.get_model_repository_index(headers={ADMIN_HEADER_GRPC: server.admin_key}) is not None  # the key opens them
    assert h.get_model_repository_index(headers={ADMIN_HEADER: server.admin_key}) is not None


def test_no_report_or_pixel_data_in_any_log(repo, work, sample, caplog):
    """A verbose server and a DEBUG-level client: the report marker and a marker pixel value never appear."""
    grpc_port, http_port, metrics_port = free_ports(3)
    log = work / "tritonserver_verbose.log"
    srv = TritonServer(repo, grpc_port, http_port, metrics_port, log_file=log, log_verbose=1)
    srv.start(timeout=240)
    marker_value = 4242.5
    img = sample.image.copy()
    img[0, 300, 100] = marker_value
    try:
        with caplog.at_level(logging.DEBUG), BoneScanClient(srv.grpc_url) as c:
            from bonescan.client.inputs import Request

            c.segment_prepared([Request(img, SECRET + sample.report, tuple(sample.pixel_spacing), "case")])
            with pytest.raises(BonescanError):
                c.segment_prepared([Request(img, SECRET * 3000, tuple(sample.pixel_spacing), "case")])
            bad = img.copy()
            bad[1, 1, 1] = np.nan
            with pytest.raises(BonescanError):
                c.segment_prepared([Request(bad, SECRET, tuple(sample.pixel_spacing), "case")])
    finally:
        srv.stop()
    text = log.read_text(errors="replace")
    assert "infer" in text.lower() and len(text) > 5000  # verbose logging was on
    for needle in ("MARKER5150", SECRET, sample.report[:10], "4242.5"):
        assert needle not in text
        assert needle not in caplog.text


UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_ATTRS = {("pickle", "load"), ("pickle", "loads"), ("marshal", "loads"), ("dill", "loads"), ("yaml", "load"),
                ("torch", "load"), ("np", "load"), ("numpy", "load")}


def test_python_models_never_unpickle_or_eval_request_content():
    """The code Triton runs (model.py files and the runtime modules copied next to them)."""
    from bonescan.serving.repository import RUNTIME_MODULES, templates

    root = Path(__file__).resolve().parents[1]
    files = sorted(templates().glob("*/1/model.py")) + [root / "src" / "bonescan" / m for m in RUNTIME_MODULES]
    assert len(files) >= 10
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                assert not {"pickle", "marshal", "dill", "cloudpickle", "shelve"} & set(names), f"{f}: imports {names}"
            if isinstance(node, ast.Call):
                fn = node.func
                if isinstance(fn, ast.Name):
                    assert fn.id not in UNSAFE_CALLS, f"{f}:{node.lineno} calls {fn.id}"
                if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name):
                    assert (fn.value.id, fn.attr) not in UNSAFE_ATTRS, f"{f}:{node.lineno} calls {fn.value.id}.{fn.attr}"


def test_soak_short(repo, exports, dataset, work):
    """CI version of `bonescan bench soak` (the 10-minute run is a command)."""
    from bonescan.benchmarks.faults import soak

    res = soak(repo, exports["dualpath"], dataset, minutes=0.5, concurrency=4, warmup_s=10, out=work / "soak")
    assert res["errors"] == 0 and res["wrong"] == 0 and res["requests"] > 20
    assert res["memory_growth"] is not None and res["memory_growth"] <= 0.05


def test_kill_restart_short(repo, exports, dataset, work):
    """CI version of `bonescan bench kill`: SIGKILL mid-run, restart, every request ends exactly once."""
    from bonescan.benchmarks.faults import kill_restart

    res = kill_restart(repo, exports["dualpath"], dataset, requests=16, concurrency=4, kill_after=4, out=work / "kill")
    assert res["server_killed"] and res["server_restarted"]
    assert res["lost"] == 0 and res["answered_twice"] == 0 and res["answered_wrong"] == 0
    assert res["answered_correctly"] + res["errors"] == 16
