"""The second reader's text side: which skeletal sites a report names as metastases, and how they match lesions.

A report names places in many ways (``T7`` / ``第7胸椎`` / ``胸7椎体`` / ``第七胸椎`` / ``胸椎7``; ``左侧第5肋`` /
``左第5肋`` / ``左5肋`` / ``左侧第五肋骨`` / ``左侧第4-6后肋``; ``右侧股骨上段`` / ``右股骨颈``; coarse groups such as
``脊柱`` / ``骨盆诸骨`` in reports of widespread disease). :data:`LEXICON` holds the words, built from the atlas's
catalogue (``bonescan.anatomy``: group names, sides, numbers) and their variants; :func:`report_sites` reads a
report with it after ``report_text.normalize_report`` (traditional characters, full-width digits and English
shorthand arrive as the training words).

Only places named *as metastases* count. Reports put a benign finding in the same findings sentence as a
metastasis (``左侧第5肋见点状放射性浓聚。``) and tell them apart in the impression (``左侧第5肋陈旧性骨折。`` /
``T7骨转移。``). So each sentence (``。；`` / a line / an impression item) is read as one of: *metastatic*
(a metastasis word, not negated and not ``非转移``), *benign* (a benign diagnosis word), *negative* (a
negation before the metastasis word: ``未见骨转移征象``) or *neutral* (an uptake with no verdict). The sites
are those of metastatic sentences plus those of neutral sentences that no benign sentence names. The places
of benign sentences, joints read as their bones (:data:`JOINT_WORDS`: ``右膝关节`` is the distal femur, tibia,
patella and fibula), are :func:`benign_sites`: a lesion there is ``called_benign``, not ``not_in_report``.

Matching a site to a lesion's region (:func:`site_matches`) allows one step: rib numbers within one on the
same side (arcs are not compared: most reports do not name them), vertebra levels within one along C1..L5
and the sacrum (a lesion at the lumbosacral junction is named either way), long-bone segments within one
(a site without a segment matches any); a coarse group matches every region in it; the skull matches the
mandible (vague reports say 颅骨 for both).

Pure Python (and ``report_text``'s OpenCC): the Triton python steps can carry it. Never logs report text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from bonescan.anatomy import CLASS_REGION, GROUP_ZH, N_REGION_CLASSES, REGIONS, SIDES, VERTEBRAE
from bonescan.report_text import normalize_report

# ----------------------------------------------------------------------------- the lexicon
ZH_NUMBERS = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10, "十一": 11,
              "十二": 12}
_NUM = r"(?:十[一二]?|[一二三四五六七八九]|\d{1,2})"
_TO = r"(?:[-~～至到—]|－)"
_LIST = rf"{_NUM}(?:{_TO}{_NUM})?(?:[、,，及和]{_NUM}(?:{_TO}{_NUM})?)*"
SEGMENT_ZH = {"C": "颈", "T": "胸", "L": "腰"}
_SEG_LETTER = {v: k for k, v in SEGMENT_ZH.items()}
#: spine order for ranges and for "within one level" (the sacrum after L5)
SPINE_ORDER = VERTEBRAE + ("sacrum",)
_SPINE_POS = {v: i for i, v in enumerate(SPINE_ORDER)}

#: Chinese words of the sided bones (the atlas's group names, GROUP_ZH, and their variants) -> group
SIDED_WORDS: dict[str, str] = {
    **{GROUP_ZH[g]: g for g in ("clavicle", "scapula", "ilium", "ischium", "pubis", "patella", "tibia", "fibula",
                                 "forearm", "humerus", "femur")},
    "髂骨翼": "ilium", "髂翼": "ilium", "坐骨结节": "ischium", "耻骨支": "pubis", "尺骨": "forearm", "桡骨": "forearm",
    "手部": "hand", "手": "hand", "腕骨": "hand", "足部": "foot", "足": "foot", "跗骨": "foot",
}
#: long-bone segment words -> segment (``股骨头颈部`` / ``股骨颈`` / ``肱骨头`` are proximal)
SEGMENT_WORDS: dict[str, str] = {
    "头颈部": "proximal", "头": "proximal", "颈": "proximal", "近端": "proximal", "近段": "proximal", "上段": "proximal",
    "上端": "proximal", "中段": "shaft", "骨干": "shaft", "干": "shaft", "中上段": "shaft", "中下段": "shaft",
    "下段": "distal", "远段": "distal", "远端": "distal", "下端": "distal",
}
#: midline bones
MIDLINE_WORDS: dict[str, str] = {
    "颅骨": "skull", "顶骨": "skull", "额骨": "skull", "枕骨": "skull", "颞骨": "skull", "颅盖骨": "skull",
    "下颌骨": "mandible", "胸骨体": "sternum", "胸骨柄": "sternum", "胸骨": "sternum", "骶骨": "sacrum", "骶椎": "sacrum",
}
#: coarse groups of reports of widespread disease -> the atlas groups they cover
COARSE_WORDS: dict[str, tuple[str, ...]] = {
    "脊柱": ("cervical", "thoracic", "lumbar"), "脊椎": ("cervical", "thoracic", "lumbar"),
    "骨盆诸骨": ("ilium", "ischium", "pubis", "sacrum"), "骨盆": ("ilium", "ischium", "pubis", "sacrum"),
    "四肢长骨": ("humerus", "forearm", "femur", "tibia", "fibula"),
    "四肢骨骼": ("humerus", "forearm", "hand", "femur", "patella", "tibia", "fibula", "foot"),
    "四肢骨": ("humerus", "forearm", "hand", "femur", "patella", "tibia", "fibula", "foot"),
    "肋骨": ("rib",), "锁骨": ("clavicle",), "肩胛骨": ("scapula",), "胸椎": ("thoracic",), "腰椎": ("lumbar",),
    "颈椎": ("cervical",),
}
#: joints -> the bones that form them (sided: "{s}" is the side; midline bones as they are). Benign findings are
#: written by joint (``右膝关节退行性变`` / ``双肩关节炎性改变`` / ``左腕关节炎``, an injection at ``肘窝``); they are read
#: in benign sentences only (:func:`benign_sites`), never as a metastatic site
JOINT_WORDS: dict[str, tuple[str, ...]] = {
    "肩锁关节": ("clavicle_{s}", "scapula_{s}"), "胸锁关节": ("clavicle_{s}", "sternum"),
    "肩关节": ("humerus_{s}_proximal", "scapula_{s}"), "肩部": ("humerus_{s}_proximal", "scapula_{s}"),
    "肩": ("humerus_{s}_proximal", "scapula_{s}"),
    "肘关节": ("humerus_{s}_distal", "forearm_{s}"), "肘窝": ("humerus_{s}_distal", "forearm_{s}"),
    "肘部": ("humerus_{s}_distal", "forearm_{s}"), "肘": ("humerus_{s}_distal", "forearm_{s}"),
    "腕关节": ("forearm_{s}", "hand_{s}"), "腕部": ("forearm_{s}", "hand_{s}"), "腕": ("forearm_{s}", "hand_{s}"),
    "手背": ("hand_{s}",), "手小关节": ("hand_{s}",),
    "骶髂关节": ("sacrum", "ilium_{s}"), "髋关节": ("femur_{s}_proximal", "ilium_{s}"), "髋": ("femur_{s}_proximal", "ilium_{s}"),
    "膝关节": ("femur_{s}_distal", "tibia_{s}", "patella_{s}", "fibula_{s}"),
    "膝": ("femur_{s}_distal", "tibia_{s}", "patella_{s}", "fibula_{s}"),
    "踝关节": ("tibia_{s}", "fibula_{s}", "foot_{s}"), "踝": ("tibia_{s}", "fibula_{s}", "foot_{s}"),
    "颞下颌关节": ("skull", "mandible"),
}
#: every word the parser knows, for the record (the patterns below use them)
LEXICON: dict[str, str] = {**{w: f"side+{g}" for w, g in SIDED_WORDS.items()}, **MIDLINE_WORDS,
                           **{w: "coarse:" + "+".join(gs) for w, gs in COARSE_WORDS.items()},
                           **{w: "joint:" + "+".join(bs) for w, bs in JOINT_WORDS.items()}}

# ----------------------------------------------------------------------------- verdict words
#: a metastasis (a hedge such as 不除外骨转移 still names the place as a metastasis)
METASTASIS_WORDS = ("转移", "恶性", "肿瘤浸润", "骨髓瘤")
#: benign diagnoses the house styles write (data.styles VOCABULARY and every style's dx; a test checks this)
BENIGN_WORDS = ("非转移", "良性", "退行性", "退变", "骨质增生", "骨关节病", "骨关节炎", "关节炎", "炎性", "炎症", "骨折",
                "外伤", "骨质疏松", "注射", "污染", "滞留", "生理性", "骨岛", "术后改变")
NEGATION_WORDS = ("未见", "无明显", "无明确", "未发现", "未显示", "无", "未")

_SENTENCE = re.compile(r"[。；;!！?？\n]|(?:^|(?<=[。；;\n]))\s*(?:\d+[.、．)]|[（(]\d+[)）]|[①-⑳])")
_SIDE = r"(?P<side>[左右双])(?:侧|边)?"


@dataclass(frozen=True)
class ReportSite:
    """One place a report names: an atlas region (``region``), or a coarse group of regions (``groups``)."""

    region: str = ""  # "T7", "rib_L5", "femur_R_proximal" ...; for a bone named without its segment, any of them
    groups: tuple[str, ...] = ()  # coarse: the atlas groups it covers (``region`` is "")
    segments: tuple[str, ...] = ()  # long bone named without a segment: every segment

    @property
    def label(self) -> str:
        return self.region or "group:" + "+".join(self.groups)


def _n(tok: str) -> int:
    return int(tok) if tok.isdigit() else ZH_NUMBERS[tok]


def _numbers(items: str) -> list[int]:
    """'5、7-9、十一' -> [5, 7, 8, 9, 11]."""
    out: list[int] = []
    for tok in re.split(r"[、,，及和]", items):
        ends = [e for e in re.split(_TO, tok) if e]
        if not ends:
            continue
        try:
            a, b = _n(ends[0]), _n(ends[-1])
        except (KeyError, ValueError):
            continue
        out.extend(range(a, b + 1) if b >= a else (a,))
    return out


def _sides(word: str) -> tuple[str, ...]:
    return {"左": ("L",), "右": ("R",), "双": SIDES}[word]


def _vertebrae(seg: str, nums: list[int]) -> list[str]:
    return [f"{seg}{k}" for k in nums if f"{seg}{k}" in _SPINE_POS]


_LETTER_RANGE = re.compile(rf"(?<![A-Za-z])([CTL])(\d{{1,2}})\s*{_TO}\s*([CTL])?(\d{{1,2}})(?!\d)")
_LETTER = re.compile(r"(?<![A-Za-z])([CTL])(\d{1,2})(?!\d)((?:[、,](?![CTL])\d{1,2}(?!\d))*)")
_SEG = re.compile(rf"([颈胸腰])椎?({_LIST})(?:椎体|椎)?")
_ORDINAL = re.compile(rf"第({_LIST})([颈胸腰])椎")
_SEG_ORDINAL = re.compile(rf"([颈胸腰])椎第({_LIST})[节椎]?")
_RIB = re.compile(rf"{_SIDE}(?:第)?(?P<nums>{_LIST})(?:[前后]肋|肋)")
_RIB_SIDE_ONLY = re.compile(rf"{_SIDE}肋")
_SIDED = re.compile(_SIDE + "(?P<bone>" + "|".join(sorted(SIDED_WORDS, key=len, reverse=True)) + ")(?P<seg>"
                    + "|".join(sorted(SEGMENT_WORDS, key=len, reverse=True)) + ")?")
_MIDLINE = re.compile("|".join(sorted(MIDLINE_WORDS, key=len, reverse=True)))
_JOINT = re.compile(f"(?:{_SIDE})?" + "(?P<joint>" + "|".join(sorted(JOINT_WORDS, key=len, reverse=True)) + ")")
_COARSE = re.compile("|".join(sorted(COARSE_WORDS, key=len, reverse=True)))


def sites_in(text: str, joints: bool = False) -> list[ReportSite]:
    """Every place a (normalised) piece of text names, in the order the patterns find them; a span read by one
    pattern is blanked so no other reads it again (``第7胸椎`` is not also ``胸椎``). ``joints``: also the bones of
    the joints it names (:data:`JOINT_WORDS`; a joint without a side is both sides'), read first."""
    found: list[ReportSite] = []
    buf = list(text)

    def take(m: re.Match) -> None:
        for i in range(m.start(), m.end()):
            buf[i] = "□"

    def scan(pattern: re.Pattern) -> list[re.Match]:
        ms = list(pattern.finditer("".join(buf)))
        for m in ms:
            take(m)
        return ms

    if joints:
        for m in scan(_JOINT):
            for side in _sides(m.group("side")) if m.group("side") else SIDES:
                for bone in JOINT_WORDS[m.group("joint")]:
                    site = ReportSite(bone.format(s=side))
                    if site not in found:
                        found.append(site)
    for m in scan(_LETTER_RANGE):  # T7-9, T7~T9, T12-L2
        a = _SPINE_POS[f"{m.group(1)}{m.group(2)}"] if f"{m.group(1)}{m.group(2)}" in _SPINE_POS else None
        end = f"{m.group(3) or m.group(1)}{m.group(4)}"
        b = _SPINE_POS.get(end)
        if a is not None and b is not None and b >= a:
            found.extend(ReportSite(v) for v in SPINE_ORDER[a : b + 1] if v != "sacrum")
    for m in scan(_LETTER):  # T7, T7、9
        found.extend(ReportSite(v) for v in _vertebrae(m.group(1), [int(m.group(2))] + _numbers(m.group(3) or "")))
    for pattern, seg_group, num_group in ((_ORDINAL, 2, 1), (_SEG_ORDINAL, 1, 2), (_SEG, 1, 2)):
        for m in scan(pattern):
            found.extend(ReportSite(v) for v in _vertebrae(_SEG_LETTER[m.group(seg_group)], _numbers(m.group(num_group))))
    for m in scan(_RIB):
        for s in _sides(m.group("side")):
            found.extend(ReportSite(f"rib_{s}{k}") for k in _numbers(m.group("nums")) if 1 <= k <= 12)
    for m in scan(_SIDED):
        group = SIDED_WORDS[m.group("bone")]
        for s in _sides(m.group("side")):
            if group in ("humerus", "femur"):
                seg = SEGMENT_WORDS.get(m.group("seg") or "")
                segs = (seg,) if seg else ("proximal", "shaft", "distal")
                found.append(ReportSite(f"{group}_{s}_{segs[0]}", segments=segs if not seg else ()))
            else:
                found.append(ReportSite(f"{group}_{s}"))
    found.extend(ReportSite(groups=("rib",)) for _ in scan(_RIB_SIDE_ONLY))  # 左侧肋骨: the side's ribs
    for m in scan(_MIDLINE):
        found.append(ReportSite(MIDLINE_WORDS[m.group(0)]))
    for m in scan(_COARSE):
        found.append(ReportSite(groups=COARSE_WORDS[m.group(0)]))
    return found


def verdict(sentence: str) -> str:
    """``metastatic`` / ``benign`` / ``negative`` / ``neutral`` (see the module docstring)."""
    if any(w in sentence for w in BENIGN_WORDS):
        return "benign"
    k = min((i for i in (sentence.find(w) for w in METASTASIS_WORDS) if i >= 0), default=-1)
    if k < 0:
        return "neutral"
    return "negative" if any(0 <= sentence.find(w) < k for w in NEGATION_WORDS) else "metastatic"


def sentences(normalized: str) -> list[str]:
    """A normalised report cut into sentences and impression items."""
    return [s for s in _SENTENCE.split(normalized) if s and s.strip()]


def report_sites(report: str, normalized: bool = False) -> list[ReportSite]:
    """The places a report names as metastases, each once, in report order.

    Args:
        report: the report text (any script; normalised here unless ``normalized``).
        normalized: the text is already ``report_text.normalize_report``'s output.
    """
    text = report if normalized else normalize_report(report)
    text = re.sub(r"[ \t\u3000]+", "", text or "")
    read = [(verdict(s), sites_in(s)) for s in sentences(text)]
    benign = {site for v, ss in read if v == "benign" for site in ss}
    out: list[ReportSite] = []
    for v, ss in read:
        for site in ss:
            if (v == "metastatic" or (v == "neutral" and site not in benign)) and site not in out:
                out.append(site)
    return out


def benign_sites(report: str, normalized: bool = False) -> list[ReportSite]:
    """The places a report calls benign (its benign sentences' sites, joints included: ``右膝关节退行性变``,
    ``左侧第5肋陈旧性骨折``, ``肘窝注射点``), each once. A coarse group there (``骨盆外侧软组织...尿液污染``)
    names no bone and is left out: it would excuse every lesion of the pelvis."""
    text = report if normalized else normalize_report(report)
    text = re.sub(r"[ \t\u3000]+", "", text or "")
    out: list[ReportSite] = []
    for s in sentences(text):
        if verdict(s) == "benign":
            out.extend(site for site in sites_in(s, joints=True) if not site.groups and site not in out)
    return out


# ----------------------------------------------------------------------------- matching
_SEGMENT_POS = {"proximal": 0, "shaft": 1, "distal": 2}


def site_matches(site: ReportSite, region: str) -> bool:
    """Whether a report's site names a lesion in atlas ``region`` (the tolerance of the module docstring)."""
    if not region:
        return False
    info = REGIONS[region]
    if site.groups:
        return info.group in site.groups
    if site.region == region:
        return True
    s = REGIONS[site.region]
    if s.group == "skull" and info.group == "mandible":
        return True
    if s.group == "rib" and info.group == "rib":
        return s.side == info.side and abs(s.index - info.index) <= 1
    if site.region in _SPINE_POS and region in _SPINE_POS:
        return abs(_SPINE_POS[site.region] - _SPINE_POS[region]) <= 1
    if s.group == info.group and s.side == info.side and s.segment and info.segment:
        return bool(site.segments) or abs(_SEGMENT_POS[s.segment] - _SEGMENT_POS[info.segment]) <= 1
    return False


def _names_exactly(site: ReportSite, region: str) -> bool:
    """``site`` names ``region`` itself (a long bone named without its segment: any segment), without
    :func:`site_matches`' step to a neighbour: what a benign place excuses (a metastasis in the next vertebra
    or rib is not the degenerative facet or the old fracture the report explained)."""
    if not region or site.groups:
        return False
    if site.region == region:
        return True
    s, info = REGIONS[site.region], REGIONS[region]
    return bool(site.segments) and s.group == info.group and s.side == info.side


#: the least mean probability (LESIONS ``mean_probability``) at which a lesion the report neither names nor calls
#: benign is flagged ``not_in_report``; a less certain one is ``uncertain``. ``bench second-reader`` chooses it on
#: half of a data set with lesions left out of the reports (precision >= 0.9 there, then the most recall) and scores
#: it on the other half; 0.92 is the strictest of its choices for make demo's checkpoint and the 3 grounding seeds'
#: (0.9 / 0.9 / 0.8 / 0.92; README, "The second reader on the model's answers"): the model's small, faint false
#: positives are what made the flag cry wolf
FLAG_CONFIDENCE = 0.92

#: a lesion's flags, in the order :meth:`SecondRead.flag` tries them
LESION_FLAGS = ("in_report", "called_benign", "uncertain", "not_in_report")


@dataclass(frozen=True)
class SecondRead:
    """Each lesion in the report, called benign by it, too uncertain to flag, or a finding the report may have
    missed; each metastatic site of the report found on the scan or not."""

    in_report: tuple[bool, ...]  # per lesion, in the order given: at a place the report names as a metastasis
    found: tuple[bool, ...]  # per report site, in the order given
    sites: tuple[ReportSite, ...]
    #: per lesion: not in the report as a metastasis, but at a place the report calls benign (a disagreement
    #: to look at, not a finding the report left out); empty: no benign places were read
    called_benign: tuple[bool, ...] = ()
    #: per lesion: below the flag's confidence (empty: every lesion is confident enough)
    uncertain: tuple[bool, ...] = ()

    def flag(self, k: int) -> str:
        """Lesion ``k``'s flag (:data:`LESION_FLAGS`)."""
        if self.in_report[k]:
            return "in_report"
        if self.called_benign and self.called_benign[k]:
            return "called_benign"
        return "uncertain" if self.uncertain and self.uncertain[k] else "not_in_report"

    @property
    def not_in_report(self) -> tuple[bool, ...]:
        """Per lesion: a confident finding the report may have missed (neither named as a metastasis nor called
        benign)."""
        return tuple(self.flag(k) == "not_in_report" for k in range(len(self.in_report)))

    def to_dict(self) -> dict:
        return {"lesions": [self.flag(k) for k in range(len(self.in_report))],
                "report_sites": [{"site": s.label, "flag": "found" if f else "not_found"}
                                 for s, f in zip(self.sites, self.found, strict=True)]}


def second_read(lesion_regions: Sequence[str | Sequence[str]], sites: list[ReportSite],
                benign: Sequence[ReportSite] = (), confidence: Sequence[float] | None = None,
                min_confidence: float = 0.0) -> SecondRead:
    """Match lesions with a report's sites.

    Args:
        lesion_regions: per lesion its atlas region ("" for a lesion on no labelled bone), or the regions it
            may be in (``anatomy.LesionSite.candidates``: where bones overlap in projection, any of them may
            be the one the report names).
        sites: the report's metastatic sites (:func:`report_sites`).
        benign: the places the report calls benign (:func:`benign_sites`): a lesion in one of them (that bone itself,
            no step to a neighbour) that no metastatic site names is ``called_benign``, not ``not_in_report``.
        confidence: per lesion its mean probability (None: true lesions, always confident).
        min_confidence: a lesion below it is ``uncertain``, not flagged (:data:`FLAG_CONFIDENCE`).

    A vague report's coarse groups mark the lesions in them as in the report, and are found when one lesion
    lies in them, however uncertain. A lesion on no bone is never in the report (nothing names it).
    """
    cands = [(r,) if isinstance(r, str) else tuple(r) for r in lesion_regions]
    in_report = tuple(any(site_matches(s, r) for s in sites for r in rs) for rs in cands)
    found = tuple(any(site_matches(s, r) for rs in cands for r in rs) for s in sites)
    called = tuple(not ok and any(_names_exactly(b, r) for b in benign for r in rs) for ok, rs in zip(in_report, cands, strict=True))
    unsure: tuple[bool, ...] = ()
    if confidence is not None:
        if len(confidence) != len(cands):
            raise ValueError(f"confidence: {len(confidence)} values for {len(cands)} lesions")
        unsure = tuple(float(c) < min_confidence for c in confidence)
    return SecondRead(in_report, found, tuple(sites), called if benign else (), unsure)


def named_classes(report: str, exact: bool = False) -> np.ndarray:
    """bool [N_REGION_CLASSES]: the region classes (``anatomy.REGION_CLASSES``) a report names as metastatic,
    with :func:`site_matches`' tolerance (rib and vertebra numbers within one; a coarse group covers its
    bones); all False for an empty report or one that names no metastatic site. The named-place prior.
    ``exact``: the bones it names themselves, no neighbour (a coarse group still covers its bones; a long
    bone without its segment, every segment): the tokenizer's ``report_named``, which names lesions."""
    places = place_classes(report)
    return places.exact if exact else places.wide


class PlaceClasses(NamedTuple):
    """A report's places as region-class flags (bool [N_REGION_CLASSES] each), from one reading of it: what the
    tokenizer sends (contract.REPORT_PLACES)."""

    wide: np.ndarray  #: named as metastatic, neighbours within one (:func:`named_classes`; report_regions)
    exact: np.ndarray  #: named as metastatic itself (``named_classes(exact=True)``; report_named)
    benign: np.ndarray  #: called benign, the bone itself (:func:`benign_sites`, :func:`_names_exactly`; report_benign)


def place_classes(report: str) -> PlaceClasses:
    """:func:`named_classes`, ``named_classes(exact=True)`` and the bones the report calls benign, from one
    reading of the report."""
    text = normalize_report(report)
    sites, benign = report_sites(text, normalized=True), benign_sites(text, normalized=True)
    wide, exact, calm = (np.zeros(N_REGION_CLASSES, bool) for _ in range(3))
    for c in range(1, N_REGION_CLASSES) if sites or benign else ():
        r = CLASS_REGION[c]
        wide[c] = any(site_matches(s, r) for s in sites)
        exact[c] = wide[c] and any(site_matches(s, r) if s.groups else _names_exactly(s, r) for s in sites)
        calm[c] = any(_names_exactly(b, r) for b in benign)
    return PlaceClasses(wide, exact, calm)


def called_benign_classes(candidates: Sequence[Sequence[str]], wide: np.ndarray, benign: np.ndarray) -> list[bool]:
    """Per lesion (its candidate regions: ``anatomy.LesionSite.candidates``): at a bone the report calls benign
    and in none it names as metastatic: :func:`second_read`'s ``called_benign`` from the tokenizer's class flags
    (``wide``: report_regions, ``benign``: report_benign), which is what postprocess has (the client reads the
    report itself). The Bone Scan Index leaves these lesions out (postprocess.lesions_of)."""
    named, calm = flagged_regions(wide), flagged_regions(benign)
    return [not any(r in named for r in rs) and any(r in calm for r in rs) for rs in candidates]


def flagged_regions(*flags: np.ndarray) -> set[str]:
    """The atlas regions of the classes flagged (> 0) in any of ``flags`` ([N_REGION_CLASSES] each: the tokenizer's
    report_regions, report_named or report_benign)."""
    return {CLASS_REGION[c] for f in flags for c in np.flatnonzero(np.asarray(f) > 0)}
