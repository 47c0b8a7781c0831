"""The network, its two deployable halves, checkpoints, tokenizer, metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bonescan.contract import IMAGE_HEIGHT, IMAGE_WIDTH, TOKENIZER, normalize_counts_np, to_model_frame
from bonescan.data.synth import synth_case
from bonescan.evaluate import derangement, select_reports
from bonescan.metrics import dsc, scan_metrics, summarize
from bonescan.model.checkpoint import Checkpoint, load_checkpoint, read_tokenizer_files, save_checkpoint
from bonescan.model.config import preset
from bonescan.model.network import BoneScanNet
from bonescan.model.unet import normalize_counts
from bonescan.tokenize import (
    ReportError,
    ReportTokenizer,
    build_tokenizer,
    character_vocabulary,
    decode_report,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def cases():
    return [synth_case(5, i) for i in range(6)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, cases):
    d = tmp_path_factory.mktemp("tok")
    build_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    return ReportTokenizer(tok_dir / "tokenizer.json")


def _batch(cases, tokenizer):
    img = torch.from_numpy(np.stack([to_model_frame(c.anterior, c.posterior) for c in cases]))
    ids, am = tokenizer([c.report for c in cases])
    return img, torch.from_numpy(ids), torch.from_numpy(am)


VOCAB = len(character_vocabulary())


def _tiny(model="dualpath", fusion=None, vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    mcfg, _ = preset("tiny", model, fusion)
    return BoneScanNet(mcfg, vocab_size=vocab).eval()


def test_tokenizer_contract(tokenizer, cases):
    ids, am = tokenizer([cases[0].report, ""])
    assert ids.dtype == np.int32 and am.dtype == np.int32
    assert ids.shape == (2, TOKENIZER.max_tokens)
    cls, sep = tokenizer.tok.token_to_id("[CLS]"), tokenizer.tok.token_to_id("[SEP]")
    assert ids[0, 0] == cls and ids[1, :2].tolist() == [cls, sep]
    assert am[1].sum() == 2 and (ids[1, 2:] == TOKENIZER.pad_token_id).all()
    assert 20 < am[0].sum() <= TOKENIZER.max_tokens
    # Chinese characters are single tokens, as in MacBERT's vocabulary
    assert tokenizer.tok.encode("胸椎", add_special_tokens=False).tokens[:2] == ["胸", "椎"]
    assert "[UNK]" not in tokenizer.tok.encode("T7 L12 C3", add_special_tokens=False).tokens
    long_ids, long_am = tokenizer(["胸" * 5000])
    assert long_am.sum() == TOKENIZER.max_tokens  # truncated, not refused


def test_report_decoding_errors_never_echo_text():
    secret = "患者李四"
    with pytest.raises(ReportError) as e:
        decode_report(secret.encode("gbk"))
    assert "UTF-8" in str(e.value) and secret not in str(e.value)
    with pytest.raises(ReportError) as e:
        decode_report(("骨" * (TOKENIZER.max_report_chars + 1)).encode())
    assert "limit" in str(e.value) and "骨骨" not in str(e.value)
    assert decode_report(b"") == ""


@pytest.mark.parametrize("model", ["dualpath", "unet"])
def test_output_shapes(model, cases, tokenizer):
    net = _tiny(model)
    img, ids, am = _batch(cases[:2], tokenizer)
    with torch.no_grad():
        y = net(img, ids, am) if model == "dualpath" else net(img)
    assert y.shape == (2, 1, IMAGE_HEIGHT, IMAGE_WIDTH) and y.dtype == torch.float32
    if model == "dualpath":
        feats = net.text_encoder(ids, am)
        assert feats.shape == (2, TOKENIZER.max_tokens, net.text_encoder.hidden)
        y2 = net.segmenter(img, feats, am)
        assert torch.equal(y, y2)  # the two deployable graphs compose to the whole model


@pytest.mark.parametrize("fusion", ["xattn", "gate"])
def test_padding_tokens_change_nothing(fusion, cases, tokenizer):
    net = _tiny("dualpath", fusion)
    with torch.no_grad():  # make the text matter
        for f in net.segmenter.fusions:
            if hasattr(f, "scale"):
                f.scale.fill_(50.0)
            else:
                torch.nn.init.normal_(f.fc.weight, std=20.0)
    img, ids, am = _batch(cases[:1], tokenizer)
    n = int(am.sum())
    short_ids, short_am = ids[:, : n + 3], am[:, : n + 3]
    garbage = ids.clone()
    garbage[:, n:] = 7  # whatever sits under mask 0 is ignored
    with torch.no_grad():
        full = net(img, ids, am)
        short = net(img, short_ids, short_am)
        junk = net(img, garbage, am)
    pad_effect = float(torch.maximum((full - short).abs().max(), (full - junk).abs().max()))
    assert pad_effect < 1e-6, pad_effect
    # ... while the report itself does matter to the fusion block
    other_ids, other_am = map(torch.from_numpy, tokenizer([cases[3].report]))
    block = net.segmenter.fusions[0]
    x = torch.rand(1, block.fc.out_features if fusion == "gate" else block.q.in_features, 8, 8)
    if fusion == "xattn":
        x = torch.rand(1, block.q.in_features, *block.pos.shape[-2:])
    with torch.no_grad():
        a = block(x, net.text_encoder(ids, am), am)
        b = block(x, net.text_encoder(other_ids, other_am), other_am)
    assert float((a - b).abs().max()) > 1e-3


def test_overfits_one_batch(cases, tokenizer):
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    mcfg, _ = preset("tiny", "dualpath")
    mcfg.width = 8
    net = BoneScanNet(mcfg, vocab_size=VOCAB)
    pos = [c for c in cases if c.mask.any()][:2]
    img, ids, am = _batch(pos, tokenizer)
    mask = torch.from_numpy(np.stack([c.mask for c in pos]).astype(np.float32))[:, None]
    opt = torch.optim.AdamW(net.parameters(), 1e-2)
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    first = None
    for _ in range(80):
        loss = loss_fn(net(img, ids, am), mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss)
    net.eval()
    with torch.no_grad():
        pred = net(img, ids, am) > 0
    dsc = scan_metrics(pred[0, 0].numpy(), pos[0].mask)["dsc"]
    assert float(loss) < 0.5 * first, (first, float(loss))
    assert dsc > 0.5, dsc


@pytest.mark.parametrize("model", ["dualpath", "unet"])
def test_checkpoint_round_trip(model, tmp_path: Path, cases, tokenizer, tok_dir):
    net = _tiny(model, seed=3)
    files = read_tokenizer_files(tok_dir) if model == "dualpath" else {}
    path = save_checkpoint(tmp_path / "m.pt", net, files, {"seed": 3})
    ck = load_checkpoint(path)
    assert isinstance(ck, Checkpoint) and ck.metadata["seed"] == 3 and ck.cfg == net.cfg
    img, ids, am = _batch(cases[:2], tokenizer)
    with torch.no_grad():
        a = net(img, ids, am) if model == "dualpath" else net(img)
        b = ck.net(img, ids, am) if model == "dualpath" else ck.net(img)
    assert torch.equal(a, b)
    if model == "dualpath":
        assert ck.report_tokenizer()([cases[0].report])[0].tolist() == tokenizer([cases[0].report])[0].tolist()


def test_count_normalisation_matches_contract():
    x = np.random.default_rng(0).poisson(5.0, size=(2, 2, 64, 32)).astype(np.float32)
    x[0, 0, :5] = 900
    t = normalize_counts(torch.from_numpy(x)).numpy()
    assert np.allclose(t, normalize_counts_np(x), atol=1e-6)
    # dose invariant: scaling all counts leaves it (almost) unchanged
    assert np.allclose(normalize_counts_np(x * 3), normalize_counts_np(x), atol=0.01)


def test_metrics_on_hand_made_masks():
    gt = np.zeros((8, 8), bool)
    gt[1:3, 1:3] = True  # lesion A, 4 px
    gt[5:7, 5:8] = True  # lesion B, 6 px
    pred = np.zeros_like(gt)
    pred[1:3, 1:2] = True  # 2 px of A
    pred[0, 7] = True  # a false positive component
    m = scan_metrics(pred, gt)
    assert m["tp"] == 2 and m["fp"] == 1 and m["fn"] == 8
    assert m["dsc"] == pytest.approx(2 * 2 / (3 + 10))
    assert m["iou"] == pytest.approx(2 / 11)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(0.2)
    assert m["gt_lesions"] == 2 and m["detected_lesions"] == 1 and m["fp_components"] == 1
    empty = np.zeros_like(gt)
    assert scan_metrics(empty, empty)["dsc"] == 1.0  # negative scan, clean prediction
    assert scan_metrics(pred, empty)["dsc"] == 0.0  # negative scan, false positives
    s = summarize([m, scan_metrics(empty, empty)])
    assert s["lesion_sensitivity"] == pytest.approx(0.5) and s["fp_per_scan"] == pytest.approx(0.5)
    assert s["negative_scans_clean"] == 1.0


def test_numpy_dsc_agrees_with_monai():
    rng = np.random.default_rng(0)
    empty = np.zeros((16, 8), bool)
    pairs = [(empty, empty), (empty, ~empty)] + [(rng.random((16, 8)) < 0.2, rng.random((16, 8)) < 0.2) for _ in range(5)]
    for a, b in pairs:
        assert dsc(a, b) == pytest.approx(scan_metrics(a, b)["dsc"])


def test_shuffled_reports_never_keep_their_own():
    for n in (2, 3, 10, 201):
        p = derangement(n, 0)
        assert sorted(p) == list(range(n)) and not (p == np.arange(n)).any()
    r = ["a", "b", "c"]
    assert select_reports(r, "empty") == ["", "", ""] and select_reports(r, "true") == r


def test_froc_on_a_hand_computed_case():
    """Two scans, three lesions, candidates scored by hand (the module docstring's rules):
    scan 1: lesion A found by a 0.9 candidate, lesion B by none, false positives 0.6 and 0.3 (the
    0.3 one cut at 0.1, not at 0.5); a 2-pixel speck of 0.95 is no candidate. scan 2: lesion C
    touched only by a 0.4 candidate, one false positive of 0.8 that the answer does not give
    (scored just below 0.5). Levels: 0.9 -> (0 FP, 1/3), 0.6 -> (1/2 FP ... ) and so on."""
    from bonescan.metrics import froc, froc_scan, scan_metrics, sensitivity_at, summarize

    gt1, p1 = np.zeros((40, 40), bool), np.zeros((40, 40), np.float32)
    gt1[2:6, 2:6] = True  # A
    gt1[30:34, 30:34] = True  # B
    p1[3:7, 3:7] = 0.9  # touches A
    p1[15:18, 15:18] = 0.6  # false positive
    p1[20:23, 2:5] = 0.3  # false positive below the answer's threshold
    p1[38, 0:2] = 0.95  # a speck: not a candidate
    s1 = froc_scan(gt1, p1)
    assert s1 == {"tp": [pytest.approx(0.9), 0.0], "fp": [pytest.approx(0.6), pytest.approx(0.3)]}
    gt2, p2 = np.zeros((40, 40), bool), np.zeros((40, 40), np.float32)
    gt2[10:14, 10:14] = True  # C
    p2[12:16, 12:16] = 0.4
    p2[30:33, 30:33] = 0.8
    answer2 = np.zeros((40, 40), bool)  # the answer gives nothing (e.g. the report is negative)
    s2 = froc_scan(gt2, p2, answer2)
    assert s2["tp"] == [pytest.approx(0.4)] and len(s2["fp"]) == 1 and 0.49999 < s2["fp"][0] < 0.5
    rows = [{"froc_tp": s1["tp"], "froc_fp": s1["fp"]}, {"froc_tp": s2["tp"], "froc_fp": s2["fp"]}]
    f = froc(rows)
    # score levels, best first: 0.9 -> (0 FP, 1/3); 0.6 -> (0.5, 1/3); 0.49.. -> (1.0, 1/3); 0.4 -> (1.0, 2/3); 0.3 -> (1.5, 2/3)
    assert f["curve"]["fp_per_scan"] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert f["curve"]["sensitivity"] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    at = f["sensitivity_at"]
    assert at["0.125"] == at["0.25"] == at["0.5"] == pytest.approx(1 / 3)
    assert at["1"] == at["2"] == at["4"] == at["8"] == pytest.approx(2 / 3)
    assert f["cpm"] == pytest.approx((3 / 3 + 4 * 2 / 3) / 7)
    assert sensitivity_at(f["curve"], 0.75) == pytest.approx(0.5)
    # through scan_metrics / summarize, the answer's own operating point beside its curve
    m1 = scan_metrics(p1 >= 0.5, gt1, p1)
    assert m1["froc_tp"] == s1["tp"] and m1["detected_lesions"] == 1 and m1["fp_components"] == 2  # the speck counts here
    s = summarize([m1, scan_metrics(answer2, gt2, p2)])
    assert s["froc"]["cpm"] == pytest.approx(f["cpm"])
    assert summarize([scan_metrics(p1 >= 0.5, gt1)])["froc"] is None  # no probabilities, no curve


def test_the_paper_config_builds_from_scratch_with_this_tokenizer(dataset, tmp_path: Path):
    """README: `bonescan train --config paper --steps 0` gives a paper-sized checkpoint for cost measurements.
    Without a MacBERT folder the text encoder's vocabulary is the project's tokenizer's (every CJK character):
    a fixed 21128 (MacBERT's) failed at the first id past it."""
    from bonescan.cli import main

    out = tmp_path / "paper.pt"
    assert main(["train", "--config", "paper", "--steps", "0", "--data", str(dataset), "--out", str(out), "--quiet"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.net.text_encoder is not None and ckpt.net.text_encoder.hidden == 768
    rows = ckpt.net.text_encoder.bert.get_input_embeddings().num_embeddings
    assert rows == ckpt.report_tokenizer().vocab_size > 21128


def test_faint_lesions_are_the_lowest_contrast_third_and_counted_by_their_centre():
    """The faint cut comes from the truth alone (a third of the contrasts lie at or below it); a faint lesion is
    detected when the answer touches the component at its centre; summarize reports the faint sensitivity and the
    false positives on scans with metastases only."""
    from bonescan.metrics import faint_cut, faint_detected, scan_metrics, summarize

    metas = [{"lesions": [{"contrast": c, "center": [5 + 10 * k, 5]} for k, c in enumerate(cs)]}
             for cs in ([1.2, 3.0, 2.0], [1.5, 4.0, 5.0])]
    assert faint_cut(metas) == 2.0 and faint_cut([None, {}]) is None
    gt = np.zeros((40, 12), bool)
    for k in range(3):
        gt[3 + 10 * k : 8 + 10 * k, 3:8] = True
    pred = np.zeros_like(gt)
    pred[6, 6] = True  # touches the first lesion (contrast 1.2) only
    assert faint_detected(pred, gt, metas[0], 2.0) == (2, 1)  # contrasts 1.2 and 2.0 are faint; 1.2 is found
    assert faint_detected(pred, gt, metas[0], 1.0) == (0, 0) and faint_detected(pred, gt, None, 2.0) == (0, 0)
    rows = [scan_metrics(pred, gt), scan_metrics(np.ones((4, 4), bool), np.zeros((4, 4), bool))]
    rows[0]["faint_lesions"], rows[0]["faint_detected"] = 2, 1
    rows[1]["faint_lesions"], rows[1]["faint_detected"] = 0, 0
    s = summarize(rows)
    assert s["faint_sensitivity"] == 0.5 and s["faint_lesions"] == 2
    assert s["fp_per_scan"] == 0.5 and s["fp_per_positive_scan"] == 0.0  # the negative scan's false positive is not counted there
    assert "faint_sensitivity" not in summarize([scan_metrics(pred, gt)])  # rows without faint counts: none reported


def test_the_decoder_reads_the_bones_the_report_names(cases, tokenizer):
    """NamedPlaces: zero-initialised (a model warm-started from the U-Net starts as that U-Net), then the
    logits move where the named bones are and nowhere else when the report names none; the deployed graph
    (DeployedSegmenter, report_regions as its input) composes to the training forward."""
    from bonescan.anatomy import N_REGION_CLASSES
    from bonescan.contract import REGION_STRIDE
    from bonescan.model.fusion import named_map

    net = _tiny("dualpath")
    assert net.segmenter.named is not None and net.fallback is not None and net.fallback.anatomy is not None
    img, ids, am = _batch(cases[:2], tokenizer)
    regions = torch.from_numpy(tokenizer.report_regions([c.report for c in cases[:2]]))
    assert regions.dtype == torch.float32 and regions.shape == (2, N_REGION_CLASSES)
    with torch.no_grad():
        # the map: one-hot region logits give the named classes' cells exactly
        onehot = torch.full((1, 2, N_REGION_CLASSES, 4, 4), -30.0)
        onehot[0, :, 5, :2] = 30.0
        onehot[0, :, 0, 2:] = 30.0
        named = torch.zeros(1, N_REGION_CLASSES)
        named[0, 5] = 1.0
        m = named_map(onehot, named)
        assert m.shape == (1, 2, 4, 4) and torch.allclose(m[0, :, :2], torch.ones(2, 2, 4)) and float(m[0, :, 2:].abs().max()) < 1e-6
        base = net(img, ids, am)
        assert torch.equal(net(img, ids, am, report_regions=regions), base)  # zero-initialised: no change yet
        for conv in net.segmenter.named.films:
            torch.nn.init.normal_(conv.weight, std=2.0)
        all_bones = torch.ones_like(regions)
        all_bones[:, 0] = 0.0  # every bone named, background not
        moved = net(img, ids, am, report_regions=all_bones)
        unnamed = net(img, ids, am, report_regions=torch.zeros_like(regions))
        assert float((moved - unnamed).abs().max()) > 1e-2
        assert torch.equal(unnamed, net(img, ids, am))  # None = the report names no bone
        feats = net.text_encoder(ids, am)
        logits, _, _, labels = net.deployed_segmenter()(img, feats, am, all_bones)
        assert torch.allclose(logits, moved, atol=1e-5)
        assert labels.shape == (2, 2, IMAGE_HEIGHT // REGION_STRIDE, IMAGE_WIDTH // REGION_STRIDE)
