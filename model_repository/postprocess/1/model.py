"""postprocess: logits -> MASK (UINT8), PROBABILITY (FP32) and LESIONS (a JSON list per scan).

Threshold, connected components (8-connectivity, specks below MIN_LESION_PIXELS dropped) and the
lesion list (area in pixels and mm², bounding box, centroid, mean / max probability, side) are
bonescan/postprocess.py, the same function the offline evaluation uses.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from bonescan.postprocess import postprocess  # noqa: E402
from bonescan.serving.pybackend import concat_padded, gather, respond  # noqa: E402


class TritonPythonModel:
    def execute(self, requests):
        arrays, good, sizes, errors = gather(pb_utils, requests, ["logits", "pixel_spacing"])
        outputs = {}
        if good:
            masks, prob, lesions = postprocess(concat_padded(arrays["logits"]), concat_padded(arrays["pixel_spacing"]))
            outputs = {
                "MASK": masks,
                "PROBABILITY": prob,
                "LESIONS": np.array([[s.encode("utf-8")] for s in lesions], dtype=np.object_),
            }
        return respond(pb_utils, len(requests), good, sizes, errors, outputs)
