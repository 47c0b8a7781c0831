"""The one source of truth for everything two components must agree on.

Image geometry, view layout, tensor names / dtypes / shapes of the two deployable graphs and of
the Triton ensemble, tokenizer settings, the decision threshold and the Triton model names are
defined here once. Training, export, the Triton configs (generated), the python-backend models
(this file is copied next to them by ``bonescan repo build``) and the client all import it.

This module must stay importable with numpy alone (it runs inside Triton's python backend and
in the torch-free client).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

CONTRACT_VERSION = 1

# ----------------------------------------------------------------------------- image geometry
#: Whole-body views are 1024 x 256 (H x W) count images, as most gamma cameras write them.
IMAGE_HEIGHT = 1024
IMAGE_WIDTH = 256
#: Model input channels: the anterior view and the posterior view mirrored left-right into the
#: anterior frame (patient's right on the image's left in both channels).
VIEWS = ("anterior", "posterior")
IMAGE_CHANNELS = len(VIEWS)
#: Default pixel spacing (row, column) in mm when a file does not carry one.
DEFAULT_PIXEL_SPACING_MM = (2.4, 2.4)
#: Counts are stored and sent as non-negative integers up to this value (uint16 files).
MAX_COUNT = 65535


def to_model_frame(anterior: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """Stack the two views into the model frame.

    anterior, posterior: [H, W] count images as acquired (the posterior view seen from behind).
    Returns float32 [2, H, W]: channel 0 = anterior, channel 1 = posterior mirrored left-right,
    so that one pixel position is one place in the patient in both channels and in the mask.
    """
    a = np.asarray(anterior)
    p = np.asarray(posterior)
    if a.shape != p.shape or a.ndim != 2:
        raise ValueError(f"views must be two 2-D arrays of one shape, got {a.shape} and {p.shape}")
    return np.stack([a, p[:, ::-1]], axis=0).astype(np.float32)


def from_model_frame(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_model_frame`: [2, H, W] -> (anterior, posterior as acquired)."""
    return image[0], image[1][:, ::-1]


# ----------------------------------------------------------------------------- count normalisation
#: The segmenter normalises raw counts inside its graph (so Triton, TensorRT and PyTorch share
#: it): x -> log1p(x / (mean over the view's pixels + COUNT_EPS) * COUNT_SCALE).
#: Dividing by the view mean removes the injected-dose / scan-speed scale; log compresses the
#: bladder and hot lesions. The torch implementation is ``bonescan.model.unet.normalize_counts``;
#: :func:`normalize_counts_np` is the numpy twin used only by tests to check it.
COUNT_EPS = 0.01
COUNT_SCALE = 1.0


def normalize_counts_np(image: np.ndarray) -> np.ndarray:
    """[B, C, H, W] raw counts -> normalised float32 (numpy reference of the in-graph op)."""
    x = np.asarray(image, dtype=np.float32)
    mean = x.mean(axis=(-2, -1), keepdims=True)
    return np.log1p(x / (mean + COUNT_EPS) * COUNT_SCALE).astype(np.float32)


# ----------------------------------------------------------------------------- tokenizer
@dataclass(frozen=True)
class TokenizerSettings:
    """How a report becomes input_ids / attention_mask (Chinese BERT / MacBERT conventions)."""

    max_tokens: int = 256  # [CLS] + up to 254 pieces + [SEP]; longer reports are truncated
    lowercase: bool = True  # hfl/chinese-macbert-base is uncased
    pad_to_max: bool = True  # fixed length: Triton's dynamic batcher needs equal shapes
    pad_token_id: int = 0  # [PAD] is id 0 in the Chinese BERT vocabulary
    max_report_chars: int = 20000  # larger requests are refused, not truncated


TOKENIZER = TokenizerSettings()

# ----------------------------------------------------------------------------- tensors


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as Triton sees it: dims exclude the batch dim; -1 = dynamic."""

    name: str
    dtype: str  # numpy dtype name ("float32", "int32", "uint8", "object" for BYTES)
    dims: tuple[int, ...]
    doc: str = ""
    optional: bool = False  # a model input a request (or an ensemble step) may leave out

    @property
    def triton_dtype(self) -> str:
        return NUMPY_TO_TRITON[self.dtype]

    @property
    def config_dtype(self) -> str:
        return "TYPE_" + ("STRING" if self.dtype == "object" else self.triton_dtype)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dims"] = list(self.dims)
        d["triton_dtype"] = self.triton_dtype
        return d


NUMPY_TO_TRITON = {
    "float32": "FP32",
    "float16": "FP16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "bool": "BOOL",
    "object": "BYTES",
}

IMAGE_DIMS = (IMAGE_CHANNELS, IMAGE_HEIGHT, IMAGE_WIDTH)
DYN = -1

# text_encoder(input_ids, attention_mask) -> text_features
INPUT_IDS = TensorSpec("input_ids", "int32", (DYN,), "token ids, [CLS] ... [SEP] [PAD]...")
ATTENTION_MASK = TensorSpec("attention_mask", "int32", (DYN,), "1 = token, 0 = padding")
TEXT_FEATURES = TensorSpec("text_features", "float32", (DYN, DYN), "[tokens, hidden] last hidden state")
# segmenter(image, text_features, attention_mask) -> logits
IMAGE = TensorSpec("image", "float32", IMAGE_DIMS, "raw counts, model frame (see to_model_frame)")
LOGITS = TensorSpec("logits", "float32", (1, IMAGE_HEIGHT, IMAGE_WIDTH), "lesion logit per pixel")

TEXT_ENCODER_INPUTS = (INPUT_IDS, ATTENTION_MASK)
TEXT_ENCODER_OUTPUTS = (TEXT_FEATURES,)
SEGMENTER_INPUTS = (IMAGE, TEXT_FEATURES, ATTENTION_MASK)
SEGMENTER_UNET_INPUTS = (IMAGE,)
SEGMENTER_OUTPUTS = (LOGITS,)

# The ensemble as clients see it.
ENS_IMAGE = TensorSpec("IMAGE", "float32", IMAGE_DIMS, "raw counts, model frame (see to_model_frame)")
ENS_REPORT = TensorSpec("REPORT", "object", (1,), "UTF-8 diagnostic report; empty = no report")
ENS_PIXEL_SPACING = TensorSpec("PIXEL_SPACING", "float32", (2,), "row, column spacing in mm")
ENS_MASK = TensorSpec("MASK", "uint8", (1, IMAGE_HEIGHT, IMAGE_WIDTH), "1 = lesion")
ENS_PROBABILITY = TensorSpec("PROBABILITY", "float32", (1, IMAGE_HEIGHT, IMAGE_WIDTH), "sigmoid(logits)")
ENS_LESIONS = TensorSpec("LESIONS", "object", (1,), "JSON list of lesions (see postprocess)")

# Steps inside the ensemble (python-backend models). preprocess checks everything a request brings
# (image, spacing and, for the dual-path ensemble, the report) before any other step runs: the steps
# form one chain, so a refused request never leaves a sibling step in flight. (Triton 2.51 deadlocked
# its gRPC frontend when a parallel step finished after the ensemble had already failed.)
PIXEL_SPACING = TensorSpec("pixel_spacing", "float32", (2,), "checked pixel spacing")
REPORT = TensorSpec("report", "object", (1,), "checked report (valid UTF-8, within the size limit)")
PREPROCESS_INPUTS = (ENS_IMAGE, ENS_PIXEL_SPACING, replace(ENS_REPORT, doc="absent in the U-Net ensemble", optional=True))
PREPROCESS_OUTPUTS = (IMAGE, PIXEL_SPACING, REPORT)
TOKENIZER_INPUTS = (REPORT,)
TOKENIZER_OUTPUTS = (INPUT_IDS, ATTENTION_MASK)
POSTPROCESS_INPUTS = (LOGITS, PIXEL_SPACING)

ENSEMBLE_INPUTS = (ENS_IMAGE, ENS_REPORT, ENS_PIXEL_SPACING)
ENSEMBLE_UNET_INPUTS = (ENS_IMAGE, ENS_PIXEL_SPACING)
ENSEMBLE_OUTPUTS = (ENS_MASK, ENS_PROBABILITY, ENS_LESIONS)

# ----------------------------------------------------------------------------- Triton model names
PREPROCESS_MODEL = "preprocess"
ENSEMBLE_MODEL = "bonescan"
ENSEMBLE_UNET_MODEL = "bonescan_unet"
TOKENIZER_MODEL = "tokenizer"
TEXT_ENCODER_MODEL = "text_encoder"
SEGMENTER_MODEL = "segmenter"
SEGMENTER_UNET_MODEL = "segmenter_unet"
POSTPROCESS_MODEL = "postprocess"

# ----------------------------------------------------------------------------- postprocess
#: A pixel is lesion when sigmoid(logit) >= THRESHOLD.
THRESHOLD = 0.5
#: Connected components (8-connectivity) smaller than this many pixels are dropped.
MIN_LESION_PIXELS = 3


def spec_table() -> dict:
    """Every tensor of the deployment as plain data (written into the export description)."""
    return {
        "contract_version": CONTRACT_VERSION,
        "text_encoder": {
            "inputs": [t.to_dict() for t in TEXT_ENCODER_INPUTS],
            "outputs": [t.to_dict() for t in TEXT_ENCODER_OUTPUTS],
        },
        "segmenter": {
            "inputs": [t.to_dict() for t in SEGMENTER_INPUTS],
            "outputs": [t.to_dict() for t in SEGMENTER_OUTPUTS],
        },
        "segmenter_unet": {
            "inputs": [t.to_dict() for t in SEGMENTER_UNET_INPUTS],
            "outputs": [t.to_dict() for t in SEGMENTER_OUTPUTS],
        },
        "ensemble": {
            "inputs": [t.to_dict() for t in ENSEMBLE_INPUTS],
            "outputs": [t.to_dict() for t in ENSEMBLE_OUTPUTS],
        },
        "tokenizer": asdict(TOKENIZER),
        "threshold": THRESHOLD,
        "min_lesion_pixels": MIN_LESION_PIXELS,
    }
