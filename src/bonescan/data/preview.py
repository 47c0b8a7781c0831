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
    cols = 4 if show_report else 3
    fig, axes = plt.subplots(len(samples), cols, figsize=(2.3 * cols + (1.6 if show_report else 0), 5.2 * len(samples)),
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.5][:cols]}, squeeze=False)
    for row, s in zip(axes, samples):
        ant, post = from_model_frame(s.image)
        y0, y1 = viz.body_rows(ant, post)
        viz.show_view(row[0], ant[y0:y1], f"{s.case_id}\nanterior")
        viz.show_view(row[1], post[y0:y1], "posterior (as acquired)")
        viz.show_view(row[2], ant[y0:y1], "anterior + lesion mask")
        if s.mask is not None:
            viz.overlay_mask(row[2], s.mask[y0:y1])
        n_mets = int(len(s.meta["lesions"])) if s.meta else None
        if s.meta:
            for b in s.meta.get("benign", []):
                for f in b["foci"]:
                    row[2].plot(f["center"][1], f["center"][0] - y0, "+", color="tab:blue", ms=7, mew=1.2)
        sub = f"{n_mets} metastases" if n_mets is not None else ""
        if s.meta and s.meta.get("benign"):
            sub += f", benign: {', '.join(sorted({b['type'] for b in s.meta['benign']}))}"
        row[2].set_xlabel(sub, fontsize=6)
        if show_report:
            viz.text_panel(row[3], s.report or "(no report)")
    fig.suptitle("red: metastasis mask   blue +: benign mimic (not in mask)", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
