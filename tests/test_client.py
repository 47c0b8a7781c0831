"""The gRPC client against the real embedded server: inputs, sync / async, failures, TLS."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bonescan.client import AsyncBoneScanClient, BoneScanClient, ClientError, prepare
from bonescan.data.io import CaseError, read_scan, write_dicom_scan, write_png16
from bonescan.serving.server import TritonServer, free_ports


@pytest.fixture(scope="module")
def case_dir(dataset) -> Path:
    from bonescan.data.dataset import BoneScanDataset

    ds = BoneScanDataset(dataset, "test")
    return ds.refs[0].path


@pytest.fixture(scope="module")
def client(server):
    with BoneScanClient(server.grpc_url, timeout_s=60) as c:
        yield c


def test_dicom_png_npy_give_the_same_mask(client, case_dir, tmp_path):
    scan = read_scan(case_dir)
    write_dicom_scan(tmp_path / "scan.dcm", scan.anterior, scan.posterior, scan.pixel_spacing)
    np.save(tmp_path / "scan.npy", np.stack([scan.anterior, scan.posterior]))
    report = case_dir / "report.txt"
    r_png = client.segment(case_dir)  # the folder: PNG pair + its report.txt
    r_pair = client.segment((case_dir / "anterior.png", case_dir / "posterior.png"), report)
    r_dcm = client.segment(tmp_path / "scan.dcm", report)
    r_npy = client.segment(tmp_path / "scan.npy", report, pixel_spacing=scan.pixel_spacing)
    for r in (r_pair, r_dcm, r_npy):
        assert np.array_equal(r.mask, r_png.mask)
        assert [les["area_px"] for les in r.lesions] == [les["area_px"] for les in r_png.lesions]
    assert r_dcm.pixel_spacing == pytest.approx(scan.pixel_spacing, abs=1e-4)  # taken from the DICOM
    assert r_png.mask.shape == (1024, 256) and r_png.probability.dtype == np.float32
    assert set(r_png.timings_ms) >= {"read", "request", "total"}


def test_async_and_sync_agree(server, client, dataset):
    from bonescan.data.dataset import BoneScanDataset

    refs = BoneScanDataset(dataset, "test").refs[:4]
    items = [(r.path, None) for r in refs]
    sync = client.segment_many(items, concurrency=2)

    async def run():
        async with AsyncBoneScanClient(server.grpc_url) as c:
            return await c.segment_many(items, concurrency=4)

    asyn = asyncio.run(run())
    for a, b in zip(sync, asyn):
        assert np.array_equal(a.mask, b.mask) and a.lesions == b.lesions


def test_unet_model_needs_no_report(server, case_dir):
    with BoneScanClient(server.grpc_url, model="bonescan_unet") as c:
        r = c.segment(case_dir)
    assert r.model == "bonescan_unet" and r.mask.shape == (1024, 256)


def test_a_stopped_server_gives_a_clear_error_after_retries():
    (port,) = free_ports(1)  # nothing listens here: a stopped server
    t0 = time.perf_counter()
    with pytest.raises(ClientError) as e:
        BoneScanClient(f"localhost:{port}", retries=2, backoff_s=0.2)
    waited = time.perf_counter() - t0
    assert "unavailable after 3 attempt(s)" in str(e.value) and str(port) in str(e.value)
    assert waited >= 0.2 + 0.4  # it did back off before giving up


def test_input_errors_name_the_file(client, case_dir, tmp_path):
    with pytest.raises(CaseError, match=r"nothing\.dcm: file or folder does not exist"):
        client.segment(tmp_path / "nothing.dcm")
    (tmp_path / "bad.dcm").write_bytes(b"garbage")
    with pytest.raises(CaseError, match=r"bad\.dcm: not a readable DICOM file"):
        client.segment(tmp_path / "bad.dcm")
    write_png16(tmp_path / "anterior.png", np.ones((512, 128), np.uint16))
    with pytest.raises(CaseError, match=r"anterior\.png: anterior view is 512x128"):
        client.segment((tmp_path / "anterior.png", case_dir / "posterior.png"))
    with pytest.raises(CaseError, match=r"missing\.txt: report file is missing"):
        client.segment(case_dir, Path(tmp_path / "missing.txt"))


def test_server_refusal_is_explained(client, case_dir):
    req = prepare(case_dir)
    req.image = req.image.copy()
    req.image[0, 10, 10] = np.nan  # skip the client's own checks: the server must refuse it too
    with pytest.raises(ClientError) as e:
        client.segment_prepared([req])
    assert "server refused the request" in str(e.value) and "IMAGE contains NaN" in str(e.value)
    assert client.segment(case_dir).mask.shape == (1024, 256)  # and it still serves


@pytest.mark.parametrize("down", ["is_server_live", "is_server_ready", "is_model_ready"])
def test_sync_and_async_check_run_the_same_probes(down):
    """One sequence of checks behind both clients: the same probes in the same order, the same error."""
    probes = ("is_server_live", "is_server_ready", "is_model_ready")
    asked: dict[str, list[str]] = {"sync": [], "async": []}

    def answer(name):
        def probe(*args, **kwargs):
            asked["sync"].append(name)
            return name != down
        return probe

    def answer_async(name):
        async def probe(*args, **kwargs):
            asked["async"].append(name)
            return name != down
        return probe

    sync = BoneScanClient("localhost:1", check_on_connect=False)
    for name in probes:
        setattr(sync.client, name, answer(name))
    with pytest.raises(ClientError) as e_sync:
        sync.check()
    sync.close()

    async def run_async() -> str:
        c = AsyncBoneScanClient("localhost:1", check_on_connect=False)
        for name in probes:
            setattr(c.client, name, answer_async(name))
        try:
            with pytest.raises(ClientError) as e:
                await c.check()
            return str(e.value)
        finally:
            await c.close()

    assert asyncio.run(run_async()) == str(e_sync.value)
    assert asked["sync"] == asked["async"] == list(probes[: probes.index(down) + 1])


def test_model_version_check(server):
    with pytest.raises(ClientError, match="serves checkpoint"):
        BoneScanClient(server.grpc_url, expected_model_sha256="0123456789abcdef")


def test_client_never_logs_report_text(client, case_dir, caplog):
    marker = "患者王五MARK3391"
    with caplog.at_level(logging.DEBUG):
        client.segment(case_dir, report=marker + (case_dir / "report.txt").read_text(encoding="utf-8"))
        with pytest.raises(Exception) as e:
            client.segment(case_dir, report=marker * 10000)  # over the 20,000-character limit
    assert marker not in caplog.text and "MARK3391" not in str(e.value)


def test_prepare_checks_a_report_string_as_the_server_does(case_dir):
    """The client refuses what the preprocess step would: an oversized report, one UTF-8 cannot carry."""
    marker = "患者王五MARK3391"
    with pytest.raises(CaseError, match=r"REPORT has 120000 characters; the limit is 20000") as e:
        prepare(case_dir, marker * 10000)
    assert "MARK3391" not in str(e.value)
    with pytest.raises(CaseError, match=r"REPORT is not valid UTF-8") as e:
        prepare(case_dir, marker + "\ud800")
    assert "MARK3391" not in str(e.value)


def test_cli_folder(server, dataset, tmp_path, capsys):
    from bonescan.cli import main

    code = main(["infer", str(dataset / "cases"), "--server", server.grpc_url, "--out", str(tmp_path / "out"), "--concurrency", "4"])
    out = capsys.readouterr().out
    n = len(list((dataset / "cases").iterdir()))
    assert code == 0 and f"{n} of {n} scans segmented" in out
    assert len(list((tmp_path / "out").glob("*_overlay.png"))) == n
    assert len(list((tmp_path / "out").glob("*_lesions.json"))) == n


def test_cli_lists_skipped_folders_and_says_where_results_are_only_when_written(server, case_dir, tmp_path, capsys):
    """A case folder without a scan is listed with the reason; a run that wrote nothing says so."""
    import shutil

    from bonescan.cli import main

    folder = tmp_path / "cases"
    shutil.copytree(case_dir, folder / "good")
    (folder / "no_scan").mkdir()
    (folder / "no_scan" / "report.txt").write_text("x", encoding="utf-8")
    code = main(["infer", str(folder), "--server", server.grpc_url, "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 1 and "skipped no_scan: no scan found (expected scan.dcm" in err
    assert "1 of 1 scans segmented (1 folder(s) without a scan skipped); results in" in out
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "scan.dcm").write_bytes(b"not dicom")
    code = main(["infer", str(bad), "--server", server.grpc_url, "--out", str(tmp_path / "out_bad")])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED" in out and "0 of 1 scans segmented; nothing written" in out and "results in" not in out
    assert not (tmp_path / "out_bad").exists()


def _lesions_json(out: Path, stem: str) -> dict:
    import json

    return json.loads((out / f"{stem}_lesions.json").read_text())


def test_pixel_spacing_comes_from_the_input_and_says_where_from(server, case_dir, tmp_path, capsys):
    """meta.json of a case folder, DICOM PixelSpacing, --pixel-spacing; with none, no mm² is claimed."""
    import json

    from bonescan.cli import main

    meta_spacing = tuple(json.loads((case_dir / "meta.json").read_text())["pixel_spacing_mm"])
    assert meta_spacing != (2.4, 2.4)  # the default, which a folder's own spacing used to lose to
    scan = read_scan(case_dir)
    np.save(tmp_path / "scan.npy", np.stack([scan.anterior, scan.posterior]))
    write_dicom_scan(tmp_path / "scan.dcm", scan.anterior, scan.posterior, (2.3, 2.1))
    out = tmp_path / "out"
    url = ["--server", server.grpc_url, "--out", str(out)]
    assert main(["infer", str(case_dir), *url]) == 0
    folder = _lesions_json(out, case_dir.name)
    assert tuple(folder["pixel_spacing_mm"]) == meta_spacing and folder["pixel_spacing_source"] == "meta.json"
    assert main(["infer", str(tmp_path / "scan.dcm"), *url]) == 0
    dcm = _lesions_json(out, "scan")
    assert dcm["pixel_spacing_mm"] == pytest.approx([2.3, 2.1]) and dcm["pixel_spacing_source"] == "dicom"
    assert main(["infer", str(tmp_path / "scan.dcm"), "--pixel-spacing", "2.0", "2.2", *url]) == 0
    given = _lesions_json(out, "scan")
    assert given["pixel_spacing_mm"] == [2.0, 2.2] and given["pixel_spacing_source"] == "command line"
    capsys.readouterr()
    assert main(["infer", str(tmp_path / "scan.npy"), *url]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    npy = _lesions_json(out, "scan")
    assert npy["pixel_spacing_source"] == "default" and "areas in mm² are not given" in npy["pixel_spacing_note"]
    assert "pixel spacing unknown" in line and "mm²" not in line.split("(")[0]
    assert all(les["area_mm2"] is None for les in npy["lesions"])
    # the library: the same decision, and no area in mm² without a spacing
    with BoneScanClient(server.grpc_url) as c:
        r = c.segment(tmp_path / "scan.npy", report="")
        assert r.pixel_spacing_source == "default" and r.lesion_area_mm2 is None
        r = c.segment(case_dir)
        assert r.pixel_spacing == meta_spacing and r.pixel_spacing_source == "meta.json" and r.lesion_area_mm2 is not None


def test_a_scan_without_report_says_no_report(server, case_dir, tmp_path, capsys):
    from bonescan.cli import main

    scan = read_scan(case_dir)
    np.save(tmp_path / "scan.npy", np.stack([scan.anterior, scan.posterior]))
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "scan.npy"), "--pixel-spacing", "2", "2", "--server", server.grpc_url, "--out", str(out)]) == 0
    assert ", no report," in capsys.readouterr().out
    assert _lesions_json(out, "scan")["report"] == "no report"
    assert main(["infer", str(case_dir), "--server", server.grpc_url, "--out", str(out)]) == 0
    assert "no report" not in capsys.readouterr().out and _lesions_json(out, case_dir.name)["report"] == "given"
    assert main(["infer", str(case_dir), "--model", "bonescan_unet", "--server", server.grpc_url, "--out", str(out)]) == 0
    assert _lesions_json(out, case_dir.name)["report"] == "image only"


def test_one_report_for_many_scans_is_refused(dataset, case_dir, capsys):
    from bonescan.cli import main

    code = main(["infer", str(dataset / "cases"), "--report", str(case_dir / "report.txt"), "--server", "localhost:1"])
    err = capsys.readouterr().err
    assert code == 2 and "--report gives one report for one scan" in err and "every patient would get the same report" in err


def test_a_model_that_is_not_an_ensemble_is_named(server):
    with pytest.raises(ClientError) as e:
        BoneScanClient(server.grpc_url, model="segmenter")
    msg = str(e.value)
    assert "'segmenter' is not an ensemble of this project" in msg and "bonescan (image + report)" in msg
    assert "bonescan_unet" in msg and "upgrade" not in msg


def test_the_http_port_is_recognised(server):
    with pytest.raises(ClientError) as e:
        BoneScanClient(f"localhost:{server.http_port}", retries=0)
    assert "answers HTTP/1, not gRPC" in str(e.value) and "8001" in str(e.value)
    (port,) = free_ports(1)
    with pytest.raises(ClientError) as e:
        BoneScanClient(f"localhost:{port}", retries=0)
    assert f"nothing listens on port {port}" in str(e.value)


def test_requests_during_shutdown_say_so():
    """What Triton 2.51 answers to requests in flight while it stops (seen with Ctrl-C on `bonescan serve`)."""
    from tritonclient.utils import InferenceServerException

    c = BoneScanClient("localhost:1", check_on_connect=False, retries=2, backoff_s=0.01)
    gone = InferenceServerException("Request for unknown model: 'bonescan' has no available versions", "StatusCode.NOT_FOUND")
    assert "the server is shutting down, or model 'bonescan' is unloading" in str(c._explain(gone, "case_1"))
    answers = iter([InferenceServerException("in ensemble 'bonescan', Server is stopping, scheduler for model has stopped "
                                             "accepting new inference requests", "StatusCode.UNAVAILABLE"),
                    InferenceServerException("failed to connect to all addresses; Connection refused", "StatusCode.UNAVAILABLE"),
                    InferenceServerException("failed to connect to all addresses; Connection refused", "StatusCode.UNAVAILABLE")])

    def infer():
        raise next(answers)

    with pytest.raises(ClientError, match="the server is shutting down"):
        c._call(infer, "case_1")
    unknown = InferenceServerException("Request for unknown model: 'bonescn' is not found", "StatusCode.NOT_FOUND")
    assert "this project's ensembles are bonescan" in str(c._explain(unknown, "case_1"))
    c.close()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_tls_with_a_self_signed_certificate(repo, work, case_dir, tmp_path):
    ca_key, ca, key, csr, crt = (tmp_path / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=bonescan-test-ca")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(crt), "-days", "1", "-extfile", str(ext))
    grpc, http, metrics = free_ports(3)
    srv = TritonServer(repo, grpc, http, metrics, log_file=work / "tritonserver_tls.log",
                       extra_args=["--grpc-use-ssl=true", f"--grpc-server-cert={crt}", f"--grpc-server-key={key}", f"--grpc-root-cert={ca}"])
    srv.start(timeout=240)
    try:
        with BoneScanClient(f"localhost:{grpc}", ssl=True, root_certificates=str(ca)) as c:
            r = c.segment(case_dir)
        assert r.mask.shape == (1024, 256)
        with pytest.raises(ClientError):  # plaintext against a TLS port fails clearly
            BoneScanClient(f"localhost:{grpc}", retries=0, timeout_s=5)
    finally:
        srv.stop()


@pytest.mark.slow
def test_client_extra_installs_without_torch(server, case_dir, tmp_path):
    """A fresh venv with only `pip install .[client]` segments a case (no torch, no transformers)."""
    root = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", f"{root}[client]"], check=True, capture_output=True, timeout=900)
    script = (
        "import sys; from bonescan.client import BoneScanClient\n"
        f"c = BoneScanClient('{server.grpc_url}')\n"
        f"r = c.segment(r'{case_dir}')\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "print('OK', r.summary())\n"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("OK")
    freeze = subprocess.run([str(pip), "freeze"], capture_output=True, text=True).stdout.lower()
    assert "torch" not in freeze and "transformers" not in freeze and "tritonclient==2.51.0" in freeze
