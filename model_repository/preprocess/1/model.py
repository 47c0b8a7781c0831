"""preprocess: checks each request's IMAGE and PIXEL_SPACING and passes them on.

A bad request (NaN / Inf, negative or too large counts, an empty view, an impossible pixel spacing)
gets an error that names the field and the problem; the other requests in the batch go on.
The checks are bonescan/validate.py, the same ones the client runs before sending.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from bonescan.serving.pybackend import concat_padded, gather, respond  # noqa: E402
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
    return None


class TritonPythonModel:
    def initialize(self, args):
        self.names = ["IMAGE", "PIXEL_SPACING"]

    def execute(self, requests):
        arrays, good, sizes, errors = gather(pb_utils, requests, self.names, _check)
        outputs = {}
        if good:
            outputs = {
                "image": concat_padded(arrays["IMAGE"]),
                "pixel_spacing": concat_padded(arrays["PIXEL_SPACING"]).astype(np.float32),
            }
        return respond(pb_utils, len(requests), good, sizes, errors, outputs)
