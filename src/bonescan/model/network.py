"""The dual-path network, split into exactly the two graphs that get deployed.

* ``TextEncoder``: (input_ids, attention_mask) -> text_features [B, T, D] (a BERT / MacBERT);
* ``Segmenter``:  (image, text_features, attention_mask, report_regions) -> logits [B, 1, H, W]
  (count normalisation, U-Net encoder, decoder with text fusion at the coarser stages and the
  report's named bones at every stage (NamedPlaces, over the bundled U-Net's anatomy output), head).

``model="unet"`` is the identical image path with no fusion (the baseline); it also carries the
anatomy output (``AnatomyNet``: a small network of its own on the counts pooled to the anatomy grid,
trained after the U-Net, so the lesion logits do not change), and the dual-path graph runs it inside
its bundled U-Net: ``region_labels`` [B, 2, H / 4, W / 4] int32.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bonescan.anatomy import N_REGION_CLASSES
from bonescan.contract import IMAGE_CHANNELS, IMAGE_HEIGHT, IMAGE_WIDTH, REGION_STRIDE
from bonescan.model.config import ModelConfig, TextConfig
from bonescan.model.fusion import FUSIONS, NamedPlaces, TextPrior, named_map
from bonescan.model.unet import AnatomyNet, Encoder, Head, UpBlock, normalize_counts


def bert_config(cfg: TextConfig, vocab_size: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=cfg.vocab_size or vocab_size,
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.intermediate,
        max_position_embeddings=max(cfg.max_positions, 8),
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        type_vocab_size=2,
        pad_token_id=0,
    )


class TextEncoder(nn.Module):
    """BERT encoder: input_ids, attention_mask int32 [B, T] -> last hidden state float32 [B, T, D].

    transformers 5 models must be called with keyword arguments; this wrapper gives the graph
    positional inputs for export.
    """

    def __init__(self, cfg: TextConfig, vocab_size: int, pretrained_dir: str | Path | None = None,
                 bert_config_dict: dict | None = None):
        super().__init__()
        from transformers import BertConfig, BertModel

        if pretrained_dir is not None:  # a local MacBERT folder (config.json + weights), offline
            self.bert = BertModel.from_pretrained(str(pretrained_dir), local_files_only=True, add_pooling_layer=False,
                                                  attn_implementation="eager")
        else:
            if bert_config_dict is not None:  # from a checkpoint
                skip = ("architectures", "transformers_version")
                bc = BertConfig(**{k: v for k, v in bert_config_dict.items() if k not in skip})
            else:
                bc = bert_config(cfg, vocab_size)
            self.bert = BertModel(bc, add_pooling_layer=False)
            self.bert.set_attn_implementation("eager")
        self.hidden = int(self.bert.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids))
        return out.last_hidden_state


class Segmenter(nn.Module):
    """image [B, 2, H, W] raw counts (+ text_features [B, T, D], attention_mask [B, T]) -> logits [B, 1, H, W]."""

    def __init__(self, cfg: ModelConfig, text_dim: int = 0):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(IMAGE_CHANNELS, cfg.width, cfg.depth, cfg.stem_stride)
        ch = self.encoder.channels
        self.ups = nn.ModuleList(UpBlock(ch[i + 1], ch[i], ch[i]) for i in reversed(range(cfg.depth)))
        self.head = Head(cfg.width, IMAGE_CHANNELS, cfg.stem_stride)
        self.fusions = nn.ModuleList()
        self.anatomy: AnatomyNet | None = None
        if cfg.model == "unet" and cfg.anatomy:
            # its own random stream: adding it leaves the lesion path's initialisation and training draws as they were
            with torch.random.fork_rng():
                self.anatomy = AnatomyNet(IMAGE_CHANNELS, N_REGION_CLASSES, IMAGE_CHANNELS, REGION_STRIDE)
        self.prior: TextPrior | None = None
        self.text_guided = cfg.model == "dualpath"
        if self.text_guided:
            if text_dim <= 0:
                raise ValueError("a dualpath segmenter needs the text encoder's hidden size")
            fusion_cls = FUSIONS[cfg.fusion]
            down = cfg.stem_stride * 2**cfg.depth
            h, w = IMAGE_HEIGHT // down, IMAGE_WIDTH // down
            # stage 0 = bottleneck, stage j = output of the j-th up block
            for j in range(min(cfg.fusion_stages, cfg.depth + 1)):
                c = ch[cfg.depth - j]
                self.fusions.append(fusion_cls(c, text_dim, cfg.fusion_heads, (h * 2**j, w * 2**j)))
            if cfg.prior:
                # the report's maps at half the coarsest stride: a cell of 16 px (demo) is about one
                # vertebra or two ribs high, fine enough to tell which bones a report mentions
                self.prior = TextPrior(text_dim, cfg.prior_channels, cfg.prior_heads, (IMAGE_HEIGHT // self.map_stride,
                                                                                   IMAGE_WIDTH // self.map_stride))
                # the report's veto enters the logits as prior_scale * log(sigmoid(prior map))
                self.prior_scale = nn.Parameter(torch.ones(1))
        self.named: NamedPlaces | None = None
        if self.text_guided and cfg.named_places:
            down = cfg.stem_stride * 2**cfg.depth
            self.named = NamedPlaces([ch[cfg.depth - j] for j in range(cfg.depth + 1)],
                                     [down // 2**j for j in range(cfg.depth + 1)], IMAGE_CHANNELS, REGION_STRIDE)

    @property
    def map_stride(self) -> int:
        """Pixels per cell of the report's maps (TextPrior): half the coarsest stage's stride."""
        return max(self.cfg.stem_stride * 2**self.cfg.depth // 2, 1)

    @property
    def row_multiple(self) -> int:
        """Training crops must start on a multiple of this many rows (the coarsest stage's stride)."""
        return self.cfg.stem_stride * 2**self.cfg.depth

    def forward(
        self,
        image: torch.Tensor,
        text_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rows: tuple[int, int] | None = None,
        return_grounding: bool = False,
        with_regions: bool = False,
        named: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]] | tuple[torch.Tensor, torch.Tensor]:
        """rows: (first, end) row crop for training; counts are normalised on the whole image first,
        and the fusion's position code is taken at the crop's rows. Inference uses the whole image.
        return_grounding: also return each fusion block's grounding logits (training loss).
        with_regions (U-Net with an anatomy network, whole images): (logits, region logits
        [B, 2, classes, H / 4, W / 4]) from the counts normalised once.
        named: the bones the report names, per view on the whole image's anatomy grid [B, 2, H / 4, W / 4]
        (fusion.named_map; the model with NamedPlaces reads it, None = the report names no bone)."""
        x0 = normalize_counts(image)
        row0 = 0
        if rows is not None:
            if rows[0] % self.row_multiple or (rows[1] - rows[0]) % self.row_multiple:
                raise ValueError(f"crop rows must be multiples of {self.row_multiple}, got {rows}")
            x0 = x0[:, :, rows[0] : rows[1]]
            row0 = rows[0]
        skips = self.encoder(x0)
        if with_regions and (self.anatomy is None or rows is not None):
            raise ValueError("with_regions needs a U-Net with an anatomy network and the whole image")
        x = skips[-1]
        fuse = self.text_guided
        if fuse and (text_features is None or attention_mask is None):
            raise ValueError("the dualpath segmenter needs text_features and attention_mask")
        down = self.row_multiple
        if self.named is not None:
            r = REGION_STRIDE
            if named is None:
                named = x0.new_zeros((x0.shape[0], IMAGE_CHANNELS, x0.shape[2] // r, x0.shape[3] // r))
            elif rows is not None:
                named = named[:, :, rows[0] // r : rows[1] // r]
        if fuse and len(self.fusions) > 0:
            x = self.fusions[0](x, text_features, attention_mask, row0 // down)
        if self.named is not None:
            assert named is not None
            x = self.named(x, named, 0)
        for j, up in enumerate(self.ups, start=1):
            x = up(x, skips[-1 - j])
            if fuse and j < len(self.fusions):
                x = self.fusions[j](x, text_features, attention_mask, row0 * 2**j // down)
            if self.named is not None:
                assert named is not None
                x = self.named(x, named, j)
        logits = self.head(x, x0)
        grounding: list[torch.Tensor] = []
        if fuse and self.prior is not None:
            assert text_features is not None and attention_mask is not None  # checked above
            ms = self.map_stride
            cells = (rows[0] // ms, rows[1] // ms) if rows is not None else None
            maps, allow = self.report_maps(text_features, attention_mask, cells)
            grounding.append(maps)
            # a constant scale factor (not a size) keeps every dim static in the exported graph
            up_g = F.interpolate(allow, scale_factor=float(2 * ms), mode="bilinear", align_corners=False)
            logits = logits + self.prior_scale * F.logsigmoid(up_g)
        if with_regions:
            assert self.anatomy is not None
            return logits, self.anatomy(x0)
        return (logits, grounding) if return_grounding else logits

    def regions(self, image: torch.Tensor) -> torch.Tensor:
        """The anatomy network's region logits [B, 2, classes, H / 4, W / 4] (no lesion path)."""
        if self.anatomy is None:
            raise ValueError("this segmenter has no anatomy network")
        return self.anatomy(normalize_counts(image))

    def report_maps(self, text_features: torch.Tensor, attention_mask: torch.Tensor,
                    cells: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The report's maps as the veto and the fail-safe read them, from the text alone:
        ``(maps [B, 2, h, w], allow [B, 1, h/2, w/2])``. The veto works at the coarsest stride
        (2 x 2 cells of ``allow`` averaged): a report names a bone, and which pixels of it hold the
        lesion varies; the mention map keeps the finer cells. ``maps`` is what the grounding loss
        and the fail-safe see: the averaged allow map at the cells' size, and the mention map."""
        assert self.prior is not None
        g = self.prior(text_features, attention_mask, cells)  # [B, 2, h, w]: allow, mention
        allow = F.avg_pool2d(g[:, :1], 2)
        return torch.cat([F.interpolate(allow, scale_factor=2.0, mode="nearest"), g[:, 1:2]], dim=1), allow

    def text_map(self, text_features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The report's coarse maps [B, 2, h, w] (allow, mention logits); without a TextPrior
        (the --no-prior ablation) a map that allows everything and explains every hot spot."""
        if self.prior is not None:
            return self.prior(text_features, attention_mask)
        ms = self.map_stride
        return text_features.new_full((text_features.shape[0], 2, IMAGE_HEIGHT // ms, IMAGE_WIDTH // ms), 20.0)


def region_labels(region_logits: torch.Tensor) -> torch.Tensor:
    """[B, 2, classes, h, w] -> the most likely class per view and cell, int32 [B, 2, h, w] (inside the graph)."""
    return torch.argmax(region_logits, dim=2).to(torch.int32)


def background_labels(image: torch.Tensor) -> torch.Tensor:
    """region_labels saying background everywhere, int32 [B, 2, H / 4, W / 4] (no anatomy output)."""
    s = REGION_STRIDE
    return torch.zeros_like(image[:, :, s // 2 :: s, s // 2 :: s], dtype=torch.int32)


class DeployedUNet(nn.Module):
    """The U-Net graph as deployed: image -> (logits, region_labels), one pass of its encoder."""

    def __init__(self, unet: Segmenter):
        super().__init__()
        self.unet = unet

    def forward(self, image: torch.Tensor):
        logits, labels, _ = self.answer(image)
        return logits, labels

    def answer(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits, region_labels, region logits or None without an anatomy network)."""
        if self.unet.anatomy is None:
            # trained on data without region maps (or before the anatomy network): background everywhere,
            # lesions are not named by bone
            return self.unet(image), background_labels(image), None
        logits, regions = self.unet(image, with_regions=True)  # type: ignore[misc]
        return logits, region_labels(regions), regions


class DeployedSegmenter(nn.Module):
    """The dual-path segmenter graph as deployed: one graph, three answers for the fail-safe and the skeleton's regions.

    (image, text_features, attention_mask, report_regions) -> (logits, text_map, fallback_logits, region_labels):
    the text-guided logits, the report's coarse maps (allow, mention; see TextPrior), the logits of
    the image-only U-Net this model was trained beside and that U-Net's anatomy output. The decoder
    reads the bones the report names (report_regions) over that anatomy output (NamedPlaces).
    ``bonescan.failsafe`` decides per scan which answer to give. One graph (not a second Triton step)
    keeps the ensemble one chain.
    """

    def __init__(self, segmenter: Segmenter, fallback: Segmenter):
        super().__init__()
        self.segmenter = segmenter
        self.fallback = DeployedUNet(fallback)
        #: False (export --no-anatomy of a model with NamedPlaces): region_labels is background everywhere,
        #: while the anatomy network still locates the named bones for the decoder
        self.region_labels_out = True

    def forward(self, image: torch.Tensor, text_features: torch.Tensor, attention_mask: torch.Tensor,
                report_regions: torch.Tensor):
        fb_logits, labels, regions = self.fallback.answer(image)
        logits, text_map = self.report_guided(image, text_features, attention_mask, report_regions, regions)
        if not self.region_labels_out:  # (the argmax is then dead code, left out of the exported graph)
            labels = background_labels(image)
        return logits, text_map, fb_logits, labels

    def report_guided(self, image: torch.Tensor, text_features: torch.Tensor, attention_mask: torch.Tensor,
                      report_regions: torch.Tensor, region_logits: torch.Tensor | None = None):
        """(logits, text_map) without the fallback's answer (which does not depend on the report);
        ``region_logits``: the fallback's anatomy output when already computed."""
        named = None
        if self.segmenter.named is not None:
            if region_logits is None:
                region_logits = self.fallback.unet.regions(image)
            named = named_map(region_logits, report_regions)
        out = self.segmenter(image, text_features, attention_mask, return_grounding=True, named=named)
        logits, grounding = out  # type: ignore[misc]
        if named is None:
            # a model from before NamedPlaces: the graph keeps the contract's input and leaves it unread
            # (torch.onnx.export would drop an input no op uses)
            logits = logits + 0.0 * report_regions.sum()
        text_map = grounding[0] if grounding else self.segmenter.text_map(text_features, attention_mask)
        return logits, text_map


class BoneScanNet(nn.Module):
    """The whole model for training: (image, input_ids, attention_mask) -> logits."""

    def __init__(self, cfg: ModelConfig, vocab_size: int = 0, pretrained_text: str | Path | None = None,
                 bert_config_dict: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.text_encoder: TextEncoder | None = None
        text_dim = 0
        if cfg.model == "dualpath":
            self.text_encoder = TextEncoder(cfg.text, vocab_size, pretrained_text, bert_config_dict)
            text_dim = self.text_encoder.hidden
        elif cfg.model != "unet":
            raise ValueError(f"model must be 'dualpath' or 'unet', got {cfg.model!r}")
        if cfg.model == "dualpath" and cfg.named_places and not cfg.fallback_config().anatomy:
            raise ValueError("named_places needs a fallback U-Net with an anatomy network (it locates the named bones)")
        self.segmenter = Segmenter(cfg, text_dim)
        self.fallback: Segmenter | None = None
        if cfg.model == "dualpath":
            # the fail-safe's image-only answer: frozen, loaded from a trained U-Net (train --fallback)
            self.fallback = Segmenter(cfg.fallback_config())
            self.fallback.requires_grad_(False)

    def deployed_segmenter(self) -> nn.Module:
        """The segmenter graph that is exported: DeployedSegmenter for dualpath, DeployedUNet otherwise."""
        if self.fallback is None:
            return DeployedUNet(self.segmenter)
        return DeployedSegmenter(self.segmenter, self.fallback)

    def train(self, mode: bool = True) -> BoneScanNet:
        super().train(mode)
        if self.fallback is not None:
            self.fallback.eval()  # frozen, BatchNorm statistics included
        return self

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                rows: tuple[int, int] | None = None, return_grounding: bool = False, report_regions: torch.Tensor | None = None):
        """report_regions [B, classes] (tokenize.ReportTokenizer.report_regions; None = no bone named)."""
        if self.text_encoder is None:
            return self.segmenter(image, rows=rows, return_grounding=return_grounding)
        assert input_ids is not None and attention_mask is not None
        feats = self.text_encoder(input_ids, attention_mask)
        named = None
        if self.segmenter.named is not None and report_regions is not None:
            assert self.fallback is not None  # a dual-path model always carries one
            with torch.no_grad():  # the fallback is frozen; its anatomy output locates the named bones
                named = named_map(self.fallback.regions(image), report_regions)
        return self.segmenter(image, feats, attention_mask, rows=rows, return_grounding=return_grounding, named=named)
