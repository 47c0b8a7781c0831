"""Chinese bone-scan reports written the way Chinese nuclear-medicine reports read.

A report has two sections, 检查所见 (findings) and 诊断意见 (impression). Wording varies on
purpose: several templates and synonyms, vertebra naming variants (T7 / 第7胸椎 / 胸7椎体 /
第七胸椎), side and rib numbering (左侧第5肋 / 左第五后肋 / 左侧第4-6肋), lesion order, vague
phrasing for widespread disease (多发骨转移) and negative studies (未见明显异常放射性浓聚).

Every metastasis gets a *mention*: the exact substring of the report that names it (it may name
several regions, e.g. ``第7、9胸椎``). The generator returns them so tests can check the report
against the ground truth with an independent parser.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from bonescan.data.atlas import REGIONS

ZH_DIGITS = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二"]
SEG_ZH = {"C": "颈", "T": "胸", "L": "腰"}
SIDE_ZH = {"R": "右", "L": "左"}
GROUP_ZH = {
    "skull": "颅骨", "mandible": "下颌骨", "cervical": "颈椎", "thoracic": "胸椎", "lumbar": "腰椎",
    "sacrum": "骶骨", "rib": "肋骨", "sternum": "胸骨", "clavicle": "锁骨", "scapula": "肩胛骨",
    "humerus": "肱骨", "forearm": "尺桡骨", "hand": "手部", "ilium": "髂骨", "ischium": "坐骨",
    "pubis": "耻骨", "femur": "股骨", "patella": "髌骨", "tibia": "胫骨", "fibula": "腓骨", "foot": "足部",
}
#: coarse anatomical groups used by vague reports (多发骨转移)
COARSE = {
    "skull": "颅骨", "mandible": "颅骨", "cervical": "脊柱", "thoracic": "脊柱", "lumbar": "脊柱",
    "sacrum": "骨盆", "rib": "肋骨", "sternum": "胸骨", "clavicle": "锁骨", "scapula": "肩胛骨",
    "humerus": "四肢骨", "forearm": "四肢骨", "hand": "四肢骨", "ilium": "骨盆", "ischium": "骨盆",
    "pubis": "骨盆", "femur": "四肢骨", "patella": "四肢骨", "tibia": "四肢骨", "fibula": "四肢骨", "foot": "四肢骨",
}
SEGMENT_ZH = {"proximal": ["上段", "近段"], "shaft": ["中段", "骨干"], "distal": ["下段", "远段"]}

UPTAKE_WORDS = ["异常放射性浓聚", "放射性浓聚", "异常放射性摄取增高", "显像剂异常浓聚", "放射性分布异常浓聚"]
SHAPE_WORDS = ["点状", "片状", "结节状", "团块状", "斑片状", "类圆形"]
SEE_WORDS = ["见", "可见", "示"]


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


def name_vertebrae(names: list[str], rng: np.random.Generator) -> str:
    """Name one or more vertebrae in one phrase, e.g. ``T7、T9椎体`` / ``第7、9胸椎`` / ``胸7-9椎体``."""
    by_seg: dict[str, list[int]] = defaultdict(list)
    for n in names:
        by_seg[n[0]].append(int(n[1:]))
    style = rng.choice(["letter", "ordinal", "zh"])
    use_ranges = rng.random() < 0.5
    parts = []
    for seg in ("C", "T", "L"):
        if seg not in by_seg:
            continue
        runs = _runs(by_seg[seg])
        items = []
        for a, b in runs:
            if a == b:
                items.append((a, None))
            elif b - a >= 2 and use_ranges:
                items.append((a, b))
            else:
                items.extend((k, None) for k in range(a, b + 1))
        if style == "letter":
            toks = [f"{seg}{a}" if b is None else f"{seg}{a}-{b}" for a, b in items]
            parts.append("、".join(toks) + ("椎体" if rng.random() < 0.6 else ""))
        elif style == "ordinal":
            zh_digits = bool(rng.random() < 0.25)  # one numeral style per phrase
            toks = [_num(a, zh_digits) if b is None else f"{a}-{b}" for a, b in items]
            parts.append("第" + "、".join(toks) + SEG_ZH[seg] + "椎")
        else:
            zh = SEG_ZH[seg]
            toks = [f"{zh}{a}" if b is None else f"{zh}{a}-{b}" for a, b in items]
            parts.append("、".join(toks) + "椎体")
    return "及".join(parts) if len(parts) > 1 and rng.random() < 0.5 else "、".join(parts)


def name_ribs(side: str, numbers: list[int], rng: np.random.Generator, arc: str = "") -> str:
    """``左侧第5、6肋`` / ``左第五后肋`` / ``右侧第4-6肋骨``."""
    runs = _runs(numbers)
    use_ranges = rng.random() < 0.6
    zh_digits = bool(rng.random() < 0.25)  # one numeral style per phrase
    toks = []
    for a, b in runs:
        if a == b:
            toks.append(_num(a, zh_digits))
        elif use_ranges:
            toks.append(f"{a}-{b}")
        else:
            toks.extend(_num(k, zh_digits) for k in range(a, b + 1))
    side_zh = SIDE_ZH[side] + ("侧" if rng.random() < 0.6 else "")
    arc_zh = {"anterior": "前", "posterior": "后"}.get(arc, "") if rng.random() < 0.4 else ""
    bone = rng.choice(["肋", "肋骨"])
    return f"{side_zh}第{'、'.join(toks)}{arc_zh}{bone}"


def name_region(region: str, rng: np.random.Generator) -> str:
    """A name for one non-vertebra, non-rib region, e.g. ``右侧髂骨`` / ``左股骨上段`` / ``胸骨``."""
    info = REGIONS[region]
    side = ""
    if info.side:
        side = SIDE_ZH[info.side] + ("侧" if rng.random() < 0.6 else "")
    if info.group == "skull":
        return str(rng.choice(["颅骨", "颅骨", "颅骨" + rng.choice(["左侧", "右侧", "顶部"])]))
    if info.group == "sternum":
        return str(rng.choice(["胸骨", "胸骨体", "胸骨柄"]))
    if info.group == "femur" and info.segment == "proximal" and rng.random() < 0.4:
        return side + str(rng.choice(["股骨头颈部", "股骨颈", "股骨近端"]))
    if info.group == "humerus" and info.segment == "proximal" and rng.random() < 0.4:
        return side + str(rng.choice(["肱骨头", "肱骨近端"]))
    name = GROUP_ZH[info.group]
    if info.segment:
        name += str(rng.choice(SEGMENT_ZH[info.segment]))
    return side + name


@dataclass
class Finding:
    """One thing the report talks about. kind: 'met', a benign mimic type, or an artefact."""

    kind: str
    regions: list[str]
    arc: str = ""  # rib arc (anterior / posterior) when relevant
    ids: list[int] = field(default_factory=list)  # indexes into the case's lesion list (mets)


BENIGN_TEXT = {
    "degenerative_knee": (["{loc}关节面{shape}{uptake}"], ["{loc}退行性变", "{loc}骨关节炎", "{loc}关节退行性改变"]),
    "degenerative_shoulder": (["{loc}{shape}{uptake}"], ["{loc}退行性变", "{loc}关节炎性改变"]),
    "facet_arthropathy": (["{loc}小关节{shape}{uptake}", "{loc}两侧缘{uptake}"], ["{loc}小关节退行性变", "腰椎退行性改变（{loc}）", "{loc}骨质增生"]),
    "cervical_spondylosis": (["{loc}{shape}{uptake}"], ["{loc}退行性变", "颈椎退行性改变（{loc}）"]),
    "rib_fracture": (["{loc}{see}{shape}{uptake}，呈串珠样排列", "{loc}{see}{shape}{uptake}"], ["{loc}骨折", "{loc}陈旧性骨折可能", "{loc}外伤后改变"]),
    "compression_fracture": (["{loc}{see}横条状{uptake}"], ["{loc}压缩性骨折", "{loc}压缩骨折（骨质疏松所致可能）"]),
    "arthritis_hand": (["{loc}{see}{shape}{uptake}"], ["{loc}关节炎", "{loc}炎性改变"]),
    "arthritis_foot": (["{loc}{see}{shape}{uptake}"], ["{loc}关节炎", "{loc}退行性变"]),
    "sternoclavicular": (["{loc}{shape}{uptake}"], ["{loc}退行性变"]),
}

BENIGN_LOC = {
    "degenerative_knee": lambda sides, rng: "双膝" if len(sides) == 2 else SIDE_ZH[sides[0]] + "膝",
    "degenerative_shoulder": lambda sides, rng: "双肩" + rng.choice(["", "关节"]) if len(sides) == 2 else SIDE_ZH[sides[0]] + rng.choice(["肩关节", "肩锁关节", "肩部"]),
    "arthritis_hand": lambda sides, rng: rng.choice(["双腕关节", "双手小关节"]) if len(sides) == 2 else SIDE_ZH[sides[0]] + rng.choice(["腕关节", "手小关节"]),
    "arthritis_foot": lambda sides, rng: rng.choice(["双踝关节", "双足"]) if len(sides) == 2 else SIDE_ZH[sides[0]] + rng.choice(["踝关节", "足部"]),
    "sternoclavicular": lambda sides, rng: "双侧胸锁关节" if len(sides) == 2 else SIDE_ZH[sides[0]] + "侧胸锁关节",
}


def _benign_location(f: Finding, rng: np.random.Generator) -> str:
    if f.kind in ("facet_arthropathy", "cervical_spondylosis", "compression_fracture"):
        return name_vertebrae(f.regions, rng)
    if f.kind == "rib_fracture":
        side = REGIONS[f.regions[0]].side
        return name_ribs(side, [REGIONS[r].index for r in f.regions], rng, f.arc)
    sides = sorted({REGIONS[r].side for r in f.regions if REGIONS[r].side} or {"R"})
    return BENIGN_LOC[f.kind](sides, rng)


@dataclass
class Report:
    text: str
    mentions: dict[int, str]  # lesion index -> substring naming it
    style: str  # itemized / vague / negative


def _fill(template: str, rng: np.random.Generator, **kw: str) -> str:
    return template.format(
        shape=rng.choice(SHAPE_WORDS) if rng.random() < 0.8 else "",
        uptake=rng.choice(UPTAKE_WORDS),
        see=rng.choice(SEE_WORDS),
        **kw,
    )


def _met_phrases(mets: list[Finding], rng: np.random.Generator) -> list[tuple[str, list[int]]]:
    """Group metastases into named phrases: [(mention, lesion ids)]."""
    verts = [f for f in mets if REGIONS[f.regions[0]].group in ("cervical", "thoracic", "lumbar")]
    ribs = [f for f in mets if REGIONS[f.regions[0]].group == "rib"]
    others = [f for f in mets if f not in verts and f not in ribs]
    phrases: list[tuple[str, list[int]]] = []
    if verts:
        # split spine lesions into 1-2 phrases
        names = sorted({f.regions[0] for f in verts}, key=lambda n: ("CTL".index(n[0]), int(n[1:])))
        chunks = [names]
        if len(names) > 2 and rng.random() < 0.4:
            k = int(rng.integers(1, len(names)))
            chunks = [names[:k], names[k:]]
        for ch in chunks:
            ids = [i for f in verts if f.regions[0] in ch for i in f.ids]
            phrases.append((name_vertebrae(ch, rng), ids))
    for side in ("R", "L"):
        fs = [f for f in ribs if REGIONS[f.regions[0]].side == side]
        if fs:
            nums = [REGIONS[f.regions[0]].index for f in fs]
            arcs = {f.arc for f in fs}
            arc = arcs.pop() if len(arcs) == 1 else ""
            phrases.append((name_ribs(side, nums, rng, arc), [i for f in fs for i in f.ids]))
    by_region: dict[str, list[int]] = defaultdict(list)
    for f in others:
        by_region[f.regions[0]].extend(f.ids)
    for region, ids in by_region.items():
        phrases.append((name_region(region, rng), ids))
    return phrases


def write_report(
    mets: list[Finding],
    benign: list[Finding],
    artefacts: list[Finding],
    rng: np.random.Generator,
    n_lesions: int,
    kidneys_visible: bool = True,
) -> Report:
    """Compose the report. ``mets`` carry lesion ids; ``n_lesions`` = len(case lesions)."""
    mentions: dict[int, str] = {}
    f_parts: list[str] = []
    i_parts: list[str] = []

    header = rng.choice([
        f"静脉注射99mTc-MDP {int(rng.choice([20, 22, 25, 25, 30]))}mCi，{rng.choice(['3', '3', '4', '2.5'])}小时后行全身骨显像（前位及后位）。",
        "99mTc-MDP全身骨显像（前、后位）：",
        "全身骨扫描前后位显像：",
        "",
    ])
    f_parts.append(header)

    style = "negative"
    if mets:
        groups = sorted({COARSE[REGIONS[f.regions[0]].group] for f in mets}, key=list(COARSE.values()).index)
        vague = n_lesions >= 6 and rng.random() < 0.45
        style = "vague" if vague else "itemized"
        f_parts.append(rng.choice(["全身骨骼显影清晰，", "全身骨骼显影尚清晰，", "骨骼显影清晰，对比度良好，", ""]))
        if vague:
            mention = "、".join(groups)
            sentence = f"{rng.choice(['全身多处骨骼', '全身骨骼多处'])}（{mention}）{rng.choice(SEE_WORDS)}多发{rng.choice(SHAPE_WORDS)}{rng.choice(UPTAKE_WORDS)}灶，{rng.choice(['分布不规则', '大小不等', '形态不一'])}。"
            f_parts.append(sentence)
            for f in mets:
                for i in f.ids:
                    mentions[i] = COARSE[REGIONS[f.regions[0]].group]
            i_parts.append(rng.choice(["全身多发骨转移。", "多发骨转移瘤。", "全身骨骼多发异常浓聚，考虑多发骨转移。"]))
        else:
            phrases = _met_phrases(mets, rng)
            if rng.random() < 0.5:
                rng.shuffle(phrases)  # not always in anatomical order
            sentences = []
            # one or several sentences
            if len(phrases) > 1 and rng.random() < 0.5:
                names = "、".join(p for p, _ in phrases)
                sentences.append(_fill("{names}{see}多发{shape}{uptake}灶。", rng, names=names))
            else:
                for p, _ in phrases:
                    sentences.append(_fill("{name}{see}{shape}{uptake}" + str(rng.choice(["灶", "影", ""])) + "。", rng, name=p))
            f_parts.extend(sentences)
            for p, ids in phrases:
                for i in ids:
                    mentions[i] = p
            names = "、".join(p for p, _ in phrases)
            if len(phrases) > 3 and rng.random() < 0.5:
                i_parts.append(rng.choice(["多发骨转移。", "全身多发骨转移瘤。"]))
            else:
                i_parts.append(rng.choice([
                    f"{names}异常放射性浓聚，考虑骨转移。",
                    f"{names}骨转移瘤。",
                    f"考虑{names}骨转移可能性大，建议结合临床。",
                    f"{names}多发骨转移。" if len(phrases) > 1 else f"{names}骨转移。",
                ]))
    else:
        f_parts.append(rng.choice([
            "全身骨骼显影清晰，放射性分布对称、均匀，未见明显异常放射性浓聚或稀疏缺损区。",
            "全身骨骼显影清晰，双侧对称，未见明显异常放射性浓聚。",
            "骨骼显影清晰，放射性分布大致均匀对称，" + ("除下述外" if benign else "") + "未见明显异常放射性浓聚灶。",
        ]))
        i_parts.append(rng.choice(["全身骨显像未见明显骨转移征象。", "未见明显骨转移征象。", "全身骨显像未见明显异常。" if not benign else "未见明显骨转移征象。"]))

    for f in benign:
        loc = _benign_location(f, rng)
        finds, interp = BENIGN_TEXT[f.kind]
        f_parts.append(_fill(str(rng.choice(finds)), rng, loc=loc) + "。")
        i_parts.append(_fill(str(rng.choice(interp)), rng, loc=loc) + "。")

    for f in artefacts:
        side = SIDE_ZH[REGIONS[f.regions[0]].side] if f.regions else ""
        if f.kind == "injection":
            where = rng.choice(["肘部", "肘窝"]) if "elbow" in f.arc else rng.choice(["手背", "腕部"])
            f_parts.append(f"{side}{where}{rng.choice(['见注射点放射性浓聚', '见注射部位放射性滞留', '放射性浓聚，为注射点'])}。")
        elif f.kind == "urine":
            f_parts.append(rng.choice(["会阴部", "骨盆外侧软组织", "大腿内侧"]) + "见" + rng.choice(SHAPE_WORDS) + "放射性浓聚，考虑尿液污染。")

    if kidneys_visible:
        f_parts.append(rng.choice(["双肾及膀胱显影。", "双肾显影，膀胱显影。", "双肾及膀胱显影清晰。", "双肾显影淡，膀胱显影。"]))
    else:
        f_parts.append(rng.choice(["膀胱显影。", "双肾显影欠清，膀胱显影。"]))

    if len(i_parts) > 1 and rng.random() < 0.6:
        i_text = "".join(f"{k + 1}. {t}" for k, t in enumerate(i_parts))
    else:
        i_text = "".join(i_parts)
    text = "检查所见：" + "".join(f_parts) + "\n诊断意见：" + i_text + "\n"
    missing = [i for i, m in mentions.items() if m not in text]
    if missing:  # an invariant of this module, not a user error
        raise RuntimeError(f"report generator lost the mention of lesions {missing}")
    return Report(text=text, mentions=mentions, style=style)
