"""``bonescan data preview``: a grid of cases a person can look at."""

from __future__ import annotations

from pathlib import Path

from bonescan.contract import from_model_frame
from bonescan.data.dataset import BoneScanDataset
from bonescan.errors import BonescanError


def preview(data: str | Path, out: str | Path, n: int = 6, ids: list[str] | None = None, split: str | None = None,
            show_report: bool = True) -> Path:
    """Per case: anterior, posterior (as acquired), anterior + mask (red) + benign mimics (blue), report."""
    from bonescan import viz

    viz.use_agg()
    import matplotlib.pyplot as plt

    ds = BoneScanDataset(data, split=split, require_mask=False)
    idx = [ds.ids.index(i) for i in ids] if ids else list(range(min(n, len(ds))))
    samples = []
    for i in idx:
        try:
            samples.append(ds.load(i))
        except Exception as e:  # show what can be shown; name what could not
            print(f"preview: skipping {ds.ids[i]}: {e}")
    if not samples:
        raise BonescanError(f"{data}: no readable case to preview")
    fig = _draw(samples, show_report, viz, plt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


#: inches per image pixel: a 256-pixel-wide view is 1.3 inches wide, every row at the same scale
SCALE_IN = 1.3 / 256
REPORT_IN = 2.7  # width of the report column
REPORT_PT = 7.5  # its font size; Chinese characters are about 1 em wide
GAP_IN, LEGEND_IN, TITLE_IN, LABEL_IN = 0.06, 0.35, 0.4, 0.32  # gaps, the legend band, above and below each row


def _draw(samples, show_report: bool, viz, plt):
    """Panels placed in inches: one row per case, as tall as the case's body rows, so that every view
    is drawn at the same scale and fills its panel exactly; the legend in its own band on top, each
    row's titles above it and its label below it, so nothing overlaps and nothing is left blank."""
    from matplotlib.lines import Line2D

    crops = []
    for s in samples:
        ant, post = from_model_frame(s.image)
        crops.append((ant, post, *viz.body_rows(ant, post)))
    view_w = ant.shape[1] * SCALE_IN
    width = GAP_IN + 3 * (view_w + GAP_IN) + (REPORT_IN + GAP_IN if show_report else 0)
    row_h = [(y1 - y0) * SCALE_IN for *_, y0, y1 in crops]
    height = LEGEND_IN + sum(TITLE_IN + h + LABEL_IN for h in row_h)
    fig = plt.figure(figsize=(width, height))

    def axes(x: float, top: float, w: float, h: float):  # inches from the left and from the top
        return fig.add_axes((x / width, 1 - (top + h) / height, w / width, h / height))

    top = LEGEND_IN
    for s, (ant, post, y0, y1), h in zip(samples, crops, row_h):
        top += TITLE_IN
        row = [axes(GAP_IN + c * (view_w + GAP_IN), top, view_w, h) for c in range(3)]
        viz.show_view(row[0], ant[y0:y1], f"{s.case_id}\nanterior")
        viz.show_view(row[1], post[y0:y1], "posterior\n(as acquired)")
        viz.show_view(row[2], ant[y0:y1], "anterior\n+ lesion mask")
        if s.mask is not None:
            viz.overlay_mask(row[2], s.mask[y0:y1])
        for b in (s.meta or {}).get("benign", []):
            for f in b["foci"]:
                row[2].plot(f["center"][1], f["center"][0] - y0, "+", color="tab:blue", ms=7, mew=1.2)
        if s.meta:
            sub = f"{len(s.meta['lesions'])} metastases"
            if s.meta.get("benign"):
                sub += "\nbenign: " + ", ".join(sorted({b["type"].replace("_", " ") for b in s.meta["benign"]}))
            row[2].set_xlabel(sub, fontsize=6)
        if show_report:
            text = axes(GAP_IN + 3 * (view_w + GAP_IN), top, REPORT_IN, h)
            viz.text_panel(text, s.report or "(no report)", width=int(REPORT_IN * 72 / REPORT_PT) - 2, fontsize=REPORT_PT)
        top += h + LABEL_IN
    fig.legend(handles=[Line2D([], [], color="red", lw=1.2, label="metastasis mask (outline)"),
                        Line2D([], [], color="tab:blue", marker="+", ls="", ms=7, mew=1.2, label="benign mimic (not in the mask)")],
               loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    return fig
