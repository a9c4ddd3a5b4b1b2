"""Hardware-independent firmware logic: line framing, dispatch, state machine, protections.

``Device(hal, cfg)`` runs unchanged on the Pico (hal.PicoHAL), in the tests and in the
emulator (a simulated HAL); everything time- or hardware-related goes through the HAL object.

Driving it (the serve loop, the tests and the emulator all do the same):

* ``dev.feed(data) -> bytes``: raw bytes from the serial port in (any chunking, LF or CR LF
  terminated lines), response bytes out (b"" if none).
* ``dev.handle_line(line) -> bytes | None``: one line without its terminator.
* ``dev.protect()``: the protections (over-voltage, host watchdog). The device starts a
  periodic timer IRQ for it at construction (``hal.protect_start``): they run every
  PROTECT_PERIOD_US whatever the serve loop is doing (reading, writing to a host that does
  not read, computing). On the Pico it is a hard IRQ, so ``protect`` allocates nothing: it
  compares small ints (a raw ADC code limit, millisecond ticks) and turns the gate off through
  ``hal.gate_off``; the error-queue entry and the rest of the clean-up follow in ``poll``.
* ``dev.poll(now_us=None)``: periodic main-loop work -- reporting a trip, the PID step. Call
  it often (the serve loop: about every millisecond).
* ``serve(dev, hal, should_stop=None)``: the serve loop itself, over the HAL's serial calls.

The HAL interface (hal.PicoHAL is the real one; tests/fake_hal.py a simulated one)::

    ticks_us() -> int                 monotonic microseconds, never wraps
    ticks_ms() -> int                 milliseconds, a small int that may wrap (IRQ-safe)
    ticks_diff(a, b) -> int           a - b for ticks_ms values (time.ticks_diff)
    protect_start(period_us, fn)      call fn() every period_us from a timer IRQ (hard on the
                                      Pico), independent of the serve loop
    gate_off()                        gate low at once; IRQ-safe (no allocation)
    irq_disable() -> state            keep fn (and the sampling IRQ) out of a critical section
    irq_enable(state)
    serial_number() -> str            e.g. the hex of machine.unique_id()
    pwm_set(enabled, freq_hz, duty, limit)
                                      enabled False: gate held low whatever duty says; the
                                      compare level never above floor(limit * steps)
    adc_read(channel) -> int          one 12-bit conversion; channel "vout", "vin" or "iin"
    adc_sum(channel, n) -> int        n conversions back to back, their codes summed
    adc_stream_start(period_us, ring) -> t0_us
                                      push one "vout" code per period into ring (an
                                      acq.SampleRing) until adc_stream_stop(); returns the board
                                      time of sample index 0
    adc_stream_stop()
    serial_read(timeout_us) -> bytes  (serve() only) wait up to timeout_us [us] for input
                                      (whole milliseconds waited in poll(); below one, until
                                      that instant: the loop's wait before a control step)
    serial_write(data) -> int         (serve() only) hand over what the host has room for,
                                      never wait for it; returns the bytes taken (0..len)
    service()                         (serve() only) feed the hardware watchdog etc.

MicroPython-compatible.
"""

try:
    from . import acq, commands, scpi
except ImportError:  # flat layout on the board
    import acq
    import commands
    import scpi

ScpiError = scpi.ScpiError


def _load_config():
    try:
        from . import config
    except ImportError:
        import config
    return config


class Device:
    """The board: settings, protections, acquisition and the SCPI command handlers."""

    def __init__(self, hal, cfg=None, pid_class=None):
        if cfg is None:
            cfg = _load_config()
        self.hal = hal
        self.cfg = cfg
        self.table = commands.build_table(cfg)
        self.errors = scpi.ErrorQueue(cfg.ERR_QUEUE_LEN)
        self.ring = acq.SampleRing(cfg.RING_SIZE)
        self._pid_class = pid_class
        # Line framing.
        self._inbuf = bytearray()
        self._overlong = False
        self._word_state = 0   # scpi.scan_first_word state of the line being received
        self._word_last = -1
        # Protections and calibration: kept by *RST.
        self.duty_lim = float(cfg.DUTY_LIMIT_DEFAULT)
        self.ovp_level = float(cfg.OVP_DEFAULT)
        self.wdog_s = float(cfg.WDOG_DEFAULT)
        self.trip = None
        self.cal_gain = float(cfg.CAL_VOUT_GAIN)
        self.cal_offset = float(cfg.CAL_VOUT_OFFSET)
        self.seq = 0
        self.running = False
        # Protection state shared with the IRQ (small ints and interned strings only).
        self._ovp_count = 0
        self._ovp_code = self._ovp_code_for(self.ovp_level)
        self._trip_code = 0      # the raw code that tripped the OVP
        self._trip_new = False   # set by the IRQ, reported by poll()
        self._irq_fault = False  # the protection IRQ hit an exception (gate turned off)
        self._wdog_ms = int(self.wdog_s * 1000 + 0.5)
        self._last_valid_ms = hal.ticks_ms()
        self._next_ctrl_us = 0
        # Replies the host has not taken yet (serve()).
        self.tx_dropped = 0      # replies dropped since the last report
        self.tx_dropped_bytes = 0
        self._drops = [0, 0]     # counts in the queued -410
        self._reset_settings()
        hal.protect_start(cfg.PROTECT_PERIOD_US, self.protect)

    # ---------------------------------------------------------------- state ----------------

    def _reset_settings(self):
        """Power-up / *RST state of everything that is not a protection or calibration."""
        cfg = self.cfg
        self._stop_acq()
        self.ring.reset()
        self.acquired = False
        self.t0_us = 0
        self.output = False
        self.duty = 0.0
        self.freq = float(cfg.PWM_FREQ_DEFAULT)
        self.period_us = int(1e6 / cfg.ADC_RATE_DEFAULT + 0.5)
        self.mode = "OPEN"
        self.vref = float(cfg.CONT_VREF_DEFAULT)
        self.kp = float(cfg.PID_KP_DEFAULT)
        self.ki = float(cfg.PID_KI_DEFAULT)
        self.kd = float(cfg.PID_KD_DEFAULT)
        self.cont_rate = float(cfg.CONT_RATE_DEFAULT)
        self.slew = 0.0
        self.pid = None
        self._apply_pwm()

    def _apply_pwm(self):
        # With the protection IRQ held off: a trip latched since the caller's check wins.
        hal = self.hal
        state = hal.irq_disable()
        try:
            if self.trip is not None:
                self.output = False
            hal.pwm_set(self.output, self.freq, self.duty if self.output else 0.0,
                        self.duty_lim)
        finally:
            hal.irq_enable(state)

    def _stop_acq(self):
        if self.running:
            self.hal.adc_stream_stop()
            self.running = False

    def _trip_irq(self, cause):
        """Trip from the protection IRQ: latch, gate off at once; no allocation."""
        if self.trip is None:
            self.trip = cause
            self._trip_new = True
        self.output = False
        self.hal.gate_off()

    def _report_trip(self):
        """Main-loop half of a trip: duty 0, loop stopped, PWM released, error queued."""
        self._trip_new = False
        self.output = False
        self.duty = 0.0
        self.pid = None
        self._apply_pwm()
        cfg = self.cfg
        if self.trip == "OVP":
            v = acq.code_to_volts(self._trip_code, cfg.ADC_VREF, cfg.ADC_FULL_SCALE,
                                  cfg.VOUT_DIVIDER)
            self.errors.push(scpi.OVP_TRIPPED, "V_out %s V (uncalibrated divider) above the "
                             "level %s V; output off, PROT:CLE to re-arm"
                             % scpi.fmt_apart(v, self.ovp_level))
        elif self.trip == "WDOG":
            self.errors.push(scpi.WDOG_TRIPPED, "no valid command for %s s while the output "
                             "was on; output off, PROT:CLE to re-arm"
                             % scpi.fmt_num(self.wdog_s))

    def reply_dropped(self, nbytes):
        """serve(): a reply the host did not take was dropped (see ``report_dropped``)."""
        self.tx_dropped += 1
        self.tx_dropped_bytes += nbytes

    def report_dropped(self):
        """Queue a -410 for the replies dropped since the last report (if any). While an
        unread -410 is still queued its counts grow instead: a host that keeps not reading
        cannot fill the queue with them (a trip report gets in anyway: the queue gives
        protection reports priority, scpi.ErrorQueue)."""
        if not self.tx_dropped:
            return
        items = self.errors.items
        for i in range(len(items)):
            if items[i][0] == scpi.QUERY_INTERRUPTED:
                self._drops[0] += self.tx_dropped
                self._drops[1] += self.tx_dropped_bytes
                items[i] = (scpi.QUERY_INTERRUPTED, self._drop_text())
                break
        else:
            self._drops = [self.tx_dropped, self.tx_dropped_bytes]
            self.errors.push(scpi.QUERY_INTERRUPTED, self._drop_text())
        self.tx_dropped = 0
        self.tx_dropped_bytes = 0

    def _drop_text(self):
        return "host not reading: %d replies (%d bytes) dropped" % (self._drops[0],
                                                                     self._drops[1])

    def snapshot(self):
        """Every user-visible setting (for tests: a rejected command must not change it)."""
        return {
            "output": self.output, "duty": self.duty, "freq": self.freq,
            "duty_lim": self.duty_lim, "ovp_level": self.ovp_level, "wdog_s": self.wdog_s,
            "trip": self.trip, "cal": (self.cal_gain, self.cal_offset),
            "period_us": self.period_us, "running": self.running, "mode": self.mode,
            "vref": self.vref, "pid": (self.kp, self.ki, self.kd), "cont_rate": self.cont_rate,
            "slew": self.slew, "seq": self.seq, "read_index": self.ring.read_index,
        }

    # ---------------------------------------------------------------- input ----------------

    def feed(self, data):
        """Process raw serial bytes; return the concatenated responses (b"" if none)."""
        out = bytearray()
        i = 0
        n = len(data)
        while i < n:
            j = data.find(b"\n", i)
            end = n if j < 0 else j
            if end > i:
                self._accumulate(data[i:end])
            if j < 0:
                break
            response = self._end_of_line()
            if response:
                out.extend(response)
            i = j + 1
        return bytes(out)

    def _accumulate(self, chunk):
        if self._word_state < 2:
            self._word_state, self._word_last = scpi.scan_first_word(
                chunk, self._word_state, self._word_last)
        if self._overlong:
            return
        room = self.cfg.LINE_MAX + 1 - len(self._inbuf)  # +1: room for a CR before the LF
        if len(chunk) <= room:
            self._inbuf.extend(chunk)
        else:
            self._inbuf.extend(chunk[:room])
            self._overlong = True

    def _end_of_line(self):
        line = bytes(self._inbuf)
        overlong = self._overlong
        is_query = self._word_last == 0x3F  # the first word of the whole line
        self._inbuf = bytearray()
        self._overlong = False
        self._word_state = 0
        self._word_last = -1
        while line.endswith(b"\r"):
            line = line[:-1]
        if overlong or len(line) > self.cfg.LINE_MAX:
            self.errors.push(scpi.INPUT_BUFFER_OVERRUN,
                             "line longer than %d bytes discarded" % self.cfg.LINE_MAX)
            return b"\n" if is_query else None
        return self.handle_line(line)

    def handle_line(self, line):
        """Execute one command line (bytes, no terminator); return the response or None.

        Queries (first word ending in '?') always return exactly one response: the value line,
        a block, or an empty line (b"\\n") if the query failed. Set commands return None.
        Errors go to the error queue. A command that succeeds feeds the host watchdog.
        """
        if not line.strip():
            return None
        is_query = scpi.line_is_query(line)
        try:
            result = self._execute(line)
        except ScpiError as exc:
            self.errors.push(exc.code, exc.detail)
            return b"\n" if is_query else None
        except Exception as exc:  # a firmware bug: report it, fail safe, keep serving
            self._internal_error(exc)
            return b"\n" if is_query else None
        self._last_valid_ms = self.hal.ticks_ms()
        if not is_query:
            return None
        if isinstance(result, str):
            result = result.encode()
        return result + b"\n"

    def _execute(self, line):
        for b in line:
            if (b < 0x20 and b != 0x09) or b > 0x7E:
                raise ScpiError(scpi.INVALID_CHARACTER, "byte 0x%02x" % b)
        text = line.decode()
        if ";" in text:
            raise ScpiError(scpi.COMMAND_ERROR, "compound commands (;) are not supported")
        header, tokens = scpi.split_line(text)
        nodes, is_query = scpi.parse_header(header)
        cmd = scpi.find_command(self.table, nodes, is_query)
        values = cmd.parse_args(is_query, tokens)
        handler = getattr(self, cmd.query if is_query else cmd.setter)
        return handler(values)

    def _internal_error(self, exc):
        self.errors.push(scpi.DEVICE_SPECIFIC_ERROR,
                         "internal %s: %s" % (type(exc).__name__, str(exc)[:60]))
        self.output = False
        self.pid = None
        try:
            self._apply_pwm()
        except Exception:
            self.hal.gate_off()

    # ---------------------------------------------------------------- periodic work --------

    def protect(self):
        """The protections, run by the timer IRQ every PROTECT_PERIOD_US.

        Hard-IRQ safe: small ints and attribute stores only (no allocation, no floats). The
        over-voltage check compares the raw ADC code with a limit derived from the level and
        the uncalibrated divider, so no calibration can blind it, and a reading at or near
        full scale (OVP_FULL_SCALE_CODE) is an over-voltage whatever the level.
        """
        hal = self.hal
        try:
            code = hal.adc_read("vout")
            if code >= self._ovp_code:
                self._ovp_count += 1
                if self._ovp_count >= self.cfg.OVP_CONSECUTIVE:
                    self._trip_code = code
                    self._trip_irq("OVP")
            else:
                self._ovp_count = 0
            if self.output and self._wdog_ms > 0:
                if hal.ticks_diff(hal.ticks_ms(), self._last_valid_ms) >= self._wdog_ms:
                    self._trip_irq("WDOG")
        except Exception:  # a HAL fault: fail safe; poll() queues the error
            self.output = False
            self._irq_fault = True
            hal.gate_off()

    def _ovp_code_for(self, level):
        """Raw V_out code at which ``level`` [V] trips: the first code above it through the
        uncalibrated divider, and never above OVP_FULL_SCALE_CODE."""
        cfg = self.cfg
        code = int(level / cfg.VOUT_DIVIDER / cfg.ADC_VREF * cfg.ADC_FULL_SCALE) + 1
        return code if code < cfg.OVP_FULL_SCALE_CODE else cfg.OVP_FULL_SCALE_CODE

    def poll(self, now_us=None):
        """Trip reports and the PID step; call it about every millisecond."""
        try:
            self._poll(self.hal.ticks_us() if now_us is None else now_us)
        except Exception as exc:  # a firmware bug or a HAL fault: fail safe, keep serving
            self._internal_error(exc)

    def _poll(self, now):
        self.ring.sync()
        if self._trip_new:
            self._report_trip()
        if self._irq_fault:
            self._irq_fault = False
            self._internal_error(RuntimeError("protection IRQ failed; output off"))
        # On-board closed loop.
        if self.output and self.pid is not None and now >= self._next_ctrl_us:
            period = int(1e6 / self.cont_rate + 0.5)
            v = self._vout(self.cfg.CONT_AVG)
            duty = self.pid.update(self.vref, v)
            if not scpi.isfinite(duty) or duty < 0:
                duty = 0.0
            if duty > self.duty_lim:
                duty = self.duty_lim
            self.duty = duty
            self._apply_pwm()
            self._next_ctrl_us += period
            if self._next_ctrl_us <= now:
                self._next_ctrl_us = now + period

    def wait_us(self, limit_us):
        """How long [us] the serve loop may wait for input: ``limit_us``, or less when the
        on-board PID's next step is due sooner (0: due now), so each step runs when it is due
        and the loop keeps any CONT:RATE up to CONT_RATE_MAX, not only whole poll periods."""
        if self.output and self.pid is not None:
            left = self.hal.ticks_diff(self._next_ctrl_us, self.hal.ticks_us())
            if left < limit_us:
                return left if left > 0 else 0
        return limit_us

    # ---------------------------------------------------------------- measurements ---------

    def _avg_code(self, channel, n):
        return self.hal.adc_sum(channel, n) / n

    def _vout(self, n):
        cfg = self.cfg
        return acq.code_to_volts(self._avg_code("vout", n), cfg.ADC_VREF, cfg.ADC_FULL_SCALE,
                                 cfg.VOUT_DIVIDER, self.cal_gain, self.cal_offset)

    # ---------------------------------------------------------------- PID ------------------

    def _get_pid_class(self):
        if self._pid_class is None:
            try:
                import sys
                if sys.implementation.name == "micropython":
                    from pid import PID  # boostsim/pid.py, flashed next to the firmware
                else:
                    from boostsim.pid import PID
            except ImportError:
                raise ScpiError(scpi.EXECUTION_ERROR, "pid.py is not installed")
            self._pid_class = PID
        return self._pid_class

    def _make_pid(self, kp, ki, kd, rate, slew, lim, duty=None):
        """A new PID with these settings, bumpless from ``duty`` if given (else from zero)."""
        if lim <= 0:
            raise ScpiError(scpi.SETTINGS_CONFLICT, "PID needs a duty limit > 0")
        cls = self._get_pid_class()
        try:
            pid = cls(kp, ki, kd, 1.0 / rate, 0.0, lim,
                      setpoint_rate=(slew if slew > 0 else None))
            if duty is not None:
                pid.reset(output=duty, measurement=self._vout(self.cfg.CONT_AVG))
        except ValueError as exc:
            raise ScpiError(scpi.SETTINGS_CONFLICT, "PID: %s" % str(exc)[:60])
        return pid

    def _retune(self, kp, ki, kd, rate, slew, lim):
        """Validate new loop settings; rebuild the running PID bumplessly. Raises, no change."""
        if self.pid is not None:
            self.pid = self._make_pid(kp, ki, kd, rate, slew, lim, min(self.duty, lim))

    # ---------------------------------------------------------------- handlers -------------
    # Set handlers return None, query handlers a str (one line) or bytes (a block). Every
    # check happens before the first change, so a refused command changes nothing.

    def s_nop(self, args):
        return None

    def q_idn(self, args):
        cfg = self.cfg
        return "%s,%s,%s,%s" % (cfg.MAKER, cfg.MODEL, self.hal.serial_number(), cfg.FW_VERSION)

    def s_rst(self, args):
        self._reset_settings()

    def s_cls(self, args):
        self.errors.clear()

    def q_opc(self, args):
        return "1"

    def q_tst(self, args):
        return "0"

    def q_err(self, args):
        code, detail = self.errors.pop()
        return scpi.format_error(code, detail)

    def q_err_count(self, args):
        return "%d" % len(self.errors)

    def q_version(self, args):
        return "1999.0"

    def s_wdog(self, args):
        self.wdog_s = args[0]
        self._wdog_ms = int(args[0] * 1000 + 0.5)

    def q_wdog(self, args):
        return scpi.fmt_num(self.wdog_s)

    def s_output(self, args):
        on = args[0]
        if on:
            if self.trip is not None:
                raise ScpiError(scpi.SETTINGS_CONFLICT, "tripped: %s" % self.trip)
            if self.output:
                return
            if self.mode == "PID":
                self.pid = self._make_pid(self.kp, self.ki, self.kd, self.cont_rate,
                                          self.slew, self.duty_lim)
                self.duty = 0.0
                self._next_ctrl_us = self.hal.ticks_us()
            self.output = True
        else:
            self.output = False
            self.pid = None
        self._apply_pwm()

    def q_output(self, args):
        return "1" if self.output else "0"

    def s_freq(self, args):
        self.freq = args[0]
        self._apply_pwm()

    def q_freq(self, args):
        return scpi.fmt_num(self.freq)

    def s_duty(self, args):
        duty = args[0]
        if self.mode == "PID":
            raise ScpiError(scpi.SETTINGS_CONFLICT, "CONT:MODE PID sets the duty")
        if duty > self.duty_lim:
            raise ScpiError(scpi.DATA_OUT_OF_RANGE, "duty %s above limit %s"
                            % scpi.fmt_apart(duty, self.duty_lim))
        self.duty = duty
        self._apply_pwm()

    def q_duty(self, args):
        return scpi.fmt_num(self.duty)

    def s_duty_lim(self, args):
        lim = args[0]
        if self.mode == "OPEN":
            if self.duty > lim:
                raise ScpiError(scpi.SETTINGS_CONFLICT, "duty %s above new limit %s"
                                % scpi.fmt_apart(self.duty, lim))
        else:
            self._retune(self.kp, self.ki, self.kd, self.cont_rate, self.slew, lim)
            if self.duty > lim:
                self.duty = lim
        self.duty_lim = lim
        self._apply_pwm()

    def q_duty_lim(self, args):
        return scpi.fmt_num(self.duty_lim)

    def q_meas_vout(self, args):
        return scpi.fmt_num(self._vout(self.cfg.MEAS_AVG))

    def q_meas_raw(self, args):
        return "%d" % self.hal.adc_read("vout")

    def q_meas_vin(self, args):
        cfg = self.cfg
        if cfg.VIN_ADC_PIN is None:
            raise ScpiError(scpi.HARDWARE_MISSING, "input voltage not wired (VIN_ADC_PIN)")
        code = self._avg_code("vin", cfg.MEAS_AVG)
        return scpi.fmt_num(acq.code_to_volts(code, cfg.ADC_VREF, cfg.ADC_FULL_SCALE,
                                              cfg.VIN_DIVIDER))

    def q_meas_curr(self, args):
        cfg = self.cfg
        if cfg.IIN_ADC_PIN is None:
            raise ScpiError(scpi.HARDWARE_MISSING, "current sense not wired (IIN_ADC_PIN)")
        v_pin = acq.code_to_volts(self._avg_code("iin", cfg.MEAS_AVG), cfg.ADC_VREF,
                                  cfg.ADC_FULL_SCALE, 1.0)
        return scpi.fmt_num((v_pin - cfg.IIN_OFFSET_V) / cfg.IIN_V_PER_A)

    def _check_protection(self, gain, offset, level):
        """Refuse (-222) a calibration / OVP level pair that would hide the trip from the user.

        The trip itself compares raw codes (the uncalibrated divider), so no calibration moves
        it; but a reading that saturates below the level (gain * full scale + offset <= level:
        the level is unreadable) or a calibration by which the board's own trip point reads
        above OVP_MAX (the trip would let the output beyond the board's rating) is a mistyped
        reference or a wrong divider, not a calibration.
        """
        cfg = self.cfg
        volts = cfg.ADC_VREF / cfg.ADC_FULL_SCALE * cfg.VOUT_DIVIDER
        top = gain * cfg.ADC_MAX_CODE * volts + offset
        if top <= level:
            raise ScpiError(scpi.DATA_OUT_OF_RANGE, "CAL:VOUT %s,%s reads at most %s V (ADC "
                            "full scale): the OVP level %s V would be unreadable"
                            % (scpi.fmt_num(gain), scpi.fmt_num(offset),
                               scpi.fmt_num(top), scpi.fmt_num(level)))
        trip = gain * level + offset
        if trip > cfg.OVP_MAX:
            raise ScpiError(scpi.DATA_OUT_OF_RANGE, "with CAL:VOUT %s,%s the OVP trip at %s V "
                            "(uncalibrated divider) reads %s V, above OVP_MAX %s V"
                            % ((scpi.fmt_num(gain), scpi.fmt_num(offset), scpi.fmt_num(level))
                               + scpi.fmt_apart(trip, cfg.OVP_MAX)))

    def s_cal(self, args):
        self._check_protection(args[0], args[1], self.ovp_level)
        self.cal_gain = args[0]
        self.cal_offset = args[1]

    def q_cal(self, args):
        return "%s,%s" % (scpi.fmt_num(self.cal_gain), scpi.fmt_num(self.cal_offset))

    def s_adc_rate(self, args):
        if self.running:
            raise ScpiError(scpi.SETTINGS_CONFLICT, "acquisition running (ABOR first)")
        self.period_us = int(1e6 / args[0] + 0.5)

    def q_adc_rate(self, args):
        return scpi.fmt_num(1e6 / self.period_us)

    def s_init(self, args):
        if self.running:
            raise ScpiError(scpi.INIT_IGNORED, "acquisition already running")
        self.ring.reset()
        self.t0_us = self.hal.adc_stream_start(self.period_us, self.ring)
        self.running = True
        self.acquired = True

    def s_abort(self, args):
        self._stop_acq()

    def q_fetch(self, args):
        count = args[0] if args else self.cfg.FETCH_MAX
        first, codes, overflow = self.ring.read(count)
        flags = 0
        if overflow:
            flags |= acq.FLAG_OVERFLOW
        if self.trip == "OVP":
            flags |= acq.FLAG_OVP
        if self.trip == "WDOG":
            flags |= acq.FLAG_WDOG
        if self.running:
            flags |= acq.FLAG_RUNNING
        t_first = self.t0_us + first * self.period_us if self.acquired else 0
        payload = acq.pack_payload(self.seq, first, t_first, self.period_us, flags, codes)
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return scpi.encode_block(payload)

    def s_ovp(self, args):
        level = args[0]
        self._check_protection(self.cal_gain, self.cal_offset, level)
        self.ovp_level = level
        self._ovp_count = 0
        self._ovp_code = self._ovp_code_for(level)

    def q_ovp(self, args):
        return scpi.fmt_num(self.ovp_level)

    def q_trip(self, args):
        return self.trip if self.trip is not None else "NONE"

    def s_prot_clear(self, args):
        if self.trip == "OVP":
            code = self._avg_code("vout", self.cfg.MEAS_AVG)
            if code >= self._ovp_code:
                cfg = self.cfg
                v = acq.code_to_volts(code, cfg.ADC_VREF, cfg.ADC_FULL_SCALE, cfg.VOUT_DIVIDER)
                raise ScpiError(scpi.SETTINGS_CONFLICT, "over-voltage still present (%s V > %s V, "
                                "uncalibrated divider)" % scpi.fmt_apart(v, self.ovp_level))
        state = self.hal.irq_disable()
        self.trip = None
        self._trip_new = False
        self._ovp_count = 0
        self.hal.irq_enable(state)

    def s_cont_mode(self, args):
        mode = args[0]
        if mode == self.mode:
            return
        if mode == "PID":
            if self.output:
                self.pid = self._make_pid(self.kp, self.ki, self.kd, self.cont_rate, self.slew,
                                          self.duty_lim, self.duty)
                self._next_ctrl_us = self.hal.ticks_us()
            self.mode = "PID"
        else:
            self.mode = "OPEN"  # the duty stays where the loop left it
            self.pid = None

    def q_cont_mode(self, args):
        return self.mode

    def s_cont_vref(self, args):
        self.vref = args[0]

    def q_cont_vref(self, args):
        return scpi.fmt_num(self.vref)

    def s_cont_pid(self, args):
        kp, ki, kd = args
        self._retune(kp, ki, kd, self.cont_rate, self.slew, self.duty_lim)
        self.kp = kp
        self.ki = ki
        self.kd = kd

    def q_cont_pid(self, args):
        return "%s,%s,%s" % (scpi.fmt_num(self.kp), scpi.fmt_num(self.ki), scpi.fmt_num(self.kd))

    def s_cont_rate(self, args):
        self._retune(self.kp, self.ki, self.kd, args[0], self.slew, self.duty_lim)
        self.cont_rate = args[0]

    def q_cont_rate(self, args):
        return scpi.fmt_num(self.cont_rate)

    def s_cont_slew(self, args):
        self._retune(self.kp, self.ki, self.kd, self.cont_rate, args[0], self.duty_lim)
        self.slew = args[0]

    def q_cont_slew(self, args):
        return scpi.fmt_num(self.slew)


def serve(dev, hal, should_stop=None):
    """The serve loop: serial bytes in, responses out, ``dev.poll()`` in between.

    Runs until ``should_stop()`` returns True (forever on the board). Responses wait in a
    queue and go out as the host takes them (``hal.serial_write`` never waits); a host that
    does not read loses them instead of holding the loop: a reply not taken for TX_STALL_MS,
    or one that finds TX_QUEUE_MAX bytes already waiting, is dropped whole and reported as
    -410 Query INTERRUPTED. The protections do not depend on this loop at all (timer IRQ).
    """
    cfg = dev.cfg
    chunk = cfg.WRITE_CHUNK
    burst = cfg.WRITE_BURST
    poll_us = cfg.POLL_MS * 1000
    pending = []          # replies (bytes) not yet handed over, oldest first
    queued = 0            # their total size
    sent = 0              # bytes of pending[0] already handed over
    last_progress = hal.ticks_ms()
    blocked = False       # the host took nothing at the last try
    while should_stop is None or not should_stop():
        data = hal.serial_read(dev.wait_us(poll_us) if blocked or not pending else 0)
        if data:
            out = dev.feed(data)
            if out:
                if queued + len(out) > cfg.TX_QUEUE_MAX:
                    dev.reply_dropped(len(out))
                else:
                    if not pending:
                        last_progress = hal.ticks_ms()
                    pending.append(out)
                    queued += len(out)
        for _ in range(burst):  # pieces while the CDC takes them, at most its buffer's worth
            if not pending:
                break
            head = pending[0]
            n = hal.serial_write(head[sent:sent + chunk])
            blocked = n <= 0
            if blocked:
                if hal.ticks_diff(hal.ticks_ms(), last_progress) >= cfg.TX_STALL_MS:
                    # The host stopped reading: drop what waits (a reply cut short is
                    # dropped too; the host resynchronises on its timeout).
                    for reply in pending:
                        dev.reply_dropped(len(reply))
                    dev.report_dropped()
                    pending = []
                    queued = 0
                    sent = 0
                break
            last_progress = hal.ticks_ms()
            dev.report_dropped()
            sent += n
            if sent >= len(head):
                pending.pop(0)
                queued -= len(head)
                sent = 0
        dev.poll()
        hal.service()
