"""Benchmark: does the board emulator keep real time at 100 kHz, and at what CPU cost?

Starts the emulator as its own process (``python -m firmware_bridge.emulator``), then drives it
over the pseudo-terminal with pyserial for ``--duration`` seconds (30 by default) the way a
bench session does, in three phases:

1. open loop, CCM (default board, 48 ohm): duty steps 0.4 <-> 0.6 every 0.5 s;
2. the on-board PID at its highest rate (CONT:RATE 2000 Hz; ``--pid-rate`` for another):
   setpoint steps 10 <-> 12 V;
3. light load (1 kohm, discontinuous conduction): duty steps 0.2 <-> 0.3;

all the while streaming the output at 20 kHz (the ADC rate limit) and fetching blocks every
50 ms, plus a MEAS:VOLT? every 100 ms. It checks that the stream has no gap and no overflow
(every sample the timer interrupt would have taken is there, in order) and reports:

* CPU use of the emulator process: process time / wall time (one core = 100 %) while the host
  drives it (from ``/proc``, Linux: from the first command to the last), and by phase (each
  without its first half second); also the emulator's own count over its whole run, which
  includes its idle second before and after (a tenth lower for a 10 s run);
* worst lag: the longest a serve-loop poll ran late (beyond the wait it planned: its 1 ms
  poll, or up to the next timed work when idle polls are skipped); the longest single plant
  computation; the protection ticks run (one per millisecond of board time); how often the
  emulator's process woke up (the on-board PID's steps run in batches of STEP_BATCH_S);
* the plant's work: switching periods advanced, exact engine calls.

``--against REV`` runs the emulator of git revision ``REV`` (its packages extracted to a
temporary directory) and this tree's in turn, ``--rounds`` runs of each (who goes first
alternates; a first short run of each compiles or loads its kernels), the same host script for
both, and reports each run's CPU from ``/proc`` over the driven run, overall and by phase, the
medians and the median of the round-by-round ratios. The machine's speed drifts by half as much
again within minutes; runs a minute apart see the same machine, so the ratio is the figure to
quote (the code #10 measured at 31 % is c7424c7, with the settings ``--lean`` gives:
``--against c7424c7 --lean``).

    python benchmarks/bench_emulator.py [--duration 30] [--pid-rate 2000]
        [--config FILE | --lean] [--json out.json] [--against REV [--rounds 3]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import serial
from revision import ROOT, checkout, in_turn

from boostsim.params import DEFAULT_BOARD_FILE
from firmware_bridge import protocol

RATE = 20000.0
#: ``--lean``: the emulator's imperfections that cost it CPU off (ADC timing jitter, the
#: single-precision board PID, the PID's compute time), as the README's first figure for it
#: (31 %, c7424c7) was measured; ADC noise and DNL stay on.
LEAN = {"adc_jitter": 0, "float32": False, "pid_compute_time": 0}


def _ask(port: serial.Serial, line: str) -> str:
    port.write(line.encode() + b"\n")
    reply = port.readline()
    if not reply.endswith(b"\n"):
        raise RuntimeError(f"no answer to {line!r}")
    return reply.decode().strip()


def _fetch(port: serial.Serial) -> protocol.AdcBlock:
    port.write(b"FETC:ADC? 4096\n")
    kind, payload = protocol.read_response(port.read)
    if kind != "block":
        raise RuntimeError(f"FETC:ADC? answered {payload!r}")
    return protocol.decode_adc_block(payload)


def _process_cpu(pid: int) -> float | None:
    """CPU time [s] (user + system) of process ``pid`` so far; None where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lean_config(directory: Path) -> str:
    """A board TOML in ``directory``: the default board with :data:`LEAN` as its [emulator]."""
    text = resources.files("boostsim").joinpath("data", DEFAULT_BOARD_FILE).read_text("utf-8")
    path = directory / "lean_board.toml"
    path.write_text(text + "\n[emulator]\n"
                    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in LEAN.items()), "utf-8")
    return str(path)


def run(duration: float, config: str | None = None, pid_rate: float = 2000.0,
        tree: Path = ROOT) -> dict:
    """One run of the emulator of the code in ``tree`` (its packages first on the path)."""
    third = duration / 3
    link = Path(tempfile.mkdtemp()) / "board"
    cmd = [sys.executable, "-m", "firmware_bridge.emulator", "--seed", "1", "--quiet",
           "--json", "--link", str(link), "--duration", f"{duration + 1.0:g}",
           "--fault", f"{1.0 + 2 * third:g}:load:1000", *(["--config", config] if config else [])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))
    # In the tree's directory: ``python -m`` puts the working directory first on the path.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
    deadline = time.monotonic() + 120  # a first run may compile the plant's kernels
    while not link.exists():  # --json: the device is found through its link
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the emulator did not start")
        time.sleep(0.02)
    path = str(link)
    port = serial.Serial(path, timeout=2)
    port.reset_input_buffer()
    blocks: list[protocol.AdcBlock] = []
    meas: list[float] = []
    t_start = time.monotonic()
    cpu_start = _process_cpu(proc.pid)
    _ask(port, "*IDN?")
    port.write(b"SENS:ADC:RATE %d\nINIT\nSOUR:PWM:DUTY 0.4\nOUTP ON\n" % RATE)
    phase = 0
    # Per phase: (wall, emulator CPU) at its start, past its first half second (the switch).
    marks: list[tuple[float, float | None]] = []
    next_fetch = next_meas = next_step = time.monotonic()
    step = 0
    # The emulator applies the light load 1 s after its start + 2/3 of the run.
    t_end = t_start + duration
    while (now := time.monotonic()) < t_end:
        elapsed = now - t_start
        if len(marks) < 6 and elapsed >= [0.5, third, third + 0.5, 2 * third,
                                          2 * third + 0.5, duration][len(marks)]:
            marks.append((now, _process_cpu(proc.pid)))
        new_phase = min(int(elapsed / third), 2)
        if new_phase != phase:
            phase = new_phase
            if phase == 1:
                port.write(b"CONT:RATE %g\nCONT:VREF 12\nCONT:MODE PID\n" % pid_rate)
            else:
                port.write(b"CONT:MODE OPEN\nSOUR:PWM:DUTY 0.2\n")
        if now >= next_step:
            step += 1
            if phase == 0:
                port.write(b"SOUR:PWM:DUTY %s\n" % (b"0.6" if step % 2 else b"0.4"))
            elif phase == 1:
                port.write(b"CONT:VREF %s\n" % (b"10" if step % 2 else b"12"))
            else:
                port.write(b"SOUR:PWM:DUTY %s\n" % (b"0.3" if step % 2 else b"0.2"))
            next_step += 0.5
        if now >= next_fetch:
            blocks.append(_fetch(port))
            next_fetch += 0.05
        if now >= next_meas:
            meas.append(float(_ask(port, "MEAS:VOLT?")))
            next_meas += 0.1
        time.sleep(max(0.0, min(next_fetch, next_meas, next_step) - time.monotonic()))
    marks.append((time.monotonic(), _process_cpu(proc.pid)))
    phase_cpu = [None if b[1] is None or a[1] is None else (b[1] - a[1]) / (b[0] - a[0])
                 for a, b in zip(marks[0::2], marks[1::2], strict=False)]
    end, cpu_end = marks[-1]
    run_cpu = None if cpu_start is None or cpu_end is None else \
        (cpu_end - cpu_start) / (end - t_start)
    port.write(b"ABOR\nOUTP OFF\n")
    blocks.append(_fetch(port))
    errors = _ask(port, "SYST:ERR:COUN?")
    port.close()
    out, _ = proc.communicate(timeout=60)
    stats = json.loads(out)["stats"]
    index = np.concatenate([b.indices for b in blocks])
    gaps = int(np.count_nonzero(np.diff(index) != 1))
    overflow = any(b.overflow for b in blocks)
    return {"duration_s": duration, "stats": stats, "samples": int(index.size), "gaps": gaps,
            "overflow": overflow, "first_index": int(index[0]), "board_errors": int(errors),
            "meas_min": min(meas), "meas_max": max(meas), "returncode": proc.returncode,
            "phase_cpu": phase_cpu, "run_cpu": run_cpu, "pid_rate_hz": pid_rate}


def kept_real_time(result: dict) -> bool:
    """Every streamed sample fetched in order from the first, no overflow, no error."""
    return (result["gaps"] == 0 and not result["overflow"] and result["first_index"] == 0
            and result["board_errors"] == 0 and result["stats"].get("errors", 0) == 0)


PHASES = ("open loop", "on-board PID", "DCM")


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def report(result: dict) -> None:
    s = result["stats"]
    plant = s["plant"]
    wall = s["wall_s"]
    cpu = s["process_cpu_s"]
    ok = kept_real_time(result)
    print(f"boostsim board emulator, {wall:.1f} s in real time at 100 kHz "
          f"({plant['periods']:,} switching periods; open loop CCM, on-board PID at "
          f"{result['pid_rate_hz']:g} Hz, "
          f"light-load DCM; streaming at {RATE / 1000:g} kHz)")
    print(f"  CPU use while driven (emulator process, /proc, first command to last): "
          f"{_percent(result['run_cpu'])} of one core   [the emulator's own count over its whole "
          f"run, idle start and end included: {cpu:.2f} s / {wall:.2f} s = "
          f"{100 * cpu / wall:.1f} %; serve thread alone {100 * s['cpu_fraction']:.1f} %]")
    phases = ", ".join(f"{name} {_percent(x)}" for name, x in
                       zip(PHASES, result["phase_cpu"], strict=False))
    print(f"  by phase (emulator process, after each phase's first 0.5 s): {phases}")
    print(f"  worst lag: a serve-loop poll ran {1e3 * s['max_poll_gap']:.1f} ms late (beyond its "
          f"planned wait); longest plant call {1e3 * s['max_plant_call']:.1f} ms wall")
    over = s["gaps_over_ms"]
    print(f"  polls late by over 2 / 5 / 10 ms: {over['2']} / {over['5']} / {over['10']} in "
          f"{s['polls_run']:,} polls run ({s['polls']:,} with the idle ones skipped); "
          f"{s['ticks']:,} protection ticks (1 per ms of board time); the host process "
          f"woke up {s['waits'] / wall:,.0f} times/s")
    print(f"  stream: {result['samples']:,} samples fetched, {result['gaps']} gaps, overflow "
          f"{result['overflow']}; MEAS:VOLT? {result['meas_min']:.2f}..{result['meas_max']:.2f}"
          f" V; plant: {plant['references']} exact engine calls, {plant['ccm_maps']} CCM maps")
    print(f"  slowest plant call: {s['slowest']}")
    print(f"  kept real time: {'yes' if ok else 'NO'}")


def compare(rev: str, rounds: int, duration: float, config: str | None = None,
            pid_rate: float = 2000.0) -> dict:
    """This tree's emulator against git revision ``rev``'s: ``rounds`` runs of each in turn
    (who goes first alternates), the same host script and figures for both -- the CPU from
    /proc over the driven run, overall and by phase. Prints every round, the medians and the
    median of the round-by-round ratios; returns the figures (fractions of one core, per
    round: overall, then by phase) and whether this tree kept real time in every run."""
    names = ("overall", *PHASES)
    with tempfile.TemporaryDirectory() as tmp:
        trees = [("this tree", ROOT), (rev, checkout(rev, Path(tmp)))]
        print(f"boostsim board emulator, this tree against {rev}: {rounds} rounds of "
              f"{duration:g} s (open loop, on-board PID at {pid_rate:g} Hz, light-load DCM; "
              f"streaming at {RATE / 1000:g} kHz), one run of each in turn; % of one core from "
              f"/proc over the driven run (by phase: after each phase's first 0.5 s)")
        for _, tree in trees:  # a tree's first run compiles or loads its kernels
            run(3.0, config, pid_rate, tree)
        figures: dict[str, list[list[float | None]]] = {name: [] for name, _ in trees}
        all_kept = True
        for k, name, tree in in_turn(rounds, trees):
            result = run(duration, config, pid_rate, tree)
            kept = kept_real_time(result)
            if name == "this tree":
                all_kept &= kept
            figures[name].append([result["run_cpu"], *result["phase_cpu"]])
            print(f"  round {k + 1}, {name[:12]:12s} "
                  + ", ".join(f"{n} {_percent(x)}" for n, x in
                              zip(names, figures[name][-1], strict=False))
                  + ("" if kept else "; MISSED REAL TIME"))
    mine, theirs = (figures[name] for name, _ in trees)
    print(f"  medians (this tree / {rev[:12]} / median of the round-by-round ratios):")
    for i, n in enumerate(names):
        a = [r[i] for r in mine if r[i] is not None]
        b = [r[i] for r in theirs if r[i] is not None]
        ratios = [x[i] / y[i] for x, y in zip(mine, theirs, strict=True)
                  if x[i] is not None and y[i]]
        if a and b and ratios:
            print(f"    {n:13s} {_percent(statistics.median(a)):>8s} "
                  f"{_percent(statistics.median(b)):>8s} {statistics.median(ratios):6.3f}")
    return {"against": rev, "duration_s": duration, "pid_rate_hz": pid_rate,
            "figures": ["overall", *PHASES], "this_tree": mine, "revision": theirs,
            "kept_real_time": all_kept}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--config", help="board TOML for the emulator (e.g. an [emulator] table "
                                       "switching imperfections on or off)")
    kind.add_argument("--lean", action="store_true",
                      help="the default board with the emulator's ADC jitter, float32 PID and "
                           "PID compute time off (the settings of the README's first figure)")
    parser.add_argument("--pid-rate", type=float, default=2000.0,
                        help="the on-board PID's rate in the second phase [Hz] (default 2000, "
                             "the firmware's highest)")
    parser.add_argument("--against", metavar="REV",
                        help="compare with the emulator of git revision REV: runs of each in "
                             "turn, medians and round-by-round ratios")
    parser.add_argument("--rounds", type=int, default=3,
                        help="--against: runs of each tree (default 3)")
    args = parser.parse_args(argv)
    if args.against and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        config = lean_config(Path(tmp)) if args.lean else args.config
        if args.against:
            result = compare(args.against, args.rounds, args.duration, config, args.pid_rate)
        else:
            result = run(args.duration, config, args.pid_rate)
            report(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    kept = result["kept_real_time"] if args.against else kept_real_time(result)
    return 0 if kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
