"""The skeleton's regions as classes, their names, codes and masses; lesions named by region; the Bone Scan Index.

One source of truth for anatomy, shared by the synthetic data (the atlas draws these regions, the
generator writes a label map of them beside each mask), the model's anatomy output (one
channel per entry of :data:`REGION_CLASSES`) and the runtime that names lesions (postprocess).
It needs numpy only (and scipy for :func:`view_weights`, as ``components`` does) and imports nothing
else of the package, so the Triton python steps and the torch-free client can carry it.

**Classes.** Class 0 is the background. Every atlas region (:data:`REGIONS`) is one class, except
the ribs: each rib's posterior and anterior arcs are two classes (``rib_R5_posterior``,
``rib_R5_anterior``). Reports name arcs (右侧第5后肋) and a planar scan shows them in different
places: the posterior arc runs from the spine out and down, the anterior arc back towards the
sternum and crosses the posterior arcs of lower ribs. One class per rib would merge two distant
stripes; a sub-label beside the class would give the model a second output to keep consistent.
Ribs 11 and 12 have no anterior arc (the atlas ends anterior arcs at the costal cartilage from rib
10 down), so 10 + 12 arcs per side: 107 classes in all.

**Label maps.** ``regions`` arrays are uint8 [2, H, W] in the model frame (channel 0 the anterior
view, channel 1 the posterior view mirrored into the anterior frame, as ``contract.to_model_frame``
stacks the counts): one pixel position is one place in the patient in both channels, but each
channel names the bone *that view shows there*. Where bones overlap in projection, the pixel goes to
the bone that adds the most counts to it in that view (coverage x uptake x visibility of the view):
over the spine the anterior view shows the sternum, the posterior view the vertebra; where a
posterior rib arc crosses an anterior arc each view shows its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

# ----------------------------------------------------------------------------- the regions of the atlas
CERVICAL = tuple(f"C{i}" for i in range(1, 8))
THORACIC = tuple(f"T{i}" for i in range(1, 13))
LUMBAR = tuple(f"L{i}" for i in range(1, 6))
VERTEBRAE = CERVICAL + THORACIC + LUMBAR
SIDES = ("R", "L")  # patient's right / left
#: ribs 1..10 have an anterior arc in the atlas; 11 and 12 (floating ribs) only a posterior one
ANTERIOR_ARC_RIBS = 10
RIB_ARCS = ("posterior", "anterior")


@dataclass(frozen=True)
class RegionInfo:
    """What a region is, for placement statistics and report wording."""

    group: str  # skull, cervical, thoracic, lumbar, sacrum, rib, sternum, clavicle, scapula,
    # humerus, forearm, hand, ilium, ischium, pubis, femur, patella, tibia, fibula, foot, mandible
    side: str = ""  # "R", "L" or "" (midline)
    index: int = 0  # vertebra / rib number
    segment: str = ""  # proximal / shaft / distal for long bones


def region_catalogue() -> dict[str, RegionInfo]:
    """Every named region of the atlas, in the order the generator draws sites from (do not reorder:
    the synthetic data's random draws index into it)."""
    cat: dict[str, RegionInfo] = {"skull": RegionInfo("skull"), "mandible": RegionInfo("mandible")}
    for name in VERTEBRAE:
        group = {"C": "cervical", "T": "thoracic", "L": "lumbar"}[name[0]]
        cat[name] = RegionInfo(group, index=int(name[1:]))
    cat["sacrum"] = RegionInfo("sacrum")
    cat["sternum"] = RegionInfo("sternum")
    for s in SIDES:
        for i in range(1, 13):
            cat[f"rib_{s}{i}"] = RegionInfo("rib", s, i)
        for bone in ("clavicle", "scapula", "ilium", "ischium", "pubis", "patella", "tibia", "fibula", "forearm", "hand", "foot"):
            cat[f"{bone}_{s}"] = RegionInfo(bone, s)
        for bone in ("humerus", "femur"):
            for seg in ("proximal", "shaft", "distal"):
                cat[f"{bone}_{s}_{seg}"] = RegionInfo(bone, s, segment=seg)
    return cat


REGIONS = region_catalogue()

# ----------------------------------------------------------------------------- classes
BACKGROUND = "background"


def _classes() -> tuple[tuple[str, str, str], ...]:
    """(class name, atlas region, rib arc) per class, background first."""
    out = [(BACKGROUND, "", "")]
    for region, info in REGIONS.items():
        if info.group == "rib":
            out.append((f"{region}_posterior", region, "posterior"))
            if info.index <= ANTERIOR_ARC_RIBS:
                out.append((f"{region}_anterior", region, "anterior"))
        else:
            out.append((region, region, ""))
    return tuple(out)


_CLASS_ROWS = _classes()
#: the ordered class list: index = the value in a label map = the anatomy output's channel
REGION_CLASSES: tuple[str, ...] = tuple(c for c, _, _ in _CLASS_ROWS)
#: per class the atlas region it belongs to ("" for the background)
CLASS_REGION: tuple[str, ...] = tuple(r for _, r, _ in _CLASS_ROWS)
#: per class the rib arc ("posterior" / "anterior"; "" for every other class)
CLASS_ARC: tuple[str, ...] = tuple(a for _, _, a in _CLASS_ROWS)
CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(REGION_CLASSES)}
N_REGION_CLASSES = len(REGION_CLASSES)
assert N_REGION_CLASSES <= 256, "label maps are uint8"


def class_of(region: str, part: str = "") -> int:
    """The class of an atlas region's part (a rib's part name is its arc)."""
    if REGIONS[region].group == "rib":
        return CLASS_INDEX[f"{region}_{part}"]
    return CLASS_INDEX[region]


# ----------------------------------------------------------------------------- names
#: Chinese names of the region groups (the report generator's words for them, too)
GROUP_ZH = {
    "skull": "颅骨", "mandible": "下颌骨", "cervical": "颈椎", "thoracic": "胸椎", "lumbar": "腰椎",
    "sacrum": "骶骨", "rib": "肋骨", "sternum": "胸骨", "clavicle": "锁骨", "scapula": "肩胛骨",
    "humerus": "肱骨", "forearm": "尺桡骨", "hand": "手部", "ilium": "髂骨", "ischium": "坐骨",
    "pubis": "耻骨", "femur": "股骨", "patella": "髌骨", "tibia": "胫骨", "fibula": "腓骨", "foot": "足部",
}
SIDE_ZH = {"R": "右", "L": "左"}
SIDE_EN = {"R": "right", "L": "left", "": ""}
_ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}
_SEGMENT_EN = {"humerus": {"proximal": "proximal humerus", "shaft": "humeral shaft", "distal": "distal humerus"},
               "femur": {"proximal": "proximal femur", "shaft": "femoral shaft", "distal": "distal femur"}}
_SEGMENT_ZH = {"proximal": "近端", "shaft": "骨干", "distal": "远端"}
_ARC_ZH = {"posterior": "后段", "anterior": "前段"}
_GROUP_EN = {"forearm": "forearm (radius and ulna)"}


def english_name(cls: int) -> str:
    """``T7``, ``right 5th rib, posterior``, ``left proximal femur``, ``sacrum``; "" for the background."""
    region, arc = CLASS_REGION[cls], CLASS_ARC[cls]
    if not region:
        return ""
    info = REGIONS[region]
    side = SIDE_EN[info.side]
    if info.group in ("cervical", "thoracic", "lumbar"):
        return region
    if info.group == "rib":
        return f"{side} {_ORDINAL.get(info.index, f'{info.index}th')} rib, {arc}"
    if info.segment:
        return f"{side} {_SEGMENT_EN[info.group][info.segment]}"
    name = _GROUP_EN.get(info.group, info.group)
    return f"{side} {name}" if side else name


def chinese_name(cls: int) -> str:
    """``第7胸椎``, ``右侧第5肋后段``, ``左侧股骨近端``, ``骶骨``; "" for the background."""
    region, arc = CLASS_REGION[cls], CLASS_ARC[cls]
    if not region:
        return ""
    info = REGIONS[region]
    side = SIDE_ZH[info.side] + "侧" if info.side else ""
    if info.group in ("cervical", "thoracic", "lumbar"):
        return f"第{info.index}{GROUP_ZH[info.group]}"
    if info.group == "rib":
        return f"{side}第{info.index}肋{_ARC_ZH[arc]}"
    if info.group in ("hand", "foot"):
        return SIDE_ZH[info.side] + {"hand": "手", "foot": "足"}[info.group]
    return side + GROUP_ZH[info.group] + (_SEGMENT_ZH[info.segment] if info.segment else "")


# ----------------------------------------------------------------------------- SNOMED CT finding sites
#: SNOMED CT code and meaning of each region group, for a DICOM SR's finding site (with the side as a
#: laterality modifier). Codes are those of DICOM PS3.16 CID 4031 "Common Anatomic Regions" and CID 6114
#: "Osseous Anatomy Finding or Feature" (read in bvdh/dicom-terminology-in-fhir, ValueSet-dicom-cid-4031
#: and -6114), and, for tibia and "Radius and ulna", PS3.16 Annex L (Body Part Examined RADIUSULNA /
#: TIBIA -> SNOMED). No code was verified for a single vertebra level, a rib by number or arc, the
#: ischium or the pubis: those carry their nearest verified parent (Cervical / Thoracic / Lumbar spine,
#: Rib, Pelvis), so the SR says "Thoracic spine" for T7 and the level stays in the finding's text.
SNOMED_BY_GROUP: dict[str, tuple[str, str]] = {
    "skull": ("89546000", "Skull"), "mandible": ("91609006", "Mandible"),
    "cervical": ("122494005", "Cervical spine"), "thoracic": ("122495006", "Thoracic spine"),
    "lumbar": ("122496007", "Lumbar spine"), "sacrum": ("54735007", "Sacrum"), "rib": ("113197003", "Rib"),
    "sternum": ("56873002", "Sternum"), "clavicle": ("51299004", "Clavicle"), "scapula": ("79601000", "Scapula"),
    "humerus": ("85050009", "Humerus"), "forearm": ("110535000", "Radius and ulna"), "hand": ("85562004", "Hand"),
    "ilium": ("22356005", "Ilium"), "ischium": ("816092008", "Pelvis"), "pubis": ("816092008", "Pelvis"),
    "femur": ("71341001", "Femur"), "patella": ("64234005", "Patella"), "tibia": ("12611008", "Tibia"),
    "fibula": ("87342007", "Fibula"), "foot": ("56459004", "Foot"),
}


def snomed_site(cls: int) -> tuple[str, str] | None:
    """(SNOMED CT code, meaning) of a class's finding site; None for the background."""
    region = CLASS_REGION[cls]
    return SNOMED_BY_GROUP[REGIONS[region].group] if region else None


#: the laterality modifier of a sided finding site (DICOM CID 244 "Laterality": SNOMED CT Right / Left)
SNOMED_LATERALITY: dict[str, tuple[str, str]] = {"R": ("24028007", "Right"), "L": ("7771000", "Left")}


def snomed_laterality(cls: int) -> tuple[str, str] | None:
    """(SNOMED CT code, meaning) of a class's side; None for midline bones and the background."""
    region = CLASS_REGION[cls]
    return SNOMED_LATERALITY.get(REGIONS[region].side) if region else None


# ----------------------------------------------------------------------------- skeletal mass (Bone Scan Index)
#: Percent of the adult skeleton's weight per bone, the table the Bone Scan Index uses (Imbriaco M, Larson SM,
#: Yeung HW et al. "A new parameter for measuring metastatic bone involvement by prostate cancer: the Bone Scan
#: Index", Clin Cancer Res 1998;4:1765-72), from Spiers FW, "Radioisotopes in the Human Body", Academic Press
#: 1968, p. 120 (as tabulated at medicalalgorithms.com, "Bone Scan Index (BSI) for quantitation of metastatic
#: tumor to bone"). Radius and ulna are summed into the forearm (1.2 + 1.5). The table has no patella: it gets 0.
#: Sums to 100.1 (the table's rounding); kept as published.
MASS_PERCENT: dict[str, float] = {
    "skull": 16.6, "mandible": 1.8, "sternum": 0.3, "ribs": 4.4, "spine_sacrum": 8.3, "pelvis": 7.5,
    **{f"{bone}_{s}": pct for s in SIDES for bone, pct in (
        ("clavicle", 0.5), ("scapula", 1.5), ("humerus", 3.3), ("forearm", 2.7), ("hand", 1.5),
        ("femur", 8.9), ("tibia", 5.1), ("fibula", 1.3), ("foot", 5.8), ("patella", 0.0))},
}


def mass_group(region: str) -> str:
    """The entry of :data:`MASS_PERCENT` an atlas region belongs to.

    The table gives some bones only as a group (all 24 ribs; spine and sacrum; the pelvis). A group's
    share is not split by invented numbers: a lesion counts as its area over the whole group's area in
    the view (so each rib gets the ribs' 4.4 % in proportion to its area in the scan, each vertebra the
    spine's 8.3 % likewise)."""
    info = REGIONS[region]
    if info.group in ("cervical", "thoracic", "lumbar", "sacrum"):
        return "spine_sacrum"
    if info.group == "rib":
        return "ribs"
    if info.group in ("ilium", "ischium", "pubis"):
        return "pelvis"
    if info.group in ("skull", "mandible", "sternum"):
        return info.group
    return f"{info.group}_{info.side}"


MASS_GROUPS: tuple[str, ...] = tuple(MASS_PERCENT)
#: per class the index of its mass group in MASS_GROUPS (-1 for the background)
CLASS_MASS_GROUP = np.array([-1] + [MASS_GROUPS.index(mass_group(r)) for r in CLASS_REGION[1:]], dtype=np.int64)
#: the axial skeleton a superscan covers (Soloway: ribs, vertebrae, pelvic bones)
AXIAL_GROUPS = ("ribs", "spine_sacrum", "pelvis")


# ----------------------------------------------------------------------------- naming lesions
#: a region holding this share of a lesion's pixels in one view is a candidate place of the lesion
CANDIDATE_SHARE = 0.25
#: a bone the report names itself holding this share of a lesion's pixels in one view names it (lesion_sites'
#: ``named``). Chosen on `make demo`'s validation scans (2026-12-06): every share from 0.05 down names as many
#: detected true lesions right (0.25, the candidates' share: 0.946 within one; 0.05: 0.952), 0.05 the largest
NAMED_SHARE = 0.05

@dataclass(frozen=True)
class LesionSite:
    """Where one lesion is: the region class holding most of its pixels and that class's share."""

    lesion: int  # the lesion's label (1..n)
    cls: int  # region class (0: the lesion lies on no labelled bone)
    share: float  # the class's share of the lesion's pixels (both views pooled, weighted)
    #: every atlas region holding at least CANDIDATE_SHARE of the lesion's pixels in one view, the named one
    #: first: where bones overlap in projection, the places the lesion may be (a second reader accepts any)
    candidates: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return REGION_CLASSES[self.cls]

    @property
    def region(self) -> str:
        return CLASS_REGION[self.cls]

    @property
    def side(self) -> str:
        """"right" / "left" in the patient's frame, "" for midline bones."""
        return SIDE_EN[REGIONS[self.region].side] if self.region else ""

    @property
    def english(self) -> str:
        return english_name(self.cls)

    @property
    def chinese(self) -> str:
        return chinese_name(self.cls)

    def to_dict(self) -> dict:
        return {"region": self.name, "share": round(self.share, 3), "name_en": self.english, "name_zh": self.chinese,
                "side": self.side, "candidates": list(self.candidates)}


def check_regions(regions: np.ndarray, shape: tuple[int, ...] | None = None, stride: int = 1) -> np.ndarray:
    """A label map as this module reads it: integer [2, H / stride, W / stride] with values below N_REGION_CLASSES
    (``stride`` > 1: the anatomy output's coarse grid, one class per stride x stride cell of a [H, W] lesion map)."""
    regions = np.asarray(regions)
    if regions.ndim != 3 or regions.shape[0] != 2:
        raise ValueError(f"regions must be [2, H, W] (anterior, posterior in the model frame), got {regions.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if shape is not None and tuple(stride * d for d in regions.shape[1:]) != tuple(shape):
        grid = f" x stride {stride}" if stride > 1 else ""
        raise ValueError(f"regions are {regions.shape[1:]}{grid}, the lesion map {tuple(shape)}")
    if regions.dtype.kind not in "ui":
        raise ValueError(f"regions must be integer class indices, got {regions.dtype}")
    if regions.size and int(regions.max()) >= N_REGION_CLASSES:
        raise ValueError(f"regions hold class {int(regions.max())}; there are {N_REGION_CLASSES}")
    return regions


def view_counts(labels: np.ndarray, n: int, regions: np.ndarray, stride: int = 1) -> np.ndarray:
    """[2, n + 1, N_REGION_CLASSES] int: per view and lesion label the pixel count of each region class (one
    pass over the lesion pixels; row 0 of each view collects the background of ``labels``). ``regions`` may be
    the anatomy output's coarse grid (``stride``): each lesion pixel reads the cell it lies in."""
    labels = np.asarray(labels)
    regions = check_regions(regions, labels.shape, stride)
    flat = np.flatnonzero(labels > 0)  # (nonzero on the int map itself is ~10-20x slower)
    lab = labels.ravel()[flat].astype(np.int64)
    ys, xs = np.divmod(flat, labels.shape[1])
    if stride > 1:
        ys, xs = ys // stride, xs // stride
    out = np.empty((2, n + 1, N_REGION_CLASSES), np.int64)
    for v in range(2):
        cls = regions[v][ys, xs].astype(np.int64)
        out[v] = np.bincount(lab * N_REGION_CLASSES + cls, minlength=(n + 1) * N_REGION_CLASSES).reshape(n + 1, N_REGION_CLASSES)
    return out


def class_votes(labels: np.ndarray, n: int, regions: np.ndarray, view_weights: np.ndarray | None = None,
                stride: int = 1, counts: np.ndarray | None = None) -> np.ndarray:
    """[n + 1, N_REGION_CLASSES] float: per lesion label the (weighted) pixel count of each region class,
    summed over both views. Row 0 collects the background of ``labels``. ``counts``: :func:`view_counts`
    already taken (the map is not read again)."""
    w = np.ones((n + 1, 2)) if view_weights is None else np.vstack([np.ones((1, 2)), np.asarray(view_weights, float)])
    if w.shape != (n + 1, 2):
        raise ValueError(f"view_weights must be [n, 2] = [{n}, 2], got {np.asarray(view_weights).shape}")
    c = view_counts(labels, n, regions, stride) if counts is None else counts
    return c[0] * w[:, :1] + c[1] * w[:, 1:]


def lesion_sites(labels: np.ndarray, n: int, regions: np.ndarray, view_weights: np.ndarray | None = None,
                 stride: int = 1, named: np.ndarray | None = None) -> list[LesionSite]:
    """Name each lesion of a labelled lesion map by the region class holding most of its pixels.

    Args:
        labels: int [H, W], lesion k = k (1..n), 0 = no lesion (e.g. ``components.Components.labels``).
        n: the number of lesions.
        regions: uint8 [2, H, W] label map in the model frame (see the module docstring), or the anatomy
            output's coarse grid [2, H / stride, W / stride] with ``stride``.
        view_weights: optional [n, 2]: how much each view's labels count for each lesion (e.g. the
            lesion's brightness in each view, so the view that sees it best names it); default equal.
        stride: the grid of ``regions`` (1: full resolution).
        named: optional bool [N_REGION_CLASSES], the classes the report names as metastatic (the
            tokenizer's ``report_named``: ``report_sites.named_classes(exact=True)``): where the lesion lies
            on bones the report names (a class holding NAMED_SHARE of it in one view) but not on the
            majority class, the named one (the most pixels among them) names the lesion. The image decides
            which bones are possible, the report which of them it is.

    Returns:
        One :class:`LesionSite` per lesion, in label order. Background pixels (the lesion's rim just off
        the bone) count in the share's denominator but never win: a lesion is class 0 only when no pixel
        of it lies on a labelled bone.
    """
    counts = view_counts(labels, n, regions, stride)
    votes = class_votes(labels, n, regions, view_weights, counts=counts)[1:]
    total = votes.sum(axis=1)
    best = 1 + np.argmax(votes[:, 1:], axis=1)
    got = votes[np.arange(n), best]
    best = np.where(got > 0, best, 0)
    share = np.where(total > 0, np.where(got > 0, got, votes[:, 0]) / np.maximum(total, 1e-12), 0.0)
    per_view = counts[:, 1:]
    area = per_view.sum(axis=2)  # [2, n]
    # per view the classes (not the background) holding CANDIDATE_SHARE of the lesion's pixels
    cand = (per_view[:, :, 1:] >= CANDIDATE_SHARE * np.maximum(area, 1e-12)[:, :, None]) & (area[:, :, None] > 0)
    if named is not None and np.any(named) and n:
        flags = np.asarray(named).astype(bool).ravel()[1:]  # classes 1.. (the background is never named)
        touched = (per_view[:, :, 1:] >= NAMED_SHARE * np.maximum(area, 1e-12)[:, :, None]) & (per_view[:, :, 1:] > 0)
        either = touched[0] | touched[1]  # [n, classes - 1]
        for k in np.flatnonzero(best > 0):
            if flags[best[k] - 1]:
                continue
            options = np.flatnonzero(either[k] & flags) + 1
            if len(options):
                best[k] = options[np.argmax(votes[k, options])]
                share[k] = votes[k, best[k]] / max(total[k], 1e-12)
    out = []
    for k in range(n):
        cands = [CLASS_REGION[int(best[k])]] if best[k] else []
        for v in range(2):
            for c in np.nonzero(cand[v, k])[0] + 1:
                if CLASS_REGION[c] not in cands:
                    cands.append(CLASS_REGION[c])
        out.append(LesionSite(k + 1, int(best[k]), float(share[k]), tuple(cands)))
    return out


#: view weights: the ring around a lesion its background is read in (px beyond a 1-px gap), and the power
#: that makes the clearer view decide (measured on 200 synthetic scans, see view_weights)
RING_PX = 3
VIEW_POWER = 8


def view_weights(image: np.ndarray, labels: np.ndarray, n: int, ring: int = RING_PX, power: float = VIEW_POWER) -> np.ndarray:
    """[n, 2]: how clearly each view shows each lesion, so that view names it.

    A lesion's excess counts over a ring around it (relative to the view's mean counts) scale with how
    close its bone lies to that view's detector: a vertebral lesion under the sternum stands out in the
    posterior view, which labels the vertebra; a sternal one in the anterior view. Raised to ``power``
    so the clearer view decides. With true masks and label maps the region was named as the generator
    placed the lesion for 87.5 % of 713 lesions (200 scans, seed 0) with equal weights, 90.2 % with the mean
    brightness to the fourth power, 92.3 % with this excess to the eighth (94.4 % with rib and vertebra
    numbers within one); 85.2 % -> 90.4 % (93.0 %) on 1234 lesions of seed 2. The rest lie where bones
    overlap in both views (anterior rib arcs crossing each other, rib heads over the vertebrae, L5 over the
    sacrum). Needs scipy (as ``components`` does) for the ring.
    """
    from scipy.ndimage import maximum_filter

    image = np.asarray(image)
    labels = np.asarray(labels)
    # the views' means in float64 without a float64 copy of the scan (a 4 MB allocation per call costs more
    # than the rest of the naming in a long-running server process)
    means = image.reshape(image.shape[0], -1).mean(axis=1, dtype=np.float64)
    ys, xs = np.divmod(np.flatnonzero(labels > 0), labels.shape[1])
    if len(ys):  # the filters below only reach ring + 1 px beyond the lesions: work on their bounding box and that margin
        m = ring + 2
        y0, y1 = max(int(ys.min()) - m, 0), min(int(ys.max()) + m + 1, labels.shape[0])
        x0, x1 = max(int(xs.min()) - m, 0), min(int(xs.max()) + m + 1, labels.shape[1])
        labels, image = labels[y0:y1, x0:x1], image[:, y0:y1, x0:x1]
    image = image.astype(np.float64)
    sel = labels > 0
    lab = labels[sel].astype(np.int64) - 1
    near = maximum_filter(labels, size=3)
    far = maximum_filter(labels, size=2 * (ring + 1) + 1)
    in_ring = (far > 0) & (near == 0)
    ring_lab = far[in_ring].astype(np.int64) - 1
    area = np.maximum(np.bincount(lab, minlength=n), 1)
    ring_area = np.bincount(ring_lab, minlength=n)
    out = np.empty((n, 2))
    for v in range(2):
        inside = np.bincount(lab, weights=image[v][sel], minlength=n) / area
        around = np.bincount(ring_lab, weights=image[v][in_ring], minlength=n) / np.maximum(ring_area, 1)
        mean = max(float(means[v]), 1e-9)
        out[:, v] = np.maximum(inside - around, 1e-3 * mean) / mean
    return out ** power


# ----------------------------------------------------------------------------- Bone Scan Index, extent of disease
#: Soloway's extent-of-disease grade from the lesion count: 1 below 6 lesions, 2 for 6-20, 3 above 20
EOD_LIMITS = (6, 20)
#: a superscan (grade 4): lesions cover at least this share of the axial skeleton (ribs, vertebrae,
#: pelvis) in the mean of the two views; Soloway's "superscan or equivalent, > 75 % of the ribs,
#: vertebrae and pelvic bones"
SUPERSCAN_AXIAL_SHARE = 0.75


@dataclass(frozen=True)
class BoneBurden:
    """A scan's tumour burden: the Bone Scan Index, the extent-of-disease grade, hot spots per region."""

    bsi: float  # percent of the skeletal mass
    bsi_views: tuple[float, float]  # per view (anterior, posterior), before their mean
    eod: int  # Soloway grade 0-4
    axial_share: float  # share of the axial skeleton covered by lesions (mean of the views)
    hot_spots: dict[str, int]  # atlas region -> number of lesions named by it
    #: the lesions (labels) the BSI leaves out: at bones the report calls benign (name_lesions' ``leave_out``);
    #: the grade and the hot spots count every lesion
    left_out: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {"bsi": round(self.bsi, 4), "bsi_views": [round(b, 4) for b in self.bsi_views], "eod": self.eod,
                "axial_share": round(self.axial_share, 4), "hot_spots": dict(sorted(self.hot_spots.items())),
                "bsi_left_out": len(self.left_out)}


def _class_counts(lesion_mask: np.ndarray, regions: np.ndarray, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per view the pixels of each region class, and of them the lesion pixels: two [2, N_REGION_CLASSES] arrays
    (one pass over each view's map; the groups below are sums of classes). On the coarse grid (``stride``) a
    cell counts stride² pixels and each lesion pixel reads its cell: the same figures as at full resolution."""
    regions = check_regions(regions, np.asarray(lesion_mask).shape, stride)
    lesion_mask = np.asarray(lesion_mask)
    ys, xs = np.divmod(np.flatnonzero(lesion_mask > 0), lesion_mask.shape[1])
    if stride > 1:
        ys, xs = ys // stride, xs // stride
    every = np.stack([np.bincount(regions[v].ravel(), minlength=N_REGION_CLASSES) for v in range(2)]) * stride * stride
    hit = np.stack([np.bincount(regions[v][ys, xs], minlength=N_REGION_CLASSES) for v in range(2)])
    return every, hit


_GROUPED = CLASS_MASS_GROUP >= 0


def _by_group(per_class: np.ndarray) -> np.ndarray:
    """[2, N_REGION_CLASSES] pixel counts -> [2, len(MASS_GROUPS)] (background left out)."""
    return np.stack([np.bincount(CLASS_MASS_GROUP[_GROUPED], weights=row[_GROUPED], minlength=len(MASS_GROUPS))
                     for row in per_class])


def bsi_views(lesion_mask: np.ndarray, regions: np.ndarray, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per view and mass group the involved fraction (lesion pixels / group pixels in that view) and
    whether the group is visible: two [2, len(MASS_GROUPS)] arrays."""
    every, hit = _class_counts(lesion_mask, regions, stride)
    area, involved = _by_group(every), _by_group(hit)
    return involved / np.maximum(area, 1), area > 0


def bone_burden(lesion_labels: np.ndarray, n: int, regions: np.ndarray, sites: list[LesionSite] | None = None,
                stride: int = 1) -> BoneBurden:
    """The Bone Scan Index, Soloway's grade and the hot spots per region of one scan.

    BSI = sum over mass groups of (lesion pixels in the group / the group's pixels) x the group's percent
    of the skeletal mass (:data:`MASS_PERCENT`), computed in each view on that view's labels, then the
    mean of the two views. Each view charges a lesion to the bone it shows in front; the mean halves the
    error of a bone hidden in one view where the maximum would count it twice.

    Args:
        lesion_labels: int [H, W] lesion map (0 none, 1..n lesions; label a mask first, e.g. with
            ``components.components``).
        n: the number of lesions.
        regions: uint8 [2, H, W] label map in the model frame.
        sites: the lesions' names if the caller has them (else computed with equal view weights).
        stride: the grid of ``regions`` (1: full resolution; the anatomy output's coarse grid needs no upsampling).
    """
    every, hit = _class_counts(lesion_labels, regions, stride)
    frac = _by_group(hit) / np.maximum(_by_group(every), 1)
    pct = np.array([MASS_PERCENT[k] for k in MASS_GROUPS])
    per_view = frac @ pct
    axial = np.isin(CLASS_MASS_GROUP, [MASS_GROUPS.index(k) for k in AXIAL_GROUPS])
    axial_cov = [float(hit[v][axial].sum()) / max(int(every[v][axial].sum()), 1) for v in range(2)]
    axial_share = float(np.mean(axial_cov))
    if sites is None:
        sites = lesion_sites(lesion_labels, n, regions, stride=stride)
    hot: dict[str, int] = {}
    for s in sites:
        key = s.region or BACKGROUND
        hot[key] = hot.get(key, 0) + 1
    return BoneBurden(float(per_view.mean()), (float(per_view[0]), float(per_view[1])), soloway_grade(n, axial_share),
                      axial_share, hot)


def soloway_grade(n_lesions: int, axial_share: float = 0.0) -> int:
    """Extent of disease (Soloway MS et al., Cancer 1988;61:195-202): 0 no lesion, 1 fewer than 6, 2 six
    to 20, 3 more than 20, 4 a superscan (axial coverage >= SUPERSCAN_AXIAL_SHARE, whatever the count:
    a superscan's lesions merge into few components)."""
    if axial_share >= SUPERSCAN_AXIAL_SHARE:
        return 4
    if n_lesions <= 0:
        return 0
    if n_lesions < EOD_LIMITS[0]:
        return 1
    return 2 if n_lesions <= EOD_LIMITS[1] else 3


# ----------------------------------------------------------------------------- the anatomy output, served
def grid_of(region_labels: np.ndarray) -> np.ndarray:
    """The anatomy output as served (int32 class per cell, [2, h, w]) -> a uint8 label grid (out-of-range clipped)."""
    return np.clip(np.asarray(region_labels), 0, N_REGION_CLASSES - 1).astype(np.uint8)


def full_resolution(region_labels: np.ndarray, stride: int) -> np.ndarray:
    """The anatomy output's coarse grid [2, h, w] (one class per ``stride`` x ``stride`` cell) -> uint8 [2, h * stride, w * stride]."""
    r = np.asarray(region_labels)
    if r.ndim != 3 or r.shape[0] != 2:
        raise ValueError(f"region_labels must be [2, h, w], got {list(r.shape)}")
    r = grid_of(r)
    return np.repeat(np.repeat(r, stride, axis=1), stride, axis=2)


def named_prior(named: np.ndarray, grid: np.ndarray, stride: int) -> np.ndarray:
    """bool [H, W]: the pixels either view labels as one of the ``named`` classes (bool [N_REGION_CLASSES], e.g.
    the bones a report names: report_sites.named_classes), from the anatomy output's grid [2, H / stride, W / stride]."""
    named = np.asarray(named).astype(bool)
    if named.shape != (N_REGION_CLASSES,):
        raise ValueError(f"named must be [{N_REGION_CLASSES}] (one flag per region class), got {named.shape}")
    cells = named[check_regions(grid)]
    either = cells[0] | cells[1]
    return np.repeat(np.repeat(either, stride, axis=0), stride, axis=1)


def name_lesions(labels: np.ndarray, n: int, regions: np.ndarray, image: np.ndarray | None = None, stride: int = 1,
                 named: np.ndarray | None = None, burden_labels: np.ndarray | None = None,
                 leave_out: Callable[[list[LesionSite]], Sequence[bool]] | None = None) -> tuple[list[LesionSite], BoneBurden]:
    """Each lesion of a labelled map named by its region (the clearer view deciding when ``image`` is
    given: :func:`view_weights`; the report's named bones among the image's candidates with ``named``:
    :func:`lesion_sites`), and the scan's burden (:func:`bone_burden`). ``regions`` may be the anatomy
    output's coarse grid as served (``stride`` = ``contract.REGION_STRIDE``): the same names and figures as
    from :func:`full_resolution` of it, without building the full-resolution map. ``burden_labels``: the
    lesion pixels the burden counts, if not all of ``labels`` (postprocess.bsi_labels). ``leave_out``: given the
    sites, per lesion whether the BSI leaves it out (postprocess: the lesions at bones the report calls benign)."""
    w = view_weights(image, labels, n) if image is not None and n else None
    sites = lesion_sites(labels, n, regions, w, stride, named)
    counted = labels if burden_labels is None else burden_labels
    out = tuple(k + 1 for k, v in enumerate(leave_out(sites)) if v) if leave_out is not None and n else ()
    if out:
        counted = np.where(np.isin(counted, out), 0, counted)
    return sites, replace(bone_burden(counted, n, regions, sites, stride), left_out=out)
