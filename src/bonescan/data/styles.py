"""Hospital house styles of Chinese bone-scan reports: one frozen record of wording choices each.

A model trained on reports from one template learns the template: its headers, its word for
uptake, its way of naming T7. Reports from another hospital then read as noise. So the generator
writes in several independent house styles, each a :class:`HouseStyle` that states, in one place,
every choice a hospital makes: section headers, the method line, sentence frames, the words for
uptake, negation, certainty, metastasis and benign findings, how vertebrae and ribs are named, the
order of findings, impression numbering, the extras some hospitals add (clinical history, a
recommendation) and how often its typists slip. Styles share the clinical vocabulary (浓聚 is
universal) but no two make the same choices, so holding one style out of training leaves wording
the model has never seen.

Templates use two small conventions: ``{name}`` is a slot the writer fills (``{loc}`` a site,
``{uptake}`` a word from the style's uptake list ...), and ``[a|b]`` picks one alternative. A
tuple of templates is a choice; repeating an entry weights it.

:data:`VOCABULARY` is the shared clinical vocabulary in classes of interchangeable words; every
style draws its words from it, and ``augment.py`` swaps words within a class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

#: Interchangeable words, by class. A style's uptake, negation, certainty, metastasis and benign
#: words all come from here, so a synonym swap within a class never changes what a report says.
#: Uptake words come in three grammatical kinds that do not mix: nouns that take 灶 / 影 after them,
#: predicates (``T7显像剂分布增多``) and complete focus nouns (``异常热区``).
VOCABULARY: dict[str, tuple[str, ...]] = {
    "uptake_noun": ("放射性浓聚", "异常放射性浓聚", "放射性异常浓聚", "放射性分布异常浓聚", "异常放射性摄取增高",
                    "显像剂异常浓聚", "核素浓集", "异常核素浓集", "核素异常浓集"),
    "uptake_predicate": ("显像剂分布异常增多", "显像剂分布增多", "显像剂摄取增高", "骨代谢异常活跃", "骨代谢活跃",
                         "骨盐代谢增高"),
    "uptake_focus": ("异常热区", "放射性热区", "放射性增高灶", "放射性浓聚灶", "浓聚灶"),
    "negation": ("未见明显", "未见明确", "未见", "无明显", "无", "未发现", "未发现明显", "未显示"),
    "certainty_before": ("考虑", "提示", "倾向于", "疑为"),
    "certainty_after": ("可能性大", "可能"),
    "metastasis": ("骨转移", "骨转移瘤", "骨转移灶", "转移瘤", "转移灶", "骨转移性病变", "转移性骨肿瘤"),
    "not_metastatic": ("非转移性病变", "非转移性"),
    "degenerative": ("退行性变", "退行性改变", "退变", "骨质增生", "退行性骨关节病", "骨关节病"),
    "old_injury": ("陈旧性骨折", "外伤后改变", "骨折后改变"),
    "inflammatory": ("炎性改变", "炎症性改变"),
    "benign": ("良性病变", "良性改变"),
}

#: Certainty words that say "cannot be excluded": kept apart from the classes above because they
#: do not mean the same as 考虑 (a swap would change how sure the reader is).
HEDGES = ("不除外", "待排")

#: Injected activity and delay of the method line: 20-30 mCi (740-1110 MBq), 2.5-4 hours.
DOSES_MCI = (20, 22, 25, 25, 30)
DELAYS_H = ("3", "3", "3", "4", "2.5")

#: Clinical histories by the patient's sex ("" = either), in the words referring doctors write.
HISTORIES: dict[str, tuple[str, ...]] = {
    "M": ("前列腺癌术后", "前列腺癌内分泌治疗后", "前列腺癌", "前列腺癌根治术后PSA升高"),
    "F": ("乳腺癌术后", "乳腺癌化疗后", "左乳腺癌术后", "右乳癌改良根治术后", "乳腺癌术后化疗后"),
    "": ("肺腺癌", "右肺腺癌", "肺癌", "肾癌术后", "肾透明细胞癌术后", "鼻咽癌放疗后", "鼻咽癌", "结肠癌术后",
         "肝癌"),
}
#: Why the scan was asked for.
REASONS = ("评估骨转移情况", "骨痛待查", "分期评估", "术后复查", "了解有无骨转移")


@dataclass(frozen=True)
class SpineNaming:
    """How one hospital names vertebrae.

    forms (weights): ``letter`` T7, ``seg`` 胸7, ``segword`` 胸椎7, ``ordinal`` 第7胸椎,
    ``ordinal_zh`` 第七胸椎. ``body`` is appended to letter and seg forms (``T7椎体``).
    Runs of three or more become ranges in a share ``p_range`` of phrases, joined by
    ``range_sep`` (``T7-9`` / ``第7至9胸椎``), naming both ends in full when ``range_full``
    (``T7~T9``). ``share_prefix`` writes seg lists as ``胸7、9椎体`` rather than ``胸7、胸9椎体``.
    """

    forms: Mapping[str, float]
    body: tuple[str, ...] = ("",)
    range_sep: str = "-"
    range_full: bool = False
    p_range: float = 0.5
    share_prefix: bool = False
    joiner: tuple[str, ...] = ("、",)  # between cervical / thoracic / lumbar groups


@dataclass(frozen=True)
class RibNaming:
    """How one hospital names ribs: ``左侧第5、6肋`` / ``左第五后肋`` / ``左5肋`` / ``左侧第4-6前肋``."""

    p_ordinal: float = 1.0  # share written with 第
    p_zh: float = 0.0  # share with Chinese numerals (第五肋)
    range_sep: str = "-"
    p_range: float = 0.5  # share of phrases writing a run of three or more as a range
    p_arc: float = 0.4  # share naming the arc (前肋 / 后肋) when all lesions of the phrase share it
    bone: tuple[str, ...] = ("肋",)


@dataclass(frozen=True)
class HouseStyle:
    """Every wording choice of one hospital. See the module docstring for the template rules."""

    name: str
    description: str
    # -- layout
    headers: tuple[str, str] | None  # findings / impression headers; None: two bare paragraphs
    header_break: bool  # the header stands on a line of its own
    method_header: str  # a section of its own for the method line ("" = part of the findings)
    finding_break: bool  # one finding per line
    # -- method line, overview and closing sentences of the findings
    method: tuple[str, ...]  # {mci} {mbq} {hours}; "" = no method line
    overview_positive: tuple[str, ...]
    overview_negative: tuple[str, ...]  # {neg} {uptake} {except}
    except_benign: str  # {except} when benign findings follow a negative overview
    rest: tuple[str, ...]  # after the positive findings; {neg}; "" = none
    kidneys: tuple[str, ...]
    kidneys_faint: tuple[str, ...]
    # -- findings vocabulary and frames: {loc} {locs} {see} {shape} {form} {uptake} {focus}
    uptake: tuple[str, ...]
    shapes: tuple[str, ...]
    p_shape: float  # share of {shape} slots that name a shape
    see: tuple[str, ...]
    focus: tuple[str, ...]
    frames: tuple[str, ...]  # one site
    multi_frames: tuple[str, ...]  # several metastatic sites in one sentence
    p_multi: float
    # -- impression: {locs} {uptake} {cert} {met} {many} {neg} {groups}
    negation: tuple[str, ...]
    certainty: tuple[str, ...]  # frames around {m}: "考虑{m}", "{m}可能性大"
    metastasis: tuple[str, ...]
    met_impressions: tuple[str, ...]
    p_met_separate: float  # one impression item per site rather than one for all
    many_impressions: tuple[str, ...]  # more than three sites, in a share p_many of reports
    p_many: float
    negative_impressions: tuple[str, ...]
    clean_impressions: tuple[str, ...]  # also allowed when nothing at all is found
    # -- widespread disease
    p_vague: float  # share of scans with six or more lesions described only by coarse groups
    vague_findings: tuple[str, ...]  # {groups}
    vague_impressions: tuple[str, ...]
    coarse: Mapping[str, str]  # this hospital's words for the canonical coarse groups
    # -- benign findings: dx words by kind or family, frames {loc} {dx} {uptake}
    dx: Mapping[str, tuple[str, ...]]
    dismiss: tuple[str, ...]
    # -- naming
    side: tuple[str, ...]  # after 左 / 右: "侧" or ""
    spine: SpineNaming
    ribs: RibNaming
    segments: Mapping[str, tuple[str, ...]]  # proximal / shaft / distal of long bones
    # -- order and numbering
    order: Mapping[str, float]  # anatomical | importance | random (weights)
    numbering: str  # "{n}. " / "{n}、" / "（{n}）" / "{c}" (circled) / "" none
    item_break: bool  # one impression item per line
    # -- extras: {dx} {why} in history, placed "top" (a line above the findings) or "findings"
    p_history: float
    history: tuple[str, ...]
    history_at: str
    p_advice: float
    advice: tuple[str, ...]
    # -- typing habits
    p_fullwidth_digits: float  # reports typed with full-width digits (５ not 5)
    p_halfwidth_punct: float  # reports typed with half-width punctuation (, : ( ))
    slips: float  # expected character slips per report (dropped / doubled characters, spaces)
    tags: tuple[str, ...] = field(default=())  # free notes, e.g. where the style comes from


CLASSIC = HouseStyle(
    name="classic",
    description="the generator's original wording: 检查所见/诊断意见, mCi method line, mixed T7 / 第7胸椎 / 胸7椎体 "
                "naming, no history, advice or typing slips",
    headers=("检查所见：", "诊断意见："),
    header_break=False,
    method_header="",
    finding_break=False,
    method=("静脉注射99mTc-MDP {mci}mCi，{hours}小时后行全身骨显像（前位及后位）。", "99mTc-MDP全身骨显像（前、后位）：",
            "全身骨扫描前后位显像：", ""),
    overview_positive=("全身骨骼显影清晰，", "全身骨骼显影尚清晰，", "骨骼显影清晰，对比度良好，", ""),
    overview_negative=("全身骨骼显影清晰，放射性分布对称、均匀，{neg}异常放射性浓聚或稀疏缺损区。",
                       "全身骨骼显影清晰，双侧对称，{neg}异常放射性浓聚。",
                       "骨骼显影清晰，放射性分布大致均匀对称，{except}{neg}异常放射性浓聚灶。"),
    except_benign="除下述外",
    rest=("",),
    kidneys=("双肾及膀胱显影。", "双肾显影，膀胱显影。", "双肾及膀胱显影清晰。", "双肾显影淡，膀胱显影。"),
    kidneys_faint=("膀胱显影。", "双肾显影欠清，膀胱显影。"),
    uptake=("异常放射性浓聚", "放射性浓聚", "异常放射性摄取增高", "显像剂异常浓聚", "放射性分布异常浓聚"),
    shapes=("点状", "片状", "结节状", "团块状", "斑片状", "类圆形"),
    p_shape=0.8,
    see=("见", "可见", "示"),
    focus=("灶", "影", ""),
    frames=("{loc}{see}{shape}{uptake}{focus}。",),
    multi_frames=("{locs}{see}多发{shape}{uptake}灶。",),
    p_multi=0.5,
    negation=("未见明显",),
    certainty=("考虑{m}", "{m}可能性大"),
    metastasis=("骨转移", "骨转移瘤"),
    met_impressions=("{locs}异常放射性浓聚，考虑骨转移。", "{locs}骨转移瘤。", "考虑{locs}骨转移可能性大，建议结合临床。",
                     "{locs}{many}骨转移。"),
    p_met_separate=0.0,
    many_impressions=("多发骨转移。", "全身多发骨转移瘤。"),
    p_many=0.5,
    negative_impressions=("全身骨显像未见明显骨转移征象。", "未见明显骨转移征象。"),
    clean_impressions=("全身骨显像未见明显异常。",),
    p_vague=0.45,
    vague_findings=("[全身多处骨骼|全身骨骼多处]（{groups}）{see}多发{form}{uptake}灶，[分布不规则|大小不等|形态不一]。",),
    vague_impressions=("全身多发骨转移。", "多发骨转移瘤。", "全身骨骼多发异常浓聚，考虑多发骨转移。"),
    coarse={},
    dx={
        "degenerative_knee": ("退行性变", "骨关节炎", "关节退行性改变"),
        "degenerative_shoulder": ("退行性变", "关节炎性改变"),
        "facet_arthropathy": ("小关节退行性变", "骨质增生"),
        "cervical_spondylosis": ("退行性变",),
        "rib_fracture": ("骨折", "陈旧性骨折可能", "外伤后改变"),
        "compression_fracture": ("压缩性骨折", "压缩骨折（骨质疏松所致可能）"),
        "arthritis_hand": ("关节炎", "炎性改变"),
        "arthritis_foot": ("关节炎", "退行性变"),
        "sternoclavicular": ("退行性变",),
    },
    dismiss=("{loc}{dx}。",),
    side=("侧", "侧", "侧", "", ""),
    spine=SpineNaming(forms={"letter": 4, "ordinal": 3, "ordinal_zh": 1, "seg": 4}, body=("椎体", "椎体", "椎体", ""),
                      p_range=0.5, joiner=("、", "及")),
    ribs=RibNaming(p_zh=0.25, p_range=0.6, p_arc=0.4, bone=("肋", "肋骨")),
    segments={"proximal": ("上段", "近段"), "shaft": ("中段", "骨干"), "distal": ("下段", "远段")},
    order={"importance": 1, "random": 1},
    numbering="{n}. ",
    item_break=False,
    p_history=0.0,
    history=(),
    history_at="top",
    p_advice=0.0,
    advice=(),
    p_fullwidth_digits=0.0,
    p_halfwidth_punct=0.0,
    slips=0.0,
)

PROVINCIAL = HouseStyle(
    name="provincial",
    description="a provincial hospital's structured template: 影像所见/影像诊断 on their own lines, MBq and mCi, "
                "胸7、9椎体, items numbered 1、 one per line, 骨转移瘤, often 建议结合CT/MRI检查",
    headers=("影像所见：", "影像诊断："),
    header_break=True,
    method_header="",
    finding_break=False,
    method=("静脉注射99mTc-MDP {mbq}MBq（{mci}mCi），{hours}h后行前、后位全身骨显像。",
            "静脉注射99mTc-MDP {mbq}MBq后{hours}小时行全身骨显像（前位+后位）。"),
    overview_positive=("全身骨骼显像清晰，左右基本对称。", "全身骨骼显像清晰，对比度好。"),
    overview_negative=("全身骨骼显像清晰，左右对称，放射性分布均匀，{except}{neg}异常放射性浓聚或稀疏缺损区。",),
    except_benign="除下述外",
    rest=("余全身骨骼放射性分布均匀，{neg}异常放射性浓聚或稀疏缺损区。", "余骨骼{neg}异常。"),
    kidneys=("双肾及膀胱显影清晰。", "双肾及膀胱显影。"),
    kidneys_faint=("双肾显影欠清晰，膀胱显影。",),
    uptake=("异常放射性浓聚", "放射性异常浓聚", "放射性浓聚"),
    shapes=("点状", "片状", "结节状", "条片状"),
    p_shape=0.7,
    see=("可见",),
    focus=("影", "灶"),
    frames=("{loc}可见{shape}{uptake}{focus}。", "{loc}{uptake}，呈{form}。"),
    multi_frames=("{locs}可见多发{shape}{uptake}{focus}。",),
    p_multi=0.4,
    negation=("未见明显",),
    certainty=("考虑{m}", "符合{m}"),
    metastasis=("骨转移瘤", "骨转移"),
    met_impressions=("{locs}{uptake}，{cert}。", "{locs}{many}{met}。"),
    p_met_separate=0.3,
    many_impressions=("全身多发{met}。",),
    p_many=0.4,
    negative_impressions=("全身骨显像{neg}骨转移征象。",),
    clean_impressions=("全身骨显像{neg}异常。",),
    p_vague=0.4,
    vague_findings=("全身多处骨骼（{groups}等）可见多发{shape}{uptake}{focus}，[分布不规则|大小不等]。",),
    vague_impressions=("全身多发骨转移瘤。", "全身骨骼多发异常放射性浓聚，考虑多发骨转移瘤。"),
    coarse={},
    dx={"degenerative": ("退行性变",), "fracture": ("陈旧性骨折", "骨折"), "compression": ("压缩性骨折",),
        "arthritis": ("关节炎",)},
    dismiss=("{loc}{uptake}，考虑{dx}。", "{loc}{dx}可能。"),
    side=("侧",),
    spine=SpineNaming(forms={"seg": 1}, body=("椎体",), p_range=0.6, share_prefix=True, joiner=("、", "及")),
    ribs=RibNaming(p_zh=0.0, p_range=0.7, p_arc=0.5),
    segments={"proximal": ("上段",), "shaft": ("中段",), "distal": ("下段",)},
    order={"anatomical": 1},
    numbering="{n}、",
    item_break=True,
    p_history=0.35,
    history=("临床诊断：{dx}。",),
    history_at="top",
    p_advice=0.4,
    advice=("建议结合CT/MRI检查。", "建议结合临床及其他影像学检查。"),
    p_fullwidth_digits=0.0,
    p_halfwidth_punct=0.05,
    slips=0.1,
)

BRACKET = HouseStyle(
    name="bracket",
    description="a county hospital's template editor: 【检查方法】【检查所见】【检查结论】, 核素浓集, 第7胸椎, "
                "左第5肋, （1） numbering, 骨质增生, frequent typing slips",
    headers=("【检查所见】", "【检查结论】"),
    header_break=False,
    method_header="【检查方法】",
    finding_break=False,
    method=("静脉注射99mTc-MDP后{hours}小时行全身骨显像。", "99mTc-MDP {mci}mCi静脉注射，{hours}小时后前后位全身骨扫描。"),
    overview_positive=("全身骨骼显影清晰。", "全身骨骼显影尚可。"),
    overview_negative=("全身骨骼显影清晰，核素分布对称、均匀，{except}{neg}异常核素浓集或稀疏区。",),
    except_benign="除下列所见外",
    rest=("余骨{neg}异常核素浓集及稀疏区。", "其余骨骼核素分布大致均匀。"),
    kidneys=("双肾、膀胱显影。",),
    kidneys_faint=("双肾显影淡，膀胱显影。",),
    uptake=("核素浓集", "异常核素浓集", "核素异常浓集"),
    shapes=("结节状", "片状", "点状", "条状"),
    p_shape=0.8,
    see=("见",),
    focus=("区", "灶"),
    frames=("{loc}见{shape}{uptake}{focus}。",),
    multi_frames=("{locs}见多发{shape}{uptake}{focus}。",),
    p_multi=0.5,
    negation=("无", "未见"),
    certainty=("提示{m}", "考虑{m}"),
    metastasis=("骨转移", "转移灶"),
    met_impressions=("{locs}{uptake}，{cert}。", "{locs}{met}。"),
    p_met_separate=0.2,
    many_impressions=("多发{met}。",),
    p_many=0.5,
    negative_impressions=("全身骨扫描{neg}骨转移征象。", "{neg}骨转移征象。"),
    clean_impressions=("全身骨扫描{neg}异常。",),
    p_vague=0.5,
    vague_findings=("{groups}见多发{uptake}灶，[部分融合|形态不一]。",),
    vague_impressions=("全身骨骼多发核素浓集，提示多发骨转移。", "多发骨转移。"),
    coarse={"骨盆": "骨盆诸骨"},
    dx={"degenerative": ("骨质增生", "退行性变"), "fracture": ("骨折", "外伤后改变"), "compression": ("压缩性骨折",),
        "arthritis": ("关节炎",)},
    dismiss=("{loc}{dx}。", "{loc}核素浓集，考虑{dx}。"),
    side=("",),
    spine=SpineNaming(forms={"ordinal": 1}, p_range=0.6),
    ribs=RibNaming(p_zh=0.0, p_range=0.5, p_arc=0.3),
    segments={"proximal": ("近端",), "shaft": ("骨干",), "distal": ("远端",)},
    order={"importance": 1},
    numbering="（{n}）",
    item_break=False,
    p_history=0.15,
    history=("临床资料：{dx}。",),
    history_at="top",
    p_advice=0.2,
    advice=("建议随访复查。",),
    p_fullwidth_digits=0.2,
    p_halfwidth_punct=0.15,
    slips=0.3,
)

TEACHING = HouseStyle(
    name="teaching",
    description="a university hospital, verbose and cautious: 描述：/提示：, history and MBq method line, "
                "显像剂分布增多, T7~T9, ① numbering, 可能性大 / 不除外, 骨转移性病变, biopsy advice",
    headers=("描述：", "提示："),
    header_break=False,
    method_header="",
    finding_break=False,
    method=("静脉注射99mTc-MDP {mbq}MBq，{hours}小时后行全身前、后位平面显像。",
            "患者静脉注射显像剂99mTc-MDP {mbq}MBq，约{hours}小时后行全身骨显像。"),
    overview_positive=("全身骨骼显像清晰，", "全身骨骼显像清晰，软组织本底较低，"),
    overview_negative=("全身骨骼显像清晰，显像剂分布左右对称、均匀，{except}{neg}异常显像剂浓聚或稀疏缺损。",),
    except_benign="除下述外",
    rest=("余骨骼显像剂分布对称、均匀，{neg}异常显像剂浓聚。",),
    kidneys=("双肾显影，膀胱显影。", "双肾及膀胱显影良好。"),
    kidneys_faint=("双肾显影淡，膀胱显影。",),
    uptake=("显像剂分布异常增多", "显像剂摄取增高", "显像剂分布增多"),
    shapes=("结节状", "斑片状", "点状", "团片状"),
    p_shape=1.0,
    see=("可见",),
    focus=("",),
    frames=("{loc}{uptake}，呈{form}。", "{loc}可见{form}显像剂异常浓聚。"),
    multi_frames=("{locs}{uptake}，呈多发{form}。",),
    p_multi=0.5,
    negation=("未见明确",),
    certainty=("{m}可能性大", "不除外{m}", "倾向于{m}"),
    metastasis=("骨转移性病变", "转移性骨肿瘤"),
    met_impressions=("{locs}{uptake}，{cert}。",),
    p_met_separate=0.3,
    many_impressions=("全身多发{met}。",),
    p_many=0.3,
    negative_impressions=("全身骨显像{neg}骨转移征象。", "{neg}骨转移性病变征象。"),
    clean_impressions=(),
    p_vague=0.35,
    vague_findings=("全身骨骼多处（{groups}）{uptake}，呈多发{form}，[大小不一|分布不均]。",),
    vague_impressions=("全身骨骼多发显像剂异常浓聚，骨转移性病变可能性大。", "多发骨转移性病变。"),
    coarse={"四肢骨": "四肢长骨"},
    dx={"degenerative": ("退行性改变", "骨关节病"), "fracture": ("外伤后改变", "陈旧性骨折"),
        "compression": ("压缩性骨折（骨质疏松所致可能）",), "arthritis": ("炎性改变", "关节炎")},
    dismiss=("{loc}{uptake}，良性病变可能（{dx}）。", "{loc}{dx}可能，非转移性病变。"),
    side=("侧",),
    spine=SpineNaming(forms={"letter": 1}, range_sep="~", range_full=True, p_range=0.7),
    ribs=RibNaming(p_zh=0.0, range_sep="~", p_range=0.6, p_arc=0.6),
    segments={"proximal": ("近段",), "shaft": ("中段",), "distal": ("远段",)},
    order={"importance": 1},
    numbering="{c}",
    item_break=True,
    p_history=0.6,
    history=("病史：{dx}。", "病史：{dx}，{why}。"),
    history_at="top",
    p_advice=0.5,
    advice=("建议结合MRI检查。", "必要时活检。", "建议结合CT/MRI检查，必要时活检。"),
    p_fullwidth_digits=0.0,
    p_halfwidth_punct=0.0,
    slips=0.1,
)

IMPRESSION = HouseStyle(
    name="impression",
    description="a private clinic with a western-trained reading style: 所见：/印象：, terse, 异常热区, T7-T9, "
                "左5肋 without 第 or 侧, 转移瘤, findings in no fixed order, half-width commas",
    headers=("所见：", "印象："),
    header_break=False,
    method_header="",
    finding_break=True,
    method=("", "", "99mTc-MDP全身骨显像。"),
    overview_positive=("",),
    overview_negative=("全身骨骼{neg}异常热区。", "全身骨骼放射性分布对称，{except}{neg}异常热区或冷区。"),
    except_benign="除下述外",
    rest=("其余骨骼{neg}异常热区。", ""),
    kidneys=("双肾膀胱显影。", "双肾及膀胱显影正常。"),
    kidneys_faint=("肾脏显影淡，膀胱显影。",),
    uptake=("异常热区", "放射性热区"),
    shapes=("点状", "片状", "小"),
    p_shape=0.3,
    see=("见",),
    focus=("",),
    frames=("{loc}见{shape}{uptake}。", "{loc}{uptake}。"),
    multi_frames=("{locs}见{uptake}。", "{locs}多发{uptake}。"),
    p_multi=0.6,
    negation=("未发现", "无"),
    certainty=("考虑{m}", "疑为{m}"),
    metastasis=("转移瘤", "转移灶"),
    met_impressions=("{locs}{uptake}，{cert}。", "{locs}{met}。"),
    p_met_separate=0.5,
    many_impressions=("多发{met}。",),
    p_many=0.5,
    negative_impressions=("{neg}骨转移征象。", "{neg}明确转移灶。"),
    clean_impressions=(),
    p_vague=0.5,
    vague_findings=("{groups}多发{uptake}。",),
    vague_impressions=("广泛骨转移瘤。", "多发转移瘤。"),
    coarse={"脊柱": "脊椎"},
    dx={"degenerative": ("退变",), "fracture": ("骨折后改变",), "compression": ("压缩骨折",),
        "arthritis": ("关节炎",)},
    dismiss=("{loc}{dx}，非转移性。", "{loc}{dx}。"),
    side=("",),
    spine=SpineNaming(forms={"letter": 1}, range_full=True, p_range=0.8),
    ribs=RibNaming(p_ordinal=0.0, p_range=0.8, p_arc=0.5),
    segments={"proximal": ("近端",), "shaft": ("中段",), "distal": ("远端",)},
    order={"random": 1},
    numbering="{n}. ",
    item_break=True,
    p_history=0.3,
    history=("临床：{dx}。",),
    history_at="top",
    p_advice=0.4,
    advice=("建议随访复查。", "建议3个月后复查。"),
    p_fullwidth_digits=0.0,
    p_halfwidth_punct=0.6,
    slips=0.2,
)

PLAIN = HouseStyle(
    name="plain",
    description="a small hospital's free-typed text: no headers, two paragraphs, 放射性增高灶, 胸椎7, "
                "左侧第五至七肋, 骨转移待排, no numbering, the most typing slips",
    headers=None,
    header_break=False,
    method_header="",
    finding_break=False,
    method=("99mTc-MDP全身骨显像：", ""),
    overview_positive=("全身骨骼显影尚清晰，", "骨骼显影清晰，"),
    overview_negative=("全身骨骼显影清晰，放射性分布均匀对称，{except}{neg}放射性增高灶。",
                       "全身骨骼显影清晰，{except}{neg}明显异常放射性增高灶。"),
    except_benign="除下述外",
    rest=("余骨骼放射性分布大致均匀。", ""),
    kidneys=("双肾及膀胱显影。",),
    kidneys_faint=("膀胱显影。",),
    uptake=("放射性增高灶", "放射性浓聚灶", "浓聚灶"),
    shapes=("点状", "片状", "小片状"),
    p_shape=0.5,
    see=("见", "可见"),
    focus=("",),
    frames=("{loc}{see}{shape}{uptake}。",),
    multi_frames=("{locs}{see}多个{uptake}。", "{locs}{see}{shape}{uptake}。"),
    p_multi=0.5,
    negation=("未见",),
    certainty=("{m}待排", "考虑{m}"),
    metastasis=("骨转移", "骨转移性病变"),
    met_impressions=("{locs}{uptake}，{cert}。", "{locs}{cert}。"),
    p_met_separate=0.0,
    many_impressions=("多发{met}。",),
    p_many=0.5,
    negative_impressions=("{neg}明显骨转移征象。",),
    clean_impressions=("骨显像{neg}异常。",),
    p_vague=0.5,
    vague_findings=("{groups}{see}多发{uptake}，[散在分布|大小不一]。",),
    vague_impressions=("多发骨转移。", "全身骨多发转移。"),
    coarse={},
    dx={"degenerative": ("骨质增生", "退行性变"), "fracture": ("陈旧性骨折",), "compression": ("压缩性骨折",),
        "arthritis": ("炎性改变",)},
    dismiss=("{loc}{dx}。", "{loc}{dx}可能。"),
    side=("侧", ""),
    spine=SpineNaming(forms={"segword": 1}, p_range=0.5, joiner=("、", "及")),
    ribs=RibNaming(p_zh=0.7, range_sep="至", p_range=0.5, p_arc=0.2),
    segments={"proximal": ("上段",), "shaft": ("骨干",), "distal": ("下段",)},
    order={"anatomical": 1, "random": 1},
    numbering="",
    item_break=False,
    p_history=0.25,
    history=("患者{dx}，", "{dx}，{why}。"),
    history_at="findings",
    p_advice=0.3,
    advice=("建议随访。", "请结合临床。"),
    p_fullwidth_digits=0.3,
    p_halfwidth_punct=0.2,
    slips=0.6,
)

METABOLIC = HouseStyle(
    name="metabolic",
    description="a hospital with SPECT/CT that reads bone metabolism: 检查描述/检查意见 on their own lines, "
                "骨代谢异常活跃, 第七胸椎, 左侧第五后肋, 提示 ... 骨转移性病变, advice to add SPECT/CT",
    headers=("检查描述：", "检查意见："),
    header_break=True,
    method_header="",
    finding_break=False,
    method=("静脉注射99mTc-MDP {mci}mCi，{hours}小时后行前后位全身骨显像。", ""),
    overview_positive=("全身骨骼显像清晰，",),
    overview_negative=("全身骨骼显像清晰，骨代谢分布对称、均匀，{except}{neg}骨代谢异常活跃灶。",),
    except_benign="除以下所述外",
    rest=("其余骨骼{neg}骨代谢异常。",),
    kidneys=("双肾显影，膀胱显影。",),
    kidneys_faint=("双肾显影淡，膀胱显影。",),
    uptake=("骨代谢异常活跃", "骨代谢活跃", "骨盐代谢增高"),
    shapes=("点状", "片状", "结节状", "条状"),
    p_shape=1.0,
    see=("见",),
    focus=("",),
    frames=("{loc}{uptake}，呈{form}放射性浓聚。", "{loc}{uptake}。"),
    multi_frames=("{locs}{uptake}，呈多发{form}放射性浓聚。",),
    p_multi=0.5,
    negation=("未见明显", "未显示"),
    certainty=("提示{m}", "考虑{m}可能"),
    metastasis=("骨转移性病变", "骨转移"),
    met_impressions=("{locs}{uptake}，{cert}。",),
    p_met_separate=0.2,
    many_impressions=("全身多发{met}。",),
    p_many=0.4,
    negative_impressions=("全身骨显像{neg}骨转移征象。",),
    clean_impressions=("全身骨显像{neg}异常。",),
    p_vague=0.4,
    vague_findings=("{groups}多处{uptake}，呈多发{form}放射性浓聚。",),
    vague_impressions=("全身骨骼多处骨代谢异常活跃，提示多发骨转移性病变。", "全身多发骨转移。"),
    coarse={"脊柱": "脊椎", "四肢骨": "四肢骨骼"},
    dx={"degenerative": ("退行性骨关节病", "退行性变"), "fracture": ("陈旧性骨折",), "compression": ("压缩性骨折",),
        "arthritis": ("炎性改变",)},
    dismiss=("{loc}骨代谢活跃，考虑{dx}。", "{loc}{dx}，考虑良性病变。"),
    side=("侧",),
    spine=SpineNaming(forms={"ordinal_zh": 3, "ordinal": 1}, range_sep="至", p_range=0.6),
    ribs=RibNaming(p_zh=0.9, range_sep="至", p_range=0.5, p_arc=0.6),
    segments={"proximal": ("近端", "上段"), "shaft": ("骨干",), "distal": ("远端",)},
    order={"anatomical": 1},
    numbering="{n}.",
    item_break=True,
    p_history=0.4,
    history=("病史摘要：{dx}，{why}。",),
    history_at="top",
    p_advice=0.3,
    advice=("建议局部SPECT/CT断层显像。", "建议结合MRI检查。"),
    p_fullwidth_digits=0.1,
    p_halfwidth_punct=0.0,
    slips=0.15,
)

#: Every house style by name. The order is part of the generator: synth_case draws an index.
STYLES: dict[str, HouseStyle] = {s.name: s for s in (CLASSIC, PROVINCIAL, BRACKET, TEACHING, IMPRESSION, PLAIN, METABOLIC)}
STYLE_NAMES: tuple[str, ...] = tuple(STYLES)


def get_style(style: str | HouseStyle) -> HouseStyle:
    """A style by name (or the style itself). Raises ValueError naming the known styles."""
    if isinstance(style, HouseStyle):
        return style
    try:
        return STYLES[style]
    except KeyError:
        raise ValueError(f"unknown house style {style!r}; known: {', '.join(STYLE_NAMES)}") from None


def pick_style(rng: np.random.Generator, names: tuple[str, ...] | list[str] = ()) -> str:
    """One style name, uniformly among ``names`` (default: all), drawn from ``rng``."""
    pool = tuple(names) or STYLE_NAMES
    for n in pool:
        get_style(n)
    return pool[int(rng.integers(len(pool)))]
