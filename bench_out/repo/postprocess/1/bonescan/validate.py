"""Request checks shared by the Triton ``preprocess`` model and the client (numpy only).

Each check returns None when the value is fine, or a message that names the field and the problem
(never pixel values or report text).
"""

from __future__ import annotations

import numpy as np

from bonescan.contract import (
    ENS_ACCESSION,
    ENS_IMAGE,
    ENS_PIXEL_SPACING,
    ENS_REPORT,
    ENS_STUDY_UID,
    IMAGE_DIMS,
    MAX_COUNT,
    MAX_STUDY_ID_CHARS,
)
from bonescan.errors import BonescanError
from bonescan.study import ACCESSION, STUDY_UID, check_report_study, study_ids
from bonescan.tokenize import ReportError, decode_report

MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0

#: What a whole-body bone scan in the model's frame (1024 x 256 pixels) can have: the EANM bone
#: scintigraphy guideline (Van den Wyngaert et al., Eur J Nucl Med Mol Imaging 2016;43:1723-38)
#: acquires whole-body scans into a 256 x 1024 matrix; 256 columns across a gamma camera's useful
#: field of view (about 400-540 mm wide, e.g. 533 mm Siemens Symbia, 540 mm GE Discovery NM/CT 670)
#: give 1.6-2.4 mm at zoom 1 (1.1 mm at zoom 2, rarely used for whole-body), and 1024 rows over a
#: bed travel of up to 2 m (some tables go further) give up to 2.0-2.5 mm. The range below is a
#: generous envelope around that; the pixel is square on these cameras (the row spacing follows
#: the scan speed, set so that it is): rows and columns may differ by MAX_SPACING_ASPECT at most.
#: The client refuses a spacing outside it unless the caller forces it (allow_unusual_spacing);
#: the server checks only MIN_SPACING_MM / MAX_SPACING_MM (someone forced it on purpose).
PLAUSIBLE_SPACING_MM = (1.0, 4.0)
MAX_SPACING_ASPECT = 1.10


def image_problem(image: np.ndarray, field: str = ENS_IMAGE.name) -> str | None:
    """One image in the model frame, float32 [2, H, W] raw counts."""
    a = np.asarray(image)
    if a.dtype != np.float32:
        return f"{field} must be FP32, got {a.dtype}"
    if tuple(a.shape) != IMAGE_DIMS:
        return f"{field} must have shape {list(IMAGE_DIMS)} per scan, got {list(a.shape)}"
    if not np.isfinite(a).all():
        return f"{field} contains NaN or infinite values"
    if float(a.min()) < 0:
        return f"{field} contains negative counts"
    if float(a.max()) > MAX_COUNT:
        return f"{field} has counts above {MAX_COUNT}"
    for v, name in enumerate(("anterior", "posterior")):
        if not a[v].any():
            return f"{field} {name} view is empty (all zero)"
    return None


def spacing_problem(spacing: np.ndarray, field: str = ENS_PIXEL_SPACING.name) -> str | None:
    s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if s.shape != (2,):
        return f"{field} must hold 2 values (row, column mm), got {s.size}"
    if not np.isfinite(s).all() or (s < MIN_SPACING_MM).any() or (s > MAX_SPACING_MM).any():
        return f"{field} must be between {MIN_SPACING_MM} and {MAX_SPACING_MM} mm"
    return None


def spacing_implausible(spacing: tuple[float, ...] | np.ndarray, field: str = "pixel spacing") -> str | None:
    """A spacing no whole-body gamma camera produces for the model's frame (see PLAUSIBLE_SPACING_MM):
    outside the range, or rows and columns differing by more than MAX_SPACING_ASPECT."""
    row, col = (float(v) for v in np.asarray(spacing, dtype=np.float64).reshape(-1)[:2])
    lo, hi = PLAUSIBLE_SPACING_MM
    if not (lo <= row <= hi and lo <= col <= hi):
        return (f"{field} ({row:g}, {col:g}) mm is outside {lo:g}-{hi:g} mm, the range of whole-body bone scans "
                f"in a 1024 x 256 matrix (a pixel of {row * col:.3g} mm² instead of about 5)")
    if max(row, col) / min(row, col) > MAX_SPACING_ASPECT:
        return (f"{field} ({row:g}, {col:g}) mm is not square: rows and columns differ by "
                f"{100 * (max(row, col) / min(row, col) - 1):.0f} % (at most {100 * (MAX_SPACING_ASPECT - 1):.0f} % on "
                "whole-body gamma cameras)")
    return None


def reports_problem(reports: np.ndarray, field: str = ENS_REPORT.name) -> str | None:
    """A request's reports (BYTES, any shape): each valid UTF-8 and within the size limit."""
    try:
        for raw in np.asarray(reports, dtype=np.object_).reshape(-1):
            decode_report(raw, field)
    except ReportError as e:
        return str(e)
    return None


def study_problem(reports: np.ndarray | None, accession: np.ndarray | None, study_uid: np.ndarray | None,
                  report_field: str = ENS_REPORT.name, accession_field: str = ENS_ACCESSION.name,
                  study_uid_field: str = ENS_STUDY_UID.name) -> str | None:
    """A request's study identifiers (BYTES, one per report row; absent or empty = not known): each
    valid UTF-8 of at most MAX_STUDY_ID_CHARS characters, and no report may name another study
    (bonescan.study.check_report_study). The message names the fields, never a value."""
    given = [(key, field, np.asarray(arr, dtype=np.object_).reshape(-1))
             for key, field, arr in ((ACCESSION, accession_field, accession), (STUDY_UID, study_uid_field, study_uid))
             if arr is not None and np.asarray(arr).size]
    if not given:
        return None
    rows = np.asarray(reports, dtype=np.object_).reshape(-1) if reports is not None else np.zeros(0, np.object_)
    for _key, field, col in given:
        if len(col) != len(rows):
            return f"{field} has {len(col)} value(s) for {len(rows)} {report_field} row(s)"
    where = {ACCESSION: f"the request's {accession_field}", STUDY_UID: f"the request's {study_uid_field}"}
    for j, raw in enumerate(rows):
        values: dict[str, str] = {}
        try:
            for key, field, col in given:  # the same UTF-8 check as the report's, then the length
                values[key] = decode_report(col[j], field)
                if len(values[key].strip()) > MAX_STUDY_ID_CHARS:
                    return f"{field} is longer than {MAX_STUDY_ID_CHARS} characters"
            scan_ids = study_ids(values.get(ACCESSION), values.get(STUDY_UID))  # stripped, the known ones
            if scan_ids:
                check_report_study(decode_report(raw, report_field), scan_ids, where)
        except ReportError as e:
            return str(e)
        except BonescanError as e:
            return f"{report_field}: {e}"
    return None
