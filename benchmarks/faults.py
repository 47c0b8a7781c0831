"""Load and fault commands (printed figures, not timed unit tests).

``bonescan bench soak``: concurrency N for T minutes against a fresh server; every response is
checked against the expected mask; zero errors and server memory growth <= 5 % after warm-up are
the targets (memory = server + python-backend processes, sampled every second).

``bonescan bench kill``: requests run through the client library (with its retries) while the
server is SIGKILLed mid-run and (unless ``restart=False``) restarted on the same ports. Each request
carries its own id, sent as Triton's request id; the server's first step appends every id it
executes to a file (``pybackend.RequestLog``), the client side counts the attempts of each request
and the outcome it got before the run's deadline. Counted: answered correctly, answered wrong,
errors, lost (no outcome by the deadline: a request stuck forever; the run never waits longer),
executed twice on the server (a request in flight at the kill, retried after the restart) and
retries. The targets: nothing lost, nothing wrong, every answered request seen by the server, and
with a restart no errors (the client's retries carry every request over it). Executed twice is reported, not a failure: a segmentation is read-only, so running it again is
harmless, and the client retries on purpose.

``bonescan bench storm``: rounds of every bad request of :func:`bad_requests` (each followed by a
good one), then concurrent mixes of good dual-path, good U-Net and bad requests landing in the same
dynamic batches. Every request carries a client timeout; an unanswered one counts as hung. This is
the run that showed Triton 2.51's ensemble deadlock with a parallel text branch (see contract.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C
from bonescan.benchmarks.latency import cpu_info, run_info
from bonescan.benchmarks.report import write_fault_report

#: a report that must never appear in an error or a log
SECRET_REPORT = "隐私MARKER5150报告"


def grpc_inputs(image: np.ndarray, reports: list | None, spacing: np.ndarray, image_dtype: str = "FP32",
                drop: str | None = None) -> list:
    """Raw tritonclient inputs (no client-side checks), so bad requests reach the server as they are."""
    import tritonclient.grpc as grpcclient

    ins = []
    if drop != C.ENS_IMAGE.name:
        t = grpcclient.InferInput(C.ENS_IMAGE.name, list(image.shape), image_dtype)
        t.set_data_from_numpy(image)
        ins.append(t)
    if drop != C.ENS_PIXEL_SPACING.name:
        t = grpcclient.InferInput(C.ENS_PIXEL_SPACING.name, list(spacing.shape), C.ENS_PIXEL_SPACING.triton_dtype)
        t.set_data_from_numpy(spacing)
        ins.append(t)
    if reports is not None and drop != C.ENS_REPORT.name:
        rep = np.array([[r if isinstance(r, bytes) else r.encode("utf-8")] for r in reports], dtype=np.object_)
        t = grpcclient.InferInput(C.ENS_REPORT.name, list(rep.shape), C.ENS_REPORT.triton_dtype)
        t.set_data_from_numpy(rep)
        ins.append(t)
    return ins


def bad_requests(image: np.ndarray, report: str, spacing: np.ndarray, max_batch_size: int) -> dict[str, tuple[str, list, str]]:
    """name -> (model, raw inputs, words the server's error must contain), from one good [1, 2, H, W] request."""
    over = max_batch_size + 1
    big = np.ones((1, C.IMAGE_CHANNELS, 4 * C.IMAGE_HEIGHT, 4 * C.IMAGE_WIDTH), np.float32)
    ens = C.ENSEMBLE_MODEL

    def with_value(v: float) -> np.ndarray:
        x = image.copy()
        x[0, 1, 500, 100] = v
        return x

    return {
        "wrong dtype": (ens, grpc_inputs(image.astype(np.float64), [report], spacing, "FP64"),
                        f"data-type is 'FP64', but model '{ens}' expects 'FP32'"),
        "wrong rank": (ens, grpc_inputs(image[:, 0], [report], spacing), "shape"),
        "wrong shape": (ens, grpc_inputs(image[:, :, :512], [report], spacing), "shape"),
        "huge image": (ens, grpc_inputs(big, [report], spacing), "shape"),
        "empty image": (ens, grpc_inputs(np.zeros_like(image), [report], spacing), "anterior view is empty"),
        "NaN": (ens, grpc_inputs(with_value(np.nan), [report], spacing), "NaN or infinite"),
        "Inf": (ens, grpc_inputs(with_value(np.inf), [report], spacing), "NaN or infinite"),
        "negative counts": (ens, grpc_inputs(with_value(-3.0), [report], spacing), "negative counts"),
        "counts above uint16": (ens, grpc_inputs(with_value(70000.0), [report], spacing), "above 65535"),
        "bad pixel spacing": (ens, grpc_inputs(image, [report], np.array([[0.0, 2.4]], np.float32)), "PIXEL_SPACING must be between"),
        "100,000-character report": (ens, grpc_inputs(image, [SECRET_REPORT * 10000], spacing), "the limit is 20000"),
        "invalid UTF-8": (ens, grpc_inputs(image, [SECRET_REPORT.encode("utf-8")[:-1] + b"\xff"], spacing), "not valid UTF-8"),
        "batch over max_batch_size": (ens, grpc_inputs(np.repeat(image, over, 0), [report] * over, np.repeat(spacing, over, 0)), "batch"),
        "missing input": (ens, grpc_inputs(image, [report], spacing, drop=C.ENS_REPORT.name), "input"),
        "unknown model": (ens + "_v9", grpc_inputs(image, [report], spacing), "unknown model"),
    }


def storm(repo: Path, export: Path, data: Path, rounds: int = 10, concurrency: int = 8, baseline: Path | None = None,
          out: Path | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
    """Bad requests between good ones, then concurrent mixes; every answer checked, every hang counted."""
    import tritonclient.grpc as grpcclient
    from tqdm import tqdm

    from bonescan.serving.server import free_ports

    out, cases, expected, _ = _setup(export, data, 1, out)
    img, rep, sp = cases[0]
    image, spacing = img[None].astype(np.float32), np.array([sp], np.float32)
    want = {C.ENSEMBLE_MODEL: expected[0]}
    if baseline is not None:
        want[C.ENSEMBLE_UNET_MODEL] = _expected(baseline, cases)[0]
    srv = _start(repo, tuple(free_ports(3)), out / "tritonserver_storm.log")
    masks = [grpcclient.InferRequestedOutput(C.ENS_MASK.name)]
    nan_image = image.copy()
    nan_image[0, 0, 10, 10] = np.nan
    counts = {"good_ok": 0, "bad_refused": 0, "wrong": 0, "hung": 0, "other_errors": 0}
    examples: list[str] = []

    def outcome(model: str, ins: list, words: str | None) -> str:
        """words None: a good request, whose mask must be the expected one."""
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            r = c.infer(model, ins, outputs=masks, client_timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 - tritonclient's InferenceServerException
            msg = str(e)
            if "Deadline" in msg:
                return "hung"
            if words is not None and words.lower() in msg.lower() and "MARKER5150" not in msg:
                return "bad_refused"
            return "other_errors"
        finally:
            c.close()
        if words is not None:
            return "wrong"
        return "good_ok" if np.array_equal(r.as_numpy(C.ENS_MASK.name)[0, 0], want[model]) else "wrong"

    def mixed(i: int) -> tuple[str, str]:
        kind = i % 4
        if kind == 0:
            return "good dual-path", outcome(C.ENSEMBLE_MODEL, grpc_inputs(image, [rep], spacing), None)
        if kind == 1:
            return "NaN image", outcome(C.ENSEMBLE_MODEL, grpc_inputs(nan_image, [SECRET_REPORT], spacing), "NaN or infinite")
        if kind == 2 and C.ENSEMBLE_UNET_MODEL in want:
            return "good U-Net", outcome(C.ENSEMBLE_UNET_MODEL, grpc_inputs(image, None, spacing), None)
        bad = SECRET_REPORT.encode("utf-8")[:-1] + b"\xff"
        return "invalid UTF-8", outcome(C.ENSEMBLE_MODEL, grpc_inputs(image, [bad], spacing), "not valid UTF-8")

    def note(what: str, verdict: str) -> None:
        counts[verdict] += 1
        if verdict in ("wrong", "hung", "other_errors") and len(examples) < 5:
            examples.append(f"{what}: {verdict}")

    t0 = time.monotonic()
    try:
        with grpcclient.InferenceServerClient(srv.grpc_url) as c:
            max_batch = int(c.get_model_config(C.ENSEMBLE_MODEL, as_json=True)["config"]["max_batch_size"])
        for _ in tqdm(range(rounds), desc="storm rounds", unit="round"):
            for name, (model, ins, words) in bad_requests(image, rep, spacing, max_batch).items():
                note(name, outcome(model, ins, words))
                note(f"good after {name}", outcome(C.ENSEMBLE_MODEL, grpc_inputs(image, [rep], spacing), None))
            with ThreadPoolExecutor(concurrency) as ex:
                for what, verdict in ex.map(mixed, range(4 * concurrency)):
                    note(what, verdict)
    finally:
        srv.stop()
    total = sum(counts.values())
    res = {"rounds": rounds, "concurrency": concurrency, "requests": total, **counts, "examples": examples,
           "seconds": round(time.monotonic() - t0, 1), "with_unet": C.ENSEMBLE_UNET_MODEL in want, "machine": cpu_info(),
           "run": run_info()}
    res["ok"] = counts["wrong"] == 0 and counts["hung"] == 0 and counts["other_errors"] == 0
    (out / "storm.json").write_text(json.dumps(res, indent=1) + "\n")
    summary = (f"storm: {total} requests in {rounds} rounds ({res['seconds']} s): {counts['good_ok']} good answered correctly, "
               f"{counts['bad_refused']} bad refused with the right error, {counts['wrong']} wrong, {counts['hung']} hung "
               f"(no answer in {timeout_s:.0f} s), {counts['other_errors']} other errors -> {'OK' if res['ok'] else 'FAILED'}")
    print(summary)
    write_fault_report("storm", res, out, summary)
    return res


def _expected(export: Path, cases: list) -> list[np.ndarray]:
    from bonescan.postprocess import postprocess
    from bonescan.serving.ort_pipeline import OrtPipeline

    pipe = OrtPipeline(export)
    return [postprocess(pipe.logits(img[None], [rep] if pipe.text_guided else None), np.array([sp], np.float32))[0][0, 0]
            for img, rep, sp in cases]


def _start(repo: Path, ports: tuple[int, ...], log: Path):
    from bonescan.serving.server import TritonServer

    grpc_port, http_port, metrics_port = ports
    srv = TritonServer(repo, grpc_port, http_port, metrics_port, log_file=log)
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
            warm_index: list[int | None] = [None]

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
            "targets": {"errors": 0, "wrong": 0, "memory_growth_max": 0.05}, "machine": cpu_info(), "run": run_info(),
        }
        res["ok"] = counts["errors"] == 0 and counts["wrong"] == 0 and (res["memory_growth"] or 0) <= 0.05
    finally:
        srv.stop()
    (out / "soak.json").write_text(json.dumps(res, indent=1) + "\n")
    summary = (f"soak: {res['requests']} requests in {minutes} min at concurrency {concurrency}: {counts['ok']} correct, "
               f"{counts['wrong']} wrong, {counts['errors']} errors; p50 {res['p50_ms']:.0f} ms p99 {res['p99_ms']:.0f} ms; "
               f"server memory after warm-up {res['memory_mib_after_warmup_first_minute']} -> {res['memory_mib_last_minute']} MiB "
               f"({100 * (res['memory_growth'] or 0):+.2f} %, target <= +5 %), peak {res['memory_peak_mib']} MiB -> {'OK' if res['ok'] else 'FAILED'}")
    print(summary)
    write_fault_report("soak", res, out, summary)
    return res


def run_with_deadline(send: Callable[[int], str], n: int, concurrency: int, deadline_s: float) -> dict[int, str]:
    """``send(i)`` for i in 0..n-1 on ``concurrency`` daemon threads -> {i: outcome} of the requests
    that ended before the deadline; a request missing from the answer is lost.

    The watchdog: this returns at the deadline at the latest, whatever the requests do. A request
    stuck forever keeps only its own daemon thread (the process can still exit), requests not yet
    started then are not sent, and an outcome that arrives after the deadline is not counted.
    An exception out of ``send`` is an outcome: ``"error: ..."``.
    """
    return run_requests(send, iter(range(n)), concurrency, deadline_s)[1]


def run_requests(send: Callable[[int], str], todo: Iterator[int], concurrency: int, deadline_s: float,
                 stop: threading.Event | None = None) -> tuple[int, dict[int, str]]:
    """The one load loop of the fault runs: ``send(i)`` for each i of ``todo`` on ``concurrency``
    daemon threads until ``todo`` ends or ``stop`` is set (no new request starts), returning at
    ``deadline_s`` at the latest -> (requests started, {i: outcome} of those that ended by then)."""
    outcomes: dict[int, str] = {}
    lock = threading.Lock()
    started = [0]
    closed = [False]

    def worker() -> None:
        while True:
            with lock:
                i = None if closed[0] or (stop is not None and stop.is_set()) else next(todo, None)
                if i is not None:
                    started[0] += 1
            if i is None:
                return
            try:
                verdict = send(i)
            except Exception as e:  # noqa: BLE001 - every failure is an outcome
                verdict = f"error: {type(e).__name__}: {str(e)[:160]}"
            with lock:
                if not closed[0]:
                    outcomes[i] = verdict

    threads = [threading.Thread(target=worker, daemon=True, name=f"request-{k}") for k in range(max(1, concurrency))]
    deadline = time.monotonic() + deadline_s
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    with lock:
        closed[0] = True
        return started[0], dict(outcomes)


def account(ids: list[str], outcomes: dict[int, str], executed: Counter[str], attempts: Counter[str]) -> dict[str, Any]:
    """The kill run's counters from the client's outcomes (request index -> ``ok`` / ``wrong`` /
    ``error: ...``; none = lost), the server's log (id -> executions) and the client's attempts (id ->
    tries). Pure: the tests feed it fakes."""
    lost = [i for i in range(len(ids)) if i not in outcomes]
    errors = [v for v in outcomes.values() if v.startswith("error")]
    answered = [i for i, v in outcomes.items() if v in ("ok", "wrong")]
    tries = [attempts.get(rid, 0) for rid in ids]
    return {
        "answered_correctly": sum(v == "ok" for v in outcomes.values()),
        "answered_wrong": sum(v == "wrong" for v in outcomes.values()),
        "errors": len(errors),
        "errors_deadline_exceeded": sum("Deadline" in v or "no answer within" in v for v in errors),
        "error_examples": sorted(set(errors))[:3],
        "lost": len(lost),
        "lost_never_sent": sum(tries[i] == 0 for i in lost),
        "lost_ids": [ids[i] for i in lost][:10],
        "executed_on_server": sum(executed.get(rid, 0) > 0 for rid in ids),
        "executed_twice": sum(executed.get(rid, 0) > 1 for rid in ids),
        "executed_twice_ids": [rid for rid in ids if executed.get(rid, 0) > 1][:10],
        "answered_not_executed": sum(executed.get(ids[i], 0) == 0 for i in answered),
        "retries_total": sum(max(t - 1, 0) for t in tries),
        "retries_max": max((max(t - 1, 0) for t in tries), default=0),
        "attempts_total": sum(tries),
    }


class _AttemptCounter:
    """Stands in for the client library's tritonclient object (``BoneScanClient.client``): each
    ``infer`` call is one attempt of its retry loop. It counts the attempts of the request the
    calling thread sends and gives Triton that request's id (``request_id``), the same on every
    attempt. Everything else passes through, so the library behaves as it does without it."""

    def __init__(self, inner: Any):
        self._inner = inner
        self._local = threading.local()
        self._lock = threading.Lock()
        self.attempts: Counter[str] = Counter()

    def sending(self, request_id: str) -> None:
        """The calling thread's next ``infer`` calls belong to ``request_id``."""
        self._local.request_id = request_id

    def infer(self, *args: Any, **kwargs: Any) -> Any:
        rid = self._local.request_id
        with self._lock:
            self.attempts[rid] += 1
        return self._inner.infer(*args, request_id=rid, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block (tritonserver and its python stubs inherit it)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def kill_restart(repo: Path, export: Path, data: Path, requests: int = 40, concurrency: int = 4, kill_after: int = 10,
                 out: Path | None = None, model: str = C.ENSEMBLE_MODEL, restart: bool = True, restart_after_s: float = 1.0,
                 timeout_s: float = 60.0, retries: int = 6, backoff_s: float = 0.5, deadline_s: float = 600.0) -> dict[str, Any]:
    """SIGKILL the server after ``kill_after`` requests have ended, restart it ``restart_after_s``
    later (unless ``restart`` is False), and account for every request (see the module docstring).

    ``timeout_s`` is each attempt's gRPC deadline, ``retries`` / ``backoff_s`` the client library's
    retry settings, ``deadline_s`` the whole run's: a request without an outcome by then is lost.
    The defaults retry for 0.5 + 1 + ... + 16 s, long enough for a restart of the demo models.
    """
    from bonescan.client import BoneScanClient
    from bonescan.client.inputs import Request
    from bonescan.serving.pybackend import REQUEST_LOG_ENV, read_request_log
    from bonescan.serving.server import free_ports

    out, cases, expected, _ = _setup(export, data, 6, out)
    request_log = (out / "kill_request_ids.log").resolve()
    request_log.unlink(missing_ok=True)
    run = f"{os.getpid()}-{int(time.time())}"
    ids = [f"kill-{run}-{i}" for i in range(requests)]
    ended = [0]
    ended_lock = threading.Lock()
    finished = threading.Event()
    killed, restarted = threading.Event(), threading.Event()
    events: list[tuple[float, str]] = []
    shm: dict[str, list[str]] = {"at_kill": [], "left": []}  # the killed server's /dev/shm regions
    t0 = time.monotonic()
    with _environment(REQUEST_LOG_ENV, str(request_log)):
        srv = _start(repo, tuple(free_ports(3)), out / "tritonserver_kill.log")

        def killer() -> None:
            while ended[0] < kill_after and not finished.is_set():
                time.sleep(0.05)
            if finished.is_set():
                return
            regions = list(srv.shm_regions)
            srv.kill()
            shm["at_kill"], shm["left"] = [str(r) for r in regions], [str(r) for r in regions if r.exists()]
            events.append((round(time.monotonic() - t0, 2), "SIGKILL"))
            killed.set()
            if not restart:
                return
            time.sleep(restart_after_s)
            try:
                srv.start(timeout=300)
            except Exception as e:  # noqa: BLE001 - the run goes on against a dead server and says why
                events.append((round(time.monotonic() - t0, 2), f"restart failed: {str(e).splitlines()[0][:160]}"))
                return
            events.append((round(time.monotonic() - t0, 2), "restarted"))
            restarted.set()

        client = BoneScanClient(srv.grpc_url, model=model, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                                want_probability=False)
        counter = _AttemptCounter(client.client)
        client.client = counter

        def send(i: int) -> str:
            j = i % len(cases)
            img, rep, sp = cases[j]
            counter.sending(ids[i])
            try:
                r = client.segment_prepared([Request(img, rep, sp, ids[i])])[0]
                return "ok" if np.array_equal(r.mask, expected[j]) else "wrong"
            finally:
                with ended_lock:
                    ended[0] += 1

        kt = threading.Thread(target=killer, daemon=True)
        kt.start()
        try:
            outcomes = run_with_deadline(send, requests, concurrency, deadline_s)
            finished.set()
            kt.join(timeout=330)
        finally:
            finished.set()
            client.close()
            srv.stop()
    res = {"requests": requests, "concurrency": concurrency, "killed_after_ended": kill_after, "restart": restart,
           "timeout_s": timeout_s, "retries": retries, "backoff_s": backoff_s, "deadline_s": deadline_s, "events": events,
           "shm_regions_at_kill": len(shm["at_kill"]), "shm_regions_left": shm["left"],
           "server_killed": killed.is_set(), "server_restarted": restarted.is_set(), "machine": cpu_info(), "run": run_info(),
           "request_log": str(request_log),
           **account(ids, outcomes, read_request_log(request_log), counter.attempts)}
    # with a restart the client's retries must carry every request over it; without one, every request
    # must still end (fail fast), none hang
    res["targets"] = {"lost": 0, "answered_wrong": 0, "answered_not_executed": 0, **({"errors": 0} if restart else {})}
    res["ok"] = all(res[k] == v for k, v in res["targets"].items()) and killed.is_set() and restarted.is_set() == restart
    (out / "kill_restart.json").write_text(json.dumps(res, indent=1) + "\n")
    when = {what: t for t, what in events}
    summary = (f"kill/restart: {requests} requests, {concurrency} in flight; server SIGKILLed after {kill_after} ended at "
               f"{when.get('SIGKILL', float('nan')):.1f} s, "
               + (f"restarted at {when['restarted']:.1f} s" if "restarted" in when
                  else "never restarted" if not restart else f"NOT restarted ({events[-1][1] if events else 'no kill'})") + ":\n"
               f"  answered correctly    {res['answered_correctly']}\n"
               f"  answered wrong        {res['answered_wrong']}\n"
               f"  errors                {res['errors']} ({res['errors_deadline_exceeded']} after the {timeout_s:.0f} s request deadline)\n"
               f"  lost                  {res['lost']} (no outcome by the run's {deadline_s:.0f} s deadline; {res['lost_never_sent']} never sent)\n"
               f"  executed twice        {res['executed_twice']} (ids seen twice in the server's log; {res['executed_on_server']} of "
               f"{requests} ids seen at all, {res['answered_not_executed']} answered but never seen)\n"
               f"  retries               {res['retries_total']} in all, at most {res['retries_max']} for one request\n"
               f"-> {'OK' if res['ok'] else 'FAILED'}")
    print(summary)
    write_fault_report("kill_restart", res, out, summary)
    return res
