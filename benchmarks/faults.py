"""Load and fault commands (printed figures, not timed unit tests).

``bonescan bench soak``: concurrency N for T minutes against a fresh server; every response is
checked against the expected mask; zero errors and server memory growth <= 5 % after warm-up are
the targets (memory = server + python-backend processes, sampled every second).

``bonescan bench kill``: requests run through the client library (with its retries) while the
server is SIGKILLed mid-run and restarted on the same ports. Every request must end exactly once:
answered correctly, or failed with an error; none lost, none answered twice.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C


def _expected(export: Path, cases: list) -> list[np.ndarray]:
    from bonescan.export.onnx_export import OrtPipeline

    from bonescan.postprocess import postprocess

    pipe = OrtPipeline(export)
    return [postprocess(pipe.logits(img[None], [rep] if pipe.text_guided else None), np.array([sp], np.float32))[0][0, 0]
            for img, rep, sp in cases]


def _start(repo: Path, ports: tuple[int, int, int], log: Path):
    from bonescan.serving.server import TritonServer

    srv = TritonServer(repo, *ports, log_file=log)
    srv.start(timeout=300)
    return srv


def _setup(export: Path, data: Path, n: int, out: Path | None):
    """Held-out cases, their expected masks (onnxruntime in-process) and client requests."""
    from bonescan.benchmarks.latency import load_cases
    from bonescan.client.inputs import Request

    out = out or Path("bench_out")
    out.mkdir(parents=True, exist_ok=True)
    cases = load_cases(data, n)
    reqs = [Request(img, rep, sp, f"case{i}") for i, (img, rep, sp) in enumerate(cases)]
    return out, cases, _expected(export, cases), reqs


def soak(repo: Path, export: Path, data: Path, minutes: float = 10.0, concurrency: int = 8, warmup_s: float = 60.0,
         out: Path | None = None, model: str = C.ENSEMBLE_MODEL) -> dict[str, Any]:
    from bonescan.benchmarks.latency import MemorySampler
    from bonescan.client import BoneScanClient

    from bonescan.serving.server import free_ports

    out, cases, expected, reqs = _setup(export, data, 8, out)
    srv = _start(repo, tuple(free_ports(3)), out / "tritonserver_soak.log")
    counts = {"ok": 0, "wrong": 0, "errors": 0}
    lat: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + warmup_s + minutes * 60
    try:
        sampler = MemorySampler(srv.proc.pid, period=1.0)
        with sampler, BoneScanClient(srv.grpc_url, model=model, timeout_s=120, want_probability=False) as client:
            t_warm = time.monotonic() + warmup_s
            warm_index = [None]

            def worker(k: int) -> None:
                i = k
                while time.monotonic() < stop_at:
                    j = i % len(reqs)
                    t0 = time.perf_counter()
                    try:
                        r = client.segment_prepared([reqs[j]])[0]
                        good = np.array_equal(r.mask, expected[j])
                        with lock:
                            counts["ok" if good else "wrong"] += 1
                            lat.append((time.perf_counter() - t0) * 1000)
                    except Exception:  # noqa: BLE001 - counted
                        with lock:
                            counts["errors"] += 1
                    if warm_index[0] is None and time.monotonic() >= t_warm:
                        warm_index[0] = len(sampler.samples)
                    i += concurrency

            with ThreadPoolExecutor(concurrency) as ex:
                list(ex.map(worker, range(concurrency)))
        samples = np.array(sampler.samples, dtype=np.float64) / 2**20
        w = warm_index[0] or 0
        after = samples[w:]
        # memory after warm-up: median of the first minute vs median of the last minute (robust to spikes)
        first = float(np.median(after[:60])) if len(after) else float("nan")
        last = float(np.median(after[-60:])) if len(after) else float("nan")
        res = {
            "minutes": minutes, "concurrency": concurrency, "model": model, "requests": sum(counts.values()), **counts,
            "p50_ms": float(np.percentile(lat, 50)) if lat else None, "p99_ms": float(np.percentile(lat, 99)) if lat else None,
            "memory_mib_after_warmup_first_minute": round(first, 1), "memory_mib_last_minute": round(last, 1),
            "memory_growth": round((last - first) / first, 4) if first else None,
            "memory_peak_mib": round(float(samples.max()), 1) if len(samples) else None,
            "targets": {"errors": 0, "wrong": 0, "memory_growth_max": 0.05},
        }
        res["ok"] = counts["errors"] == 0 and counts["wrong"] == 0 and (res["memory_growth"] or 0) <= 0.05
    finally:
        srv.stop()
    (out / "soak.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"soak: {res['requests']} requests in {minutes} min at concurrency {concurrency}: {counts['ok']} correct, "
          f"{counts['wrong']} wrong, {counts['errors']} errors; p50 {res['p50_ms']:.0f} ms p99 {res['p99_ms']:.0f} ms; "
          f"server memory after warm-up {res['memory_mib_after_warmup_first_minute']} -> {res['memory_mib_last_minute']} MiB "
          f"({100 * (res['memory_growth'] or 0):+.2f} %, target <= +5 %), peak {res['memory_peak_mib']} MiB -> {'OK' if res['ok'] else 'FAILED'}")
    return res


def kill_restart(repo: Path, export: Path, data: Path, requests: int = 40, concurrency: int = 4, kill_after: int = 10,
                 out: Path | None = None, model: str = C.ENSEMBLE_MODEL) -> dict[str, Any]:
    """SIGKILL the server after ``kill_after`` answered requests, restart it, account for every request."""
    from bonescan.client import BoneScanClient
    from bonescan.client.inputs import Request

    from bonescan.serving.server import free_ports

    out, cases, expected, _ = _setup(export, data, 6, out)
    ports = tuple(free_ports(3))
    srv = _start(repo, ports, out / "tritonserver_kill.log")
    outcomes: dict[int, list[str]] = {i: [] for i in range(requests)}
    lock = threading.Lock()
    answered = [0]
    killed = threading.Event()
    restarted = threading.Event()
    events: list[tuple[float, str]] = []
    t0 = time.monotonic()

    def killer() -> None:
        while answered[0] < kill_after:
            time.sleep(0.05)
        srv.kill()
        events.append((time.monotonic() - t0, "SIGKILL"))
        killed.set()
        time.sleep(1.0)
        srv.start(timeout=300)
        events.append((time.monotonic() - t0, "restarted"))
        restarted.set()

    # generous retries: the restart takes a few seconds; backoff 0.5, 1, 2, 4, 8, 16 s
    client = BoneScanClient(srv.grpc_url, model=model, timeout_s=120, retries=6, backoff_s=0.5, want_probability=False)

    def one(i: int) -> None:
        j = i % len(cases)
        img, rep, sp = cases[j]
        try:
            r = client.segment_prepared([Request(img, rep, sp, f"request{i}")])[0]
            verdict = "answered" if np.array_equal(r.mask, expected[j]) else "answered-wrong"
        except Exception as e:  # noqa: BLE001
            verdict = f"error: {str(e)[:120]}"
        with lock:
            outcomes[i].append(verdict)
            answered[0] += 1

    kt = threading.Thread(target=killer, daemon=True)
    kt.start()
    try:
        with ThreadPoolExecutor(concurrency) as ex:
            list(ex.map(one, range(requests)))
        kt.join(timeout=600)
    finally:
        client.close()
        srv.stop()
    lost = [i for i, v in outcomes.items() if len(v) == 0]
    twice = [i for i, v in outcomes.items() if len(v) > 1]
    ok = sum(v == ["answered"] for v in outcomes.values())
    wrong = sum(v == ["answered-wrong"] for v in outcomes.values())
    errs = [v[0] for v in outcomes.values() if len(v) == 1 and v[0].startswith("error")]
    res = {"requests": requests, "concurrency": concurrency, "killed_after_answers": kill_after, "events": events,
           "answered_correctly": ok, "answered_wrong": wrong, "errors": len(errs), "error_examples": errs[:3],
           "lost": len(lost), "answered_twice": len(twice), "server_killed": killed.is_set(), "server_restarted": restarted.is_set()}
    res["ok"] = res["lost"] == 0 and res["answered_twice"] == 0 and wrong == 0 and killed.is_set()
    (out / "kill_restart.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"kill/restart: {requests} requests, server SIGKILLed after {kill_after} answers at "
          f"{events[0][0] if events else float('nan'):.1f} s and restarted at {events[1][0] if len(events) > 1 else float('nan'):.1f} s: "
          f"{ok} answered correctly, {wrong} answered wrong, {len(errs)} errors, {len(lost)} lost, {len(twice)} answered twice "
          f"-> {'OK' if res['ok'] else 'FAILED'}")
    return res
