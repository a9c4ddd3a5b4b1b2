"""The board file 'boostsim config init' writes mentions only tables and keys that exist: its
commented examples, uncommented, are read by the commands it names, value for value."""

from __future__ import annotations

import re
import tomllib

from boostsim.cli.context import _default_board_text
from boostsim.params import BoostParams
from firmware_bridge.emulator import EmulatorConfig
from firmware_bridge.session import calibration_from_config

TEMPLATE = _default_board_text()
#: The tables a board file may hold and their readers (checked below).
READ = {"converter", "emulator", "emulator.firmware", "board.calibration"}


def _uncommented(text: str) -> str:
    """The template with its example lines (``# [table]``, ``# key = value``) uncommented."""
    example = re.compile(r"^# (\[[\w.]+\]|\w+ = \S+)(\s+#.*)?$")
    lines = []
    for line in text.splitlines():
        m = example.match(line)
        lines.append(m.group(1) if m else line)
    return "\n".join(lines) + "\n"


def test_every_table_mentioned_is_one_the_code_reads():
    mentioned = set(re.findall(r"\[([a-z_]+(?:\.[a-z_]+)*)\]", TEMPLATE))
    assert mentioned == READ


def test_the_examples_are_read_by_their_commands(tmp_path):
    text = _uncommented(TEMPLATE)
    document = tomllib.loads(text)
    assert {k for k, v in document.items() if isinstance(v, dict)} == {"converter", "emulator",
                                                                        "board"}
    path = tmp_path / "board.toml"
    path.write_text(text)
    params = BoostParams.from_toml(text)
    emulator = EmulatorConfig.load(path)  # refuses keys it does not know
    assert emulator.params == params
    assert (emulator.noise_lsb, emulator.adc_offset_lsb) == (2.0, 1.5)
    assert emulator.firmware == {"RING_SIZE": 256}
    assert calibration_from_config(document, str(path)) == (1.02, -0.05)


def test_the_emulator_keys_listed_are_the_emulators():
    listed = re.search(r"keys\s+(.*?)\(firmware_bridge\.emulator\)", TEMPLATE, re.S).group(1)
    names = set(re.findall(r"[a-z_][a-z_0-9]*", listed)) - {"or", "and"}
    assert names == set(EmulatorConfig._KEYS) - {"firmware"}
