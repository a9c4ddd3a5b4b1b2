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

``--against REV`` compares with the code of git revision REV (one with
``firmware_bridge/virtual_board.py``): both trees run in worker processes pinned to the same
CPU, each with its own board of each phase, in turns of 0.1 s of board time (``--seconds`` x
``--repeat`` of board time per figure; the first tenth, where the plant builds its maps, is not
counted), and each figure is the process time summed over the turns, with the ratio (this tree
/ REV). On a shared machine whose speed drifts by half as much again within minutes, such
interleaved turns on one CPU show a change of a few per cent (the same tree against itself
reads 0.97-1.05).

    python benchmarks/bench_emulator_virtual.py [--seconds 2] [--repeat 3] [--pid-rate 2000]
        [--against REV]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from revision import ROOT, checkout

from boostsim import default_board
from firmware_bridge.plant import PlantStats
from firmware_bridge.virtual_board import VirtualBoard

WARM_UP_S = 0.1  # board time before the timed part (the stream starts at 10 ms)
SLICE_S = 0.1    # --against: board time per turn of each tree
PHASES = ("open", "PID", "DCM")


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


class Worker:
    """This benchmark's boards in a process of their own on the code in ``tree`` (its boostsim
    and firmware_bridge first on the path), pinned to ``cpu`` (where the OS allows): a board
    per phase, run slice by slice on request."""

    def __init__(self, tree: Path, cpu: int | None):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker"], cwd=tree, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(tree)},
            preexec_fn=None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu})))

    def ask(self, *words: Any) -> float:
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark worker ended (see its error above)")
        return float(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _serve_worker() -> int:
    """Requests on stdin: ``board PHASE SECONDS PID_RATE FREE`` (a new board, run through its
    warm-up), then ``slice DT``: its next DT seconds of board time; answers the process time."""
    run("open", 0.3, 2000.0, False)  # compile / load the plant's loops
    board, t = None, 0.0
    for line in sys.stdin:
        word, *args = line.split()
        if word == "board":
            phase, seconds, pid_rate, free = args
            params = default_board().replace(R=1000.0) if phase == "DCM" else default_board()
            board = VirtualBoard(_script(phase, float(seconds), float(pid_rate)), params=params,
                                 plant=FreePlant if free == "1" else None)
            board.serve_until(WARM_UP_S)
            t = WARM_UP_S
            print(0.0, flush=True)
        else:
            t += float(args[0])
            start = time.process_time()
            board.serve_until(t)
            print(time.process_time() - start, flush=True)
    return 0


def _one_cpu() -> int | None:
    """A CPU this process may run on (both workers are pinned to it), None where the OS does
    not say."""
    try:
        return max(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _compare(rev: str, seconds: float, repeat: int, pid_rate: float) -> None:
    slices = max(10, round(seconds * repeat / SLICE_S))
    cpu = _one_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        workers = [Worker(ROOT, cpu),
                   Worker(checkout(rev, Path(tmp), "firmware_bridge/virtual_board.py"), cpu)]
        try:
            print(f"boostsim board emulator on a virtual clock, this tree against {rev}: % of "
                  f"one core per second of board time ({slices} slices of {SLICE_S:g} s of "
                  f"board time each, the two trees' boards in turn"
                  f"{'' if cpu is None else f' on CPU {cpu}'}; the first tenth not counted)")
            print(f"  {'phase':11s} {'this tree':>10s} {rev[:12]:>12s} {'ratio':>6s}")
            for phase in PHASES:
                for free in (False, True):
                    for w in workers:
                        w.ask("board", phase, WARM_UP_S + slices * SLICE_S + 0.1, pid_rate,
                              int(free))
                    times = [[], []]
                    for k in range(slices):
                        for i in ((0, 1) if k % 2 == 0 else (1, 0)):  # who goes first alternates
                            times[i].append(workers[i].ask("slice", SLICE_S))
                    mine, theirs = (sum(x[slices // 10:]) for x in times)
                    board_s = (slices - slices // 10) * SLICE_S
                    name = phase + (" free" if free else "")
                    print(f"  {name:11s} {100 * mine / board_s:8.1f} % "
                          f"{100 * theirs / board_s:10.1f} % {mine / theirs:6.3f}")
            print("  (free: the plant replaced by a constant; what the HAL, the serve loop and "
                  "the firmware cost alone)")
        finally:
            for w in workers:
                w.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="board time per run [s] (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--pid-rate", type=float, default=2000.0,
                        help="the on-board PID's rate [Hz] (default 2000, the firmware's highest)")
    parser.add_argument("--against", metavar="REV",
                        help="compare with git revision REV, run by run in turn (medians)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _serve_worker()
    if args.seconds <= 2 * WARM_UP_S or args.repeat < 1:
        parser.error("--seconds must be above 0.2 and --repeat at least 1")
    if args.against:
        _compare(args.against, args.seconds, args.repeat, args.pid_rate)
        return 0
    run("open", 0.3, args.pid_rate, False)  # compile / load the plant's loops
    print(f"boostsim board emulator on a virtual clock: % of one core per second of board time "
          f"(min of {args.repeat} runs of {args.seconds:g} s; 100 kHz, 20 kS/s stream, "
          f"on-board PID at {args.pid_rate:g} Hz)")
    print(f"  {'phase':8s} {'emulator':>9s} {'free plant':>11s}")
    for phase in PHASES:
        full, free = (min(run(phase, args.seconds, args.pid_rate, stand_in)
                          for _ in range(args.repeat)) for stand_in in (False, True))
        print(f"  {phase:8s} {100 * full:8.1f} % {100 * free:9.1f} %")
    print("  (free plant: the plant replaced by a constant; what the HAL, the serve loop and the "
          "firmware cost alone)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
