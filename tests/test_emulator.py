"""The board emulator over its pseudo-terminal: pyserial, PyVISA and socat open it like a board.

* The protocol conformance scripts of tests/test_protocol_conformance.py (the ones that do not
  poke the fake plant or need a fake clock) replayed byte for byte through the pty.
* Real-time behaviour: MEAS:VOLT? converging to the exact steady state, streamed blocks with
  contiguous sample indices, OVP after a load disconnect, the host watchdog.
* Fault injection: byte drop/corruption, blackout, stall (and the hardware watchdog), reset,
  ring-buffer overflow with a slow consumer.
* The command line, the TOML board description, PyVISA.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import serial
import test_protocol_conformance as conformance
from waiting import wait_until

from boostsim import default_board, steady_state
from boostsim.rp2040 import ADC_CONVERSION_S
from firmware_bridge import protocol
from firmware_bridge.emulator import (
    SOFT_REBOOT_BANNER,
    Emulator,
    EmulatorConfig,
    firmware_config,
    main,
)

pytestmark = pytest.mark.slow  # the emulator over a pseudo-terminal

BOARD = default_board()
FAKE_SERIAL = "E66038B713345E2C"  # the serial number the conformance scripts expect


def open_port(emu: Emulator, timeout: float = 2.0) -> serial.Serial:
    port = serial.Serial(emu.port, timeout=timeout)
    port.reset_input_buffer()
    return port


def ask(port: serial.Serial, line: str) -> str:
    port.write(line.encode("ascii") + b"\n")
    reply = port.readline()
    assert reply.endswith(b"\n"), (line, reply)
    return reply.decode("ascii").strip()


def send(port: serial.Serial, *lines: str) -> None:
    port.write(b"".join(line.encode("ascii") + b"\n" for line in lines))


def errors(port: serial.Serial) -> list[int]:
    codes = []
    for _ in range(20):
        code = int(ask(port, "SYST:ERR?").split(",")[0])
        if code == 0:
            break
        codes.append(code)
    return codes


def fetch(port: serial.Serial, count: int | None = None) -> protocol.AdcBlock:
    port.write(b"FETC:ADC?" + (b" %d" % count if count else b"") + b"\n")
    kind, payload = protocol.read_response(port.read)
    assert kind == "block", payload
    return protocol.decode_adc_block(payload)



# ------------------------------------------------------------------ conformance over the pty


def _read_one(port: serial.Serial) -> bytes:
    """One raw response: a line, or a definite-length block with its LF."""
    first = port.read(1)
    if first == b"#":
        ndigits = port.read(1)
        digits = port.read(int(ndigits))
        body = port.read(int(digits) + 1)
        return first + ndigits + digits + body
    if first == b"\n":
        return first
    return first + port.read_until(b"\n")


def _replay(emu: Emulator, port: serial.Serial, case) -> list:
    """Run a conformance case's steps through the pty; records as the fake-HAL driver makes."""
    records = []
    for step, expect in case.items:
        step = step if isinstance(step, tuple) else (step,)
        kind = step[0]
        if isinstance(kind, bytes) or kind == "raw":
            port.write(kind + b"\n" if isinstance(kind, bytes) else step[1])
            if isinstance(expect, bytes):
                # Exactly what is expected, no more: a stray byte shows up in the next step.
                records.append(port.read(len(expect)) if expect else b"")
            elif isinstance(kind, bytes) and protocol.is_query(kind):
                records.append(_read_one(port))
            else:
                records.append(b"")
        elif kind == "advance":
            time.sleep(step[1] / 1e6)
            records.append(None)
        elif kind == "poll":
            records.append(None)
        elif kind in ("state", "pwm"):
            assert ask(port, "*OPC?") == "1"  # everything sent so far has been executed
            if kind == "state":
                records.append(sorted(emu.snapshot().items()))
            else:
                records.append(emu.call(lambda: emu.hal.pwm_request))
        elif kind == "errors":
            records.append(errors(port))
        else:
            raise AssertionError(f"step {kind!r} needs the fake HAL")
    assert ask(port, "*OPC?") == "1"  # and nothing unexpected is left in the stream
    return records


REPLAYED = ["common", "forms", "framing", "errors", "duty_rejection", "limits", "rst",
            "error_queue"]


@pytest.mark.parametrize("name", REPLAYED)
def test_conformance_scripts_over_the_pty(name):
    case = next(c for c in conformance.CASES if c.name == name)
    # A 1 V supply keeps the output below the OVP level whatever duty the scripts set.
    with Emulator(BOARD.replace(vin=1.0), serial=FAKE_SERIAL, noise_lsb=0, seed=1,
                  firmware=case.overrides or {}) as emu:
        with open_port(emu) as port:
            conformance.check_records(case, _replay(emu, port, case))


# ------------------------------------------------------------------ real-time behaviour


def test_meas_volt_converges_to_the_simulated_value():
    # The raw serial link, no host-side DNL correction: an ideal ADC, so the board's own
    # reading converges to the truth (the RP2040's DNL and its correction: test_adc_emulator).
    with Emulator(seed=2, noise_lsb=1.0, adc_dnl="ideal") as emu, open_port(emu) as port:
        assert ask(port, "*IDN?").startswith("boostsim,PicoBoost,")
        v_off = float(ask(port, "MEAS:VOLT?"))
        off = steady_state(BOARD, 0.0).vout_mean
        assert abs(v_off - off) < 0.03
        assert abs(float(ask(port, "MEAS:VOLT:IN?")) - 5.0) < 0.02
        send(port, "SOUR:PWM:DUTY 0.6", "OUTP ON")
        time.sleep(0.15)
        duty = emu.plant_state()["duty"]  # the RP2040's quantised duty
        assert abs(duty - 0.6) < 1e-3
        target = steady_state(BOARD, duty).vout_mean
        readings = [float(ask(port, "MEAS:VOLT?")) for _ in range(10)]
        lsb = 3.3 / 4096 * (115 / 15)
        assert abs(np.mean(readings) - target) < 2 * lsb, (readings, target)
        raw = int(ask(port, "MEAS:VOLT:RAW?"))
        assert abs(raw - target / (115 / 15) / 3.3 * 4096) < 12
        assert errors(port) == []


def test_streamed_blocks_are_contiguous_and_follow_the_output():
    # Raw codes converted as the firmware does, compared with the truth: an ideal ADC (the
    # RP2040's DNL would add up to ~35 mV of integral non-linearity; test_adc_emulator).
    with Emulator(seed=3, noise_lsb=0.5, adc_dnl="ideal") as emu, open_port(emu) as port:
        send(port, "SOUR:PWM:DUTY 0.4", "OUTP ON", "SENS:ADC:RATE 10000", "INIT")
        assert ask(port, "ADC:RATE?") == "10000"
        blocks = []
        stepped = False
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.6:
            time.sleep(0.03)
            blocks.append(fetch(port))
            if not stepped and time.monotonic() - t0 > 0.25:
                send(port, "SOUR:PWM:DUTY 0.6")
                stepped = True
        send(port, "ABOR")
        last = fetch(port)
        blocks.append(last)
        assert not last.running
        index = 0
        for b in blocks:
            assert b.first_index == index and not b.overflow and b.period_us == 100
            assert b.t_first_us == blocks[0].t_first_us + b.first_index * 100
            index += b.count
        assert index > 4000  # ~0.6 s at 10 kHz
        assert all(b.running for b in blocks[:-1])
        assert [b.seq for b in blocks] == list(range(blocks[0].seq, blocks[0].seq + len(blocks)))
        volts = np.concatenate([b.volts() for b in blocks])
        lo = steady_state(BOARD, 0.4).vout_mean
        hi = steady_state(BOARD, emu.plant_state()["duty"]).vout_mean
        before = volts[1500:2300]   # 0.15..0.23 s: settled at duty 0.4
        after = volts[-1000:]       # settled at 0.6
        assert abs(before.mean() - lo) < 0.02 and abs(after.mean() - hi) < 0.02
        assert np.max(np.abs(np.diff(volts[-1000:]))) < 0.1  # no glitches between blocks


def test_over_voltage_trips_after_a_load_disconnect():
    with Emulator(seed=4, noise_lsb=1.0) as emu, open_port(emu) as port:
        # 18 V: above the start-up overshoot of duty 0.6 (16.7 V, which a 14 V level trips
        # on: the protection sees every millisecond).
        send(port, "PROT:OVP:LEV 18", "SOUR:PWM:DUTY 0.6", "OUTP ON")
        time.sleep(0.05)
        assert ask(port, "PROT:TRIP?") == "NONE"
        emu.disconnect_load()
        assert wait_until(lambda: ask(port, "PROT:TRIP?") == "OVP", 2.0)
        state = emu.plant_state()
        assert ask(port, "OUTP?") == "0" and not state["enabled"]
        # The open output holds its charge: clearing is refused while it is above the level.
        assert state["vout"] > 18.0
        send(port, "PROT:CLE")
        assert errors(port) == [101, -221]  # the trip itself was queued when it happened
        send(port, "OUTP ON")
        assert errors(port) == [-221]
        emu.set_load(R=48.0)  # load back: the output discharges to vin - v_f
        time.sleep(0.1)
        send(port, "PROT:CLE")
        assert errors(port) == [] and ask(port, "PROT:TRIP?") == "NONE"
        block = fetch(port)
        assert not block.ovp_tripped


def test_load_steps_while_the_on_board_pid_runs_come_after_the_steps_due():
    """The emulator's own changes (here load steps from the host's thread) wake the serve
    loop while the on-board PID's steps wait to run together (STEP_BATCH_S): the steps due
    by then run first, each sampling at its due time, and the change after them; the loop
    holds the setpoint through the load steps."""
    with Emulator(seed=6) as emu, open_port(emu) as port:
        hal, dev = emu.hal, emu.device
        conversions = dev.cfg.CONT_AVG * ADC_CONVERSION_S
        steps: list[tuple[float, float]] = []  # (first conversion, due time) [s]

        class Timed(dev._get_pid_class()):
            def update(self, setpoint, measurement):
                steps.append((hal.now() - conversions, hal.boot_time + dev._next_ctrl_us * 1e-6))
                return super().update(setpoint, measurement)

        emu.call(lambda: setattr(dev, "_pid_class", Timed))
        send(port, "SOUR:PWM:DUTY 0.4", "OUTP ON", "CONT:RATE 2000", "CONT:VREF 10",
             "CONT:PID 0.01,40,0", "CONT:MODE PID")
        time.sleep(0.3)
        for k, pause in enumerate(np.random.default_rng(6).uniform(0.0, 0.006, 60)):
            time.sleep(pause)
            emu.set_load(R=60.0 if k % 2 else 48.0)
        time.sleep(0.2)
        untouched = len(steps) - 1  # the commands below may come just before a step's time
        assert float(ask(port, "MEAS:VOLT?")) == pytest.approx(10.0, abs=0.15)
        assert errors(port) == [] and ask(port, "PROT:TRIP?") == "NONE"
        stats = emu.stats()
    assert emu.errors == [] and stats["errors"] == 0
    sample, due = np.array(steps[:untouched]).T
    assert sample.size > 1000
    np.testing.assert_allclose(sample, due, rtol=0, atol=1e-6)
    assert stats["waits"] < stats["polls_run"] / 2  # the steps ran in batches


def test_host_watchdog_expires_when_the_host_goes_quiet():
    with Emulator(seed=5) as emu, open_port(emu) as port:
        send(port, "SYST:WDOG:TIM 0.2", "SOUR:PWM:DUTY 0.3", "OUTP ON")
        for _ in range(5):  # queries feed it
            time.sleep(0.08)
            assert ask(port, "OUTP?") == "1"
        time.sleep(0.35)
        assert ask(port, "PROT:TRIP?") == "WDOG"
        assert ask(port, "OUTP?") == "0" and not emu.plant_state()["enabled"]
        assert ask(port, "SYST:ERR?").startswith('102,"Host watchdog tripped;no valid command '
                                                 'for 0.2 s')
        # A blackout (bytes lost on the way) does the same while the host keeps talking.
        send(port, "PROT:CLE", "OUTP ON")
        assert ask(port, "OUTP?") == "1"
        emu.blackout(0.4, direction="rx")
        for _ in range(5):
            send(port, "*OPC")
            time.sleep(0.08)
        time.sleep(0.1)
        assert ask(port, "PROT:TRIP?") == "WDOG"


# ------------------------------------------------------------------ fault injection


def test_soft_reset_loses_the_state_and_prints_the_banner():
    with Emulator(seed=6) as emu, open_port(emu) as port:
        send(port, "PROT:OVP:LEV 20", "SOUR:PWM:DUTY 0.5", "OUTP ON", "SENS:ADC:RATE 2000",
             "INIT", "FOO")
        assert ask(port, "OUTP?") == "1"
        t_before = fetch(port).t_first_us
        emu.reset()
        assert port.read(len(SOFT_REBOOT_BANNER)) == SOFT_REBOOT_BANNER
        assert ask(port, "*IDN?").startswith("boostsim,PicoBoost,")
        assert ask(port, "OUTP?") == "0" and ask(port, "SOUR:PWM:DUTY?") == "0"
        assert ask(port, "PROT:OVP:LEV?") == "15" and ask(port, "SYST:ERR:COUN?") == "0"
        block = fetch(port)
        assert not block.running and block.count == 0 and block.seq == 0
        assert not emu.plant_state()["enabled"]
        assert t_before > 0 and emu.resets == 1
        # A hardware-watchdog reset says nothing.
        emu.reset("watchdog")
        assert ask(port, "*OPC?") == "1"
        assert emu.resets == 2


def test_stall_delays_answers_and_the_hardware_watchdog_reboots():
    with Emulator(seed=7, firmware={"HW_WDT_MS": 400}) as emu, open_port(emu) as port:
        send(port, "SENS:ADC:RATE 1000", "INIT", "SOUR:PWM:DUTY 0.3", "OUTP ON")
        assert ask(port, "OUTP?") == "1"
        emu.stall(0.25)
        t0 = time.monotonic()
        assert ask(port, "*OPC?") == "1"  # answered once the loop runs again
        assert time.monotonic() - t0 > 0.2
        # The sampling timer kept running: no gap in the sample indices.
        first = fetch(port)
        second = fetch(port)
        assert first.first_index == 0 and not first.overflow
        assert second.first_index == first.count and first.count > 200
        # A stall longer than HW_WDT_MS ends in a reboot after HW_WDT_MS; what the host sent
        # meanwhile is lost with the USB connection.
        emu.stall(5.0)
        t0 = time.monotonic()
        port.write(b"OUTP?\n")
        assert wait_until(lambda: emu.resets == 1, 3.0)
        assert 0.3 < time.monotonic() - t0 < 2.0
        time.sleep(0.1)
        assert port.in_waiting == 0
        assert ask(port, "OUTP?") == "0"


def test_ring_buffer_overflow_with_a_slow_consumer():
    with Emulator(seed=8, firmware={"RING_SIZE": 256}) as emu, open_port(emu) as port:
        send(port, "SENS:ADC:RATE 20000", "INIT")
        time.sleep(0.1)  # ~2000 samples into a ring of 256
        block = fetch(port, 256)  # at most RING_SIZE per fetch
        assert block.overflow and block.count == 256 and block.first_index > 1000
        nxt = fetch(port, 256)
        assert not nxt.overflow and nxt.first_index == block.first_index + 256
        assert emu.stats()["samples"] > 1500


def test_dropped_and_corrupted_bytes():
    with Emulator(seed=9) as emu, open_port(emu, timeout=0.3) as port:
        idn = ask(port, "*IDN?")
        # Board -> host: the next 5 bytes of the answer are lost.
        emu.drop_next(5, "tx")
        port.write(b"*IDN?\n")
        assert port.readline().decode() == idn[5:] + "\n"
        # Host -> board: a bit flipped in the command; the board reports an error.
        emu.corrupt_next(1, "rx")
        port.write(b"OUTP ON\n")
        assert ask(port, "OUTP?") == "0"
        assert errors(port) and emu.stats()["link"]["rx_corrupted"] == 1
        # Everything dropped: no answer at all.
        emu.faults(drop=1.0, direction="rx")
        port.write(b"*IDN?\n")
        assert port.readline() == b""
        # Random corruption both ways: the firmware survives it.
        emu.faults(drop=0.0, corrupt=0.05)
        port.timeout = 0.05
        for _ in range(40):
            port.write(b"MEAS:VOLT?\n")
            port.readline()
        port.timeout = 1.0
        emu.faults(corrupt=0.0)
        time.sleep(0.05)
        port.reset_input_buffer()
        port.write(b"\n")  # end whatever half line the board holds
        assert ask(port, "*IDN?") == idn
        counts = emu.stats()["link"]
        assert counts["tx_corrupted"] > 0 and counts["rx_corrupted"] > 1


def test_scheduled_faults_and_api_errors():
    with Emulator(seed=10) as emu, open_port(emu) as port:
        send(port, "SOUR:PWM:DUTY 0.5", "OUTP ON")
        assert ask(port, "OUTP?") == "1"
        emu.schedule(0.0, "reset", "watchdog")
        assert wait_until(lambda: emu.resets == 1, 2.0) and emu.wait_ready(2.0)
        assert ask(port, "OUTP?") == "0"
        with pytest.raises(ValueError):
            emu.schedule(1.0, "explode")
        with pytest.raises(ValueError):
            emu.faults(drop=2.0)
        with pytest.raises(ValueError):
            emu.drop_next(1, direction="up")
        with pytest.raises(ValueError):
            emu.set_load(R=-1.0)
        assert emu.running and emu.errors == []
    assert not emu.running


# ------------------------------------------------------------------ other clients


def test_pyvisa_opens_the_emulated_board():
    pyvisa = pytest.importorskip("pyvisa")
    pytest.importorskip("pyvisa_py")
    with Emulator(seed=11, noise_lsb=0) as emu:
        rm = pyvisa.ResourceManager("@py")
        inst = rm.open_resource(f"ASRL{emu.port}::INSTR", read_termination="\n",
                                write_termination="\n", timeout=2000)
        try:
            assert inst.query("*IDN?").startswith("boostsim,PicoBoost,")
            inst.write("SENS:ADC:RATE 5000")
            inst.write("INIT")
            time.sleep(0.05)
            raw = inst.query_binary_values("FETC:ADC?", datatype="B", container=bytes,
                                           header_fmt="ieee", expect_termination=True)
            block = protocol.decode_adc_block(raw)
            assert block.count > 100 and block.first_index == 0
            assert inst.query("SYST:ERR?") == '0,"No error"'
        finally:
            inst.close()
            rm.close()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")
def test_a_terminal_program_opens_it():
    with Emulator(seed=12) as emu:
        out = subprocess.run(["socat", "-t", "0.5", "-", f"{emu.port},raw,echo=0"],
                             input=b"*IDN?\n", capture_output=True, timeout=10)
        assert out.stdout.startswith(b"boostsim,PicoBoost,")


def test_the_collector_leaves_the_older_objects_alone_while_emulators_run():
    """A full garbage collection of a large process (a test session, a notebook kernel) stopped
    the board's thread for 0.3 s (the control steps' schedule broke in CI): while emulators
    run, the objects older than the first are frozen; the last one to stop lifts it."""
    assert gc.get_freeze_count() == 0
    old = [[i] for i in range(1000)]
    with Emulator(seed=1) as first:
        frozen = gc.get_freeze_count()
        assert frozen >= len(old)
        with Emulator(seed=2):  # not frozen again (frozen objects that die leave the count)
            assert gc.get_freeze_count() <= frozen
        assert 0 < gc.get_freeze_count() <= frozen and first.running
    assert gc.get_freeze_count() == 0


def test_host_driver_on_the_emulated_board():
    board_module = pytest.importorskip("firmware_bridge.board")
    with Emulator(seed=13, noise_lsb=1.0) as emu:
        emu.reset()  # a reset banner waits in the port when the host connects
        with board_module.Board(emu.port, max_vout=14.0, watchdog=2.0) as board:
            # Duty 0.5 peaks at 13.0 V from rest; 0.6 (12.0 V steady) overshoots to 16.7 V for
            # about a millisecond, which the 14 V OVP catches or not depending on the
            # protection ticks' phase (OVP_CONSECUTIVE ticks above the level).
            board.set_duty(0.5)
            board.output(True)
            time.sleep(0.1)
            target = steady_state(BOARD, emu.plant_state()["duty"]).vout_mean
            assert abs(board.measure_vout() - target) < 0.03
            with board.acquisition(5000):
                time.sleep(0.1)
                acq = board.fetch()
            assert acq.gaps == [] and acq.volts.size > 300
            assert abs(acq.volts.mean() - target) < 0.03
            assert board.trip() == "NONE" and emu.plant_state()["enabled"]  # still switching
        # The driver's context manager leaves the board safe.
        assert not emu.plant_state()["enabled"]


# ------------------------------------------------------------------ command line and config


def test_command_line_serves_a_link_and_reports(tmp_path):
    link = tmp_path / "board"
    root = str(Path(__file__).resolve().parent.parent)  # this checkout, whatever is installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge.emulator", "--link", str(link), "--seed", "1",
         "--noise", "0", "--duration", "1.2", "--quiet", "--fault", "0.2:vin:6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/") and os.path.realpath(link) == path
        with serial.Serial(str(link), timeout=2) as port:
            assert ask(port, "*IDN?").startswith("boostsim,PicoBoost,B0057E")
            time.sleep(0.4)
            assert abs(float(ask(port, "MEAS:VOLT:IN?")) - 6.0) < 0.01
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == ""  # nothing after the device path (--quiet)
    assert not link.exists()  # removed on exit


def test_the_module_command_line_is_boostsim_emulate(tmp_path, capsys):
    # One command line: python -m firmware_bridge.emulator takes boostsim emulate's options.
    link = tmp_path / "board"
    assert main(["--link", str(link), "--seed", "1", "--duration", "0.5", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["command"] == "emulate" and summary["link"] == str(link)
    assert summary["stats"]["polls"] > 100 and summary["stats"]["errors"] == 0
    assert 0 < summary["stats"]["process_cpu_s"] < 5


def test_command_line_errors(capsys, tmp_path):
    assert main(["--config", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["--fault", "1:explode"]) == 2
    assert "--fault" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "boostsim emulate" in capsys.readouterr().out
    assert main(["--drop", "1.5"]) == 2


BOARD_TOML = """
[converter]
vin = "6V"
L = "47uH"
C = "220uF"
R = "24ohm"
fsw = "100kHz"
r_L = "30m"
v_f = "0.4"

[emulator]
noise_lsb = 0
adc_dnl = "ideal"        # raw readings over the serial link compared with the truth below
r_top = "100k"
r_bottom = "14k"        # the real board's divider differs from config.py's 15 k
serial = "0123456789ABCDEF"
seed = 3

[emulator.firmware]
RING_SIZE = 512
"""


def test_board_described_by_the_toml_file(tmp_path):
    path = tmp_path / "bench.toml"
    path.write_text(BOARD_TOML)
    cfg = EmulatorConfig.load(path)
    assert float(cfg.params.L) == 47e-6 and cfg.vout_divider == pytest.approx(114 / 14)
    assert cfg.firmware == {"RING_SIZE": 512} and cfg.seed == 3
    with Emulator(config=path) as emu, open_port(emu) as port:
        assert ask(port, "*IDN?") == "boostsim,PicoBoost,0123456789ABCDEF,0.1.0"
        assert emu.fw_config.RING_SIZE == 512
        send(port, "SOUR:PWM:DUTY 0.5", "OUTP ON")
        time.sleep(0.1)
        duty = emu.plant_state()["duty"]
        true = steady_state(cfg.params, duty).vout_mean
        measured = float(ask(port, "MEAS:VOLT?"))
        # The firmware converts with 115/15: a board with 114/14 reads low until calibrated.
        assert measured == pytest.approx(true * (115 / 15) / (114 / 14), rel=2e-3)
        send(port, f"CAL:VOUT {(114 / 14) / (115 / 15):.6f},0")
        assert float(ask(port, "MEAS:VOLT?")) == pytest.approx(true, rel=2e-3)


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BOARD_TOML.replace("noise_lsb = 0", "noise = 0"))
    with pytest.raises(ValueError, match="unknown key"):
        EmulatorConfig.load(bad)
    bad.write_text(BOARD_TOML.replace('r_bottom = "14k"', 'vout_divider = 7'))
    with pytest.raises(ValueError, match="r_top and r_bottom"):
        EmulatorConfig.load(bad)
    with pytest.raises(ValueError, match="noise_lsb"):
        EmulatorConfig(noise_lsb=-1)
    with pytest.raises(ValueError, match="unknown firmware config"):
        firmware_config({"NOT_A_SETTING": 1})
    # A user's own config.py for the firmware side.
    own = tmp_path / "config.py"
    own.write_text(Path(conformance.__file__).parent.parent.joinpath(
        "firmware_bridge", "firmware", "config.py").read_text().replace(
        'MODEL = "PicoBoost"', 'MODEL = "MyBoost"'))
    assert firmware_config(path=own).MODEL == "MyBoost"
    assert math.isclose(firmware_config(path=own).VOUT_DIVIDER, 115 / 15)
