"""The report path: a tokenizer that reads any Chinese report, the report's maps, the fail-safe, MLM
pretraining, the hand-written held-out reports, evaluation with reports written elsewhere."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bonescan import contract as C
from bonescan.failsafe import DUALPATH, UNET, FailSafeSettings, decide
from bonescan.tokenize import TRAINED_TOKENS_FILE, ReportTokenizer, build_tokenizer

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("chartok"))


@pytest.fixture(scope="module")
def tokenizer(tok_dir) -> ReportTokenizer:
    return ReportTokenizer(tok_dir / "tokenizer.json")


def test_no_chinese_character_becomes_unk(tokenizer, tok_dir):
    from tokenizers import Tokenizer

    unk = tokenizer.unk_id
    every = "".join(chr(cp) for cp in range(0x4E00, 0xA000))
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))  # no truncation, no padding
    ids = raw.encode(every, add_special_tokens=False).ids
    assert len(ids) == 0xA000 - 0x4E00 and unk not in ids
    # full-width letters, digits and punctuation, circled numbers read as their plain forms
    assert raw.encode("Ｔ７，①", add_special_tokens=False).tokens == ["t", "7", ",", "1"]
    # what is not Chinese text may still be unknown: an emoji
    assert raw.encode("😀", add_special_tokens=False).ids == [unk]


def test_handwritten_reports_have_no_unknown_character(tokenizer):
    from bonescan.benchmarks.handwritten import FOLDER
    from bonescan.data.io import load_reports

    reports = load_reports(FOLDER)
    assert len(reports) == 36
    ids, mask = tokenizer(list(reports.values()))
    assert int((ids == tokenizer.unk_id).sum()) == 0
    assert int(tokenizer.text_stats(ids, mask)[:, 0].min()) > 40


def test_text_stats_count_what_the_model_never_trained_on(tok_dir, tmp_path):
    import shutil

    d = tmp_path / "tok"
    shutil.copytree(tok_dir, d)
    full = ReportTokenizer(d / "tokenizer.json")
    known = full.tok.encode("胸椎浓聚", add_special_tokens=False).ids
    (d / TRAINED_TOKENS_FILE).write_text(json.dumps({"ids": known}))
    tok = ReportTokenizer(d / "tokenizer.json")
    texts = ["胸椎浓聚", "胸椎浓聚龘龘", "", "龘龘"]
    ids, mask = tok(texts)
    # tokens, of them unknown, words of a finding (胸椎, 浓聚)
    assert tok.text_stats(ids, mask, texts).tolist() == [[4, 0, 2], [6, 2, 2], [0, 0, 0], [2, 2, 0]]
    assert tok.text_stats(ids, mask)[:, 2].tolist() == [-1] * 4  # without the texts: not known
    # without the file (a pretrained MacBERT's tokenizer) every character is known
    ids, mask = full(["胸椎浓聚龘龘"])
    assert full.text_stats(ids, mask, ["胸椎浓聚龘龘"]).tolist() == [[6, 0, 2]]


def _blob(mask: np.ndarray, y: int, x: int, r: int = 3) -> None:
    mask[max(y - r, 0) : y + r, max(x - r, 0) : x + r] = 1


def _maps(allow: list[tuple[int, int]], mention: list[tuple[int, int]], hw=(32, 8)) -> np.ndarray:
    """logits [2, h, w]: -10 everywhere, +10 at the given cells."""
    m = np.full((2, *hw), -10.0, np.float32)
    for y, x in allow:
        m[0, y, x] = 10.0
    for y, x in mention:
        m[1, y, x] = 10.0
    return m


def test_label_max_is_scipys_maximum_per_label():
    """The fail-safe's per-lesion and per-place maxima (failsafe.label_max, cell_max) equal
    scipy.ndimage.maximum over the labels and over the upsampled places, on random maps."""
    from scipy.ndimage import label, maximum

    from bonescan.failsafe import cell_max, label_max, upsample

    rng = np.random.default_rng(3)
    for _ in range(5):
        values = rng.random((64, 32)).astype(np.float32)
        lab, n = label(rng.random((64, 32)) > 0.7, structure=C.EIGHT)
        assert n > 3
        np.testing.assert_array_equal(label_max(values, lab, n), np.asarray(maximum(values, lab, np.arange(1, n + 1)), np.float32))
        places, n_places = label(rng.random((8, 4)) > 0.5, structure=C.EIGHT)
        want = np.asarray(maximum(values, upsample(places, values.shape), np.arange(1, n_places + 1)), np.float32)
        np.testing.assert_array_equal(label_max(cell_max(values, places.shape), places, n_places), want)
    assert label_max(values, np.zeros_like(lab), 0).shape == (0,)


def test_failsafe_decides_with_its_signals():
    s = FailSafeSettings(max_unknown_share=0.15, min_confidence=0.8, max_unexplained=0)
    shape = (C.IMAGE_HEIGHT, C.IMAGE_WIDTH)
    unet = np.zeros(shape, np.uint8)
    _blob(unet, 100, 40)  # cell (3, 1)
    _blob(unet, 500, 200)  # cell (15, 6)
    prob = unet * 0.95  # both confident
    dual = np.zeros(shape, np.uint8)
    _blob(dual, 100, 40)
    stats = np.array([80, 0, 6])  # 80 tokens, none unknown, 6 words of a finding
    # the report names the first place a metastasis and mentions the second (a benign finding): trusted as it is
    out, info = decide(dual, unet, prob, _maps([(3, 1)], [(3, 1), (15, 6)]), stats, s)
    assert info["answered_by"] == DUALPATH and np.array_equal(out, dual)
    assert info["signals"]["dropped_lesions"] == 1 and info["signals"]["unexplained_lesions"] == 0
    # a U-Net lesion where the report names a metastasis, missed by the dual-path model, is added
    out, info = decide(np.zeros(shape, np.uint8), unet, prob, _maps([(3, 1)], [(3, 1), (15, 6)]), stats, s)
    assert info["answered_by"] == DUALPATH and info["unet_lesions_added"] == 1 and out[100, 40] == 1 and out[500, 200] == 0
    # no report
    out, info = decide(dual, unet, prob, _maps([], []), np.array([0, 0, 0]), s)
    assert info["answered_by"] == UNET and info["reason"].startswith("no report") and np.array_equal(out, unet)
    # a report in characters the model does not know
    out, info = decide(dual, unet, prob, _maps([(3, 1)], [(3, 1), (15, 6)]), np.array([80, 20, 6]), s)
    assert info["answered_by"] == UNET and info["reason"].startswith("report not read") and info["signals"]["unknown_share"] == 0.25
    # ... unless it holds no word of a finding at all: then it is no report, whatever the model could read
    out, info = decide(dual, unet, prob, _maps([(3, 1)], [(3, 1), (15, 6)]), np.array([80, 20, 0]), s)
    assert info["answered_by"] == UNET and info["reason"].startswith("report names no finding (no word")
    # a text with no word of a finding ("see attached") is no report, whatever its maps say (here: negative)
    out, info = decide(dual, unet, prob, _maps([], []), np.array([12, 0, 0]), replace(s, negative_report_allow=0.3))
    assert info["answered_by"] == UNET and info["reason"].startswith("report names no finding") and np.array_equal(out, unet)
    assert info["signals"]["names_no_finding"] and not info["signals"]["names_no_metastasis"]
    # ... and so is a text the model reads as no report (its allow map high everywhere)
    says_nothing = np.full((2, 64, 16), -10.0, np.float32)
    says_nothing[0] = 5.0
    out, info = decide(dual, unet, prob, says_nothing, stats, s)
    assert info["answered_by"] == UNET and "reads it as no report" in info["reason"] and info["signals"]["allow_mean"] > 0.99
    out, info = decide(dual, unet, prob, says_nothing, stats, replace(s, no_finding_allow=2.0, max_unexplained=1))  # the model not asked
    assert info["answered_by"] == DUALPATH
    # a report that mentions neither hot spot (another patient's): the dropped confident one is
    # unexplained; one is tolerated (max_unexplained 1), the report's veto stands ...
    out, info = decide(dual, unet, prob, _maps([(20, 2)], [(20, 2)]), stats, replace(s, max_unexplained=1))
    assert info["answered_by"] == DUALPATH and info["signals"]["unexplained_lesions"] == 1 and np.array_equal(out, dual)
    # ... unless the hot spot is one the U-Net itself is unsure of (most of those are its false positives)
    weak = prob.copy()
    weak[480:520, 180:220] = 0.6
    out, info = decide(dual, unet, weak, _maps([(20, 2)], [(20, 2)]), stats, s)
    assert info["answered_by"] == DUALPATH and info["signals"]["unexplained_lesions"] == 0 and np.array_equal(out, dual)
    # more unexplained hot spots than allowed: the U-Net answers the whole scan
    out, info = decide(dual, unet, prob, _maps([(20, 2)], [(20, 2)]), stats, replace(s, max_unexplained=0))
    assert info["answered_by"] == UNET and info["reason"].startswith("report does not fit the image")
    # a report that names no metastasis (allow low everywhere) but mentions both hot spots: the
    # answer is empty, with the fail-safe on or off; not so below the calibrated level
    negative = _maps([], [(3, 1), (15, 6)])
    out, info = decide(dual, unet, prob, negative, stats, replace(s, negative_report_allow=0.2))
    assert info["answered_by"] == DUALPATH and "names no metastasis" in info["reason"] and not out.any()
    assert info["signals"]["allow_max"] < 0.01 and info["signals"]["names_no_metastasis"]
    out, info = decide(dual, unet, prob, negative, stats, replace(s, negative_report_allow=0.2, enabled=False))
    assert info["answered_by"] == DUALPATH and "fail-safe off" in info["reason"] and not out.any()
    out, info = decide(dual, unet, prob, negative, stats, s)
    assert np.array_equal(out, dual)
    # a negative report that mentions only the first hot spot: the second, confident and unmentioned, does not fit
    out, info = decide(dual, unet, prob, _maps([], [(3, 1)]), stats, replace(s, negative_report_allow=0.2))
    assert info["answered_by"] == UNET and info["signals"]["unexplained_lesions"] == 1 and np.array_equal(out, unet)
    # ... and a report naming a metastasis is not negative; nor is a text without a finding word, fail-safe off
    out, info = decide(dual, unet, prob, _maps([(3, 1)], [(3, 1), (15, 6)]), stats, replace(s, negative_report_allow=0.2))
    assert out.any() and "names no metastasis" not in info["reason"]
    out, info = decide(dual, unet, prob, negative, np.array([12, 0, 0]), replace(s, negative_report_allow=0.2, enabled=False))
    assert np.array_equal(out, dual) and not info["signals"]["names_no_metastasis"]
    # the fail-safe off: the dual-path answer, with or without a report
    for st in (np.array([0, 0, 0]), stats):
        out, info = decide(dual, unet, prob, _maps([(20, 2)], [(20, 2)]), st, FailSafeSettings(enabled=False))
        assert info["answered_by"] == DUALPATH and np.array_equal(out, dual)


def test_failsafe_settings_read_from_config_parameters():
    s = FailSafeSettings(enabled=False, max_unknown_share=0.1, max_unexplained=2.0, min_confidence=0.7, add_named_lesions=False,
                         require_finding_terms=False, no_finding_allow=0.9, negative_report_allow=0.2)
    params = {f"failsafe_{k}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in s.to_dict().items()}
    assert FailSafeSettings.from_dict(params, prefix="failsafe_") == s
    # a repository built by an earlier version carries parameters this one no longer has: ignored
    assert FailSafeSettings.from_dict({**params, "failsafe_max_unseen_named": "3"}, prefix="failsafe_") == s


def test_mlm_pretraining_lowers_the_loss(tokenizer):
    from bonescan.model.config import TextConfig
    from bonescan.model.network import TextEncoder
    from bonescan.model.text_pretrain import pretrain_text

    torch.manual_seed(0)
    enc = TextEncoder(TextConfig(hidden=32, layers=1, heads=2, intermediate=64, dropout=0.0), tokenizer.vocab_size)
    texts = ["检查所见：胸7椎体见放射性浓聚。诊断意见：考虑骨转移。", "全身骨骼显影清晰，未见明显异常放射性浓聚。诊断意见：未见骨转移征象。"]
    info = pretrain_text(enc, tokenizer, lambda n, rng: [texts[int(i)] for i in rng.integers(0, 2, n)], steps=60,
                         batch_size=8, lr=3e-3, progress=False, log_every=20)
    assert info["loss_curve"][-1] < 0.7 * info["loss_curve"][0], info["loss_curve"]
    ids, mask = tokenizer([texts[0]])
    assert set(ids[mask > 0].tolist()) <= set(info["token_ids_seen"])


def test_report_maps_pretraining_trains_the_report_path_only(dataset):
    """The text-only stage moves the text encoder and the report's maps, lowers their loss, and
    leaves the image path as it was (no image goes through it)."""
    from bonescan.data.arrays import load_split
    from bonescan.data.styles import STYLES
    from bonescan.model.config import preset
    from bonescan.train import ReportSource, build_model, pretrain_report_maps, setup_tokenizer

    torch.manual_seed(0)
    mcfg, tcfg = preset("tiny")
    tcfg.pretrain_maps_steps, tcfg.pretrain_maps_batch, tcfg.pretrain_maps_lr = 100, 8, 3e-3
    arrays = load_split(dataset, "train", progress=False)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _, tok = setup_tokenizer(mcfg, None, Path(tmp))
        assert tok is not None
        net, _, _ = build_model(mcfg, tok, None, None)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        info = pretrain_report_maps(net, ReportSource(tok, arrays, tcfg, list(STYLES), np.random.default_rng(0)), tcfg,
                                    seed=0, progress=False)
    assert info is not None and info["steps"] == 100
    assert info["loss_curve"][-1] < 0.8 * info["loss_curve"][0], info["loss_curve"]
    after = net.state_dict()
    moved = {k.split(".")[0] + "." + k.split(".")[1] for k in before if not torch.equal(before[k], after[k])}
    assert "segmenter.prior" in moved and any(m.startswith("text_encoder.") for m in moved), moved
    assert all(m.startswith(("text_encoder.", "segmenter.prior")) for m in moved), moved


def test_handwritten_cases_are_the_ones_the_reports_describe():
    from bonescan.benchmarks.handwritten import handwritten_samples

    samples = handwritten_samples()
    assert len(samples) == 36 and sum(s.mask.any() for s in samples) == 26
    for s in samples:
        assert s.report and s.meta["case_id"] == s.case_id


def test_trained_checkpoint_carries_its_fallback_and_calibrated_failsafe(checkpoints, exports, repo, dataset):
    """The checkpoint carries the U-Net it falls back to and the calibration; the setting served is the
    one calibration ranked first, and its in-sample scores are those of that very setting (re-scored here)."""
    from bonescan.calibrate import CONDITIONS, GRID, collect, settings_of
    from bonescan.data.arrays import load_split
    from bonescan.data.rewrite import rewrite_split
    from bonescan.failsafe import FailSafeSettings, answer_mask, choose
    from bonescan.metrics import scan_metrics, summarize
    from bonescan.model.checkpoint import Predictor, load_checkpoint
    from bonescan.serving.repository import parse_config

    ck = load_checkpoint(checkpoints["dualpath"])
    fs = ck.metadata["failsafe"]
    assert ck.metadata["fallback"]["checkpoint"] == str(checkpoints["unet"])
    assert fs["grid_size"] == int(np.prod([len(v) for v in GRID.values()])) and 1 <= len(fs["grid"]) <= 20
    served = FailSafeSettings.from_dict(fs["settings"])
    assert served == settings_of(fs["grid"][0], fs["grid"][0]["max_unexplained"])  # the chosen setting leads the ranking
    assert set(fs["in_sample"]) == set(fs["out_of_sample"]) == set(CONDITIONS) and fs["folds"] >= 2
    # the in-sample scores are the served setting's, on the validation scans with their true reports
    arrays = load_split(dataset, "val", progress=False)
    texts = rewrite_split(arrays.metas, arrays.reports, ck.metadata["report_styles"], ck.metadata["seed"],
                          ck.metadata["train_config"]["report_part_share"])
    rows = collect(Predictor(ck), arrays, texts)
    again = summarize([scan_metrics(answer_mask(m, choose(m, served)), arrays.masks[j]) for j, (m, _) in enumerate(rows)])
    assert fs["in_sample"]["true"]["dsc"] == pytest.approx(again["dsc"]["mean"], abs=1e-4)
    assert fs["in_sample"]["true"]["fp_per_scan"] == pytest.approx(again["fp_per_scan"], abs=1e-3)
    assert ck.metadata["text_pretraining"]["steps"] > 0 and TRAINED_TOKENS_FILE in ck.tokenizer_files
    assert ck.metadata["maps_pretraining"]["steps"] > 0
    # the bundled U-Net is the U-Net checkpoint itself
    unet = load_checkpoint(checkpoints["unet"])
    for k, v in unet.net.segmenter.state_dict().items():
        assert torch.equal(ck.net.fallback.state_dict()[k], v), k
    desc = json.loads((exports["dualpath"] / "model.json").read_text())
    assert desc["failsafe"]["settings"] == fs["settings"]
    cfg = parse_config(repo / C.POSTPROCESS_MODEL / "config.pbtxt")
    assert FailSafeSettings.from_dict({k: v.string_value for k, v in cfg.parameters.items()}, prefix="failsafe_") == served
    assert (repo / C.TOKENIZER_MODEL / "1" / TRAINED_TOKENS_FILE).is_file()


def test_calibration_passes_reuse_the_unet_answer(checkpoints, dataset):
    """Calibration's passes with other reports reuse the U-Net's answer of the first pass (it does
    not depend on the report): the measurements are those of a full pass."""
    from bonescan.calibrate import collect
    from bonescan.data.arrays import load_split
    from bonescan.evaluate import select_reports
    from bonescan.model.checkpoint import Predictor, load_checkpoint

    pred = Predictor(load_checkpoint(checkpoints["dualpath"]))
    arrays = load_split(dataset, "val", progress=False)
    cache: dict = {}
    collect(pred, arrays, list(arrays.reports), cache=cache)
    assert sorted(cache["unet"]) == list(range(0, len(arrays), 4)) and sorted(cache["froc"]) == list(range(len(arrays)))
    other = select_reports(list(arrays.reports), "shuffled", 0)
    full, reused = collect(pred, arrays, other), collect(pred, arrays, other, cache=cache)
    for (a, ca), (b, cb) in zip(full, reused):
        assert ca["unet"] == cb["unet"] and ca["dual"] == cb["dual"]
        for name in ("fallback_mask", "mask", "confidence", "mention", "area", "kept"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_eval_with_reports_written_elsewhere_and_restyled(checkpoints, dataset, tmp_path):
    from bonescan.data.arrays import load_split
    from bonescan.evaluate import evaluate, report_texts

    arrays = load_split(dataset, "test", progress=False)
    d = tmp_path / "reports"
    d.mkdir()
    for cid in arrays.ids[:2]:
        (d / f"{cid}.txt").write_text("检查所见：全身骨骼未见异常。", encoding="utf-8")
    sub, texts = report_texts(load_split(dataset, None, progress=False), reports_dir=d)
    assert sub.ids == arrays.ids[:2] and texts == ["检查所见：全身骨骼未见异常。"] * 2
    _, restyled = report_texts(arrays, style="impression")
    assert all("所见" in t and "印象" in t for t in restyled)
    res = evaluate(checkpoints["dualpath"], dataset, None, reports_dir=d, progress=False, json_out=tmp_path / "e.json")
    assert res["summary"]["scans"] == 2 and set(res["answers"]) == {"dualpath", "failsafe", "unet"}
    assert len(res["failsafe"]["decisions"]) == 2


def test_served_failsafe_refuses_to_read_unknown_wording(server, exports, dataset):
    """A report in characters the model never trained on is not read: the U-Net answers, and says why."""
    import tritonclient.grpc as grpcclient

    from bonescan.benchmarks.faults import grpc_inputs
    from bonescan.data.dataset import BoneScanDataset

    s = BoneScanDataset(dataset, "test")[0]
    sp = np.array([s.pixel_spacing], np.float32)
    odd = "胸椎" + "龘靐齉爩麤" * 12  # a finding word, then characters known to the tokenizer and never in a training report
    c = grpcclient.InferenceServerClient(server.grpc_url)
    outs = [grpcclient.InferRequestedOutput(n) for n in ("MASK", "LESIONS")]
    dual = c.infer("bonescan", grpc_inputs(s.image[None], [odd], sp), outputs=outs, client_timeout=120)
    unet = c.infer("bonescan_unet", grpc_inputs(s.image[None], None, sp), outputs=outs, client_timeout=120)
    info = json.loads(dual.as_numpy("LESIONS")[0, 0])
    assert info["answered_by"] == "unet" and "not read" in info["reason"], info
    assert info["signals"]["unknown_share"] > 0.9 and "龘" not in json.dumps(info, ensure_ascii=False)
    assert np.array_equal(dual.as_numpy("MASK"), unet.as_numpy("MASK"))


def test_served_texts_that_are_no_report_get_the_unet_answer(server, dataset):
    """Through Triton: every held-out text that is no report ("see attached", "待复查", a file path, an empty
    template, another language) gets the U-Net's answer with the reason "report names no finding",
    never an empty answer of the dual-path model; the reason names no text."""
    from bonescan.benchmarks.other_writers import nonreports
    from bonescan.client import BoneScanClient
    from bonescan.client.inputs import Request
    from bonescan.data.dataset import BoneScanDataset

    s = next(x for x in BoneScanDataset(dataset, "test").load_all(progress=False) if x.mask.any())
    texts = nonreports()
    with BoneScanClient(server.grpc_url, timeout_s=120) as c, BoneScanClient(server.grpc_url, model=C.ENSEMBLE_UNET_MODEL,
                                                                            timeout_s=120) as u:
        unet = u.segment_prepared([Request(s.image, None, tuple(s.pixel_spacing), s.case_id)])[0]
        reqs = [Request(s.image, t, tuple(s.pixel_spacing), s.case_id) for t in texts]
        got = [r for i in range(0, len(reqs), 4) for r in c.segment_prepared(reqs[i : i + 4])]  # the test repository batches 4
    for t, r in zip(texts, got):
        assert r.answered_by == "unet" and r.reason.startswith("report names no finding"), (t, r.reason)
        assert np.array_equal(r.mask, unet.mask)
        assert t.strip()[:6] not in json.dumps(r.lesions, ensure_ascii=False)


def test_a_pretrained_macbert_folder_trains_exports_and_builds(tmp_path, dataset, checkpoints, exports):
    """--text-encoder DIR with a folder of MacBERT's layout (mini size here; `bonescan text-encoder init
    --shape macbert-base` writes the full 12 x 768, vocabulary 21128 one for the cost measurement)."""
    from bonescan.export.onnx_export import export_onnx
    from bonescan.model.config import preset
    from bonescan.model.pretrained import SHAPES, write_pretrained_like
    from bonescan.serving.ort_pipeline import OrtPipeline
    from bonescan.serving.repository import RepoOptions, build_repository
    from bonescan.train import train

    d = write_pretrained_like(tmp_path / "macbert", "mini")
    assert {p.name for p in d.iterdir()} >= {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json"}
    mcfg, tcfg = preset("tiny", "dualpath")
    tcfg.steps, tcfg.pretrain_text_steps = 2, 0
    ck = train(dataset, tmp_path / "m.pt", mcfg, tcfg, text_encoder_dir=d, progress=False, fallback=checkpoints["unet"])
    desc = export_onnx(ck, tmp_path / "export")
    assert desc["text_hidden"] == SHAPES["mini"]["hidden_size"]
    assert not (tmp_path / "export" / "tokenizer" / TRAINED_TOKENS_FILE).exists()  # MacBERT knows its whole vocabulary
    pipe = OrtPipeline(tmp_path / "export")
    assert pipe.tokenizer.vocab_size == SHAPES["mini"]["vocab_size"] and pipe.tokenizer.unk_id == 100
    ids, mask = pipe.tokenizer(["胸7椎体见放射性浓聚😀"])
    assert pipe.tokenizer.text_stats(ids, mask)[0, 1] == 1  # the emoji is MacBERT's [UNK]
    img, sp = np.zeros((2, *C.IMAGE_DIMS), np.float32) + 5, np.array([[2.0, 2.0]] * 2, np.float32)
    masks, _, lesions = pipe.answer(img, sp, ["", "报告请看附页"])
    assert masks.shape == (2, 1, C.IMAGE_HEIGHT, C.IMAGE_WIDTH)
    info = [json.loads(x) for x in lesions]
    assert info[0]["answered_by"] == "unet" and info[0]["reason"].startswith("no report")
    assert info[1]["answered_by"] == "unet" and info[1]["reason"].startswith("report names no finding")
    assert info[1]["signals"]["finding_terms"] == 0 and info[1]["signals"]["report_tokens"] > 0
    m = build_repository(tmp_path / "export", tmp_path / "repo", RepoOptions(), baseline=exports["unet"])
    assert m["text_hidden"] == SHAPES["mini"]["hidden_size"]


def _random_scan(rng: np.random.Generator, negative: bool, text_only: bool = False) -> tuple[np.ndarray, ...]:
    """(dual-path mask, U-Net mask, U-Net probabilities, ground truth, report maps, token stats)
    of a random scan: blobs, half of them kept by the dual-path answer, most near a true lesion;
    ``negative``: a report whose allow map is low everywhere (it names no metastasis); some texts
    hold no word of a finding, some the model reads as no report (allow high everywhere); ``text_only``: also
    lesions of the dual-path answer away from every U-Net lesion, with the dual-path probabilities to drop them by."""
    shape = (C.IMAGE_HEIGHT, C.IMAGE_WIDTH)
    unet, dual, gt = (np.zeros(shape, np.uint8) for _ in range(3))
    for _ in range(int(rng.integers(1, 7))):
        y, x = int(rng.integers(20, 1000)), int(rng.integers(10, 240))
        _blob(unet, y, x, int(rng.integers(2, 9)))
        if rng.random() < 0.5:
            _blob(dual, y + 1, x, 3)
        if rng.random() < 0.6:
            _blob(gt, y, x + 1, 3)
    for _ in range(int(rng.integers(0, 3)) if text_only else 0):  # lesions only the text sees (rule 7), some true
        y, x = int(rng.integers(20, 1000)), int(rng.integers(10, 240))
        if not unet[max(y - 6, 0) : y + 7, max(x - 6, 0) : x + 7].any():
            _blob(dual, y, x, 3)
            if rng.random() < 0.4:
                _blob(gt, y, x, 2)
    prob = unet * rng.uniform(0.5, 1.0, shape).astype(np.float32)
    # the dual-path model's probabilities: sure of its lesions (rule 7 never drops) unless ``text_only``
    dual_prob = dual * (rng.uniform(0.5, 1.0, shape).astype(np.float32) if text_only else np.float32(1.0))
    maps = rng.normal(0, 3, (2, 64, 16)).astype(np.float32)
    if negative:
        maps[0] -= rng.uniform(10.0, 14.0)
    elif rng.random() < 0.1:
        maps[0] = 6.0
    terms = 0 if rng.random() < 0.1 else int(rng.integers(1, 9))
    return dual, unet, prob, gt, maps, np.array([50, int(rng.integers(0, 13)), terms]), dual_prob


def _random_rows(n: int, seed: int, text_only: bool = False) -> tuple[list, list]:
    """Fail-safe measurements of random scans (:func:`_random_scan`) as calibration collects them,
    (Measured, counts) per scan, and the ground truths."""
    from bonescan.failsafe import answer_counts, measure

    rng = np.random.default_rng(seed)
    rows, gts = [], []
    for _ in range(n):
        dual, unet, prob, gt, maps, stats, dual_prob = _random_scan(rng, negative=rng.random() < 0.4, text_only=text_only)
        m = measure(dual, unet, prob, maps, stats, prob=dual_prob)
        rows.append((m, answer_counts(m, gt)))
        gts.append(gt)
    return rows, gts


def _settings_sample(every: int = 29):
    from bonescan.calibrate import GRID, combos, settings_of

    cs = combos()
    return [settings_of(cs[c], GRID["max_unexplained"][k]) for c in range(0, len(cs), every) for k in range(len(GRID["max_unexplained"]))]


def test_calibration_scores_the_answers_it_would_give():
    """answer_scores (counts, what calibration scores settings with) gives the DSC and the detected
    lesions of the mask choose() / answer_mask build exactly, and its false positives as bonescan.metrics
    counts them up to the touching-lesions case it documents, for every path, on random scans."""
    from bonescan.failsafe import answer_mask, answer_scores, choose
    from bonescan.metrics import scan_metrics

    rows, gts = _random_rows(10, 0, text_only=True)
    paths, fp_diff, n, dropped = set(), 0, 0, 0
    for (m, counts), gt in zip(rows, gts):
        for st in _settings_sample() + [FailSafeSettings(enabled=False), FailSafeSettings(max_unknown_share=0.0)]:
            info = choose(m, st)
            d, found, fp = answer_scores(m, info, counts)
            exact = scan_metrics(answer_mask(m, info), gt)
            assert d == pytest.approx(exact["dsc"]) and found == exact["detected_lesions"], st
            fp_diff += abs(fp - exact["fp_components"])
            n += 1
            paths.add((info["answered_by"], bool(info["empty"]), len(info["add"]) > 0))
            dropped += len(info["drop"]) > 0
    assert fp_diff <= 0.02 * n, fp_diff
    assert len(paths) >= 4, paths  # the U-Net, the trusted answer with and without added lesions, the empty one
    assert dropped, "no setting dropped a text-only lesion (rule 7): the counts of that path went untested"


def test_calibration_tables_are_what_choose_gives():
    """calibrate.tables + _points score the whole grid at once (arrays over settings and scans); every
    setting's DSC and sensitivity equal those of choose() applied scan by scan, including the
    whole-scan fall-back of max_unexplained."""
    from bonescan.calibrate import GRID, _points, combos, tables
    from bonescan.failsafe import answer_scores, choose

    rows, _ = _random_rows(14, 1, text_only=True)
    tab = tables(rows)
    assert tab["forced"].any() and not tab["forced"].all()  # some texts say nothing, the others are read
    pts = _points(tab, np.arange(len(rows)))
    cs = combos()
    assert pts["dsc"].shape == (len(cs), len(GRID["max_unexplained"]))
    assert len(np.unique(np.round(pts["dsc"], 6))) > 5  # the settings do answer differently
    from bonescan.calibrate import settings_of

    n_gt = sum(c["gt_lesions"] for _, c in rows)
    for c in range(0, len(cs), 11):
        for k, mx in enumerate(GRID["max_unexplained"]):
            st = settings_of(cs[c], mx)
            got = [answer_scores(m, choose(m, st), counts) for m, counts in rows]
            assert pts["dsc"][c, k] == pytest.approx(np.mean([g[0] for g in got]))
            assert pts["sensitivity"][c, k] == pytest.approx(sum(g[1] for g in got) / n_gt)
            assert pts["fp_per_scan"][c, k] == pytest.approx(np.mean([g[2] for g in got]))


def test_calibration_keeps_the_unets_sensitivity_as_a_floor():
    """A setting on the U-Net's FROC curve may still lose lesions the U-Net's own answer finds (fewer false
    positives, lower on the curve): select() does not choose it, however good its DSC, when another lies on the
    curve at the U-Net's sensitivity; with ``floor=False`` it does."""
    from bonescan.calibrate import combos, select

    cs, n = combos(), 10
    low = next(i for i, c in enumerate(cs) if c["min_text_only_confidence"] > 0)  # fewer FP, fewer lesions, better DSC
    hi = next(i for i, c in enumerate(cs) if c["min_text_only_confidence"] == 0)
    tab = {k: np.zeros((len(cs), n)) for k in ("dsc", "found", "fp", "unexplained")}
    tab["dsc"][:] = 0.5
    tab["found"][:] = 0  # every other setting finds nothing: never safe
    tab["fp"][:] = 0
    tab["dsc"][low], tab["found"][low], tab["fp"][low] = 0.8, 1, 0  # 10 of 20 lesions at 0 FP
    tab["dsc"][hi], tab["found"][hi], tab["fp"][hi] = 0.6, 2, 1  # 20 of 20 at 1 FP per scan
    tab.update(unet_dsc=np.full(n, 0.5), unet_found=np.full(n, 2.0), unet_fp=np.full(n, 1.0), gt=np.full(n, 2.0),
               forced=np.zeros(n, bool))
    # the U-Net's curve: 5 of 20 lesions at no false positive, all 20 at 1 per scan: ``low`` lies above it at 0
    cache = {"froc": {j: {"froc_tp": [0.9 if j < 3 else 0.3, 0.3], "froc_fp": [0.4]} for j in range(n)}}
    tabs = {"true": [tab]}
    best, _ = select(tabs, cache, np.arange(n))
    assert {k: best[k] for k in cs[hi]} == cs[hi] and best["safe"]
    best_curve_only, _ = select(tabs, cache, np.arange(n), floor=False)
    assert {k: best_curve_only[k] for k in cs[low]} == cs[low]


def test_calibration_chooses_a_safe_setting_by_the_froc():
    """select() picks, among the settings whose operating point lies on or above the U-Net's FROC
    curve with every kind of report, the one with the best DSC with true reports; a setting with a
    better DSC that loses lesions against the curve is not chosen (the curve alone: ``floor=False``;
    the sensitivity floor: the next test)."""
    from bonescan.calibrate import GRID, MARGIN, _points, combos, select, tables, unet_curve
    from bonescan.metrics import froc_scan

    rows, gts = _random_rows(24, 2)
    shuf, _ = _random_rows(24, 3)
    cache = {"froc": {}}
    for j, ((m, _), gt) in enumerate(zip(rows, gts)):
        f = froc_scan(gt, m.confidence[m.labels - 1] * (m.labels > 0), m.fallback_mask)
        cache["froc"][j] = {"froc_tp": f["tp"], "froc_fp": f["fp"]}
    tabs = {"true": [tables(rows)], "shuffled": [tables(shuf)]}
    scans = np.arange(len(rows))
    best, ranking = select(tabs, cache, scans, keep=50, floor=False)
    curve = unet_curve(cache, scans)
    margins = {}
    for cond, (tab,) in tabs.items():
        pts = _points(tab, scans)
        margins[cond] = pts["sensitivity"] - np.interp(pts["fp_per_scan"], curve["fp_per_scan"], curve["sensitivity"])
    safe = np.all([mg >= -MARGIN - 1e-12 for mg in margins.values()], axis=0)
    true_dsc = _points(tabs["true"][0], scans)["dsc"]
    assert safe.any() and (~safe).any()
    c = next(i for i, x in enumerate(combos()) if all(x[k] == best[k] for k in x))
    k = GRID["max_unexplained"].index(best["max_unexplained"])
    assert best["safe"] and safe[c, k]
    assert true_dsc[c, k] == pytest.approx(true_dsc[safe].max(), abs=1e-4)
    assert [r["safe"] for r in ranking] == sorted((r["safe"] for r in ranking), reverse=True)
    if true_dsc[~safe].max() > true_dsc[safe].max():  # a better but unsafe setting exists and was passed over
        assert best["true"]["dsc"] < true_dsc[~safe].max()


def test_text_gain_bench_scores_every_condition_against_the_same_budget_unet(checkpoints, dataset, tmp_path):
    """``bench text-gain`` on the tiny models (the session's U-Net and dual-path checkpoints placed where the
    bench reuses them): its rows, margins, gains, ablation and calibration table agree with what they are
    computed from, texts that are no report all get the U-Net's answer, and normalisation reads what
    the unnormalised tokenizer cannot."""
    import shutil

    from bonescan.benchmarks.text_gain import ABLATION_MODES, ABLATIONS, run_text_gain
    from bonescan.data.styles import STYLES
    from bonescan.metrics import sensitivity_at

    shutil.copy(checkpoints["unet"], tmp_path / "unet_s0.pt")
    shutil.copy(checkpoints["dualpath"], tmp_path / f"dualpath_s0_no-{list(STYLES)[0]}.pt")
    modes = ("in-style", "left-out", "traditional", "traditional-raw", "none", "shuffled", "nonreport", "handwritten")
    res = run_text_gain(dataset, tmp_path, [0], config="tiny", modes=modes)
    assert (tmp_path / "unet_s0_same_steps.pt").exists() and (tmp_path / "froc.png").stat().st_size > 10_000
    rows, n = res["rows"], res["test_scans"]
    assert rows["s0/none/failsafe"]["unet_answers"] == n  # no report: the U-Net answers every scan
    nr = rows["s0/nonreport/failsafe"]
    assert nr["unet_answers"] == nr["names_no_finding"] == n and nr["empty_where_unet_not"] == 0
    assert nr["dsc"] == rows["s0/nonreport/unet"]["dsc"]
    # margins: sensitivity minus the U-Net's FROC curve at the answer's false positives per scan
    ev = json.loads((tmp_path / "eval_s0_in-style.json").read_text())
    curve = ev["answers"]["unet"]["froc"]["curve"]
    r = rows["s0/in-style/failsafe"]
    assert r["margin"] == pytest.approx(r["lesion_sensitivity"] - sensitivity_at(curve, r["fp_per_scan"]))
    assert r["cpm"] == ev["answers"]["failsafe"]["froc"]["cpm"]
    g = res["summary"]["gains"]["in-style"]
    assert g["dsc"] == pytest.approx(r["dsc"] - rows["s0/in-style/unet"]["dsc"])
    assert g["cpm"] == pytest.approx(r["cpm"] - rows["s0/in-style/unet"]["cpm"])
    # the ablation: every rule out in every mode, and "served" is the served answer itself
    for mode in set(ABLATION_MODES) & set(modes):
        for name in ABLATIONS:
            assert f"s0/{mode}/ablation:{name}" in rows
        served = rows[f"s0/{mode}/ablation:served"]
        for q in ("dsc", "lesion_sensitivity", "fp_per_scan", "faint_sensitivity", "cpm"):  # the named-place prior included
            assert served[q] == pytest.approx(rows[f"s0/{mode}/failsafe"][q]), q
        assert served["unet_answers"] == rows[f"s0/{mode}/failsafe"]["unet_answers"]
    # grounding: served (prior on), without it and the U-Net on the scans with metastases, faint lesions apart
    gr = res["summary"]["grounding"]["in-style"]
    assert gr["gain"]["sensitivity"] == pytest.approx(r["lesion_sensitivity"] - rows["s0/in-style/unet"]["lesion_sensitivity"])
    assert gr["gain"]["dsc_positive"] == pytest.approx(r["dsc_positive"] - rows["s0/in-style/unet"]["dsc_positive"])
    assert 0 < res["faint_contrast_cut"]["test"] and 0 <= r["faint_sensitivity"] <= 1 and r["faint_lesions"] > 0
    assert gr["answers"]["ablation:- named-place prior"]["lesion_sensitivity"] is not None
    # traditional characters: normalised, the model reads them; not normalised, they are unknown to it
    share = {m: np.mean([d["unknown_share"] for d in json.loads((tmp_path / f"eval_s0_{m}.json").read_text())["failsafe"]["decisions"]])
             for m in ("in-style", "traditional", "traditional-raw")}
    assert share["traditional-raw"] > share["traditional"] + 0.1 and share["traditional"] < share["in-style"] + 0.02, share
    text = (tmp_path / "text_gain.md").read_text(encoding="utf-8")
    assert "U-Net, same image budget" in text and "U-Net, shorter (preset steps)" in text and "out of sample" in text
    assert "Does the report find lesions?" in text and "served without the named-place prior" in text
    # runs of single seeds join into one: the same summary from the run's own rows; a seed twice is refused
    from bonescan.benchmarks.text_gain import combine

    joined = combine([tmp_path / "text_gain.json"], tmp_path / "joined")
    assert json.dumps(joined["summary"]["gains"], sort_keys=True) == json.dumps(res["summary"]["gains"], sort_keys=True)
    assert (tmp_path / "joined" / "text_gain.md").exists()
    with pytest.raises(ValueError, match="more than one run"):
        combine([tmp_path / "text_gain.json"] * 2, tmp_path / "twice")
    assert set(res["summary"]["targets_met"]) >= {"in-style_served_on_or_above_unet_froc", "in-style_cpm_gain_at_least_0.03",
                                                  "traditional_keeps_90pct_of_gain", "nonreport_never_empty_where_unet_finds"}


def test_training_reports_carry_their_named_bones_and_some_carry_another_cases(dataset):
    """ReportSource gives the decoder the bones each training report names (as the tokenizer step does
    in the ensemble); with ``named_mismatch`` a share of them are another case's, the text staying the
    case's own (so the decoder learns that a named bone without image evidence is no lesion)."""
    import tempfile

    from bonescan.data.arrays import load_split
    from bonescan.data.styles import STYLES
    from bonescan.model.config import preset
    from bonescan.train import ReportSource, setup_tokenizer

    mcfg, tcfg = preset("tiny")
    arrays = load_split(dataset, "train", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        _, tok = setup_tokenizer(mcfg, None, Path(tmp))
    assert tok is not None
    idx = np.array([i for i in range(len(arrays)) if arrays.masks[i].any()][:8])
    keep = np.zeros(len(idx), bool)
    tcfg.text_augment = 0.0
    tcfg.unk_noise = 0.0
    own = ReportSource(tok, arrays, tcfg, list(STYLES), np.random.default_rng(0)).batch(idx, keep)
    ids, am, _, regions = own
    assert regions.dtype == torch.float32 and regions.shape == (len(idx), C.REPORT_REGIONS.dims[0])
    assert regions.sum(1).min() > 0  # every case with metastases names a bone
    tcfg.named_mismatch = 1.0
    swapped = ReportSource(tok, arrays, tcfg, list(STYLES), np.random.default_rng(0)).batch(idx, keep)
    assert torch.equal(swapped[0], ids)  # the texts are the cases' own
    assert not torch.equal(swapped[3], regions)  # the named bones are not
    dropped = ReportSource(tok, arrays, tcfg, list(STYLES), np.random.default_rng(0)).batch(idx, ~keep)
    assert not dropped[3].any()  # a dropped report names nothing, and gets no other case's bones


def test_training_reports_can_leave_lesions_out_and_never_all_of_them(dataset):
    """``omit_lesion_share``: some training reports are written as if they had missed metastases (the mask keeps
    them), so the model learns that a report's silence is no veto; a case's every lesion is never left out, a
    case with one lesion never loses it, and with the share 0 the reports are the ones written before."""
    from bonescan.data.arrays import load_split
    from bonescan.data.rewrite import leave_lesions_out, training_report
    from bonescan.data.styles import STYLES

    arrays = load_split(dataset, "train", progress=False)
    many = [m for m in arrays.metas if m and len(m["lesions"]) >= 3]
    one = [m for m in arrays.metas if m and len(m["lesions"]) == 1]
    assert many and one
    rng = np.random.default_rng(0)
    left = [leave_lesions_out(m, rng, 1.0)["report_truth"]["omitted"] for m in many]
    assert all(len(o) == len(m["lesions"]) - 1 for o, m in zip(left, many))  # rate 1: all but one left out
    assert leave_lesions_out(one[0], rng, 1.0) is one[0]
    m = many[0]
    styles = list(STYLES)[:1]
    full = training_report(m, "x", np.random.default_rng(1), styles, 0.0)
    assert training_report(m, "x", np.random.default_rng(1), styles, 0.0, omit_share=0.0) == full
    missed = training_report(m, "x", np.random.default_rng(1), styles, 0.0, omit_share=1.0, omit_rate=1.0)
    assert missed != full
    assert m.get("report_truth") is None  # the case's own meta is not changed


def test_rule_5_reads_the_places_the_report_names():
    """A confident U-Net hot spot the report-guided answer drops where the model's mention map says nothing is
    unexplained, unless its bone is one the report names as a metastasis or calls benign (parsed_mentions, the
    report's places over the anatomy output): then the report explained it, and the report-guided answer stands."""
    from bonescan.anatomy import CLASS_INDEX
    from bonescan.failsafe import choose, measure
    from bonescan.postprocess import parsed_mentions
    from bonescan.report_sites import place_classes

    s = FailSafeSettings(min_confidence=0.8, max_unexplained=0)
    shape = (C.IMAGE_HEIGHT, C.IMAGE_WIDTH)
    unet = np.zeros(shape, np.uint8)
    _blob(unet, 100, 40)
    _blob(unet, 500, 200)
    dual = np.zeros(shape, np.uint8)  # drops both
    r = C.REGION_STRIDE
    reg = np.zeros((2, shape[0] // r, shape[1] // r), np.uint8)
    reg[:, 90 // r : 110 // r, 30 // r : 50 // r] = CLASS_INDEX["T7"]
    reg[:, 490 // r : 510 // r, 190 // r : 210 // r] = CLASS_INDEX["rib_R5_posterior"]
    stats = np.array([80, 0, 6])

    def answer(report: str, settings: FailSafeSettings = s) -> dict:
        m = measure(dual, unet, unet * 0.95, _maps([], []), stats)
        places = place_classes(report)
        m.parsed = parsed_mentions(m, reg, places.wide, places.benign)
        return choose(m, settings)

    both = "检查所见：T7见放射性浓聚。诊断意见：T7骨转移。右侧第5肋陈旧性骨折。"
    info = answer(both)
    assert info["answered_by"] == DUALPATH and info["signals"]["unexplained_lesions"] == 0
    info = answer("诊断意见：T7骨转移。")  # the rib: unexplained
    assert info["answered_by"] == UNET and info["signals"]["unexplained_lesions"] == 1
    info = answer("诊断意见：L3骨转移。")  # neither: another patient's report
    assert info["answered_by"] == UNET and info["signals"]["unexplained_lesions"] == 2
    info = answer(both, replace(s, parsed_mentions=False))  # the rule off: the model's mention map alone
    assert info["answered_by"] == UNET and info["signals"]["unexplained_lesions"] == 2
