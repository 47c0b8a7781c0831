"""``bonescan``: a thin command line over the library (each handler imports what it needs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

COMMANDS: dict[str, argparse.ArgumentParser] = {}


def _data_synth(a: argparse.Namespace) -> int:
    from bonescan.data.generate import generate_dataset
    from bonescan.data.styles import STYLE_NAMES
    from bonescan.data.synth import SynthConfig
    from bonescan.errors import BonescanError

    styles = tuple(a.house_styles or ())
    unknown = sorted(set(styles) - set(STYLE_NAMES))
    if unknown:  # before any work starts
        raise BonescanError(f"unknown house style {', '.join(unknown)}; known: {', '.join(STYLE_NAMES)}")
    stats = generate_dataset(a.out, a.n, a.seed, a.workers, progress=not a.quiet, cfg=SynthConfig(house_styles=styles))
    print(json.dumps(stats, ensure_ascii=False, indent=1))
    return 0


def _data_preview(a: argparse.Namespace) -> int:
    from bonescan.data.preview import preview

    out = preview(a.data, a.out, n=a.n, ids=a.ids, split=a.split, show_report=not a.no_report)
    print(f"wrote {out}")
    return 0


def _data_manifest(a: argparse.Namespace) -> int:
    from bonescan.data.dataset import MANIFEST, CaseRef, assign_splits, write_manifest

    root = Path(a.data)
    cases = root / "cases" if (root / "cases").is_dir() else root
    ids = sorted(p.name for p in cases.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not ids:
        print(f"{root}: no case folders", file=sys.stderr)
        return 2
    if (root / MANIFEST).exists() and not a.force:
        print(f"{root / MANIFEST} exists; use --force to replace it", file=sys.stderr)
        return 2
    splits = assign_splits(ids, a.seed, a.val, a.test)
    path = write_manifest(root, [CaseRef(i, splits[i], cases / i) for i in ids], {"format": "bonescan-dataset/1"})
    counts = {s: sum(1 for v in splits.values() if v == s) for s in ("train", "val", "test")}
    print(f"wrote {path}: {counts}")
    return 0


def _data_check(a: argparse.Namespace) -> int:
    from bonescan.data.dataset import BoneScanDataset

    ds = BoneScanDataset(a.data, split=a.split, require_mask=not a.no_mask)
    ok = sum(1 for _ in ds.samples(progress=True, desc="checking"))
    for e in ds.errors:
        print(f"ERROR {e}")
    print(f"{ok} of {len(ds)} cases readable")
    return 0 if not ds.errors else 1


def _data_to_dicom(a: argparse.Namespace) -> int:
    from bonescan.data.io import read_scan, write_dicom_scan

    scan = read_scan(a.case)
    write_dicom_scan(a.out, scan.anterior, scan.posterior, scan.pixel_spacing)
    print(f"wrote {a.out}")
    return 0


def _bench_synth(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.synth import bench_synth

    bench_synth(a.n, a.workers, a.out)
    return 0


def _train(a: argparse.Namespace) -> int:
    from bonescan.model.config import preset
    from bonescan.train import train

    mcfg, tcfg = preset(a.config, a.model, a.fusion)
    if a.steps is not None:
        tcfg.steps = a.steps
    if a.batch_size:
        tcfg.batch_size = a.batch_size
    if a.max_minutes is not None:
        tcfg.max_minutes = a.max_minutes
    if a.eval_every is not None:
        tcfg.eval_every = a.eval_every
    if a.lr is not None:
        tcfg.lr = a.lr
    if a.crop_rows is not None:
        tcfg.crop_rows = a.crop_rows
    if a.fusion_stages is not None:
        mcfg.fusion_stages = a.fusion_stages
    if a.no_prior:
        mcfg.prior = False
    train(a.data, a.out, mcfg, tcfg, seed=a.seed, text_encoder_dir=a.text_encoder, progress=not a.quiet,
          command="bonescan " + " ".join(sys.argv[1:]), config_name=a.config, init_from=a.init_from)
    return 0


def _eval(a: argparse.Namespace) -> int:
    from bonescan.evaluate import evaluate

    evaluate(a.checkpoint, a.data, a.split, a.reports, a.json, seed=a.seed, progress=not a.quiet)
    return 0


def _export_onnx(a: argparse.Namespace) -> int:
    from bonescan.export.onnx_export import export_onnx

    desc = export_onnx(a.checkpoint, a.out)
    for g in desc["graphs"].values():
        ins = ", ".join(f"{i['name']}:{i['dtype']}{i['shape']}" for i in g["inputs"])
        outs = ", ".join(f"{o['name']}:{o['dtype']}{o['shape']}" for o in g["outputs"])
        print(f"{g['file']}: ({ins}) -> ({outs}), {g['nodes']} nodes, opset {g['opset']}")
    print(f"wrote {Path(a.out) / 'model.json'} ({desc['export_seconds']} s)")
    return 0


def _export_check(a: argparse.Namespace) -> int:
    from bonescan.export.parity import check_parity

    res = check_parity(a.checkpoint, a.export, a.data, a.split, a.n, a.max_batch, a.json)
    return 0 if res["ok"] else 1


def _export_lint(a: argparse.Namespace) -> int:
    from bonescan.export.trt_compat import check_export

    res = check_export(a.onnx)
    for graph, findings in res["graphs"].items():
        print(f"{graph}: {'OK' if not findings else f'{len(findings)} problem(s)'}")
        for f in findings:
            print(f"  {f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["ok"] else 1


def _export_trt(a: argparse.Namespace) -> int:
    from bonescan.export.trt import export_trt

    built = export_trt(a.onnx, a.out, a.precision, a.max_batch, a.timing_cache, a.calibration_cases)
    print(json.dumps(built, indent=1))
    return 0


def _export_verify_gpu(a: argparse.Namespace) -> int:
    from bonescan.export.verify_gpu import verify_gpu

    res = verify_gpu(a.checkpoint, a.work, a.precisions, a.max_batch, a.data, a.n)
    return 0 if res["ok"] else 1


def _repo_build(a: argparse.Namespace) -> int:
    from bonescan.serving.repository import RepoOptions, build_repository

    opts = RepoOptions(flavor=a.flavor, max_batch_size=a.max_batch_size, instances=a.instances,
                       python_instances=a.python_instances, queue_delay_us=a.queue_delay_us,
                       python_queue_delay_us=a.python_queue_delay_us,
                       intra_op_threads=a.threads, run_batch=a.run_batch, device=a.device)
    m = build_repository(a.src, a.out, opts, baseline=a.baseline)
    print(f"wrote {a.out} ({m['flavor']} flavor): {', '.join(m['models'])}")
    return 0


def _serve(a: argparse.Namespace) -> int:
    from bonescan.serving.server import serve

    return serve(a.repo, a.grpc_port, a.http_port, a.metrics_port, a.log_file, a.admin_key_file, a.bind)


def _infer(a: argparse.Namespace) -> int:
    """Client command line: one scan or a folder of cases -> masks, overlays, lesion lists."""
    from tqdm import tqdm

    from bonescan.client import BoneScanClient
    from bonescan.client.inputs import find_cases
    from bonescan.errors import BonescanError

    headers = dict(h.split("=", 1) for h in (a.header or []))
    opts = {"model": a.model, "timeout_s": a.timeout, "retries": a.retries, "headers": headers,
            "ssl": bool(a.root_cert), "root_certificates": a.root_cert, "private_key": a.client_key,
            "certificate_chain": a.client_cert, "expected_model_sha256": a.expect_model}
    if not a.input and not a.views:
        print("give a scan, a folder of cases, or --views ANTERIOR POSTERIOR", file=sys.stderr)
        return 2
    if a.views:
        items = [((a.views[0], a.views[1]), a.report)]
    else:
        src = Path(a.input)
        items = [(p, a.report) for p in find_cases(src)] if src.is_dir() else [(src, a.report)]
        if not items:
            print(f"{src}: no scans found", file=sys.stderr)
            return 2
    out = Path(a.out)
    failures = 0
    with BoneScanClient(a.server, **opts) as client:
        bar = tqdm(total=len(items), desc="segmenting", unit="scan", disable=len(items) < 2)
        results = client.segment_many(items, concurrency=a.concurrency)
        for (scan, _), res in zip(items, results):
            name = Path(scan[0]).parent.name if isinstance(scan, tuple) else Path(scan).stem
            if isinstance(res, BonescanError):
                failures += 1
                bar.write(f"FAILED {res}")
            else:
                res.save(out, name)
                bar.write(res.summary().replace(Path(res.source).name or res.source, name, 1))
            bar.update()
        bar.close()
    print(f"{len(items) - failures} of {len(items)} scans segmented; results in {out}")
    return 0 if failures == 0 else 1


def _demo(a: argparse.Namespace) -> int:
    from bonescan.demo import run_demo

    return run_demo(a.out, n=a.n, seed=a.seed, workers=a.workers, unet_steps=a.unet_steps, dual_steps=a.dual_steps)


def _bench_latency(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.latency import bench_latency
    from bonescan.benchmarks.report import write_latency_report

    res = bench_latency(a.checkpoint, a.data, a.out, config_name=a.config, export=a.export, repo=a.repo,
                        concurrency=tuple(a.concurrency), requests_per_level=a.requests, threads=a.threads,
                        use_perf_analyzer=not a.no_perf_analyzer, server_url=a.server, n_cases=a.cases)
    print(f"wrote {write_latency_report(res, a.out)}")
    return 0 if all(res["verdicts"].values()) else 1


def _bench_parity(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.parity import bench_parity

    if a.server:
        res = bench_parity(a.checkpoint, a.export, a.data, a.server, a.model, a.n, out=a.out)
        return 0 if res["ok"] else 1
    from bonescan.serving.repository import RepoOptions, build_repository
    from bonescan.serving.server import TritonServer, free_ports

    repo = a.repo
    if repo is None:
        repo = a.out / "repo"
        build_repository(a.export, repo, RepoOptions())
    g, h, m = free_ports(3)
    with TritonServer(repo, g, h, m, log_file=a.out / "tritonserver_parity.log") as srv:
        res = bench_parity(a.checkpoint, a.export, a.data, srv.grpc_url, a.model, a.n, out=a.out)
    return 0 if res["ok"] else 1


def _prepare_repo(a: argparse.Namespace) -> Path:
    if a.repo:
        return a.repo
    from bonescan.serving.repository import RepoOptions, build_repository

    repo = a.out / "repo"
    build_repository(a.export, repo, RepoOptions(), baseline=getattr(a, "baseline", None))
    return repo


def _bench_soak(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.faults import soak

    res = soak(_prepare_repo(a), a.export, a.data, a.minutes, a.concurrency, a.warmup, a.out)
    return 0 if res["ok"] else 1


def _bench_kill(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.faults import kill_restart

    res = kill_restart(_prepare_repo(a), a.export, a.data, a.requests, a.concurrency, a.kill_after, a.out)
    return 0 if res["ok"] else 1


def _bench_storm(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.faults import storm

    res = storm(_prepare_repo(a), a.export, a.data, a.rounds, a.concurrency, a.baseline, a.out)
    return 0 if res["ok"] else 1


def _bench_text_gain(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.text_gain import run_text_gain

    res = run_text_gain(a.data, a.out, a.seeds, a.config, a.fusion, not a.no_prior, a.tag)
    return 0 if all(res["summary"]["targets_met"].values()) else 1


def _fault_run_args(s: argparse.ArgumentParser) -> None:
    """The arguments `bench soak` and `bench kill` share."""
    s.add_argument("--export", required=True, type=Path, help="ONNX export of the dual-path model")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--repo", type=Path, help="a built repository (default: built from --export into --out)")
    s.add_argument("--out", type=Path, default=Path("bench_out"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bonescan", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    # ---- data
    data = sub.add_parser("data", help="synthetic data set, previews, hospital data checks")
    dsub = data.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write a synthetic SPECT + report data set")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--n", type=int, default=1000, help="number of cases (default 1000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--house-styles", nargs="+", metavar="STYLE",
                   help="write reports only in these house styles (default: all; see bonescan.data.styles)")
    s.set_defaults(func=_data_synth)
    s = dsub.add_parser("preview", help="draw a grid of cases (views, mask, report) into a PNG")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--n", type=int, default=6, help="number of cases (default 6)")
    s.add_argument("--ids", nargs="*", help="case ids to draw instead of the first n")
    s.add_argument("--split", choices=["train", "val", "test"])
    s.add_argument("--no-report", action="store_true", help="leave the report text out of the picture")
    s.set_defaults(func=_data_preview)
    s = dsub.add_parser("manifest", help="write manifest.json with a fixed split for a folder of cases")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val", type=float, default=0.1)
    s.add_argument("--test", type=float, default=0.2)
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=_data_manifest)
    s = dsub.add_parser("check", help="read every case and list the ones that cannot be used")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--split", choices=["train", "val", "test"])
    s.add_argument("--no-mask", action="store_true", help="masks are not required")
    s.set_defaults(func=_data_check)
    s = dsub.add_parser("to-dicom", help="write a case's views as one two-frame NM DICOM file")
    s.add_argument("case", type=Path, help="case folder, DICOM or NPY")
    s.add_argument("--out", required=True, type=Path)
    s.set_defaults(func=_data_to_dicom)

    # ---- model
    s = sub.add_parser("train", help="train the dual-path model or the U-Net baseline")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path, help="checkpoint file to write (.pt)")
    s.add_argument("--model", choices=["dualpath", "unet"], default="dualpath")
    s.add_argument("--config", choices=["demo", "paper", "tiny"], default="demo")
    s.add_argument("--fusion", choices=["xattn", "gate"], help="dualpath fusion (default xattn)")
    s.add_argument("--text-encoder", type=Path, help="local folder with a pretrained MacBERT (offline)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--steps", type=int, help="override the config's steps (0 = initialise only)")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--max-minutes", type=float, help="stop after this long (the schedule is compressed)")
    s.add_argument("--eval-every", type=int, help="print validation DSC every n steps")
    s.add_argument("--lr", type=float, help="override the image-path learning rate")
    s.add_argument("--crop-rows", type=int, help="training crop height (0 = whole images)")
    s.add_argument("--init-from", type=Path, help="initialise the image path from this checkpoint (e.g. the U-Net)")
    s.add_argument("--fusion-stages", type=int, help="override the number of fused decoder stages")
    s.add_argument("--no-prior", action="store_true", help="ablation: no report veto map on the logits")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_train)
    s = sub.add_parser("eval", help="evaluate a checkpoint on a split (true, shuffled or empty reports)")
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--split", choices=["train", "val", "test"], default="test")
    s.add_argument("--reports", choices=["true", "shuffled", "empty"], default="true")
    s.add_argument("--json", type=Path, help="write per-scan and summary metrics here")
    s.add_argument("--seed", type=int, default=0, help="seed of the report shuffle")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_eval)

    # ---- export
    exp = sub.add_parser("export", help="ONNX export, parity checks, TensorRT engines")
    esub = exp.add_subparsers(dest="export_command", required=True)
    s = esub.add_parser("onnx", help="checkpoint -> text_encoder.onnx + segmenter.onnx + model.json")
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.set_defaults(func=_export_onnx)
    s = esub.add_parser("check", help="parity of the ONNX graphs with PyTorch on held-out cases (JSON)")
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--export", required=True, type=Path)
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--split", choices=["train", "val", "test"], default="test")
    s.add_argument("--n", type=int, default=16, help="cases (default 16)")
    s.add_argument("--max-batch", type=int, default=4, help="check batch sizes 1..N give the same outputs")
    s.add_argument("--json", type=Path)
    s.set_defaults(func=_export_check)
    s = esub.add_parser("lint", help="TensorRT-compatibility check of the ONNX graphs (runs on a CPU)")
    s.add_argument("--onnx", required=True, type=Path, help="an export folder")
    s.add_argument("--json", type=Path)
    s.set_defaults(func=_export_lint)
    s = esub.add_parser("trt", help="build TensorRT engines (needs an NVIDIA GPU and TensorRT)")
    s.add_argument("--onnx", required=True, type=Path, help="an export folder")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16")
    s.add_argument("--max-batch", type=int, default=8, help="= the Triton max_batch_size (default 8)")
    s.add_argument("--timing-cache", type=Path)
    s.add_argument("--calibration-cases", type=int, default=64, help="synthetic cases for INT8 calibration")
    s.set_defaults(func=_export_trt)
    s = esub.add_parser("verify-gpu", help="one command for a GPU machine: build, compare with onnxruntime, DSC parity")
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--work", type=Path, default=Path("verify_gpu"))
    s.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "int8"], choices=["fp32", "fp16", "int8"])
    s.add_argument("--max-batch", type=int, default=8)
    s.add_argument("--data", type=Path, help="held-out data (default: 64 synthetic cases made on the fly)")
    s.add_argument("--n", type=int, default=64)
    s.set_defaults(func=_export_verify_gpu)

    # ---- repository and server
    repo = sub.add_parser("repo", help="the Triton model repository")
    rsub = repo.add_subparsers(dest="repo_command", required=True)
    s = rsub.add_parser("build", help="fill the model-repository templates with artifacts and configs")
    s.add_argument("--from", dest="src", required=True, type=Path, help="export folder of the dual-path model (ONNX, or engines for --flavor tensorrt)")
    s.add_argument("--baseline", type=Path, help="export folder of the U-Net (adds bonescan_unet)")
    s.add_argument("--flavor", choices=["embedded", "onnxruntime", "tensorrt"], default="embedded")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--max-batch-size", type=int, default=8)
    s.add_argument("--instances", type=int, default=1, help="instances of text_encoder / segmenter")
    s.add_argument("--python-instances", type=int, default=1, help="instances of the python steps")
    s.add_argument("--queue-delay-us", type=int, default=None,
                   help="dynamic batching delay of text_encoder / segmenter (default: 2000, 0 for the embedded CPU flavor)")
    s.add_argument("--python-queue-delay-us", type=int, default=0, help="dynamic batching delay of the python steps")
    s.add_argument("--threads", type=int, default=2, help="onnxruntime threads per instance (embedded)")
    s.add_argument("--run-batch", type=int, default=1,
                   help="embedded: scans per onnxruntime run within a dynamic batch (0: all; default 1, see README)")
    s.add_argument("--device", choices=["gpu", "cpu"], default="gpu", help="instance kind for onnxruntime flavor")
    s.set_defaults(func=_repo_build)
    s = sub.add_parser("serve", help="run tritonserver on a repository until Ctrl-C / SIGTERM")
    s.add_argument("--repo", required=True, type=Path)
    s.add_argument("--grpc-port", type=int, default=8001)
    s.add_argument("--http-port", type=int, default=8000)
    s.add_argument("--metrics-port", type=int, default=8002)
    s.add_argument("--log-file", type=Path, help="server log (default: inherit the terminal)")
    s.add_argument("--admin-key-file", type=Path, help="file with the key that opens the admin endpoints (default: closed)")
    s.add_argument("--bind", default="0.0.0.0", help="address to listen on (default all; 127.0.0.1 for local clients only)")
    s.set_defaults(func=_serve)

    # ---- client
    s = sub.add_parser("infer", help="segment scans with a running server (gRPC client)")
    s.add_argument("input", nargs="?", help="DICOM / NPY file, case folder, or a folder of cases")
    s.add_argument("--views", nargs=2, metavar=("ANTERIOR", "POSTERIOR"), help="two view files (16-bit PNG or DICOM)")
    s.add_argument("--report", type=Path, help="UTF-8 report file (default: the case folder's report.txt)")
    s.add_argument("--server", default="localhost:8001", help="gRPC address (default localhost:8001)")
    s.add_argument("--model", default="bonescan", help="bonescan (with report) or bonescan_unet (image only)")
    s.add_argument("--out", type=Path, default=Path("bonescan_out"))
    s.add_argument("--concurrency", type=int, default=4)
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    s.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable")
    s.add_argument("--root-cert", help="PEM root certificate: use TLS")
    s.add_argument("--client-cert", help="PEM client certificate (mutual TLS)")
    s.add_argument("--client-key", help="PEM client key (mutual TLS)")
    s.add_argument("--header", action="append", help="extra gRPC header NAME=VALUE (e.g. authorization=Bearer ...)")
    s.add_argument("--expect-model", help="refuse a server whose model hash differs (16 hex digits)")
    s.set_defaults(func=_infer)

    # ---- demo
    s = sub.add_parser("demo", help="the whole pipeline on the embedded synthetic data (make demo)")
    s.add_argument("--out", type=Path, default=Path("demo_out"))
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--unet-steps", type=int, default=400)
    s.add_argument("--dual-steps", type=int, default=400)
    s.set_defaults(func=_demo)

    # ---- bench
    bench = sub.add_parser("bench", help="benchmarks that print measured figures")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    s = bsub.add_parser("synth", help="time the synthesis of N cases")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--out", type=Path, help="keep the data set here (default: a temporary folder)")
    s.set_defaults(func=_bench_synth)
    s = bsub.add_parser("latency", help="Triton ensemble vs in-process PyTorch / onnxruntime, perf_analyzer, memory")
    s.add_argument("--checkpoint", required=True, type=Path, help="the dual-path checkpoint (demo or paper config)")
    s.add_argument("--data", required=True, type=Path, help="held-out scans come from its test split")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--config", choices=["demo", "paper"], help="which targets apply (default: from the checkpoint)")
    s.add_argument("--export", type=Path, help="its ONNX export (default: exported into --out)")
    s.add_argument("--repo", type=Path, help="a built repository (default: built into --out)")
    s.add_argument("--server", help="benchmark a running server instead of starting one")
    s.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    s.add_argument("--requests", type=int, default=0, help="requests per concurrency level (default: 48 demo, 8 paper)")
    s.add_argument("--cases", type=int, default=8, help="distinct held-out scans to cycle through")
    s.add_argument("--threads", type=int, default=2, help="threads per engine, the same for all")
    s.add_argument("--no-perf-analyzer", action="store_true")
    s.set_defaults(func=_bench_latency)
    s = bsub.add_parser("parity", help="DSC and max difference: PyTorch, onnxruntime, Triton (TensorRT on a GPU)")
    s.add_argument("--checkpoint", required=True, type=Path)
    s.add_argument("--export", required=True, type=Path)
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--out", type=Path, default=Path("bench_out"))
    s.add_argument("--server", help="a running server (default: start one on --repo or a repository built from --export)")
    s.add_argument("--repo", type=Path)
    s.add_argument("--model", help="ensemble name (default: from the checkpoint)")
    s.add_argument("--n", type=int, default=40)
    s.set_defaults(func=_bench_parity)
    s = bsub.add_parser("soak", help="N minutes at concurrency C: errors, wrong answers, server memory growth")
    _fault_run_args(s)
    s.add_argument("--minutes", type=float, default=10.0)
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--warmup", type=float, default=60.0, help="seconds before memory is compared")
    s.set_defaults(func=_bench_soak)
    s = bsub.add_parser("kill", help="SIGKILL the server mid-run and restart it: no request lost or answered twice")
    _fault_run_args(s)
    s.add_argument("--requests", type=int, default=40)
    s.add_argument("--concurrency", type=int, default=4)
    s.add_argument("--kill-after", type=int, default=10, help="answered requests before the SIGKILL")
    s.set_defaults(func=_bench_kill)
    s = bsub.add_parser("storm", help="bad requests between good ones, then concurrent mixes: no hang, no wrong answer")
    _fault_run_args(s)
    s.add_argument("--baseline", type=Path, help="ONNX export of the U-Net: adds U-Net requests to the mixes")
    s.add_argument("--rounds", type=int, default=10)
    s.add_argument("--concurrency", type=int, default=8)
    s.set_defaults(func=_bench_storm)
    s = bsub.add_parser("text-gain", help="U-Net vs dual-path over seeds, with true / shuffled / empty reports")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--out", type=Path, default=Path("runs/text_gain"))
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    s.add_argument("--config", choices=["demo", "tiny"], default="demo")
    s.add_argument("--fusion", choices=["xattn", "gate"])
    s.add_argument("--no-prior", action="store_true", help="ablation without the report veto map")
    s.add_argument("--tag", default="", help="suffix for the dual-path checkpoints of an ablation")
    s.set_defaults(func=_bench_text_gain)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(a.func(a) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from bonescan.errors import user_error_message

        msg = user_error_message(e)
        if msg is None or a.verbose:
            raise
        print(f"bonescan: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
