"""``make demo``: the whole pipeline on the embedded synthetic data set, one step line each.

synthesise -> train the U-Net, then train it on for the dual-path model's steps (the same-budget
U-Net: the baseline the gain is measured against and the fail-safe's fall-back) -> pretrain the
report encoder (masked language model, the report's maps) and train the dual-path model from the
shorter U-Net's weights, carrying the same-budget U-Net as its fail-safe's image-only answer ->
export both to ONNX (+ TensorRT lint, parity) -> build the embedded model repository -> start Triton
-> segment the held-out scans over gRPC with both ensembles, and the 36 scans whose reports were
written by hand -> one table (DSC, lesion detection as FROC / CPM, the served answer against the
U-Net's FROC curve, which path answered, parity with PyTorch, latency) -> demo_out/report.md with
overlays and plots -> stop Triton. Every stage's time is printed at the end.

Steps whose outputs already exist are reused, so a second run is quick. The demo lives with the
benchmarks because it is the end of the data flow (data -> model -> export -> repository ->
server -> client -> benchmarks): it uses every layer, and no library module imports it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

STEPS = 10
STAGE_SECONDS: dict[str, float] = {}  # stage -> seconds, printed at the end
_current: list[str] = [""]


def _export_current(export: Path, checkpoint: Path) -> bool:
    """An export made from this checkpoint (not older than it) that reads as current (export.onnx_export.read_description:
    its format and this code's contract version)."""
    from bonescan.errors import BonescanError
    from bonescan.export.onnx_export import read_description

    desc = export / "model.json"
    if not desc.exists() or desc.stat().st_mtime < checkpoint.stat().st_mtime:
        return False
    try:
        read_description(export)
    except BonescanError:
        return False
    return True

def step(k: int, msg: str) -> float:
    print(f"\n==> [{k}/{STEPS}] {msg}", flush=True)
    _current[0] = f"[{k}/{STEPS}] {msg.split(' (')[0]}"
    return time.perf_counter()


def done(t: float, extra: str = "") -> None:
    seconds = time.perf_counter() - t
    STAGE_SECONDS[_current[0]] = STAGE_SECONDS.get(_current[0], 0.0) + seconds
    print(f"    done in {seconds:.1f} s {extra}", flush=True)


def stage_table(total_s: float) -> str:
    rows = ["| stage | minutes |", "|---|---|"] + [f"| {k} | {v / 60:.1f} |" for k, v in STAGE_SECONDS.items()]
    return "\n".join(rows + [f"| **total** | **{total_s / 60:.1f}** |"])


def _segment_all(url: str, model: str, samples: list, concurrency: int = 4) -> tuple[list, list[str]]:
    """Every sample through the ensemble -> (results, None where the request failed; the errors)."""
    from bonescan.client import BoneScanClient
    from bonescan.client.inputs import Request
    from bonescan.errors import BonescanError

    reqs = [Request(s.image, s.report, tuple(s.pixel_spacing), s.case_id) for s in samples]
    out: list = [None] * len(reqs)
    errors: list[str] = []
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    with BoneScanClient(url, model=model, timeout_s=600, want_probability=True) as c:  # FROC: the served probability maps
        def one(i: int):
            try:
                out[i] = c.segment_prepared([reqs[i]])[0]
            except BonescanError as e:
                errors.append(str(e))

        with ThreadPoolExecutor(concurrency) as ex:
            list(tqdm(ex.map(one, range(len(reqs))), total=len(reqs), desc=f"    {model} over gRPC", unit="scan", leave=False))
    return out, errors


def run_demo(out: Path, n: int = 800, seed: int = 0, workers: int = 2, unet_steps: int | None = None,
             dual_steps: int | None = None) -> int:
    from bonescan.data.dataset import BoneScanDataset
    from bonescan.data.generate import generate_dataset
    from bonescan.metrics import scan_metrics, summarize

    t_total = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"

    t = step(1, f"synthesising {n} SPECT scans + Chinese reports (seed {seed}) into {data}")
    mpath = data / "manifest.json"
    if mpath.exists() and json.loads(mpath.read_text())["generator"]["n"] == n and json.loads(mpath.read_text())["generator"]["seed"] == seed:
        print("    already there; reusing")
    else:
        stats = generate_dataset(data, n, seed, workers)
        print(f"    {stats['lesions_per_scan_mean']} lesions per scan, {stats['negative_share']:.0%} negative, "
              f"{stats['benign_mimic_share']:.0%} with benign mimics, reports {stats['report_chars_mean']:.0f} characters")
    done(t)

    from bonescan.model.config import preset
    from bonescan.train import train

    # "unet": the same-budget U-Net (served as bonescan_unet, the fail-safe's fall-back); "unet_short": the
    # U-Net the dual-path model starts from, a second row
    ck = {"unet": out / "unet.pt", "dualpath": out / "dualpath.pt", "unet_short": out / "unet_short.pt"}
    m, tc = preset("demo", "unet")
    tc.steps = unet_steps or tc.steps
    m_d, tc_d = preset("demo", "dualpath")
    tc_d.steps = dual_steps or tc_d.steps
    t = step(2, f"training the U-Net (demo config, {tc.steps} steps), then on for the dual-path model's {tc_d.steps} steps "
                f"(the same image budget), then its anatomy network ({tc.anatomy_steps} steps)")
    anatomy_steps, tc.anatomy_steps = tc.anatomy_steps, 0  # the anatomy network is trained once, on the served U-Net
    if not ck["unet_short"].exists():
        train(data, ck["unet_short"], m, tc, seed=seed, command="make demo", config_name="demo")
    else:
        print("    already there; reusing")
    if not ck["unet"].exists():
        tc.steps, tc.anatomy_steps = tc_d.steps, anatomy_steps
        train(data, ck["unet"], m, tc, seed=seed, command="make demo (the U-Net on for the dual-path model's steps)",
              config_name="demo", init_from=ck["unet_short"])
    else:
        print("    already there; reusing")
    done(t)
    m, tc = m_d, tc_d
    t = step(3, f"pretraining the report encoder ({tc.pretrain_text_steps} MLM steps, then {tc.pretrain_maps_steps} steps of the "
                f"report's maps from the reports alone) and training the dual-path model "
                f"(image + report, demo config, {tc.steps} steps from the shorter U-Net's weights, carrying the same-budget "
                "U-Net as its fail-safe answer)")
    if not ck["dualpath"].exists():
        train(data, ck["dualpath"], m, tc, seed=seed, command="make demo", config_name="demo", init_from=ck["unet_short"],
              fallback=ck["unet"])
    else:
        print("    already there; reusing")
    done(t)

    from bonescan.export.onnx_export import export_onnx
    from bonescan.export.parity import check_parity
    from bonescan.export.trt_compat import check_export

    t = step(4, "exporting both models to ONNX; TensorRT lint; ONNX-vs-PyTorch parity")
    exports = {k: out / f"export_{k}" for k in ("unet", "dualpath")}
    parity, lint = {}, {}
    for k in exports:
        p = ck[k]
        if not _export_current(exports[k], p):
            export_onnx(p, exports[k])
        lint[k] = check_export(exports[k])
        parity[k] = check_parity(p, exports[k], data, n=8, max_batch=4, json_out=out / f"parity_onnx_{k}.json", progress=False)
        print(f"    {k}: TensorRT lint {'OK' if lint[k]['ok'] else 'FAILED: ' + str(lint[k]['graphs'])}")
    done(t)

    from bonescan.serving.repository import RepoOptions, build_repository
    from bonescan.serving.server import TritonServer, free_ports

    t = step(5, "building the embedded Triton model repository (ensembles bonescan + bonescan_unet)")
    repo = out / "model_repository"
    build_repository(exports["dualpath"], repo, RepoOptions(max_batch_size=8), baseline=exports["unet"])
    done(t, str(repo))

    from bonescan.benchmarks.handwritten import handwritten_samples

    test = BoneScanDataset(data, "test", with_regions=True)
    samples = test.load_all(progress=True, desc="    loading test split")
    hand = handwritten_samples()
    t = step(6, "starting tritonserver (CPU, python backend + onnxruntime)")
    g, h, mport = free_ports(3)
    server = TritonServer(repo, g, h, mport, log_file=out / "tritonserver.log")
    server.start(timeout=300)
    done(t, f"gRPC {server.grpc_url}")
    results: dict[str, Any] = {}
    lat: dict[str, Any] = {}
    try:
        t = step(7, f"segmenting {len(samples)} held-out scans over gRPC with both ensembles, and {len(hand)} with hand-written reports")
        served, served_hand, request_errors = {}, {}, {}
        for k, model in (("dualpath", "bonescan"), ("unet", "bonescan_unet")):
            served[k], request_errors[k] = _segment_all(server.grpc_url, model, samples)
            served_hand[k], errs = _segment_all(server.grpc_url, model, hand)
            request_errors[k] += errs
        done(t)
        if any(request_errors.values()):  # no masks to compare: the checks so far decide
            return finish(demo_checks(lint, parity, request_errors=request_errors, n=len(samples)))
        from bonescan.benchmarks.latency import harness

        t = step(8, "latency over gRPC (concurrency 1 and 4) and in-process PyTorch on the same scans")
        cases = [(s.image, s.report, tuple(s.pixel_spacing)) for s in samples[:8]]
        for k, model in (("dualpath", "bonescan"), ("unet", "bonescan_unet")):
            harness(server.grpc_url, model, cases, 1, 4, k == "dualpath")
            lat[k] = {c: harness(server.grpc_url, model, cases, c, 24, k == "dualpath") for c in (1, 4)}
        done(t)
    finally:
        server.stop()

    t = step(9, "the fastest CPU flavor: the segmenter quantized to INT8 (gate on the held-out scans), served by OpenVINO, "
                "its latency on the same scans")
    fast = fastest_flavor(exports["dualpath"], data, out, cases)
    if "levels" in fast:
        lat["dualpath_openvino_int8"] = fast["levels"]
    done(t, fast.get("note", ""))

    t = step(10, "PyTorch on the same scans (parity), the shorter U-Net, lesion detection (FROC), report")
    for k in ("unet", "dualpath"):
        results[k] = pytorch_parity(ck[k], samples, served[k])
        results[k]["handwritten"] = summarize([scan_metrics(r.mask, s.mask, r.probability) for s, r in zip(hand, served_hand[k])])
        results[k]["handwritten"]["answered_by_unet"] = sum(r.answered_by == "unet" for r in served_hand[k])
    results["unet_short"] = shorter_unet(ck["unet_short"], samples)
    froc_png = froc_figure(out, results)
    from bonescan.benchmarks.demo_report import write_demo_report

    table = demo_table(results, lat, parity, len(samples), len(hand)) + "\n\n" + flavor_rows(lat, fast)
    print(table)
    report = write_demo_report(out, samples, served, results, lat, table, froc_png)
    done(t, str(report))
    (out / "demo.json").write_text(json.dumps({"results": results, "latency": lat, "fastest_flavor": {k: v for k, v in fast.items() if k != "levels"}, "parity": {k: {kk: v[kk] for kk in ("max_abs_logit_diff", "mean_mask_dsc")} for k, v in parity.items()}}, indent=1, default=str) + "\n")
    total = time.perf_counter() - t_total
    print("\n" + stage_table(total))
    print(f"\nmake demo finished in {total / 60:.1f} min; open {report}")
    return finish(demo_checks(lint, parity, results, lat, request_errors, len(samples)))


def demo_checks(lint: dict[str, dict], parity: dict[str, dict], results: dict | None = None, lat: dict | None = None,
                request_errors: dict[str, list[str]] | None = None, n: int | None = None) -> list[str]:
    """Every check the demo prints -> one line per failed check (none: all passed).

    Args:
        lint: model -> ``check_export`` result (TensorRT lint).
        parity: model -> ``check_parity`` result (ONNX vs PyTorch, with its targets).
        results: model -> the table's results (DSC through Triton and PyTorch, identical masks).
        lat: model -> concurrency -> latency harness row (its request errors).
        request_errors: model -> messages of the segmentation requests that failed.
        n: held-out scans sent per model.
    """
    fails = []
    for k, r in lint.items():
        if not r["ok"]:
            fails.append(f"{k}: TensorRT lint: {r['graphs']}")
    for k, p in parity.items():
        t = p["targets"]
        if not p["max_abs_logit_diff"] <= t["max_abs_logit_diff"]:
            fails.append(f"{k}: ONNX vs PyTorch max |logit diff| {p['max_abs_logit_diff']:.2e} > target {t['max_abs_logit_diff']:.0e}")
        if not p["mean_mask_dsc"] >= t["mean_mask_dsc"]:
            fails.append(f"{k}: ONNX vs PyTorch mean mask DSC {p['mean_mask_dsc']:.5f} < target {t['mean_mask_dsc']}")
        if not p["ok"] and not any(f.startswith(f"{k}: ONNX vs PyTorch") for f in fails):
            fails.append(f"{k}: ONNX parity check failed (batch consistency: {p.get('batch_consistency_max_diff')})")
    for k, errs in (request_errors or {}).items():
        if errs:
            fails.append(f"{k}: {len(errs)} of {n} segmentation requests failed, e.g. {errs[0]}")
    for k, r in (results or {}).items():
        if "triton" not in r:  # the shorter U-Net runs in PyTorch only
            continue
        delta = r["triton"]["dsc"]["mean"] - r["pytorch"]["dsc"]["mean"]
        if delta != 0:
            fails.append(f"{k}: delta DSC Triton - PyTorch {delta:+.6f} (target 0)")
        if r["identical"] != n:
            fails.append(f"{k}: {r['identical']}/{n} masks from Triton identical to PyTorch's (target {n}/{n})")
    for k, levels in (lat or {}).items():
        for c, row in levels.items():
            if row["errors"]:
                fails.append(f"{k}: {row['errors']} request errors in the latency run at concurrency {c}")
    return fails


def finish(fails: list[str]) -> int:
    """The demo's exit code: 1 and one ``FAILED: ...`` line per failed check, else 0."""
    if not fails:
        print("all checks passed")
        return 0
    print("")
    for line in fails:
        print(f"FAILED: {line}")
    return 1


def fastest_flavor(export: Path, data: Path, out: Path, cases: list) -> dict[str, Any]:
    """The dual-path segmenter quantized to INT8 (`bonescan export quantize`, its accuracy gate on the
    held-out scans), served as the openvino flavor, timed on the same scans as the embedded one.

    Returns the gate and, when it passed, the latency rows (concurrency -> harness row); a gate that
    fails is reported, not served (the embedded flavor stays the answer)."""
    from bonescan.benchmarks.latency import cpu_info, harness
    from bonescan.export.quantize import format_gate, quantize_export
    from bonescan.serving.repository import RepoOptions, build_repository
    from bonescan.serving.server import TritonServer, free_ports

    target = out / "export_dualpath_int8"
    info = quantize_export(export, data, target)
    print(format_gate(info), flush=True)
    a = info["attempts"][-1]
    res: dict[str, Any] = {"isa": cpu_info()["simd"], "gate_passed": bool(info["passed"]), "scans": a["scans"],
                           "dsc_fp32": a["dsc_fp32"], "dsc_int8": a["dsc_int8"], "delta_dsc": a["delta_dsc"],
                           "mask_agreement": a["mask_agreement"]}
    if not info["passed"]:
        res["note"] = "INT8 missed its accuracy gate: not served"
        return res
    repo = out / "model_repository_openvino_int8"
    build_repository(target, repo, RepoOptions(flavor="openvino", intra_op_threads=2))
    g, h, m = free_ports(3)
    server = TritonServer(repo, g, h, m, log_file=out / "tritonserver_openvino_int8.log")
    server.start(timeout=300)
    try:
        harness(server.grpc_url, "bonescan", cases, 1, 4, True)  # warm-up
        res["levels"] = {c: harness(server.grpc_url, "bonescan", cases, c, 24, True) for c in (1, 4)}
    finally:
        server.stop()
    res["repository"] = str(repo)
    return res


def flavor_rows(lat: dict[str, Any], fast: dict[str, Any]) -> str:
    """The dual-path ensemble's latency in the embedded flavor and in the fastest CPU flavor, one run."""
    isa = " ".join(fast.get("isa", []))
    lines = [f"| dual-path ensemble, by flavor (2 threads per engine; ISA {isa}) | p50 ms c=1 | p50 ms c=4 | scans/s c=4 | "
             "speed-up p50 c=1 | DSC fp32 -> INT8 (gate, held-out scans) |", "|---|---|---|---|---|---|"]
    e = lat["dualpath"]
    lines.append(f"| embedded (onnxruntime fp32) | {e[1]['p50_ms']:.0f} | {e[4]['p50_ms']:.0f} | {e[4]['throughput_per_s']:.1f} | 1.00x | - |")
    gate = (f"{fast['dsc_fp32']:.4f} -> {fast['dsc_int8']:.4f} (delta {fast['delta_dsc']:+.4f}, {fast['scans']} scans, "
            f"mask agreement {100 * fast['mask_agreement']:.3f} %)")
    f = lat.get("dualpath_openvino_int8")
    if f:
        lines.append(f"| openvino-int8 | {f[1]['p50_ms']:.0f} | {f[4]['p50_ms']:.0f} | {f[4]['throughput_per_s']:.1f} | "
                     f"{e[1]['p50_ms'] / f[1]['p50_ms']:.2f}x | {gate} |")
    else:
        lines.append(f"| openvino-int8 | not served: missed its gate | - | - | - | {gate} |")
    lines.append("\nINT8 pays on CPUs with AVX-512 VNNI or AMX; on an AVX2-only CPU serve the embedded or openvino flavor "
                 "(README, \"Which flavor when\").")
    return "\n".join(lines)


def shorter_unet(checkpoint: Path, samples: list) -> dict[str, Any]:
    """The shorter U-Net (the dual-path model's starting weights) on the held-out scans, in PyTorch."""
    from bonescan.metrics import scan_metrics, summarize
    from bonescan.model.checkpoint import Predictor
    from bonescan.postprocess import postprocess

    pred = Predictor(checkpoint)
    per = []
    for i in range(0, len(samples), 4):
        batch = samples[i : i + 4]
        masks, prob, _ = postprocess(pred.outputs(np.stack([s.image for s in batch]))["logits"],
                                     np.array([s.pixel_spacing for s in batch], np.float32))
        per += [scan_metrics(masks[k, 0], s.mask, prob[k, 0]) for k, s in enumerate(batch)]
    return {"pytorch": summarize(per)}


def froc_figure(out: Path, results: dict[str, Any]) -> Path:
    """demo_out/froc.png: the FROC curves of the answers on the held-out scans and each answer's operating point."""
    from bonescan import viz

    curves, points = {}, {}
    for k, src, label in (("unet", "triton", "U-Net, same budget (Triton)"), ("unet_short", "pytorch", "U-Net, shorter"),
                          ("dualpath", "fail_safe_off", "dual-path, fail-safe off"), ("dualpath", "triton", "dual-path, served (Triton)")):
        s = results.get(k, {}).get(src)
        if s and s.get("froc"):
            curves[label] = s["froc"]["curve"]
            points[label] = (s["fp_per_scan"], s["lesion_sensitivity"] or 0.0)
    path = out / "froc.png"
    viz.froc_plot(curves, points, path, title="lesion detection on the held-out scans")
    return path


def pytorch_parity(checkpoint: Path, samples: list, served: list) -> dict[str, Any]:
    """The same scans through PyTorch (with the same fail-safe for the dual-path model): the answers
    Triton gave must be the ones the checkpoint gives."""
    from bonescan.failsafe import FailSafeSettings
    from bonescan.metrics import scan_metrics, summarize
    from bonescan.model.checkpoint import Predictor
    from bonescan.postprocess import postprocess, served_failsafe

    pred = Predictor(checkpoint)
    settings = FailSafeSettings.from_dict((pred.ckpt.metadata.get("failsafe") or {}).get("settings"))
    per_t, per_s, agree, ms, same_path, per_off = [], [], [], [], [], []
    for s, r in zip(samples, served):
        sp = np.array([s.pixel_spacing], np.float32)
        t0 = time.perf_counter()
        out = pred.outputs(s.image[None], [s.report])
        if "text_map" in out:
            masks, _, _, dec = served_failsafe(out, sp, settings)
            same_path.append(dec[0]["answered_by"] == r.answered_by)
        else:
            masks = postprocess(out["logits"], sp)[0]
        ms.append((time.perf_counter() - t0) * 1000)
        if "text_map" in out:  # the dual-path model's own answer (fail-safe off), for the FROC comparison
            m_off, p_off, _ = postprocess(out["logits"], sp)
            if dec[0]["signals"]["names_no_metastasis"]:
                m_off[:] = 0
            per_off.append(scan_metrics(m_off[0, 0], s.mask, p_off[0, 0]))
        m_t = masks[0, 0]
        per_t.append(scan_metrics(m_t, s.mask))
        per_s.append(scan_metrics(r.mask, s.mask, r.probability))
        agree.append(scan_metrics(r.mask, m_t)["dsc"])
    return {"triton": summarize(per_s), "pytorch": summarize(per_t), "mask_agreement": float(np.mean(agree)),
            "identical": int(sum(a == 1.0 for a in agree)), "pytorch_ms_p50": float(np.median(ms)),
            "answered_by_unet": sum(r.answered_by == "unet" for r in served) if same_path else None,
            "same_path_as_pytorch": int(sum(same_path)) if same_path else None,
            **({"fail_safe_off": summarize(per_off)} if per_off else {})}


def _margin(s: dict, ref: dict) -> float | None:
    """An answer's lesion sensitivity minus the reference's FROC curve at the answer's false positives per scan."""
    from bonescan.metrics import sensitivity_at

    if not ref.get("froc") or s["lesion_sensitivity"] is None:
        return None
    return s["lesion_sensitivity"] - sensitivity_at(ref["froc"]["curve"], s["fp_per_scan"])


def demo_table(results: dict, lat: dict, parity: dict, n: int, n_hand: int) -> str:
    lines = [f"\n| model (through Triton, {n} held-out scans) | DSC (mean +- sd) | DSC scans with metastases | lesion sensitivity | "
             "FP / scan | CPM | margin to the U-Net's FROC | answered by the U-Net | DSC PyTorch | delta DSC Triton-PyTorch | "
             "identical masks | ONNX max diff | p50 ms c=1 | p50 ms c=4 | scans/s c=4 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ref = results["unet"]["triton"]
    for k, label in (("unet", "U-Net (image only, the dual-path model's image budget)"), ("dualpath", "dual-path (image + report, served)")):
        r = results[k]
        s = r["triton"]
        fb = "-" if r.get("answered_by_unet") is None else f"{r['answered_by_unet']}/{n}"
        mg = _margin(s, ref) if k != "unet" else None
        lines.append(
            f"| {label} | {s['dsc']['mean']:.4f} +- {s['dsc']['sd']:.3f} | {s['dsc_positive_scans']['mean']:.4f} | "
            f"{s['lesion_sensitivity'] or 0:.3f} | {s['fp_per_scan']:.2f} | {(s.get('froc') or {}).get('cpm', 0):.3f} | "
            f"{'-' if mg is None else f'{mg:+.3f}'} | {fb} | {r['pytorch']['dsc']['mean']:.4f} | "
            f"{s['dsc']['mean'] - r['pytorch']['dsc']['mean']:+.5f} | {r['identical']}/{n} | {parity[k]['max_abs_logit_diff']:.1e} | "
            f"{lat[k][1]['p50_ms']:.0f} | {lat[k][4]['p50_ms']:.0f} | {lat[k][4]['throughput_per_s']:.1f} |")
    off = results["dualpath"].get("fail_safe_off")
    if off:
        mg = _margin(off, ref)
        lines.append(f"| dual-path, fail-safe off (PyTorch) | {off['dsc']['mean']:.4f} +- {off['dsc']['sd']:.3f} | "
                     f"{off['dsc_positive_scans']['mean']:.4f} | {off['lesion_sensitivity'] or 0:.3f} | {off['fp_per_scan']:.2f} | "
                     f"{(off.get('froc') or {}).get('cpm', 0):.3f} | {'-' if mg is None else f'{mg:+.3f}'} | - | "
                     f"{off['dsc']['mean']:.4f} | - | - | - | - | - | - |")
    short = results.get("unet_short")
    if short:
        s = short["pytorch"]
        lines.append(f"| U-Net, shorter (PyTorch; the weights the dual-path model starts from) | {s['dsc']['mean']:.4f} +- "
                     f"{s['dsc']['sd']:.3f} | {s['dsc_positive_scans']['mean']:.4f} | {s['lesion_sensitivity'] or 0:.3f} | "
                     f"{s['fp_per_scan']:.2f} | {(s.get('froc') or {}).get('cpm', 0):.3f} | - | - | {s['dsc']['mean']:.4f} | - | - | - | - | - | - |")
    d, u = results["dualpath"]["triton"], results["unet"]["triton"]
    gain = d["dsc"]["mean"] - u["dsc"]["mean"]
    cpm_gain = (d.get("froc") or {}).get("cpm", 0) - (u.get("froc") or {}).get("cpm", 0)
    lines.append(f"\nGain of the report over the U-Net with the same image budget (served answer): DSC {gain:+.4f}, "
                 f"CPM {cpm_gain:+.4f}; the served answer's lesion sensitivity lies {_margin(d, u) or 0:+.3f} from the U-Net's "
                 "FROC curve at its false positives per scan (safe: >= -0.02)")
    if short:
        lines.append(f"Over the shorter U-Net: DSC {gain + u['dsc']['mean'] - short['pytorch']['dsc']['mean']:+.4f}")
    lines += ["", f"| {n_hand} other scans, reports written by hand (benchmarks/handwritten_reports) | DSC | DSC scans with metastases | "
              "lesion sensitivity | FP / scan | answered by the U-Net |", "|---|---|---|---|---|---|"]
    for k, label in (("unet", "U-Net (image only)"), ("dualpath", "dual-path, fail-safe on")):
        h = results[k]["handwritten"]
        lines.append(f"| {label} | {h['dsc']['mean']:.4f} | {h['dsc_positive_scans']['mean']:.4f} | {h['lesion_sensitivity'] or 0:.3f} | "
                     f"{h['fp_per_scan']:.2f} | {h['answered_by_unet'] if k == 'dualpath' else '-'}/{n_hand} |")
    return "\n".join(lines)
