"""Report writers the model never trained on, for ``bench text-gain``: the same facts, written elsewhere.

* :func:`traditional`: a Taiwan or Hong Kong hospital's report, the case's in-style report in
  traditional characters (OpenCC ``s2tw`` / ``s2hk``).
* :func:`shorthand`: a bilingual shorthand report of the kind Chinese nuclear-medicine physicians
  type in a hurry, impression first, English abbreviations for bones and verdicts (``T7, L3``,
  ``Rt 5th rib post.``, ``c/w mets``, ``DJD``), written from the case's ground truth (meta.json) by
  this module alone, never by the generator's house styles.
* :func:`nonreports`: texts that are no report (``nonreports.txt`` beside this file), in other
  words than the training generator's (bonescan.data.nonreport).
* :data:`NEGATIVES`: explicit negative statements in wording the house styles never use.

None of these is used in training or calibration.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

FOLDER = Path(__file__).resolve().parent
NONREPORTS_FILE = FOLDER / "nonreports.txt"

#: explicit negative statements, none of them a sentence of the training house styles
NEGATIVES = (
    "骨显像阴性。",
    "全身骨扫描未发现转移性病灶，骨转移可除外。",
    "全身骨骼放射性分布均匀对称，未发现骨转移证据。",
    "No evidence of osseous metastatic disease.",
    "Bone scan negative for metastases.",
    "印象：全身骨骼未见转移性病变。",
    "ECT：未见骨转移。",
    "NED.",
)


@lru_cache(maxsize=4)
def _converter(config: str):
    import opencc

    return opencc.OpenCC(config)


def traditional(text: str, region: str = "tw") -> str:
    """A simplified-character report in the traditional characters of Taiwan (``tw``) or Hong Kong (``hk``)."""
    return _converter(f"s2{region}").convert(text)


_SIDE = {"R": ("Rt", "R", "right"), "L": ("Lt", "L", "left")}
_ORD = {1: "1st", 2: "2nd", 3: "3rd"}
_BONE = {"skull": "skull", "mandible": "mandible", "sacrum": "sacrum", "sternum": "sternum", "clavicle": "clavicle",
         "scapula": "scapula", "ilium": "iliac bone", "ischium": "ischium", "pubis": "pubic bone", "patella": "patella",
         "tibia": "tibia", "fibula": "fibula", "forearm": "forearm", "hand": "hand", "foot": "foot", "humerus": "humerus",
         "femur": "femur"}
_SEGMENT = {"proximal": "prox.", "shaft": "shaft", "distal": "dist."}
_BENIGN = {"degenerative_knee": ("knees", "DJD"), "degenerative_shoulder": ("shoulders", "DJD"),
           "facet_arthropathy": ("lumbar facets", "DJD"), "cervical_spondylosis": ("C-spine", "spondylosis"),
           "rib_fracture": ("ribs", "old fx"), "compression_fracture": ("spine", "compression fx"),
           "arthritis_hand": ("hands", "arthritis"), "arthritis_foot": ("feet", "arthritis"),
           "sternoclavicular": ("SC joints", "DJD")}


def _ordinal(n: int) -> str:
    return _ORD.get(n, f"{n}th")


def _place(region: str, arc: str, rng: np.random.Generator) -> str:
    from bonescan.data.atlas import REGIONS

    info = REGIONS[region]
    if info.group in ("cervical", "thoracic", "lumbar"):
        return region
    side = str(rng.choice(_SIDE[info.side])) + " " if info.side else ""
    if info.group == "rib":
        arc_s = {"anterior": " ant.", "posterior": " post."}.get(arc, "")
        return f"{side}{_ordinal(info.index)} rib{arc_s}"
    name = _BONE.get(info.group, info.group)
    seg = f" {_SEGMENT[info.segment]}" if info.segment else ""
    return f"{side}{name}{seg}"


def shorthand(meta: dict[str, Any], seed: int) -> str:
    """A bilingual shorthand report of a synthetic case (its meta.json), impression first."""
    from bonescan.data.report import findings_from_meta

    rng = np.random.default_rng(seed)
    mets, benign, _, _, _ = findings_from_meta(meta)
    places = list(dict.fromkeys(_place(f.regions[0], f.arc, rng) for f in mets))
    benign_txt = [f"{_BENIGN[b.kind][1]} {_BENIGN[b.kind][0]}" for b in benign if b.kind in _BENIGN]
    verdict = str(rng.choice(("c/w mets", "c/w bone mets", "suspicious for mets", "r/o mets")))
    if places:
        imp = f"IMP: {', '.join(places)} increased uptake, {verdict}."
        if len(places) > 5 and rng.random() < 0.5:
            imp = f"IMP: multiple bone mets ({', '.join(places[:4])} etc.)."
    else:
        imp = str(rng.choice(("IMP: NED.", "IMP: no evidence of bone mets.", "IMP: bone scan (-).")))
    if benign_txt:
        imp += " " + "; ".join(benign_txt) + "."
    findings = "WBBS 99mTc-MDP 3h: " + (f"focal uptake {', '.join(places)}." if places else "no abnormal uptake.")
    parts = [imp, findings]
    if rng.random() < 0.3:
        parts.append(str(rng.choice(("pls correlate w/ MRI.", "f/u 3 mo.", "建议结合CT."))))
    return "\n".join(parts)


def nonreports() -> list[str]:
    """The held-out texts that are no report: one per line of nonreports.txt (``\\n`` inside a line
    stands for a line break)."""
    lines = NONREPORTS_FILE.read_text(encoding="utf-8").splitlines()
    return [ln.replace("\\n", "\n") for ln in lines if ln.strip() and not ln.startswith("#")]
