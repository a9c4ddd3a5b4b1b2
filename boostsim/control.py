"""The digital control loop as it runs on the board: ADC sampling, the PID, the PWM modulator.

:class:`DigitalController` plugs into :func:`boostsim.simulate` (and the averaged model) as the
per-period controller hook. At the start of switching period ``k`` it may run one control
step: the ADC sample taken during the previous period (at a chosen instant, e.g. mid on-time,
away from the switching edges) goes through the ADC model, the PID (:mod:`boostsim.pid`, the
same file that runs on the board) computes a duty, and the PWM model quantises it to the
timer's counter resolution and applies it -- either from this period on ("next": the usual
shadow-register update, one period after the sample) or, idealised, with no delay at all
("immediate": sampled at the end of the previous period and applied at once).

Everything is vectorised over lanes: gains, references and noise may differ per lane.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .adc_model import AdcTransfer
from .lanenoise import noise_key, unit_normals
from .pid import PID
from .rp2040 import ADC_CONVERSION_S, PWM_CLOCK, capped_u16, compare_level, slice_setup

__all__ = ["ADC", "PWM", "DigitalController", "Reference"]


@dataclasses.dataclass(frozen=True)
class PWM:
    """PWM modulator of the microcontroller: the RP2040 slice as the firmware drives it.

    The duty is limited to [duty_min, duty_max] (the firmware's own clamp; the PID's output
    limits should sit inside these), then quantised as on the board (:mod:`boostsim.rp2040`):
    ``duty_u16`` rounded from the duty, the compare level rounded from that, over the slice's
    ``top + 1`` counter steps at ``timer_clock`` [Hz] (125 MHz / 100 kHz = 1250 steps). As on
    the board, ``duty_max`` is a strict ceiling: never above floor(duty_max * steps) (0.85 at
    1250 steps gives 1062/1250, not the rounded 1063). ``update``: "next"
    applies a new duty from the period after the ADC sample, "immediate" (idealised) in the
    period right after the sample instant.
    """

    timer_clock: float = PWM_CLOCK
    duty_min: float = 0.0
    duty_max: float = 0.85
    update: str = "next"

    def __post_init__(self) -> None:
        if not (isinstance(self.timer_clock, int | float) and math.isfinite(self.timer_clock)
                and self.timer_clock > 0 and self.timer_clock == int(self.timer_clock)):
            raise ValueError(f"PWM timer_clock must be a whole number of Hz > 0, got "
                             f"{self.timer_clock!r}")
        if not 0.0 <= self.duty_min < self.duty_max < 1.0:
            raise ValueError(f"PWM duty limits must satisfy 0 <= duty_min < duty_max < 1, got "
                             f"{self.duty_min!r}, {self.duty_max!r}")
        if self.update not in ("next", "immediate"):
            raise ValueError(f"PWM update must be 'next' or 'immediate', got {self.update!r}")

    def steps(self, fsw: np.ndarray | float) -> np.ndarray:
        """Counter steps per switching period (the duty resolution is 1/steps)."""
        return (slice_setup(fsw, self.timer_clock)[1] + 1).astype(float)

    def counter_limits(self, fsw: np.ndarray | float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counter steps per period, compare levels of duty_min and duty_max) for these
        frequencies: the quantised duty is the compare level of the duty, held between them."""
        steps = self.steps(fsw)
        top = steps.astype(np.int64) - 1
        levels = (compare_level(capped_u16(limit, self.duty_max, top), top).astype(float)
                  for limit in (self.duty_min, self.duty_max))
        return (steps, *levels)

    def quantize(self, duty: Any, fsw: np.ndarray | float) -> np.ndarray:
        """The duty the timer really produces: limited, then quantised as on the board."""
        return self.quantizer(fsw)(duty)

    def quantizer(self, fsw: np.ndarray | float) -> Callable[[Any], np.ndarray]:
        """``quantize`` with the slice worked out once for these frequencies (NaN stays NaN)."""
        steps = self.steps(fsw)
        top = steps.astype(np.int64) - 1

        def quantize(duty: Any) -> np.ndarray:
            d = np.clip(np.asarray(duty, dtype=float), self.duty_min, self.duty_max)
            out = compare_level(capped_u16(d, self.duty_max, top), top) / steps
            return np.where(np.isnan(d), d, out) if np.isnan(d).any() else out

        return quantize


@dataclasses.dataclass(frozen=True)
class ADC:
    """ADC sampling the output voltage through a resistive divider.

    ``divider`` is vout / v_pin; codes are ``round(v_pin * (1 + gain_error) / vref * 2^bits +
    offset_codes)`` plus Gaussian noise of ``noise_rms`` volts at the pin, clipped to the code
    range. Under :class:`DigitalController` the noise of lane j's conversion o at control step
    s is draw ``s * oversample + o`` of lane j in :mod:`boostsim.lanenoise` under the key of
    ``seed`` (None: a fresh key at every start): the same on the numpy and compiled engines,
    and independent of the other lanes. ``sample_at`` is the sampling instant as a fraction of
    the on-time ("mid_on" = 0.5 of the on-time) or, as a float in [0, 1), of the switching
    period. ``oversample`` conversions
    ``spacing`` seconds apart (centred on the instant) are averaged. The reading is converted
    back to volts with the nominal divider and reference (errors are what calibration fixes).

    Imperfections beyond these (off by default, so results stay those of an ideal converter):
    ``dnl``, the per-code differential non-linearity ({code: LSB} or 2^bits values;
    :data:`boostsim.adc_model.RP2040_DNL` is the Pico's), and ``jitter`` [s], the rms jitter of
    every sampling instant (kept within the period). :attr:`transfer` is the
    :class:`boostsim.adc_model.AdcTransfer` these fields describe, the one the board emulator
    uses too; the compiled kernel models neither, so such controllers run on the numpy engine.
    """

    bits: int = 12
    vref: float = 3.3
    divider: float = (100e3 + 15e3) / 15e3
    gain_error: float = 0.0
    offset_codes: float = 0.0
    noise_rms: float = 0.0
    sample_at: str | float = "mid_on"
    oversample: int = 1
    spacing: float = ADC_CONVERSION_S
    seed: int | None = 0
    dnl: Any = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.bits, int) and 1 <= self.bits <= 24):
            raise ValueError(f"ADC bits must be an integer from 1 to 24, got {self.bits!r}")
        for name in ("vref", "divider"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ADC {name} must be > 0, got {value!r}")
        if not (math.isfinite(self.noise_rms) and self.noise_rms >= 0):
            raise ValueError(f"ADC noise_rms must be >= 0 [V], got {self.noise_rms!r}")
        if not (math.isfinite(self.jitter) and self.jitter >= 0):
            raise ValueError(f"ADC jitter must be >= 0 [s rms], got {self.jitter!r}")
        # Builds (and checks) the transfer once: bad DNL tables fail here.
        object.__setattr__(self, "_transfer", AdcTransfer(
            bits=self.bits, vref=self.vref, gain_error=self.gain_error,
            offset_lsb=self.offset_codes, noise_lsb=self.noise_rms / self.vref * self.full_scale,
            jitter_s=self.jitter, dnl=self.dnl))
        if not (isinstance(self.oversample, int) and self.oversample >= 1):
            raise ValueError(f"ADC oversample must be an integer >= 1, got {self.oversample!r}")
        if self.sample_at != "mid_on" and not (isinstance(self.sample_at, int | float)
                                               and 0.0 <= self.sample_at < 1.0):
            raise ValueError(f"ADC sample_at must be 'mid_on' or a fraction of the period in "
                             f"[0, 1), got {self.sample_at!r}")

    @property
    def full_scale(self) -> int:
        return 1 << self.bits

    @property
    def volts_per_code(self) -> float:
        """Output volts per ADC code (nominal)."""
        return self.vref / self.full_scale * self.divider

    @property
    def transfer(self) -> AdcTransfer:
        """The pin-volts-to-codes transfer these fields describe (shared with the emulator)."""
        return self._transfer

    @property
    def compiled(self) -> bool:
        """True if the compiled kernel models this ADC (no DNL table, no jitter)."""
        return self._transfer.ideal and self.jitter == 0

    def instants(self, duty: np.ndarray, Ts: np.ndarray,
                 rng: np.random.Generator | None = None) -> np.ndarray:
        """Sampling instants in the period [s], shape (oversample, lanes); with ``jitter`` each
        is moved by a draw from ``rng`` (required then), kept within the period."""
        if self.sample_at == "mid_on":
            centre = 0.5 * duty * Ts
        else:
            centre = float(self.sample_at) * Ts
        if self.oversample == 1 and self.jitter == 0:
            return centre[None, :]
        offsets = (np.arange(self.oversample) - 0.5 * (self.oversample - 1)) * self.spacing
        instants = centre[None, :] + offsets[:, None]
        if self.jitter > 0:
            if rng is None:
                raise ValueError("ADC jitter needs a random generator (rng=...)")
            instants = instants + rng.normal(0.0, self.jitter, size=instants.shape)
        return np.clip(instants, 0.0, Ts * (1 - 1e-12))

    def codes(self, vout: np.ndarray, rng: np.random.Generator | None,
              noise: np.ndarray | None = None) -> np.ndarray:
        """Integer codes for output voltages ``vout`` (any shape); the noise is ``noise_rms``
        times ``noise`` (unit draws, vout's shape) if given, else drawn from ``rng``."""
        v_pin = np.asarray(vout, dtype=float) / self.divider
        if self.noise_rms > 0:
            if noise is not None:
                v_pin = v_pin + self.noise_rms * noise
            else:
                v_pin = v_pin + rng.normal(0.0, self.noise_rms, size=v_pin.shape)
        transfer = self._transfer
        return transfer.quantize(transfer.position(v_pin))

    def volts(self, codes: np.ndarray) -> np.ndarray:
        """Output volts the firmware computes from (averaged) codes."""
        return np.asarray(codes, dtype=float) * self.volts_per_code


class Reference:
    """A voltage reference over time: a constant (scalar or per lane) or steps.

    ``Reference(12.0)``, ``Reference([(0, 12.0), (20e-3, 10.0)])`` (value from each time on),
    or any callable ``f(t) -> value``.
    """

    def __init__(self, value: Any):
        # (times [s], values): the reference as steps, or None for a function of time.
        self.table: tuple[np.ndarray, list[np.ndarray]] | None = None
        if isinstance(value, Reference):
            self._fn: Callable[[np.ndarray], Any] = value._fn
            self.table = value.table
            return
        if callable(value):
            self._fn = value
            return
        if isinstance(value, Sequence) and value and isinstance(value[0], tuple | list):
            times = np.array([float(t) for t, _ in value])
            if times[0] > 0 or np.any(np.diff(times) < 0):
                raise ValueError("reference steps must start at t=0 and be in time order: "
                                 "[(0, v0), (t1, v1), ...]")
            values = [np.asarray(v, dtype=float) for _, v in value]

            def steps(t: np.ndarray) -> Any:
                index = np.searchsorted(times, np.atleast_1d(t), side="right") - 1
                return np.choose(index, np.broadcast_arrays(*values)) if len(values) > 1 \
                    else values[0]

            self._fn = steps
            self.table = (times, values)
            return
        constant = np.asarray(value, dtype=float)
        if not np.all(np.isfinite(constant)):
            raise ValueError(f"reference must be finite, got {value!r}")
        self._fn = lambda t: constant
        self.table = (np.zeros(1), [constant])

    def __call__(self, t: Any) -> np.ndarray:
        return np.asarray(self._fn(t), dtype=float)


@dataclasses.dataclass
class ControlLog:
    """Per-control-step log, arrays of shape (steps, lanes)."""

    period: np.ndarray  # switching period index at which the new duty applies
    t: np.ndarray  # [s] time the new duty applies
    setpoint: np.ndarray  # [V] reference (after the PID's ramp)
    adc_code: np.ndarray  # averaged ADC code
    measured: np.ndarray  # [V] the firmware's reading
    error: np.ndarray  # [V] setpoint - measured
    integral: np.ndarray  # PID integral term [duty]
    duty_command: np.ndarray  # PID output before the modulator
    duty: np.ndarray  # duty applied by the PWM (quantised)


class DigitalController:
    """The board's control loop as an engine controller hook: ADC -> PID -> PWM.

    The PID runs every ``every`` switching periods (its ``ts`` must equal ``every / fsw``).
    ``vref`` is a :class:`Reference` (or anything it accepts); ``simulate(..., vref=...)``
    replaces it. Use one controller per simulation; :meth:`start` (called by ``simulate``)
    resets its state.
    """

    def __init__(self, pid: PID, *, vref: Any = None, adc: ADC | None = None,
                 pwm: PWM | None = None, every: int = 1, initial_duty: float = 0.0):
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every must be an integer >= 1 (switching periods), got {every!r}")
        if not 0.0 <= initial_duty < 1.0:
            raise ValueError(f"initial_duty must be in [0, 1), got {initial_duty!r}")
        self.pid = pid
        self.adc = adc or ADC()
        self.pwm = pwm or PWM()
        if self.adc.jitter > 0 and self.pwm.update == "immediate":
            raise ValueError("ADC jitter needs PWM update='next': the 'immediate' idealisation "
                             "samples exactly at the end of the period")
        self.every = every
        self.initial_duty = initial_duty
        self.reference = Reference(vref) if vref is not None else None
        self._rng = np.random.default_rng(self.adc.seed)  # sampling jitter
        self._noise_key = 0
        self._step = 0  # control steps taken since start()
        self._noise_block: tuple[int, np.ndarray] | None = None
        self._rows: list[tuple] = []
        # The compiled engine's log, or the function that builds it when first asked for.
        self._compiled_log: ControlLog | Callable[[], ControlLog] | None = None
        self._duty: np.ndarray | None = None
        self._fsw: np.ndarray | None = None

    @property
    def n_lanes(self) -> int:
        """Lanes implied by the PID's gains and the reference (1 if all scalar)."""
        sizes = [np.size(getattr(self.pid, name)) for name in ("kp", "ki", "kd")]
        if self.reference is not None:
            sizes.append(np.size(self.reference(0.0)))
        return max(sizes)

    # -- engine protocol ---------------------------------------------------------------------
    def start(self, lanes: dict[str, np.ndarray], vref: Any = None) -> None:
        """Prepare for a new simulation of these lanes (called by ``simulate``)."""
        if vref is not None:
            self.reference = Reference(vref)
        if self.reference is None:
            raise ValueError("the controller needs a reference: pass vref=... to simulate() "
                             "or to DigitalController")
        fsw = lanes["fsw"]
        sample_period = self.every / fsw
        if not np.allclose(self.pid.ts, sample_period, rtol=1e-9):
            raise ValueError(f"PID ts ({np.max(self.pid.ts):g} s) must equal every / fsw "
                             f"({np.max(sample_period):g} s): the PID runs every {self.every} "
                             f"switching period(s)")
        self._fsw = fsw
        self._Ts = 1.0 / fsw
        self._quantize = self.pwm.quantizer(fsw)
        self._rng = np.random.default_rng(self.adc.seed)
        self._noise_key = noise_key(self.adc.seed)
        self._step = 0
        self._noise_block = None
        self._rows = []
        self._compiled_log = None
        n = fsw.size
        self._duty = self._quantize(np.full(n, self.initial_duty))
        self.pid.reset(output=self._duty.copy() if n > 1 else float(self._duty[0]))

    def __call__(self, k: int, t_start: np.ndarray, view) -> np.ndarray:
        if self._duty is None:
            raise RuntimeError("DigitalController.start() was not called; pass the controller "
                               "to boostsim.simulate")
        if view is None or k % self.every != 0:
            return self._duty
        Ts = self._Ts
        if self.pwm.update == "immediate":
            instants = np.broadcast_to(Ts * (1 - 1e-12), (self.adc.oversample, Ts.size))
        else:
            instants = self.adc.instants(view.duty, Ts, self._rng)
        noise = self._noise(Ts.size) if self.adc.noise_rms > 0 else None
        if self.adc.oversample == 1:
            codes = self.adc.codes(view.sample(instants[0])[2], self._rng,
                                   None if noise is None else noise[0])
        else:
            samples = np.stack([view.sample(tau)[2] for tau in instants])
            codes = self.adc.codes(samples, self._rng, noise).mean(axis=0)
        self._step += 1
        measured = self.adc.volts(codes)
        setpoint = np.broadcast_to(self.reference(t_start), Ts.shape)
        n = Ts.size
        command = self.pid.update(setpoint if n > 1 else float(setpoint[0]),
                                  measured if n > 1 else float(measured[0]))
        self._duty = self._quantize(command)
        pid = self.pid
        self._rows.append((k, t_start, pid.ramped_setpoint, codes, measured, pid.integral,
                           command, self._duty))
        return self._duty

    _NOISE_BLOCK = 64  # control steps of noise drawn at once by the numpy route

    def _noise(self, n: int) -> np.ndarray:
        """This control step's unit noise draws, (oversample, lanes) (lanenoise, drawn a
        block of steps at a time)."""
        block = self._step // self._NOISE_BLOCK
        if self._noise_block is None or self._noise_block[0] != block:
            os_ = self.adc.oversample
            first = block * self._NOISE_BLOCK * os_
            draws = first + np.arange(self._NOISE_BLOCK * os_)
            table = unit_normals(self._noise_key, np.arange(n)[None, :], draws[:, None])
            self._noise_block = (block, table.reshape(self._NOISE_BLOCK, os_, n))
        return self._noise_block[1][self._step % self._NOISE_BLOCK]

    def log(self) -> ControlLog:
        """Everything the loop computed, one row per control step."""
        if callable(self._compiled_log):
            self._compiled_log = self._compiled_log()
        if self._compiled_log is not None:
            return self._compiled_log
        if not self._rows:
            raise ValueError("the controller has not run yet")
        columns = list(zip(*self._rows, strict=True))
        n = self._fsw.size
        period, t, setpoint, codes, measured, integral, command, duty = (
            np.array([np.broadcast_to(np.asarray(v, dtype=float), (n,)) for v in column])
            for column in columns)
        return ControlLog(period=period[:, 0].astype(int), t=t, setpoint=setpoint,
                          adc_code=codes, measured=measured, error=setpoint - measured,
                          integral=integral, duty_command=command, duty=duty)
