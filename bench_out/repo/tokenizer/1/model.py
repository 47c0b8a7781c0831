"""tokenizer: report (UTF-8 bytes, already checked by preprocess) -> input_ids, attention_mask (INT32, fixed
length) and text_stats (the report's tokens, of them unknown to the text encoder, and its words of a skeletal
finding: signals of the fail-safe). Reports are normalised first (bonescan/report_text.py, as in training).

The tokenizer (tokenizer.json: this project's character vocabulary or MacBERT's, with
trained_tokens.json beside it when the text encoder was trained here) is loaded once
in initialize(); execute() tokenizes every queued report in one batch call. Truncation length and
padding come from bonescan/contract.py (TOKENIZER). An empty report is allowed (the model was
trained with report dropout). preprocess has refused undecodable or oversized text; should such
text arrive anyway, it fails that request only, and the error names the problem, never the text.

Tensor names and dtypes come from the model's config (generated from contract.TOKENIZER_INPUTS /
TOKENIZER_OUTPUTS, in that order).

Metrics (bonescan/serving/telemetry.py): per scan, whether it came with a report
(``bonescan_reports_total{present}``, blank text = absent) and whether the report was longer than the
model reads (``bonescan_tokenizer_truncations_total``); one JSON log line per request on stderr. Triton's
warm-up requests are left out.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

import triton_python_backend_utils as pb_utils  # noqa: E402

from bonescan.contract import ENSEMBLE_MODEL  # noqa: E402
from bonescan.serving.pybackend import config_tensors, gather, respond  # noqa: E402
from bonescan.serving.telemetry import REPORTS, TOKENIZER_TRUNCATIONS, StepTelemetry, outcomes_of  # noqa: E402
from bonescan.tokenize import ReportTokenizer, decode_report  # noqa: E402
from bonescan.validate import reports_problem  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        inputs, outputs = config_tensors(args["model_config"])
        (self.report,) = inputs
        self.ids, self.mask, self.stats, *self.places = outputs  # the places: contract.REPORT_PLACES
        self.telemetry = StepTelemetry(pb_utils, json.loads(args["model_config"]), [REPORTS, TOKENIZER_TRUNCATIONS])
        here = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = ReportTokenizer(os.path.join(here, "tokenizer.json"))
        pb_utils.Logger.log_info(f"tokenizer: {self.tokenizer.vocab_size} tokens in its vocabulary, {int(self.tokenizer.known.sum())} "
                                 f"known to the text encoder, {self.tokenizer.max_tokens} per report")

    def _check(self, feed):
        return reports_problem(feed[self.report.name])

    def execute(self, requests):
        started = time.perf_counter()
        warmup = self.telemetry.warming_up()
        arrays, good, sizes, errors = gather(pb_utils, requests, [self.report.name], self._check)
        outputs = {}
        if good:
            # decoded a second time (the check above threw the text away): a few microseconds per report
            texts = [decode_report(raw) for arr in arrays[self.report.name] for raw in arr.reshape(-1)]
            ids, mask = self.tokenizer(texts)
            places = self.tokenizer.report_places(texts)  # one reading of each report for all three
            outputs = {self.ids.name: ids.astype(self.ids.dtype, copy=False), self.mask.name: mask.astype(self.mask.dtype, copy=False),
                       self.stats.name: self.tokenizer.text_stats(ids, mask, texts).astype(self.stats.dtype, copy=False),
                       **{t.name: places[t.name].astype(t.dtype, copy=False) for t in self.places}}
            if not warmup:
                present = sum(1 for t in texts if t.strip())
                self.telemetry.count(REPORTS, present, present="true")
                self.telemetry.count(REPORTS, len(texts) - present, present="false")
                self.telemetry.count(TOKENIZER_TRUNCATIONS, sum(self.tokenizer.last_truncated))
        responses = respond(pb_utils, len(requests), good, sizes, errors, outputs)
        if not warmup:
            # refusals are preprocess's to count (it checks the same report first: none reach here)
            reasons = {i: "missing_input" if msg.endswith(" is missing") else "report" for i, msg in errors.items()}
            self.telemetry.log_requests(requests, outcomes_of(len(requests), errors, reasons), started,
                                        ensembles=[ENSEMBLE_MODEL] * len(requests))
        return responses
