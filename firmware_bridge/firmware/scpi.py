"""Generic SCPI machinery shared by the board firmware and the host.

MicroPython-compatible (no typing, dataclasses, enum, f-strings): this file is flashed to the
board and imported by the host (``from firmware_bridge.firmware import scpi``), so there is one
definition of the error codes, the header matching, the parameter types and the block framing.

Contents:

* ``ERRORS``, ``ScpiError``, ``ErrorQueue``, ``format_error`` -- the SCPI error queue
  (protection reports first: ``is_protection_report``).
* ``Real``, ``Int``, ``Bool``, ``Choice`` -- parameter types: ``parse(token)`` (board) and
  ``format(value)`` (host) with one set of ranges.
* ``Cmd`` -- one command-table entry: header pattern, handlers, parameters, response kind.
* ``scan_first_word``, ``line_is_query``, ``split_line``, ``parse_header``,
  ``find_command`` -- the line parser.
* ``encode_block``, ``decode_block``, ``parse_block_prefix`` -- IEEE 488.2 definite-length
  arbitrary blocks ``#<n><len><bytes>``.
"""

import math

# --------------------------------------------------------------------------------------------
# Error codes (SCPI-99 standard numbers and messages).

NO_ERROR = 0
COMMAND_ERROR = -100
INVALID_CHARACTER = -101
SYNTAX_ERROR = -102
DATA_TYPE_ERROR = -104
PARAMETER_NOT_ALLOWED = -108
MISSING_PARAMETER = -109
UNDEFINED_HEADER = -113
NUMERIC_DATA_ERROR = -120
SUFFIX_NOT_ALLOWED = -138
EXECUTION_ERROR = -200
INIT_IGNORED = -213
SETTINGS_CONFLICT = -221
DATA_OUT_OF_RANGE = -222
ILLEGAL_PARAMETER_VALUE = -224
HARDWARE_MISSING = -241
DEVICE_SPECIFIC_ERROR = -300
QUEUE_OVERFLOW = -350
INPUT_BUFFER_OVERRUN = -363
QUERY_INTERRUPTED = -410
# Device-defined (positive) codes: protection trips, queued when they happen.
OVP_TRIPPED = 101
WDOG_TRIPPED = 102

ERRORS = {
    NO_ERROR: "No error",
    COMMAND_ERROR: "Command error",
    INVALID_CHARACTER: "Invalid character",
    SYNTAX_ERROR: "Syntax error",
    DATA_TYPE_ERROR: "Data type error",
    PARAMETER_NOT_ALLOWED: "Parameter not allowed",
    MISSING_PARAMETER: "Missing parameter",
    UNDEFINED_HEADER: "Undefined header",
    NUMERIC_DATA_ERROR: "Numeric data error",
    SUFFIX_NOT_ALLOWED: "Suffix not allowed",
    EXECUTION_ERROR: "Execution error",
    INIT_IGNORED: "Init ignored",
    SETTINGS_CONFLICT: "Settings conflict",
    DATA_OUT_OF_RANGE: "Data out of range",
    ILLEGAL_PARAMETER_VALUE: "Illegal parameter value",
    HARDWARE_MISSING: "Hardware missing",
    DEVICE_SPECIFIC_ERROR: "Device-specific error",
    QUEUE_OVERFLOW: "Queue overflow",
    INPUT_BUFFER_OVERRUN: "Input buffer overrun",
    QUERY_INTERRUPTED: "Query INTERRUPTED",
    OVP_TRIPPED: "Over-voltage protection tripped",
    WDOG_TRIPPED: "Host watchdog tripped",
}


class ScpiError(Exception):
    """A command failed: ``code`` is a SCPI error number, ``detail`` the device-specific text."""

    def __init__(self, code, detail=""):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def error_message(code, detail=""):
    """The queue text of an error: standard message, then ``;detail`` (no double quotes)."""
    text = ERRORS.get(code, "Unknown error")
    if detail:
        text = text + ";" + detail
    return text.replace('"', "'")


def format_error(code, detail=""):
    """``SYST:ERR?`` response text, e.g. ``-222,"Data out of range;duty 0.9 > limit 0.75"``."""
    return '%d,"%s"' % (code, error_message(code, detail))


def is_protection_report(code):
    """True for the entries the error queue never loses: the device-defined protection trips
    (positive codes: 101 OVP, 102 host watchdog) and -300, the firmware's own fault report
    (it turned the output off)."""
    return code > 0 or code == DEVICE_SPECIFIC_ERROR


class ErrorQueue:
    """Bounded FIFO of (code, detail) that never loses a protection report.

    When full, an ordinary error is lost: the newest ordinary entry becomes -350 Queue
    overflow (SCPI's rule, unless a -350 already marks a loss: then nothing changes). A
    protection report (``is_protection_report``) still goes in: the oldest ordinary entry is
    dropped to make room, and a -350 marks the loss (the newest ordinary entry before the
    report becomes one, unless one is there already). Only a queue holding nothing but
    protection reports drops its oldest one to take a new one.
    """

    def __init__(self, size):
        if size < 2:
            raise ValueError("error queue needs at least 2 entries")
        self.size = size
        self.items = []

    def _ordinary(self, newest, skip_overflow):
        """Index of the oldest (or ``newest``) ordinary entry (not a protection report; not a
        -350 with ``skip_overflow``), or -1."""
        items = self.items
        n = len(items)
        for k in range(n):
            i = n - 1 - k if newest else k
            code = items[i][0]
            if is_protection_report(code) or (skip_overflow and code == QUEUE_OVERFLOW):
                continue
            return i
        return -1

    def _has_overflow(self):
        for item in self.items:
            if item[0] == QUEUE_OVERFLOW:
                return True
        return False

    def push(self, code, detail=""):
        items = self.items
        if len(items) < self.size:
            items.append((code, detail))
            return
        if not is_protection_report(code):
            if not self._has_overflow():
                i = self._ordinary(True, False)
                if i >= 0:
                    items[i] = (QUEUE_OVERFLOW, "")
            return
        i = self._ordinary(False, True)
        if i < 0:
            i = self._ordinary(False, False)  # only -350 and reports: the marker goes
        if i < 0:
            items.pop(0)  # nothing but protection reports
        else:
            items.pop(i)
            if not self._has_overflow():
                i = self._ordinary(True, False)
                if i >= 0:
                    items[i] = (QUEUE_OVERFLOW, "")
        items.append((code, detail))

    def pop(self):
        if self.items:
            return self.items.pop(0)
        return (NO_ERROR, "")

    def clear(self):
        self.items = []

    def __len__(self):
        return len(self.items)


# --------------------------------------------------------------------------------------------
# Numbers.


def fmt_num(value):
    """Response format of a real number: 6 significant digits (``%.6g``), never ``-0``."""
    if value == 0:
        value = 0.0
    return "%.6g" % value


def fmt_apart(a, b):
    """(text of a, text of b) with the fewest significant digits (at least 6) that tell two
    different numbers apart: an error message never says ``duty 0.75 above limit 0.75``."""
    for digits in range(6, 18):
        fa = "%.*g" % (digits, a)
        fb = "%.*g" % (digits, b)
        if fa != fb or a == b:
            break
    return fa, fb


def isfinite(value):
    return not (math.isnan(value) or math.isinf(value))


_SPECIAL_NUMBERS = {
    "NAN": float("nan"),
    "INF": float("inf"),
    "+INF": float("inf"),
    "NINF": float("-inf"),
    "-INF": float("-inf"),
}


def parse_number(token):
    """Parse SCPI <NRf> (``[+-]digits[.digits][E[+-]digits]``, case-insensitive) to a float.

    ``NAN``/``INF``/``NINF`` parse to the IEEE values so the caller's range check rejects them
    with -222. Raises ScpiError: -104 (not a number at all), -138 (number followed by a unit or
    suffix) or -120 (malformed number).
    """
    t = token.upper()
    if t in _SPECIAL_NUMBERS:
        return _SPECIAL_NUMBERS[t]
    n = len(t)
    i = 0
    if i < n and t[i] in "+-":
        i += 1
    digits = 0
    while i < n and "0" <= t[i] <= "9":
        i += 1
        digits += 1
    if i < n and t[i] == ".":
        i += 1
        while i < n and "0" <= t[i] <= "9":
            i += 1
            digits += 1
    if digits == 0:
        raise ScpiError(DATA_TYPE_ERROR, "number expected, got %s" % _shorten(token))
    if i < n and t[i] == "E":
        i += 1
        if i < n and t[i] in "+-":
            i += 1
        exp_digits = 0
        while i < n and "0" <= t[i] <= "9":
            i += 1
            exp_digits += 1
        if exp_digits == 0:
            raise ScpiError(NUMERIC_DATA_ERROR, "bad exponent in %s" % _shorten(token))
    if i != n:
        rest = t[i:].strip()
        if rest.isalpha():
            raise ScpiError(SUFFIX_NOT_ALLOWED, "units are not accepted: %s" % _shorten(token))
        raise ScpiError(NUMERIC_DATA_ERROR, "malformed number %s" % _shorten(token))
    return float(t[:i])


def _shorten(text, limit=24):
    if len(text) > limit:
        return text[:limit] + "..."
    return text


# --------------------------------------------------------------------------------------------
# Parameter types. ``parse`` runs on the board, ``format`` on the host; the ranges are shared.


class Real:
    """A real number in ``[lo, hi]`` (inclusive; None: unbounded). NaN/inf are -222."""

    kind = "real"

    def __init__(self, name, lo=None, hi=None, unit="", optional=False):
        self.name = name
        self.lo = lo
        self.hi = hi
        self.unit = unit
        self.optional = optional

    def parse(self, token):
        value = parse_number(token)
        return self.check(value)

    def check(self, value):
        if not isfinite(value):
            raise ScpiError(DATA_OUT_OF_RANGE, "%s must be finite" % self.name)
        if self.lo is not None and value < self.lo:
            raise ScpiError(DATA_OUT_OF_RANGE, "%s %s below %s" % (
                (self.name,) + fmt_apart(value, self.lo)))
        if self.hi is not None and value > self.hi:
            raise ScpiError(DATA_OUT_OF_RANGE, "%s %s above %s" % (
                (self.name,) + fmt_apart(value, self.hi)))
        if value == 0:
            value = 0.0
        return value

    def range_text(self):
        lo = "-inf" if self.lo is None else fmt_num(self.lo)
        hi = "inf" if self.hi is None else fmt_num(self.hi)
        return "[%s,%s]" % (lo, hi)

    def format(self, value):
        value = float(value)
        self.check(value)
        return repr(value)

    def describe(self):
        text = "<%s> %s" % (self.name, self.range_text())
        if self.unit:
            text += " " + self.unit
        return text


class Int(Real):
    """An integer in ``[lo, hi]``; accepts any <NRf> with an integral value (``1e3``)."""

    kind = "int"

    def parse(self, token):
        value = parse_number(token)
        if isfinite(value) and value != int(value):
            raise ScpiError(DATA_TYPE_ERROR, "%s must be an integer" % self.name)
        return int(self.check(value))

    def format(self, value):
        if isinstance(value, float) and value != int(value):
            raise ScpiError(DATA_TYPE_ERROR, "%s must be an integer" % self.name)
        value = int(value)
        self.check(value)
        return "%d" % value


class Bool:
    """``ON|OFF|1|0`` (case-insensitive)."""

    kind = "bool"

    def __init__(self, name, optional=False):
        self.name = name
        self.optional = optional

    def parse(self, token):
        t = token.upper()
        if t == "ON" or t == "1":
            return True
        if t == "OFF" or t == "0":
            return False
        raise ScpiError(ILLEGAL_PARAMETER_VALUE, "%s must be ON|OFF|1|0, got %s"
                        % (self.name, _shorten(token)))

    def format(self, value):
        if isinstance(value, str):
            return "ON" if self.parse(value) else "OFF"
        return "ON" if value else "OFF"

    def describe(self):
        return "ON|OFF|1|0"


def _short_form(word):
    """SCPI short form: the leading upper-case letters/digits of the long form."""
    i = 0
    while i < len(word) and not ("a" <= word[i] <= "z"):
        i += 1
    return word[:i] if i else word


class Choice:
    """One keyword out of a list; each accepts its short and long form (``CONTinuous``)."""

    kind = "choice"

    def __init__(self, name, options, optional=False):
        self.name = name
        self.options = options
        self.forms = []
        for word in options:
            self.forms.append((_short_form(word), word.upper()))
        self.optional = optional

    def parse(self, token):
        t = token.upper()
        for short, long in self.forms:
            if t == short or t == long:
                return long
        raise ScpiError(ILLEGAL_PARAMETER_VALUE, "%s must be %s, got %s"
                        % (self.name, self.describe(), _shorten(token)))

    def format(self, value):
        return self.parse(str(value))

    def describe(self):
        return "|".join(self.options)


# --------------------------------------------------------------------------------------------
# Command table entries and header matching.


def parse_pattern(pattern):
    """``"[SOURce]:PWM:DUTY:[LEVel]"`` -> ((short, long, optional), ...), upper-case forms."""
    nodes = []
    for word in pattern.split(":"):
        optional = word.startswith("[") and word.endswith("]")
        if optional:
            word = word[1:-1]
        nodes.append((_short_form(word).upper(), word.upper(), optional))
    return tuple(nodes)


class Cmd:
    """One command: header pattern, handler names, parameter specs and response kind.

    ``pattern``: nodes separated by ``:``, ``[NODE]`` optional, upper-case letters give the
    short form (``SOURce`` -> ``SOUR``/``SOURCE``); common commands are ``*IDN`` etc.
    ``setter``/``query``: names of the device methods (None: that form does not exist).
    ``args``/``qargs``: parameter specs of the set form / the query form.
    ``resp``: what the query returns -- ``real``, ``int``, ``bool``, ``str``, ``reals`` (comma
    separated reals), ``error`` (``<code>,"<text>"``) or ``block`` (definite-length block).
    """

    def __init__(self, pattern, setter=None, query=None, args=(), qargs=(), resp=None, doc=""):
        self.pattern = pattern
        self.nodes = parse_pattern(pattern)
        self.setter = setter
        self.query = query
        self.args = args
        self.qargs = qargs
        self.resp = resp
        self.doc = doc

    def matches(self, nodes):
        return _match(self.nodes, 0, nodes, 0)

    def short_header(self):
        return ":".join([n[0] for n in self.nodes if not n[2]])

    def long_header(self):
        return ":".join([n[1] for n in self.nodes if not n[2]])

    def parse_args(self, is_query, tokens):
        specs = self.qargs if is_query else self.args
        if len(tokens) > len(specs):
            raise ScpiError(PARAMETER_NOT_ALLOWED, "%s takes at most %d parameter(s)"
                            % (self.short_header() + ("?" if is_query else ""), len(specs)))
        values = []
        for i in range(len(specs)):
            spec = specs[i]
            if i >= len(tokens):
                if spec.optional:
                    break
                raise ScpiError(MISSING_PARAMETER, "%s needs %s" % (self.short_header(),
                                                                     spec.describe()))
            values.append(spec.parse(tokens[i]))
        return values


def _match(pattern, i, nodes, j):
    if i == len(pattern):
        return j == len(nodes)
    short, long, optional = pattern[i]
    if j < len(nodes) and (nodes[j] == short or nodes[j] == long):
        if _match(pattern, i + 1, nodes, j + 1):
            return True
    if optional:
        return _match(pattern, i + 1, nodes, j)
    return False


def scan_first_word(data, state=0, last=-1):
    """Incrementally find the first word of a line (bytes, in any number of pieces).

    Words are separated by spaces and tabs only. ``state``: 0 before the first word, 1 inside
    it, 2 past it; ``last``: its last byte other than CR (-1: none yet). Feed each piece with
    the previous result; returns the new (state, last). The line is a query if ``last`` is
    '?' -- whatever the length of the line, so an over-long line is answered (or not) exactly
    like the host expects.
    """
    for b in data:
        if state == 2:
            break
        if b == 0x20 or b == 0x09:
            if state == 1:
                state = 2
        else:
            state = 1
            if b != 0x0D:
                last = b
    return state, last


def line_is_query(line):
    """True if the board answers this line (bytes): its first word ends with '?'.

    The board sends exactly one response (a line, a block, or an empty line if the query
    failed) for such a line and nothing for any other.
    """
    return scan_first_word(line)[1] == 0x3F  # '?'


def split_line(text):
    """``"SOUR:PWM:DUTY 0.5"`` -> (header, [tokens]); whitespace-trimmed, commas separate.

    Raises ScpiError(-102) for an empty parameter (``1,,2``, a trailing comma).
    """
    text = text.strip()
    cut = len(text)
    for sep in (" ", "\t"):
        k = text.find(sep)
        if 0 <= k < cut:
            cut = k
    header = text[:cut]
    rest = text[cut:].strip()
    if not rest:
        return header, []
    tokens = []
    for part in rest.split(","):
        part = part.strip()
        if not part:
            raise ScpiError(SYNTAX_ERROR, "empty parameter")
        tokens.append(part)
    return header, tokens


def _is_node(word):
    if not word or not word[0].isalpha():
        return False
    for ch in word:
        if not (ch.isalpha() or ("0" <= ch <= "9") or ch == "_"):
            return False
    return True


def parse_header(header):
    """Header text -> (tuple of upper-case nodes, is_query). Raises ScpiError(-102)."""
    is_query = header.endswith("?")
    body = header[:-1] if is_query else header
    body = body.upper()
    if body.startswith("*"):
        if not _is_node(body[1:]):
            raise ScpiError(SYNTAX_ERROR, "bad common command %s" % _shorten(header))
        return (body,), is_query
    if body.startswith(":"):
        body = body[1:]
    nodes = body.split(":")
    for node in nodes:
        if not _is_node(node):
            raise ScpiError(SYNTAX_ERROR, "bad header %s" % _shorten(header))
    return tuple(nodes), is_query


def find_command(table, nodes, is_query):
    """The entry of ``table`` whose pattern matches ``nodes`` and has that form, or -113."""
    for cmd in table:
        if cmd.matches(nodes):
            if (cmd.query if is_query else cmd.setter) is not None:
                return cmd
    raise ScpiError(UNDEFINED_HEADER, _shorten(":".join(nodes) + ("?" if is_query else ""), 40))


def lookup(table, header):
    """Header text (``"sour:pwm:duty?"``) -> (Cmd, is_query); ScpiError -102/-113 if none."""
    nodes, is_query = parse_header(header)
    return find_command(table, nodes, is_query), is_query


# --------------------------------------------------------------------------------------------
# IEEE 488.2 definite-length arbitrary block: '#', one digit n, n digits of length, bytes.


def encode_block(payload):
    """``#<n><len><payload>`` as bytes (the caller appends the LF terminator)."""
    length = "%d" % len(payload)
    if len(length) > 9:
        raise ValueError("block too long")
    out = bytearray(b"#")
    out.extend(("%d%s" % (len(length), length)).encode())
    out.extend(payload)
    return bytes(out)


def parse_block_prefix(buf):
    """Given the start of a block, return (header_length, payload_length).

    ``buf`` must hold at least the ``#<n><len>`` prefix; raises ValueError if it is not a
    definite-length block (``#0`` indefinite blocks are not used by this protocol).
    """
    if len(buf) < 2 or buf[0] != 0x23:  # '#'
        raise ValueError("not a definite-length block")
    n = buf[1] - 0x30
    if n < 1 or n > 9:
        raise ValueError("bad block length digit")
    if len(buf) < 2 + n:
        raise ValueError("truncated block header")
    length = 0
    for k in range(2, 2 + n):
        d = buf[k] - 0x30
        if d < 0 or d > 9:
            raise ValueError("bad block length")
        length = length * 10 + d
    return 2 + n, length


def decode_block(buf):
    """``#<n><len><payload>[LF]`` -> (payload bytes, bytes consumed incl. an optional LF)."""
    head, length = parse_block_prefix(buf)
    end = head + length
    if len(buf) < end:
        raise ValueError("truncated block: %d of %d payload bytes" % (len(buf) - head, length))
    payload = bytes(buf[head:end])
    if len(buf) > end and buf[end] == 0x0A:
        end += 1
    return payload, end
