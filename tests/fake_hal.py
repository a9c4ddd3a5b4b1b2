"""Simulated board hardware for the firmware tests (test scaffolding, MicroPython-compatible).

``FakeHAL`` implements the HAL interface of firmware device.py with a controllable clock and a
deterministic first-order plant: V_out relaxes towards ``vin / (1 - duty) - v_diode`` (output
on) or ``vin - v_diode`` (off) with time constant ``tau_us`` (backward-Euler steps of at most
tau/4); ADC codes come from the voltages through the configured dividers and
12-bit quantisation.

``run_script(steps, overrides)`` is the conformance driver: it runs a list of steps against a
fresh Device and returns what happened, as plain literals, so that the same script gives the
same result in CPython and in MicroPython (the tests compare both). Steps::

    (b"LINE", ...)            send b"LINE\\n"; record the response bytes (b"" if none)
    ("raw", data)             send raw bytes as they are; record the response bytes
    ("advance", us)           advance the simulated clock (plant + sampling) then poll()
    ("poll",)                 poll() without advancing
    ("protect",)              one tick of the protection timer IRQ (dev.protect) now
    ("set", name, value)      set a plant attribute (vin, vout, tau_us, r_load, noise)
    ("state",)                record dev.snapshot() as a sorted list of items
    ("pwm",)                  record the last (enabled, freq, duty) given to pwm_set
    ("errors",)               drain the error queue via SYST:ERR? and record the codes
"""

try:
    from firmware_bridge.firmware import acq, device
except ImportError:  # MicroPython: the firmware files are importable flat
    import acq
    import device


def _ipow(x, k):
    """x ** k for an int k >= 0 by squaring (deterministic: multiplications only)."""
    r = 1.0
    while k:
        if k & 1:
            r *= x
        x *= x
        k >>= 1
    return r


class Config:
    """A copy of a config module's constants, with overrides."""

    def __init__(self, base, overrides=None):
        for name in dir(base):
            if name[:1] != "_" and name.upper() == name:
                setattr(self, name, getattr(base, name))
        if overrides:
            for name in overrides:
                setattr(self, name, overrides[name])


def load_config(overrides=None):
    try:
        from firmware_bridge.firmware import config
    except ImportError:
        import config
    return Config(config, overrides)


class FakeHAL:
    def __init__(self, cfg, vin=5.0, r_load=48.0, tau_us=2000.0, v_diode=0.35):
        self.cfg = cfg
        self.now = 1000000  # us; the clock starts at 1 s
        self.vin = vin
        self.r_load = r_load
        self.tau_us = tau_us
        self.v_diode = v_diode
        self.vout = vin - v_diode
        self.noise = 0          # LSB of deterministic pseudo-random noise on every conversion
        self._lcg = 12345
        self.enabled = False
        self.freq = 0.0
        self.duty = 0.0
        self.pwm_calls = 0
        self.uid = b"\xe6\x60\x38\xb7\x13\x34\x5e\x2c"
        self._stream = None     # [period_us, ring, next_sample_time_us]
        self._protect = None    # [period_us, callback, next_tick_time_us]
        self.tx_room = None     # bytes the host will still take (None: it reads everything)
        self.serial_in = []     # chunks returned one by one by serial_read
        self.serial_out = bytearray()
        self.service_calls = 0

    # --- plant -------------------------------------------------------------------------------

    def v_target(self):
        if self.enabled:
            return self.vin / (1.0 - self.duty) - self.v_diode
        return self.vin - self.v_diode

    def i_in(self):
        i_out = self.vout / self.r_load
        if self.enabled:
            return i_out / (1.0 - self.duty)
        return i_out

    def _relax(self, dt_us):
        # k backward-Euler steps of at most tau/4 of dv/dt = (target - v) / tau, in closed form
        # (v - target shrinks by tau / (tau + h) per step). Only * and /: CPython and MicroPython
        # (IEEE doubles in both) compute bit-identical voltages.
        if dt_us <= 0:
            return
        h_max = self.tau_us / 4
        k = int(dt_us // h_max)
        if k * h_max < dt_us:
            k += 1
        h = dt_us / k
        target = self.v_target()
        self.vout = target + (self.vout - target) * _ipow(self.tau_us / (self.tau_us + h), k)

    def advance_us(self, dt_us):
        """Move the clock forward, integrating the plant and taking the streamed samples."""
        end = self.now + int(dt_us)
        while True:
            # The next timer event (sampling IRQ first on a tie, then the protection IRQ).
            stream = self._stream
            protect = self._protect
            t = end + 1
            if stream is not None and stream[2] <= end:
                t = stream[2]
            if protect is not None and protect[2] < t:
                t = protect[2]
            if t > end:
                break
            self._relax(t - self.now)
            self.now = t
            if stream is not None and stream[2] == t:
                stream[1].push(self.adc_read("vout"))
                stream[2] += stream[0]
            else:
                protect[2] += protect[0]
                protect[1]()
        self._relax(end - self.now)
        self.now = end

    def _code(self, v_pin):
        if self.noise:
            self._lcg = (self._lcg * 1103515245 + 12345) & 0x7FFFFFFF
            v_pin += ((self._lcg >> 16) % (2 * self.noise + 1) - self.noise) * (
                self.cfg.ADC_VREF / self.cfg.ADC_FULL_SCALE)
        code = int(v_pin / self.cfg.ADC_VREF * self.cfg.ADC_FULL_SCALE + 0.5)
        if code < 0:
            return 0
        if code > self.cfg.ADC_MAX_CODE:
            return self.cfg.ADC_MAX_CODE
        return code

    # --- HAL interface -------------------------------------------------------------------------

    def ticks_us(self):
        return self.now

    def ticks_ms(self):
        return self.now // 1000

    def ticks_diff(self, a, b):
        return a - b

    def protect_start(self, period_us, callback):
        self._protect = [period_us, callback, self.now + period_us]

    def protect_now(self):
        """One protection IRQ at the present time (the ("protect",) script step)."""
        self._protect[1]()

    def gate_off(self):
        self.enabled = False
        self.duty = 0.0

    def irq_disable(self):
        return 0

    def irq_enable(self, state):
        pass

    def serial_number(self):
        return "".join([f"{b:02X}" for b in self.uid])

    def pwm_set(self, enabled, freq_hz, duty, limit=None):
        self.pwm_calls += 1
        self.duty_limit = limit
        self.enabled = bool(enabled)
        self.freq = freq_hz
        self.duty = duty if enabled else 0.0

    def adc_sum(self, channel, n):
        total = 0
        for _ in range(n):
            total += self.adc_read(channel)
        return total

    def adc_read(self, channel):
        cfg = self.cfg
        if channel == "vout":
            return self._code(self.vout / cfg.VOUT_DIVIDER)
        if channel == "vin":
            return self._code(self.vin / cfg.VIN_DIVIDER)
        if channel == "iin":
            return self._code(cfg.IIN_OFFSET_V + self.i_in() * cfg.IIN_V_PER_A)
        raise KeyError(channel)

    def adc_stream_start(self, period_us, ring):
        t0 = self.now + period_us
        self._stream = [period_us, ring, t0]
        return t0

    def adc_stream_stop(self):
        self._stream = None

    def serial_read(self, timeout_us):
        if self.serial_in:
            return self.serial_in.pop(0)
        self.advance_us(timeout_us)
        return b""

    def serial_write(self, data):
        n = len(data)
        if self.tx_room is not None:
            n = min(n, self.tx_room)
            self.tx_room -= n
        self.serial_out.extend(data[:n])
        return n

    def service(self):
        self.service_calls += 1


def make_device(overrides=None, **plant):
    cfg = load_config(overrides)
    hal = FakeHAL(cfg, **plant)
    return device.Device(hal, cfg), hal


def _drain_errors(dev):
    codes = []
    for _ in range(100):
        text = dev.handle_line(b"SYST:ERR?").decode()
        code = int(text.split(",")[0])
        if code == 0:
            break
        codes.append(code)
    return codes


def run_script(steps, overrides=None):
    """Run ``steps`` (see the module docstring) on a fresh device; return a list of records."""
    dev, hal = make_device(overrides)
    out = []
    for step in steps:
        kind = step[0]
        if isinstance(kind, bytes):
            out.append(dev.feed(kind + b"\n"))
        elif kind == "raw":
            out.append(dev.feed(step[1]))
        elif kind == "advance":
            hal.advance_us(step[1])
            dev.poll()
            out.append(None)
        elif kind == "poll":
            dev.poll()
            out.append(None)
        elif kind == "protect":
            hal.protect_now()
            out.append(None)
        elif kind == "set":
            setattr(hal, step[1], step[2])
            out.append(None)
        elif kind == "state":
            snap = dev.snapshot()
            out.append(sorted([(k, snap[k]) for k in snap]))
        elif kind == "pwm":
            out.append((hal.enabled, hal.freq, hal.duty))
        elif kind == "errors":
            out.append(_drain_errors(dev))
        else:
            raise ValueError(f"unknown step {kind!r}")
    return out


def run_scripts(cases):
    """``cases``: list of (name, steps, overrides) -> list of (name, records)."""
    return [(name, run_script(steps, overrides)) for name, steps, overrides in cases]


def unpack_fetch(response):
    """Decode a FETC:ADC? response with the shared codec (used by the scripts' checks)."""
    try:
        from firmware_bridge.firmware import scpi
    except ImportError:
        import scpi
    payload, _ = scpi.decode_block(response)
    return acq.unpack_payload(payload)
