"""Chinese bone-scan reports written the way Chinese nuclear-medicine reports read.

A report has a findings section and an impression section, written in one of several hospital
house styles (``styles.py``): the headers (检查所见 / 影像所见 / 【检查所见】 / 描述 / 所见 or none), the
method line, the words for uptake (放射性浓聚 / 核素浓集 / 显像剂分布增多 / 骨代谢活跃 / 异常热区), how T7
and the ribs are named (T7 / 胸7 / 胸椎7 / 第7胸椎 / 第七胸椎, 左侧第5肋 / 左第五后肋 / 左5肋), the order
of findings, impression numbering, clinical history, recommendations and typing slips all come
from the style; this module only knows how to put a report together. Widespread disease may be
described vaguely (多发骨转移, naming coarse groups) and negative studies say so (未见...).

Every metastasis gets a *mention*: the exact substring of the report that names it (it may name
several regions, e.g. ``第7、9胸椎``). The generator returns them so tests can check the report
against the ground truth with an independent parser.

Draws come from a :class:`Dice` that reads the numpy generator in blocks: reports are written
by the hundred thousand for text pretraining (``corpus.py``), and one numpy call per word choice
would cost more than the rest of the writing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bonescan.anatomy import GROUP_ZH, SIDE_ZH
from bonescan.data.atlas import REGIONS
from bonescan.data.styles import (
    DELAYS_H,
    DOSES_MCI,
    HISTORIES,
    REASONS,
    HouseStyle,
    RibNaming,
    SpineNaming,
    get_style,
)
from bonescan.data.textnoise import FULLWIDTH_DIGITS, HALFWIDTH_PUNCT, add_slips, poisson

ZH_DIGITS = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二"]
CIRCLED = "①②③④⑤⑥⑦⑧⑨⑩⑪⑫⑬⑭⑮⑯⑰⑱⑲⑳"
SEG_ZH = {"C": "颈", "T": "胸", "L": "腰"}
#: coarse anatomical groups used by vague reports (多发骨转移); a style may use its own word for one
COARSE = {
    "skull": "颅骨", "mandible": "颅骨", "cervical": "脊柱", "thoracic": "脊柱", "lumbar": "脊柱",
    "sacrum": "骨盆", "rib": "肋骨", "sternum": "胸骨", "clavicle": "锁骨", "scapula": "肩胛骨",
    "humerus": "四肢骨", "forearm": "四肢骨", "hand": "四肢骨", "ilium": "骨盆", "ischium": "骨盆",
    "pubis": "骨盆", "femur": "四肢骨", "patella": "四肢骨", "tibia": "四肢骨", "fibula": "四肢骨", "foot": "四肢骨",
}
_COARSE_ORDER = list(dict.fromkeys(COARSE.values()))
#: the order a reader goes through the skeleton: skull, spine, thorax, pelvis, limbs
ANATOMY_ORDER = ("skull", "mandible", "cervical", "thoracic", "lumbar", "sacrum", "sternum", "clavicle", "scapula", "rib",
                 "ilium", "ischium", "pubis", "humerus", "forearm", "hand", "femur", "patella", "tibia", "fibula", "foot")
_SEGMENT_RANK = {"": 0, "proximal": 0, "shaft": 1, "distal": 2}
RANK: dict[str, tuple[int, int, int, int]] = {
    r: (ANATOMY_ORDER.index(i.group), i.index, _SEGMENT_RANK[i.segment], int(i.side == "L")) for r, i in REGIONS.items()
}
_LAST = (len(ANATOMY_ORDER), 0, 0, 0)  # artefacts and closing sentences

SKULL_WORDS = ("颅骨", "颅骨", "颅骨", "颅骨", "颅骨左侧", "颅骨右侧", "颅骨顶部", "顶骨", "额骨", "枕骨")
STERNUM_WORDS = ("胸骨", "胸骨", "胸骨体", "胸骨柄")
SACRUM_WORDS = ("骶骨", "骶骨", "骶椎")

#: benign kinds grouped into the families a style's diagnosis words are keyed by
BENIGN_FAMILY = {
    "degenerative_knee": "degenerative", "degenerative_shoulder": "degenerative", "facet_arthropathy": "degenerative",
    "cervical_spondylosis": "degenerative", "sternoclavicular": "degenerative", "rib_fracture": "fracture",
    "compression_fracture": "compression", "arthritis_hand": "arthritis", "arthritis_foot": "arthritis",
}
#: what the findings add after a benign site, a share of the time: the picture that makes it benign
BENIGN_PICTURE = {"rib_fracture": "，呈串珠样排列", "compression_fracture": "，呈横条状"}
#: what the findings add to a benign location: the facet joints of the named vertebrae
BENIGN_SITE = {"facet_arthropathy": "小关节"}


class Dice:
    """Cheap draws for word choices: uniforms read from a numpy generator 64 at a time.

    Deterministic in the generator's state; a report leaves the generator further on than the
    draws it used (the rest of the block), which is fine because nothing is drawn after it.
    """

    __slots__ = ("rng", "buf", "i")

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.buf: list[float] = []
        self.i = 0

    def random(self) -> float:
        if self.i == len(self.buf):
            self.buf = self.rng.random(64).tolist()
            self.i = 0
        x = self.buf[self.i]
        self.i += 1
        return x

    def p(self, prob: float) -> bool:
        """True with probability ``prob`` (no draw when the answer is certain)."""
        if prob <= 0.0:
            return False
        if prob >= 1.0:
            return True
        return self.random() < prob

    def pick(self, seq: Sequence[Any]) -> Any:
        """One element, uniformly (no draw for a single choice)."""
        if len(seq) == 1:
            return seq[0]
        return seq[int(self.random() * len(seq))]

    def weighted(self, weights: Mapping[str, float]) -> str:
        keys = list(weights)
        if len(keys) == 1:
            return keys[0]
        u = self.random() * sum(weights.values())
        for k in keys:
            u -= weights[k]
            if u < 0:
                return k
        return keys[-1]

    def integers(self, lo: int, hi: int) -> int:
        """lo <= k < hi."""
        return lo + int(self.random() * (hi - lo))

    def shuffle(self, items: list[Any]) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = int(self.random() * (i + 1))
            items[i], items[j] = items[j], items[i]


# ----------------------------------------------------------------------------- templates
_Parts = tuple[tuple[int, Any], ...]
_COMPILED: dict[str, _Parts] = {}


def _compile(template: str) -> _Parts:
    """'{loc}见[点状|片状]{uptake}' -> literal / slot / alternative parts (cached)."""
    parts: list[tuple[int, Any]] = []
    i = 0
    while i < len(template):
        c = template[i]
        if c == "{":
            j = template.index("}", i)
            parts.append((1, template[i + 1 : j]))
        elif c == "[":
            j = template.index("]", i)
            parts.append((2, tuple(_compile(o) for o in template[i + 1 : j].split("|"))))
        else:
            j = i
            while j + 1 < len(template) and template[j + 1] not in "{[":
                j += 1
            parts.append((0, template[i : j + 1]))
        i = j + 1
    return tuple(parts)


def render(template: str, d: Dice, slots: Mapping[str, str | Callable[[], str]]) -> str:
    """Fill a template's ``{slot}``s (strings or callables drawn per slot) and pick its ``[a|b]``s."""
    parts = _COMPILED.get(template)
    if parts is None:
        parts = _COMPILED[template] = _compile(template)
    return _render(parts, d, slots)


def _render(parts: _Parts, d: Dice, slots: Mapping[str, str | Callable[[], str]]) -> str:
    out = []
    for kind, val in parts:
        if kind == 0:
            out.append(val)
        elif kind == 1:
            v = slots[val]
            out.append(v if isinstance(v, str) else v())
        else:
            out.append(_render(d.pick(val), d, slots))
    return "".join(out)


# ----------------------------------------------------------------------------- naming
def _num(n: int, chinese: bool) -> str:
    return ZH_DIGITS[n] if chinese else str(n)


def _runs(nums: list[int]) -> list[tuple[int, int]]:
    nums = sorted(set(nums))
    runs: list[tuple[int, int]] = []
    for n in nums:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def _items(nums: list[int], use_ranges: bool) -> list[tuple[int, int | None]]:
    """Runs of three or more as (first, last) when ranges are used, everything else one by one."""
    items: list[tuple[int, int | None]] = []
    for a, b in _runs(nums):
        if b - a >= 2 and use_ranges:
            items.append((a, b))
        else:
            items.extend((k, None) for k in range(a, b + 1))
    return items


def name_vertebrae(names: list[str], d: Dice, spec: SpineNaming) -> str:
    """Name one or more vertebrae in one phrase: ``T7、T9椎体`` / ``胸7、9椎体`` / ``第七至九胸椎`` / ``胸椎7``."""
    by_seg: dict[str, list[int]] = defaultdict(list)
    for n in names:
        by_seg[n[0]].append(int(n[1:]))
    form = d.weighted(spec.forms)
    use_ranges = d.p(spec.p_range)
    body = d.pick(spec.body)
    sep = spec.range_sep
    parts = []
    for seg in ("C", "T", "L"):
        if seg not in by_seg:
            continue
        items = _items(by_seg[seg], use_ranges)
        zh = SEG_ZH[seg]
        if form == "letter":
            toks = [f"{seg}{a}" if b is None else f"{seg}{a}{sep}{seg if spec.range_full else ''}{b}" for a, b in items]
            parts.append("、".join(toks) + body)
        elif form == "seg":
            if spec.share_prefix:
                toks = [str(a) if b is None else f"{a}{sep}{zh if spec.range_full else ''}{b}" for a, b in items]
                parts.append(zh + "、".join(toks) + body)
            else:
                toks = [f"{zh}{a}" if b is None else f"{zh}{a}{sep}{zh if spec.range_full else ''}{b}" for a, b in items]
                parts.append("、".join(toks) + body)
        elif form == "segword":
            toks = [str(a) if b is None else f"{a}{sep}{b}" for a, b in items]
            parts.append(zh + "椎" + "、".join(toks))
        else:  # ordinal / ordinal_zh
            zh_digits = form == "ordinal_zh"
            toks = [_num(a, zh_digits) if b is None else f"{_num(a, zh_digits)}{sep}{_num(b, zh_digits)}" for a, b in items]
            parts.append("第" + "、".join(toks) + zh + "椎")
    joiner = d.pick(spec.joiner) if len(parts) > 1 else "、"
    return joiner.join(parts)


def name_ribs(side: str, numbers: list[int], d: Dice, spec: RibNaming, side_words: Sequence[str], arc: str = "") -> str:
    """One side's ribs in one phrase: ``左侧第5、6肋`` / ``左第五后肋`` / ``左5肋`` / ``右侧第4~6前肋``."""
    zh_digits = d.p(spec.p_zh)  # one numeral style per phrase
    toks = [_num(a, zh_digits) if b is None else f"{_num(a, zh_digits)}{spec.range_sep}{_num(b, zh_digits)}"
            for a, b in _items(numbers, d.p(spec.p_range))]
    side_zh = SIDE_ZH[side] + d.pick(side_words)
    ordinal = "第" if d.p(spec.p_ordinal) else ""
    arc_zh = {"anterior": "前", "posterior": "后"}.get(arc, "") if arc and d.p(spec.p_arc) else ""
    return f"{side_zh}{ordinal}{'、'.join(toks)}{arc_zh}{d.pick(spec.bone)}"


def name_region(region: str, d: Dice, hs: HouseStyle) -> str:
    """A name for one non-vertebra, non-rib region, e.g. ``右侧髂骨`` / ``左股骨上段`` / ``胸骨``."""
    info = REGIONS[region]
    side = SIDE_ZH[info.side] + d.pick(hs.side) if info.side else ""
    if info.group == "skull":
        return str(d.pick(SKULL_WORDS))
    if info.group == "sternum":
        return str(d.pick(STERNUM_WORDS))
    if info.group == "sacrum":
        return str(d.pick(SACRUM_WORDS))
    if info.group == "femur" and info.segment == "proximal" and d.p(0.4):
        return side + d.pick(("股骨头颈部", "股骨颈", "股骨近端"))
    if info.group == "humerus" and info.segment == "proximal" and d.p(0.4):
        return side + d.pick(("肱骨头", "肱骨近端"))
    name = GROUP_ZH[info.group]
    if info.segment:
        name += d.pick(hs.segments[info.segment])
    return side + name


# ----------------------------------------------------------------------------- findings
@dataclass
class Finding:
    """One thing the report talks about. kind: 'met', a benign mimic type, or an artefact."""

    kind: str
    regions: list[str]
    arc: str = ""  # rib arc (anterior / posterior); for an injection artefact: elbow / hand
    ids: list[int] = field(default_factory=list)  # indexes into the case's lesion list (mets)


def _both_or_one(sides: list[str], d: Dice, both: Sequence[str], one: Sequence[str]) -> str:
    return str(d.pick(both)) if len(sides) == 2 else SIDE_ZH[sides[0]] + str(d.pick(one))


BENIGN_LOC: dict[str, Callable[[list[str], Dice], str]] = {
    "degenerative_knee": lambda s, d: _both_or_one(s, d, ("双膝", "双膝关节"), ("膝", "膝关节")),
    "degenerative_shoulder": lambda s, d: _both_or_one(s, d, ("双肩", "双肩关节"), ("肩关节", "肩锁关节", "肩部")),
    "arthritis_hand": lambda s, d: _both_or_one(s, d, ("双腕关节", "双手小关节"), ("腕关节", "手小关节")),
    "arthritis_foot": lambda s, d: _both_or_one(s, d, ("双踝关节", "双足"), ("踝关节", "足部")),
    "sternoclavicular": lambda s, d: _both_or_one(s, d, ("双侧胸锁关节",), ("侧胸锁关节",)),
}


def _benign_location(f: Finding, d: Dice, hs: HouseStyle) -> str:
    if f.kind in ("facet_arthropathy", "cervical_spondylosis", "compression_fracture"):
        return name_vertebrae(f.regions, d, hs.spine)
    if f.kind == "rib_fracture":
        side = REGIONS[f.regions[0]].side
        return name_ribs(side, [REGIONS[r].index for r in f.regions], d, hs.ribs, hs.side, f.arc)
    sides = sorted({REGIONS[r].side for r in f.regions if REGIONS[r].side} or {"R"}, reverse=True)  # R before L
    return BENIGN_LOC[f.kind](sides, d)


@dataclass
class Report:
    """A written report and, per metastasis, the words of it that name the lesion."""

    text: str
    mentions: dict[int, str]  # lesion index -> substring naming it
    style: str  # itemized / vague / negative (how the metastases are described)
    house_style: str = "classic"  # whose wording (styles.STYLES)


@dataclass
class _Item:
    """A sentence of the findings or an item of the impression, with what orders it."""

    text: str
    priority: int  # 0 metastases, 1 benign findings, 2 artefacts
    rank: tuple[int, int, int, int]


class _Writer:
    """Writes one report in one house style; holds the words fixed for the whole report."""

    def __init__(self, hs: HouseStyle, d: Dice):
        self.hs = hs
        self.d = d
        met = d.pick(hs.metastasis)
        self.slots: dict[str, str | Callable[[], str]] = {
            "uptake": d.pick(hs.uptake),
            "neg": d.pick(hs.negation),
            "met": met,
            "cert": render(d.pick(hs.certainty), d, {"m": met}),
            "see": lambda: d.pick(hs.see),
            "focus": lambda: d.pick(hs.focus),
            "shape": lambda: d.pick(hs.shapes) if d.p(hs.p_shape) else "",
            "form": lambda: d.pick(hs.shapes),
        }

    def fill(self, template: str, **slots: str) -> str:
        return render(template, self.d, {**self.slots, **slots} if slots else self.slots)

    def met_phrases(self, mets: list[Finding]) -> list[tuple[str, list[int], tuple[int, int, int, int]]]:
        """Group metastases into named phrases: [(mention, lesion ids, anatomical rank)]."""
        d, hs = self.d, self.hs
        kinds = ["spine" if g in ("cervical", "thoracic", "lumbar") else "rib" if g == "rib" else "other"
                 for g in (REGIONS[f.regions[0]].group for f in mets)]
        verts = [f for f, k in zip(mets, kinds, strict=True) if k == "spine"]
        ribs = [f for f, k in zip(mets, kinds, strict=True) if k == "rib"]
        others = [f for f, k in zip(mets, kinds, strict=True) if k == "other"]
        phrases = []
        if verts:  # spine lesions in one or two phrases
            names = sorted({f.regions[0] for f in verts}, key=RANK.__getitem__)
            chunks = [names]
            if len(names) > 2 and d.p(0.4):
                k = d.integers(1, len(names))
                chunks = [names[:k], names[k:]]
            for ch in chunks:
                ids = [i for f in verts if f.regions[0] in ch for i in f.ids]
                phrases.append((name_vertebrae(ch, d, hs.spine), ids, RANK[ch[0]]))
        for side in ("R", "L"):
            fs = [f for f in ribs if REGIONS[f.regions[0]].side == side]
            if fs:
                arcs = {f.arc for f in fs}
                arc = arcs.pop() if len(arcs) == 1 else ""
                name = name_ribs(side, [REGIONS[f.regions[0]].index for f in fs], d, hs.ribs, hs.side, arc)
                phrases.append((name, [i for f in fs for i in f.ids], min(RANK[f.regions[0]] for f in fs)))
        by_region: dict[str, list[int]] = defaultdict(list)
        for f in others:
            by_region[f.regions[0]].extend(f.ids)
        for region, ids in by_region.items():
            phrases.append((name_region(region, d, hs), ids, RANK[region]))
        return phrases

    def order(self, items: list[_Item], policy: str, impression: bool = False) -> list[_Item]:
        """Findings head to foot, metastases first, or shuffled. An impression always puts
        metastases before benign findings (its first line is what the clinician reads); within
        each, it follows the findings' policy."""
        if policy == "random":
            items = list(items)
            self.d.shuffle(items)
            return sorted(items, key=lambda it: it.priority) if impression else items
        if policy == "importance" or impression:
            return sorted(items, key=lambda it: (it.priority, it.rank))
        return sorted(items, key=lambda it: it.rank)

    def metastases(self, mets: list[Finding], n_lesions: int, mentions: dict[int, str],
                   findings: list[_Item], impression: list[_Item], policy: str) -> str:
        """Sentences and impression items for the metastases; fills ``mentions``. Returns
        "vague" (coarse groups only, for six or more lesions, a style's share of the time) or
        "itemized"."""
        d, hs = self.d, self.hs
        if n_lesions >= 6 and d.p(hs.p_vague):
            groups = sorted({COARSE[REGIONS[f.regions[0]].group] for f in mets}, key=_COARSE_ORDER.index)
            words = [hs.coarse.get(g, g) for g in groups]
            for f in mets:
                word = COARSE[REGIONS[f.regions[0]].group]
                for i in f.ids:
                    mentions[i] = hs.coarse.get(word, word)
            first = min(RANK[f.regions[0]] for f in mets)
            findings.append(_Item(self.fill(d.pick(hs.vague_findings), groups="、".join(words)), 0, first))
            impression.append(_Item(self.fill(d.pick(hs.vague_impressions), groups="、".join(words)), 0, first))
            return "vague"
        phrases = self.met_phrases(mets)
        if policy == "random":
            d.shuffle(phrases)
        else:
            phrases.sort(key=lambda p: p[2])
        for p, ids, _ in phrases:
            for i in ids:
                mentions[i] = p
        first = min(p[2] for p in phrases)
        locs = "、".join(p for p, _, _ in phrases)
        if len(phrases) > 1 and d.p(hs.p_multi):
            findings.append(_Item(self.fill(d.pick(hs.multi_frames), locs=locs), 0, first))
        else:
            findings.extend(_Item(self.fill(d.pick(hs.frames), loc=p), 0, rank) for p, _, rank in phrases)
        if len(phrases) > 3 and d.p(hs.p_many):
            impression.append(_Item(self.fill(d.pick(hs.many_impressions)), 0, first))
        elif 1 < len(phrases) <= 4 and d.p(hs.p_met_separate):
            frame = d.pick(hs.met_impressions)  # one frame for all items, as a typist copies a line
            impression.extend(_Item(self.fill(frame, locs=p, many=""), 0, rank) for p, _, rank in phrases)
        else:
            many = "多发" if len(phrases) > 1 else ""
            impression.append(_Item(self.fill(d.pick(hs.met_impressions), locs=locs, many=many), 0, first))
        return "itemized"

    def benign(self, f: Finding, findings: list[_Item], impression: list[_Item]) -> None:
        """A benign finding: its sentence in the style's own frame, and its dismissal."""
        d, hs = self.d, self.hs
        loc = _benign_location(f, d, hs)
        rank = min(RANK[r] for r in f.regions)
        sentence = self.fill(d.pick(hs.frames), loc=loc + BENIGN_SITE.get(f.kind, ""))
        if f.kind in BENIGN_PICTURE and "呈" not in sentence and d.p(0.5):
            sentence = sentence[:-1] + BENIGN_PICTURE[f.kind] + "。"
        findings.append(_Item(sentence, 1, rank))
        dx = hs.dx.get(f.kind) or hs.dx[BENIGN_FAMILY[f.kind]]
        impression.append(_Item(self.fill(d.pick(hs.dismiss), loc=loc, dx=d.pick(dx)), 1, rank))

    def artefact(self, f: Finding) -> _Item:
        d = self.d
        if f.kind == "injection":
            side = SIDE_ZH[REGIONS[f.regions[0]].side] if f.regions else ""
            where = d.pick(("肘部", "肘窝")) if "elbow" in f.arc else d.pick(("手背", "腕部"))
            text = side + where + d.pick(("见注射点放射性浓聚", "见注射部位放射性滞留", "放射性浓聚，为注射点")) + "。"
        else:
            text = d.pick(("会阴部", "骨盆外侧软组织", "大腿内侧")) + "见" + d.pick(("点状", "片状", "小片状")) + \
                "放射性浓聚，考虑尿液污染。"
        return _Item(text, 2, _LAST)

    def items(self, mets: list[Finding], benign: list[Finding], artefacts: list[Finding], n_lesions: int,
              mentions: dict[int, str]) -> tuple[str, list[_Item], list[_Item]]:
        """(itemized / vague / negative, finding sentences, impression items), both in order."""
        d, hs = self.d, self.hs
        policy = d.weighted(hs.order)
        found: list[_Item] = []
        impression: list[_Item] = []
        kind = "negative"
        if mets:
            kind = self.metastases(mets, n_lesions, mentions, found, impression, policy)
        else:
            pool = hs.negative_impressions + (hs.clean_impressions if not benign and not artefacts else ())
            impression.append(_Item(self.fill(d.pick(pool)), 0, (-1, 0, 0, 0)))
        for f in benign:
            self.benign(f, found, impression)
        found.extend(self.artefact(f) for f in artefacts)
        found = self.order(found, policy)
        if mets:
            impression = self.order(impression, policy, True)
        else:  # the negative statement first
            impression = impression[:1] + self.order(impression[1:], policy, True)
        if (mets or benign) and d.p(hs.p_advice):
            impression.append(_Item(d.pick(hs.advice), 3, _LAST))
        return kind, found, impression

    def history(self, sex: str) -> str:
        """The clinical history some hospitals copy from the request (前列腺癌术后 ...), or ""."""
        d = self.d
        if not d.p(self.hs.p_history):
            return ""
        dx = d.pick(HISTORIES.get(sex, ()) + HISTORIES[""]) if d.p(0.6) else d.pick(HISTORIES[""])
        return self.fill(d.pick(self.hs.history), dx=dx, why=d.pick(REASONS))

    def method(self) -> str:
        mci = int(self.d.pick(DOSES_MCI))
        return self.fill(self.d.pick(self.hs.method), mci=str(mci), mbq=str(mci * 37), hours=str(self.d.pick(DELAYS_H)))

    def findings_text(self, found: list[_Item], history: str, method: str, positive: bool, has_benign: bool,
                      kidneys_visible: bool) -> str:
        """History (when written in the findings), method, overview, the findings, the rest, kidneys."""
        d, hs = self.d, self.hs
        lines = []
        if history and hs.history_at == "findings":
            lines.append(history)
        if method and not hs.method_header:
            lines.append(method)
        sentences = [it.text for it in found]
        if positive:
            sentences[0] = d.pick(hs.overview_positive) + sentences[0]
            sentences.append(self.fill(d.pick(hs.rest)))
        else:
            sentences.insert(0, self.fill(d.pick(hs.overview_negative), **{"except": hs.except_benign if has_benign else ""}))
        sentences.append(d.pick(hs.kidneys if kidneys_visible else hs.kidneys_faint))
        lines.extend(s for s in sentences if s)
        return ("\n" if hs.finding_break else "").join(lines)

    def impression_text(self, impression: list[_Item]) -> str:
        items = [it.text for it in impression]
        if len(items) > 1 and self.hs.numbering:
            items = [_number(self.hs.numbering, k) + t for k, t in enumerate(items)]
        return ("\n" if self.hs.item_break else "").join(items)

    def typed(self, history: str, method: str, findings: str, impression: str, mentions: dict[int, str]) -> str:
        """The report laid out, as this hospital types it: digit and punctuation widths (mentions
        follow), then a few slips that spare the mentions and the headers."""
        d, hs = self.d, self.hs
        typed = [history, method, findings, impression]
        for prob, table in ((hs.p_fullwidth_digits, FULLWIDTH_DIGITS), (hs.p_halfwidth_punct, HALFWIDTH_PUNCT)):
            if d.p(prob):
                typed = [t.translate(table) for t in typed]
                for i, m in mentions.items():
                    mentions[i] = m.translate(table)
        text = _layout(hs, *typed)
        headers = (hs.headers or ()) + ((hs.method_header,) if hs.method_header else ())
        return add_slips(text, d, poisson(d, hs.slips), keep=tuple(mentions.values()) + headers)


def _number(fmt: str, k: int) -> str:
    if fmt == "{c}":
        return CIRCLED[k] if k < len(CIRCLED) else f"({k + 1})"
    return fmt.format(n=k + 1)


def write_report(
    mets: list[Finding],
    benign: list[Finding],
    artefacts: list[Finding],
    rng: np.random.Generator,
    n_lesions: int,
    kidneys_visible: bool = True,
    style: str | HouseStyle = "classic",
    sex: str = "",
    part: str = "full",
) -> Report:
    """Compose the report in a house style. ``mets`` carry lesion ids; ``n_lesions`` = len(case
    lesions); ``sex`` ("M" / "F" / "") only steers which clinical history a style may add.
    ``part``: the whole report, or only its ``"impression"`` or its ``"findings"`` (with their header),
    as terse reports and report excerpts come; ``mentions`` then holds the mentions that part keeps."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    hs = get_style(style)
    d = Dice(rng)
    w = _Writer(hs, d)
    mentions: dict[int, str] = {}
    kind, found, impression = w.items(mets, benign, artefacts, n_lesions, mentions)
    history, method = w.history(sex), w.method()
    findings_text = w.findings_text(found, history, method, bool(mets), bool(benign), kidneys_visible)
    impression_text = w.impression_text(impression)
    if part != "full":
        history, method = "", ""
        findings_text, impression_text = (findings_text, "") if part == "findings" else ("", impression_text)
    text = w.typed(history, method, findings_text, impression_text, mentions)
    missing = [i for i, m in mentions.items() if m not in text]
    if part != "full":
        mentions = {i: m for i, m in mentions.items() if i not in missing}
    elif missing:  # an invariant of this module, not a user error
        raise RuntimeError(f"report generator lost the mention of lesions {missing}")
    return Report(text=text, mentions=mentions, style=kind, house_style=hs.name)


#: what of a report write_report writes
PARTS = ("full", "impression", "findings")


def _layout(hs: HouseStyle, history: str, method: str, findings: str, impression: str) -> str:
    """Headers and paragraphs: ``检查所见：...\\n诊断意见：...`` or two bare paragraphs."""
    out = []
    if history and hs.history_at == "top":
        out.append(history + "\n")
    if method and hs.method_header:
        out.append(f"{hs.method_header}{method}\n")
    if hs.headers is None:
        out.append("".join(f"{t}\n" for t in (findings, impression) if t))
    else:
        brk = "\n" if hs.header_break else ""
        out.append("".join(f"{h}{brk}{t}\n" for h, t in zip(hs.headers, (findings, impression)) if t))
    return "".join(out)


# ----------------------------------------------------------------------------- from meta.json
def findings_from_meta(meta: Mapping[str, Any]) -> tuple[list[Finding], list[Finding], list[Finding], int, bool]:
    """The findings a case's report was written from, rebuilt from its meta.json.

    Returns (mets, benign, artefacts, n_lesions, kidneys_visible), the arguments of
    :func:`write_report`, so any case can be re-reported in any house style. Rib fractures
    written before meta.json kept their arc come back without one (the report then names no arc).
    A case written with the report-truth options (meta ``report_truth``) comes back as its report was:
    without the lesions it left out, with the site it invented (lesion id -1).
    """
    lesions = meta.get("lesions", [])
    truth = meta.get("report_truth") or {}  # a report written with lesions left out / a site invented on purpose
    omitted = set(truth.get("omitted", []))
    mets = [Finding("met", [les["region"]], arc=les.get("part", "") if REGIONS[les["region"]].group == "rib" else "",
                    ids=[int(les["id"])]) for les in lesions if int(les["id"]) not in omitted]
    mets += [Finding("met", [inv["region"]], arc=inv.get("arc", ""), ids=[-1]) for inv in truth.get("invented", [])]
    benign = [Finding(b["type"], list(b["regions"]), arc=b.get("arc", "")) for b in meta.get("benign", [])]
    artefacts = []
    for a in meta.get("artefacts", []):
        if a["type"] == "injection":
            artefacts.append(Finding("injection", [f"hand_{a['side']}"], arc="elbow" if a.get("site") == "antecubital" else "hand"))
        else:
            artefacts.append(Finding(a["type"], []))
    kidneys = bool(meta.get("physiology", {}).get("kidneys_visible", True))
    return mets, benign, artefacts, len(lesions) - len(omitted), kidneys


def report_from_meta(meta: Mapping[str, Any], style: str, seed: int, part: str = "full") -> Report:
    """The report of a case (its meta.json) written in ``style`` (``part``: see write_report); the same
    seed gives the same text."""
    mets, benign, artefacts, n_lesions, kidneys = findings_from_meta(meta)
    sex = str(meta.get("patient", {}).get("sex", ""))
    return write_report(mets, benign, artefacts, np.random.default_rng(seed), n_lesions, kidneys, style=style, sex=sex, part=part)
