"""bonescan.client: send SPECT bone scans and their reports to the BoneScan Triton ensemble.

Installable alone, from a clone: ``pip install '.[client]'`` (numpy, Pillow, pydicom,
charset-normalizer, tritonclient; no torch, no transformers).

Errors to catch: :class:`BonescanError` (all of the below), :class:`InputError` (a file or argument
cannot be used; ``bonescan.data.io.CaseError``), :class:`ClientError` (the server could not serve
the request), :class:`OutputExistsError` (``save()`` would write over a result).

DICOM output: :func:`to_dicom` / :func:`write_dicom` (``bonescan.client.dicom``) turn a result and its
NM scan into a Segmentation and a TID 1500 measurement SR (pydicom, highdicom: imported on use).
"""

from bonescan.client.core import AsyncBoneScanClient, BoneScanClient, ClientError, ClientOptions
from bonescan.client.dicom import to_dicom, write_dicom
from bonescan.client.inputs import InputError, Request, load_report, load_scan, prepare, result_stem
from bonescan.client.result import OutputExistsError, SegmentationResult
from bonescan.errors import BonescanError

#: how the client alone is installed (the README says the same; tests/test_readme.py checks it)
INSTALL = "pip install '.[client]'"

__all__ = [
    "INSTALL",
    "AsyncBoneScanClient",
    "BonescanError",
    "BoneScanClient",
    "ClientError",
    "ClientOptions",
    "InputError",
    "OutputExistsError",
    "Request",
    "SegmentationResult",
    "load_report",
    "load_scan",
    "prepare",
    "result_stem",
    "to_dicom",
    "write_dicom",
]
