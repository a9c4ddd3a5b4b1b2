"""The simulated hardware layer of the board emulator: the HAL interface of
``firmware_bridge/firmware/device.py`` on top of the real-time plant (:mod:`firmware_bridge.plant`).

What it models, per call of the firmware:

* ``ticks_us``: microseconds since the emulated board booted, on the board clock (restarts at 0
  on an emulated reset; the plant's own clock keeps running). The board clock follows the
  host's monotonic clock, except that the serve loop's timed work runs at its own board time:
  a poll that the loop waited for runs at its instant however late the host process wakes
  up -- the on-board PID's next step at its due time (the firmware waits for it to the
  microsecond), a watchdog deadline at the Pico's poll grid at or after it -- and if the
  host was so late that further polls are already due, they run first, one after the other,
  each at its own instant, before any input is read (a catch-up bounded by
  :data:`MAX_LAG_S`). The firmware's own work takes board time, not host time: an ADC
  conversion :data:`~boostsim.rp2040.ADC_CONVERSION_S`, a computation what
  :meth:`EmulatedHAL.spend` is given (the on-board PID's ``pid_compute_time``); the clock
  stands still in between. So the board's control steps sample and act when a Pico's would,
  whatever the host's scheduling, and the board never runs ahead of the host's clock by more
  than one computation.
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
  delayed by the timer IRQ's jitter, ``AdcModel.jitter_s`` rms) pushed into the firmware's
  ring, each computed at its own exact instant (from the plant's record of the periods it
  moved through, :meth:`Plant.sample_past`), so the ring sees exactly what a timer
  interrupt would have pushed, overflow included.
* ``protect_start(period, fn)``: the protection timer IRQ: a tick every ``period`` of board
  time, each calling ``fn`` *at its own board time* (the ADC reads the plant at that instant,
  the watchdog sees that time, a trip turns the gate off from that instant on).
* The timer IRQs without threads: the protection ticks due run in order, in the serve
  loop's thread, before anything can look at or drive the board past them -- at every
  serial read (each serve-loop iteration), every HAL call that reads or drives the plant,
  ``irq_disable`` (the firmware sees every trip due before a critical section, as on the
  Pico) and the emulator's own API -- so no host, however busy or late, can delay or skip
  one. The plant is evaluated once, in time order, at the ticks due; a tick that drives the
  plant (a trip: gate off from its instant on) takes the plant back (:meth:`Plant.checkpoint`)
  to where that evaluation started and evaluates the later ticks again. Streamed samples are
  computed from the plant's record on input (a FETC reads the ring), when the stream stops
  and at ``MAX_IDLE_S / 2`` of age: the ring holds what the timer interrupt would have pushed
  by the time anything reads it, overflow included.
  ``irq_disable``/``irq_enable`` and every plant access take the same lock.
  ``gate_off``: gate low now.
* ``serial_read/serial_write/service``: delegated to a serial link (the emulator's
  pseudo-terminal with fault injection); ``serial_write`` never waits for the host (it
  returns what the pseudo-terminal took); ``service`` records the serve loop's timing.
  ``serial_read(timeout_us)`` with nothing to send is the Pico's wait for input (``poll()``
  in whole milliseconds; below one, polling until that instant): with an ``idle_until`` hook
  (the emulator's: the board time of the firmware's next timed work) the idle polls before
  then -- which would find no input and do nothing -- are not run one by one: the read waits
  on the link for input or for the first poll of the Pico's grid (``timeout`` apart) at or
  after that time, at most :data:`MAX_IDLE_S` ahead, or for the on-board PID's next step
  (the ``step_due`` hook) if that comes first; that poll runs at its own board time (see
  ``ticks_us``). For the PID's steps the host process sleeps :data:`STEP_BATCH_S` longer
  (input or the emulator's own calls wake it at once) and runs the steps due one after the
  other, each at its own board time.
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
from boostsim.rp2040 import ADC_CONVERSION_S

from .firmware.acq import COUNT_MASK
from .plant import Plant
from .plant import kernel as _kernel  # the compiled loops (None without numba)
from .rp2040 import PWM_CLOCK, counter_steps, pwm_output, rp2040_pwm

__all__ = ["CDC_TX_FIFO", "MAX_IDLE_S", "MAX_LAG_S", "STEP_BATCH_S", "AdcModel", "EmulatedHAL",
           "LoopStats", "ring_push", "rp2040_pwm"]

#: Longest the serve loop sleeps through idle polls [s]: it then runs one poll (the timer
#: IRQs' batch of streamed samples and protection ticks included) and sleeps again. Nothing
#: outside can tell (input and the emulator's own calls wake it at once, and each tick and
#: sample runs at its own board time), but each wake-up of the host process costs far more
#: than its work on a shared machine (cold caches): bench_emulator's figure fell by a fifth
#: from 20 ms to 50 ms (no further at 100 ms: the host's own traffic then wakes it).
MAX_IDLE_S = 0.05
#: Longest the board clock stays behind the host's to run the serve loop's due polls each at its
#: own board time [s]: a host process stalled longer (stopped, swapped out) lets the board's
#: polls run late, as a stalled serve loop on a Pico would.
MAX_LAG_S = 0.25
#: The emulated USB CDC transmit FIFO [bytes]: MicroPython's rp2 port (TinyUSB) buffers 256.
CDC_TX_FIFO = 256
#: How long the host process lets the on-board PID's steps wait when nothing else happens [s]:
#: it wakes up once for the steps due in that time and runs them one after the other, each
#: at its own board time (as after any late wake-up). The board is unchanged -- its steps
#: sample and act at their instants -- and input or the emulator's own calls wake the loop
#: at once (the steps due by then run first), so nothing outside can tell; as long as the
#: idle polls' sleep (a wake-up per step cost more than the step itself; one per 5 ms still
#: cost about a sixth of bench_emulator's CPU figure against one per 20 ms).
STEP_BATCH_S = MAX_IDLE_S
#: Board instants closer than this are the same instant [s] (sums of a period planned in
#: two ways round apart by far less).
_SAME_INSTANT_S = 1e-9
_EMPTY = np.empty(0)


def ring_push(ring: Any, codes: np.ndarray) -> None:
    """What ``len(codes)`` timer-IRQ pushes do to the firmware's ``acq.SampleRing``, as slice
    writes into its buffer: the codes from its write position on (wrapping; of more than
    the ring holds only the last ``size`` stay), the position and the producer's counter
    moved on by that many (``SampleRing.push`` one at a time cost a Python call per sample)."""
    n = codes.size
    size = ring.size
    buf = np.frombuffer(ring.buf, dtype=np.uint16)
    pos = ring.pos
    if n > size:  # the oldest are overwritten within this batch
        pos = (pos + n - size) % size
        codes = codes[n - size:]
    m = codes.size
    first = min(m, size - pos)
    buf[pos:pos + first] = codes[:first]
    buf[:m - first] = codes[first:]
    ring.pos = (pos + m) % size
    ring.count = (ring.count + n) & COUNT_MASK


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
        # AdcTransfer.position's expression, so every path gives the simulation's codes to
        # the last bit.
        self.scale = (1.0 + float(gain_error)) / float(vref) * full_scale
        self.max_code = int(max_code)
        self.noise_lsb = float(noise_lsb)
        self.jitter_s = float(jitter_s)
        self.offset = float(offset_lsb)
        self._levels = None if self.transfer.ideal else self.transfer.levels.tolist()
        self._level_array = np.array(self._levels or [], dtype=float)  # for emukernel
        self._rng = np.random.default_rng(seed)
        self._noise = np.zeros(0)
        self._noise_list: list[float] | None = None
        self._pos = 0
        self._sum_codes: dict[int, np.ndarray] = {}  # code_sum's scratch arrays, by size

    def _normals(self, n: int) -> np.ndarray:
        if self._pos + n > self._noise.size:
            self._noise = self._rng.standard_normal(max(4096, n))
            self._noise_list = None
            self._pos = 0
        out = self._noise[self._pos:self._pos + n]
        self._pos += n
        return out

    def _normal(self) -> float:
        """The next draw of :meth:`_normals` as a float."""
        if self._pos >= self._noise.size:
            self._normals(1)
            self._pos = 0
        if self._noise_list is None:
            self._noise_list = self._noise.tolist()
        self._pos += 1
        return self._noise_list[self._pos - 1]

    def delays(self, n: int) -> np.ndarray:
        """Delays [s] of ``n`` timer-triggered conversions (half-normal, ``jitter_s`` rms)."""
        return np.abs(self._normals(n)) * self.jitter_s

    def code(self, v_pin: float) -> int:
        """One conversion (the scalar twin of :meth:`codes`, for single reads)."""
        x = v_pin * self.scale + self.offset
        if self.noise_lsb:
            x += self.noise_lsb * self._normal()
        if not x >= 0.0:  # also NaN
            return 0
        c = round(x) if self._levels is None else bisect.bisect_right(self._levels, x)
        return c if c < self.max_code else self.max_code

    def codes(self, v: np.ndarray, divider: float = 1.0) -> np.ndarray:
        """Conversions of the voltages ``v`` [V] through ``divider`` (pin = v / divider)."""
        return self._convert(v, divider)[0]

    def code_sum(self, v: np.ndarray, divider: float = 1.0) -> int:
        """The sum of :meth:`codes` (conversions the firmware averages)."""
        out = self._sum_codes.get(v.size)  # the codes themselves are not kept
        if out is None:
            out = self._sum_codes[v.size] = np.empty(v.size, dtype=np.int64)
        return self._convert(v, divider, out)[1]

    def _convert(self, v: np.ndarray, divider: float, out: np.ndarray | None = None
                 ) -> tuple[np.ndarray, int]:
        normals = self._normals(v.size) if self.noise_lsb else _EMPTY
        if _kernel is not None:
            if out is None:
                out = np.empty(v.size, dtype=np.int64)
            total = _kernel.adc_codes(v, float(divider), self.scale, self.offset,
                                      self.noise_lsb, normals, self._level_array,
                                      self.max_code, out)
            return out, int(total)
        x = self.transfer.codes(v / divider, normals if self.noise_lsb else None)
        np.maximum(x, 0.0, out=x)
        np.minimum(x, self.max_code, out=x)
        x[np.isnan(x)] = 0.0
        out = x.astype(np.int64)
        return out, int(out.sum())


class LoopStats:
    """Real-time figures of the emulated board (wall-clock seconds)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.polls = 0                # serve-loop polls of the board (idle ones skipped included)
        self.polls_run = 0            # ... of them run (service() calls)
        self.waits = 0                # waits for input or a poll's time (host wake-ups)
        self.max_poll_gap = 0.0       # longest time a poll ran late: between two service()
        #                               calls, less the time the loop meant to wait for input
        self.max_plant_call = 0.0     # longest single plant computation (wall time: includes
        #                               preemption by other threads/processes)
        self.slowest: dict = {}       # what that computation was doing
        self.max_sample_lag = 0.0     # longest delay between a streamed sample's time and
        #                               the moment it was computed and pushed (samples are
        #                               computed when needed: up to MAX_IDLE_S by design)
        self.gaps_over_ms = {2: 0, 5: 0, 10: 0}  # polls more than 2/5/10 ms late
        self.ticks = 0                # protection-timer ticks run (one per period of board time)
        self.samples = 0              # streamed samples pushed
        self.plant_time = 0.0         # wall time spent in the plant (and ADC model)
        self._last_service = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class EmulatedHAL:
    """The HAL interface of ``device.Device`` on a simulated board (see the module docstring).

    ``cfg``: the firmware config (module or namespace) the device runs with; ``plant``: the
    converter; ``link``: object with ``read(timeout_ms) -> bytes`` (a fractional timeout is
    fine; it may return early with nothing; None: the board is being reset) and
    ``write(data)``; ``clock``: seconds, monotonic, the same clock as the plant's;
    ``idle_until``: () -> the board time [s, clock] before which the firmware's serve loop has
    nothing to do without input (``math.inf``: nothing planned), or None (every poll runs);
    ``step_due``: () -> the board time [s] of the on-board PID's next step (``math.inf``:
    none), which the firmware's wait for input ends at (``Device.wait_us``).
    """

    def __init__(self, cfg: Any, plant: Plant, *, link: Any = None,
                 clock: Callable[[], float] = time.monotonic, adc: AdcModel | None = None,
                 vout_divider: float | None = None, vin_divider: float | None = None,
                 pwm_clock: float = PWM_CLOCK, serial: str = "B0057E0000000001",
                 idle_until: Callable[[], float] | None = None,
                 step_due: Callable[[], float] | None = None):
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
        self.pwm_actual: tuple | None = None   # what the emulated RP2040 produces
        self.idle_until = idle_until
        self.step_due = step_due
        self._stream: list | None = None       # [period_us, ring, next_sample_us]
        self.irq_lock = threading.RLock()      # the timer "IRQs" vs. everything else
        self._protect: list | None = None      # [period_s, fn, t0, index of the next tick]
        self._tick_due = math.inf              # board time of its next tick (inf: no timer)
        self._irq_t: float | None = None       # board clock of the tick being run [s]
        self._irq_thread: int | None = None    # ... and the thread running it
        self._tick_vout: float | None = None   # the plant's vout at that tick (batch value)
        self._drive_changed = False            # a tick changed the gate drive
        self._tick_keep: tuple | None = None   # (plant before the tick batch, its samples)
        self._tx_blocked = False               # the last serial_write took nothing
        self._tx_fifo = bytearray()            # the USB CDC's transmit FIFO
        self._slept = 0.0                      # the serve loop's planned wait this poll [s]
        self._t = clock()                      # the board clock: latest board time used [s]
        self._pinned = False                   # this poll runs at board time _t, not the host's
        self._last_pinned = -math.inf          # board time of the last poll run at its own time
        self._rx_stash = b""                   # input that came while a due poll had to run
        self._conversions: dict[int, np.ndarray] = {}  # adc_sum: n -> instants after the first
        self.boot()

    # -- board life cycle ----------------------------------------------------------------------

    def boot(self) -> None:
        """Power-up / reset of the microcontroller: clock restarts, gate low, no sampling."""
        self.protect_stop()
        self._stream = None
        self.plant.record(False)
        self._tx_blocked = False
        self._tx_fifo.clear()  # a reset empties the USB stack
        self._rx_stash = b""
        self._pinned = False
        self.boot_time = self._now()
        self._set_gate(False, 0.0, 0.0)

    def shutdown(self) -> None:
        """What main.py's ``finally`` does: timers stopped, gate low."""
        self.protect_stop()
        self.adc_stream_stop()
        self._set_gate(False, 0.0, 0.0)

    # -- HAL interface -------------------------------------------------------------------------

    def ticks_us(self) -> int:
        # A nanosecond's tolerance: a board time planned as boot_time + k us (a control step's
        # due time) reads k, whatever the rounding of the sum.
        return int((self._now() - self.boot_time) * 1e6 + 1e-3)

    def ticks_ms(self) -> int:
        return int((self._now() - self.boot_time) * 1e3 + 1e-6)

    @staticmethod
    def ticks_diff(a: int, b: int) -> int:
        return a - b

    def _now(self) -> float:
        """The board clock [s]: the tick's own time inside a protection tick, the poll's while
        a poll runs at its own time, else the host's clock (never going back)."""
        if self._irq_t is not None and threading.get_ident() == self._irq_thread:
            return self._irq_t
        if not self._pinned:
            t = self.clock()
            if t > self._t:
                self._t = t
        return self._t

    def now(self) -> float:
        """The board clock [s] (the plant's clock): when something done to the board from
        outside (a load change, a fault) takes effect -- on the serve loop's thread, between
        its polls, so never past an on-board PID step that is due but has not run yet (it
        runs at its own time, after this)."""
        if not self._pinned and self._irq_t is None:
            t = min(self.clock(), max(self._t, self._next_step()))
            if t > self._t:
                self._t = t
            return self._t
        return self._now()

    def spend(self, seconds: float) -> None:
        """``seconds`` of board time pass while the firmware computes (the host spends none of
        its own: the board clock moves on, the poll goes on at that time)."""
        self._t = self._now() + seconds
        self._pinned = True

    def protect_start(self, period_us: int, fn: Callable[[], None]) -> None:
        """Call ``fn`` every ``period_us`` of board time (the board's protection timer IRQ),
        each tick at its own board time, whatever the serve loop is doing (see the module
        docstring: the ticks run in order before anything can look past them)."""
        self.protect_stop()
        period = period_us * 1e-6
        self._protect = prot = [period, fn, self._now() + period, 0]
        self._tick_due = prot[2] + prot[0] * prot[3]

    def protect_stop(self) -> None:
        if self._protect is not None:
            self._run_ticks(self._now())  # the ticks due until now still ran
            self._protect = None
            self._tick_due = math.inf

    def next_tick(self, t: float) -> float:
        """Board time of the first protection tick at or after ``t`` (inf: no timer)."""
        prot = self._protect
        if prot is None:
            return math.inf
        period, _, t0, k = prot
        return t0 + period * max(k, math.ceil((t - t0) / period - 1e-9))

    def plant_access(self, t: float) -> None:
        """Run the timer IRQs due up to plant time ``t`` before a caller outside the HAL reads
        or changes the plant at ``t``. Call with ``irq_lock`` held."""
        self._catch_up(t)

    def gate_off(self) -> None:
        with self.irq_lock:
            self._set_gate(False, 0.0, 0.0)

    def irq_disable(self) -> bool:
        self.irq_lock.acquire()
        t = self._now()
        if self._tick_due <= t + _SAME_INSTANT_S:
            self._run_ticks(t)  # the ticks due by now have run, as on the Pico
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
        """One conversion now; outside a protection tick it takes the ADC's conversion time."""
        with self.irq_lock:
            if self._tick_vout is not None and channel == "vout":  # a protection tick's read
                return self.adc.code(self._tick_vout / self.vout_divider)
            code = self._adc_read(channel)
            if self._irq_t is None:
                self.spend(ADC_CONVERSION_S)
            return code

    def adc_sum(self, channel: str, n: int) -> int:
        """``n`` conversions back to back (each taking the ADC's conversion time), their codes
        summed: the output's evaluated at once, unless a protection tick falls among them."""
        with self.irq_lock:
            t = self._now()
            if channel == "vout" and n >= 2 and self._irq_t is None:
                if self._tick_due <= t + _SAME_INSTANT_S:
                    self._run_ticks(t)  # then the next tick due is the timer's next one
                last = t + (n - 1) * ADC_CONVERSION_S
                if self._tick_due > last:
                    offsets = self._conversions.get(n)
                    if offsets is None:
                        offsets = self._conversions[n] = ADC_CONVERSION_S * np.arange(n)
                    start = self._tic()
                    try:
                        vout = self.plant.sample(offsets + t, False, presorted=True)
                    finally:
                        self._plant_timing(start, "adc_read")
                    self._t = last + ADC_CONVERSION_S
                    self._pinned = True
                    return self.adc.code_sum(vout, self.vout_divider)
            return sum(self.adc_read(channel) for _ in range(n))

    def _adc_read(self, channel: str) -> int:
        cfg = self.cfg
        if channel == "vout":
            vout, _ = self._sample_now(False)
            return self.adc.code(vout / self.vout_divider)
        if channel == "vin":
            return self.adc.code(self._sample_now(None)[0] / self.vin_divider)
        if channel == "iin":
            _, i_l = self._sample_now(True)
            return self.adc.code(cfg.IIN_OFFSET_V + i_l * cfg.IIN_V_PER_A)
        raise KeyError(channel)

    def adc_stream_start(self, period_us: int, ring: Any) -> int:
        self.adc_stream_stop()
        t0 = self.ticks_us() + int(period_us)
        self._stream = [int(period_us), ring, t0]
        self.plant.record(True)  # the samples are computed when read (see _flush_stream)
        return t0

    def adc_stream_stop(self) -> None:
        if self._stream is not None:
            self._catch_up()
            self._stream = None
            self.plant.record(False)

    def serial_read(self, timeout_us: int) -> bytes:
        if self.link is None:
            self._catch_up()
            return b""
        wait = timeout_us * 1e-6
        start = self._now()  # this poll's board time
        self._pinned = False
        self._slept = 0.0
        if wait <= 0:  # the loop spins (replies to hand over)
            data, self._rx_stash = self._rx_stash or self.link.read(0.0) or b"", b""
            return self._input_poll(data, start, wait)
        self._tx_flush()  # the loop is about to wait: what it sent goes out
        polls, timed, due = 1, False, math.inf
        target = start + wait
        if self.idle_until is not None and not self._tx_blocked and not self._tx_fifo:
            due = self.idle_until()
            until = min(due, start + MAX_IDLE_S)
            polls = max(1, math.ceil((until - start) / wait - 1e-9))
            target = start + polls * wait  # the Pico's poll that finds the timed work due
            timed = due <= target
        step = self._next_step()
        wake = target  # when the host process wakes up for that poll
        if start < step <= target + 1e-9:
            # The firmware polls whole milliseconds until its next control step is less than
            # one away, then waits for that instant (Device.wait_us): the step runs when it is
            # due, not at the next poll of the grid (nor when the host's process wakes up,
            # STEP_BATCH_S later unless input comes first).
            target, timed = step, True
            wake = step + STEP_BATCH_S
        if timed and self._run_at(target, start, wait):
            return b""  # the host is late: the due poll runs first, at its own time
        if self._rx_stash:
            data, self._rx_stash = self._rx_stash, b""
            return self._input_poll(data, start, wait)
        begin = wall = self.clock()
        while True:  # a wake-up without input (the emulator's own calls) is not a poll
            self.stats.waits += 1
            data = self.link.read(max(0.0, wake - wall) * 1e3)
            wall = self.clock()
            if data is None:  # the board is being reset: no more polls
                data = b""
                break
            if data or wall >= target or (self.idle_until is not None
                                          and self.idle_until() != due):
                break  # input, the poll's time, or new plans (the emulator's calls)
        self._slept = min(wall - begin, wake - start)
        if (timed or not data) and self._run_at(target, start, wait):
            # The poll ran at its instant on the board's grid (a timed-out one: whenever the
            # host woke up); input that came after a due poll is read at the next one.
            self._rx_stash = data
            return b""
        if polls > 1:  # the idle polls the Pico made while waiting
            self.stats.polls += min(polls - 1, int((self.clock() - start) / wait + 1e-9))
        return self._input_poll(data, start, wait)

    def _next_step(self) -> float:
        """Board time [s] of the on-board PID's next step (inf: none or no hook)."""
        return self.step_due() if self.step_due is not None else math.inf

    def _input_poll(self, data: bytes, start: float, wait: float) -> bytes:
        """A poll at the host's time now (with the input that came, if any) -- unless the
        on-board PID's next step fell due meanwhile: the firmware's wait ends there
        (``Device.wait_us``), so that poll runs first, at the step's time, and the input waits
        for the next one."""
        now = self.clock()
        step = self._next_step()
        if start < step <= now and self._run_at(step, start, wait):
            self._rx_stash = data + self._rx_stash
            return b""
        if now > self._t:
            self._t = now
        self._pinned = True  # this poll's time: the clock read above, whatever comes next
        return self._polled(data)

    def _run_at(self, target: float, start: float, wait: float) -> bool:
        """If the host's clock has reached the poll at board time ``target`` (not later than
        :data:`MAX_LAG_S` ago; after ``start``, the last poll's time), pin the board clock
        there for this poll and run what was due by then; True if it did."""
        late = self.clock() - target
        if late < 0 or late > MAX_LAG_S or target <= self._last_pinned:
            return False
        if wait > 0:
            self.stats.polls += max(0, round((target - start) / wait) - 1)
        self._t = max(self._t, target)
        self._pinned = True
        self._last_pinned = self._t
        self._polled(b"")
        return True

    def _polled(self, data: bytes) -> bytes:
        """A poll's end at the board time, which then stands still for the rest of the
        serve loop's iteration (the firmware's work takes the board time it is given, not the
        host's): the protection ticks due by then run before the firmware goes on (it looks at
        what they latched); the streamed samples wait for input (a FETC may read the ring), a
        change of the plant's drive, or their age to reach ``MAX_IDLE_S / 2``."""
        with self.irq_lock:
            now = self._now()
            self._pinned = True
            if self._tick_due <= now + _SAME_INSTANT_S:
                self._run_ticks(now)
            if data or self._stream_pending(now - 0.5 * MAX_IDLE_S):
                self._flush_stream(now)
        return data

    def serial_write(self, data: bytes) -> int:
        """Hand ``data`` to the emulated USB CDC's transmit FIFO (:data:`CDC_TX_FIFO` bytes,
        as the RP2040's): it takes what fits and goes to the host when it is full, or when
        the serve loop next waits for input; a host that does not read fills it and then
        the pseudo-terminal, and the firmware sees nothing taken (0)."""
        if self.link is None:
            return len(data)
        buf = self._tx_fifo
        if len(buf) + len(data) > CDC_TX_FIFO:
            self._tx_flush()
        n = min(len(data), CDC_TX_FIFO - len(buf))
        if n > 0:
            buf += data[:n]
            if len(buf) >= CDC_TX_FIFO:
                self._tx_flush()
        self._tx_blocked = n <= 0
        return max(n, 0)

    def _tx_flush(self) -> None:
        """Hand the transmit FIFO to the link (what the host's side takes)."""
        buf = self._tx_fifo
        if buf and self.link is not None:
            del buf[:self.link.write(bytes(buf))]

    def service(self) -> None:
        now = self.clock()
        st = self.stats
        if st._last_service is not None:
            gap = now - st._last_service - self._slept
            if gap > 0.002:
                if gap > st.max_poll_gap:
                    st.max_poll_gap = gap
                for ms in st.gaps_over_ms:
                    if gap > ms * 1e-3:
                        st.gaps_over_ms[ms] += 1
        self._slept = 0.0
        st._last_service = now
        st.polls += 1
        st.polls_run += 1

    # -- simulation ----------------------------------------------------------------------------

    def _set_gate(self, enabled: bool, freq_hz: float, duty: float, limit: float = 1.0) -> None:
        steps = 0
        if enabled:
            freq, d = rp2040_pwm(freq_hz, duty, self.pwm_clock, limit)
            steps = counter_steps(freq_hz, self.pwm_clock)  # for the plant's maps (cached)
        else:
            freq, d = (self.plant.pwm[1] if freq_hz <= 0 else float(freq_hz)), 0.0
        actual = (bool(enabled), freq, d)
        if actual == self.pwm_actual:
            return  # the slice already makes this (e.g. gate_off at every tick of a trip)
        t = self._now()
        if self._irq_t is None:
            if self._tick_due <= t + _SAME_INSTANT_S:
                self._run_ticks(t)
        else:
            self._drive_changed = True  # the tick batch's later values are stale
            self._tick_back()
        self.pwm_actual = actual
        start = self._tic()
        self.plant.set_pwm(t, enabled, freq, d, steps)
        self._plant_timing(start, "pwm_set")

    def _sample_now(self, current: bool | None) -> tuple[float, float | None]:
        """The output and, with ``current``, the inductor current now (inside a protection
        tick: at the tick's instant); ``current`` None: the input voltage instead."""
        t = self._now()
        if self._irq_t is not None:
            if current is False and self._tick_vout is not None:
                return self._tick_vout, None
        else:
            self._run_ticks(t)
        return self._read(t, current)

    def _read(self, t: float, current: bool | None) -> tuple[float, float | None]:
        """The plant at ``t`` (see :meth:`_sample_now`): moves it there (inside a protection
        tick, whose batch still needs the plant where it is: evaluated without moving it)."""
        plant = self.plant
        keep = None
        if self._irq_t is not None:
            self._tick_back()
            keep = plant.checkpoint()
        start = self._tic()
        try:
            if current is None:
                plant.advance(t)
                return float(plant.params.vin), None
            return plant.at(t, bool(current))
        finally:
            if keep is not None:
                plant.restore(keep)
            self._plant_timing(start, "adc_read")

    def _tic(self) -> tuple:
        s = self.plant.stats
        return (time.perf_counter(), s.periods, s.references, s.ccm_maps, s.transitions,
                s.tables)

    def _plant_timing(self, start: tuple, what: str = "sample") -> None:
        dt = time.perf_counter() - start[0]
        st = self.stats
        st.plant_time += dt
        if dt > st.max_plant_call:
            st.max_plant_call = dt
            s = self.plant.stats
            st.slowest = {"what": what, "wall_ms": 1e3 * dt, "periods": s.periods - start[1],
                          "engine_calls": s.references - start[2],
                          "ccm_maps": s.ccm_maps - start[3],
                          "transitions": s.transitions - start[4], "tables": s.tables - start[5]}

    def _tick_back(self) -> None:
        """Inside a protection tick that reads or drives the plant beyond its batch value:
        the plant goes back to where the tick batch started (the later ticks are evaluated
        again)."""
        if self._tick_keep is not None:
            keep, self._tick_keep = self._tick_keep, None
            self.plant.restore(keep)

    def _stream_pending(self, t: float) -> bool:
        """True if a streamed sample is due at or before ``t`` and not yet computed."""
        stream = self._stream
        return stream is not None and stream[2] <= int((t - self.boot_time) * 1e6)

    def _stream_due(self, t: float) -> np.ndarray | None:
        """Plant times of the streamed samples due up to ``t`` (None if none), not yet taken
        (:meth:`_push` takes them)."""
        stream = self._stream
        if stream is None:
            return None
        now_us = int((t - self.boot_time) * 1e6)
        period, _, nxt = stream
        if nxt > now_us:
            return None
        n = (now_us - nxt) // period + 1
        base = self.boot_time
        jitter = self.adc.jitter_s
        if _kernel is not None:
            times = np.empty(n)
            _kernel.stream_times(base, nxt, period, jitter,
                                 self.adc._normals(n) if jitter else _EMPTY, t, times)
            return times
        times = base + (nxt + period * np.arange(n, dtype=np.int64)) * 1e-6
        if jitter:
            # The timer IRQ starts each conversion a little late (never later than now).
            times = np.maximum.accumulate(np.minimum(times + self.adc.delays(n), t))
        return times

    def _push(self, vout: np.ndarray, times: np.ndarray) -> None:
        """Push the codes of the streamed samples at ``times`` (the next ones due) into the
        ring; they are counted as taken."""
        n = times.size
        if not n:
            return
        self._stream[2] += n * self._stream[0]
        ring_push(self._stream[1], self.adc.codes(vout, self.vout_divider))
        st = self.stats
        st.samples += n
        lag = self.clock() - float(times[0])
        if lag > st.max_sample_lag:
            st.max_sample_lag = lag

    def _catch_up(self, t: float | None = None) -> None:
        """Run the timer IRQs due up to plant time ``t`` (default now): the protection ticks,
        then the streamed samples."""
        with self.irq_lock:
            if self._irq_t is not None:
                return  # inside a tick: the batch around it is being run
            if t is None:
                t = self._now()
            self._run_ticks(t)
            self._flush_stream(t)

    def _flush_stream(self, t: float) -> None:
        """Compute and push the streamed samples due up to ``t``: from the plant's record of
        the periods it has moved through (:meth:`Plant.sample_past`; the plant moves on to
        the last of them if it is not there yet)."""
        times = self._stream_due(t)
        if times is not None:
            start = self._tic()
            self._push(self.plant.sample_past(times), times)
            self._plant_timing(start, "stream")

    def _tick_times(self, t: float) -> list[float]:
        """Board times of the protection ticks due up to ``t`` (empty if none): a tick within
        :data:`_SAME_INSTANT_S` after ``t`` is due at ``t`` and runs then (a poll planned for
        a tick's instant, e.g. the watchdog's deadline, may be that much early by the rounding
        of its sum)."""
        prot = self._protect
        if prot is None:
            return []
        period, _, t0, k = prot
        limit = t + _SAME_INSTANT_S
        if t0 + period * k > limit:
            return []
        last = math.floor((limit - t0) / period)
        if t0 + period * last > limit:
            last -= 1
        return [min(t0 + period * j, t) for j in range(k, last + 1)]

    def _run_tick(self, tk: float) -> bool:
        """One protection tick at ``tk`` (what :meth:`_run_ticks` does for a batch of one: the
        usual case with the on-board PID's steps in between). False if it changed the drive
        (the caller looks for ticks due again)."""
        prot = self._protect
        start = self._tic()
        try:
            v = self.plant.at(tk)[0]
        finally:
            self._plant_timing(start, "protect")
        self._irq_thread = threading.get_ident()
        self._drive_changed = False
        self._irq_t = tk
        self._tick_vout = v
        done = 0
        try:
            prot[1]()
            done = 1
        finally:
            self._irq_t = self._tick_vout = None
            self.stats.ticks += done
            if self._protect is prot:
                prot[3] += done
                self._tick_due = prot[2] + prot[0] * prot[3]
        return not self._drive_changed

    def _run_ticks(self, t: float) -> None:
        """Run the protection ticks due up to ``t`` in order, each at its own instant: one
        evaluation of the plant at them all. A tick that changes the drive (a trip: gate off
        from its instant on) takes the plant back to where the evaluation started; the later
        ticks are evaluated again. A single tick (the usual case with the on-board PID's
        steps in between) needs no checkpoint: nothing past it has been evaluated."""
        if self._irq_t is not None or self._tick_due > t + _SAME_INSTANT_S:
            return  # a tick is running, or none due (no timer: never)
        while True:
            ticks = self._tick_times(t)
            if not ticks:
                return
            if len(ticks) == 1 and self._run_tick(ticks[0]):
                return
            plant = self.plant
            keep = plant.checkpoint() if len(ticks) > 1 else None
            start = self._tic()
            try:
                vout = ([plant.at(ticks[0])[0]] if len(ticks) == 1
                        else plant.sample(ticks, presorted=True).tolist())
            except BaseException:
                if keep is not None:
                    plant.restore(keep)
                raise
            finally:
                self._plant_timing(start, "protect")
            self._tick_keep = keep
            prot = self._protect
            fn = prot[1]
            done = 0
            self._irq_thread = threading.get_ident()
            self._drive_changed = False
            try:
                for tk, v in zip(ticks, vout, strict=True):
                    self._irq_t = tk
                    self._tick_vout = v
                    try:
                        fn()
                    finally:
                        self._irq_t = self._tick_vout = None
                    done += 1
                    if self._drive_changed:
                        break
            finally:
                self._tick_keep = None
                self.stats.ticks += done
                if self._protect is prot:
                    prot[3] += done
                    self._tick_due = prot[2] + prot[0] * prot[3]
            if not self._drive_changed:
                return
