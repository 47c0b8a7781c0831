"""``bonescan dicom-node``: a DICOM Storage SCP that segments each bone-scan study and sends the SEG and SR on.

A PACS (or a modality) C-STOREs a study's instances to the node: the whole-body NM scan and the
report SR. Each instance is written durably to the spool before the C-STORE is answered, so an
acknowledged instance survives a crash. Once a study's scan and report are both there (or the scan
alone, after ``wait_report_s``: then the image-only ensemble), a worker reads it
(``bonescan.data.dicom.read_dicom_study``), segments it through Triton (``BoneScanClient``), turns
the result into a SEG and a measurement SR (``bonescan.client.dicom.to_dicom``) and sends both to the
destination (C-STORE and / or STOW-RS).

The spool is the state machine, on disk, so a node killed at any point finishes after a restart::

    spool/tmp/                  partial writes; a file here was never acknowledged (removed at start)
    spool/incoming/<study>/     instances as received (<SOPInstanceUID>.dcm); results/ once segmented
    spool/retry/<study>/        the same + attempts.json: Triton or the destination failed; the
                                periodic sweep tries again (backoff doubling up to retry_max_s), never drops it
    spool/done/<study>.json     done record (instances handled, SEG / SR UIDs); the instances are deleted
    spool/failed/<study>/       instances + reason.txt (field and problem): cannot be segmented, kept for a person
    spool/status.json           the counters, rewritten every sweep

``results/inputs.json`` is written last and names the instances the SEG / SR were made from: results
whose inputs are still the study's are sent again after a restart, not recomputed; the SEG / SR UIDs
are derived from the study and the checkpoint, so a second send replaces the first in the PACS.
Log lines name a study by its StudyInstanceUID only: no patient name, no accession number, no report text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonescan import contract as C
from bonescan.client.dicom.seg import SEG_STORAGE
from bonescan.client.dicom.sr import COMPREHENSIVE_3D_SR
from bonescan.data.dicom import BASIC_TEXT_SR, COMPREHENSIVE_SR, ENHANCED_SR
from bonescan.data.nmimage import NM_IMAGE_STORAGE
from bonescan.errors import BonescanError

log = logging.getLogger("bonescan.dicom.node")

#: what the SCP accepts: the scan and the report SRs a RIS writes (bonescan.data.dicom.REPORT_SR_CLASSES)
ACCEPTED = {
    NM_IMAGE_STORAGE: "NM Image Storage",
    BASIC_TEXT_SR: "Basic Text SR",
    ENHANCED_SR: "Enhanced SR",
    COMPREHENSIVE_SR: "Comprehensive SR",
}
#: what the node itself sends back (the SEG, the TID 1500 SR): a PACS that forwards a whole study
#: forwards these too once a study has results. They are acknowledged and not kept (they are in the
#: PACS already, and they are no input): counted as "ignored", so a forward of the study succeeds.
ACKNOWLEDGED = {
    SEG_STORAGE: "Segmentation Storage",
    COMPREHENSIVE_3D_SR: "Comprehensive 3D SR",
}
VERIFICATION = "1.2.840.10008.1.1"
#: transfer syntaxes accepted: the uncompressed ones, plus the lossless ones pydicom decodes here
#: (RLE natively, JPEG-LS through pyjpegls); a PACS transcodes anything else to one of these
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
                     "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"]

# C-STORE statuses (PS3.4 B.2.3, PS3.7 C)
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
#: a destination's C-STORE warnings (coercion, elements discarded): stored all the same
STORE_WARNINGS = (0xB000, 0xB006, 0xB007)

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STATES = ("incoming", "retry", "failed")


class NodeError(BonescanError):
    """The node cannot start (bad option, spool not writable, port in use)."""


class _Bad(Exception):
    """This study cannot be segmented (the reason names a field and the problem): -> failed/."""


class _Later(Exception):
    """Triton or the destination failed: the study goes to retry/ and is tried again."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer the results go to: ``HOST:PORT:AET``."""

    host: str
    port: int
    aet: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        host, _, rest = text.strip().rpartition(":")
        host, _, port = host.rpartition(":")
        if not host or not port.isdigit() or not rest or len(rest) > 16:
            raise NodeError(f"--send-to {text!r}: give HOST:PORT:AET (an AE title of at most 16 characters)")
        return cls(host.strip("[]"), int(port), rest)

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


@dataclass
class NodeConfig:
    """How the node listens, where it segments and where the results go; the defaults suit a PACS."""

    spool: Path
    server: str = "localhost:8001"
    ae_title: str = "BONESCAN"
    bind: str = "0.0.0.0"
    port: int = 11112
    send_to: Destination | None = None
    stow_url: str | None = None
    wait_report_s: float = 300.0  # a scan without report waits this long for one, then the U-Net answers
    wait_scan_s: float = 3600.0  # a study without a complete scan this long after its last instance -> failed/
    settle_s: float = 2.0  # a study still in an open association is left alone until it was quiet this long
    sweep_s: float = 1.0  # how often the spool is looked at (an association's end also wakes the worker)
    retry_interval_s: float = 60.0  # the first wait of a study in retry/; doubles, up to retry_max_s
    retry_max_s: float = 1800.0
    send_attempts: int = 3  # sends per attempt of a study, with backoff; then retry/
    backoff_s: float = 1.0
    triton_retries: int = 3  # the client's own retries after UNAVAILABLE
    timeout_s: float = 120.0
    workers: int = 1
    pause_before_send_s: float = 0.0  # tests: a deterministic window between segmenting and sending

    def check(self) -> NodeConfig:
        if self.send_to is None and not self.stow_url:
            raise NodeError("give where the results go: --send-to HOST:PORT:AET and / or --stow-url URL")
        if len(self.ae_title) > 16 or not self.ae_title.strip():
            raise NodeError(f"--ae-title {self.ae_title!r}: an AE title has 1 to 16 characters")
        if self.workers < 1:
            raise NodeError("--workers: give 1 or more")
        return self


# ----------------------------------------------------------------------------- the spool


def safe_name(uid: str) -> str:
    """A UID as a file name; anything that is not a UID (a path, a name) becomes a hash of it."""
    uid = uid.strip().rstrip("\0")
    if _UID.match(uid) and len(uid) <= 64:
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:40]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: Path, data: bytes, tmpdir: Path) -> None:
    """``data`` at ``path`` for good before this returns: a temp file written and fsynced, renamed
    over ``path``, the folder fsynced (a crash leaves the old file or the new one, never half of one)."""
    fd, tmp = tempfile.mkstemp(dir=tmpdir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, body: dict[str, Any], tmpdir: Path) -> None:
    durable_write(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode(), tmpdir)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class Spool:
    """The folders of the state machine (module docstring); moves happen under the node's lock."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in ("tmp", "incoming", "retry", "done", "failed"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for part in (self.root / "tmp").iterdir():  # never acknowledged: the sender got no success
            part.unlink(missing_ok=True)

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def where(self, study: str) -> Path | None:
        """The study's folder while it is pending (retry/ first: new instances join a study waiting there)."""
        for state in ("retry", "incoming"):
            d = self.root / state / safe_name(study)
            if d.is_dir():
                return d
        return None

    def put(self, study: str, sop: str, data: bytes) -> Path:
        """One received instance, durably, into the study's pending folder."""
        d = self.where(study)
        if d is None:
            d = self.root / "incoming" / safe_name(study)
            d.mkdir()
            _fsync_dir(d.parent)
            (d / "study_uid").write_text(study)  # the UID itself, in case the folder name is a hash
        path = d / f"{safe_name(sop)}.dcm"
        durable_write(path, data, self.tmp)
        return path

    def move(self, d: Path, state: str) -> Path:
        """A study's folder into another state (failed/: a new name if the study failed before)."""
        target = self.root / state / d.name
        n = 1
        while target.exists():
            target = self.root / state / f"{d.name}.{n}"
            n += 1
        os.replace(d, target)
        _fsync_dir(target.parent)
        _fsync_dir(d.parent)
        return target

    def pending(self) -> list[Path]:
        return sorted(p for state in ("incoming", "retry") for p in (self.root / state).iterdir() if p.is_dir())

    def done_record(self, study: str) -> dict[str, Any]:
        return _read_json(self.root / "done" / f"{safe_name(study)}.json")

    def write_done(self, study: str, record: dict[str, Any]) -> None:
        _write_json(self.root / "done" / f"{safe_name(study)}.json", record, self.tmp)

    def counts(self) -> dict[str, int]:
        out = {state: sum(1 for p in (self.root / state).iterdir() if p.is_dir()) for state in STATES}
        out["done"] = sum(1 for _ in (self.root / "done").glob("*.json"))
        return out


def instance_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.dcm"))


def study_uid_of(d: Path) -> str:
    f = d / "study_uid"
    return f.read_text().strip() if f.is_file() else d.name.split(".x")[0]


# ----------------------------------------------------------------------------- the node


class DicomNode:
    """The SCP, the worker that segments and sends, and the sweep that retries; see the module docstring.

    ``start()`` returns once the SCP listens; ``stop()`` stops accepting, lets the running study
    finish its step and returns. ``serve_forever()`` runs until SIGTERM / SIGINT."""

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg.check()
        self.spool = Spool(cfg.spool)
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()  # spool moves, the open-association map, the done cache, counters
        self._open: dict[Any, set[str]] = {}  # association -> studies it delivered to
        self._busy: set[str] = set()
        self._done_cache: dict[str, set[str]] = {}
        self._state_cache: dict[str, tuple[tuple, str]] = {}
        self._clients: dict[str, Any] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._started = time.time()
        self._server: Any = None
        self._pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="dicom-node-study")
        self._loop_thread = threading.Thread(target=self._loop, name="dicom-node-sweep", daemon=True)

    # -- life cycle
    def start(self) -> DicomNode:
        quiet_dicom_logs()
        try:
            self._server = self._ae().start_server((self.cfg.bind, self.cfg.port), block=False,
                                                   evt_handlers=self._handlers())
        except OSError as e:
            raise NodeError(f"cannot listen on {self.cfg.bind}:{self.cfg.port}: {e.strerror or e}") from None
        self._loop_thread.start()
        log.info("listening ae=%s port=%d server=%s send_to=%s stow=%s pending=%d", self.cfg.ae_title, self.cfg.port,
                 self.cfg.server, self.cfg.send_to or "-", "yes" if self.cfg.stow_url else "no", len(self.spool.pending()))
        self._wake.set()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._server is not None:
            for assoc in self._server.active_associations:  # a sender that never releases must not hold the exit
                assoc.abort()
            self._server.shutdown()
        self._loop_thread.join(timeout=30)
        self._pool.shutdown(wait=True)
        for c in self._clients.values():
            c.close()
        self._write_status()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Until SIGTERM or SIGINT: then stop (the study being worked on finishes its step)."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        self.stop()

    def __enter__(self) -> DicomNode:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    # -- the SCP
    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.cfg.ae_title)
        ae.add_supported_context(VERIFICATION)
        for uid in (*ACCEPTED, *ACKNOWLEDGED):
            ae.add_supported_context(uid, TRANSFER_SYNTAXES)
        ae.maximum_associations = 16
        return ae

    def _handlers(self) -> list:
        from pynetdicom import evt

        return [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                (evt.EVT_CONN_CLOSE, self._on_close)]

    def _on_close(self, event: Any) -> None:
        with self._lock:
            self._open.pop(event.assoc, None)
        self._wake.set()

    def _on_store(self, event: Any) -> int:
        """Store one instance durably, then answer: success only once it is on disk."""
        sop_class = str(event.context.abstract_syntax)
        if sop_class in ACKNOWLEDGED:
            self.count("ignored")
            return SUCCESS
        if sop_class not in ACCEPTED:  # not negotiated, so not reached; a last guard
            self.count("refused")
            return SOP_CLASS_NOT_SUPPORTED
        try:
            ds = event.dataset
            study = str(ds.get("StudyInstanceUID", "") or "").strip()
            sop = str(ds.get("SOPInstanceUID", "") or "").strip()
            declared = str(ds.get("SOPClassUID", "") or "")
        except Exception as e:  # noqa: BLE001 - pydicom raises many kinds for a stream it cannot parse
            return self._unreadable(event, f"dataset cannot be parsed ({type(e).__name__})")
        for name, uid in (("StudyInstanceUID", study), ("SOPInstanceUID", sop)):
            if not _UID.match(uid) or len(uid) > 64:
                return self._unreadable(event, f"{name} is {'not a UID' if uid else 'missing'}")
        if declared and declared != sop_class:
            self.count("refused")
            log.warning("study=%s refused: SOPClassUID %s sent over a %s context", study, declared, ACCEPTED[sop_class])
            return DATASET_MISMATCH
        return self._keep(event, study, sop)

    def _keep(self, event: Any, study: str, sop: str) -> int:
        if self._is_done(study, sop):  # a PACS re-sending a study already delivered: nothing to do again
            self.count("duplicates")
            log.info("study=%s duplicate instance of a delivered study: acknowledged, not processed again", study)
            return SUCCESS
        try:
            data = event.encoded_dataset(include_meta=True)
            with self._lock:
                self.spool.put(study, sop, data)
                self._open.setdefault(event.assoc, set()).add(study)
                self.counters["received"] += 1
        except OSError as e:
            self.count("store_errors")
            log.error("study=%s cannot write the instance to the spool (%s): answered out of resources", study,
                      e.strerror or type(e).__name__)
            return OUT_OF_RESOURCES
        log.info("study=%s stored %s", study, ACCEPTED[str(event.context.abstract_syntax)])
        return SUCCESS

    def _unreadable(self, event: Any, problem: str) -> int:
        """An instance that cannot be filed by study: its bytes kept in failed/unreadable/ with the reason."""
        sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "unknown")
        d = self.spool.root / "failed" / "unreadable"
        try:
            d.mkdir(exist_ok=True)
            name = safe_name(sop) if sop != "unknown" else f"unknown-{time.time_ns()}"
            durable_write(d / f"{name}.dcm", event.encoded_dataset(include_meta=True), self.spool.tmp)
            (d / f"{name}.reason.txt").write_text(f"instance: {problem}\n")
        except OSError:
            pass
        self.count("refused")
        log.warning("study=unknown refused an instance: %s (kept in failed/unreadable)", problem)
        return CANNOT_UNDERSTAND

    def _is_done(self, study: str, sop: str) -> bool:
        with self._lock:
            if study not in self._done_cache:
                self._done_cache[study] = set(self.spool.done_record(study).get("instances", []))
            return safe_name(sop) in self._done_cache[study]

    # -- the sweep
    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.cfg.sweep_s)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._sweep()
            except Exception:  # noqa: BLE001 - the sweep must outlive any one bad study
                log.exception("sweep failed; trying again at the next one")

    def _sweep(self) -> None:
        now = time.time()
        for d in self.spool.pending():
            study = study_uid_of(d)
            with self._lock:
                if study in self._busy:
                    continue
            decision = self._decide(study, d, now)
            if decision is None:
                continue
            with self._lock:
                self._busy.add(study)
            self._pool.submit(self._run, study, decision)
        self._write_status()

    def _decide(self, study: str, d: Path, now: float) -> str | None:
        """What to do with a pending study now: a model name (segment), "fail:<reason>", or None (wait)."""
        files = instance_files(d)
        if not files:
            return None
        if d.parent.name == "retry":
            att = _read_json(d / "attempts.json")
            if now < att.get("next_at", 0) and att.get("written_at", 0) > self._started:
                return None  # a restart retries at once: it is often what fixed the fault
        newest = max(f.stat().st_mtime for f in files)
        with self._lock:
            delivering = any(study in s for s in self._open.values())
        if delivering and now - newest < self.cfg.settle_s:
            return None
        state = self._state(study, files)
        if state.startswith("fail:"):
            return state
        if state == "scan+report":
            return C.ENSEMBLE_MODEL
        if state == "scan":
            return C.ENSEMBLE_UNET_MODEL if now - newest >= self.cfg.wait_report_s else None
        if now - newest >= self.cfg.wait_scan_s:
            return f"fail:study: no complete whole-body NM scan arrived within {self.cfg.wait_scan_s:.0f} s ({state})"
        return None

    def _state(self, study: str, files: list[Path]) -> str:
        """bonescan.data.dicom.study_state, or "fail:<reason>" for an instance that cannot be read;
        cached until the study's files change."""
        from bonescan.data.dicom import study_state

        key = tuple((f.name, f.stat().st_mtime_ns) for f in files)
        cached = self._state_cache.get(study)
        if cached and cached[0] == key:
            return cached[1]
        problem = next((p for p in map(instance_problem, files) if p), None)
        state = f"fail:{problem}" if problem else study_state(files)
        self._state_cache[study] = (key, state)
        return state

    # -- one study
    def _run(self, study: str, decision: str) -> None:
        try:
            d = self.spool.where(study)
            if d is None:
                return
            if decision.startswith("fail:"):
                self._fail(study, d, decision[5:])
            else:
                self._process(study, d, decision)
        except Exception as e:  # noqa: BLE001 - a bug must not lose the study: it waits in retry/
            log.exception("study=%s unexpected error; kept in retry", study)
            d = self.spool.where(study)
            if d is not None:
                self._to_retry(study, d, f"internal error ({type(e).__name__})")
        finally:
            with self._lock:
                self._busy.discard(study)
            self._wake.set()

    def _process(self, study: str, d: Path, model: str) -> None:
        files = instance_files(d)
        try:
            paths, meta = self._results(study, d, files, model)
            if self.cfg.pause_before_send_s:
                log.info("study=%s pausing %.1f s before sending (--pause-before-send)", study, self.cfg.pause_before_send_s)
                time.sleep(self.cfg.pause_before_send_s)
            self._send(study, paths)
        except _Bad as e:
            self._fail(study, d, str(e))
            return
        except _Later as e:
            self._to_retry(study, d, str(e))
            return
        self._finish(study, d, files, meta)

    def _results(self, study: str, d: Path, files: list[Path], model: str) -> tuple[list[Path], dict[str, Any]]:
        """The SEG and SR of the study's current instances: reused when already made from exactly
        these (a restart between segmenting and sending), else segmented now."""
        rdir = d / "results"
        inputs = [f.stem for f in files]
        meta = _read_json(rdir / "inputs.json")
        paths = [rdir / "seg.dcm", rdir / "sr.dcm"]
        if meta.get("instances") == inputs and all(p.is_file() for p in paths):
            self.count("results_reused")
            log.info("study=%s results already made from these instances: sending them", study)
            return paths, meta
        shutil.rmtree(rdir, ignore_errors=True)
        seg, sr, meta = self._segment(study, files, model)
        rdir.mkdir()
        for ds, p in zip((seg, sr), paths):
            durable_write(p, _encode(ds), self.spool.tmp)
        meta["instances"] = inputs
        _write_json(rdir / "inputs.json", meta, self.spool.tmp)  # last: the results are complete
        return paths, meta

    def _segment(self, study: str, files: list[Path], model: str) -> tuple[Any, Any, dict[str, Any]]:
        from bonescan.client.dicom import to_dicom
        from bonescan.data.dicom import read_dicom_study

        try:
            st = read_dicom_study(files)
        except BonescanError as e:
            raise _Bad(self._where(e)) from None
        if st.report is None:
            model = C.ENSEMBLE_UNET_MODEL
        result = self._infer(study, st, model)
        try:
            seg, sr = to_dicom(result, st.view_sources(), report_in_study=st.report is not None)
        except BonescanError as e:
            raise _Bad(self._where(e)) from None
        self.count("segmented")
        log.info("study=%s segmented model=%s report=%s lesions=%d answered_by=%s", study, model,
                 "given" if st.report is not None else "absent", len(result.lesions), result.answered_by)
        meta = {"model": model, "report": "given" if st.report is not None else "absent",
                "seg": str(seg.SOPInstanceUID), "sr": str(sr.SOPInstanceUID), "lesions": len(result.lesions)}
        return seg, sr, meta

    def _infer(self, study: str, st: Any, model: str) -> Any:
        """One request to Triton; an unreachable or busy server is a later attempt, a refused
        request (the server's checks: the field and the problem) a failed study."""
        from bonescan.client import ClientError
        from bonescan.data.io import CaseError

        try:
            return self._client(model).segment(st.scan, report=st.report or "")
        except CaseError as e:
            raise _Bad(self._where(e)) from None
        except ClientError as e:
            if "server refused the request" in str(e):
                raise _Bad(f"server: {str(e).split('server refused the request: ', 1)[-1]}") from None
            self._drop_client(model)
            self.count("triton_failures")
            raise _Later(f"Triton: {e}") from None

    def _client(self, model: str) -> Any:
        from bonescan.client import BoneScanClient

        if model not in self._clients:
            self._clients[model] = BoneScanClient(self.cfg.server, model=model, retries=self.cfg.triton_retries,
                                                  timeout_s=self.cfg.timeout_s)
        return self._clients[model]

    def _drop_client(self, model: str) -> None:
        c = self._clients.pop(model, None)
        if c is not None:
            c.close()

    def _where(self, e: BaseException) -> str:
        """An error message without the spool's path (the field and the problem remain)."""
        return str(e).replace(str(self.spool.root) + "/", "").replace(str(self.spool.root.resolve()) + "/", "")

    # -- sending
    def _send(self, study: str, paths: list[Path]) -> None:
        import pydicom

        datasets = [pydicom.dcmread(p) for p in paths]
        if self.cfg.send_to is not None:
            self._attempts(study, f"C-STORE to {self.cfg.send_to}", lambda: c_store(datasets, self.cfg.send_to, self.cfg.ae_title))
        if self.cfg.stow_url:
            self._attempts(study, "STOW-RS", lambda: stow(datasets, str(self.cfg.stow_url)))
        self.count("sent")

    def _attempts(self, study: str, what: str, fn) -> None:
        delay = self.cfg.backoff_s
        for attempt in range(1, self.cfg.send_attempts + 1):
            try:
                fn()
                return
            except Exception as e:  # noqa: BLE001 - pynetdicom, requests and sockets raise many kinds
                self.count("send_failures")
                problem = f"{what} failed ({_short(e)})"
                log.warning("study=%s %s, attempt %d of %d", study, problem, attempt, self.cfg.send_attempts)
                if attempt == self.cfg.send_attempts or self._stopping.is_set():
                    raise _Later(problem) from None
                time.sleep(delay)
                delay *= 2

    # -- outcomes
    def _finish(self, study: str, d: Path, files: list[Path], meta: dict[str, Any]) -> None:
        """Done record first (durably), then the instances go: a crash in between resends, never loses."""
        record = self.spool.done_record(study)
        handled = sorted(set(record.get("instances", [])) | {f.stem for f in files})
        record.update({"study_instance_uid": study, "instances": handled, "seg_sop_instance_uid": meta.get("seg"),
                       "sr_sop_instance_uid": meta.get("sr"), "model": meta.get("model"), "report": meta.get("report"),
                       "finished_at": time.time(), "rounds": int(record.get("rounds", 0)) + 1})
        self.spool.write_done(study, record)
        with self._lock:
            self._done_cache[study] = set(handled)
            for f in files:
                f.unlink(missing_ok=True)
            shutil.rmtree(d / "results", ignore_errors=True)
            (d / "attempts.json").unlink(missing_ok=True)
            if instance_files(d):  # arrived while this round ran: a new round
                if d.parent.name == "retry":
                    self.spool.move(d, "incoming")
            else:
                shutil.rmtree(d, ignore_errors=True)
            self.counters["delivered"] += 1
        log.info("study=%s delivered seg=%s sr=%s model=%s", study, meta.get("seg"), meta.get("sr"), meta.get("model"))
        self._write_status()

    def _to_retry(self, study: str, d: Path, problem: str) -> None:
        att = _read_json(d / "attempts.json")
        n = int(att.get("attempts", 0)) + 1
        wait = min(self.cfg.retry_interval_s * 2 ** (n - 1), self.cfg.retry_max_s)
        with self._lock:
            if d.parent.name != "retry":
                d = self.spool.move(d, "retry")
            _write_json(d / "attempts.json", {"attempts": n, "next_at": time.time() + wait, "written_at": time.time(),
                                              "last_problem": problem}, self.spool.tmp)
            self.counters["retries_scheduled"] += 1
        log.warning("study=%s kept in retry (attempt %d, next in %.0f s): %s", study, n, wait, problem)
        self._write_status()

    def _fail(self, study: str, d: Path, problem: str) -> None:
        with self._lock:
            target = self.spool.move(d, "failed")
            (target / "reason.txt").write_text(problem.strip() + "\n", encoding="utf-8")
            self.counters["failed"] += 1
        log.error("study=%s moved to failed: %s", study, problem)
        self._write_status()

    def status(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
        return {"counters": counters, "spool": self.spool.counts(), "pid": os.getpid(), "updated_at": time.time()}

    def _write_status(self) -> None:
        try:
            _write_json(self.spool.root / "status.json", self.status(), self.spool.tmp)
        except OSError:
            log.warning("cannot write status.json")


# ----------------------------------------------------------------------------- helpers


def quiet_dicom_logs() -> None:
    """pynetdicom's and highdicom's INFO lines describe datasets (and would drown the study events);
    pydicom's warnings quote the values they find invalid, which may be patient data: off."""
    import warnings

    for name, level in (("pynetdicom", logging.WARNING), ("highdicom", logging.WARNING), ("pydicom", logging.ERROR)):
        logging.getLogger(name).setLevel(level)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")


def instance_problem(path: Path) -> str | None:
    """Why a received instance cannot be used (field and problem), or None: it parses, and an NM
    image's pixel data decodes."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        if str(ds.get("SOPClassUID", "")) == NM_IMAGE_STORAGE:
            _ = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds for corrupt data
        what = "PixelData" if "ds" in locals() else "instance"
        return f"{what}: instance {path.stem} cannot be decoded ({type(e).__name__})"
    return None


def _encode(ds: Any) -> bytes:
    import io

    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def c_store(datasets: list[Any], dest: Destination, calling_aet: str, timeout_s: float = 60.0) -> None:
    """C-STORE ``datasets`` over one association; raises unless each is stored (success or a warning)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for uid in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.aet)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {dest} (refused, rejected or no answer)")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                raise ConnectionError(f"{dest} gave no C-STORE response")
            if code != SUCCESS and code not in STORE_WARNINGS:
                raise ConnectionError(f"{dest} answered C-STORE with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()


def stow(datasets: list[Any], url: str) -> None:
    """STOW-RS ``datasets`` to a DICOMweb store (dicomweb-client); raises on an HTTP error."""
    from dicomweb_client.api import DICOMwebClient

    DICOMwebClient(url=url).store_instances(datasets)


def read_status(spool: Path) -> dict[str, Any]:
    """A running node's status.json (counters and how many studies each state holds)."""
    return _read_json(Path(spool) / "status.json")
