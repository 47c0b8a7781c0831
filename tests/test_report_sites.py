"""The second reader: the region lexicon, which sites a report names as metastases, matching, the generator's
report-truth options and the scorer."""

from __future__ import annotations

import numpy as np
import pytest

from bonescan.data.report import findings_from_meta
from bonescan.data.second_reader import score_cases
from bonescan.data.styles import STYLES, VOCABULARY
from bonescan.data.synth import SynthConfig, synth_case
from bonescan.report_sites import (
    BENIGN_WORDS,
    FLAG_CONFIDENCE,
    LESION_FLAGS,
    ReportSite,
    benign_sites,
    called_benign_classes,
    place_classes,
    report_sites,
    second_read,
    site_matches,
    sites_in,
    verdict,
)


def _labels(text: str) -> list[str]:
    return [s.label for s in sites_in(text)]


@pytest.mark.parametrize("text", ["T7", "第7胸椎", "胸7椎体", "第七胸椎", "胸椎7", "胸7", "Ｔ７"])
def test_vertebra_variants(text):
    assert [s.label for s in report_sites(text + "见放射性浓聚，考虑骨转移。")] == ["T7"]


@pytest.mark.parametrize("text", ["左侧第5肋", "左第5肋", "左5肋", "左侧第五肋骨", "左第五后肋", "左侧第5前肋"])
def test_rib_variants(text):
    assert _labels(text) == ["rib_L5"]


def test_lists_ranges_and_other_bones():
    assert _labels("T7、T9") == ["T7", "T9"] and _labels("T7-9") == ["T7", "T8", "T9"]
    assert _labels("T7~T9") == ["T7", "T8", "T9"] and _labels("T12-L2") == ["T12", "L1", "L2"]
    assert _labels("第七至九胸椎") == ["T7", "T8", "T9"] and _labels("胸7、9椎体") == ["T7", "T9"]
    assert _labels("胸椎7、9") == ["T7", "T9"] and _labels("第7、9胸椎及第2腰椎") == ["T7", "T9", "L2"]
    assert _labels("右侧第4-6前肋") == ["rib_R4", "rib_R5", "rib_R6"] and _labels("双侧第5肋") == ["rib_R5", "rib_L5"]
    assert _labels("右股骨颈") == ["femur_R_proximal"] and _labels("左侧股骨中段") == ["femur_L_shaft"]
    assert _labels("右肱骨头") == ["humerus_R_proximal"] and _labels("左侧髂骨") == ["ilium_L"]
    assert _labels("胸骨柄") == ["sternum"] and _labels("骶骨") == ["sacrum"] and _labels("枕骨") == ["skull"]
    assert _labels("脊柱、骨盆诸骨") == ["group:cervical+thoracic+lumbar", "group:ilium+ischium+pubis+sacrum"]
    femur = sites_in("左侧股骨")[0]
    assert site_matches(femur, "femur_L_distal") and not site_matches(femur, "femur_R_distal")


def test_traditional_characters_are_read():
    assert [s.label for s in report_sites("胸椎第7節見放射性濃聚，考慮骨轉移。")] == ["T7"]


def test_only_metastases_count():
    report = ("检查所见：T7、L3见放射性浓聚。左侧第5肋见点状放射性浓聚。右侧髂骨见异常放射性浓聚。\n"
              "诊断意见：1. T7、L3骨转移。2. 左侧第5肋陈旧性骨折。")
    # T7 and L3: metastatic; rib: dismissed as benign; ilium: a finding the impression does not dismiss
    assert [s.label for s in report_sites(report)] == ["T7", "L3", "ilium_R"]
    assert report_sites("全身骨显像未见明显骨转移征象。L4、L5小关节退行性变。") == []
    assert verdict("T7骨转移可能性大") == "metastatic" and verdict("未见骨转移征象") == "negative"
    assert verdict("L4退变，非转移性") == "benign" and verdict("T7见放射性浓聚") == "neutral"


def test_every_benign_diagnosis_of_the_styles_is_known():
    words = {w for k in ("degenerative", "old_injury", "inflammatory", "benign", "not_metastatic") for w in VOCABULARY[k]}
    words |= {w for hs in STYLES.values() for dx in hs.dx.values() for w in dx}
    assert [w for w in sorted(words) if not any(b in w for b in BENIGN_WORDS)] == []


def test_matching_tolerance():
    assert site_matches(ReportSite("rib_L5"), "rib_L6") and not site_matches(ReportSite("rib_L5"), "rib_L7")
    assert not site_matches(ReportSite("rib_L5"), "rib_R5")
    assert site_matches(ReportSite("T12"), "L1") and site_matches(ReportSite("L5"), "sacrum")
    assert not site_matches(ReportSite("T7"), "T9")
    assert site_matches(ReportSite("femur_L_proximal"), "femur_L_shaft") and not site_matches(ReportSite("femur_L_proximal"), "femur_L_distal")
    assert site_matches(ReportSite(groups=("rib",)), "rib_R3") and not site_matches(ReportSite(groups=("rib",)), "T3")
    r = second_read([("sternum", "T5"), "rib_R9", ""], [ReportSite("T5"), ReportSite("skull")])
    assert r.in_report == (True, False, False) and r.found == (True, False)
    assert r.to_dict()["report_sites"][1] == {"site": "skull", "flag": "not_found"}


def test_benign_places_joints_included():
    """The places a report calls benign: joints read as their bones (a joint without a side, both sides'),
    only in benign sentences; a coarse group there excuses nothing."""
    knee = ["femur_R_distal", "tibia_R", "patella_R", "fibula_R"]
    assert [s.label for s in benign_sites("检查所见：右膝关节见放射性浓聚。诊断意见：右膝关节退行性变。")] == knee
    assert {s.label for s in benign_sites("双肩关节炎性改变可能。")} == {"humerus_R_proximal", "scapula_R", "humerus_L_proximal", "scapula_L"}
    assert [s.label for s in benign_sites("左侧第5肋陈旧性骨折。L4、L5小关节退行性变。")] == ["rib_L5", "L4", "L5"]
    assert benign_sites("骨盆外侧软组织见点状放射性浓聚，考虑尿液污染。") == []  # the pelvis: no bone named
    assert [s.label for s in benign_sites("右肘窝见浓聚灶，考虑注射点。")] == ["humerus_R_distal", "forearm_R"]
    # a joint is never a metastatic site, and a benign place is not read from a metastatic sentence
    assert report_sites("右膝关节见放射性浓聚，考虑骨转移。") == [] and benign_sites("T7、右膝关节骨转移。") == []


def test_generated_benign_findings_are_read_as_benign_places():
    """The generator's benign findings (degenerative knees and shoulders, arthritic hands and feet, old rib
    fractures, facets ...) lie at places benign_sites reads from their reports."""
    n = ok = 0
    for i in range(80):
        case = synth_case(13, i)
        if case.meta["report"]["style"] == "vague":
            continue
        places = {s.region for s in benign_sites(case.report)}
        for f in case.meta.get("benign", []):
            n += len(f["regions"])
            ok += sum(r in places for r in f["regions"])
    assert n > 40 and ok / n >= 0.95


def test_second_reader_flags_benign_places_and_uncertain_lesions():
    """A lesion in a bone the report calls benign is ``called_benign`` (the bone itself, not its neighbour);
    one below the flag's confidence is ``uncertain``; a named place wins over both."""
    sites = report_sites("T7见放射性浓聚，考虑骨转移。左侧第5肋陈旧性骨折。")
    benign = benign_sites("T7见放射性浓聚，考虑骨转移。左侧第5肋陈旧性骨折。")
    r = second_read(["T7", "rib_L5", "rib_L6", "skull", "skull"], sites, benign,
                    confidence=[0.5, 0.99, 0.99, 0.99, FLAG_CONFIDENCE - 0.01], min_confidence=FLAG_CONFIDENCE)
    assert r.to_dict()["lesions"] == ["in_report", "called_benign", "not_in_report", "not_in_report", "uncertain"]
    assert set(r.to_dict()["lesions"]) == set(LESION_FLAGS)
    assert r.not_in_report == (False, False, True, True, False)
    assert second_read(["rib_L5"], sites).to_dict()["lesions"] == ["not_in_report"]  # without the benign places
    with pytest.raises(ValueError, match="confidence"):
        second_read(["T7", "L1"], sites, confidence=[0.9])


def test_the_tokenizers_benign_flags_give_the_second_readers_called_benign():
    """postprocess leaves the lesions the report calls benign out of the BSI from the tokenizer's class flags
    (place_classes: report_regions, report_benign); the client's second reader reads the report itself. Both
    mark the same lesions, on generated reports and on every region a lesion may be named by, alone or with
    a neighbour as a second candidate."""
    from bonescan.anatomy import CLASS_REGION

    regions = sorted(set(CLASS_REGION[1:]))
    rng = np.random.default_rng(0)
    called = 0
    for i in range(30):
        report = synth_case(21, i).report
        places = place_classes(report)
        cands = [(r,) for r in regions] + [tuple(rng.choice(regions, 2, replace=False)) for _ in range(60)] + [()]
        by_classes = called_benign_classes(cands, places.wide, places.benign)
        read = second_read(cands, report_sites(report), benign_sites(report))
        assert by_classes == list(read.called_benign or [False] * len(cands)), i
        called += sum(by_classes)
    assert called > 20  # the generated reports call bones benign
    knee = place_classes("检查所见：右膝关节见放射性浓聚。诊断意见：右膝关节退行性变。")
    assert called_benign_classes([("femur_R_distal",), ("femur_L_distal",)], knee.wide, knee.benign) == [True, False]
    both = place_classes("右股骨远端骨转移。右膝关节退行性变。")  # named as a metastasis as well: counted
    assert called_benign_classes([("femur_R_distal",)], both.wide, both.benign) == [False]


@pytest.fixture(scope="module")
def truth_cases():
    cfg = SynthConfig(omit_lesion_rate=0.3, invent_site_rate=0.6)
    return [(synth_case(5, i), synth_case(5, i, cfg)) for i in range(24)]


def test_report_truth_options_change_only_the_report(truth_cases):
    omitted = invented = 0
    for plain, case in truth_cases:
        assert np.array_equal(plain.anterior, case.anterior) and np.array_equal(plain.mask, case.mask)
        assert np.array_equal(plain.regions, case.regions) and "report_truth" not in plain.meta
        truth = case.meta["report_truth"]
        sites = report_sites(case.report)
        by_id = {les["id"]: les for les in case.meta["lesions"]}
        if case.meta["report"]["style"] == "itemized":
            for i in truth["omitted"]:  # nothing the report names covers a lesion it left out
                assert by_id[i]["mention"] is None
                assert not any(site_matches(s, by_id[i]["region"]) for s in sites)
            for inv in truth["invented"]:
                assert any(s.region == inv["region"] for s in sites)
        omitted += len(truth["omitted"])
        invented += len(truth["invented"])
        mets, *_ = findings_from_meta(case.meta)  # the report can be written again as it was
        assert sorted(i for f in mets for i in f.ids) == sorted(
            [i for i in by_id if i not in truth["omitted"]] + [-1] * len(truth["invented"]))
    assert omitted > 5 and invented > 5


def test_scorer_on_report_truth_cases(truth_cases):
    cases = [c for _, c in truth_cases]
    images = np.stack([np.stack([c.anterior, c.posterior[:, ::-1]]).astype(np.float32) for c in cases])
    out = score_cases(images, np.stack([c.mask for c in cases]), np.stack([c.regions for c in cases]),
                      [c.report for c in cases], [c.meta for c in cases])
    assert out["not_in_report"]["tp"] > 0 and out["not_found"]["tp"] > 0
    assert out["not_in_report"]["recall"] >= 0.8 and out["not_found"]["recall"] >= 0.8
    assert out["naming"]["lesions"] > 0 and out["bsi"]["median"] >= 0


def test_generated_reports_parse_to_their_regions():
    n = ok = 0
    for i in range(40):
        case = synth_case(11, i)
        if case.meta["report"]["style"] != "itemized":
            continue
        sites = report_sites(case.report)
        for les in case.meta["lesions"]:
            n += 1
            ok += any(s.region == les["region"] for s in sites)
    assert n > 50 and ok / n >= 0.97


def test_scorer_on_answers_counts_missed_and_false_lesions(truth_cases):
    """Scored on a served answer: the true mask itself (named on the coarse grid) scores as the true lesions do;
    an answer that misses every lesion can flag none of the omitted ones (recall 0) and finds no report site
    (every true site a false not_found); a false positive the report does not name is a false not_in_report."""
    from bonescan import contract as C
    from bonescan.data.second_reader import answer_lesions, true_lesions

    cases = [c for _, c in truth_cases]
    images = np.stack([np.stack([c.anterior, c.posterior[:, ::-1]]).astype(np.float32) for c in cases])
    masks, regions = np.stack([c.mask for c in cases]), np.stack([c.regions for c in cases])
    reports, metas = [c.report for c in cases], [c.meta for c in cases]
    s = C.REGION_STRIDE
    truths = [true_lesions(masks[i], regions[i], images[i], metas[i]) for i in range(len(cases))]

    def score(answer_masks):
        answers = [answer_lesions(answer_masks[i], regions[i][:, s // 2 :: s, s // 2 :: s], s, images[i], truths[i])
                   for i in range(len(cases))]
        return score_cases(images, masks, regions, reports, metas, answers=answers)

    same = score(masks)
    assert same["not_in_report"]["recall"] >= 0.8 and same["not_in_report"]["fn"] == score_cases(
        images, masks, regions, reports, metas)["not_in_report"]["fn"]
    empty = score(np.zeros_like(masks))
    assert empty["not_in_report"]["tp"] == 0 and empty["not_in_report"]["fn"] >= same["not_in_report"]["tp"]
    assert empty["not_found"]["fp"] > same["not_found"]["fp"]
    spotted = masks.copy()
    spotted[:, 5:12, 5:12] = 1  # a hot spot in every scan's corner, on no lesion and named by no report
    assert score(spotted)["not_in_report"]["fp"] > same["not_in_report"]["fp"]
    # the same hot spot at a low probability is uncertain, not flagged: the flag's precision comes back
    prob = np.where(spotted > masks, 0.6, 0.99).astype(np.float32)
    unsure = [answer_lesions(spotted[i], regions[i][:, s // 2 :: s, s // 2 :: s], s, images[i], truths[i], prob[i])
              for i in range(len(cases))]
    assert score_cases(images, masks, regions, reports, metas, answers=unsure)["not_in_report"]["fp"] == same["not_in_report"]["fp"]


def test_named_place_prior_covers_the_named_bones_and_adds_only_hot_spots_in_them():
    """bench grounding's pieces: a report naming T7 and the left 5th rib names those classes (and their
    neighbours within one), the prior covers the cells either view labels so, and only a hot spot lying in the
    prior is added to the answer."""
    from bonescan import contract as C
    from bonescan.anatomy import CLASS_INDEX, class_of, named_prior
    from bonescan.failsafe import add_in_named_places as add_in_prior
    from bonescan.report_sites import named_classes

    named = named_classes("检查所见：T7椎体及左侧第5肋见放射性浓聚。诊断意见：骨转移。")
    assert named[class_of("T7")] and named[class_of("T8")] and named[class_of("rib_L5", "posterior")]
    assert not named[class_of("T10")] and not named[class_of("rib_R5", "posterior")] and not named[0]
    assert not named_classes("").any()
    s = C.REGION_STRIDE
    grid = np.zeros((2, C.IMAGE_HEIGHT // s, C.IMAGE_WIDTH // s), np.uint8)
    grid[1, 50:60, 30:34] = CLASS_INDEX["T7"]  # posterior view only
    prior = named_prior(named, grid, s)
    assert prior.shape == (C.IMAGE_HEIGHT, C.IMAGE_WIDTH) and prior.sum() == 10 * 4 * s * s
    logits = np.full(prior.shape, -8.0, np.float32)
    logits[205:212, 122:128] = -1.0  # p 0.27: in T7
    logits[700:707, 100:106] = -1.0  # p 0.27: in no named bone
    answer = np.zeros(prior.shape, bool)
    added = add_in_prior(answer, logits, prior, 0.2)
    assert added[205:212, 122:128].all() and not added[700:707].any()
    assert not add_in_prior(answer, logits, prior, 0.3).any()  # below the threshold: nothing
    held = np.zeros(prior.shape, bool)
    held[207:210, 124:126] = True  # a lesion the answer holds already, inside the hot spot: the hot spot does not widen it
    assert (add_in_prior(held, logits, prior, 0.2) == held).all()
    # the served rule around it: only when the prior is on, the report names a bone and the U-Net does not answer
    from dataclasses import replace

    from bonescan.failsafe import DUALPATH, UNET, FailSafeSettings, with_named_places

    on, named8 = FailSafeSettings(named_place_threshold=0.2), named.astype(np.uint8)
    assert (with_named_places(answer, logits, named8, grid, on, DUALPATH) == added).all()
    assert not with_named_places(answer, logits, named8, grid, on, UNET).any()
    assert not with_named_places(answer, logits, named8, grid, replace(on, named_place_threshold=0.0), DUALPATH).any()
    assert not with_named_places(answer, logits, np.zeros_like(named8), grid, on, DUALPATH).any()
    assert not with_named_places(answer, logits, None, grid, on, DUALPATH).any()
