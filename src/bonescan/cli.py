"""``bonescan``: a thin command line over the library (each handler imports what it needs)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bonescan import contract as C

SPLITS = ("train", "val", "test")
PRECISIONS = ("fp32", "fp16", "int8")


# ----------------------------------------------------------------------------- shared arguments


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help already says it in words (an
    unset option usually means something, e.g. "built from --export into --out") or the option is
    required (it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or "default" in text:
            return text
        if isinstance(action.default, (list, tuple)):  # as it would be typed: --seeds 0 1 2
            return f"{text} (default: {' '.join(map(str, action.default))})"
        return super()._get_help_string(action) or text


class Option:
    """One command-line option, defined once; every command that needs it subscribes with
    ``OPTION.add(parser)``, overriding only what differs for that command (whether it is
    required, its default, what it means there)."""

    def __init__(self, *flags: str, **spec: Any):
        self.flags = flags
        self.spec = spec

    def add(self, parser: argparse.ArgumentParser, **overrides: Any) -> None:
        parser.add_argument(*self.flags, **{**self.spec, **overrides})


DATA = Option("--data", type=Path, required=True, help="data folder (cases/ and manifest.json)")
CHECKPOINT = Option("--checkpoint", type=Path, required=True, help="checkpoint file (.pt) written by `bonescan train`")
SPLIT = Option("--split", choices=SPLITS, default="test", help="split of the data folder")
OUT = Option("--out", type=Path, required=True, help="output folder")
EXPORT = Option("--export", type=Path, required=True, help="ONNX export folder (`bonescan export onnx`)")
QUIET = Option("--quiet", action="store_true", help="no progress bars")
PIXEL_SPACING = Option("--pixel-spacing", type=float, nargs=2, metavar=("ROW", "COL"),
                       help="pixel spacing in mm, for every scan given, over what the files say (default: the DICOM's "
                            "PixelSpacing, else the case folder's meta.json pixel_spacing_mm, else unknown: areas in "
                            "pixels only)")


def _command(sub: argparse._SubParsersAction, name: str, func, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose help shows every option's default; ``func(args) -> exit code`` runs it."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter, **kwargs)
    p.set_defaults(func=func)
    return p


def _group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """A command with subcommands (``bonescan data ...``)."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    return p.add_subparsers(dest=f"{name}_command", required=True)


# ----------------------------------------------------------------------------- data


def _data_synth(a: argparse.Namespace) -> int:
    from bonescan.data.generate import generate_dataset
    from bonescan.data.styles import STYLE_NAMES
    from bonescan.data.synth import SynthConfig
    from bonescan.errors import BonescanError

    styles = tuple(a.house_styles or ())
    unknown = sorted(set(styles) - set(STYLE_NAMES))
    if unknown:  # before any work starts
        raise BonescanError(f"unknown house style {', '.join(unknown)}; known: {', '.join(STYLE_NAMES)}")
    cfg = SynthConfig(house_styles=styles, omit_lesion_rate=a.omit_lesion_rate, invent_site_rate=a.invent_site_rate)
    stats = generate_dataset(a.out, a.n, a.seed, a.workers, progress=not a.quiet, cfg=cfg)
    if a.dicom:  # beside the PNGs, which the data set keeps reading
        from bonescan.data.dicom import write_synthetic_studies

        stats["dicom_studies"] = write_synthetic_studies(a.out, a.seed)
    print(json.dumps(stats, ensure_ascii=False, indent=1))
    return 0


def _data_preview(a: argparse.Namespace) -> int:
    from bonescan.data.preview import preview

    out = preview(a.data, a.out, n=a.n, ids=a.ids, split=a.split, show_report=not a.no_report)
    print(f"wrote {out}")
    return 0


def _data_regions(a: argparse.Namespace) -> int:
    from bonescan.data.preview import region_preview

    print(f"wrote {region_preview(a.data, a.case, a.out)}")
    return 0


def _data_second_reader(a: argparse.Namespace) -> int:
    from bonescan.data.arrays import load_split
    from bonescan.data.second_reader import score_cases

    arr = load_split(a.data, a.split, progress=not a.quiet, regions=True)
    result = score_cases(arr.images, arr.masks, arr.require_regions(), arr.reports, arr.metas)
    print(json.dumps(result, ensure_ascii=False, indent=1))
    return 0


def _split_counts(n: int, val: float, test: float) -> dict[str, int]:
    """How many of n cases ``assign_splits`` puts in each split at these shares."""
    n_test = min(int(round(test * n)), n)
    n_val = min(int(round(val * n)), n - n_test)
    return {"train": n - n_test - n_val, "val": n_val, "test": n_test}


def _share_hint(n: int, split: str, need: int, val: float, test: float) -> str:
    """``; --val 0.17 gives 1``: the smallest share that gives ``split`` ``need`` cases and leaves
    every other split one at least (empty when none does)."""
    for k in range(1, 100):
        share = k / 100
        c = _split_counts(n, share if split == "val" else val, share if split == "test" else test)
        if c[split] >= need:
            return f"; --{split} {share:g} gives {c[split]}" if all(v >= 1 for v in c.values()) else ""
    return ""


def _data_manifest(a: argparse.Namespace) -> int:
    from bonescan.calibrate import MIN_SCANS
    from bonescan.data.dataset import MANIFEST, BoneScanDataset, CaseRef, assign_splits, write_manifest

    root = Path(a.data)
    cases = root / "cases" if (root / "cases").is_dir() else root
    ids = sorted(p.name for p in cases.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not ids:
        print(f"{root}: no case folders", file=sys.stderr)
        return 2
    if (root / MANIFEST).exists() and not a.force:
        print(f"{root / MANIFEST} exists; use --force to replace it", file=sys.stderr)
        return 2
    # every case is read first: one that cannot be used goes into no split (in a split it fails training or
    # evaluation later, or leaves a split emptier than it looks)
    ds = BoneScanDataset.of_folders(root, [cases / i for i in ids], require_mask=not a.no_mask)
    lesions = {smp.case_id: smp.mask is not None and bool(smp.mask.any())
               for smp in ds.samples(progress=not a.quiet, desc="reading cases", log_skipped=False)}
    readable = list(lesions)
    for e in ds.errors:
        print(f"WARNING {e.case_id}: left out: {e}", file=sys.stderr)
    if not readable:
        print(f"{root}: none of the {len(ids)} cases is readable; no manifest written", file=sys.stderr)
        return 2

    def rel(path: str) -> str:
        try:
            return str(Path(path).relative_to(cases))
        except ValueError:
            return path

    left_out = [{"id": e.case_id, "problem": f"{rel(e.path)}: {e.problem}"} for e in ds.errors]
    splits = assign_splits(readable, a.seed, a.val, a.test)
    extra: dict[str, Any] = {"format": "bonescan-dataset/1"}
    if left_out:
        extra["left_out"] = left_out
    path = write_manifest(root, [CaseRef(i, splits[i], cases / i) for i in readable], extra)
    counts = {s: sum(1 for v in splits.values() if v == s) for s in SPLITS}
    gone = f"; {len(left_out)} unreadable case{'s' if len(left_out) != 1 else ''} left out (listed above)" if left_out else ""
    print(f"wrote {path}: {counts} of {len(readable)} readable cases{gone}")
    n = len(readable)
    at = f"{n} readable case{'s' if n != 1 else ''} at --val {a.val:g} --test {a.test:g}"
    if counts["train"] == 0:
        print(f"WARNING split 'train' is empty ({at}): `bonescan train` has nothing to train on; lower --val / --test",
              file=sys.stderr)
    if counts["val"] < MIN_SCANS:
        what = "is empty" if counts["val"] == 0 else f"has {counts['val']} case"
        hint = _share_hint(n, "val", MIN_SCANS, a.val, a.test) or _share_hint(n, "val", 1, a.val, a.test)
        print(f"WARNING split 'val' {what} ({at}): `bonescan train` validates on it, and calibrating the dual-path model's "
              f"fail-safe needs {MIN_SCANS} cases or more{hint}", file=sys.stderr)
    elif not a.no_mask and (k := sum(lesions[i] for i in readable if splits[i] == "val")) < 2:
        print(f"WARNING split 'val' has {k} case{'s' if k != 1 else ''} with metastases: calibrating the dual-path model's "
              "fail-safe needs 2 at least (it is judged against the U-Net's FROC curve, cross-validated); another --seed "
              "or a larger --val changes that", file=sys.stderr)
    if counts["test"] == 0:
        print(f"WARNING split 'test' is empty ({at}): `bonescan eval` (its default --split test) has nothing to "
              f"evaluate{_share_hint(n, 'test', 1, a.val, a.test)}", file=sys.stderr)
    return 0


def _data_check(a: argparse.Namespace) -> int:
    from bonescan.data.dataset import BoneScanDataset

    ds = BoneScanDataset(a.data, split=a.split, require_mask=not a.no_mask)
    samples = ds.samples(progress=True, desc="checking", log_skipped=False)  # each problem is printed once, below
    warnings = [f"WARNING {s.case_id}: {note}" for s in samples for note in s.notes]
    ok = len(ds) - len(ds.errors)
    for w in warnings:
        print(w)
    for e in ds.errors:
        print(f"ERROR {e}")
    print(f"{ok} of {len(ds)} cases readable")
    return 0 if not ds.errors else 1


def _data_to_dicom(a: argparse.Namespace) -> int:
    from bonescan.data.io import read_scan, write_dicom_scan
    from bonescan.study import ACCESSION, STUDY_UID

    scan = read_scan(a.case, a.pixel_spacing)
    # the study identifiers the case names (meta.json) go into the DICOM, so the report check still has them
    acc, uid = scan.study.get(ACCESSION), scan.study.get(STUDY_UID)
    carried = f"; {', '.join(k for k, v in ((ACCESSION, acc), (STUDY_UID, uid)) if v)} from the case" if acc or uid else ""
    if scan.spacing_known:
        write_dicom_scan(a.out, scan.anterior, scan.posterior, scan.pixel_spacing, accession_number=acc, study_instance_uid=uid)
        row, col = scan.pixel_spacing
        print(f"wrote {a.out} (PixelSpacing {row:g} x {col:g} mm, from {scan.spacing_source}{carried})")
    else:
        write_dicom_scan(a.out, scan.anterior, scan.posterior, None, accession_number=acc, study_instance_uid=uid)
        print(f"wrote {a.out} with PixelSpacing empty: {a.case} carries no pixel spacing (give --pixel-spacing ROW COL){carried}")
    return 0


def data_commands(sub: argparse._SubParsersAction) -> None:
    """``bonescan data synth | preview | regions | second-reader | manifest | check | to-dicom``."""
    dsub = _group(sub, "data", "synthetic data set, previews, hospital data checks")
    s = _command(dsub, "synth", _data_synth, "write a synthetic SPECT + report data set")
    OUT.add(s, help="data folder to write")
    s.add_argument("--n", type=int, default=1000, help="number of cases")
    s.add_argument("--seed", type=int, default=0, help="seed of the generator (the same seed gives the same bytes)")
    s.add_argument("--workers", type=int, default=2, help="processes")
    s.add_argument("--house-styles", nargs="+", metavar="STYLE",
                   help="write reports only in these house styles (default: all; see bonescan.data.styles)")
    s.add_argument("--omit-lesion-rate", type=float, default=0.0,
                   help="share of metastases the report leaves out (meta.json report_truth; scores the second reader)")
    s.add_argument("--invent-site-rate", type=float, default=0.0,
                   help="share of reports naming one metastasis the scan does not show (meta.json report_truth)")
    s.add_argument("--dicom", action="store_true",
                   help="also write each case as a DICOM study in cases/<id>/dicom/ (NM whole-body scan + Basic Text SR "
                        "report; every 4th case as two single-frame instances, the others as one two-frame instance)")
    QUIET.add(s)
    s = _command(dsub, "preview", _data_preview, "draw a grid of cases (views, mask, report) into a PNG")
    DATA.add(s)
    OUT.add(s, help="PNG file to write")
    s.add_argument("--n", type=int, default=6, help="number of cases")
    s.add_argument("--ids", nargs="*", help="case ids to draw (default: the first --n)")
    SPLIT.add(s, default=None, help="draw from this split only (default: all cases)")
    s.add_argument("--no-report", action="store_true", help="leave the report text out of the picture")
    s = _command(dsub, "regions", _data_regions, "draw one case's skeleton region label map (both views, named) into a PNG")
    DATA.add(s)
    s.add_argument("--case", required=True, help="case id (e.g. case_00003)")
    OUT.add(s, help="PNG file to write")
    s = _command(dsub, "second-reader", _data_second_reader,
                 "score the second reader (lesions the report left out, sites it named wrongly) from the ground truth")
    DATA.add(s)
    SPLIT.add(s, default=None, help="score this split only (default: all cases)")
    QUIET.add(s)
    s = _command(dsub, "manifest", _data_manifest, "write manifest.json with a fixed split for a folder of cases")
    DATA.add(s)
    s.add_argument("--seed", type=int, default=0, help="seed of the split")
    s.add_argument("--val", type=float, default=0.1, help="share of the cases in the val split")
    s.add_argument("--test", type=float, default=0.2, help="share of the cases in the test split")
    s.add_argument("--force", action="store_true", help="replace an existing manifest.json")
    s.add_argument("--no-mask", action="store_true", help="masks are not required (cases for inference only)")
    QUIET.add(s)
    s = _command(dsub, "check", _data_check, "read every case and list the ones that cannot be used")
    DATA.add(s)
    SPLIT.add(s, default=None, help="check this split only (default: all cases)")
    s.add_argument("--no-mask", action="store_true", help="masks are not required")
    s = _command(dsub, "to-dicom", _data_to_dicom, "write a case's views as one two-frame NM DICOM file")
    s.add_argument("case", type=Path, help="case folder, DICOM or NPY")
    OUT.add(s, help="DICOM file to write")
    PIXEL_SPACING.add(s, help="pixel spacing in mm to write (default: the case's own: its DICOM's PixelSpacing, else "
                              "its folder's meta.json pixel_spacing_mm, else left empty)")


# ----------------------------------------------------------------------------- train / eval

def int_or_preset(text: str) -> int | None:
    """An integer where 0 means "the preset's value" (``--batch-size 0``)."""
    return int(text) or None


# `bonescan train` options that override one field of the preset's configs (unset: the preset's
# value): option -> (which config, field, its add_argument keywords)
TRAIN_OVERRIDES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "--steps": ("train", "steps", {"type": int, "help": "training steps (0 = initialise only; default: the config's)"}),
    "--batch-size": ("train", "batch_size", {"type": int_or_preset,
                                             "help": "scans per step (default, or 0: the config's)"}),
    "--max-minutes": ("train", "max_minutes", {"type": float,
                                               "help": "stop after this long, the schedule compressed (default: the config's, no limit)"}),
    "--eval-every": ("train", "eval_every", {"type": int, "help": "print validation DSC every n steps (default: the config's, only at the end)"}),
    "--lr": ("train", "lr", {"type": float, "help": "learning rate of the image path (default: the config's)"}),
    "--crop-rows": ("train", "crop_rows", {"type": int, "help": "training crop height, 0 = whole images (default: the config's)"}),
    "--fusion-stages": ("model", "fusion_stages", {"type": int, "help": "number of fused decoder stages (default: the config's)"}),
    "--no-prior": ("model", "prior", {"action": "store_false", "default": None,
                                     "help": "ablation: no report maps (no veto on the logits, no mentions for the fail-safe) (default: with them)"}),
    "--pretrain-text": ("train", "pretrain_text_steps", {"type": int, "metavar": "STEPS",
                                                         "help": "masked-language-model steps of the text encoder on generated reports of every "
                                                                 "house style before segmentation training (default: the config's)"}),
    "--pretrain-maps": ("train", "pretrain_maps_steps", {"type": int, "metavar": "STEPS",
                                                         "help": "steps that train the text encoder and the report's maps from the reports "
                                                                 "alone (no image) before segmentation training (default: the config's)"}),
    "--text-augment": ("train", "text_augment", {"type": float, "help": "strength of the report augmentation, 0 = off (default: the config's)"}),
    "--no-rerender": ("train", "rerender_reports", {"action": "store_false", "default": None,
                                                    "help": "train synthetic cases with their written reports only, not re-written in "
                                                            "random house styles (default: re-written)"}),
}


def train_configs(a: argparse.Namespace):
    """The preset's (ModelConfig, TrainConfig) with the options of TRAIN_OVERRIDES that were given."""
    from bonescan.model.config import preset

    mcfg, tcfg = preset(a.config, a.model, a.fusion)
    changes: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    if getattr(a, "text_encoder", None) is not None:
        changes["train"]["pretrain_text_steps"] = 0  # a pretrained MacBERT is not pretrained again unless asked
    for config, field, _ in TRAIN_OVERRIDES.values():
        if getattr(a, field) is not None:
            changes[config][field] = getattr(a, field)
    return replace(mcfg, **changes["model"]), replace(tcfg, **changes["train"])


def _train(a: argparse.Namespace) -> int:
    from bonescan.train import train

    mcfg, tcfg = train_configs(a)
    train(a.data, a.out, mcfg, tcfg, seed=a.seed, text_encoder_dir=a.text_encoder, progress=not a.quiet,
          command="bonescan " + " ".join(sys.argv[1:]), config_name=a.config, init_from=a.init_from,
          fallback=a.fallback, styles=a.styles)
    return 0


def _calibrate(a: argparse.Namespace) -> int:
    from bonescan.calibrate import recalibrate

    recalibrate(a.checkpoint, a.data, a.split, a.out, progress=not a.quiet)
    print(f"wrote the fail-safe's calibration into {a.out or a.checkpoint}")
    return 0


def _text_encoder_init(a: argparse.Namespace) -> int:
    from bonescan.model.pretrained import SHAPES, write_pretrained_like

    out = write_pretrained_like(a.out, a.shape, a.seed)
    print(f"wrote {out}: a BERT of {a.shape}'s shape {SHAPES[a.shape]} with random weights, for --text-encoder")
    return 0


def _eval(a: argparse.Namespace) -> int:
    from bonescan.evaluate import evaluate

    split = a.split or (None if a.reports_dir else "test")  # a reports folder picks its cases from every split
    res = evaluate(a.checkpoint, a.data, split, a.reports, a.json, seed=a.seed, progress=not a.quiet, reports_dir=a.reports_dir,
                   style=a.style, answer=a.answer, n=a.n)
    skipped = res["skipped_cases"]
    if skipped and not a.allow_skipped:
        # metrics on the readable cases only are not the split's: a non-zero exit, unless the caller accepts that
        scans = res["summary"]["scans"]
        print(f"bonescan: error: {len(skipped)} of {len(skipped) + scans} cases were skipped as unreadable; the metrics "
              f"cover the other {scans}" + (f" (written to {a.json})" if a.json else "") + ":\n  "
              + "\n  ".join(skipped) + f"\nfix them (`bonescan data check --data {a.data}` lists every problem) or pass "
              "--allow-skipped", file=sys.stderr)
        return 1
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def model_commands(sub: argparse._SubParsersAction) -> None:
    """``bonescan train`` and ``bonescan eval``."""
    s = _command(sub, "train", _train, "train the dual-path model or the U-Net baseline")
    DATA.add(s)
    OUT.add(s, help="checkpoint file to write (.pt)")
    s.add_argument("--model", choices=["dualpath", "unet"], default="dualpath",
                   help="dualpath (image + report) or unet (image only)")
    s.add_argument("--config", choices=["demo", "paper", "tiny"], default="demo", help="preset of model and training")
    s.add_argument("--fusion", choices=["xattn", "gate"], help="dualpath fusion (default: xattn)")
    s.add_argument("--text-encoder", type=Path, help="local folder with a pretrained MacBERT, read offline (default: a small BERT trained from scratch)")
    s.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches and augmentation")
    for option, (_, field, spec) in TRAIN_OVERRIDES.items():
        s.add_argument(option, dest=field, **spec)
    s.add_argument("--init-from", type=Path, help="initialise the image path from this checkpoint, e.g. the U-Net (default: fresh)")
    s.add_argument("--fallback", type=Path,
                   help="dualpath: the trained U-Net checkpoint bundled as the fail-safe's image-only answer; the fail-safe is "
                        "calibrated on the validation split with it (default: none, an untrained U-Net: for cost measurements only)")
    s.add_argument("--styles", nargs="+", metavar="STYLE",
                   help="house styles the synthetic cases' reports are re-written in (default: all; see bonescan.data.styles)")
    QUIET.add(s)
    s = _command(sub, "calibrate", _calibrate,
                 "calibrate a dual-path checkpoint's fail-safe again on a split, e.g. a hospital's own validation cases and reports")
    CHECKPOINT.add(s)
    DATA.add(s)
    SPLIT.add(s, default="val", help="split whose true reports and another study's reports set the thresholds")
    s.add_argument("--out", type=Path, help="write a copy with the new calibration here (default: update the checkpoint in place)")
    QUIET.add(s)
    te = _group(sub, "text-encoder", "a local stand-in for a pretrained MacBERT folder (no download)")
    s = _command(te, "init", _text_encoder_init,
                 "write a BERT folder with MacBERT's shape and files and random weights (tests and cost measurements)")
    OUT.add(s, help="folder to write (config.json, model.safetensors, vocab.txt, tokenizer.json)")
    s.add_argument("--shape", choices=["macbert-base", "mini"], default="macbert-base",
                   help="macbert-base: 12 x 768, vocabulary 21128; mini: the same files at a test's size")
    s.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    s = _command(sub, "eval", _eval, "evaluate a checkpoint on a split (true, shuffled or empty reports)")
    CHECKPOINT.add(s)
    DATA.add(s)
    SPLIT.add(s, default=None, help="split of the data folder (default: test; with --reports-dir every case)")
    s.add_argument("--reports", choices=["true", "shuffled", "empty"], default="true",
                   help="which report each scan gets (shuffled: another scan's, so it needs two scans or more)")
    s.add_argument("--n", type=positive_int, help="evaluate the first N cases of the split (default: all)")
    s.add_argument("--reports-dir", type=Path,
                   help="evaluate only the cases that have a <case_id>.txt in this folder, with that text as their report "
                        "(reports written elsewhere, e.g. by a hospital; default: the cases' own report.txt)")
    s.add_argument("--style", help="re-write every report from its ground truth (meta.json) in this house style (default: as written)")
    s.add_argument("--answer", choices=["failsafe", "dualpath", "unet"], default="failsafe",
                   help="which answer of a dual-path model the summary line gives (all three go into --json)")
    s.add_argument("--json", type=Path, help="write per-scan and summary metrics here (default: not written)")
    s.add_argument("--seed", type=int, default=0, help="seed of the report shuffle")
    s.add_argument("--allow-skipped", action="store_true",
                   help="exit 0 although unreadable cases were skipped (the metrics cover the readable cases only; without "
                        "it the exit status is 1 when any was)")
    QUIET.add(s)


# ----------------------------------------------------------------------------- export


def _export_quantize(a: argparse.Namespace) -> int:
    from bonescan.export.quantize import format_gate, quantize_export_isa

    keep = {"names": a.keep_fp32 or [], "types": a.keep_fp32_types or []}
    info = quantize_export_isa(a.export, a.data, a.out, a.isa, max_delta_dsc=a.max_delta_dsc, calibration_cases=a.calibration_cases,
                               test_cases=a.test_cases, runtime=a.runtime, keep_fp32=keep, retry=not a.no_retry, threads=a.threads,
                               weight_bits=a.weight_bits, text_encoder=a.text_encoder)
    print(format_gate(info))
    print(f"wrote {a.out}" + ("" if info["passed"] else " (for inspection: it failed the gate, do not serve it)"))
    return 0 if info["passed"] else 1


def _export_onnx(a: argparse.Namespace) -> int:
    from bonescan.export.onnx_export import export_onnx

    desc = export_onnx(a.checkpoint, a.out, anatomy=not a.no_anatomy)
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


def export_commands(sub: argparse._SubParsersAction) -> None:
    """``bonescan export onnx | check | lint | trt | quantize | verify-gpu``."""
    esub = _group(sub, "export", "ONNX export, parity checks, TensorRT engines")
    s = _command(esub, "onnx", _export_onnx, "checkpoint -> text_encoder.onnx + segmenter.onnx + model.json")
    CHECKPOINT.add(s)
    OUT.add(s, help="export folder to write")
    s.add_argument("--no-anatomy", action="store_true",
                   help="leave the anatomy output out of the segmenter graph: region_labels all background, lesions "
                        "not named, no BSI; cheaper (a model whose decoder reads the named bones keeps the network "
                        "and drops only its labels) (default: False, the network kept when the checkpoint has one)")
    s = _command(esub, "check", _export_check, "parity of the ONNX graphs with PyTorch on held-out cases (JSON)")
    CHECKPOINT.add(s)
    EXPORT.add(s)
    DATA.add(s)
    SPLIT.add(s)
    s.add_argument("--n", type=int, default=16, help="cases")
    s.add_argument("--max-batch", type=int, default=4, help="check batch sizes 1..N give the same outputs")
    s.add_argument("--json", type=Path, help="write the results here (default: not written)")
    s = _command(esub, "lint", _export_lint, "TensorRT-compatibility check of the ONNX graphs (runs on a CPU)")
    s.add_argument("--onnx", required=True, type=Path, help="an export folder")
    s.add_argument("--json", type=Path, help="write the findings here (default: not written)")
    s = _command(esub, "trt", _export_trt, "build TensorRT engines (needs an NVIDIA GPU and TensorRT)")
    s.add_argument("--onnx", required=True, type=Path, help="an export folder")
    OUT.add(s, help="engine folder to write")
    s.add_argument("--precision", choices=PRECISIONS, default="fp16", help="engine precision")
    s.add_argument("--max-batch", type=int, default=8, help="= the Triton max_batch_size")
    s.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file, read and updated (default: none)")
    s.add_argument("--calibration-cases", type=int, default=64, help="synthetic cases for INT8 calibration")
    s = _command(esub, "quantize", _export_quantize,
                 "static INT8 of the segmenter graph, calibrated on the train split, gated on the test split (exit 1: gate failed)")
    EXPORT.add(s, help="the fp32 ONNX export folder (dual-path or U-Net)")
    DATA.add(s, help="data folder: calibration from its train split, the gate on its test split")
    OUT.add(s, help="INT8 export folder to write (same layout: `repo build --from` takes it)")
    s.add_argument("--max-delta-dsc", type=float, default=0.005, help="the gate: mean DSC fp32 - INT8 on the held-out scans")
    s.add_argument("--calibration-cases", type=int, default=64, help="train-split scans to calibrate on")
    s.add_argument("--test-cases", type=int, default=None, help="held-out scans the gate scores (default: the whole test split)")
    s.add_argument("--runtime", choices=["openvino", "onnxruntime"], default="openvino", help="runtime that scores fp32 and INT8")
    s.add_argument("--keep-fp32", nargs="*", metavar="NODE", help="ONNX node names left fp32 from the start (default: none)")
    s.add_argument("--keep-fp32-types", nargs="*", metavar="OP", help="ONNX op types left fp32 from the start, e.g. MatMul (default: none)")
    s.add_argument("--no-retry", action="store_true", help="no second try keeping the attention and the output heads fp32")
    s.add_argument("--threads", type=int, default=2, help="threads of the runtime scoring the gate")
    s.add_argument("--isa", choices=["avx2", "avx512_core"],
                   help="score the gate as on a CPU with only this ISA (ONEDNN_MAX_CPU_ISA; OpenVINO runtime): INT8 answers "
                        "move without VNNI, so gate for the CPU you serve on (default: this CPU's full ISA)")
    s.add_argument("--weight-bits", type=int, choices=[7, 8],
                   help="weight precision: 7 keeps AVX2's u8 x s8 pair products from saturating on CPUs without VNNI "
                        "(default: 7 when the gate's ISA has no VNNI, else 8)")
    s.add_argument("--text-encoder", action="store_true",
                   help="quantize the text encoder's MatMuls too, gated with the segmenter: pays for a MacBERT-sized encoder "
                        "(paper configuration), not the demo's; unset, the text encoder stays fp32")
    s = _command(esub, "verify-gpu", _export_verify_gpu,
                 "one command for a GPU machine: build, compare with onnxruntime, DSC parity")
    CHECKPOINT.add(s)
    s.add_argument("--work", type=Path, default=Path("verify_gpu"), help="folder for exports, engines and results")
    s.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS, help="engine precisions to build and check")
    s.add_argument("--max-batch", type=int, default=8, help="= the Triton max_batch_size")
    DATA.add(s, required=False, help="held-out data (default: 64 synthetic cases made on the fly)")
    s.add_argument("--n", type=int, default=64, help="held-out cases")


# ----------------------------------------------------------------------------- repository and server


def _repo_build(a: argparse.Namespace) -> int:
    from bonescan.serving.repository import RepoOptions, build_repository

    opts = RepoOptions(flavor=a.flavor, max_batch_size=a.max_batch_size, instances=a.instances,
                       python_instances=a.python_instances, queue_delay_us=a.queue_delay_us,
                       python_queue_delay_us=a.python_queue_delay_us,
                       intra_op_threads=a.threads, run_batch=a.run_batch, device=a.device, warmup=not a.no_warmup,
                       performance_hint=a.performance_hint, ov_cache_dir=a.ov_cache_dir)
    m = build_repository(a.src, a.out, opts, baseline=a.baseline)
    print(f"wrote {a.out} ({m['flavor']} flavor): {', '.join(m['models'])}")
    return 0


def _serve(a: argparse.Namespace) -> int:
    from bonescan.serving.server import serve, tls_args

    if a.replicas > 1:  # N tritonservers on free loopback ports behind nginx on --bind:--grpc-port
        from bonescan.serving.cluster import BalancerTLS, serve_cluster

        tls_args(a.tls_cert, a.tls_key, a.tls_root)  # the same checks of the TLS files
        tls = BalancerTLS(a.tls_cert, a.tls_key, a.tls_root) if a.tls_cert else None
        return serve_cluster(a.repo, a.replicas, a.grpc_port, a.bind, a.admin_key_file, tls, a.log_dir, a.log_verbose,
                             a.triton_args)
    return serve(a.repo, a.grpc_port, a.http_port, a.metrics_port, a.log_file, a.admin_key_file, a.bind,
                 a.log_verbose, tls_args(a.tls_cert, a.tls_key, a.tls_root), a.triton_args)


def serving_commands(sub: argparse._SubParsersAction) -> None:
    """``bonescan repo build`` and ``bonescan serve``."""
    rsub = _group(sub, "repo", "the Triton model repository")
    s = _command(rsub, "build", _repo_build, "fill the model-repository templates with artifacts and configs")
    s.add_argument("--from", dest="src", required=True, type=Path,
                   help="export folder of the dual-path model (ONNX, or engines for --flavor tensorrt)")
    s.add_argument("--baseline", type=Path, help="export folder of the U-Net, adds bonescan_unet (default: none)")
    s.add_argument("--flavor", choices=["embedded", "onnxruntime", "tensorrt", "openvino", "openvino-ngc"], default="embedded",
                   help="how Triton runs the graphs (openvino: OpenVINO in the python backend, served here; openvino-ngc: "
                        "Triton's OpenVINO backend in the NGC container)")
    OUT.add(s, help="repository folder to write")
    s.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size of every model")
    s.add_argument("--instances", type=int, default=1, help="instances of text_encoder / segmenter")
    s.add_argument("--python-instances", type=int, default=1, help="instances of the python steps")
    s.add_argument("--queue-delay-us", type=int, default=None,
                   help="dynamic batching delay of text_encoder / segmenter (default: 2000, 0 for the embedded CPU flavor)")
    s.add_argument("--python-queue-delay-us", type=int, default=0, help="dynamic batching delay of the python steps")
    s.add_argument("--threads", type=int, default=2, help="onnxruntime / OpenVINO threads per instance (embedded, openvino)")
    s.add_argument("--performance-hint", choices=["LATENCY", "THROUGHPUT"], default="LATENCY", help="OpenVINO's hint (openvino flavors)")
    s.add_argument("--ov-cache-dir", default="ov_cache",
                   help="openvino: compiled-model cache, relative to each model's folder or absolute (a read-only repository needs one)")
    s.add_argument("--run-batch", type=int, default=1,
                   help="embedded: scans per onnxruntime run within a dynamic batch (0: all; see README)")
    s.add_argument("--device", choices=["gpu", "cpu"], default="gpu", help="instance kind for onnxruntime flavor")
    s.add_argument("--no-warmup", action="store_true",
                   help="build without model_warmup (with it, every model runs a synthetic scan and report before it is ready)")
    s = _command(sub, "serve", _serve, "run tritonserver on a repository until Ctrl-C / SIGTERM",
                 usage="bonescan serve --repo REPO [options] [-- TRITONSERVER_FLAG=VALUE ...]")
    s.add_argument("--repo", required=True, type=Path, help="a built repository (`bonescan repo build`)")
    s.add_argument("--replicas", type=positive_int, default=1,
                   help="tritonserver processes; above 1 they listen on free loopback ports behind an nginx gRPC load "
                        "balancer on --bind:--grpc-port, which terminates TLS (--http-port / --metrics-port are then the "
                        "replicas' own, printed; --log-file is replaced by --log-dir)")
    s.add_argument("--log-dir", type=Path, help="with --replicas: folder for the replicas' and nginx's logs and config "
                                                "(default: a new temporary folder, printed)")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (with --replicas: the load balancer's)")
    s.add_argument("--http-port", type=int, default=8000, help="HTTP port")
    s.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    s.add_argument("--log-file", type=Path, help="server log (default: the terminal)")
    s.add_argument("--log-verbose", type=int, default=0, metavar="N",
                   help="tritonserver's verbose logging level (1: request bookkeeping; never report text or pixel values)")
    s.add_argument("--admin-key-file", type=Path,
                   help="file with the key (at least 16 printable ASCII characters, no spaces) that opens the "
                        "model-repository, shared-memory, trace and logging endpoints; it is never put on a command line "
                        "(default: a random key nobody knows, i.e. those endpoints closed)")
    s.add_argument("--bind", default="0.0.0.0", help="address to listen on (0.0.0.0: all; 127.0.0.1 for local clients only)")
    s.add_argument("--tls-cert", type=Path, help="PEM server certificate: gRPC over TLS, with --tls-key (default: plain gRPC; "
                                                 "Triton's HTTP port has no TLS: keep it local or behind a proxy)")
    s.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert (default: none)")
    s.add_argument("--tls-root", type=Path, help="PEM CA certificate of the clients: mutual TLS, every client must present a "
                                                 "certificate it signed (default: none, any client may connect)")
    s.add_argument("triton_args", nargs="*", metavar="-- TRITONSERVER_FLAG",
                   help="further tritonserver flags after `--`, as --flag=value (e.g. -- --grpc-keepalive-time=10000); "
                        "flags that would undo the restrictions (model control, restricted protocols / APIs, repository, "
                        "ports, TLS and log flags of this command) are refused (default: none)")


# ----------------------------------------------------------------------------- client


def _infer_items(a: argparse.Namespace) -> tuple[list[tuple[Any, Path | None]], int]:
    """`bonescan infer`'s input -> ((scan, report) items, number of case folders skipped: each is
    listed on stderr with the reason)."""
    from bonescan.client.inputs import find_cases
    from bonescan.errors import BonescanError

    if a.views:
        return [((a.views[0], a.views[1]), a.report)], 0
    if not a.input:
        raise BonescanError("give a scan, a folder of cases, or --views ANTERIOR POSTERIOR")
    src = Path(a.input)
    if not src.exists():
        raise BonescanError(f"{src}: file or folder does not exist")
    scans, skipped = find_cases(src) if src.is_dir() else ([src], [])
    for folder, why in skipped:
        print(f"skipped {folder.name}: {why}", file=sys.stderr)
    if not scans:
        raise BonescanError(f"{src}: no scans found")
    if a.report is not None and len(scans) > 1:
        raise BonescanError(f"--report gives one report for one scan, but {src} holds {len(scans)} scans: every patient "
                            "would get the same report. Put each case's report in its folder as report.txt (read "
                            "automatically), or segment the scans one at a time")
    return [(p, a.report) for p in scans], len(skipped)


def _dicom_source(scan: Any) -> Any:
    """The DICOM file(s) an infer input was read from (a file, a view pair, a case folder's), or None:
    a SEG is drawn over the NM scan itself, so PNG / NPY inputs have none."""
    from bonescan.data.dicom import is_study_folder, read_dicom_study
    from bonescan.data.io import find_scan_files

    def is_dicom(p: Any) -> bool:
        return Path(p).suffix.lower() in (".dcm", ".dicom")

    if isinstance(scan, tuple):
        return list(scan) if all(is_dicom(v) for v in scan) else None
    p = Path(scan)
    if p.is_file():
        return p if is_dicom(p) else None
    if p.is_dir() and is_study_folder(p):  # a PACS export: the study's NM instance(s)
        return read_dicom_study([p]).view_sources()
    found = find_scan_files(p) if p.is_dir() else {}
    if "dicom" in found:
        return found["dicom"]
    views = [found.get("anterior"), found.get("posterior")]
    return views if all(v is not None and is_dicom(v) for v in views) else None


def _infer_dicom_out(res: Any, scan: Any, out: Path, name: str, overwrite: bool) -> str:
    """`infer --dicom-out`: the SEG and SR of one result (bonescan.client.dicom), or why it has none."""
    from bonescan.client.dicom import write_dicom

    src = _dicom_source(scan)
    if src is None:
        return (f"WARNING {name}: no DICOM SEG / SR: --dicom-out needs a DICOM source (an NM scan), this input is "
                "PNG / NPY")
    paths = write_dicom(res, src, out, overwrite=overwrite, stem=name)
    return f"{name}: DICOM SEG {paths['seg'].name} and SR {paths['sr'].name} in {out}"


def _infer(a: argparse.Namespace) -> int:
    """Client command line: one scan or a folder of cases -> masks, overlays, lesion lists."""
    from tqdm import tqdm

    from bonescan.client import BoneScanClient
    from bonescan.errors import BonescanError, cli_wording

    headers = dict(h.split("=", 1) for h in (a.header or []))
    opts = {"model": a.model, "timeout_s": a.timeout, "retries": a.retries, "headers": headers,
            "ssl": bool(a.root_cert), "root_certificates": a.root_cert, "private_key": a.client_key,
            "certificate_chain": a.client_cert, "expected_model_sha256": a.expect_model}
    items, skipped = _infer_items(a)
    if a.stem and len(items) > 1:
        raise BonescanError(f"--stem names the results of one scan; {a.input} holds {len(items)} scans (each is named "
                            "after its file, case folder, or DICOM accession number)")
    read = {"report_encoding": a.report_encoding, "allow_unusual_spacing": bool(a.allow_unusual_spacing)}
    out = Path(a.out)
    failures = 0
    used: dict[str, str] = {}
    with BoneScanClient(a.server, **opts) as client:
        bar = tqdm(total=len(items), desc="segmenting", unit="scan", disable=len(items) < 2)
        results = client.segment_many(items, concurrency=a.concurrency, pixel_spacing=a.pixel_spacing, **read)
        for (scan, _), res in zip(items, results):
            if isinstance(res, BonescanError):
                failures += 1
                bar.write(cli_wording(f"FAILED {res}"))
                bar.update()
                continue
            name = a.stem or res.stem or "scan"
            try:
                if name in used:  # two inputs of this run with one name: neither result may replace the other
                    raise BonescanError(f"{res.source}: its results would be named {name!r} like those of {used[name]}; "
                                        "segment it on its own with stem=")
                res.save(out, name, overwrite=bool(a.overwrite))
                if a.dicom_out:
                    bar.write(cli_wording(_infer_dicom_out(res, scan, a.dicom_out, name, bool(a.overwrite))))
            except BonescanError as e:
                failures += 1
                bar.write(cli_wording(f"FAILED {e}"))
                bar.update()
                continue
            used[name] = res.source
            for note in res.notes:
                bar.write(cli_wording(f"WARNING {name}: {note}"))
            bar.write(cli_wording(res.summary().replace(Path(res.source).name or res.source, name, 1)))
            bar.update()
        bar.close()
    done = len(items) - failures
    print(f"{done} of {len(items)} scans segmented" + (f" ({skipped} folder(s) without a scan skipped)" if skipped else "")
          + (f"; results in {out}" if done else "; nothing written"))
    return 0 if failures == 0 and not skipped else 1


def infer_command(sub: argparse._SubParsersAction) -> None:
    """``bonescan infer``: the gRPC client."""
    s = _command(sub, "infer", _infer, "segment scans with a running server (gRPC client)")
    s.add_argument("input", nargs="?", help="DICOM / NPY file, case folder, a folder of cases, or a folder of the DICOM "
                   "instances of one study (the NM scan and its report SR, as a PACS export gives them; any file "
                   "names, subfolders allowed) (default: none, give --views)")
    s.add_argument("--views", nargs=2, metavar=("ANTERIOR", "POSTERIOR"), help="two view files, 16-bit PNG or DICOM (default: none)")
    s.add_argument("--report", type=Path,
                   help="report file of the one scan given (UTF-8, else GB18030 / Big5 / UTF-16 detected); refused with a "
                        "folder of several scans, whose reports are each case folder's report.txt (default: the case "
                        "folder's report.txt, else no report)")
    s.add_argument("--report-encoding", metavar="ENCODING",
                   help="the report files' encoding, e.g. gb18030, big5, utf-16 (default: UTF-8, else detected among "
                        "GB18030, Big5 and UTF-16; the one used is in _lesions.json)")
    PIXEL_SPACING.add(s)
    s.add_argument("--allow-unusual-spacing", action="store_true", default=None,
                   help="send a pixel spacing outside what whole-body gamma cameras produce (1-4 mm, square within 10 %%) "
                        "anyway (default: refused)")
    s.add_argument("--stem", help="name of the one scan's result files (default: from the input: file stem, view pair's "
                                  "common name, case folder, DICOM accession number)")
    s.add_argument("--overwrite", action="store_true", default=None,
                   help="replace existing results of the same name (default: refused)")
    s.add_argument("--server", default="localhost:8001", help="gRPC address")
    s.add_argument("--model", choices=[C.ENSEMBLE_MODEL, C.ENSEMBLE_UNET_MODEL], default=C.ENSEMBLE_MODEL,
                   help=f"{C.ENSEMBLE_MODEL} (with report) or {C.ENSEMBLE_UNET_MODEL} (image only)")
    OUT.add(s, required=False, default=Path("bonescan_out"), help="folder for masks, overlays and lesion lists")
    s.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    s.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable")
    s.add_argument("--root-cert", help="PEM root certificate: use TLS (default: plain gRPC)")
    s.add_argument("--client-cert", help="PEM client certificate, mutual TLS (default: none)")
    s.add_argument("--client-key", help="PEM client key, mutual TLS (default: none)")
    s.add_argument("--header", action="append", help="extra gRPC header NAME=VALUE, repeatable, e.g. authorization=Bearer ... (default: none)")
    s.add_argument("--expect-model", help="refuse a server whose model hash differs, 16 hex digits (default: any)")
    s.add_argument("--dicom-out", type=Path, metavar="DIR",
                   help="also write each DICOM input's results as a DICOM Segmentation (<stem>_seg.dcm) and a TID 1500 "
                        "measurement SR (<stem>_sr.dcm) into DIR, beside the PNG / JSON results (default: none)")


# ----------------------------------------------------------------------------- DICOM node


def _dicom_node(a: argparse.Namespace) -> int:
    from bonescan.client.dicom.node import Destination, DicomNode, NodeConfig

    cfg = NodeConfig(spool=a.spool, server=a.server, ae_title=a.ae_title, bind=a.bind, port=a.port,
                     send_to=Destination.parse(a.send_to) if a.send_to else None, stow_url=a.stow_url,
                     wait_report_s=a.wait_report, wait_scan_s=a.wait_scan, retry_interval_s=a.retry_interval,
                     workers=a.workers, pause_before_send_s=a.pause_before_send)
    DicomNode(cfg).serve_forever()
    return 0


def dicom_node_command(sub: argparse._SubParsersAction) -> None:
    """``bonescan dicom-node``: a Storage SCP for a PACS (bonescan.client.dicom.node)."""
    s = _command(sub, "dicom-node", _dicom_node,
                 "a DICOM node: receives NM bone scans and report SRs (C-STORE), segments each study through Triton, "
                 "sends a SEG and an SR back (C-STORE and / or STOW-RS); a spool on disk keeps every study until delivered")
    s.add_argument("--ae-title", default="BONESCAN", help="the node's AE title (register it in the PACS)")
    s.add_argument("--port", type=int, default=11112, help="DICOM port to listen on")
    s.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    s.add_argument("--server", default="localhost:8001", help="Triton's gRPC address")
    s.add_argument("--send-to", metavar="HOST:PORT:AET", help="C-STORE the SEG and SR there (default: no C-STORE)")
    s.add_argument("--stow-url", metavar="URL", help="STOW-RS the SEG and SR to this DICOMweb root, e.g. "
                                                      "http://pacs:8042/dicom-web (default: no STOW-RS)")
    s.add_argument("--spool", type=Path, required=True, help="spool folder (incoming/, retry/, done/, failed/)")
    s.add_argument("--wait-report", type=float, default=300.0, metavar="SECONDS",
                   help="how long a scan waits for its report SR before it is segmented image-only (bonescan_unet)")
    s.add_argument("--wait-scan", type=float, default=3600.0, metavar="SECONDS",
                   help="a study without a complete scan this long after its last instance goes to failed/")
    s.add_argument("--retry-interval", type=float, default=60.0, metavar="SECONDS",
                   help="first wait before a study in retry/ is tried again (doubles, up to 30 min)")
    s.add_argument("--workers", type=int, default=1, help="studies segmented and sent at once")
    s.add_argument("--pause-before-send", type=float, default=0.0, metavar="SECONDS",
                   help="tests: wait this long between segmenting a study and sending its results")


# ----------------------------------------------------------------------------- demo and benchmarks


def _demo(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.demo import run_demo

    return run_demo(a.out, n=a.n, seed=a.seed, workers=a.workers, unet_steps=a.unet_steps, dual_steps=a.dual_steps)


def demo_command(sub: argparse._SubParsersAction) -> None:
    """``bonescan demo`` (``make demo``)."""
    s = _command(sub, "demo", _demo, "the whole pipeline on the embedded synthetic data (make demo)")
    OUT.add(s, required=False, default=Path("demo_out"), help="folder for data, checkpoints, exports, repository and report")
    s.add_argument("--n", type=int, default=800, help="synthetic cases")
    s.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    s.add_argument("--workers", type=int, default=2, help="processes for the synthesis")
    s.add_argument("--unet-steps", type=int, help="training steps of the U-Net (default: the demo preset's)")
    s.add_argument("--dual-steps", type=int, help="training steps of the dual-path model (default: the demo preset's)")


def _demo_cluster(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.demo_cluster import run_demo_cluster

    return 0 if run_demo_cluster(a.out, replicas=a.replicas, scans=a.scans, concurrency=a.concurrency)["ok"] else 1


def demo_cluster_command(sub: argparse._SubParsersAction) -> None:
    """``bonescan demo-cluster`` (``make demo-cluster``)."""
    s = _command(sub, "demo-cluster", _demo_cluster,
                 "after make demo: its repository on replicas behind nginx, scraped by Prometheus (make demo-cluster)")
    OUT.add(s, required=False, default=Path("demo_out"), help="the folder `bonescan demo` wrote")
    s.add_argument("--replicas", type=int, default=2, help="tritonserver replicas behind nginx")
    s.add_argument("--scans", type=int, help="held-out scans to send (default: the whole test split)")
    s.add_argument("--concurrency", type=int, default=4, help="requests in flight")


def _demo_pacs(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.demo_pacs import run_demo_pacs

    return 0 if run_demo_pacs(a.out, keep=a.keep)["ok"] else 1


def demo_pacs_command(sub: argparse._SubParsersAction) -> None:
    """``bonescan demo-pacs`` (``make demo-pacs``)."""
    s = _command(sub, "demo-pacs", _demo_pacs,
                 "after make demo: a study C-STOREd into a local Orthanc, forwarded to the DICOM node, its SEG and SR "
                 "back in Orthanc (make demo-pacs)")
    OUT.add(s, required=False, default=Path("demo_out"), help="the folder `bonescan demo` wrote")
    s.add_argument("--keep", action="store_true", help="keep Orthanc, the node and Triton up until Ctrl-C")


def _bench_synth(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.synth import bench_synth

    bench_synth(a.n, a.workers, a.out)
    return 0


def _bench_postprocess(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.postprocess_speed import bench_postprocess, format_result

    res = bench_postprocess(a.n, a.seed)
    print(format_result(res))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


def _bench_anatomy(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.anatomy import run_anatomy

    run_anatomy(a.checkpoint, a.data, a.out, split=a.split, n=a.n, progress=not a.quiet)
    return 0


def _bench_grounding(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.grounding import run_grounding

    run_grounding(a.checkpoint, a.data, a.out, n=a.n, progress=not a.quiet)
    return 0


def _bench_second_reader(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.anatomy import bench_second_reader, format_second_reader

    r = bench_second_reader(a.checkpoint, a.data, a.split, a.n, progress=not a.quiet)
    print(format_second_reader(r))
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "second_reader.json").write_text(json.dumps(r, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


def _bench_anatomy_cost(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.anatomy_cost import bench_anatomy_cost

    res = bench_anatomy_cost(a.checkpoint, a.data, a.out, flavor=a.flavor, rounds=a.rounds, requests=a.requests,
                             n_cases=a.cases, threads=a.threads)
    print(f"wrote {a.out / 'anatomy_cost.md'} and anatomy_cost.json")
    return 0 if all(res["verdicts"].values()) else 1


def _bench_first_request(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.first_request import format_table, run_first_request

    print(format_table(run_first_request(a.export, a.baseline, a.out, restarts=a.restarts, steady=a.steady)))
    return 0


def _bench_latency(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.latency import bench_latency
    from bonescan.benchmarks.report import write_latency_report

    res = bench_latency(a.checkpoint, a.data, a.out, config_name=a.config, export=a.export, repo=a.repo,
                        concurrency=tuple(a.concurrency), requests_per_level=a.requests, threads=a.threads,
                        use_perf_analyzer=not a.no_perf_analyzer, server_url=a.server, n_cases=a.cases)
    print(f"wrote {write_latency_report(res, a.out)}")
    return 0 if all(res["verdicts"].values()) else 1


def _bench_flavors(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.flavors import bench_flavors

    res = bench_flavors(a.export, a.data, a.out, tuple(a.flavors), baseline=a.baseline, int8_export=a.int8_export,
                        int8_baseline=a.int8_baseline, threads=a.threads, concurrency=tuple(a.concurrency),
                        requests=a.requests, n_cases=a.cases, isa=a.isa, perf_analyzer=not a.no_perf_analyzer, rounds=a.rounds)
    errors = sum(lv["errors"] for row in res["flavors"].values() for m in (C.ENSEMBLE_MODEL, C.ENSEMBLE_UNET_MODEL)
                 if m in row for lv in row[m]["levels"])
    print(f"wrote {a.out / 'flavors.md'} and flavors.json")
    return 0 if errors == 0 else 1


def _bench_sweep(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.sweep import bench_sweep

    res = bench_sweep(a.export, a.data, a.out, tuple(a.flavors), instances=tuple(a.instances), threads=tuple(a.threads),
                      max_batch=tuple(a.max_batch), concurrency=tuple(a.concurrency), p99_ms=a.p99_ms, baseline=a.baseline,
                      int8_export=a.int8_export, model=a.model, n_cases=a.cases, measurement_ms=a.measurement_ms,
                      isa=a.isa, keep_repos=a.keep_repos)
    failed = [p["name"] for p in res["points"] if p.get("error")]
    print(f"wrote {a.out / 'sweep.md'}, sweep.json and pareto.png" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 0 if not failed else 1


def _bench_perf_analyzer_data(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.latency import write_perf_analyzer_data

    out = write_perf_analyzer_data(a.data, a.out, a.model, a.n)
    print(f"wrote {out}: {a.n} held-out scans of {a.data}" + (" with their reports" if a.model == C.ENSEMBLE_MODEL else "")
          + f" for {a.model}; give it to perf_analyzer as --input-data {out}")
    return 0


def _perf(a: argparse.Namespace) -> int:
    import os

    from bonescan.benchmarks.latency import perf_analyzer_command

    argv, env, note = perf_analyzer_command(a.perf_args)
    if note:
        print(note, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(argv[0], argv, env)  # perf_analyzer's output, exit code and Ctrl-C are the command's


def _bench_parity(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.parity import bench_parity

    if a.server:
        res = bench_parity(a.checkpoint, a.export, a.data, a.server, a.model, a.n, out=a.out)
        return 0 if res["ok"] else 1
    from bonescan.serving.repository import RepoOptions, build_repository
    from bonescan.serving.server import TritonServer, free_ports

    repo = a.repo
    a.out.mkdir(parents=True, exist_ok=True)  # the server's log goes there too, before any result
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

    res = kill_restart(_prepare_repo(a), a.export, a.data, a.requests, a.concurrency, a.kill_after, a.out,
                       restart=not a.no_restart, restart_after_s=a.restart_after, timeout_s=a.timeout, retries=a.retries,
                       backoff_s=a.backoff, deadline_s=a.deadline)
    return 0 if res["ok"] else 1


def _bench_storm(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.faults import storm

    res = storm(_prepare_repo(a), a.export, a.data, a.rounds, a.concurrency, a.baseline, a.out)
    return 0 if res["ok"] else 1


def _bench_cluster(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.cluster import bench_cluster

    res = bench_cluster(a.repo, a.data, a.out, a.export, a.replicas, a.concurrency, tuple(a.throughput_replicas),
                        a.throughput_seconds, restart_after_s=a.restart_after, slow_stopped=a.slow, timeout_s=a.timeout,
                        retries=a.retries, deadline_s=a.deadline)
    return 0 if res["ok"] else 1


def _bench_text_gain(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.text_gain import run_text_gain

    if a.combine:
        from bonescan.benchmarks.text_gain import combine

        res = combine(a.combine, a.out)
    else:
        if a.data is None:
            raise SystemExit("bench text-gain: --data is required (unless --combine joins finished runs)")
        res = run_text_gain(a.data, a.out, a.seeds, a.config, a.leave_out, a.pretrain_text, a.tag, modes=tuple(a.modes))
    return 0 if all(res["summary"]["targets_met"].values()) else 1


def _bench_pacs(a: argparse.Namespace) -> int:
    from bonescan.benchmarks.pacs import bench_pacs

    bench_pacs(a.data, a.out, repo=a.repo, server=a.server, n=a.n)
    return 0


def _fault_run_args(s: argparse.ArgumentParser) -> None:
    """The arguments `bench soak`, `bench kill` and `bench storm` share."""
    EXPORT.add(s, help="ONNX export of the dual-path model")
    DATA.add(s)
    s.add_argument("--repo", type=Path, help="a built repository (default: built from --export into --out)")
    OUT.add(s, required=False, default=Path("bench_out"), help="results folder")


def bench_commands(sub: argparse._SubParsersAction) -> None:
    """``bonescan bench synth | postprocess | anatomy | grounding | second-reader | anatomy-cost | first-request | latency | flavors | sweep | parity | soak | kill | storm | cluster | pacs | text-gain``."""
    from bonescan.benchmarks.text_gain import MODES

    bsub = _group(sub, "bench", "benchmarks that print measured figures")
    s = _command(bsub, "synth", _bench_synth, "time the synthesis of N cases")
    s.add_argument("--n", type=int, default=1000, help="cases")
    s.add_argument("--workers", type=int, default=2, help="processes")
    OUT.add(s, required=False, help="keep the data set here (default: a temporary folder)")
    s = _command(bsub, "postprocess", _bench_postprocess, "the fail-safe's postprocess per scan, in-process (CPU model printed)")
    s.add_argument("--n", type=int, default=50, help="synthetic scans, one per call")
    s.add_argument("--seed", type=int, default=0, help="seed of the synthetic segmenter outputs")
    s.add_argument("--out", type=Path, help="also write the result as JSON here (default: not written)")
    s = _command(bsub, "anatomy", _bench_anatomy,
                 "the anatomy output: region accuracy of detected lesions, anatomy DSC per region, the Bone Scan Index's error, "
                 "its cost per scan")
    CHECKPOINT.add(s, help="a U-Net checkpoint (its anatomy network) or a dual-path one (its bundled U-Net's)")
    DATA.add(s, help="data folder with region label maps (regions.png, synthetic data)")
    s.add_argument("--split", default="test", help="split to score (default: test)")
    s.add_argument("--n", type=int, help="first N cases of the split (default: all)")
    s.add_argument("--out", type=Path, help="also write anatomy.json here (default: not written)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s = _command(bsub, "grounding", _bench_grounding,
                 "the report's named places as a prior: U-Net hot spots in the bones the report names added to the served answer "
                 "(threshold chosen on val, scored on test) against the same-budget U-Net")
    CHECKPOINT.add(s, help="a dual-path checkpoint with a bundled U-Net that has an anatomy network")
    DATA.add(s, help="data folder (its val split chooses the threshold, its test split is scored)")
    s.add_argument("--n", type=int, help="first N cases of each split (default: all)")
    s.add_argument("--out", type=Path, help="also write grounding.json here (default: not written)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s = _command(bsub, "second-reader", _bench_second_reader,
                 "the second reader on a model's served answers and anatomy output, beside the same on the true lesions")
    CHECKPOINT.add(s, help="a dual-path or U-Net checkpoint with an anatomy network")
    DATA.add(s, help="synthetic data written with --omit-lesion-rate / --invent-site-rate (reports with known errors)")
    s.add_argument("--split", help="split to score (default: every case)")
    s.add_argument("--n", type=int, help="first N cases (default: all)")
    s.add_argument("--out", type=Path, help="also write second_reader.json here (default: not written)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s = _command(bsub, "anatomy-cost", _bench_anatomy_cost,
                 "the anatomy output's share of the served ensemble's latency: the checkpoint exported with and without it, "
                 "both served in alternating rounds, per-step times")
    CHECKPOINT.add(s, help="the dual-path checkpoint (with an anatomy network)")
    DATA.add(s, help="data folder; held-out scans from its test split")
    OUT.add(s, help="results folder (both exports and repositories, server logs, anatomy_cost.json / .md)")
    s.add_argument("--flavor", choices=["embedded", "openvino", "openvino-int8"], default="embedded",
                   help="repository flavor of both arms (openvino-int8: both exports quantized and gated first)")
    s.add_argument("--rounds", type=positive_int, default=3, help="rounds, order alternating (A B, B A, ...)")
    s.add_argument("--requests", type=int, default=32, help="requests per arm and round at concurrency 1")
    s.add_argument("--cases", type=int, default=8, help="distinct held-out scans to cycle through")
    s.add_argument("--threads", type=int, default=2, help="threads per engine, the same for both arms")
    s = _command(bsub, "first-request", _bench_first_request,
                 "latency of the first request after a server start, with and without model_warmup")
    EXPORT.add(s, help="the dual-path model's ONNX export")
    s.add_argument("--baseline", type=Path, help="the U-Net's export, adds the first bonescan_unet request (default: none, the dual-path model only)")
    OUT.add(s, help="results folder (both repositories, server logs, first_request.json)")
    s.add_argument("--restarts", type=int, default=3, help="server starts per mode")
    s.add_argument("--steady", type=int, default=5, help="requests after the first (their median: the warm figure)")
    s = _command(bsub, "flavors", _bench_flavors,
                 "the CPU flavors (embedded, openvino, openvino-int8) served one after the other on the same scans, one run")
    EXPORT.add(s, help="the dual-path model's ONNX export")
    s.add_argument("--baseline", type=Path, help="the U-Net's export (adds the bonescan_unet ensemble to every flavor; default: none, "
                                                  "the dual-path ensemble only)")
    DATA.add(s, help="data folder; held-out scans from its test split (and the train split to calibrate INT8)")
    OUT.add(s, help="results folder (repositories, INT8 exports, server logs, flavors.json / .md)")
    s.add_argument("--flavors", nargs="+", default=["embedded", "openvino", "openvino-int8"],
                   help="flavors to serve, the first is the reference of the ratios (default: embedded openvino openvino-int8)")
    s.add_argument("--int8-export", type=Path, help="an INT8 export of --export from `bonescan export quantize` (default: quantized here)")
    s.add_argument("--int8-baseline", type=Path, help="an INT8 export of --baseline (default: quantized here)")
    s.add_argument("--isa", choices=["avx2", "avx512_core"], help="limit oneDNN (OpenVINO) to this ISA, as on an older CPU (default: what the CPU has)")
    s.add_argument("--threads", type=int, default=2, help="threads per engine, the same for all")
    s.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], help="concurrency levels")
    s.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    s.add_argument("--cases", type=int, default=8, help="distinct held-out scans to cycle through")
    s.add_argument("--no-perf-analyzer", action="store_true", help="skip perf_analyzer")
    s.add_argument("--rounds", type=positive_int, default=1,
                   help="serve and measure every flavor this many times, order reversed every other round; medians and "
                        "per-round speed-ups (default: 1, once)")
    s = _command(bsub, "sweep", _bench_sweep,
                 "the Model-Analyzer job: flavor x instances x threads x max batch, each served and measured by perf_analyzer; "
                 "table, Pareto plot, the best configuration as a `repo build` command")
    EXPORT.add(s, help="the dual-path model's ONNX export")
    DATA.add(s, help="data folder; held-out scans from its test split (and the train split to calibrate INT8)")
    OUT.add(s, help="results folder (sweep.json / .md, pareto.png, per-point perf_analyzer and server logs)")
    s.add_argument("--baseline", type=Path, help="the U-Net's export, needed with --model bonescan_unet (default: none)")
    s.add_argument("--model", choices=list(C.ENSEMBLES), default=C.ENSEMBLE_MODEL, help="the ensemble measured")
    s.add_argument("--flavors", nargs="+", choices=["embedded", "openvino", "openvino-int8"], default=["embedded", "openvino-int8"],
                   help="CPU flavors in the grid")
    s.add_argument("--int8-export", type=Path, help="an INT8 export of --export from `bonescan export quantize` "
                                                     "(default: quantized here when openvino-int8 is in the grid)")
    s.add_argument("--instances", type=int, nargs="+", default=[1, 2], help="instances of text_encoder / segmenter")
    s.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime / OpenVINO threads per instance")
    s.add_argument("--max-batch", type=int, nargs="+", default=[1, 4], help="Triton max_batch_size (1: no batching)")
    s.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4], help="perf_analyzer concurrency levels")
    s.add_argument("--p99-ms", type=float, help="latency budget: the best configuration is the highest throughput with p99 "
                                                "within it (default: no budget, the highest throughput)")
    s.add_argument("--cases", type=int, default=8, help="distinct held-out scans in perf_analyzer's input data")
    s.add_argument("--measurement-ms", type=int, default=3000, help="perf_analyzer's measurement window")
    s.add_argument("--isa", choices=["avx2", "avx512_core"], help="limit oneDNN (OpenVINO) to this ISA, as on an older CPU "
                                                                  "(default: what the CPU has)")
    s.add_argument("--keep-repos", action="store_true", help="keep every point's repository (removed after measuring when unset)")
    s = _command(bsub, "latency", _bench_latency,
                 "Triton ensemble vs in-process PyTorch / onnxruntime, perf_analyzer, memory")
    CHECKPOINT.add(s, help="the dual-path checkpoint (demo or paper config)")
    DATA.add(s, help="data folder; held-out scans come from its test split")
    OUT.add(s, help="results folder")
    s.add_argument("--config", choices=["demo", "paper"], help="which targets apply (default: from the checkpoint)")
    EXPORT.add(s, required=False, help="its ONNX export; with --repo, the export the repository was built from, e.g. the INT8 one "
                                       "(default: exported into --out)")
    s.add_argument("--repo", type=Path, help="a built repository; an openvino-flavor one is also timed against OpenVINO in-process, "
                                             "the runtime it serves (default: an embedded one built into --out)")
    s.add_argument("--server", help="benchmark a running server instead of starting one (default: start one)")
    s.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="concurrency levels")
    s.add_argument("--requests", type=int, default=0, help="requests per concurrency level (0, the default: 48 demo, 8 paper)")
    s.add_argument("--cases", type=int, default=8, help="distinct held-out scans to cycle through")
    s.add_argument("--threads", type=int, default=2, help="threads per engine, the same for all")
    s.add_argument("--no-perf-analyzer", action="store_true", help="skip perf_analyzer")
    s = _command(bsub, "perf-analyzer-data", _bench_perf_analyzer_data,
                 "held-out scans and reports as perf_analyzer's --input-data JSON (preprocess refuses its random / zero data)")
    DATA.add(s, help="data folder; the scans come from its test split")
    s.add_argument("--out", type=Path, required=True, help="JSON file to write (e.g. input.json)")
    s.add_argument("--model", choices=list(C.ENSEMBLES), default=C.ENSEMBLE_MODEL,
                   help="the ensemble it is for (bonescan_unet takes no report)")
    s.add_argument("--n", type=int, default=4, help="scans (perf_analyzer cycles through them)")
    s = _command(bsub, "parity", _bench_parity, "DSC and max difference: PyTorch, onnxruntime, Triton (TensorRT on a GPU)")
    CHECKPOINT.add(s)
    EXPORT.add(s)
    DATA.add(s)
    OUT.add(s, required=False, default=Path("bench_out"), help="results folder")
    s.add_argument("--server", help="a running server (default: start one on --repo or a repository built from --export)")
    s.add_argument("--repo", type=Path, help="a built repository (default: built from --export into --out)")
    s.add_argument("--model", choices=[C.ENSEMBLE_MODEL, C.ENSEMBLE_UNET_MODEL], help="ensemble name (default: from the checkpoint)")
    s.add_argument("--n", type=int, default=40, help="held-out cases")
    s = _command(bsub, "soak", _bench_soak, "N minutes at concurrency C: errors, wrong answers, server memory growth")
    _fault_run_args(s)
    s.add_argument("--minutes", type=float, default=10.0, help="duration")
    s.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    s.add_argument("--warmup", type=float, default=60.0, help="seconds before memory is compared")
    s = _command(bsub, "kill", _bench_kill,
                 "SIGKILL the server mid-run and restart it: answered, wrong, errors, lost, executed twice, retries")
    _fault_run_args(s)
    s.add_argument("--requests", type=int, default=40, help="requests in all")
    s.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    s.add_argument("--kill-after", type=int, default=10, help="ended requests (answered or failed) before the SIGKILL")
    s.add_argument("--restart-after", type=float, default=1.0, help="seconds between the SIGKILL and the restart")
    s.add_argument("--no-restart", action="store_true", help="leave the server dead: the remaining requests must fail, not hang")
    s.add_argument("--timeout", type=float, default=60.0, help="each attempt's deadline, seconds")
    s.add_argument("--retries", type=int, default=6, help="the client's retries after UNAVAILABLE")
    s.add_argument("--backoff", type=float, default=0.5, help="the client's first wait before a retry, seconds (doubles)")
    s.add_argument("--deadline", type=float, default=600.0, help="the whole run's deadline: a request without an outcome by then is lost")
    s = _command(bsub, "storm", _bench_storm, "bad requests between good ones, then concurrent mixes: no hang, no wrong answer")
    _fault_run_args(s)
    s.add_argument("--baseline", type=Path, help="ONNX export of the U-Net: adds U-Net requests to the mixes (default: none)")
    s.add_argument("--rounds", type=int, default=10, help="rounds of bad and good requests")
    s.add_argument("--concurrency", type=int, default=8, help="requests in flight in the mixes")
    s = _command(bsub, "cluster", _bench_cluster,
                 "replicas behind nginx: one slowed, one SIGKILLed and restarted under load (answers, errors, executions "
                 "per request id, retries, failover times), then throughput and cores busy with 1, 2, 3 replicas")
    s.add_argument("--repo", type=Path, required=True, help="a built repository of the embedded flavor")
    DATA.add(s, help="data folder; held-out scans come from its test split")
    OUT.add(s, required=False, default=Path("bench_out"), help="results folder (cluster.md, cluster.json, logs)")
    EXPORT.add(s, required=False, help="the dual-path export, for the expected masks (default: the one the repository "
                                       "was built from)")
    s.add_argument("--replicas", type=positive_int, default=3, help="replicas of the fault run")
    s.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    s.add_argument("--restart-after", type=float, default=2.0, help="seconds between the SIGKILL and the restart")
    s.add_argument("--slow", type=float, default=0.75, help="share of the time the slow replica is stopped (SIGSTOP)")
    s.add_argument("--timeout", type=float, default=120.0, help="each attempt's deadline, seconds")
    s.add_argument("--retries", type=int, default=6, help="the client's retries after UNAVAILABLE")
    s.add_argument("--deadline", type=float, default=900.0, help="the fault run's deadline: a request without an outcome by then is lost")
    s.add_argument("--throughput-replicas", type=int, nargs="*", default=[1, 2, 3], help="replica counts of the throughput part")
    s.add_argument("--throughput-seconds", type=float, default=30.0, help="measuring time per replica count")
    s = _command(bsub, "pacs", _bench_pacs,
                 "a real Orthanc forwards studies to the DICOM node: time from the last C-STORE into the node to the SEG "
                 "visible in Orthanc (p50), next to the ensemble's own round trip on the same scans")
    DATA.add(s, help="data folder; the studies are written from its test split")
    OUT.add(s, required=False, default=Path("bench_out/pacs"), help="results folder (pacs.json, Orthanc, spool, logs)")
    s.add_argument("--repo", type=Path, help="a built repository to serve (default: none; give this or --server)")
    s.add_argument("--server", help="a running tritonserver's gRPC address (default: none; give this or --repo)")
    s.add_argument("--n", type=positive_int, default=20, help="studies measured (one more goes first as a warm-up)")
    s = _command(bsub, "text-gain", _bench_text_gain,
                 "dual-path vs the same-budget U-Net over seeds: DSC, FROC / CPM and safety margins with reports in and out of "
                 "style, in traditional characters, in shorthand, none, another scan's, texts that are no report; ablation of the "
                 "fail-safe; calibration in and out of sample")
    DATA.add(s, required=False, default=None, help="data folder (cases/ and manifest.json); required unless --combine (default: none)")
    OUT.add(s, required=False, default=Path("runs/text_gain"), help="checkpoints (reused when there) and results")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    s.add_argument("--config", choices=["demo", "tiny"], default="demo", help="preset of both models")
    s.add_argument("--leave-out", default="auto",
                   help="house style kept out of the dual-path model's training: auto (seed k leaves out style k), none, or a style name")
    s.add_argument("--pretrain-text", type=int, metavar="STEPS", help="MLM pretraining steps (default: the config's)")
    s.add_argument("--tag", default="", help="suffix for the dual-path checkpoints of an ablation")
    s.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), metavar="MODE",
                   help=f"report conditions to evaluate (default: {' '.join(MODES)})")
    s.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                   help="join finished runs of single seeds (their text_gain.json) into one table in --out instead of running "
                        "(default: none)")


# ----------------------------------------------------------------------------- perf_analyzer


def perf_command(sub: argparse._SubParsersAction) -> None:
    """``bonescan perf -- ARGS``: Triton's perf_analyzer, with the libraries it cannot find on its own."""
    s = _command(sub, "perf", _perf, "run Triton's perf_analyzer (from the tritonclient wheel) with the library path it "
                 "needs; its flags go after `--`", usage="bonescan perf -- PERF_ANALYZER_ARGS ...")
    s.add_argument("perf_args", nargs="*", metavar="-- PERF_ANALYZER_ARGS",
                   help="perf_analyzer's own flags, e.g. -- -m bonescan -u localhost:8001 -i grpc --input-data input.json "
                        "(make input.json with bonescan bench perf-analyzer-data: preprocess refuses random / zero data; default: none, "
                        "perf_analyzer then prints its usage)")


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bonescan", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)
    data_commands(sub)
    model_commands(sub)
    export_commands(sub)
    serving_commands(sub)
    infer_command(sub)
    dicom_node_command(sub)
    demo_command(sub)
    demo_cluster_command(sub)
    demo_pacs_command(sub)
    bench_commands(sub)
    perf_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a, unknown = parser.parse_known_args(argv)
    if unknown:
        hint = ("; tritonserver's own flags go after `--` (bonescan serve --repo REPO -- --flag=value), TLS is "
                "--tls-cert / --tls-key / --tls-root" if a.command == "serve" else
                "; perf_analyzer's flags go after `--` (bonescan perf -- -m bonescan ...)" if a.command == "perf" else "")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
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
        from bonescan.errors import cli_wording

        print(f"bonescan: error: {cli_wording(msg)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
