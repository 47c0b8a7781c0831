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
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

import triton_python_backend_utils as pb_utils  # noqa: E402

from bonescan.serving.pybackend import config_tensors, gather, respond  # noqa: E402
from bonescan.tokenize import ReportTokenizer, decode_report  # noqa: E402
from bonescan.validate import reports_problem  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        inputs, outputs = config_tensors(args["model_config"])
        (self.report,) = inputs
        self.ids, self.mask, self.stats = outputs
        here = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = ReportTokenizer(os.path.join(here, "tokenizer.json"))
        pb_utils.Logger.log_info(f"tokenizer: {self.tokenizer.vocab_size} tokens in its vocabulary, {int(self.tokenizer.known.sum())} "
                                 f"known to the text encoder, {self.tokenizer.max_tokens} per report")

    def _check(self, feed):
        return reports_problem(feed[self.report.name])

    def execute(self, requests):
        arrays, good, sizes, errors = gather(pb_utils, requests, [self.report.name], self._check)
        outputs = {}
        if good:
            # decoded a second time (the check above threw the text away): a few microseconds per report
            texts = [decode_report(raw) for arr in arrays[self.report.name] for raw in arr.reshape(-1)]
            ids, mask = self.tokenizer(texts)
            outputs = {self.ids.name: ids.astype(self.ids.dtype, copy=False), self.mask.name: mask.astype(self.mask.dtype, copy=False),
                       self.stats.name: self.tokenizer.text_stats(ids, mask, texts).astype(self.stats.dtype, copy=False)}
        return respond(pb_utils, len(requests), good, sizes, errors, outputs)
