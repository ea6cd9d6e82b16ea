"""The commands' parser: one-line errors, and every flag's help says its default."""

from __future__ import annotations

import pytest

from devices.cli import CommandParser


def test_help_says_the_default_and_errors_are_one_line(capsys, flags_without_default):
    parser = CommandParser(prog="cmd")
    parser.add_argument("--rounds", type=int, default=3, help="how many")
    parser.add_argument("--seed", type=int, default=0, help="seed")
    parser.add_argument("--out", default=None, help="where (default: the run directory)")
    parser.add_argument("--name", default=None, help="a name")
    assert flags_without_default(parser) == ["--name"]
    assert "(default: 3)" in parser.format_help() and "(default: 0)" in parser.format_help()
    with pytest.raises(SystemExit) as raised:
        parser.parse_args(["--rounds", "many"])
    assert raised.value.code == 2
    assert capsys.readouterr().err == "error: argument --rounds: invalid int value: 'many'\n"


def test_every_flag_of_devices_serve_says_its_default(flags_without_default):
    from devices.serve import build_parser

    assert flags_without_default(build_parser()) == []
