"""boostsim/pid.py, unchanged, inside a real MicroPython interpreter and through mpy-cross.

Floats cross the CPython/MicroPython boundary as packed IEEE-754 doubles (``struct``), never as
decimal text, so the inputs are bit-identical on both sides and only the PID arithmetic is
compared. The MicroPython build used here (WASI) has double-precision floats, and the PID uses only
correctly rounded IEEE operations (+ - * / and comparisons) in a fixed order, so its outputs must
be bit-identical to CPython's. Should the interpreter ever be a single-precision build (like the
RP2040 port), the comparison falls back to a float32 tolerance.
"""

import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from micropython_runner import run_micropython

from boostsim.pid import PID

pytestmark = pytest.mark.slow  # real MicroPython (WASI) and mpy-cross

PID_SOURCE = Path(__file__).resolve().parents[1] / "boostsim" / "pid.py"

TS = 1e-5
N = 300
# (constructor keyword arguments, reset keyword arguments or None); all floats.
CASES = [
    (dict(kp=0.2, ki=200.0, kd=0.0, ts=TS), None),
    (dict(kp=0.1, ki=150.0, kd=2e-5, ts=TS, tf=3e-5, out_min=0.05, out_max=0.9), None),
    (dict(kp=0.3, ki=400.0, kd=1e-5, ts=TS, tf=1e-5, anti_windup="backcalc"), None),
    (dict(kp=0.2, ki=250.0, kd=0.0, ts=TS, anti_windup="backcalc", kt=3e4,
          setpoint_rate=3e4), dict(output=0.3, measurement=5.0, setpoint=5.0)),
]
FLOAT_KEYS = ("kp", "ki", "kd", "ts", "tf", "out_min", "out_max", "kt", "setpoint_rate")


def measurement_sequence():
    """A fixed, deterministic measurement record that roughly follows the setpoint sequence:
    a soft rise from 5 V to 18 V, a fall to 12 V, a load step at k = 220, plus ripple."""
    ys = []
    for k in range(N):
        if k < 150:
            y = 18.0 - 13.0 * math.exp(-k / 25.0)
        else:
            y = 12.0 + 6.0 * math.exp(-(k - 150) / 25.0)
        if k >= 220:
            y -= 0.3 * math.exp(-(k - 220) / 40.0)
        ys.append(y + 0.05 * math.sin(0.7 * k))
    return ys


def setpoint_sequence():
    return [18.0 if k < 150 else 12.0 for k in range(N)]


def run_cpython(case):
    kwargs, reset = case
    pid = PID(**kwargs)
    if reset is not None:
        pid.reset(**reset)
    return [pid.update(s, y) for s, y in zip(setpoint_sequence(), measurement_sequence(),
                                             strict=True)]


def _packed(values):
    return repr(struct.pack(f"<{len(values)}d", *values))


def micropython_program():
    """MicroPython source that runs every case and prints each output as repr and as hex."""
    lines = [
        "import struct",
        "import pid",
        "def unpack(b):",
        "    return list(struct.unpack('<%dd' % (len(b) // 8), b))",
        "def hexd(x):",
        "    return ''.join('%02x' % c for c in struct.pack('<d', x))",
        "print('DOUBLE', 1.0 + 1e-10 != 1.0)",
        "print('HASNUMPY', 'numpy' in __import__('sys').modules)",
        f"ys = unpack({_packed(measurement_sequence())})",
        f"sps = unpack({_packed(setpoint_sequence())})",
    ]
    for n, (kwargs, reset) in enumerate(CASES):
        fkeys = [k for k in FLOAT_KEYS if k in kwargs]
        lines.append(f"f = unpack({_packed([float(kwargs[k]) for k in fkeys])})")
        args = [f"{k}=f[{i}]" for i, k in enumerate(fkeys)]
        if "anti_windup" in kwargs:
            args.append(f"anti_windup={kwargs['anti_windup']!r}")
        lines.append(f"p = pid.PID({', '.join(args)})")
        if reset is not None:
            rkeys = sorted(reset)
            lines.append(f"r = unpack({_packed([reset[k] for k in rkeys])})")
            lines.append("p.reset(" + ", ".join(f"{k}=r[{i}]" for i, k in enumerate(rkeys)) + ")")
        lines.append("for k in range(len(ys)):")
        lines.append("    u = p.update(sps[k], ys[k])")
        lines.append(f"    print('OUT', {n}, repr(u), hexd(u))")
        lines.append(f"print('STATE', {n}, repr(p.integral), repr(p.saturated), "
                     "repr(p.ramped_setpoint))")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def micropython_outputs():
    out = run_micropython(micropython_program(), modules=[PID_SOURCE])
    double = None
    has_numpy = None
    results = {n: [] for n in range(len(CASES))}
    states = {}
    for line in out.splitlines():
        words = line.split()
        if words[0] == "DOUBLE":
            double = words[1] == "True"
        elif words[0] == "HASNUMPY":
            has_numpy = words[1] == "True"
        elif words[0] == "OUT":
            value = struct.unpack("<d", bytes.fromhex(words[3]))[0]
            results[int(words[1])].append((float(words[2]), value))
        elif words[0] == "STATE":
            states[int(words[1])] = words[2:]
    return double, has_numpy, results, states


def test_micropython_float_precision_is_detected(micropython_outputs):
    double, has_numpy, _, _ = micropython_outputs
    # This WASI build uses double-precision floats (the RP2040 port uses single precision).
    assert double is True
    assert has_numpy is False


@pytest.mark.parametrize("n", range(len(CASES)))
def test_micropython_outputs_match_cpython(micropython_outputs, n):
    double, _, results, states = micropython_outputs
    expected = run_cpython(CASES[n])
    got = results[n]
    assert len(got) == len(expected) == N
    reprs = [r for r, _ in got]
    bits = [b for _, b in got]
    if double:
        # Same IEEE-754 double arithmetic in the same order: bit-identical.
        assert bits == expected
        # MicroPython's repr() of a double round-trips to within one part in 1e15.
        assert reprs == pytest.approx(expected, rel=1e-15, abs=1e-15)
    else:
        # Single precision (e.g. a Pico): ~7 significant digits, errors accumulate in the
        # integral; a duty difference of 1e-4 is far below one PWM count.
        assert reprs == pytest.approx(expected, rel=1e-4, abs=1e-4)
    # The cases exercise saturation and the unsaturated range.
    assert any(u in (CASES[n][0].get("out_max", 1.0), CASES[n][0].get("out_min", 0.0))
               for u in expected)
    assert any(0.1 < u < 0.85 for u in expected)
    assert states[n][1] in ("True", "False")


def test_micropython_validation_errors():
    code = "\n".join([
        "import pid",
        "bad = [dict(kp=-1.0, ki=1.0, kd=0.0, ts=1e-5),",
        "       dict(kp=1.0, ki=-1.0, kd=0.0, ts=1e-5),",
        "       dict(kp=1.0, ki=1.0, kd=-1.0, ts=1e-5),",
        "       dict(kp=1.0, ki=1.0, kd=0.0, ts=0.0),",
        "       dict(kp=1.0, ki=1.0, kd=0.0, ts=1e-5, out_min=1.0, out_max=0.5),",
        "       dict(kp=1.0, ki=1.0, kd=0.0, ts=1e-5, anti_windup='pi'),",
        "       dict(kp=1.0, ki=1.0, kd=0.0, ts=1e-5, tf=-1.0),",
        "       dict(kp=1.0, ki=1.0, kd=0.0, ts=1e-5, anti_windup='backcalc', kt=1e9),",
        "       dict(kp=1.0, ki=1.0, kd=0.0, ts=1e-5, setpoint_rate=0.0),",
        "       dict(kp=float('nan'), ki=1.0, kd=0.0, ts=1e-5)]",
        "for kw in bad:",
        "    try:",
        "        pid.PID(**kw)",
        "        print('NO ERROR')",
        "    except ValueError as exc:",
        "        print('ValueError:', exc)",
    ])
    lines = run_micropython(code, modules=[PID_SOURCE]).splitlines()
    assert lines == [
        "ValueError: kp must be >= 0, got -1.0",
        "ValueError: ki must be >= 0, got -1.0",
        "ValueError: kd must be >= 0, got -1.0",
        "ValueError: ts (sample period) must be > 0, got 0.0",
        "ValueError: out_min must be < out_max, got out_min=1.0, out_max=0.5",
        "ValueError: anti_windup must be 'clamp' or 'backcalc', got 'pi'",
        "ValueError: tf (derivative filter time constant) must be >= 0, got -1.0",
        "ValueError: kt must satisfy 0 <= kt <= 1/ts (stable, non-oscillating tracking), "
        "got kt=1000000000.0 with ts=1e-05",
        "ValueError: setpoint_rate must be > 0 (or None for steps), got 0.0",
        "ValueError: kp must be >= 0, got nan",
    ]


def test_mpy_cross_compiles_and_the_bytecode_runs(tmp_path):
    mpy = tmp_path / "pid.mpy"
    proc = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(mpy), str(PID_SOURCE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = mpy.read_bytes()
    assert data[:1] == b"M" and data[1] == 6  # .mpy header, bytecode format version 6
    # The compiled module (and not the source) imports and runs in MicroPython.
    out = run_micropython(
        "import pid\nprint(pid.__file__)\n"
        "p = pid.PID(0.1, 100.0, 0.0, 1e-4)\nprint(p.update(12.0, 5.0))\n",
        modules=[mpy])
    assert out.split() == ["/input/pid.mpy", repr(PID(0.1, 100.0, 0.0, 1e-4).update(12.0, 5.0))]
