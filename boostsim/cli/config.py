"""``boostsim config init|show``: the board TOML file.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..params import FIELDS, BoostParams
from ..units import format_si, parse_si
from .args import (
    _Formatter,
    _Parser,
)
from .context import CliError, Context, _default_board_text

_CONFIG_EPILOG = """\
examples:
  boostsim config init                         # writes board.toml (the default board, commented)
  boostsim config init my_board.toml --force   # overwrite an existing file
  boostsim config show --config my_board.toml --set L=47u
  boostsim config show --json
"""


# -- config ---------------------------------------------------------------------------------

def cmd_config_init(ctx: Context) -> int:
    path = Path(ctx.args.path)
    if path.exists() and not ctx.args.force:
        raise CliError(f"{str(path)!r} exists; use --force to overwrite it")
    if path.is_dir():
        raise CliError(f"{str(path)!r} is a directory")
    try:
        ctx.output(path).write_text(_default_board_text(), encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    ctx.commit()  # in place before "wrote ..." is said
    ctx.print(f"wrote {path} (the default board; edit it and pass --config {path})")
    ctx.emit_json({"command": "config init", "path": str(path)})
    return 0


def _si_text(value: float, unit: str) -> str | float:
    """An SI string that reads back to exactly ``value`` ("100uH"), or the float (inf)."""
    if not math.isfinite(value):
        return value
    unit = {"ohm": "ohm"}.get(unit, unit)
    for digits in range(6, 18):
        text = format_si(value, unit, digits=digits)
        try:
            if parse_si(text) == value:
                return text
        except ValueError:
            break
    return value


def effective_toml(params: BoostParams, document: dict[str, Any]) -> dict[str, Any]:
    """The configuration document with its [converter] table replaced by ``params``."""
    converter: dict[str, Any] = {}
    for name, value in params.to_dict().items():
        if name in FIELDS and isinstance(value, float):
            converter[name] = _si_text(value, FIELDS[name].unit)
        else:
            converter[name] = value
    out = {"converter": converter}
    out.update({k: v for k, v in document.items() if isinstance(v, dict) and k != "converter"})
    return out


def cmd_config_show(ctx: Context) -> int:
    import tomli_w

    params = ctx.board()
    document, source = ctx.document()
    effective = effective_toml(params, document)
    settings = ctx.args.settings
    header = f"# effective configuration: {source}"
    if settings:
        header += " with " + " ".join(f"--set {k}={v}" for k, v in settings)
    text = header + "\n" + tomli_w.dumps(effective)
    if ctx.args.out:
        out = Path(ctx.args.out)
        try:
            if out.suffix.lower() == ".json":
                from ..outputs import write_json

                write_json(ctx.output(out), effective)
            else:
                ctx.output(out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    if ctx.args.json:
        ctx.emit_json(effective)
    elif not ctx.args.quiet:
        print(text, end="", file=ctx.stdout)
    return 0


def register(sub, base: argparse.ArgumentParser, board: argparse.ArgumentParser,
             files: argparse.ArgumentParser) -> None:
    """Add the ``config`` command to the subparsers ``sub`` (``base``, ``board``, ``files``:
    the shared option groups)."""
    p = sub.add_parser("config", formatter_class=_Formatter, help="board configuration files",
                       description="Board configuration files (TOML).", epilog=_CONFIG_EPILOG)
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    q = csub.add_parser("init", parents=[base], formatter_class=_Formatter,
                        help="write the default board file (with its comments)",
                        description="Write the built-in default board file, comments kept.",
                        epilog=_CONFIG_EPILOG)
    q.add_argument("path", nargs="?", default="board.toml", metavar="PATH",
                   help="file to write (default board.toml)")
    q.add_argument("--force", action="store_true", help="overwrite an existing file")
    q.set_defaults(func=cmd_config_init)
    q = csub.add_parser("show", parents=[base, board], formatter_class=_Formatter,
                        help="print the effective configuration (after --config and --set)",
                        description="Print the effective configuration as TOML.",
                        epilog=_CONFIG_EPILOG)
    q.add_argument("--out", metavar="FILE",
                   help="also write it to FILE (.toml, or .json for JSON)")
    q.set_defaults(func=cmd_config_show)
    p.set_defaults(func=None, config_parser=p)
