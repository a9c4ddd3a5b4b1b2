"""The real hardware layer: Raspberry Pi Pico (RP2040) under MicroPython.

Implements the HAL interface documented in device.py with machine.PWM, machine.ADC,
machine.Timer (hard IRQs: sampling into an acq.SampleRing, and the protections), machine.WDT
and the USB CDC serial port (sys.stdin/sys.stdout buffers, select.poll).

Timer IRQs: rp2 has only virtual timers (``machine.Timer()``); with ``hard=True`` the callback
runs in the timer interrupt itself, whatever the main program is doing (also while it waits
in a USB write); a soft callback is only scheduled and runs between bytecodes of the main
program. The protections must not wait, so they are hard -- and a hard callback must not
allocate: ``Device.protect`` compares small ints and ``gate_off`` only writes duty_u16(0).
Only this file and main.py touch ``machine``; the command logic (device.py) never does, so
the same logic runs against a simulated HAL.
"""

import select
import sys
import time

import machine

PWM_CLOCK = 125000000  # Hz: the slice's input clock (MicroPython's system clock)


def slice_top(freq, clock=PWM_CLOCK):
    """The ``top`` MicroPython's rp2 machine_pwm.c programs for ``freq`` [Hz] (integer Hz)."""
    if (clock + freq // 2) // freq < 65534:
        return (clock + freq // 2) // freq - 1
    div16 = (16 * clock + 65534 * freq - 1) // (65534 * freq)
    return (16 * clock + div16 * freq // 2) // (div16 * freq) - 1


def ceiling_u16(limit, top):
    """Largest duty_u16 whose compare level ``(u * (top + 1) + 32767) // 65535`` is at most
    ``int(limit * (top + 1))``: the duty ceiling holds exactly, not to half a step."""
    steps = top + 1
    u = ((int(limit * steps) + 1) * 65535 - 32768) // steps
    return u if u < 65535 else 65535


class PicoHAL:
    def __init__(self, cfg):
        self.cfg = cfg
        # Gate low before anything else: a plain output, not PWM, until the output is turned on.
        self._gate = machine.Pin(cfg.PWM_PIN, machine.Pin.OUT, value=0)
        self._pwm = None
        self._pwm_freq = None
        self._pwm_lim = None
        self._u16_max = 0
        self._adc = {"vout": machine.ADC(machine.Pin(cfg.VOUT_ADC_PIN))}
        if cfg.VIN_ADC_PIN is not None:
            self._adc["vin"] = machine.ADC(machine.Pin(cfg.VIN_ADC_PIN))
        if cfg.IIN_ADC_PIN is not None:
            self._adc["iin"] = machine.ADC(machine.Pin(cfg.IIN_ADC_PIN))
        self._t_last = time.ticks_us()
        self._t_acc = 0
        self._timer = None
        self._protect_timer = None
        self._wdt = None
        self._stdin = sys.stdin.buffer
        self._stdout = sys.stdout.buffer
        self._poller = select.poll()
        self._poller.register(sys.stdin, select.POLLIN)
        self._out_poller = select.poll()
        self._out_poller.register(sys.stdout, select.POLLOUT)

    # --- time ----------------------------------------------------------------------------------

    def ticks_us(self):
        """Monotonic microseconds: time.ticks_us() unwrapped (call at least every ~9 minutes)."""
        t = time.ticks_us()
        self._t_acc += time.ticks_diff(t, self._t_last)
        self._t_last = t
        return self._t_acc

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def protect_start(self, period_us, fn):
        """Run ``fn()`` every period_us in a hard timer IRQ (Device.protect: no allocation)."""
        if self._protect_timer is not None:
            self._protect_timer.deinit()

        def tick(timer):
            fn()

        self._protect_timer = machine.Timer(mode=machine.Timer.PERIODIC, period=period_us,
                                            tick_hz=1000000, callback=tick, hard=True)

    def gate_off(self):
        """Gate low at once; IRQ-safe (duty_u16 of the existing slice: no allocation).
        pwm_set(False, ...) later releases the pin back to a plain low output."""
        if self._pwm is not None:
            self._pwm.duty_u16(0)

    def irq_disable(self):
        return machine.disable_irq()

    def irq_enable(self, state):
        machine.enable_irq(state)

    def serial_number(self):
        return "".join(["%02X" % b for b in machine.unique_id()])

    # --- PWM -----------------------------------------------------------------------------------

    def pwm_set(self, enabled, freq_hz, duty, limit=None):
        """Gate on at ``freq_hz`` [Hz] and ``duty`` (rounded to the nearest duty_u16), but never
        a compare level above floor(limit * steps); ``limit`` None: DUTY_HARD_MAX, and never
        more than it."""
        if not enabled:
            if self._pwm is not None:
                self._pwm.duty_u16(0)
                self._pwm.deinit()
                self._pwm = None
                self._pwm_freq = None
                self._pwm_lim = None
            self._gate = machine.Pin(self.cfg.PWM_PIN, machine.Pin.OUT, value=0)
            return
        if self._pwm is None:
            self._pwm = machine.PWM(self._gate)
            self._pwm.duty_u16(0)
        freq = int(freq_hz + 0.5)
        if freq != self._pwm_freq:  # re-programming the divider glitches: only when it changes
            self._pwm.freq(freq)
            self._pwm_freq = freq
            self._pwm_lim = None
        hard = self.cfg.DUTY_HARD_MAX
        if limit is None or not limit < hard:  # not <: a NaN limit is the hard one
            limit = hard
        if limit != self._pwm_lim:
            self._u16_max = ceiling_u16(limit, slice_top(freq))
            self._pwm_lim = limit
        u16 = int(duty * 65535 + 0.5)
        if u16 > self._u16_max:
            u16 = self._u16_max
        self._pwm.duty_u16(u16)

    # --- ADC -----------------------------------------------------------------------------------

    def adc_read(self, channel):
        adc = self._adc[channel]
        # The sampling IRQ selects its own channel; keep it from switching the mux mid-read.
        state = machine.disable_irq()
        try:
            code = adc.read_u16()
        finally:
            machine.enable_irq(state)
        return code >> 4

    def adc_sum(self, channel, n):
        total = 0
        for _ in range(n):
            total += self.adc_read(channel)
        return total

    def adc_stream_start(self, period_us, ring):
        self.adc_stream_stop()
        adc = self._adc["vout"]
        read = adc.read_u16
        push = ring.push

        def sample(timer):  # hard IRQ: no allocation (small ints, preallocated ring)
            push(read() >> 4)

        t_start = self.ticks_us()
        try:
            self._timer = machine.Timer(mode=machine.Timer.PERIODIC, period=period_us,
                                        tick_hz=1000000, callback=sample, hard=True)
        except TypeError:  # older firmware without tick_hz/hard: soft IRQ at the nearest Hz
            self._timer = machine.Timer(mode=machine.Timer.PERIODIC,
                                        freq=1000000 // period_us, callback=sample)
        return t_start + period_us

    def adc_stream_stop(self):
        if self._timer is not None:
            self._timer.deinit()
            self._timer = None

    # --- serial (USB CDC) ----------------------------------------------------------------------

    def serial_read(self, timeout_us):
        poller = self._poller
        if timeout_us >= 1000:  # poll() waits whole milliseconds
            ready = poller.poll(timeout_us // 1000)
        else:  # less than one (a control step is due): poll until that instant
            deadline = time.ticks_add(time.ticks_us(), timeout_us)
            ready = poller.poll(0)
            while not ready and time.ticks_diff(deadline, time.ticks_us()) > 0:
                ready = poller.poll(0)
        if not ready:
            return b""
        data = bytearray()
        while len(data) < 256 and self._poller.poll(0):
            byte = self._stdin.read(1)
            if not byte:
                break
            data.extend(byte)
        return bytes(data)

    def serial_write(self, data):
        """Hand over at most one USB packet, and only if the CDC has room (POLLOUT: rp2 sets it
        when tud_cdc_write_available() > 0): a host that does not read never holds the loop
        for more than that packet. Returns the bytes taken."""
        if not self._out_poller.poll(0):
            return 0
        n = len(data)
        if n > 64:
            n = 64
        self._stdout.write(data[:n])  # raw buffer: no LF -> CR LF translation of blocks
        return n

    # --- watchdog ------------------------------------------------------------------------------

    def start_hw_watchdog(self):
        """Start machine.WDT (cannot be stopped again); fed by service() in the serve loop."""
        if self.cfg.HW_WDT_MS:
            self._wdt = machine.WDT(timeout=self.cfg.HW_WDT_MS)

    def service(self):
        if self._wdt is not None:
            self._wdt.feed()

    def shutdown(self):
        """Gate low, timers stopped (main.py calls this on the way out, whatever happened)."""
        if self._protect_timer is not None:
            self._protect_timer.deinit()
            self._protect_timer = None
        self.adc_stream_stop()
        self.pwm_set(False, 0, 0.0)
