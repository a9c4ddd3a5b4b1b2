"""Benchmark: the emulator's CPU per second of board time, on a virtual clock (no real time).

``bench_emulator.py`` measures the emulator process in real time, which includes the machine's
scheduling and varies with its load by half as much again. This one runs the same board
(:class:`firmware_bridge.virtual_board.VirtualBoard`: the firmware's serve loop on the emulated
HAL and plant, the host scripted, the clock virtual) through the same phases, for ``--seconds``
of board time each, and reports the process time per second of board time:

* open loop CCM (duty 0.4 <-> 0.6 every 0.5 s), the on-board PID at ``--pid-rate`` (setpoint
  10 <-> 12 V every 0.5 s), light-load DCM (duty 0.2 <-> 0.3); all streaming at 20 kS/s with a
  FETC:ADC? every 50 ms and a MEAS:VOLT? every 100 ms, as ``bench_emulator.py`` does;
* each phase again with the plant replaced by a stand-in that costs nothing (a constant output):
  what the emulated hardware's Python (HAL, serve loop, firmware) costs without the converter.

Each figure is the minimum of ``--repeat`` runs (the run is deterministic: the minimum is the
least disturbed), in % of one core.

    python benchmarks/bench_emulator_virtual.py [--seconds 2] [--repeat 3] [--pid-rate 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from boostsim import default_board
from firmware_bridge.plant import PlantStats
from firmware_bridge.virtual_board import VirtualBoard

WARM_UP_S = 0.1  # board time before the timed part (the stream starts at 10 ms)


class FreePlant:
    """A converter that costs nothing: its output is a constant plus a little of the duty."""

    def __init__(self, params, **_):
        self.stats = PlantStats()
        self.params = params
        self.pwm = (False, 1e5, 0.0)

    def set_pwm(self, t, enabled, freq, duty, steps=0):
        self.pwm = (enabled, freq, duty)

    def set_conditions(self, t, **changes):
        pass

    def advance(self, t):
        pass

    def sample(self, times, current=False, presorted=False):
        v = np.full(np.asarray(times).size, 10.0 + 2.0 * self.pwm[2])
        return (v, np.ones(v.size)) if current else v

    def at(self, t, current=False):
        return 10.0 + 2.0 * self.pwm[2], (1.0 if current else None)

    def record(self, on):
        pass

    def sample_past(self, times):
        return np.full(np.asarray(times).size, 11.0)

    def checkpoint(self):
        return {}

    def restore(self, state):
        pass


def _script(phase: str, seconds: float, pid_rate: float) -> list[tuple[float, bytes]]:
    script = [(0.01, b"SENS:ADC:RATE 20000\nINIT\nSOUR:PWM:DUTY 0.4\nOUTP ON\nSYST:WDOG:TIM 0\n")]
    if phase == "PID":
        script.append((0.05, b"CONT:RATE %g\nCONT:VREF 12\nCONT:MODE PID\n" % pid_rate))
    elif phase == "DCM":
        script.append((0.05, b"SOUR:PWM:DUTY 0.2\n"))
    steps = {"open": (b"SOUR:PWM:DUTY 0.6\n", b"SOUR:PWM:DUTY 0.4\n"),
             "PID": (b"CONT:VREF 10\n", b"CONT:VREF 12\n"),
             "DCM": (b"SOUR:PWM:DUTY 0.3\n", b"SOUR:PWM:DUTY 0.2\n")}[phase]
    for k in range(2, round(seconds / 0.05) + 1):  # every 50 ms from 0.1 s on
        lines = [b"FETC:ADC? 4096\n"]
        if k % 2 == 0:
            lines.append(b"MEAS:VOLT?\n")
        if k % 10 == 0:
            lines.append(steps[(k // 10) % 2])
        script.append((k * 0.05, b"".join(lines)))
    return script


def run(phase: str, seconds: float, pid_rate: float, free_plant: bool) -> float:
    """Process time per second of board time (a fraction of one core)."""
    params = default_board().replace(R=1000.0) if phase == "DCM" else default_board()
    board = VirtualBoard(_script(phase, seconds, pid_rate), params=params,
                         plant=FreePlant if free_plant else None)
    board.serve_until(WARM_UP_S)
    start = time.process_time()
    board.serve_until(seconds)
    return (time.process_time() - start) / (seconds - WARM_UP_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="board time per run [s] (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--pid-rate", type=float, default=2000.0,
                        help="the on-board PID's rate [Hz] (default 2000, the firmware's highest)")
    args = parser.parse_args(argv)
    if args.seconds <= 2 * WARM_UP_S or args.repeat < 1:
        parser.error("--seconds must be above 0.2 and --repeat at least 1")
    run("open", 0.3, args.pid_rate, False)  # compile / load the plant's loops
    print(f"boostsim board emulator on a virtual clock: % of one core per second of board time "
          f"(min of {args.repeat} runs of {args.seconds:g} s; 100 kHz, 20 kS/s stream, "
          f"on-board PID at {args.pid_rate:g} Hz)")
    print(f"  {'phase':8s} {'emulator':>9s} {'free plant':>11s}")
    for phase in ("open", "PID", "DCM"):
        full, free = (min(run(phase, args.seconds, args.pid_rate, stand_in)
                          for _ in range(args.repeat)) for stand_in in (False, True))
        print(f"  {phase:8s} {100 * full:8.1f} % {100 * free:9.1f} %")
    print("  (free plant: the plant replaced by a constant; what the HAL, the serve loop and the "
          "firmware cost alone)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
