"""Pictures a person reads: scans in the display readers expect, masks, reports.

Nuclear-medicine readers look at bone scans in inverted grey (hot = dark) with the window set on
bone, letting the bladder saturate. Chinese report text needs a CJK font
(``apt install fonts-wqy-microhei``); without one the text panel says so instead.
"""

from __future__ import annotations

import logging
import textwrap
from functools import lru_cache

import numpy as np

log = logging.getLogger("bonescan.viz")

CJK_FONTS = ("WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "SimHei", "Microsoft YaHei")


def use_agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """Name of an installed font that renders Chinese, or None."""
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    for n in CJK_FONTS:
        if n in names:
            return n
    return None


def window(view: np.ndarray) -> tuple[float, float]:
    """Display range for one view: 0 .. 1.4 x the 95th percentile of body pixels (bone window)."""
    v = np.asarray(view, dtype=np.float32)
    body = v[v > max(2.0, float(v.mean()) * 0.2)]
    if body.size == 0:
        return 0.0, float(v.max() or 1.0)
    return 0.0, float(np.percentile(body, 95)) * 1.4 + 1.0


def show_view(ax, view: np.ndarray, title: str = "") -> None:
    lo, hi = window(view)
    ax.imshow(view, cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def overlay_mask(ax, mask: np.ndarray | None, color: str = "red", label: str | None = None) -> None:
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=color, linewidths=0.8)
    if label:
        ax.plot([], [], color=color, label=label)


def text_panel(ax, text: str, width: int = 22, fontsize: float = 7.0) -> None:
    """Wrapped report text (Chinese wraps per character)."""
    ax.axis("off")
    font = cjk_font()
    if font is None:
        ax.text(0, 1, "(report not drawn: no CJK font;\n apt install fonts-wqy-microhei)", va="top", fontsize=fontsize)
        return
    lines = []
    for para in text.strip().splitlines():
        lines.extend(textwrap.wrap(para, width=width) or [""])
    ax.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=fontsize, fontfamily=font, wrap=False)


def body_rows(*views: np.ndarray, margin: int = 10) -> tuple[int, int]:
    """Rows that hold the patient (for cropping empty space above and below)."""
    prof = np.max([np.asarray(v, np.float32).sum(axis=1) for v in views], axis=0)
    rows = np.nonzero(prof > prof.max() * 0.02)[0]
    if len(rows) == 0:
        return 0, views[0].shape[0]
    return max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin, views[0].shape[0])
