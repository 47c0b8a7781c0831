"""What the tokenizer reads: a report normalised to the words the model was trained on, and whether it
states a skeletal finding at all.

Chinese hospitals write the same facts in several scripts and registers. The model was trained on
reports in simplified characters in seven house styles; before a report is tokenized (in training,
evaluation, the Triton ``tokenizer`` step and the client alike) :func:`normalize_report` brings
other ways of writing the same facts to the model's words, so the fail-safe judges what the model
reads rather than how it was typed:

* NFKC: full-width letters, digits and punctuation (``Ｔ７，（＋）``) become plain ones;
* traditional to simplified characters (OpenCC's ``t2s`` conversion; a Taiwan or Hong Kong
  hospital's ``胸椎第7節見放射性濃聚`` reads as ``胸椎第7节见放射性浓聚``); simplified text passes
  unchanged;
* the English shorthand of bilingual reports (:data:`SHORTHAND`): ``Rt 5th rib post.`` ->
  ``右侧第5后肋``, ``c/w mets`` -> ``考虑骨转移``, ``r/o`` -> ``不除外``, ``NED`` -> ``未见骨转移征象``,
  ``(+)`` / ``(-)``, bones (``ilium`` -> ``髂骨``), uptake, section headers. Vertebrae in letter form
  (``T7``, ``L3-5``) are already the model's words and stay.

:func:`names_a_finding` says whether a normalised text states anything about the skeleton: a
bone or a place in it, an uptake, or a verdict (metastasis, benign, normal, negative). A text that
does not ("see attached", "待复查", "详见报告", a file path, an empty template, a method line alone)
is no report, whatever the model would read into it (bonescan.failsafe).

Needs OpenCC (pip ``opencc``) and the standard library only: the Triton tokenizer step runs this file.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

#: OpenCC's configuration: traditional characters (any region's) to simplified
OPENCC_CONFIG = "t2s"
#: the OpenCC release pinned in pyproject.toml, requirements/lock.txt and the NGC container (serving/ngc_requirements.txt)
OPENCC_VERSION = "1.4.2"


@lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC(OPENCC_CONFIG)


_SIDE = {"rt": "右", "r": "右", "right": "右", "lt": "左", "l": "左", "left": "左", "bilateral": "双", "bil": "双",
         "b/l": "双", "both": "双"}
_ARC = {"ant": "前", "anterior": "前", "post": "后", "posterior": "后", "": ""}
_NUM = r"\d{1,2}(?:st|nd|rd|th)?"
_NUMS = rf"{_NUM}(?:\s*(?:[-~,、/&]|and|to)\s*{_NUM})*"
_ARC_RE = r"(?:ant(?:erior)?|post(?:erior)?)"
#: "Rt 5th rib post.", "left 4th-6th ribs", "R 5,6 ribs", "Lt post. 7th rib", "bilateral 3rd ribs"
_RIB = re.compile(
    rf"\b(?P<side>rt|lt|right|left|bilateral|bil|b/l|both|r|l)\.?\s*(?P<arc1>{_ARC_RE})?\.?\s*(?P<nums>{_NUMS})\s*"
    rf"(?P<arc2>{_ARC_RE})?\.?\s*ribs?\b\.?(?:\s*(?P<arc3>{_ARC_RE})\b\.?)?", re.IGNORECASE)
#: "5th rib on the right", "ribs 5-7 right"
_RIB_AFTER = re.compile(rf"\bribs?\s*(?P<nums>{_NUMS})\s*(?:on the\s*)?(?P<side>rt|lt|right|left|r|l)\b\.?", re.IGNORECASE)
#: vertebrae typed with a space or a dash: "T 7", "T-7" (but not "T7-9", a range)
_VERTEBRA = re.compile(r"\b([CTLctl])[\s-]+(\d{1,2})\b")
#: a side as a capital letter before a word ("L iliac bone"; a vertebra has a digit after its letter)
_SIDE_LETTER = re.compile(r"\b([RL])\.?\s+(?=[A-Za-z])")


def _rib_numbers(nums: str) -> str:
    parts = re.split(r"\s*(?:,|、|/|&|and)\s*", re.sub(r"(?<=\d)(?:st|nd|rd|th)", "", nums, flags=re.IGNORECASE))
    return "、".join(re.sub(r"\s*(?:~|to)\s*", "-", p.strip()) for p in parts if p.strip())


def _rib(m: re.Match) -> str:
    arc = next((m.group(k) for k in ("arc1", "arc2", "arc3") if m.groupdict().get(k)), "") or ""
    arc = _ARC[arc.lower().rstrip(".")] if arc else ""
    return f"{_SIDE[m.group('side').lower()]}侧第{_rib_numbers(m.group('nums'))}{arc}肋"


#: English shorthand of bilingual reports -> the words of the model's training reports, applied in
#: this order (longer phrases first), case-insensitive, on word boundaries.
SHORTHAND: tuple[tuple[str, str], ...] = (
    # verdicts
    (r"no evidence of (?:osseous |bony |skeletal |bone )?(?:metastatic disease|metastases|metastasis|mets|disease)", "未见骨转移征象"),
    (r"ned", "未见骨转移征象"),
    (r"(?:negative|normal|unremarkable) (?:whole[- ]body )?bone scan", "全身骨显像未见明显异常"),
    (r"bone scan (?:is |was )?(?:negative|normal|unremarkable)", "全身骨显像未见明显异常"),
    (r"(?:osseous |bony |skeletal |bone )?(?:metastatic (?:disease|lesions?|deposits?|foci)|metastases|metastasis|mets|mets\.)", "骨转移"),
    (r"c/w|consistent with|compatible with|suggestive of|suspicious for|concerning for|likely|probable", "考虑"),
    (r"r/o|rule out|cannot (?:be )?exclude[d]?|not excluded|cannot rule out", "不除外"),
    (r"degenerative (?:joint disease|changes?|disease)|djd|osteoarthritis|oa|arthritis|arthropathy|spondylosis", "退行性变"),
    (r"(?:old|healed|prior) (?:fractures?|fx)", "陈旧性骨折"),
    (r"compression fractures?", "压缩性骨折"),
    (r"fractures?|fx", "骨折"),
    (r"benign", "良性病变"),
    (r"post[- ]?traumatic|trauma", "外伤后改变"),
    # uptake
    (r"(?:focal |abnormal |increased |intense |avid |mild |moderate )*(?:radio)?(?:tracer |mdp |radiotracer )?(?:uptake|activity|accumulation)",
     "异常放射性浓聚"),
    (r"hot ?spots?|foci|focus|lesions?", "异常放射性浓聚灶"),
    (r"photopenic|cold defects?", "放射性稀疏缺损"),
    # places
    (r"skull|calvari(?:um|a)", "颅骨"),
    (r"sternum|sternal", "胸骨"),
    (r"clavicles?|clavicular", "锁骨"),
    (r"scapulae?|scapular", "肩胛骨"),
    (r"humer(?:us|i)|humeral", "肱骨"),
    (r"pelvis|pelvic bones?|pelvic", "骨盆"),
    (r"il(?:ium|ia)|iliac (?:bones?|wings?|crests?)|iliac", "髂骨"),
    (r"sacrum|sacral", "骶骨"),
    (r"ischi(?:um|a)|ischial", "坐骨"),
    (r"pub(?:is|ic bones?|ic)", "耻骨"),
    (r"fem(?:ur|ora|urs)|femoral (?:heads?|necks?)|femoral", "股骨"),
    (r"tibi(?:a|ae|al)", "胫骨"),
    (r"fibul(?:a|ae|ar)", "腓骨"),
    (r"patell(?:a|ae|ar)", "髌骨"),
    (r"cervical spine|c[- ]spine", "颈椎"),
    (r"thoracic spine|t[- ]spine", "胸椎"),
    (r"lumbar spine|l[- ]spine", "腰椎"),
    (r"spine|spinal", "脊柱"),
    (r"vertebral bod(?:y|ies)|vertebrae|vertebra", "椎体"),
    (r"ribs?", "肋骨"),
    (r"knees?", "膝关节"),
    (r"shoulders?", "肩关节"),
    (r"proximal|prox\.?", "上段"),
    (r"distal|dist\.?", "下段"),
    (r"shaft|diaphysis", "中段"),
    (r"right|rt", "右侧"),
    (r"left|lt", "左侧"),
    (r"bilateral(?:ly)?|bil|b/l|both", "双侧"),
    (r"multiple|multifocal|diffuse|widespread", "多发"),
    (r"kidneys?|renal", "双肾"),
    (r"bladder", "膀胱"),
    (r"injection site", "注射点"),
    # layout and the rest
    (r"(?:whole[- ]body )?bone scan(?:ning)?|wbbs|bone scintigraphy", "全身骨显像"),
    (r"findings?\s*:", "检查所见："),
    (r"impressions?\s*:|conclusions?\s*:|imp\s*:|dx\s*:", "诊断意见："),
    (r"(?:clinical )?history\s*:|hx\s*:|indication\s*:", "临床诊断："),
    (r"prostate (?:ca|cancer)", "前列腺癌"),
    (r"breast (?:ca|cancer)", "乳腺癌"),
    (r"lung (?:ca|cancer)", "肺癌"),
    (r"s/p", "术后"),
    (r"f/u|follow[- ]up", "随访"),
    (r"w/o", "未见"),
    (r"w/", "及"),
    (r"no|without", "未见"),
    (r"seen|noted|demonstrated|identified|present|shows?", "见"),
    (r"and|with", "及"),
    (r"at|in|of|the|on|is|are|a|an|for|to|involving|within", ""),
)
#: one pass over all of SHORTHAND: at each place the first phrase of the table that matches wins
_SHORTHAND = re.compile("(?<![A-Za-z])(?:" + "|".join(f"(?P<s{i}>{p})" for i, (p, _) in enumerate(SHORTHAND)) + ")(?![A-Za-z])",
                        re.IGNORECASE)
_SIGNS = ((re.compile(r"\(\s*\+\s*\)"), "异常放射性浓聚"), (re.compile(r"\(\s*-\s*\)"), "未见异常放射性浓聚"))
_LATIN = re.compile(r"[A-Za-z]")
#: a run of printable ASCII: where the English of a report is (after NFKC, Chinese punctuation is ASCII too)
_ASCII_RUN = re.compile(r"[ -~]+")


def _english(run: str) -> str:
    """One run of ASCII text with its shorthand brought to the model's words."""
    if not _LATIN.search(run) and "(" not in run:
        return run
    for rx, zh in _SIGNS:
        run = rx.sub(zh, run)
    run = _RIB.sub(_rib, run)
    run = _RIB_AFTER.sub(lambda m: f"{_SIDE[m.group('side').lower()]}侧第{_rib_numbers(m.group('nums'))}肋", run)
    run = _VERTEBRA.sub(lambda m: m.group(1).upper() + m.group(2), run)
    run = _SIDE_LETTER.sub(lambda m: _SIDE[m.group(1).lower()] + "侧", run)
    return _SHORTHAND.sub(lambda m: SHORTHAND[int(str(m.lastgroup)[1:])][1], run)


def normalize_report(text: str) -> str:
    """A report as the model reads it (see the module docstring); idempotent, and the identity on
    the simplified-character reports of the training house styles up to NFKC."""
    if not text:
        return text
    t = _t2s().convert(unicodedata.normalize("NFKC", text))
    if not _LATIN.search(t) and "(" not in t:
        return t
    t = _ASCII_RUN.sub(lambda m: _english(m.group()), t)
    # English words leave spaces behind between Chinese words (the tokenizer drops whitespace anyway)
    return re.sub(r"(?<=[^\x00-\x7f]) +(?=[^\x00-\x7f])", "", t)


#: words that state something about the skeleton: a bone or a place in it, an uptake, or a verdict
FINDING_TERMS = (
    # bones and places
    "颅", "颈椎", "胸椎", "腰椎", "椎体", "椎", "骶", "尾骨", "肋", "胸骨", "锁骨", "肩胛", "肱骨", "尺骨", "桡骨", "骨盆", "髂",
    "坐骨", "耻骨", "股骨", "髌", "胫", "腓", "膝", "肩", "肘", "腕", "踝", "髋", "足部", "手部", "指骨", "趾骨", "脊柱", "下颌",
    "关节",
    # uptake
    "浓聚", "浓集", "热区", "摄取", "代谢", "分布增多", "分布异常", "增高灶", "稀疏", "缺损", "异常",
    # verdicts
    "转移", "阴性", "阳性", "正常", "良性", "退行", "骨折", "关节炎", "增生", "病变", "病灶", "炎性",
)
_FINDING = re.compile("|".join(map(re.escape, FINDING_TERMS)) + r"|(?<![a-z/\\\d])[ctl]\d{1,2}(?![\d/\\.]*[a-z/\\])",
                      re.IGNORECASE)


def finding_terms(normalized: str) -> int:
    """How many words of :data:`FINDING_TERMS` (or vertebrae in letter form) a normalised report holds."""
    return len(_FINDING.findall(normalized)) if normalized else 0


def names_a_finding(normalized: str) -> bool:
    """Whether a normalised report states anything about the skeleton (see the module docstring)."""
    return finding_terms(normalized) > 0
