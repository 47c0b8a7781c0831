"""Issue 22, items 12-15: a training run checks everything it needs before its first step;
`data manifest` leaves unreadable cases out and says when a split is empty; `eval` exits non-zero
when it skipped cases; the text pretraining's log line says what happened."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def six(tmp_path_factory) -> Path:
    """Six synthetic cases (about a second to write)."""
    from bonescan.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("six")
    generate_dataset(root, 6, seed=3, workers=1, progress=False)
    return root


def make_data(root: Path, six: Path, splits: dict[int, str] | None, broken: tuple[int, ...] = ()) -> Path:
    """A data folder with copies of cases of ``six`` (index -> split; None: every case, no manifest),
    the cases in ``broken`` without their mask (unreadable for training and evaluation)."""
    picked = splits if splits is not None else {i: "" for i in range(6)}
    for i in picked:
        shutil.copytree(six / "cases" / f"case_{i:05d}", root / "cases" / f"case_{i:05d}")
    for i in broken:
        (root / "cases" / f"case_{i:05d}" / "mask.png").unlink()
    if splits is not None:
        cases = [{"id": f"case_{i:05d}", "split": s} for i, s in splits.items()]
        (root / "manifest.json").write_text(json.dumps({"cases": cases}), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def unet(six: Path, tmp_path_factory) -> tuple[Path, str]:
    """A tiny U-Net trained for one step (its log line), on four training and two validation cases."""
    from bonescan.model.config import preset
    from bonescan.train import train

    root = make_data(tmp_path_factory.mktemp("unet_data"), six, {0: "train", 1: "train", 2: "train", 3: "train", 4: "val", 5: "val"})
    mcfg, tcfg = preset("tiny", "unet")
    tcfg.steps = 1
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        path = train(root, root / "unet.pt", mcfg, tcfg, seed=0, progress=False, command="tests", config_name="tiny")
    return path, out.getvalue()


# ----------------------------------------------------------------------------- item 12


def test_training_lists_every_problem_before_the_first_step(six, unet, tmp_path, monkeypatch, capsys):
    """The researcher's run: dual-path training with one validation case trained for 78 s and then
    failed in the fail-safe's calibration, saving nothing. Now the run stops before any step (text
    pretraining included), within seconds, naming every problem at once."""
    import bonescan.train as T
    from bonescan.cli import main
    from bonescan.errors import BonescanError
    from bonescan.model.config import preset

    def no_step(*args, **kwargs):
        raise AssertionError("a training step ran")

    for job in ("train_step", "pretrain_text_encoder", "pretrain_report_maps"):
        monkeypatch.setattr(T, job, no_step)
    data = make_data(tmp_path / "d", six, {0: "train", 1: "train", 2: "train", 3: "train", 4: "val", 5: "test"})
    out = tmp_path / "dual.pt"
    mcfg, tcfg = preset("tiny", "dualpath")
    # the researcher's command: one problem, no step, exit 2
    t0 = time.perf_counter()
    rc = main(["train", "--data", str(data), "--out", str(out), "--config", "tiny", "--fallback", str(unet[0]), "--quiet"])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2 and "1 problem found before the first step" in err and "needs 2 or more" in err and not out.exists()
    assert "split 'val' (readable cases: 1) cannot calibrate the dual-path model's fail-safe (--fallback)" in err
    assert took < 5, took

    # every problem at once
    t0 = time.perf_counter()
    with pytest.raises(BonescanError) as e:
        T.train(data, out, mcfg, tcfg, progress=False, fallback=unet[0], init_from=tmp_path / "missing.pt",
                styles=["classic", "nope"])
    took = time.perf_counter() - t0
    msg = str(e.value)
    assert "3 problems found before the first step" in msg, msg
    assert "split 'val' (readable cases: 1) cannot calibrate" in msg and "1 scan; calibrating the fail-safe needs 2" in msg
    assert "--init-from" in msg and "missing.pt: checkpoint file is missing" in msg
    assert "--styles: unknown house style nope" in msg
    assert not out.exists() and took < 5, took

    # the researcher's data: the only validation case is unreadable
    broken = make_data(tmp_path / "b", six, {0: "train", 1: "train", 2: "val"}, broken=(2,))
    with pytest.raises(BonescanError) as e:
        T.train(broken, out, mcfg, tcfg, progress=False, fallback=unet[0])
    assert "no readable case in split 'val': all 1 unreadable" in str(e.value)

    # two validation cases are enough: preflight passes and hands over the loaded splits
    ok = make_data(tmp_path / "ok", six, {0: "train", 1: "train", 2: "val", 3: "val"})
    loaded = T.preflight(ok, out, mcfg, tcfg, fallback=unet[0], init_from=unet[0], progress=False)
    assert (len(loaded.train_set), len(loaded.val_set)) == (2, 2)


def test_dual_path_training_needs_reports_lesions_and_a_u_net_fallback(six, unet, tmp_path):
    """What else failed late: calibration against the U-Net's FROC curve needs validation scans with
    metastases (in two cross-validation folds at least), and the model needs reports to read."""
    import numpy as np

    from bonescan.data.io import write_mask
    from bonescan.errors import BonescanError
    from bonescan.model.config import preset
    from bonescan.train import preflight

    data = make_data(tmp_path / "d", six, {0: "train", 1: "train", 2: "val", 3: "val"})
    for i in range(4):
        (data / "cases" / f"case_{i:05d}" / "report.txt").unlink()
    write_mask(data / "cases" / "case_00003" / "mask.png", np.zeros((1024, 256), np.uint8))  # a scan without metastases
    mcfg, tcfg = preset("tiny", "dualpath")
    dual = tmp_path / "dual.pt"
    dual.write_bytes(b"not a checkpoint")
    with pytest.raises(BonescanError) as e:
        preflight(data, tmp_path, mcfg, tcfg, fallback=dual, progress=False)
    msg = str(e.value)
    assert "no case of split 'train' has a report" in msg and "no case of split 'val' has a report" in msg
    assert "its 1 scan with metastases falls in one of the 2 cross-validation folds" in msg
    assert f"--fallback {dual}: not a readable checkpoint" in msg
    assert f"--out {tmp_path}: is a folder" in msg


def test_preflight_leaves_the_training_random_stream_alone(six, unet, tmp_path):
    """Checking --init-from / --fallback loads them, which builds a network (a random init): the run's
    random stream (the text encoder's initial weights come from it) must be the one it had without
    the check, or a run is not reproduced by the same seed."""
    import torch

    from bonescan.model.config import preset
    from bonescan.train import preflight

    data = make_data(tmp_path / "d", six, {0: "train", 1: "train", 2: "val", 4: "val", 5: "val"})
    mcfg, tcfg = preset("tiny", "dualpath")
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    preflight(data, tmp_path / "dual.pt", mcfg, tcfg, init_from=unet[0], progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)


# ----------------------------------------------------------------------------- item 13


def test_manifest_leaves_unreadable_cases_out_and_says_when_a_split_is_empty(six, tmp_path, capsys):
    import numpy as np

    from bonescan.cli import main
    from bonescan.data.io import write_mask

    root = make_data(tmp_path / "d", six, None, broken=(1, 4, 5))  # 3 readable cases of 6
    assert main(["data", "manifest", "--data", str(root)]) == 0
    out, err = capsys.readouterr()
    m = json.loads((root / "manifest.json").read_text())
    assert sorted(c["id"] for c in m["cases"]) == ["case_00000", "case_00002", "case_00003"]
    assert [(c["id"], c["problem"]) for c in m["left_out"]] == [
        (f"case_{i:05d}", f"case_{i:05d}/mask.png: mask file is missing") for i in (1, 4, 5)]
    for i in (1, 4, 5):
        assert f"WARNING case_{i:05d}: left out: " in err
    assert "{'train': 2, 'val': 0, 'test': 1} of 3 readable cases; 3 unreadable cases left out" in out
    assert "split 'val' is empty (3 readable cases at --val 0.1 --test 0.2)" in err
    assert "needs 2 cases or more; --val 0.17 gives 1" in err  # 2 would leave no training case
    assert "'train' is empty" not in err and "'test' is empty" not in err

    assert main(["data", "manifest", "--data", str(root), "--force", "--val", "0.4", "--test", "0", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "{'train': 2, 'val': 1, 'test': 0}" in out
    assert "split 'val' has 1 case" in err and "split 'test' is empty" in err and "--test 0.17 gives 1" in err

    # enough validation cases, too few of them with metastases to calibrate the fail-safe on
    for i in (0, 2, 3):
        write_mask(root / "cases" / f"case_{i:05d}" / "mask.png", np.zeros((1024, 256), np.uint8))
    assert main(["data", "manifest", "--data", str(root), "--force", "--val", "0.67", "--test", "0", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "{'train': 1, 'val': 2, 'test': 0}" in out and "split 'val' has 0 cases with metastases" in err


# ----------------------------------------------------------------------------- item 14


def test_eval_exits_non_zero_when_cases_were_skipped(six, unet, tmp_path, capsys):
    from bonescan.cli import main

    data = make_data(tmp_path / "d", six, {0: "test", 1: "test", 2: "test", 3: "train"}, broken=(1, 2))
    args = ["eval", "--checkpoint", str(unet[0]), "--data", str(data), "--quiet", "--json", str(tmp_path / "e.json")]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "(1 scans, 2 skipped as unreadable)" in out
    assert "2 of 3 cases were skipped as unreadable; the metrics cover the other 1" in err
    assert "case_00001/mask.png: mask file is missing" in err and "--allow-skipped" in err
    assert len(json.loads((tmp_path / "e.json").read_text())["skipped_cases"]) == 2
    assert main([*args, "--allow-skipped"]) == 0
    assert "(1 scans, 2 skipped as unreadable)" in capsys.readouterr().out
    clean = make_data(tmp_path / "c", six, {0: "test", 3: "train"})
    assert main(["eval", "--checkpoint", str(unet[0]), "--data", str(clean), "--quiet"]) == 0
    assert "(1 scans, 0 skipped as unreadable)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- item 15


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from bonescan.tokenize import ReportTokenizer, build_tokenizer

    return ReportTokenizer(build_tokenizer(tmp_path_factory.mktemp("tok")) / "tokenizer.json")


def _pretrain(tokenizer, lr: float):
    import torch

    from bonescan.data.corpus import report_corpus
    from bonescan.model.config import preset
    from bonescan.model.network import TextEncoder
    from bonescan.model.text_pretrain import pretrain_text

    torch.manual_seed(0)
    enc = TextEncoder(preset("tiny")[0].text, tokenizer.vocab_size)
    return pretrain_text(enc, tokenizer, lambda n, rng: report_corpus(n, int(rng.integers(2**31)), None), steps=4,
                         batch_size=4, lr=lr, progress=False)


def test_a_four_step_text_pretraining_logs_what_happened(tokenizer):
    """The tiny preset's 4 MLM steps printed `loss 5.2823 -> 5.2823`: the mean of one 50-step bucket,
    twice. The weights did move; the line now compares two stretches of steps, a held-out batch
    before and after, and says how far the weights moved and where the learning rate stood."""
    info = _pretrain(tokenizer, 1e-3)
    assert info["loss_first"] != info["loss_last"] and info["loss_window"] == 2

    from bonescan.model.text_pretrain import describe_stage

    line = describe_stage(info)
    assert info["weights_moved"] > 0 and info["probe_loss"]["before"] != info["probe_loss"]["after"]
    assert f"loss {info['loss_first']:.4f} (mean of steps 1-2) -> {info['loss_last']:.4f} (steps 3-4)" in line
    assert f"{info['probe_loss']['before']:.4f} before -> {info['probe_loss']['after']:.4f} after" in line
    assert "weights moved" in line and "learning rate 0.001 at its peak after 1 warm-up step, 0.00033 at the last step" in line

    frozen = describe_stage(_pretrain(tokenizer, 0.0))  # nothing can change: the line says so
    assert "the weights did not change (learning rate 0)" in frozen and "(unchanged)" in frozen


def test_logs_say_when_the_learning_rate_is_still_in_warm_up(unet):
    from bonescan.model.text_pretrain import describe_stage, stage_record

    line = describe_stage(stage_record([5.0, 4.5, 4.0], [1e-4, 2e-4, 3e-4], 1e-3, warmup=10, moved=0.01, seconds=0.5))
    assert "loss 5.0000 (step 1) -> 4.0000 (step 3)" in line
    assert "learning rate still in warm-up: 3 of 10 warm-up steps done" in line
    # the segmentation training's last line too (the tiny preset warms up over 2 steps; the U-Net ran 1)
    assert "1 steps in" in unet[1] and "learning rate still in warm-up: 1 of 2 warm-up steps done" in unet[1]
