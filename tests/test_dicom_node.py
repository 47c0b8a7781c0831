"""The DICOM node against a real PACS (Debian's Orthanc) and the real tritonserver of the session.

One Orthanc and one node (a ``bonescan dicom-node`` child process) for the module; a second node,
killed and restarted, for the fault cases that need a process to die. Every study is a synthetic
case written as a PACS would hold it (``bonescan.data.dicom.write_synthetic_study``); each test
uses its own seeds, so its studies are its own.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("dicomweb_client")

from bonescan.client.dicom.node import read_status  # noqa: E402
from bonescan.client.dicom.orthanc import Orthanc, find_orthanc  # noqa: E402
from bonescan.serving.server import free_ports  # noqa: E402

pytestmark = pytest.mark.server

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def c_store(files: list[Path], port: int, aet: str = "BONESCAN") -> list[int]:
    """C-STORE files to a DICOM peer over one association; the status of each."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="TESTSCU")
    for uid in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(uid, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established, f"no association with port {port}"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    except BaseException:
        assoc.abort()
        raise
    finally:
        if assoc.is_established:
            assoc.release()


def write_study(dataset: Path, out: Path, case: int, seed: int, **kw: Any) -> tuple[str, list[Path]]:
    """A synthetic study (its StudyInstanceUID and files); the seed makes it a study of its own."""
    import pydicom

    from bonescan.data.dicom import write_synthetic_study

    cases = sorted((dataset / "cases").iterdir())
    files = write_synthetic_study(cases[case % len(cases)], out / f"s{seed}", seed=seed, **kw)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files


class NodeProcess:
    """``bonescan dicom-node`` as a child process (so a test can SIGKILL it), its log in the spool's parent."""

    def __init__(self, spool: Path, port: int, server: str, *dest: str, extra: tuple[str, ...] = ()):
        self.spool, self.port, self.server, self.dest, self.extra = spool, port, server, dest, extra
        self.proc: subprocess.Popen | None = None
        self.log = spool.parent / f"{spool.name}.log"

    def start(self, server: str | None = None, extra: tuple[str, ...] | None = None) -> NodeProcess:
        argv = [sys.executable, "-m", "bonescan.cli", "dicom-node", "--port", str(self.port), "--bind", "127.0.0.1",
                "--server", server or self.server, "--spool", str(self.spool), "--wait-report", "3",
                "--retry-interval", "1", "--workers", "2", *self.dest, *(self.extra if extra is None else extra)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.echo, 60, "the node to answer C-ECHO")
        return self

    def echo(self) -> bool:
        from pynetdicom import AE

        assert self.proc is not None and self.proc.poll() is None, f"node exited:\n{self.log.read_text()[-2000:]}"
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", self.port, ae_title="BONESCAN")
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status) and int(status.Status) == 0

    def status(self) -> dict[str, Any]:
        return read_status(self.spool)

    def counter(self, key: str) -> int:
        return int(self.status().get("counters", {}).get(key, 0))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    node, node2 = free_ports(2)
    return {"node": node, "node2": node2}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, ports):
    try:
        find_orthanc()
    except Exception as e:  # noqa: BLE001
        pytest.skip(str(e))
    run = tmp_path_factory.mktemp("orthanc")
    orthanc = Orthanc(run, modalities={"BONESCAN": ("BONESCAN", "127.0.0.1", ports["node"]),
                                       "BONESCAN2": ("BONESCAN", "127.0.0.1", ports["node2"])}).start()
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory, server, pacs, ports):
    run = tmp_path_factory.mktemp("node")
    proc = NodeProcess(run / "spool", ports["node"], server.grpc_url, "--send-to", pacs.destination).start()
    yield proc
    proc.stop()
    assert proc.proc is not None and proc.proc.returncode == 0, proc.log.read_text()[-2000:]
    text = proc.log.read_text()
    assert "Wang^" not in text and "Li^" not in text and "检查" not in text, "the node's log names a patient or a report"


def dicomweb(pacs: Orthanc) -> Any:
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=pacs.dicomweb_url)


def results_in(pacs: Orthanc, study: str) -> dict[str, list[dict]]:
    """The study's instances in Orthanc by modality, over DICOMweb (QIDO-RS)."""
    found: dict[str, list[dict]] = {}
    for inst in dicomweb(pacs).search_for_instances(study_instance_uid=study):
        modality = inst.get("00080060", {}).get("Value", ["?"])[0]
        found.setdefault(modality, []).append(inst)
    return found


def delivered(pacs: Orthanc, study: str, srs: int = 1) -> dict[str, list[dict]] | None:
    """The study's instances once the SEG and the node's SR are in Orthanc (``srs``: 2 when the
    study's report SR went through Orthanc too)."""
    found = results_in(pacs, study)
    return found if "SEG" in found and len(found.get("SR", [])) >= srs else None


def uid_of(inst: dict, tag: str) -> str:
    return inst[tag]["Value"][0]


def retrieve(pacs: Orthanc, study: str, inst: dict) -> Any:
    return dicomweb(pacs).retrieve_instance(study_instance_uid=study, series_instance_uid=uid_of(inst, "0020000E"),
                                            sop_instance_uid=uid_of(inst, "00080018"))


def our_sr(pacs: Orthanc, study: str, found: dict) -> Any:
    """The node's SR (the measurement report), not the study's report SR."""
    srs = [retrieve(pacs, study, i) for i in found["SR"]]
    return next(ds for ds in srs if ds.Manufacturer == "BoneScan-Triton")


def sr_says(sr: Any) -> set[str]:
    """Every code meaning and text in the SR's content tree (what it states, as words)."""
    words: set[str] = set()

    def walk(item: Any) -> None:
        for key in ("ConceptCodeSequence", "ConceptNameCodeSequence"):
            for code in getattr(item, key, []) or []:
                words.add(str(code.CodeMeaning))
        if getattr(item, "TextValue", None):
            words.add(str(item.TextValue))
        for child in getattr(item, "ContentSequence", []) or []:
            walk(child)

    walk(sr)
    return words


# ----------------------------------------------------------------------------- the tests


def test_echo_and_unknown_sop_class_refused(node):
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(CT_CLASS)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="BONESCAN")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0
        rejected = {c.abstract_syntax: c.result for c in assoc.rejected_contexts}
        assert rejected.get(CT_CLASS) == 0x03, "a CT context must be refused: abstract syntax not supported"
        assert CT_CLASS not in {c.abstract_syntax for c in assoc.accepted_contexts}
    finally:
        assoc.release()


def test_round_trip_through_orthanc(node, pacs, server, dataset, tmp_path):
    """C-STORE into Orthanc, Orthanc forwards to the node, the SEG and SR land in the same study, and
    the SEG's first frame is the mask the client gives for the same scan, bit for bit."""
    from bonescan.client import BoneScanClient
    from bonescan.data.dicom import read_dicom_study

    study, files = write_study(dataset, tmp_path, 0, seed=101)
    assert c_store(files, pacs.dicom_port, pacs.aet) == [0] * len(files)
    pacs.forward_study(study, "BONESCAN")
    found = wait_for(lambda: delivered(pacs, study, srs=2), 60, "the SEG and SR in Orthanc")
    assert len(found["SEG"]) == 1 and len(found["SR"]) == 2 and len(found["NM"]) == 1
    seg = retrieve(pacs, study, found["SEG"][0])
    st = read_dicom_study(files)
    with BoneScanClient(server.grpc_url) as client:
        want = client.segment(st.scan, report=st.report).mask
    frames = seg.pixel_array
    assert frames.shape[0] == 2 and np.array_equal(frames[0].astype(np.uint8), want.astype(np.uint8))
    says = sr_says(our_sr(pacs, study, found))
    assert {"image and report", "Report in the study", "present"} <= says, says

    # the PACS re-sends the study: acknowledged, not segmented again, still one SEG
    before = node.counter("segmented")
    assert c_store(files, node.port) == [0] * len(files)
    wait_for(lambda: node.counter("duplicates") >= len(files), 10, "the duplicates counted")
    time.sleep(1.5)
    assert node.counter("segmented") == before
    again = results_in(pacs, study)
    assert len(again["SEG"]) == 1 and len(again["SR"]) == 2

    # Orthanc forwards the whole study, now holding the node's own SEG and SR: the forward succeeds,
    # those two are acknowledged without being kept ("ignored"), nothing is segmented again
    ignored = node.counter("ignored")
    pacs.forward_study(study, "BONESCAN")
    wait_for(lambda: node.counter("ignored") >= ignored + 2, 20, "the SEG and SR acknowledged")
    assert node.counter("segmented") == before


def test_study_without_report_gets_the_unet(node, pacs, dataset, tmp_path):
    study, files = write_study(dataset, tmp_path, 1, seed=102, with_report=False)
    assert len(files) == 1
    t0 = time.monotonic()
    assert c_store(files, node.port) == [0]
    found = wait_for(lambda: delivered(pacs, study), 60, "the U-Net's SEG and SR")
    assert time.monotonic() - t0 >= 3.0, "segmented before --wait-report ran out"
    says = sr_says(our_sr(pacs, study, found))
    assert "image only" in says and "bonescan_unet" in says, says  # the model read no report, and which model
    assert {"Report in the study", "absent"} <= says, says  # and why: the study held none
    record = wait_for(lambda: (node.spool / "done" / f"{study}.json").is_file(), 10, "the done record") and \
        (node.spool / "done" / f"{study}.json").read_text()
    assert '"report": "absent"' in record and '"model": "bonescan_unet"' in record


def test_corrupt_instances_are_failed_or_refused(node, dataset, tmp_path):
    import pydicom

    study, files = write_study(dataset, tmp_path, 2, seed=103)
    nm = pydicom.dcmread(files[0])
    nm.PixelData = nm.PixelData[:1000]  # a truncated image
    bad = tmp_path / "truncated.dcm"
    nm.save_as(bad, enforce_file_format=True)
    failed_before = node.counter("failed")
    assert c_store([bad, files[1]], node.port) == [0, 0]  # stored: nothing received is lost
    wait_for(lambda: node.counter("failed") > failed_before, 30, "the study moved to failed/")
    reason = (node.spool / "failed" / study / "reason.txt").read_text()
    assert "PixelData" in reason and "Wang" not in reason
    assert sorted(p.name for p in (node.spool / "failed" / study).glob("*.dcm")) == sorted(
        [f"{nm.SOPInstanceUID}.dcm", files[1].name])

    # an instance whose body is garbage after a valid file meta: refused (0xC210), its bytes kept with a reason
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, pydicom.dcmread(files[0]), enforce_file_format=True)
    raw = buf.getvalue()
    meta_end = 144 + int.from_bytes(raw[140:144], "little")
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(raw[:meta_end] + b"\x20\x00\x0d\x00UI\xff\xff" + b"\x01garbage" * 64)
    from pynetdicom import AE, _config

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.20", ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="BONESCAN")
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are, without parsing them
    try:
        status = assoc.send_c_store(garbage)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    assert int(status.Status) == 0xC210
    reasons = list((node.spool / "failed" / "unreadable").glob("*.reason.txt"))
    assert reasons and "StudyInstanceUID" in reasons[0].read_text()
    assert node.echo(), "the node keeps running"


def test_orthanc_down_then_back(node, pacs, dataset, tmp_path):
    """The destination is down when the node sends: the study is kept in retry/ (counted); once
    Orthanc is back (same ports, same storage) the sweep delivers it."""
    study, files = write_study(dataset, tmp_path, 3, seed=104)
    fails_before = node.counter("send_failures")
    pacs.stop()
    try:
        assert c_store(files, node.port) == [0] * len(files)
        wait_for(lambda: node.status().get("spool", {}).get("retry", 0) >= 1, 60, "the study kept in retry/")
        assert node.counter("send_failures") > fails_before
        assert node.counter("retries_scheduled") >= 1
        assert (node.spool / "retry" / study).is_dir()
    finally:
        pacs.start()
    found = wait_for(lambda: delivered(pacs, study), 60, "the study delivered once Orthanc is back")
    assert len(found["SEG"]) == 1
    wait_for(lambda: not (node.spool / "retry" / study).exists(), 10, "retry/ emptied")


def test_triton_down_then_node_killed_mid_study(server, pacs, dataset, tmp_path, ports):
    """A node whose Triton is unreachable keeps the study in retry/ (counted), is SIGKILLed; restarted
    against the real server it segments and, paused before sending, is SIGKILLed again with the
    results on disk; restarted once more it sends them: exactly one SEG and one SR in Orthanc.
    This node sends over STOW-RS."""
    closed = free_ports(1)[0]
    n2 = NodeProcess(tmp_path / "spool2", ports["node2"], f"127.0.0.1:{closed}", "--stow-url", pacs.dicomweb_url)
    study, files = write_study(dataset, tmp_path, 4, seed=105)
    try:
        n2.start()
        assert c_store(files, n2.port) == [0] * len(files)
        wait_for(lambda: n2.counter("triton_failures") >= 1 and n2.status()["spool"]["retry"] == 1, 60,
                 "the study kept in retry/ while Triton is unreachable")
        n2.kill()
        assert (n2.spool / "retry" / study).is_dir() and len(list((n2.spool / "retry" / study).glob("*.dcm"))) == 2

        n2.start(server=server.grpc_url, extra=("--pause-before-send", "60"))
        wait_for(lambda: (n2.spool / "retry" / study / "results" / "inputs.json").is_file()
                 or (n2.spool / "incoming" / study / "results" / "inputs.json").is_file(), 60, "the results on disk")
        time.sleep(0.3)
        n2.kill()
        assert "SEG" not in results_in(pacs, study), "sent before the kill"

        n2.start(server=server.grpc_url, extra=())
        found = wait_for(lambda: delivered(pacs, study), 60, "the study delivered after the restart")
        wait_for(lambda: n2.counter("delivered") == 1, 10, "the delivery counted")
        assert n2.counter("results_reused") == 1 and n2.counter("segmented") == 0
        assert len(found["SEG"]) == 1 and len(found["SR"]) == 1
    finally:
        n2.stop()


def test_twenty_studies_four_senders(node, pacs, dataset, tmp_path):
    """20 studies from 4 concurrent senders: 20 SEGs and 20 SRs, each SEG over its own study's NM."""
    import pydicom

    studies = [write_study(dataset, tmp_path, 5 + i, seed=200 + i, layout="single" if i % 2 else "multiframe")
               for i in range(20)]
    errors: list[BaseException] = []

    def send(part: list[tuple[str, list[Path]]]) -> None:
        try:
            for _, files in part:
                assert c_store(files, node.port) == [0] * len(files)
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)

    threads = [threading.Thread(target=send, args=(studies[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for study, files in studies:
        found = wait_for(lambda study=study: delivered(pacs, study), 120, f"study {study} delivered")
        assert len(found["SEG"]) == 1 and len(found["SR"]) == 1
        seg = retrieve(pacs, study, found["SEG"][0])
        nm_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
                   if pydicom.dcmread(f, stop_before_pixels=True).Modality == "NM"}
        referenced = {str(ref.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                      for ref in s.ReferencedInstanceSequence}
        assert referenced == nm_uids, f"study {study}: the SEG references {referenced}, its NM is {nm_uids}"
        assert seg.StudyInstanceUID == study
