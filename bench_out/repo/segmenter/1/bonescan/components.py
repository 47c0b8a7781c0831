"""A mask's connected components, labelled once and reduced per component without a Python loop.

Shared by the lesion list (:mod:`bonescan.postprocess`) and the fail-safe's measurements
(:mod:`bonescan.failsafe`), which need the same components of the same mask: one
``scipy.ndimage.label`` per mask, then per-component sums, minima and maxima as ``reduceat`` over the
labelled pixels sorted by label. Needs numpy and scipy only (the Triton ``postprocess`` step runs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bonescan.contract import EIGHT, MIN_LESION_PIXELS


@dataclass(frozen=True)
class Components:
    """A mask's 8-connected components, labelled once and indexed for per-component reductions.

    The fail-safe needs the same components several times (the U-Net's cleaned mask: its hot spots, then
    possibly the lesion list of the answer); one ``scipy.ndimage.label`` and one stable sort of the
    labelled pixels serve them all, instead of a Python loop over components (most of the 23 ms per scan
    that issue 25 measured). Labels are numbered in raster order of each component's first pixel, as
    ``label`` numbers them, so lesion ids and ``added_labels`` are the same as before.
    """

    labels: np.ndarray  # [H, W] int32: component k = k (1..n), 0 = background or a dropped speck
    n: int
    order: np.ndarray  # flat indices of the labelled pixels, grouped by label, raster order within a group
    starts: np.ndarray  # [n] where each label's group begins in ``order``
    area: np.ndarray  # [n] int64 pixels

    @cached_property
    def mask(self) -> np.ndarray:
        """[H, W] bool: the labelled pixels (computed once; callers must not write to it)."""
        return self.labels > 0

    def pixels_of(self, chosen: np.ndarray) -> np.ndarray:
        """Flat indices of the pixels of the components ``chosen`` (labels 1..n), without a pass over the image."""
        chosen = np.asarray(chosen, dtype=np.intp)
        if not len(chosen):
            return self.order[:0]
        return np.concatenate([self.order[self.starts[k - 1] : self.starts[k - 1] + self.area[k - 1]] for k in chosen])

    def max_of(self, values: np.ndarray) -> np.ndarray:
        """Per component the highest of ``values`` ([H, W], any dtype) over its pixels: [n]."""
        return self.max_of_flat(np.asarray(values).ravel()[self.order])

    def gather_max(self, cells: np.ndarray) -> np.ndarray:
        """Per component the highest value of a coarse [h, w] map over its pixels (each pixel reads its
        cell, as ``failsafe.upsample`` would give, without building the full-size map)."""
        h, w = cells.shape
        ys, xs = np.divmod(self.order, self.labels.shape[1])
        return self.max_of_flat(cells[ys // (self.labels.shape[0] // h), xs // (self.labels.shape[1] // w)])

    def max_of_flat(self, flat: np.ndarray) -> np.ndarray:
        """Per component the highest of ``flat``, values of the labelled pixels in ``order``: [n]."""
        return np.maximum.reduceat(flat, self.starts) if self.n else flat[:0]


def components(mask: np.ndarray, min_pixels: int = MIN_LESION_PIXELS) -> Components:
    """mask [H, W] -> its 8-connected components of at least ``min_pixels`` pixels (smaller ones dropped,
    the rest renumbered 1..n keeping their order)."""
    mask = np.asarray(mask, dtype=bool)
    lab, n = _label_rows(mask)
    flat = np.flatnonzero(mask)  # the work below touches the labelled pixels only (and nonzero of a bool is fast)
    vals = lab.ravel()[flat]
    area = np.bincount(vals, minlength=n + 1)
    big = area >= min_pixels
    big[0] = False
    if not big[1:].all():  # drop the specks, renumber the rest in their order
        lut = (np.cumsum(big) * big).astype(lab.dtype)
        vals = lut[vals]
        lab.ravel()[flat] = vals
        flat, vals = flat[vals > 0], vals[vals > 0]
    order = flat[np.argsort(vals, kind="stable")]
    counts = area[big].astype(np.int64)
    starts = (np.cumsum(counts) - counts).astype(np.intp)
    return Components(lab.astype(np.int32, copy=False), int(len(counts)), order, starts, counts)


def _label_rows(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """``scipy.ndimage.label`` (8-connected) of a [H, W] mask, run on its rows with foreground only.

    A scan's lesions cover a few rows of its 1024; labelling those (each followed by one blank row, so rows
    apart stay apart) takes a tenth of the time of the whole image. Rows keep their order, so the labels
    and their numbering are the same as labelling the whole mask.
    """
    from scipy.ndimage import label

    rows = mask.any(axis=1)
    keep = rows.copy()
    keep[1:] |= rows[:-1]
    if keep.all():
        lab, n = label(mask, structure=EIGHT)
        return lab, int(n)
    sub, n = label(mask[keep], structure=EIGHT)
    lab = np.zeros(mask.shape, dtype=sub.dtype)
    lab[keep] = sub
    return lab, int(n)
