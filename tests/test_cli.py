"""The command line: every command's help works and shows each option's default; train overrides."""

from __future__ import annotations

import argparse

from bonescan.cli import build_parser, train_configs


def commands(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


def test_every_command_has_help_with_defaults():
    seen = 0
    for path, p in commands(build_parser()):
        text = p.format_help()
        seen += 1
        for action in p._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            where = f"bonescan {' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help"
            if not action.required and action.option_strings:
                assert "default" in p._get_formatter()._get_help_string(action), f"{where}: help does not show the default"
            if "--model" in action.option_strings:
                assert action.choices, f"{where} does not list its choices"
        assert "usage: bonescan" in text
    assert seen >= 25


def test_train_overrides_change_only_their_field():
    p = build_parser()
    base_m, base_t = train_configs(p.parse_args(["train", "--data", "d", "--out", "o", "--config", "tiny"]))
    m, t = train_configs(p.parse_args(["train", "--data", "d", "--out", "o", "--config", "tiny", "--steps", "3",
                                       "--batch-size", "0", "--lr", "0.5", "--no-prior", "--fusion-stages", "1"]))
    assert (t.steps, t.lr, t.batch_size) == (3, 0.5, base_t.batch_size)  # --batch-size 0 keeps the preset's
    assert (m.prior, m.fusion_stages) == (False, 1) and base_m.prior is True
    assert {k: v for k, v in vars(t).items() if k not in ("steps", "lr")} == {k: v for k, v in vars(base_t).items() if k not in ("steps", "lr")}
