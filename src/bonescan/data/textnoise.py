"""Typing slips that never change what a report says.

Real reports carry the marks of the people who type them: a doubled or dropped character, a stray
space or line break, a half-width comma in a full-width text. The report generator adds a few per
report (how many is a house-style choice) and ``augment.py`` adds a few more at training time. Both
use this one implementation, which refuses to touch, or to sit next to, anything a fact hangs on:
digits (also full-width and circled: ５, ①) and letters (T7, 99mTc), 左 / 右 / 前 / 后 / 双 / 第 / 至,
every character of a bone name, the words for negation, certainty, metastasis and benign
findings, and any string the caller names (the mentions of lesions, the section headers).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Protocol

from bonescan.data.styles import HEDGES, VOCABULARY

#: every character that can be part of a bone or site name (颅骨 ... 足, 上段 / 近端 / 骨干, 小关节)
BONE_CHARS = frozenset("颅骨顶额枕颞下颌颈胸腰骶椎体肋锁肩胛肱尺桡手腕髂坐耻股髌胫腓足踝膝脊柱盆四肢长关节上中下段近远端干头部小")
#: sides, arcs, ordinals, list and range marks, Chinese numerals, negation and hedging characters
FIXED_CHARS = frozenset("左右前后双侧第至及、~～-一二三四五六七八九十未无不非否除排疑")
#: one full-width / half-width flip per punctuation mark
WIDTH_FLIP = {"，": ",", "：": ":", "（": "(", "）": ")", "；": ";", "。": "."}
FULLWIDTH_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")
HALFWIDTH_PUNCT = str.maketrans({k: v for k, v in WIDTH_FLIP.items() if k != "。"})

_FACT_WORDS = sorted({w for cls in ("negation", "certainty_before", "certainty_after", "metastasis", "not_metastatic",
                                    "degenerative", "old_injury", "inflammatory", "benign") for w in VOCABULARY[cls]}
                     | set(HEDGES), key=len, reverse=True)
_FACT_RE = re.compile("|".join(map(re.escape, _FACT_WORDS)))
_FIXED_RE = re.compile("[" + re.escape("".join(sorted(BONE_CHARS | FIXED_CHARS))) + r"\dA-Za-z①-⑳\s]+")


class Uniform(Protocol):
    """Anything with ``random() -> float`` in [0, 1): a numpy Generator or the report writer's dice."""

    def random(self) -> float: ...


def poisson(rng: Uniform, lam: float) -> int:
    """A Poisson draw from one uniform (inverse CDF): cheap for the small rates used here."""
    if lam <= 0:
        return 0
    u = float(rng.random())
    k, p = 0, math.exp(-lam)
    s = p
    while u > s and k < 50:
        k += 1
        p *= lam / k
        s += p
    return k


def protected(text: str, keep: Iterable[str] = ()) -> bytearray:
    """Per character: 1 where a slip may not go (see the module docstring)."""
    prot = bytearray(len(text))
    for m in _FIXED_RE.finditer(text):
        prot[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
    for m in _FACT_RE.finditer(text):
        prot[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
    for s in keep:
        if not s:
            continue
        start = text.find(s)
        while start >= 0:
            prot[start : start + len(s)] = b"\x01" * len(s)
            start = text.find(s, start + 1)
    return prot


def add_slips(text: str, rng: Uniform, n: int, keep: Iterable[str] = ()) -> str:
    """``text`` with ``n`` slips at free places: a dropped or doubled character, a space, a line
    break after a full stop, or a punctuation mark in the other width. Returns ``text`` unchanged
    when no place is free."""
    if n <= 0:
        return text
    keep = tuple(keep)
    for _ in range(n):
        prot = protected(text, keep)
        last = len(text) - 1
        free = [i for i in range(len(text)) if not prot[i] and (i == 0 or not prot[i - 1]) and (i == last or not prot[i + 1])]
        if not free:
            return text
        i = free[int(rng.random() * len(free))]
        c = text[i]
        op = int(rng.random() * 5)
        if op == 0 and c not in "。":
            text = text[:i] + text[i + 1 :]  # dropped
        elif op == 1 and c in WIDTH_FLIP:
            text = text[:i] + WIDTH_FLIP[c] + text[i + 1 :]
        elif op == 2 and c == "。":
            text = text[: i + 1] + "\n" + text[i + 1 :]
        elif op == 3:
            text = text[: i + 1] + " " + text[i + 1 :]
        else:
            text = text[: i + 1] + c + text[i + 1 :]  # doubled
    return text
