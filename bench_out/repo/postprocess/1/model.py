"""postprocess: logits -> MASK (UINT8), PROBABILITY (FP32) and LESIONS (a JSON list per scan).

Threshold, connected components (8-connectivity, specks below MIN_LESION_PIXELS dropped) and the
lesion list (area in pixels and mm², bounding box, centroid, mean / max probability, side) are
bonescan/postprocess.py, the same functions the offline evaluation uses.

In the dual-path ensemble the segmenter also sends the report's maps and the bundled U-Net's
logits, and the tokenizer how much of the report the model can read: the fail-safe
(bonescan/failsafe.py, thresholds from this model's config parameters, calibrated with the
checkpoint) then decides per scan which answer is given, and LESIONS says which and why. In the
U-Net ensemble those inputs are absent and the logits are the answer. Both ensembles send the
U-Net's anatomy output (region_labels) and the counts: each lesion is named by its bone and the
scan gets its Bone Scan Index (bonescan/anatomy.py). The dual-path ensemble's tokenizer also sends the
bones the report names as metastatic (report_regions): the named-place prior (bonescan/failsafe.py); and the bones
it calls benign (report_benign): the Bone Scan Index leaves the lesions there out.

Tensor names and dtypes come from the model's config (generated from contract.POSTPROCESS_INPUTS /
POSTPROCESS_OUTPUTS, in that order).

Metrics (bonescan/serving/telemetry.py): the lesions of every answered scan go into the histogram
``bonescan_lesions_per_scan`` (its _count is scans, its _sum lesions); one JSON
log line per request on stderr. Triton's warm-up requests are left out.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from bonescan.contract import ENSEMBLE_MODEL, ENSEMBLE_UNET_MODEL  # noqa: E402
from bonescan.failsafe import FailSafeSettings  # noqa: E402
from bonescan.postprocess import postprocess, postprocess_failsafe  # noqa: E402
from bonescan.serving.pybackend import concat_padded, config_tensors, gather, keep_request_memory, respond  # noqa: E402
from bonescan.serving.telemetry import LESIONS_PER_SCAN, StepTelemetry, outcomes_of  # noqa: E402

IMAGE_ONLY = {"answered_by": "unet", "reason": "image-only ensemble"}


class TritonPythonModel:
    def initialize(self, args):
        keep_request_memory()  # per-request arrays reuse the heap (serving/pybackend.py)
        cfg = json.loads(args["model_config"])
        inputs, outputs = config_tensors(cfg)
        (self.logits, self.spacing, self.text_map, self.fallback, self.stats, self.regions, self.image, self.report_regions,
         self.report_named, self.report_benign) = inputs
        self.mask, self.probability, self.lesions = outputs
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        self.settings = FailSafeSettings.from_dict(params, prefix="failsafe_")
        pb_utils.Logger.log_info(f"postprocess: fail-safe {self.settings.to_dict()}")
        self.telemetry = StepTelemetry(pb_utils, cfg, [LESIONS_PER_SCAN])

    def _answer(self, arrays, idx):
        """Rows of one group of requests: with the fail-safe's inputs, or without (the U-Net ensemble)."""
        cat = lambda name: concat_padded([arrays[name][i] for i in idx])  # noqa: E731
        # the anatomy output and the counts (both sent by both ensembles; a client of an older repository may lack them)
        anatomy = {k.name: (cat(k.name) if all(arrays[k.name][i] is not None for i in idx) else None) for k in (self.regions, self.image)}
        named = {"regions": anatomy[self.regions.name], "images": anatomy[self.image.name]}
        if arrays[self.text_map.name][idx[0]] is None:
            masks, prob, lesions = postprocess(cat(self.logits.name), cat(self.spacing.name), extra=IMAGE_ONLY, **named)
        else:
            given = {k.name: cat(k.name) if all(arrays[k.name][i] is not None for i in idx) else None
                     for k in (self.report_regions, self.report_named, self.report_benign)}
            masks, prob, lesions, _ = postprocess_failsafe(cat(self.logits.name), cat(self.fallback.name), cat(self.text_map.name),
                                                           cat(self.stats.name), cat(self.spacing.name), self.settings, **named,
                                                           report_regions=given[self.report_regions.name],
                                                           report_named=given[self.report_named.name],
                                                           report_benign=given[self.report_benign.name])
        return masks, prob, lesions

    def execute(self, requests):
        started = time.perf_counter()
        warmup = self.telemetry.warming_up()
        names = [t.name for t in (self.logits, self.spacing, self.text_map, self.fallback, self.stats, self.regions, self.image,
                                  self.report_regions, self.report_named, self.report_benign)]
        optional = [t.name for t in (self.text_map, self.fallback, self.stats, self.regions, self.image, self.report_regions,
                                     self.report_named, self.report_benign)]
        arrays, good, sizes, errors = gather(pb_utils, requests, names, optional=optional)
        outputs = {}
        parts = {}
        if good:
            # one dynamic batch may hold requests of both ensembles: answer each kind in one call, keep the order
            with_text = [k for k in range(len(good)) if arrays[self.text_map.name][k] is not None]
            without = [k for k in range(len(good)) if arrays[self.text_map.name][k] is None]
            for idx in (with_text, without):
                if idx:
                    masks, prob, lesions = self._answer(arrays, idx)
                    start = 0
                    for k in idx:
                        parts[k] = (masks[start : start + sizes[k]], prob[start : start + sizes[k]], lesions[start : start + sizes[k]])
                        start += sizes[k]
            order = range(len(good))
            outputs = {
                self.mask.name: np.concatenate([parts[k][0] for k in order]).astype(self.mask.dtype, copy=False),
                self.probability.name: np.concatenate([parts[k][1] for k in order]).astype(self.probability.dtype, copy=False),
                self.lesions.name: np.array([[s.encode("utf-8")] for k in order for s in parts[k][2]], dtype=self.lesions.dtype),
            }
        responses = respond(pb_utils, len(requests), good, sizes, errors, outputs)
        if not warmup:
            ensembles = [None] * len(requests)
            for k, i in enumerate(good):
                ensembles[i] = ENSEMBLE_MODEL if arrays[self.text_map.name][k] is not None else ENSEMBLE_UNET_MODEL
                for text in parts[k][2]:  # this request's scans: the LESIONS JSON postprocess just wrote
                    answer = json.loads(text)
                    self.telemetry.observe(LESIONS_PER_SCAN, answer["count"])
            self.telemetry.log_requests(requests, outcomes_of(len(requests), errors), started, ensembles=ensembles,
                                        scans=[sizes[good.index(i)] if i in good else None for i in range(len(requests))])
        return responses
