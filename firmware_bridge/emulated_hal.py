"""The simulated hardware layer of the board emulator: the HAL interface of
``firmware_bridge/firmware/device.py`` on top of the real-time plant (:mod:`firmware_bridge.plant`).

What it models, per call of the firmware:

* ``ticks_us``: microseconds since the emulated board booted, from the host's monotonic clock
  (restarts at 0 on an emulated reset; the plant's own clock keeps running).
* ``pwm_set(enabled, freq, duty)``: the RP2040 PWM as ``hal.py`` drives it: the duty goes
  through ``duty_u16`` and the slice's counter (``top + 1`` steps at ``pwm_clock``, 125 MHz:
  1250 steps at 100 kHz), the frequency through the integer divider (the one model of it,
  :mod:`boostsim.rp2040`, shared with the simulation and the bench); off = gate low. The
  plant applies it from its next switching period (double-buffered compare register).
* ``adc_read(channel)``: one 12-bit conversion at this instant of the switching waveform:
  ``vout`` through the board's divider (``vout_divider``, by default the firmware's own
  ``VOUT_DIVIDER``: a board that matches its config), ``vin`` through ``VIN_DIVIDER``, ``iin``
  (the instantaneous inductor current through ``IIN_V_PER_A``/``IIN_OFFSET_V``); ADC gain
  error, offset, Gaussian noise (in codes rms) and the differential non-linearity, through
  the shared :class:`boostsim.adc_model.AdcTransfer`, clipped to 0..ADC_MAX_CODE.
* ``adc_stream_start/stop``: samples at board times ``t0 + k * period`` (each conversion
  delayed by the timer IRQ's jitter, ``AdcModel.jitter_s`` rms) pushed into the
  firmware's ring; they are produced whenever the emulator catches up with the clock (at least
  every serve-loop poll), each computed at its own exact instant, so the ring sees exactly what
  a timer interrupt would have pushed, overflow included.
* ``protect_start(period, fn)``: the protection timer IRQ as a thread calling ``fn`` every
  period (late ticks are skipped, never bunched), whatever the serve loop is doing;
  ``irq_disable``/``irq_enable`` and every plant access take the same lock, so the "IRQ"
  never sees the plant or the firmware half-updated. ``gate_off``: gate low now.
* ``serial_read/serial_write/service``: delegated to a serial link (the emulator's
  pseudo-terminal with fault injection); ``serial_write`` never waits for the host (it
  returns what the pseudo-terminal took); ``service`` records the serve loop's timing.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from boostsim.adc_model import AdcTransfer

from .plant import Plant
from .rp2040 import PWM_CLOCK, pwm_output, rp2040_pwm

__all__ = ["AdcModel", "EmulatedHAL", "LoopStats", "rp2040_pwm"]


class AdcModel:
    """The board's ADC: conversions through a :class:`boostsim.adc_model.AdcTransfer` (the
    description the simulation's ADC uses too), noise drawn from a seeded generator.

    ``noise_lsb``: rms noise in codes; ``offset_lsb``: offset in codes; ``gain_error``:
    relative (0.01 = reads 1 % high); ``dnl``: None (ideal) or the per-code DNL table
    (:data:`boostsim.adc_model.RP2040_DNL`); ``jitter_s``: rms delay of a timer-triggered
    conversion after its nominal instant [s] (the emulated HAL applies it to streamed
    samples). Codes are clipped to 0..max_code; NaN reads 0.
    """

    def __init__(self, vref: float, full_scale: int, max_code: int, *, noise_lsb: float = 0.0,
                 offset_lsb: float = 0.0, gain_error: float = 0.0, dnl: Any = None,
                 jitter_s: float = 0.0, seed: int | None = None):
        bits = int(full_scale).bit_length() - 1
        if full_scale != 1 << bits:
            raise ValueError(f"ADC full scale must be a power of two, got {full_scale!r}")
        self.transfer = AdcTransfer(bits=bits, vref=float(vref), gain_error=float(gain_error),
                                    offset_lsb=float(offset_lsb), noise_lsb=float(noise_lsb),
                                    jitter_s=float(jitter_s), dnl=dnl)
        self.scale = full_scale / vref * (1.0 + gain_error)
        self.max_code = int(max_code)
        self.noise_lsb = float(noise_lsb)
        self.jitter_s = float(jitter_s)
        self.offset = float(offset_lsb)
        self._levels = None if self.transfer.ideal else self.transfer.levels.tolist()
        self._rng = np.random.default_rng(seed)
        self._noise = np.zeros(0)
        self._pos = 0

    def _normals(self, n: int) -> np.ndarray:
        if self._pos + n > self._noise.size:
            self._noise = self._rng.standard_normal(max(4096, n))
            self._pos = 0
        out = self._noise[self._pos:self._pos + n]
        self._pos += n
        return out

    def delays(self, n: int) -> np.ndarray:
        """Delays [s] of ``n`` timer-triggered conversions (half-normal, ``jitter_s`` rms)."""
        return np.abs(self._rng.standard_normal(n)) * self.jitter_s

    def code(self, v_pin: float) -> int:
        """One conversion (the scalar twin of :meth:`codes`, for single reads)."""
        x = v_pin * self.scale + self.offset
        if self.noise_lsb:
            x += self.noise_lsb * float(self._normals(1)[0])
        if not x >= 0.0:  # also NaN
            return 0
        c = round(x) if self._levels is None else bisect.bisect_right(self._levels, x)
        return c if c < self.max_code else self.max_code

    def codes(self, v_pin: np.ndarray) -> np.ndarray:
        """Conversions of the pin voltages ``v_pin`` [V]."""
        x = self.transfer.codes(v_pin, self._normals(v_pin.size) if self.noise_lsb else None)
        np.maximum(x, 0.0, out=x)
        np.minimum(x, self.max_code, out=x)
        x[np.isnan(x)] = 0.0
        return x.astype(np.int64)


class LoopStats:
    """Real-time figures of the emulated board (wall-clock seconds)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.polls = 0                # serve-loop iterations (service() calls)
        self.max_poll_gap = 0.0       # longest time between two service() calls
        self.max_plant_call = 0.0     # longest single plant computation (wall time: includes
        #                               preemption by other threads/processes)
        self.max_plant_cpu = 0.0      # longest single plant computation (thread CPU time)
        self.slowest: dict = {}       # what that computation was doing
        self.max_sample_lag = 0.0     # longest delay between a streamed sample's time and
        #                               the moment it was computed and pushed
        self.gaps_over_ms = {2: 0, 5: 0, 10: 0}  # serve-loop gaps longer than 2/5/10 ms
        self.max_irq_gap = 0.0        # longest time between two protection-IRQ ticks
        self.samples = 0              # streamed samples pushed
        self.plant_time = 0.0         # wall time spent in the plant (and ADC model)
        self._last_service = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class EmulatedHAL:
    """The HAL interface of ``device.Device`` on a simulated board (see the module docstring).

    ``cfg``: the firmware config (module or namespace) the device runs with; ``plant``: the
    converter; ``link``: object with ``read(timeout_ms) -> bytes``, ``write(data)`` and
    ``poll()`` (called at every serve-loop iteration); ``clock``: seconds, monotonic, the same
    clock as the plant's.
    """

    def __init__(self, cfg: Any, plant: Plant, *, link: Any = None,
                 clock: Callable[[], float] = time.monotonic, adc: AdcModel | None = None,
                 vout_divider: float | None = None, vin_divider: float | None = None,
                 pwm_clock: float = PWM_CLOCK, serial: str = "B0057E0000000001"):
        self.cfg = cfg
        self.plant = plant
        self.link = link
        self.clock = clock
        self.adc = adc or AdcModel(cfg.ADC_VREF, cfg.ADC_FULL_SCALE, cfg.ADC_MAX_CODE)
        self.vout_divider = float(vout_divider if vout_divider is not None else cfg.VOUT_DIVIDER)
        self.vin_divider = float(vin_divider if vin_divider is not None else cfg.VIN_DIVIDER)
        self.pwm_clock = float(pwm_clock)
        if self.pwm_clock != 0:  # 0: ideal PWM; else a clock the slice model takes
            pwm_output(cfg.PWM_FREQ_DEFAULT, 0.0, self.pwm_clock)
        self.serial = serial
        self.stats = LoopStats()
        self.pwm_request = (False, 0.0, 0.0)   # what the firmware asked for
        self.pwm_actual = (False, 0.0, 0.0)    # what the emulated RP2040 produces
        self._stream: list | None = None       # [period_us, ring, next_sample_us]
        self.irq_lock = threading.RLock()      # the protection "IRQ" vs. everything else
        self._protect_stop: threading.Event | None = None
        self._protect_thread: threading.Thread | None = None
        self._irq_t: float | None = None       # board clock of the tick being run [s]
        self._last_plant_t = -math.inf         # latest time the plant was asked about
        self.boot()

    # -- board life cycle ----------------------------------------------------------------------

    def boot(self) -> None:
        """Power-up / reset of the microcontroller: clock restarts, gate low, no sampling."""
        self.protect_stop()
        self._stream = None
        self.boot_time = self.clock()
        self._set_gate(False, 0.0, 0.0)

    def shutdown(self) -> None:
        """What main.py's ``finally`` does: timers stopped, gate low."""
        self.protect_stop()
        self.adc_stream_stop()
        self._set_gate(False, 0.0, 0.0)

    # -- HAL interface -------------------------------------------------------------------------

    def ticks_us(self) -> int:
        return int((self._now() - self.boot_time) * 1e6)

    def ticks_ms(self) -> int:
        return int((self._now() - self.boot_time) * 1e3)

    @staticmethod
    def ticks_diff(a: int, b: int) -> int:
        return a - b

    def _now(self) -> float:
        """The board clock: the tick's own time inside a protection tick, else now."""
        if self._irq_t is not None and threading.current_thread() is self._protect_thread:
            return self._irq_t
        return self.clock()

    def protect_start(self, period_us: int, fn: Callable[[], None]) -> None:
        """Call ``fn`` every ``period_us`` from a thread (the board's protection timer IRQ).

        A tick the thread runs late (the host machine is busy) is evaluated at its own board
        time, like the streamed samples: the ADC reads the plant then, the watchdog sees that
        time and a trip turns the gate off then -- the emulated protection does not depend on
        the host's thread scheduling (only on the plant not having been read past it)."""
        self.protect_stop()
        stop = threading.Event()
        period = period_us * 1e-6

        def run() -> None:
            due = self.clock() + period
            last = None
            while not stop.wait(max(0.0, due - self.clock())):
                with self.irq_lock:
                    now = self.clock()
                    while due <= now and not stop.is_set():
                        self._irq_t = max(due, self._last_plant_t)
                        try:
                            fn()
                        finally:
                            self._irq_t = None
                        due += period
                tick = time.monotonic()
                if last is not None and tick - last > self.stats.max_irq_gap:
                    self.stats.max_irq_gap = tick - last
                last = tick

        self._protect_stop = stop
        self._protect_thread = threading.Thread(target=run, name="boostsim-board-irq",
                                                daemon=True)
        self._protect_thread.start()

    def protect_stop(self) -> None:
        if self._protect_stop is not None:
            self._protect_stop.set()
            if self._protect_thread is not threading.current_thread():
                self._protect_thread.join(5.0)
            self._protect_stop = self._protect_thread = None

    def plant_access(self, t: float) -> None:
        """Catch the stream up to plant time ``t`` and note that the plant is being asked
        about ``t`` (for callers outside the HAL; a late protection tick is then evaluated
        at ``t`` at the earliest). Call with ``irq_lock`` held."""
        self._catch_up(t)
        self._last_plant_t = max(self._last_plant_t, t)

    def gate_off(self) -> None:
        with self.irq_lock:
            self._set_gate(False, 0.0, 0.0)

    def irq_disable(self) -> bool:
        self.irq_lock.acquire()
        return True

    def irq_enable(self, state: bool) -> None:
        self.irq_lock.release()

    def serial_number(self) -> str:
        return self.serial

    def pwm_set(self, enabled: bool, freq_hz: float, duty: float,
                limit: float | None = None) -> None:
        with self.irq_lock:
            self.pwm_request = (bool(enabled), float(freq_hz), float(duty))
            hard = self.cfg.DUTY_HARD_MAX  # hal.py's rule: None or above it is the hard ceiling
            self._set_gate(enabled, freq_hz, duty,
                           hard if limit is None or not limit < hard else limit)

    def adc_read(self, channel: str) -> int:
        with self.irq_lock:
            return self._adc_read(channel)

    def _adc_read(self, channel: str) -> int:
        cfg = self.cfg
        if channel == "vout":
            vout, _ = self._sample_now(False)
            return self.adc.code(vout / self.vout_divider)
        if channel == "vin":
            self._catch_up()
            return self.adc.code(float(self.plant.params.vin) / self.vin_divider)
        if channel == "iin":
            _, i_l = self._sample_now(True)
            return self.adc.code(cfg.IIN_OFFSET_V + i_l * cfg.IIN_V_PER_A)
        raise KeyError(channel)

    def adc_stream_start(self, period_us: int, ring: Any) -> int:
        self.adc_stream_stop()
        t0 = self.ticks_us() + int(period_us)
        self._stream = [int(period_us), ring, t0]
        return t0

    def adc_stream_stop(self) -> None:
        if self._stream is not None:
            self._catch_up()
            self._stream = None

    def serial_read(self, timeout_ms: int) -> bytes:
        data = self.link.read(timeout_ms) if self.link is not None else b""
        self._catch_up()
        return data

    def serial_write(self, data: bytes) -> int:
        if self.link is None:
            return len(data)
        return self.link.write(data)

    def service(self) -> None:
        now = time.perf_counter()
        st = self.stats
        if st._last_service is not None:
            gap = now - st._last_service
            if gap > 0.002:
                if gap > st.max_poll_gap:
                    st.max_poll_gap = gap
                for ms in st.gaps_over_ms:
                    if gap > ms * 1e-3:
                        st.gaps_over_ms[ms] += 1
        st._last_service = now
        st.polls += 1

    # -- simulation ----------------------------------------------------------------------------

    def _set_gate(self, enabled: bool, freq_hz: float, duty: float, limit: float = 1.0) -> None:
        t = self._now()
        self._catch_up(t)
        self._last_plant_t = max(self._last_plant_t, t)
        if enabled:
            freq, d = rp2040_pwm(freq_hz, duty, self.pwm_clock, limit)
        else:
            freq, d = (self.plant.pwm[1] if freq_hz <= 0 else float(freq_hz)), 0.0
        self.pwm_actual = (bool(enabled), freq, d)
        start = self._tic()
        self.plant.set_pwm(t, enabled, freq, d)
        self._plant_timing(start, "pwm_set")

    def _sample_now(self, current: bool) -> tuple[float, float | None]:
        """The output (and inductor current) now; the streamed samples due before now are
        computed in the same plant call."""
        t = self._now()
        self._last_plant_t = max(self._last_plant_t, t)
        due = self._due(t)
        start = self._tic()
        if due is None:
            res = self.plant.sample([t], current)
        else:
            res = self.plant.sample(np.append(due, t), current, presorted=True)
        vout = res[0] if current else res
        if due is not None:
            self._push(vout[:-1], due)
        self._plant_timing(start, "adc_read")
        return float(vout[-1]), (float(res[1][-1]) if current else None)

    def _tic(self) -> tuple:
        s = self.plant.stats
        return (time.perf_counter(), time.thread_time(), s.periods, s.references, s.ccm_maps,
                s.transitions, s.tables)

    def _plant_timing(self, start: tuple, what: str = "sample") -> None:
        dt = time.perf_counter() - start[0]
        cpu = time.thread_time() - start[1]
        st = self.stats
        st.plant_time += dt
        if dt > st.max_plant_call:
            st.max_plant_call = dt
        if cpu > st.max_plant_cpu:
            st.max_plant_cpu = cpu
            s = self.plant.stats
            st.slowest = {"what": what, "cpu_ms": 1e3 * cpu, "wall_ms": 1e3 * dt,
                          "periods": s.periods - start[2],
                          "engine_calls": s.references - start[3],
                          "ccm_maps": s.ccm_maps - start[4],
                          "transitions": s.transitions - start[5],
                          "tables": s.tables - start[6]}

    def _due(self, t: float) -> np.ndarray | None:
        """Plant times of the streamed samples due up to ``t`` (None if none); they are
        counted as taken."""
        stream = self._stream
        if stream is None:
            return None
        now_us = int((t - self.boot_time) * 1e6)
        period, _, nxt = stream
        if nxt > now_us:
            return None
        n = (now_us - nxt) // period + 1
        stream[2] = nxt + n * period
        times = self.boot_time + (nxt + period * np.arange(n, dtype=np.int64)) * 1e-6
        if self.adc.jitter_s:
            # The timer IRQ starts each conversion a little late (never later than now).
            times = np.maximum.accumulate(np.minimum(times + self.adc.delays(n), t))
        return times

    def _push(self, vout: np.ndarray, times: np.ndarray) -> None:
        push = self._stream[1].push
        for code in self.adc.codes(vout / self.vout_divider).tolist():
            push(code)
        st = self.stats
        st.samples += int(times.size)
        lag = self.clock() - float(times[0])
        if lag > st.max_sample_lag:
            st.max_sample_lag = lag

    def _catch_up(self, t: float | None = None) -> None:
        """Take the streamed samples due up to plant time ``t`` (default now)."""
        with self.irq_lock:
            if self._stream is None:
                return
            if t is None:
                t = self._now()
            due = self._due(t)
            if due is None:
                return
            self._last_plant_t = max(self._last_plant_t, float(due[-1]))
            start = self._tic()
            self._push(self.plant.sample(due, presorted=True), due)
            self._plant_timing(start, "stream")
