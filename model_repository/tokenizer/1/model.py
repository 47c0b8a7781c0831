"""tokenizer: report (UTF-8 bytes, already checked by preprocess) -> input_ids, attention_mask (INT32, fixed length).

The WordPiece tokenizer (tokenizer.json, MacBERT's or the one trained with the model) is loaded once
in initialize(); execute() tokenizes every queued report in one batch call. Truncation length and
padding come from bonescan/contract.py (TOKENIZER). An empty report is allowed (the model was
trained with report dropout). preprocess has refused undecodable or oversized text; should such
text arrive anyway, it fails that request only, and the error names the problem, never the text.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bonescan runtime copied here by `bonescan repo build`

import triton_python_backend_utils as pb_utils  # noqa: E402

from bonescan.serving.pybackend import respond  # noqa: E402
from bonescan.tokenize import ReportError, ReportTokenizer, decode_report  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = ReportTokenizer(os.path.join(here, "tokenizer.json"))
        pb_utils.Logger.log_info(f"tokenizer: {self.tokenizer.vocab_size} word pieces, {self.tokenizer.max_tokens} tokens")

    def execute(self, requests):
        texts, good, sizes, errors = [], [], [], {}
        for i, r in enumerate(requests):
            t = pb_utils.get_input_tensor_by_name(r, "report")
            if t is None:
                errors[i] = "input report is missing"
                continue
            try:
                decoded = [decode_report(x) for x in t.as_numpy().reshape(-1)]
            except ReportError as e:
                errors[i] = str(e)
                continue
            texts.extend(decoded)
            good.append(i)
            sizes.append(len(decoded))
        outputs = {}
        if texts:
            ids, mask = self.tokenizer(texts)
            outputs = {"input_ids": ids, "attention_mask": mask}
        return respond(pb_utils, len(requests), good, sizes, errors, outputs)
