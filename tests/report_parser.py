"""An independent reader of region mentions in Chinese bone-scan reports (test helper).

It is written separately from the generator on purpose: a test that feeds the generator's
mentions through it checks the wording against the ground truth.
"""

from __future__ import annotations

import re

ZH = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10, "十一": 11, "十二": 12}
NUM = r"(?:十[一二]?|[一二三四五六七八九]|\d+)"
SEG = {"颈": "C", "胸": "T", "腰": "L"}
COARSE = {"颅骨", "脊柱", "骨盆", "肋骨", "胸骨", "锁骨", "肩胛骨", "四肢骨"}


def _n(tok: str) -> int:
    return int(tok) if tok.isdigit() else ZH[tok]


def _expand(items: str) -> list[int]:
    """'5、7-9、十一' -> [5, 7, 8, 9, 11]."""
    out: list[int] = []
    for tok in re.split(r"[、，,]", items):
        tok = tok.strip()
        if not tok:
            continue
        if "-" in tok:
            a, b = tok.split("-")
            out.extend(range(_n(a), _n(b) + 1))
        else:
            out.append(_n(tok))
    return out


def parse_mention(text: str) -> set[str]:
    """Region ids (atlas names) or coarse group words named by a mention."""
    found: set[str] = set()
    # letter style: T7、T9、L2 / T7-9
    for m in re.finditer(r"([CTL])(\d+)(?:-(\d+))?", text):
        a = int(m.group(2))
        b = int(m.group(3)) if m.group(3) else a
        found.update(f"{m.group(1)}{k}" for k in range(a, b + 1))
    # ordinal style: 第7、9胸椎 / 第七胸椎 / 第7-9胸椎
    for m in re.finditer(rf"第((?:{NUM}(?:-{NUM})?[、]?)+)([颈胸腰])椎", text):
        found.update(f"{SEG[m.group(2)]}{k}" for k in _expand(m.group(1)))
    # Chinese segment style: 胸7、胸9椎体 / 胸7-9椎体
    for m in re.finditer(r"([颈胸腰])(\d+)(?:-(\d+))?", text):
        a = int(m.group(2))
        b = int(m.group(3)) if m.group(3) else a
        found.update(f"{SEG[m.group(1)]}{k}" for k in range(a, b + 1))
    # ribs: 左侧第5、6前肋 / 右第十一肋骨 / 左侧第4-6肋
    for m in re.finditer(rf"([左右])侧?第((?:{NUM}(?:-{NUM})?[、]?)+)[前后]?肋", text):
        side = "L" if m.group(1) == "左" else "R"
        found.update(f"rib_{side}{k}" for k in _expand(m.group(2)))
    side = "L" if "左" in text else "R" if "右" in text else ""
    simple = {
        "髂骨": "ilium", "坐骨": "ischium", "耻骨": "pubis", "锁骨": "clavicle", "肩胛骨": "scapula",
        "髌骨": "patella", "胫骨": "tibia", "腓骨": "fibula", "尺桡骨": "forearm",
    }
    for word, bone in simple.items():
        if word in text and side:
            found.add(f"{bone}_{side}")
    for word, seg in (("股骨头", "proximal"), ("股骨颈", "proximal"), ("股骨近", "proximal"), ("股骨上段", "proximal"),
                      ("股骨中段", "shaft"), ("股骨骨干", "shaft"), ("股骨下段", "distal"), ("股骨远段", "distal")):
        if word in text and side:
            found.add(f"femur_{side}_{seg}")
    for word, seg in (("肱骨头", "proximal"), ("肱骨近", "proximal"), ("肱骨上段", "proximal"),
                      ("肱骨中段", "shaft"), ("肱骨骨干", "shaft"), ("肱骨下段", "distal"), ("肱骨远段", "distal")):
        if word in text and side:
            found.add(f"humerus_{side}_{seg}")
    if "颅骨" in text:
        found.add("skull")
    if "下颌骨" in text:
        found.add("mandible")
    if "胸骨" in text:
        found.add("sternum")
    if "骶骨" in text:
        found.add("sacrum")
    for w in COARSE:
        if text == w or text.startswith(w + "、") or ("、" + w) in text:
            found.add(w)
    return found
