"""Training-time augmentation of report text that never changes a fact.

House styles (``styles.py``) give the model several hospitals' wording; augmentation blurs the
edges of each so the text encoder learns what a report says, not how one template says it. Every
operation keeps the facts a reader takes from a report, namely which bones are named, on which
side, and whether they are called metastatic, benign or normal:

* synonym swaps within a class of :data:`bonescan.data.styles.VOCABULARY` (uptake, negation,
  certainty, metastasis and benign words), never inside a bone name and never making one
  (``肋`` + ``骨转移`` stays ``肋`` + ``转移瘤``, not ``肋骨...``);
* the finding sentences of a section (the ones that name a site) trade places; numbering,
  method line, overview, kidneys and advice stay where they are;
* section headers dropped, or swapped for another hospital's (or added to a bare report);
* a few typing slips from ``textnoise.py``, which never touch digits, 左 / 右, 前 / 后 or any
  character of a bone name.

Shuffling sentences can loosen the flow of a report (the overview clause moves with the sentence
it opens); the facts do not move.
"""

from __future__ import annotations

import re

import numpy as np

from bonescan.data.styles import STYLES, VOCABULARY
from bonescan.data.textnoise import add_slips, poisson

#: header -> its role, for every house style
_ROLES: dict[str, str] = {}
for _s in STYLES.values():
    if _s.headers:
        _ROLES.setdefault(_s.headers[0], "findings")
        _ROLES.setdefault(_s.headers[1], "impression")
    if _s.method_header:
        _ROLES.setdefault(_s.method_header, "method")
_HEADER_SETS = [(s.headers, s.method_header) for s in STYLES.values() if s.headers]
#: headers at the start of a line, also typed with a half-width colon
_HEADER_RE = re.compile("|".join(map(re.escape, sorted({v for h in _ROLES for v in (h, h.replace("：", ":"))},
                                                       key=len, reverse=True))))

_CLASS_OF = {w: cls for cls, words in VOCABULARY.items() for w in words}
_VOCAB_RE = re.compile("|".join(map(re.escape, sorted(_CLASS_OF, key=len, reverse=True))))
#: bone and site words: a synonym swap may not overlap one
_BONE_WORDS = ("颅骨", "顶骨", "额骨", "枕骨", "下颌骨", "颈椎", "胸椎", "腰椎", "骶椎", "椎体", "骶骨", "肋骨", "胸骨", "锁骨",
               "肩胛骨", "肱骨", "尺桡骨", "髂骨", "坐骨", "耻骨", "股骨", "髌骨", "胫骨", "腓骨", "脊柱", "脊椎", "骨盆",
               "四肢骨", "四肢长骨", "四肢骨骼", "骨骼", "关节", "肋", "膝", "肩", "腕", "踝", "足", "手")
_BONE_RE = re.compile("|".join(map(re.escape, sorted(_BONE_WORDS, key=len, reverse=True))))
#: characters that make a bone name with a following 骨 (肋 + 骨 = 肋骨): no inserted word may start with 骨 after one
_BEFORE_GU = frozenset("颅颌胸骶肋锁胛肱桡髂坐耻股髌胫腓顶额枕肢长")
#: a sentence that names a site (a vertebra, a rib, a bone, a joint) is a finding sentence, unless
#: it speaks of the rest of the skeleton (余骨骼 ... / 其余骨骼 ...)
_SITE_RE = re.compile(r"[CTL]\d|[颈胸腰]椎?\d|第[\d一二三四五六七八九十]|" + "|".join(w for w in _BONE_WORDS if w != "骨骼"))
_REST_RE = re.compile(r"^(?:\d+[.、]\s?)?(?:余|其余|其他)")
_MARKER_RE = re.compile(r"^(?:\d+[.、]\s?|（\d+）|\(\d+\)|[①-⑳])")


def _sections(text: str) -> list[list[str]]:
    """[[header, body], ...]: a header's section runs to the next header; text without headers
    is one section per line (bare reports are two paragraphs)."""
    lines = text.split("\n")
    if not any(_HEADER_RE.match(line) for line in lines):
        return [["", line] for line in lines]
    out: list[list[str]] = []
    for line in lines:
        m = _HEADER_RE.match(line)
        if m:
            out.append([m.group(0), line[m.end() :]])
        elif out and out[-1][0]:
            out[-1][1] += "\n" + line
        else:
            out.append(["", line])
    return out


def _join(sections: list[list[str]]) -> str:
    return "\n".join(h + b for h, b in sections)


def _swap_words(body: str, rng: np.random.Generator, p: float) -> str:
    """Each vocabulary word, with probability p, becomes another word of its class."""
    bones = [m.span() for m in _BONE_RE.finditer(body)]
    out, last = [], 0
    for m in _VOCAB_RE.finditer(body):
        a, b = m.span()
        if any(x < b and a < y for x, y in bones) or rng.random() >= p:
            continue
        before = body[a - 1] if a else ""
        choices = [w for w in VOCABULARY[_CLASS_OF[m.group(0)]]
                   if w != m.group(0) and not (w.startswith("骨") and before in _BEFORE_GU)]
        if not choices:
            continue
        out.append(body[last:a])
        out.append(choices[int(rng.integers(len(choices)))])
        last = b
    out.append(body[last:])
    return "".join(out)


def _shuffle_findings(body: str, rng: np.random.Generator) -> str:
    """Finding sentences trade places; numbering markers and other sentences stay in their slots."""
    pieces = re.split(r"(?<=[。\n])", body)
    slots = [i for i, s in enumerate(pieces) if s.endswith("。") and _SITE_RE.search(s) and not _REST_RE.match(s)]
    if len(slots) < 2:
        return body
    marks, contents = [], []
    for i in slots:
        m = _MARKER_RE.match(pieces[i])
        k = m.end() if m else 0
        marks.append(pieces[i][:k])
        contents.append(pieces[i][k:])
    order = rng.permutation(len(slots))
    for i, mark, j in zip(slots, marks, order, strict=True):
        pieces[i] = mark + contents[int(j)]
    return "".join(pieces)


def _headers(sections: list[list[str]], rng: np.random.Generator) -> list[list[str]]:
    """Drop the headers, or write another hospital's; a bare two-paragraph report gets a pair."""
    headed = [s for s in sections if s[0]]
    paragraphs = [s for s in sections if s[1].strip()]
    if not headed:
        if len(paragraphs) == 2 and len(sections) <= 3:
            (fh, ih), _ = _HEADER_SETS[int(rng.integers(len(_HEADER_SETS)))]
            paragraphs[0][0], paragraphs[1][0] = fh, ih
        return sections
    if rng.random() < 0.5:
        out = []
        for h, b in sections:
            b = b[1:] if h and b.startswith("\n") else b
            out.append(["", b])
        return out
    (fh, ih), mh = _HEADER_SETS[int(rng.integers(len(_HEADER_SETS)))]
    new = {"findings": fh, "impression": ih, "method": mh}
    return [[new[_ROLES.get(h.replace(":", "："), "findings")] if h else "", b] for h, b in sections]


def augment_report(text: str, rng: np.random.Generator, strength: float = 1.0) -> str:
    """A training copy of ``text`` that says the same thing in other words.

    Args:
        text: a report (any house style, or none of them: unknown wording is left alone).
        rng: the source of randomness (one per worker; deterministic in its state).
        strength: scales how much changes; 0 returns ``text`` unchanged, 1 changes most
            reports in several places.

    Returns:
        the augmented report. Facts (sites, sides, metastatic / benign / normal) are kept; see
        the module docstring.
    """
    if strength <= 0 or not text.strip():
        return text
    sections = _sections(text)
    p_words = min(1.0, 0.5 * strength)
    for s in sections:
        s[1] = _swap_words(s[1], rng, p_words)
        if rng.random() < min(1.0, 0.5 * strength):
            s[1] = _shuffle_findings(s[1], rng)
    if rng.random() < min(1.0, 0.3 * strength):
        sections = _headers(sections, rng)
    out = _join(sections)
    headers = tuple(h for h, _ in sections if h)
    return add_slips(out, rng, poisson(rng, 1.0 * strength), keep=headers)
