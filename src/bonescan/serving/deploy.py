"""Kubernetes, Prometheus and Grafana files for running the server on a cluster: one source, this module.

``python -m bonescan.serving.deploy [--check] [ROOT]`` writes everything under ``ROOT/deploy`` (default: the
source tree this module sits in):

* ``deploy/k8s/base`` (kustomize): Deployment (readiness / liveness / startup probes on Triton's health
  endpoints, ``/dev/shm`` as a memory volume, the model repository from a volume, the admin key from a
  Secret), Service (gRPC), HorizontalPodAutoscaler on the queue time per request, PodDisruptionBudget,
  NetworkPolicy, PodMonitor, PrometheusRule; ``deploy/k8s/overlays/{cpu,gpu}``: the embedded flavor in an
  image built from this repository (``deploy/docker/Dockerfile.cpu``), and the TensorRT flavor in the
  NGC-based image of :mod:`bonescan.serving.launch` with ``nvidia.com/gpu`` limits;
  ``deploy/k8s/rendered/{cpu,gpu}.yaml``: what ``kubectl apply -k`` applies, rendered by :func:`render`
  (no kustomize binary here; a test checks it against the overlays).
* ``deploy/prometheus``: recording and alert rules, their ``promtool test rules`` unit tests, the
  prometheus-adapter rule behind the autoscaler's metric.
* ``deploy/grafana/bonescan-triton.json``: the dashboard.

Ports come from :class:`bonescan.serving.server.TritonServer`, model names and the python steps' metric
names from :mod:`bonescan.contract`, the image, launcher and key path from :mod:`bonescan.serving.launch`,
instance counts from :class:`bonescan.serving.repository.RepoOptions`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from bonescan import contract as C
from bonescan.serving import launch
from bonescan.serving.repository import RepoOptions
from bonescan.serving.server import TritonServer

#: the Kubernetes version the manifests are validated against (kubernetes-validate --strict)
KUBERNETES_VERSION = "1.31.0"
NAME = "bonescan-triton"
NAMESPACE = "bonescan"
#: only pods in this namespace reach the gRPC port
CLIENT_NAMESPACE = "bonescan-clients"
#: only Prometheus, in this namespace, reaches the metrics port
MONITORING_NAMESPACE = "monitoring"
CONTAINER = "tritonserver"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "bonescan"}

_PORT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TritonServer)}
HTTP_PORT: int = _PORT_DEFAULTS["http_port"]  # type: ignore[assignment]
GRPC_PORT: int = _PORT_DEFAULTS["grpc_port"]  # type: ignore[assignment]
METRICS_PORT: int = _PORT_DEFAULTS["metrics_port"]  # type: ignore[assignment]

MODEL_MOUNT = "/models"  # the launcher's BONESCAN_REPO (launch.dockerfile)
SECRET_NAME = "bonescan-admin-key"
SECRET_KEY = Path(launch.KEY_FILE_IN_CONTAINER).name
#: the python backend needs shared memory per model instance (README: at least 64 MB each)
SHM_MB_PER_PYTHON_INSTANCE = 64
#: the CPU image (deploy/docker/Dockerfile.cpu) and the GPU one (launch.IMAGE, built by `docker build REPO`)
CPU_IMAGE = "bonescan-triton-cpu:0.1.0"
GPU_IMAGE = launch.IMAGE

#: the autoscaler's metric: mean queue time (us) per request over the server's models, per pod
HPA_METRIC = "bonescan_queue_us_per_request"
HPA_TARGET_US = 50_000  # 50 ms of queueing per request: a request waits behind more than one scan in flight
HPA_MIN_REPLICAS = 1
HPA_MAX_REPLICAS = 4
RATE_WINDOW = "1m"
QUEUE_RECORD = "bonescan:queue_us_per_request:rate1m"

#: Triton 2.51's metrics (port 8002; the *_summary_us ones with --metrics-config summary_latencies=true,
#: nv_gpu_* on a GPU)
TRITON_METRICS = (
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count", "nv_inference_exec_count",
    "nv_inference_pending_request_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "nv_inference_request_summary_us", "nv_inference_queue_summary_us", "nv_inference_compute_input_summary_us",
    "nv_inference_compute_infer_summary_us", "nv_inference_compute_output_summary_us",
    "nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_power_usage",
    "nv_cpu_utilization", "nv_cpu_memory_used_bytes", "nv_cpu_memory_total_bytes",
)
#: the suffixes a histogram / summary / counter name gets in PromQL
METRIC_SUFFIXES = ("", "_bucket", "_sum", "_count")
#: Triton's args for the deployment: the p50 / p99 summaries the dashboard reads
TRITON_ARGS = ["--metrics-config=summary_latencies=true"]  # p50 / p90 / p95 / p99 per model


# ----------------------------------------------------------------------------- instances and shm
def python_instances(flavor: str, opts: RepoOptions | None = None) -> int:
    """Python-backend model instances a repository of ``flavor`` holds (both ensembles' steps)."""
    opts = opts or RepoOptions(flavor=flavor)
    steps = {m for e in C.ENSEMBLES.values() for m in e.models}
    n = 0
    for model in sorted(steps):
        if model in C.GRAPHS:  # text_encoder / segmenter(_unet): python only in the embedded flavor
            n += opts.instances if flavor == "embedded" else 0
        else:
            n += opts.python_instances
    return n


def shm_size_mi(flavor: str) -> int:
    return SHM_MB_PER_PYTHON_INSTANCE * python_instances(flavor)


# ----------------------------------------------------------------------------- PromQL
def queue_per_request(matchers: str = "", by: str = "namespace, pod", window: str = RATE_WINDOW) -> str:
    """Mean queue time per request: sum(rate(queue_us)) / sum(rate(success)) over every model of a pod,
    0 for an idle pod. Triton's k8s-onprem chart averages per-model ratios with 1 added to each
    denominator instead, which a server holding idle models drags down (2,381 us for a true 5,000)."""
    sel = "{" + matchers + "}" if matchers else ""
    queue = f"sum by ({by}) (rate(nv_inference_queue_duration_us{sel}[{window}]))"
    success = f"sum by ({by}) (rate(nv_inference_request_success{sel}[{window}]))"
    return f"({queue} / ({success} > 0)) or on ({by}) (0 * {success})"


#: Triton's k8s-onprem chart's query (deploy/k8s-onprem/values.yaml), kept for the unit test that shows its error
TRITON_CHART_QUERY = ("avg(delta(nv_inference_queue_duration_us[30s])/(1+delta(nv_inference_request_success[30s]))) "
                      "by (namespace, pod)")

ENSEMBLE_RE = "|".join(C.ENSEMBLES)
STEP_RE = "|".join(sorted({m for e in C.ENSEMBLES.values() for m in e.models}))


def recording_rules() -> list[dict]:
    w = RATE_WINDOW
    ens = f'model=~"{ENSEMBLE_RE}"'
    return [
        {"record": QUEUE_RECORD, "expr": queue_per_request()},
        {"record": "bonescan:ensemble_failure_ratio:rate5m",
         "expr": f"sum by (namespace, pod) (rate(nv_inference_request_failure{{{ens}}}[5m])) / "
                 f"(sum by (namespace, pod) (rate(nv_inference_request_success{{{ens}}}[5m])) + "
                 f"sum by (namespace, pod) (rate(nv_inference_request_failure{{{ens}}}[5m])) > 0)"},
        {"record": "bonescan:ensemble_requests:rate1m",
         "expr": f"sum by (namespace, model) (rate(nv_inference_request_success{{{ens}}}[{w}]))"},
    ]


def alert_rules() -> list[dict]:
    return [
        {"alert": "BonescanTritonDown", "expr": f'up{{container="{CONTAINER}"}} == 0', "for": "5m",
         "labels": {"severity": "critical"},
         "annotations": {"summary": "tritonserver {{ $labels.namespace }}/{{ $labels.pod }} has not answered a scrape for 5 minutes",
                         "description": "Check the pod's events and log (model loading, out of memory, /dev/shm too small)."}},
        {"alert": "BonescanQueueTimeHigh", "expr": f"{QUEUE_RECORD} > {2 * HPA_TARGET_US}", "for": "15m",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "requests queue {{ $value | humanize }} us on average in {{ $labels.pod }}",
                         "description": f"Twice the autoscaler's target ({HPA_TARGET_US} us) for 15 minutes: the "
                                        f"HorizontalPodAutoscaler is at maxReplicas ({HPA_MAX_REPLICAS}), cannot place "
                                        "pods (GPUs, CPU), or does not get its metric from prometheus-adapter."}},
        {"alert": "BonescanFailuresHigh", "expr": "bonescan:ensemble_failure_ratio:rate5m > 0.05", "for": "10m",
         "labels": {"severity": "warning"},
         "annotations": {"summary": "{{ $value | humanizePercentage }} of ensemble requests fail in {{ $labels.pod }}",
                         "description": "Refused requests count as failures, and an ensemble counts a failed request "
                                        "twice (its own and its step's, Triton's metrics docs): 0.05 is about 2.5 % of "
                                        "requests. The dashboard's refusals panel (bonescan_requests_refused_total by "
                                        "reason) tells client errors from server errors."}},
        {"alert": "BonescanRefusalsHigh",
         "expr": "sum by (namespace, reason) (rate(bonescan_requests_refused_total[15m])) > 0.1", "for": "15m",
         "labels": {"severity": "info"},
         "annotations": {"summary": "more than 6 requests a minute refused for {{ $labels.reason }} in {{ $labels.namespace }}",
                         "description": "A client sends bad scans or reports, or reports of another study."}},
        {"alert": "BonescanP99LatencyHigh",
         "expr": f'max by (namespace, pod, model) (nv_inference_request_summary_us{{model=~"{ENSEMBLE_RE}", quantile="0.99"}}) > 5e6',
         "for": "10m", "labels": {"severity": "warning"},
         "annotations": {"summary": "p99 of {{ $labels.model }} above 5 s in {{ $labels.pod }}",
                         "description": "Needs --metrics-config=summary_latencies=true (the Deployment sets it)."}},
        {"alert": "BonescanGpuSaturated", "expr": "avg by (namespace, pod) (nv_gpu_utilization) > 0.95", "for": "15m",
         "labels": {"severity": "info"},
         "annotations": {"summary": "GPU of {{ $labels.pod }} busy above 95 % for 15 minutes",
                         "description": "Queue time decides scaling; a saturated GPU with low queue time needs no action."}},
    ]


def rule_groups() -> list[dict]:
    return [{"name": "bonescan.recording", "rules": recording_rules()},
            {"name": "bonescan.alerts", "rules": alert_rules()}]


def adapter_rules() -> dict:
    """prometheus-adapter's custom-metrics rule (its config's ``rules:``, or the Helm chart's ``rules.custom``)."""
    return {"rules": [{
        "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_queue_duration_us$", "as": HPA_METRIC},
        "metricsQuery": queue_per_request("<<.LabelMatchers>>", "<<.GroupBy>>"),
    }]}


# ----------------------------------------------------------------------------- promtool unit tests
def _series(model: str, pod: str, queue: str, success: str) -> list[dict]:
    labels = f'namespace="{NAMESPACE}", pod="{pod}", container="{CONTAINER}", model="{model}", version="1"'
    return [{"series": f"nv_inference_queue_duration_us{{{labels}}}", "values": queue},
            {"series": f"nv_inference_request_success{{{labels}}}", "values": success}]


def rule_tests() -> dict:
    """One busy model (10 requests per 15 s, 5,000 us queued each) beside idle ones: the queue time per
    request must be 5,000 us; Triton's chart query gives 2,381 (one idle model) and 1,190 (three)."""
    busy, idle = C.ENSEMBLE_MODEL, [C.ENSEMBLE_UNET_MODEL, C.SEGMENTER_UNET_MODEL, C.TOKENIZER_MODEL]
    busy_series = _series(busy, "p0", "0+50000x20", "0+10x20")
    one_idle = busy_series + _series(idle[0], "p0", "0x20", "0x20")
    three_idle = busy_series + [s for m in idle for s in _series(m, "p0", "0x20", "0x20")]
    idle_pod = [s for m in (busy, *idle) for s in _series(m, "p1", "0x20", "0x20")]
    pod = {"namespace": NAMESPACE, "pod": "p0"}
    ours = QUEUE_RECORD + '{pod="p0"}'
    chart = 'triton_chart:avg_time_queue_us{pod="p0"}'

    def within_1pct(expr: str, value: float, ok: bool) -> dict:
        """promtool compares floats exactly: test |expr / value - 1| < 1 % as a 0 / 1 sample."""
        return {"expr": f"abs({expr} / {value!r} - 1) < bool 0.01", "eval_time": "4m",
                "exp_samples": [{"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in pod.items()) + "}", "value": int(ok)}]}

    return {
        "rule_files": ["../rules.yaml", "triton_chart_rule.yaml"],
        "evaluation_interval": "15s",
        "tests": [
            {"name": "one busy model, three idle: 5,000 us per request (Triton's chart: 1,190)",
             "interval": "15s", "input_series": three_idle + idle_pod,
             "promql_expr_test": [
                 within_1pct(ours, 5000, True),
                 {"expr": QUEUE_RECORD + '{pod="p1"}', "eval_time": "4m",
                  "exp_samples": [{"labels": _labels(QUEUE_RECORD, {"namespace": NAMESPACE, "pod": "p1"}), "value": 0}]},
                 within_1pct(chart, 5000, False),
                 within_1pct(chart, round(100000 / 21 / 4, 2), True),
             ]},
            {"name": "one busy model, one idle: the chart's 2,381 us for a true 5,000",
             "interval": "15s", "input_series": one_idle,
             "promql_expr_test": [
                 within_1pct(ours, 5000, True),
                 within_1pct(chart, 5000, False),
                 within_1pct(chart, 2381, True),
             ]},
            {"name": "queue time alert: fires after 15 minutes above twice the target",
             "interval": "15s",
             "input_series": _series(busy, "p0", f"0+{150 * 3 * HPA_TARGET_US}x120", "0+150x120"),
             "alert_rule_test": [
                 {"alertname": "BonescanQueueTimeHigh", "eval_time": "10m", "exp_alerts": []},
                 {"alertname": "BonescanQueueTimeHigh", "eval_time": "25m", "exp_alerts": [{
                     "exp_labels": {"severity": "warning", **pod},
                     "exp_annotations": _alert_annotations("BonescanQueueTimeHigh", {"value": 3 * HPA_TARGET_US, **pod})}]},
             ]},
            {"name": "down alert",
             "interval": "1m",
             "input_series": [{"series": f'up{{namespace="{NAMESPACE}", pod="p0", container="{CONTAINER}"}}', "values": "1x5 0x10"}],
             "alert_rule_test": [
                 {"alertname": "BonescanTritonDown", "eval_time": "8m", "exp_alerts": []},
                 {"alertname": "BonescanTritonDown", "eval_time": "14m", "exp_alerts": [{
                     "exp_labels": {"severity": "critical", "container": CONTAINER, **pod},
                     "exp_annotations": _alert_annotations("BonescanTritonDown", pod)}]},
             ]},
        ],
    }


def _labels(name: str, labels: dict) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _alert_annotations(alert: str, values: dict) -> dict:
    rule = next(r for r in alert_rules() if r["alert"] == alert)
    out = {}
    for k, v in rule["annotations"].items():
        v = v.replace("{{ $value | humanize }}", _humanize(values.get("value", 0)))
        out[k] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: str(values[m.group(1)]), v)
    return out


def _humanize(v: float) -> str:
    """Prometheus' humanize for the values the tests use (k, M)."""
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.4g}{unit}"
    return f"{v:.4g}"


def triton_chart_rule() -> dict:
    return {"groups": [{"name": "triton-k8s-onprem-chart", "rules": [
        {"record": "triton_chart:avg_time_queue_us", "expr": TRITON_CHART_QUERY}]}]}


# ----------------------------------------------------------------------------- Grafana
def _panel(title: str, exprs: list[tuple[str, str]], unit: str, x: int, y: int, description: str = "") -> dict:
    return {"type": "timeseries", "title": title, "description": description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": legend} for i, (e, legend) in enumerate(exprs)]}


def dashboard() -> dict:
    ns = 'namespace="$namespace"'
    r = "[$__rate_interval]"
    ens = f'{ns}, model=~"{ENSEMBLE_RE}"'
    steps = f'{ns}, model=~"{STEP_RE}"'
    specs: list[tuple[str, list[tuple[str, str]], str, str]] = [
        ("Throughput: requests answered per model", [
            (f"sum by (model) (rate(nv_inference_request_success{{{ns}}}{r}))", "{{model}}")], "reqps", ""),
        ("Ensemble latency p50 / p99", [
            (f'max by (model) (nv_inference_request_summary_us{{{ens}, quantile="0.5"}})', "{{model}} p50"),
            (f'max by (model) (nv_inference_request_summary_us{{{ens}, quantile="0.99"}})', "{{model}} p99")], "µs",
         "Triton's summaries (--metrics-config=summary_latencies=true), per pod; max over pods"),
        ("Ensemble steps: compute p50 / p99", [
            (f'max by (model) (nv_inference_compute_infer_summary_us{{{steps}, quantile="0.5"}})', "{{model}} p50"),
            (f'max by (model) (nv_inference_compute_infer_summary_us{{{steps}, quantile="0.99"}})', "{{model}} p99")], "µs", ""),
        ("Ensemble steps: request latency p50 / p99 (queue + compute)", [
            (f'max by (model) (nv_inference_request_summary_us{{{steps}, quantile="0.5"}})', "{{model}} p50"),
            (f'max by (model) (nv_inference_request_summary_us{{{steps}, quantile="0.99"}})', "{{model}} p99")], "µs", ""),
        ("Queue time per request (the autoscaler's metric)", [
            (f"{QUEUE_RECORD}{{{ns}}}", "{{pod}}"),
            (f"sum by (model) (rate(nv_inference_queue_duration_us{{{ns}}}{r})) / "
             f"sum by (model) (rate(nv_inference_request_success{{{ns}}}{r}))", "{{model}}")], "µs",
         f"sum(rate(queue)) / sum(rate(success)); the HorizontalPodAutoscaler's target is {HPA_TARGET_US} us"),
        ("Queue time p99 per model", [
            (f'max by (model) (nv_inference_queue_summary_us{{{ns}, quantile="0.99"}})', "{{model}}")], "µs", ""),
        ("Mean latency per model (counters)", [
            (f"sum by (model) (rate(nv_inference_request_duration_us{{{ns}}}{r})) / "
             f"sum by (model) (rate(nv_inference_request_success{{{ns}}}{r}))", "{{model}} request"),
            (f"sum by (model) (rate(nv_inference_compute_infer_duration_us{{{ns}}}{r})) / "
             f"sum by (model) (rate(nv_inference_request_success{{{ns}}}{r}))", "{{model}} compute")], "µs", ""),
        ("Batch size (inferences per execution) and pending requests", [
            (f"sum by (model) (rate(nv_inference_count{{{ns}}}{r})) / sum by (model) (rate(nv_inference_exec_count{{{ns}}}{r}))",
             "{{model}} batch"),
            (f"sum by (model) (nv_inference_pending_request_count{{{ns}}})", "{{model}} pending")], "short", ""),
        ("Failures by reason", [
            (f"sum by (model, reason) (rate(nv_inference_request_failure{{{ns}}}{r}))", "{{model}} {{reason}}")], "reqps",
         "An ensemble counts its steps' failures as reason OTHER (Triton's metrics docs)"),
        ("Requests refused, by reason", [
            (f"sum by (reason) (rate(bonescan_requests_refused_total{{{ns}}}{r}))", "{{reason}}")], "reqps", ""),
        ("Lesions per scan (mean)", [
            (f"sum(rate(bonescan_lesions_per_scan_sum{{{ns}}}{r})) / sum(rate(bonescan_lesions_per_scan_count{{{ns}}}{r}))",
             "lesions / scan")], "short", ""),
        ("Reports: with / without", [
            (f"sum by (present) (rate(bonescan_reports_total{{{ns}}}{r}))", "present={{present}}"),
            (f"sum(rate(bonescan_tokenizer_truncations_total{{{ns}}}{r}))", "truncated at max_tokens")], "reqps", ""),
        ("GPU utilisation (GPU overlay)", [
            (f"avg by (pod, gpu_uuid) (nv_gpu_utilization{{{ns}}})", "{{pod}} {{gpu_uuid}}")], "percentunit", ""),
        ("Replicas scraped", [(f'count(up{{{ns}, container="{CONTAINER}"}} == 1)', "up")], "short", ""),
    ]
    panels = [_panel(t, e, u, 12 * (i % 2), 8 * (i // 2), d) for i, (t, e, u, d) in enumerate(specs)]
    for i, p in enumerate(panels, 1):
        p["id"] = i
    return {
        "title": "BoneScan-Triton", "uid": "bonescan-triton", "editable": True, "schemaVersion": 39, "version": 1,
        "tags": ["bonescan", "triton"], "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "namespace", "type": "query", "label": "Namespace",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(nv_inference_request_success, namespace)", "refresh": 2,
             "current": {"text": NAMESPACE, "value": NAMESPACE}},
        ]},
        "panels": panels,
    }


METRIC_NAME = re.compile(r"\b(?:nv_|bonescan_|bonescan:|up\b)[A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (string literals, e.g. model names, left out)."""
    return set(METRIC_NAME.findall(re.sub(r'"[^"]*"', '""', expr)))


def known_metric(name: str) -> bool:
    """A name Triton exports, one the python steps export (contract.BONESCAN_METRICS, with PromQL suffixes),
    a recording rule of deploy/prometheus, or ``up``."""
    if name == "up" or name in {r["record"] for r in recording_rules()} or name in TRITON_METRICS:
        return True
    return any(name == m + s for m in C.BONESCAN_METRICS for s in METRIC_SUFFIXES)


# ----------------------------------------------------------------------------- Kubernetes
def _meta(name: str, **extra: Any) -> dict:
    return {"name": name, "namespace": NAMESPACE, "labels": dict(LABELS), **extra}


def _probe(path: str, period: int, failures: int, timeout: int = 3) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def base_objects() -> dict[str, dict]:
    """file name -> object of the kustomize base (what both overlays share)."""
    selector = {"app.kubernetes.io/name": NAME}
    container = {
        "name": CONTAINER,
        "ports": [{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        # model loading: the startup probe holds the other two back (overlays set failureThreshold)
        "startupProbe": _probe("/v2/health/ready", 10, 30),
        "volumeMounts": [
            {"name": "model-repository", "mountPath": MODEL_MOUNT, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "admin-key", "mountPath": launch.KEY_FILE_IN_CONTAINER, "subPath": SECRET_KEY, "readOnly": True},
        ],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(NAME),
        "spec": {
            "replicas": HPA_MIN_REPLICAS,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": [
                        {"name": "model-repository",
                         "persistentVolumeClaim": {"claimName": "bonescan-model-repository", "readOnly": True}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                        {"name": "admin-key", "secret": {"secretName": SECRET_NAME, "defaultMode": 0o440,
                                                         "items": [{"key": SECRET_KEY, "path": SECRET_KEY}]}},
                    ],
                },
            },
        },
    }
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta("bonescan-model-repository"),
           "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "2Gi"}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(NAME),
               "spec": {"selector": selector, "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc",
                                                         "appProtocol": "grpc"}]}}
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(NAME),
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
                    "minReplicas": HPA_MIN_REPLICAS, "maxReplicas": HPA_MAX_REPLICAS,
                    "metrics": [{"type": "Pods", "pods": {"metric": {"name": HPA_METRIC},
                                                          "target": {"type": "AverageValue", "averageValue": str(HPA_TARGET_US)}}}],
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}}
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(NAME),
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}}}

    def from_namespace(ns: str) -> dict:
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}

    netpol = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(NAME),
              "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"],
                       # nothing reaches the HTTP port (its model-repository / shared-memory / trace / logging APIs
                       # included); the kubelet's probes come from the node, which NetworkPolicy does not govern
                       "ingress": [
                           {"from": [from_namespace(CLIENT_NAMESPACE)], "ports": [{"protocol": "TCP", "port": GRPC_PORT}]},
                           {"from": [from_namespace(MONITORING_NAMESPACE)], "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
                       ]}}
    podmonitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": _meta(NAME),
                  "spec": {"selector": {"matchLabels": selector},
                           "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}]}}
    prometheusrule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": _meta(NAME),
                      "spec": {"groups": rule_groups()}}
    return {"deployment.yaml": deployment, "model-repository-pvc.yaml": pvc, "service.yaml": service, "hpa.yaml": hpa,
            "pdb.yaml": pdb, "networkpolicy.yaml": netpol, "podmonitor.yaml": podmonitor,
            "prometheusrule.yaml": prometheusrule}


def overlay_patch(flavor: str) -> dict:
    """The Deployment patch (strategic merge) of an overlay: image, command, resources, shm size, startup time."""
    shm = f"{shm_size_mi('embedded' if flavor == 'cpu' else 'tensorrt')}Mi"
    if flavor == "cpu":
        container: dict[str, Any] = {
            "name": CONTAINER, "image": CPU_IMAGE,
            # bonescan serve: the embedded flavor's tritonserver with the project's restrictions
            "args": ["serve", "--repo", MODEL_MOUNT, "--admin-key-file", launch.KEY_FILE_IN_CONTAINER, "--", *TRITON_ARGS],
            "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "3Gi"}},
            "startupProbe": {"failureThreshold": 30},
        }
    else:
        container = {
            "name": CONTAINER, "image": GPU_IMAGE,
            # the image's entrypoint is the launcher (launch.launcher_script): /models, the restrictions, the
            # key from the mounted Secret; these go on to tritonserver
            "args": TRITON_ARGS,
            "resources": {"requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
                          "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"}},
            # TensorRT engines and CUDA contexts take longer to load: up to 10 minutes
            "startupProbe": {"failureThreshold": 60},
        }
    spec: dict[str, Any] = {"containers": [container], "volumes": [{"name": "dshm", "emptyDir": {"sizeLimit": shm}}]}
    if flavor == "gpu":
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME},
            "spec": {"template": {"spec": spec}}}


def kustomizations() -> dict[str, dict]:
    """Relative path -> kustomization.yaml content."""
    base: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": NAMESPACE,
            "resources": list(base_objects())}
    out = {"base/kustomization.yaml": base}
    for flavor in ("cpu", "gpu"):
        out[f"overlays/{flavor}/kustomization.yaml"] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": ["../../base"],
            "patches": [{"path": "deployment-patch.yaml"}]}
    return out


# ----------------------------------------------------------------------------- a small kustomize
def strategic_merge(base: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge for what the overlays use: maps merge key by key, lists of named
    maps (containers, volumes, ports) merge by ``name``, other lists and scalars are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out_list = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out_list)}
        for item in patch:
            if item["name"] in index:
                out_list[index[item["name"]]] = strategic_merge(out_list[index[item["name"]]], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def render(directory: Path) -> list[dict]:
    """The objects ``kubectl apply -k DIRECTORY`` applies, for the kustomization features these files use
    (resources, namespace, patches by path with a kind / name of the patch's own); others are refused."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(k) - {"apiVersion", "kind", "resources", "namespace", "patches"}
    if unknown:
        raise ValueError(f"{directory}: kustomization fields this renderer does not implement: {sorted(unknown)}")
    objects: list[dict] = []
    for res in k.get("resources", []):
        path = directory / res
        if path.is_dir():
            objects += render(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    for p in k.get("patches", []):
        if set(p) != {"path"}:
            raise ValueError(f"{directory}: only patches by path are implemented, got {p}")
        patch = yaml.safe_load((directory / p["path"]).read_text(encoding="utf-8"))
        hits = [i for i, o in enumerate(objects)
                if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]]
        if len(hits) != 1:
            raise ValueError(f"{directory / p['path']}: patches {len(hits)} objects, not one")
        objects[hits[0]] = strategic_merge(objects[hits[0]], patch)
    if "namespace" in k:
        for o in objects:
            o["metadata"]["namespace"] = k["namespace"]
    return objects


# ----------------------------------------------------------------------------- writing
HEADER = "# Generated by `python -m bonescan.serving.deploy` (src/bonescan/serving/deploy.py): edit that, not this file.\n"


class _Dumper(yaml.SafeDumper):
    """No &anchors / *aliases for objects used twice: every file reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=200, allow_unicode=True)


def _yaml_all(objs: list[dict]) -> str:
    return HEADER + "---\n".join(_yaml(o) for o in objs)


def files() -> dict[str, str]:
    """Path under deploy/ -> content, except the rendered manifests (see :func:`write`)."""
    out = {f"k8s/base/{name}": HEADER + _yaml(obj) for name, obj in base_objects().items()}
    out.update({f"k8s/{path}": HEADER + _yaml(obj) for path, obj in kustomizations().items()})
    for flavor in ("cpu", "gpu"):
        out[f"k8s/overlays/{flavor}/deployment-patch.yaml"] = HEADER + _yaml(overlay_patch(flavor))
    out["prometheus/rules.yaml"] = HEADER + _yaml({"groups": rule_groups()})
    out["prometheus/tests/rules_test.yaml"] = HEADER + _yaml(rule_tests())
    out["prometheus/tests/triton_chart_rule.yaml"] = (
        HEADER + "# Triton's deploy/k8s-onprem chart's autoscaling query, only for the unit test that shows its error.\n"
        + _yaml(triton_chart_rule()))
    out["prometheus/adapter-rules.yaml"] = HEADER + _yaml(adapter_rules())
    out["grafana/bonescan-triton.json"] = json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"
    return out


def rendered(deploy: Path) -> dict[str, str]:
    return {f"k8s/rendered/{flavor}.yaml": _yaml_all(render(deploy / "k8s" / "overlays" / flavor)) for flavor in ("cpu", "gpu")}


def write(deploy: Path) -> list[Path]:
    written = []
    for rel, text in files().items():
        path = deploy / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for rel, text in rendered(deploy).items():
        path = deploy / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(deploy: Path) -> list[str]:
    """Files under deploy/ that differ from what this module writes (the rendered ones from the files on disk)."""
    want = files()
    out = [rel for rel, text in want.items()
           if not (deploy / rel).is_file() or (deploy / rel).read_text(encoding="utf-8") != text]
    if not out:
        out += [rel for rel, text in rendered(deploy).items()
                if not (deploy / rel).is_file() or (deploy / rel).read_text(encoding="utf-8") != text]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bonescan.serving.deploy", description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parents[3],
                    help="the source tree (deploy/ is written inside it)")
    ap.add_argument("--check", action="store_true", help="only say which files differ")
    a = ap.parse_args(argv)
    deploy = a.root / "deploy"
    if a.check:
        diff = stale(deploy)
        for rel in diff:
            print(f"stale: deploy/{rel}")
        return 1 if diff else 0
    for p in write(deploy):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
