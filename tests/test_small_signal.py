"""The small-signal model (boostsim.linearised.small_signal): textbook limits, exact linearisation
of the large-signal averaged model, and the exact sampled-data linearisation of the switching
converter.

Stated tolerances:
* ideal CCM against the textbook Gvd, Gvg, Zout, RHP zero and resonance: 1e-9 relative;
* the analytic Jacobians against finite differences of the large-signal model: 1e-6 relative;
* against the switching converter's exact period map (linearised, per-period-mean output,
  de-embedded by the PWM factor sinc(f/fsw) e^{-j 2 pi f Ts (D - 1/2)}), up to fsw/10:
  default board at D = 0.6 0.25 dB / 0.2 deg (measured 0.19 dB / 0.07 deg), at D = 0.3 and
  0.75 0.3 dB / 0.4 deg (0.09-0.23 dB, 0.12-0.27 deg), lossy board 0.5 dB / 0.5 deg
  (0.41 dB / 0.42 deg), DCM 0.3 dB / 0.2 deg (0.24 dB / 0.10 deg).
"""

import math

import numpy as np
import pytest
from scipy import signal

from boostsim import BoostParams, default_board, theory
from boostsim.analysis import period_metrics
from boostsim.averaged import _Circuit, _Field
from boostsim.drive import lane_arrays
from boostsim.engine import Stepper
from boostsim.freqresp import modulation_factor
from boostsim.linearised import operating_point, small_signal

BOARD = default_board()
IDEAL = BoostParams(vin=12, L=100e-6, C=100e-6, R=10, fsw=100e3)
LOSSY = BOARD.replace(r_L=0.3, r_on=0.1, r_d=0.1, r_C=0.05, v_f=0.5)
DCM_BOARD = BOARD.replace(L=10e-6)


def test_ideal_ccm_matches_the_textbook_transfer_functions():
    D, R, L, C, V = 0.4, 10.0, 100e-6, 100e-6, 12.0
    Dp = 1 - D
    sm = small_signal(IDEAL, D)
    assert sm.mode == "CCM"
    s = 2j * np.pi * np.geomspace(10, 40e3, 50)
    den = 1 + s * L / (Dp**2 * R) + s**2 * L * C / Dp**2
    vout = V / Dp
    expected = {  # [EM] Ch. 8, boost
        "gvd": vout / Dp * (1 - s * L / (Dp**2 * R)) / den,
        "gvg": 1 / Dp / den,
        "zout": s * L / Dp**2 / den,
    }
    for which, h in expected.items():
        np.testing.assert_allclose(sm.response(s.imag / (2 * np.pi), which), h, rtol=1e-9)
    assert sm.rhp_zero_hz == pytest.approx(theory.rhp_zero_hz(D, R, L), rel=1e-9)
    assert sm.resonance_hz == pytest.approx(theory.resonance_hz(D, L, C), rel=1e-9)
    assert sm.q_factor == pytest.approx(Dp * R * math.sqrt(C / L), rel=1e-9)


def test_lti_objects_agree_with_the_state_space_response():
    for params, duty in ((BOARD, 0.6), (LOSSY, 0.3), (DCM_BOARD, 0.3),
                         (BOARD.replace(R=math.inf, i_load=0.25), 0.5)):
        sm = small_signal(params, duty)
        f = np.geomspace(10, 40e3, 30)
        for which, lti in (("gvd", sm.gvd), ("gvg", sm.gvg), ("zout", sm.zout)):
            assert isinstance(lti, signal.ZerosPolesGain)
            _, h = signal.freqresp(lti, 2 * np.pi * f)
            np.testing.assert_allclose(h, sm.response(f, which), rtol=1e-9)
        _, h = signal.freqresp(signal.StateSpace(sm.A, sm.B[:, :1], sm.C, sm.D[:, :1]),
                               2 * np.pi * f)
        np.testing.assert_allclose(h, sm.response(f), rtol=1e-9)


def test_losses_move_the_rhp_zero_and_damp_the_resonance():
    sm = small_signal(BOARD, 0.6)
    ideal = small_signal(BOARD.replace(r_L=0, r_on=0, r_d=0, v_f=0, r_C=0), 0.6)
    # The lossless model's values are the textbook ones ...
    assert ideal.rhp_zero_hz == pytest.approx(theory.rhp_zero_hz(0.6, 48.0, 100e-6), rel=1e-9)
    assert ideal.resonance_hz == pytest.approx(theory.resonance_hz(0.6, 100e-6, 100e-6),
                                               rel=1e-9)
    # ... and the losses shift them by a few percent while damping the peak (Q 19 -> 3.6).
    assert sm.rhp_zero_hz == pytest.approx(ideal.rhp_zero_hz, rel=0.05)
    assert sm.resonance_hz == pytest.approx(ideal.resonance_hz, rel=0.02)
    assert sm.q_factor < ideal.q_factor / 4
    # The ESR zero: 1/(2 pi r_C C).
    lhp = [z for z in sm.gvd.zeros if z.real < 0]
    assert abs(lhp[0]) / (2 * np.pi) == pytest.approx(1 / (2 * np.pi * 0.02 * 100e-6), rel=0.02)
    # DC gains: the slope of the DC operating point.
    h = 1e-6
    slope = (operating_point(BOARD, 0.6 + h).vout - operating_point(BOARD, 0.6 - h).vout) / (2 * h)
    assert sm.response(0.0).real == pytest.approx(slope, rel=1e-6)


@pytest.mark.parametrize("params, duty", [
    (BOARD, 0.6), (LOSSY, 0.5), (DCM_BOARD, 0.3), (DCM_BOARD.replace(R=math.inf, i_load=0.1), 0.3),
    (BOARD.replace(synchronous=True, L=10e-6, R=200.0), 0.5)])
def test_jacobians_match_finite_differences_of_the_large_signal_model(params, duty):
    sm = small_signal(params, duty)
    lanes, _, _ = lane_arrays(params)
    x = np.array([sm.op.il, sm.op.vc])

    def field(i, v, d, vin=None, i_load=None):
        c = _Circuit(lanes, lanes["vin"] if vin is None else np.array([vin]), lanes["R"],
                     lanes["i_load"] if i_load is None else np.array([i_load]))
        f = _Field(c, np.array([i]), np.array([v]), np.array([d]))
        return np.array([f.f1[0], f.f2[0], f.vout[0]])

    base = {"i": x[0], "v": x[1], "d": duty, "vin": float(lanes["vin"][0]),
            "i_load": float(lanes["i_load"][0])}
    np.testing.assert_allclose(field(**base)[:2], 0.0, atol=1e-9 * np.abs(sm.A).max() * 10)
    columns = {}
    for name in base:
        h = 1e-6 * max(abs(base[name]), 1.0)
        up, down = dict(base), dict(base)
        up[name] += h
        down[name] -= h
        columns[name] = (field(**up) - field(**down)) / (2 * h)
    A = np.stack([columns["i"][:2], columns["v"][:2]], axis=1)
    B = np.stack([columns["d"][:2], columns["vin"][:2], columns["i_load"][:2]], axis=1)
    np.testing.assert_allclose(sm.A, A, rtol=1e-6, atol=1e-6 * np.abs(sm.A).max())
    np.testing.assert_allclose(sm.B, B, rtol=1e-6, atol=1e-6 * np.abs(sm.B).max())
    np.testing.assert_allclose(sm.C[0], [columns["i"][2], columns["v"][2]], rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(sm.D[0], [columns[k][2] for k in ("d", "vin", "i_load")],
                               rtol=1e-6, atol=1e-9)


def test_dcm_model_reduces_to_the_reduced_order_textbook_results():
    p = DCM_BOARD.replace(r_L=0, r_on=0, r_d=0, v_f=0, r_C=0)
    for duty in (0.2, 0.4):
        sm = small_signal(p, duty)
        assert sm.mode == "DCM" and math.isnan(sm.resonance_hz)
        M = sm.op.vout / 5.0
        # [EM] DCM boost: Gd0 = 2 V/D (M-1)/(2M-1), pole (2M-1)/((M-1) R C).
        assert sm.response(0.0).real == pytest.approx(2 * sm.op.vout / duty * (M - 1)
                                                      / (2 * M - 1), rel=1e-9)
        poles = np.sort(-sm.poles_hz.real * 2 * np.pi)
        assert poles[0] == pytest.approx((2 * M - 1) / ((M - 1) * 48.0 * 100e-6), rel=2e-3)
        # The full-order model's fast pole: the inductor current settling to its DCM value
        # at 2/(D2 Ts) (D2 = D/(M-1), the diode conduction fraction), near the switching
        # frequency.
        assert sm.op.d2 == pytest.approx(duty / (M - 1), rel=1e-9)
        assert poles[1] == pytest.approx(2 / (sm.op.d2 * 1e-5), rel=2e-3)


def test_needs_one_converter():
    with pytest.raises(ValueError, match="one converter"):
        small_signal(BOARD.replace(vin=[5.0, 6.0]), 0.5)
    with pytest.raises(ValueError, match="scalar"):
        small_signal(BOARD, [0.5])


# -- against the exact switching converter --------------------------------------------------------

def _exact_discrete(params, duty, eps=1e-6):
    """Linearised period map of the switching engine at its periodic steady state:
    x_{k+1} = Phi x_k + Gamma d_k, y_k = Cy x_k + Dy d_k with y_k the exact mean of vout over
    period k (one Stepper call, perturbations as lanes)."""
    from boostsim import steady_state

    ss = steady_state(params, duty)
    x0 = np.array([ss.il_start, ss.vc_start])
    h = np.array([eps * max(1.0, abs(x0[0])), eps * max(1.0, abs(x0[1])), eps])
    deltas = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1],
                       [0, 0, -1]]) * h
    n = deltas.shape[0]
    lanes, _, _ = lane_arrays(params.replace(vin=np.full(n, float(np.asarray(params.vin)))))
    stepper = Stepper(lanes)
    il, vc, d = x0[0] + deltas[:, 0], x0[1] + deltas[:, 1], duty + deltas[:, 2]
    period = stepper.period(0, il, vc, d)
    y = period_metrics(stepper, period, d, scalar=False, il0=il, vc0=vc).vout_mean
    out = np.stack([period.il_end, period.vc_end, y], axis=1)
    grad = [(out[2 * j + 1] - out[2 * j + 2]) / (2 * h[j]) for j in range(3)]
    Phi = np.stack([grad[0][:2], grad[1][:2]], axis=1)
    return Phi, grad[2][:2], np.array([grad[0][2], grad[1][2]]), grad[2][2]


@pytest.mark.parametrize("params, duty, db, deg", [
    (BOARD, 0.6, 0.25, 0.2), (LOSSY, 0.6, 0.5, 0.2), (DCM_BOARD, 0.3, 0.3, 0.2),
    (BOARD, 0.3, 0.15, 0.4), (BOARD, 0.75, 0.3, 0.2), (LOSSY, 0.3, 0.3, 0.5)])
def test_model_matches_the_switching_converter_up_to_a_tenth_of_fsw(params, duty, db, deg):
    Phi, Gamma, Cy, Dy = _exact_discrete(params, duty)
    sm = small_signal(params, duty)
    fsw, Ts = 100e3, 1e-5
    f = np.geomspace(50, fsw / 10, 25)
    z = np.exp(2j * np.pi * f * Ts)
    exact = np.array([Cy @ np.linalg.solve(zi * np.eye(2) - Phi, Gamma) for zi in z]) + Dy
    ratio = exact / (sm.response(f) * modulation_factor(f, fsw, duty))
    assert np.max(np.abs(20 * np.log10(np.abs(ratio)))) < db
    assert np.max(np.abs(np.degrees(np.angle(ratio)))) < deg
    # Without the trailing-edge PWM factor the phase would be off by 360 f Ts (D - 1/2) deg.
    plain = exact / (sm.response(f) * np.sinc(f * Ts))
    assert np.degrees(np.angle(plain[-1])) == pytest.approx(-36 * (duty - 0.5), abs=deg)
