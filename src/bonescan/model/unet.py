"""U-Net building blocks (image path). Shapes in docstrings: B batch, C channels, H x W pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bonescan.contract import COUNT_EPS, COUNT_SCALE

PRIOR_LOGIT = -4.0


def normalize_counts(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] raw counts -> log1p(x / (per-view mean + eps) * scale).

    The one count normalisation: it is the first op of the segmenter graph, so training, ONNX,
    TensorRT and Triton all apply it identically (numpy twin: contract.normalize_counts_np).
    """
    mean = x.mean(dim=(2, 3), keepdim=True)
    return torch.log1p(x / (mean + COUNT_EPS) * COUNT_SCALE)


class ConvBlock(nn.Sequential):
    """(conv3x3 - BatchNorm - ReLU) x 2: [B, Cin, H, W] -> [B, Cout, H, W]."""

    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """Stem (optionally strided) + ``depth`` max-pool/ConvBlock stages.

    forward: [B, 2, H, W] normalised counts -> list of skips, finest first; the last one is the
    bottleneck [B, width * 2**depth, H / (stem * 2**depth), W / (stem * 2**depth)].
    """

    def __init__(self, in_ch: int, width: int, depth: int, stem_stride: int = 1):
        super().__init__()
        self.channels = [width * 2**i for i in range(depth + 1)]
        if stem_stride == 1:
            self.stem: nn.Module = ConvBlock(in_ch, width)
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_ch, width, 3, stride=stem_stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                ConvBlock(width, width),
            )
        self.downs = nn.ModuleList(ConvBlock(self.channels[i], self.channels[i + 1]) for i in range(depth))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = [x]
        for down in self.downs:
            x = down(F.max_pool2d(x, 2))
            skips.append(x)
        return skips


class UpBlock(nn.Module):
    """Transposed-conv x2 upsampling, concat with the skip, ConvBlock."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = ConvBlock(cout + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class Head(nn.Module):
    """Back to full resolution (when the stem was strided) and one logit per pixel.

    x: [B, width, H / s, W / s], image: [B, 2, H, W] normalised -> logits [B, 1, H, W].
    The full-resolution input is concatenated so edges stay sharp at little cost.
    """

    def __init__(self, width: int, in_ch: int, stem_stride: int):
        super().__init__()
        self.stride = stem_stride
        if stem_stride > 1:
            mid = max(width // 2, 4)
            self.up: nn.Module = nn.ConvTranspose2d(width, mid, stem_stride, stride=stem_stride)
            self.refine: nn.Module = nn.Sequential(
                nn.Conv2d(mid + in_ch, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)
            )
            self.out = nn.Conv2d(mid, 1, 1)
        else:
            self.up = nn.Identity()
            self.refine = nn.Identity()
            self.out = nn.Conv2d(width, 1, 1)
        # lesions are ~0.2 % of pixels: start at that prior (as RetinaNet does) so BCE does not
        # first push every logit down and drown the Dice gradient
        assert self.out.bias is not None
        nn.init.constant_(self.out.bias, PRIOR_LOGIT)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = self.refine(torch.cat([self.up(x), image], dim=1))
        return self.out(x)


class AnatomyNet(nn.Module):
    """The skeleton's regions from the counts alone: a small U-Net of its own on the image pooled to the
    anatomy grid (``stride`` x ``stride`` cells, contract.REGION_STRIDE), one logit per (view, region class).

    normalised counts [B, 2, H, W] -> logits [B, views, classes, H / stride, W / stride]. Which vertebra a
    cell shows is counted from landmarks far away: at a quarter of the resolution a depth-4 encoder's
    bottleneck (16 x 4 cells) sees the whole body, for a sixteenth of the full-resolution pixels.
    """

    def __init__(self, in_ch: int, n_classes: int, views: int, stride: int, width: int = 16, depth: int = 4):
        super().__init__()
        self.stride, self.views, self.n_classes = stride, views, n_classes
        self.encoder = Encoder(in_ch, width, depth)
        ch = self.encoder.channels
        self.ups = nn.ModuleList(UpBlock(ch[i + 1], ch[i], ch[i]) for i in reversed(range(depth)))
        self.out = nn.Conv2d(width, views * n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encoder(F.avg_pool2d(x, self.stride))
        y = skips[-1]
        for j, up in enumerate(self.ups, start=2):
            y = up(y, skips[-j])
        y = self.out(y)
        return y.reshape(y.shape[0], self.views, self.n_classes, y.shape[2], y.shape[3])
