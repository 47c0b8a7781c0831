"""Reports re-written from a case's ground truth: how training, calibration and evaluation see reports.

A synthetic case carries its findings in meta.json, so its report can be written again in any house
style (``data.report.report_from_meta``). Training re-writes each case's report in a random style of
the run's styles every time the case is drawn, then augments it (``data.augment``): the model never
learns one wording. Calibration and evaluation re-write a split's reports once, deterministically,
in the styles they are about (the training styles, or the one left out). A hospital's case has no
ground truth to re-write from and keeps its own report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def rewritable(meta: dict[str, Any] | None) -> bool:
    """Whether a case's report can be re-written (a synthetic case: meta.json from the generator)."""
    return bool(meta and meta.get("generator"))


def leave_lesions_out(meta: dict[str, Any], rng: np.random.Generator, rate: float) -> dict[str, Any]:
    """``meta`` as if its report had left each metastasis out with probability ``rate`` (the generator's
    ``report_truth``, data.synth), at least one always named: a report that misses a lesion, not one
    that calls a scan with metastases negative. A case with fewer than two lesions comes back as it is."""
    ids = [int(les["id"]) for les in meta.get("lesions", [])]
    if len(ids) < 2 or meta.get("report_truth"):
        return meta
    out = [i for i in ids if rng.random() < rate]
    if len(out) == len(ids):
        out.remove(out[int(rng.integers(len(out)))])
    return {**meta, "report_truth": {"omitted": out, "invented": []}} if out else meta


def training_report(meta: dict[str, Any] | None, report: str, rng: np.random.Generator, styles: Sequence[str] | None,
                    strength: float, part_share: float = 0.0, omit_share: float = 0.0, omit_rate: float = 0.5) -> str:
    """The report a case is trained with this time: re-written in a house style drawn from ``styles``
    when the case has a report and ground truth (``part_share`` of them only the impression, or only
    the findings, as terse reports come; ``omit_share`` of them leaving lesions out, each with
    probability ``omit_rate``: :func:`leave_lesions_out`), then augmented with ``strength`` (0: as written)."""
    text = report
    if styles and rewritable(meta) and report:
        from bonescan.data.report import report_from_meta

        style, seed = str(rng.choice(list(styles))), int(rng.integers(2**31))
        part = "full"
        if part_share > 0 and rng.random() < part_share:
            part = "impression" if rng.random() < 2 / 3 else "findings"
        if omit_share > 0 and rng.random() < omit_share:
            meta = leave_lesions_out(meta, rng, omit_rate)  # type: ignore[arg-type]
        text = report_from_meta(meta, style, seed, part).text  # type: ignore[arg-type]
    if strength > 0 and text:
        from bonescan.data.augment import augment_report

        text = augment_report(text, rng, strength)
    return text


def rewrite_split(metas: Sequence[dict[str, Any] | None], reports: Sequence[str], styles: Sequence[str] | None,
                  seed: int, part_share: float = 0.0) -> list[str]:
    """Each case's report re-written once in a style drawn from ``styles`` (deterministic in seed;
    cases without ground truth, and empty reports, stay as they are); ``part_share`` of them only
    their impression or their findings (see training_report)."""
    return [training_report(m, r, np.random.default_rng([seed, k]), styles, 0.0, part_share)
            for k, (m, r) in enumerate(zip(metas, reports))]
