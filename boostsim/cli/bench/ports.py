"""``boostsim bench ports``: the serial ports that look like the board.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..args import _Formatter
from ..context import Context


def register(bsub, base: argparse.ArgumentParser, overview: str) -> None:
    """Add ``bench ports`` to the bench subparsers ``bsub`` (the shared options ``base``;
    its epilog is the bench overview ``overview``)."""
    q = bsub.add_parser("ports", parents=[base], formatter_class=_Formatter,
                        help="list serial ports that look like the board",
                        description="Serial ports of the board (USB VID:PID 2E8A:0005).",
                        epilog=overview)
    q.add_argument("--all", action="store_true", help="also list the other serial ports")
    q.set_defaults(func=cmd_bench_ports)


def cmd_bench_ports(ctx: Context) -> int:
    from serial.tools import list_ports

    from firmware_bridge.board import PICO_VID_PID, find_ports

    vid, pid = PICO_VID_PID
    wanted = f"{vid:04X}:{pid:04X}"
    boards = find_ports()
    everything = list(list_ports.comports())

    def describe(port) -> dict[str, Any]:
        return {"device": port.device, "description": port.description,
                "usb": f"{port.vid:04X}:{port.pid:04X}" if port.vid is not None else None,
                "serial_number": port.serial_number, "location": port.location}

    others = [describe(p) for p in everything if p not in boards]
    summary: dict[str, Any] = {"command": "bench ports", "vid_pid": wanted,
                               "boards": [describe(p) for p in boards]}
    if ctx.args.all:
        summary["other_ports"] = others
    if ctx.human:
        if boards:
            ctx.print(f"boards (USB {wanted}):")
            for b in summary["boards"]:
                ctx.print(f"  {b['device']}  serial {b['serial_number'] or '?'}  "
                          f"{b['description'] or ''}".rstrip())
            if len(boards) > 1:
                ctx.print("several boards: choose one with --port")
        else:
            ctx.print(f"no board found (no serial port with USB {wanted}).")
            ctx.print("hints: plug the Pico in with a data cable and check that MicroPython runs "
                      "(it appears as /dev/ttyACM* on Linux, /dev/cu.usbmodem* on macOS, COMx "
                      "on Windows); on Linux your user needs access to the port (the 'dialout' "
                      "group); without hardware, start an emulated board with 'boostsim "
                      "emulate --link /tmp/board' and use --port /tmp/board (or --port emu:).")
        if ctx.args.all or not boards:
            if others:
                ctx.print("other serial ports:" if boards else "serial ports present:")
                for o in others:
                    ctx.print(f"  {o['device']}  {o['usb'] or ''}  {o['description'] or ''}"
                              .rstrip())
    ctx.emit_json(summary)
    return 0
