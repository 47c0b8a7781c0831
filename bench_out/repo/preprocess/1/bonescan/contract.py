"""The one source of truth for everything two components must agree on.

Image geometry, view layout, tensor names / dtypes / shapes of the deployable graphs and of the
Triton ensembles, the ensembles' chains of steps, which axes of the graphs are dynamic (and the ranges TensorRT profiles give them),
tokenizer settings, the decision threshold and the Triton model names are defined here once.
Training, export (ONNX names and dynamic axes, TensorRT lint and profiles), the Triton configs
(generated), the python-backend models (this file is copied next to them by ``bonescan repo
build``) and the client all import it.

This module must stay importable with numpy alone (it runs inside Triton's python backend and
in the torch-free client).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from bonescan.anatomy import N_REGION_CLASSES  # (anatomy imports nothing of the package)

CONTRACT_VERSION = 7  # 2: the dual-path segmenter carries the fail-safe (text_map, fallback_logits), LESIONS says who answered;
# 3: the dual-path ensemble takes the study's ACCESSION_NUMBER / STUDY_INSTANCE_UID (optional);
# 4: reports are normalised before tokenizing (report_text), text_stats also counts the report's finding terms
# 5: the U-Net (alone, and bundled in the dual-path segmenter) also gives the skeleton's regions (region_labels)
# 6: the tokenizer gives postprocess the bones the report names as metastatic (report_regions)
# 7: report_regions is float32 and also feeds the dual-path segmenter (the decoder's named-place prior)

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

    #: [CLS] + up to 382 characters + [SEP]; longer reports are truncated. 384, not BERT's usual 256:
    #: reports with a method line, a history and many numbered impressions reach 300 characters,
    #: and what a cut drops is the end of the impression, where benign findings are dismissed
    max_tokens: int = 384
    lowercase: bool = True  # hfl/chinese-macbert-base is uncased
    pad_to_max: bool = True  # fixed length: Triton's dynamic batcher needs equal shapes
    pad_token_id: int = 0  # [PAD] is id 0 in the Chinese BERT vocabulary
    max_report_chars: int = 20000  # larger requests are refused, not truncated
    #: reports are normalised before tokenizing (bonescan.report_text: traditional characters, full-width
    #: forms, English shorthand -> the words of the training reports)
    normalize: bool = True


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



def config_dtype_to_numpy(data_type: str) -> str:
    """A config.pbtxt ``data_type`` ("TYPE_FP32", "TYPE_STRING") -> numpy dtype name (the inverse
    of :attr:`TensorSpec.config_dtype`); python-backend models read their dtypes with it."""
    name = data_type.removeprefix("TYPE_")
    if name == "STRING":
        return "object"
    for np_name, triton in NUMPY_TO_TRITON.items():
        if triton == name:
            return np_name
    raise ValueError(f"no numpy dtype for {data_type}")


IMAGE_DIMS = (IMAGE_CHANNELS, IMAGE_HEIGHT, IMAGE_WIDTH)
DYN = -1

# text_encoder(input_ids, attention_mask) -> text_features
INPUT_IDS = TensorSpec("input_ids", "int32", (DYN,), "token ids, [CLS] ... [SEP] [PAD]...")
ATTENTION_MASK = TensorSpec("attention_mask", "int32", (DYN,), "1 = token, 0 = padding")
TEXT_FEATURES = TensorSpec("text_features", "float32", (DYN, DYN), "[tokens, hidden] last hidden state")
# segmenter(image, text_features, attention_mask) -> logits
IMAGE = TensorSpec("image", "float32", IMAGE_DIMS, "raw counts, model frame (see to_model_frame)")
LOGITS = TensorSpec("logits", "float32", (1, IMAGE_HEIGHT, IMAGE_WIDTH), "lesion logit per pixel")

# the dual-path segmenter graph also gives the fail-safe its inputs (see bonescan.failsafe): the
# report's coarse maps and the answer of the image-only U-Net bundled into the same graph
TEXT_MAP = TensorSpec("text_map", "float32", (2, DYN, DYN),
                      "the report's coarse maps (allow, mention logits), [2, H / s, W / s] with s the coarsest stride")
FALLBACK_LOGITS = TensorSpec("fallback_logits", "float32", (1, IMAGE_HEIGHT, IMAGE_WIDTH), "the bundled U-Net's logits")
#: The anatomy output (issue 26) labels the skeleton's regions on a grid this many pixels coarser than
#: the image: a bone is tens of pixels across, a rib's arc a few rows high; postprocess repeats the
#: labels back to full resolution before it names each lesion by the region holding most of it.
REGION_STRIDE = 4
REGION_LABELS = TensorSpec("region_labels", "int32", (IMAGE_CHANNELS, IMAGE_HEIGHT // REGION_STRIDE, IMAGE_WIDTH // REGION_STRIDE),
                           "skeleton region class per view (anatomy.REGION_CLASSES, 0 = background), on a grid "
                           "REGION_STRIDE pixels coarser than the image")
# tokenizer -> postprocess: how much of the report the model can read
TEXT_STATS = TensorSpec("text_stats", "int32", (3,),
                        "report tokens, of them unknown to the text encoder, and the report's finding terms (report_text)")

# tokenizer -> segmenter and postprocess: the bones the report names as metastatic (issue 26, the
# named-place prior: the segmenter's decoder reads it over its bundled U-Net's anatomy output, postprocess
# grows the answer by the U-Net's hot spots there). float32, not uint8: every runtime takes it as a graph input.
REPORT_REGIONS = TensorSpec("report_regions", "float32", (N_REGION_CLASSES,),
                            "1 = a region class (anatomy.REGION_CLASSES) the report names as metastatic (report_sites.named_classes)")
# tokenizer -> postprocess: the bones the report names itself, without report_regions' neighbours (a rib or a
# vertebra within one), so a lesion the image leaves between two named-or-neighbouring bones is named by the
# one the report wrote (anatomy.lesion_sites). Not a graph input: the segmenter keeps reading report_regions.
REPORT_NAMED = TensorSpec("report_named", "float32", (N_REGION_CLASSES,),
                          "1 = a region class the report names itself as metastatic, no neighbour (report_sites.named_classes exact)")
# tokenizer -> postprocess: the bones the report calls benign (its benign sentences' places, joints read as their
# bones): a lesion there that the report names as no metastasis is left out of the Bone Scan Index (the burden of
# metastatic disease; the second reader marks it "called_benign" for a person to look at). Not a graph input.
REPORT_BENIGN = TensorSpec("report_benign", "float32", (N_REGION_CLASSES,),
                           "1 = a region class the report calls benign, the bone itself (report_sites.place_classes)")
#: what the tokenizer reads from a report's places, in the order of report_sites.PlaceClasses
REPORT_PLACES = (REPORT_REGIONS, REPORT_NAMED, REPORT_BENIGN)

TEXT_ENCODER_INPUTS = (INPUT_IDS, ATTENTION_MASK)
TEXT_ENCODER_OUTPUTS = (TEXT_FEATURES,)
SEGMENTER_INPUTS = (IMAGE, TEXT_FEATURES, ATTENTION_MASK, REPORT_REGIONS)
SEGMENTER_UNET_INPUTS = (IMAGE,)
SEGMENTER_OUTPUTS = (LOGITS, TEXT_MAP, FALLBACK_LOGITS, REGION_LABELS)
SEGMENTER_UNET_OUTPUTS = (LOGITS, REGION_LABELS)

# The ensemble as clients see it.
ENS_IMAGE = TensorSpec("IMAGE", "float32", IMAGE_DIMS, "raw counts, model frame (see to_model_frame)")
ENS_REPORT = TensorSpec("REPORT", "object", (1,), "UTF-8 diagnostic report; empty = no report")
ENS_PIXEL_SPACING = TensorSpec("PIXEL_SPACING", "float32", (2,), "row, column spacing in mm")
#: the study the scan belongs to, where the caller knows it (empty or absent = not known): a report
#: that names another accession number / StudyInstanceUID is refused (bonescan.study)
ENS_ACCESSION = TensorSpec("ACCESSION_NUMBER", "object", (1,),
                           "UTF-8 DICOM AccessionNumber of the scan's study; a report naming another is refused", optional=True)
ENS_STUDY_UID = TensorSpec("STUDY_INSTANCE_UID", "object", (1,),
                           "UTF-8 StudyInstanceUID of the scan's study; a report naming another is refused", optional=True)
#: the longest identifier accepted (a DICOM UI is at most 64 characters, an AccessionNumber 16)
MAX_STUDY_ID_CHARS = 64
ENS_MASK = TensorSpec("MASK", "uint8", (1, IMAGE_HEIGHT, IMAGE_WIDTH), "1 = lesion")
ENS_PROBABILITY = TensorSpec("PROBABILITY", "float32", (1, IMAGE_HEIGHT, IMAGE_WIDTH), "sigmoid(logits)")
ENS_LESIONS = TensorSpec("LESIONS", "object", (1,), "JSON list of lesions (see postprocess)")

# Steps inside the ensemble (python-backend models). preprocess checks everything a request brings
# (image, spacing and, for the dual-path ensemble, the report) before any other step runs: the steps
# form one chain, so a refused request never leaves a sibling step in flight. (Triton 2.51 deadlocked
# its gRPC frontend when a parallel step finished after the ensemble had already failed.)
PIXEL_SPACING = TensorSpec("pixel_spacing", "float32", (2,), "checked pixel spacing")
REPORT = TensorSpec("report", "object", (1,), "checked report (valid UTF-8, within the size limit)")
PREPROCESS_INPUTS = (ENS_IMAGE, ENS_PIXEL_SPACING, replace(ENS_REPORT, doc="absent in the U-Net ensemble", optional=True),
                     ENS_ACCESSION, ENS_STUDY_UID)
PREPROCESS_OUTPUTS = (IMAGE, PIXEL_SPACING, REPORT)
TOKENIZER_INPUTS = (REPORT,)
TOKENIZER_OUTPUTS = (INPUT_IDS, ATTENTION_MASK, TEXT_STATS, *REPORT_PLACES)
_FAILSAFE_INPUT = "absent in the U-Net ensemble: then the logits are the answer"
POSTPROCESS_INPUTS = (LOGITS, PIXEL_SPACING, replace(TEXT_MAP, doc=_FAILSAFE_INPUT, optional=True),
                      replace(FALLBACK_LOGITS, doc=_FAILSAFE_INPUT, optional=True),
                      replace(TEXT_STATS, doc=_FAILSAFE_INPUT, optional=True),
                      replace(REGION_LABELS, doc="absent: lesions are not named by bone, no Bone Scan Index", optional=True),
                      replace(IMAGE, doc="the counts, so the view that shows a lesion more clearly names it (anatomy.view_weights)",
                              optional=True),
                      replace(REPORT_REGIONS, doc="absent in the U-Net ensemble: no named-place prior", optional=True),
                      replace(REPORT_NAMED, doc="absent in the U-Net ensemble: lesions named from the image alone", optional=True),
                      replace(REPORT_BENIGN, doc="absent in the U-Net ensemble: the BSI counts every lesion", optional=True))
POSTPROCESS_OUTPUTS = (ENS_MASK, ENS_PROBABILITY, ENS_LESIONS)

ENSEMBLE_INPUTS = (ENS_IMAGE, ENS_REPORT, ENS_PIXEL_SPACING, ENS_ACCESSION, ENS_STUDY_UID)
ENSEMBLE_UNET_INPUTS = (ENS_IMAGE, ENS_PIXEL_SPACING)
ENSEMBLE_OUTPUTS = POSTPROCESS_OUTPUTS

# ----------------------------------------------------------------------------- Triton model names
PREPROCESS_MODEL = "preprocess"
ENSEMBLE_MODEL = "bonescan"
ENSEMBLE_UNET_MODEL = "bonescan_unet"
TOKENIZER_MODEL = "tokenizer"
TEXT_ENCODER_MODEL = "text_encoder"
SEGMENTER_MODEL = "segmenter"
SEGMENTER_UNET_MODEL = "segmenter_unet"
POSTPROCESS_MODEL = "postprocess"

# ----------------------------------------------------------------------------- custom metrics
#: The python steps' own Prometheus metrics (Triton's custom-metrics API, on Triton's metrics port beside
#: the nv_* ones): name -> (type, labels, what it counts). The Grafana dashboard and the alert rules in
#: deploy/ (bonescan.serving.deploy) use these names and no others.
BONESCAN_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "bonescan_requests_refused_total": ("counter", ("reason",), "requests preprocess refused, by reason"),
    "bonescan_lesions_per_scan": ("histogram", (), "lesions in one answer"),
    "bonescan_reports_total": ("counter", ("present",), "requests with / without a report"),
    "bonescan_tokenizer_truncations_total": ("counter", (), "reports cut at the tokenizer's max_tokens"),
}

# ----------------------------------------------------------------------------- dynamic axes
#: Names of the dynamic axes (the ONNX graphs' symbolic dims). Axis 0 of every tensor is the batch;
#: axis 1 of the text tensors is the token axis (the tokenizer pads to a fixed length, but the graphs
#: take any length, so a shorter report could be sent shorter).
BATCH = "batch"
TOKENS = "tokens"
#: Triton's max_batch_size unless ``repo build --max-batch-size`` says otherwise. A TensorRT engine's
#: batch range must reach the repository's max_batch_size (``repo build`` refuses it otherwise), so
#: ``export trt`` and ``export verify-gpu`` build for this same number by default.
MAX_BATCH_SIZE = 8
#: The shortest token axis a TensorRT optimisation profile accepts; the longest, and the optimum, is
#: the tokenizer's fixed length (TOKENIZER.max_tokens), the only length Triton ever sends.
MIN_TOKENS = 8


def axis_range(axis: str, max_batch: int = MAX_BATCH_SIZE, tokens: int = TOKENIZER.max_tokens) -> tuple[int, int, int]:
    """(min, opt, max) of a dynamic axis in a TensorRT optimisation profile.

    Batch: 1 .. ``max_batch`` (the Triton max_batch_size), optimum half of it (what a busy dynamic
    batcher forms); tokens: MIN_TOKENS .. ``tokens``, optimum ``tokens`` (the fixed length).
    """
    if axis == BATCH:
        return 1, max(1, max_batch // 2), max_batch
    if axis == TOKENS:
        return MIN_TOKENS, tokens, tokens
    raise ValueError(f"unknown axis {axis!r}")


# ----------------------------------------------------------------------------- models and graphs
@dataclass(frozen=True)
class ModelSpec:
    """A Triton model's inputs and outputs, in the order its config.pbtxt lists them (python-backend
    models unpack them in that order)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}")


@dataclass(frozen=True)
class GraphSpec(ModelSpec):
    """A deployable graph, declared once the way Optimum's model configs do: its inputs, outputs and,
    per tensor, the dynamic axes ``{axis: BATCH | TOKENS}``.

    Everything that names a graph tensor or decides which of its dims may vary reads this: the ONNX
    export (input / output names, ``dynamic_axes``, the check against the contract), the TensorRT
    lint (only these axes may be symbolic), the TensorRT optimisation profiles (:func:`axis_range`
    per axis) and the Triton configs. ``export_name`` is the graph's file stem and its key in an
    export folder's model.json: the U-Net's graph is ``segmenter.onnx`` too, served as
    ``segmenter_unet``. A dim of -1 that is not a dynamic axis is fixed per model (the text width,
    ``text_hidden`` in model.json).
    """

    export_name: str = ""
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for t in self.inputs + self.outputs:
            axes = self.dynamic_axes.get(t.name)
            if axes is None or axes.get(0) != BATCH:
                raise ValueError(f"{self.name}: {t.name} needs axis 0 = {BATCH!r} in dynamic_axes")
            for axis, label in axes.items():
                if label not in (BATCH, TOKENS) or (axis > 0 and (axis > len(t.dims) or t.dims[axis - 1] != DYN)):
                    raise ValueError(f"{self.name}: {t.name} axis {axis} ({label}) is not a dynamic dim of {t.dims}")
        unknown = set(self.dynamic_axes) - {t.name for t in self.inputs + self.outputs}
        if unknown:
            raise ValueError(f"{self.name}: dynamic_axes name tensors it does not have: {sorted(unknown)}")

    @property
    def onnx_file(self) -> str:
        return f"{self.export_name}.onnx"

    def onnx_dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``dynamic_axes`` for ``torch.onnx.export``."""
        return {name: dict(axes) for name, axes in self.dynamic_axes.items()}

    def dynamic_dims(self) -> dict[str, set[int]]:
        """tensor -> the dims that may be symbolic (batch included)."""
        return {name: set(axes) for name, axes in self.dynamic_axes.items()}


_BATCH_AXES = {0: BATCH}
_TEXT_AXES = {0: BATCH, 1: TOKENS}

TEXT_ENCODER_GRAPH = GraphSpec(
    TEXT_ENCODER_MODEL, TEXT_ENCODER_INPUTS, TEXT_ENCODER_OUTPUTS, export_name="text_encoder",
    dynamic_axes={INPUT_IDS.name: _TEXT_AXES, ATTENTION_MASK.name: _TEXT_AXES, TEXT_FEATURES.name: _TEXT_AXES})
SEGMENTER_GRAPH = GraphSpec(
    SEGMENTER_MODEL, SEGMENTER_INPUTS, SEGMENTER_OUTPUTS, export_name="segmenter",
    dynamic_axes={IMAGE.name: _BATCH_AXES, TEXT_FEATURES.name: _TEXT_AXES, ATTENTION_MASK.name: _TEXT_AXES,
                  REPORT_REGIONS.name: _BATCH_AXES, LOGITS.name: _BATCH_AXES, TEXT_MAP.name: _BATCH_AXES, FALLBACK_LOGITS.name: _BATCH_AXES,
                  REGION_LABELS.name: _BATCH_AXES})
SEGMENTER_UNET_GRAPH = GraphSpec(
    SEGMENTER_UNET_MODEL, SEGMENTER_UNET_INPUTS, SEGMENTER_UNET_OUTPUTS, export_name="segmenter",
    dynamic_axes={IMAGE.name: _BATCH_AXES, LOGITS.name: _BATCH_AXES, REGION_LABELS.name: _BATCH_AXES})
#: graph name (= its Triton model) -> graph
GRAPHS = {g.name: g for g in (TEXT_ENCODER_GRAPH, SEGMENTER_GRAPH, SEGMENTER_UNET_GRAPH)}
#: the graphs an export of each model kind (ModelConfig.model) holds, in export order
MODEL_GRAPHS = {"dualpath": (TEXT_ENCODER_GRAPH, SEGMENTER_GRAPH), "unet": (SEGMENTER_UNET_GRAPH,)}

# ----------------------------------------------------------------------------- ensembles
PREPROCESS_SPEC = ModelSpec(PREPROCESS_MODEL, PREPROCESS_INPUTS, PREPROCESS_OUTPUTS)
TOKENIZER_SPEC = ModelSpec(TOKENIZER_MODEL, TOKENIZER_INPUTS, TOKENIZER_OUTPUTS)
POSTPROCESS_SPEC = ModelSpec(POSTPROCESS_MODEL, POSTPROCESS_INPUTS, POSTPROCESS_OUTPUTS)


@dataclass(frozen=True)
class Step:
    """One step of an ensemble: a model, and the ensemble tensor behind each input / output it uses."""

    model: ModelSpec
    input_map: tuple[tuple[str, str], ...]  # (model input, ensemble tensor)
    output_map: tuple[tuple[str, str], ...]  # (model output, ensemble tensor)

    def reads(self) -> set[str]:
        return {v for _, v in self.input_map}

    def writes(self) -> set[str]:
        return {v for _, v in self.output_map}


def step(model: ModelSpec, inputs: tuple[TensorSpec, ...] | None = None, outputs: tuple[TensorSpec, ...] | None = None) -> Step:
    """A step using ``inputs`` / ``outputs`` of ``model`` (default: all of them) under their own
    names; only an optional input may be left out."""
    inputs = model.inputs if inputs is None else inputs
    outputs = model.outputs if outputs is None else outputs
    for t in inputs + outputs:
        model.tensor(t.name)
    left_out = [t.name for t in model.inputs if not t.optional and t.name not in {i.name for i in inputs}]
    if left_out:
        raise ValueError(f"a {model.name} step must feed {left_out}")
    return Step(model, tuple((t.name, t.name) for t in inputs), tuple((t.name, t.name) for t in outputs))


@dataclass(frozen=True)
class EnsembleSpec:
    """An ensemble, declared as a chain of steps; ``bonescan repo build`` generates its config.pbtxt.

    Checked when the contract is imported: the first step reads every ensemble input and no later
    step reads one (the first step checks them all); every later step reads an output of the step
    before it, so at most one step of a request is in flight and a refused request has no step left
    running (Triton 2.51 deadlocked its gRPC frontend when a parallel step finished after the
    ensemble had already failed); each step's inputs exist, with its dtypes, when it runs; every
    ensemble output is produced.
    """

    name: str
    doc: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        dtypes = {t.name: t.dtype for t in self.inputs}
        if not self.steps or self.steps[0].reads() != set(dtypes):
            raise ValueError(f"{self.name}: the first step must read every ensemble input, and only those")
        for i, s in enumerate(self.steps):
            if i > 0 and s.reads() & {t.name for t in self.inputs}:
                raise ValueError(f"{self.name}: {s.model.name} reads an ensemble input the first step has not checked")
            if i > 0 and not s.reads() & self.steps[i - 1].writes():
                raise ValueError(f"{self.name}: {s.model.name} can start before {self.steps[i - 1].model.name} ends")
            for key, tensor in s.input_map:
                if dtypes.get(tensor) != s.model.tensor(key).dtype:
                    raise ValueError(f"{self.name}: {s.model.name} input {key} needs {tensor} as "
                                     f"{s.model.tensor(key).dtype}, the chain has {dtypes.get(tensor)}")
            dtypes.update({tensor: s.model.tensor(key).dtype for key, tensor in s.output_map})
        for t in self.outputs:
            if dtypes.get(t.name) != t.dtype:
                raise ValueError(f"{self.name}: no step produces output {t.name} as {t.dtype}")

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(s.model.name for s in self.steps)


ENSEMBLE_CHAIN = EnsembleSpec(
    ENSEMBLE_MODEL, "the ensemble clinical software calls", ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS,
    (step(PREPROCESS_SPEC), step(TOKENIZER_SPEC), step(TEXT_ENCODER_GRAPH), step(SEGMENTER_GRAPH), step(POSTPROCESS_SPEC)))
ENSEMBLE_UNET_CHAIN = EnsembleSpec(
    ENSEMBLE_UNET_MODEL, "the image-only baseline", ENSEMBLE_UNET_INPUTS, ENSEMBLE_OUTPUTS,
    (step(PREPROCESS_SPEC, ENSEMBLE_UNET_INPUTS, (IMAGE, PIXEL_SPACING)), step(SEGMENTER_UNET_GRAPH),
     step(POSTPROCESS_SPEC, (LOGITS, PIXEL_SPACING, REGION_LABELS, IMAGE))))
#: ensemble name -> chain; the dual-path one first (``repo build`` builds the U-Net one with --baseline)
ENSEMBLES = {e.name: e for e in (ENSEMBLE_CHAIN, ENSEMBLE_UNET_CHAIN)}

# ----------------------------------------------------------------------------- postprocess
#: A pixel is lesion when sigmoid(logit) >= THRESHOLD.
THRESHOLD = 0.5
#: The Bone Scan Index counts a lesion's pixels at sigmoid(logit) >= BSI_THRESHOLD (postprocess.bsi_labels):
#: the mask at THRESHOLD outlines a blurred hot spot wider than the lesion (make demo's checkpoints overstated
#: the BSI by +0.29 / +0.33 pp on average on their validation scans). Chosen on those validation scans, for the
#: dual-path and the U-Net checkpoint alike: the smallest median BSI error of 0.5, 0.6 ... 0.95 (README "Anatomy")
BSI_THRESHOLD = 0.9
#: A lesion is a connected component of lesion pixels, 8-connected (diagonal neighbours belong to it).
EIGHT = np.ones((3, 3), dtype=bool)
#: Connected components (8-connectivity) smaller than this many pixels are dropped.
MIN_LESION_PIXELS = 3


def spec_table() -> dict:
    """Every tensor of the deployment as plain data (written into the export description)."""
    return {
        "contract_version": CONTRACT_VERSION,
        **{g.name: {"inputs": [t.to_dict() for t in g.inputs], "outputs": [t.to_dict() for t in g.outputs]}
           for g in GRAPHS.values()},
        "ensemble": {
            "inputs": [t.to_dict() for t in ENSEMBLE_INPUTS],
            "outputs": [t.to_dict() for t in ENSEMBLE_OUTPUTS],
        },
        "tokenizer": asdict(TOKENIZER),
        "threshold": THRESHOLD,
        "min_lesion_pixels": MIN_LESION_PIXELS,
    }
