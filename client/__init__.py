"""bonescan.client: send SPECT bone scans and their reports to the BoneScan Triton ensemble.

Installable alone: ``pip install 'bonescan-triton[client]'`` (numpy, Pillow, pydicom, tritonclient;
no torch, no transformers).
"""

from bonescan.client.core import AsyncBoneScanClient, BoneScanClient, ClientError, ClientOptions
from bonescan.client.inputs import Request, load_report, load_scan, prepare
from bonescan.client.result import SegmentationResult

__all__ = [
    "AsyncBoneScanClient",
    "BoneScanClient",
    "ClientError",
    "ClientOptions",
    "Request",
    "SegmentationResult",
    "load_report",
    "load_scan",
    "prepare",
]
