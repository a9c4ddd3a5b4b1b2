"""Closed-form advance over many switching periods of lanes that stay in continuous conduction.

At a constant duty and constant conditions, a period in continuous conduction (switch on for
D*Ts, then the diode conducting for the rest with a positive current throughout) maps the state
affinely: ``x_{k+1} = Phi x_k + gamma``, with ``Phi`` and ``gamma`` from the same closed-form
segment solutions the period stepper uses. A stretch of K periods is then K applications of one
2x2 affine map, computed for all lanes at once by doubling (log2 K vectorised steps). Each
period is afterwards checked to really be CCM with the stepper's own criteria (diode current
positive at the edge and at the end, no dip in between); the caller keeps the leading valid
periods and steps the rest one by one. The result is the stepper's, to rounding.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import segments as sg

__all__ = ["RunAhead", "ccm_run_ahead"]


@dataclasses.dataclass
class RunAhead:
    """States of a run-ahead stretch: ``il``/``vc`` at the starts of periods k..k+K (shape
    (K + 1, n)), at the PWM edges (shape (K, n)), and how many leading periods are valid CCM."""

    il: np.ndarray
    vc: np.ndarray
    il_edge: np.ndarray
    vc_edge: np.ndarray
    valid_periods: np.ndarray
    t_on: np.ndarray
    t_off: np.ndarray
    coef: np.ndarray

    def first(self, periods: int) -> RunAhead:
        """The same stretch cut to its first ``periods`` periods."""
        return dataclasses.replace(self, il=self.il[:periods + 1], vc=self.vc[:periods + 1],
                                   il_edge=self.il_edge[:periods],
                                   vc_edge=self.vc_edge[:periods],
                                   valid_periods=np.minimum(self.valid_periods, periods))

    def segments(self, lanes: np.ndarray, stepper) -> list:
        """The stretch's periods for ``lanes`` (bool mask) as two Segments (ON, DIODE) over a
        flattened period-major axis of K * lanes entries."""
        from .engine import Segment

        K = self.il_edge.shape[0]
        m = int(np.count_nonzero(lanes))
        coef = np.tile(self.coef[:, lanes], K)
        t_on = np.tile(self.t_on[lanes], K)
        on = Segment(np.full(K * m, sg.ON, dtype=np.int8), np.zeros(K * m), t_on,
                     self.il[:K][:, lanes].ravel(), self.vc[:K][:, lanes].ravel(), coef)
        diode = Segment(np.full(K * m, sg.DIODE, dtype=np.int8), t_on,
                        np.tile(self.t_off[lanes], K), self.il_edge[:, lanes].ravel(),
                        self.vc_edge[:, lanes].ravel(), coef)
        return [on, diode]


def ccm_run_ahead(stepper, k: int, K: int, il: np.ndarray, vc: np.ndarray,
                  duty: np.ndarray) -> RunAhead:
    """Advance every lane K periods from period ``k`` assuming continuous conduction."""
    Ts = stepper.Ts
    c = stepper.conditions.table(stepper.conditions.epoch_at(k * Ts))
    t_on = duty * Ts
    t_off = Ts - t_on
    pm = sg.ccm_period_map(c, t_on, t_off)
    a_i, b_i, a_v, b_v = pm.a_i, pm.b_i, pm.a_v, pm.b_v
    # One period: x -> Phi x + g.
    p11, p12, p21, p22, g1, g2 = pm.p11, pm.p12, pm.p21, pm.p22, pm.g1, pm.g2
    n = il.size
    il_seq = np.empty((K + 1, n))
    vc_seq = np.empty((K + 1, n))
    il_seq[0], vc_seq[0] = il, vc
    filled = 1
    while filled < K + 1:
        count = min(filled, K + 1 - filled)
        i_src, v_src = il_seq[:count], vc_seq[:count]
        il_seq[filled:filled + count] = p11 * i_src + p12 * v_src + g1
        vc_seq[filled:filled + count] = p21 * i_src + p22 * v_src + g2
        filled += count
        if filled < K + 1:
            # Square the map: Phi <- Phi^2, g <- Phi g + g.
            g1, g2 = p11 * g1 + p12 * g2 + g1, p21 * g1 + p22 * g2 + g2
            p11, p12, p21, p22 = (p11 * p11 + p12 * p21, p11 * p12 + p12 * p22,
                                  p21 * p11 + p22 * p21, p21 * p12 + p22 * p22)
    il_edge = a_i * il_seq[:K] + b_i
    vc_edge = a_v * vc_seq[:K] + b_v
    # Valid CCM period: the stepper would find no diode turn-off in it.
    slope_edge = sg.diode_derivative(c, il_edge, vc_edge)
    slope_end = sg.diode_derivative(c, il_seq[1:], vc_seq[1:])
    valid = ((il_edge > 0) & (il_seq[1:] > 0) & ~((slope_edge < 0) & (slope_end > 0))
             & (t_off < c[sg.HALF_RING]) & (il_seq[:K] >= 0))
    valid |= stepper.sync
    valid_periods = np.where(valid.all(axis=0), K, np.argmin(valid, axis=0))
    return RunAhead(il_seq, vc_seq, il_edge, vc_edge, valid_periods, t_on, t_off, c)
