"""``bonescan bench cluster``: faults at scale, behind a real load balancer (printed figures).

1. **Faults.** N replicas (default 3) behind nginx (:class:`bonescan.serving.cluster.Cluster`),
   requests at concurrency C (default 8) through the client library (its retries) to the
   balancer's address. After a warm-up one replica is made slow (SIGSTOP / SIGCONT of its process
   group, stopped 75 % of the time), then another is SIGKILLed, restarted on the same ports a
   moment later, and the load goes on until it has answered requests again. Counted per request id,
   as ``bench kill`` counts: answered correctly (the mask of in-process onnxruntime on the same
   export), answered wrong, errors, lost (no outcome by the run's deadline), executions on the
   server side (each replica's ``preprocess`` appends the ids it runs to its own file), executed
   twice, retries. From nginx's access log and the cluster's events: when nginx stopped sending to
   the dead replica and when it took it back, and how much of the load the slow one got.
2. **Throughput** with 1, 2, 3 replicas at the same concurrency, and the CPU each replica kept busy
   (psutil: tritonserver and its python-backend stubs), with the model of how it scales.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bonescan.benchmarks.faults import _AttemptCounter, account, run_requests
from bonescan.benchmarks.latency import cpu_info, load_cases, run_info
from bonescan.benchmarks.report import provenance
from bonescan.errors import BonescanError


def export_of(repo: Path) -> Path:
    """The dual-path export a repository was built from (its manifest records it)."""
    from bonescan.serving.repository import read_manifest

    entry = (read_manifest(repo).get("dualpath") or {}).get("export")
    path = (Path(repo) / entry) if entry else None
    if path is None or not path.is_dir():
        raise BonescanError(f"{repo}: the export it was built from is not on this machine; give it with --export "
                            "(the expected masks come from it, in-process)")
    return path.resolve()


def expected_masks(export: Path, cases: list) -> list[np.ndarray]:
    """What the served ensemble answers for each case (in-process onnxruntime, the fail-safe included)."""
    from bonescan.serving.ort_pipeline import OrtPipeline

    pipe = OrtPipeline(export)
    return [pipe.answer(img[None].astype(np.float32), np.array([sp], np.float32), [rep])[0][0, 0] for img, rep, sp in cases]


def run_until(send: Callable[[int], str], concurrency: int, stop: threading.Event, deadline_s: float) -> tuple[int, dict[int, str]]:
    """``send(0), send(1), ...`` on ``concurrency`` threads until ``stop`` is set (no new request
    starts), at most ``deadline_s`` in all -> (requests started, {i: outcome} of those that ended by
    the deadline). A started request without an outcome is lost; the run never waits longer."""
    return run_requests(send, itertools.count(), concurrency, deadline_s, stop)


def failover_figures(entries: list[dict], replica_addr: str, t_kill: float, t_ready: float | None,
                     t_down: float | None) -> dict[str, Any]:
    """From nginx's access log (one entry per request, its upstream attempts): how nginx treated the
    killed replica. Times in seconds after the SIGKILL (``t_kill``) or after the restarted replica was
    ready (``t_ready``)."""
    def start(e: dict) -> float:
        return e["t"] - e["request_time"]

    def tried(e: dict) -> bool:
        return any(a == replica_addr for a, _ in e["attempts"])

    def answered(e: dict) -> bool:
        return bool(e["attempts"]) and e["attempts"][-1][0] == replica_addr and e["attempts"][-1][1] == "200" and e["status"] == 200

    infer = [e for e in entries if e["uri"].endswith("/ModelInfer")]
    dead_until = t_ready if t_ready is not None else float("inf")
    # requests that reached the replica before the kill and ended after it: in flight at the kill
    in_flight = [e for e in infer if tried(e) and start(e) < t_kill <= e["t"]]
    after = [e for e in infer if t_kill <= start(e) < dead_until]
    tries_dead = [e for e in after if tried(e)]
    failed_over = [e for e in tries_dead if e["status"] == 200]
    back = [e for e in infer if t_ready is not None and start(e) >= t_ready and answered(e)]
    res: dict[str, Any] = {
        "in_flight_at_kill": len(in_flight),
        "in_flight_at_kill_502": sum(e["status"] == 502 for e in in_flight),
        "requests_while_dead": len(after),
        "requests_while_dead_that_tried_it": len(tries_dead),
        "requests_while_dead_that_tried_it_then_answered_elsewhere": len(failed_over),
        "first_try_after_kill_s": round(start(tries_dead[0]) - t_kill, 2) if tries_dead else None,
        "last_try_while_dead_s": round(start(tries_dead[-1]) - t_kill, 2) if tries_dead else None,
        "marked_down_by_health_check_s": round(t_down - t_kill, 2) if t_down is not None else None,
        "answered_by_it_after_restart": len(back),
        "first_answer_after_ready_s": round(start(back[0]) - t_ready, 2) if back and t_ready is not None else None,
    }
    return res


def _replica_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its living descendants (tritonserver and its stubs)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _client(address: str, timeout_s: float, retries: int, backoff_s: float):
    from bonescan.client import BoneScanClient

    client = BoneScanClient(address, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, want_probability=False)
    counter = _AttemptCounter(client.client)
    client.client = counter
    return client, counter


def fault_run(repo: Path, cases: list, expected: list[np.ndarray], out: Path, replicas: int = 3, concurrency: int = 8,
              warmup_requests: int = 16, slow_after: int = 8, slow_stopped: float = 0.75, restart_after_s: float = 2.0,
              answered_after_restart: int = 4, after_restart_s: float = 10.0, timeout_s: float = 120.0, retries: int = 6,
              backoff_s: float = 0.5, deadline_s: float = 900.0) -> dict[str, Any]:
    """The fault part: slow replica ``replicas - 1``, SIGKILL + restart of replica 0 (see the module docstring)."""
    from bonescan.client.inputs import Request
    from bonescan.serving.cluster import Cluster
    from bonescan.serving.pybackend import REQUEST_LOG_ENV, read_request_log

    if replicas < 2:
        raise BonescanError("the fault run needs 2 replicas or more")
    run = f"{os.getpid()}-{int(time.time())}"
    logs = [(out / f"cluster_ids_replica{i}.log").resolve() for i in range(replicas)]
    for p in logs:
        p.unlink(missing_ok=True)
    killed_i, slow_i = 0, replicas - 1
    cluster = Cluster(Path(repo), replicas, rundir=out / "cluster_run",
                      environment={i: {REQUEST_LOG_ENV: str(logs[i])} for i in range(replicas)})
    ended = [0]
    ended_lock = threading.Lock()
    stop = threading.Event()
    marks: dict[str, float] = {}
    problems: list[str] = []
    cluster.start(timeout=600)
    t0 = time.time()
    try:
        client, counter = _client(cluster.address, timeout_s, retries, backoff_s)

        def send(i: int) -> str:
            j = i % len(cases)
            img, rep, sp = cases[j]
            rid = f"cluster-{run}-{i}"
            counter.sending(rid)
            try:
                r = client.segment_prepared([Request(img, rep, sp, rid)])[0]
                return "ok" if np.array_equal(r.mask, expected[j]) else "wrong"
            finally:
                with ended_lock:
                    ended[0] += 1

        def wait_ended(n: int) -> bool:
            while ended[0] < n:
                if stop.is_set():
                    return False
                time.sleep(0.05)
            return True

        def director() -> None:
            throttle = None
            try:
                if not wait_ended(warmup_requests):
                    return
                throttle = cluster.slow(slow_i, slow_stopped).start()
                marks["slow"] = time.time()
                if not wait_ended(warmup_requests + slow_after):
                    return
                marks["kill"] = time.time()  # before the signal: requests in flight end (502) while kill() waits
                cluster.kill(killed_i)
                time.sleep(restart_after_s)
                try:
                    cluster.restart(killed_i, timeout=600)
                except Exception as e:  # noqa: BLE001 - the run goes on against the others and says why
                    problems.append(f"restart failed: {str(e).splitlines()[0][:160]}")
                    return
                marks["ready"] = time.time()
                base = cluster.successes()[killed_i] or 0.0
                until = time.monotonic() + max(after_restart_s, 0.0) + 120
                t_min = time.monotonic() + after_restart_s
                while time.monotonic() < until:
                    got = (cluster.successes()[killed_i] or 0.0) - base
                    if got >= answered_after_restart and time.monotonic() >= t_min:
                        break
                    time.sleep(0.25)
            finally:
                if throttle is not None:
                    throttle.stop()
                    marks["slow_end"] = time.time()
                stop.set()

        dt = threading.Thread(target=director, daemon=True, name="director")
        dt.start()
        started, outcomes = run_until(send, concurrency, stop, deadline_s)
        stop.set()
        dt.join(timeout=60)
        successes_end = cluster.successes()
        client.close()
    finally:
        cluster.stop()
    wall = time.time() - t0
    ids = [f"cluster-{run}-{i}" for i in range(started)]
    executed_per = [read_request_log(p) for p in logs]
    executed: Counter[str] = Counter()
    for c in executed_per:
        executed.update(c)
    res: dict[str, Any] = {"replicas": replicas, "concurrency": concurrency, "requests": started, "seconds": round(wall, 1),
                           "killed_replica": killed_i, "slow_replica": slow_i, "slow_stopped_share": slow_stopped,
                           "restart_after_s": restart_after_s, "timeout_s": timeout_s, "retries": retries,
                           "backoff_s": backoff_s, "deadline_s": deadline_s, "problems": problems,
                           "events": [(round(t - t0, 2), what) for t, what in cluster.events],
                           **account(ids, outcomes, executed, counter.attempts)}
    res["executions_per_replica"] = [sum(c[rid] for rid in ids) for c in executed_per]
    res["ids_executed_on_two_replicas"] = sum(sum(c.get(rid, 0) > 0 for c in executed_per) > 1 for rid in ids)
    res["triton_success_since_last_start"] = successes_end
    assert cluster.balancer is not None
    entries = cluster.balancer.entries()
    addrs = [f"127.0.0.1:{s.grpc_port}" for s in cluster.servers]
    answered_by: Counter[str] = Counter()
    for e in entries:
        if e["uri"].endswith("/ModelInfer") and e["status"] == 200 and e["attempts"]:
            answered_by[e["attempts"][-1][0]] += 1
    res["nginx_answers_per_replica"] = [answered_by.get(a, 0) for a in addrs]
    res["nginx_requests"] = sum(e["uri"].endswith("/ModelInfer") for e in entries)
    res["nginx_502"] = sum(e["uri"].endswith("/ModelInfer") and e["status"] == 502 for e in entries)
    t_down = next((t for t, what in cluster.events if what == f"replica {killed_i} not ready: down in nginx"
                   and t >= marks.get("kill", float("inf"))), None)
    if "kill" in marks:
        res["failover"] = failover_figures(entries, addrs[killed_i], marks["kill"], marks.get("ready"), t_down)
        res["failover"]["restart_to_ready_s"] = round(marks["ready"] - marks["kill"], 1) if "ready" in marks else None
    if "slow" in marks:
        lo, hi = marks["slow"], marks.get("slow_end", float("inf"))
        window = [e for e in entries if e["uri"].endswith("/ModelInfer") and lo <= e["t"] - e["request_time"] < hi
                  and e["status"] == 200 and e["attempts"]]
        per = Counter(e["attempts"][-1][0] for e in window)
        times = {a: [e["request_time"] for e in window if e["attempts"][-1][0] == a] for a in addrs}
        res["slow_window"] = {"seconds": round(min(hi, time.time()) - lo, 1), "answers_per_replica": [per.get(a, 0) for a in addrs],
                              "median_request_s_per_replica": [round(float(np.median(times[a])), 3) if times[a] else None
                                                               for a in addrs]}
    res["targets"] = {"lost": 0, "answered_wrong": 0, "answered_not_executed": 0, "errors": 0}
    res["ok"] = (all(res[k] == v for k, v in res["targets"].items()) and "ready" in marks and not problems
                 and res.get("failover", {}).get("answered_by_it_after_restart", 0) > 0)
    return res


def throughput(repo: Path, cases: list, out: Path, replicas: int, concurrency: int = 8, seconds: float = 30.0,
               warmup: int = 8, timeout_s: float = 300.0) -> dict[str, Any]:
    """Requests per second through nginx with ``replicas`` replicas, and the cores each replica kept busy."""
    import psutil

    from bonescan.client.inputs import Request
    from bonescan.serving.cluster import Cluster

    reqs = [Request(img, rep, sp, f"case{i}") for i, (img, rep, sp) in enumerate(cases)]
    with Cluster(Path(repo), replicas, rundir=out / f"cluster_throughput_{replicas}") as cluster:
        from bonescan.client import BoneScanClient

        client = BoneScanClient(cluster.address, timeout_s=timeout_s, retries=3, backoff_s=0.5, want_probability=False)
        try:
            for i in range(warmup):
                client.segment_prepared([reqs[i % len(reqs)]])
            pids = [s.proc.pid for s in cluster.servers if s.proc is not None]
            assert cluster.balancer is not None and cluster.balancer.proc is not None
            lb = psutil.Process(cluster.balancer.proc.pid)
            cpu0 = [_replica_cpu(p) for p in pids]
            lb0 = _replica_cpu(lb.pid)
            sys0 = psutil.cpu_times()
            t0 = time.monotonic()
            stop_at = t0 + seconds
            lat: list[float] = []
            errors = [0]
            lock = threading.Lock()

            def worker(k: int) -> None:
                i = k
                while time.monotonic() < stop_at:
                    t = time.perf_counter()
                    try:
                        client.segment_prepared([reqs[i % len(reqs)]])
                        with lock:
                            lat.append(time.perf_counter() - t)
                    except Exception:  # noqa: BLE001 - counted
                        with lock:
                            errors[0] += 1
                    i += concurrency

            threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - t0
            cpu = [(_replica_cpu(p) - c) / wall for p, c in zip(pids, cpu0)]
            lb_cpu = (_replica_cpu(lb.pid) - lb0) / wall
            sys1 = psutil.cpu_times()
            busy = sum(getattr(sys1, f) - getattr(sys0, f) for f in ("user", "system", "nice", "irq", "softirq"))
        finally:
            client.close()
    n = len(lat)
    return {"replicas": replicas, "concurrency": concurrency, "seconds": round(wall, 1), "requests": n, "errors": errors[0],
            "throughput_per_s": round(n / wall, 3), "p50_ms": round(1000 * float(np.median(lat)), 1) if lat else None,
            "cores_busy_per_replica": [round(c, 2) for c in cpu], "cores_busy_replicas": round(sum(cpu), 2),
            "cores_busy_nginx": round(lb_cpu, 3), "cores_busy_machine": round(busy / wall, 2),
            "core_seconds_per_request": round(sum(cpu) * wall / n, 3) if n else None}


def scaling_note(rows: list[dict[str, Any]], cores: int) -> str:
    """Why throughput does (not) grow with replicas here, in the measured numbers, and the model."""
    if not rows:
        return ""
    one = rows[0]
    c = float(np.median([r["core_seconds_per_request"] for r in rows if r["core_seconds_per_request"]]))
    ceiling = cores / c
    best = max(rows, key=lambda r: r["throughput_per_s"])
    fill = cores / one["cores_busy_replicas"] if one["cores_busy_replicas"] else float("nan")
    lines = [
        f"Each scan costs {c:.3f} core-seconds in the replicas (median over the rows), so {cores} cores serve at most "
        f"{cores} / {c:.3f} = {ceiling:.2f} scans/s however many replicas share them. One replica kept "
        f"{one['cores_busy_replicas']:.2f} of the {cores} cores busy ({one['throughput_per_s']:.2f} scans/s: its steps run "
        f"one after another, one instance each), so about {fill:.1f} replicas fill the cores; best measured "
        f"{best['throughput_per_s']:.2f} scans/s with {best['replicas']} ("
        + ", ".join(f"{r['replicas']}: {r['cores_busy_replicas']:.2f} cores busy" for r in rows)
        + "). More replicas than that only split the same cores (and each holds its own python-backend processes "
        "and memory).",
        "The model: throughput(N) ~= min(N x r1, K / c) for N replicas on K cores, r1 the rate of one replica with "
        "the cores it can use (its onnxruntime threads x instances) and c the core-seconds of one scan; replicas "
        "help up to about K / (cores one replica keeps busy). With GPUs, one replica per GPU: throughput ~= N_gpu x "
        "(one GPU's rate) until the host's cores run out, since the python steps (preprocess, tokenizer, "
        "postprocess) stay on the CPU at their own core-seconds per scan.",
    ]
    return "\n".join(lines)


def bench_cluster(repo: Path, data: Path, out: Path, export: Path | None = None, replicas: int = 3, concurrency: int = 8,
                  throughput_replicas: tuple[int, ...] = (1, 2, 3), throughput_seconds: float = 30.0, n_cases: int = 6,
                  **fault: Any) -> dict[str, Any]:
    """Both parts; writes OUT/cluster.json and OUT/cluster.md and prints the figures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    export = Path(export) if export else export_of(repo)
    cases = load_cases(data, n_cases)
    expected = expected_masks(export, cases)
    res: dict[str, Any] = {"machine": cpu_info(), "run": run_info(), "repo": str(repo)}
    res["faults"] = fault_run(repo, cases, expected, out, replicas, concurrency, **fault)
    (out / "cluster.json").write_text(json.dumps(res, indent=1) + "\n")  # kept if the throughput part fails
    print(summarize(res), flush=True)
    res["throughput"] = [throughput(repo, cases, out, n, concurrency, throughput_seconds) for n in throughput_replicas]
    res["scaling"] = scaling_note(res["throughput"], res["machine"]["cores"] or 1)
    res["ok"] = res["faults"]["ok"] and all(r["errors"] == 0 for r in res["throughput"])
    (out / "cluster.json").write_text(json.dumps(res, indent=1) + "\n")
    summary = summarize(res)
    print(summary[summary.find("\n\nthroughput") + 2:] if "\n\nthroughput" in summary else "", flush=True)
    (out / "cluster.md").write_text("\n".join(["# bench cluster", "", provenance(res), "", "```", summary, "```", ""]),
                                    encoding="utf-8")
    print(f"wrote {out / 'cluster.md'} and {out / 'cluster.json'}")
    return res


def summarize(res: dict[str, Any]) -> str:
    f = res["faults"]
    fo = f.get("failover", {})
    sw = f.get("slow_window", {})
    n = f["replicas"]
    lines = [
        f"faults: {f['requests']} requests through nginx to {n} replicas at concurrency {f['concurrency']} "
        f"({f['seconds']} s); replica {f['slow_replica']} slowed (SIGSTOP {f['slow_stopped_share']:.0%} of the time), "
        f"replica {f['killed_replica']} SIGKILLed and restarted {f['restart_after_s']:g} s later:",
        f"  answered correctly        {f['answered_correctly']}",
        f"  answered wrong            {f['answered_wrong']}",
        f"  errors                    {f['errors']}" + (f"  e.g. {f['error_examples'][0]}" if f["error_examples"] else ""),
        f"  lost                      {f['lost']} (no outcome by the {f['deadline_s']:.0f} s deadline)",
        f"  executed on the servers   {f['executed_on_server']} ids; per replica {f['executions_per_replica']} executions",
        f"  executed twice            {f['executed_twice']} (on two replicas: {f['ids_executed_on_two_replicas']}); "
        f"answered but never executed {f['answered_not_executed']}",
        f"  retries (client library)  {f['retries_total']} in all, at most {f['retries_max']} for one request",
        f"  nginx                     {f['nginx_requests']} inference requests logged, {f['nginx_502']} answered 502; "
        f"answers per replica {f['nginx_answers_per_replica']}",
    ]
    if fo:
        lines += [
            f"  dead replica              in flight at the kill: {fo['in_flight_at_kill']} ({fo['in_flight_at_kill_502']} got 502 "
            "-> UNAVAILABLE -> retried by the client)",
            f"                            while dead: {fo['requests_while_dead']} requests, {fo['requests_while_dead_that_tried_it']} "
            f"tried it first and went on to another replica ({fo['requests_while_dead_that_tried_it_then_answered_elsewhere']} "
            "answered)" + (f"; first such try {fo['first_try_after_kill_s']} s after the kill, last {fo['last_try_while_dead_s']} s"
                           if fo["requests_while_dead_that_tried_it"] else ": nginx sent it nothing after the kill"),
            f"                            health check marked it down {fo['marked_down_by_health_check_s']} s after the kill; "
            f"restarted and ready {fo['restart_to_ready_s']} s after the kill",
            f"                            taken back: first answer {fo['first_answer_after_ready_s']} s after it was ready, "
            f"{fo['answered_by_it_after_restart']} answers after the restart",
        ]
    if sw:
        lines.append(f"  slow replica              over {sw['seconds']} s: answers per replica {sw['answers_per_replica']}, "
                     f"median request time per replica {sw['median_request_s_per_replica']} s (nginx least_conn)")
    if f["problems"]:
        lines.append(f"  problems                  {'; '.join(f['problems'])}")
    lines.append(f"-> {'OK' if f['ok'] else 'FAILED'} (targets: {', '.join(f'{k} {v}' for k, v in f['targets'].items())}, "
                 "and the restarted replica answers again)")
    if res.get("throughput"):
        lines += ["", f"throughput through nginx at concurrency {res['throughput'][0]['concurrency']}:",
                  "| replicas | scans/s | p50 ms | errors | cores busy per replica | replicas total | nginx | whole machine | core-s per scan |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["throughput"]:
            lines.append(f"| {r['replicas']} | {r['throughput_per_s']:.2f} | {r['p50_ms']} | {r['errors']} | "
                         f"{', '.join(f'{c:.2f}' for c in r['cores_busy_per_replica'])} | {r['cores_busy_replicas']:.2f} | "
                         f"{r['cores_busy_nginx']:.3f} | {r['cores_busy_machine']:.2f} | {r['core_seconds_per_request']} |")
        lines += ["", res.get("scaling", "")]
    return "\n".join(lines)

