"""Benchmark: what one on-board PID step costs the emulator, part by part (in-process, no link).

The figures behind ``bench_emulator.py``'s PID phase, each the median of ``--repeat`` timings of
``--n`` calls, in microseconds per call:

* the board's PID update in single precision (``board_pid_class(float32=True)``: numpy float32
  scalars, as MicroPython's floats round) and in double precision;
* the firmware's own step (``Device.poll`` with the on-board PID on) on a HAL that does nothing
  (constant ADC codes, no plant): the firmware's share of a step;
* the plant: 4 conversions of a control step sampled, then a new duty (the PID dithering by a
  few PWM counts), at 2 kHz in steady CCM; and 12 samples alone, and the compiled evaluation
  against the numpy reference (``Plant(compiled=False)``).

    python benchmarks/bench_emulator_parts.py [--n 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from boostsim import default_board, steady_state
from firmware_bridge.emulator import board_pid_class, firmware_config
from firmware_bridge.firmware import device
from firmware_bridge.plant import Plant


class _IdleHAL:
    """The HAL interface doing nothing: the firmware's own cost of a step."""

    def __init__(self) -> None:
        self.t = 0

    def ticks_us(self): return self.t
    def ticks_ms(self): return self.t // 1000
    def ticks_diff(self, a, b): return a - b
    def protect_start(self, period_us, fn): pass
    def protect_stop(self): pass
    def gate_off(self): pass
    def irq_disable(self): return True
    def irq_enable(self, state): pass
    def serial_number(self): return "B0057E0000000000"
    def pwm_set(self, enabled, freq_hz, duty, limit=None): pass
    def adc_sum(self, channel, n): return 1900 * n
    def adc_read(self, channel): return 1900
    def adc_stream_start(self, period_us, ring): return 0
    def adc_stream_stop(self): pass
    def serial_read(self, timeout_us): return b""
    def serial_write(self, data): return len(data)
    def service(self): pass


def _time(fn, n: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the time [us] per call of ``fn(i)``, i = 0..n-1."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def _pid(float32: bool):
    pid = board_pid_class(float32)(0.0, 9.07, 0.0, 1 / 500, 0.0, 0.9)
    return lambda i: pid.update(10.0, 9.9 + 1e-3 * (i % 7))


def _firmware_step():
    hal = _IdleHAL()
    dev = device.Device(hal, firmware_config())
    dev._pid_class = board_pid_class(True)
    dev.feed(b"SOUR:PWM:DUTY 0.4\nOUTP ON\nCONT:RATE 2000\nCONT:VREF 12\nCONT:MODE PID\n")

    def step(i):
        hal.t += 500
        dev.poll()
    return step


def _plant(compiled: bool, samples: int, duty_steps: bool):
    board = default_board()
    ss = steady_state(board, 0.6)
    plant = Plant(board, x0=(ss.il_start, ss.vc_start), compiled=compiled)
    plant.set_pwm(0.0, True, 1e5, 0.6)
    offsets = np.arange(samples) * (2e-6 if duty_steps else 4e-5)
    duties = 0.6 + np.round(np.random.default_rng(1).normal(0.0, 2.0, 4096)) / 1250
    clock = [0.0]

    def step(i):
        t = clock[0]
        plant.sample(t + offsets, presorted=True)
        if duty_steps:
            plant.set_pwm(t + 1e-5, True, 1e5, duties[i % 4096])
        clock[0] = t + 5e-4
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="calls per timing")
    ap.add_argument("--repeat", type=int, default=5, help="timings (the median is printed)")
    a = ap.parse_args()
    rows = [
        ("board PID update, float32 (numpy scalars)", _pid(True)),
        ("board PID update, float64", _pid(False)),
        ("firmware step (Device.poll, PID on, idle HAL)", _firmware_step()),
        ("plant: 4 conversions + a new duty (compiled)", _plant(True, 4, True)),
        ("plant: 4 conversions + a new duty (numpy)", _plant(False, 4, True)),
        ("plant: 12 samples, steady duty (compiled)", _plant(True, 12, False)),
        ("plant: 12 samples, steady duty (numpy)", _plant(False, 12, False)),
    ]
    print(f"us per call, median of {a.repeat} x {a.n} calls")
    for label, fn in rows:
        for i in range(200):  # warm up (compiled code loaded, caches filled)
            fn(i)
        print(f"  {label:48s} {_time(fn, a.n, a.repeat):7.1f}")


if __name__ == "__main__":
    main()
