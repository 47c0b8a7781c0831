"""Bad input, restricted endpoints, logs without patient data, and short fault runs (real server)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bonescan import contract as C
from bonescan.benchmarks.faults import SECRET_REPORT, bad_requests, grpc_inputs
from bonescan.client import BoneScanClient, prepare
from bonescan.data.dataset import BoneScanDataset
from bonescan.data.io import CaseError
from bonescan.errors import BonescanError
from bonescan.serving.ort_pipeline import OrtPipeline
from bonescan.serving.server import ADMIN_HEADER, ADMIN_HEADER_GRPC, TritonServer, free_ports

SECRET = SECRET_REPORT
TIMEOUT_S = 120  # every request of these tests: a hung server fails one test, it does not stall the run
MAX_BATCH = 4  # the session repository's max_batch_size (conftest.py)


@pytest.fixture(scope="module")
def sample(dataset):
    return BoneScanDataset(dataset, "test")[0]


@pytest.fixture(scope="module")
def expected(exports, sample):
    pipe = OrtPipeline(exports["dualpath"])
    sp = np.array([sample.pixel_spacing], np.float32)
    return {
        "true": pipe.answer(sample.image[None], sp, [sample.report])[0],
        "empty": pipe.answer(sample.image[None], sp, [""])[0],
    }


def _good(client, sample, report=None):
    img = sample.image[None].astype(np.float32)
    sp = np.array([sample.pixel_spacing], np.float32)
    rep = sample.report if report is None else report
    res = client.infer("bonescan", grpc_inputs(img, [rep], sp), outputs=[grpcclient.InferRequestedOutput("MASK")],
                       client_timeout=TIMEOUT_S)
    return res.as_numpy("MASK")


BAD = ["wrong dtype", "wrong rank", "wrong shape", "huge image", "empty image", "NaN", "Inf", "negative counts",
       "counts above uint16", "bad pixel spacing", "100,000-character report", "invalid UTF-8",
       "batch over max_batch_size", "missing input", "unknown model"]


def test_the_bad_input_table_is_complete(sample):
    img = sample.image[None].astype(np.float32)
    assert sorted(bad_requests(img, sample.report, np.array([sample.pixel_spacing], np.float32), MAX_BATCH)) == sorted(BAD)


@pytest.mark.parametrize("name", BAD)
def test_bad_input_gets_a_clear_error_and_the_server_goes_on(name, server, sample, expected):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    img = sample.image[None].astype(np.float32)
    sp = np.array([sample.pixel_spacing], np.float32)
    model, ins, words = bad_requests(img, sample.report, sp, MAX_BATCH)[name]
    with pytest.raises(Exception) as e:
        client.infer(model, ins, outputs=[grpcclient.InferRequestedOutput("MASK")], client_timeout=TIMEOUT_S)
    msg = str(e.value)
    assert "Deadline" not in msg, f"{name}: no answer within {TIMEOUT_S} s"
    assert words.lower() in msg.lower(), f"{name}: {msg}"
    assert "MARKER5150" not in msg and sample.report[:12] not in msg
    # a good request right after is answered, and correctly
    assert np.array_equal(_good(client, sample), expected["true"])
    assert client.is_server_live() and client.is_server_ready()


def test_empty_report_is_served_as_no_report(server, sample, expected):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert np.array_equal(_good(client, sample, report=""), expected["empty"])


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
            r = c.infer("bonescan", grpc_inputs(nan_img if bad else img, [SECRET if bad else sample.report], sp),
                        outputs=[grpcclient.InferRequestedOutput("MASK")], client_timeout=TIMEOUT_S)
            return "ok" if np.array_equal(r.as_numpy("MASK"), expected["true"]) else "wrong"
        except Exception as e:  # noqa: BLE001
            return "error-nan" if "NaN" in str(e) else f"error: {e}"

    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(send, range(16)))
    assert out == ["ok", "error-nan"] * 8


def test_ensembles_are_one_chain(repo):
    """Every step after the first needs an output of the step before it, so at most one step of a
    request is in flight and a refused request has none left running (Triton 2.51 deadlocks its gRPC
    frontend when a parallel step finishes after the ensemble has failed; see contract.py)."""
    from bonescan.serving.repository import parse_config

    for name in ("bonescan", "bonescan_unet"):
        cfg = parse_config(repo / name / "config.pbtxt")
        steps = list(cfg.ensemble_scheduling.step)
        assert steps[0].model_name == "preprocess"
        ensemble_inputs = {i.name for i in cfg.input}
        assert ensemble_inputs == set(steps[0].input_map.values()), f"{name}: preprocess must check every input"
        for prev, step in zip(steps, steps[1:]):
            assert set(step.input_map.values()) & set(prev.output_map.values()), f"{name}: {step.model_name} can start before {prev.model_name} ends"
            assert not set(step.input_map.values()) & ensemble_inputs, f"{name}: {step.model_name} reads an unchecked input"


def test_storm_of_bad_and_mixed_requests(repo, exports, dataset, work):
    """CI version of `bonescan bench storm`: bad requests between good ones and concurrent mixes of
    dual-path, U-Net and bad requests; nothing hangs, nothing is answered wrong."""
    from bonescan.benchmarks.faults import storm

    res = storm(repo, exports["dualpath"], dataset, rounds=2, concurrency=8, baseline=exports["unet"],
                out=work / "storm", timeout_s=TIMEOUT_S)
    assert res["hung"] == 0 and res["wrong"] == 0 and res["other_errors"] == 0, res["examples"]
    assert res["with_unet"] and res["good_ok"] >= 2 * (15 + 16) and res["bad_refused"] >= 2 * (15 + 16)


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


def test_the_random_admin_key_appears_nowhere(server):
    """No key given: the endpoints are closed by a random key that no command line, environment or log shows."""
    import os

    key = server.admin_key.encode()
    pids = [server.proc.pid] + [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(p) == server.proc.pid]
    assert len(pids) >= 7  # tritonserver and a python-backend stub per model instance
    for pid in pids:
        assert key not in Path(f"/proc/{pid}/cmdline").read_bytes() and key not in Path(f"/proc/{pid}/environ").read_bytes()
    assert server.placeholder.encode() in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    assert key not in Path(server.log_file).read_bytes()


def _parent(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return -1


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
    """CI version of `bonescan bench kill`: SIGKILL mid-run, restart; every request ends, none lost or
    wrong, and the server's own log holds every answered request."""
    from bonescan.benchmarks.faults import kill_restart

    res = kill_restart(repo, exports["dualpath"], dataset, requests=16, concurrency=4, kill_after=4, out=work / "kill",
                       deadline_s=300)
    assert res["server_killed"] and res["server_restarted"]
    assert res["lost"] == 0 and res["answered_wrong"] == 0 and res["answered_not_executed"] == 0, res
    # with a restart every request is answered, correctly: an error is the failure the bench reports
    assert res["errors"] == 0 and res["answered_correctly"] == 16, res["error_examples"]
    # the counters are measured: the server saw the requests, the kill made the client retry
    assert res["executed_on_server"] >= res["answered_correctly"]
    assert res["retries_total"] > 0 and res["machine"]["cpu"]
    assert res["ok"], res["targets"]


def test_kill_without_restart_reports_errors_and_retries(repo, exports, dataset, work):
    """A server SIGKILLed and never restarted: the requests after the kill fail after the client's
    retries (counted), none hangs and none is reported answered."""
    from bonescan.benchmarks.faults import kill_restart

    res = kill_restart(repo, exports["dualpath"], dataset, requests=10, concurrency=2, kill_after=2, out=work / "kill_dead",
                       restart=False, retries=2, backoff_s=0.1, timeout_s=60, deadline_s=240)
    assert res["server_killed"] and not res["server_restarted"]
    assert res["lost"] == 0 and res["answered_correctly"] + res["errors"] == 10
    assert res["errors"] >= 10 - 2 - 2  # at most the two in flight at the kill were answered after it
    assert res["answered_correctly"] < 10 and res["executed_on_server"] < 10
    assert res["retries_max"] == 2 and res["retries_total"] >= 2 * (res["errors"] - 2)
    assert any("unavailable" in e for e in res["error_examples"]), res["error_examples"]
    assert res["ok"]  # without a restart, failing fast is the target
    # the killed server could not unlink its shared-memory regions; TritonServer.kill() did
    assert res["shm_regions_at_kill"] > 0 and res["shm_regions_left"] == [], res["shm_regions_left"]
