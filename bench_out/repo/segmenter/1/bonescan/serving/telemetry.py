"""What the python steps report about the requests they serve: custom Prometheus metrics (through
the python backend's custom metrics API, on Triton's metrics port next to its own ``nv_*`` metrics)
and one structured JSON log line per request and step.

The metrics' names, kinds and label names are declared once, in ``contract.BONESCAN_METRICS`` (which
``deploy/``'s dashboards and alert rules read too); the label values and the histogram's buckets are
defined here. The python steps create them, the tests query them through a real Prometheus. Label
values come from the fixed sets below, never from a request: no report text, accession number, UID
or request id is ever a label value.

The JSON log line (:func:`request_log_line`) names the request id only when it looks like a random
token (a UUID, or 32-64 hex digits such as a W3C trace id); any other id is written as ``"redacted"``,
because a caller could have put an accession number in it. Report text never appears.

Triton runs warm-up requests (``model_warmup``, written by ``bonescan repo build``) through every
instance before the model is ready; they are not real requests, so :class:`StepTelemetry` counts
them from the model's config and leaves them out of metrics and the request log.

Runs inside Triton's python backend (copied next to model.py by ``bonescan repo build``) and is
imported by the tests: standard library and bonescan.contract only, ``pb_utils`` is passed in.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bonescan.contract import BONESCAN_METRICS, ENSEMBLE_MODEL, ENSEMBLE_UNET_MODEL

#: why preprocess refused a request: which check refused it (bonescan.validate's checks, as preprocess
#: calls them). A fixed set: each is a ``reason`` of bonescan_requests_refused_total, created at 0 when
#: preprocess loads; never the error message.
REFUSAL_REASONS = ("image", "pixel_spacing", "report", "study", "missing_input", "other")
#: ``present`` of bonescan_reports_total: whether a dual-path scan came with a report (non-blank text)
REPORT_PRESENT = ("true", "false")
#: the ensembles (a request log line's ``ensemble``)
ENSEMBLES = (ENSEMBLE_MODEL, ENSEMBLE_UNET_MODEL)
#: buckets (upper bounds, lesions) of bonescan_lesions_per_scan; Prometheus adds +Inf
LESION_BUCKETS = (0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)


@dataclass(frozen=True)
class MetricSpec:
    """One custom metric family: its name as Prometheus shows it, kind, help and label names."""

    name: str
    kind: str  # "COUNTER" | "GAUGE" | "HISTOGRAM" (pb_utils.MetricFamily's kinds)
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None  # HISTOGRAM only


def _spec(name: str, buckets: tuple[float, ...] | None = None) -> MetricSpec:
    """A metric as contract.BONESCAN_METRICS declares it (name, kind, labels, what it counts)."""
    kind, labels, doc = BONESCAN_METRICS[name]
    return MetricSpec(name, kind.upper(), doc, tuple(labels), buckets)


#: per request preprocess refused, by ``reason`` (REFUSAL_REASONS)
REQUESTS_REFUSED = _spec("bonescan_requests_refused_total")
#: per scan of the dual-path ensemble that passed the checks (counted by the tokenizer), by ``present``
REPORTS = _spec("bonescan_reports_total")
#: per report longer than contract.TOKENIZER.max_tokens (the model read only its start)
TOKENIZER_TRUNCATIONS = _spec("bonescan_tokenizer_truncations_total")
#: per answered scan (postprocess): its lesions; the histogram's _count is scans, its _sum lesions
LESIONS_PER_SCAN = _spec("bonescan_lesions_per_scan", LESION_BUCKETS)

METRICS = (REQUESTS_REFUSED, REPORTS, TOKENIZER_TRUNCATIONS, LESIONS_PER_SCAN)
#: every value a label may take (every combination is created at 0 when a step loads)
LABEL_VALUES = {"reason": REFUSAL_REASONS, "present": REPORT_PRESENT}

#: request ids written to the log as they are: random tokens only (see the module's docstring)
_TOKEN_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32,64}")
REDACTED = "redacted"
#: the ``event`` of a request log line (log stacks can select on it)
REQUEST_EVENT = "bonescan.request"


def loggable_request_id(raw: str | None) -> str | None:
    """A request id as the log may show it: None when absent, itself when a random token, else "redacted"."""
    if not raw:
        return None
    return raw if _TOKEN_ID.fullmatch(raw) else REDACTED


def request_log_line(model: str, request_id: str | None, outcome: str, duration_ms: float, *,
                     reason: str | None = None, ensemble: str | None = None, scans: int | None = None,
                     now: float | None = None) -> str:
    """One JSON log line (no newline) for one request at one step: when, which step (``model``),
    the request id (:func:`loggable_request_id`), ``outcome`` ("ok" / "refused" / "failed"), the
    refusal's reason (REFUSAL_REASONS), the ensemble, the scans it carried, and ``duration_ms``: how long
    the step's execute() took for the batch this request was in. Nothing of a request's content."""
    if reason is not None and reason not in REFUSAL_REASONS:
        reason = "other"
    now = time.time() if now is None else now
    record = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
        "level": "info" if outcome == "ok" else "warning",
        "event": REQUEST_EVENT,
        "model": model,
        "request_id": loggable_request_id(request_id),
        "outcome": outcome,
        "duration_ms": round(float(duration_ms), 3),
    }
    if reason is not None:
        record["reason"] = reason
    if ensemble is not None:
        record["ensemble"] = ensemble
    if scans is not None:
        record["scans"] = int(scans)
    record["pid"] = os.getpid()
    return json.dumps(record, separators=(",", ":"))


def warmup_executions(model_config: dict) -> int:
    """How many execute() calls Triton's warm-up makes on each instance of a model with this config:
    per ``model_warmup`` sample of batch_size > 0, ``count`` runs (at least 1), each one execute() of
    batch_size requests (Triton core, TritonModelInstance::WarmUp)."""
    total = 0
    for sample in model_config.get("model_warmup") or []:
        if int(sample.get("batch_size", 0) or 0) > 0:
            total += max(int(sample.get("count", 0) or 0), 1)
    return total


def _combinations(names: Sequence[str]) -> list[dict[str, str]]:
    combos: list[dict[str, str]] = [{}]
    for n in names:
        combos = [{**c, n: v} for c in combos for v in LABEL_VALUES[n]]
    return combos


class StepTelemetry:
    """A python step's metrics and request log.

    ``pb_utils`` is the python backend's module; ``metrics`` the specs this step updates (their
    families and every label combination are created here, so they show as 0 before the first request).
    Should the backend lack the custom metrics API, the step still serves (a warning is logged) and
    the metrics stay absent, which the tests would notice.

    The JSON request log goes to the step's standard error (Triton's output: the log file or the
    container's log), one ``os.write`` per line. ``$BONESCAN_REQUEST_JSON_LOG=0`` turns it off.
    """

    def __init__(self, pb_utils, model_config: dict, metrics: Iterable[MetricSpec]):
        self.pb = pb_utils
        self.model = str(model_config.get("name", "?"))
        self.warmup_left = warmup_executions(model_config)
        self.log_enabled = os.environ.get("BONESCAN_REQUEST_JSON_LOG", "1") != "0"
        self._families: list = []  # kept alive as long as their metrics (the backend's rule)
        self._metrics: dict[tuple[str, tuple[tuple[str, str], ...]], object] = {}
        try:
            for spec in metrics:
                kind = getattr(pb_utils.MetricFamily, spec.kind)
                family = pb_utils.MetricFamily(name=spec.name, description=spec.description, kind=kind)
                self._families.append(family)
                for labels in _combinations(spec.labels):
                    kwargs = {"buckets": list(spec.buckets)} if spec.buckets is not None else {}
                    self._metrics[(spec.name, tuple(sorted(labels.items())))] = family.Metric(labels=labels, **kwargs)
        except Exception as e:  # noqa: BLE001 - an older backend: serve without custom metrics
            self._metrics.clear()
            pb_utils.Logger.log_warn(f"{self.model}: custom metrics unavailable ({type(e).__name__}: {e}); serving without them")

    def warming_up(self) -> bool:
        """True for the execute() calls of Triton's warm-up (the first ones of this instance): they
        update no metric and write no request log. Call once at the start of every execute()."""
        if self.warmup_left > 0:
            self.warmup_left -= 1
            if self.warmup_left == 0:
                self.pb.Logger.log_info(f"{self.model}: warm-up done")
            return True
        return False

    def _metric(self, spec: MetricSpec, **labels: str):
        return self._metrics.get((spec.name, tuple(sorted(labels.items()))))

    def count(self, spec: MetricSpec, n: float = 1, **labels: str) -> None:
        if n:
            m = self._metric(spec, **labels)
            if m is not None:
                m.increment(float(n))

    def observe(self, spec: MetricSpec, value: float, **labels: str) -> None:
        m = self._metric(spec, **labels)
        if m is not None:
            m.observe(float(value))

    def refused(self, reason: str, n: int = 1) -> None:
        self.count(REQUESTS_REFUSED, n, reason=reason if reason in REFUSAL_REASONS else "other")

    def log_requests(self, requests: Sequence, outcomes: Sequence[tuple[str, str | None]], started: float, *,
                     ensembles: Sequence[str | None] | None = None, scans: Sequence[int | None] | None = None) -> None:
        """One JSON line per request: ``outcomes[i]`` = (outcome, reason or None); ``started`` =
        time.perf_counter() at the start of execute()."""
        if not self.log_enabled:
            return
        duration_ms = (time.perf_counter() - started) * 1000.0
        now = time.time()
        lines = []
        for i, r in enumerate(requests):
            try:
                rid = r.request_id()
            except Exception:  # noqa: BLE001 - no id available
                rid = None
            outcome, reason = outcomes[i]
            lines.append(request_log_line(self.model, rid, outcome, duration_ms, reason=reason,
                                          ensemble=ensembles[i] if ensembles else None,
                                          scans=scans[i] if scans else None, now=now))
        for line in lines:
            os.write(2, (line + "\n").encode("utf-8"))


def outcomes_of(n_requests: int, errors: dict[int, str], reasons: dict[int, str] | None = None) -> list[tuple[str, str | None]]:
    """pybackend.gather's ``errors`` (and the reason of each, default "other") -> (outcome, reason) per request."""
    reasons = reasons or {}
    return [("refused", reasons.get(i, "other")) if i in errors else ("ok", None) for i in range(n_requests)]
