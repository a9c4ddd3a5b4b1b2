"""``boostsim bench ports|sweep|step|live|calibrate|identify``: experiments on the bench board
(or its emulator), each beside the same simulation; one module per action, what they share in
:mod:`.session`. With ``emulate`` and ``firmware`` the only CLI modules that import
``firmware_bridge``.
"""

from __future__ import annotations

import argparse

from ..args import _Formatter, _Parser
from . import calibrate, identify, live, ports, step, sweep
from .session import BenchParents, board_loop_controller, connection_options

__all__ = ["board_loop_controller", "register"]

_BENCH_EPILOG = """\
actions:
  ports      serial ports that look like the board (USB 2E8A:0005, MicroPython on a Pico)
  sweep      open-loop duty sweep: measured vs simulated, error per point, optional loss fit
  step       duty (or, on the emulator, load) step captured by the board's streaming ADC,
             overlaid on the simulated step from the same initial condition
  live       host-side PID loop (boostsim.pid.PID) holding --vref; live display, CSV log;
             --compare overlays the same loop simulated
  calibrate  ADC gain (one reference) or gain and offset (two) from your meter's readings
  identify   fit L, C, losses, ESR and vin to a PRBS duty excitation; write the fitted board

the board: every action but 'ports' takes
  --port PATH|URL    /dev/ttyACM0, COM3, a pyserial URL (socket://host:port, rfc2217://...),
                     the link of 'boostsim emulate --link PATH', or emu: for an emulator of the
                     --config board started inside this command; default: the one Pico found
  --max-duty D       host-side duty ceiling (refused before it is sent)
  --max-vout V       programs the board's over-voltage trip no higher than V, and turns the
                     output off when a measurement exceeds it
  --watchdog S       the board's host watchdog: output off if the host is silent for S seconds
                     (default 1; 0 leaves the board's setting)
The output is off when a command ends, fails, or is interrupted (Ctrl-C, SIGTERM); if the host
itself dies, the watchdog turns it off. A [board.calibration] table in --config (vout_gain,
vout_offset; see 'bench calibrate') is written to the board when it connects.

examples:
  boostsim bench ports
  boostsim emulate --link /tmp/board &            # an emulated board for trying things out
  boostsim bench sweep --port /tmp/board --duty 0.1:0.6:0.05 --fit r_L,v_f
  boostsim bench step --port /dev/ttyACM0 --duty 0.4:0.6 --max-vout 16
  boostsim bench step --port emu: --duty 0.5 --load-step R=24
  boostsim bench live --port emu: --vref 12 --kp 0.01 --ki 5 --slew 100 --duration 2 --compare
  boostsim bench calibrate --duty 0.3 --duty 0.6 --ref 6.771 --ref 12.02
"""


def register(sub, base: argparse.ArgumentParser, board: argparse.ArgumentParser,
             files: argparse.ArgumentParser) -> None:
    """Add the ``bench`` command and its actions to the subparsers ``sub``."""
    p = sub.add_parser("bench", formatter_class=_Formatter, help="the bench board",
                       description="Experiments on the bench board (or its emulator), each "
                                   "beside the same simulation.", epilog=_BENCH_EPILOG)
    bsub = p.add_subparsers(dest="bench_command", metavar="ACTION", parser_class=_Parser)
    p.set_defaults(func=None)

    ports.register(bsub, base, _BENCH_EPILOG)
    parents = BenchParents(base, board, files, connection_options())
    for action in (sweep, step, live, identify, calibrate):
        action.register(bsub, parents)
