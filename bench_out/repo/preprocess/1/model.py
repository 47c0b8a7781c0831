"""preprocess: checks everything a request brings and passes it on; the first step of both ensembles.

IMAGE (NaN / Inf, negative or too large counts, an empty view), PIXEL_SPACING (an impossible
spacing) and, in the dual-path ensemble, REPORT (valid UTF-8, within the size limit; never echoed)
and the study's ACCESSION_NUMBER / STUDY_INSTANCE_UID where the caller sends them (a report that
names another study is refused: bonescan/study.py) are checked here, before any other step runs. A bad request gets an error that names the field and
the problem; the other requests in the batch go on. The checks are bonescan/validate.py and
bonescan/tokenize.py, the same ones the client runs before sending.

Why the report is checked here and not in the tokenizer: the ensemble is one chain, so a refused
request has no other step in flight (Triton 2.51 deadlocked its gRPC frontend when a parallel step
finished after the ensemble had already failed; see contract.py).

Tensor names, dtypes and which input is optional come from the model's config (generated from
contract.PREPROCESS_INPUTS / PREPROCESS_OUTPUTS, in that order).

With ``$BONESCAN_REQUEST_LOG`` set (only `bonescan bench kill` sets it), the Triton request id of
every request is appended to that file before it is checked (pybackend.RequestLog): the server-side
count of how many times each request was executed.

Metrics and the request log (bonescan/serving/telemetry.py): every refused request counts in
``bonescan_requests_refused_total{reason}``, reason = which check refused it (a fixed set, never the
message); each request gets one JSON line on stderr (request id, outcome, reason, duration), nothing
of its content. Triton's warm-up requests are left out of both.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from bonescan.contract import ENSEMBLE_MODEL, ENSEMBLE_UNET_MODEL  # noqa: E402
from bonescan.serving.pybackend import (  # noqa: E402
    RequestLog,
    concat_padded,
    config_tensors,
    gather,
    keep_request_memory,
    respond,
)
from bonescan.serving.telemetry import REQUESTS_REFUSED, StepTelemetry, outcomes_of  # noqa: E402
from bonescan.validate import image_problem, reports_problem, spacing_problem, study_problem  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        keep_request_memory()  # per-request arrays reuse the heap (serving/pybackend.py)
        inputs, outputs = config_tensors(args["model_config"])
        self.image_in, self.spacing_in, self.report_in, self.accession_in, self.study_uid_in = inputs
        self.image_out, self.spacing_out, self.report_out = outputs
        self.names = [t.name for t in inputs]
        self.optional = [t.name for t in inputs if t.optional]
        self.request_log = RequestLog.from_env()
        self.telemetry = StepTelemetry(pb_utils, json.loads(args["model_config"]), [REQUESTS_REFUSED])
        self._reasons = {}  # a refusal's message -> which check gave it (REFUSAL_REASONS), per execute()

    def _refuse(self, problem, reason):
        if problem:
            self._reasons[problem] = reason
        return problem

    def _check(self, feed):
        for img in feed[self.image_in.name]:
            problem = image_problem(img, self.image_in.name)
            if problem:
                return self._refuse(problem, "image")
        for s in feed[self.spacing_in.name]:
            problem = spacing_problem(s, self.spacing_in.name)
            if problem:
                return self._refuse(problem, "pixel_spacing")
        report = feed.get(self.report_in.name)
        if report is not None:
            problem = reports_problem(report, self.report_in.name)
            if problem:
                return self._refuse(problem, "report")
        return self._refuse(study_problem(report, feed.get(self.accession_in.name), feed.get(self.study_uid_in.name),
                                          self.report_in.name, self.accession_in.name, self.study_uid_in.name), "study")

    def execute(self, requests):
        started = time.perf_counter()
        warmup = self.telemetry.warming_up()
        if self.request_log is not None and not warmup:
            self.request_log.record(requests)
        self._reasons = {}
        arrays, good, sizes, errors = gather(pb_utils, requests, self.names, self._check, optional=self.optional)
        outputs = {}
        if good:
            # requests from the U-Net ensemble carry no report: their rows get b"" (that ensemble
            # does not ask for the output, but one batch may hold requests from both ensembles)
            reports = [r if r is not None else np.full((n, 1), b"", dtype=self.report_out.dtype)
                       for r, n in zip(arrays[self.report_in.name], sizes)]
            outputs = {
                self.image_out.name: concat_padded(arrays[self.image_in.name]).astype(self.image_out.dtype, copy=False),
                self.spacing_out.name: concat_padded(arrays[self.spacing_in.name]).astype(self.spacing_out.dtype),
                self.report_out.name: np.concatenate(reports, axis=0).astype(self.report_out.dtype),
            }
        responses = respond(pb_utils, len(requests), good, sizes, errors, outputs)
        if not warmup:
            reasons = {i: self._reasons.get(msg, "missing_input" if msg.endswith(" is missing") else "other")
                       for i, msg in errors.items()}
            for reason in reasons.values():
                self.telemetry.refused(reason)
            ensembles, scans = [], []
            for r in requests:  # the U-Net ensemble sends no REPORT
                has_report = pb_utils.get_input_tensor_by_name(r, self.report_in.name) is not None
                ensembles.append(ENSEMBLE_MODEL if has_report else ENSEMBLE_UNET_MODEL)
                image = pb_utils.get_input_tensor_by_name(r, self.image_in.name)
                scans.append(int(image.shape()[0]) if image is not None else None)
            self.telemetry.log_requests(requests, outcomes_of(len(requests), errors, reasons), started,
                                        ensembles=ensembles, scans=scans)
        return responses

    def finalize(self):
        if self.request_log is not None:
            self.request_log.close()
