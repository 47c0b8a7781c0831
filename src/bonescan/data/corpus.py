"""Report text without images: a corpus for masked-language-model pretraining of the text encoder.

Rendering a scan takes about a tenth of a second; writing its report takes well under a
millisecond. Pretraining the report encoder wants millions of reports in every house style, so
this module draws the findings a scan would have (metastasis count and sites, benign mimics,
artefacts, kidneys) from the same tables synth_case uses and writes only the report.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from bonescan.data.atlas import REGIONS, sample_age
from bonescan.data.report import Finding, write_report
from bonescan.data.styles import STYLE_NAMES, get_style
from bonescan.data.synth import (
    INJECTION_AT_ELBOW,
    KIDNEY_ACTIVITY,
    KIDNEYS_SEEN_ABOVE,
    MIMIC_RATES,
    SITE_FREQUENCY,
    SITE_REGIONS,
    SynthConfig,
    _n_metastases,
    mimic_extent,
    mimic_probability,
)

_SITES = list(SITE_FREQUENCY)
_SITE_CDF = (np.cumsum([SITE_FREQUENCY[s] for s in _SITES]) / sum(SITE_FREQUENCY.values())).tolist()
#: Share of rib metastases on the posterior arc of ribs 1-10 (11 and 12 have no anterior arc).
#: synth_case picks a rib's arc in proportion to its area; this is that share, measured over 400
#: synthetic cases (about 0.65), since the corpus draws no skeleton to measure it on.
RIB_POSTERIOR_SHARE = 0.65


def sample_findings(
    rng: np.random.Generator, cfg: SynthConfig | None = None
) -> tuple[list[Finding], list[Finding], list[Finding], int, bool]:
    """The findings of one imaginary scan, as synth_case would report them, without the scan.

    Returns (mets, benign, artefacts, n_lesions, kidneys_visible), the arguments of
    :func:`bonescan.data.report.write_report`. Lesion sites follow synth.SITE_FREQUENCY and the
    same count distribution; benign mimics and artefacts the generator's rates.
    """
    cfg = cfg or SynthConfig()
    n = _n_metastases(rng, cfg)
    mets: list[Finding] = []
    if n:
        for i, (u_site, u_region, u_arc) in enumerate(rng.random((n, 3)).tolist()):
            s = bisect.bisect_right(_SITE_CDF, u_site * _SITE_CDF[-1])
            regions = SITE_REGIONS[_SITES[min(s, len(_SITES) - 1)]]
            region = regions[int(u_region * len(regions))]
            arc = ""
            if REGIONS[region].group == "rib":
                arc = "posterior" if REGIONS[region].index > 10 or u_arc < RIB_POSTERIOR_SHARE else "anterior"
            mets.append(Finding("met", [region], arc=arc, ids=[i]))
    age = sample_age(rng)
    benign = []
    for kind in MIMIC_RATES:
        if rng.random() < mimic_probability(kind, age, cfg.mimic_scale):
            regions, _, arc = mimic_extent(kind, rng)
            benign.append(Finding(kind, regions, arc=arc))
    artefacts = []
    if rng.random() < cfg.p_injection:
        side = "R" if rng.random() < 0.5 else "L"
        artefacts.append(Finding("injection", [f"hand_{side}"], arc="elbow" if rng.random() < INJECTION_AT_ELBOW else "hand"))
    if rng.random() < cfg.p_urine:
        artefacts.append(Finding("urine", []))
    kidneys_visible = bool(rng.uniform(*KIDNEY_ACTIVITY) > KIDNEYS_SEEN_ABOVE)
    return mets, benign, artefacts, n, kidneys_visible


def report_corpus(n: int, seed: int, styles: Sequence[str] | None = None) -> list[str]:
    """``n`` reports (text only) in ``styles`` (default: every house style, uniformly).

    Deterministic in ``seed``, and the first k reports do not depend on n. About 5,000 reports
    a second on one core.
    """
    if n < 0:
        raise ValueError("n must not be negative")
    names = tuple(styles) if styles else STYLE_NAMES
    for name in names:
        get_style(name)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        style = names[int(rng.random() * len(names))]
        sex = "F" if rng.random() < 0.5 else "M"
        mets, benign, artefacts, n_lesions, kidneys = sample_findings(rng)
        out.append(write_report(mets, benign, artefacts, rng, n_lesions, kidneys, style=style, sex=sex).text)
    return out
