"""Model and training configurations: ``demo`` (a 2-core CPU, minutes) and ``paper`` (realistic cost)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from bonescan.contract import TOKENIZER


@dataclass
class TextConfig:
    """A BERT encoder; ``paper`` is hfl/chinese-macbert-base's shape (12 x 768, vocab 21128)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 2
    intermediate: int = 256
    vocab_size: int = 0  # 0 = the tokenizer's vocabulary size
    max_positions: int = TOKENIZER.max_tokens
    dropout: float = 0.1
    #: dropout on the attention probabilities (BERT's 0.1): off by default, it is most of a small
    #: encoder's training time on a CPU and short trainings gain nothing from it
    attention_dropout: float = 0.0


@dataclass
class ModelConfig:
    model: str = "dualpath"  # dualpath | unet
    width: int = 16  # channels of the first U-Net stage; doubles per stage
    depth: int = 4  # number of downsamplings
    stem_stride: int = 2  # 2 = the encoder starts at half resolution (demo: 4x cheaper)
    fusion: str = "xattn"  # xattn (GuideDecoder-style cross-attention) | gate (pooled-text channel gate)
    fusion_stages: int = 2  # fuse at the bottleneck and the next (n - 1) decoder stages
    fusion_heads: int = 4
    prior: bool = True  # the report's maps (TextPrior): the veto on the logits, the mentions for the fail-safe
    #: channels of the report's maps' attention (TextPrior): where a report points needs far fewer than
    #: the image's bottleneck, and its 1,024 position queries per report are most of a text-only step
    prior_channels: int = 64
    prior_heads: int = 1  # the softmax over [reports, heads, 1,024 cells, tokens] is the rest of that cost
    #: unet: the anatomy network (the skeleton's regions, issue 26); a dual-path model's bundled U-Net carries
    #: it (checkpoints from before it load with False: their graphs answer background everywhere)
    anatomy: bool = True
    #: dualpath: the decoder reads the bones the report names (report_regions) over the bundled U-Net's anatomy
    #: output, a map per view that modulates each decoder stage (NamedPlaces; checkpoints from before it load
    #: with False: their graphs take report_regions and leave it unread)
    named_places: bool = True
    text: TextConfig = field(default_factory=TextConfig)
    #: dualpath: the image-only U-Net deployed inside the segmenter graph as the fail-safe's answer
    #: (None: a U-Net of this model's image configuration)
    fallback: ModelConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        text = TextConfig(**d.pop("text", {}))
        fb = d.pop("fallback", None)
        d.setdefault("anatomy", False)  # a checkpoint from before the anatomy network
        d.setdefault("named_places", False)  # a checkpoint from before the decoder's named-place prior
        known = {f.name for f in fields(ModelConfig)}
        return ModelConfig(text=text, fallback=ModelConfig.from_dict(fb) if fb else None,
                           **{k: v for k, v in d.items() if k in known})

    def fallback_config(self) -> ModelConfig:
        """The fallback U-Net's configuration (this model's image path when none was given)."""
        if self.fallback is not None:
            return self.fallback
        return ModelConfig(model="unet", width=self.width, depth=self.depth, stem_stride=self.stem_stride, anatomy=self.anatomy)


@dataclass
class TrainConfig:
    steps: int = 400
    batch_size: int = 8
    lr: float = 2e-3
    text_lr: float = 2e-3
    weight_decay: float = 1e-4
    report_dropout: float = 0.2  # share of training samples that get no report
    #: share of those that get a text which is no report (data.nonreport: "见附件", a file path, an empty
    #: template) instead of an empty one: the model learns that such a text rules nothing out
    nonreport_share: float = 0.5
    #: share of training reports written as their impression alone, or their findings alone (a terse
    #: report: "未见明显骨转移征象。" is a negative study without its findings' overview)
    report_part_share: float = 0.2
    grounding_weight: float = 1.0  # weight of the loss of the report's veto map (dualpath)
    warmup_steps: int = 30
    crop_rows: int = 512  # train on random row crops this tall (0 = whole images); inference is whole-image
    eval_every: int = 0  # also evaluate on (up to 50) validation cases every n steps; 0 = only at the end
    max_minutes: float = 0.0  # 0 = no time limit; otherwise stop early (the schedule is compressed)
    threads: int = 2
    mention_weight: float = 1.0  # weight of the loss of the report's mention map (dualpath)
    #: reports re-written from the case's ground truth in a random house style each time a synthetic
    #: case is drawn (a hospital's cases keep their own report), then augmented (text_augment)
    rerender_reports: bool = True
    text_augment: float = 1.0  # strength of the text augmentation (0 = off)
    unk_noise: float = 0.03  # share of report tokens replaced by [UNK] (teaches the model to read past them)
    #: dualpath with NamedPlaces: share of training reports whose named bones (report_regions) are another
    #: case's while the text stays the case's own: the decoder learns that a named bone without image
    #: evidence is no lesion (another scan's report must not paint lesions into the bones it names)
    named_mismatch: float = 0.0
    #: share of training reports re-written leaving metastases out (each with probability 0.5, one always
    #: named; data.rewrite.leave_lesions_out) while the mask keeps them: the model learns that a report's
    #: silence about a hot spot is no veto, so the second reader can flag what a report missed (issue 26).
    #: Measured at 0.3 on one seed (README "The second reader on the model's answers"): not_in_report recall
    #: +0.02, the served answer's grounding gain halved; 0 everywhere
    omit_lesion_share: float = 0.0
    #: learning rate of NamedPlaces (zero-initialised FiLM convolutions) as a multiple of ``lr``: Adam moves a
    #: weight by about lr per step, and the modulation must travel from 0 to O(1) within a short training
    named_lr_scale: float = 1.0
    pretrain_text_steps: int = 0  # masked-language-model steps of the text encoder before segmentation training
    pretrain_text_batch: int = 32
    pretrain_text_lr: float = 1e-3
    #: steps that train the text encoder and the report's maps (TextPrior) from the reports alone,
    #: against the lesion and findings masks pooled to the maps' cells, after the MLM pretraining and
    #: before segmentation training: no image forward, so the report path learns where the reports
    #: point in a fraction of a segmentation step's time (dualpath with prior only)
    pretrain_maps_steps: int = 0
    pretrain_maps_batch: int = 16
    pretrain_maps_lr: float = 1e-3
    #: U-Net with an anatomy network: steps that train it on the skeleton's region label maps after the
    #: segmentation training (the lesion logits do not change); 0 = none
    anatomy_steps: int = 0
    anatomy_batch: int = 4
    anatomy_lr: float = 1e-2
    anatomy_background_weight: float = 0.2


PRESETS: dict[str, tuple[ModelConfig, TrainConfig]] = {
    # make demo's budget on 2 cores (<= 20 minutes in all): U-Net 250 steps, then on for the dual-path
    # model's 200 (the same-budget U-Net, 450 steps), report encoder 200 MLM steps and 300 steps of
    # the report's maps from the reports alone, dual-path 200 steps from the 250-step U-Net's weights
    # (MODEL_STEPS). Half the text steps (100 MLM + 200 maps) read reports less on the one seed
    # measured (in-style minus no report +0.020 against +0.067); the maps' loss is flat after ~200
    # The U-Net's anatomy network: 600 steps of 4 scans, ~2.2 min (region accuracy 0.91 on 40 held-out
    # scans against 0.80 after 300 steps of 8; `bonescan bench anatomy`)
    "demo": (ModelConfig(), TrainConfig(steps=250, pretrain_text_steps=200, pretrain_maps_steps=300, anatomy_steps=600)),
    "paper": (
        ModelConfig(
            width=64,
            depth=4,
            stem_stride=1,
            fusion_stages=3,
            fusion_heads=8,
            # the vocabulary is the tokenizer's: MacBERT's 21128 with --text-encoder (read from its folder), this
            # project's one-token-per-CJK-character one without (a fixed 21128 here broke training from scratch)
            text=TextConfig(hidden=768, layers=12, heads=12, intermediate=3072, max_positions=512),
        ),
        TrainConfig(steps=20000, batch_size=8, lr=3e-4, text_lr=3e-5, anatomy_steps=2000),
    ),
    # for tests: seconds, not minutes
    "tiny": (
        ModelConfig(width=4, depth=3, stem_stride=2, fusion_stages=2, fusion_heads=2,
                    text=TextConfig(hidden=32, layers=1, heads=2, intermediate=64)),
        TrainConfig(steps=20, batch_size=2, lr=3e-3, warmup_steps=2, crop_rows=256, pretrain_text_steps=4, pretrain_text_batch=4,
                    pretrain_maps_steps=4, pretrain_maps_batch=4, anatomy_steps=30, anatomy_batch=2),
    ),
}


#: (preset, model) -> training steps where they differ from the preset's: the dual-path model starts
#: from the trained U-Net's weights, so it needs fewer
MODEL_STEPS: dict[tuple[str, str], int] = {("demo", "dualpath"): 200}


def preset(name: str, model: str = "dualpath", fusion: str | None = None) -> tuple[ModelConfig, TrainConfig]:
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(PRESETS)}")
    m, t = PRESETS[name]
    m = ModelConfig.from_dict(m.to_dict())
    m.model = model
    if fusion:
        m.fusion = fusion
    return m, replace(TrainConfig(**asdict(t)), steps=MODEL_STEPS.get((name, model), t.steps))
