"""An independent reader of region mentions in Chinese bone-scan reports (test helper).

It is written separately from the generator on purpose: a test that feeds the generator's
mentions through it checks the wording against the ground truth. It reads the forms Chinese
reports use, whichever hospital wrote them:

* vertebrae: ``T7`` / ``T7、T9`` / ``T7-9`` / ``T7~T9`` / ``胸7`` / ``胸7、9椎体`` / ``胸7-胸9`` /
  ``胸椎7`` / ``第7胸椎`` / ``第7、9胸椎`` / ``第七至九胸椎``;
* ribs: ``左侧第5肋`` / ``左第五后肋`` / ``左5肋`` / ``左侧第5、6肋`` / ``左侧第4-6前肋`` / ``右第4~6肋骨``;
* other bones with the side written before them (``左侧髂骨``, ``右股骨近端``), skull words
  (颅骨 / 顶骨 / 额骨 / 枕骨), 胸骨, 骶骨 / 骶椎, 下颌骨;
* coarse groups of vague reports (颅骨, 脊柱 or 脊椎, 骨盆 or 骨盆诸骨, 四肢骨 or 四肢长骨 ...).

Full-width digits and punctuation are read as half-width; spaces and line breaks are ignored.
"""

from __future__ import annotations

import re
import unicodedata

ZH = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10, "十一": 11, "十二": 12}
NUM = r"(?:十[一二]?|[一二三四五六七八九]|\d+)"
TO = r"[-~至]"
SEG = {"颈": "C", "胸": "T", "腰": "L"}
#: coarse group words of vague reports -> the canonical group
COARSE = {"颅骨": "颅骨", "脊柱": "脊柱", "脊椎": "脊柱", "骨盆": "骨盆", "骨盆诸骨": "骨盆", "肋骨": "肋骨", "胸骨": "胸骨",
          "锁骨": "锁骨", "肩胛骨": "肩胛骨", "四肢骨": "四肢骨", "四肢长骨": "四肢骨", "四肢骨骼": "四肢骨"}
SIDED = {
    "髂骨": "ilium", "坐骨": "ischium", "耻骨": "pubis", "锁骨": "clavicle", "肩胛骨": "scapula",
    "髌骨": "patella", "胫骨": "tibia", "腓骨": "fibula", "尺桡骨": "forearm",
}
LONG = {
    "股骨": {"头颈部": "proximal", "头": "proximal", "颈": "proximal", "近端": "proximal", "近段": "proximal",
             "上段": "proximal", "中段": "shaft", "骨干": "shaft", "干": "shaft", "下段": "distal", "远段": "distal",
             "远端": "distal"},
    "肱骨": {"头": "proximal", "近端": "proximal", "近段": "proximal", "上段": "proximal", "中段": "shaft",
             "骨干": "shaft", "干": "shaft", "下段": "distal", "远段": "distal", "远端": "distal"},
}


def normalize(text: str) -> str:
    """Full-width to half-width (NFKC), no whitespace."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def _n(tok: str) -> int:
    return int(tok) if tok.isdigit() else ZH[tok]


def _expand(items: str) -> list[int]:
    """'5、7-9、十一' / '七至九' -> [5, 7, 8, 9, 11] / [7, 8, 9]."""
    out: list[int] = []
    for tok in re.split(r"[、,]", items):
        if not tok:
            continue
        ends = re.split(TO, tok)
        if len(ends) == 2:
            out.extend(range(_n(ends[0]), _n(ends[1]) + 1))
        else:
            out.append(_n(tok))
    return out


def parse_regions(text: str) -> set[str]:
    """Atlas region ids a text names (a mention or a whole report)."""
    text = normalize(text)
    found: set[str] = set()
    # letter style: T7 / T7-9 / T7~T9 / T7至T9 (a range never crosses segments)
    for m in re.finditer(rf"([CTL])(\d+)(?:{TO}\1?(\d+))?", text):
        a = int(m.group(2))
        b = int(m.group(3)) if m.group(3) else a
        found.update(f"{m.group(1)}{k}" for k in range(a, b + 1))
    # segment style: 胸7 / 胸7、9椎体 / 胸7-9 / 胸7-胸9 / 胸椎7、9
    for m in re.finditer(rf"([颈胸腰])椎?(\d+(?:{TO}[颈胸腰]?\d+)?(?:、\d+(?:{TO}[颈胸腰]?\d+)?)*)", text):
        items = re.sub(r"[颈胸腰]", "", m.group(2))
        found.update(f"{SEG[m.group(1)]}{k}" for k in _expand(items))
    # ordinal style: 第7、9胸椎 / 第七胸椎 / 第7-9胸椎 / 第七至九胸椎
    for m in re.finditer(rf"第((?:{NUM}(?:{TO}{NUM})?、?)+)([颈胸腰])椎", text):
        found.update(f"{SEG[m.group(2)]}{k}" for k in _expand(m.group(1)))
    # ribs: 左侧第5、6前肋 / 右第十一肋骨 / 左侧第4-6肋 / 左5肋 / 右第四至六后肋
    for m in re.finditer(rf"([左右])侧?第?((?:{NUM}(?:{TO}{NUM})?、?)+)[前后]?肋", text):
        side = "L" if m.group(1) == "左" else "R"
        found.update(f"rib_{side}{k}" for k in _expand(m.group(2)))
    # bones with the side written just before them
    for m in re.finditer(r"([左右])侧?(" + "|".join(SIDED) + ")", text):
        found.add(f"{SIDED[m.group(2)]}_{'L' if m.group(1) == '左' else 'R'}")
    for bone, segs in LONG.items():
        name = {"股骨": "femur", "肱骨": "humerus"}[bone]
        alts = "|".join(sorted(segs, key=len, reverse=True))
        for m in re.finditer(rf"([左右])侧?{bone}({alts})", text):
            found.add(f"{name}_{'L' if m.group(1) == '左' else 'R'}_{segs[m.group(2)]}")
    if re.search("颅骨|顶骨|额骨|枕骨", text):
        found.add("skull")
    if "下颌骨" in text:
        found.add("mandible")
    if "胸骨" in text:
        found.add("sternum")
    if "骶骨" in text or "骶椎" in text:
        found.add("sacrum")
    return found


def parse_coarse(text: str) -> set[str]:
    """Canonical coarse groups a text names (vague reports: 全身多处骨骼（颅骨、脊椎、骨盆）...)."""
    text = normalize(text)
    found = set()
    for word in sorted(COARSE, key=len, reverse=True):
        if word in text:
            found.add(COARSE[word])
            text = text.replace(word, "|")
    return found


def parse_mention(text: str) -> set[str]:
    """Region ids (atlas names) or canonical coarse group words named by a mention."""
    found = parse_regions(text)
    if normalize(text) in COARSE:
        found.add(COARSE[normalize(text)])
    return found


def parse_report(text: str) -> set[str]:
    """Everything a whole report names: regions and coarse groups (for before / after checks)."""
    return parse_regions(text) | {"group:" + g for g in parse_coarse(text)}
