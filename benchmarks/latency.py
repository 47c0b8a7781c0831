"""``bonescan bench latency``: the served ensemble against in-process PyTorch and onnxruntime.

One run, one machine, the same held-out inputs and the same thread counts for everything:

* in-process PyTorch eager (the checkpoint) and in-process onnxruntime (the exported graphs), each
  as the whole pipeline (tokenize -> text encoder -> segmenter -> postprocess) and one scan at a time;
* the Triton ensemble over gRPC at concurrency 1, 2, 4, 8, 16 (our harness: p50 / p90 / p99
  latency, throughput, errors) and Triton's own ``perf_analyzer`` on the same real scans and reports;
* per-member times from Triton's statistics API; peak memory of the server and its python-backend
  processes; the FLOPs of one scan and this machine's compute ceiling measured in the same run,
  before and after the served part (:func:`compute_ceiling`: the best of fp32 GEMM and convolution
  microbenchmarks in torch and onnxruntime, with the same threads), so FLOPs / p50 / ceiling is at
  most 1; a run where it is not fails (``ceiling_holds``).

Ratios (not absolute times) are what the targets are about, since these machines are noisy.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C
from bonescan.errors import BonescanError

CONCURRENCY = (1, 2, 4, 8, 16)


# ----------------------------------------------------------------------------- machine
#: ISA flags every benchmark result records (/proc/cpuinfo names): what onnxruntime's and torch's
#: kernels can use differs between the machines this runs on (AMD EPYC with AVX2, Xeon with AMX)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model name (as ``lscpu`` shows it), its cores and which of :data:`ISA_FLAGS` it has."""
    cpu, flags = "unknown", set[str]()
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu == "unknown":
                    cpu = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": {f: f in flags for f in ISA_FLAGS},
            "simd": [f for f in ISA_FLAGS if f in flags]}


def run_info() -> dict[str, str]:
    """When, by which command and at which commit a benchmark ran (every result records it, so a
    figure copied from a result can be dated)."""
    import sys

    argv = list(sys.argv)
    # `bonescan ...` and `python -m bonescan.cli ...` (argv[0] is then the path of cli.py) are one command
    entry = bool(argv) and (Path(argv[0]).name == "bonescan" or Path(argv[0]).parts[-2:] == ("bonescan", "cli.py"))
    command = " ".join(["bonescan", *argv[1:]] if entry else argv)
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
        if commit != "unknown" and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                                  capture_output=True, text=True, timeout=10).stdout.strip():
            commit += "+changes"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command, "commit": commit}


def machine_info(threads: int) -> dict[str, Any]:
    import onnxruntime
    import torch

    return {**cpu_info(), "threads_per_engine": threads,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": str(torch.__version__), "onnxruntime": onnxruntime.__version__}


#: fp32 GEMM shapes (M, K, N) of the compute ceiling: a big square one, a mid one, a BERT feed-forward
GEMM_SHAPES = ((2048, 2048, 2048), (1024, 1024, 1024), (256, 768, 3072))


def _best_seconds(fn, seconds: float, min_runs: int = 3) -> float:
    """The fastest of repeated calls (after one warm-up): a rate from it is the best this machine did."""
    fn()
    best, runs = float("inf"), 0
    t_end = time.perf_counter() + seconds
    while runs < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


def model_convs(predictor, image: np.ndarray, report: str, top: int = 4) -> list[dict[str, Any]]:
    """The ``top`` convolution shapes of one scan that take the most FLOPs (forward hooks on every
    Conv2d of the network): the shapes the compute ceiling measures."""
    import torch

    seen: dict[tuple, dict[str, Any]] = {}

    def hook(mod, inputs, output) -> None:
        x = inputs[0]
        key = (mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.groups,
               tuple(x.shape[2:]))
        flops = 2 * output.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        row = seen.setdefault(key, {"cin": mod.in_channels, "cout": mod.out_channels, "kernel": list(mod.kernel_size),
                                    "stride": list(mod.stride), "padding": list(mod.padding), "dilation": list(mod.dilation),
                                    "groups": mod.groups, "hw": list(x.shape[2:]), "flops": flops, "count": 0})
        row["count"] += 1

    handles = [m.register_forward_hook(hook) for m in predictor.net.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        predictor.logits(image[None], [report] if predictor.text_guided else None)
    finally:
        for h in handles:
            h.remove()
    return sorted(seen.values(), key=lambda r: r["flops"] * r["count"], reverse=True)[:top]


def _ort_session(model, threads: int, work: Path, name: str):
    """A one-node graph in an onnxruntime session opened like the served ones (cpu_session)."""
    import onnx

    from bonescan.serving.onnx_runner import cpu_session

    path = work / f"{name}.onnx"
    onnx.save(model, str(path))
    return cpu_session(path, threads)


def _ort_gemm(m: int, k: int, n: int, threads: int, work: Path):
    from onnx import TensorProto, helper, numpy_helper

    b = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], initializer=[b])
    sess = _ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), threads, work, f"gemm_{m}_{k}_{n}")
    a = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    return lambda: sess.run(None, {"a": a})


def _ort_conv(c: dict[str, Any], threads: int, work: Path):
    from onnx import TensorProto, helper, numpy_helper

    kh, kw = c["kernel"]
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((c["cout"], c["cin"] // c["groups"], kh, kw))
                                .astype(np.float32) * 0.05, "w")
    ph, pw = c["padding"]
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[kh, kw], strides=c["stride"], dilations=c["dilation"],
                            pads=[ph, pw, ph, pw], group=c["groups"])
    x_shape = [1, c["cin"], *c["hw"]]
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    sess = _ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), threads, work, f"conv_{_conv_name(c)}")
    x = np.random.default_rng(1).random(x_shape, dtype=np.float32)
    return lambda: sess.run(None, {"x": x})


def _conv_name(c: dict[str, Any]) -> str:
    return f"{c['cin']}to{c['cout']}_k{c['kernel'][0]}x{c['kernel'][1]}_s{c['stride'][0]}_{c['hw'][0]}x{c['hw'][1]}"


def compute_ceiling(threads: int, convs: list[dict[str, Any]], seconds: float = 1.0, gemms=GEMM_SHAPES) -> dict[str, Any]:
    """This machine's best fp32 rate with ``threads`` threads: GEMMs of a few shapes and the model's
    own heaviest convolutions (``model_convs``), each in torch and in onnxruntime (a one-node graph
    in a session opened like the served ones); each rate from the fastest of repeated runs.

    The ceiling is the best of them. The model runs these same operations (plus cheaper ones) at
    best at their isolated speed, so FLOPs per scan / p50 / ceiling should not exceed 1; if it does,
    an operation of the model runs faster than every shape measured here, and the shape that wins
    belongs in this list.
    """
    import tempfile

    import torch
    import torch.nn.functional as F

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            work = Path(tmp)
            for m, k, n in gemms:
                flops = 2 * m * k * n
                a, b = torch.randn(m, k), torch.randn(k, n)
                for engine, fn in (("torch", lambda a=a, b=b: a @ b), ("onnxruntime", _ort_gemm(m, k, n, threads, work))):
                    rows.append({"op": "gemm", "engine": engine, "shape": f"{m}x{k} @ {k}x{n}",
                                 "gflops": round(flops / _best_seconds(fn, seconds) / 1e9, 1)})
            for c in convs:
                flops = c["flops"]
                x = torch.rand(1, c["cin"], *c["hw"])
                w = torch.randn(c["cout"], c["cin"] // c["groups"], *c["kernel"]) * 0.05

                def conv(x=x, w=w, c=c):
                    return F.conv2d(x, w, None, c["stride"], c["padding"], c["dilation"], c["groups"])

                for engine, fn in (("torch", conv), ("onnxruntime", _ort_conv(c, threads, work))):
                    rows.append({"op": "conv", "engine": engine, "shape": _conv_name(c),
                                 "gflops": round(flops / _best_seconds(fn, seconds) / 1e9, 1)})
    finally:
        torch.set_num_threads(old)
    return _ceiling(rows, threads, seconds)


def _ceiling(rows: list[dict[str, Any]], threads: int, seconds: float) -> dict[str, Any]:
    best = max(rows, key=lambda r: r["gflops"])
    return {"gflops": best["gflops"], "best": f"{best['op']} {best['shape']} ({best['engine']})", "threads": threads,
            "seconds_per_microbenchmark": seconds, "microbenchmarks": rows}


def best_of(*ceilings: dict[str, Any]) -> dict[str, Any]:
    """Ceilings measured at several moments of one run -> one, each microbenchmark at its best rate
    (``passes`` keeps every rate). A machine shared with other jobs is not equally fast all along: a
    ceiling measured only while it was busiest could fall below the model's rate at a quieter moment."""
    rows: dict[tuple, dict[str, Any]] = {}
    for c in ceilings:
        for r in c["microbenchmarks"]:
            row = rows.setdefault((r["op"], r["engine"], r["shape"]), {**r, "passes": []})
            row["passes"].append(r["gflops"])
            row["gflops"] = max(row["passes"])
    return _ceiling(list(rows.values()), ceilings[0]["threads"], ceilings[0]["seconds_per_microbenchmark"])


def model_flops(predictor, image: np.ndarray, report: str) -> dict[str, float]:
    """FLOPs of one scan (PyTorch's flop counter: matmuls and convolutions), text and image paths."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = predictor.net
    x = torch.from_numpy(image[None].astype(np.float32))
    out: dict[str, float] = {}
    with torch.no_grad():
        if predictor.tokenizer is not None:
            ids, mask = (torch.from_numpy(a) for a in predictor.tokenizer([report]))
            with FlopCounterMode(display=False) as fc:
                feats = net.text_encoder(ids, mask)
            out["text_encoder"] = float(fc.get_total_flops())
            with FlopCounterMode(display=False) as fc:
                net.segmenter(x, feats, mask)
            out["segmenter"] = float(fc.get_total_flops())
            if net.fallback is not None:  # the bundled U-Net runs in the same deployed graph (the fail-safe's answer)
                with FlopCounterMode(display=False) as fc:
                    net.fallback(x)
                out["fallback_unet"] = float(fc.get_total_flops())
        else:
            with FlopCounterMode(display=False) as fc:
                net.segmenter(x)
            out["segmenter"] = float(fc.get_total_flops())
    out["total"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------- latency helpers
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summarize_ms(lat_ms: list[float], seconds: float, errors: int = 0) -> dict[str, Any]:
    return {"n": len(lat_ms), "p50_ms": pct(lat_ms, 50), "p90_ms": pct(lat_ms, 90), "p99_ms": pct(lat_ms, 99),
            "mean_ms": float(np.mean(lat_ms)) if lat_ms else float("nan"),
            "throughput_per_s": len(lat_ms) / seconds if seconds > 0 else float("nan"), "errors": errors}


def time_inprocess(fn, cases: list, warmup: int, n: int) -> dict[str, Any]:
    for i in range(warmup):
        fn(cases[i % len(cases)])
    lat = []
    t_all = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        fn(cases[i % len(cases)])
        lat.append((time.perf_counter() - t0) * 1000)
    return summarize_ms(lat, time.perf_counter() - t_all)


class MemorySampler:
    """Peak resident memory of a process and all its children (tritonserver + python stubs)."""

    def __init__(self, pid: int, period: float = 0.2):
        import psutil

        self.proc = psutil.Process(pid)
        self.period = period
        self.peak = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        import psutil

        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            r = self.rss()
            self.samples.append(r)
            self.peak = max(self.peak, r)
            time.sleep(self.period)

    def __enter__(self) -> MemorySampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def harness(url: str, model: str, cases: list, concurrency: int, n_requests: int, text_guided: bool) -> dict[str, Any]:
    """n_requests real requests, ``concurrency`` in flight (one gRPC client per worker)."""
    import tritonclient.grpc as grpcclient

    from bonescan.client.core import _build_inputs, _outputs
    from bonescan.client.inputs import Request

    reqs = [Request(img, rep, sp, f"case{i}") for i, (img, rep, sp) in enumerate(cases)]
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def worker() -> None:
        c = grpcclient.InferenceServerClient(url)
        outs = _outputs(grpcclient, want_probability=True)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            ins = _build_inputs(grpcclient, [reqs[i % len(reqs)]], text_guided)
            t0 = time.perf_counter()
            try:
                c.infer(model, ins, outputs=outs, client_timeout=600)
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    lat.append(dt)
            except Exception:  # noqa: BLE001 - counted, the run goes on
                with lock:
                    errors[0] += 1

    t_all = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        for f in [ex.submit(worker) for _ in range(concurrency)]:
            f.result()
    res = summarize_ms(lat, time.perf_counter() - t_all, errors[0])
    res["concurrency"] = concurrency
    return res


def member_stats(url: str, models: list[str], before: dict | None = None) -> dict[str, Any]:
    """Triton's statistics per model; with ``before``, the per-inference averages since then."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url)
    now: dict[str, dict[str, Any]] = {}
    for m in models:
        s = c.get_inference_statistics(m, as_json=True)["model_stats"][0]
        inf = s.get("inference_stats", {})
        now[m] = {
            "inference_count": int(s.get("inference_count", 0)),
            "execution_count": int(s.get("execution_count", 0)),
            **{k: {"count": int(inf.get(k, {}).get("count", 0)), "ns": int(inf.get(k, {}).get("ns", 0))}
               for k in ("queue", "compute_input", "compute_infer", "compute_output", "success")},
        }
    if before is None:
        return now
    out = {}
    for m in models:
        a, b = before[m], now[m]
        n_inf = b["inference_count"] - a["inference_count"]
        n_exe = b["execution_count"] - a["execution_count"]
        row: dict[str, Any] = {"inferences": n_inf, "executions": n_exe,
                               "avg_batch": round(n_inf / n_exe, 2) if n_exe else None}
        for k in ("queue", "compute_input", "compute_infer", "compute_output", "success"):
            cnt = b[k]["count"] - a[k]["count"]
            row[f"{k}_ms"] = (b[k]["ns"] - a[k]["ns"]) / cnt / 1e6 if cnt else None
        out[m] = row
    return out


# ----------------------------------------------------------------------------- perf_analyzer
# The one place that runs Triton's perf_analyzer: `bench latency` and `bonescan perf -- ARGS` (and
# `bench perf-analyzer-data` for its --input-data) take everything below from here.
def perf_analyzer_binary() -> str | None:
    import sys

    p = Path(sys.executable).parent / "perf_analyzer"
    return str(p) if p.exists() else shutil.which("perf_analyzer")


def perf_analyzer_env(link_dir: Path | None = None) -> dict[str, str]:
    """perf_analyzer needs libb64 (apt libb64-0d) and libcudart.so.12: the tritonclient wheel's binary
    finds neither on its own, so a link named libcudart.so.12 to the nvidia-pytriton wheel's copy
    (in ``link_dir``, default the bonescan cache) and that wheel's libraries go on LD_LIBRARY_PATH."""
    from bonescan.serving.server import _site_packages, cache_dir

    libs = _site_packages() / "nvidia_pytriton.libs"
    link_dir = link_dir or cache_dir() / "perf_analyzer_libs"
    link_dir.mkdir(parents=True, exist_ok=True)
    cudart = next(libs.glob("libcudart-*.so.12*"), None)
    link = link_dir / "libcudart.so.12"
    if cudart is not None and (not link.exists() or link.resolve() != cudart.resolve()):
        tmp = link_dir / f"libcudart.so.12.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(cudart)
        tmp.replace(link)  # atomic: another run may be making the same link
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(link_dir), str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


#: perf_analyzer's own input data: the ensemble's preprocess step refuses both (zero counts are empty views,
#: random bytes are no UTF-8 report and no count image)
SYNTHETIC_INPUT_DATA = ("random", "zero")


def perf_analyzer_command(args: list[str]) -> tuple[list[str], dict[str, str], str | None]:
    """``bonescan perf -- ARGS``: perf_analyzer's argv and environment, and a note for the terminal when
    ARGS give it no real inputs (without ``--input-data FILE`` it sends random data, which preprocess refuses)."""
    exe = perf_analyzer_binary()
    if exe is None:
        raise BonescanError("perf_analyzer not found: it comes with the tritonclient wheel (the serve extra: pip install '.[serve]')")
    data = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--input-data"]
    data += [a.split("=", 1)[1] for a in args if a.startswith("--input-data=")]
    names_model = any(a in ("-m", "--model-name") or a.startswith("--model-name=") for a in args)
    note = None
    if names_model and (not data or any(d in SYNTHETIC_INPUT_DATA for d in data)):
        note = ("bonescan perf: perf_analyzer's random / zero input data is refused by the ensemble's preprocess step "
                "(every request fails); give real scans and reports: bonescan bench perf-analyzer-data --data DATA "
                "--out input.json, then --input-data input.json")
    return [exe, *args], perf_analyzer_env(), note


def perf_analyzer_data(cases: list, path: Path, text_guided: bool, n: int = 4) -> Path:
    """Real scans and report strings in perf_analyzer's --input-data JSON format."""
    data = []
    for img, rep, sp in cases[:n]:
        row: dict[str, Any] = {
            C.ENS_IMAGE.name: {"content": img.astype(np.float32).ravel().round(3).tolist(), "shape": list(img.shape)},
            C.ENS_PIXEL_SPACING.name: {"content": [float(v) for v in sp], "shape": [2]},
        }
        if text_guided:  # study identifiers not known to this benchmark: sent empty, as a caller without them would
            row[C.ENS_REPORT.name] = {"content": [rep], "shape": [1]}
            row.update({t.name: {"content": [""], "shape": [1]} for t in (C.ENS_ACCESSION, C.ENS_STUDY_UID)})
        data.append(row)
    path.write_text(json.dumps({"data": data}, ensure_ascii=False))
    return path


def run_perf_analyzer(url: str, model: str, data: Path, concurrency: list[int], work: Path,
                      measurement_ms: int = 4000) -> dict[str, Any]:
    exe = perf_analyzer_binary()
    if exe is None:
        return {"error": "perf_analyzer not found (it comes with the tritonclient wheel)"}
    csv = work / f"perf_analyzer_{model}.csv"
    cmd = [exe, "-m", model, "-u", url, "-i", "grpc", "--input-data", str(data),
           "--concurrency-range", f"{min(concurrency)}:{max(concurrency)}:1" if len(concurrency) > 1 else str(concurrency[0]),
           "--measurement-mode", "time_windows", "--measurement-interval", str(measurement_ms),
           "--stability-percentage", "50", "--max-trials", "6", "-f", str(csv), "--percentile", "50"]
    if len(concurrency) > 1 and concurrency != list(range(min(concurrency), max(concurrency) + 1)):
        # perf_analyzer takes start:end:step; run the levels one by one instead
        rows: list[dict[str, Any]] = []
        for c in concurrency:
            r = run_perf_analyzer(url, model, data, [c], work, measurement_ms)
            if "error" in r:
                return r
            rows.extend(r["rows"])
        return {"rows": rows, "command": " ".join(cmd)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=perf_analyzer_env(), timeout=1800)
    (work / f"perf_analyzer_{model}_c{'-'.join(map(str, concurrency))}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not csv.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return {"error": f"perf_analyzer exited with {proc.returncode}: " + " | ".join(tail)}
    lines = csv.read_text().strip().splitlines()
    header = lines[0].split(",")
    rows = []
    for line in lines[1:]:
        vals = dict(zip(header, line.split(",")))
        rows.append({
            "concurrency": int(float(vals["Concurrency"])),
            "throughput_per_s": float(vals["Inferences/Second"]),
            "p50_ms": float(vals["p50 latency"]) / 1000,
            "p90_ms": float(vals["p90 latency"]) / 1000,
            "p99_ms": float(vals["p99 latency"]) / 1000,
            "avg_ms": float(vals.get("Avg latency", "nan")) / 1000 if "Avg latency" in vals else None,
        })
    return {"rows": rows, "command": " ".join(cmd)}


# ----------------------------------------------------------------------------- the whole benchmark
TARGETS = {
    # issue 25 0(a) / 0(d): served <= 0.8x PyTorch eager; <= 1.10x the same runtime in-process; c=4 >= 1.3x c=1
    "demo": {"serving_overhead_max": 1.10, "vs_pytorch_max": 0.8, "throughput_c8_over_c1_min": 1.3, "throughput_c4_over_c1_min": 1.3},
    "paper": {"serving_overhead_max": 1.10, "vs_pytorch_max": 1.0, "throughput_c8_over_c1_min": 1.0,
              "compute_efficiency_min": 0.70},
}


def load_cases(data: Path, n: int) -> list:
    from bonescan.data.dataset import BoneScanDataset

    out = []
    for s in BoneScanDataset(data, "test", require_mask=False).samples():
        out.append((s.image, s.report, s.pixel_spacing))
        if len(out) >= n:
            break
    if not out:
        raise BonescanError(f"{data}: no test cases")
    return out


def write_perf_analyzer_data(data: Path, out: Path, model: str = C.ENSEMBLE_MODEL, n: int = 4) -> Path:
    """``bench perf-analyzer-data``: ``n`` held-out scans of ``data`` (its test split), with their reports
    for the dual-path ensemble, as perf_analyzer's ``--input-data`` JSON (what ``bench latency`` sends it)."""
    if model not in C.ENSEMBLES:
        raise BonescanError(f"--model must be one of {', '.join(C.ENSEMBLES)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return perf_analyzer_data(load_cases(data, n), out, model == C.ENSEMBLE_MODEL, n)


def served_runtime(repo: Path | None) -> str:
    """The runtime a built repository's network steps run: ``openvino`` for the openvino flavor, else
    ``onnxruntime`` (the embedded flavor; also what a repository without a manifest is taken to be)."""
    from bonescan.serving.repository import REPO_MANIFEST

    if repo is None or not (repo / REPO_MANIFEST).is_file():
        return "onnxruntime"
    flavor = json.loads((repo / REPO_MANIFEST).read_text(encoding="utf-8")).get("flavor", "")
    return "openvino" if flavor == "openvino" else "onnxruntime"


def check_repo_serves(repo: Path, export: Path) -> None:
    """A repository passed beside an export must serve that export's segmenter graph (the in-process
    figures it is compared with run the export's graphs): an INT8 repository against an fp32 export is an error."""
    from bonescan.export.onnx_export import read_description, sha256

    desc = read_description(export)
    name = C.SEGMENTER_GRAPH.export_name if C.SEGMENTER_GRAPH.export_name in desc["graphs"] else C.SEGMENTER_UNET_GRAPH.export_name
    served = repo / ("segmenter" if name == C.SEGMENTER_GRAPH.export_name else "segmenter_unet") / "1" / "model.onnx"
    if served.is_file() and sha256(served) != desc["graphs"][name]["sha256"]:
        raise BonescanError(f"--repo serves another segmenter graph than --export's ({served} differs from {export}); "
                            "pass the export the repository was built from (e.g. the INT8 export) as --export")


def bench_latency(checkpoint: Path, data: Path, out: Path, config_name: str | None = None, export: Path | None = None,
                  repo: Path | None = None, concurrency: tuple[int, ...] = CONCURRENCY, requests_per_level: int = 0,
                  inprocess_n: int = 0, threads: int = 2, use_perf_analyzer: bool = True, server_url: str | None = None,
                  max_batch_size: int = C.MAX_BATCH_SIZE, n_cases: int = 8) -> dict[str, Any]:
    """Run everything and write out/latency.json; returns the results."""
    import torch

    from bonescan.export.onnx_export import export_onnx
    from bonescan.failsafe import FailSafeSettings
    from bonescan.model.checkpoint import Predictor
    from bonescan.postprocess import postprocess, served_failsafe
    from bonescan.serving.ort_pipeline import OrtPipeline, runtime_pipeline
    from bonescan.serving.repository import RepoOptions, build_repository
    from bonescan.serving.server import TritonServer, free_ports

    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    pred = Predictor(checkpoint, threads=threads)
    config_name = config_name or pred.ckpt.metadata.get("config_name") or "demo"
    model = C.ENSEMBLE_MODEL if pred.text_guided else C.ENSEMBLE_UNET_MODEL
    cases = load_cases(data, n_cases)
    heavy = config_name == "paper"
    inprocess_n = inprocess_n or (6 if heavy else 40)
    requests_per_level = requests_per_level or (8 if heavy else 48)
    print(f"[bench] {config_name} config, {model}, {len(cases)} held-out scans, {threads} threads per engine", flush=True)

    res: dict[str, Any] = {"config": config_name, "model": model, "checkpoint": str(checkpoint), "machine": machine_info(threads),
                           "run": run_info()}
    img0, rep0, _ = cases[0]
    res["flops_per_scan"] = model_flops(pred, img0, rep0)
    print("[bench] compute ceiling: fp32 GEMMs and the model's heaviest convolutions, torch and onnxruntime ...", flush=True)
    convs = model_convs(pred, img0, rep0)
    ceiling_first = compute_ceiling(threads, convs)

    if export is None:
        export = out / "export"
        if not (export / "model.json").exists():
            print("[bench] exporting ONNX ...", flush=True)
            export_onnx(checkpoint, export)
    ort_pipe = OrtPipeline(export, threads=threads)
    runtime = served_runtime(repo)
    if repo is not None:
        check_repo_serves(repo, export)
    same_pipe = runtime_pipeline(export, runtime, threads) if runtime != "onnxruntime" else None

    settings = FailSafeSettings.from_dict((pred.ckpt.metadata.get("failsafe") or {}).get("settings"))

    def run_torch(case):
        """The whole served pipeline in PyTorch: text encoder, the deployed segmenter graph (dual-path
        + bundled U-Net), postprocess with the fail-safe's choice."""
        img, rep, sp = case
        o = pred.outputs(img[None], [rep])
        if "text_map" in o:
            served_failsafe(o, np.array([sp], np.float32), settings, images=img[None])
        else:
            postprocess(o["logits"], np.array([sp], np.float32))

    def run_ort(case):
        img, rep, sp = case
        ort_pipe.answer(img[None], np.array([sp], np.float32), [rep])

    def run_ort_graphs(case):
        img, rep, _ = case
        ort_pipe.logits(img[None], [rep])

    print(f"[bench] in-process PyTorch eager ({inprocess_n} scans) ...", flush=True)
    res["pytorch"] = time_inprocess(run_torch, cases, 2, inprocess_n)
    print(f"[bench] in-process onnxruntime ({inprocess_n} scans) ...", flush=True)
    res["onnxruntime"] = time_inprocess(run_ort, cases, 2, inprocess_n)
    res["onnxruntime_graphs_only"] = time_inprocess(run_ort_graphs, cases, 1, max(inprocess_n // 2, 3))
    res["served_runtime"] = runtime
    # an INT8 graph does integer work: the fp32 compute ceiling says nothing about it
    res["quantized"] = "quantization" in json.loads((export / "model.json").read_text(encoding="utf-8"))
    if same_pipe is not None:
        def run_same(case):
            img, rep, sp = case
            same_pipe.answer(img[None], np.array([sp], np.float32), [rep])

        print(f"[bench] in-process {runtime}, the served runtime ({inprocess_n} scans) ...", flush=True)
        res["same_runtime"] = time_inprocess(run_same, cases, 2, inprocess_n)

    server = None
    if server_url is None:
        if repo is None:
            repo = out / "repo"
            is_dual = "text_encoder" in json.loads((export / "model.json").read_text())["graphs"]
            if not is_dual:
                raise BonescanError("bench latency serves the dual-path model; pass --server for a running bonescan_unet")
            build_repository(export, repo, RepoOptions(max_batch_size=max_batch_size, intra_op_threads=threads))
        grpc, http, metrics = free_ports(3)
        server = TritonServer(repo, grpc, http, metrics, log_file=out / "tritonserver.log")
        print(f"[bench] starting tritonserver on {repo} ...", flush=True)
        server.start(timeout=600)
        server_url = server.grpc_url
    members = list(C.ENSEMBLES[model].models)
    try:
        sampler = MemorySampler(server.proc.pid) if server and server.proc else None
        if sampler:
            sampler.__enter__()
            res["server_memory_idle_mib"] = round(sampler.rss() / 2**20, 1)
        text_guided = model == C.ENSEMBLE_MODEL
        harness(server_url, model, cases, 1, 3 if heavy else 8, text_guided)  # warm-up
        res["triton"] = []
        for c in concurrency:
            n = max(requests_per_level, 2 * c)
            before = member_stats(server_url, members)
            print(f"[bench] Triton ensemble, concurrency {c}: {n} requests ...", flush=True)
            row = harness(server_url, model, cases, c, n, text_guided)
            row["members"] = member_stats(server_url, members, before)
            res["triton"].append(row)
        if use_perf_analyzer:
            print("[bench] perf_analyzer ...", flush=True)
            data_json = perf_analyzer_data(cases, out / "perf_analyzer_input.json", text_guided)
            levels = [c for c in concurrency if c <= (4 if heavy else 16)]
            res["perf_analyzer"] = run_perf_analyzer(server_url, model, data_json, levels, out,
                                                     measurement_ms=20000 if heavy else 4000)
        if sampler:
            sampler.__exit__(None, None, None)
            res["server_memory_peak_mib"] = round(sampler.peak / 2**20, 1)
    finally:
        if server is not None:
            server.stop()
    print("[bench] compute ceiling again (each microbenchmark keeps its best of the two passes) ...", flush=True)
    res["compute_ceiling"] = best_of(ceiling_first, compute_ceiling(threads, convs))

    res["ratios"] = ratios(res)
    res["targets"] = TARGETS.get(config_name, TARGETS["demo"])
    res["verdicts"] = verdicts(res)
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "latency.json").write_text(json.dumps(res, indent=1) + "\n")
    print(latency_table(res))
    return res


def ratios(res: dict[str, Any]) -> dict[str, float]:
    c1 = next(r for r in res["triton"] if r["concurrency"] == 1)
    by_c = {r["concurrency"]: r for r in res["triton"]}
    same = res.get("same_runtime", res["onnxruntime"])  # the served runtime in-process
    out = {
        "triton_c1_p50_over_onnxruntime_p50": c1["p50_ms"] / res["onnxruntime"]["p50_ms"],
        "triton_c1_p50_over_same_runtime_p50": c1["p50_ms"] / same["p50_ms"],
        "triton_c1_p50_over_pytorch_p50": c1["p50_ms"] / res["pytorch"]["p50_ms"],
        "onnxruntime_p50_over_pytorch_p50": res["onnxruntime"]["p50_ms"] / res["pytorch"]["p50_ms"],
        "compute_efficiency": res["flops_per_scan"]["total"] / (c1["p50_ms"] / 1000) / (res["compute_ceiling"]["gflops"] * 1e9),
    }
    if 8 in by_c:
        out["throughput_c8_over_c1"] = by_c[8]["throughput_per_s"] / c1["throughput_per_s"]
    if 4 in by_c:
        out["throughput_c4_over_c1"] = by_c[4]["throughput_per_s"] / c1["throughput_per_s"]
    return {k: round(v, 4) for k, v in out.items()}


def verdicts(res: dict[str, Any]) -> dict[str, bool]:
    t, r = res["targets"], res["ratios"]
    v = {
        "serving_overhead": r.get("triton_c1_p50_over_same_runtime_p50", r["triton_c1_p50_over_onnxruntime_p50"]) <= t["serving_overhead_max"],
        "faster_than_pytorch": r["triton_c1_p50_over_pytorch_p50"] <= t["vs_pytorch_max"],
        "no_errors": all(row["errors"] == 0 for row in res["triton"]),
    }
    if "throughput_c8_over_c1" in r:
        v["throughput_scaling"] = r["throughput_c8_over_c1"] >= t["throughput_c8_over_c1_min"]
    if "throughput_c4_over_c1" in r and "throughput_c4_over_c1_min" in t:
        v["throughput_scaling_c4"] = r["throughput_c4_over_c1"] >= t["throughput_c4_over_c1_min"]
    if res.get("quantized"):  # INT8: the fp32 ceiling is no ceiling (see bench_latency)
        return v
    if "compute_efficiency_min" in t:
        v["compute_efficiency"] = r["compute_efficiency"] >= t["compute_efficiency_min"]
    # the ceiling must be one: above 1, some operation of the model beat every microbenchmark
    v["ceiling_holds"] = r["compute_efficiency"] <= 1.0
    return v


def latency_table(res: dict[str, Any]) -> str:
    simd = res["machine"].get("simd")
    isa = f"ISA {' '.join(simd) or 'no AVX2'}" if simd is not None else "ISA not recorded"
    lines = [f"\n## Latency: {res['config']} configuration ({res['model']}), {res['machine']['cpu']} ({isa}), "
             f"{res['machine']['cores']} cores, {res['machine']['threads_per_engine']} threads per engine", "",
             "| engine | concurrency | p50 ms | p90 ms | p99 ms | throughput /s | errors |", "|---|---|---|---|---|---|---|"]
    labels = {"pytorch": "PyTorch eager, in-process", "onnxruntime": "onnxruntime, in-process",
              "same_runtime": f"{res.get('served_runtime')}, in-process (the served runtime)"}
    for name, label in labels.items():
        if name not in res:
            continue
        r = res[name]
        lines.append(f"| {label} | 1 | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_per_s']:.2f} | - |")
    for r in res["triton"]:
        lines.append(f"| Triton ensemble (harness) | {r['concurrency']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['throughput_per_s']:.2f} | {r['errors']} |")
    pa = res.get("perf_analyzer", {})
    for r in pa.get("rows", []):
        lines.append(f"| Triton ensemble (perf_analyzer) | {r['concurrency']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['throughput_per_s']:.2f} | - |")
    if "error" in pa:
        lines.append(f"\nperf_analyzer: {pa['error']}")
    r = res["ratios"]
    t = res["targets"]
    v = res["verdicts"]
    ok = lambda b: "meets" if b else "MISSES"  # noqa: E731
    lines += ["", "| ratio (same run) | value | target | |", "|---|---|---|---|",
              f"| Triton p50 (c=1) / in-process {res.get('served_runtime', 'onnxruntime')} p50 (the served runtime) | "
              f"{r.get('triton_c1_p50_over_same_runtime_p50', r['triton_c1_p50_over_onnxruntime_p50']):.3f} | "
              f"<= {t['serving_overhead_max']} | {ok(v['serving_overhead'])} |",
              f"| Triton p50 (c=1) / in-process PyTorch p50 | {r['triton_c1_p50_over_pytorch_p50']:.3f} | <= {t['vs_pytorch_max']} | {ok(v['faster_than_pytorch'])} |"]
    if "throughput_c4_over_c1" in r and "throughput_c4_over_c1_min" in t:
        lines.append(f"| throughput c=4 / c=1 | {r['throughput_c4_over_c1']:.3f} | >= {t['throughput_c4_over_c1_min']} | "
                     f"{ok(v['throughput_scaling_c4'])} |")
    if "throughput_c8_over_c1" in r:
        lines.append(f"| throughput c=8 / c=1 | {r['throughput_c8_over_c1']:.3f} | >= {t['throughput_c8_over_c1_min']} | {ok(v['throughput_scaling'])} |")
    eff_target = t.get("compute_efficiency_min")
    if res.get("quantized"):
        lines.append("| FLOPs per scan / Triton p50 / compute ceiling | - | not applicable: the served segmenter is INT8, "
                     "the ceiling fp32 | |")
    else:
        lines.append(f"| FLOPs per scan / Triton p50 / compute ceiling | {r['compute_efficiency']:.3f} | "
                     f"{'>= ' + str(eff_target) if eff_target else '(paper config only)'} | {ok(v['compute_efficiency']) if 'compute_efficiency' in v else ''} |")
        lines.append(f"| the same, against its ceiling | {r['compute_efficiency']:.3f} | <= 1 | "
                     f"{'holds' if v['ceiling_holds'] else 'BROKEN: an operation of the model beat every microbenchmark'} |")
    ceil = res["compute_ceiling"]
    lines.append(f"\nFLOPs per scan {res['flops_per_scan']['total'] / 1e9:.1f} G; compute ceiling {ceil['gflops']:.0f} GFLOP/s "
                 f"({ceil['best']}, {ceil['threads']} threads); "
                 f"server memory idle {res.get('server_memory_idle_mib', '?')} MiB, peak {res.get('server_memory_peak_mib', '?')} MiB; "
                 f"errors {sum(row['errors'] for row in res['triton'])}")
    lines += ["", "| compute ceiling: microbenchmark (fp32) | engine | GFLOP/s, best | each pass |", "|---|---|---|---|"]
    lines += [f"| {m['op']} {m['shape']} | {m['engine']} | {m['gflops']:.1f} | {' / '.join(f'{g:.1f}' for g in m.get('passes', []))} |"
              for m in ceil["microbenchmarks"]]
    c1 = next(r for r in res["triton"] if r["concurrency"] == 1)
    lines += ["", "| member (c=1) | queue ms | compute ms | avg batch |", "|---|---|---|---|"]
    for m, row in c1["members"].items():
        comp = sum(row.get(k) or 0 for k in ("compute_input_ms", "compute_infer_ms", "compute_output_ms"))
        lines.append(f"| {m} | {row['queue_ms'] or 0:.2f} | {comp:.2f} | {row['avg_batch']} |")
    return "\n".join(lines)
