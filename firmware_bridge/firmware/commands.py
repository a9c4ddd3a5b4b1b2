"""The command table of the boostsim bench board: the one definition of every SCPI command.

Each entry (``scpi.Cmd``) gives the header pattern (short/long forms, optional nodes), the
names of the ``device.Device`` methods that run the set and query forms, the parameter types
with their ranges, and the response kind. The firmware dispatches through it; the host
(``firmware_bridge.protocol``) validates and formats commands and converts responses with it;
docs/PROTOCOL.md describes it. MicroPython-compatible.
"""

try:
    from . import scpi
except ImportError:  # flat layout on the board
    import scpi

def build_table(cfg):
    """The command table for board configuration ``cfg`` (a module or object of constants)."""
    Cmd = scpi.Cmd
    Real = scpi.Real
    Int = scpi.Int
    table = (
        # IEEE 488.2 common commands.
        Cmd("*IDN", query="q_idn", resp="str",
            doc="Identity: maker,model,serial (machine.unique_id hex),firmware version."),
        Cmd("*RST", setter="s_rst",
            doc="Reset: output off, duty 0, acquisition stopped and cleared, control OPEN, "
                "frequency/rates/PID defaults. Keeps protections (OVP level, watchdog timeout, "
                "duty limit, a latched trip), calibration and the error queue."),
        Cmd("*CLS", setter="s_cls", doc="Clear the error queue."),
        Cmd("*OPC", setter="s_nop", query="q_opc", resp="int",
            doc="Operation complete: commands run to completion in order, so *OPC? returns 1."),
        Cmd("*WAI", setter="s_nop", doc="Wait to continue (no-op: commands are sequential)."),
        Cmd("*TST", query="q_tst", resp="int", doc="Self-test: 0 (no self-test is run)."),
        # System.
        Cmd("SYSTem:ERRor:[NEXT]", query="q_err", resp="error",
            doc="Oldest error of the queue, removing it: <code>,\"<message>\"; "
                "0,\"No error\" when empty."),
        Cmd("SYSTem:ERRor:COUNt", query="q_err_count", resp="int",
            doc="Number of errors in the queue."),
        Cmd("SYSTem:VERSion", query="q_version", resp="str", doc="SCPI version: 1999.0."),
        Cmd("SYSTem:WDOG:TIMeout", setter="s_wdog", query="q_wdog", resp="real",
            args=(Real("seconds", 0.0, cfg.WDOG_MAX, "s"),),
            doc="Host watchdog timeout (0 disables). While the output is on, a gap of this "
                "long without a valid command turns it off and latches a WDOG trip."),
        # Output and PWM.
        Cmd("OUTPut:[STATe]", setter="s_output", query="q_output", resp="bool",
            args=(scpi.Bool("state"),),
            doc="Gate drive on/off. ON fails with -221 while a protection trip is latched."),
        Cmd("[SOURce]:PWM:FREQuency", setter="s_freq", query="q_freq", resp="real",
            args=(Real("frequency", cfg.PWM_FREQ_MIN, cfg.PWM_FREQ_MAX, "Hz"),),
            doc="PWM switching frequency."),
        Cmd("[SOURce]:PWM:DUTY:[LEVel]", setter="s_duty", query="q_duty", resp="real",
            args=(Real("duty", 0.0, cfg.DUTY_HARD_MAX),),
            doc="Duty cycle 0..limit. Out of range, NaN or inf: -222 and nothing changes "
                "(never clamped). -221 in CONT:MODE PID (the loop owns the duty)."),
        Cmd("[SOURce]:PWM:DUTY:LIMit", setter="s_duty_lim", query="q_duty_lim", resp="real",
            args=(Real("limit", 0.0, cfg.DUTY_HARD_MAX),),
            doc="Duty ceiling, at most the compiled-in DUTY_HARD_MAX. In OPEN mode a limit "
                "below the present duty is refused with -221."),
        # Measurements and calibration.
        Cmd("MEASure:VOLTage:[DC]", query="q_meas_vout", resp="real",
            doc="Output voltage in V: MEAS_AVG conversions averaged, divider and CAL:VOUT "
                "applied."),
        Cmd("MEASure:VOLTage:RAW", query="q_meas_raw", resp="int",
            doc="One raw 12-bit ADC code of the output-voltage channel."),
        Cmd("MEASure:VOLTage:INput", query="q_meas_vin", resp="real",
            doc="Input voltage in V (-241 if VIN_ADC_PIN is None)."),
        Cmd("MEASure:CURRent:[DC]", query="q_meas_curr", resp="real",
            doc="Inductor (input) current in A (-241 if IIN_ADC_PIN is None)."),
        Cmd("CALibration:VOUT", setter="s_cal", query="q_cal", resp="reals",
            args=(Real("gain", cfg.CAL_GAIN_MIN, cfg.CAL_GAIN_MAX),
                  Real("offset", -cfg.CAL_OFFSET_MAX, cfg.CAL_OFFSET_MAX, "V")),
            doc="Output-voltage calibration v = gain * v_divider + offset (RAM only)."),
        # Streaming acquisition.
        Cmd("[SENSe]:ADC:RATE", setter="s_adc_rate", query="q_adc_rate", resp="real",
            args=(Real("rate", cfg.ADC_RATE_MIN, cfg.ADC_RATE_MAX, "Hz"),),
            doc="Sample rate of the streaming acquisition; the period is rounded to whole "
                "microseconds and the query returns the effective rate. -221 while running."),
        Cmd("INITiate:[IMMediate]", setter="s_init",
            doc="Start streaming the output-voltage ADC channel into the ring buffer (sample "
                "index restarts at 0, buffer cleared). -213 if already running."),
        Cmd("ABORt", setter="s_abort",
            doc="Stop the acquisition; samples still in the buffer can be fetched."),
        Cmd("FETCh:ADC", query="q_fetch", resp="block",
            qargs=(Int("count", 1, cfg.RING_SIZE, optional=True),),
            doc="Oldest unread samples (at most <count>, default FETCH_MAX) as a definite-"
                "length block: fixed header + little-endian uint16 codes (see acq.py)."),
        # Protection.
        Cmd("PROTection:OVP:LEVel", setter="s_ovp", query="q_ovp", resp="real",
            args=(Real("level", 0.0, cfg.OVP_MAX, "V"),),
            doc="Over-voltage trip level: above it the output turns off and OVP latches."),
        Cmd("PROTection:TRIP", query="q_trip", resp="str",
            doc="Latched trip: NONE, OVP or WDOG."),
        Cmd("PROTection:CLEar", setter="s_prot_clear",
            doc="Clear a latched trip (the output stays off). -221 if the over-voltage is "
                "still present."),
        # On-board closed loop (pid.py).
        Cmd("CONTrol:MODE", setter="s_cont_mode", query="q_cont_mode", resp="str",
            args=(scpi.Choice("mode", ("OPEN", "PID")),),
            doc="OPEN: duty set by SOUR:PWM:DUTY. PID: the board regulates V_out to "
                "CONT:VREF while the output is on."),
        Cmd("CONTrol:VREF", setter="s_cont_vref", query="q_cont_vref", resp="real",
            args=(Real("vref", 0.0, cfg.OVP_MAX, "V"),), doc="PID setpoint in V."),
        Cmd("CONTrol:PID", setter="s_cont_pid", query="q_cont_pid", resp="reals",
            args=(Real("kp", 0.0, cfg.PID_GAIN_MAX), Real("ki", 0.0, cfg.PID_GAIN_MAX),
                  Real("kd", 0.0, cfg.PID_GAIN_MAX)),
            doc="PID gains: kp [duty/V], ki [duty/(V s)], kd [duty s/V]."),
        Cmd("CONTrol:RATE", setter="s_cont_rate", query="q_cont_rate", resp="real",
            args=(Real("rate", cfg.CONT_RATE_MIN, cfg.CONT_RATE_MAX, "Hz"),),
            doc="PID update rate (ts = 1/rate)."),
        Cmd("CONTrol:SLEW", setter="s_cont_slew", query="q_cont_slew", resp="real",
            args=(Real("slew", 0.0, cfg.CONT_SLEW_MAX, "V/s"),),
            doc="Setpoint slew limit for a soft start in V/s (0 = steps)."),
    )
    return table
