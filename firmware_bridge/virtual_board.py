"""The emulated board on a virtual clock: the firmware's serve loop with a scripted host, no
pseudo-terminal and no real time.

The board runs exactly as in the emulator (:class:`~firmware_bridge.emulated_hal.EmulatedHAL`
on a :class:`~firmware_bridge.plant.Plant`, the firmware's own ``device.serve``), but its clock
is a number that the scripted link moves on: each read of the link takes ``read_s`` of host
time, a wait for input jumps to the next scripted line (or the end of the wait). So a run is
deterministic and takes only the computation's time: the tests compare the serve loop's
variants on it (every poll run, idle polls skipped, the PID's steps batched), and
``benchmarks/bench_emulator_virtual.py`` measures the emulator's CPU per second of board time
without the scheduling noise of a real-time run.

    board = VirtualBoard([(0.01, b"OUTP ON\\n"), (0.2, b"MEAS:VOLT?\\n")])
    board.serve_until(0.5)
    board.link.out  # the replies
"""

from __future__ import annotations

import math

from boostsim import BoostParams, default_board

from .emulated_hal import AdcModel, EmulatedHAL
from .emulator import Emulator, board_pid_class, firmware_config
from .firmware import device as fw_device
from .plant import Plant

__all__ = ["ScriptedLink", "VirtualBoard"]


class ScriptedLink:
    """The host side: ``script`` lines of input [(host time [s], bytes)], in time order, handed
    to the board when its clock reaches them; ``out`` collects what the board sent."""

    def __init__(self, clock: list[float], script: list[tuple[float, bytes]],
                 read_s: float = 20e-6):
        self.clock = clock
        self.inbox = list(script)
        self.out = bytearray()
        self.read_s = read_s

    def read(self, timeout_ms: float) -> bytes:
        clock = self.clock
        clock[0] += self.read_s  # each poll takes a little host time
        if self.inbox and self.inbox[0][0] <= clock[0]:
            return self.inbox.pop(0)[1]
        due = self.inbox[0][0] if self.inbox else math.inf
        clock[0] = min(clock[0] + timeout_ms * 1e-3, max(clock[0], due))
        if self.inbox and self.inbox[0][0] <= clock[0]:
            return self.inbox.pop(0)[1]
        return b""

    def write(self, data: bytes) -> int:
        self.out += data
        return len(data)


class VirtualBoard:
    """The firmware on the emulated HAL with a :class:`ScriptedLink` and a virtual clock.

    ``skip_idle``: the emulator's idle hint (the HAL skips the polls that would find nothing
    to do); ``batch_steps``: its hint of the on-board PID's next step too (several steps per
    wake-up); ``params``: the converter (default board); ``seed``: the ADC model's generator
    (a noise-free ADC). ``plant`` (a class) replaces
    :class:`Plant` -- a benchmark's stand-in for the emulated hardware's own share.
    """

    def __init__(self, script: list[tuple[float, bytes]], *, skip_idle: bool = True,
                 batch_steps: bool = True, params: BoostParams | None = None, seed: int = 1,
                 plant: type | None = None):
        self.clock = [0.0]
        cfg = firmware_config()
        self.plant = (plant or Plant)(params or default_board(), t0=0.0,
                                      freq=cfg.PWM_FREQ_DEFAULT)
        self.link = ScriptedLink(self.clock, script)
        self.hal = EmulatedHAL(cfg, self.plant, link=self.link, clock=lambda: self.clock[0],
                               adc=AdcModel(cfg.ADC_VREF, cfg.ADC_FULL_SCALE, cfg.ADC_MAX_CODE,
                                            seed=seed))
        emu = Emulator.__new__(Emulator)  # its hints, on this device
        emu._timeline = []
        emu.hal = self.hal
        if skip_idle:
            self.hal.idle_until = lambda: Emulator._idle_until(emu)
        if batch_steps:
            self.hal.step_due = lambda: Emulator._step_due(emu)
        self.device = emu.device = fw_device.Device(self.hal, cfg,
                                                    pid_class=board_pid_class(True))

    def serve_until(self, t: float) -> None:
        """Run the firmware's serve loop until the board clock reaches ``t`` [s]."""
        fw_device.serve(self.device, self.hal, should_stop=lambda: self.clock[0] >= t)
