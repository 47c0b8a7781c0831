"""Which study a report belongs to: the identifiers a report names, and the check that they are
the scan's (issue 13: a report that names another study is refused before anything is sent).

Pure functions, no torch. Messages name the field and the problem, never an identifier's value
or the report's text (both are patient data).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from bonescan.errors import BonescanError

#: the identifier fields, as in a scan's ``study`` dict and in ``_lesions.json``'s "study"
ACCESSION = "accession_number"
STUDY_UID = "study_instance_uid"

#: how the message names each field on the scan's side
_SCAN_FIELD = {ACCESSION: "the DICOM AccessionNumber or meta.json accession_number",
               STUDY_UID: "the DICOM StudyInstanceUID or meta.json study_instance_uid"}
_REPORT_FIELD = {ACCESSION: "accession number", STUDY_UID: "StudyInstanceUID"}

# Labels are matched after NFKC (full-width letters, digits and colons become ASCII). A label is
# followed by ':' or whitespace, then the value. English labels must not be the tail of a word.
_SEP = r"(?:[ \t]*:[ \t]*|[ \t]+)"
_ACCESSION_RE = re.compile(
    r"(?:检查编号|检查号|影像号|登记号"
    r"|(?<![A-Za-z0-9])(?:accession[ \t]*(?:number|no\.?|#)?|acc(?:[ \t]*no)?\.?)(?![A-Za-z]))"
    + _SEP + r"([A-Za-z0-9._-]*[0-9][A-Za-z0-9._-]*)",
    re.IGNORECASE,
)
_UID_RE = re.compile(
    r"(?:检查UID|(?<![A-Za-z0-9])(?:study[ \t]*instance[ \t]*uid|study[ \t]*uid)(?![A-Za-z]))"
    + _SEP + r"([0-9]+(?:\.[0-9]+)+)",
    re.IGNORECASE,
)


def _all_ids(report: str) -> dict[str, list[str]]:
    """Every value each label names, in order (a report may repeat or contradict itself)."""
    text = unicodedata.normalize("NFKC", report or "")
    accession = [m.group(1).rstrip(".-") for m in _ACCESSION_RE.finditer(text)]
    return {
        "accession": [a for a in accession if a],
        "study_uid": [m.group(1) for m in _UID_RE.finditer(text)],
    }


def report_study_ids(report: str) -> dict[str, str | None]:
    """The identifiers a report names: {"accession": str | None, "study_uid": str | None} (the
    first of each; full-width characters are tolerated)."""
    found = _all_ids(report)
    return {k: (v[0] if v else None) for k, v in found.items()}


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def check_report_study(report: str, scan_ids: Mapping[str, str | None] | None,
                       scan_field: Mapping[str, str] | None = None) -> None:
    """Refuse a report that names another study than the scan's.

    ``scan_ids``: the scan's ``{"accession_number": ..., "study_instance_uid": ...}`` (missing or
    empty = not known). An identifier is compared only when both the report and the scan have it;
    with nothing to compare the report is accepted. Raises BonescanError naming the field, never
    a value or the report's text; ``scan_field`` names where the scan's identifiers came from
    (default: the DICOM attributes or meta.json).
    """
    names = {**_SCAN_FIELD, **(scan_field or {})}
    if not report or not scan_ids:
        return
    found = _all_ids(report)
    for field, values in ((ACCESSION, found["accession"]), (STUDY_UID, found["study_uid"])):
        ours = (scan_ids.get(field) or "").strip()
        if not ours or not values:
            continue
        if any(not _same(v, ours) for v in values):
            raise BonescanError(
                f"report names another study: its {_REPORT_FIELD[field]} differs from the scan's "
                f"({names[field]}); check that the report belongs to this scan")


def study_ids(accession_number: object = None, study_instance_uid: object = None) -> dict[str, str]:
    """The scan's identifiers as a ``study`` dict: only the known ones, stripped, as text."""
    out: dict[str, str] = {}
    for key, value in ((ACCESSION, accession_number), (STUDY_UID, study_instance_uid)):
        text = str(value).strip() if value is not None else ""
        if text:
            out[key] = text
    return out
