"""System identification: fit the exact switching model to a measured output stream.

Given the excitation (the duty schedule: a starting duty and the times [s] at which the duty
changed, on the same clock as the samples) and the measured output voltage at the sample times,
:func:`identify` fits the inductance ``L``, the capacitance ``C``, a lumped series loss
resistance ``r_series = r_L + r_on`` (split in the starting board's ratio), the capacitor ESR
``r_C`` and the input voltage ``vin`` (with a measured ``vin`` as a prior where the board has
one) -- plus the excitation's timing offset, a nuisance parameter -- by
``scipy.optimize.least_squares`` on simulated vs measured samples.

Every model evaluation is one :func:`boostsim.simulate` call whose lanes are the candidate and,
for the Jacobian, one forward-difference lane per parameter. Uncertainties come from the
Jacobian at the optimum (``cov = pinv(J^T J)`` scaled by the residual variance); parameters the
data cannot separate (a relative 1-sigma above ``max_rel_std`` or a correlation beyond
``max_corr``) are reported as not determined, together with the product of powers of them that
the data does determine (e.g. ``L^1 C^0.97``, the resonance).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .params import BoostParams

__all__ = ["FIT_NAMES", "Combination", "Excitation", "Identification", "identify",
           "model_vout"]

#: What :func:`identify` can fit: name -> (unit, description).
FIT_NAMES: dict[str, tuple[str, str]] = {
    "L": ("H", "inductance"),
    "C": ("F", "output capacitance"),
    "r_series": ("ohm", "lumped series loss resistance r_L + r_on"),
    "r_C": ("ohm", "capacitor ESR"),
    "vin": ("V", "input voltage"),
    "delay": ("s", "timing offset of each duty change (nuisance, not in the table)"),
}
_POSITIVE = ("L", "C", "r_series", "r_C", "vin")
_FLOOR = {"r_series": 1e-4, "r_C": 1e-5}  # lower bounds of the loss resistances [ohm]


@dataclasses.dataclass(frozen=True)
class Excitation:
    """The duty schedule that drove the measurement.

    ``duty0``: the duty before the record starts (the converter is in its periodic steady state
    there at t = 0); ``times`` [s] (increasing, >= 0) at which the duty became ``duties``;
    ``frequency`` [Hz] the switching frequency. Duties are the ones the PWM really produced.
    """

    duty0: float
    times: np.ndarray
    duties: np.ndarray
    frequency: float

    def __post_init__(self) -> None:
        times = np.atleast_1d(np.asarray(self.times, dtype=float))
        duties = np.atleast_1d(np.asarray(self.duties, dtype=float))
        if times.ndim != 1 or times.shape != duties.shape:
            raise ValueError(f"excitation: times and duties must be 1-D of one length, got "
                             f"{times.shape} and {duties.shape}")
        if not (math.isfinite(self.frequency) and self.frequency > 0):
            raise ValueError(f"excitation: frequency must be > 0 [Hz], got {self.frequency!r}")
        every = np.append(duties, self.duty0)
        if not np.all(np.isfinite(every)) or np.any(every < 0) or np.any(every >= 1):
            raise ValueError("excitation: duties must be in [0, 1)")
        if not np.all(np.isfinite(times)) or np.any(times < 0) or np.any(np.diff(times) < 0):
            raise ValueError("excitation: change times must be finite, >= 0 and "
                             "non-decreasing [s]")
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "duties", duties)
        object.__setattr__(self, "duty0", float(self.duty0))

    def schedule(self, n_periods: int, delay: Any = 0.0) -> np.ndarray:
        """Per-period duties, shape (n_periods, lanes), with the changes moved by ``delay``
        [s]: per lane (lanes,) or per lane and change (lanes, changes). A change inside a
        period gives that period the time-weighted duty, so the schedule varies smoothly with
        ``delay`` (finite differences see it)."""
        delay = np.asarray(delay, dtype=float)
        delay = delay.reshape(-1, 1) if delay.ndim < 2 else delay
        delay = np.broadcast_to(delay, (delay.shape[0], self.times.size))
        ts = 1.0 / self.frequency
        k = np.arange(n_periods)[:, None]
        out = np.full((n_periods, delay.shape[0]), self.duty0)
        before = np.append(self.duty0, self.duties[:-1])
        for j, (t_change, d_old, d_new) in enumerate(zip(self.times, before, self.duties,
                                                         strict=True)):
            where = (t_change + delay[None, :, j]) / ts  # in periods
            # Fraction of period k after the change: clip(k + 1 - where, 0, 1).
            after = np.clip(k + 1 - where, 0.0, 1.0)
            out += after * (d_new - d_old)
        return out


@dataclasses.dataclass(frozen=True)
class Combination:
    """A product of powers of fitted parameters that the data determines although its factors
    are not separately determined: ``value = prod(start-scaled values ** exponents)``."""

    names: tuple[str, ...]
    exponents: tuple[float, ...]
    value: float  # in the SI units of the product
    rel_std: float  # relative 1-sigma

    @property
    def text(self) -> str:
        terms = [n if abs(e - 1) < 5e-3 else f"{n}^{e:.2f}" for n, e in
                 zip(self.names, self.exponents, strict=True)]
        return "·".join(terms)

    def as_dict(self) -> dict[str, Any]:
        return {"combination": self.text, "names": list(self.names),
                "exponents": list(self.exponents), "value": self.value,
                "rel_std": self.rel_std}


@dataclasses.dataclass
class Identification:
    """The result of :func:`identify`. Per fitted name (see :data:`FIT_NAMES`): ``start`` and
    ``value`` (SI), ``std`` (1 sigma, SI), ``ci95`` (low, high), ``determined`` (False where
    the data cannot separate the parameter; its value is then no more than the start moved
    along an undetermined direction). ``combinations``: what is determined instead.
    ``params`` the fitted board, ``params_start`` the starting board; ``rms_start_V``/
    ``rms_V`` the residual before/after; ``model_start``/``model_fit`` the simulated samples.
    """

    names: tuple[str, ...]
    start: dict[str, float]
    value: dict[str, float]
    std: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    determined: dict[str, bool]
    combinations: list[Combination]
    correlation: np.ndarray
    params: BoostParams
    params_start: BoostParams
    rms_start_V: float
    rms_V: float
    sigma_V: float
    chi2_per_dof: float
    success: bool
    message: str
    evaluations: int
    fit_s: float
    t: np.ndarray
    vout: np.ndarray
    model_start: np.ndarray
    model_fit: np.ndarray
    excitation: Excitation
    vin_measured: float | None = None
    delays_s: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    delays_std_s: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    phase: float | None = None  # of the samples in the PWM period, in periods
    starts: int = 1             # fits run (more than one: the first found another minimum)

    def table(self) -> str:
        """Fitted vs starting values with 95 % intervals, as text."""
        rows = [("parameter", "start", "fitted", "95 % interval", "unit", "")]
        for n in self.names:
            unit = FIT_NAMES[n][0]
            lo, hi = self.ci95[n]
            note = "" if self.determined[n] else "NOT DETERMINED"
            rows.append((n, f"{self.start[n]:.4g}", f"{self.value[n]:.4g}",
                         f"{lo:.4g} .. {hi:.4g}", unit, note))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]
        for c in self.combinations:
            lines.append(f"determined instead: {c.text} = {c.value:.4g} ± "
                         f"{100 * c.rel_std:.2g} % (1σ)")
        lines.append(f"residual rms {1e3 * self.rms_start_V:.2f} mV (start) -> "
                     f"{1e3 * self.rms_V:.2f} mV (fitted); noise {1e3 * self.sigma_V:.2f} mV, "
                     f"chi2/dof {self.chi2_per_dof:.2f}; {self.evaluations} evaluations, "
                     f"{self.fit_s:.1f} s; {'converged' if self.success else 'NOT converged'}"
                     + (f" (best of {self.starts} starts: the first found another minimum)"
                        if self.starts > 1 else ""))
        return "\n".join(lines)

    def comment_block(self, measured: str) -> str:
        """TOML comment lines: what was measured (``measured``), each fitted value with its
        95 % interval (or that it is not determined), the combinations determined instead,
        and how r_series was split into r_L and r_on."""
        lines = [f"# identified by boostsim bench identify: {measured}",
                 f"# {self.t.size} samples over {1e3 * self.t[-1]:.1f} ms, residual rms "
                 f"{1e3 * self.rms_V:.2f} mV (start {1e3 * self.rms_start_V:.2f} mV), "
                 f"chi2/dof {self.chi2_per_dof:.2f}"]
        for n in self.names:
            lo, hi = self.ci95[n]
            what = ("95 % interval" if self.determined[n] else
                    "NOT DETERMINED by this record; interval")
            lines.append(f"#   {n} = {self.value[n]:.5g} {FIT_NAMES[n][0]} ({what} "
                         f"{lo:.4g} .. {hi:.4g}; start {self.start[n]:.4g})")
        for c in self.combinations:
            lines.append(f"#   determined instead: {c.text} = {c.value:.5g} ± "
                         f"{100 * c.rel_std:.2g} % (1 sigma)")
        if "r_series" in self.names:
            lines.append("#   r_series = r_L + r_on, split in the starting board's ratio")
        lines.append("#   R, v_f, r_d and the rest: from the starting board, not fitted")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """Plain values, units in the keys."""
        out: dict[str, Any] = {}
        for n in self.names:
            unit = FIT_NAMES[n][0]
            out[n] = {f"start_{unit}": self.start[n], f"value_{unit}": self.value[n],
                      f"std_{unit}": self.std[n], f"ci95_{unit}": list(self.ci95[n]),
                      "determined": self.determined[n]}
        return {"parameters": out, "combinations": [c.as_dict() for c in self.combinations],
                "correlation": {"names": list(self.names),
                                "matrix": np.round(self.correlation, 4).tolist()},
                "rms_start_V": self.rms_start_V, "rms_V": self.rms_V, "sigma_V": self.sigma_V,
                "chi2_per_dof": self.chi2_per_dof, "success": self.success,
                "message": self.message, "evaluations": self.evaluations,
                "fit_s": self.fit_s, "starts": self.starts, "vin_measured_V": self.vin_measured,
                "delays_s": self.delays_s.tolist(), "delays_std_s": self.delays_std_s.tolist()}


# ---------------------------------------------------------------------------- the model


def _board(base: BoostParams, values: dict[str, np.ndarray], share: float) -> BoostParams:
    """``base`` with per-lane fitted values (``r_series`` split into r_L and r_on)."""
    changes: dict[str, Any] = {k: v for k, v in values.items() if k in ("L", "C", "r_C", "vin")}
    if "r_series" in values:
        changes["r_L"] = values["r_series"] * share
        changes["r_on"] = values["r_series"] * (1.0 - share)
    return base.replace(**changes)


def model_vout(params: BoostParams, excitation: Excitation, t: np.ndarray,
               delay: Any = 0.0, phase: Any = None, jitter: float = 0.0) -> np.ndarray:
    """Simulated output [V] at the sample times ``t`` [s] for every lane of ``params``:
    the exact switching model from the periodic steady state at ``duty0``, driven by the
    excitation (moved by ``delay`` [s], see :meth:`Excitation.schedule`); the per-period
    means interpolated to ``t``. With ``phase`` (per lane, in switching periods: where the
    samples fall in the PWM period) the switching ripple is added: the instantaneous output
    minus its mean in the periodic steady state at the duty in force (exact in steady
    state, an approximation for the first periods after a change). ``jitter`` [s]: rms delay
    of each conversion after its nominal instant (half-normal, as a timer interrupt's
    latency): the ripple is the expected value over it (what the mean of many samples at one
    phase converges to). Returns (lanes, samples).
    """
    means, duty = _period_means(params, excitation, t, delay)
    if phase is None:
        return means
    p = params.replace(fsw=float(excitation.frequency))
    lanes = means.shape[0]
    phase = np.broadcast_to(np.asarray(phase, dtype=float).reshape(-1), (lanes,))
    levels = np.unique(np.append(excitation.duties, excitation.duty0))
    tables = _ripple_tables(p, levels, lanes, jitter)
    which = np.abs(duty[:, :, None] - levels[None, None, :]).argmin(axis=2)
    theta = np.mod(np.asarray(t, dtype=float)[None, :] * excitation.frequency
                   + phase[:, None], 1.0)
    return means + _ripple_at(tables, which, theta)


_RIPPLE_POINTS = 400  # waveform samples per switching period for the ripple tables


def _period_means(params: BoostParams, excitation: Excitation, t: np.ndarray,
                  delay: Any) -> tuple[np.ndarray, np.ndarray]:
    """(per-period means interpolated to ``t``, the duty of the period each sample is in),
    both shape (lanes, samples)."""
    from .simulation import simulate
    from .steady import steady_state

    t = np.asarray(t, dtype=float)
    p = params.replace(fsw=float(excitation.frequency))
    delay = np.asarray(delay, dtype=float)
    lanes = max(p.n_lanes, delay.shape[0] if delay.ndim == 2 else delay.size)
    if delay.ndim < 2:
        delay = np.broadcast_to(delay.reshape(-1), (lanes,))
    elif delay.shape[0] != lanes:
        raise ValueError(f"model_vout: delay has {delay.shape[0]} lanes, params {lanes}")
    ts = 1.0 / excitation.frequency
    n_periods = max(2, math.ceil(float(t[-1]) / ts) + 2)
    start = steady_state(p, excitation.duty0, points=2)
    x0 = np.stack([np.broadcast_to(start.il_start, (lanes,)),
                   np.broadcast_to(start.vc_start, (lanes,))], axis=-1)
    schedule = excitation.schedule(n_periods, delay)
    with np.errstate(all="ignore"):
        sim = simulate(p, duty=schedule, t_end=n_periods * ts, dt=n_periods * ts / 2, x0=x0)
        means = np.broadcast_to(np.atleast_2d(sim.period_means()["vout"]),
                                (lanes, n_periods))
    # Linear interpolation between period centres, every lane at once.
    pos = np.clip(t / ts - 0.5, 0.0, n_periods - 1.0)
    i0 = np.minimum(pos.astype(int), n_periods - 2)
    w = pos - i0
    out = means[:, i0] * (1 - w) + means[:, i0 + 1] * w
    k = np.minimum((t / ts).astype(int), n_periods - 1)
    return out, schedule[k].T


def _ripple_tables(params: BoostParams, levels: np.ndarray, lanes: int,
                   jitter: float = 0.0) -> np.ndarray:
    """Steady-state output minus its mean over one period, shape (lanes, levels, points + 1)
    on a uniform phase grid from 0 to 1; with ``jitter`` [s] averaged over the sampling
    delay (:func:`_jitter_average`)."""
    from .steady import steady_state

    out = np.empty((lanes, levels.size, _RIPPLE_POINTS + 1))
    for j, d in enumerate(levels):
        with np.errstate(all="ignore"):
            ss = steady_state(params, float(d), points=_RIPPLE_POINTS)
        vout = np.broadcast_to(np.atleast_2d(ss.vout), (lanes, _RIPPLE_POINTS + 1))
        out[:, j] = vout - np.broadcast_to(np.atleast_1d(ss.vout_mean), (lanes,))[:, None]
    out = np.nan_to_num(out)
    return _jitter_average(out, jitter * float(params.fsw)) if jitter > 0 else out


#: Nodes of the half-normal delay distribution (in units of its rms), and their weights:
#: the midpoint rule on [0, 5] sigma (the tail beyond holds 6e-7 of the probability).
_JITTER_NODES = (np.arange(120) + 0.5) * (5.0 / 120)
_JITTER_WEIGHTS = np.exp(-0.5 * _JITTER_NODES ** 2) / np.sum(np.exp(-0.5 * _JITTER_NODES ** 2))


def _jitter_average(tables: np.ndarray, rms_periods: float) -> np.ndarray:
    """Periodic ripple ``tables`` (..., K + 1 points from phase 0 to 1) averaged over a
    half-normal sampling delay of ``rms_periods`` [switching periods] rms: entry i becomes
    E[ripple(i / K + delay)]."""
    k = tables.shape[-1] - 1
    base = tables[..., :k]
    out = np.zeros_like(base)
    grid = np.arange(k)
    for x, w in zip(_JITTER_NODES * rms_periods * k, _JITTER_WEIGHTS, strict=True):
        pos = grid + x
        i0 = np.floor(pos).astype(int)
        f = pos - i0
        out += w * (base[..., i0 % k] * (1 - f) + base[..., (i0 + 1) % k] * f)
    return np.concatenate([out, out[..., :1]], axis=-1)


def _ripple_at(tables: np.ndarray, which: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``tables`` (lanes, levels, K) at phases ``theta`` in [0, 1)
    with level indices ``which``, both (lanes, samples)."""
    k = tables.shape[2] - 1
    pos = theta * k
    i0 = np.minimum(pos.astype(int), k - 1)
    w = pos - i0
    lane = np.arange(tables.shape[0])[:, None]
    return tables[lane, which, i0] * (1 - w) + tables[lane, which, i0 + 1] * w


# ---------------------------------------------------------------------------- the fit


def _noise_sigma(v: np.ndarray) -> float:
    """Sample-to-sample noise [V] (robust, from first differences)."""
    d = np.diff(v)
    if d.size < 2:
        return float("nan")
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))


def identify(params: BoostParams, excitation: Excitation, t: Any, vout: Any, *,
             fit: Sequence[str] = ("L", "C", "r_series", "r_C", "vin", "delay"),
             vin_measured: float | None = None, vin_rel_sigma: float = 0.01,
             max_delay: float | None = None, max_rel_std: float = 0.25,
             max_corr: float = 0.95, max_evaluations: int = 40,
             ripple: bool = True, adc_jitter: float = 0.0, max_chi2: float = 10.0,
             restarts: int = 4) -> Identification:
    """Fit ``fit`` (names of :data:`FIT_NAMES`) so the exact switching model driven by
    ``excitation`` matches the measured ``vout`` [V] at times ``t`` [s] (same clock as the
    excitation; t = 0 where the converter is in its steady state at ``duty0``).

    ``params``: the starting board (one lane); the parameters not fitted stay as they are
    (the load ``R`` is taken as known). ``vin_measured`` [V]: a measured input voltage, used
    as a prior with relative 1-sigma ``vin_rel_sigma``. ``"delay"``: a timing offset per duty
    change, within ``max_delay`` [s] (default one switching period plus the largest sample
    interval: a change is known to one sample); reported as ``delays_s``, not in the table.
    ``ripple``: model the switching ripple in the single conversions; the phase of the
    samples in the PWM period (a nuisance, not smooth to fit) is scanned before the fit and
    again after it (refitting while it moves). The ripple is what makes ``r_C`` observable
    (its step in the output at every switching edge). ``adc_jitter`` [s]: rms delay of each
    conversion after its timer tick (:func:`model_vout`); a jitter left out smears the
    modelled ESR step less than the measured one and biases ``r_C`` low.
    ``max_rel_std``: the relative 1-sigma beyond which a parameter is reported as not
    determined (so is one with a correlation of +-1: a singular direction of J^T J);
    ``max_corr``: pairs correlated beyond it, one of them not determined, are reported with
    the product of their powers that is determined. ``max_evaluations``: model evaluations
    per start. A fit that ends with chi^2/dof above ``max_chi2`` (a residual over 3x the
    noise: the model does not follow the record; a right fit of a real board can stay a few
    times above 1, from what no model holds) or with L or C on a bound of its range
    (0.2x..5x the start) has found another minimum: it is started again (up to ``restarts``
    times) from L and C halved/doubled, and the best fit is kept (``starts`` says how many
    were run). Raises ValueError on bad input.
    """
    from scipy.optimize import least_squares

    t0 = time.perf_counter()
    if not isinstance(params, BoostParams) or params.n_lanes != 1:
        raise ValueError("identify: params must be one board (a single-lane BoostParams)")
    requested = tuple(dict.fromkeys(fit))
    unknown = [n for n in requested if n not in FIT_NAMES]
    names = tuple(n for n in requested if n in _POSITIVE)
    if unknown or not names:
        raise ValueError(f"identify: cannot fit {unknown or list(requested)}; fittable: "
                         f"{', '.join(FIT_NAMES)} (at least one but delay)")
    t = np.asarray(t, dtype=float).reshape(-1)
    y = np.asarray(vout, dtype=float).reshape(-1)
    if t.shape != y.shape:
        raise ValueError(f"identify: t and vout differ in length ({t.size} vs {y.size})")
    n_delay = excitation.times.size if "delay" in requested else 0
    n_par = len(names) + n_delay
    if t.size <= 3 * n_par:
        raise ValueError(f"identify: {t.size} samples are too few to fit {n_par} parameters")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y))):
        raise ValueError("identify: t and vout must be finite")
    if t[0] < 0 or np.any(np.diff(t) <= 0):
        raise ValueError("identify: sample times must be >= 0 and increasing [s]")
    if not (math.isfinite(adc_jitter) and adc_jitter >= 0):
        raise ValueError(f"identify: adc_jitter must be >= 0 [s rms], got {adc_jitter!r}")
    if vin_measured is not None and not (math.isfinite(vin_measured) and vin_measured > 0):
        raise ValueError(f"identify: vin_measured must be > 0 [V], got {vin_measured!r}")
    ts = 1.0 / excitation.frequency
    if max_delay is None:
        max_delay = ts + float(np.max(np.diff(t)))
    base = params.replace(fsw=float(excitation.frequency))
    r_l0, r_on0 = float(base.r_L), float(base.r_on)
    share = r_l0 / (r_l0 + r_on0) if r_l0 + r_on0 > 0 else 1.0
    every = {"L": float(base.L), "C": float(base.C), "r_series": r_l0 + r_on0,
             "r_C": float(base.r_C), "vin": float(base.vin)}
    if vin_measured is not None:
        every["vin"] = float(vin_measured)
    start = {n: every[n] for n in names}
    # Internal coordinates: log(value / ref) for the physical parameters (relative steps,
    # positivity), then the timing offsets in switching periods.
    ref = {n: max(start[n], _FLOOR.get(n, 0.0) * 10) for n in names}
    lower = np.array([math.log(_FLOOR[n] / ref[n]) if n in _FLOOR else math.log(0.2)
                      for n in names] + [-max_delay / ts] * n_delay)
    upper = np.array([math.log(100.0) if n in _FLOOR else math.log(5.0) for n in names]
                     + [max_delay / ts] * n_delay)
    u_start = np.clip(np.array([math.log(start[n] / ref[n]) for n in names]
                               + [0.0] * n_delay), lower, upper)
    k = len(names)

    def board_of(u: np.ndarray) -> tuple[BoostParams, np.ndarray]:
        u = np.atleast_2d(u)
        vals = {n: ref[n] * np.exp(u[:, i]) for i, n in enumerate(names)}
        delay = u[:, k:] * ts if n_delay else np.zeros((u.shape[0], 1))
        return _board(base, vals, share), delay

    phase: list[float | None] = [None]

    sigma = _noise_sigma(y)
    if not (sigma > 0):
        sigma = max(float(np.std(y)), 1e-3)
    vin_i = names.index("vin") if "vin" in names and vin_measured is not None else None
    h = 1e-3  # forward-difference step in the internal coordinates
    cache: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    counter = [0]

    def evaluate(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = np.append(np.asarray(u, dtype=float), phase[0] or 0.0).tobytes()
        if key in cache:
            return cache[key]
        # Lane 0: the candidate; lane j + 1: coordinate j moved by h (the Jacobian).
        lanes = np.repeat(u[None, :], n_par + 1, axis=0)
        steps = np.where(u + h <= upper, h, -h)
        lanes[1:] += np.diag(steps)
        board, delay = board_of(lanes)
        model = model_vout(board, excitation, t, delay, phase[0], adc_jitter)
        counter[0] += 1
        res = (model - y[None, :]) / sigma
        if vin_i is not None:
            vin = ref["vin"] * np.exp(lanes[:, vin_i])
            prior = (vin - vin_measured) / (vin_rel_sigma * vin_measured)
            res = np.concatenate([res, prior[:, None]], axis=1)
        res = np.where(np.isfinite(res), res, 1e6)
        jac = ((res[1:] - res[0][None, :]) / steps[:, None]).T
        cache.clear()
        cache[key] = (res[0], jac)
        return cache[key]

    def converge(u0: np.ndarray):
        """One fit from ``u0``: the samples' phase scanned around it, the fit, the phase
        scanned again around the result (refitting while it moves). Returns (solution, its
        phase, chi^2/dof)."""
        budget = counter[0] + max_evaluations
        if ripple:
            board, delay = board_of(u0)
            phase[0] = _scan_phase(board, excitation, t, y, delay, adc_jitter)
        u = u0
        for _ in range(3):
            sol = least_squares(lambda u: evaluate(u)[0], u, jac=lambda u: evaluate(u)[1],
                                bounds=(lower, upper), method="trf", x_scale=1.0,
                                max_nfev=max(1, budget - counter[0]), xtol=1e-4, ftol=1e-6)
            u = sol.x
            if not ripple or counter[0] >= budget:
                break
            board, delay = board_of(u)
            moved = _scan_phase(board, excitation, t, y, delay, adc_jitter)
            if abs((moved - phase[0] + 0.5) % 1.0 - 0.5) <= 1.5 / _PHASE_STEPS:
                break
            phase[0] = moved
        res = evaluate(sol.x)[0]
        return sol, phase[0], float(np.sum(res ** 2)) / max(1, res.size - n_par)

    def poor(sol, chi2: float) -> bool:
        on_bound = [i for i, n in enumerate(names) if n in ("L", "C")
                    and min(sol.x[i] - lower[i], upper[i] - sol.x[i]) < 1e-3]
        return chi2 > max_chi2 or bool(on_bound)

    if ripple:
        phase[0] = _scan_phase(base, excitation, t, y, 0.0, adc_jitter)
    model_start = evaluate(u_start)[0][: y.size] * sigma + y
    best = converge(u_start)
    starts = 1
    moves = [(a, b) for a in (0.5, 2.0) for b in (0.5, 2.0)] + [(0.5, 1.0), (2.0, 1.0),
                                                                (1.0, 0.5), (1.0, 2.0)]
    for scale_l, scale_c in moves[:max(0, restarts)]:
        if not poor(best[0], best[2]):
            break
        u0 = u_start.copy()
        for n, scale in (("L", scale_l), ("C", scale_c)):
            if n in names:
                i = names.index(n)
                u0[i] = min(max(u0[i] + math.log(scale), lower[i]), upper[i])
        trial = converge(u0)
        starts += 1
        if trial[2] < best[2]:
            best = trial
    sol, phase[0], chi2 = best
    jac = evaluate(sol.x)[1]
    cov = np.linalg.pinv(jac.T @ jac) * chi2  # scaled by the residual variance
    std_u = np.sqrt(np.clip(np.diag(cov), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr_all = np.nan_to_num(cov / np.outer(std_u, std_u))
    corr = corr_all[:k, :k]
    fitted = {n: float(ref[n] * math.exp(sol.x[i])) for i, n in enumerate(names)}
    std: dict[str, float] = {}
    ci: dict[str, tuple[float, float]] = {}
    determined: dict[str, bool] = {}
    for i, n in enumerate(names):
        std[n] = fitted[n] * std_u[i]
        ci[n] = (fitted[n] * math.exp(-1.96 * std_u[i]), fitted[n] * math.exp(1.96 * std_u[i]))
        # A marginal interval already includes what correlations cost; a correlation of
        # +-1 means a singular direction, where the interval itself is not to be trusted.
        others = np.abs(np.delete(corr[i], i))
        determined[n] = bool(std_u[i] <= max_rel_std and np.all(others < 0.999))
    combos = _combinations(names, sol.x[:k], cov[:k, :k], corr, ref, determined, max_corr)
    board, delay = board_of(sol.x)
    model_fit = model_vout(board, excitation, t, delay, phase[0], adc_jitter)[0]
    return Identification(
        names=names, start=start, value=fitted, std=std, ci95=ci, determined=determined,
        combinations=combos, correlation=corr,
        params=_board(params, {n: float(v) for n, v in fitted.items()}, share),
        params_start=params, rms_start_V=float(np.sqrt(np.mean((model_start - y) ** 2))),
        rms_V=float(np.sqrt(np.mean((model_fit - y) ** 2))), sigma_V=sigma,
        chi2_per_dof=chi2, success=bool(sol.success), message=str(sol.message),
        evaluations=counter[0], fit_s=time.perf_counter() - t0, t=t, vout=y,
        model_start=model_start, model_fit=model_fit, excitation=excitation,
        vin_measured=vin_measured, delays_s=delay[0] if n_delay else np.zeros(0),
        delays_std_s=std_u[k:k + n_delay] * ts,
        phase=phase[0], starts=starts)


_PHASE_STEPS = 200


def _scan_phase(params: BoostParams, excitation: Excitation, t: np.ndarray, y: np.ndarray,
                delay: Any, jitter: float = 0.0, steps: int = _PHASE_STEPS) -> float:
    """The phase [periods] of the samples in the PWM period that best explains the measured
    ripple around the model ``params`` (one lane) with the changes moved by ``delay`` [s]
    and the sampling ``jitter`` [s rms] (a scan: the residual is not smooth in the phase)."""
    means, duty = _period_means(params, excitation, t, delay)
    levels = np.unique(np.append(excitation.duties, excitation.duty0))
    tables = np.broadcast_to(_ripple_tables(params, levels, 1, jitter), (steps, levels.size,
                                                                  _RIPPLE_POINTS + 1))
    which = np.broadcast_to(np.abs(duty[0][:, None] - levels[None, :]).argmin(axis=1),
                            (steps, t.size))
    phases = np.arange(steps) / steps
    theta = np.mod(t[None, :] * excitation.frequency + phases[:, None], 1.0)
    detrended = y - means[0]
    cost = np.sum((detrended[None, :] - _ripple_at(tables, which, theta)) ** 2, axis=1)
    return float(phases[int(np.argmin(cost))])


def _combinations(names: tuple[str, ...], u: np.ndarray, cov: np.ndarray, corr: np.ndarray,
                  ref: dict[str, float], determined: dict[str, bool], max_corr: float
                  ) -> list[Combination]:
    """For each pair of strongly correlated positive parameters (at least one undetermined):
    the best-determined product ``a * b^e`` (the minor axis of their joint covariance in
    log coordinates)."""
    out = []
    idx = [i for i, n in enumerate(names) if n in _POSITIVE]
    for a in idx:
        for b in idx:
            if b <= a or abs(corr[a, b]) < max_corr:
                continue
            if determined[names[a]] and determined[names[b]]:
                continue
            block = cov[np.ix_([a, b], [a, b])]
            w, v = np.linalg.eigh(block)
            minor = v[:, 0]
            lead = int(np.argmax(np.abs(minor)))  # normalise the larger exponent to 1
            pair = (a, b) if lead == 0 else (b, a)
            vec = minor[[lead, 1 - lead]] / minor[lead]
            log_value = sum(vec[k] * (math.log(ref[names[i]]) + u[i])
                            for k, i in enumerate(pair))
            rel = math.sqrt(max(w[0], 0.0)) / abs(minor[lead])
            out.append(Combination(names=(names[pair[0]], names[pair[1]]),
                                   exponents=(1.0, float(vec[1])),
                                   value=math.exp(log_value), rel_std=rel))
    return out
