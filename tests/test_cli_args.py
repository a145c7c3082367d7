"""The comma-separated list parsers shared by the CLI subcommands."""

from __future__ import annotations

import argparse

import pytest

from ctep._cli_args import float_list, int_list
from ctep.cli import main


def test_lists_parse_with_blanks_and_a_trailing_comma():
    assert int_list("784, 256 ,10,") == (784, 256, 10)
    assert float_list("0.1,1e-3, -2") == (0.1, 1e-3, -2.0)


@pytest.mark.parametrize(("parse", "text", "says"), [
    (int_list, "3,x,4", "'x' is not an integer"),
    (int_list, "3,2.5", "'2.5' is not an integer"),
    (int_list, " , ", "(no value)"),
    (float_list, "0.1,abc", "'abc' is not a finite number"),
    (float_list, "0.1,nan", "'nan' is not a finite number"),
    (float_list, "inf", "'inf' is not a finite number"),
    (float_list, "", "(no value)"),
])
def test_bad_lists_name_the_bad_item(parse, text, says):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse(text)
    assert says in str(err.value) and repr(text) in str(err.value)


@pytest.mark.parametrize("argv", [["verify", "--sizes", "4,x,2"],
                                  ["dynamics", "--out", "unused", "--sizes", "4,x,2"]])
def test_commands_report_the_bad_item(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --sizes: expected comma-separated integers such as 784,256,10, got " \
           "'4,x,2' ('x' is not an integer)" in err


def test_verify_reports_a_bad_beta(capsys):
    with pytest.raises(SystemExit):
        main(["verify", "--betas", "0.1,huge"])
    assert "argument --betas: expected comma-separated numbers" in capsys.readouterr().err
