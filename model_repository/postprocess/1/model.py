"""postprocess: logits -> MASK (UINT8), PROBABILITY (FP32) and LESIONS (a JSON list per scan).

Threshold, connected components (8-connectivity, specks below MIN_LESION_PIXELS dropped) and the
lesion list (area in pixels and mm², bounding box, centroid, mean / max probability, side) are
bonescan/postprocess.py, the same function the offline evaluation uses.

Tensor names and dtypes come from the model's config (generated from contract.POSTPROCESS_INPUTS /
POSTPROCESS_OUTPUTS, in that order).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from bonescan.postprocess import postprocess  # noqa: E402
from bonescan.serving.pybackend import concat_padded, config_tensors, gather, respond  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        inputs, outputs = config_tensors(args["model_config"])
        self.logits, self.spacing = inputs
        self.mask, self.probability, self.lesions = outputs

    def execute(self, requests):
        arrays, good, sizes, errors = gather(pb_utils, requests, [self.logits.name, self.spacing.name])
        outputs = {}
        if good:
            masks, prob, lesions = postprocess(concat_padded(arrays[self.logits.name]), concat_padded(arrays[self.spacing.name]))
            outputs = {
                self.mask.name: masks.astype(self.mask.dtype, copy=False),
                self.probability.name: prob.astype(self.probability.dtype, copy=False),
                self.lesions.name: np.array([[s.encode("utf-8")] for s in lesions], dtype=self.lesions.dtype),
            }
        return respond(pb_utils, len(requests), good, sizes, errors, outputs)
