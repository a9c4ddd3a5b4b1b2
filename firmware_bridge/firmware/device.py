"""Hardware-independent firmware logic: line framing, dispatch, state machine, protections.

``Device(hal, cfg)`` runs unchanged on the Pico (hal.PicoHAL), in the tests and in the
emulator (a simulated HAL); everything time- or hardware-related goes through the HAL object.

Driving it (the serve loop, the tests and the emulator all do the same):

* ``dev.feed(data) -> bytes``: raw bytes from the serial port in (any chunking, LF or CR LF
  terminated lines), response bytes out (b"" if none).
* ``dev.handle_line(line) -> bytes | None``: one line without its terminator.
* ``dev.poll(now_us=None)``: periodic work -- OVP check, host watchdog, PID step. Call it
  often (the serve loop: about every millisecond).
* ``serve(dev, hal, should_stop=None)``: the serve loop itself, over the HAL's serial calls.

The HAL interface (hal.PicoHAL is the real one; tests/fake_hal.py a simulated one)::

    ticks_us() -> int                 monotonic microseconds, never wraps
    serial_number() -> str            e.g. the hex of machine.unique_id()
    pwm_set(enabled, freq_hz, duty)   enabled False: gate held low whatever duty says
    adc_read(channel) -> int          one 12-bit conversion; channel "vout", "vin" or "iin"
    adc_stream_start(period_us, ring) -> t0_us
                                      push one "vout" code per period into ring (an
                                      acq.SampleRing) until adc_stream_stop(); returns the board
                                      time of sample index 0
    adc_stream_stop()
    serial_read(timeout_ms) -> bytes  (serve() only) wait up to timeout_ms for input
    serial_write(data)                (serve() only)
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


def _last_non_space(chunk):
    k = len(chunk) - 1
    while k >= 0:
        b = chunk[k]
        if b != 0x20 and b != 0x09 and b != 0x0D:
            return b
        k -= 1
    return -1


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
        self._last_char = -1
        # Protections and calibration: kept by *RST.
        self.duty_lim = float(cfg.DUTY_LIMIT_DEFAULT)
        self.ovp_level = float(cfg.OVP_DEFAULT)
        self.wdog_s = float(cfg.WDOG_DEFAULT)
        self.trip = None
        self.cal_gain = float(cfg.CAL_VOUT_GAIN)
        self.cal_offset = float(cfg.CAL_VOUT_OFFSET)
        self.seq = 0
        self.running = False
        self._ovp_count = 0
        self._last_valid_us = hal.ticks_us()
        self._next_ctrl_us = 0
        self._reset_settings()

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
        self.hal.pwm_set(self.output, self.freq, self.duty if self.output else 0.0)

    def _stop_acq(self):
        if self.running:
            self.hal.adc_stream_stop()
            self.running = False

    def _trip(self, cause):
        if self.trip is None:
            self.trip = cause
        self.output = False
        self.duty = 0.0
        self.pid = None
        self._apply_pwm()

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
        last = _last_non_space(chunk)
        if last >= 0:
            self._last_char = last
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
        last = self._last_char
        self._inbuf = bytearray()
        self._overlong = False
        self._last_char = -1
        while line.endswith(b"\r"):
            line = line[:-1]
        if overlong or len(line) > self.cfg.LINE_MAX:
            self.errors.push(scpi.INPUT_BUFFER_OVERRUN,
                             "line longer than %d bytes discarded" % self.cfg.LINE_MAX)
            head = line.lstrip(b" \t")
            if b" " in head or b"\t" in head:
                is_query = scpi.line_is_query(head)
            else:  # the header itself is longer than the kept prefix
                is_query = last == 0x3F
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
        self._last_valid_us = self.hal.ticks_us()
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
            pass

    # ---------------------------------------------------------------- periodic work --------

    def poll(self, now_us=None):
        """OVP check, host watchdog and PID step; call it about every millisecond."""
        try:
            self._poll(self.hal.ticks_us() if now_us is None else now_us)
        except Exception as exc:  # a firmware bug or a HAL fault: fail safe, keep serving
            self._internal_error(exc)

    def _poll(self, now):
        self.ring.sync()
        # Over-voltage (always checked, also with the output off: the trip latches).
        if self._vout(1) > self.ovp_level:
            self._ovp_count += 1
            if self._ovp_count >= self.cfg.OVP_CONSECUTIVE:
                self._trip("OVP")
        else:
            self._ovp_count = 0
        # Host watchdog: only while the output is on.
        if self.output and self.wdog_s > 0:
            if now - self._last_valid_us >= int(self.wdog_s * 1e6 + 0.5):
                self._trip("WDOG")
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

    # ---------------------------------------------------------------- measurements ---------

    def _avg_code(self, channel, n):
        total = 0
        for _ in range(n):
            total += self.hal.adc_read(channel)
        return total / n

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
                            % (scpi.fmt_num(duty), scpi.fmt_num(self.duty_lim)))
        self.duty = duty
        self._apply_pwm()

    def q_duty(self, args):
        return scpi.fmt_num(self.duty)

    def s_duty_lim(self, args):
        lim = args[0]
        if self.mode == "OPEN":
            if self.duty > lim:
                raise ScpiError(scpi.SETTINGS_CONFLICT, "duty %s above new limit %s"
                                % (scpi.fmt_num(self.duty), scpi.fmt_num(lim)))
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

    def s_cal(self, args):
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
        self.ovp_level = args[0]

    def q_ovp(self, args):
        return scpi.fmt_num(self.ovp_level)

    def q_trip(self, args):
        return self.trip if self.trip is not None else "NONE"

    def s_prot_clear(self, args):
        if self.trip == "OVP":
            v = self._vout(self.cfg.MEAS_AVG)
            if v > self.ovp_level:
                raise ScpiError(scpi.SETTINGS_CONFLICT, "over-voltage still present (%s V > %s V)"
                                % (scpi.fmt_num(v), scpi.fmt_num(self.ovp_level)))
        self.trip = None
        self._ovp_count = 0

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

    Runs until ``should_stop()`` returns True (forever on the board). Responses are written in
    chunks of cfg.WRITE_CHUNK bytes with a poll between chunks, so a host that reads a long
    block slowly does not hold off the protections.
    """
    cfg = dev.cfg
    chunk = cfg.WRITE_CHUNK
    while should_stop is None or not should_stop():
        data = hal.serial_read(cfg.POLL_MS)
        if data:
            out = dev.feed(data)
            i = 0
            while i < len(out):
                hal.serial_write(out[i:i + chunk])
                i += chunk
                dev.poll()
                hal.service()
        dev.poll()
        hal.service()
