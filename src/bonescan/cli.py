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

    stats = generate_dataset(a.out, a.n, a.seed, a.workers, progress=not a.quiet)
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


def _demo(a: argparse.Namespace) -> int:
    from bonescan.demo import run_demo

    return run_demo(a.out, n=a.n, seed=a.seed, workers=a.workers)


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

    # ---- demo
    s = sub.add_parser("demo", help="the whole pipeline on the embedded synthetic data (make demo)")
    s.add_argument("--out", type=Path, default=Path("demo_out"))
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=_demo)

    # ---- bench
    bench = sub.add_parser("bench", help="benchmarks that print measured figures")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    s = bsub.add_parser("synth", help="time the synthesis of N cases")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--out", type=Path, help="keep the data set here (default: a temporary folder)")
    s.set_defaults(func=_bench_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
