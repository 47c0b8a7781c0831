"""The command line: every command's help works and shows each option's default; train overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bonescan.cli import build_parser, train_configs


def commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


def test_every_command_has_help_with_defaults():
    """What `bonescan <command> --help` prints: every option has a help text; one with a default
    shows that default as it would be typed; one without says in words what happens unset."""
    seen = 0
    for path, p in commands(build_parser()):
        text = " ".join(p.format_help().split())
        seen += 1
        formatter = p._get_formatter()
        for action in p._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            where = f"bonescan {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help"
            shown = " ".join(formatter._expand_help(action).split())
            squeezed = "".join(shown.split())  # --help wraps lines, also after a hyphen
            assert squeezed in "".join(text.split())  # what the checks below read is what --help prints
            if action.required:
                continue
            default = action.default
            if default is not None:
                typed = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
                assert f"default: {typed}" in shown or typed in shown, f"{where}: help does not show its default {typed!r}: {shown}"
            else:
                assert "default" in shown and "default: None" not in shown, f"{where}: help does not say what unset means: {shown}"
            if "--model" in action.option_strings:
                assert action.choices and "{" + ",".join(action.choices) + "}" in text, f"{where} does not list its choices"
        assert "usage: bonescan" in text
    assert seen >= 25


def test_serve_refuses_flags_that_undo_its_restrictions(capsys, tmp_path):
    from bonescan.cli import main
    from bonescan.serving.server import check_passthrough

    assert check_passthrough(["--grpc-keepalive-time=20000", "--log-info=false"]) == ["--grpc-keepalive-time=20000", "--log-info=false"]
    for flag, why in [("--model-control-mode=explicit", "model control stays off"),
                      ("--model-control=explicit", "tritonserver would read it as --model-control-mode"),  # getopt abbreviation
                      ("--grpc-restricted-protocol=trace:k=v", "stay restricted"), ("--http-restricted-api=trace:k=v", "stay restricted"),
                      ("--model-repository=/elsewhere", "the repository is --repo"), ("--model-store=/x", "the repository is --repo"),
                      ("--load-model=segmenter", "model control"), ("--allow-sagemaker=true", "does not guard")]:
        assert main(["serve", "--repo", str(tmp_path), "--", flag]) == 2
        assert why in capsys.readouterr().err, flag
    assert main(["serve", "--repo", str(tmp_path), "--", "--grpc-keepalive-time", "20000"]) == 2
    assert "--flag=value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a tritonserver flag without `--`: say where it goes
        main(["serve", "--repo", str(tmp_path), "--grpc-use-ssl=true"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "tritonserver's own flags go after `--`" in err and "--tls-cert" in err
    args = build_parser().parse_args(["serve", "--repo", "r", "--log-verbose", "1", "--tls-cert", "c", "--tls-key", "k",
                                      "--tls-root", "ca", "--", "--grpc-keepalive-time=1"])
    assert (args.log_verbose, args.triton_args) == (1, ["--grpc-keepalive-time=1"])


def test_tls_flags(tmp_path):
    from bonescan.errors import BonescanError
    from bonescan.serving.server import tls_args

    cert, key, ca = (tmp_path / n for n in ("c.pem", "k.pem", "ca.pem"))
    for f in (cert, key, ca):
        f.write_text("x")
    assert tls_args(None, None) == []
    assert tls_args(cert, key) == ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
    assert tls_args(cert, key, ca)[-2:] == [f"--grpc-root-cert={ca}", "--grpc-use-ssl-mutual=true"]
    with pytest.raises(BonescanError, match="needs both --tls-cert and --tls-key"):
        tls_args(cert, None)
    with pytest.raises(BonescanError, match="--tls-root .*: file does not exist"):
        tls_args(cert, key, tmp_path / "nothing.pem")


def test_serve_names_a_missing_repository(capsys, tmp_path):
    from bonescan.cli import main

    assert main(["serve", "--repo", str(tmp_path / "nonexistent")]) == 2
    err = capsys.readouterr().err
    assert "nonexistent: folder does not exist" in err and "bonescan_repo.json" not in err


def test_admin_key_file_rules(tmp_path):
    from bonescan.errors import BonescanError
    from bonescan.serving.server import read_admin_key

    f = tmp_path / "k"
    f.write_text("short-secret\n")
    with pytest.raises(BonescanError) as e:
        read_admin_key(f)
    assert "at least 16 characters" in str(e.value) and "short-secret" not in str(e.value)
    f.write_text("a key with spaces 0123\n")
    with pytest.raises(BonescanError, match="without spaces"):
        read_admin_key(f)
    f.write_text("  0123456789abcdef-XYZ \n")
    assert read_admin_key(f) == "0123456789abcdef-XYZ"
    assert "at least 16" in " ".join(build_parser()._subparsers._group_actions[0].choices["serve"].format_help().split())


def test_without_a_c_compiler_serve_says_what_to_install(tmp_path, monkeypatch):
    from bonescan.errors import BonescanError
    from bonescan.serving import server

    monkeypatch.setattr(server, "triton_dist", lambda: tmp_path)  # no shim built yet
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(BonescanError) as e:
        server.key_shim()
    assert "apt-get install gcc" in str(e.value) and "ps" in str(e.value)


def test_the_printed_docker_command_builds_an_image_and_keeps_the_restrictions(tmp_path, monkeypatch):
    """The GPU commands `bonescan serve` prints: a GPU-flavor repository first, `docker build` of its
    Dockerfile (the python steps' packages pinned and installed then), then `docker run` of that image on
    it: nothing installed at start (the old line ran `pip install -r /models/requirements.txt` in the NGC
    image at every start), the key file mounted, the key never on the host's command line."""
    import re
    import shlex

    from bonescan.serving.server import IMAGE, NGC_IMAGE, docker_command, tls_args

    key = tmp_path / "admin.key"
    key.write_text("0123456789abcdef-secret\n")
    for name in ("export", "export_unet", "REPO"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    manifest = {"flavor": "embedded", "path": str(tmp_path / "REPO"), "dualpath": {"export": "../export"},
                "baseline": {"export": "../export_unet"}}
    for key_file in (key, None):
        text = docker_command(manifest, 8001, 8000, 8002, admin_key_file=key_file, bind="127.0.0.1")
        repo_build, build, run = [line for line in text.splitlines() if not line.startswith("#")]
        a = build_parser().parse_args(shlex.split(repo_build)[1:])
        assert (a.flavor, str(a.src), str(a.baseline), str(a.out)) == ("onnxruntime", "export", "export_unet", "REPO_GPU")
        assert shlex.split(build) == ["docker", "build", "-t", IMAGE, "REPO_GPU"]
        argv = shlex.split(run)
        assert argv[:2] == ["docker", "run"] and argv[-1] == IMAGE and NGC_IMAGE not in run
        assert not re.search(r"\bpip3?\b|requirements|apt-get|bash -c", run)  # nothing installed at start
        mounts = [argv[i + 1] for i, x in enumerate(argv) if x == "-v"]
        assert mounts[0] == "$PWD/REPO_GPU:/models:ro"
        assert "0123456789abcdef" not in text  # the key is never on the host's command line
        assert (f"{key}:/run/secrets/bonescan-admin-key:ro" in mounts) == (key_file is not None)
        assert [argv[i + 1] for i, x in enumerate(argv) if x == "-p"] == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert "on the command line of tritonserver inside the container" in text  # said honestly
    # TLS: the files mounted under /run/secrets/tls, tritonserver's flags after the image (to its entrypoint)
    cert, tls_key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_text("c")
    tls_key.write_text("k")
    run = [line for line in docker_command(manifest, tls=tls_args(cert, tls_key)).splitlines() if line.startswith("docker run")][0]
    argv = shlex.split(run)
    assert argv[argv.index(IMAGE) + 1:] == ["--grpc-use-ssl=true", "--grpc-server-cert=/run/secrets/tls/server-cert.pem",
                                            "--grpc-server-key=/run/secrets/tls/server-key.pem"]
    assert f"{cert}:/run/secrets/tls/server-cert.pem:ro" in [argv[i + 1] for i, x in enumerate(argv) if x == "-v"]
    # a GPU-flavor repository: build its image and run it; one without a Dockerfile (an older build) is named
    gpu = tmp_path / "REPO"
    lines = docker_command({"flavor": "tensorrt", "path": str(gpu)}).splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        f"docker build -t {IMAGE} {gpu}",
        f"docker run --rm --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {gpu}:/models:ro {IMAGE}"]
    assert any("has no Dockerfile" in line and "build it again" in line for line in lines)
    (gpu / "Dockerfile").write_text("FROM x\n")
    assert not any("has no Dockerfile" in line for line in docker_command({"flavor": "tensorrt", "path": str(gpu)}).splitlines())


def test_serving_a_gpu_flavor_repository_on_the_cpu_says_where_it_runs(tmp_path, capsys, monkeypatch):
    """`bonescan serve --repo REPO_GPU` here: no tritonserver is started (it could only print Triton's
    "unable to find backend library for backend 'onnxruntime'"); the message names the flavor, says it
    runs in the NGC container and prints how."""
    import json

    from bonescan.cli import main
    from bonescan.serving import server

    dist = tmp_path / "dist"
    (dist / "backends" / "python").mkdir(parents=True)  # the wheel's tritonserver: the python backend only
    monkeypatch.setattr(server, "triton_dist", lambda: dist)
    monkeypatch.setattr(server.TritonServer, "start",
                        lambda self, *a, **k: pytest.fail("a tritonserver was started for a flavor it cannot serve"))
    for flavor, backend in (("onnxruntime", "onnxruntime"), ("tensorrt", "tensorrt")):
        repo = tmp_path / f"REPO_{flavor}"
        repo.mkdir()
        (repo / "bonescan_repo.json").write_text(json.dumps({"flavor": flavor, "models": ["bonescan"],
                                                             "dualpath": {"export": "../gone"}, "baseline": None}))
        assert main(["serve", "--repo", str(repo)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"is a repository of the {flavor} flavor" in err and f"Triton's {backend} backend" in err
        assert "runs in the NGC Triton container (nvcr.io/nvidia/tritonserver:24.10-py3)" in err
        assert f"docker build -t {server.IMAGE} {repo}" in err and f"-v {repo}:/models:ro {server.IMAGE}" in err
        assert "bonescan repo build --flavor embedded --from EXPORT --out REPO, then bonescan serve --repo REPO" in err
    server.check_backends(tmp_path, {"flavor": "embedded"}, "")  # the embedded flavor is served here


def test_a_copied_repository_names_no_folder_of_the_machine_it_was_built_on(exports, tmp_path, monkeypatch):
    """bonescan_repo.json records the export folders relative to the repository; the printed `--from`
    is a folder of this machine (relative to the current one) or EXPORT, never the building machine's path."""
    import shlex
    import shutil

    from bonescan.serving.repository import RepoOptions, build_repository, read_manifest
    from bonescan.serving.server import docker_command

    repo = tmp_path / "site" / "REPO"
    build_repository(exports["dualpath"], repo, RepoOptions(), baseline=exports["unet"])
    manifest = read_manifest(repo)
    assert not Path(manifest["dualpath"]["export"]).is_absolute() and not Path(manifest["baseline"]["export"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    (line,) = [x for x in docker_command({**manifest, "path": str(repo)}).splitlines() if x.startswith("bonescan repo build")]
    a = build_parser().parse_args(shlex.split(line)[1:])
    assert not a.src.is_absolute() and (tmp_path / a.src).resolve() == exports["dualpath"].resolve()
    assert (tmp_path / a.baseline).resolve() == exports["unet"].resolve()
    copy = tmp_path / "elsewhere" / "deeper" / "REPO"  # carried to another machine (another depth: the exports stay behind)
    shutil.copytree(repo, copy)
    text = docker_command({**read_manifest(copy), "path": str(copy)})
    assert "--from EXPORT --baseline EXPORT_UNET --out REPO_GPU" in text
    assert str(exports["dualpath"].resolve().parent) not in text


def test_train_overrides_change_only_their_field():
    p = build_parser()
    base_m, base_t = train_configs(p.parse_args(["train", "--data", "d", "--out", "o", "--config", "tiny"]))
    m, t = train_configs(p.parse_args(["train", "--data", "d", "--out", "o", "--config", "tiny", "--steps", "3",
                                       "--batch-size", "0", "--lr", "0.5", "--no-prior", "--fusion-stages", "1"]))
    assert (t.steps, t.lr, t.batch_size) == (3, 0.5, base_t.batch_size)  # --batch-size 0 keeps the preset's
    assert (m.prior, m.fusion_stages) == (False, 1) and base_m.prior is True
    assert {k: v for k, v in vars(t).items() if k not in ("steps", "lr")} == {k: v for k, v in vars(base_t).items() if k not in ("steps", "lr")}


def test_a_log_file_keeps_its_cuda_messages_and_the_terminal_gets_one_note(tmp_path, monkeypatch):
    from bonescan.serving import server

    monkeypatch.setattr(server, "has_gpu", lambda: False)
    log = tmp_path / "triton.log"
    log.write_text('E1127 server.cc:241] "CudaDriverHelper has not been initialized."\n'
                   'E1127 ensemble_scheduler.cc:1468] "unable to create stream for bonescan: CUDA driver version is insufficient"\n')
    before = log.read_bytes()
    note = server.log_file_note(log)
    assert note == (f"note: {log} holds tritonserver's CUDA messages (CudaDriverHelper has not been initialized, "
                    "unable to create stream, no pinned memory); they are expected on a machine without an NVIDIA GPU: "
                    "every model runs on the CPU")
    assert log.read_bytes() == before
    log.write_text('I1127 model_lifecycle.cc:839] "successfully loaded \'bonescan\'"\n')
    assert server.log_file_note(log) is None
