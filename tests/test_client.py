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
from bonescan.serving.server import free_ports


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
    url = ["--server", server.grpc_url, "--out", str(out), "--overwrite"]
    assert main(["infer", str(case_dir), *url]) == 0
    folder = _lesions_json(out, case_dir.name)
    assert tuple(folder["pixel_spacing_mm"]) == meta_spacing and folder["pixel_spacing_source"] == "meta.json"
    url += ["--stem", "scan"]  # a DICOM is named after its accession number / SOP Instance UID otherwise
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
    assert main(["infer", str(case_dir), "--model", "bonescan_unet", "--server", server.grpc_url, "--out", str(out),
                 "--overwrite"]) == 0
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


def _certificates(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client certificate, all signed by the CA."""
    f = {n: d / n for n in ("ca.key", "ca.crt", "server.key", "server.crt", "client.key", "client.crt")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["ca.key"]), "-out", str(f["ca.crt"]), "-days", "1",
             "-subj", "/CN=bonescan-test-ca")
    ext = d / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who, cn in (("server", "localhost"), ("client", "bonescan-test-client")):
        csr = d / f"{who}.csr"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f[f"{who}.key"]), "-out", str(csr), "-subj", f"/CN={cn}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(f["ca.crt"]), "-CAkey", str(f["ca.key"]), "-CAcreateserial",
                 "-out", str(f[f"{who}.crt"]), "-days", "1", "-extfile", str(ext))
    return f


ADMIN_KEY = "test-admin-key-5d1f0c9a7e"


@pytest.fixture(scope="module")
def served(repo, tmp_path_factory):
    """`bonescan serve` as a user runs it (a subprocess): mutual TLS, an admin key file, a tritonserver
    flag passed through after `--`, output to the terminal (a pipe here)."""
    import os
    import signal

    d = tmp_path_factory.mktemp("serve")
    certs = _certificates(d)
    key_file = d / "admin.key"
    key_file.write_text(ADMIN_KEY + "\n")
    grpc, http, metrics = free_ports(3)
    terminal = d / "terminal.txt"
    cmd = [str(Path(sys.executable).parent / "bonescan"), "serve", "--repo", str(repo), "--grpc-port", str(grpc), "--http-port", str(http),
           "--metrics-port", str(metrics), "--admin-key-file", str(key_file), "--tls-cert", str(certs["server.crt"]),
           "--tls-key", str(certs["server.key"]), "--tls-root", str(certs["ca.crt"]), "--", "--grpc-keepalive-time=20000"]
    with open(terminal, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while "Ctrl-C or SIGTERM stops it." not in terminal.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, terminal.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    (triton,) = _children(proc.pid)
    yield {"proc": proc, "triton": triton, "grpc": grpc, "http": http, "certs": certs, "terminal": terminal}
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    assert proc.wait(90) == 0
    assert "stopped (exit code 0)" in terminal.read_text()
    assert not os.path.exists(f"/proc/{triton}")


def _children(pid: int) -> list[int]:
    import os

    def parent(p: str) -> int:
        try:
            return int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return -1

    return [int(p) for p in os.listdir("/proc") if p.isdigit() and parent(p) == pid]


def test_serve_with_mutual_tls_segments_over_it(served, case_dir):
    c = served["certs"]
    with BoneScanClient(f"localhost:{served['grpc']}", ssl=True, root_certificates=str(c["ca.crt"]),
                        private_key=str(c["client.key"]), certificate_chain=str(c["client.crt"])) as client:
        r = client.segment(case_dir)
    assert r.mask.shape == (1024, 256)
    with pytest.raises(ClientError):  # mutual TLS: no client certificate, no connection
        BoneScanClient(f"localhost:{served['grpc']}", ssl=True, root_certificates=str(c["ca.crt"]), retries=0, timeout_s=5)
    with pytest.raises(ClientError) as e:  # plaintext against a TLS port fails clearly
        BoneScanClient(f"localhost:{served['grpc']}", retries=0, timeout_s=5)
    assert "if it uses TLS, give its CA certificate" in str(e.value)
    text = served["terminal"].read_text()
    assert "gRPC over TLS (mutual: clients need a certificate)" in text


def test_serve_keeps_the_admin_key_off_every_command_line(served):
    """tritonserver and its python-backend stubs: neither `ps` nor /proc shows the key; the admin
    endpoints open with it and stay shut without it."""
    import tritonclient.http as httpclient

    from bonescan.serving.server import ADMIN_HEADER

    triton = served["triton"]
    stubs = _children(triton)
    assert len(stubs) >= 6  # one per python-backend model instance
    for pid in [served["proc"].pid, triton, *stubs]:
        args = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=True).stdout
        assert args.strip() and ADMIN_KEY not in args
        assert ADMIN_KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert ADMIN_KEY.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    assert b"BONESCAN-ADMIN-KEY-PLACEHOLDER-" in Path(f"/proc/{triton}/cmdline").read_bytes()
    assert b"--grpc-keepalive-time=20000" in Path(f"/proc/{triton}/cmdline").read_bytes()  # passed through
    assert ADMIN_KEY not in served["terminal"].read_text()
    h = httpclient.InferenceServerClient(f"localhost:{served['http']}")
    try:
        assert h.get_model_repository_index(headers={ADMIN_HEADER: ADMIN_KEY}) is not None
        for headers in ({}, {ADMIN_HEADER: "wrong-key-0123456789"}):
            with pytest.raises(Exception) as e:
                h.get_model_repository_index(headers=headers)
            assert "restricted" in str(e.value).lower() or "403" in str(e.value)
    finally:
        h.close()  # an open HTTP connection would hold tritonserver's shutdown until its exit timeout


def test_serve_hides_the_cuda_messages_of_a_machine_without_gpu(served):
    from bonescan.serving.server import has_gpu

    if has_gpu():
        pytest.skip("the CUDA messages are real on a machine with a GPU: they are shown")
    text = served["terminal"].read_text()
    import re

    # tritonserver's lines: "I1203 19:20:27..." (default) or "2026-12-03T19:20:27Z I 20919 ..." (--log-format=ISO8601)
    own = re.compile(r"^([IWE]\d{4} |\d{4}-\d\d-\d\dT[\d:.]+Z [IWE] )")
    triton_lines = [line for line in text.splitlines() if own.match(line)]
    assert any("model_lifecycle" in line for line in triton_lines)  # tritonserver's own output does reach the terminal
    for noise in ("CudaDriverHelper has not been initialized", "unable to create stream", "CUDA driver version is insufficient"):
        assert not any(noise in line for line in triton_lines)
    assert text.count("are expected on a machine without an NVIDIA GPU") == 1


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
