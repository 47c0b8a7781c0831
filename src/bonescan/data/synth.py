"""Synthetic whole-body SPECT bone scans (99mTc-MDP) with Chinese reports and lesion masks.

One case = anterior + posterior views (1024 x 256 uint16 counts), a metastasis mask in the
anterior frame, the skeleton's region label map per view (``bonescan.anatomy``; drawn from the
skeleton after everything else, with no random draw), a report and a metadata JSON. Image formation, in this order:

1. a skeleton atlas per patient (``atlas.py``) weighted by physiological uptake and by how close
   each bone lies to the anterior / posterior detector;
2. metastases placed with clinical site frequencies (spine > ribs > pelvis > proximal femur >
   skull ...), irregular, confined to bone, 0-20 per scan;
3. benign mimics that look like lesions (degenerative knees / shoulders / lumbar facets, rib
   fractures in a row, compression fractures, arthritis of hands and feet) which are NOT in the
   mask and which the report names as benign;
4. kidneys, bladder, soft tissue; sometimes an injection-site or urine artefact;
5. the camera: Gaussian PSF (FWHM 6-10 mm), scaling to clinical counts (0.8-2.2 M per view),
   Poisson noise.

Everything is a pure function of (seed, case index): the same seed gives the same bytes.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter

from bonescan.contract import IMAGE_HEIGHT, IMAGE_WIDTH, MAX_COUNT
from bonescan.data import raster
from bonescan.data.atlas import REGIONS, SHAPE, Patient, Skeleton, build_skeleton, region_labels, soft_tissue
from bonescan.data.raster import Patch
from bonescan.data.report import Finding, write_report
from bonescan.data.styles import pick_style
from bonescan.report_sites import ReportSite, site_matches

GENERATOR_VERSION = "bonescan-synth/1"

#: Relative frequency of a metastasis' site (per lesion), after the clinical literature on bone
#: scintigraphy: axial skeleton first (spine, ribs, pelvis), then proximal long bones and skull.
SITE_FREQUENCY: dict[str, float] = {
    "thoracic": 0.19, "lumbar": 0.14, "cervical": 0.03, "rib": 0.22, "ilium": 0.08, "sacrum": 0.04,
    "pubis": 0.02, "ischium": 0.015, "femur_proximal": 0.07, "skull": 0.045, "sternum": 0.035,
    "scapula": 0.03, "humerus_proximal": 0.03, "clavicle": 0.015, "femur_shaft": 0.01,
    "humerus_shaft": 0.004, "tibia": 0.004, "mandible": 0.002,
}

#: lesion radius range (fraction of patient height) by site group
_RADIUS = {
    "cervical": (0.003, 0.006), "thoracic": (0.004, 0.009), "lumbar": (0.005, 0.011),
    "rib": (0.004, 0.009), "skull": (0.006, 0.014), "ilium": (0.006, 0.016), "sacrum": (0.006, 0.014),
    "sternum": (0.005, 0.011),
}
_DEFAULT_RADIUS = (0.005, 0.012)


@dataclass(frozen=True)
class MimicRate:
    """How often a benign mimic appears in a scan: (base + per_age * a) * SynthConfig.mimic_scale,
    a = (age - 40) / 40 clipped to [0, 1]; ``bilateral`` is the share on both sides."""

    base: float
    per_age: float = 0.0
    bilateral: float = 0.0


#: Benign mimics in the order synth_case considers them. The text-only corpus (``corpus.py``)
#: reads the same table, so its reports mention benign findings as often as the scans show them.
MIMIC_RATES: dict[str, MimicRate] = {
    "degenerative_knee": MimicRate(0.1, 0.22, 0.6),
    "degenerative_shoulder": MimicRate(0.06, 0.12, 0.4),
    "facet_arthropathy": MimicRate(0.06, 0.16, 0.5),
    "cervical_spondylosis": MimicRate(0.03, 0.06),
    "rib_fracture": MimicRate(0.12),
    "compression_fracture": MimicRate(0.02, 0.06),
    "arthritis_hand": MimicRate(0.06, 0.0, 0.6),
    "arthritis_foot": MimicRate(0.06, 0.0, 0.5),
    "sternoclavicular": MimicRate(0.04, 0.0, 0.5),
}
#: mimic kind -> the region naming its side (R / L filled in); the spine and rib kinds name their own
_MIMIC_SIDE_REGION = {
    "degenerative_knee": "femur_{}_distal", "degenerative_shoulder": "humerus_{}_proximal", "arthritis_hand": "hand_{}",
    "arthritis_foot": "foot_{}", "sternoclavicular": "clavicle_{}",
}
#: kidney activity relative to bone, and the level above which the report calls the kidneys seen
KIDNEY_ACTIVITY = (0.15, 1.0)
KIDNEYS_SEEN_ABOVE = 0.3
#: share of injection-site artefacts at the elbow (the rest on the back of the hand)
INJECTION_AT_ELBOW = 0.6


def mimic_probability(kind: str, age: int, scale: float = 1.0) -> float:
    """Probability that a patient of ``age`` shows a benign mimic of ``kind`` (see MimicRate)."""
    r = MIMIC_RATES[kind]
    a = min(max((age - 40) / 40, 0.0), 1.0)  # python, not np.clip: the corpus calls this per report
    return (r.base + r.per_age * a) * scale


#: how many consecutive ribs a fracture row spans (1-4), as the CDF Generator.choice builds from p
_RIB_FRACTURE_COUNT_CDF = (np.cumsum([0.35, 0.25, 0.25, 0.15]) / np.cumsum([0.35, 0.25, 0.25, 0.15])[-1]).tolist()


def _one_of(rng: np.random.Generator, items: list[str]) -> str:
    """``rng.choice(items)`` with the same draw (Generator.choice calls integers(0, n)), ten times cheaper."""
    return items[int(rng.integers(len(items)))]


def mimic_extent(kind: str, rng: np.random.Generator) -> tuple[list[str], list[str], str]:
    """Where a benign mimic of ``kind`` sits: (regions, sides, rib arc), drawn exactly as synth_case
    draws them before it places the foci (so the corpus and the scans share one distribution)."""
    sides: list[str] = []
    arc = ""
    if kind in _MIMIC_SIDE_REGION:
        sides = ["R", "L"] if rng.random() < MIMIC_RATES[kind].bilateral else [_one_of(rng, ["R", "L"])]
        return [_MIMIC_SIDE_REGION[kind].format(sd) for sd in sides], sides, arc
    if kind == "facet_arthropathy":  # one or two lower lumbar levels, one or both sides
        first = int(rng.integers(3, 6))
        verts = [f"L{k}" for k in range(first, min(first + int(rng.integers(1, 3)), 6))]
        sides = ["R", "L"] if rng.random() < MIMIC_RATES[kind].bilateral else [_one_of(rng, ["R", "L"])]
        return verts, sides, arc
    if kind == "cervical_spondylosis":
        verts = [str(v) for v in rng.choice(["C4", "C5", "C6"], size=int(rng.integers(1, 3)), replace=False)]
        return sorted(verts), sides, arc
    if kind == "rib_fracture":  # one to four consecutive ribs of one side, one arc
        sd = _one_of(rng, ["R", "L"])
        count = 1 + bisect.bisect_right(_RIB_FRACTURE_COUNT_CDF, rng.random())  # = rng.choice([1, 2, 3, 4], p=...)
        first = int(rng.integers(3, 11 - count + 1))
        arc = _one_of(rng, ["anterior", "posterior"])
        return [f"rib_{sd}{k}" for k in range(first, first + count)], [sd], arc
    if kind == "compression_fracture":  # osteoporotic, at the thoracolumbar junction
        return [_one_of(rng, ["T10", "T11", "T12", "L1", "L2"])], sides, arc
    raise ValueError(f"unknown benign mimic kind {kind!r}")


@dataclass
class SynthConfig:
    p_negative: float = 0.3
    pixel_mm: tuple[float, float] = (1.9, 2.4)
    counts: tuple[float, float] = (0.8e6, 2.2e6)
    psf_fwhm_mm: tuple[float, float] = (6.0, 10.0)
    p_injection: float = 0.15
    p_urine: float = 0.04
    mimic_scale: float = 1.0  # multiplies every benign-mimic probability
    #: house styles the reports are written in (styles.STYLE_NAMES; empty = all), e.g. all but one
    #: to test a model on a hospital whose wording it has never read
    house_styles: tuple[str, ...] = ()
    #: share of metastases the report leaves out (each lesion on its own), to score the second reader's
    #: ``not_in_report``; 0 (the default) draws nothing and changes no byte of a case
    omit_lesion_rate: float = 0.0
    #: share of reports that name one metastasis the scan does not show (a region with no lesion within
    #: the second reader's tolerance), to score its ``not_found``; 0 draws nothing
    invent_site_rate: float = 0.0


#: SynthConfig fields that only steer the report-truth options: left out of manifest.json while 0, so a
#: data set written without them keeps its bytes
REPORT_TRUTH_FIELDS = ("omit_lesion_rate", "invent_site_rate")
#: the SeedSequence word of the report-truth draws: their own stream, so turning the options on changes the
#: report (what it names) but not the image, the mask or any other draw
REPORT_TRUTH_STREAM = 0x26


@dataclass
class Case:
    case_id: str
    anterior: np.ndarray  # uint16 [H, W], as acquired
    posterior: np.ndarray  # uint16 [H, W], as acquired (seen from behind: NOT mirrored)
    mask: np.ndarray  # uint8 [H, W], 1 = metastasis, anterior frame
    report: str
    meta: dict[str, Any] = field(default_factory=dict)
    #: uint8 [2, H, W]: the region class each view shows per pixel, model frame (atlas.region_labels)
    regions: np.ndarray | None = None


def _region_site(region: str) -> str:
    info = REGIONS[region]
    if info.group in ("femur", "humerus"):
        return f"{info.group}_{info.segment}"
    return info.group


#: the regions of each site of SITE_FREQUENCY (a lesion's region is drawn uniformly among them)
SITE_REGIONS: dict[str, list[str]] = {}
for _r in REGIONS:
    SITE_REGIONS.setdefault(_region_site(_r), []).append(_r)


def _wobble(rng: np.random.Generator, amount: float) -> np.ndarray:
    ks = np.arange(2, 5, dtype=np.float32)
    return np.stack([ks, rng.uniform(0, amount, 3) / ks, rng.uniform(0, 2 * np.pi, 3)], axis=1).astype(np.float32)


def _bone_support(sk: Skeleton, regions: list[str], grow: int = 2) -> Patch | None:
    """Union of the regions' coverage, dilated by ``grow`` px: where uptake can sit."""
    parts = [p.patch for r in regions for p in sk.region_parts(r)]
    u = raster.union(parts)
    if u is None:
        return None
    pad = grow + 1
    data = np.pad(u.data, pad)
    data = maximum_filter(data, size=2 * grow + 1)
    y0, x0 = u.y0 - pad, u.x0 - pad
    # clip back into the image
    cy0, cx0 = max(y0, 0), max(x0, 0)
    data = data[cy0 - y0 :, cx0 - x0 :]
    data = data[: IMAGE_HEIGHT - cy0, : IMAGE_WIDTH - cx0]
    return Patch(cy0, cx0, data)


def _uptake_at(sk: Skeleton, regions: list[str], view: int) -> float:
    parts = [p for r in regions for p in sk.region_parts(r)]
    if not parts:
        return 0.6
    w = np.array([p.patch.data.sum() for p in parts])
    u = np.array([p.uptake * p.depth[view] for p in parts])
    return float((w * u).sum() / max(w.sum(), 1e-6))


class _Scene:
    """Accumulates activity in both views, the mask, and what was placed where."""

    def __init__(self, sk: Skeleton, rng: np.random.Generator):
        self.sk = sk
        self.rng = rng
        self.h = sk.patient.height_px
        self.views = [np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.float32)]
        for part in sk.parts:
            for v in range(2):
                raster.paste(self.views[v], part.patch, part.uptake * part.depth[v])
        self.mask = np.zeros(SHAPE, np.uint8)
        self.occupied = np.zeros(SHAPE, bool)

    def blob(
        self,
        center: tuple[float, float],
        radii: tuple[float, float],
        angle: float,
        support: Patch | None,
        wobble: float = 0.25,
    ) -> Patch | None:
        """An irregular focus restricted to ``support``; None if it is too small or overlaps."""
        p = raster.ellipse(center, radii, angle, SHAPE, _wobble(self.rng, wobble))
        if p is None:
            return None
        if support is not None:
            p = raster.multiply(p, support)
        core = p.data >= 0.5
        if core.sum() < 4:
            return None
        if self.occupied[p.y0 : p.y1, p.x0 : p.x1][core].any():
            return None
        return p

    def add_focus(self, p: Patch, contrast: float, regions: list[str], is_met: bool) -> dict[str, Any]:
        depth_noise = self.rng.uniform(0.85, 1.15, 2)
        for v in range(2):
            raster.paste(self.views[v], p, contrast * _uptake_at(self.sk, regions, v) * float(depth_noise[v]))
        core = p.data >= 0.5
        occ = self.occupied[p.y0 : p.y1, p.x0 : p.x1]
        grown = maximum_filter(core, size=7)
        occ |= grown
        if is_met:
            self.mask[p.y0 : p.y1, p.x0 : p.x1][core] = 1
        yy, xx = np.nonzero(core)
        return {
            "center": [round(float(yy.mean() + p.y0), 2), round(float(xx.mean() + p.x0), 2)],
            "bbox": [int(yy.min() + p.y0), int(xx.min() + p.x0), int(yy.max() + p.y0), int(xx.max() + p.x0)],
            "area_px": int(core.sum()),
            "contrast": round(float(contrast), 3),
        }


def _contrast(rng: np.random.Generator, median: float = 2.0) -> float:
    return float(np.clip(rng.lognormal(np.log(median), 0.5), 0.6, 8.0))


def _n_metastases(rng: np.random.Generator, cfg: SynthConfig) -> int:
    if rng.random() < cfg.p_negative:
        return 0
    r = rng.random()
    if r < 0.5:
        return int(rng.integers(1, 4))
    if r < 0.8:
        return int(rng.integers(4, 9))
    return int(rng.integers(9, 21))


def _place_metastases(scene: _Scene, n: int, findings: list[Finding], lesions: list[dict]) -> None:
    rng, sk, h = scene.rng, scene.sk, scene.h
    sites = list(SITE_FREQUENCY)
    probs = np.array([SITE_FREQUENCY[s] for s in sites])
    probs /= probs.sum()
    tries = 0
    while len(lesions) < n and tries < 40 * n:
        tries += 1
        site = sites[int(rng.choice(len(sites), p=probs))]
        region = str(rng.choice(SITE_REGIONS[site]))
        parts = sk.region_parts(region)
        if not parts:
            continue
        areas = np.array([p.patch.data.sum() for p in parts])
        part = parts[int(rng.choice(len(parts), p=areas / areas.sum()))]
        yy, xx = np.nonzero(part.patch.data > 0.6)
        if len(yy) == 0:
            continue
        k = int(rng.integers(len(yy)))
        center = (float(yy[k] + part.patch.y0 + 0.5), float(xx[k] + part.patch.x0 + 0.5))
        lo, hi = _RADIUS.get(REGIONS[region].group, _DEFAULT_RADIUS)
        radii = (float(rng.uniform(lo, hi) * h), float(rng.uniform(lo, hi) * h))
        support = _bone_support(sk, [region])
        p = scene.blob(center, radii, float(rng.uniform(0, np.pi)), support, wobble=0.35)
        if p is None:
            continue
        info = scene.add_focus(p, _contrast(rng), [region], is_met=True)
        idx = len(lesions)
        info.update({"id": idx, "region": region, "group": REGIONS[region].group, "side": REGIONS[region].side,
                     "part": part.name, "radii_px": [round(radii[0], 2), round(radii[1], 2)]})
        lesions.append(info)
        arc = part.name if REGIONS[region].group == "rib" else ""
        findings.append(Finding("met", [region], arc=arc, ids=[idx]))


def _lm(sk: Skeleton, name: str) -> tuple[float, float]:
    y, x = sk.landmarks[name]
    return float(y), float(x)


def _part_edge(sk: Skeleton, region: str, part: str, side: str) -> tuple[float, float]:
    """The lateral margin of a part (for facets): (y centre, x at the edge on ``side``)."""
    p = next(pp for pp in sk.region_parts(region) if pp.name == part)
    yy, xx = np.nonzero(p.patch.data > 0.5)
    # the patient's right is the image's left
    x = xx.min() + 1 if side == "R" else xx.max() - 1
    return float(yy.mean() + p.patch.y0), float(x + p.patch.x0)


def _place_mimics(scene: _Scene, cfg: SynthConfig, benign: list[dict], findings: list[Finding]) -> None:
    rng, sk, h = scene.rng, scene.sk, scene.h
    age = sk.patient.age
    s = cfg.mimic_scale

    def put(kind: str, spots: list[tuple[tuple[float, float], tuple[float, float], float, list[str]]], regions: list[str], arc: str = "") -> None:
        foci = []
        for center, radii, angle, support_regions in spots:
            support = _bone_support(sk, support_regions, grow=2) if support_regions else None
            p = scene.blob(center, radii, angle, support, wobble=0.2)
            if p is None:
                continue
            foci.append(scene.add_focus(p, _contrast(rng, 1.8), support_regions or regions, is_met=False))
        if foci:
            entry: dict[str, Any] = {"type": kind, "regions": regions, "foci": foci}
            if arc:
                entry["arc"] = arc  # the report may name it (左侧第5-7后肋); report_from_meta needs it
            benign.append(entry)
            findings.append(Finding(kind, regions, arc=arc))

    def present(kind: str) -> bool:
        return bool(rng.random() < mimic_probability(kind, age, s))

    if present("degenerative_knee"):
        regions, sides, _ = mimic_extent("degenerative_knee", rng)
        spots = []
        for sd in sides:
            y, x = _lm(sk, f"knee_{sd}")
            medial = 1.0 if sd == "R" else -1.0  # towards the midline
            r = float(rng.uniform(0.006, 0.01) * h)
            spots.append(((y + 0.004 * h, x + medial * 0.007 * h), (r * 0.8, r), 0.0, [f"femur_{sd}_distal", f"tibia_{sd}"]))
        put("degenerative_knee", spots, regions)
    if present("degenerative_shoulder"):
        regions, sides, _ = mimic_extent("degenerative_shoulder", rng)
        spots = []
        for sd in sides:
            y, x = _lm(sk, f"shoulder_{sd}")
            r = float(rng.uniform(0.006, 0.01) * h)
            spots.append(((y + rng.normal(0, 0.004 * h), x + rng.normal(0, 0.004 * h)), (r, r), 0.0, [f"humerus_{sd}_proximal", f"scapula_{sd}", f"clavicle_{sd}"]))
        put("degenerative_shoulder", spots, regions)
    if present("facet_arthropathy"):
        verts, sides, _ = mimic_extent("facet_arthropathy", rng)
        spots = []
        for v in verts:
            for sd in sides:
                y, x = _part_edge(sk, v, "body", sd)
                r = float(rng.uniform(0.0035, 0.0055) * h)
                spots.append(((y, x), (r, r * 0.9), 0.0, [v]))
        put("facet_arthropathy", spots, verts)
    if present("cervical_spondylosis"):
        verts, _, _ = mimic_extent("cervical_spondylosis", rng)
        spots = []
        for v in verts:
            sd = str(rng.choice(["R", "L"]))
            y, x = _part_edge(sk, v, "body", sd)
            r = float(rng.uniform(0.003, 0.0045) * h)
            spots.append(((y, x), (r, r), 0.0, [v]))
        put("cervical_spondylosis", spots, verts)
    if present("rib_fracture"):  # foci in a vertical row on consecutive ribs
        ribs, _, arc = mimic_extent("rib_fracture", rng)
        spine_x = _lm(sk, "spine_mid")[1]
        frac = float(rng.uniform(0.55, 0.9))
        spots = []
        used = []
        for rib in ribs:
            parts = [p for p in sk.region_parts(rib) if p.name == arc]
            if not parts:
                continue
            pp = parts[0].patch
            yy, xx = np.nonzero(pp.data > 0.6)
            if len(yy) == 0:
                continue
            xs = xx + pp.x0
            lateral = np.abs(xs - spine_x)
            target = frac * lateral.max()
            k = int(np.argmin(np.abs(lateral - target) + 0.01 * yy))
            r = float(rng.uniform(0.0035, 0.005) * h)
            spots.append(((float(yy[k] + pp.y0), float(xs[k])), (r, r), 0.0, [rib]))
            used.append(rib)
        put("rib_fracture", spots, used, arc=arc)
    if present("compression_fracture"):  # osteoporotic compression fracture: a band
        (v,), _, _ = mimic_extent("compression_fracture", rng)
        part = next(p for p in sk.region_parts(v) if p.name == "body")
        yy, xx = np.nonzero(part.patch.data > 0.5)
        cy, cx = float(yy.mean() + part.patch.y0), float(xx.mean() + part.patch.x0)
        half_w = (xx.max() - xx.min()) / 2
        put("compression_fracture", [((cy + rng.normal(0, 1.0), cx), (float(rng.uniform(0.0022, 0.0032) * h), half_w * 0.95), -sk.patient.tilt, [v])], [v])
    if present("arthritis_hand"):  # arthritis of wrists / hands
        regions, sides, _ = mimic_extent("arthritis_hand", rng)
        spots = []
        for sd in sides:
            y, x = _lm(sk, f"wrist_{sd}" if rng.random() < 0.6 else f"hand_{sd}")
            r = float(rng.uniform(0.004, 0.007) * h)
            spots.append(((y, x), (r, r), 0.0, [f"hand_{sd}", f"forearm_{sd}"]))
        put("arthritis_hand", spots, regions)
    if present("arthritis_foot"):  # ankles / feet
        regions, sides, _ = mimic_extent("arthritis_foot", rng)
        spots = []
        for sd in sides:
            y, x = _lm(sk, f"ankle_{sd}")
            r = float(rng.uniform(0.005, 0.008) * h)
            spots.append(((y + 0.01 * h, x), (r, r), 0.0, [f"foot_{sd}", f"tibia_{sd}"]))
        put("arthritis_foot", spots, regions)
    if present("sternoclavicular"):  # sternoclavicular joints
        regions, sides, _ = mimic_extent("sternoclavicular", rng)
        y, x = _lm(sk, "sternum")
        spots = []
        for sd in sides:
            sg = 1.0 if sd == "L" else -1.0
            r = float(rng.uniform(0.004, 0.006) * h)
            spots.append(((y - 0.045 * h, x + sg * 0.017 * h), (r, r), 0.0, [f"clavicle_{sd}", "sternum"]))
        put("sternoclavicular", spots, regions)


def _invented_region(sk: Skeleton, lesions: list[dict], rng: np.random.Generator) -> str | None:
    """A region with bone in this skeleton that no lesion's region matches within the second reader's
    tolerance (report_sites.site_matches), drawn with the metastasis site frequencies; None if none is left."""
    taken = [les["region"] for les in lesions]
    sites = list(SITE_FREQUENCY)
    probs = np.array([SITE_FREQUENCY[s] for s in sites])
    for _ in range(50):
        site = sites[int(rng.choice(len(sites), p=probs / probs.sum()))]
        region = SITE_REGIONS[site][int(rng.integers(len(SITE_REGIONS[site])))]
        if sk.region_parts(region) and not any(site_matches(ReportSite(region), r) for r in taken):
            return region
    return None


def _report_truth(seed: int, index: int, cfg: SynthConfig, sk: Skeleton, lesions: list[dict],
                  mets: list[Finding]) -> tuple[list[Finding], dict[str, Any]]:
    """The metastases the report names when the report-truth options are on: some left out, maybe one
    invented (lesion id -1, so the report keeps its wording as it keeps a real mention's)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, REPORT_TRUTH_STREAM]))
    keep = list(rng.random(len(mets)) >= cfg.omit_lesion_rate)
    # a lesion is left out only if nothing the report still names covers it (T7 named once covers both of
    # two T7 lesions; the 5th rib covers the 6th within the reader's tolerance): those stay in the report
    changed = True
    while changed:
        named = [ReportSite(f.regions[0]) for f, k in zip(mets, keep, strict=True) if k]
        back = [j for j, f in enumerate(mets) if not keep[j] and any(site_matches(s, f.regions[0]) for s in named)]
        for j in back:
            keep[j] = True
        changed = bool(back)
    reported = [f for f, k in zip(mets, keep, strict=True) if k]
    truth: dict[str, Any] = {"omitted": [i for f, k in zip(mets, keep, strict=True) if not k for i in f.ids], "invented": []}
    if rng.random() < cfg.invent_site_rate:
        region = _invented_region(sk, lesions, rng)
        if region is not None:
            arc = str(rng.choice(["posterior", "anterior"])) if REGIONS[region].group == "rib" else ""
            reported.append(Finding("met", [region], arc=arc, ids=[-1]))
            truth["invented"].append({"region": region, "arc": arc})
    return reported, truth


def synth_case(seed: int, index: int, cfg: SynthConfig | None = None) -> Case:
    """Generate case ``index`` of the data set with ``seed``; a pure function of both."""
    cfg = cfg or SynthConfig()
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    pixel_mm = float(rng.uniform(*cfg.pixel_mm))
    patient = Patient.sample(rng, pixel_mm)
    sk = build_skeleton(patient, rng)
    scene = _Scene(sk, rng)
    h = scene.h

    lesions: list[dict] = []
    met_findings: list[Finding] = []
    _place_metastases(scene, _n_metastases(rng, cfg), met_findings, lesions)
    benign: list[dict] = []
    benign_findings: list[Finding] = []
    _place_mimics(scene, cfg, benign, benign_findings)

    # physiology: kidneys (posterior), bladder (anterior), soft tissue
    kidney_int = float(rng.uniform(*KIDNEY_ACTIVITY))
    kidneys_visible = kidney_int > KIDNEYS_SEEN_ABOVE
    for sd in ("R", "L"):
        y, x = _lm(sk, f"kidney_{sd}")
        kp = raster.ellipse((y, x), (0.03 * h, 0.017 * h), float(rng.normal(0, 0.15)) + (0.25 if sd == "R" else -0.25), SHAPE)
        raster.paste(scene.views[0], kp, 0.25 * kidney_int)
        raster.paste(scene.views[1], kp, 1.0 * kidney_int)
    by, bx = _lm(sk, "bladder")
    bl = raster.ellipse((by + rng.normal(0, 0.004 * h), bx), (float(rng.uniform(0.02, 0.036) * h), float(rng.uniform(0.026, 0.045) * h)), 0.0, SHAPE)
    bladder = float(rng.lognormal(np.log(2.5), 0.6))
    raster.paste(scene.views[0], bl, bladder)
    raster.paste(scene.views[1], bl, bladder * 0.6)
    st = soft_tissue(patient)
    st_level = float(rng.uniform(0.02, 0.045))
    for v in range(2):
        scene.views[v] += st_level * st

    artefacts: list[dict] = []
    art_findings: list[Finding] = []
    if rng.random() < cfg.p_injection:
        sd = str(rng.choice(["R", "L"]))
        where = "antecubital" if rng.random() < INJECTION_AT_ELBOW else "hand"
        y, x = _lm(sk, f"{where}_{sd}")
        if 0 <= x < IMAGE_WIDTH and 0 <= y < IMAGE_HEIGHT:
            p = raster.ellipse((y, x), (2.2, 2.2), 0.0, SHAPE)
            amount = float(rng.uniform(3, 15))
            raster.paste(scene.views[0], p, amount)
            raster.paste(scene.views[1], p, amount * 0.8)
            artefacts.append({"type": "injection", "side": sd, "site": where, "center": [round(y, 2), round(x, 2)]})
            art_findings.append(Finding("injection", [f"hand_{sd}"], arc="elbow" if where == "antecubital" else "hand"))
    if rng.random() < cfg.p_urine:
        y = by + float(rng.uniform(0.04, 0.1) * h)
        x = bx + float(rng.normal(0, 0.03 * h))
        p = raster.ellipse((y, x), (float(rng.uniform(2, 5)), float(rng.uniform(2, 5))), 0.0, SHAPE, _wobble(rng, 0.3))
        amount = float(rng.uniform(1.5, 5))
        raster.paste(scene.views[0], p, amount)
        raster.paste(scene.views[1], p, amount * 0.7)
        artefacts.append({"type": "urine", "center": [round(y, 2), round(x, 2)]})
        art_findings.append(Finding("urine", []))

    # the camera: PSF, counts, Poisson noise
    fwhm_mm = float(rng.uniform(*cfg.psf_fwhm_mm))
    sigma = fwhm_mm / 2.355 / pixel_mm
    totals = []
    out = []
    total_ant = float(rng.uniform(*cfg.counts))
    for v in range(2):
        img = gaussian_filter(scene.views[v], sigma, mode="constant")
        np.maximum(img, 0, out=img)
        total = total_ant * (1.0 if v == 0 else float(rng.uniform(0.95, 1.15)))
        lam = img * (total / max(float(img.sum()), 1e-6)) + 0.02  # + room background
        counts = rng.poisson(lam)
        out.append(np.clip(counts, 0, MAX_COUNT).astype(np.uint16))
        totals.append(int(counts.sum()))
    anterior, posterior_ant_frame = out
    posterior = np.ascontiguousarray(posterior_ant_frame[:, ::-1])  # as acquired, seen from behind

    # the report last, from the same generator: its draws cannot change the image
    truth: dict[str, Any] | None = None
    reported, n_reported = met_findings, len(lesions)
    if cfg.omit_lesion_rate or cfg.invent_site_rate:
        reported, truth = _report_truth(seed, index, cfg, sk, lesions, met_findings)
        n_reported = sum(1 for f in reported if f.ids != [-1])
    house_style = pick_style(rng, cfg.house_styles)
    report = write_report(reported, benign_findings, art_findings, rng, n_reported, kidneys_visible,
                          style=house_style, sex="F" if patient.female else "M")
    for les in lesions:
        les["mention"] = report.mentions.get(les["id"])  # None: left out of the report (report_truth)
    if truth is not None:
        for inv in truth["invented"]:
            inv["mention"] = report.mentions.get(-1)

    case_id = f"case_{index:05d}"
    meta = {
        "case_id": case_id,
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "index": index,
        "pixel_spacing_mm": [round(pixel_mm, 4), round(pixel_mm, 4)],
        "patient": {
            "height_cm": round(patient.height_px * pixel_mm / 10, 1),
            "age": patient.age,
            "sex": "F" if patient.female else "M",
            "build": round(patient.build, 3),
            "arm_pose": patient.arm_pose,
            "scoliosis_px": round(patient.scoliosis, 2),
            "tilt_rad": round(patient.tilt, 4),
        },
        "camera": {"psf_fwhm_mm": round(fwhm_mm, 2), "counts": {"anterior": totals[0], "posterior": totals[1]}},
        "physiology": {"kidneys_visible": kidneys_visible, "bladder_uptake": round(bladder, 3)},
        "lesions": lesions,
        "benign": benign,
        "artefacts": artefacts,
        "report": {"style": report.style, "house_style": report.house_style, "chars": len(report.text)},
    }
    if truth is not None:  # what the report leaves out and names wrongly on purpose (SynthConfig options)
        meta["report_truth"] = truth
    return Case(case_id, anterior, posterior, scene.mask, report.text, meta, region_labels(sk))


def meta_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
