"""A stand-in for a pretrained MacBERT folder: MacBERT's shape and file layout, random weights.

The paper's text encoder is ``hfl/chinese-macbert-base`` (12 layers x 768, 12 heads, vocabulary
21,128). No weights can be downloaded here, so ``bonescan text-encoder init`` writes a folder that
``--text-encoder DIR`` loads exactly as it would load a real local copy (config.json,
model.safetensors, vocab.txt, tokenizer.json): training, export, the Triton repository and the
latency benchmark then run with the real cost of MacBERT. Its vocabulary has MacBERT's size and its
special tokens at MacBERT's ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103); the
characters are this project's character vocabulary cut to fit, not MacBERT's list.
"""

from __future__ import annotations

from pathlib import Path

SHAPES = {
    "macbert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                     "vocab_size": 21128, "max_position_embeddings": 512},
    # the same layout at a test's size
    "mini": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
             "vocab_size": 21128, "max_position_embeddings": 512},
}


def macbert_vocabulary(size: int) -> list[str]:
    """``size`` tokens with MacBERT's special-token ids: [PAD], [unused1..99], [UNK], [CLS], [SEP],
    [MASK], then characters of the project's vocabulary: ASCII and the CJK Unified Ideographs block
    first, the rare Extension A characters last (those are the ones that do not fit, as in MacBERT)."""
    from bonescan.tokenize import SPECIAL_TOKENS, character_vocabulary

    chars = [t for t in character_vocabulary() if t not in SPECIAL_TOKENS]
    chars.sort(key=lambda t: len(t) == 1 and 0x3400 <= ord(t) <= 0x4DBF)  # stable: Extension A to the end
    head = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return head + chars[: size - len(head)]


def write_pretrained_like(out: str | Path, shape: str = "macbert-base", seed: int = 0) -> Path:
    """Write a randomly initialised BERT folder of ``shape`` (see SHAPES) into ``out``; returns it."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]  # a lazy alias mypy cannot see

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {sorted(SHAPES)}, got {shape!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = SHAPES[shape]
    vocab = macbert_vocabulary(s["vocab_size"])
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, tokenize_chinese_chars=True)
    tok.save_pretrained(str(out))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=s["hidden_size"], num_hidden_layers=s["num_hidden_layers"],
                     num_attention_heads=s["num_attention_heads"], intermediate_size=s["intermediate_size"],
                     max_position_embeddings=s["max_position_embeddings"], type_vocab_size=2, pad_token_id=0)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(str(out))
    (out / "README.md").write_text(f"Random weights in the shape of {shape} ({s}); written by `bonescan text-encoder init`.\n"
                                   "Not a pretrained model: for testing the --text-encoder path and measuring its cost.\n")
    return out
