"""preprocess: checks everything a request brings and passes it on; the first step of both ensembles.

IMAGE (NaN / Inf, negative or too large counts, an empty view), PIXEL_SPACING (an impossible
spacing) and, in the dual-path ensemble, REPORT (valid UTF-8, within the size limit; never echoed)
are checked here, before any other step runs. A bad request gets an error that names the field and
the problem; the other requests in the batch go on. The checks are bonescan/validate.py and
bonescan/tokenize.py, the same ones the client runs before sending.

Why the report is checked here and not in the tokenizer: the ensemble is one chain, so a refused
request has no other step in flight (Triton 2.51 deadlocked its gRPC frontend when a parallel step
finished after the ensemble had already failed; see contract.py).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from bonescan.serving.pybackend import concat_padded, gather, respond  # noqa: E402
from bonescan.tokenize import ReportError, decode_report  # noqa: E402
from bonescan.validate import image_problem, spacing_problem  # noqa: E402


def _check(feed):
    for img in feed["IMAGE"]:
        problem = image_problem(img)
        if problem:
            return problem
    for s in feed["PIXEL_SPACING"]:
        problem = spacing_problem(s)
        if problem:
            return problem
    if feed.get("REPORT") is not None:
        try:
            for raw in feed["REPORT"].reshape(-1):
                decode_report(raw)
        except ReportError as e:
            return str(e)
    return None


class TritonPythonModel:
    def initialize(self, args):
        inputs = json.loads(args["model_config"])["input"]  # generated from contract.PREPROCESS_INPUTS
        self.names = [i["name"] for i in inputs]
        self.optional = [i["name"] for i in inputs if i.get("optional")]

    def execute(self, requests):
        arrays, good, sizes, errors = gather(pb_utils, requests, self.names, _check, optional=self.optional)
        outputs = {}
        if good:
            # requests from the U-Net ensemble carry no report: their rows get b"" (that ensemble
            # does not ask for the output, but one batch may hold requests from both ensembles)
            reports = [r if r is not None else np.full((n, 1), b"", dtype=np.object_)
                       for r, n in zip(arrays["REPORT"], sizes)]
            outputs = {
                "image": concat_padded(arrays["IMAGE"]),
                "pixel_spacing": concat_padded(arrays["PIXEL_SPACING"]).astype(np.float32),
                "report": np.concatenate(reports, axis=0).astype(np.object_),
            }
        return respond(pb_utils, len(requests), good, sizes, errors, outputs)
