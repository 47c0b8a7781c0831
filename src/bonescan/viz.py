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


#: characters that do not start a line (Chinese typesetting): they hang at the end of the line before
NO_LINE_START = "，。、；：？！）》」』】〕,.;:?!)]}%"


def wrap_to_width(text: str, width_pt: float, fontsize: float, family: str | None = None) -> list[str]:
    """Lines of ``text`` that fill ``width_pt`` points when drawn at ``fontsize`` in ``family``.

    Widths are measured glyph by glyph, so Chinese (1 em) and Latin (about half) both fill the width
    instead of a character count that leaves mixed lines short. Runs of Latin letters and digits
    (``99mTc-MDP``) are not split unless longer than a line; closing punctuation never starts a line.
    The width must leave one em for that hanging punctuation. Paragraphs (lines of ``text``) are kept.
    """
    import re

    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop, measure = FontProperties(family=family, size=fontsize), TextToPath()
    widths: dict[str, float] = {}

    def w(s: str) -> float:
        for ch in s:
            if ch not in widths:
                widths[ch] = measure.get_text_width_height_descent(ch, prop, ismath=False)[0]
        return sum(widths[ch] for ch in s)

    limit = max(width_pt - fontsize, fontsize)
    lines: list[str] = []
    for para in text.strip().splitlines():
        line, used = "", 0.0
        for tok in re.findall(r"[A-Za-z0-9.\-+/%^~:]+|\s+|.", para.strip()):
            tw = w(tok)
            if used + tw <= limit or (line and len(tok) == 1 and tok in NO_LINE_START):
                line, used = line + tok, used + tw
            elif tok.isspace():  # a break at a space: the space goes
                lines.append(line.rstrip())
                line, used = "", 0.0
            elif tw > limit:  # a run longer than a line: break it where it has to
                for ch in tok:
                    if line and used + w(ch) > limit:
                        lines.append(line.rstrip())
                        line, used = "", 0.0
                    line, used = line + ch, used + w(ch)
            else:
                if line:
                    lines.append(line.rstrip())
                line, used = tok, tw
        lines.append(line.rstrip())
    return lines


def text_lines(ax, lines: list[str], fontsize: float, family: str | None) -> None:
    """One text per line, ``len(lines)`` equal steps from the top of ``ax`` (axes off), so the text
    block is exactly as tall as the axes the caller sized for it."""
    ax.axis("off")
    n = max(len(lines), 1)
    for i, line in enumerate(lines):
        ax.text(0, 1 - i / n, line, va="top", ha="left", fontsize=fontsize, fontfamily=family,
                transform=ax.transAxes)


def body_rows(*views: np.ndarray, margin: int = 10) -> tuple[int, int]:
    """Rows that hold the patient (for cropping empty space above and below)."""
    prof = np.max([np.asarray(v, np.float32).sum(axis=1) for v in views], axis=0)
    rows = np.nonzero(prof > prof.max() * 0.02)[0]
    if len(rows) == 0:
        return 0, views[0].shape[0]
    return max(int(rows[0]) - margin, 0), min(int(rows[-1]) + margin, views[0].shape[0])


def froc_plot(curves: dict[str, dict], points: dict[str, tuple[float, float]], path, title: str = "") -> None:
    """FROC curves (sensitivity against false positives per scan, log scale, LUNA16's 1/8 ... 8 range
    marked) with each answer's own operating point, into ``path`` (PNG).

    Args:
        curves: label -> a bonescan.metrics FROC curve (``fp_per_scan``, ``sensitivity``).
        points: label -> (false positives per scan, lesion sensitivity) of that answer at its threshold;
            drawn in the colour of the curve of the same label.
    """
    use_agg()
    import matplotlib.pyplot as plt

    from bonescan.metrics import FROC_FP_RATES, sensitivity_at

    def sensitivity_at_rates(c: dict, rates: np.ndarray) -> list[float]:
        return [sensitivity_at(c, float(r)) for r in rates]

    fig, ax = plt.subplots(figsize=(7.4, 3.8))
    colors = {}
    xs = np.geomspace(FROC_FP_RATES[0] / 2, FROC_FP_RATES[-1] * 1.5, 200)
    for label, c in curves.items():
        # the curve as the CPM reads it: linear between its points, held beyond its last
        (line,) = ax.plot(xs, sensitivity_at_rates(c, xs), label=label)
        colors[label] = line.get_color()
    for label, (fp, se) in points.items():  # in its curve's colour; unlabelled (the title says what circles are)
        ax.plot([max(fp, FROC_FP_RATES[0] / 2)], [se], "o", ms=7, mfc="none", color=colors.get(label, "black"),
                label=None if label in colors else label)
    for r in FROC_FP_RATES:
        ax.axvline(r, color="0.85", lw=0.6, zorder=0)
    ax.set_xscale("log", base=2)
    ax.set_xlim(FROC_FP_RATES[0] / 2, FROC_FP_RATES[-1] * 1.5)
    ax.set_ylim(0, 1)
    ax.set_xticks(FROC_FP_RATES, ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title((title or "FROC: lesion detection") + "\n(circles: each answer's own operating point)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
