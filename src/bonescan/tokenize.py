"""Report -> (input_ids, attention_mask), the same way in training, export, Triton and tests.

Wraps a HuggingFace ``tokenizers`` WordPiece tokenizer saved as ``tokenizer.json`` (what
``BertTokenizerFast.save_pretrained`` writes; MacBERT's own or one trained on the reports) and
applies :data:`bonescan.contract.TOKENIZER`. Needs numpy and ``tokenizers`` only, so the Triton
python backend runs this very file (``bonescan repo build`` copies it, with contract.py, into a
small ``bonescan`` package next to the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bonescan.contract import INPUT_IDS, TOKENIZER


class ReportError(ValueError):
    """A report that cannot be tokenized. The message names the problem, never the text."""


def decode_report(raw: bytes | str, field: str = "REPORT") -> str:
    """Bytes from a request -> text; refuses invalid UTF-8 and oversized reports."""
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ReportError(f"{field} is not valid UTF-8 (bad byte at offset {e.start})") from None
    if len(text) > TOKENIZER.max_report_chars:
        raise ReportError(f"{field} has {len(text)} characters; the limit is {TOKENIZER.max_report_chars}")
    return text


class ReportTokenizer:
    """Batched, fixed-length tokenization of reports (load once, call many times)."""

    def __init__(self, tokenizer_json: str | Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.max_tokens = TOKENIZER.max_tokens
        self.tok.enable_truncation(max_length=self.max_tokens)
        if TOKENIZER.pad_to_max:
            self.tok.enable_padding(length=self.max_tokens, pad_id=TOKENIZER.pad_token_id, pad_token="[PAD]")
        else:
            self.tok.enable_padding(pad_id=TOKENIZER.pad_token_id, pad_token="[PAD]")
        self.vocab_size = self.tok.get_vocab_size()
        pad = self.tok.token_to_id("[PAD]")
        if pad != TOKENIZER.pad_token_id:
            raise ValueError(f"tokenizer's [PAD] id is {pad}, the contract says {TOKENIZER.pad_token_id}")

    def __call__(self, reports: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """reports: B strings (may be empty) -> input_ids, attention_mask: int32 [B, T]."""
        enc = self.tok.encode_batch(list(reports))
        dtype = np.dtype(INPUT_IDS.dtype)
        ids = np.array([e.ids for e in enc], dtype=dtype)
        mask = np.array([e.attention_mask for e in enc], dtype=dtype)
        return ids, mask

    def n_tokens(self, report: str) -> int:
        """Tokens the report would have without truncation (for statistics)."""
        self.tok.no_truncation()
        try:
            return len(self.tok.encode(report).ids)
        finally:
            self.tok.enable_truncation(max_length=self.max_tokens)


def train_wordpiece(reports: Sequence[str], out_dir: str | Path, vocab_size: int = 1500) -> Path:
    """Train a Chinese-BERT-style WordPiece vocabulary on the training reports (no MacBERT at hand).

    CJK characters are split one by one (as in bert-base-chinese / MacBERT); digits and Latin
    letters (T7, 99mTc) become word pieces. Writes tokenizer.json, vocab.txt and the
    transformers tokenizer config into out_dir; returns out_dir.
    """
    from tokenizers import BertWordPieceTokenizer, Tokenizer
    from transformers import BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=TOKENIZER.lowercase)
    alphabet = list("0123456789abcdefghijklmnopqrstuvwxyz")
    wp.train_from_iterator(
        list(reports) + [" ".join(alphabet), " ".join(a + b for a in alphabet for b in "0123456789")],
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        limit_alphabet=5000,
        initial_alphabet=alphabet,
        wordpieces_prefix="##",
        show_progress=False,
    )
    wp.save_model(str(out))  # vocab.txt, for people and other tools
    wp.save(str(out / "tokenizer.json"))
    fast = BertTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(out / "tokenizer.json")),
        do_lower_case=TOKENIZER.lowercase,
        unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
        model_max_length=TOKENIZER.max_tokens,
    )
    fast.save_pretrained(str(out))  # tokenizer.json + tokenizer_config.json, loadable by transformers
    return out
