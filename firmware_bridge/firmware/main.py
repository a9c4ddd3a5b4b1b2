"""Board entry point (runs at power-up): gate off, build the HAL and the device, serve.

Flash next to it: config.py, scpi.py, commands.py, acq.py, device.py, hal.py and pid.py (a
copy of boostsim/pid.py). See docs/FIRMWARE.md.
"""

import config
import machine

# First thing at boot: the MOSFET gate is a plain output driven low.
machine.Pin(config.PWM_PIN, machine.Pin.OUT, value=0)


def _safe_mode():
    """SAFE_PIN jumpered to GND at boot: do not start the firmware (stay in the REPL)."""
    if config.SAFE_PIN is None:
        return False
    return machine.Pin(config.SAFE_PIN, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0


def main():
    if _safe_mode():
        return
    import device
    import hal
    import micropython

    micropython.alloc_emergency_exception_buf(128)
    board = hal.PicoHAL(config)
    dev = device.Device(board, config)
    micropython.kbd_intr(-1)  # Ctrl-C (0x03) is just a byte while serving
    try:
        board.start_hw_watchdog()
        device.serve(dev, board)
    finally:
        board.shutdown()
        micropython.kbd_intr(3)


main()
