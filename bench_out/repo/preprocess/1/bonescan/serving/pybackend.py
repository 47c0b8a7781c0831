"""Helpers for Triton python-backend models: read the model's tensors from its config, batch many
requests into one array, split the result back, answer bad requests with an error of their own
(the others in the batch still succeed).

Runs inside Triton's python backend (``triton_python_backend_utils`` is importable there only).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bonescan.contract import config_dtype_to_numpy


@dataclass(frozen=True)
class ConfigTensor:
    """One input or output of a model as its config.pbtxt declares it."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]
    optional: bool = False


def config_tensors(model_config: str | dict) -> tuple[list[ConfigTensor], list[ConfigTensor]]:
    """``args["model_config"]`` -> (inputs, outputs) with their names, numpy dtypes and dims.

    They come in config order, which is the order of the contract's declaration the config was
    generated from (``bonescan repo build``), so a model may unpack them by position.
    """
    cfg = json.loads(model_config) if isinstance(model_config, str) else model_config

    def one(t: dict) -> ConfigTensor:
        return ConfigTensor(t["name"], np.dtype(config_dtype_to_numpy(t["data_type"])),
                            tuple(int(d) for d in t.get("dims", [])), bool(t.get("optional", False)))

    return [one(t) for t in cfg.get("input", [])], [one(t) for t in cfg.get("output", [])]


#: glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: arrays up to this size come from the heap, not from a fresh mmap (a batch of 8 scans' counts is 16 MiB)
MMAP_THRESHOLD = 32 << 20
#: freed heap memory up to this size stays with the process for the next request
TRIM_THRESHOLD = 64 << 20


def keep_request_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Let this process reuse the memory of one request's arrays for the next (glibc only; False elsewhere).

    A python step allocates arrays of 0.25-4 MB per request (a scan's counts, logits, probabilities), several
    alive at once. glibc serves allocations above its mmap threshold with a fresh mmap, and hands a freed heap
    top above its trim threshold (twice the largest block freed so far) back to the OS: either way the next
    request faults the same pages in again (tests/test_contract.py counts them). A loop over one scan in-process
    hardly shows it; inside Triton the postprocess step took 7.9 / 9.4 ms without this
    and 5.5 / 4.9 ms with it (two alternating rounds, `bonescan bench anatomy-cost`'s repository without the
    anatomy output, 2-core Xeon). The cost: up to ``trim_threshold`` of freed memory kept per process."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1)


def error_response(pb_utils, message: str):
    code = getattr(getattr(pb_utils, "TritonError", None), "INVALID_ARG", None)
    err = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)


def gather(pb_utils, requests: Sequence, names: Sequence[str],
           check: Callable[[dict[str, np.ndarray]], str | None] | None = None,
           optional: Sequence[str] = ()):
    """Inputs of every request -> (per-name lists of arrays of the good requests, their indexes,
    their batch sizes, {request index: error message}).

    An input named in ``optional`` may be absent (the U-Net ensemble sends no report); its list then
    holds None for that request, so the lists stay aligned with ``good``.
    """
    arrays: dict[str, list[np.ndarray]] = {n: [] for n in names}
    good: list[int] = []
    sizes: list[int] = []
    errors: dict[int, str] = {}
    for i, r in enumerate(requests):
        feed: dict[str, Any] = {}  # an array per name, None for an absent optional input
        for n in names:
            t = pb_utils.get_input_tensor_by_name(r, n)
            if t is None:
                if n in optional:
                    feed[n] = None
                    continue
                errors[i] = f"input {n} is missing"
                break
            feed[n] = t.as_numpy()
        if i in errors:
            continue
        problem = check(feed) if check else None
        if problem:
            errors[i] = problem
            continue
        for n, arr in feed.items():
            arrays[n].append(arr)
        good.append(i)
        sizes.append(int(feed[names[0]].shape[0]))
    return arrays, good, sizes, errors


def concat_padded(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate along the batch; arrays whose dim 1 differs (token counts) are zero-padded to the longest."""
    if len(parts) == 1:
        return parts[0]
    if parts[0].ndim >= 2 and len({p.shape[1] for p in parts}) > 1:
        t = max(p.shape[1] for p in parts)
        parts = [np.pad(p, [(0, 0), (0, t - p.shape[1])] + [(0, 0)] * (p.ndim - 2)) for p in parts]
    return np.concatenate(parts, axis=0)


def respond(pb_utils, n_requests: int, good: list[int], sizes: list[int], errors: dict[int, str],
            outputs: dict[str, np.ndarray]) -> list:
    """Split batched outputs back into one response per request, in request order."""
    responses: list = [None] * n_requests
    start = 0
    for i, b in zip(good, sizes):
        tensors = [pb_utils.Tensor(name, np.ascontiguousarray(arr[start : start + b])) for name, arr in outputs.items()]
        responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        start += b
    for i, msg in errors.items():
        responses[i] = error_response(pb_utils, msg)
    return responses


def fail_all(pb_utils, n_requests: int, message: str) -> list:
    return [error_response(pb_utils, message) for _ in range(n_requests)]


#: environment variable naming the file :class:`RequestLog` appends to (set by `bonescan bench kill`)
REQUEST_LOG_ENV = "BONESCAN_REQUEST_LOG"


class RequestLog:
    """The server-side count of `bonescan bench kill`: the Triton request id of every request a
    model executes, appended to a file, one line ``<id> TAB <pid>`` per request.

    Triton passes the id a client gives ``infer(request_id=...)`` into every step of an ensemble
    (``request.request_id()``), so the first step sees each attempt that reached the server; an id
    on two lines was executed twice (a retry after the server died with the request in flight). The
    pid tells which server process ran it. Ids only: never any content of a request.

    Each request is one ``os.write`` on an ``O_APPEND`` descriptor, before the model works on it: the
    line is in the kernel when the write returns, so a SIGKILL of the server a moment later loses
    nothing, and several instances may append to one file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.pid = os.getpid()

    @classmethod
    def from_env(cls) -> RequestLog | None:
        """The log named by ``$BONESCAN_REQUEST_LOG``, or None (the default: nothing is recorded)."""
        path = os.environ.get(REQUEST_LOG_ENV)
        return cls(path) if path else None

    def record(self, requests: Sequence) -> None:
        for r in requests:
            rid = str(r.request_id() or "").replace("\t", " ").replace("\n", " ")
            if rid:
                os.write(self.fd, f"{rid}\t{self.pid}\n".encode())

    def close(self) -> None:
        os.close(self.fd)


def read_request_log(path: str | os.PathLike) -> Counter[str]:
    """A :class:`RequestLog` file -> how many times each request id was executed (a missing file: none)."""
    counts: Counter[str] = Counter()
    if not os.path.exists(path):
        return counts
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            rid = line.rstrip("\n").split("\t", 1)[0]
            if rid:
                counts[rid] += 1
    return counts
