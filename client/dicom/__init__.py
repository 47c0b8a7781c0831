"""bonescan.client.dicom: DICOM in and out for clinical software and a PACS.

* ``seg.py`` / ``sr.py``: a segmentation result -> a DICOM Segmentation (pydicom, against the
  Segmentation IOD: highdicom cannot build one for a two-frame NM source) and a TID 1500
  measurement SR (highdicom).
* ``node.py``: ``bonescan dicom-node``, a Storage SCP that segments each study once its scan and
  report have arrived and sends the SEG and SR on (C-STORE or STOW-RS).
* ``orthanc.py``: a local Orthanc PACS started with a generated config (tests, ``make demo-pacs``).

The readers of NM scans and report SRs live with the other readers in ``bonescan.data.dicom``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from bonescan.client.dicom.seg import ResultLike


def to_dicom(result: ResultLike, source: Any, report_in_study: bool | None = None) -> tuple[Dataset, Dataset]:
    """A result -> (SEG, SR) over the NM scan it was computed from.

    Args:
        result: what the client returned for the scan.
        source: that scan: a DICOM file (str / Path), a pydicom Dataset, or a sequence of two
            (anterior, posterior) single-frame view files or Datasets.
        report_in_study: whether the study held a report (the DICOM node knows; None: not said). The
            SR says it beside what the model read, so an image-only answer for want of a report is
            told apart from one the fail-safe chose.

    Returns:
        The Segmentation (frame 1 = anterior view, frame 2 = posterior view as acquired, i.e. the mask
        mirrored left-right) and the TID 1500 measurement report referencing it.

    Raises:
        bonescan.client.InputError: the source is no NM scan, cannot be read, or its Rows x Columns
            are not the mask's; the message names the file and the problem, never patient data.
    """
    from bonescan.client.dicom.seg import build_seg, check_geometry, load_source
    from bonescan.client.dicom.sr import build_sr

    src = load_source(source)
    check_geometry(result, src)
    seg = build_seg(result, src)
    return seg, build_sr(result, src, seg, report_in_study)


def write_dicom(result: ResultLike, source: Any, out_dir: str | Path, overwrite: bool = False,
                stem: str | None = None) -> dict[str, Path]:
    """Write ``out_dir/<stem>_seg.dcm`` and ``<stem>_sr.dcm`` (stem: the result's, as save() names it).

    Like :meth:`bonescan.client.SegmentationResult.save`, an existing file of that name is an OutputExistsError unless
    ``overwrite``; nothing is written then. Returns {"seg": path, "sr": path}."""
    out = Path(out_dir)
    stem = stem or result.stem or Path(result.source).stem or "scan"
    paths = {"seg": out / f"{stem}_seg.dcm", "sr": out / f"{stem}_sr.dcm"}
    result.check_outputs(paths, stem, overwrite)  # save()'s check (this package may not import the result module)
    seg, sr = to_dicom(result, source)
    out.mkdir(parents=True, exist_ok=True)
    seg.save_as(paths["seg"], enforce_file_format=True)
    sr.save_as(paths["sr"], enforce_file_format=True)
    return paths


__all__ = ["to_dicom", "write_dicom"]
