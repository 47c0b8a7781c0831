"""Checkpoints: one file with weights, configuration, tokenizer files and metadata.

Saved with ``torch.save`` as plain data (tensors, str, numbers, lists, dicts) and loaded with
``weights_only=True``: loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bonescan.errors import BonescanError
from bonescan.model.config import ModelConfig
from bonescan.model.network import BoneScanNet

FORMAT = "bonescan-checkpoint/1"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "trained_tokens.json")


def sha256_16(path: str | Path) -> str:
    """The first 16 hex digits of a file's SHA-256 (how configs and exports name a checkpoint)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read_tokenizer_files(d: str | Path) -> dict[str, str]:
    d = Path(d)
    return {name: (d / name).read_text(encoding="utf-8") for name in TOKENIZER_FILES if (d / name).exists()}


def write_tokenizer_files(files: dict[str, str], d: str | Path) -> Path:
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


def save_checkpoint(path: str | Path, net: BoneScanNet, tokenizer_files: dict[str, str], metadata: dict[str, Any]) -> Path:
    bert_cfg = net.text_encoder.bert.config.to_dict() if net.text_encoder is not None else None
    if bert_cfg is not None:
        bert_cfg = {k: v for k, v in bert_cfg.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))}
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    body = {
        "format": FORMAT,
        "config": net.cfg.to_dict(),
        "bert_config": bert_cfg,
        "state_dict": state,
        "tokenizer": tokenizer_files,
        "metadata": metadata,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(body, tmp)
    tmp.replace(path)
    return path


@dataclass
class Checkpoint:
    net: BoneScanNet
    cfg: ModelConfig
    tokenizer_files: dict[str, str]
    metadata: dict[str, Any]
    path: Path

    def tokenizer_dir(self) -> Path:
        """The tokenizer files written to a temporary folder (kept for the process lifetime)."""
        if not hasattr(self, "_tok_dir"):
            self._tok_tmp = tempfile.TemporaryDirectory(prefix="bonescan-tok-")
            self._tok_dir = write_tokenizer_files(self.tokenizer_files, self._tok_tmp.name)
        return self._tok_dir

    def report_tokenizer(self):
        from bonescan.tokenize import ReportTokenizer

        return ReportTokenizer(self.tokenizer_dir() / "tokenizer.json")


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise BonescanError(f"{path}: checkpoint file is missing")
    try:
        body = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BonescanError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise BonescanError(f"{path}: not a {FORMAT} file")
    cfg = ModelConfig.from_dict(body["config"])
    net = build_from_config(cfg, body.get("bert_config"))
    net.load_state_dict(body["state_dict"])
    net.eval()
    return Checkpoint(net, cfg, dict(body["tokenizer"]), dict(body["metadata"]), path)


def build_from_config(cfg: ModelConfig, bert_config: dict | None) -> BoneScanNet:
    return BoneScanNet(cfg, bert_config_dict=bert_config)


class Predictor:
    """In-process PyTorch inference for a checkpoint: (images, reports) -> logits (numpy)."""

    def __init__(self, ckpt: Checkpoint | str | Path, threads: int | None = None):
        self.ckpt = ckpt if isinstance(ckpt, Checkpoint) else load_checkpoint(ckpt)
        # channels-last: oneDNN's convolutions on the CPU run ~25 % faster on it (masks unchanged;
        # logits within ~1e-5). The network is the checkpoint's own; save_checkpoint stores contiguous tensors
        self.net = self.ckpt.net.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack memory_format
        self.tokenizer = self.ckpt.report_tokenizer() if self.net.text_encoder is not None else None
        if threads:
            torch.set_num_threads(threads)

    @property
    def text_guided(self) -> bool:
        return self.net.text_encoder is not None

    @torch.no_grad()
    def outputs(self, images: np.ndarray, reports: list[str] | None = None, fallback: bool = True) -> dict[str, np.ndarray]:
        """What the deployed graphs give: logits [B, 1, H, W]; for dualpath also text_map
        [B, 2, h, w], fallback_logits [B, 1, H, W] and region_labels [B, 2, H / 4, W / 4] (unless
        ``fallback`` is False: they do not depend on the report, so passes over the same images with
        other reports can skip them), text_stats [B, 3], report_regions and report_named [B, classes] (see bonescan.failsafe). The U-Net: logits
        and region_labels."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if self.tokenizer is None:
            logits, labels = self.net.deployed_segmenter()(x)
            return {"logits": logits.numpy(), "region_labels": labels.numpy()}
        texts = list(reports) if reports is not None else [""] * len(images)
        ids, mask = self.tokenizer(texts)
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        assert self.net.text_encoder is not None  # a tokenizer is made for a text encoder only
        feats = self.net.text_encoder(ids_t, mask_t)
        seg = self.net.deployed_segmenter()
        places = self.tokenizer.report_places(texts)
        out: dict[str, np.ndarray] = {"text_stats": self.tokenizer.text_stats(ids, mask, texts), **places}
        regions_t = torch.from_numpy(places["report_regions"])
        if fallback:
            logits, text_map, fb, labels = seg(x, feats, mask_t, regions_t)
            out["fallback_logits"] = fb.numpy()
            out["region_labels"] = labels.numpy()
        else:
            logits, text_map = seg.report_guided(x, feats, mask_t, regions_t)
        return {"logits": logits.numpy(), "text_map": text_map.numpy(), **out}

    @torch.no_grad()
    def logits(self, images: np.ndarray, reports: list[str] | None = None) -> np.ndarray:
        """images float32 [B, 2, H, W] (model frame, raw counts) -> logits float32 [B, 1, H, W]."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if self.tokenizer is None:
            return self.net(x).numpy()
        texts = list(reports) if reports is not None else [""] * len(images)
        ids, mask = self.tokenizer(texts)
        return self.net(x, torch.from_numpy(ids), torch.from_numpy(mask),
                        report_regions=torch.from_numpy(self.tokenizer.report_regions(texts))).numpy()
