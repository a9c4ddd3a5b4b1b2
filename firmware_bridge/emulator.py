"""Board emulator: the board's own firmware logic on a simulated converter, on a pseudo-terminal.

The emulator runs **the same firmware** as the Raspberry Pi Pico (``firmware/device.py``:
``Device`` and its ``serve`` loop, the command table, the SCPI parser, the acquisition ring) on
a simulated hardware layer (:mod:`firmware_bridge.emulated_hal`) whose converter is the boostsim
switching model advanced in real time (:mod:`firmware_bridge.plant`: the exact period map in
closed-form chunks; exact in CCM, within 1e-4 through DCM). It serves a pseudo-terminal
in raw mode, so anything that opens a serial port opens it like a board: pyserial
(``serial.Serial(emu.port)``), a terminal (``picocom /dev/pts/N``), PyVISA with pyvisa-py
(``ASRL/dev/pts/N::INSTR``), the host driver.

Python::

    from firmware_bridge.emulator import Emulator
    with Emulator(seed=1) as emu:           # default board, noise 1 LSB rms
        port = serial.Serial(emu.port, timeout=1)
        port.write(b"*IDN?\\n"); print(port.readline())
        emu.disconnect_load()               # fault injection: load off -> vout rises -> OVP

Command line (``boostsim emulate`` or ``python -m firmware_bridge.emulator``)::

    python -m firmware_bridge.emulator --config board.toml --link /tmp/boostsim-board
    # prints the device path (e.g. /dev/pts/7) on the first line of stdout; runs until Ctrl-C

Board description: the ``[converter]`` table of the TOML config (:meth:`BoostParams.load`, the
same file the simulator reads) and an optional ``[emulator]`` table (see
:class:`EmulatorConfig`): ADC noise/offset/gain error, the ADC's non-linearity (the RP2040's
by default) and timer jitter, single-precision PID arithmetic and its computation time (on by
default), the real divider ratios, the PWM timer
clock, the serial number, firmware config overrides (``[emulator.firmware]``). The firmware
runs with ``firmware/config.py`` (or ``--firmware-config path/to/config.py``): the PWM frequency
is the one the firmware programs, so the TOML ``fsw`` only matters to the simulator.

Fault injection (API methods, ``--fault`` timeline, ``--console`` commands): byte drop and
corruption (per-byte probability or the next N bytes, per direction), a blackout (no bytes
through for N s: the host watchdog expires), a stall (the serve loop hangs for N s: nothing is
answered, the PWM, the sampling and the protection timer IRQs keep running; past the
firmware's ``HW_WDT_MS`` the hardware watchdog reboots the board), a reset (firmware restart:
state lost, output off, an optional banner such as MicroPython's ``MPY: soft reboot``), load
and line changes (a load disconnect makes vout rise to the OVP level), and ring-buffer
overflow (a slow consumer; ``[emulator.firmware] RING_SIZE`` makes it quick).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import gc
import importlib.util
import json
import math
import os
import queue
import random
import select
import sys
import termios
import threading
import time
import traceback
import tty
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from boostsim.adc_model import RP2040_DNL
from boostsim.params import BoostParams, default_board, parse_toml, read_config_text
from boostsim.pid import PID
from boostsim.units import parse_si

from .emulated_hal import AdcModel, EmulatedHAL
from .firmware import config as _fw_config
from .firmware import device as _device
from .plant import Plant
from .rp2040 import PWM_CLOCK

__all__ = ["CONSOLE_HELP", "Emulator", "EmulatorConfig", "FaultLink", "PtyPort", "firmware_config",
           "main", "parse_fault", "run_console"]

DEFAULT_SERIAL = "B0057E0000000001"
#: ``[emulator] adc_dnl`` names: the ADC's DNL table (None: ideal).
ADC_DNL_TABLES: dict[str, Any] = {"rp2040": RP2040_DNL, "ideal": None}
SOFT_REBOOT_BANNER = b"MPY: soft reboot\r\n"
_DIRECTIONS = ("rx", "tx")


# ---------------------------------------------------------------------------- configuration


def firmware_config(overrides: dict[str, Any] | None = None, path: str | Path | None = None):
    """The firmware config the emulated board runs: ``firmware/config.py`` (or the config.py
    at ``path``), with ``overrides`` (e.g. ``{"RING_SIZE": 256}``), as a namespace."""
    if path is not None:
        spec = importlib.util.spec_from_file_location("_board_config", str(path))
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot load firmware config {str(path)!r}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except (OSError, SyntaxError) as exc:
            raise ValueError(f"cannot load firmware config {str(path)!r}: {exc}") from None
    else:
        module = _fw_config
    values = {k: getattr(_fw_config, k) for k in dir(_fw_config) if k.isupper()}
    values.update({k: getattr(module, k) for k in dir(module) if k.isupper()})
    for key, value in (overrides or {}).items():
        if key not in values:
            raise ValueError(f"unknown firmware config constant {key!r}")
        values[key] = value
    return types.SimpleNamespace(**values)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"[emulator] {name}: expected a number, got {value!r}")
    if isinstance(value, str):
        return parse_si(value, name=name)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"[emulator] {name}: expected a number, got {value!r}") from None


@dataclasses.dataclass
class EmulatorConfig:
    """Everything about the emulated board that is not firmware.

    ``[emulator]`` TOML keys (all optional; numbers may carry SI prefixes):

    ======================  ===========================================================
    noise_lsb               ADC noise, codes rms (default 1.0)
    adc_offset_lsb          ADC offset, codes (default 0)
    adc_gain_error          ADC gain error, relative (default 0)
    adc_dnl                 ADC differential non-linearity: "rp2040" (default: the
                            RP2040-E11 wide codes below 512, 1536, 2560, 3584 and the missing
                            codes, :data:`boostsim.adc_model.RP2040_DNL`, static errors up to
                            ~6 LSB, which the host driver corrects by default,
                            ``Board(adc_dnl="rp2040")``) or "ideal"
    adc_jitter              rms delay of each streamed conversion after its timer tick [s]
                            (default 2 us; the host still sees nominal timestamps)
    float32                 the on-board PID computes in single precision, as MicroPython on
                            the RP2040 (default true)
    pid_compute_time        time one on-board PID update takes [s]: the latency between the
                            control step's ADC sample and its PWM update (default 100 us)
    vout_divider            real V_out divider ratio (default: the firmware's VOUT_DIVIDER);
                            or ``r_top`` and ``r_bottom`` [ohm]
    vin_divider             real V_in divider ratio (default: the firmware's VIN_DIVIDER)
    pwm_clock               PWM timer clock [Hz] for duty/frequency quantisation (125 MHz; 0:
                            ideal)
    serial                  ``*IDN?`` serial number (hex of machine.unique_id)
    seed                    random seed (noise, random faults); omit for a random one
    trust_v                 plant trust region outside CCM [V] (default 0.5 % of vin)
    reset_banner            bytes written on a soft reset (default MicroPython's
                            ``"MPY: soft reboot\\r\\n"``)
    boot_delay              seconds a reset takes before the board answers again (0.05)
    tx_timeout              seconds the reset banner and fault-injected writes wait for a
                            host that does not read (0.5); replies never wait: the
                            firmware drops them after TX_STALL_MS (-410)
    [emulator.firmware]     overrides of firmware config constants (RING_SIZE = 256, ...)
    ======================  ===========================================================
    """

    params: BoostParams = dataclasses.field(default_factory=default_board)
    noise_lsb: float = 1.0
    adc_offset_lsb: float = 0.0
    adc_gain_error: float = 0.0
    adc_dnl: str = "rp2040"
    adc_jitter: float = 2e-6
    float32: bool = True
    pid_compute_time: float = 100e-6
    vout_divider: float | None = None
    vin_divider: float | None = None
    pwm_clock: float = PWM_CLOCK
    serial: str = DEFAULT_SERIAL
    seed: int | None = None
    trust_v: float | None = None
    reset_banner: bytes = SOFT_REBOOT_BANNER
    boot_delay: float = 0.05
    tx_timeout: float = 0.5
    firmware: dict[str, Any] = dataclasses.field(default_factory=dict)
    firmware_path: str | None = None

    _KEYS = ("noise_lsb", "adc_offset_lsb", "adc_gain_error", "adc_dnl", "adc_jitter",
             "float32", "pid_compute_time", "vout_divider", "r_top", "r_bottom", "vin_divider",
             "pwm_clock", "serial", "seed", "trust_v", "reset_banner", "boot_delay",
             "tx_timeout", "firmware")

    def __post_init__(self) -> None:
        for name in ("noise_lsb", "boot_delay", "tx_timeout", "pwm_clock", "adc_jitter",
                     "pid_compute_time"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("vout_divider", "vin_divider", "trust_v"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.adc_dnl not in ADC_DNL_TABLES:
            raise ValueError(f"adc_dnl must be one of {', '.join(ADC_DNL_TABLES)}, got "
                             f"{self.adc_dnl!r}")
        if not isinstance(self.float32, bool):
            raise ValueError(f"float32 must be true or false, got {self.float32!r}")
        if isinstance(self.reset_banner, str):
            self.reset_banner = self.reset_banner.encode("latin-1")
        if not isinstance(self.params, BoostParams) or self.params.n_lanes != 1:
            raise ValueError("params must be a single-lane BoostParams")

    @classmethod
    def from_dict(cls, params: BoostParams, table: dict[str, Any]) -> EmulatorConfig:
        """From the ``[emulator]`` table of a board TOML file."""
        unknown = set(table) - set(cls._KEYS)
        if unknown:
            raise ValueError(f"[emulator]: unknown key(s) {sorted(unknown)}; known: "
                             f"{', '.join(cls._KEYS)}")
        kw: dict[str, Any] = {"params": params}
        for name in ("noise_lsb", "adc_offset_lsb", "adc_gain_error", "adc_jitter",
                     "pid_compute_time", "vout_divider", "vin_divider", "pwm_clock", "trust_v",
                     "boot_delay", "tx_timeout"):
            if name in table:
                kw[name] = _number(name, table[name])
        if "r_top" in table or "r_bottom" in table:
            if "vout_divider" in table or not ("r_top" in table and "r_bottom" in table):
                raise ValueError("[emulator]: give vout_divider, or both r_top and r_bottom")
            r_top, r_bottom = _number("r_top", table["r_top"]), _number("r_bottom",
                                                                         table["r_bottom"])
            if not (r_top >= 0 and r_bottom > 0):
                raise ValueError("[emulator]: r_top must be >= 0 and r_bottom > 0 [ohm]")
            kw["vout_divider"] = (r_top + r_bottom) / r_bottom
        if "adc_dnl" in table:
            kw["adc_dnl"] = table["adc_dnl"]
        if "float32" in table:
            kw["float32"] = table["float32"]
        if "serial" in table:
            kw["serial"] = str(table["serial"])
        if "seed" in table:
            kw["seed"] = int(table["seed"])
        if "reset_banner" in table:
            kw["reset_banner"] = str(table["reset_banner"]).encode("latin-1")
        if "firmware" in table:
            if not isinstance(table["firmware"], dict):
                raise ValueError("[emulator.firmware] must be a table of config constants")
            kw["firmware"] = dict(table["firmware"])
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path) -> EmulatorConfig:
        """Read a board TOML file: ``[converter]`` (required) and ``[emulator]`` (optional);
        other tables (e.g. ``[adc]``, ``[pwm]``, ``[board]``) are left to their readers."""
        path = Path(path)
        params = BoostParams.load(path)
        document = parse_toml(read_config_text(path), source=str(path))
        table = document.get("emulator", {})
        if not isinstance(table, dict):
            raise ValueError(f"{path}: [emulator] must be a table")
        try:
            return cls.from_dict(params, table)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------- board PID


def board_pid_class(float32: bool, compute: Callable[[], None] | None = None) -> type[PID]:
    """:class:`boostsim.pid.PID` as the RP2040 runs it: with ``float32`` every number it is
    given is rounded to single precision (numpy.float32, so its arithmetic rounds as
    MicroPython's floats do); ``compute()`` is called after each update (the emulator's: the
    board clock moves on by ``pid_compute_time``, so the PWM update follows the control step's
    ADC sample that much later in board time)."""

    def board(x: Any) -> Any:
        kind = type(x)
        if kind is float or kind is int:  # the usual numbers, without the isinstance checks
            return np.float32(x) if float32 else x
        return np.float32(x) if float32 and isinstance(x, float | int | np.floating) \
            and not isinstance(x, bool) else x

    class BoardPID(PID):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*map(board, args), **{k: board(v) for k, v in kwargs.items()})

        def reset(self, output: Any = None, measurement: Any = None,
                  setpoint: Any = None) -> None:
            super().reset(board(output), board(measurement), board(setpoint))

        def update(self, setpoint: float, measurement: float) -> float:
            u = super().update(board(setpoint), board(measurement))
            if compute is not None:
                compute()
            return float(u)

    return BoardPID


# ---------------------------------------------------------------------------- transport


class PtyPort:
    """A pseudo-terminal in raw mode: the emulator holds the master side, hosts open
    ``path`` (the slave). The emulator also keeps the slave open, so hosts may close and
    reopen the port without the master seeing a hang-up."""

    def __init__(self, link: str | Path | None = None):
        self.master, self._slave = os.openpty()
        # A pipe that ends a wait in read() early: the emulator's API wants the board's thread.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        tty.setraw(self._slave)  # no echo, no line editing, no CR/LF translation
        attrs = termios.tcgetattr(self._slave)
        attrs[2] &= ~termios.HUPCL
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.link = None
        if link is not None:
            self.make_link(link)

    def make_link(self, link: str | Path) -> None:
        link = Path(link)
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise ValueError(f"--link {str(link)!r} exists and is not a symbolic link")
        link.symlink_to(self.path)
        self.link = link

    def wake(self) -> None:
        """End the present (or the next) wait of :meth:`read` now (any thread)."""
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway; or closed
            os.write(self._wake_w, b"\0")

    def read(self, timeout_s: float) -> bytes:
        """Up to 256 bytes from the host, waiting up to ``timeout_s`` for them (b"" if none
        came, or :meth:`wake` ended the wait)."""
        try:
            ready, _, _ = select.select([self.master, self._wake_r], [], [],
                                        max(timeout_s, 0.0))
        except (OSError, ValueError):
            return b""
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
            if self.master not in ready:
                return b""
        elif not ready:
            return b""
        try:
            # At most what the Pico's serve loop takes per iteration (hal.serial_read): a
            # flooding host cannot make one iteration arbitrarily long.
            return os.read(self.master, 256)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:  # no slave open (cannot happen while we hold one)
                time.sleep(max(timeout_s, 0.001))
                return b""
            raise

    def write(self, data: bytes, timeout_s: float,
              abort: Callable[[], bool] = lambda: False) -> int:
        """Write ``data``, waiting up to ``timeout_s`` for a host that does not read;
        returns the number of bytes written (the rest is dropped)."""
        view = memoryview(data)
        written = 0
        deadline = time.monotonic() + timeout_s
        while written < len(view):
            try:
                written += os.write(self.master, view[written:])
                continue
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or abort():
                break
            with contextlib.suppress(OSError, ValueError):
                select.select([], [self.master], [], min(remaining, 0.01))
        return written

    def discard_input(self) -> int:
        n = 0
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            n += len(chunk)
        return n

    def close(self) -> None:
        if self.link is not None:
            with contextlib.suppress(OSError):
                if self.link.is_symlink():
                    self.link.unlink()
            self.link = None
        for fd in (self.master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self._slave = self._wake_r = self._wake_w = -1


class FaultLink:
    """The serial link between the pseudo-terminal and the firmware, with fault injection.

    ``rx`` is host -> board, ``tx`` board -> host. Per direction: ``drop_rate`` and
    ``corrupt_rate`` (per-byte probabilities; corruption flips one random bit), scripted
    ``drop_next``/``corrupt_next`` byte counts and a ``blackout_until`` time (every byte
    dropped). ``on_poll`` is called before each read (the emulator's event hook).
    """

    def __init__(self, port: PtyPort, *, seed: int | None = None, tx_timeout: float = 0.5,
                 on_poll: Callable[[], bool] | None = None,
                 abort: Callable[[], bool] = lambda: False):
        self.port = port
        self.tx_timeout = tx_timeout
        self.on_poll = on_poll
        self.abort = abort
        self._rng = random.Random(seed)
        self.drop_rate = dict.fromkeys(_DIRECTIONS, 0.0)
        self.corrupt_rate = dict.fromkeys(_DIRECTIONS, 0.0)
        self.drop_next = dict.fromkeys(_DIRECTIONS, 0)
        self.corrupt_next = dict.fromkeys(_DIRECTIONS, 0)
        self.blackout_until = dict.fromkeys(_DIRECTIONS, 0.0)
        self.counts = {f"{d}_{k}": 0 for d in _DIRECTIONS
                       for k in ("bytes", "dropped", "corrupted", "lost")}

    def _faulty(self, d: str) -> bool:
        return bool(self.drop_rate[d] or self.corrupt_rate[d] or self.drop_next[d]
                    or self.corrupt_next[d] or self.blackout_until[d])

    def _apply(self, d: str, data: bytes) -> bytes:
        self.counts[f"{d}_bytes"] += len(data)
        if not data or not self._faulty(d):
            return data
        if self.blackout_until[d]:
            if time.monotonic() < self.blackout_until[d]:
                self.counts[f"{d}_dropped"] += len(data)
                return b""
            self.blackout_until[d] = 0.0
        out = bytearray()
        rnd = self._rng.random
        p_drop, p_corrupt = self.drop_rate[d], self.corrupt_rate[d]
        for byte in data:
            if self.drop_next[d] > 0:
                self.drop_next[d] -= 1
                self.counts[f"{d}_dropped"] += 1
                continue
            if p_drop and rnd() < p_drop:
                self.counts[f"{d}_dropped"] += 1
                continue
            if self.corrupt_next[d] > 0 or (p_corrupt and rnd() < p_corrupt):
                if self.corrupt_next[d] > 0:
                    self.corrupt_next[d] -= 1
                byte ^= 1 << self._rng.randrange(8)
                self.counts[f"{d}_corrupted"] += 1
            out.append(byte)
        return bytes(out)

    def read(self, timeout_ms: float) -> bytes | None:
        """Bytes from the host within ``timeout_ms`` (b"" if none came; it may return early
        when the emulator wakes it), None if a reset is pending (the old firmware gets no
        more input)."""
        if self.on_poll is not None and self.on_poll():
            return None
        return self._apply("rx", self.port.read(timeout_ms / 1000.0))

    def write(self, data: bytes) -> int:
        """Hand ``data`` to the host without waiting for it: returns how many bytes were taken
        (written, or eaten by an injected fault; a fault-injected write may wait up to
        ``tx_timeout`` and counts what it could not write as ``tx_lost``)."""
        if not self._faulty("tx"):
            n = self.port.write(data, 0.0, self.abort)
            self.counts["tx_bytes"] += n
            return n
        out = self._apply("tx", bytes(data))
        if out:
            n = self.port.write(out, self.tx_timeout, self.abort)
            self.counts["tx_lost"] += len(out) - n
        return len(data)


# ---------------------------------------------------------------------------- the emulator


class Emulator:
    """The emulated board on a pseudo-terminal, served from a background thread.

    ``params`` (a :class:`BoostParams`) or ``config`` (an :class:`EmulatorConfig` or the path
    of a board TOML file) describe the board; keyword ``settings`` override
    :class:`EmulatorConfig` fields (``noise_lsb=0``, ``seed=1``, ``firmware={...}``...).
    ``link``: also make a symbolic link to the device. Start with :meth:`start` or ``with``.

    Thread-safe API (the actions run in the board's thread, between two serve-loop polls):
    :meth:`reset`, :meth:`stall`, :meth:`set_load`, :meth:`disconnect_load`, :meth:`set_vin`,
    :meth:`faults` (drop/corrupt rates), :meth:`drop_next`, :meth:`corrupt_next`,
    :meth:`blackout`, :meth:`schedule`, :meth:`call`, :meth:`snapshot`, :meth:`plant_state`,
    :meth:`stats`.
    """

    def __init__(self, params: BoostParams | None = None, *,
                 config: EmulatorConfig | str | Path | None = None, link: str | Path | None = None,
                 **settings: Any):
        if isinstance(config, str | Path):
            config = EmulatorConfig.load(config)
        elif config is None:
            config = EmulatorConfig()
        if params is not None:
            settings["params"] = params
        if settings:
            known = {f.name for f in dataclasses.fields(EmulatorConfig)}
            unknown = set(settings) - known
            if unknown:
                raise ValueError(f"unknown emulator setting(s) {sorted(unknown)}; known: "
                                 f"{', '.join(sorted(known))}")
            config = dataclasses.replace(config, **settings)
        self.config = config
        self.fw_config = firmware_config(config.firmware, config.firmware_path)
        compute = config.pid_compute_time
        self._pid_class = board_pid_class(
            config.float32, (lambda: self.hal.spend(compute)) if compute > 0 else None)
        self._link_path = link
        self.port: str | None = None
        self.device = None
        self.resets = 0
        self.errors: list[str] = []
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._timeline: list[tuple[float, str, Any]] = []
        self._stop = threading.Event()
        self._booted = threading.Event()
        self._thread: threading.Thread | None = None
        self._gc_released = False
        self._reset_kind: str | None = None
        self._stall_until = 0.0
        self._pty: PtyPort | None = None
        self._t_start = 0.0
        self._cpu_start = 0.0

    # -- life cycle -------------------------------------------------------------------------

    # The emulated board's thread keeps the board's real time; a full collection of the cyclic
    # garbage collector stops every thread of the process, for 0.1-1 s in a large one (a
    # notebook kernel, a test session: 0.3 s measured), beyond the catch-up bound MAX_LAG_S.
    # While an emulator runs, the objects that existed when the first one started are exempt
    # from collection (gc.freeze; the collector then scans only what was made since); the last
    # one to stop lifts it, unless the process had frozen objects itself.
    _gc_lock = threading.Lock()
    _gc_users = 0
    _gc_frozen = False

    @classmethod
    def _freeze_gc(cls, on: bool) -> None:
        with cls._gc_lock:
            if on:
                if cls._gc_users == 0 and gc.get_freeze_count() == 0:
                    gc.freeze()
                    cls._gc_frozen = True
                cls._gc_users += 1
            else:
                cls._gc_users -= 1
                if cls._gc_users == 0 and cls._gc_frozen:
                    gc.unfreeze()
                    cls._gc_frozen = False

    def start(self) -> Emulator:
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        cfg = self.config
        self._origin = time.monotonic()
        clock = self._clock
        self.plant = Plant(cfg.params, t0=clock(), freq=float(self.fw_config.PWM_FREQ_DEFAULT),
                           trust_v=cfg.trust_v)
        self._pty = PtyPort(self._link_path)
        self.port = self._pty.path
        seed = cfg.seed
        fault_seed = None if seed is None else seed + 1
        self.link = FaultLink(self._pty, seed=fault_seed, tx_timeout=cfg.tx_timeout,
                              on_poll=self._on_poll, abort=self._stop.is_set)
        fw = self.fw_config
        adc = AdcModel(fw.ADC_VREF, fw.ADC_FULL_SCALE, fw.ADC_MAX_CODE, noise_lsb=cfg.noise_lsb,
                       offset_lsb=cfg.adc_offset_lsb, gain_error=cfg.adc_gain_error,
                       dnl=ADC_DNL_TABLES[cfg.adc_dnl], jitter_s=cfg.adc_jitter, seed=seed)
        self.hal = EmulatedHAL(fw, self.plant, link=self.link, clock=clock, adc=adc,
                               vout_divider=cfg.vout_divider, vin_divider=cfg.vin_divider,
                               pwm_clock=cfg.pwm_clock, serial=cfg.serial,
                               idle_until=self._idle_until, step_due=self._step_due)
        self._t_start = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="boostsim-emulator",
                                        daemon=True)
        self._freeze_gc(True)
        self._thread.start()
        if not self._booted.wait(10.0):
            self.stop()
            raise RuntimeError("the emulated board did not boot")
        return self

    def stop(self) -> None:
        """Stop serving and close the pseudo-terminal (idempotent)."""
        self._stop.set()
        if self._pty is not None:
            self._pty.wake()
        if self._thread is not None:
            self._thread.join(5.0)
            if not self._gc_released:
                self._gc_released = True
                self._freeze_gc(False)
        if self._pty is not None:
            self._pty.close()
            self._pty = None

    def __enter__(self) -> Emulator:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _clock(self) -> float:
        return time.monotonic() - self._origin

    def _idle_until(self) -> float:
        """Board time [s, the plant's clock] before which the firmware's serve loop, given no
        input, only polls and finds nothing to do (the HAL skips those polls): the on-board
        PID's next step, the first protection tick at the host-watchdog deadline (its trip
        report follows at once, as on the Pico), a trip or IRQ fault waiting to be reported,
        the next scripted fault. Reads the firmware's own state (``device.Device``)."""
        until = math.inf
        if self._timeline:
            until = self._t_start - self._origin + self._timeline[0][0]
        dev = self.device
        if dev is None:
            return until
        if dev._trip_new or dev._irq_fault:
            return -math.inf
        if dev.output:
            hal = self.hal
            until = min(until, self._step_due())
            if dev._wdog_ms > 0:
                deadline = hal.boot_time + (dev._last_valid_ms + dev._wdog_ms) * 1e-3
                until = min(until, hal.next_tick(deadline))
        return until

    def _step_due(self) -> float:
        """Board time [s] of the on-board PID's next step (inf: none), which the firmware's
        serve loop waits for to the microsecond (``Device.wait_us``)."""
        dev = self.device
        if dev is None or not dev.output or dev.pid is None:
            return math.inf
        return self.hal.boot_time + dev._next_ctrl_us * 1e-6

    def _main(self) -> None:
        self._cpu_start = time.thread_time()
        hal = self.hal
        first = True
        while not self._stop.is_set():
            if not first:
                self._reboot()
                if self._stop.is_set():
                    break
            first = False
            hal.boot()
            self.device = _device.Device(hal, self.fw_config, pid_class=self._pid_class)
            hal.stats._last_service = None
            self._booted.set()
            try:
                _device.serve(self.device, hal, should_stop=self._should_stop)
            except Exception:  # a bug in the emulation (the firmware catches its own)
                self.errors.append(traceback.format_exc())
                print(f"boostsim emulator: serve loop died, rebooting the board:\n"
                      f"{self.errors[-1]}", file=sys.stderr)
                self._reset_kind = self._reset_kind or "watchdog"
        with contextlib.suppress(Exception):
            hal.shutdown()
        self._run_calls()

    def _should_stop(self) -> bool:
        return self._stop.is_set() or self._reset_kind is not None

    def _reboot(self) -> None:
        kind = self._reset_kind or "watchdog"
        self._reset_kind = None
        self._booted.clear()
        self.resets += 1
        hal = self.hal
        hal.shutdown()  # gate low, sampling stopped
        if kind == "soft" and self.config.reset_banner:
            self._pty.write(self.config.reset_banner, self.config.tx_timeout, self._stop.is_set)
        deadline = time.monotonic() + self.config.boot_delay
        while time.monotonic() < deadline and not self._stop.is_set():
            self._run_calls()
            time.sleep(0.002)
        self._pty.discard_input()  # what the host sent while the board was rebooting

    # -- events in the board's thread -------------------------------------------------------

    def _on_poll(self) -> bool:
        """Called by the serial link before every read; True if a reset is pending."""
        self._run_calls()
        if self._timeline:
            self._run_timeline()
        if self._stall_until:
            self._do_stall()
        return self._reset_kind is not None

    def _run_calls(self) -> None:
        while True:
            try:
                fn, box, done = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                with self.hal.irq_lock:  # the protection IRQ never sees a half-made change
                    box.append((True, fn()))
            except BaseException as exc:  # handed back to the caller
                box.append((False, exc))
            done.set()

    def _run_timeline(self) -> None:
        now = time.monotonic() - self._t_start
        while self._timeline and self._timeline[0][0] <= now:
            _, kind, arg = self._timeline.pop(0)
            with self.hal.irq_lock:
                self._apply_fault(kind, arg)

    def _do_stall(self) -> None:
        """The serve loop hangs: nothing is read or answered; the PWM and the timer IRQs
        (sampling, protections) keep going. Past HW_WDT_MS the hardware watchdog reboots."""
        wdt = self.fw_config.HW_WDT_MS / 1000.0
        start = time.monotonic()
        until = self._stall_until
        if wdt > 0 and until - start >= wdt:
            until = start + wdt
            reset = True
        else:
            reset = False
        while time.monotonic() < until and not self._stop.is_set():
            self._run_calls()
            self.hal._catch_up()
            time.sleep(0.002)
        self._stall_until = 0.0
        self.hal.stats._last_service = None  # a stall is not a real-time lag
        if reset and not self._stop.is_set():
            self._reset_kind = "watchdog"

    def _apply_fault(self, kind: str, arg: Any) -> None:
        t = self.hal.now()
        self.hal.plant_access(t)
        if kind == "stall":
            self._stall_until = time.monotonic() + float(arg)
        elif kind == "reset":
            self._reset_kind = arg or "soft"
        elif kind == "load":
            self.plant.set_conditions(t, R=float(arg))
        elif kind == "vin":
            self.plant.set_conditions(t, vin=float(arg))
        elif kind == "iload":
            self.plant.set_conditions(t, i_load=float(arg))
        elif kind in ("drop", "corrupt"):
            rates = self.link.drop_rate if kind == "drop" else self.link.corrupt_rate
            rate = float(arg)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{kind} rate must be in [0, 1], got {rate!r}")
            for d in _DIRECTIONS:
                rates[d] = rate
        elif kind == "blackout":
            until = time.monotonic() + float(arg)
            for d in _DIRECTIONS:
                self.link.blackout_until[d] = until
        else:
            raise ValueError(f"unknown fault {kind!r}")

    # -- thread-safe API --------------------------------------------------------------------

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn()`` in the board's thread (between serve-loop polls) and return its result."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the emulator is not running")
        if threading.current_thread() is self._thread:
            return fn()
        box: list = []
        done = threading.Event()
        self._calls.put((fn, box, done))
        if self._pty is not None:
            self._pty.wake()  # the serve loop may be waiting for input
        if not done.wait(timeout):
            raise TimeoutError("the emulated board did not run the call in time")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def reset(self, kind: str = "soft", wait: bool = True) -> None:
        """Restart the firmware: state lost, output off. ``kind``: "soft" (writes the reset
        banner, MicroPython's ``MPY: soft reboot``) or "watchdog" (a hardware-watchdog reset:
        no banner). ``wait``: return once the new firmware serves."""
        if kind not in ("soft", "watchdog"):
            raise ValueError("kind must be 'soft' or 'watchdog'")
        before = self.resets
        self.call(lambda: self._apply_fault("reset", kind))
        if wait:
            deadline = time.monotonic() + 10.0
            while self.resets == before or not self._booted.is_set():
                if time.monotonic() > deadline:
                    raise TimeoutError("the emulated board did not come back after a reset")
                time.sleep(0.002)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until the (re)booted firmware serves; False on timeout."""
        return self._booted.wait(timeout)

    def stall(self, seconds: float) -> None:
        """Hang the serve loop for ``seconds`` (returns at once). A stall of at least the
        firmware's HW_WDT_MS ends in a hardware-watchdog reset."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"stall seconds must be >= 0, got {seconds!r}")
        self.call(lambda: self._apply_fault("stall", seconds))

    def set_load(self, R: float | None = None, i_load: float | None = None) -> float:
        """Change the load resistance (``math.inf``: disconnected) and/or constant current;
        returns the board time of the change [s] (the clock of streamed samples)."""
        changes = {k: v for k, v in (("R", R), ("i_load", i_load)) if v is not None}
        return self._change_conditions(**changes)

    def disconnect_load(self) -> float:
        """Open the load: with the switch running, vout rises until the OVP trips."""
        return self.set_load(R=math.inf)

    def set_vin(self, vin: float) -> float:
        """Line step: change the input voltage; returns the board time of the change [s]."""
        return self._change_conditions(vin=vin)

    def _change_conditions(self, **changes: float) -> float:
        def change() -> float:
            # The timer IRQs due before the change see the old conditions.
            t = self.hal.now()
            self.hal.plant_access(t)
            self.plant.set_conditions(t, **changes)
            return t - self.hal.boot_time

        return self.call(change)

    def faults(self, *, drop: float | None = None, corrupt: float | None = None,
               direction: str = "both") -> None:
        """Per-byte drop and corruption probabilities (``direction``: "rx" host->board,
        "tx" board->host, or "both"); 0 turns them off."""
        dirs = _check_direction(direction)
        for name, rate in (("drop", drop), ("corrupt", corrupt)):
            if rate is None:
                continue
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} rate must be in [0, 1], got {rate!r}")
            target = self.link.drop_rate if name == "drop" else self.link.corrupt_rate

            def apply(target=target, rate=rate):
                for d in dirs:
                    target[d] = rate

            self.call(apply)

    def drop_next(self, n: int, direction: str = "tx") -> None:
        """Drop the next ``n`` bytes in ``direction``."""
        dirs = _check_direction(direction)
        self.call(lambda: [self.link.drop_next.__setitem__(d, int(n)) for d in dirs])

    def corrupt_next(self, n: int, direction: str = "tx") -> None:
        """Flip one bit in each of the next ``n`` bytes in ``direction``."""
        dirs = _check_direction(direction)
        self.call(lambda: [self.link.corrupt_next.__setitem__(d, int(n)) for d in dirs])

    def blackout(self, seconds: float, direction: str = "both") -> None:
        """Let no byte through for ``seconds`` (a pulled cable; the host watchdog expires)."""
        dirs = _check_direction(direction)
        until = time.monotonic() + float(seconds)
        self.call(lambda: [self.link.blackout_until.__setitem__(d, until) for d in dirs])

    def schedule(self, at: float, kind: str, arg: Any = None) -> None:
        """Inject a fault ``at`` seconds after start: kinds stall (s), reset ("soft" or
        "watchdog"), load (ohm, inf), vin (V), iload (A), drop / corrupt (rate), blackout (s)."""
        _check_fault(kind, arg)

        def add():
            self._timeline.append((float(at), kind, arg))
            self._timeline.sort(key=lambda item: item[0])

        if self.running:
            self.call(add)
        else:
            add()

    def snapshot(self) -> dict[str, Any]:
        """The firmware's user-visible settings (``Device.snapshot()``)."""
        return self.call(lambda: self.device.snapshot())

    def plant_state(self) -> dict[str, Any]:
        """The converter now: time [s], vout [V], iL [A], vC [V] and the PWM in force."""

        def read():
            t = self.hal.now()
            self.hal.plant_access(t)
            vout, il = self.plant.sample([t], current=True)
            enabled, freq, duty = self.plant.pwm
            return {"t": t, "vout": float(vout[0]), "il": float(il[0]),
                    "vc": self.plant.state[1], "enabled": enabled, "freq": freq, "duty": duty,
                    "R": float(self.plant.params.R), "vin": float(self.plant.params.vin)}

        return self.call(read)

    def stats(self) -> dict[str, Any]:
        """Real-time figures, plant and link counters."""

        def read():
            wall = time.monotonic() - self._t_start
            cpu = time.thread_time() - self._cpu_start
            out = {"wall_s": wall, "thread_cpu_s": cpu, "cpu_fraction": cpu / wall if wall else 0,
                   "resets": self.resets, "errors": len(self.errors)}
            out.update(self.hal.stats.as_dict())
            out["plant"] = self.plant.stats.as_dict()
            out["link"] = dict(self.link.counts)
            return out

        return self.call(read)


def _check_direction(direction: str) -> tuple[str, ...]:
    if direction == "both":
        return _DIRECTIONS
    if direction in _DIRECTIONS:
        return (direction,)
    raise ValueError(f"direction must be 'rx', 'tx' or 'both', got {direction!r}")


_FAULT_KINDS = ("stall", "reset", "load", "vin", "iload", "drop", "corrupt", "blackout")


def _check_fault(kind: str, arg: Any) -> None:
    if kind not in _FAULT_KINDS:
        raise ValueError(f"unknown fault {kind!r}; known: {', '.join(_FAULT_KINDS)}")
    if kind == "reset":
        if arg not in (None, "soft", "watchdog"):
            raise ValueError("reset takes 'soft' or 'watchdog'")
        return
    try:
        value = float(arg)
    except (TypeError, ValueError):
        raise ValueError(f"fault {kind} needs a number, got {arg!r}") from None
    if math.isnan(value) or value < 0 or (math.isinf(value) and kind != "load"):
        raise ValueError(f"fault {kind}: bad value {arg!r}")
    if kind in ("drop", "corrupt") and value > 1:
        raise ValueError(f"fault {kind}: a probability in [0, 1], got {arg!r}")
    if kind in ("load", "vin") and value == 0:
        raise ValueError(f"fault {kind}: must be > 0")


def parse_fault(text: str) -> tuple[float, str, Any]:
    """``AT:KIND[:ARG]``, e.g. ``2.5:load:inf``, ``5:stall:1``, ``8:reset``."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--fault {text!r}: expected AT:KIND[:ARG]")
    try:
        at = float(parts[0])
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fault {text!r}: AT must be seconds") from None
    kind = parts[1].strip().lower()
    arg: Any = parts[2].strip() if len(parts) == 3 else None
    if kind != "reset" and arg is not None:
        try:
            arg = parse_si(arg, name=kind) if arg.lower() not in ("inf", "open") else math.inf
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--fault {text!r}: {exc}") from None
    try:
        _check_fault(kind, arg)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--fault {text!r}: {exc}") from None
    return at, kind, arg


# ---------------------------------------------------------------------------- command line

CONSOLE_HELP = """console commands (one per line):
  reset [soft|watchdog]   restart the firmware
  stall SECONDS           hang the serve loop
  load OHMS|inf           change / disconnect the load
  vin VOLTS               change the input voltage
  iload AMPS              constant-current load
  drop RATE | corrupt RATE   per-byte fault probabilities (both directions)
  blackout SECONDS        let no byte through
  state                   print the converter state
  stats                   print real-time figures
  quit                    stop the emulator"""


def run_console(emu: Emulator, stop: threading.Event) -> None:
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd, args = words[0].lower(), words[1:]
        try:
            if cmd in ("quit", "exit"):
                break
            if cmd == "help":
                print(CONSOLE_HELP, file=sys.stderr)
            elif cmd == "state":
                print(json.dumps(emu.plant_state()), file=sys.stderr)
            elif cmd == "stats":
                print(json.dumps(emu.stats()), file=sys.stderr)
            elif cmd == "reset":
                emu.reset(args[0] if args else "soft", wait=False)
            else:
                arg = args[0] if args else None
                if cmd != "reset" and arg is not None:
                    arg = math.inf if arg.lower() in ("inf", "open") else parse_si(arg, name=cmd)
                _check_fault(cmd, arg)
                emu.call(lambda cmd=cmd, arg=arg: emu._apply_fault(cmd, arg))
            print(f"ok {cmd}", file=sys.stderr)
        except (ValueError, IndexError, TimeoutError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m firmware_bridge.emulator ARGS`` is ``boostsim emulate ARGS`` (one command
    line, defined in :mod:`boostsim.cli.emulate`); returns the exit status."""
    from boostsim.cli import main as boostsim_main

    return boostsim_main(["emulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
