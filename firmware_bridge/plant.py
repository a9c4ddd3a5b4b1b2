"""Real-time plant of the board emulator: the boost converter advanced by its exact period map.

The emulated board must produce the converter's output voltage (and inductor current) at any
instant the firmware samples it, following the wall clock, at the switching frequency (100 kHz
by default), on one core. Stepping the exact switching engine period by period costs 100-300 us
per period, 10-30x too slow, so this module advances the *same* exact period map in closed-form
chunks instead.

**State and map.** The plant keeps the exact state x_k = (iL, vC) at the start of switching
period k. With the duty and the operating conditions (vin, R, i_load) constant, one period maps
the state by ``x_{k+1} = F(x_k)`` (the :mod:`boostsim.segments` closed forms: switch on for
D*Ts, then the diode, possibly until its current reaches zero, then both off).

**CCM chunks (exact).** While every period is in continuous conduction F is affine,
``F(x) = Phi x + gamma`` (the same closed forms as :mod:`boostsim.runahead`), so any number of
periods is one matrix power, evaluated in closed form from Phi's eigen-decomposition (or by
doubling). Each period is checked against the engine's own CCM criteria (diode current positive
at the PWM edge and at the period end, no dip in between); a chunk ends at the first period that
fails, where the state is still exact. The checks are skipped once a *certificate* holds: the
criteria are affine in the state, so if their margins at the fixed point exceed
``|gradient| * cond(V) * |x - x*|`` no later period can fail -- a steady operating point costs
a few scalar operations per call, however long. Within a period the waveform is affine in the
start state too, ``w(tau; x) = alpha(tau) + beta(tau) . x``; alpha and beta are tabulated per
duty on a grid split at the switching edge (linear interpolation error < 1e-7 relative), so the
output at any instant is exact in CCM.

**DCM and transition periods (local affine, error-controlled).** Outside CCM the map is
nonlinear (the diode turn-off time depends on the state). The exact engine
(:class:`boostsim.engine.Stepper`) computes a reference period at x_ref with its exact Jacobian J
(with the saltation at the diode turn-off); the chunk uses ``F(x) ~ F(x_ref) + J (x - x_ref)``
while the state stays inside a trust region around x_ref (|vC - vC_ref| <= ``trust_v``, default
0.5 % of vin; |iL - iL_ref| <= ``trust_i``). A DCM period starts at iL = 0, so the map is
one-dimensional and the exit from the trust region is found in closed form. DCM references sit
on a grid of vC values (spacing trust_v) per duty and are computed 32 at a time in one
vectorised engine call (as cheap as one) in the direction of travel, and cached, so a steady DCM
point -- or a PID dithering between a few duty steps -- needs no engine call. A DCM period's
waveform is a nearby reference period's exact waveform shifted by the change of vC. Periods that
are neither (CCM/DCM transitions during large transients) get one exact engine period each.

**Events.** Duty, frequency and enable changes take effect at the next period boundary, like
the RP2040's double-buffered PWM compare register; load and line changes too (<= one period,
10 us at 100 kHz, late). A frequency change restarts the period grid there.

**Accuracy** against :func:`boostsim.simulate` (cycle averages of vout, relative to the final
value; ``tests/test_emulator_plant.py``): steady states and transients that stay in CCM agree
to ~3e-8 (the state itself to rounding) without any engine call; DCM steady states to ~1e-6;
transients through DCM -- light load, or the LC ringing that takes the inductor current to zero
after a large duty step at the default 48 ohm load -- to <= 1e-4 with the default trust region
(~3e-5 with ``trust_v = 0.002 * vin``). Sampled waveforms (ripple included) match the exact
engine's to microvolts.

**Cost** (``benchmarks/bench_emulator.py``): a firmware read in the period the plant is in is
a few microseconds (:meth:`Plant.at`, Python floats); streamed samples and protection ticks
are evaluated in batches, in one compiled loop per chunk (:mod:`.emukernel`; the numpy
path, Python floats for a few and vectorised for more, is the reference), the streamed ones
from the record of the periods passed (:meth:`Plant.sample_past`; periods that continue one
CCM map are one entry) when the ring is read; a duty step costs one CCM map (~0.1-0.3 ms with
its waveform table, cached per duty; its eigen-decomposition in closed form; on the PWM's
counter grid, the maps of the 16 levels around it are built with it for little more) plus,
through DCM, a few engine calls, and a step under a certified map goes straight on to the
next one (its samples and state in one compiled call).
The emulated board keeps real time at 100 kHz with 3.5-5 % of one core in open loop and
13-23 % with the on-board PID at 2 kHz (a firmware step every 0.5 ms), both streaming at
20 kS/s, on a quiet machine (``benchmarks/bench_emulator.py``; half as much again when it is
shared).

Why the exact map rather than a cycle-averaged model plus a ripple table: both could meet the
requirement (``boostsim.averaged.operating_point`` is within ~3e-4 of the exact steady state in
DCM on the default board); the exact map advanced in chunks costs no more, agrees with the exact
engine to rounding in CCM, and gives the true ripple, and its phase, at every ADC sample
instant during transients too, without a second model to keep consistent.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import OrderedDict
from typing import Any

import numpy as np

from boostsim import segments as sg
from boostsim.engine import Stepper
from boostsim.params import BoostParams

__all__ = ["Plant", "PlantStats"]

_KMAX = 16384          # periods handled per orbit evaluation
_TABLE_POINTS = 96     # waveform table points per switching period (split over the segments)
_CACHE_SIZE = 2048     # cached maps / references per plant
_BATCH = 32            # start states per engine call (one call costs about as much as one)
_TABLE_STRIDE = 16     # DCM references sharing one waveform table (16 * trust_v apart at most)
_MAX_COND = 1e6        # eigenvector condition number above which powers are not closed-form
_SCALAR_SAMPLES = 4    # samples per chunk evaluated in Python floats (more: vectorised)
_TABLE_ROWS = ("vout", "vout_i", "vout_v", "il", "il_i", "il_v")  # emukernel's row order
_FIRST_VALID = ("sync", "never", "a_i", "b_i", "a_v", "b_v", "a11", "a12", "b1")  # pack order
_LEVEL_BLOCK = 16      # PWM levels whose CCM maps are built together (see Plant._ccm_map)
_EMPTY = np.empty(0)
_WHOLE = (int, np.integer)  # set_pwm's steps
_NO_SAMPLES = (_EMPTY, _EMPTY, None)  # (times, out_v, out_i) of a request with none

try:  # the compiled evaluation; without numba, the numpy path below does it all
    from . import emukernel as kernel
except ImportError:  # pragma: no cover - numba is a dependency
    kernel = None
_KIND_CODES = {} if kernel is None else {"ccm": kernel.CCM, "dcm": kernel.DCM,
                                          "transition": kernel.TRANSITION}


class PlantStats:
    """Counters for benchmarks and tests."""

    def __init__(self) -> None:
        self.periods = 0             # switching periods advanced
        self.ccm_maps = 0            # CCM maps built (one per new duty/conditions)
        self.references = 0          # exact engine calls (each up to 32 reference periods)
        self.transitions = 0         # transition periods (neither CCM nor starting at rest)
        self.tables = 0              # waveform tables built
        self.cache_hits = 0          # maps found in the cache
        self.samples = 0             # waveform samples evaluated

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _eigenvector(a: float, b: float, c: float, d: float, lam: complex) -> tuple[complex, complex]:
    """Unit eigenvector of [[a, b], [c, d]] for its eigenvalue ``lam``: the larger of the two
    candidates (b, lam - a) and (lam - d, c) (both are, unless one vanishes)."""
    x0, y0 = complex(b), lam - a
    x1, y1 = lam - d, complex(c)
    n0 = abs(x0) ** 2 + abs(y0) ** 2
    n1 = abs(x1) ** 2 + abs(y1) ** 2
    if n1 > n0:
        x0, y0, n0 = x1, y1, n1
    norm = math.sqrt(n0)
    return x0 / norm, y0 / norm


class _Chunk:
    """An affine period map ``x -> phi x + gamma``, the states it is valid for and (built on
    first use) its waveform tables ``w(tau; x) = alpha(tau) + beta_i(tau) iL + beta_v(tau) vC``.

    ``kind``: "ccm" (exact; every period checked with the CCM criteria or certified),
    "dcm" (local, one-dimensional: iL = 0 at every period start; trust interval on vC) or
    "transition" (local; trust box on iL and vC).
    """

    def __init__(self, kind, phi, gamma, build, *, c=None, margins=(), il_ref=0.0,
                 vc_ref=0.0, trust_i=0.0, trust_v=0.0):
        self.kind = kind
        self.phi = phi            # (p11, p12, p21, p22)
        self.gamma = gamma        # (g1, g2)
        self._build = build       # () -> (xp, tables): phase grid [s] and named tables on it
        self._tables = None
        self._rows = None         # the tables as Python lists, for evaluate_at
        self._arrays = None       # ... as arrays, for the compiled evaluation
        self._pack = None         # closed form and tables for emukernel.certified (or False)
        self._mean = None
        self.c = c
        self.il_ref = il_ref
        self.vc_ref = vc_ref
        self.trust_i = trust_i
        self.trust_v = trust_v
        self._orbit = None        # last orbit computed: (il0, vc0, il, vc)
        self._margins = margins   # certificate: affine criteria a_i iL + a_v vC + b > 0
        self._closed = None       # eigen-decomposition, computed on first use
        self._radius = None
        self._fixed_ok = False

    def _setup_closed(self) -> None:
        """Eigen-decomposition for closed-form powers, and the certificate radius."""
        self._eigen()
        self._radius = -1.0
        self._fixed_ok = False
        if self._closed is None:
            return
        self._fixed_ok = self.first_valid(*self._fixed)
        if self.kind == "ccm" and self.c["sync"]:
            self._radius = math.inf
            return
        if not self._margins:
            return
        il_s, vc_s = self._fixed
        radius = math.inf
        for a_i, a_v, b in self._margins:
            at_fixed = a_i * il_s + a_v * vc_s + b
            if at_fixed <= 0:
                return
            norm = math.hypot(a_i, a_v) * self._cond
            if norm > 0:
                radius = min(radius, at_fixed / norm)
        self._radius = 0.999 * radius

    # -- closed-form powers ---------------------------------------------------------------

    def _eigen(self) -> None:
        """Phi = V diag(lam) V^-1 and the fixed point, in closed form for the 2x2 map (Python
        floats: a new duty's map costs microseconds, not the ~0.3 ms of LAPACK calls on a
        2x2). Unit eigenvectors, a complex pair's conjugate to the last bit; none (powers
        by doubling instead) if a mode does not decay, or V is singular or worse conditioned
        than _MAX_COND."""
        self._closed = None
        a, b, c, d = self.phi
        half = 0.5 * (a + d)
        disc = 0.25 * (a - d) * (a - d) + b * c  # (lam - half)^2
        if disc < 0.0:
            lam0 = complex(half, math.sqrt(-disc))
            lam1 = lam0.conjugate()
        else:
            root = half + math.copysign(math.sqrt(disc), half)
            lam0 = complex(root)
            lam1 = complex((a * d - b * c) / root if root != 0.0 else half - (root - half))
        if not (abs(lam0) < 1.0 and abs(lam1) < 1.0):
            return
        if b == 0.0 and c == 0.0:
            v00, v10, v01, v11 = 1.0 + 0j, 0j, 0j, 1.0 + 0j
        else:
            v00, v10 = _eigenvector(a, b, c, d, lam0)
            v01, v11 = (v00.conjugate(), v10.conjugate()) if disc < 0.0 else _eigenvector(
                a, b, c, d, lam1)
        det_v = v00 * v11 - v01 * v10
        det_p = (1.0 - a) * (1.0 - d) - b * c
        if det_v == 0 or det_p == 0.0:
            return
        frob = abs(v00) ** 2 + abs(v01) ** 2 + abs(v10) ** 2 + abs(v11) ** 2
        sigma_sq = 0.5 * (frob + math.sqrt(max(frob * frob - 4.0 * abs(det_v) ** 2, 0.0)))
        cond = sigma_sq / abs(det_v)  # ||V||_2 ||V^-1||_2 = sigma_max / sigma_min
        if not math.isfinite(cond) or cond > _MAX_COND:
            return
        g1, g2 = self.gamma
        self._fixed = (((1.0 - d) * g1 + b * g2) / det_p, (c * g1 + (1.0 - a) * g2) / det_p)
        self._cond = cond
        self._closed = (lam0, lam1)
        self._closed_py = (v00, v01, v10, v11, v11 / det_v, -v01 / det_v, -v10 / det_v,
                           v00 / det_v)

    def certified(self, il0: float, vc0: float) -> bool:
        """True if every period from (il0, vc0) on is valid (the criteria cannot fail)."""
        if self._radius is None:
            self._setup_closed()
        if self._closed:
            d_i, d_v = il0 - self._fixed[0], vc0 - self._fixed[1]
            dist_sq = d_i * d_i + d_v * d_v  # as emukernel.crossing computes it
        else:
            dist_sq = 0.0
        if self._radius > 0 and dist_sq < self._radius * self._radius:
            return True
        # A degenerate fixed point (e.g. a constant diode current with the gate off: the
        # margins are zero there) that is itself a valid period: an orbit that has converged
        # onto it to rounding repeats that period forever.
        return self._fixed_ok and math.sqrt(dist_sq) <= 1e-12 * (
            1.0 + abs(self._fixed[0]) + abs(self._fixed[1]))

    def _power(self, il0, vc0, js):
        """States after ``js`` periods (numpy int array) in closed form."""
        l0, l1 = self._closed[0], self._closed[1]
        v00, v01, v10, v11, w00, w01, w10, w11 = self._closed_py
        e_i, e_v = il0 - self._fixed[0], vc0 - self._fixed[1]
        w0 = w00 * e_i + w01 * e_v
        if l0.imag != 0.0 and l1 == l0.conjugate():
            # Complex pair: the second mode is the conjugate of the first.
            p0 = np.power(l0, js) * w0
            return (self._fixed[0] + 2.0 * (v00 * p0).real,
                    self._fixed[1] + 2.0 * (v10 * p0).real)
        w1 = w10 * e_i + w11 * e_v
        p0 = np.power(l0.real, js) * w0.real if l0.imag == 0 and w0.imag == 0 else (
            np.power(l0, js) * w0)
        p1 = np.power(l1.real, js) * w1.real if l1.imag == 0 and w1.imag == 0 else (
            np.power(l1, js) * w1)
        il = self._fixed[0] + np.real(v00 * p0 + v01 * p1)
        vc = self._fixed[1] + np.real(v10 * p0 + v11 * p1)
        return il, vc

    def orbit(self, il0: float, vc0: float, count: int) -> tuple[np.ndarray, np.ndarray]:
        """States x_0..x_{count-1} from (il0, vc0), by doubling (exact to rounding)."""
        p11, p12, p21, p22 = self.phi
        g1, g2 = self.gamma
        il = np.empty(count)
        vc = np.empty(count)
        il[0], vc[0] = il0, vc0
        filled = 1
        while filled < count:
            n = min(filled, count - filled)
            i_src, v_src = il[:n], vc[:n]
            il[filled:filled + n] = p11 * i_src + p12 * v_src + g1
            vc[filled:filled + n] = p21 * i_src + p22 * v_src + g2
            filled += n
            if filled < count:
                g1, g2 = p11 * g1 + p12 * g2 + g1, p21 * g1 + p22 * g2 + g2
                p11, p12, p21, p22 = (p11 * p11 + p12 * p21, p11 * p12 + p12 * p22,
                                      p21 * p11 + p22 * p21, p21 * p12 + p22 * p22)
        self._orbit = (il0, vc0, il, vc)
        return il, vc

    # -- validity --------------------------------------------------------------------------

    def _valid(self, il: np.ndarray, vc: np.ndarray) -> np.ndarray:
        """Which periods j (from il[j], vc[j] to il[j+1], vc[j+1]) this chunk represents."""
        if self.kind == "ccm":
            c = self.c
            if c["sync"]:
                return np.ones(il.size - 1, dtype=bool)
            if c["never"]:
                return np.zeros(il.size - 1, dtype=bool)
            i0, v0, i1, v1 = il[:-1], vc[:-1], il[1:], vc[1:]
            il_edge = c["a_i"] * i0 + c["b_i"]
            vc_edge = c["a_v"] * v0 + c["b_v"]
            slope_edge = c["a11"] * il_edge + c["a12"] * vc_edge + c["b1"]
            slope_end = c["a11"] * i1 + c["a12"] * v1 + c["b1"]
            return ((il_edge > 0) & (i1 > 0) & ~((slope_edge < 0) & (slope_end > 0))
                    & (i0 >= 0))
        return ((np.abs(vc[:-1] - self.vc_ref) <= self.trust_v)
                & (np.abs(il[:-1] - self.il_ref) <= self.trust_i))

    def first_valid(self, il0: float, vc0: float) -> bool:
        """Whether the period starting at (il0, vc0) is valid (scalar arithmetic)."""
        if self.kind != "ccm":
            return (abs(vc0 - self.vc_ref) <= self.trust_v
                    and abs(il0 - self.il_ref) <= self.trust_i)
        c = self.c
        if c["sync"]:
            return True
        if c["never"] or il0 < 0:
            return False
        p11, p12, p21, p22 = self.phi
        i1 = p11 * il0 + p12 * vc0 + self.gamma[0]
        v1 = p21 * il0 + p22 * vc0 + self.gamma[1]
        il_edge = c["a_i"] * il0 + c["b_i"]
        vc_edge = c["a_v"] * vc0 + c["b_v"]
        slope_edge = c["a11"] * il_edge + c["a12"] * vc_edge + c["b1"]
        slope_end = c["a11"] * i1 + c["a12"] * v1 + c["b1"]
        return il_edge > 0 and i1 > 0 and not (slope_edge < 0 and slope_end > 0)

    def span(self, il0: float, vc0: float, count: int) -> tuple[int, bool]:
        """How many of the next ``count`` periods from (il0, vc0) this chunk represents, and
        whether the chunk ends there (False: it was only checked that far)."""
        if count <= 0:
            return 0, False
        if self.kind == "dcm":
            m = self._dcm_span(vc0, count)
            if m is not None:
                return m, m < count
        elif self.certified(il0, vc0):
            return count, False
        n = min(count, _KMAX)
        il, vc = self.orbit(il0, vc0, n + 1)
        ok = self._valid(il, vc)
        if ok.all():
            return n, False
        return int(np.argmin(ok)), True

    def _dcm_span(self, v0: float, count: int) -> int | None:
        """Closed-form exit of the 1-D DCM orbit from the trust interval (None: not monotone)."""
        lo, hi = self.vc_ref - self.trust_v, self.vc_ref + self.trust_v
        if not lo <= v0 <= hi:
            return 0
        lam = self.phi[3]
        if lam == 1.0:  # no load and no leakage: vC_{j} = v0 + j * g
            g = self.gamma[1]
            if g == 0.0:
                return count
            room = (hi - v0) / g if g > 0 else (lo - v0) / g
            return min(math.floor(room) + 1, count)
        if -1.0 < lam <= 0.0:
            v_star = self.gamma[1] / (1.0 - lam)
            reach = abs(v0 - v_star)
            return count if lo <= v_star - reach and v_star + reach <= hi else None
        if not 0.0 < lam < 1.0:
            return None
        v_star = self.gamma[1] / (1.0 - lam)
        if lo <= v_star <= hi:
            return count
        e0 = v0 - v_star
        bound = hi if v_star > hi else lo
        r = (bound - v_star) / e0   # inside while lam**j >= r
        if r <= 0.0:
            return 1
        n_in = math.floor(math.log(r) / math.log(lam)) + 1
        # Guard against rounding at the boundary: check the last inside and first outside.
        while n_in > 1 and not lo <= v_star + lam ** (n_in - 1) * e0 <= hi:
            n_in -= 1
        while n_in < count and lo <= v_star + lam ** n_in * e0 <= hi:
            n_in += 1
        return min(max(n_in, 1), count)

    def orbit_from(self, il0: float, vc0: float) -> bool:
        """Whether the last orbit computed (:meth:`orbit`) starts at (il0, vc0): :meth:`state`
        then reads its states from there rather than the closed form."""
        orbit = self._orbit
        return orbit is not None and orbit[0] == il0 and orbit[1] == vc0

    def state(self, il0: float, vc0: float, j: int) -> tuple[float, float]:
        """The state after ``j`` periods from (il0, vc0) (scalar arithmetic where possible)."""
        if j == 0:
            return il0, vc0
        if self.orbit_from(il0, vc0) and j < self._orbit[2].size:
            return float(self._orbit[2][j]), float(self._orbit[3][j])
        if self.kind == "dcm" and -1.0 < self.phi[3] <= 1.0:
            lam = self.phi[3]
            if lam == 1.0:
                return 0.0, vc0 + j * self.gamma[1]
            v_star = self.gamma[1] / (1.0 - lam)
            return 0.0, v_star + lam ** j * (vc0 - v_star)
        if self._radius is None:
            self._setup_closed()
        if self._closed is not None:
            l0, l1 = self._closed[0], self._closed[1]
            v00, v01, v10, v11, w00, w01, w10, w11 = self._closed_py
            e_i, e_v = il0 - self._fixed[0], vc0 - self._fixed[1]
            p0 = l0 ** j * (w00 * e_i + w01 * e_v)
            p1 = l1 ** j * (w10 * e_i + w11 * e_v)
            return (self._fixed[0] + (v00 * p0 + v01 * p1).real,
                    self._fixed[1] + (v10 * p0 + v11 * p1).real)
        il, vc = self.orbit(il0, vc0, j + 1)
        return float(il[j]), float(vc[j])

    def states(self, il0: float, vc0: float, js: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """States after ``js`` periods (a non-decreasing numpy int array) from (il0, vc0)."""
        top = int(js[-1]) if js.size else 0
        if self.orbit_from(il0, vc0) and top < self._orbit[2].size:
            return self._orbit[2][js], self._orbit[3][js]
        if self.kind == "dcm" and -1.0 < self.phi[3] <= 1.0:
            lam = self.phi[3]
            if lam == 1.0:
                vc = vc0 + js * self.gamma[1]
            else:
                v_star = self.gamma[1] / (1.0 - lam)
                vc = v_star + np.power(lam, js) * (vc0 - v_star)
            return np.where(js == 0, il0, 0.0), np.where(js == 0, vc0, vc)
        if self._radius is None:
            self._setup_closed()
        if self._closed is not None:
            il, vc = self._power(il0, vc0, js)
            if js[0] == 0:  # the start state itself, not its closed-form rounding
                n0 = int(np.searchsorted(js, 1))
                il[:n0] = il0
                vc[:n0] = vc0
            return il, vc
        il, vc = self.orbit(il0, vc0, top + 1)
        return il[js], vc[js]

    # -- waveforms ---------------------------------------------------------------------------

    @property
    def tables(self):
        if self._tables is None:
            self._tables = self._build()
            self._build = None
        return self._tables

    def evaluate(self, tau: np.ndarray, il: np.ndarray, vc: np.ndarray, current: bool):
        """vout (and iL if ``current``) at phases ``tau`` of periods that started at (il, vc)."""
        xp, t = self.tables
        return self._combine(lambda name: np.interp(tau, xp, t[name]), il, vc, current,
                             np.maximum)

    def compiled_arrays(self) -> tuple:
        """(kind code, phi, gamma, phase grid, tables as rows) for :mod:`.emukernel`."""
        if self._arrays is None:
            xp, t = self.tables
            self._arrays = (
                _KIND_CODES[self.kind], np.array(self.phi), np.array(self.gamma), xp,
                np.ascontiguousarray([t[name] for name in _TABLE_ROWS]))
        return self._arrays

    def closed_arrays(self) -> tuple | None:
        """(pack, phase grid, table rows, kind code) for :func:`.emukernel.certified`, None
        without a closed form. ``pack`` holds phi, gamma, the fixed point, then (lam, the row
        of V^-1) for each mode and V, complex numbers as (real, imag); then the certificate's
        squared radius (-1: none) and, for a CCM map, :meth:`first_valid`'s coefficients
        (sync, never, a_i, b_i, a_v, b_v, a11, a12, b1)."""
        if self._pack is None:
            if self._radius is None:
                self._setup_closed()
            self._pack = False
            if self._closed is not None:
                v00, v01, v10, v11, w00, w01, w10, w11 = self._closed_py
                parts = [*self.phi, *self.gamma, *self._fixed]
                for z in (self._closed[0], w00, w01, self._closed[1], w10, w11,
                          v00, v01, v10, v11):
                    parts += [z.real, z.imag]
                parts.append(self._radius * self._radius if self._radius > 0 else -1.0)
                c = self.c or dict.fromkeys(_FIRST_VALID, 0.0)
                parts += [float(c[name]) for name in _FIRST_VALID]
                kind, _, _, xp, tabs = self.compiled_arrays()
                self._pack = (np.array(parts, dtype=float), xp, tabs, kind)
        return self._pack or None

    def evaluate_at(self, tau: float, il: float, vc: float, current: bool):
        """:meth:`evaluate` at one phase ``tau`` [s] in Python floats (a firmware read costs a
        few microseconds instead of six numpy calls): ``np.interp``'s own formula, so the
        numbers are the same to the last bit."""
        if self._rows is None:
            xp, t = self.tables
            self._rows = xp.tolist(), {name: row.tolist() for name, row in t.items()}
        xp, rows = self._rows
        j = bisect.bisect_right(xp, tau) - 1
        if j < 0:
            return self._combine(lambda name: rows[name][0], il, vc, current, max)
        if j >= len(xp) - 1:
            return self._combine(lambda name: rows[name][-1], il, vc, current, max)
        x0, dx = xp[j], tau - xp[j]
        width = xp[j + 1] - x0

        def at(name: str) -> float:
            fp = rows[name]
            return fp[j] if dx == 0.0 else (fp[j + 1] - fp[j]) / width * dx + fp[j]

        return self._combine(at, il, vc, current, max)

    def _combine(self, table, il, vc, current, clip):
        """w = alpha + beta_i iL + beta_v vC from the tables interpolated by ``table(name)``;
        ``clip(x, 0.0)`` keeps an interpolated DCM current from going negative."""
        vout = table("vout") + table("vout_v") * vc
        if self.kind != "dcm":
            vout = vout + table("vout_i") * il
        if not current:
            return vout, None
        i_l = table("il")
        if self.kind == "dcm":
            return vout, clip(i_l, 0.0)
        i_l = i_l + table("il_i") * il + table("il_v") * vc
        return vout, (i_l if self.kind == "ccm" else clip(i_l, 0.0))

    def mean_vout(self, il: np.ndarray, vc: np.ndarray) -> np.ndarray:
        """Cycle average of vout over periods that started at (il, vc)."""
        if self._mean is None:
            xp, tabs = self.tables
            w = np.diff(xp)
            span = xp[-1] - xp[0]
            self._mean = {k: float(np.sum(0.5 * (v[1:] + v[:-1]) * w) / span)
                          for k, v in tabs.items()}
        m = self._mean
        return m["vout"] + m["vout_i"] * il + m["vout_v"] * vc


def _copy_record(history: list[list]) -> list[list]:
    """A copy of the plant's record that the plant's later periods leave alone: only its last
    entry can still grow (Plant._record), so only that one is copied."""
    out = list(history)
    if out:
        out[-1] = list(out[-1])
    return out


def _store(cache: OrderedDict, key, value) -> None:
    """Put ``value`` in the LRU ``cache`` (at most _CACHE_SIZE entries)."""
    cache[key] = value
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)


def _box_margins(il_ref: float, vc_ref: float, trust_i: float, trust_v: float):
    """The trust box |iL - iL_ref| <= trust_i, |vC - vC_ref| <= trust_v as affine margins."""
    return [(-1.0, 0.0, il_ref + trust_i), (1.0, 0.0, trust_i - il_ref),
            (0.0, -1.0, vc_ref + trust_v), (0.0, 1.0, trust_v - vc_ref)]


def _phase_grid(bounds: list[float], points: int) -> tuple[np.ndarray, list[slice]]:
    """Points on [bounds[0], bounds[-1]] split at every bound (each bound repeated, so that
    interpolation keeps jumps at switching instants); returns the grid and each piece's slice."""
    total = bounds[-1] - bounds[0]
    pieces = []
    slices = []
    start = 0
    for a, b in itertools.pairwise(bounds):
        if b <= a:
            continue
        m = max(4, round(points * (b - a) / total) + 1)
        pieces.append(np.linspace(a, b, m))
        slices.append(slice(start, start + m))
        start += m
    return np.concatenate(pieces), slices


class Plant:
    """The boost converter of the emulated board, advanced in time by its exact period map.

    Times are seconds on the plant's own clock (the emulator uses the wall clock). Requests
    must come in non-decreasing time order: :meth:`sample` evaluates the output at given times,
    :meth:`advance` only moves the state forward; :meth:`set_pwm` and :meth:`set_conditions`
    change the gate drive or the operating conditions from the next period boundary on.

    ``params``: a single-lane :class:`boostsim.BoostParams` (its ``fsw`` is only the initial
    switching frequency: the PWM settings decide). ``x0``: initial (iL, vC); default the steady
    state with the gate off (the output capacitor charged through the diode). ``trust_v`` [V] /
    ``trust_i`` [A]: trust region of the local affine map outside CCM (default 0.5 % of vin and
    1e-3 of vin*Ts/L); smaller is more accurate in DCM transients and costs more engine calls.
    ``compiled``: evaluate samples with :mod:`.emukernel` (default: when numba imports;
    False: the numpy reference).
    """

    def __init__(self, params: BoostParams, *, t0: float = 0.0, x0: Any = None,
                 freq: float | None = None, trust_v: float | None = None,
                 trust_i: float | None = None, compiled: bool | None = None):
        if not isinstance(params, BoostParams) or params.n_lanes != 1:
            raise ValueError("Plant needs a single-lane BoostParams")
        if trust_v is not None and not trust_v > 0:
            raise ValueError(f"trust_v must be > 0 [V], got {trust_v!r}")
        if compiled and kernel is None:
            raise ValueError("compiled=True needs numba")
        self.compiled = kernel is not None if compiled is None else bool(compiled)
        if self.compiled:
            kernel.warm_up()
        self.stats = PlantStats()
        self._trust_v_opt = trust_v
        self._trust_i_opt = trust_i
        self._freq = float(params.fsw if freq is None else freq)
        self._duty = 0.0
        self._steps = 0           # the PWM's counter steps per period (0: not given)
        self._enabled = False
        self._t_grid = float(t0)
        self._k = 0
        self._last_t = float(t0)
        self._pending: tuple[int, dict] | None = None
        self._set_params(params)
        if x0 is None:
            x0 = self._rest_state()
        self._one = (np.empty(1), np.empty(1), np.empty(1))  # at()'s (times, vout, iL)
        self._chunk: _Chunk | None = None
        # The map in force when it is certified (its CCM criteria or trust region cannot fail
        # on the rest of the orbit): requests then skip the checks (see _run_to).
        self._sure: _Chunk | None = None
        # While recording (record()): the periods moved through, for sample_past().
        self._history: list[list] | None = None
        self._move(0, x0[0], x0[1])

    # -- public ------------------------------------------------------------------------------

    @property
    def params(self) -> BoostParams:
        """The converter's present parameters (with any load/line changes applied)."""
        return self._params

    @property
    def state(self) -> tuple[float, float]:
        """(iL, vC) at the start of the current period."""
        return self._il, self._vc

    @property
    def period_start(self) -> float:
        """Plant time of the start of the current period."""
        return self._t_grid + self._k / self._freq

    @property
    def pwm(self) -> tuple[bool, float, float]:
        """(enabled, frequency, duty) in force (pending changes not included)."""
        return self._enabled, self._freq, self._duty

    def set_pwm(self, t: float, enabled: bool, freq: float, duty: float, steps: int = 0
                ) -> None:
        """Gate drive from the first period boundary at or after ``t``: off (switch open) or
        ``duty`` at ``freq`` Hz. ``steps``: the PWM counter's steps per period, when the
        duty is a whole number of them (``level / steps``, as the RP2040's slice makes it;
        0: not so): a duty met for the first time then has the maps of its neighbouring
        levels built with its own, in one computation."""
        duty = float(duty)
        if not (0.0 <= duty < 1.0):
            raise ValueError(f"duty must be in [0, 1), got {duty!r}")
        freq = float(freq)
        if not (freq > 0 and math.isfinite(freq)):
            raise ValueError(f"frequency must be > 0, got {freq!r}")
        if not (isinstance(steps, _WHOLE) and steps >= 0):
            raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
        self._schedule(t, {"enabled": bool(enabled), "freq": freq, "duty": duty,
                           "steps": int(steps)})

    def set_conditions(self, t: float, **changes: Any) -> None:
        """Change ``vin``, ``R`` (``math.inf``: load disconnected) and/or ``i_load`` from the
        first period boundary at or after ``t``."""
        unknown = set(changes) - {"vin", "R", "i_load"}
        if unknown:
            raise ValueError(f"unknown condition(s) {sorted(unknown)}: use vin, R, i_load")
        self._params.replace(**changes)  # validate now, not at the boundary
        self._schedule(t, {"params": changes})

    def advance(self, t: float) -> None:
        """Move the state to the start of the period that contains ``t``."""
        self._run_to(float(t), None, False)

    def sample(self, times: Any, current: bool = False, *, presorted: bool = False):
        """vout at the given non-decreasing times (>= every earlier request); with
        ``current=True`` a pair (vout, iL). ``presorted``: skip the order check."""
        if not (type(times) is np.ndarray and times.dtype == np.float64 and times.ndim == 1):
            times = np.asarray(times, dtype=float).reshape(-1)
        out_v = np.empty(times.size)
        out_i = np.empty(times.size) if current else None
        if times.size:
            if not presorted and times.size > 1 and (times[1:] < times[:-1]).any():
                raise ValueError("sample times must be non-decreasing")
            if times[0] < self._last_t - 1e-12:
                raise ValueError(f"time went backwards: {float(times[0])!r} < {self._last_t!r}")
            self._run_to(float(times[-1]), (times, out_v, out_i), current)
        return (out_v, out_i) if current else out_v

    def at(self, t: float, current: bool = False) -> tuple[float, float | None]:
        """(vout, iL if ``current`` else None) at one time ``t`` (>= every earlier request), as
        floats: :meth:`sample` for one instant, without arrays when ``t`` falls in the period
        the plant is in (its waveform is final: a change takes effect at the next boundary)."""
        cur = self._cur
        if cur is not None and self._last_t <= t < cur[1]:
            self._last_t = t
            self.stats.samples += 1
            return cur[2].evaluate_at(t - cur[0], self._il, self._vc, current)
        t = float(t)
        if not t >= self._last_t - 1e-12:
            raise ValueError(f"time went backwards: {t!r} < {self._last_t!r}")
        times, out_v, out_i = one = self._one  # no arrays made for one instant
        times[0] = t
        self._run_to(t, one if current else (times, out_v, None), current)
        return out_v.item(0), (out_i.item(0) if current else None)

    def record(self, on: bool) -> None:
        """Keep (``on``) or drop the record of the periods the plant moves through from its
        next request on, so that :meth:`sample_past` can evaluate the output at instants it
        has already moved past (the board's streamed samples, computed when read)."""
        self._history = [] if on else None

    def sample_past(self, times: Any) -> np.ndarray:
        """vout at sorted ``times`` from the record (:meth:`record`): instants the plant has
        moved through since the earlier of its first request after ``record(True)`` and the
        last ``sample_past``, or later ones (the plant moves on to them). Exactly what
        :meth:`sample` would have given at those instants; the record before the last of
        ``times`` is dropped."""
        history = self._history
        if history is None:
            raise RuntimeError("sample_past needs record(True)")
        times = np.asarray(times, dtype=float).reshape(-1)
        if times.size > 1 and (times[1:] < times[:-1]).any():
            raise ValueError("sample times must be non-decreasing")
        out = np.empty(times.size)
        if not times.size:
            return out
        t_last = float(times[-1])
        if t_last > self._last_t:
            self._run_to(t_last, None, False)
        if not history:
            raise ValueError("sample_past: no period recorded")
        if float(times[0]) < history[0][0] - 1e-12:
            raise ValueError(f"sample_past: {float(times[0])!r} is before the record "
                             f"({history[0][0]!r})")
        pos = keep = 0
        last = len(history) - 1
        for n, (_, t_grid, freq, k, m, il0, vc0, chunk) in enumerate(history):
            if n < last:  # a later entry starting there has the final word
                end = min(t_grid + (k + m) / freq, history[n + 1][0])
                hi = bisect.bisect_left(times, end, pos)
            else:
                hi = times.size
            if hi > pos:
                self._evaluate(chunk, il0, vc0, m, times, pos, hi, out, None,
                               freq, t_grid * freq + k)
                pos = hi
                keep = n
            if pos == times.size:
                break
        self._history = history[keep:]
        _, t_grid, freq, k, m, il0, vc0, chunk = self._history[0]
        j = min(max(math.floor((t_last - t_grid) * freq) - k, 0), m - 1)
        if j > 0:  # an extended entry (see _record) starts at the last instant's period
            self._history[0] = [t_grid + (k + j) / freq, t_grid, freq, k + j, m - j,
                                *chunk.state(il0, vc0, j), chunk]
        return out

    def _record(self, m: int, il0: float, vc0: float, chunk: _Chunk) -> None:
        """Note ``m`` periods from the present one (state il0, vc0) under ``chunk``. Periods
        that continue the last entry's CCM map (the state on its orbit) extend that entry: a
        steady map read many times between two ``sample_past`` is one entry, not one per
        read (its later states then come from the entry's start by the map, equal to the
        plant's own to rounding)."""
        history = self._history
        start = self._t_grid + self._k / self._freq
        if history and history[-1][0] == start:
            history.pop()  # the same periods again, or a later map from there: the final word
        if history and chunk.kind == "ccm":
            last = history[-1]
            if (last[7] is chunk and last[1] == self._t_grid and last[2] == self._freq
                    and last[3] + last[4] >= self._k):
                last[4] = max(last[4], self._k + m - last[3])  # the last entry is this
                return  # plant's own (checkpoint and restore copy it)
        history.append([start, self._t_grid, self._freq, self._k, m, il0, vc0, chunk])

    def checkpoint(self) -> dict[str, Any]:
        """The plant's state (clock, periods, PWM, conditions, pending change) for
        :meth:`restore`: a caller that evaluated ahead in time (e.g. a batch of timer-IRQ
        instants) and then learns of a change at an earlier instant goes back to the
        checkpoint and advances to that instant again. Cheap (a shallow copy); caches are
        shared (they only hold functions of the parameters)."""
        state = {k: v for k, v in self.__dict__.items() if k != "stats"}
        state["stats.periods"] = self.stats.periods
        if self._history is not None:
            state["_history"] = _copy_record(self._history)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Go back to a :meth:`checkpoint` (later requests may then be earlier than the ones
        made since). ``stats.periods`` goes back too (it counts the periods the plant moved
        through); the other counters keep the work done."""
        self.__dict__.update(state)
        self.stats.periods = self.__dict__.pop("stats.periods")
        if self._history is not None:
            self._history = _copy_record(self._history)  # the checkpoint stays as it was

    def vout(self, t: float) -> float:
        """Output voltage at time ``t``."""
        return float(self.sample([t])[0])

    def run_periods(self, n: int) -> np.ndarray:
        """Advance ``n`` whole periods from the present period start, returning each period's
        cycle average of vout (for validation against :func:`boostsim.simulate`)."""
        means = np.empty(int(n))
        done = 0
        while done < n:
            self._apply_due()
            limit = n - done
            if self._pending is not None:
                limit = min(limit, self._pending[0] - self._k)
            chunk = self._get_chunk()
            m, ended = chunk.span(self._il, self._vc, min(limit, _KMAX))
            if m:
                if self._history is not None:
                    self._record(m, self._il, self._vc, chunk)
                il, vc = chunk.states(self._il, self._vc, np.arange(m + 1))
                means[done:done + m] = chunk.mean_vout(il[:m], vc[:m])
                self._move(m, il[m], vc[m])
                done += m
            if ended:
                self._chunk = self._sure = None
        self._last_t = max(self._last_t, self.period_start)
        return means

    # -- internals -----------------------------------------------------------------------------

    def _set_params(self, params: BoostParams) -> None:
        self._params = params
        lanes = {k: np.ascontiguousarray(v) for k, v in params.arrays().items()}
        lanes["synchronous"] = lanes["synchronous"].astype(bool)
        self._lanes = lanes
        self._coef = sg.coefficients(lanes, lanes["vin"], lanes["R"], lanes["i_load"])
        self._cache: OrderedDict = OrderedDict()
        self._stepper: Stepper | None = None
        self._stepper_freq: float | None = None
        vin = float(lanes["vin"][0])
        self._i_eps = 1e-9 * vin / (self._freq * float(lanes["L"][0]))
        self._trust_v = self._trust_v_opt if self._trust_v_opt is not None else 0.005 * vin
        self._chunk = self._sure = None
        self._cur: tuple | None = None  # (start, end, map) of the present period, see at()

    def _rest_state(self) -> tuple[float, float]:
        """Steady state with the gate off (or the diode threshold with no load)."""
        from boostsim.steady import steady_state

        p = self._params
        if np.isinf(float(p.R)) and float(p.i_load) == 0.0 and not bool(p.synchronous):
            return 0.0, float(sg.reconduction_threshold(self._coef)[0])
        ss = steady_state(p.replace(fsw=self._freq), 0.0)
        return float(ss.il_start), float(ss.vc_start)

    def _schedule(self, t: float, change: dict) -> None:
        t = float(t)
        cur = self._cur
        if cur is not None and self._last_t <= t < cur[1]:
            self._last_t = t  # in the period the plant is in (a control step's PWM write)
        else:
            self._run_to(t, None, False)
        # The first boundary at or after t.
        k_apply = max(math.ceil((t - self._t_grid) * self._freq - 1e-9), self._k)
        if self._pending is not None:
            k_old, merged = self._pending
            merged = dict(merged)
            if "params" in merged and "params" in change:
                change = dict(change, params={**merged["params"], **change["params"]})
            merged.update(change)
            self._pending = (min(k_old, k_apply), merged)
        else:
            self._pending = (k_apply, change)
        self._apply_due()

    def _apply_due(self) -> None:
        """Apply the pending change if its boundary has been reached."""
        if self._pending is None or self._pending[0] > self._k:
            return
        _, change = self._pending
        self._pending = None
        self._cur = None  # the present period changes
        if "params" in change:
            self._set_params(self._params.replace(**change["params"]))
        if "freq" in change and change["freq"] != self._freq:
            # The period grid restarts at this boundary.
            self._t_grid += self._k / self._freq
            self._k = 0
            self._freq = change["freq"]
            self._chunk = self._sure = None
        if "enabled" in change:
            self._steps = change["steps"]
            duty = change["duty"] if change["enabled"] else 0.0
            self._enabled = change["enabled"]
            if duty != self._duty:
                self._duty = duty
                self._chunk = self._sure = None

    def _move(self, m: int, il_end: float, vc_end: float) -> None:
        self._cur = None
        self._k += m
        il_end = float(il_end)
        # A current within rounding of zero is zero: the period starts at rest (otherwise an
        # orbit sitting on the CCM/DCM boundary would flip between the maps every period).
        if abs(il_end) > self._i_eps:
            self._il = il_end
        else:
            self._il = 0.0
            self._sure = None  # off the certified orbit
        self._vc = float(vc_end)
        self.stats.periods += m

    def _run_to(self, t_end: float, samples, current: bool) -> None:
        """Advance to the period containing ``t_end``, evaluating ``samples`` on the way."""
        if t_end < self._last_t - 1e-12:
            raise ValueError(f"time went backwards: {t_end!r} < {self._last_t!r}")
        if samples is not None:
            times, out_v, out_i = samples
        pos = 0
        sure = self._sure
        while sure is not None:
            k_t = max(math.floor((t_end - self._t_grid) * self._freq), self._k)
            pending = self._pending
            if pending is None or pending[0] > k_t:
                # The certified map holds for every period up to the one containing t_end.
                self._run_sure(sure, k_t, t_end, samples, pos)
                return
            # A change before t_end (a control step's new duty): the certified map up to its
            # boundary, then the map after it, on this same path if that one is certified
            # too (as the loop below would do, with fewer checks).
            n = pending[0] - self._k
            if n and self.compiled:
                done = self._cross(sure, n, k_t, t_end, samples, pos)
                if done is None:
                    return  # the new duty's map took over, to t_end
                if done >= 0:
                    pos = done  # at the change; on as below, with the new map
                    n = 0
            if n:
                if self._history is not None:
                    self._record(n, self._il, self._vc, sure)
                hi = pos
                if samples is not None and pos < times.size:
                    hi = bisect.bisect_left(times, self._t_grid + pending[0] / self._freq, pos)
                self._run_certified(sure, n, n, _NO_SAMPLES if samples is None else samples,
                                    pos, hi)
                pos = hi
            self._apply_due()
            chunk = self._get_chunk()
            if chunk.kind == "dcm" or not chunk.certified(self._il, self._vc):
                break
            self._sure = sure = chunk
        while True:
            self._apply_due()
            k_t = max(math.floor((t_end - self._t_grid) * self._freq), self._k)
            if self._pending is not None and self._pending[0] <= k_t:
                # The periods before the change's boundary; then apply it and go on.
                n_adv = n_eval = self._pending[0] - self._k
                final = False
            else:
                n_adv, n_eval, final = k_t - self._k, k_t - self._k + 1, True
            chunk = self._get_chunk()
            il0, vc0 = self._il, self._vc
            m, ended = chunk.span(il0, vc0, n_eval)
            if not ended and chunk.kind != "dcm" and chunk.certified(il0, vc0):
                self._sure = chunk
            if self._history is not None and m:
                self._record(m, il0, vc0, chunk)
            if samples is not None and pos < times.size and m:
                # Samples in periods k .. k+m-1.
                if final and m == n_eval:
                    hi = times.size
                else:
                    t_lim = self._t_grid + (self._k + m) / self._freq
                    hi = bisect.bisect_left(times, t_lim, pos)
                if hi > pos:
                    self._evaluate(chunk, il0, vc0, m, times, pos, hi, out_v, out_i,
                                   self._freq, self._t_grid * self._freq + self._k)
                    pos = hi
            adv = min(m, n_adv)
            if adv:
                self._move(adv, *chunk.state(il0, vc0, adv))
            if ended:
                self._chunk = self._sure = None  # the next period needs a new map
            if final and m == n_eval:
                # The period now entered, and the map valid for it (see at()).
                t0 = self._t_grid + self._k / self._freq
                self._cur = (t0, t0 + 1.0 / self._freq, chunk)
                break
        self._last_t = max(self._last_t, t_end)

    def _run_sure(self, sure: _Chunk, k_t: int, t_end: float, samples, pos: int) -> None:
        """The certified map ``sure`` up to period ``k_t`` (containing ``t_end``), no change
        pending before it: :meth:`_record`, :meth:`_run_certified` and :meth:`_move` for a
        control loop's every request, their common case in place (the same numbers)."""
        k = self._k
        n = k_t - k
        il0, vc0 = self._il, self._vc
        freq, t_grid = self._freq, self._t_grid
        times, out_v, out_i = _NO_SAMPLES if samples is None else samples
        hi = times.size
        base = t_grid * freq + k
        pack = sure._pack
        history = self._history
        if not (pack and self.compiled and not sure.orbit_from(il0, vc0) and (
                hi == pos or float(times[hi - 1]) * freq - base < kernel.MAX_PERIODS)):
            if history is not None:
                self._record(n + 1, il0, vc0, sure)
            self._run_certified(sure, n + 1, n, (times, out_v, out_i), pos, hi)
        else:
            if history is not None:
                last = history[-1] if history else None
                if (last is not None and last[7] is sure and last[1] == t_grid
                        and last[2] == freq and last[3] + last[4] >= k
                        and last[0] != t_grid + k / freq):
                    if k + n + 1 - last[3] > last[4]:  # the same entry, on (as _record does)
                        last[4] = k + n + 1 - last[3]
                else:
                    self._record(n + 1, il0, vc0, sure)
            stats = self.stats
            stats.samples += hi - pos
            il1, vc1 = kernel.certified(times, pos, hi, freq, base, n + 1, il0, vc0, *pack,
                                        out_i is not None, out_v,
                                        _EMPTY if out_i is None else out_i, n)
            if n:  # _move
                self._k = k = k_t
                if abs(il1) > self._i_eps:
                    self._il = il1
                else:
                    self._il = 0.0
                    self._sure = None  # off the certified orbit
                self._vc = vc1
                stats.periods += n
        t0 = t_grid + self._k / freq
        self._cur = (t0, t0 + 1.0 / freq, sure)
        if t_end > self._last_t:
            self._last_t = t_end

    def _cross(self, sure: _Chunk, n: int, k_t: int, t_end: float, samples, pos: int
               ) -> int | None:
        """A duty change ``n`` periods on under the certified map ``sure`` (a control step's
        new duty), in one compiled call (:func:`.emukernel.crossing`) when the new duty's CCM
        map is built: the periods to the change, then -- if that map is certified from there
        -- the rest to ``t_end`` (period ``k_t``) under it; what the loop in :meth:`_run_to`
        does, to the last bit. Returns None when it went all the way, the position in
        ``samples``' times reached when it stopped at the change (the change applied, the
        new map not certified there), -1 when it did nothing."""
        change = self._pending[1]
        if ("params" in change or not (change["enabled"] and self._enabled)
                or change["freq"] != self._freq or change["duty"] == self._duty):
            return -1  # not a duty change alone (set_conditions' changes come as "params")
        freq = self._freq
        key = ("ccm", freq, change["duty"])
        after = self._cache.get(key)
        if after is None:
            return -1  # the new duty's map is not built yet: the loop builds it
        pack = sure._pack or sure.closed_arrays()
        pack_after = after._pack or after.closed_arrays()
        il0, vc0 = self._il, self._vc
        times, out_v, out_i = _NO_SAMPLES if samples is None else samples
        k = self._k
        base = self._t_grid * freq + k
        if not (pack and pack_after) or sure.orbit_from(il0, vc0) or (
                times.size > pos and float(times[-1]) * freq - base >= kernel.MAX_PERIODS):
            return -1
        mid = pos
        if times.size > pos:
            mid = bisect.bisect_left(times, self._t_grid + (k + n) / freq, pos)
        n_next = k_t - k - n
        history = self._history
        if history is not None:
            self._record(n, il0, vc0, sure)
        il_c, vc_c, went_on, il_e, vc_e = kernel.crossing(
            times, pos, mid, times.size, freq, base, n, il0, vc0, *pack,
            self._t_grid * freq + (k + n), n_next, *pack_after[:3],
            out_i is not None, out_v, _EMPTY if out_i is None else out_i, self._i_eps)
        if not went_on:
            self.stats.samples += mid - pos
            self._move(n, il_c, vc_c)
            self._apply_due()
            return mid
        # What _move, _apply_due, _get_chunk (a cache hit) and _record do here (then _move):
        # the change is a duty alone, the current at it not rounded to zero (the kernel
        # checked), the new map certified from there.
        stats = self.stats
        stats.samples += times.size - pos
        stats.periods += n
        stats.cache_hits += 1
        self._cache.move_to_end(key)
        self._pending = None
        self._steps = change["steps"]
        self._duty = change["duty"]
        self._chunk = self._sure = after
        self._k = k + n
        il_c, vc_c = float(il_c), float(vc_c)
        if history is not None:
            self._record(n_next + 1, il_c, vc_c, after)
        if n_next:
            if after.orbit_from(il_c, vc_c):
                il_e, vc_e = after.state(il_c, vc_c, n_next)  # as _run_certified would
            self._move(n_next, il_e, vc_e)
        else:
            self._il, self._vc = il_c, vc_c
        t0 = self._t_grid + self._k / freq
        self._cur = (t0, t0 + 1.0 / freq, after)
        if t_end > self._last_t:
            self._last_t = t_end
        return None

    def _run_certified(self, chunk: _Chunk, m: int, n: int, samples: tuple, pos: int,
                       hi: int) -> None:
        """Under the certified ``chunk`` (no period of it needs checking): the samples
        ``times[pos:hi]`` of ``samples`` (times, out_v, out_i), all in the present period and
        the ``m - 1`` after it, then the state ``n`` periods on. One compiled call
        (:func:`.emukernel.certified`) where the closed form is there, the same numbers as
        :meth:`_evaluate` and :meth:`_Chunk.state` (which do it otherwise)."""
        il0, vc0 = self._il, self._vc
        times, out_v, out_i = samples
        freq = self._freq
        base = self._t_grid * freq + self._k
        pack = (chunk._pack or chunk.closed_arrays()) if self.compiled else None
        if (pack and not chunk.orbit_from(il0, vc0)
                and (hi == pos or float(times[hi - 1]) * freq - base < kernel.MAX_PERIODS)):
            self.stats.samples += hi - pos
            il1, vc1 = kernel.certified(times, pos, hi, freq, base, m, il0, vc0, *pack,
                                        out_i is not None, out_v,
                                        _EMPTY if out_i is None else out_i, n)
        else:
            if hi > pos:
                self._evaluate(chunk, il0, vc0, m, times, pos, hi, out_v, out_i, freq, base)
            il1, vc1 = chunk.state(il0, vc0, n)
        if n:
            self._move(n, il1, vc1)

    def _evaluate(self, chunk: _Chunk, il0: float, vc0: float, m: int, times: np.ndarray,
                  pos: int, hi: int, out_v: np.ndarray, out_i: np.ndarray | None,
                  freq: float, base: float) -> None:
        """vout (and iL) at ``times[pos:hi]``, all in the chunk's periods k .. k+m-1 from
        (il0, vc0), period k starting at ``base / freq`` on the plant's clock: a few samples in
        Python floats, more vectorised."""
        current = out_i is not None
        self.stats.samples += hi - pos
        if self.compiled and float(times[hi - 1]) * freq - base < kernel.MAX_PERIODS:
            kind, phi, gamma, xp, tabs = chunk.compiled_arrays()
            kernel.evaluate(times, pos, hi, freq, base, m, il0, vc0, phi, gamma, xp, tabs,
                             kind, current, out_v, out_i if current else _EMPTY)
            return
        if hi - pos <= _SCALAR_SAMPLES:
            for p in range(pos, hi):
                rel = float(times[p]) * freq - base
                j = min(max(math.floor(rel), 0), m - 1)
                tau = min(max(rel - j, 0.0), 1.0) / freq
                il_j, vc_j = chunk.state(il0, vc0, j)
                v, i = chunk.evaluate_at(tau, il_j, vc_j, current)
                out_v[p] = v
                if current:
                    out_i[p] = i
            return
        rel = times[pos:hi] * freq
        rel -= base
        j = rel.astype(np.int64)  # floor: rel >= -rounding (the times are in these periods)
        beyond = j[-1] >= m
        if beyond:
            np.minimum(j, m - 1, out=j)
        tau = rel - j
        if beyond or rel[0] < 0.0:  # rounding at either end of the chunk
            np.clip(tau, 0.0, 1.0, out=tau)
        tau *= 1.0 / freq
        il_j, vc_j = chunk.states(il0, vc0, j)
        v, i = chunk.evaluate(tau, il_j, vc_j, current)
        out_v[pos:hi] = v
        if current:
            out_i[pos:hi] = i

    # -- maps ------------------------------------------------------------------------------------

    def _get_chunk(self) -> _Chunk:
        if self._chunk is not None:
            return self._chunk
        ccm = self._ccm_map()
        if ccm.first_valid(self._il, self._vc):
            self._chunk = ccm
        elif self._il == 0.0:
            self._chunk = self._dcm_map(self._vc)
        else:
            self._chunk = self._transition_map(self._il, self._vc)
        return self._chunk

    def _cached(self, key):
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.stats.cache_hits += 1
        return hit

    def _ccm_map(self) -> _Chunk:
        """The affine CCM period map at the present duty (cached):
        :func:`boostsim.segments.ccm_period_map`, as in :func:`boostsim.runahead.ccm_run_ahead`.
        A miss builds the maps of the PWM levels near the duty too (:meth:`_near_levels`), in
        one vectorised computation (as cheap as one map): a control loop's transient walks
        through neighbouring levels."""
        key = ("ccm", self._freq, self._duty)
        hit = self._cached(key)
        if hit is not None:
            return hit
        duties = [*self._near_levels(), self._duty]
        chunks = self._ccm_maps(duties)
        for duty, chunk in zip(duties, chunks, strict=True):
            _store(self._cache, ("ccm", self._freq, duty), chunk)
        return chunks[-1]

    def _near_levels(self) -> list[float]:
        """Duties of the :data:`_LEVEL_BLOCK` PWM levels around the present duty whose maps
        are not cached, when the duty is a whole number of the PWM's counter steps
        (``set_pwm``'s ``steps``): ``level / steps``, as the RP2040's slice makes them."""
        steps = self._steps
        if not steps:
            return []
        level = round(self._duty * steps)
        if level / steps != self._duty:
            return []
        first = max(1, level - _LEVEL_BLOCK // 2)
        near = (n / steps for n in range(first, min(steps, first + _LEVEL_BLOCK)) if n != level)
        return [d for d in near if ("ccm", self._freq, d) not in self._cache]

    def _ccm_maps(self, duties: list[float]) -> list[_Chunk]:
        """The CCM maps of ``duties`` at the present frequency and conditions, computed
        together (their waveform tables too, when the first of them is needed)."""
        self.stats.ccm_maps += len(duties)
        c = self._coef
        Ts = 1.0 / self._freq
        t_on = np.array(duties) * Ts
        pm = sg.ccm_period_map(c, t_on, Ts - t_on)
        il_eq, vc_eq = float(pm.il_eq[0]), float(pm.vc_eq[0])
        sync = bool(self._lanes["synchronous"][0])
        a11, a12, b1 = (float(v[0]) for v in sg.diode_slope(c))
        half_ring = float(sg.ringing_half_period(c)[0])
        per_duty = [np.broadcast_to(v, t_on.shape).tolist() for v in (
            pm.a_i, pm.a_v, pm.b_i, pm.b_v, pm.p11, pm.p12, pm.p21, pm.p22, pm.g1, pm.g2)]
        tables: list = []

        def block_tables() -> list:
            if not tables:
                tables.extend(self._ccm_tables(duties, per_duty[:4], il_eq, vc_eq))
            return tables

        chunks = []
        for n, (duty, a_i, a_v, b_i, b_v, p11, p12, p21, p22, g1, g2) in enumerate(
                zip(duties, *per_duty, strict=True)):
            never = not sync and not Ts - duty * Ts < half_ring
            # Certificate margins (affine in x_k, all > 0 imply the CCM criteria of a period):
            # iL at the start >= 0, at the PWM edge > 0, at the end > 0, and diL/dt < 0 at
            # the end (then there is no dip below zero in between).
            margins = [] if (sync or never) else [
                (1.0, 0.0, 0.0),
                (a_i, 0.0, b_i),
                (p11, p12, g1),
                (-(a11 * p11 + a12 * p21), -(a11 * p12 + a12 * p22),
                 -(a11 * g1 + a12 * g2 + b1)),
            ]
            cdict = {"a_i": a_i, "b_i": b_i, "a_v": a_v, "b_v": b_v, "sync": sync,
                     "never": never, "a11": a11, "a12": a12, "b1": b1}
            chunks.append(_Chunk("ccm", (p11, p12, p21, p22), (g1, g2),
                                 lambda n=n: block_tables()[n], c=cdict, margins=margins))
        return chunks

    def _ccm_tables(self, duties: list[float], edge: list[list[float]], il_eq: float,
                    vc_eq: float) -> list[tuple[np.ndarray, dict]]:
        """Waveform tables (phase grid, named rows) of the CCM maps of ``duties``, whose
        PWM-edge maps are ``edge`` = (a_i, a_v, b_i, b_v) lists: x(tau) = o(tau) + Psi(tau) x0
        on each segment, vout and iL linear in x(tau). All duties' points in one pass: each
        duty's grid is :func:`_phase_grid`'s (the switch on, then the diode, each piece as
        ``np.linspace`` makes it), laid end to end."""
        self.stats.tables += len(duties)
        Ts = 1.0 / self._freq
        ck = self._coef[:, :1]
        t_on = np.array(duties) * Ts
        n_on = np.where(t_on > 0, np.maximum(4, np.round(_TABLE_POINTS * t_on / Ts) + 1), 0)
        n_off = np.maximum(4, np.round(_TABLE_POINTS * (Ts - t_on) / Ts) + 1)
        n_on, n_off = n_on.astype(np.int64), n_off.astype(np.int64)
        # Each point: its duty, whether the switch is on, its index in its piece.
        sizes = np.ravel(np.column_stack([n_on, n_off]))
        piece = np.repeat(np.arange(sizes.size), sizes)
        index = np.arange(piece.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        duty = piece // 2
        on = piece % 2 == 0
        start = np.where(on, 0.0, t_on[duty])
        stop = np.where(on, t_on[duty], Ts)
        count = np.where(on, n_on[duty], n_off[duty])
        xp = index * ((stop - start) / (count - 1)) + start  # np.linspace's arithmetic
        last = index == count - 1
        xp[last] = stop[last]
        rows = np.zeros((len(_TABLE_ROWS), xp.size))
        row = {name: rows[k] for k, name in enumerate(_TABLE_ROWS)}
        # Switch on (from the period start): independent of the duty.
        tau_on = xp[on]
        zero = np.zeros(tau_on.size)
        o_i, o_v = sg.on_state(ck, zero, zero, tau_on)
        on_i, on_v = sg.on_transition(ck, tau_on)
        row["il"][on], row["il_i"][on] = o_i, on_i
        row["vout"][on] = sg.vout_of(ck, sg.ON, o_i, o_v)
        row["vout_v"][on] = sg.vout_gains(ck, sg.ON)[1] * on_v
        # The diode (from the PWM edge).
        off = ~on
        tau_off = xp[off] - start[off]
        a_i, a_v, b_i, b_v = (np.asarray(v)[duty[off]] for v in edge)
        E11, E12, E21, E22 = sg.diode_transition(ck, tau_off)
        oi = il_eq + E11 * (b_i - il_eq) + E12 * (b_v - vc_eq)
        ov = vc_eq + E21 * (b_i - il_eq) + E22 * (b_v - vc_eq)
        pii, piv, pvi, pvv = E11 * a_i, E12 * a_v, E21 * a_i, E22 * a_v
        gain_i, gain_v = sg.vout_gains(ck, sg.DIODE)
        row["il"][off], row["il_i"][off], row["il_v"][off] = oi, pii, piv
        row["vout"][off] = sg.vout_of(ck, sg.DIODE, oi, ov)
        row["vout_i"][off] = gain_v * pvi + gain_i * pii
        row["vout_v"][off] = gain_v * pvv + gain_i * piv
        bounds = np.concatenate([[0], np.cumsum(n_on + n_off)]).tolist()
        return [(xp[a:b], {name: r[a:b] for name, r in row.items()})
                for a, b in itertools.pairwise(bounds)]

    def _get_stepper(self) -> Stepper:
        if self._stepper is None or self._stepper_freq != self._freq:
            lanes = {k: np.repeat(v, _BATCH) for k, v in self._lanes.items()}
            lanes["fsw"] = np.full(_BATCH, self._freq)
            self._stepper = Stepper(lanes)
            self._stepper_freq = self._freq
        return self._stepper

    def _reference(self, il: np.ndarray, vc: np.ndarray):
        """Exact engine periods (with Jacobians) from up to _BATCH start states at the present
        duty: one vectorised call costs about as much as one lane."""
        pad = _BATCH - il.size
        il_b = np.concatenate([il, np.repeat(il[-1:], pad)])
        vc_b = np.concatenate([vc, np.repeat(vc[-1:], pad)])
        self.stats.references += 1
        return self._get_stepper().period(0, il_b, vc_b, np.full(_BATCH, self._duty),
                                          jacobian=True)

    def _waveform_builder(self, period, lane: int, vc_ref: float):
        """() -> tables of the reference period's exact waveform (both limits at each
        switching instant); other start states shift it by their change of vC."""
        Ts = 1.0 / self._freq
        coef = self._coef

        def build():
            self.stats.tables += 1
            a_out = float(sg.vout_gains(coef, sg.ON)[1][0])
            live = [(int(s.topology[lane]), float(s.start[lane]), float(s.duration[lane]),
                     float(s.il0[lane]), float(s.vc0[lane]), s.coef[:, lane:lane + 1])
                    for s in period.segments if s.duration[lane] > 0]
            bounds = [0.0] + [start + dur for _, start, dur, _, _, _ in live]
            bounds[-1] = Ts
            xp, slices = _phase_grid(bounds, _TABLE_POINTS)
            vout = np.empty(xp.size)
            i_l = np.empty(xp.size)
            for (topo, start, dur, i0, v0, ck), sl in zip(live, slices, strict=True):
                tau = np.clip(xp[sl] - start, 0.0, dur)
                top = np.full(tau.size, topo, dtype=np.int8)
                si, sv = sg.state_at(ck, top, np.full(tau.size, i0), np.full(tau.size, v0), tau)
                vout[sl] = sg.vout_of(ck, top, si, sv)
                i_l[sl] = si
            zeros = np.zeros(xp.size)
            return xp, {"vout": vout - a_out * vc_ref, "vout_i": zeros,
                        "vout_v": np.full(xp.size, a_out), "il": i_l, "il_i": zeros,
                        "il_v": zeros}

        return build

    @staticmethod
    def _affine(period, lane: int, il: float, vc: float):
        J = period.jacobian[lane]
        il1, vc1 = float(period.il_end[lane]), float(period.vc_end[lane])
        phi = (float(J[0, 0]), float(J[0, 1]), float(J[1, 0]), float(J[1, 1]))
        gamma = (il1 - phi[0] * il - phi[1] * vc, vc1 - phi[2] * il - phi[3] * vc)
        return phi, gamma

    def _dcm_map(self, vc: float) -> _Chunk:
        """Local map of a period starting at rest (iL = 0): cached on a grid of vC values
        trust_v apart; a miss computes a batch of grid points in the direction of travel."""
        step = self._trust_v
        g = round(vc / step)
        base = ("dcm", self._freq, self._duty)
        hit = self._cached((*base, g))
        if hit is not None:
            return hit
        if (*base, g - 1) in self._cache:
            grid = range(g, g + _BATCH)
        elif (*base, g + 1) in self._cache:
            grid = range(g - _BATCH + 1, g + 1)
        else:
            grid = range(g - _BATCH // 2 + 1, g + _BATCH // 2 + 1)
        grid = [gi for gi in grid if (*base, gi) not in self._cache]
        vcs = np.array(grid, dtype=float) * step
        period = self._reference(np.zeros(vcs.size), vcs)
        chunk = None
        for lane, gi in enumerate(grid):
            v_ref = float(vcs[lane])
            phi, gamma = self._affine(period, lane, 0.0, v_ref)
            dcm = phi[0] == 0.0 and phi[1] == 0.0 and gamma[0] == 0.0
            ch = _Chunk("dcm" if dcm else "transition", phi, gamma,
                        self._shared_table(period, lane, v_ref, gi), il_ref=0.0, vc_ref=v_ref,
                        trust_i=self._i_eps, trust_v=step,
                        margins=_box_margins(0.0, v_ref, self._i_eps, step))
            _store(self._cache, (*base, gi), ch)
            if gi == g:
                chunk = ch
        return chunk

    def _shared_table(self, period, lane: int, vc_ref: float, g: int):
        """DCM references within _TABLE_STRIDE grid steps share one waveform table (the shape
        changes by ~(stride * trust_v / vout) of the ripple: far below one ADC code)."""
        key = ("dcmtab", self._freq, self._duty, round(g / _TABLE_STRIDE))
        own = self._waveform_builder(period, lane, vc_ref)
        cache = self._cache  # these conditions' (a table may be built after they changed)

        def build():
            tables = cache.get(key)
            if tables is None:
                tables = own()
                _store(cache, key, tables)
            return tables

        return build

    def _transition_map(self, il: float, vc: float) -> _Chunk:
        """Local map of one period that is neither CCM nor starts at rest (cached by its exact
        start state: a plant taken back to a checkpoint meets the same period again)."""
        key = ("transition", self._freq, self._duty, il, vc)
        hit = self._cached(key)
        if hit is not None:
            return hit
        self.stats.transitions += 1
        trust_i = (self._trust_i_opt if self._trust_i_opt is not None
                   else 1e-3 * float(self._lanes["vin"][0]) / self._freq
                   / float(self._lanes["L"][0]))
        period = self._reference(np.array([il]), np.array([vc]))
        phi, gamma = self._affine(period, 0, il, vc)
        chunk = _Chunk("transition", phi, gamma, self._waveform_builder(period, 0, vc),
                       il_ref=il, vc_ref=vc, trust_i=trust_i, trust_v=self._trust_v,
                       margins=_box_margins(il, vc, trust_i, self._trust_v))
        _store(self._cache, key, chunk)
        return chunk
