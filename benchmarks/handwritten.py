"""The hand-written held-out reports (benchmarks/handwritten_reports): reports no generator wrote.

36 reports were written by hand from the ground truth (meta.json) of cases 0-59 of the synthetic
data set with seed 2027, in six personal house styles, without the generator's templates in
view (see the folder's README). The scans are regenerated here (the generator is a pure function
of seed and index) and checked against the lesion lists the writer saw, so a change of the
generator cannot silently pair these reports with other images.
"""

from __future__ import annotations

import json
from pathlib import Path

from bonescan.errors import BonescanError

FOLDER = Path(__file__).resolve().parent / "handwritten_reports"


def handwritten_samples(folder: str | Path | None = None) -> list:
    """The cases of the hand-written set as data-set samples, each with its hand-written report."""
    from bonescan.contract import to_model_frame
    from bonescan.data.dataset import Sample
    from bonescan.data.io import load_reports
    from bonescan.data.synth import synth_case

    folder = Path(folder) if folder else FOLDER
    index = json.loads((folder / "cases.json").read_text(encoding="utf-8"))
    reports = load_reports(folder)
    samples = []
    for c in index["cases"]:
        case = synth_case(int(index["seed"]), int(c["index"]))
        regions = sorted(les["region"] for les in case.meta["lesions"])
        if regions != sorted(c["lesion_regions"]) or case.case_id != c["case_id"]:
            raise BonescanError(f"{folder / 'cases.json'}: case {c['case_id']} no longer matches the generator "
                                "(its lesions differ): the hand-written reports describe other images")
        samples.append(Sample(case.case_id, to_model_frame(case.anterior, case.posterior), case.mask,
                              reports[case.case_id], tuple(case.meta["pixel_spacing_mm"]), case.meta))
    return samples
