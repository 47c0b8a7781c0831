"""gRPC clients for the BoneScan ensemble: synchronous (tritonclient.grpc) and asyncio (tritonclient.grpc.aio).

    from bonescan.client import BoneScanClient
    with BoneScanClient("localhost:8001") as c:
        r = c.segment("scan.dcm", report=Path("report.txt"))   # a Path is a file, a str the text
        print(r.summary()); r.save("out")                      # out/<stem>_mask.png ...; never over a result

Connection handling: server live / ready and model ready are checked when connecting; every request
has a timeout; only UNAVAILABLE (server down or restarting) is retried, with exponential backoff;
TLS (root certificate, optional client certificate) and extra headers (a token) are supported;
the server's contract version (and, if given, model hash) must match what this client expects.
Report text never appears in a log line or an error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bonescan import contract as C
from bonescan.client.inputs import Request, ScanLike, prepare
from bonescan.client.result import SegmentationResult
from bonescan.errors import BonescanError
from bonescan.study import ACCESSION, STUDY_UID

log = logging.getLogger("bonescan.client")

RETRYABLE = ("StatusCode.UNAVAILABLE",)


class ClientError(BonescanError):
    """A request could not be served; the message names the input / server and the reason."""


@dataclass
class ClientOptions:
    url: str = "localhost:8001"  # or several servers, comma-separated: round robin (grpc_target)
    model: str = C.ENSEMBLE_MODEL
    model_version: str = ""  # "" = the server's latest
    timeout_s: float = 60.0  # per request
    retries: int = 3  # extra attempts after UNAVAILABLE
    backoff_s: float = 0.5  # first wait; doubles each retry
    ssl: bool = False
    root_certificates: str | None = None  # PEM file of the CA that signed the server's certificate
    private_key: str | None = None  # client certificate (mutual TLS), PEM files
    certificate_chain: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # e.g. {"authorization": "Bearer ..."}
    expected_model_sha256: str | None = None  # first 16 hex digits, as in the ensemble's config
    want_probability: bool = True
    check_on_connect: bool = True


#: the project's ensembles: the only models this client can talk to
ENSEMBLES = {C.ENSEMBLE_MODEL: "image + report", C.ENSEMBLE_UNET_MODEL: "image only"}
#: what Triton answers while it shuts down or unloads a model (requests in flight during Ctrl-C)
STOPPING = ("has no available versions", "Server is stopping")


def _ensembles() -> str:
    return ", ".join(f"{name} ({what})" for name, what in ENSEMBLES.items())


def _what_listens(url: str, ssl: bool = False, timeout: float = 1.0) -> str:
    """Why a gRPC client may not reach ``url``: nothing listens there, an HTTP/1 server does (Triton's
    HTTP or metrics port), or a server that hangs up on plaintext does (TLS). Asks with one plain
    HTTP/1 request: an HTTP server answers it, a gRPC server sends HTTP/2 frames, a TLS one hangs up."""
    import socket

    host, _, port = url.rpartition(":")
    host = host.strip("[]") or "localhost"
    default = "is tritonserver running, and is this its gRPC port? (8001 by default; 8000 is HTTP, 8002 metrics)"
    if not port.isdigit() or "/" in host or "," in host:
        return default
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.0\r\nHost: bonescan\r\n\r\n")
            reply = sock.recv(16)
    except ConnectionRefusedError:
        return f"nothing listens on port {port}: is tritonserver running? (its gRPC port is 8001 by default; 8000 is HTTP)"
    except OSError:
        return default
    if reply.startswith(b"HTTP/"):
        return (f"port {port} answers HTTP/1, not gRPC: it is an HTTP port (Triton's HTTP is 8000 and its metrics 8002 "
                "by default); give the gRPC port (8001 by default)")
    if not reply and not ssl:
        return (f"the server on port {port} hung up on plaintext gRPC: if it uses TLS, give its CA certificate "
                "(--root-cert, or ssl=True and root_certificates=...)")
    return default


def addresses(url: str | Sequence[str]) -> list[str]:
    """``"host:p1,host:p2"`` or ``["host:p1", "host:p2"]`` -> the server addresses, in order."""
    parts = url.split(",") if isinstance(url, str) else [u for item in url for u in str(item).split(",")]
    found = [u.strip() for u in parts if u.strip()]
    if not found:
        raise ClientError("no server address given")
    return found


def grpc_target(url: str | Sequence[str], ssl: bool = False) -> tuple[str, list[tuple[str, Any]] | None]:
    """The gRPC channel target and channel arguments for one or several server addresses.

    One address: itself and None (tritonclient's own channel arguments, today's behaviour). Several:
    client-side load balancing, gRPC's ``round_robin`` policy over a multi-address target
    (``ipv4:10.0.0.1:8001,10.0.0.2:8001``; names are resolved here), with tritonclient's default
    channel arguments (message sizes, keepalive) and the policy added: a plain channel to several
    servers sends everything to one of them. A server that stops answering drops out of the
    rotation (its requests in flight fail with UNAVAILABLE, which the client retries on the others)
    and comes back when it answers again.
    """
    import socket

    found = addresses(url)
    if len(found) == 1:
        return found[0], None
    import tritonclient.grpc as grpcclient

    resolved, names = [], []
    for a in found:
        host, _, port = a.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ClientError(f"{a}: a server address is host:port")
        try:
            info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as e:
            raise ClientError(f"{a}: cannot resolve {host} ({e.strerror or e})") from None
        v4 = [i for i in info if i[0] == socket.AF_INET]
        family, _, _, _, sockaddr = (v4 or info)[0]
        resolved.append((family, sockaddr[0], int(port)))
        names.append(host)
    families = {f for f, _, _ in resolved}
    if len(families) > 1:
        raise ClientError(f"{','.join(found)}: give all servers as IPv4 or all as IPv6 addresses")
    if families == {socket.AF_INET}:
        target = "ipv4:" + ",".join(f"{h}:{p}" for _, h, p in resolved)
    else:
        target = "ipv6:" + ",".join(f"[{h}]:{p}" for _, h, p in resolved)
    ka = grpcclient.KeepAliveOptions()
    args: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", ka.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", ka.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", ka.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", ka.http2_max_pings_without_data),
        ("grpc.lb_policy_name", "round_robin"),
    ]
    if ssl and not _is_ip(names[0]):  # the servers' certificate names the host, not the addresses
        args.append(("grpc.ssl_target_name_override", names[0]))
    return target, args


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _status(e: Exception) -> str:
    s = getattr(e, "status", None)
    return str(s() if callable(s) else s or "")


def _message(e: Exception) -> str:
    m = getattr(e, "message", None)
    return str(m() if callable(m) else (m or e))


def _build_inputs(module, reqs: Sequence[Request], text_guided: bool) -> list:
    images = np.stack([r.image for r in reqs]).astype(np.float32)
    spacing = np.array([r.pixel_spacing for r in reqs], dtype=np.float32)
    ins = [module.InferInput(C.ENS_IMAGE.name, list(images.shape), C.ENS_IMAGE.triton_dtype),
           module.InferInput(C.ENS_PIXEL_SPACING.name, list(spacing.shape), C.ENS_PIXEL_SPACING.triton_dtype)]
    ins[0].set_data_from_numpy(images)
    ins[1].set_data_from_numpy(spacing)
    if text_guided:
        rep = np.array([[r.report.encode("utf-8")] for r in reqs], dtype=np.object_)
        t = module.InferInput(C.ENS_REPORT.name, list(rep.shape), C.ENS_REPORT.triton_dtype)
        t.set_data_from_numpy(rep)
        ins.append(t)
        # the study's identifiers go with the report where the scan has them: the server refuses a
        # report that names another study too (the client already did, before sending)
        for spec, key in ((C.ENS_ACCESSION, ACCESSION), (C.ENS_STUDY_UID, STUDY_UID)):
            if any(r.study.get(key) for r in reqs):
                ids = np.array([[(r.study.get(key) or "").encode("utf-8")] for r in reqs], dtype=np.object_)
                t = module.InferInput(spec.name, list(ids.shape), spec.triton_dtype)
                t.set_data_from_numpy(ids)
                ins.append(t)
    return ins


def _outputs(module, want_probability: bool) -> list:
    names = [C.ENS_MASK.name, C.ENS_LESIONS.name] + ([C.ENS_PROBABILITY.name] if want_probability else [])
    return [module.InferRequestedOutput(n) for n in names]


def _results(res, reqs: Sequence[Request], model: str, t_request: float, want_probability: bool,
             text_guided: bool, model_sha256: str | None = None) -> list[SegmentationResult]:
    masks = res.as_numpy(C.ENS_MASK.name)
    lesions = res.as_numpy(C.ENS_LESIONS.name)
    probs = res.as_numpy(C.ENS_PROBABILITY.name) if want_probability else None
    out = []
    for i, r in enumerate(reqs):
        doc = json.loads(lesions[i, 0])
        les = doc["lesions"]
        if r.pixel_spacing_source == "default":  # the server computed mm² from a spacing nobody measured
            les = [{**lesion, "area_mm2": None} for lesion in les]
        out.append(SegmentationResult(
            mask=masks[i, 0], probability=probs[i, 0] if probs is not None else None, lesions=les,
            model=model, source=r.source, pixel_spacing=r.pixel_spacing,
            timings_ms={"request": round(t_request * 1000, 1)}, anterior=r.image[0],
            answered_by=doc.get("answered_by"), reason=doc.get("reason"), signals=doc.get("signals"),
            pixel_spacing_source=r.pixel_spacing_source,
            report=("given" if r.report.strip() else "no report") if text_guided else "image only", notes=list(r.notes),
            study=dict(r.study), stem=r.stem, report_encoding=r.report_encoding, model_sha256=model_sha256,
            report_source=r.report_source, anatomy=doc.get("anatomy"), image_only=doc.get("image_only"),
            report_sites=second_reader(les, r.report, doc.get("image_only")) if text_guided and doc.get("anatomy") is not None
            else None,
        ))
    return out


def second_reader(lesions: list[dict], report: str, image_only: list[dict] | None = None,
                  min_confidence: float | None = None) -> list[dict[str, str]] | None:
    """The second reader on one answer: marks each lesion (its ``site``) in place, ``in_report``,
    ``called_benign`` (at a place the report calls benign: a disagreement, not an omission), ``uncertain``
    (outside the report, but its mean probability below ``min_confidence``, default
    ``report_sites.FLAG_CONFIDENCE``) or ``not_in_report`` (a finding the report may have missed), and returns
    the report's metastatic sites, each ``found`` / ``not_found``; None without a report. ``image_only``: the
    image-only network's confident lesions outside the answer (postprocess), read the same way: a lesion the
    report left out is flagged though the report-guided answer dropped it, and image evidence at a named site
    finds it. The report is parsed here, in the client that has it (bonescan.report_sites)."""
    from bonescan.report_sites import FLAG_CONFIDENCE, benign_sites, report_sites, second_read

    if not report.strip():
        return None
    every = list(lesions) + list(image_only or [])
    regions = [tuple(les["site"]["candidates"]) if les.get("site") else "" for les in every]
    read = second_read(regions, report_sites(report), benign_sites(report),
                       confidence=[float(les.get("mean_probability", 1.0)) for les in every],
                       min_confidence=FLAG_CONFIDENCE if min_confidence is None else min_confidence)
    for les, flag in zip(every, read.to_dict()["lesions"], strict=True):
        les["second_reader"] = flag
    return read.to_dict()["report_sites"]


class _Common:
    opts: ClientOptions
    _http_port: str = ""  # what _what_listens said once it found an HTTP server at the URL
    #: the served checkpoint's sha256 (16 hex digits) from the ensemble's config, once check() read it:
    #: results carry it so a DICOM SEG / SR names the checkpoint that made it (None: not checked)
    _model_sha256: str | None = None

    def _grpc_kwargs(self) -> dict[str, Any]:
        o = self.opts
        target, channel_args = grpc_target(o.url, o.ssl)
        kwargs = {"url": target, "ssl": o.ssl, "root_certificates": o.root_certificates, "private_key": o.private_key,
                  "certificate_chain": o.certificate_chain}
        if channel_args is not None:  # several servers: round robin (one server: tritonclient's defaults, as before)
            kwargs["channel_args"] = channel_args
        return kwargs

    @property
    def text_guided(self) -> bool:
        return self.opts.model != C.ENSEMBLE_UNET_MODEL

    def _probes(self) -> list[tuple[str, str, tuple, str]]:
        """The connection check, one sequence for both clients: (client method, what it checks, its
        arguments, the problem when it answers False). Then the model config is read and checked."""
        o = self.opts
        return [
            ("is_server_live", "liveness check", (), f"{o.url}: server is not live"),
            ("is_server_ready", "readiness check", (), f"{o.url}: server is live but not ready (models still loading or failed)"),
            ("is_model_ready", "model check", (o.model, o.model_version),
             f"{o.url}: model {o.model!r} is not ready (not in the repository, or failed to load); "
             f"this project's ensembles are {_ensembles()}"),
        ]

    def _checked(self, cfg) -> dict[str, Any]:
        """The answer of ``get_model_config`` -> the check's summary; raises ClientError on a mismatch."""
        self._check_config(cfg.config)
        return {"url": self.opts.url, "model": self.opts.model, "ready": True}

    def _check_config(self, cfg) -> None:
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        got = params.get("bonescan_contract_version")
        if got is None:
            raise ClientError(f"{self.opts.url}: model {self.opts.model!r} is not an ensemble of this project (its config "
                              f"has no bonescan_contract_version; steps such as segmenter take other inputs); "
                              f"this project's ensembles are {_ensembles()}")
        if got != str(C.CONTRACT_VERSION):
            raise ClientError(f"{self.opts.url}: model {self.opts.model} speaks contract version {got}, this client {C.CONTRACT_VERSION}; "
                              "upgrade the client or the server so they match")
        self._model_sha256 = params.get("bonescan_model_sha256") or None
        want = self.opts.expected_model_sha256
        if want and params.get("bonescan_model_sha256") != want[:16]:
            raise ClientError(f"{self.opts.url}: model {self.opts.model} serves checkpoint {params.get('bonescan_model_sha256')}, "
                              f"expected {want[:16]}")

    def _explain(self, e: Exception, what: str, stopping: bool = False) -> ClientError:
        """The error the user sees for a failed call; ``stopping``: an earlier attempt was told the
        server is shutting down (later ones then find it gone)."""
        o = self.opts
        status = _status(e)
        msg = _message(e)
        if any(m in msg for m in STOPPING) or (stopping and "UNAVAILABLE" in status):
            return ClientError(f"{o.url}: the server is shutting down, or model {o.model!r} is unloading ({what}); "
                               "try again when it is back")
        if "UNAVAILABLE" in status:
            listens = self._listens()
            attempts = 1 if "answers HTTP/1" in listens else o.retries + 1
            return ClientError(f"{o.url}: server unavailable after {attempts} attempt(s) ({what}); {listens}")
        if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in msg:
            return ClientError(f"{o.url}: no answer within {o.timeout_s:.0f} s ({what})")
        if "CANCELLED" in status:
            return ClientError(f"{o.url}: the request was cancelled ({what}); the server may be shutting down")
        if "Request for unknown model" in msg:
            return ClientError(f"{o.url}: {msg} ({what}); this project's ensembles are {_ensembles()}")
        return ClientError(f"{what}: server refused the request: {msg}")

    def _listens(self) -> str:
        """What listens at the URL (_what_listens); a port once found to be HTTP is not asked again."""
        if self._http_port:
            return self._http_port
        found = _what_listens(self.opts.url, self.opts.ssl)
        if "answers HTTP/1" in found:
            self._http_port = found
        return found

    def _retry(self, e: Exception, attempt: int, what: str, delay: float) -> bool:
        """Whether to try again after ``e`` (only UNAVAILABLE, while attempts are left, and not where an
        HTTP server answers: retrying a wrong port only delays the message); logs the retry."""
        if _status(e) in RETRYABLE and attempt < self.opts.retries and "answers HTTP/1" not in self._listens():
            log.info("%s: %s unavailable, retry %d in %.1f s", what, self.opts.url, attempt + 1, delay)
            return True
        return False


class BoneScanClient(_Common):
    """Synchronous client. Thread-safe for concurrent segment() calls (one gRPC channel)."""

    def __init__(self, url: str | Sequence[str] = "localhost:8001", **options: Any):
        """``url``: one server's gRPC address, or several (a list, or comma-separated): requests then
        go round robin over those that answer (see :func:`grpc_target`)."""
        import tritonclient.grpc as grpcclient

        self.opts = ClientOptions(url=",".join(addresses(url)), **options)
        self._g = grpcclient
        self.client = grpcclient.InferenceServerClient(**self._grpc_kwargs())
        if self.opts.check_on_connect:
            self.check()

    # -- connection
    def _call(self, fn, what: str, *args, **kwargs):
        delay = self.opts.backoff_s
        stopping = False
        for attempt in range(self.opts.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - tritonclient raises InferenceServerException
                stopping = stopping or any(m in _message(e) for m in STOPPING)
                if self._retry(e, attempt, what, delay):
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise self._explain(e, what, stopping) from None
        raise AssertionError("unreachable")

    def check(self) -> dict[str, Any]:
        """Live, ready, model ready, contract version; raises ClientError with the reason."""
        h = self.opts.headers or None
        for method, what, args, problem in self._probes():
            if not self._call(getattr(self.client, method), what, *args, headers=h):
                raise ClientError(problem)
        return self._checked(self._call(self.client.get_model_config, "model config", self.opts.model,
                                        self.opts.model_version, headers=h))

    # -- inference
    def segment_prepared(self, reqs: Sequence[Request]) -> list[SegmentationResult]:
        """Send already-read requests as one batch (at most the server's max_batch_size)."""
        g = self._g
        t0 = time.perf_counter()
        res = self._call(self.client.infer, f"{reqs[0].source}" + (f" (+{len(reqs) - 1})" if len(reqs) > 1 else ""),
                         self.opts.model, _build_inputs(g, reqs, self.text_guided), model_version=self.opts.model_version,
                         outputs=_outputs(g, self.opts.want_probability), client_timeout=self.opts.timeout_s,
                         headers=self.opts.headers or None)
        return _results(res, reqs, self.opts.model, time.perf_counter() - t0, self.opts.want_probability, self.text_guided,
                        self._model_sha256)

    def segment(self, scan: ScanLike, report: str | Path | None = None, pixel_spacing: tuple[float, float] | None = None,
                **read: Any) -> SegmentationResult:
        """One scan (DICOM / PNG pair / NPY / case folder / array) and its report: its text (a ``str``),
        its file (a ``Path``), or None (a case folder's report.txt, else no report). ``read``:
        :func:`bonescan.client.prepare`'s keywords (report_encoding=, allow_unusual_spacing=)."""
        t0 = time.perf_counter()
        req = prepare(scan, report, pixel_spacing, **read)
        t_read = time.perf_counter() - t0
        r = self.segment_prepared([req])[0]
        r.timings_ms["read"] = round(t_read * 1000, 1)
        r.timings_ms["total"] = round((time.perf_counter() - t0) * 1000, 1)
        return r

    def segment_many(self, items: Iterable[tuple[ScanLike, str | Path | None]], concurrency: int = 4,
                     progress: bool = False, pixel_spacing: tuple[float, float] | None = None, **read: Any
                     ) -> list[SegmentationResult | BonescanError]:
        """Many scans with at most ``concurrency`` requests in flight.

        Args:
            items: (scan, report) pairs; a scan is anything :meth:`segment` takes (an
                (anterior, posterior) pair of view files is one scan: ``((ant, post), report)``),
                a report is text, a Path, or None (a case folder's report.txt, else no report).
            pixel_spacing: (row, column) mm for every scan, overriding what the files say.
            read: :func:`bonescan.client.prepare`'s keywords, for every scan.

        Returns:
            One entry per item, in order: the result, or the BonescanError (naming the input and the
            reason) that stopped that scan; the others go on.
        """
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        items = list(items)

        def one(item: tuple[ScanLike, str | Path | None]) -> SegmentationResult | BonescanError:
            try:
                return self.segment(item[0], item[1], pixel_spacing, **read)
            except BonescanError as e:
                return e

        with ThreadPoolExecutor(max(1, concurrency)) as ex:
            return list(tqdm(ex.map(one, items), total=len(items), desc="segmenting", unit="scan", disable=not progress))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> BoneScanClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncBoneScanClient(_Common):
    """asyncio client: ``async with AsyncBoneScanClient(url) as c: r = await c.segment(...)``."""

    def __init__(self, url: str | Sequence[str] = "localhost:8001", **options: Any):
        import tritonclient.grpc.aio as aioclient

        self.opts = ClientOptions(url=",".join(addresses(url)), **options)
        self._g = aioclient
        self.client = aioclient.InferenceServerClient(**self._grpc_kwargs())

    async def _call(self, fn, what: str, *args, **kwargs):
        delay = self.opts.backoff_s
        stopping = False
        for attempt in range(self.opts.retries + 1):
            try:
                return await fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                stopping = stopping or any(m in _message(e) for m in STOPPING)
                if self._retry(e, attempt, what, delay):
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                raise self._explain(e, what, stopping) from None
        raise AssertionError("unreachable")

    async def check(self) -> dict[str, Any]:
        """Live, ready, model ready, contract version; raises ClientError with the reason."""
        h = self.opts.headers or None
        for method, what, args, problem in self._probes():
            if not await self._call(getattr(self.client, method), what, *args, headers=h):
                raise ClientError(problem)
        return self._checked(await self._call(self.client.get_model_config, "model config", self.opts.model,
                                              self.opts.model_version, headers=h))

    async def segment_prepared(self, reqs: Sequence[Request]) -> list[SegmentationResult]:
        g = self._g
        t0 = time.perf_counter()
        res = await self._call(self.client.infer, reqs[0].source, self.opts.model, _build_inputs(g, reqs, self.text_guided),
                               model_version=self.opts.model_version, outputs=_outputs(g, self.opts.want_probability),
                               client_timeout=self.opts.timeout_s, headers=self.opts.headers or None)
        return _results(res, reqs, self.opts.model, time.perf_counter() - t0, self.opts.want_probability, self.text_guided,
                        self._model_sha256)

    async def segment(self, scan: ScanLike, report: str | Path | None = None,
                      pixel_spacing: tuple[float, float] | None = None, **read: Any) -> SegmentationResult:
        """As :meth:`BoneScanClient.segment`."""
        t0 = time.perf_counter()
        req = await asyncio.to_thread(prepare, scan, report, pixel_spacing, **read)
        r = (await self.segment_prepared([req]))[0]
        r.timings_ms["total"] = round((time.perf_counter() - t0) * 1000, 1)
        return r

    async def segment_many(self, items: Iterable[tuple[ScanLike, str | Path | None]], concurrency: int = 4,
                           pixel_spacing: tuple[float, float] | None = None, **read: Any
                           ) -> list[SegmentationResult | BonescanError]:
        """As :meth:`BoneScanClient.segment_many`: (scan, report) pairs in, one result or error each, in order."""
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(scan, report):
            async with sem:
                try:
                    return await self.segment(scan, report, pixel_spacing, **read)
                except BonescanError as e:
                    return e

        return list(await asyncio.gather(*(one(s, r) for s, r in items)))

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> AsyncBoneScanClient:
        if self.opts.check_on_connect:
            await self.check()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
