"""A parametric skeleton atlas for whole-body planar bone scans.

The skeleton is drawn in the **anterior frame**: image row 0 is above the head, the patient's
RIGHT side is on the image's LEFT (the reader faces the patient). Bones are built from
anthropometric fractions of the patient's height, so height, build, pose, arm and leg position,
scoliosis and a small tilt vary per patient.

Each bone is a named region (``T7``, ``rib_L5``, ``ilium_R`` ...; the catalogue lives in
``bonescan.anatomy``) made of parts; every part has a coverage patch, a physiological uptake and a
visibility per view (depth: the spine is close to the posterior detector, the sternum to the anterior
one). :func:`region_labels` turns the parts into the per-view label map of ``bonescan.anatomy``'s classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# the regions (names, groups, sides, numbers) are defined once, in the numpy-only module that also
# numbers them as classes; the atlas draws them (and re-exports the names its users import from here)
from bonescan.anatomy import ANTERIOR_ARC_RIBS, CERVICAL, LUMBAR, SIDES, THORACIC, VERTEBRAE, class_of
from bonescan.anatomy import REGIONS as REGIONS
from bonescan.anatomy import RegionInfo as RegionInfo
from bonescan.anatomy import region_catalogue as region_catalogue
from bonescan.contract import IMAGE_HEIGHT, IMAGE_WIDTH
from bonescan.data import raster
from bonescan.data.raster import Patch

SHAPE = (IMAGE_HEIGHT, IMAGE_WIDTH)


@dataclass
class Part:
    region: str
    name: str
    patch: Patch
    uptake: float
    depth: tuple[float, float]  # visibility in (anterior, posterior) view


@dataclass
class Patient:
    """Who is on the table, and how they lie."""

    height_px: float
    top_px: float
    center_x: float
    tilt: float  # radians, whole body about the pelvis
    build: float  # 0.8 slim .. 1.4 heavy (soft tissue width and attenuation)
    shoulder: float  # shoulder-width factor ~1
    arm_abduction: tuple[float, float]  # radians (right, left)
    arm_pose: str  # "side" or "abdomen"
    elbow_flex: tuple[float, float]
    leg_spread: float  # radians
    scoliosis: float  # lateral amplitude in px (signed)
    age: int
    female: bool

    @staticmethod
    def sample(rng: np.random.Generator, pixel_mm: float) -> Patient:
        female = bool(rng.random() < 0.5)
        height_cm = float(np.clip(rng.normal(158 if female else 170, 7.5), 140, 195))
        h = min(height_cm * 10 / pixel_mm, IMAGE_HEIGHT - 20)
        top = float(rng.uniform(8, max(10.0, IMAGE_HEIGHT - h - 8)))
        pose = "abdomen" if rng.random() < 0.18 else "side"
        return Patient(
            height_px=h,
            top_px=top,
            center_x=IMAGE_WIDTH / 2 + float(rng.normal(0, 3)),
            tilt=float(rng.normal(0, 0.012)),
            build=float(np.clip(rng.normal(1.05, 0.15), 0.8, 1.45)),
            shoulder=float(np.clip(rng.normal(0.96 if female else 1.04, 0.04), 0.85, 1.15)),
            arm_abduction=(float(rng.uniform(0.03, 0.2)), float(rng.uniform(0.03, 0.2))),
            arm_pose=pose,
            elbow_flex=(float(rng.uniform(0.0, 0.25)), float(rng.uniform(0.0, 0.25))),
            leg_spread=float(rng.uniform(0.0, 0.06)),
            scoliosis=float(rng.normal(0, 5)) if rng.random() < 0.2 else 0.0,
            age=sample_age(rng),
            female=female,
        )


def sample_age(rng: np.random.Generator) -> int:
    """Age of a patient sent for a bone scan (mean 64, sd 11, 30-92 years); benign mimics depend on it."""
    return int(min(max(float(rng.normal(64, 11)), 30.0), 92.0))


@dataclass
class Skeleton:
    patient: Patient
    parts: list[Part] = field(default_factory=list)
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)  # (y, x) image px

    def region_parts(self, region: str) -> list[Part]:
        return [p for p in self.parts if p.region == region]

    def regions(self) -> set[str]:
        return {p.region for p in self.parts}


class _Frame:
    """Body coordinates (u = towards patient's left, v = down from the vertex) -> image (y, x)."""

    def __init__(self, p: Patient):
        self.h = p.height_px
        self.p = p
        self.vp = 0.5 * self.h  # rotate about the pelvis
        self.c, self.s = np.cos(p.tilt), np.sin(p.tilt)

    def __call__(self, u: float, v: float) -> tuple[float, float]:
        x = self.p.center_x + u * self.c + (v - self.vp) * self.s
        y = self.p.top_px + self.vp + (v - self.vp) * self.c - u * self.s
        return (y, x)

    def pts(self, uv: list[tuple[float, float]]) -> np.ndarray:
        return np.array([self(u, v) for u, v in uv], dtype=np.float32)


def _smooth_curve(points: list[tuple[float, float]], n: int = 12) -> list[tuple[float, float]]:
    """Quadratic-Bezier-through-midpoints smoothing of a control polygon."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        return [tuple(p) for p in pts]
    out = [pts[0]]
    for i in range(1, len(pts) - 1):
        a = (pts[i - 1] + pts[i]) / 2 if i > 1 else pts[0]
        b = pts[i]
        c = (pts[i] + pts[i + 1]) / 2 if i < len(pts) - 2 else pts[-1]
        for t in np.linspace(0, 1, n)[1:]:
            out.append((1 - t) ** 2 * a + 2 * (1 - t) * t * b + t * t * c)
    return [tuple(p) for p in out]


def build_skeleton(p: Patient, rng: np.random.Generator) -> Skeleton:
    """Draw every bone of one patient into coverage patches."""
    h = p.height_px
    F = _Frame(p)
    sk = Skeleton(p)
    jitter = lambda scale=1.0: float(rng.normal(0, 0.0025 * h * scale))  # noqa: E731

    def add(region: str, name: str, patch: Patch | None, uptake: float, depth: tuple[float, float]) -> None:
        if patch is not None and patch.data.max() > 0.5:
            sk.parts.append(Part(region, name, patch, uptake * float(rng.uniform(0.9, 1.1)), depth))

    # --- spine: vertebral bodies stacked along a (possibly scoliotic) midline
    v_c1, v_c7, v_t12, v_l5 = 0.108 * h, 0.172 * h, 0.378 * h, 0.474 * h
    centers: dict[str, float] = {}
    for i, name in enumerate(CERVICAL):
        centers[name] = v_c1 + (v_c7 - v_c1) * i / 6
    step_t = (v_t12 - v_c7) / 12
    for i, name in enumerate(THORACIC):
        centers[name] = v_c7 + step_t * (i + 1)
    step_l = (v_l5 - v_t12) / 5
    for i, name in enumerate(LUMBAR):
        centers[name] = v_t12 + step_l * (i + 1)

    def spine_u(v: float) -> float:
        if p.scoliosis == 0.0 or v < v_c7:
            return 0.0
        t = np.clip((v - v_c7) / (v_l5 - v_c7), 0, 1)
        return p.scoliosis * float(np.sin(np.pi * t))

    for name in VERTEBRAE:
        v = centers[name]
        kind = name[0]
        if kind == "C":
            half_w, half_h, upt = 0.0105 * h, 0.0042 * h, 0.75
        elif kind == "T":
            k = int(name[1:])
            half_w, half_h, upt = (0.0115 + 0.0006 * k) * h, 0.0068 * h, 0.9
        else:
            k = int(name[1:])
            half_w, half_h, upt = (0.02 + 0.001 * k) * h, 0.0082 * h, 1.0
        u = spine_u(v)
        c = F(u, v)
        body = raster.ellipse(c, (half_h, half_w * 0.78), -p.tilt, SHAPE)
        # posterior elements (pedicles / facets): two small blobs at the lateral margins
        pedicles = [raster.ellipse(F(u + sgn * half_w * 0.82, v), (half_h * 0.55, half_w * 0.28), 0.0, SHAPE) for sgn in (-1, 1)]
        add(name, "body", raster.union([body]), upt, (0.55, 1.0))
        add(name, "posterior_elements", raster.union(pedicles), upt * 0.9, (0.35, 1.0))
        sk.landmarks[name] = c

    # --- sacrum (inverted triangle) and sacroiliac joints
    v_s1 = v_l5 + 0.018 * h
    sac = raster.polyline(F.pts([(0, v_s1), (0, v_s1 + 0.065 * h)]), np.array([0.032, 0.01]) * h, SHAPE)
    add("sacrum", "body", sac, 0.95, (0.5, 1.0))
    sk.landmarks["sacrum"] = F(0, v_s1 + 0.025 * h)

    # --- skull: calvarium ring + face, mandible
    head_c = (0.0, 0.056 * h)
    hr = (0.056 * h, 0.046 * h)
    calv = raster.ring(F(*head_c), hr, 0.012 * h, SHAPE)
    vault = raster.ellipse(F(*head_c), (0.05 * h, 0.04 * h), 0.0, SHAPE)
    face = raster.ellipse(F(0, 0.088 * h), (0.02 * h, 0.028 * h), 0.0, SHAPE)
    add("skull", "calvarium", calv, 0.75, (0.9, 0.9))
    add("skull", "vault", vault, 0.3, (0.9, 0.9))
    add("skull", "face", face, 0.35, (0.8, 0.5))
    mand = raster.polyline(F.pts(_smooth_curve([(-0.036 * h, 0.09 * h), (-0.03 * h, 0.124 * h), (0, 0.13 * h), (0.03 * h, 0.124 * h), (0.036 * h, 0.09 * h)], 6)), 0.004 * h, SHAPE)
    add("mandible", "body", mand, 0.55, (0.9, 0.5))
    sk.landmarks["skull"] = F(*head_c)

    # --- sternum
    v_notch = 0.186 * h
    manub = raster.ellipse(F(0, v_notch + 0.018 * h), (0.017 * h, 0.017 * h), 0.0, SHAPE)
    st_body = raster.polyline(F.pts([(0, v_notch + 0.035 * h), (0, v_notch + 0.115 * h)]), np.array([0.011, 0.008]) * h, SHAPE)
    add("sternum", "manubrium", manub, 0.9, (1.0, 0.4))
    add("sternum", "body", st_body, 0.85, (1.0, 0.4))
    sk.landmarks["sternum"] = F(0, v_notch + 0.05 * h)

    sw = p.shoulder
    for side in SIDES:
        sg = 1.0 if side == "L" else -1.0  # +u is the patient's left (image right)
        # --- ribs 1-12: posterior arc (from the spine, out and down) and anterior arc (back towards the sternum)
        for i in range(1, 13):
            v0 = centers[f"T{i}"]
            u0 = spine_u(v0) + sg * 0.012 * h
            width = [0.048, 0.064, 0.074, 0.081, 0.086, 0.089, 0.091, 0.092, 0.091, 0.087, 0.075, 0.06][i - 1] * h * (0.92 + 0.08 * p.build) * (0.5 + 0.5 * sw)
            drop_post = (0.01 + 0.0018 * i) * h
            apex = (sg * width, v0 + drop_post + 0.008 * h)
            post_ctrl = [(u0, v0), (u0 + sg * 0.45 * width, v0 + 0.35 * drop_post), (sg * 0.92 * width, v0 + 0.85 * drop_post), apex]
            r = 0.0034 * h if i > 1 else 0.004 * h
            post = raster.polyline(F.pts(_smooth_curve(post_ctrl, 8)), r, SHAPE)
            add(f"rib_{side}{i}", "posterior", post, 0.5, (0.4, 1.0))
            if i <= ANTERIOR_ARC_RIBS:
                # anterior arcs end at the costal cartilage (no uptake) short of the sternum
                end_u = sg * (0.03 + 0.004 * i) * h
                end_v = v0 + (0.036 + 0.0045 * i) * h if i <= 7 else v0 + (0.05 + 0.002 * i) * h
                mid = (sg * 0.8 * width, 0.5 * (apex[1] + end_v) + 0.01 * h)
                ant_ctrl = [apex, (sg * 0.98 * width, apex[1] + 0.015 * h), mid, (end_u, end_v)]
                ant = raster.polyline(F.pts(_smooth_curve(ant_ctrl, 8)), r * 0.95, SHAPE)
                add(f"rib_{side}{i}", "anterior", ant, 0.45, (1.0, 0.4))
            sk.landmarks[f"rib_{side}{i}"] = F(*apex)

        # --- clavicle
        acromion = (sg * 0.112 * h * sw, 0.178 * h)
        clav = raster.polyline(F.pts(_smooth_curve([(sg * 0.014 * h, v_notch), (sg * 0.05 * h * sw, 0.181 * h), (sg * 0.085 * h * sw, 0.172 * h), acromion], 6)), 0.0045 * h, SHAPE)
        add(f"clavicle_{side}", "body", clav, 0.65, (1.0, 0.45))
        sk.landmarks[f"clavicle_{side}"] = F(sg * 0.06 * h * sw, 0.179 * h)

        # --- scapula: medial border, lateral border, spine of the scapula
        sup = (sg * 0.062 * h * sw, 0.188 * h)
        inf = (sg * 0.072 * h * sw, 0.292 * h + jitter())
        glen = (sg * 0.105 * h * sw, 0.2 * h)
        scap = raster.union([
            raster.polyline(F.pts([sup, inf]), 0.004 * h, SHAPE),
            raster.polyline(F.pts([inf, glen]), 0.0045 * h, SHAPE),
            raster.polyline(F.pts([(sg * 0.064 * h * sw, 0.205 * h), (sg * 0.108 * h * sw, 0.183 * h)]), 0.004 * h, SHAPE),
            raster.ellipse(F(*glen), (0.011 * h, 0.007 * h), 0.0, SHAPE),
        ])
        add(f"scapula_{side}", "body", scap, 0.5, (0.35, 1.0))
        sk.landmarks[f"scapula_{side}"] = F(sg * 0.075 * h * sw, 0.24 * h)

        # --- humerus, forearm, hand
        ab = p.arm_abduction[0 if side == "R" else 1]
        head = (sg * 0.118 * h * sw, 0.196 * h)
        L_hum = 0.186 * h
        elbow = (head[0] + sg * L_hum * np.sin(ab) + sg * 0.01 * h, head[1] + L_hum * np.cos(ab))
        hum_prox_end = (head[0] + (elbow[0] - head[0]) * 0.25, head[1] + (elbow[1] - head[1]) * 0.25)
        hum_dist_start = (head[0] + (elbow[0] - head[0]) * 0.8, head[1] + (elbow[1] - head[1]) * 0.8)
        add(f"humerus_{side}_proximal", "head", raster.union([
            raster.ellipse(F(*head), (0.017 * h, 0.015 * h), 0.0, SHAPE),
            raster.polyline(F.pts([head, hum_prox_end]), 0.0065 * h, SHAPE)]), 0.7, (0.85, 0.85))
        add(f"humerus_{side}_shaft", "shaft", raster.polyline(F.pts([hum_prox_end, hum_dist_start]), 0.0055 * h, SHAPE), 0.45, (0.85, 0.85))
        add(f"humerus_{side}_distal", "condyles", raster.polyline(F.pts([hum_dist_start, elbow]), np.array([0.006, 0.01]) * h, SHAPE), 0.6, (0.85, 0.85))
        sk.landmarks[f"elbow_{side}"] = F(*elbow)
        L_fa = 0.146 * h
        flex = p.elbow_flex[0 if side == "R" else 1]
        if p.arm_pose == "abdomen":
            ang = -sg * (0.9 + flex)  # forearm turned inward over the abdomen
        else:
            ang = sg * (ab * 0.6 + 0.02) - sg * flex * 0.5
        wrist = (elbow[0] + L_fa * np.sin(ang), elbow[1] + L_fa * np.cos(ang))
        perp = np.array([np.cos(ang), -np.sin(ang)]) * 0.0075 * h
        radius_b = raster.polyline(F.pts([(elbow[0] + perp[0], elbow[1] + perp[1]), (wrist[0] + perp[0], wrist[1] + perp[1])]), 0.0035 * h, SHAPE)
        ulna_b = raster.polyline(F.pts([(elbow[0] - perp[0], elbow[1] - perp[1]), (wrist[0] - perp[0], wrist[1] - perp[1])]), 0.0032 * h, SHAPE)
        add(f"forearm_{side}", "radius_ulna", raster.union([radius_b, ulna_b]), 0.45, (0.85, 0.85))
        hand_c = (wrist[0] + 0.04 * h * np.sin(ang), wrist[1] + 0.04 * h * np.cos(ang))
        hand = raster.union([
            raster.ellipse(F(*wrist), (0.01 * h, 0.013 * h), ang, SHAPE),
            raster.ellipse(F(*hand_c), (0.03 * h, 0.016 * h), -ang, SHAPE),
        ])
        add(f"hand_{side}", "hand", hand, 0.35, (0.8, 0.8))
        sk.landmarks[f"wrist_{side}"] = F(*wrist)
        sk.landmarks[f"hand_{side}"] = F(*hand_c)
        sk.landmarks[f"shoulder_{side}"] = F(*head)
        sk.landmarks[f"antecubital_{side}"] = F(elbow[0], elbow[1] - 0.01 * h)

        # --- pelvis: ilium (wing), ischium, pubis
        si = (sg * 0.028 * h, v_s1 + 0.012 * h)
        crest = (sg * 0.085 * h, 0.432 * h)
        wing_lat = (sg * 0.104 * h, 0.468 * h)
        acet = (sg * 0.075 * h, 0.525 * h)
        ilium = raster.union([
            raster.polyline(F.pts(_smooth_curve([si, (sg * 0.05 * h, 0.44 * h), crest, wing_lat, (sg * 0.095 * h, 0.5 * h), acet], 6)), 0.007 * h, SHAPE),
        ])
        fan = raster.ellipse(F(sg * 0.068 * h, 0.472 * h), (0.028 * h, 0.024 * h), sg * 0.4, SHAPE)
        add(f"ilium_{side}", "rim", ilium, 0.62, (0.7, 1.0))
        add(f"ilium_{side}", "wing", fan, 0.3, (0.7, 1.0))
        add(f"ilium_{side}", "sacroiliac", raster.polyline(F.pts([si, (sg * 0.035 * h, v_s1 + 0.045 * h)]), 0.0065 * h, SHAPE), 1.05, (0.5, 1.0))
        tuber = (sg * 0.058 * h, 0.578 * h)
        add(f"ischium_{side}", "body", raster.polyline(F.pts([acet, (sg * 0.066 * h, 0.555 * h), tuber]), np.array([0.008, 0.007, 0.008]) * h, SHAPE), 0.7, (0.8, 0.9))
        sym = (sg * 0.008 * h, 0.548 * h)
        pubis = raster.union([
            raster.polyline(F.pts([(sg * 0.063 * h, 0.53 * h), (sg * 0.03 * h, 0.535 * h), sym]), 0.0055 * h, SHAPE),
            raster.polyline(F.pts([sym, (sg * 0.025 * h, 0.572 * h), tuber]), 0.0045 * h, SHAPE),
        ])
        add(f"pubis_{side}", "rami", pubis, 0.7, (0.95, 0.6))
        sk.landmarks[f"ilium_{side}"] = F(sg * 0.07 * h, 0.47 * h)
        sk.landmarks[f"acetabulum_{side}"] = F(*acet)

        # --- leg: femur, patella, tibia, fibula, foot
        spread = p.leg_spread
        fh = (sg * 0.075 * h, 0.527 * h)
        troch = (sg * 0.102 * h, 0.548 * h)
        knee = (sg * (0.052 * h + 0.22 * h * np.sin(spread)), 0.728 * h)
        shaft_top = (sg * 0.094 * h, 0.56 * h)
        prox_end = (shaft_top[0] + (knee[0] - shaft_top[0]) * 0.12, shaft_top[1] + (knee[1] - shaft_top[1]) * 0.12)
        dist_start = (shaft_top[0] + (knee[0] - shaft_top[0]) * 0.78, shaft_top[1] + (knee[1] - shaft_top[1]) * 0.78)
        add(f"femur_{side}_proximal", "head_neck", raster.union([
            raster.ellipse(F(*fh), (0.0135 * h, 0.0135 * h), 0.0, SHAPE),
            raster.polyline(F.pts([fh, troch]), 0.0075 * h, SHAPE),
            raster.polyline(F.pts([troch, shaft_top, prox_end]), np.array([0.011, 0.0085, 0.0075]) * h, SHAPE),
        ]), 0.75, (0.8, 0.8))
        add(f"femur_{side}_shaft", "shaft", raster.polyline(F.pts([prox_end, dist_start]), 0.007 * h, SHAPE), 0.45, (0.8, 0.8))
        add(f"femur_{side}_distal", "condyles", raster.polyline(F.pts([dist_start, knee]), np.array([0.0075, 0.0145]) * h, SHAPE), 0.75, (0.85, 0.8))
        add(f"patella_{side}", "body", raster.ellipse(F(knee[0], knee[1] - 0.01 * h), (0.009 * h, 0.008 * h), 0.0, SHAPE), 0.6, (1.0, 0.3))
        ankle = (knee[0] + sg * 0.225 * h * np.sin(spread) - sg * 0.006 * h, 0.955 * h)
        tib_top = (knee[0], knee[1] + 0.016 * h)
        add(f"tibia_{side}", "body", raster.polyline(F.pts([tib_top, (ankle[0], ankle[1] - 0.005 * h)]), np.array([0.012, 0.0075]) * h, SHAPE), 0.55, (0.95, 0.7))
        fib = raster.polyline(F.pts([(tib_top[0] + sg * 0.016 * h, tib_top[1] + 0.006 * h), (ankle[0] + sg * 0.017 * h, ankle[1])]), 0.0033 * h, SHAPE)
        add(f"fibula_{side}", "body", fib, 0.4, (0.7, 0.9))
        foot = raster.union([
            raster.ellipse(F(ankle[0], ankle[1] + 0.012 * h), (0.012 * h, 0.017 * h), 0.0, SHAPE),
            raster.ellipse(F(ankle[0] + sg * 0.006 * h, ankle[1] + 0.03 * h), (0.016 * h, 0.014 * h), 0.0, SHAPE),
        ])
        add(f"foot_{side}", "tarsals", foot, 0.55, (0.8, 0.8))
        sk.landmarks[f"knee_{side}"] = F(*knee)
        sk.landmarks[f"ankle_{side}"] = F(*ankle)
        sk.landmarks[f"hip_{side}"] = F(*fh)
        sk.landmarks[f"kidney_{side}"] = F(sg * 0.048 * h, (0.395 if side == "L" else 0.405) * h)

    sk.landmarks["bladder"] = F(0, 0.522 * h)
    sk.landmarks["spine_mid"] = F(0, 0.3 * h)
    sk.landmarks["_frame"] = (float(h), float(p.tilt))
    return sk


def soft_tissue(p: Patient) -> np.ndarray:
    """Body outline thickness map (arbitrary units) for soft-tissue background uptake."""
    h = p.height_px
    F = _Frame(p)
    img = np.zeros(SHAPE, dtype=np.float32)
    b = p.build
    raster.paste(img, raster.ellipse(F(0, 0.062 * h), (0.068 * h, 0.054 * h), 0.0, SHAPE), 0.8)
    raster.paste(img, raster.polyline(F.pts([(0, 0.12 * h), (0, 0.17 * h)]), 0.035 * h, SHAPE), 0.8)
    torso = raster.polyline(
        F.pts([(0, 0.19 * h), (0, 0.3 * h), (0, 0.42 * h), (0, 0.52 * h)]),
        np.array([0.11 * p.shoulder, 0.095 * b, 0.09 * b, 0.1 * b]) * h,
        SHAPE,
    )
    raster.paste(img, torso, 1.2 * b)
    for side, sg in (("R", -1.0), ("L", 1.0)):
        ab = p.arm_abduction[0 if side == "R" else 1]
        head = (sg * 0.118 * h * p.shoulder, 0.196 * h)
        elbow = (head[0] + sg * 0.186 * h * np.sin(ab) + sg * 0.01 * h, head[1] + 0.186 * h * np.cos(ab))
        raster.paste(img, raster.polyline(F.pts([head, elbow]), 0.026 * h * b, SHAPE), 0.6)
        knee = (sg * (0.052 * h + 0.22 * h * np.sin(p.leg_spread)), 0.728 * h)
        raster.paste(img, raster.polyline(F.pts([(sg * 0.06 * h, 0.52 * h), knee, (knee[0], 0.95 * h)]), np.array([0.045 * b, 0.03, 0.022]) * h, SHAPE), 0.7)
    return img


#: a pixel belongs to a part where the part covers at least this much of it (the lesion mask's rule too)
LABEL_COVERAGE = 0.5


def region_labels(sk: Skeleton) -> np.ndarray:
    """uint8 [2, H, W]: the region class each view shows at each pixel, in the model frame.

    Both channels are drawn in the anterior frame (the posterior view mirrored, as the model sees it).
    Where parts overlap, the one adding the most counts in that view (coverage x uptake x visibility)
    names the pixel; ties go to the part drawn first. Deterministic in the skeleton: no random draw.
    """
    out = np.zeros((2, *SHAPE), np.uint8)
    best = np.zeros((2, *SHAPE), np.float32)
    for part in sk.parts:
        cls = class_of(part.region, part.name)
        p = part.patch
        cover = p.data >= LABEL_COVERAGE
        for v in range(2):
            score = p.data * np.float32(part.uptake * part.depth[v])
            b = best[v, p.y0 : p.y1, p.x0 : p.x1]
            win = cover & (score > b)
            b[win] = score[win]
            out[v, p.y0 : p.y1, p.x0 : p.x1][win] = cls
    return out
