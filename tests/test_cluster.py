"""Replicas behind a real nginx (bonescan.serving.cluster) and client-side round robin: real
tritonservers from the session repository, a real nginx with a generated config, faults that are
real (SIGKILL, SIGSTOP), counters read from Triton's metrics and nginx's access log."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bonescan.client import BoneScanClient, ClientError
from bonescan.client.core import grpc_target
from bonescan.client.inputs import Request
from bonescan.data.dataset import BoneScanDataset
from bonescan.serving.cluster import (
    BalancerTLS,
    Cluster,
    NginxBalancer,
    find_nginx,
    make_rundir,
    nginx_config,
)
from bonescan.serving.ort_pipeline import OrtPipeline
from bonescan.serving.server import ADMIN_HEADER_GRPC, free_ports, port_free

TIMEOUT_S = 120
ADMIN_KEY = "cluster-admin-key-8c2e41b7f9"

try:
    find_nginx()
    HAVE_NGINX = True
except Exception:  # noqa: BLE001
    HAVE_NGINX = False
needs_nginx = pytest.mark.skipif(not HAVE_NGINX, reason="nginx is not installed (tools/apt.sh installs it)")


@pytest.fixture(scope="module")
def sample(dataset):
    return BoneScanDataset(dataset, "test")[0]


@pytest.fixture(scope="module")
def expected(exports, sample):
    pipe = OrtPipeline(exports["dualpath"])
    return pipe.answer(sample.image[None], np.array([sample.pixel_spacing], np.float32), [sample.report])[0][0, 0]


@pytest.fixture(scope="module")
def cluster(repo, work):
    """Two replicas and nginx, started once for this module."""
    c = Cluster(repo, 2, rundir=work / "cluster_test", admin_key=ADMIN_KEY, health_interval_s=0.5)
    c.start(timeout=240)
    yield c
    c.stop()


def _segment(client: BoneScanClient, sample, expected, n: int) -> Counter:
    out: Counter = Counter()
    for i in range(n):
        try:
            r = client.segment_prepared([Request(sample.image, sample.report, tuple(sample.pixel_spacing), f"case{i}")])[0]
            out["ok" if np.array_equal(r.mask, expected) else "wrong"] += 1
        except ClientError:
            out["error"] += 1
    return out


def _inference_entries(cluster: Cluster, since: float, n: int) -> list[dict]:
    """nginx's access-log entries of the inference requests since ``since``, once there are ``n``
    (nginx writes a request's line after the client has its answer: wait a moment for the last)."""
    deadline = time.monotonic() + 5
    while True:
        found = [e for e in cluster.balancer.entries() if e["t"] >= since and e["uri"].endswith("/ModelInfer")]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _deltas(cluster: Cluster, before: list, n: int) -> list[float]:
    """Each replica's nv_inference_request_success since ``before``, once they add up to ``n`` (Triton
    counts a request as it releases it, a moment after the client has the answer)."""
    deadline = time.monotonic() + 5
    while True:
        deltas = [(a or 0) - (b or 0) for a, b in zip(cluster.successes(), before)]
        if sum(deltas) >= n or time.monotonic() > deadline:
            return deltas
        time.sleep(0.1)


def test_grpc_target_one_address_is_unchanged_several_are_round_robin():
    assert grpc_target("localhost:8001") == ("localhost:8001", None)
    target, args = grpc_target("localhost:8001,127.0.0.1:8002")
    assert target == "ipv4:127.0.0.1:8001,127.0.0.1:8002"
    assert ("grpc.lb_policy_name", "round_robin") in args
    assert dict(args)["grpc.max_receive_message_length"] > 2**30  # tritonclient's defaults kept
    assert grpc_target(["localhost:1", "localhost:2"])[0] == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert dict(grpc_target("localhost:1,localhost:2", ssl=True)[1])["grpc.ssl_target_name_override"] == "localhost"
    with pytest.raises(ClientError):
        grpc_target("localhost:1,nonsense")


@needs_nginx
def test_nginx_config_is_accepted_by_nginx(tmp_path: Path):
    import subprocess

    conf = nginx_config(tmp_path, "127.0.0.1", 18001, [("127.0.0.1", 18002), ("127.0.0.1", 18003)], frozenset({1}),
                        BalancerTLS(Path("/etc/ssl/certs/ssl-cert-snakeoil.pem"), Path("/k.pem"), Path("/ca.pem")))
    assert "grpc_pass grpc://bonescan_replicas;" in conf and "max_fails=1" in conf
    assert "server 127.0.0.1:18003 max_fails=1 fail_timeout=2s down;" in conf
    assert "ssl_verify_client on;" in conf and "listen 127.0.0.1:18001 ssl http2;" in conf
    make_rundir(tmp_path)
    plain = tmp_path / "plain.conf"
    plain.write_text(nginx_config(tmp_path, "127.0.0.1", 18001, [("127.0.0.1", 18002)]))
    done = subprocess.run([find_nginx(), "-t", "-p", str(tmp_path), "-c", str(plain), "-e", str(tmp_path / "e.log")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert ADMIN_KEY not in conf


@needs_nginx
def test_requests_through_nginx_are_answered_by_both_replicas(cluster, sample, expected):
    before = cluster.successes()
    with BoneScanClient(cluster.address, timeout_s=TIMEOUT_S, want_probability=False) as c:
        assert _segment(c, sample, expected, 6) == Counter(ok=6)
    deltas = _deltas(cluster, before, 6)
    assert sum(deltas) == 6 and min(deltas) >= 1, deltas  # Triton's own counters: both replicas answered
    answered = Counter(e["attempts"][-1][0] for e in cluster.balancer.entries()
                       if e["uri"].endswith("/ModelInfer") and e["status"] == 200)
    assert set(answered) == set(cluster.replica_addresses)  # nginx's log says the same


@needs_nginx
def test_the_admin_key_is_on_no_command_line_and_works_through_nginx(cluster):
    import tritonclient.grpc as grpcclient

    procs = [cluster.balancer.proc.pid] + [s.proc.pid for s in cluster.servers]
    for pid in procs:
        assert ADMIN_KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert ADMIN_KEY not in cluster.balancer.conf.read_text()
    g = grpcclient.InferenceServerClient(cluster.address)
    with pytest.raises(Exception, match="(?i)restricted"):
        g.get_model_repository_index()
    for _ in range(2):  # each replica has the key
        assert g.get_model_repository_index(headers={ADMIN_HEADER_GRPC: ADMIN_KEY}) is not None
    g.close()


@needs_nginx
def test_client_round_robin_over_two_replica_addresses(cluster, sample, expected):
    """Without a balancer: the client library spreads requests over the servers it is given."""
    before = cluster.successes()
    with BoneScanClient(cluster.replica_addresses, timeout_s=TIMEOUT_S, want_probability=False) as c:
        assert c.opts.url == ",".join(cluster.replica_addresses)
        assert _segment(c, sample, expected, 8) == Counter(ok=8)
    deltas = _deltas(cluster, before, 8)
    assert sum(deltas) == 8 and min(deltas) >= 3, deltas  # round robin: 4 / 4


@needs_nginx
def test_tls_and_mutual_tls_terminate_at_nginx(cluster, sample, expected, tmp_path):
    from tests.test_client import _certificates

    certs = _certificates(tmp_path)
    (port,) = free_ports(1)
    lb = NginxBalancer(tmp_path / "tls", "127.0.0.1", port, [("127.0.0.1", s.grpc_port) for s in cluster.servers],
                       BalancerTLS(certs["server.crt"], certs["server.key"], certs["ca.crt"]).check())
    lb.start()
    try:
        with BoneScanClient(f"localhost:{port}", ssl=True, root_certificates=str(certs["ca.crt"]),
                            private_key=str(certs["client.key"]), certificate_chain=str(certs["client.crt"]),
                            timeout_s=TIMEOUT_S, want_probability=False) as c:
            assert _segment(c, sample, expected, 2) == Counter(ok=2)
        with pytest.raises(ClientError):  # no client certificate: refused by nginx
            BoneScanClient(f"localhost:{port}", ssl=True, root_certificates=str(certs["ca.crt"]), retries=0, timeout_s=5)
    finally:
        lb.stop()


@needs_nginx
def test_a_killed_replica_is_skipped_and_taken_back_after_its_restart(cluster, sample, expected):
    addr1 = cluster.replica_addresses[1]
    # the time before the kill: the health monitor can mark the replica down before kill() returns (it waits for
    # the process to go), and an event stamped then is still this kill's
    t_kill = time.time()
    cluster.kill(1)
    before = cluster.successes()
    with BoneScanClient(cluster.address, timeout_s=TIMEOUT_S, want_probability=False, retries=3, backoff_s=0.2) as c:
        # nothing was in flight at the kill: nginx moves every request on, the client sees no error
        assert _segment(c, sample, expected, 6) == Counter(ok=6)
        assert _deltas(cluster, before, 6)[0] == 6
        after_kill = _inference_entries(cluster, t_kill, 6)
        assert len(after_kill) == 6 and all(e["status"] == 200 for e in after_kill)
        assert not any(e["attempts"][-1][0] == addr1 for e in after_kill)  # none answered by the dead replica
        down = [t for t, what in cluster.events if what == "replica 1 not ready: down in nginx" and t >= t_kill]
        assert down and down[0] - t_kill < 3.0, cluster.events  # the health check marked it down

        t_restart = time.time()  # the health monitor may put it back before restart() returns
        cluster.restart(1, timeout=240)
        deadline = time.monotonic() + 10
        while not any(w == "replica 1 ready: back in nginx" and t >= t_restart for t, w in cluster.events):
            assert time.monotonic() < deadline, cluster.events
            time.sleep(0.1)
        before = cluster.successes()
        assert _segment(c, sample, expected, 6) == Counter(ok=6)
    deltas = _deltas(cluster, before, 6)
    assert sum(deltas) == 6 and deltas[1] >= 1, deltas  # routing to the restarted replica resumed


@needs_nginx
def test_faults_at_scale_short(repo, exports, dataset, work):
    """CI version of `bonescan bench cluster` (fault part): 3 replicas at concurrency 8, one slowed
    (SIGSTOP 75 % of the time), one SIGKILLed under load and restarted; every request accounted for."""
    from bonescan.benchmarks.cluster import expected_masks, fault_run, summarize
    from bonescan.benchmarks.latency import load_cases

    cases = load_cases(dataset, 4)
    res = fault_run(repo, cases, expected_masks(exports["dualpath"], cases), work / "cluster_bench", replicas=3, concurrency=8,
                    warmup_requests=8, slow_after=8, restart_after_s=1.0, answered_after_restart=2, after_restart_s=2.0,
                    timeout_s=TIMEOUT_S, retries=6, backoff_s=0.5, deadline_s=400)
    print(summarize({"faults": res}))
    assert res["lost"] == 0 and res["answered_wrong"] == 0 and res["answered_not_executed"] == 0, res
    assert res["errors"] == 0, res["error_examples"]  # the client's retries carry the requests in flight at the kill
    assert res["answered_correctly"] == res["requests"] >= 24
    fo = res["failover"]
    assert fo["answered_by_it_after_restart"] >= 1 and fo["marked_down_by_health_check_s"] is not None
    assert fo["marked_down_by_health_check_s"] < 3.0
    # the counters move: the servers executed what was answered, on every replica
    assert res["executed_on_server"] >= res["answered_correctly"] and min(res["executions_per_replica"]) >= 1
    assert sum(res["nginx_answers_per_replica"]) >= res["answered_correctly"]
    assert res["ok"], res


@needs_nginx
def test_bonescan_serve_replicas_prints_the_balancer_and_ctrl_c_stops_all(repo, sample, expected, tmp_path):
    """`bonescan serve --replicas 2` as a user runs it: the balancer's address and each replica's
    ports are printed, the client works unchanged against the balancer, Ctrl-C stops every process."""
    import os
    import re
    import signal
    import subprocess
    import sys

    (port,) = free_ports(1)
    terminal = tmp_path / "terminal.txt"
    cmd = [str(Path(sys.executable).parent / "bonescan"), "serve", "--repo", str(repo), "--replicas", "2",
           "--grpc-port", str(port), "--bind", "127.0.0.1", "--log-dir", str(tmp_path / "run")]
    with open(terminal, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C or SIGTERM stops all." not in terminal.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, terminal.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        text = terminal.read_text()
        assert f"ready: gRPC 127.0.0.1:{port} (nginx" in text
        replicas = re.findall(r"replica (\d): gRPC 127\.0\.0\.1:(\d+)\s+HTTP 127\.0\.0\.1:(\d+)", text)
        assert [r[0] for r in replicas] == ["0", "1"]
        pids = [int(p) for p in re.findall(r"pid (\d+)", text)]
        with BoneScanClient(f"localhost:{port}", timeout_s=TIMEOUT_S, want_probability=False) as c:
            assert _segment(c, sample, expected, 2) == Counter(ok=2)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        code = proc.wait(90)
    assert code == 0, terminal.read_text()[-2000:]
    assert "stopped" in terminal.read_text()
    for pid in pids:  # nginx
        assert not os.path.exists(f"/proc/{pid}")
    for _, grpc_port, http_port in replicas:  # the replicas' ports are free again
        assert port_free(int(grpc_port)) and port_free(int(http_port))


@needs_nginx
def test_demo_cluster_prints_the_query_that_shows_every_replica_answered(repo, dataset, tmp_path, capsys):
    """`make demo-cluster` on a demo folder: scans through nginx, a real Prometheus counts each replica's
    answers, and the counts add up to what the client got."""
    from bonescan.benchmarks.demo_cluster import QUERY, run_demo_cluster
    from bonescan.errors import BonescanError

    with pytest.raises(BonescanError, match="run `make demo` first"):
        run_demo_cluster(tmp_path / "nothing")
    out = tmp_path / "demo_out"
    out.mkdir()
    (out / "model_repository").symlink_to(repo)
    (out / "data").symlink_to(dataset)
    result = run_demo_cluster(out, replicas=2, scans=8, concurrency=4, progress=False)
    said = capsys.readouterr().out
    assert result["ok"], said
    n = len(BoneScanDataset(dataset, "test").refs[:8])
    assert n >= 4 and result["answered"] == n and result["failed"] == 0 and sum(result["per_replica"].values()) == n
    assert len(result["per_replica"]) == 2 and all(n > 0 for n in result["per_replica"].values())
    assert f"Prometheus query: {QUERY}" in said and "all 2 replicas answered" in said
