"""The report path: a tokenizer that reads any Chinese report, the report's maps, the fail-safe, MLM
pretraining, the hand-written held-out reports, evaluation with reports written elsewhere."""

from __future__ import annotations

import json
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
    ids, mask = tok(["胸椎浓聚", "胸椎浓聚龘龘", ""])
    assert tok.text_stats(ids, mask).tolist() == [[4, 0], [6, 2], [0, 0]]
    # without the file (a pretrained MacBERT's tokenizer) every character is known
    ids, mask = full(["胸椎浓聚龘龘"])
    assert full.text_stats(ids, mask).tolist() == [[6, 0]]


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
    s = FailSafeSettings(max_unknown_share=0.15, max_unexplained=0, min_confidence=0.8)
    shape = (C.IMAGE_HEIGHT, C.IMAGE_WIDTH)
    unet = np.zeros(shape, np.uint8)
    _blob(unet, 100, 40)  # cell (3, 1)
    _blob(unet, 500, 200)  # cell (15, 6)
    prob = unet * 0.95  # both confident
    dual = np.zeros(shape, np.uint8)
    _blob(dual, 100, 40)
    stats = np.array([80, 0])
    # the report names the first place a metastasis and mentions the second (a benign finding): trusted
    out, info = decide(dual, unet, prob, _maps([(3, 1)], [(3, 1), (15, 6)]), stats, s)
    assert info["answered_by"] == DUALPATH and np.array_equal(out, dual)
    assert info["signals"]["dropped_lesions"] == 1 and info["signals"]["unexplained_lesions"] == 0
    # a U-Net lesion where the report names a metastasis, missed by the dual-path model, is added
    out, info = decide(np.zeros(shape, np.uint8), unet, prob, _maps([(3, 1)], [(3, 1), (15, 6)]), stats, s)
    assert info["answered_by"] == DUALPATH and info["unet_lesions_added"] == 1 and out[100, 40] == 1 and out[500, 200] == 0
    # no report
    out, info = decide(dual, unet, prob, _maps([], []), np.array([0, 0]), s)
    assert info["answered_by"] == UNET and "no report" in info["reason"] and np.array_equal(out, unet)
    # a report in characters the model does not know
    out, info = decide(dual, unet, prob, _maps([(3, 1)], [(3, 1), (15, 6)]), np.array([80, 20]), s)
    assert info["answered_by"] == UNET and "not read" in info["reason"] and info["signals"]["unknown_share"] == 0.25
    # a report that mentions neither hot spot (another patient's): the dropped confident one is unexplained
    out, info = decide(dual, unet, prob, _maps([(20, 2)], [(20, 2)]), stats, s)
    assert info["answered_by"] == UNET and "does not fit" in info["reason"] and info["signals"]["unexplained_lesions"] == 1
    # ... unless the dropped hot spot is one the U-Net itself is unsure of (most of those are its false positives)
    weak = prob.copy()
    weak[480:520, 180:220] = 0.6
    out, info = decide(dual, unet, weak, _maps([(20, 2)], [(20, 2)]), stats, s)
    assert info["answered_by"] == DUALPATH and info["signals"]["unexplained_lesions"] == 0
    # a report that names a metastasis where the image shows no hot spot at all (another patient's)
    from dataclasses import replace

    names_elsewhere = _maps([(3, 1), (20, 2)], [(3, 1), (15, 6), (20, 2)])
    out, info = decide(dual, unet, prob, names_elsewhere, stats, replace(s, max_unseen_named=0))
    assert info["answered_by"] == UNET and "no hot spot" in info["reason"] and info["signals"]["unseen_named_places"] == 1
    out, info = decide(dual, unet, prob, names_elsewhere, stats, replace(s, max_unseen_named=1))
    assert info["answered_by"] == DUALPATH and info["signals"]["unseen_named_places"] == 1
    # one unexplained hot spot tolerated by count, but not by its area (6 x 6 pixels)
    elsewhere = _maps([(20, 2)], [(20, 2)])
    out, info = decide(dual, unet, prob, elsewhere, stats, replace(s, max_unexplained=1, max_unexplained_area=36))
    assert info["answered_by"] == DUALPATH and info["signals"]["unexplained_area_px"] == 36
    out, info = decide(dual, unet, prob, elsewhere, stats, replace(s, max_unexplained=1, max_unexplained_area=35))
    assert info["answered_by"] == UNET and "36 pixels" in info["reason"]
    # a report that names no metastasis (allow low everywhere) but mentions both hot spots: the
    # trusted answer is empty, with the fail-safe on or off; not so below the calibrated level
    negative = _maps([], [(3, 1), (15, 6)])
    out, info = decide(dual, unet, prob, negative, stats, replace(s, negative_report_allow=0.2))
    assert info["answered_by"] == DUALPATH and "names no metastasis" in info["reason"] and not out.any()
    assert info["signals"]["allow_max"] < 0.01 and info["signals"]["names_no_metastasis"]
    out, info = decide(dual, unet, prob, negative, stats, replace(s, negative_report_allow=0.2, enabled=False))
    assert info["answered_by"] == DUALPATH and "fail-safe off" in info["reason"] and not out.any()
    out, info = decide(dual, unet, prob, negative, stats, s)
    assert np.array_equal(out, dual)
    # ... and a report naming a metastasis is not negative; nor is no report (the U-Net answers)
    out, info = decide(dual, unet, prob, _maps([(3, 1)], [(3, 1), (15, 6)]), stats, replace(s, negative_report_allow=0.2))
    assert out.any() and "names no metastasis" not in info["reason"]
    out, info = decide(dual, unet, prob, negative, np.array([0, 0]), replace(s, negative_report_allow=0.2, enabled=False))
    assert np.array_equal(out, dual)
    # the fail-safe off: always the dual-path answer
    out, info = decide(dual, unet, prob, _maps([], []), np.array([0, 0]), FailSafeSettings(enabled=False))
    assert info["answered_by"] == DUALPATH and np.array_equal(out, dual)


def test_failsafe_settings_read_from_config_parameters():
    s = FailSafeSettings(enabled=False, max_unknown_share=0.2, max_unexplained=2.0, min_confidence=0.7, add_named_lesions=False)
    params = {f"failsafe_{k}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in s.to_dict().items()}
    assert FailSafeSettings.from_dict(params, prefix="failsafe_") == s


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


def test_trained_checkpoint_carries_its_fallback_and_calibrated_failsafe(checkpoints, exports, repo):
    from bonescan.model.checkpoint import load_checkpoint
    from bonescan.serving.repository import parse_config

    ck = load_checkpoint(checkpoints["dualpath"])
    fs = ck.metadata["failsafe"]
    assert ck.metadata["fallback"]["checkpoint"] == str(checkpoints["unet"])
    assert fs["settings"]["max_unexplained"] >= 0 and fs["val_scans"] > 0 and fs["grid_size"] > 10 and 1 <= len(fs["grid"]) <= 20
    assert fs["grid"][0]["safe"] == fs["safe"] and fs["grid"][0]["true"] == fs["dsc_true"]  # the chosen setting leads
    assert ck.metadata["text_pretraining"]["steps"] > 0 and TRAINED_TOKENS_FILE in ck.tokenizer_files
    assert ck.metadata["maps_pretraining"]["steps"] > 0
    # the bundled U-Net is the U-Net checkpoint itself
    unet = load_checkpoint(checkpoints["unet"])
    for k, v in unet.net.segmenter.state_dict().items():
        assert torch.equal(ck.net.fallback.state_dict()[k], v), k
    desc = json.loads((exports["dualpath"] / "model.json").read_text())
    assert desc["failsafe"]["settings"] == fs["settings"]
    cfg = parse_config(repo / C.POSTPROCESS_MODEL / "config.pbtxt")
    assert float(cfg.parameters["failsafe_max_unexplained"].string_value) == fs["settings"]["max_unexplained"]
    assert (repo / C.TOKENIZER_MODEL / "1" / TRAINED_TOKENS_FILE).is_file()


def test_calibration_passes_reuse_the_unet_answer(checkpoints, dataset):
    """Calibration's passes with other reports reuse the U-Net's answer of the first pass (it does
    not depend on the report): the measurements are those of a full pass."""
    from bonescan.data.arrays import load_split
    from bonescan.evaluate import THRESHOLD, _collect, select_reports
    from bonescan.model.checkpoint import Predictor, load_checkpoint

    pred = Predictor(load_checkpoint(checkpoints["dualpath"]))
    arrays = load_split(dataset, "val", progress=False)
    cache: dict = {}
    _collect(pred, arrays, list(arrays.reports), THRESHOLD, fallback=cache)
    assert sorted(cache) == list(range(0, len(arrays), 4))
    other = select_reports(list(arrays.reports), "shuffled", 0)
    full, reused = _collect(pred, arrays, other, THRESHOLD), _collect(pred, arrays, other, THRESHOLD, fallback=cache)
    for (a, ca, pa), (b, cb, pb) in zip(full, reused):
        assert pa == pb and ca["unet"] == cb["unet"] and ca["dual"] == cb["dual"]
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
    odd = "龘靐齉爩麤" * 12  # known to the tokenizer, never in a training report
    c = grpcclient.InferenceServerClient(server.grpc_url)
    outs = [grpcclient.InferRequestedOutput(n) for n in ("MASK", "LESIONS")]
    dual = c.infer("bonescan", grpc_inputs(s.image[None], [odd], sp), outputs=outs, client_timeout=120)
    unet = c.infer("bonescan_unet", grpc_inputs(s.image[None], None, sp), outputs=outs, client_timeout=120)
    info = json.loads(dual.as_numpy("LESIONS")[0, 0])
    assert info["answered_by"] == "unet" and "not read" in info["reason"], info
    assert info["signals"]["unknown_share"] == 1.0 and "龘" not in json.dumps(info, ensure_ascii=False)
    assert np.array_equal(dual.as_numpy("MASK"), unet.as_numpy("MASK"))


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
    masks, _, lesions = pipe.answer(np.zeros((1, *C.IMAGE_DIMS), np.float32) + 5, np.array([[2.0, 2.0]], np.float32), ["胸7椎体"])
    assert masks.shape == (1, 1, C.IMAGE_HEIGHT, C.IMAGE_WIDTH) and json.loads(lesions[0])["answered_by"] in ("dualpath", "unet")
    m = build_repository(tmp_path / "export", tmp_path / "repo", RepoOptions(), baseline=exports["unet"])
    assert m["text_hidden"] == SHAPES["mini"]["hidden_size"]


def _random_scan(rng: np.random.Generator, negative: bool) -> tuple[np.ndarray, ...]:
    """(dual-path mask, U-Net mask, U-Net probabilities, ground truth, report maps, token stats)
    of a random scan: blobs, half of them kept by the dual-path answer, most near a true lesion;
    ``negative``: a report whose allow map is low everywhere (it names no metastasis)."""
    shape = (C.IMAGE_HEIGHT, C.IMAGE_WIDTH)
    unet, dual, gt = (np.zeros(shape, np.uint8) for _ in range(3))
    for _ in range(int(rng.integers(1, 7))):
        y, x = int(rng.integers(20, 1000)), int(rng.integers(10, 240))
        _blob(unet, y, x, int(rng.integers(2, 9)))
        if rng.random() < 0.5:
            _blob(dual, y + 1, x, 3)
        if rng.random() < 0.6:
            _blob(gt, y, x + 1, 3)
    prob = unet * rng.uniform(0.5, 1.0, shape).astype(np.float32)
    maps = rng.normal(0, 3, (2, 64, 16)).astype(np.float32)
    if negative:
        maps[0] -= rng.uniform(10.0, 14.0)
    return dual, unet, prob, gt, maps, np.array([50, int(rng.integers(0, 10))])


def _random_rows(n: int, seed: int) -> list:
    """Fail-safe measurements of random scans (:func:`_random_scan`), as calibration collects them:
    (Measured, counts, has metastases)."""
    from bonescan.failsafe import answer_counts, measure

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        dual, unet, prob, gt, maps, stats = _random_scan(rng, negative=rng.random() < 0.4)
        m = measure(dual, unet, prob, maps, stats)
        rows.append((m, answer_counts(m, gt), bool(gt.any())))
    return rows


def test_calibration_grid_scores_are_what_choose_gives():
    """search_settings scores the whole grid at once (arrays over settings); every setting's
    scores equal those of choose() applied scan by scan, with one and with several shuffles."""
    from bonescan.evaluate import GRID, _scores, search_settings
    from bonescan.failsafe import FailSafeSettings

    true_rows, shuffles = _random_rows(12, 0), [_random_rows(12, 1), _random_rows(12, 2)]
    grid, best = search_settings(true_rows, shuffles, FailSafeSettings())
    assert len(grid) == int(np.prod([len(v) for v in GRID.values()])) and best is grid[0]
    assert len({g["true"] for g in grid}) > 5  # the settings do answer differently
    assert any(m.allow_max < 0.3 for m, _, _ in true_rows) and any(m.allow_max > 0.5 for m, _, _ in true_rows)
    for g in grid[:5] + grid[::97] + [g for g in grid if g["negative_report_allow"] == 0.3][:40:7]:
        st = FailSafeSettings(max_unexplained=float(g["max_unexplained"]), max_unexplained_area=float(g["max_unexplained_area"]),
                              min_confidence=g["min_confidence"], mention_threshold=g["mention_threshold"],
                              add_named_lesions=g["add_named_lesions"], allow_threshold=g["allow_threshold"],
                              max_unseen_named=float(g["max_unseen_named"]), negative_report_allow=g["negative_report_allow"])
        t = _scores(true_rows, st)
        assert g["true"] == pytest.approx(t["all"], abs=1e-4) and g["true_positive"] == pytest.approx(t["positive"], abs=1e-4)
        assert g["true_sensitivity"] == pytest.approx(t["sensitivity"], abs=1e-4)
        assert g["shuffled"] == pytest.approx(np.mean([_scores(r, st)["all"] for r in shuffles]), abs=1e-4)
    one, _ = search_settings(true_rows, shuffles[0], FailSafeSettings())  # a single list of rows works too
    assert len(one) == len(grid)


def test_calibration_scores_the_answers_it_would_give():
    """answer_dsc (pixel counts, what calibration scores settings with) equals the DSC of the mask
    decide() builds, and answer_hits the lesions bonescan.metrics finds in it, for every path and
    setting, on random scans."""
    from bonescan.failsafe import answer_counts, answer_dsc, answer_hits, answer_mask, choose, decide, measure
    from bonescan.metrics import dsc, scan_metrics

    rng = np.random.default_rng(0)
    for k in range(8):
        dual, unet, prob, gt, maps, stats = _random_scan(rng, negative=k % 2 == 1)
        m = measure(dual, unet, prob, maps, stats)
        counts = answer_counts(m, gt)
        for st in (FailSafeSettings(), FailSafeSettings(max_unexplained=0, min_confidence=0.5, mention_threshold=0.9),
                   FailSafeSettings(add_named_lesions=False), FailSafeSettings(max_unknown_share=0.0), FailSafeSettings(enabled=False),
                   FailSafeSettings(max_unseen_named=0, allow_threshold=0.5), FailSafeSettings(max_unexplained_area=20),
                   FailSafeSettings(negative_report_allow=0.5), FailSafeSettings(enabled=False, negative_report_allow=0.5)):
            info = choose(m, st)
            assert answer_dsc(m, info, gt, counts) == pytest.approx(dsc(answer_mask(m, info), gt)), (k, st)
            assert answer_hits(info, counts) == scan_metrics(answer_mask(m, info), gt)["detected_lesions"], (k, st)
            assert np.array_equal(decide(dual, unet, prob, maps, stats, st)[0], answer_mask(m, info))


def test_text_gain_bench_runs_with_both_baselines(checkpoints, dataset, tmp_path):
    """``bench text-gain`` on the tiny models (the session's U-Net and dual-path checkpoints placed
    where the bench reuses them): it trains the same-image-steps U-Net, scores every mode and
    answer, and its summary and table carry the targets and the comparison with both U-Nets."""
    import shutil

    from bonescan.benchmarks.text_gain import run_text_gain
    from bonescan.data.styles import STYLES

    shutil.copy(checkpoints["unet"], tmp_path / "unet_s0.pt")
    shutil.copy(checkpoints["dualpath"], tmp_path / f"dualpath_s0_no-{list(STYLES)[0]}.pt")
    res = run_text_gain(dataset, tmp_path, [0], config="tiny")
    assert (tmp_path / "unet_s0_same_steps.pt").exists()
    rows = res["rows"]
    for mode in ("in-style", "left-out", "none", "shuffled", "handwritten"):
        for answer in ("dualpath", "failsafe", "unet"):
            assert 0.0 <= rows[f"s0/{mode}/{answer}"]["dsc"] <= 1.0
    assert rows["s0/none/failsafe"]["unet_answers"] == res["test_scans"]  # no report: the U-Net answers every scan
    s = res["summary"]
    assert set(s["targets_met"]) >= {"in_style_gain_at_least_0.05", "left_out_keeps_two_thirds",
                                     "shuffled_without_failsafe_below_unet"}
    same = s["against_unet_same_steps"]
    assert s["unet_same_steps_dsc"] == rows["s0/in-style/unet_same_steps"]["dsc"]
    assert abs(same["in_style_gain"] - (rows["s0/in-style/failsafe"]["dsc"] - s["unet_same_steps_dsc"])) < 1e-9
    text = (tmp_path / "text_gain.md").read_text(encoding="utf-8")
    assert "U-Net, the dual-path's image steps" in text and "Against the U-Net with the same image steps" in text
