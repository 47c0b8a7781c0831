"""Metrics, warm-up and the structured request log of the served models (issue 23, items 3 and 5).

A real Prometheus (Debian's ``prometheus``) scrapes the session's tritonserver through a generated
scrape config; after a known set of requests (good ones of both ensembles, one without a report, one
with a report longer than the tokenizer reads, one refused by each check) the test asks Prometheus'
HTTP API for Triton's ``nv_inference_request_success`` / ``_failure`` and the python steps' custom
metrics (bonescan.serving.telemetry) and checks each moved by exactly what was sent. The same
requests are then found in the JSON request log, with no report text or identifier in it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from bonescan import contract as C
from bonescan.benchmarks.faults import grpc_inputs
from bonescan.data.dataset import BoneScanDataset
from bonescan.serving import telemetry as T
from bonescan.serving.prometheus import JOB, Prometheus, scrape_config
from bonescan.serving.repository import parse_config
from bonescan.serving.server import TritonServer, free_ports
from bonescan.serving.warmup import WARMUP_DIR

MARKER_ID = "ACC-MARKER-55012"  # an accession-like request id: must be redacted in the log
MARKER_TEXT = "标记METRICMARKER9931"  # report text: never in a log or a metric


def _outputs():
    return [grpcclient.InferRequestedOutput(n) for n in ("MASK", "LESIONS")]


@pytest.fixture(scope="module")
def samples(dataset):
    return BoneScanDataset(dataset, "test").load_all()


@pytest.fixture(scope="module")
def replica(repo, work):
    """A second tritonserver on the session's repository: Prometheus scrapes each replica on its own port."""
    grpc, http, metrics = free_ports(3)
    srv = TritonServer(repo, grpc, http, metrics, log_file=work / "tritonserver_replica1.log")
    srv.start(timeout=240)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def prometheus(server, replica, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus is not installed (tools/apt.sh installs it)")
    (port,) = free_ports(1)
    targets = [f"127.0.0.1:{server.metrics_port}", f"127.0.0.1:{replica.metrics_port}"]  # replica "0", "1"
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), port, targets).start()
    yield prom
    prom.stop()


def _wait(prom: Prometheus, check, timeout: float = 30.0):
    """Poll until ``check()`` returns a truthy value (e.g. Prometheus scraped what the test expects)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    return last


def _snapshot(prom: Prometheus, replica: str) -> dict[str, dict[str, float]]:
    """One replica's series, as Prometheus has them now."""
    sel = f'job="{JOB}",replica="{replica}"'
    return {
        "success": prom.values(f"sum by (model) (nv_inference_request_success{{{sel}}})", by="model"),
        # Triton 2.51 splits failures by a `reason` label (REJECTED, CANCELED, BACKEND, OTHER)
        "failure": prom.values(f"sum by (model) (nv_inference_request_failure{{{sel}}})", by="model"),
        "refused": prom.values(f"{T.REQUESTS_REFUSED.name}{{{sel}}}", by="reason"),
        "reports": prom.values(f"{T.REPORTS.name}{{{sel}}}", by="present"),
        "truncations": prom.values(f"{T.TOKENIZER_TRUNCATIONS.name}{{{sel}}}"),
        "scans": prom.values(f"{T.LESIONS_PER_SCAN.name}_count{{{sel}}}"),
        "lesions": prom.values(f"{T.LESIONS_PER_SCAN.name}_sum{{{sel}}}"),
        "zero_lesions": prom.values(f'{T.LESIONS_PER_SCAN.name}_bucket{{{sel},le=~"0|0[.]0+"}}'),
    }


def _delta(after, before):
    return {k: {lab: after[k].get(lab, 0.0) - before[k].get(lab, 0.0) for lab in after[k]} for k in after}


@pytest.fixture(scope="module")
def sent(server, replica, prometheus, samples, repo):
    """Send a known set of requests and return what was sent and what came back, with Prometheus'
    view before and after (a scrape after the last request)."""
    from bonescan.tokenize import ReportTokenizer

    up = {f"127.0.0.1:{server.metrics_port}": 1.0, f"127.0.0.1:{replica.metrics_port}": 1.0}
    assert _wait(prometheus, lambda: prometheus.targets_up() == up), f"prometheus does not scrape both replicas: {prometheus.targets_up()}"
    for r in ("0", "1"):
        assert _wait(prometheus, lambda r=r: len(prometheus.values(f'{T.REQUESTS_REFUSED.name}{{job="{JOB}",replica="{r}"}}',
                                                                   by="reason")) == len(T.REFUSAL_REASONS)), \
            f"the custom metrics are not on replica {r}'s metrics port"
    before = _snapshot(prometheus, "0")
    before_1 = _snapshot(prometheus, "1")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tok = ReportTokenizer(repo / C.TOKENIZER_MODEL / "1" / "tokenizer.json")
    s = samples[0]
    sp = np.array([s.pixel_spacing], np.float32)
    long_report = s.report
    while tok.n_tokens(long_report) <= C.TOKENIZER.max_tokens:
        long_report += "\n" + s.report
    good = [("bonescan", x.image, x.report) for x in samples[:3]]
    good += [("bonescan", s.image, ""), ("bonescan", s.image, long_report), ("bonescan", s.image, MARKER_TEXT + s.report)]
    good += [("bonescan_unet", x.image, None) for x in samples[:2]]
    out = {"ids": {}, "lesions": [], "reports": [], "before": before}
    for i, (model, image, report) in enumerate(good):
        rid = MARKER_ID if i == 0 else str(uuid.uuid4())
        res = client.infer(model, grpc_inputs(image[None].astype(np.float32), None if report is None else [report], sp),
                           outputs=_outputs(), request_id=rid, client_timeout=120)
        out["ids"][rid] = (model, "ok", None)
        out["lesions"].append(json.loads(res.as_numpy("LESIONS")[0, 0])["count"])
        if report is not None:
            out["reports"].append(report)

    def extra(name, value):
        t = grpcclient.InferInput(name, [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[value]], dtype=np.object_))
        return t

    nan_image = s.image[None].astype(np.float32).copy()
    nan_image[0, 0, 5, 5] = np.nan
    bad = {
        "image": grpc_inputs(nan_image, [s.report], sp),
        "pixel_spacing": grpc_inputs(s.image[None].astype(np.float32), [s.report], np.zeros((1, 2), np.float32)),
        "report": grpc_inputs(s.image[None].astype(np.float32), None, sp)
        + [extra(C.ENS_REPORT.name, (MARKER_TEXT + "志").encode("utf-8")[:-1])],  # cut inside a character: not UTF-8
        "study": grpc_inputs(s.image[None].astype(np.float32), ["检查号：ACC20240012\n" + s.report], sp)
        + [extra(C.ENS_ACCESSION.name, b"ACC20249999")],
    }
    for reason, inputs in bad.items():
        rid = str(uuid.uuid4())
        with pytest.raises(InferenceServerException, match="INVALID_ARG"):
            client.infer("bonescan", inputs, outputs=_outputs(), request_id=rid, client_timeout=120)
        out["ids"][rid] = ("bonescan", "refused", reason)
    out["good"] = good
    out["truncated"] = sum(tok.n_tokens(r) > C.TOKENIZER.max_tokens for r in out["reports"])
    out["present"] = sum(bool(r.strip()) for r in out["reports"])
    n_dual = sum(m == "bonescan" for m, _, _ in good)
    out["want"] = {
        "success": {"bonescan": n_dual, "bonescan_unet": len(good) - n_dual},
        # Triton 2.51 counts each failed ensemble request twice (both under reason="OTHER"), measured here
        # with 3 refused requests -> 6; bonescan_requests_refused_total counts each once
        "failure": {"bonescan": 2 * len(bad), "bonescan_unet": 0},
        "refused": {r: (1.0 if r in bad else 0.0) for r in T.REFUSAL_REASONS},
        "reports": {"true": out["present"], "false": len(out["reports"]) - out["present"]},
        "truncations": {"": out["truncated"]},
        "scans": {"": len(good)},
        "lesions": {"": sum(out["lesions"])},
        "zero_lesions": {"": sum(n == 0 for n in out["lesions"])},
    }

    # the second replica gets two dual-path requests: counted there, not on the first
    other = grpcclient.InferenceServerClient(replica.grpc_url)
    out["lesions_1"] = []
    for x in samples[:2]:
        res = other.infer("bonescan", grpc_inputs(x.image[None].astype(np.float32), [x.report], sp), outputs=_outputs(),
                          request_id=str(uuid.uuid4()), client_timeout=120)
        out["lesions_1"].append(json.loads(res.as_numpy("LESIONS")[0, 0])["count"])
    out["want_1"] = {"success": {"bonescan": 2, "bonescan_unet": 0}, "failure": {"bonescan": 0},
                     "reports": {"true": 2, "false": 0}, "scans": {"": 2}, "lesions": {"": sum(out["lesions_1"])},
                     "refused": {r: 0.0 for r in T.REFUSAL_REASONS}}

    def matches(delta, want):
        return all(delta[k].get(lab, 0.0) == v for k, w in want.items() for lab, v in w.items())

    def reached():
        d0, d1 = _delta(_snapshot(prometheus, "0"), before), _delta(_snapshot(prometheus, "1"), before_1)
        return (d0, d1) if matches(d0, out["want"]) and matches(d1, out["want_1"]) else None

    got = _wait(prometheus, reached)
    out["delta"], out["delta_1"] = got or (_delta(_snapshot(prometheus, "0"), before), _delta(_snapshot(prometheus, "1"), before_1))
    time.sleep(2.5)  # two more scrapes: nothing counted twice or late
    out["delta_later"] = _delta(_snapshot(prometheus, "0"), before)
    out["metrics_text"] = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    return out


def test_generated_scrape_config_passes_promtool(tmp_path):
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian's prometheus ships it)")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(scrape_config(["127.0.0.1:8002", "127.0.0.1:9002"]), encoding="utf-8")
    done = subprocess.run(["promtool", "check", "config", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_request_log_line_redacts_ids_that_are_not_random_tokens():
    rid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    rec = json.loads(T.request_log_line("preprocess", rid, "refused", 2.5, reason="no such reason", ensemble="bonescan", scans=1))
    assert rec["request_id"] == rid and rec["reason"] == "other" and rec["event"] == T.REQUEST_EVENT
    assert rec["ts"].endswith("Z") and rec["duration_ms"] == 2.5 and rec["level"] == "warning"
    for raw in ("ACC20240012", "1.2.840.113619.2.55.3", "张三", "a" * 31, "0f8fad5b"):
        assert json.loads(T.request_log_line("preprocess", raw, "ok", 1.0))["request_id"] == T.REDACTED
    assert json.loads(T.request_log_line("preprocess", "", "ok", 1.0))["request_id"] is None
    assert T.loggable_request_id("ab" * 16) == "ab" * 16  # a W3C trace id


def test_warmup_executions_follow_tritons_rules():
    """Triton runs each sample max(count, 1) times per instance, skips batch 0 samples (TritonModelInstance::WarmUp)."""
    assert T.warmup_executions({}) == 0
    assert T.warmup_executions({"model_warmup": [{"batch_size": 1, "count": 2}, {"batch_size": 1}, {"batch_size": 0, "count": 5}]}) == 3


def test_metric_names_come_from_the_contract():
    assert {m.name for m in T.METRICS} == set(C.BONESCAN_METRICS)
    for m in T.METRICS:
        kind, labels, _ = C.BONESCAN_METRICS[m.name]
        assert m.kind == kind.upper() and m.labels == tuple(labels)
        assert all(lab in T.LABEL_VALUES for lab in m.labels), f"{m.name}: a label without a fixed set of values"


@pytest.mark.server
def test_prometheus_counts_exactly_the_requests_sent(sent):
    """Triton's own counters and the python steps' custom metrics, as Prometheus scraped them, moved by
    exactly what the test sent: per ensemble, per refusal reason, reports present / absent, truncations,
    and the lesions of every answer (the histogram's _sum is the lesions the client received)."""
    assert sent["truncated"] == 1 and sent["want"]["reports"]["false"] == 1
    print("Prometheus, replica 0, after the requests (increase):", json.dumps(sent["delta"], sort_keys=True))
    for key, want in sent["want"].items():
        got = {lab: sent["delta"][key].get(lab, 0.0) for lab in want}
        assert got == {lab: float(v) for lab, v in want.items()}, f"{key}: Prometheus saw {got}, the test sent {want}"
        later = {lab: sent["delta_later"][key].get(lab, 0.0) for lab in want}
        assert later == got, f"{key}: changed after the requests had been answered: {later} vs {got}"


@pytest.mark.server
def test_each_replica_is_scraped_on_its_own(sent):
    """The second replica's series moved by its two requests only (and the first's by the rest: above)."""
    for key, want in sent["want_1"].items():
        got = {lab: sent["delta_1"][key].get(lab, 0.0) for lab in want}
        assert got == {lab: float(v) for lab, v in want.items()}, f"replica 1, {key}: Prometheus saw {got}, the test sent {want}"


@pytest.mark.server
def test_no_patient_data_in_metric_labels(sent):
    text = sent["metrics_text"]
    for forbidden in (MARKER_ID, "METRICMARKER", "ACC2024", sent["good"][0][2][:6]):
        assert forbidden not in text
    for line in text.splitlines():
        if line.startswith("bonescan_") and "{" in line:
            labels = dict(p.split("=", 1) for p in line[line.index("{") + 1 : line.index("}")].split(","))
            for k, v in labels.items():
                assert k == "le" or v.strip('"') in T.LABEL_VALUES[k], line


def _request_lines(log: str) -> list[dict]:
    out = []
    for line in log.splitlines():
        if line.startswith("{") and T.REQUEST_EVENT in line:
            out.append(json.loads(line))
    return out


@pytest.mark.server
def test_request_log_is_one_json_line_per_request_and_step(sent, server):
    """Each request sent has a JSON line from preprocess (its outcome, and for a refusal which check
    refused it), and each answered dual-path request one from the tokenizer and one from postprocess;
    the accession-like request id is redacted; no report text anywhere in the log."""
    log = Path(server.log_file).read_text(errors="replace")
    lines = _request_lines(log)
    by_id: dict[str, dict[str, dict]] = {}
    for rec in lines:
        assert set(rec) >= {"ts", "level", "event", "model", "request_id", "outcome", "duration_ms"}
        assert rec["duration_ms"] >= 0 and rec["ts"].endswith("Z")
        if rec["request_id"]:
            by_id.setdefault(rec["request_id"], {})[rec["model"]] = rec
    for rid, (model, outcome, reason) in sent["ids"].items():
        key = T.REDACTED if rid == MARKER_ID else rid
        steps = by_id.get(key)
        assert steps, f"no JSON log line for request {key}"
        pre = steps[C.PREPROCESS_MODEL]
        assert pre["outcome"] == outcome and pre.get("reason") == reason and pre["ensemble"] == model
        if outcome == "ok":
            assert steps[C.POSTPROCESS_MODEL]["outcome"] == "ok"
            assert (C.TOKENIZER_MODEL in steps) == (model == C.ENSEMBLE_MODEL)
        else:
            assert set(steps) == {C.PREPROCESS_MODEL}, f"a refused request reached {set(steps)}"
    assert MARKER_ID not in log and "METRICMARKER" not in log and "ACC2024" not in log
    for report in sent["reports"]:
        if report.strip():
            assert report.splitlines()[0][:12] not in log


def test_warmup_is_configured_on_every_composing_model(repo):
    """Ensembles cannot have model_warmup; every other model has it, with files that exist and match
    the declared dims, and the python steps ran it before the server was ready."""
    for cfg_path in sorted(repo.glob("*/config.pbtxt")):
        cfg = parse_config(cfg_path)
        if cfg.platform == "ensemble":
            assert not cfg.model_warmup
            continue
        assert cfg.model_warmup, f"{cfg.name} has no model_warmup"
        declared = {t.name: t for t in cfg.input}
        for sample in cfg.model_warmup:
            assert sample.batch_size == 1 and sample.count >= 1
            assert {n for n, t in declared.items() if not t.optional} <= set(sample.inputs)
            for name, inp in sample.inputs.items():
                if inp.input_data_file:
                    data = (cfg_path.parent / WARMUP_DIR / inp.input_data_file).read_bytes()
                    kind = model_config_pb2.DataType.Name(inp.data_type)
                    if kind != "TYPE_STRING":  # BYTES are length-prefixed
                        itemsize = {"TYPE_FP32": 4, "TYPE_INT32": 4, "TYPE_UINT8": 1}[kind]
                        assert len(data) == int(np.prod(inp.dims)) * itemsize, name


@pytest.mark.server
def test_python_steps_finished_warmup_before_serving(server):
    log = Path(server.log_file).read_text(errors="replace")
    for step in (C.PREPROCESS_MODEL, C.TOKENIZER_MODEL, C.POSTPROCESS_MODEL):
        assert f"{step}: warm-up done" in log, f"{step} did not run its warm-up"
