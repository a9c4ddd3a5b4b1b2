"""Board configuration: pins, analogue front end, limits, defaults and identity.

Edit this file (and re-flash it) to match the wiring of your board; everything else reads it.
MicroPython-compatible: plain constants only. The host imports the same file
(``from firmware_bridge.firmware import config``) for ranges and conversions.
"""

# --- identity (``*IDN?``: maker, model, serial number from machine.unique_id, version) -------
MAKER = "boostsim"
MODEL = "PicoBoost"
FW_VERSION = "0.1.0"

# --- PWM (gate drive of the boost MOSFET) ----------------------------------------------------
PWM_PIN = 16                 # GP16 -> gate driver input (low = MOSFET off)
PWM_FREQ_DEFAULT = 100000.0  # Hz; 125 MHz / 100 kHz = 1250 duty steps
PWM_FREQ_MIN = 1000.0        # Hz
PWM_FREQ_MAX = 500000.0      # Hz (250 duty steps at 125 MHz)
DUTY_HARD_MAX = 0.85         # compiled-in ceiling: SOUR:PWM:DUTY:LIM can never exceed it
DUTY_LIMIT_DEFAULT = 0.75    # power-up value of SOUR:PWM:DUTY:LIM

# --- ADC (RP2040: 12-bit SAR, read_u16() >> 4) ------------------------------------------------
ADC_VREF = 3.3               # V, ADC reference (the Pico's 3V3 rail via its filter)
ADC_FULL_SCALE = 4096        # codes per ADC_VREF (12 bits)
ADC_MAX_CODE = 4095

# Output voltage: ADC0 (GP26) through R_top = 100 k, R_bottom = 15 k (full scale 25.3 V).
VOUT_ADC_PIN = 26
VOUT_DIVIDER = (100e3 + 15e3) / 15e3    # V_out / V_pin
# Input voltage: ADC1 (GP27) through 10 k / 10 k (full scale 6.6 V). None: not wired.
VIN_ADC_PIN = 27
VIN_DIVIDER = (10e3 + 10e3) / 10e3
# Inductor (input) current: shunt + amplifier on ADC2 (GP28). None: not wired (the default).
IIN_ADC_PIN = None
IIN_V_PER_A = 1.0            # V at the ADC pin per A (e.g. 50 mohm shunt x 20 gain)
IIN_OFFSET_V = 0.0           # V at the ADC pin at 0 A

MEAS_AVG = 16                # ADC conversions averaged by MEAS:VOLT? / :IN? / MEAS:CURR?

# --- calibration of V_out: v = gain * v_divider + offset (CAL:VOUT; RAM only) ----------------
CAL_VOUT_GAIN = 1.0
CAL_VOUT_OFFSET = 0.0
CAL_GAIN_MIN = 0.8           # a plausible divider + ADC error is a few %: wider is a typo
CAL_GAIN_MAX = 1.25
CAL_OFFSET_MAX = 1.0         # V, |offset| limit (4 % of the divider's full scale)

# --- protection ---------------------------------------------------------------------------------
OVP_DEFAULT = 15.0           # V, power-up over-voltage trip level
OVP_MAX = 24.0               # V, highest settable level (below the divider's 25.3 V full scale)
OVP_CONSECUTIVE = 2          # protection ticks above the level before tripping (rejects
                             # single-code noise)
OVP_FULL_SCALE_CODE = 4032   # raw V_out ADC code at or above which the output counts as
                             # over-voltage whatever the level (a saturated reading)
PROTECT_PERIOD_US = 1000     # us, period of the protection timer IRQ (OVP, host watchdog)
WDOG_DEFAULT = 0.0           # s, host watchdog at power-up (0 = disabled)
WDOG_MAX = 3600.0            # s
HW_WDT_MS = 2000             # ms, RP2040 hardware watchdog fed by the serve loop (0 = off;
                             # <= 8388). Once started it cannot be stopped: see SAFE_PIN.
SAFE_PIN = 22                # GP22 pulled to GND at boot: skip the firmware, stay in the REPL
                             # (for re-flashing). None: no safe-mode pin.

# --- streaming acquisition (INIT / FETC:ADC?) ---------------------------------------------------
ADC_RATE_DEFAULT = 1000.0    # Hz
ADC_RATE_MIN = 1.0           # Hz
ADC_RATE_MAX = 20000.0       # Hz (hard timer IRQ; the period is rounded to whole microseconds)
RING_SIZE = 4096             # samples held on the board (8 KiB)
FETCH_MAX = 1024             # default (and FETC:ADC? <n> maximum is RING_SIZE) samples per block

# --- on-board closed loop (CONT:*, uses pid.py = boostsim/pid.py) -------------------------------
CONT_RATE_DEFAULT = 500.0    # Hz
CONT_RATE_MIN = 1.0
CONT_RATE_MAX = 2000.0
CONT_AVG = 4                 # ADC conversions averaged per control step
CONT_VREF_DEFAULT = 12.0     # V, PID setpoint at power-up / *RST
PID_KP_DEFAULT = 0.005       # duty per volt
PID_KI_DEFAULT = 2.0         # duty per volt-second
PID_KD_DEFAULT = 0.0         # duty-seconds per volt
PID_GAIN_MAX = 1000.0
CONT_SLEW_MAX = 1.0e6        # V/s (CONT:SLEW 0 = setpoint steps)

# --- serial line handling -----------------------------------------------------------------------
LINE_MAX = 256               # bytes per command line (without CR LF); longer lines: -363
ERR_QUEUE_LEN = 16           # error queue entries (-350 marks lost errors; trips never lost)
POLL_MS = 1                  # serve loop: wait at most this long for input between polls
WRITE_CHUNK = 64             # serve loop: bytes handed to the USB CDC at a time (one packet)
WRITE_BURST = 4              # serve loop: pieces per iteration at most (4 fill the CDC's 256 B)
TX_STALL_MS = 100            # a reply the host has not taken for this long is dropped (-410)
TX_QUEUE_MAX = 16384         # bytes of replies waiting for the host; beyond, replies are dropped
