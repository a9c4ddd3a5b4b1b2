"""The on-board PID loop (``CONT:MODE PID``) as the firmware really runs it, as a controller
for :func:`boostsim.simulate`: when it samples, what it averages, when its duty takes effect.

What ``firmware/device.py`` does on the board (and the emulator, which runs the same code):

* The PID is not driven by a timer: the serve loop calls ``Device.poll`` between serial reads,
  and ``poll`` runs a control step when its due time has come. Due times follow a fixed grid
  ``1 / CONT:RATE`` apart (a step more than one period late restarts the grid from now). The
  loop waits for input at most until the next step is due (``Device.wait_us``: whole
  milliseconds in ``poll()``, then to the microsecond), so a step samples at its due time, or
  when the loop is free again if the previous step's work (its conversions and computation)
  ran past it. Host commands wake the loop but do not move the steps.
* The step reads ``CONT_AVG`` conversions back to back (``spacing`` apart) at whatever phase
  of the switching period the poll fell on (the PWM and the serve loop are not locked), those
  past the period's end in the next period (its on-time, not the diode's end of this one),
  averages the codes, converts them with the nominal divider and reference, and updates
  :class:`boostsim.pid.PID` (``ts = 1 / rate`` whatever the real interval was), in
  single precision on the RP2040 (MicroPython's floats).
* The duty is written ``compute`` seconds after the sample (the conversions and the PID
  update in MicroPython; the emulator's ``pid_compute_time``); the RP2040 PWM latches a new
  compare level at its counter wrap, so it applies from the next switching period on,
  quantised and limited as :class:`boostsim.control.PWM` models.

:class:`BoardTiming` holds these figures (all of them a real board has too: the firmware's
``CONT_AVG``, its compute time and float width); :class:`BoardController` is
:class:`boostsim.control.DigitalController`'s ADC, PID and PWM run on that schedule, every
lane an independent realisation of the jitter and the noise (so several lanes give the
spread and the mean of the board's step). Its timing resolution is ``resolution`` switching
periods (the simulator calls it that often; the numpy engine runs it): 1 by default, the
board's schedule to the period. A coarser one moves each sample up to ``resolution - 1``
periods late and its duty up to as many, which against the LC ringing (1.5 kHz on the hidden
board of ``benchmarks/bench_identify.py``, ~3 cycles per 500 Hz control step) samples another
phase of it: at 10 that model's median step overshoot read ~6-9 % high.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from boostsim.control import ADC, PWM, ControlLog, DigitalController, Reference
from boostsim.pid import PID
from boostsim.rp2040 import ADC_CONVERSION_S

from ..firmware import config as fw

__all__ = ["BoardController", "BoardTiming", "next_control_step"]


@dataclasses.dataclass(frozen=True)
class BoardTiming:
    """When the board's PID samples and acts (see the module docstring).

    compute [s]: from the step's last ADC conversion to its PWM write
    (the emulator's ``pid_compute_time``). average: conversions per step (``CONT_AVG``);
    spacing [s]: between them (each takes that long). float32: the PID computes in single precision
    (MicroPython on the RP2040). resolution: the model's time step in switching periods (the
    sample instants and the PWM write are resolved to it; 1: the board's schedule exactly,
    10 = 100 us at 100 kHz, faster and coarser).
    """

    compute: float = 100e-6
    average: int = fw.CONT_AVG
    spacing: float = ADC_CONVERSION_S
    float32: bool = True
    resolution: int = 1

    def __post_init__(self) -> None:
        for name in ("compute", "spacing"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"BoardTiming {name} must be a finite time >= 0 [s], got "
                                 f"{value!r}")
        for name in ("average", "resolution"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"BoardTiming {name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.float32, bool):
            raise ValueError(f"BoardTiming float32 must be True or False, got "
                             f"{self.float32!r}")


def _board_pid(template: PID, float32: bool) -> PID:
    """A fresh PID with the template's settings, every number single precision if asked
    (NumPy 2 keeps float32 arithmetic with Python floats, as the RP2040's floats round)."""
    num = np.float32 if float32 else float
    kw: dict[str, Any] = {"tf": num(template.tf), "anti_windup": template.anti_windup}
    if template.anti_windup == "backcalc":
        kw["kt"] = num(template.kt)
    if template.setpoint_rate is not None:
        kw["setpoint_rate"] = num(template.setpoint_rate)
    return type(template)(num(template.kp), num(template.ki), num(template.kd), num(template.ts),
                          num(template.out_min), num(template.out_max), **kw)


class BoardController(DigitalController):
    """The board's PID loop on the board's schedule (:class:`BoardTiming`), ``lanes``
    independent realisations of it (one PID each, every lane its own jitter and noise).

    ``pid``: the settings the board runs (``ts = 1 / CONT:RATE``; scalar gains); ``adc``: the
    board's ADC (its ``oversample``, ``spacing`` and ``sample_at`` are replaced by the timing's);
    ``pwm``: the RP2040 slice; ``initial_duty``: the duty (and the integral) at t = 0; ``seed``:
    the due grid's phase's and the noise's generator. Simulate with a scalar board or one lane
    per realisation. :meth:`log` gives one row per control step of each lane (NaN-padded).
    """

    def __init__(self, pid: PID, *, timing: BoardTiming | None = None, vref: Any = None,
                 adc: ADC | None = None, pwm: PWM | None = None, initial_duty: float = 0.0,
                 lanes: int = 1, seed: int | None = 0):
        timing = timing or BoardTiming()
        if any(np.ndim(getattr(pid, name)) for name in ("kp", "ki", "kd", "ts")):
            raise ValueError("the board runs one PID: give scalar gains (lanes are "
                             "realisations of its timing, not different loops)")
        if not (isinstance(lanes, int) and lanes >= 1):
            raise ValueError(f"lanes must be an integer >= 1, got {lanes!r}")
        adc = dataclasses.replace(adc or ADC(), oversample=timing.average,
                                  spacing=timing.spacing, sample_at=0.0, seed=seed)
        super().__init__(pid, vref=vref, adc=adc, pwm=pwm, every=timing.resolution,
                         initial_duty=initial_duty)
        self.timing = timing
        self.lanes = lanes
        self._pids: list[PID] = []

    @property
    def n_lanes(self) -> int:
        return max(self.lanes, super().n_lanes)

    def start(self, lanes: dict[str, np.ndarray], vref: Any = None) -> None:
        """Prepare a simulation (called by ``simulate``): every lane's PID reset to the
        initial duty, its due grid at a random phase, its first sample planned."""
        if vref is not None:
            self.reference = Reference(vref)
        if self.reference is None:
            raise ValueError("the controller needs a reference: pass vref=... to simulate()")
        fsw = lanes["fsw"]
        n = fsw.size
        if n != self.n_lanes and self.n_lanes > 1:
            raise ValueError(f"{self.n_lanes} realisations but {n} lanes simulated")
        self._fsw = fsw
        self._Ts = 1.0 / fsw
        self._quantize = self.pwm.quantizer(fsw)
        self._rng = np.random.default_rng(self.adc.seed)
        self._rows = []
        self._duty = self._quantize(np.full(n, self.initial_duty))
        self._pids = [_board_pid(self.pid, self.timing.float32) for _ in range(n)]
        for lane, pid in enumerate(self._pids):
            pid.reset(output=float(self._duty[lane]))
        period = float(self.pid.ts)
        self._period = period
        self._due = self._rng.uniform(0.0, period, n)
        self._awake = np.full(n, -math.inf)  # when the serve loop is free for a step [s]
        self._sample_t = np.array([self._next_sample(lane) for lane in range(n)])
        self._pending: list[tuple[float, int, float]] = []  # (apply at [s], lane, duty)
        # Steps whose conversions run past the period's end (resolution 1): (lanes, their
        # conversions' instants [s] from the next period's start, outputs read so far (NaN:
        # not yet), sample instants [s]).
        self._reading: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lane_rows: list[list[tuple]] = [[] for _ in range(n)]

    def __call__(self, k: int, t_start: np.ndarray, view) -> np.ndarray:
        if self._duty is None or not self._pids:
            raise RuntimeError("BoardController.start() was not called; pass the controller "
                               "to boostsim.simulate")
        t0 = np.broadcast_to(np.asarray(t_start, dtype=float), self._Ts.shape)
        if view is not None:
            if self._reading is not None:  # conversions that ran into this period
                self._finish(view)
            lanes = np.flatnonzero(self._sample_t < t0)
            if lanes.size:
                self._steps(lanes, t0, view)
        if self._pending:  # duties written by now: the PWM latches them at this wrap
            keep = []
            duty = self._duty.copy()
            for item in self._pending:
                if item[0] <= t0[item[1]] + 1e-9 * self._Ts[item[1]]:
                    duty[item[1]] = item[2]
                else:
                    keep.append(item)
            self._pending = keep
            self._duty = duty
        return self._duty

    def _next_sample(self, lane: int) -> float:
        """Board time [s] of the lane's next control step (:func:`next_control_step`)."""
        return next_control_step(float(self._awake[lane]), float(self._due[lane]))

    def _steps(self, lanes: np.ndarray, t0: np.ndarray, view) -> None:
        """Control steps of ``lanes``, due in the period just ended (``view``): sampled at the
        phase of their sample instant within it, the duty written ``compute`` later.

        The conversions run ``spacing`` apart from the sample instant; those past the
        period's end read the next period (the serve loop is not locked to the PWM: at
        100 kHz and the default 4 x 2 us, 3 of 5 phases run over). At resolution 1 the step
        is finished at the next call, which sees that period; at a coarser resolution the
        model has only the last period of its block, and reads them a period early (the same
        phase of the period's start: exact in a steady state, off by the output's change over
        one period in a transient). The period's end is not the next period's start: there
        the diode conducts and the output reads about r_C * iL higher than in the next on-time.
        """
        Ts = self._Ts
        timing = self.timing
        phase = np.mod(self._sample_t, Ts)
        offsets = np.arange(timing.average) * timing.spacing
        instants = phase[None, :] + offsets[:, None]
        t_sample = t0 - Ts + phase  # the sample instant, resolved to the period just ended
        busy = timing.average * timing.spacing + timing.compute  # conversions, computation
        for lane in lanes.tolist():  # the serve loop's next step (the schedule, not the data)
            now = self._sample_t[lane]
            due = self._due[lane] + self._period
            if due <= now:  # device.py: more than a period late restarts the grid
                due = now + self._period
            self._due[lane] = due
            self._awake[lane] = now + busy  # the loop is free again once the PWM is written
            self._sample_t[lane] = self._next_sample(lane)
        within = instants < Ts[None, :] * (1 - 1e-12)
        if timing.resolution > 1:  # the next period is not in view: the same phase of this one
            instants = np.where(within, instants, np.mod(instants, Ts[None, :]))
            within[:] = True
        vout = np.stack([view.sample(np.where(ok, tau, 0.0))[2]
                         for tau, ok in zip(instants, within, strict=True)])
        vout = np.where(within, vout, np.nan)
        later = ~within[:, lanes].all(axis=0)
        if later.any():
            self._reading = (lanes[later], instants[:, lanes[later]] - Ts[lanes[later]],
                             vout[:, lanes[later]], t_sample[lanes[later]])
        done = lanes[~later]
        if done.size:
            self._update(done, vout[:, done], t_sample[done])

    def _finish(self, view) -> None:
        """Finish the steps whose conversions ran into the period ``view`` (resolution 1)."""
        lanes, instants, vout, t_sample = self._reading
        self._reading = None
        n = self._Ts.size
        late = np.isnan(vout)
        for j in np.flatnonzero(late.any(axis=1)).tolist():
            tau = np.zeros(n)
            tau[lanes] = np.clip(instants[j], 0.0, None)
            # Conversions still past this period (spacing > the period) read its end.
            tau = np.minimum(tau, self._Ts * (1 - 1e-12))
            vout[j] = np.where(late[j], view.sample(tau)[2][lanes], vout[j])
        self._update(lanes, vout, t_sample)

    def _update(self, lanes: np.ndarray, vout: np.ndarray, t_sample: np.ndarray) -> None:
        """The PID updates of ``lanes`` from their conversions ``vout`` (average, lanes) [V],
        sampled at ``t_sample`` [s]; their duties pending until the PWM latches them."""
        Ts = self._Ts
        timing = self.timing
        codes = self.adc.codes(vout, self._rng).mean(axis=0)
        measured = self.adc.volts(codes)
        setpoint = np.broadcast_to(self.reference(t_sample), t_sample.shape)
        num = np.float32 if timing.float32 else float
        commands = np.array([float(self._pids[lane].update(num(setpoint[i]),
                                                           num(measured[i])))
                             for i, lane in enumerate(lanes.tolist())])
        full = np.full(Ts.size, np.nan)
        full[lanes] = commands
        duties = self._quantize(full)[lanes]
        busy = timing.average * timing.spacing + timing.compute  # conversions, computation
        for i, lane in enumerate(lanes.tolist()):
            pid = self._pids[lane]
            wrap = math.ceil((t_sample[i] + busy) / Ts[lane] - 1e-9) * Ts[lane]
            self._pending.append((wrap, lane, float(duties[i])))
            self._lane_rows[lane].append((wrap, t_sample[i], float(pid.ramped_setpoint),
                                          codes[i], measured[i], float(pid.integral),
                                          commands[i], duties[i]))

    def log(self) -> ControlLog:
        """One row per control step of each lane (lanes with fewer steps padded with NaN);
        ``t`` is the sample instant, ``period`` the switching period the duty applies from."""
        if not any(self._lane_rows):
            raise ValueError("the controller has not run yet")
        n = len(self._lane_rows)
        m = max(len(rows) for rows in self._lane_rows)
        table = np.full((8, m, n), np.nan)
        for lane, rows in enumerate(self._lane_rows):
            if rows:
                table[:, :len(rows), lane] = np.array(rows, dtype=float).T
        apply, t, setpoint, codes, measured, integral, command, duty = table
        period = np.where(np.isnan(apply), -1, np.rint(apply * self._fsw)).astype(int)
        return ControlLog(period=period, t=t, setpoint=setpoint, adc_code=codes,
                          measured=measured, error=setpoint - measured, integral=integral,
                          duty_command=command, duty=duty)


def next_control_step(free: float, due: float) -> float:
    """Board time [s] at which the firmware's serve loop runs a control step due at ``due``
    [s], the loop being free of earlier work from ``free`` [s]: at its due time (the loop
    waits for it to the microsecond, ``Device.wait_us``), or as soon as the loop is free."""
    return max(free, due)
