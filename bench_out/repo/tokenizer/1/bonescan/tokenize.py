"""Report -> (input_ids, attention_mask), the same way in training, export, Triton and tests.

Wraps a HuggingFace ``tokenizers`` WordPiece tokenizer saved as ``tokenizer.json`` (what
``BertTokenizerFast.save_pretrained`` writes; MacBERT's own or one trained on the reports) and
applies :data:`bonescan.contract.TOKENIZER`. Every report is normalised first
(:func:`bonescan.report_text.normalize_report`: traditional characters, full-width forms and English
shorthand become the words of the training reports), so unknown characters are counted on what the
model reads. Needs numpy, ``tokenizers`` and OpenCC only, so the Triton python backend runs this
very file (``bonescan repo build`` copies it, with contract.py, into a small ``bonescan`` package
next to the model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bonescan.contract import INPUT_IDS, REPORT_PLACES, REPORT_REGIONS, TOKENIZER
from bonescan.report_text import finding_terms, normalize_report


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


#: The ids of the tokens the text encoder was trained on (written next to tokenizer.json by
#: training). Every other id reads as [UNK] to the model, and its share in a report is one of the
#: fail-safe's signals (bonescan.failsafe): a report in words the model never saw is not trusted.
TRAINED_TOKENS_FILE = "trained_tokens.json"


class ReportTokenizer:
    """Batched, fixed-length tokenization of reports (load once, call many times)."""

    def __init__(self, tokenizer_json: str | Path):
        import json

        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        #: normalise reports before tokenizing (contract.TOKENIZER.normalize; benchmarks turn it off to
        #: measure what it buys)
        self.normalizing = TOKENIZER.normalize
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
        self.unk_id = self.tok.token_to_id("[UNK]")
        self.special_ids = np.array(sorted(i for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
                                           if (i := self.tok.token_to_id(t)) is not None), dtype=np.int64)
        trained = Path(tokenizer_json).with_name(TRAINED_TOKENS_FILE)
        self.known = np.ones(self.vocab_size, dtype=bool)  # without the file (e.g. a pretrained MacBERT): all
        if trained.is_file():
            self.known[:] = False
            self.known[np.asarray(json.loads(trained.read_text(encoding="utf-8"))["ids"], dtype=np.int64)] = True
        self.known[self.special_ids] = True
        if self.unk_id is not None:
            self.known[self.unk_id] = False

    def normalize(self, reports: Sequence[str]) -> list[str]:
        """The reports as the model reads them (unchanged when ``normalizing`` is off)."""
        return [normalize_report(r) for r in reports] if self.normalizing else list(reports)

    def __call__(self, reports: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """reports: B strings (may be empty) -> input_ids, attention_mask: int32 [B, T] of the normalised reports."""
        enc = self.tok.encode_batch(self.normalize(reports))
        dtype = np.dtype(INPUT_IDS.dtype)
        ids = np.array([e.ids for e in enc], dtype=dtype)
        mask = np.array([e.attention_mask for e in enc], dtype=dtype)
        #: per report of this call: longer than max_tokens, so the model reads only its start
        self.last_truncated = [bool(e.overflowing) for e in enc]
        return ids, mask

    def text_stats(self, ids: np.ndarray, mask: np.ndarray, reports: Sequence[str] | None = None) -> np.ndarray:
        """int32 [B, 3]: (tokens of the report, of them unknown to the model: [UNK] or never trained
        on, words stating a skeletal finding in the normalised report: report_text.finding_terms).

        Special tokens ([CLS], [SEP], padding) are not counted; an empty report has 0 tokens.
        Without ``reports`` (the texts ``ids`` were made from) the finding terms are -1 (unknown)."""
        ids = np.asarray(ids)
        content = (np.asarray(mask) > 0) & ~np.isin(ids, self.special_ids[self.special_ids != self.unk_id])
        unknown = content & ~self.known[np.clip(ids, 0, self.vocab_size - 1)]
        terms = (np.array([finding_terms(t) for t in self.normalize(reports)]) if reports is not None
                 else np.full(len(ids), -1))
        return np.stack([content.sum(1), unknown.sum(1), terms], axis=1).astype(np.int32)

    def report_places(self, reports: Sequence[str]) -> dict[str, np.ndarray]:
        """The tokenizer's place tensors (contract.REPORT_PLACES: report_regions, report_named, report_benign),
        float32 [B, N_REGION_CLASSES] each by tensor name, from one reading of each report
        (report_sites.place_classes): what the tokenizer step sends."""
        from bonescan.report_sites import place_classes

        out = {t.name: np.zeros((len(reports), t.dims[0]), np.dtype(t.dtype)) for t in REPORT_PLACES}
        for k, text in enumerate(reports):
            for t, flags in zip(REPORT_PLACES, place_classes(text), strict=True):
                out[t.name][k] = flags
        return out

    def report_regions(self, reports: Sequence[str]) -> np.ndarray:
        """float32 [B, N_REGION_CLASSES]: per report the region classes it names as metastatic (1), neighbours
        within one included: the named-place prior the segmenter's decoder and postprocess apply with the
        anatomy output (report_sites.named_classes)."""
        return self.report_places(reports)[REPORT_REGIONS.name]

    def n_tokens(self, report: str) -> int:
        """Tokens the report would have without truncation (for statistics)."""
        self.tok.no_truncation()
        try:
            return len(self.tok.encode(self.normalize([report])[0]).ids)
        finally:
            self.tok.enable_truncation(max_length=self.max_tokens)


#: Unicode blocks whose characters get one token each (after NFKC + lowercase), i.e. what a
#: Chinese clinical report can hold: ASCII, Latin-1 symbols (° ± ×), Greek, general punctuation,
#: letter-like symbols and arrows, mathematical operators (≥ ≤), enclosed numbers (NFKC folds
#: ① to 1), box drawing, CJK symbols and punctuation (、。【】), CJK Extension A and the CJK
#: Unified Ideographs block. MacBERT's vocabulary holds about 21,000 entries, most of them single
#: characters of the last block; this one holds every character of it, so no Chinese character
#: of a report becomes [UNK] (only characters outside these blocks, e.g. emoji or the rare
#: supplementary-plane ideographs of CJK Extension B+).
VOCAB_BLOCKS = (
    (0x21, 0x7E), (0xA1, 0xFF), (0x370, 0x3FF), (0x2010, 0x205E), (0x2100, 0x214F), (0x2190, 0x21FF),
    (0x2200, 0x22FF), (0x2460, 0x24FF), (0x2500, 0x257F), (0x25A0, 0x25FF), (0x3000, 0x303F),
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _normalizer():
    from tokenizers import normalizers

    # NFKC folds full-width letters, digits and punctuation (Ｔ７，) and circled numbers (①) into
    # their plain forms, so the same report typed on another keyboard gives the same tokens
    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False,
                                   lowercase=TOKENIZER.lowercase),
    ])


def character_vocabulary() -> dict[str, int]:
    """Token -> id: the special tokens ([PAD] = 0 as the contract says), then every character of
    :data:`VOCAB_BLOCKS` after normalisation, in code-point order. Deterministic: the same ids on
    every machine, so a checkpoint's embedding rows always mean the same characters."""
    import unicodedata

    norm = _normalizer()
    vocab: dict[str, None] = dict.fromkeys(SPECIAL_TOKENS)
    for a, b in VOCAB_BLOCKS:
        for cp in range(a, b + 1):
            ch = chr(cp)
            if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"):
                continue
            for c in norm.normalize_str(ch):
                if not c.isspace():
                    vocab.setdefault(c)
    return {t: i for i, t in enumerate(vocab)}


def build_tokenizer(out_dir: str | Path) -> Path:
    """Write the character-level report tokenizer (no MacBERT at hand) into out_dir.

    Every character is one token, as Chinese characters are in MacBERT; Latin letters and digits
    are single characters too (``T7`` -> ``t`` ``7``), which keeps any spelling of a vertebra or a
    rib readable without a vocabulary learned from the training reports. Writes tokenizer.json
    (what the Triton tokenizer step loads), vocab.txt and the transformers tokenizer config;
    returns out_dir.
    """
    from tokenizers import Regex, Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import BertTokenizerFast  # type: ignore[attr-defined]  # a lazy alias mypy cannot see

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = character_vocabulary()
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = _normalizer()
    # whitespace separates nothing in Chinese text: drop it, then one token per character
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex("."), behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.save(str(out / "tokenizer.json"))
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    fast = BertTokenizerFast(
        tokenizer_object=Tokenizer.from_file(str(out / "tokenizer.json")),
        do_lower_case=TOKENIZER.lowercase,
        unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
        model_max_length=TOKENIZER.max_tokens,
    )
    fast.save_pretrained(str(out))  # tokenizer_config.json etc., loadable by transformers
    return out
