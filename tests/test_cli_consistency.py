"""The commands agree with each other: one --rate (same meaning, same default) in simulate,
tune, bode and bench live; bode takes --pid-config like simulate; percentages where duties are
read; usage errors name the subcommand's --help; bode's own examples are stable loops."""

from __future__ import annotations

import argparse
import json
import re
import shlex

import numpy as np
import pytest
from cli_helpers import cli, one_line_error

from boostsim.cli import build_parser
from boostsim.cli.control import _BODE_EPILOG

pytestmark = pytest.mark.slow  # CLI runs of every command


def _subparser(parser: argparse.ArgumentParser, *words: str) -> argparse.ArgumentParser:
    for word in words:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_rate_is_one_option_in_every_loop_command():
    parser = build_parser()
    commands = (["simulate"], ["tune"], ["bode"], ["bench", "live"])
    rates = {" ".join(words): _option(_subparser(parser, *words), "--rate") for words in commands}
    assert len({(r.default, r.metavar, r.type("1k")) for r in rates.values()}) == 1
    assert rates["simulate"].type("1k") == 1000.0
    # The help is true of its command: --pid-config only where the command has it, switching
    # periods only in the simulation, the default where each command takes it from.
    for words in commands:
        has_file = any("--pid-config" in a.option_strings
                       for a in _subparser(parser, *words)._actions)
        assert ("--pid-config" in rates[" ".join(words)].help) == has_file, words
    assert rates["simulate"].help == rates["bode"].help
    assert "default: fsw" in rates["tune"].help
    assert "switching periods" not in rates["bench live"].help
    for words in (["simulate"], ["bode"], ["bench", "live"]):
        p = _subparser(parser, *words)
        for flag in ("--kp", "--ki", "--kd", "--tf", "--pid-config"):
            assert _option(p, flag).help == _option(_subparser(parser, "simulate"), flag).help


def test_given_gains_run_at_the_same_default_rate_in_simulate_and_bode(capsys):
    gains = ["--vref", "12", "--kp", "0.01", "--ki", "5"]
    status, out, err = cli(capsys, "bode", *gains, "--json", "--no-files")
    assert status == 0, err
    bode_rate = json.loads(out)["rate_Hz"]
    status, out, err = cli(capsys, "simulate", *gains, "--t-end", "20m", "--json")
    assert status == 0, err
    assert json.loads(out)["closed_loop"]["rate"] == bode_rate == 200.0


def test_bode_takes_the_gains_file_of_tune(capsys, tmp_path):
    gains = tmp_path / "gains.toml"
    status, out, err = cli(capsys, "tune", "--vref", "12", "--crossover", "2k", "--out",
                           str(gains))
    assert status == 0, err
    status, out, err = cli(capsys, "bode", "--vref", "12", "--pid-config", str(gains),
                           "--json", "--no-files")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["rate_Hz"] == pytest.approx(100e3)
    assert doc["margins"]["crossover_hz"] == pytest.approx(2000, rel=1e-3)
    assert doc["margins"]["phase_margin_deg"] == pytest.approx(50, abs=0.2)
    # an option overrides the file's value
    status, out, err = cli(capsys, "bode", "--vref", "12", "--pid-config", str(gains),
                           "--rate", "50k", "--json", "--no-files")
    assert status == 0, err
    assert json.loads(out)["rate_Hz"] == pytest.approx(50e3)


def test_duty_as_a_percentage(capsys):
    status, out, err = cli(capsys, "steady", "--duty", "60%", "--json")
    assert status == 0, err
    percent = json.loads(out)
    status, out, err = cli(capsys, "steady", "--duty", "0.6", "--json")
    assert json.loads(out)["vout_mean"] == percent["vout_mean"]
    status, out, err = cli(capsys, "sweep", "--duty", "10%:30%:10%", "--json", "--no-files")
    assert status == 0, err
    assert json.loads(out)["study"]["axes"]["duty"] == "0.1,0.2,0.3"
    status, out, err = cli(capsys, "steady", "--duty", "100%")
    assert status == 2 and "duty must be in [0, 1)" in one_line_error(err)
    # bench step read its FROM:TO with the plain number parser ("cannot read '60%'")
    status, out, err = cli(capsys, "bench", "step", "--port", "emu:", "--duty", "40%:60%",
                           "--pre", "2m", "--post", "5m", "--settle", "0.05", "--json",
                           "--no-files")
    assert status == 0, err
    doc = json.loads(out)
    assert (doc["duty"], doc["duty_after"]) == (0.4, 0.6)


def _duty_options(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(command words, action) of every option that reads a duty, in every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield from _duty_options(sub, (*words, word))
        elif any("duty" in flag for flag in action.option_strings) or (
                action.help and " in duty" in action.help):
            yield words, action


def test_every_duty_option_takes_a_percentage():
    options = list(_duty_options(build_parser()))
    flags = {(" ".join(words), action.option_strings[-1]) for words, action in options}
    # The census is what it should be: a new duty option is checked here too.
    assert {("bench step", "--duty"), ("bench sweep", "--duty"), ("bench calibrate", "--duty"),
            ("bench identify", "--duty"), ("bench identify", "--amplitude"),
            ("bench live", "--max-duty"), ("simulate", "--duty"), ("simulate", "--duty-max"),
            ("simulate", "--initial-duty"), ("steady", "--duty"), ("sweep", "--duty"),
            ("bode", "--duty")} <= flags
    for words, action in options:
        if action.metavar == "RANGE":
            percent, fraction = "10%:30%:10%", "0.1:0.3:0.1"
        elif action.metavar == "FROM[:TO]":
            percent, fraction = "40%:60%", "0.4:0.6"
        elif "--amplitude" in action.option_strings:
            percent, fraction = "4%", "0.04"
        else:
            percent, fraction = "60%", "0.6"
        np.testing.assert_allclose(action.type(percent), action.type(fraction),
                                   err_msg=f"{' '.join(words)} {action.option_strings}")


def _epilogs(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    yield words, parser.epilog or ""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield from _epilogs(sub, (*words, word))


def test_help_examples_keep_their_line_continuations():
    # A backslash-newline in the (non-raw) epilog string joins the lines in Python, leaving the
    # next line's indent as a run of spaces inside the printed command.
    for words, epilog in _epilogs(build_parser()):
        for line in epilog.splitlines():
            if line.lstrip().startswith("boostsim "):
                command = line.split("#")[0].rstrip()
                assert "   " not in command.strip(), (words, line)


@pytest.mark.parametrize("words", [["bode"], ["simulate"], ["bench", "live"], ["sweep"]])
def test_usage_errors_point_at_the_subcommands_help(capsys, words):
    status, out, err = cli(capsys, *words, "--no-such-option")
    assert status == 2 and out == ""
    assert one_line_error(err).endswith(f"(see 'boostsim {' '.join(words)} --help')")


def test_the_examples_of_bode_help_are_stable_loops(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = _BODE_EPILOG.split("examples:")[1].replace("\\\n", " ").splitlines()
    commands = [shlex.split(line.split("#")[0]) for line in lines if line.strip()]
    loops = 0
    for command in commands:
        for part in " ".join(command).split(" && "):
            words = part.split()
            assert words[0] == "boostsim"
            status, out, err = cli(capsys, *words[1:], "--json")
            assert status == 0, (words, err)
            doc = json.loads(out)
            if "margins" in doc:
                loops += 1
                assert doc["margins"]["stable"], words
                assert doc["margins"]["phase_margin_deg"] > 30, words
    assert loops >= 3


def test_a_large_grid_prints_an_excerpt_that_says_which_rows(capsys, tmp_path):
    args = ["sweep", "--duty", "0.1:0.8:0.1", "--sweep", "L=10u:100u:20"]
    status, out, err = cli(capsys, *args, "--no-files")
    assert status == 0, err
    note = next(line for line in out.splitlines() if line.startswith("(showing"))
    assert note == ("(showing 21 of 160 points: one row in 8 and the last, rows 1, 9, 17, ..., "
                    "153, 160; write all of them with --out FILE)")
    table = [line for line in out.splitlines() if line.startswith(("0.", "1."))]
    assert len(table) == 21
    csv = tmp_path / "grid.csv"
    status, out, err = cli(capsys, *args, "--no-files", "--out", str(csv))
    assert f"all 160 are in {csv})" in out


@pytest.mark.parametrize("args, text", [
    (["tune", "--vref", "12", "--crossover", "2k"], "(every 1 period)"),
    (["sweep", "--duty", "0.6", "--no-files"], "· 1 point ·"),
    (["sweep", "--duty", "0.6", "--mc", "1", "--tol", "L=10%", "--no-files"], "1 sample,"),
    (["simulate", "--vref", "12", "--tune", "--crossover", "2k", "--t-end", "2m"],
     "= every 1 period ·"),
])
def test_one_is_singular(capsys, args, text):
    status, out, err = cli(capsys, *args)
    assert status == 0, err
    assert text in out
    assert not re.search(r"\b1 (period|point|sample)s\b", out)


def test_emulate_follows_the_common_conventions(capsys, tmp_path):
    status, out, err = cli(capsys, "emulate", "-q", "--duration", "0.2")
    assert status == 0 and err == ""
    assert len(out.splitlines()) == 1 and out.startswith("/dev/")
    status, out, err = cli(capsys, "emulate", "--json", "--quiet", "--duration", "0.2",
                           "--seed", "1")
    assert status == 0 and err == ""
    doc = json.loads(out)
    assert doc["command"] == "emulate" and doc["port"].startswith("/dev/")
    assert doc["errors"] == [] and doc["stats"]["polls"] > 0
    status, out, err = cli(capsys, "emulate", "--config", str(tmp_path / "missing.toml"))
    assert status == 1 and out == ""
    assert one_line_error(err).startswith("boostsim: error: cannot read configuration")
    for args in (["--drop", "2"], ["--fault", "1:explode"], ["--duration", "-1"],
                 ["--no-such-option"]):
        status, out, err = cli(capsys, "emulate", *args)
        assert status == 2 and out == ""
        assert one_line_error(err).endswith("(see 'boostsim emulate --help')"), args


def test_the_firmware_config_option_has_one_name():
    parser = build_parser()
    for words in (["emulate"], ["firmware", "install"], ["firmware", "files"]):
        flags = {f for a in _subparser(parser, *words)._actions for f in a.option_strings}
        assert "--firmware-config" in flags and "--board-config" not in flags, words
