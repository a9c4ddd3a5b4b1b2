"""A host-side PID loop on the bench (:func:`run_live`) and the same loop in the switching
simulator (:func:`host_loop_controller`, :func:`simulate_live`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from boostsim import steady_state
from boostsim.params import BoostParams

from ..board import Board, BoardError, BoardResetError, LinkError, TripError
from ..firmware import config as fw
from ..rp2040 import PWM_CLOCK
from .common import _smooth

if TYPE_CHECKING:  # the live window is a figure; the loop only feeds it
    from .figures import LivePlotter

# ---------------------------------------------------------------------------- live loop


@dataclasses.dataclass
class LiveResult:
    """A host-side control run: one entry per loop tick. ``t`` [s] host time of each tick
    since the first, ``vref`` (after the PID's setpoint ramp), ``vout`` measured, ``duty``
    commanded, ``integral`` the PID's I term, ``exchange`` [s] the serial round trip of the
    tick, ``lateness`` [s] how late the tick started. ``stopped``: "duration", "interrupt"
    (Ctrl-C), "terminate" (SIGTERM), "stopped" (``should_stop``) or the error that ended it
    (the data up to then is kept)."""

    settings: dict[str, Any]
    t: np.ndarray
    vref: np.ndarray
    vout: np.ndarray
    duty: np.ndarray
    integral: np.ndarray
    exchange: np.ndarray
    lateness: np.ndarray
    overruns: int
    link_errors: int
    duty_mismatches: int
    stopped: str
    error: BaseException | None = None
    sim: dict[str, np.ndarray] | None = None

    @property
    def ticks(self) -> int:
        return int(self.t.size)

    def timing(self) -> dict[str, float]:
        """Achieved rate [Hz], tick-interval jitter (std, p99 and max of |interval - ts|)
        [s] and the round trip (median, p99) [s]."""
        ts = 1.0 / self.settings["rate"]
        if self.t.size < 3:
            return {"rate": math.nan, "jitter_std": math.nan, "jitter_p99": math.nan,
                    "jitter_max": math.nan, "exchange_median": math.nan,
                    "exchange_p99": math.nan}
        intervals = np.diff(self.t)
        dev = np.abs(intervals - ts)
        return {"rate": float((self.t.size - 1) / (self.t[-1] - self.t[0])),
                "jitter_std": float(intervals.std()), "jitter_p99": float(np.percentile(dev, 99)),
                "jitter_max": float(dev.max()),
                "exchange_median": float(np.median(self.exchange)),
                "exchange_p99": float(np.percentile(self.exchange, 99))}

    def columns(self) -> dict[str, np.ndarray]:
        return {"t_s": self.t, "vref_V": self.vref, "vout_V": self.vout, "duty": self.duty,
                "integral": self.integral, "exchange_s": self.exchange,
                "lateness_s": self.lateness}


LIVE_COLUMNS = ("t_s", "vref_V", "vout_V", "duty", "integral", "exchange_s", "lateness_s")


def reference_function(vref: float, steps: Sequence[tuple[float, float]] = ()
                       ) -> Callable[[float], float]:
    """Setpoint over time: ``vref`` from 0, then each ``(t, v)`` of ``steps`` from t on."""
    points = sorted((float(t), float(v)) for t, v in steps)

    def ref(t: float) -> float:
        value = vref
        for when, v in points:
            if t >= when:
                value = v
            else:
                break
        return value
    return ref


#: Waits between ticks longer than this [s] keep the board's host watchdog fed (Board.hold).
_FEED_WAIT = 0.05


def run_live(board: Board, *, vref: float, kp: float, ki: float, kd: float = 0.0,
             rate: float = 200.0, duration: float | None = None, slew: float | None = None,
             tf: float = 0.0, vref_steps: Sequence[tuple[float, float]] = (),
             duty_max: float | None = None, log=None,
             status: Callable[[dict[str, float]], None] | None = None,
             status_every: float = 0.2, plotter: LivePlotter | None = None,
             should_stop: Callable[[], bool] | None = None,
             max_link_errors: int = 5) -> LiveResult:
    """Hold the output voltage at ``vref`` with :class:`boostsim.pid.PID` run on the host
    every ``1/rate`` s (absolute deadlines; a tick more than a period late is skipped and
    counted as an overrun).

    Each tick is one serial round trip: ``OUTP?`` (a trip or a reset shows up at once),
    ``SOUR:PWM:DUTY?`` (reads back the duty sent at the previous tick: a corrupted command is
    resent) and ``MEAS:VOLT?`` (the board's 16-conversion mean) in one write; the PID's new
    duty is then sent without waiting. The loop starts with the output on at duty 0 (bumpless
    from there; with ``slew`` [V/s] the setpoint ramps from the first measurement, a soft
    start). It runs for
    ``duration`` s or until Ctrl-C / ``should_stop()``; a trip, a reset or repeated link
    errors end it with the data kept (``stopped``, ``error``). The output is off afterwards.
    ``status(dict)`` is called every ``status_every`` s (live display), ``plotter.push`` too.
    """
    from boostsim.pid import PID

    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be > 0 [Hz], got {rate!r}")
    ts = 1.0 / rate
    limit = board.duty_limit
    if board.max_duty is not None:
        limit = min(limit, board.max_duty)
    if duty_max is not None:
        limit = min(limit, duty_max)
    pid = PID(kp, ki, kd, ts, out_min=0.0, out_max=limit, tf=tf,
              setpoint_rate=slew if slew else None)
    ref = reference_function(vref, vref_steps)
    settings = {"vref": vref, "vref_steps": [list(s) for s in vref_steps], "kp": kp, "ki": ki,
                "kd": kd, "tf": tf, "rate": rate, "slew": slew, "duty_max": limit,
                "duration": duration}
    cols: dict[str, list] = {k: [] for k in ("t", "vref", "vout", "duty", "integral",
                                             "exchange", "lateness")}
    overruns = link_errors = mismatches = consecutive = 0
    stopped, error = "duration", None
    perf = time.perf_counter
    # A tick's answer comes within a round trip: waiting the board's full timeout for a lost
    # one would stall the loop, so ticks wait at most a few periods (then resync).
    saved_timeout = board.timeout
    try:
        trip = board.trip()
        if trip != "NONE":
            raise TripError(f"the board has a latched {trip} trip from before (clear it first)",
                            trip, "PROT:TRIP?")
        board.set_duty(0.0)
        board.output(True)
        pid.reset(output=0.0)
        u_sent = 0.0
        board.timeout = min(saved_timeout, max(0.02, 4 * ts))
        t0 = perf()
        next_tick = t0
        next_status = t0
        y_prev = None
        jump = 0.05 * max(float(np.max(ref(0.0))), 1.0)  # [V] per tick worth a second reading
        while True:
            if should_stop is not None and should_stop():
                stopped = "stopped"
                break
            now = perf()
            if duration is not None and next_tick - t0 >= duration - 1e-9:
                break
            if next_tick - now > _FEED_WAIT:
                # A slow loop (rate below a few Hz) must not starve the board's host watchdog:
                # wait talking to the board (OUTP? every 0.1 s or a quarter of the watchdog;
                # a trip meanwhile raises TripError at once).
                board.hold(next_tick - now, expect_on=True)
            elif next_tick > now:
                time.sleep(next_tick - now)
            t_tick = perf()
            try:
                on, duty_rb, y = board.pipeline(("OUTP?",), ("SOUR:PWM:DUTY?",),
                                                ("MEAS:VOLT?",))
                y = board.correct_vout(y)
                if y_prev is not None and abs(y - y_prev) > jump:
                    # A corrupted digit can still parse as a number: confirm a large jump
                    # (a confirmation lost on the link is a lost tick like any other).
                    y = board.correct_vout(board.query("MEAS:VOLT?"))
            except (BoardResetError, TripError):
                raise
            except LinkError:
                link_errors += 1
                consecutive += 1
                if consecutive > max_link_errors:
                    raise
                if board.resync():
                    raise BoardResetError(f"{board.port_name}: the board was reset during the "
                                          f"live loop (output off)") from None
                if not _send_duty(board, u_sent):
                    link_errors += 1
                next_tick += ts
                continue
            consecutive = 0
            y_prev = y
            t_meas = perf()
            if not on:
                board.check(expect_on=True)  # raises TripError / BoardResetError
            if abs(duty_rb - u_sent) > 2e-6:
                mismatches += 1              # the duty command arrived corrupted: resend
                if not _send_duty(board, u_sent):
                    link_errors += 1
            board._check_vout(y)
            t_rel = t_tick - t0
            u = round(float(pid.update(ref(t_rel), y)), 6)
            if not _send_duty(board, u):
                link_errors += 1
            u_sent = u
            sp = float(pid.ramped_setpoint)
            values = (t_rel, sp, y, u, float(pid.integral), t_meas - t_tick,
                      t_tick - next_tick)
            for key, v in zip(cols, values, strict=True):
                cols[key].append(v)
            if log is not None:
                log.row(*values)
            if plotter is not None:
                plotter.push(t_rel, y, sp, u)
            if status is not None and t_tick >= next_status:
                next_status = t_tick + status_every
                status(_live_status(cols, ts))
            next_tick += ts
            behind = perf() - next_tick
            if behind > ts:
                missed = int(behind / ts)
                overruns += missed
                next_tick += missed * ts
    except KeyboardInterrupt:
        stopped = "interrupt"
    except SystemExit:  # SIGTERM under Board's context manager
        stopped = "terminate"
    except BoardError as exc:
        stopped, error = str(exc), exc
    finally:
        board.timeout = saved_timeout
        with contextlib.suppress(BoardError):
            board.output(False)
    arrays = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    return LiveResult(settings=settings, **arrays, overruns=overruns, link_errors=link_errors,
                      duty_mismatches=mismatches, stopped=stopped, error=error)


def _send_duty(board: Board, duty: float) -> bool:
    """Send the duty without waiting; False if the write failed. A failed write is a lost
    command like a corrupted one: the next tick reads the duty back and resends it, and sees
    a trip or a reset. (pyserial's write timeout runs on the wall clock, so a host process
    stopped or starved in the middle of a write reports a timeout for bytes it wrote.)"""
    try:
        board.write_nowait("SOUR:PWM:DUTY", duty)
    except LinkError:
        return False
    return True


def _live_status(cols: dict[str, list], ts: float) -> dict[str, float]:
    t = cols["t"]
    recent = [x for x in t[-400:] if x >= t[-1] - 1.0]
    rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else math.nan
    intervals = np.diff(recent) if len(recent) > 2 else np.zeros(0)
    return {"t": t[-1], "vref": cols["vref"][-1], "vout": cols["vout"][-1],
            "duty": cols["duty"][-1], "error": cols["vref"][-1] - cols["vout"][-1],
            "rate": rate, "jitter": float(intervals.std()) if intervals.size else math.nan,
            "exchange": cols["exchange"][-1]}


def host_loop_controller(params: BoostParams, *, kp: float, ki: float, kd: float = 0.0,
                         rate: float = 200.0, duty_max: float = fw.DUTY_LIMIT_DEFAULT,
                         slew: float | None = None, tf: float = 0.0, noise_lsb: float = 1.0,
                         average: int = fw.MEAS_AVG, seed: int | None = 0,
                         initial_duty: float = 0.0):
    """The host (or board) loop as a simulator controller: the same PID every
    ``N = round(fsw / rate)`` switching periods, sensing through an ADC like ``MEAS:VOLT?``
    (the firmware's divider and reference, ``average`` conversions spread evenly over a
    switching period, ``noise_lsb`` codes rms each) and the RP2040 PWM (1/``PWM_CLOCK``
    resolution, ``duty_max``). Returns (controller, N, ts = N / fsw)."""
    from boostsim.control import ADC, PWM, DigitalController
    from boostsim.pid import PID

    fsw = float(params.fsw)
    every = max(1, round(fsw / rate))
    ts = every / fsw
    Ts = 1.0 / fsw
    adc = ADC(bits=round(math.log2(fw.ADC_FULL_SCALE)), vref=fw.ADC_VREF,
              divider=fw.VOUT_DIVIDER, noise_rms=noise_lsb * fw.ADC_VREF / fw.ADC_FULL_SCALE,
              sample_at=0.5, oversample=int(average), spacing=Ts / average, seed=seed)
    pwm = PWM(timer_clock=PWM_CLOCK, duty_min=0.0, duty_max=min(float(duty_max),
                                                                fw.DUTY_HARD_MAX))
    pid = PID(kp, ki, kd, ts, out_min=0.0, out_max=float(duty_max), tf=tf,
              setpoint_rate=slew if slew else None)
    return DigitalController(pid, adc=adc, pwm=pwm, every=every,
                             initial_duty=initial_duty), every, ts


def simulate_live(params: BoostParams, result: LiveResult, *, duration: float | None = None,
                  noise_lsb: float = 1.0, seed: int | None = 0, frequency: float | None = None
                  ) -> dict[str, np.ndarray]:
    """The live run's loop in the switching simulator (same PID settings, rate, setpoint
    steps and duty limit), from the output-off state (steady state at duty 0), for
    ``duration`` s (default: the run's length). The time axis is shifted so the first PID
    update is at t = 0 like the host loop's first tick. Stored in ``result.sim`` and returned:
    ``t`` [s], ``vout`` [V] cycle-averaged, ``t_ctrl``/``duty``/``measured`` per control
    step. Costs about 10 s of computation per simulated second."""
    from boostsim import simulate

    s = result.settings
    p = params if frequency is None else params.replace(fsw=float(frequency))
    span = duration if duration is not None else (float(result.t[-1]) if result.ticks else
                                                  (s["duration"] or 1.0))
    controller, every, ts = host_loop_controller(
        p, kp=s["kp"], ki=s["ki"], kd=s["kd"], rate=s["rate"], duty_max=s["duty_max"],
        slew=s["slew"], tf=s["tf"], noise_lsb=noise_lsb, seed=seed)
    steps = [(0.0, s["vref"])] + [(float(t) + ts, float(v)) for t, v in s["vref_steps"]]
    start = steady_state(p, 0.0, points=2)
    Ts = 1.0 / float(p.fsw)
    # Output samples 9/8 of a period apart step through the switching phase (1/8 period per
    # sample), so an 8-sample moving mean is close to the cycle average; the exact
    # period_means() would cost more than the closed-loop simulation itself.
    sim = simulate(p, controller=controller, vref=steps if len(steps) > 1 else s["vref"],
                   t_end=span + ts, dt=Ts * 9 / 8, x0=(start.il_start, start.vc_start))
    vout = _smooth(np.asarray(sim.vout, dtype=float).ravel(), 8)
    t = np.asarray(sim.t, dtype=float) - ts
    log = controller.log()
    keep = t >= -ts
    out = {"t": t[keep], "vout": vout[keep], "t_ctrl": log.t[:, 0] - ts,
           "duty": log.duty[:, 0], "measured": log.measured[:, 0],
           "setpoint": log.setpoint[:, 0], "every": np.array(every), "ts": np.array(ts)}
    result.sim = out
    return out
