"""What the tokenizer reads (bonescan.report_text): reports normalised to the training words, and whether a
text states a skeletal finding; texts that are no report (data.nonreport, benchmarks/nonreports.txt)."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pytest

from bonescan.report_text import finding_terms, names_a_finding, normalize_report


def _no_space(t: str) -> str:
    return re.sub(r"\s+", "", t)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    from bonescan.data.corpus import report_corpus
    from bonescan.data.styles import STYLES

    return [t for s in STYLES for t in report_corpus(60, 5, [s])]


def test_normalisation_leaves_the_training_reports_as_they_are(corpus):
    from bonescan.benchmarks.handwritten import FOLDER
    from bonescan.data.io import load_reports

    texts = corpus + list(load_reports(FOLDER).values())
    changed = [t for t in texts if _no_space(normalize_report(t)) != _no_space(unicodedata.normalize("NFKC", t))]
    assert changed == []
    assert all(normalize_report(normalize_report(t)) == normalize_report(t) for t in texts[:50])  # idempotent


def test_traditional_characters_read_as_the_simplified_report(corpus):
    """A Taiwan or Hong Kong hospital's report (OpenCC s2tw / s2hk of a training report) normalises back to it;
    what may remain is 徵 for 征 (both are simplified characters too)."""
    from bonescan.benchmarks.other_writers import traditional

    same = 0
    for t in corpus:
        for region in ("tw", "hk"):
            trad = traditional(t, region)
            assert trad != t or not re.search(r"[浓转骨见]", t)  # the script did change
            a, b = _no_space(unicodedata.normalize("NFKC", t)), _no_space(normalize_report(trad))
            same += a == b
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) <= 3, (a, b)
    assert same >= 0.9 * 2 * len(corpus)


@pytest.mark.parametrize("text, want", [
    ("T7, Rt 5th rib post., c/w mets", "T7, 右侧第5后肋, 考虑骨转移"),
    ("L3-5 (+), r/o mets", "L3-5 异常放射性浓聚, 不除外骨转移"),
    ("Lt 4th-6th ribs ant.: increased uptake", "左侧第4-6前肋: 异常放射性浓聚"),
    ("ribs 5, 6 right", "右侧第5、6肋"),
    ("R ilium and L sacrum, c/w mets", "右侧髂骨及左侧骶骨, 考虑骨转移"),
    ("NED", "未见骨转移征象"),
    ("bone scan (-)", "全身骨显像未见异常放射性浓聚"),
    ("Ｔ７（＋）", "T7异常放射性浓聚"),
    ("胸椎第7節見放射性濃聚，考慮骨轉移。", "胸椎第7节见放射性浓聚,考虑骨转移。"),
    ("T-7 and T 9", "T7 及 T9"),
])
def test_english_shorthand_and_scripts_become_the_training_words(text, want):
    assert normalize_report(text) == want


def test_a_text_that_says_nothing_names_no_finding(corpus):
    from bonescan.benchmarks.other_writers import NEGATIVES, nonreports

    assert all(names_a_finding(normalize_report(t)) for t in corpus)
    assert all(names_a_finding(normalize_report(t)) for t in NEGATIVES)  # a negative study states a finding
    held_out = nonreports()
    assert len(held_out) >= 20 and not any(names_a_finding(normalize_report(t)) for t in held_out), \
        [t for t in held_out if names_a_finding(normalize_report(t))]
    # a vertebra in letter form is a finding; the same letters in a path or a file name are not
    assert finding_terms("T12") == 1 and finding_terms("/data/t12/report.txt") == 0 and finding_terms("c3.pdf") == 0
    assert finding_terms("") == 0


def test_training_nonreports_say_nothing_and_are_not_the_held_out_ones():
    """The generator's texts (trained as no report) hold no word of a finding (but in the clinical question
    a history may ask, "了解有无骨转移": the model learns those are no report too), vary, and share no
    phrase of three characters or more with the held-out texts that test them."""
    from bonescan.benchmarks.other_writers import nonreports
    from bonescan.data.nonreport import ADMIN_EN, ADMIN_ZH, nonreport
    from bonescan.data.styles import REASONS, STYLES

    rng = np.random.default_rng(0)
    texts = [nonreport(rng) for _ in range(2000)]
    assert len(set(texts)) > 1000
    assert [t for t in texts if names_a_finding(normalize_report(t)) and not any(r in t for r in REASONS)] == []
    assert [nonreport(np.random.default_rng(5)) for _ in range(3)] == [nonreport(np.random.default_rng(5)) for _ in range(3)]
    phrases = [p for p in ADMIN_ZH + ADMIN_EN if len(p) >= 3] + [h for s in STYLES.values() if s.headers for h in s.headers]
    shared = [(t, p) for t in nonreports() for p in phrases if p.lower() in t.lower()]
    assert shared == []


def test_the_tokenizer_counts_unknown_characters_after_normalising(tmp_path):
    """Trained on simplified reports, the tokenizer reads a traditional-character report without unknown
    characters; with its normalisation off, the traditional characters are unknown."""
    import json

    from bonescan.benchmarks.other_writers import traditional
    from bonescan.tokenize import TRAINED_TOKENS_FILE, ReportTokenizer, build_tokenizer

    d = build_tokenizer(tmp_path / "tok")
    text = "胸7椎体见放射性浓聚，考虑骨转移。双膝关节退行性变。"
    full = ReportTokenizer(d / "tokenizer.json")
    ids, mask = full([text])
    (d / TRAINED_TOKENS_FILE).write_text(json.dumps({"ids": sorted(set(ids[mask > 0].tolist()))}))
    tok = ReportTokenizer(d / "tokenizer.json")
    trad = traditional(text, "tw")
    ids, mask = tok([trad])
    stats = tok.text_stats(ids, mask, [trad])
    assert stats[0, 1] == 0 and stats[0, 2] >= 5
    tok.normalizing = False
    ids, mask = tok([trad])
    assert tok.text_stats(ids, mask, [trad])[0, 1] >= 6  # 體 見 濃 慮 轉 雙 關 ...
