"""The command line: every command's help works and shows each option's default; train overrides."""

from __future__ import annotations

import argparse

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


def test_the_printed_docker_command_keeps_the_restrictions(tmp_path):
    """The GPU command `bonescan serve` prints: a GPU-flavor repository first, then docker run on it
    with model control off, the admin endpoints restricted by a key read inside the container."""
    import shlex

    from bonescan.serving.server import ADMIN_ENDPOINTS, ADMIN_HEADER, NGC_IMAGE, docker_command

    key = tmp_path / "admin.key"
    key.write_text("0123456789abcdef-secret\n")
    manifest = {"flavor": "embedded", "dualpath": {"export": "/x/export"}, "baseline": {"export": "/x/export_unet"}}
    for key_file in (key, None):
        text = docker_command(manifest, 8001, 8000, 8002, admin_key_file=key_file, bind="127.0.0.1")
        commands_ = [line for line in text.splitlines() if not line.startswith("#")]
        build, run = commands_
        a = build_parser().parse_args(shlex.split(build)[1:])
        assert (a.flavor, str(a.src), str(a.baseline), str(a.out)) == ("onnxruntime", "/x/export", "/x/export_unet", "REPO_GPU")
        argv = shlex.split(run)
        assert argv[:2] == ["docker", "run"] and NGC_IMAGE in argv
        mounts = [argv[i + 1] for i, x in enumerate(argv) if x == "-v"]
        assert "$PWD/REPO_GPU:/models:ro" in mounts
        assert "0123456789abcdef" not in run  # the key is never on the host's command line
        if key_file:
            assert f"{key}:/run/secrets/bonescan-admin-key:ro" in mounts
        assert [argv[i + 1] for i, x in enumerate(argv) if x == "-p"] == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
        script = argv[argv.index("-c") + 1]
        triton = shlex.split(script.split("exec ", 1)[1])
        assert triton[0] == "tritonserver" and "--model-repository=/models" in triton and "--model-control-mode=none" in triton
        restricted = f"{ADMIN_ENDPOINTS}:{ADMIN_HEADER}=$KEY"
        assert f"--grpc-restricted-protocol={restricted}" in triton and f"--http-restricted-api={restricted}" in triton
        assert script.startswith("KEY=$(cat /run/secrets/bonescan-admin-key)" if key_file else "KEY=$(head -c 48 /dev/urandom")
    assert "on the command line of tritonserver inside the container" in text  # said honestly
    manifest = {"flavor": "tensorrt", "path": str(tmp_path)}
    (run,) = [line for line in docker_command(manifest).splitlines() if not line.startswith("#")]
    assert f"-v {tmp_path}:/models:ro" in run and "bonescan repo build" not in run


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
