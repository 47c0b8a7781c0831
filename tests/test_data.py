"""Synthetic data: determinism, ground-truth consistency, report wording and house styles, the text
corpus and augmentation, loaders, bad files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import label

from bonescan.contract import IMAGE_HEIGHT, IMAGE_WIDTH, from_model_frame, to_model_frame
from bonescan.data.atlas import REGIONS, VERTEBRAE
from bonescan.data.augment import augment_report
from bonescan.data.corpus import report_corpus, sample_findings
from bonescan.data.dataset import BoneScanDataset
from bonescan.data.generate import generate_dataset
from bonescan.data.io import CaseError, read_dicom_scan, read_scan, write_dicom_scan, write_png16
from bonescan.data.report import COARSE, findings_from_meta, report_from_meta, write_report
from bonescan.data.styles import STYLE_NAMES, STYLES, VOCABULARY, HouseStyle
from bonescan.data.synth import SynthConfig, synth_case
from bonescan.data.textnoise import BONE_CHARS, add_slips
from tests.report_parser import parse_mention, parse_report

N_CHECK = 60  # cases checked for ground-truth consistency


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cases():
    return [synth_case(7, i) for i in range(N_CHECK)]


def test_same_seed_same_bytes(tmp_path: Path):
    a = generate_dataset(tmp_path / "a", 6, seed=3, workers=2, progress=False)
    b = generate_dataset(tmp_path / "b", 6, seed=3, workers=1, progress=False)
    assert a["splits"] == b["splits"]
    da, db = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b")
    assert da == db and len(da) == 6 * 6 + 1  # per case: two views, mask, regions, report, meta
    c = generate_dataset(tmp_path / "c", 6, seed=4, workers=1, progress=False)
    assert _tree_digest(tmp_path / "c") != da
    assert c["cases"] == 6


def test_views_look_like_scans(cases):
    for c in cases[:10]:
        for v in (c.anterior, c.posterior):
            assert v.dtype == np.uint16 and v.shape == (IMAGE_HEIGHT, IMAGE_WIDTH)
            assert 0.6e6 < int(v.sum()) < 3.0e6  # clinical count level
        # Poisson counting noise: the variance of a flat region ~ its mean
        assert c.anterior.max() > 30
    # the posterior view is stored as acquired: mirroring it lines the spine up with the anterior one
    c = cases[0]
    ant, post_mirrored = to_model_frame(c.anterior, c.posterior)
    spine_cols = lambda img: np.argmax(img[300:500].sum(axis=0))  # noqa: E731
    assert abs(int(spine_cols(ant)) - int(spine_cols(post_mirrored))) <= 6


def test_mask_matches_metadata(cases):
    for c in cases:
        lesions = c.meta["lesions"]
        lab, n = label(c.mask, structure=np.ones((3, 3)))
        assert (n == 0) == (len(lesions) == 0), c.case_id
        # every mask component belongs to a listed metastasis
        for k in range(1, n + 1):
            ys, xs = np.nonzero(lab == k)
            owners = [les for les in lesions if les["bbox"][0] <= ys.mean() <= les["bbox"][2] and les["bbox"][1] <= xs.mean() <= les["bbox"][3]]
            assert owners, f"{c.case_id}: mask component {k} has no metastasis"
        # every metastasis is in the mask with its stated area
        for les in lesions:
            y0, x0, y1, x1 = les["bbox"]
            assert c.mask[y0 : y1 + 1, x0 : x1 + 1].sum() >= les["area_px"] * 0.99
        assert int(c.mask.sum()) == sum(les["area_px"] for les in lesions)
        # no benign mimic is in the mask
        for b in c.meta["benign"]:
            for f in b["foci"]:
                cy, cx = (int(round(v)) for v in f["center"])
                assert c.mask[cy, cx] == 0, f"{c.case_id}: benign {b['type']} at a masked pixel"


def _check_mentions(meta: dict, report: str, kind: str, where: str) -> int:
    """Every lesion's mention is in the report and names its region (its coarse group when vague)."""
    for les in meta["lesions"]:
        mention = les["mention"]
        assert mention and mention in report, (where, les["id"])
        named = parse_mention(mention)
        if kind == "vague":
            assert COARSE[les["group"]] in named, (where, mention)
        else:
            assert les["region"] in named, (where, les["region"], mention)
    return len(meta["lesions"])


def test_every_metastasis_is_named_in_its_report(cases):
    n_checked = sum(_check_mentions(c.meta, c.report, c.meta["report"]["style"], c.case_id) for c in cases)
    assert n_checked > 50


def _has_sections(text: str, hs: HouseStyle) -> bool:
    """Findings before impression: the style's two headers in order, or two bare paragraphs."""
    if hs.headers is None:
        return len([line for line in text.split("\n") if line.strip()]) >= 2
    f, i = hs.headers
    return f in text and i in text and text.index(f) < text.index(i)


BENIGN_WORDS = ("退行性", "退变", "骨折", "关节炎", "骨质增生", "炎性", "外伤", "骨关节病", "良性")


def test_reports_have_both_sections_and_vary(cases):
    for c in cases:
        hs = STYLES[c.meta["report"]["house_style"]]
        assert _has_sections(c.report, hs), c.case_id
        if not c.meta["lesions"]:
            assert any(w in c.report for w in hs.negation), c.case_id
        if c.meta["benign"]:
            assert any(w in c.report for w in BENIGN_WORDS), c.case_id
    assert len({c.report for c in cases}) == len(cases)
    # vertebra naming variants all occur
    text = "".join(c.report for c in cases)
    assert any(f"第{i}胸椎" in text or f"第{i}腰椎" in text for i in range(1, 13))
    assert any(f"T{i}" in text or f"L{i}" in text for i in range(1, 13))


# ----------------------------------------------------------------------------- house styles
def _line_headers(text: str) -> set[str]:
    """Known section headers standing at the start of a line."""
    known = sorted({h for s in STYLES.values() for h in (s.headers or ()) + ((s.method_header,) if s.method_header else ())},
                   key=len, reverse=True)
    found = set()
    for line in text.split("\n"):
        for h in known:
            if line.startswith(h):
                found.add(h)
                break
    return found


@pytest.fixture(scope="module")
def style_reports() -> dict[str, list[tuple[str, bool]]]:
    """Per style: 300 reports of drawn findings, and whether each is positive."""
    rng = np.random.default_rng(17)
    out: dict[str, list[tuple[str, bool]]] = {}
    for s in STYLE_NAMES:
        out[s] = []
        for _ in range(300):
            mets, benign, artefacts, n, kidneys = sample_findings(rng)
            out[s].append((write_report(mets, benign, artefacts, rng, n, kidneys, style=s).text, bool(mets)))
    return out


def test_every_style_appears_in_the_data(cases):
    assert len(STYLE_NAMES) >= 6
    seen = {c.meta["report"]["house_style"] for c in cases}
    assert seen == set(STYLE_NAMES)


def test_styles_differ_in_headers_and_vocabulary(style_reports):
    style_texts = {s: [t for t, _ in rs] for s, rs in style_reports.items()}
    words = sorted({w for ws in VOCABULARY.values() for w in ws}, key=len, reverse=True)

    def vocabulary_of(texts: list[str]) -> set[str]:
        used = set()
        for t in texts:
            for w in words:
                if w in t:
                    used.add(w)
                    t = t.replace(w, "|")
        return used

    used = {s: vocabulary_of(ts) for s, ts in style_texts.items()}
    headers = {s: set().union(*(_line_headers(t) for t in ts)) for s, ts in style_texts.items()}
    for s, hs in STYLES.items():
        # its own headers, and only those
        assert headers[s] == set(hs.headers or ()) | ({hs.method_header} if hs.method_header else set()), s
        # its words come from the shared vocabulary, and some of its uptake words are its own
        for w in hs.uptake + hs.negation + hs.metastasis:
            assert any(w in cls for cls in VOCABULARY.values()), (s, w)
        others = {w for o in STYLES.values() if o is not hs for w in o.uptake}
        own = set(hs.uptake) - others
        assert own and own & used[s], s
        # a positive report says uptake in its hospital's words (a typing slip may break one word)
        positive = [t for t, pos in style_reports[s] if pos]
        assert sum(any(w in t for w in hs.uptake) for t in positive) >= 0.9 * len(positive), s
    for a in STYLE_NAMES:
        for b in STYLE_NAMES:
            if a < b:
                assert used[a] != used[b] and headers[a] != headers[b], (a, b)


def test_report_from_meta_in_every_style(cases):
    n = 0
    for style in STYLE_NAMES:
        for k, c in enumerate(cases):
            r = report_from_meta(c.meta, style, seed=k)
            assert r.house_style == style and _has_sections(r.text, STYLES[style]), (style, c.case_id)
            meta = {**c.meta, "lesions": [{**les, "mention": r.mentions[les["id"]]} for les in c.meta["lesions"]]}
            n += _check_mentions(meta, r.text, r.style, f"{style}/{c.case_id}")
            assert sorted(r.mentions) == [les["id"] for les in c.meta["lesions"]]
    assert n > 50 * len(STYLE_NAMES)
    again = report_from_meta(cases[1].meta, "plain", seed=5)
    assert again.text == report_from_meta(cases[1].meta, "plain", seed=5).text
    assert again.text != report_from_meta(cases[1].meta, "plain", seed=6).text
    with pytest.raises(ValueError, match="unknown house style"):
        report_from_meta(cases[1].meta, "no-such-style", seed=0)


def test_a_report_part_is_that_part_of_the_report(cases):
    """write_report(part=...): the impression alone or the findings alone, with their header, no method
    line or history; the mentions the part keeps are in it; negative studies keep their negative impression."""
    for style in STYLE_NAMES:
        hs = STYLES[style]
        for k, c in enumerate(cases[:8]):
            full = report_from_meta(c.meta, style, seed=k)
            imp, fnd = (report_from_meta(c.meta, style, seed=k, part=p) for p in ("impression", "findings"))
            assert imp.text.strip() and fnd.text.strip() and len(imp.text) < len(full.text) and len(fnd.text) < len(full.text)
            for r in (imp, fnd):
                assert all(m in r.text for m in r.mentions.values()) and set(r.mentions) <= set(full.mentions)
            if hs.headers:
                assert hs.headers[1] in imp.text and hs.headers[0] not in imp.text
                assert hs.headers[0] in fnd.text and hs.headers[1] not in fnd.text
            if hs.method_header:
                assert hs.method_header not in imp.text and hs.method_header not in fnd.text
            if not c.meta["lesions"]:  # a negative study says so in its impression
                assert any(w in imp.text for w in VOCABULARY["negation"]) or "正常" in imp.text, imp.text
    with pytest.raises(ValueError, match="part must be one of"):
        report_from_meta(cases[0].meta, "plain", seed=0, part="summary")


def test_findings_from_meta_are_the_ones_the_report_was_written_from(monkeypatch):
    import bonescan.data.synth as synth

    seen = []

    def spy(mets, benign, artefacts, rng, n_lesions, kidneys_visible, **kw):
        seen.append((mets, benign, artefacts, n_lesions, kidneys_visible))
        return write_report(mets, benign, artefacts, rng, n_lesions, kidneys_visible, **kw)

    monkeypatch.setattr(synth, "write_report", spy)
    kinds = set()
    for i in (1, 10, 17, 20, 29):  # rib fractures, arthritis, several mimics, many lesions
        c = synth_case(7, i)
        assert findings_from_meta(c.meta) == seen[-1]
        kinds |= {f.kind for f in seen[-1][1] + seen[-1][2]}
    assert "rib_fracture" in kinds and len(kinds) >= 4


def test_house_styles_can_be_restricted():
    c = synth_case(7, 3, SynthConfig(house_styles=("plain",)))
    assert c.meta["report"]["house_style"] == "plain"
    with pytest.raises(ValueError, match="unknown house style"):
        synth_case(7, 3, SynthConfig(house_styles=("nope",)))


# ----------------------------------------------------------------------------- text corpus
def test_corpus_follows_the_generator():
    rng = np.random.default_rng(0)
    draws = [sample_findings(rng) for _ in range(5000)]
    n_lesions = np.array([d[3] for d in draws])
    assert 0.25 < (n_lesions == 0).mean() < 0.35 and 3.5 < n_lesions.mean() < 4.5
    groups = [REGIONS[f.regions[0]].group for d in draws for f in d[0]]
    spine = sum(g in ("cervical", "thoracic", "lumbar") for g in groups)
    pelvis = sum(g in ("ilium", "sacrum", "pubis", "ischium") for g in groups)
    assert spine > pelvis and groups.count("rib") > pelvis
    knees = np.mean([any(f.kind == "degenerative_knee" for f in d[1]) for d in draws])
    assert 0.15 < knees < 0.3
    assert all(len(d[0]) == d[3] and [i for f in d[0] for i in f.ids] == list(range(d[3])) for d in draws)

    texts = report_corpus(200, 3)
    assert texts == report_corpus(200, 3) and texts[:50] == report_corpus(50, 3) and texts != report_corpus(200, 4)
    assert all(_line_headers(t) == {"所见：", "印象："} for t in report_corpus(50, 3, ["impression"]))
    # its speed is a benchmark figure: `bonescan bench synth` prints reports a second


# ----------------------------------------------------------------------------- augmentation
def test_augmentation_keeps_the_facts(cases):
    texts = report_corpus(400, 8) + [c.report for c in cases]
    changed = total = 0
    for i, t in enumerate(texts):
        facts = parse_report(t)
        for seed, strength in ((0, 0.5), (1, 1.0), (2, 2.0)):
            out = augment_report(t, np.random.default_rng([i, seed]), strength)
            assert parse_report(out) == facts, (i, seed)
            changed += out != t
            total += 1
    assert changed > 0.8 * total
    # typing slips never touch digits, sides, arcs or any character of a bone name
    fixed = BONE_CHARS | set("左右前后")
    for i, t in enumerate(texts[:200]):
        out = add_slips(t, np.random.default_rng(i), 5)
        assert out != t and [c for c in out if c in fixed or c.isdigit()] == [c for c in t if c in fixed or c.isdigit()]
    t = cases[1].report
    assert augment_report(t, np.random.default_rng(0), 0.0) == t
    assert augment_report(t, np.random.default_rng(3)) == augment_report(t, np.random.default_rng(3))
    # metastases stay metastases and negatives stay negative
    for c in cases:
        out = augment_report(c.report, np.random.default_rng(9), 2.0)
        says_met = any(w in out for w in VOCABULARY["metastasis"] + ("转移",))
        assert says_met == any(w in c.report for w in VOCABULARY["metastasis"] + ("转移",)), c.case_id


def test_atlas_names_every_required_region():
    for v in VERTEBRAE:
        assert v in REGIONS
    for s in ("L", "R"):
        for i in range(1, 13):
            assert f"rib_{s}{i}" in REGIONS
        for bone in ("clavicle", "scapula", "ilium", "ischium", "pubis", "tibia"):
            assert f"{bone}_{s}" in REGIONS
    for r in ("skull", "sacrum", "sternum", "humerus_L_proximal", "femur_R_proximal"):
        assert r in REGIONS


def test_site_frequencies_follow_the_clinic(cases):
    groups = [les["group"] for c in cases for les in c.meta["lesions"]]
    spine = sum(g in ("cervical", "thoracic", "lumbar") for g in groups)
    ribs = sum(g == "rib" for g in groups)
    pelvis = sum(g in ("ilium", "sacrum", "pubis", "ischium") for g in groups)
    assert spine > pelvis and ribs > pelvis
    negatives = sum(not c.meta["lesions"] for c in cases)
    assert 0.1 < negatives / len(cases) < 0.5


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, 8, seed=11, workers=1, progress=False)
    return root


def test_loader_round_trip(small_set: Path):
    ds = BoneScanDataset(small_set)
    assert len(ds) == 8
    for i in range(len(ds)):
        s = ds[i]
        c = synth_case(11, int(s.case_id.split("_")[1]))
        assert s.image.dtype == np.float32 and s.image.shape == (2, IMAGE_HEIGHT, IMAGE_WIDTH)
        ant, post = from_model_frame(s.image)
        assert np.array_equal(ant, c.anterior) and np.array_equal(post, c.posterior)
        assert np.array_equal(s.mask, c.mask)
        assert s.report == c.report
        assert s.pixel_spacing == tuple(c.meta["pixel_spacing_mm"])
    splits = {r.split for r in BoneScanDataset(small_set).refs}
    assert splits <= {"train", "val", "test"}


def test_dicom_png_npy_give_the_same_scan(small_set: Path, tmp_path: Path):
    case = small_set / "cases" / "case_00000"
    png = read_scan(case)
    write_dicom_scan(tmp_path / "scan.dcm", png.anterior, png.posterior, (2.1, 2.1))
    dcm = read_dicom_scan(tmp_path / "scan.dcm")
    np.save(tmp_path / "scan.npy", np.stack([png.anterior, png.posterior]))
    npy = read_scan(tmp_path / "scan.npy")
    for other in (dcm, npy):
        assert np.array_equal(other.anterior, png.anterior) and np.array_equal(other.posterior, png.posterior)
    assert dcm.pixel_spacing == (2.1, 2.1)


def test_malformed_cases_are_named_and_skipped(small_set: Path, tmp_path: Path):
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(small_set, root)
    cases = root / "cases"
    secret = "患者张三 身份证号 123456"
    (cases / "case_00001" / "mask.png").unlink()
    write_png16(cases / "case_00002" / "anterior.png", np.ones((512, 128), np.uint16))
    (cases / "case_00003" / "report.txt").write_bytes(bytes(range(128, 256)) * 3 + secret.encode("gbk"))  # no encoding reads it
    for f in ("anterior.png", "posterior.png"):
        (cases / "case_00004" / f).unlink()
    (cases / "case_00004" / "scan.dcm").write_bytes(b"this is not dicom " + secret.encode())
    ds = BoneScanDataset(root)
    good = ds.load_all()
    assert sorted(s.case_id for s in good) == ["case_00000", "case_00005", "case_00006", "case_00007"]
    msgs = {Path(e.path).parent.name if Path(e.path).suffix else Path(e.path).name: str(e) for e in ds.errors}
    text = "\n".join(str(e) for e in ds.errors)
    assert "mask.png: mask file is missing" in text
    assert "anterior.png: anterior view is 512x128" in text and "expected 1024x256" in text
    assert "report.txt: report is not valid UTF-8" in text
    assert "scan.dcm: not a readable DICOM file" in text
    assert secret not in text and "张三" not in text
    assert len(msgs) == 4


def test_bad_arrays_are_refused(tmp_path: Path):
    good = np.ones((IMAGE_HEIGHT, IMAGE_WIDTH), np.uint16)
    for arr, problem in [
        (np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), np.uint16), "empty"),
        (np.full((IMAGE_HEIGHT, IMAGE_WIDTH), np.nan, np.float32), "NaN"),
        (-good.astype(np.int32), "negative"),
        (np.ones((3, IMAGE_HEIGHT, IMAGE_WIDTH)), "shape"),
    ]:
        np.save(tmp_path / "x.npy", np.stack([arr, arr]) if arr.ndim == 2 else arr)
        with pytest.raises(CaseError) as e:
            read_scan(tmp_path / "x.npy")
        assert "x.npy" in str(e.value)
        assert problem.lower() in str(e.value).lower() or "expected" in str(e.value)


def test_manifest_lists_splits(small_set: Path):
    m = json.loads((small_set / "manifest.json").read_text())
    assert m["generator"]["seed"] == 11 and len(m["cases"]) == 8
    assert m["statistics"]["cases"] == 8
    houses = m["statistics"]["report_house_style"]
    assert sum(houses.values()) == 8 and set(houses) <= set(STYLE_NAMES)


def test_cli_synth_and_preview(tmp_path: Path):
    from bonescan.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--n", "3", "--seed", "1", "--workers", "1", "--quiet"]) == 0
    assert main(["data", "synth", "--out", str(tmp_path / "e"), "--n", "2", "--workers", "1", "--quiet",
                 "--house-styles", "plain", "bracket"]) == 0
    assert set(json.loads((tmp_path / "e" / "manifest.json").read_text())["statistics"]["report_house_style"]) <= {"plain", "bracket"}
    assert main(["data", "synth", "--out", str(tmp_path / "f"), "--n", "1", "--quiet", "--house-styles", "nope"]) == 2
    assert main(["data", "preview", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "p.png"), "--n", "2"]) == 0
    from PIL import Image

    with Image.open(tmp_path / "p.png") as im:
        assert im.size[0] > 400 and im.size[1] > 1000  # three views wide, the report under them


def test_report_files_are_held_to_the_request_limits(tmp_path):
    """read_report refuses what the server's decode_report refuses, in its words (and drops a BOM); a
    file that is not UTF-8 is read in the encodings a hospital's system may write (GB18030, Big5, a
    UTF-16 BOM) where the server, which is sent UTF-8, refuses the bytes."""
    from bonescan.contract import TOKENIZER
    from bonescan.data.io import read_report
    from bonescan.tokenize import ReportError, decode_report

    p = tmp_path / "report.txt"
    limit = TOKENIZER.max_report_chars
    for raw in ("骨" * (limit + 1)).encode(), b"T7 \xff":
        p.write_bytes(raw)
        with pytest.raises(ReportError) as want:
            decode_report(raw, field="report")
        with pytest.raises(CaseError) as got:
            read_report(p)
        assert str(got.value).startswith(f"{p}: {want.value}")
    p.write_bytes("骨转移".encode("gbk"))
    with pytest.raises(ReportError):
        decode_report(p.read_bytes(), field="report")
    assert read_report(p) == "骨转移"
    p.write_bytes(b"\xef\xbb\xbf" + ("骨" * limit).encode())
    assert read_report(p) == "骨" * limit
    p.write_bytes(b"a" * (4 * limit + 1))
    with pytest.raises(CaseError, match="bytes; the limit is"):
        read_report(p)


def test_pixel_spacing_is_decided_in_one_place(small_set: Path, tmp_path: Path):
    """The case folder's meta.json, the DICOM's PixelSpacing, the caller's value, or "default"."""
    from bonescan.data.io import decide_spacing

    case = small_set / "cases" / "case_00000"
    meta = tuple(json.loads((case / "meta.json").read_text())["pixel_spacing_mm"])
    s = read_scan(case)
    assert (s.pixel_spacing, s.spacing_source) == (meta, "meta.json") and meta != (2.4, 2.4)
    assert BoneScanDataset(small_set)[0].pixel_spacing == meta
    write_dicom_scan(tmp_path / "scan.dcm", s.anterior, s.posterior, (2.25, 2.05))
    d = read_scan(tmp_path / "scan.dcm")
    assert (d.pixel_spacing, d.spacing_source) == ((2.25, 2.05), "dicom")
    np.save(tmp_path / "scan.npy", np.stack([s.anterior, s.posterior]))
    n = read_scan(tmp_path / "scan.npy")
    assert n.spacing_source == "default" and not n.spacing_known
    assert read_scan(tmp_path / "scan.npy", (2.0, 2.1)).spacing_source == "command line"
    assert read_scan(case, (2.0, 2.1)).pixel_spacing == (2.0, 2.1)
    assert decide_spacing(n, meta={"pixel_spacing_mm": [2.2, 2.3]}).spacing_source == "meta.json"
    (tmp_path / "c").mkdir()
    np.save(tmp_path / "c" / "scan.npy", np.stack([s.anterior, s.posterior]))
    (tmp_path / "c" / "meta.json").write_text('{"pixel_spacing_mm": [0, "x"]}')
    with pytest.raises(CaseError, match=r"meta\.json: pixel_spacing_mm must be two numbers"):
        read_scan(tmp_path / "c")


def test_to_dicom_writes_the_case_spacing(small_set: Path, tmp_path: Path, capsys):
    import pydicom

    from bonescan.cli import main

    case = small_set / "cases" / "case_00001"
    meta = json.loads((case / "meta.json").read_text())["pixel_spacing_mm"]
    assert main(["data", "to-dicom", str(case), "--out", str(tmp_path / "a.dcm")]) == 0
    assert [float(v) for v in pydicom.dcmread(tmp_path / "a.dcm").PixelSpacing] == pytest.approx(meta)
    assert "from meta.json" in capsys.readouterr().out
    s = read_scan(case)
    np.save(tmp_path / "scan.npy", np.stack([s.anterior, s.posterior]))
    assert main(["data", "to-dicom", str(tmp_path / "scan.npy"), "--out", str(tmp_path / "b.dcm")]) == 0
    assert "PixelSpacing empty" in capsys.readouterr().out
    assert not pydicom.dcmread(tmp_path / "b.dcm").PixelSpacing  # not a default written as if measured
    assert read_scan(tmp_path / "b.dcm").spacing_source == "default"
    assert main(["data", "to-dicom", str(tmp_path / "scan.npy"), "--out", str(tmp_path / "c.dcm"), "--pixel-spacing", "2.1", "2.2"]) == 0
    assert [float(v) for v in pydicom.dcmread(tmp_path / "c.dcm").PixelSpacing] == [2.1, 2.2]


def test_data_check_names_each_problem_once_and_warns_on_8_bit_views(small_set: Path, tmp_path: Path):
    import shutil
    import subprocess
    import sys

    from PIL import Image

    root = tmp_path / "d"
    shutil.copytree(small_set, root)
    (root / "cases" / "case_00001" / "mask.png").unlink()
    ant = read_scan(root / "cases" / "case_00002").anterior
    Image.fromarray(np.clip(ant, 0, 255).astype(np.uint8)).save(root / "cases" / "case_00002" / "anterior.png")
    bonescan = Path(sys.executable).parent / "bonescan"
    done = subprocess.run([str(bonescan), "data", "check", "--data", str(root)], capture_output=True, text=True)
    text = done.stdout + done.stderr
    assert done.returncode == 1 and "7 of 8 cases readable" in done.stdout
    assert text.count("mask.png: mask file is missing") == 1
    assert text.count("8-bit PNG") == 1 and "case_00002/anterior.png: 8-bit PNG; views must be 16-bit counts" in done.stdout


def blank_share(fig, block_in: float = 0.25) -> float:
    """Share of the picture's blocks (``block_in`` inches square) with not one inked pixel: what a
    reader sees as empty, whatever the axes claim to hold (a text column counts only where it has text)."""
    fig.canvas.draw()
    ink = (np.asarray(fig.canvas.buffer_rgba())[..., :3] < 245).any(axis=-1)
    b = max(round(block_in * fig.dpi), 1)
    h, w = ink.shape[0] // b * b, ink.shape[1] // b * b
    return 1.0 - float(ink[:h, :w].reshape(h // b, b, w // b, b).any(axis=(1, 3)).mean())


def test_preview_layout_leaves_no_overlap_and_little_blank(small_set: Path):
    """The legend has its own band above the first row's titles; every view fills its panel; the
    report sits under its case's views; no text leaves the picture; and at most a fifth of the picture
    is blank, counted on the pixels (the report column beside the views left a third blank)."""
    from bonescan import viz
    from bonescan.data.preview import _draw

    viz.use_agg()
    import matplotlib.pyplot as plt

    samples = BoneScanDataset(small_set).load_all()[:3]
    assert all(s.report for s in samples)
    for show_report in (True, False):
        fig = _draw(samples, show_report, viz, plt)
        assert blank_share(fig) < 0.2
        r = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(r)
        views = [ax for ax in fig.axes if ax.images]
        assert len(views) == 3 * len(samples)
        texts = [t.get_window_extent(r) for ax in views for t in (ax.title, ax.xaxis.label) if t.get_text()]
        reports = [ax for ax in fig.axes if not ax.images]
        assert len(reports) == (len(samples) if show_report else 0)
        lines = [t.get_window_extent(r) for ax in reports for t in ax.texts]
        assert not any(legend.overlaps(t) for t in texts + lines)
        assert not any(a.overlaps(b) for i, a in enumerate(texts) for b in texts[i + 1:] + lines)
        page = fig.bbox
        for t in [legend, *texts, *lines]:  # nothing cut off at the picture's edges
            assert page.x0 - 1 <= t.x0 and t.x1 <= page.x1 + 1 and page.y0 - 1 <= t.y0 and t.y1 <= page.y1 + 1
        for ax in views:  # the image is as large as its axes: no blank inside a panel
            box, img = ax.get_window_extent(r), ax.images[0].get_window_extent(r)
            assert abs(box.width - img.width) < 2 and abs(box.height - img.height) < 2
        for ax, view in zip(reports, views[::3]):  # each report under its own case's views
            assert ax.get_window_extent(r).y1 < view.get_window_extent(r).y0
        plt.close(fig)


def test_report_wrap_fills_the_width_keeps_latin_runs_and_hangs_punctuation():
    """The preview's report lines are measured, not counted: each fits the width, the next word would
    not have fit, ``99mTc-MDP`` stays whole, no line starts with closing punctuation, nothing is lost."""
    import re

    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    from bonescan import viz

    font, pt, width = viz.cjk_font(), 7.5, 200.0
    text = "【检查方法】静脉注射99mTc-MDP 20mCi后3小时行全身骨显像，" * 4 + "\n1.全身多发骨转移。\n\n2.双膝退变。"
    lines = viz.wrap_to_width(text, width, pt, font)
    assert "".join(lines).replace(" ", "") == text.replace("\n", "").replace(" ", "")
    assert lines[-3:] == ["1.全身多发骨转移。", "", "2.双膝退变。"]  # paragraphs kept
    prop, ttp = FontProperties(family=font, size=pt), TextToPath()

    def w(s: str) -> float:
        return ttp.get_text_width_height_descent(s, prop, ismath=False)[0]

    body = lines[:-3]
    assert len(body) > 3
    for line, nxt in zip(body, body[1:]):
        assert w(line) <= width + 1
        assert nxt[0] not in viz.NO_LINE_START
        word = re.match(r"[A-Za-z0-9.\-+/%^~:]+|.", nxt).group()
        assert w(line) + w(word) > width - pt - 1  # the line is full: the next word did not fit
    assert sum(line.count("99mTc-MDP") for line in lines) == 4 and sum(line.count("20mCi") for line in lines) == 4
