"""``bonescan data preview``: a grid of cases a person can look at."""

from __future__ import annotations

from pathlib import Path

from bonescan.contract import from_model_frame
from bonescan.data.dataset import BoneScanDataset
from bonescan.errors import BonescanError


def preview(data: str | Path, out: str | Path, n: int = 6, ids: list[str] | None = None, split: str | None = None,
            show_report: bool = True) -> Path:
    """Per case: anterior, posterior (as acquired), anterior + mask (red) + benign mimics (blue); the report under them."""
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
REPORT_PT = 7.5  # the report's font size; Chinese characters are 1 em wide
LINE_IN = REPORT_PT * 1.3 / 72  # the report's line pitch
LABEL_PT = 6  # the label under the mask view: metastases, benign mimics
GAP_IN, LEGEND_IN, TITLE_IN = 0.06, 0.35, 0.4  # gaps, the legend band, the titles above each row
LABEL_PAD_IN, LABEL_LINE_IN = 0.12, LABEL_PT * 1.2 / 72  # the band below each row: padding and a line per label line


def _draw(samples, show_report: bool, viz, plt):
    """Panels placed in inches: one row per case, as tall as the case's body rows, so that every view
    is drawn at the same scale and fills its panel exactly; the legend in its own band on top, each
    row's titles above it and its label below it, so nothing overlaps. The report goes under its
    case's views, wrapped to their width and exactly as tall as its lines: no column beside the
    views that the text would fill only at the top."""
    from matplotlib.lines import Line2D

    crops = []
    for s in samples:
        ant, post = from_model_frame(s.image)
        crops.append((ant, post, *viz.body_rows(ant, post)))
    view_w = ant.shape[1] * SCALE_IN
    width = GAP_IN + 3 * (view_w + GAP_IN)
    text_w = width - 2 * GAP_IN
    font = viz.cjk_font()
    no_font = "(report not drawn: no CJK font; apt install fonts-wqy-microhei)"
    reports = [viz.wrap_to_width((s.report or "(no report)") if font else no_font, text_w * 72, REPORT_PT, font)
               if show_report else [] for s in samples]
    labels = [_label(s, text_w * 72, viz) for s in samples]
    row_h = [(y1 - y0) * SCALE_IN for *_, y0, y1 in crops]
    label_h = [LABEL_PAD_IN + max(len(lines), 2) * LABEL_LINE_IN for lines in labels]
    text_h = [len(lines) * LINE_IN + (GAP_IN if lines else 0) for lines in reports]
    height = LEGEND_IN + sum(TITLE_IN + h + b + t for h, b, t in zip(row_h, label_h, text_h))
    fig = plt.figure(figsize=(width, height))

    def axes(x: float, top: float, w: float, h: float):  # inches from the left and from the top
        return fig.add_axes((x / width, 1 - (top + h) / height, w / width, h / height))

    top = LEGEND_IN
    for s, (ant, post, y0, y1), h, label, label_in, lines in zip(samples, crops, row_h, labels, label_h, reports):
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
        if label:  # right-aligned under the mask view: a long list of mimics reaches left, not out of the picture
            row[2].set_xlabel("\n".join(label), fontsize=LABEL_PT, loc="right")
        top += h + label_in
        if lines:
            viz.text_lines(axes(GAP_IN, top, text_w, len(lines) * LINE_IN), lines, REPORT_PT, font)
            top += len(lines) * LINE_IN + GAP_IN
    fig.legend(handles=[Line2D([], [], color="red", lw=1.2, label="metastasis mask (outline)"),
                        Line2D([], [], color="tab:blue", marker="+", ls="", ms=7, mew=1.2, label="benign mimic (not in the mask)")],
               loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    return fig


def _label(s, width_pt: float, viz) -> list[str]:
    """Lines under the mask view: the number of metastases, then the benign mimics wrapped to ``width_pt``."""
    if not s.meta:
        return []
    lines = [f"{len(s.meta['lesions'])} metastases"]
    if s.meta.get("benign"):
        kinds = ", ".join(sorted({b["type"].replace("_", " ") for b in s.meta["benign"]}))
        lines += viz.wrap_to_width("benign: " + kinds, width_pt, LABEL_PT)
    return lines


def region_preview(data: str | Path, case_id: str, out: str | Path, scale: float = 3.0) -> Path:
    """``bonescan data regions``: one case's region label map over its two views, each region coloured and
    named (English) at its centre, the lesion mask outlined in red with each lesion's name (the region holding
    most of it, ``anatomy.lesion_sites``) beside it. Both views are drawn in the model
    frame (the posterior view mirrored: the patient's right on the image's left in both), so a label
    sits on the same bone in the picture as in the label map; each view's labels are its own."""
    from bonescan import viz
    from bonescan.anatomy import N_REGION_CLASSES, english_name

    viz.use_agg()
    import matplotlib.pyplot as plt
    import numpy as np

    ds = BoneScanDataset(data, require_mask=False, with_regions=True)
    if case_id not in ds.ids:
        raise BonescanError(f"{data}: no case {case_id!r}")
    s = ds.load(ds.ids.index(case_id))
    if s.regions is None:
        raise BonescanError(f"{data}: case {case_id} has no regions.png (written by `bonescan data synth` since issue 26)")
    named = _lesion_names(s) if s.mask is not None else []
    y0, y1 = viz.body_rows(s.image[0], s.image[1])
    h, w = y1 - y0, s.image.shape[2]
    colours = plt.get_cmap("tab20")(np.arange(N_REGION_CLASSES) % 20)
    colours[0] = (0, 0, 0, 0)
    fig, axes = plt.subplots(1, 2, figsize=(2 * w * scale / 100, h * scale / 100 + 0.4))
    for v, (ax, title) in enumerate(zip(axes, ("anterior", "posterior (mirrored: model frame)"), strict=True)):
        lab = s.regions[v][y0:y1]
        viz.show_view(ax, s.image[v][y0:y1], f"{case_id} {title}")
        rgba = colours[lab]
        rgba[..., 3] = np.where(lab > 0, 0.45, 0.0)
        ax.imshow(rgba, interpolation="nearest")
        if s.mask is not None:
            viz.overlay_mask(ax, s.mask[y0:y1])
            for site, (ly, lx) in named:  # each lesion's name, beside it, in red
                ax.text(lx + 6, ly - y0, site, fontsize=4.2, color="red", ha="left", va="center", fontweight="bold")
        for c in np.unique(lab):
            if c == 0:
                continue
            yy, xx = np.nonzero(lab == c)
            k = int(np.argmin((yy - yy.mean()) ** 2 + (xx - xx.mean()) ** 2))  # a pixel of the region, near its centre
            ax.text(xx[k], yy[k], english_name(int(c)).replace("right ", "R ").replace("left ", "L "), fontsize=3.2,
                    ha="center", va="center", color="black")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=200)
    plt.close(fig)
    return out


def _lesion_names(s) -> list[tuple[str, tuple[float, float]]]:
    """(English name, right edge of the lesion's box (y, x)) per component of the case's mask."""
    import numpy as np

    from bonescan.anatomy import lesion_sites, view_weights
    from bonescan.components import components

    c = components(s.mask > 0)
    if not c.n:
        return []
    ys, xs = np.divmod(c.order, c.labels.shape[1])
    cy = np.add.reduceat(ys, c.starts) / c.area
    x1 = np.maximum.reduceat(xs, c.starts)
    sites = lesion_sites(c.labels, c.n, s.regions, view_weights(s.image, c.labels, c.n))
    return [(site.english or "off bone", (float(cy[k]), float(x1[k]))) for k, site in enumerate(sites)]
