"""text_encoder (embedded flavor): runs model.onnx with onnxruntime inside Triton's python backend.

The pip-installed Triton has no onnxruntime backend, so this python model does that job; the
GPU flavors replace it with onnxruntime_onnx or tensorrt_plan. The runner is
bonescan/serving/onnx_runner.py (one session opened in initialize(), batched execute()).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

from bonescan.serving.onnx_runner import OnnxRunnerModel  # noqa: E402


class TritonPythonModel(OnnxRunnerModel):
    pass
