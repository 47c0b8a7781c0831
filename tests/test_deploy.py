"""deploy/: the Kubernetes manifests, the Prometheus rules and the Grafana dashboard (bonescan.serving.deploy).

Offline: the rendered manifests of both overlays against the Kubernetes schemas (kubernetes-validate
--strict, Kubernetes KUBERNETES_VERSION), the custom resources against their CRDs' schemas
(check-jsonschema, deploy/schemas), the rules with promtool (check + unit tests). No cluster, no
kustomize, no Prometheus server.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from bonescan import contract as C
from bonescan.serving import deploy as D
from bonescan.serving import launch
from bonescan.serving.repository import RepoOptions
from bonescan.serving.server import check_passthrough

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
FLAVORS = ("cpu", "gpu")
SCHEMAS = {"PodMonitor": DEPLOY / "schemas/prometheus-operator/podmonitor.json",
           "PrometheusRule": DEPLOY / "schemas/prometheus-operator/prometheusrule.json"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: tools/apt.sh installs it (Debian package prometheus)")


def rendered(flavor: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / f"k8s/rendered/{flavor}.yaml").read_text()) if d]


def obj(objs: list[dict], kind: str) -> dict:
    (o,) = [o for o in objs if o["kind"] == kind]
    return o


def container(objs: list[dict]) -> dict:
    (c,) = obj(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def run(*cmd, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=60)


# ----------------------------------------------------------------------------- one source
def test_committed_files_are_the_generators_output():
    stale = D.stale(DEPLOY)
    assert not stale, f"run `python -m bonescan.serving.deploy`: {stale}"


def test_rendered_files_are_the_overlays_applied_to_the_base(tmp_path):
    for flavor in FLAVORS:
        assert D.render(DEPLOY / "k8s/overlays" / flavor) == rendered(flavor)
    # a change in an overlay's patch shows in what it renders
    shutil.copytree(DEPLOY / "k8s", tmp_path / "k8s")
    patch = tmp_path / "k8s/overlays/cpu/deployment-patch.yaml"
    patch.write_text(patch.read_text().replace(D.CPU_IMAGE, "registry.example/bonescan:9"))
    assert container(D.render(tmp_path / "k8s/overlays/cpu"))["image"] == "registry.example/bonescan:9"
    # kustomization features the renderer does not implement are refused, not ignored
    k = tmp_path / "k8s/overlays/cpu/kustomization.yaml"
    k.write_text(k.read_text() + "images:\n- name: x\n  newName: y\n")
    with pytest.raises(ValueError, match="images"):
        D.render(tmp_path / "k8s/overlays/cpu")


def test_strategic_merge_merges_named_lists_and_replaces_others():
    base = {"containers": [{"name": "a", "image": "x", "ports": [{"name": "p", "containerPort": 1}]}, {"name": "b"}],
            "args": ["1", "2"], "m": {"k": 1, "j": 2}}
    patch = {"containers": [{"name": "a", "image": "y"}, {"name": "c"}], "args": ["3"], "m": {"k": 5}}
    assert D.strategic_merge(base, patch) == {
        "containers": [{"name": "a", "image": "y", "ports": [{"name": "p", "containerPort": 1}]}, {"name": "b"}, {"name": "c"}],
        "args": ["3"], "m": {"k": 5, "j": 2}}


# ----------------------------------------------------------------------------- Kubernetes schemas
def test_kubernetes_validate_strict_passes_both_overlays_and_catches_an_unknown_field(tmp_path):
    files = [DEPLOY / f"k8s/rendered/{f}.yaml" for f in FLAVORS]
    done = run(BIN / "kubernetes-validate", "--strict", "-k", D.KUBERNETES_VERSION, *files)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    for f in FLAVORS:
        for o in rendered(f):
            if o["kind"] not in SCHEMAS:
                assert f"{f}.yaml passed for resource {o['kind'].lower()}/{o['metadata']['name']}" in out, out
    # the custom resources are only warned about: they are checked against their CRDs below
    for kind in SCHEMAS:
        assert f"Couldn't find schema for kind {kind}" in out
    # --strict rejects a misspelt field (what a typo in the generator would be)
    bad = rendered("gpu")
    obj(bad, "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump_all(bad))
    done = run(BIN / "kubernetes-validate", "--strict", "-k", D.KUBERNETES_VERSION, tmp_path / "bad.yaml")
    assert done.returncode != 0 and "readinesProbe" in done.stdout + done.stderr


def _strict(schema: dict) -> dict:
    """The CRD schema as the API server's strict field validation reads it: no unknown fields."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(s)
    s["properties"]["metadata"] = {"type": "object"}
    return s


def test_custom_resources_match_their_crd_schemas(tmp_path):
    for flavor in FLAVORS:
        for kind, schema in SCHEMAS.items():
            o = obj(rendered(flavor), kind)
            assert o["apiVersion"] == "monitoring.coreos.com/v1"
            path = tmp_path / f"{flavor}-{kind}.yaml"
            path.write_text(yaml.safe_dump(o))
            done = run(BIN / "check-jsonschema", "--schemafile", schema, path)
            assert done.returncode == 0, done.stdout + done.stderr
            jsonschema.validate(o, _strict(json.loads(schema.read_text())))
    # the check can fail: a port number where the PodMonitor needs the port's name, a misspelt field
    pm = obj(rendered("cpu"), "PodMonitor")
    pm["spec"]["podMetricsEndpoints"][0]["port"] = D.METRICS_PORT
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(pm))
    done = run(BIN / "check-jsonschema", "--schemafile", SCHEMAS["PodMonitor"], tmp_path / "bad.yaml")
    assert done.returncode != 0 and "port" in done.stdout
    pm = obj(rendered("cpu"), "PodMonitor")
    pm["spec"]["podMetricEndpoints"] = pm["spec"].pop("podMetricsEndpoints")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pm, _strict(json.loads(SCHEMAS["PodMonitor"].read_text())))


def test_schemas_are_kept_with_their_licence():
    assert "Apache License" in (DEPLOY / "schemas/prometheus-operator/LICENSE").read_text()
    readme = (DEPLOY / "schemas/README.md").read_text()
    for schema in SCHEMAS.values():
        assert schema.name in readme


# ----------------------------------------------------------------------------- the Deployment
@pytest.mark.parametrize("flavor", FLAVORS)
def test_deployment_probes_ports_shm_and_volumes(flavor):
    objs = rendered(flavor)
    c = container(objs)
    spec = obj(objs, "Deployment")["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": D.HTTP_PORT, "grpc": D.GRPC_PORT, "metrics": D.METRICS_PORT}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model loading: at least 5 minutes
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    # /dev/shm: 64 MB per python-backend instance of the flavor's repository
    repo_flavor = "embedded" if flavor == "cpu" else "tensorrt"
    instances = D.python_instances(repo_flavor)
    assert instances == (6 if flavor == "cpu" else 3)
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{64 * instances}Mi"}
    assert mounts["model-repository"] == {"name": "model-repository", "mountPath": D.MODEL_MOUNT, "readOnly": True}
    assert volumes["model-repository"]["persistentVolumeClaim"]["readOnly"] is True
    assert mounts["admin-key"]["mountPath"] == launch.KEY_FILE_IN_CONTAINER
    assert volumes["admin-key"]["secret"]["secretName"] == D.SECRET_NAME
    res = c["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and spec["securityContext"]["runAsNonRoot"] is True
    if flavor == "gpu":
        assert c["image"] == launch.IMAGE and launch.NGC_IMAGE.endswith(c["image"].rsplit(":", 1)[1])
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == "1"
        # the launcher passes these on (no flag that would undo a restriction)
        assert not {a.split("=", 1)[0] for a in c["args"]} & set(launch.RESTRICTION_FLAGS)
    else:
        assert c["image"] == D.CPU_IMAGE and "nvidia.com/gpu" not in json.dumps(res)
        assert c["args"][:5] == ["serve", "--repo", D.MODEL_MOUNT, "--admin-key-file", launch.KEY_FILE_IN_CONTAINER]
        assert check_passthrough(c["args"][c["args"].index("--") + 1:])


def test_python_instances_follow_the_repository_options():
    assert D.python_instances("embedded", RepoOptions(instances=2, python_instances=3)) == 3 * 2 + 3 * 3
    assert D.python_instances("tensorrt", RepoOptions(flavor="tensorrt", instances=2, python_instances=1)) == 3


def test_service_and_network_policy_open_grpc_to_clients_and_metrics_to_monitoring_only():
    for flavor in FLAVORS:
        objs = rendered(flavor)
        assert [p["port"] for p in obj(objs, "Service")["spec"]["ports"]] == [D.GRPC_PORT]
        np = obj(objs, "NetworkPolicy")
        assert np["spec"]["policyTypes"] == ["Ingress"]
        assert np["spec"]["podSelector"]["matchLabels"] == obj(objs, "Deployment")["spec"]["selector"]["matchLabels"]
        allowed: dict[int, set[str]] = {}
        for rule in np["spec"]["ingress"]:
            # a rule without ports opens every port, one without `from` every source
            assert rule.get("ports") and rule.get("from"), rule
            sources = set()
            for peer in rule["from"]:
                assert set(peer) == {"namespaceSelector"}, peer  # no ipBlock, no podSelector-only peer
                sources.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
            for port in rule["ports"]:
                allowed.setdefault(port["port"], set()).update(sources)
        assert allowed == {D.GRPC_PORT: {D.CLIENT_NAMESPACE}, D.METRICS_PORT: {D.MONITORING_NAMESPACE}}
        assert D.HTTP_PORT not in allowed  # the admin APIs (model-repository, shared-memory, trace, logging)
        assert obj(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
        assert obj(objs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


# ----------------------------------------------------------------------------- autoscaling
def test_hpa_scales_on_the_sum_ratio_queue_time():
    hpa = obj(rendered("gpu"), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == D.HPA_METRIC
    (rule,) = D.adapter_rules()["rules"]
    assert yaml.safe_load((DEPLOY / "prometheus/adapter-rules.yaml").read_text()) == D.adapter_rules()
    assert rule["name"]["as"] == D.HPA_METRIC
    q = rule["metricsQuery"]
    assert q == D.queue_per_request("<<.LabelMatchers>>", "<<.GroupBy>>")
    assert ("sum by (<<.GroupBy>>) (rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[1m])) / "
            "(sum by (<<.GroupBy>>) (rate(nv_inference_request_success{<<.LabelMatchers>>}[1m])) > 0)") in q
    assert "avg" not in q and "1+" not in q.replace(" ", "")  # not Triton's chart's mean of per-model ratios
    recorded = {r["record"]: r["expr"] for r in D.recording_rules()}
    assert recorded[D.QUEUE_RECORD] == D.queue_per_request()


def _promtool_test(tmp_path: Path, rules_expr: str | None = None, adapter: bool = False) -> subprocess.CompletedProcess:
    """promtool test rules on a copy of deploy/prometheus, the queue record's expression replaced if asked."""
    shutil.copytree(DEPLOY / "prometheus", tmp_path / "prometheus")
    if rules_expr is not None:
        groups = yaml.safe_load((tmp_path / "prometheus/rules.yaml").read_text())
        for g in groups["groups"]:
            for r in g["rules"]:
                if r.get("record") == D.QUEUE_RECORD:
                    r["expr"] = rules_expr
        (tmp_path / "prometheus/rules.yaml").write_text(yaml.safe_dump(groups))
    return run(PROMTOOL, "test", "rules", "rules_test.yaml", cwd=tmp_path / "prometheus/tests")


@needs_promtool
def test_promtool_check_rules_passes_the_rule_file_and_the_prometheusrule(tmp_path):
    done = run(PROMTOOL, "check", "rules", DEPLOY / "prometheus/rules.yaml")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    for flavor in FLAVORS:
        path = tmp_path / f"{flavor}.yaml"
        path.write_text(yaml.safe_dump(obj(rendered(flavor), "PrometheusRule")["spec"]))
        done = run(PROMTOOL, "check", "rules", path)
        assert done.returncode == 0, done.stdout + done.stderr
    assert obj(rendered("cpu"), "PrometheusRule")["spec"] == yaml.safe_load((DEPLOY / "prometheus/rules.yaml").read_text())
    path.write_text("groups:\n- name: x\n  rules:\n  - record: y\n    expr: sum(rate(x[1m])\n")
    assert run(PROMTOOL, "check", "rules", path).returncode != 0


@needs_promtool
def test_promtool_unit_tests_pass_and_catch_the_chart_formula(tmp_path):
    done = _promtool_test(tmp_path / "ours")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr
    # the same tests fail when the record is Triton's chart's query: one busy model beside idle ones
    done = _promtool_test(tmp_path / "chart", D.TRITON_CHART_QUERY)
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr


@needs_promtool
def test_the_adapters_query_gives_the_true_queue_time(tmp_path):
    """prometheus-adapter's metricsQuery with its placeholders filled as it fills them for a Pods metric."""
    q = D.adapter_rules()["rules"][0]["metricsQuery"]
    q = q.replace("<<.LabelMatchers>>", f'namespace="{D.NAMESPACE}",pod=~"p0|p1"').replace("<<.GroupBy>>", "namespace,pod")
    done = _promtool_test(tmp_path, q)
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------------------- dashboard and alerts
def test_dashboard_panels_read_known_metrics_only():
    dash = json.loads((DEPLOY / "grafana/bonescan-triton.json").read_text())
    assert dash == D.dashboard()
    used: set[str] = set()
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            names = D.metric_names(t["expr"])
            assert names, (panel["title"], t["expr"])
            unknown = {n for n in names if not D.known_metric(n)}
            assert not unknown, (panel["title"], unknown)
            used |= names
    # what the issue asks for: latency, queue, throughput, failures, GPU, and every python-step metric
    for name in ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_queue_duration_us",
                 "nv_inference_compute_infer_duration_us", "nv_inference_request_duration_us", "nv_inference_count",
                 "nv_inference_exec_count", "nv_gpu_utilization", "nv_inference_request_summary_us", D.QUEUE_RECORD):
        assert name in used, name
    for name in C.BONESCAN_METRICS:
        assert any(u == name or u.startswith(name + "_") for u in used), name
    assert not D.known_metric("nv_inference_queue_time_us") and not D.known_metric("bonescan_refused_total")
    assert D.metric_names('rate(x{model=~"bonescan|bonescan_unet"}[1m])') == set()


def test_rules_read_known_metrics_and_ensemble_names_from_the_contract():
    for group in D.rule_groups():
        for r in group["rules"]:
            names = D.metric_names(r["expr"])
            assert names and all(D.known_metric(n) for n in names), (r, names)
    assert D.ENSEMBLE_RE.split("|") == list(C.ENSEMBLES)
    assert set(D.STEP_RE.split("|")) >= {C.PREPROCESS_MODEL, C.TOKENIZER_MODEL, C.TEXT_ENCODER_MODEL,
                                         C.SEGMENTER_MODEL, C.POSTPROCESS_MODEL}


# ----------------------------------------------------------------------------- the CPU image
def test_cpu_dockerfile_lints_and_matches_the_deployment():
    from dockerfile_parse import DockerfileParser

    path = DEPLOY / "docker/Dockerfile.cpu"
    done = run(BIN / "hadolint", path)
    assert done.returncode == 0, done.stdout + done.stderr
    with path.open("rb") as f:  # a path not named Dockerfile is read as a folder: give the file
        df = DockerfileParser(fileobj=f)
        structure, baseimage = df.structure, df.baseimage
    by = {}
    for ins in structure:
        by.setdefault(ins["instruction"], []).append(ins["value"])
    assert sorted(int(p) for p in by["EXPOSE"][0].split()) == sorted([D.HTTP_PORT, D.GRPC_PORT, D.METRICS_PORT])
    assert json.loads(by["ENTRYPOINT"][0]) == ["bonescan"]
    assert json.loads(by["CMD"][0]) == container(rendered("cpu"))["args"][:5]
    assert any("-r requirements/lock.txt" in v for v in by["RUN"])
    assert baseimage.startswith("python:3.11")
    assert D.CPU_IMAGE in path.read_text()
