"""``bonescan bench text-gain``: is the dual-path model's gain real, does it come from the report, is the
served answer safe by the standards lesion detection is judged by, and does it hold for reports the
model has never seen?

Per training seed:

1. the U-Net (image only), trained on the data set for the preset's steps (``unet_s{seed}.pt``,
   the shorter U-Net); then the same U-Net trained on for as many steps as the dual-path model's
   segmentation training (``unet_s{seed}_same_steps.pt``): **the U-Net with the dual-path model's
   image budget**, the baseline every gain and every safety margin is measured against, and the
   fail-safe's fall-back;
2. the dual-path model, warm-started from the shorter U-Net's weights and carrying the same-budget
   U-Net as its fail-safe answer, its text encoder pretrained; with ``--leave-out`` it is trained
   (pretraining included) on every house style but one, the one left out differing per seed
   (``auto``: seed k leaves out style k of the list, so one seed run alone leaves out what it would in a
   run of several: :func:`combine` joins such runs);
3. evaluation on the held-out test split, each scan's report given as (:data:`MODES`):
   in-style (re-written in a training style), left-out style, traditional characters (the in-style
   report in Taiwan's or Hong Kong's script; also read with the tokenizer's normalisation off),
   bilingual shorthand (benchmarks/other_writers.py), negative wording (negative scans get an
   explicit negative statement in wording no house style uses), no report, another scan's report,
   a text that is no report (benchmarks/nonreports.txt); and the 36 hand-written reports' scans.
   Every evaluation scores three answers from one pass, each with its FROC curve: the dual-path
   model's own, the served one (fail-safe on) and the bundled same-budget U-Net's; and the ablation
   of the fail-safe's rules (:data:`ABLATIONS`) on the same passes.

A served answer is **safe** when its operating point (lesion sensitivity at its false positives per
scan) lies on or above the same-budget U-Net's FROC curve on the same scans, less 0.02.
Targets (:func:`summarize`, means over seeds unless said): safe with in-style, left-out, another
study's reports and non-reports; CPM and DSC gains over the same-budget U-Net >= +0.03 in-style and
in the left-out style; traditional characters keep >= 90 % of the in-style DSC gain; a non-report
never gives an empty answer on a scan with metastases where the U-Net's is not empty (0 of N).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("in-style", "left-out", "traditional", "traditional-raw", "shorthand", "negative-words", "none", "shuffled", "nonreport",
         "handwritten")
MODE_LABELS = {"in-style": "in-style reports", "left-out": "left-out style", "traditional": "traditional characters",
               "traditional-raw": "traditional, not normalised", "shorthand": "bilingual shorthand",
               "negative-words": "negatives in unseen words", "none": "no report", "shuffled": "another scan's report",
               "nonreport": "a text that is no report", "handwritten": "hand-written (36 other scans)"}
#: the fail-safe's rules, each taken out of the served setting in turn (evaluate_arrays' variants)
ABLATIONS: dict[str, dict[str, Any]] = {
    "served": {},
    "- unknown-share rule": {"max_unknown_share": 1.0},
    "- no-finding rule (finding words)": {"require_finding_terms": False},
    "- no-finding rule (model)": {"no_finding_allow": 2.0},
    "- both no-finding rules": {"require_finding_terms": False, "no_finding_allow": 2.0},
    "- negative-report rule": {"negative_report_allow": 0.0},
    "- add named hot spots": {"add_named_lesions": False},
    "- whole-scan fall-back": {"max_unexplained": 1.0e9},
    "- the report's places in rule 5": {"parsed_mentions": False},
    "- named-place prior": {"named_place_threshold": 0.0},
    "- text-only rule": {"min_text_only_confidence": 0.0},
}
ABLATION_MODES = ("in-style", "left-out", "traditional-raw", "negative-words", "shuffled", "nonreport")
#: how far below the same-budget U-Net's FROC curve a served operating point may lie
SAFETY_TOLERANCE = 0.02


def _row(res: dict[str, Any], answer: str, unet_curve: dict[str, Any] | None) -> dict[str, Any]:
    from bonescan.metrics import sensitivity_at

    s = res["answers"][answer] if answer in res.get("answers", {}) else res["variants"][answer]
    per = res.get("per_scan_all", {}).get(answer)
    row = {"dsc": s["dsc"]["mean"], "dsc_positive": s["dsc_positive_scans"]["mean"],
           "negatives_clean": s["negative_scans_clean"], "lesion_sensitivity": s["lesion_sensitivity"],
           "fp_per_scan": s["fp_per_scan"], "cpm": (s.get("froc") or {}).get("cpm"),
           "fp_per_positive_scan": s.get("fp_per_positive_scan"), "faint_sensitivity": s.get("faint_sensitivity"),
           "faint_lesions": s.get("faint_lesions"),
           "unet_answers": res.get("failsafe", {}).get("answered_by_unet") if answer == "failsafe" else s.get("answered_by_unet")}
    if unet_curve is not None and s["lesion_sensitivity"] is not None:
        ref = sensitivity_at(unet_curve, s["fp_per_scan"])
        row["unet_sensitivity_at_fp"], row["margin"] = ref, s["lesion_sensitivity"] - ref
    if per is not None and answer == "failsafe":
        unet = res["per_scan_all"]["unet"]
        row["empty_on_positive"] = sum(r["gt_lesions"] > 0 and r["pred_components"] == 0 for r in per)
        row["empty_where_unet_not"] = sum(r["gt_lesions"] > 0 and r["pred_components"] == 0 and u["pred_components"] > 0
                                          for r, u in zip(per, unet))
        row["positive_scans"] = sum(r["gt_lesions"] > 0 for r in per)
        dec = res["failsafe"]["decisions"]
        row["names_no_finding"] = sum(bool(d.get("names_no_finding")) for d in dec)
        row["names_no_metastasis"] = sum(bool(d.get("names_no_metastasis")) for d in dec)
    return row


def _texts(mode: str, test, in_style: list[str], lo: str | None, seed: int) -> tuple[list[str], str, bool | None] | None:
    """(texts, report selection, tokenizer normalisation) of a mode on the test split; None: not run."""
    from bonescan.benchmarks.other_writers import NEGATIVES, nonreports, shorthand, traditional
    from bonescan.data.rewrite import rewrite_split

    if mode == "in-style":
        return in_style, "true", None
    if mode == "left-out":
        return (rewrite_split(test.metas, test.reports, [lo], 2000 + seed), "true", None) if lo else None
    if mode in ("traditional", "traditional-raw"):
        trad = [traditional(t, "tw" if k % 2 == 0 else "hk") for k, t in enumerate(in_style)]
        return trad, "true", mode == "traditional"
    if mode == "shorthand":
        return [shorthand(m, 3000 + seed + k) for k, m in enumerate(test.metas)], "true", None
    if mode == "negative-words":
        return [t if mk.any() else NEGATIVES[k % len(NEGATIVES)] for k, (t, mk) in enumerate(zip(in_style, test.masks))], "true", None
    if mode == "none":
        return in_style, "empty", None
    if mode == "shuffled":
        return in_style, "shuffled", None
    if mode == "nonreport":
        nr = nonreports()
        return [nr[(k + seed) % len(nr)] for k in range(len(test))], "true", None
    return None


def train_models(data: Path, out: Path, seed: int, config: str, lo: str | None, styles: list[str], tag: str = "",
                 pretrain_steps: int | None = None) -> tuple[Path, Path, Path]:
    """The seed's shorter U-Net, same-budget U-Net and dual-path model (each reused when there)."""
    from bonescan.model.config import preset
    from bonescan.train import train

    unet_ck = out / f"unet_s{seed}.pt"
    if not unet_ck.exists():
        m, t = preset(config, "unet")
        train(data, unet_ck, m, t, seed=seed, command=f"bonescan bench text-gain (seed {seed})", config_name=config)
    long_ck = out / f"unet_s{seed}_same_steps.pt"
    if not long_ck.exists():
        m, t = preset(config, "unet")
        t.steps = preset(config, "dualpath")[1].steps
        train(data, long_ck, m, t, seed=seed, command=f"bonescan bench text-gain (seed {seed}, U-Net on for the dual-path's steps)",
              config_name=config, init_from=unet_ck)
    ck = out / f"dualpath{tag}_s{seed}{'_no-' + lo if lo else ''}.pt"
    if not ck.exists():
        m, t = preset(config, "dualpath")
        if pretrain_steps is not None:
            t.pretrain_text_steps = pretrain_steps
        train(data, ck, m, t, seed=seed, command=f"bonescan bench text-gain (seed {seed}, left out {lo})",
              config_name=config, init_from=unet_ck, fallback=long_ck, styles=[s for s in styles if s != lo])
    return unet_ck, long_ck, ck


def run_text_gain(data: Path, out: Path, seeds: list[int], config: str = "demo", leave_out: str = "auto",
                  pretrain_steps: int | None = None, tag: str = "", handwritten: Path | None = None,
                  modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    from bonescan.benchmarks.handwritten import handwritten_samples
    from bonescan.benchmarks.latency import cpu_info, run_info
    from bonescan.data.arrays import SplitArrays, load_split
    from bonescan.data.rewrite import rewrite_split
    from bonescan.data.styles import STYLES
    from bonescan.evaluate import evaluate_arrays
    from bonescan.failsafe import FailSafeSettings
    from bonescan.metrics import faint_cut
    from bonescan.model.checkpoint import load_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    run, machine, t0 = run_info(), cpu_info(), time.perf_counter()
    test = load_split(data, "test")
    hand = SplitArrays.from_samples(handwritten_samples(handwritten))
    # faint lesions: the lowest-contrast third of each scan set's true lesions (from the truth alone)
    faint = {"test": faint_cut(test.metas), "handwritten": faint_cut(hand.metas)}
    styles = list(STYLES)
    rows: dict[str, Any] = {}
    left: dict[int, str | None] = {}
    calibration: dict[int, Any] = {}
    curves: dict[str, Any] = {}
    for k, seed in enumerate(seeds):
        lo = None if leave_out == "none" else (styles[seed % len(styles)] if leave_out == "auto" else leave_out)
        left[seed] = lo
        unet_ck, long_ck, ck = train_models(data, out, seed, config, lo, styles, tag, pretrain_steps)
        c = load_checkpoint(ck)
        fs_meta = c.metadata.get("failsafe") or {}
        calibration[seed] = {q: fs_meta.get(q) for q in ("settings", "in_sample", "out_of_sample", "unet", "safe", "fold_settings")}
        served = FailSafeSettings.from_dict(fs_meta.get("settings"))
        variants = {name: replace(served, **change) for name, change in ABLATIONS.items()}
        c_short = load_checkpoint(unet_ck)
        in_style = rewrite_split(test.metas, test.reports, [s for s in styles if s != lo], 1000 + seed)
        for mode in modes:
            spec: tuple[list[str], str, bool | None] | None
            if mode == "handwritten":
                arrays, spec = hand, (hand.reports, "true", None)
            else:
                arrays, spec = test, _texts(mode, test, in_style, lo, seed)
            if spec is None:
                continue
            texts, how, normalize = spec
            cut = faint["handwritten" if mode == "handwritten" else "test"]
            res = evaluate_arrays(c, arrays, how, seed=1000 + seed, texts=texts, progress=True, normalize=normalize,
                                  variants=variants if mode in ABLATION_MODES else None, faint=cut)
            curve = res["answers"]["unet"]["froc"]["curve"] if res["answers"]["unet"].get("froc") else None
            curves[f"s{seed}/{mode}"] = {a: (res["answers"][a].get("froc") or {}).get("curve") for a in res["answers"]}
            for answer in ("dualpath", "failsafe", "unet"):
                rows[f"s{seed}/{mode}/{answer}"] = {"seed": seed, "mode": mode, "answer": answer, "left_out": lo,
                                                    **_row(res, answer, curve)}
            for name in res.get("variants", {}):
                rows[f"s{seed}/{mode}/ablation:{name}"] = {"seed": seed, "mode": mode, "answer": f"ablation:{name}", "left_out": lo,
                                                           **_row(res, name, curve)}
            if mode in ("in-style", "handwritten"):  # the shorter U-Net: its answer does not depend on the reports
                r_short = evaluate_arrays(c_short, arrays, "empty", seed=1000 + seed, progress=True, faint=cut)
                rows[f"s{seed}/{mode}/unet_short"] = {"seed": seed, "mode": mode, "answer": "unet_short", "left_out": lo,
                                                      **_row(r_short, "dualpath", curve)}
                curves[f"s{seed}/{mode}"]["unet_short"] = (r_short["answers"]["dualpath"].get("froc") or {}).get("curve")
            r = rows[f"s{seed}/{mode}/failsafe"]
            print(f"seed {seed} {mode:16s} DSC dual-path {rows[f's{seed}/{mode}/dualpath']['dsc']:.4f} served {r['dsc']:.4f} "
                  f"({r['unet_answers']} U-Net answers) U-Net {rows[f's{seed}/{mode}/unet']['dsc']:.4f}; CPM served "
                  f"{r['cpm'] or 0:.3f} U-Net {rows[f's{seed}/{mode}/unet']['cpm'] or 0:.3f}; margin {r.get('margin', float('nan')):+.3f}",
                  flush=True)
            (out / f"eval_s{seed}_{mode}{tag}.json").write_text(json.dumps(
                {k: v for k, v in res.items() if k not in ("per_scan_all",)}, indent=1, ensure_ascii=False) + "\n")
    summary = summarize(rows, seeds)
    run["minutes"] = round((time.perf_counter() - t0) / 60, 1)
    result = {"run": run, "machine": machine, "data": str(data), "config": config, "seeds": seeds, "left_out": left, "styles": styles,
              "test_scans": len(test), "handwritten_scans": len(hand), "faint_contrast_cut": faint, "rows": rows, "summary": summary, "calibration": calibration,
              "curves": curves}
    (out / f"text_gain{tag}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    plot = out / f"froc{tag}.png"
    froc_figure(result, plot)
    text = table(result) + f"\n\n![FROC, seed {seeds[0]}]({plot.name})\n"
    (out / f"text_gain{tag}.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


def combine(paths: list[Path], out: Path) -> dict[str, Any]:
    """Runs of single seeds (their ``text_gain.json``, same data, config and modes) as one run over all their
    seeds: rows, curves and calibration joined, the summary, table and FROC figure made again."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    first = runs[0]
    for r in runs[1:]:
        for key in ("data", "config", "test_scans"):
            if r[key] != first[key]:
                raise ValueError(f"{key} differs between the runs ({first[key]!r} and {r[key]!r}): they cannot be joined")
    seeds = sorted({s_ for r in runs for s_ in r["seeds"]})
    if len(seeds) != sum(len(r["seeds"]) for r in runs):
        raise ValueError("a seed appears in more than one run")
    result = {**first, "seeds": seeds, "combined_from": [str(p) for p in paths],
              "runs": [{"path": str(p), **r["run"]} for p, r in zip(paths, runs, strict=True)],
              "machines": [r["machine"] for r in runs]}
    for key in ("left_out", "rows", "calibration", "curves"):
        result[key] = {k: v for r in runs for k, v in r[key].items()}
    result["left_out"] = {int(k): v for k, v in result["left_out"].items()}
    result["calibration"] = {int(k): v for k, v in result["calibration"].items()}
    result["run"] = {**first["run"], "minutes": round(sum(r["run"].get("minutes", 0.0) for r in runs), 1)}
    result["summary"] = summarize(result["rows"], seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_gain.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    plot = out / "froc.png"
    froc_figure(result, plot)
    text = table(result) + f"\n\n![FROC, seed {seeds[0]}]({plot.name})\n"
    (out / "text_gain.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


def _mean(rows: dict[str, Any], seeds: list[int], mode: str, answer: str, field: str = "dsc") -> float | None:
    vals = [rows[k][field] for s in seeds if (k := f"s{s}/{mode}/{answer}") in rows and rows[k].get(field) is not None]
    return float(np.mean(vals)) if vals else None


def summarize(rows: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Gains over the same-budget U-Net, safety margins and the targets (see the module docstring)."""
    m = lambda mode, answer, field="dsc": _mean(rows, seeds, mode, answer, field)  # noqa: E731
    out: dict[str, Any] = {"gains": {}, "margins": {}}
    targets: dict[str, bool] = {}
    for mode in MODES:
        if m(mode, "failsafe") is None:
            continue
        served, unet = m(mode, "failsafe") or 0.0, m(mode, "unet") or 0.0
        g = {"dsc": served - unet, "cpm": (m(mode, "failsafe", "cpm") or 0.0) - (m(mode, "unet", "cpm") or 0.0),
             "dsc_fail_safe_off": (m(mode, "dualpath") or 0.0) - unet}
        if m(mode, "unet_short") is not None:
            g["dsc_over_shorter_unet"] = served - (m(mode, "unet_short") or 0.0)
        out["gains"][mode] = g
        margin = m(mode, "failsafe", "margin")
        if margin is not None:
            out["margins"][mode] = {"served": margin, "fail_safe_off": m(mode, "dualpath", "margin"),
                                    "per_seed": [rows[f"s{s}/{mode}/failsafe"].get("margin") for s in seeds if f"s{s}/{mode}/failsafe" in rows]}
    for mode in ("in-style", "left-out", "shuffled", "nonreport"):
        if mode in out["margins"]:
            targets[f"{mode}_served_on_or_above_unet_froc"] = out["margins"][mode]["served"] >= -SAFETY_TOLERANCE
    for mode in ("in-style", "left-out"):
        if mode in out["gains"]:
            targets[f"{mode}_cpm_gain_at_least_0.03"] = out["gains"][mode]["cpm"] >= 0.03
            targets[f"{mode}_dsc_gain_at_least_0.03"] = out["gains"][mode]["dsc"] >= 0.03
    if "traditional" in out["gains"] and "in-style" in out["gains"]:
        gi = out["gains"]["in-style"]["dsc"]
        out["traditional_keeps"] = out["gains"]["traditional"]["dsc"] / gi if gi > 0 else None
        targets["traditional_keeps_90pct_of_gain"] = gi > 0 and out["gains"]["traditional"]["dsc"] >= 0.9 * gi
    if any(f"s{s}/nonreport/failsafe" in rows for s in seeds):
        keys = [f"s{s}/nonreport/failsafe" for s in seeds if f"s{s}/nonreport/failsafe" in rows]
        out["nonreport_empty"] = {q: int(sum(rows[k][q] for k in keys)) for q in ("empty_on_positive", "empty_where_unet_not",
                                                                                   "positive_scans", "names_no_finding")}
        targets["nonreport_never_empty_where_unet_finds"] = out["nonreport_empty"]["empty_where_unet_not"] == 0
    out["grounding"] = grounding(rows, seeds)
    for mode, g in out["grounding"].items():
        if mode not in GROUNDING_TARGET_MODES:
            continue
        targets[f"{mode}_sensitivity_gain_at_least_0.05_at_no_more_fp"] = g["gain"]["sensitivity"] >= GROUNDING_TARGETS["sensitivity"] \
            and g["gain"]["fp_per_positive_scan"] <= 0
        targets[f"{mode}_dsc_with_metastases_gain_at_least_0.03"] = g["gain"]["dsc_positive"] >= GROUNDING_TARGETS["dsc_positive"]
    out["targets_met"] = targets
    return out


#: issue 26 item 5: the served answer (named-place prior on) against the same-budget U-Net, on the scans with metastases
GROUNDING_TARGETS = {"sensitivity": 0.05, "dsc_positive": 0.03}
#: the report conditions the targets are about: the scan's own report, in the training styles and in the one left out
#: (another scan's report and a text that is no report are held to the FROC margin's safety target instead)
GROUNDING_TARGET_MODES = ("in-style", "left-out")
GROUNDING_ANSWERS = {"unet": "U-Net, same image budget", "ablation:- named-place prior": "served without the named-place prior",
                     "failsafe": "served (named-place prior on)"}
GROUNDING_FIELDS = ("lesion_sensitivity", "fp_per_positive_scan", "dsc_positive", "faint_sensitivity")


def grounding(rows: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Does the report find lesions? Per report condition with the ablation (in-style, left-out, another scan's
    report, non-reports): lesion sensitivity, false positives per scan with metastases, DSC on them and the
    faint-lesion sensitivity, means over seeds, for the U-Net, the served answer without the prior and with it,
    and the served answer's gain over the U-Net."""
    out: dict[str, Any] = {}
    for mode in ABLATION_MODES:
        if f"s{seeds[0]}/{mode}/ablation:- named-place prior" not in rows:
            continue
        answers = {a: {f: _mean(rows, seeds, mode, a, f) for f in GROUNDING_FIELDS} for a in GROUNDING_ANSWERS}
        served, unet = answers["failsafe"], answers["unet"]
        if any(served[f] is None or unet[f] is None for f in GROUNDING_FIELDS):
            continue
        diff = {f: float(served[f] or 0.0) - float(unet[f] or 0.0) for f in GROUNDING_FIELDS}
        gain = {"sensitivity": diff["lesion_sensitivity"], "fp_per_positive_scan": diff["fp_per_positive_scan"],
                "dsc_positive": diff["dsc_positive"], "faint_sensitivity": diff["faint_sensitivity"]}
        per_seed = [{"seed": s_, "sensitivity": rows[f"s{s_}/{mode}/failsafe"]["lesion_sensitivity"]
                     - rows[f"s{s_}/{mode}/unet"]["lesion_sensitivity"],
                     "dsc_positive": rows[f"s{s_}/{mode}/failsafe"]["dsc_positive"] - rows[f"s{s_}/{mode}/unet"]["dsc_positive"]}
                    for s_ in seeds if f"s{s_}/{mode}/failsafe" in rows]
        out[mode] = {"answers": answers, "gain": gain, "per_seed": per_seed}
    return out


def _provenance(result: dict[str, Any]) -> str:
    """The run's provenance line; a combined run's, one per run it joins (each seed's own command, time and commit)."""
    from bonescan.benchmarks.report import provenance

    def line(run: dict[str, Any], machine: dict[str, Any] | None) -> str:
        return provenance({"run": run, "machine": machine}) + (f" {run['minutes']} min." if "minutes" in run else "")

    if "runs" not in result:
        return line(result.get("run") or {}, result.get("machine"))
    parts = [line(r, m) for r, m in zip(result["runs"], result["machines"], strict=True)]
    return f"Joined by `bonescan bench text-gain --combine` from {len(parts)} runs:\n\n" + "\n".join(f"- {t}" for t in parts)


def table(result: dict[str, Any]) -> str:
    rows, seeds = result["rows"], result["seeds"]
    lo = ", ".join(f"seed {s}: {v}" for s, v in result["left_out"].items())
    lines = [f"## Text gain: {result['config']} config, {result['test_scans']} test scans, seeds {seeds} (left out: {lo})", "",
             _provenance(result), "",
             "U-Net = the same-budget U-Net (the fail-safe's fall-back); margin = lesion sensitivity minus the U-Net's FROC "
             "curve at the answer's false positives per scan (safe: >= -0.02).", "",
             "| reports | answer | " + " | ".join(f"DSC s{s}" for s in seeds) +
             " | DSC mean | DSC with metastases | negatives clean | lesion sens. | FP/scan | CPM | margin | answered by the U-Net |",
             "|---|---|" + "---|" * (len(seeds) + 8)]
    labels = {"unet": "U-Net, same image budget", "unet_short": "U-Net, shorter (preset steps)",
              "dualpath": "dual-path, fail-safe off", "failsafe": "dual-path, served (fail-safe on)"}
    n_of = {"handwritten": result["handwritten_scans"]}

    def line(mode: str, answer: str, label: str) -> str | None:
        keys = [f"s{s}/{mode}/{answer}" for s in seeds if f"s{s}/{mode}/{answer}" in rows]
        if not keys:
            return None

        def mean(field: str) -> str:
            v = [rows[k][field] for k in keys if rows[k].get(field) is not None]
            return f"{np.mean(v):.4f}" if v else "-"

        margin = [rows[k]["margin"] for k in keys if rows[k].get("margin") is not None and answer != "unet"]
        fb = [rows[k]["unet_answers"] for k in keys if rows[k].get("unet_answers") is not None]
        return (f"| {MODE_LABELS[mode]} | {label} | " + " | ".join(f"{rows[k]['dsc']:.4f}" for k in keys) +
                f" | **{mean('dsc')}** | {mean('dsc_positive')} | {mean('negatives_clean')} | {mean('lesion_sensitivity')} | "
                f"{mean('fp_per_scan')} | {mean('cpm')} | {f'{np.mean(margin):+.3f}' if margin else '-'} | "
                + (f"{np.mean(fb):.0f} of {n_of.get(mode, result['test_scans'])} |" if fb else "- |"))

    for mode in MODES:
        answers = (("unet", "unet_short") if mode in ("in-style", "handwritten") else ()) + ("dualpath", "failsafe")
        lines += [ln for a in answers if (ln := line(mode, a, labels[a]))]
    s = result["summary"]
    lines += ["", "| target (mean over seeds) | met |", "|---|---|"]
    lines += [f"| {k} | {'yes' if v else 'NO'} |" for k, v in s["targets_met"].items()]
    if s.get("grounding"):
        lines += ["", "### Does the report find lesions? (the named-place prior; scans with metastases, means over seeds)", "",
                  "| reports | answer | lesion sens. | FP per scan with metastases | DSC with metastases | faint-lesion sens. |",
                  "|---|---|---|---|---|---|"]
        for mode, g in s["grounding"].items():
            for a, label in GROUNDING_ANSWERS.items():
                v = g["answers"][a]
                cells = [f"{v[f]:.4f}" if v[f] is not None else "-" for f in GROUNDING_FIELDS]
                lines.append(f"| {MODE_LABELS[mode]} | {label} | " + " | ".join(cells) + " |")
            d = g["gain"]
            t = mode in GROUNDING_TARGET_MODES
            seeds_s = ", ".join(f"{q['sensitivity']:+.3f}" for q in g.get("per_seed", []))
            seeds_d = ", ".join(f"{q['dsc_positive']:+.3f}" for q in g.get("per_seed", []))
            lines.append(f"| {MODE_LABELS[mode]} | **served - U-Net** | **{d['sensitivity']:+.4f}** "
                         f"({seeds_s}{'; target +0.05' if t else ''}) | {d['fp_per_positive_scan']:+.3f}{' (target <= 0)' if t else ''} | "
                         f"**{d['dsc_positive']:+.4f}** ({seeds_d}{'; target +0.03' if t else ''}) | {d['faint_sensitivity']:+.4f} |")
        lines.append("")
        lines.append("Faint = the lowest-contrast third of the true lesions (contrast <= "
                     + ", ".join(f"{k} {v:.3f}" for k, v in result.get("faint_contrast_cut", {}).items() if v is not None) + ").")
    lines += ["", "| reports | DSC gain served | CPM gain served | DSC gain, fail-safe off | margin served (per seed) |",
              "|---|---|---|---|---|"]
    for mode, g in s["gains"].items():
        mg = s["margins"].get(mode, {})
        lines.append(f"| {MODE_LABELS[mode]} | {g['dsc']:+.4f} | {g['cpm']:+.4f} | {g['dsc_fail_safe_off']:+.4f} | "
                     + (f"{mg['served']:+.3f} ({', '.join(f'{x:+.3f}' for x in mg['per_seed'] if x is not None)})" if mg else "-") + " |")
    if "nonreport_empty" in s:
        e = s["nonreport_empty"]
        lines += ["", f"Texts that are no report: {e['names_no_finding']} of {len(seeds) * result['test_scans']} read as naming no "
                  f"finding; empty served answers on scans with metastases: {e['empty_on_positive']} of {e['positive_scans']} "
                  f"({e['empty_where_unet_not']} where the U-Net's answer is not empty)."]
    if "traditional_keeps" in s and s["traditional_keeps"] is not None:
        g = s["gains"]
        raw = g.get("traditional-raw", {}).get("dsc")
        lines += ["", f"Traditional characters keep {100 * s['traditional_keeps']:.0f} % of the in-style DSC gain with the "
                  f"tokenizer's normalisation" + (f" ({raw:+.4f} without it)." if raw is not None else ".")]
    lines += ["", "### Ablation of the fail-safe's rules (each taken out of the served setting; same passes)", "",
              "| rule taken out | " + " | ".join(f"{MODE_LABELS[m_]}: DSC / sens. @ FP / margin" for m_ in ABLATION_MODES) + " |",
              "|---|" + "---|" * len(ABLATION_MODES)]
    for name in ABLATIONS:
        cells = []
        for mode in ABLATION_MODES:
            keys = [f"s{s_}/{mode}/ablation:{name}" for s_ in seeds if f"s{s_}/{mode}/ablation:{name}" in rows]
            if not keys:
                cells.append("-")
                continue
            cells.append(_point({q: float(np.mean([rows[k][q] for k in keys if rows[k].get(q) is not None] or [np.nan]))
                                 for q in ("dsc", "lesion_sensitivity", "fp_per_scan", "margin")}))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cal = result.get("calibration", {})
    if cal:
        lines += ["", "### The fail-safe's calibration: in sample, out of sample (cross-validated on validation), and on the test scans",
                  "", "| seed | setting | true reports: DSC / sens. @ FP / margin, in sample | out of sample | test (in-style) | "
                  "another study's: in sample | out of sample | test |", "|---|---|---|---|---|---|---|---|"]
        for seed, c in cal.items():
            if not c.get("in_sample"):
                continue
            st = c["settings"]
            setting = (f"conf {st['min_confidence']:g}, mention {st['mention_threshold']:g}, "
                       f"allow {st['allow_threshold']:g}{'' if st['add_named_lesions'] else ' (off)'}, negative {st['negative_report_allow']:g}, "
                       f"whole {st['max_unexplained']:g}, text-only {st.get('min_text_only_confidence', 0.0):g}, "
                       f"named place {st.get('named_place_threshold', 0.0):g}")
            test_true, test_shuf = rows.get(f"s{seed}/in-style/failsafe"), rows.get(f"s{seed}/shuffled/failsafe")
            lines.append(f"| {seed} | {setting} | {_point(c['in_sample']['true'])} | {_point(c['out_of_sample']['true'])} | "
                         f"{_point(test_true)} | {_point(c['in_sample']['shuffled'])} | {_point(c['out_of_sample']['shuffled'])} | "
                         f"{_point(test_shuf)} |")
    return "\n".join(lines)


def _point(d: dict[str, Any] | None) -> str:
    """'DSC / sensitivity @ FP per scan / margin' of a calibration estimate or a row."""
    if not d:
        return "-"
    return f"{d['dsc']:.4f} / {d['lesion_sensitivity']:.3f} @ {d['fp_per_scan']:.2f} / {d.get('margin', float('nan')):+.3f}"


def froc_figure(result: dict[str, Any], path: Path) -> None:
    """The first seed's FROC curves and operating points, in-style and with another scan's report."""
    from bonescan import viz

    seed = result["seeds"][0]
    curves, points = {}, {}
    names = {"unet": "U-Net (same budget)", "unet_short": "U-Net (shorter)", "dualpath": "dual-path, fail-safe off",
             "failsafe": "served"}
    for mode, tag in (("in-style", ""), ("shuffled", ", another scan's report")):
        c = result["curves"].get(f"s{seed}/{mode}", {})
        for a, curve in c.items():
            if curve is None or (mode == "shuffled" and a in ("unet", "unet_short")):
                continue
            label = names.get(a, a) + tag
            curves[label] = curve
            r = result["rows"].get(f"s{seed}/{mode}/{a}")
            if r and r.get("lesion_sensitivity") is not None:
                points[label] = (r["fp_per_scan"], r["lesion_sensitivity"])
    if curves:
        viz.froc_plot(curves, points, path, title=f"FROC on the test scans, seed {seed}")
