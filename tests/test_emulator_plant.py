"""The emulator's real-time plant (firmware_bridge/plant.py) against the exact switching engine.

The plant advances the exact period map in closed-form chunks (exact in CCM, local affine maps
from exact engine periods in DCM); here its cycle averages and waveforms are compared with
``boostsim.simulate`` / ``steady_state`` in steady state and through duty, load and frequency
steps, in CCM and DCM. Requirements: steady state within 0.5 %, transients within 2 % (of the
final value); the plant does far better, and these tests hold it to that.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from boostsim import Step, default_board, simulate, steady_state
from firmware_bridge import plant as plant_module
from firmware_bridge.emulated_hal import AdcModel, rp2040_pwm
from firmware_bridge.plant import Plant

FSW = 100e3
BOARD = default_board()


def _at_steady(params, duty):
    ss = steady_state(params, duty)
    plant = Plant(params, x0=(ss.il_start, ss.vc_start))
    plant.set_pwm(0.0, True, FSW, duty)
    return plant, ss


@pytest.mark.parametrize(("R", "duty", "mode"), [(48.0, 0.6, "CCM"), (48.0, 0.2, "CCM"),
                                                 (1000.0, 0.3, "DCM"), (200.0, 0.5, "DCM")])
def test_steady_state_orbit_is_kept(R, duty, mode):
    params = BOARD.replace(R=R)
    plant, ss = _at_steady(params, duty)
    means = plant.run_periods(2000)
    assert np.max(np.abs(means / ss.vout_mean - 1)) < 1e-5
    sim = simulate(params, duty, 20 / FSW, x0=(ss.il_start, ss.vc_start))
    assert np.ravel(sim.periods.mode)[-1] == mode


@pytest.mark.parametrize(("R", "duty"), [(48.0, 0.6), (1000.0, 0.3), (48.0, 0.05)])
def test_settles_to_the_exact_steady_state_from_rest(R, duty):
    """From the gate-off state (capacitor charged through the diode) to the steady state: the
    long run goes through CCM certificates / cached DCM references, so it is cheap."""
    params = BOARD.replace(R=R)
    plant = Plant(params)
    plant.set_pwm(0.0, True, FSW, duty)
    seconds = 8 * R * float(params.C) + 0.02
    plant.advance(seconds)
    means = plant.run_periods(100)
    ss = steady_state(params, duty)
    assert abs(means.mean() / ss.vout_mean - 1) < 1e-4  # requirement: 0.5 %
    assert plant.stats.references < 200


def _transients(scenarios, n0, n1, trust_v=None):
    """Plant and exact engine through a duty step, every scenario a lane of one simulate()."""
    lanes_R, x0, schedules, plants = [], [], [], []
    for R, d0, d1 in scenarios:
        params = BOARD.replace(R=R)
        plant, ss0 = _at_steady(params, d0)
        if trust_v is not None:
            plant = Plant(params, x0=(ss0.il_start, ss0.vc_start), trust_v=trust_v)
            plant.set_pwm(0.0, True, FSW, d0)
        lanes_R.append(R)
        x0.append(plant.state)
        schedules.append(np.r_[np.full(n0, d0), np.full(n1, d1)])
        plants.append(plant)
    exact = simulate(BOARD.replace(R=np.array(lanes_R)), np.array(schedules).T, (n0 + n1) / FSW,
                     x0=np.array(x0), dt=5 / FSW)
    means = exact.period_means()["vout"]
    out = []
    for i, (plant, (R, _, d1)) in enumerate(zip(plants, scenarios, strict=True)):
        m0 = plant.run_periods(n0)
        plant.set_pwm(plant.period_start, True, FSW, d1)
        emulated = np.r_[m0, plant.run_periods(n1)]
        final = steady_state(BOARD.replace(R=R), d1).vout_mean
        out.append((emulated, means[i], final, exact.periods.mode[i]))
    return out


def test_duty_steps_match_the_exact_engine():
    """CCM up and down (the step down passes through DCM), DCM at light load, a DCM step into
    heavier conduction: cycle averages within 2e-4 of the final value (requirement 2 %)."""
    scenarios = [(48.0, 0.3, 0.6), (48.0, 0.6, 0.4), (1000.0, 0.2, 0.35), (200.0, 0.3, 0.5)]
    results = _transients(scenarios, 500, 1500)
    modes = set()
    for (R, d0, d1), (emulated, exact, final, mode) in zip(scenarios, results, strict=True):
        err = np.max(np.abs(emulated - exact)) / final
        assert err < 2e-4, (R, d0, d1, err)
        modes.update(mode.tolist())
        # The step really moved the output.
        assert abs(exact[-1] - exact[0]) > 0.1 * final
    assert modes == {"CCM", "DCM"}


def test_ccm_transient_is_exact_without_engine_calls():
    """A duty step that stays in continuous conduction (12 ohm): the closed-form CCM map all
    the way, to rounding (the 3e-8 is the trapezoid rule of the cycle average)."""
    [(emulated, exact, final, mode)] = _transients([(12.0, 0.4, 0.6)], 300, 1500)
    assert set(mode.tolist()) == {"CCM"}
    assert np.max(np.abs(emulated - exact)) / final < 1e-6


def test_smaller_trust_region_is_more_accurate_in_dcm():
    scenarios = [(1000.0, 0.2, 0.35)]
    loose = _transients(scenarios, 200, 800)[0]
    tight = _transients(scenarios, 200, 800, trust_v=0.002)[0]
    err_loose = np.max(np.abs(loose[0] - loose[1]))
    err_tight = np.max(np.abs(tight[0] - tight[1]))
    assert err_tight < err_loose
    assert err_tight / tight[2] < 1e-5


@pytest.mark.parametrize(("R", "duty"), [(48.0, 0.6), (1000.0, 0.3)])
def test_waveform_samples_match_the_exact_engine(R, duty):
    """The output at arbitrary instants (what the ADC samples), ripple included."""
    params = BOARD.replace(R=R)
    plant, ss = _at_steady(params, duty)
    exact = simulate(params, duty, 3 / FSW, x0=(ss.il_start, ss.vc_start), dt=0.01 / FSW)
    t = exact.t[:-1] + 1e-13  # just after the grid points (values at edges: right limits)
    vout, il = plant.sample(t, current=True)
    ripple = np.ptp(exact.vout)
    assert ripple > 1e-3
    # CCM: exact (table interpolation only); DCM: a nearby reference period's waveform shifted
    # by the change of vC, microvolts (one ADC code is 6 mV).
    assert np.max(np.abs(vout - exact.vout[:-1])) < 1e-3 * ripple + 1e-6 * ss.vout_mean
    # The inductor current (MEAS:CURR when wired): in DCM the shared reference shifts the
    # diode turn-off by a few ns.
    assert np.max(np.abs(il - exact.il[:-1])) < 1e-6 + 5e-3 * np.ptp(exact.il)


def test_load_disconnect_matches_the_exact_engine():
    """R -> inf at a period boundary with the switch running: the output rises (the emulator's
    over-voltage scenario); the plant follows the exact engine's Step."""
    params = BOARD
    plant, ss = _at_steady(params, 0.6)
    k_step = 100
    plant.run_periods(k_step)
    plant.set_conditions(plant.period_start, R=math.inf)
    emulated = plant.run_periods(600)
    exact = simulate(params, 0.6, (k_step + 600) / FSW, x0=(ss.il_start, ss.vc_start),
                     steps=[Step(k_step / FSW, R=math.inf)], dt=5 / FSW)
    ref = exact.period_means()["vout"][k_step:]
    assert ref[-1] > ss.vout_mean + 2.0
    assert np.max(np.abs(emulated - ref)) / ref[-1] < 1e-3


def test_line_step_and_frequency_change_reach_the_new_steady_states():
    plant, _ = _at_steady(BOARD, 0.5)
    plant.set_conditions(plant.period_start, vin=6.0)
    plant.advance(plant.period_start + 0.05)
    target = steady_state(BOARD.replace(vin=6.0), 0.5).vout_mean
    assert abs(plant.run_periods(100).mean() / target - 1) < 1e-5
    # Half the switching frequency: the period grid restarts at the boundary.
    plant.set_pwm(plant.period_start, True, 50e3, 0.5)
    assert plant.pwm == (True, 50e3, 0.5)
    plant.advance(plant.period_start + 0.05)
    target = steady_state(BOARD.replace(vin=6.0, fsw=50e3), 0.5).vout_mean
    assert abs(plant.run_periods(100).mean() / target - 1) < 1e-5


def test_changes_apply_at_the_next_period_boundary():
    plant, _ = _at_steady(BOARD, 0.6)
    reference, _ = _at_steady(BOARD, 0.6)
    times = np.array([12.7, 12.99, 13.5, 14.2]) / FSW
    plant.sample([12.4 / FSW])
    plant.set_pwm(12.4 / FSW, False, FSW, 0.0)  # inside period 12
    assert plant.pwm[0] is True  # not yet
    off = plant.sample(times)
    on = reference.sample(times)
    # Period 12 keeps the old duty (double-buffered compare register); from 13 on the
    # switch stays open and the output falls.
    # (to rounding: the plant moved to period 12 first, the reference evaluates from period 0)
    np.testing.assert_allclose(off[:2], on[:2], rtol=1e-14)
    assert off[2] != on[2] and off[3] != on[3]
    assert plant.pwm == (False, FSW, 0.0)


def test_bad_requests_are_refused():
    plant = Plant(BOARD)
    plant.sample([1e-3])
    with pytest.raises(ValueError, match="backwards"):
        plant.sample([0.5e-3])
    with pytest.raises(ValueError, match="non-decreasing"):
        plant.sample([2e-3, 1.5e-3])
    with pytest.raises(ValueError, match="duty"):
        plant.set_pwm(2e-3, True, FSW, 1.0)
    with pytest.raises(ValueError, match="frequency"):
        plant.set_pwm(2e-3, True, 0.0, 0.5)
    with pytest.raises(ValueError, match="unknown condition"):
        plant.set_conditions(2e-3, L=1e-3)
    with pytest.raises(ValueError):
        plant.set_conditions(2e-3, R=-1.0)
    with pytest.raises(ValueError, match="single-lane"):
        Plant(BOARD.replace(R=[10.0, 20.0]))


def test_unloaded_board_at_rest_costs_nothing():
    """No load, gate off: the capacitor sits at the diode threshold; years of idle time are one
    closed-form step (and not a period-by-period crawl at the CCM/DCM boundary)."""
    plant = Plant(BOARD.replace(R=math.inf))
    v0 = plant.vout(0.0)
    plant.advance(3600.0)
    assert plant.vout(3600.0) == pytest.approx(v0, abs=1e-9)
    assert plant.stats.references <= 2


def test_rp2040_pwm_quantisation():
    # 125 MHz / 100 kHz = 1250 counter steps; hal.py's duty_u16, MicroPython's compare level.
    assert rp2040_pwm(100e3, 0.5, 125e6) == (100e3, 0.5)
    freq, duty = rp2040_pwm(100e3, 0.123, 125e6)  # duty_u16 8061 -> level 154.25 -> 154
    assert freq == 100e3 and duty == 154 / 1250
    freq, duty = rp2040_pwm(1000.0, 0.25, 125e6)  # needs the clock divider
    assert freq == pytest.approx(1000.0, rel=1e-3) and duty == pytest.approx(0.25, abs=1e-4)
    assert rp2040_pwm(123e3, 0.3, 0.0) == (123e3, 0.3)  # ideal PWM


def test_adc_model_quantises_clips_and_is_seeded():
    adc = AdcModel(3.3, 4096, 4095)
    assert adc.code(0.0) == 0 and adc.code(3.3) == 4095 and adc.code(-1) == 0
    assert adc.code(1.65) == 2048
    assert adc.code(float("nan")) == 0
    noisy = [AdcModel(3.3, 4096, 4095, noise_lsb=2.0, seed=5) for _ in range(2)]
    a = noisy[0].codes(np.full(2000, 1.65))
    assert np.array_equal(a, noisy[1].codes(np.full(2000, 1.65)))
    assert 1.5 < a.std() < 2.5 and abs(a.mean() - 2048) < 0.3
    off = AdcModel(3.3, 4096, 4095, offset_lsb=3, gain_error=0.01)
    assert off.code(1.65) == int(2048 * 1.01 + 3 + 0.5)


@pytest.mark.parametrize(("R", "duty", "x0"), [(48.0, 0.6, None), (1000.0, 0.3, None),
                                               (48.0, 0.6, (0.0, 14.0))])
def test_one_instant_is_evaluated_as_numpy_interp_does(R, duty, x0):
    # A single firmware read goes through _Chunk.evaluate_at (Python floats); it must give
    # np.interp's numbers bit for bit, on grid points, between them and at both ends.
    params = BOARD.replace(R=R)
    if x0 is None:
        plant, _ = _at_steady(params, duty)
    else:  # above its output at rest: discontinuous conduction on the way down
        plant = Plant(params, x0=x0)
        plant.set_pwm(0.0, True, FSW, duty)
    plant.advance(3.5 / FSW)
    chunk = plant._get_chunk()
    xp = chunk.tables[0]
    rng = np.random.default_rng(5)
    taus = np.concatenate([xp, rng.uniform(xp[0], xp[-1], 200), [xp[0], xp[-1]]])
    il, vc = plant.state
    for tau in taus:
        for current in (False, True):
            v_ref, i_ref = chunk.evaluate(np.array([tau]), il, vc, current)
            v, i = chunk.evaluate_at(float(tau), il, vc, current)
            assert v == v_ref[0], (chunk.kind, tau)
            if current:
                assert i == i_ref[0], (chunk.kind, tau)


@pytest.mark.parametrize("R", [48.0, 1000.0])
def test_the_compiled_evaluation_is_the_numpy_one(R):
    """emukernel.evaluate (the default) against the numpy reference path: the same samples,
    to rounding, through duty steps in CCM and DCM, the transition periods between them, an
    output switched off and on, both small and large batches of instants, and long gaps."""
    params = BOARD.replace(R=R)
    plants = [Plant(params, compiled=True), Plant(params, compiled=False)]
    rng = np.random.default_rng(5)
    t, out = 0.0, [[], []]
    for duty in (0.3, 0.6, 0.1, 0.45, 0.0, 0.5):
        for plant in plants:
            plant.set_pwm(t, duty > 0, FSW, duty)
        for size in (1, 3, 7, 40, 300):
            span = rng.choice([2e-5, 5e-4, 6e-3])
            times = t + np.sort(rng.uniform(0, span, size))
            for plant, dest in zip(plants, out, strict=True):
                dest.append(np.concatenate(plant.sample(times, current=True)))
            t = float(times[-1])
    assert plants[0].stats.transitions + plants[0].stats.references > 0  # DCM / transitions met
    compiled, reference = np.concatenate(out[0]), np.concatenate(out[1])
    np.testing.assert_allclose(compiled, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("R", [48.0, 1000.0])
def test_samples_from_the_record_are_the_samples_taken_then(R, compiled, monkeypatch):
    """Plant.sample_past (the emulated board's streamed samples, computed when read) against a
    twin that sampled the same instants on its way: equal to rounding through duty, load and
    frequency changes, CCM and DCM, a detour ahead and back (checkpoint/restore, as a
    protection-tick batch does) and reads of the record that lag the plant by a little or a
    lot -- and sample_past refuses instants before its record.

    One DCM waveform table per reference here: by default nearby references share the table
    the first of them builds, so which one that is depends on the order of evaluation (about
    1 mV here, below one ADC code). A waveform built after a load change still belongs to
    the conditions of its map (built from the new conditions' references it was 30 mV off)."""
    monkeypatch.setattr(plant_module, "_TABLE_STRIDE", 1)
    params = BOARD.replace(R=R)
    plant = Plant(params, compiled=compiled)      # records; samples only the "firmware" reads
    twin = Plant(params, compiled=compiled)       # samples everything as it goes
    plant.record(True)
    rng = np.random.default_rng(11)
    t = 0.0
    pending: list[np.ndarray] = []
    got, want = [], []
    steps = [("duty", 0.4), ("duty", 0.6), ("load", 2000.0), ("duty", 0.15), ("freq", 80e3),
             ("duty", 0.0), ("duty", 0.5), ("load", 48.0), ("duty", 0.35)]
    for n, (what, value) in enumerate(steps * 2):
        for p in (plant, twin):
            if what == "duty":
                p.set_pwm(t, value > 0, p.pwm[1], value)
            elif what == "freq":
                p.set_pwm(t, True, value, p.pwm[2])
            else:
                p.set_conditions(t, R=value)
        for _ in range(int(rng.integers(1, 6))):
            stream = t + np.sort(rng.uniform(0, rng.choice([3e-5, 4e-4, 3e-3]), 30))
            read = float(stream[-1]) + rng.uniform(0, 2e-5)
            want.append(twin.sample(np.append(stream, read))[:-1])
            pending.append(stream)
            if n % 3 == 1:  # a batch evaluated ahead, then abandoned
                keep = plant.checkpoint()
                plant.sample([read + 1e-3, read + 2e-3])
                plant.restore(keep)
            plant.at(read)
            t = read
            if rng.random() < 0.4:
                got.append(plant.sample_past(np.concatenate(pending)))
                pending.clear()
    got.append(plant.sample_past(np.concatenate(pending)))
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=1e-12, atol=1e-12)
    assert plant.stats.transitions + plant.stats.references > 0  # DCM / transitions met
    with pytest.raises(ValueError, match="before the record"):
        plant.sample_past(np.array([t - 1e-3]))
    with pytest.raises(ValueError, match="non-decreasing"):
        plant.sample_past([t + 2e-3, t + 1e-3])
    plant.record(False)
    with pytest.raises(RuntimeError, match="record"):
        plant.sample_past(np.array([t]))


def _random_maps(rng, count):
    """(phi, its _Chunk, eigen-decomposed) for ``count`` random decaying 2x2 maps: every other
    one a complex pair (a rotation of radius 0.5..0.99999), the others two real modes in
    (-0.999, 0.999), both through a random (possibly badly conditioned) change of basis."""
    for trial in range(count):
        q = rng.normal(size=(2, 2))
        if trial % 2:
            r, th = rng.uniform(0.5, 0.99999), rng.uniform(1e-4, 3.0)
            rot = r * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
            phi = q @ rot @ np.linalg.inv(q)
        else:
            phi = q @ np.diag(rng.uniform(-0.999, 0.999, 2)) @ np.linalg.inv(q)
        chunk = plant_module._Chunk("ccm", tuple(phi.ravel()), tuple(rng.normal(size=2)), None)
        chunk._eigen()
        yield phi, chunk


def test_closed_form_eigen_decomposition_is_lapacks():
    """The chunk's 2x2 eigen-decomposition in closed form against numpy.linalg on random
    maps (decaying real and complex modes, badly conditioned ones included): V diag(lam) V^-1
    rebuilds phi, the eigenvalues, fixed point and the condition number of V agree, each to
    rounding scaled by its own conditioning; a mode that does not decay leaves no closed form."""
    done = 0
    for phi, chunk in _random_maps(np.random.default_rng(3), 3000):
        if chunk._closed is None:  # only when V is worse conditioned than _MAX_COND
            assert np.linalg.cond(np.linalg.eig(phi)[1]) > 0.5 * plant_module._MAX_COND
            continue
        done += 1
        cond = chunk._cond
        v00, v01, v10, v11, w00, w01, w10, w11 = chunk._closed_py
        lam = np.array(chunk._closed)
        rebuilt = np.array([[v00, v01], [v10, v11]]) @ np.diag(lam) @ np.array(
            [[w00, w01], [w10, w11]])
        scale = cond * max(1.0, np.abs(phi).max())
        assert np.abs(rebuilt.real - phi).max() <= 1e-14 * scale
        assert np.abs(np.sort_complex(lam) - np.sort_complex(np.linalg.eigvals(phi))).max() \
            <= 1e-13 * scale
        fixed = np.linalg.solve(np.eye(2) - phi, np.array(chunk.gamma))
        assert np.abs(np.array(chunk._fixed) - fixed).max() <= 1e-14 * np.linalg.cond(
            np.eye(2) - phi) * max(1.0, np.abs(fixed).max())
        assert cond == pytest.approx(np.linalg.cond(np.linalg.eig(phi)[1]), rel=1e-12 * cond)
    assert done > 2900
    growing = plant_module._Chunk("ccm", (1.001, 0.0, 0.0, 0.5), (0.0, 0.0), None)
    growing._eigen()
    assert growing._closed is None


@pytest.mark.parametrize("R", [48.0, 1000.0])
def test_maps_built_with_their_neighbours_are_the_maps_built_alone(R):
    """A duty on the PWM's counter grid (set_pwm's ``steps``) met for the first time has the
    CCM maps of the levels around it built with its own, in one computation: each such map
    (its period map, certificate and waveform tables) is the one a plant without ``steps``
    builds for that duty alone, the plant's samples through a walk over those levels are
    the same, and the walk builds maps only once per block."""
    params = BOARD.replace(R=R)
    steps = 1250
    levels = [600, 603, 598, 611, 590, 700, 605]
    plants = [Plant(params), Plant(params)]
    out: list[list[np.ndarray]] = [[], []]
    t = 0.0
    for level in levels:
        t += 3e-4
        for n, (plant, dest) in enumerate(zip(plants, out, strict=True)):
            plant.set_pwm(t, True, FSW, level / steps, steps if n == 0 else 0)
            dest.append(plant.sample(t + 1e-5 + np.linspace(0.0, 2e-4, 37), current=True))
    for a, b in zip(out[0], out[1], strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    blocked, alone = plants
    # The gate off at start (duty 0) is one map; then 600 builds levels 592..607, 611 those
    # of 603..618 not built yet, 590 those of 582..597, 700 692..707.
    assert blocked.stats.ccm_maps == 1 + 16 + 11 + 10 + 16
    assert alone.stats.ccm_maps == 1 + len(set(levels))
    for level in set(levels):
        key = ("ccm", FSW, level / steps)
        mine, theirs = blocked._cache[key], alone._cache[key]
        assert (mine.phi, mine.gamma, mine.c, mine._margins) == (
            theirs.phi, theirs.gamma, theirs.c, theirs._margins)
        (xp_a, tab_a), (xp_b, tab_b) = mine.tables, theirs.tables
        assert np.array_equal(xp_a, xp_b)
        for name in plant_module._TABLE_ROWS:
            assert np.array_equal(tab_a[name], tab_b[name]), (level, name)
    for bad in (12.5, -1, None, "1250"):
        with pytest.raises(ValueError, match="steps must be a whole number"):
            blocked.set_pwm(t, True, FSW, 0.5, bad)


@pytest.mark.skipif(plant_module.kernel is None, reason="needs numba")
def test_compiled_closed_form_state_is_pythons_to_the_last_bit():
    """emukernel.certified's state n periods on (the plant's certified path) against
    _Chunk.state in Python's complex arithmetic, bit for bit: random decaying maps with real
    and complex modes, start states off the fixed point, n from 0 to 20000 (Python's complex
    power switches from binary powering to the polar form above 100)."""
    kernel = plant_module.kernel
    rng = np.random.default_rng(8)
    xp, tabs = np.array([0.0, 1e-5]), np.zeros((6, 2))
    checked = 0
    for trial, (_, chunk) in enumerate(_random_maps(rng, 400)):
        if chunk._closed is None:
            continue
        chunk._tables = (xp, dict.fromkeys(plant_module._TABLE_ROWS, np.zeros(2)))
        chunk._radius = 1.0  # set up (closed_arrays would otherwise run _setup_closed)
        pack = chunk.closed_arrays()
        for n in [0, 1, 2, 7, 100, 101, 5000, 20000, *rng.integers(0, 3000, 5).tolist()]:
            il0, vc0 = (np.array(chunk._fixed) + rng.normal(size=2) * 10.0 ** rng.uniform(-9, 1))
            got = kernel.certified(np.empty(0), 0, 0, 1e5, 0.0, 1, float(il0), float(vc0),
                                   pack[0], xp, tabs, kernel.CCM, False, np.empty(0),
                                   np.empty(0), int(n))
            assert got == chunk.state(float(il0), float(vc0), int(n)), (trial, n)
            checked += 1
    assert checked > 4000


def test_a_certified_duty_change_takes_the_short_path_to_the_same_numbers(monkeypatch):
    """A control step's duty change under a certified CCM map is run through without the
    period-by-period checks (no span) and gives, to the last bit, what the general loop gives
    (a twin plant sent through it at every request)."""
    rng = np.random.default_rng(5)
    ss = steady_state(BOARD, 0.5)
    plants = [Plant(BOARD, x0=(ss.il_start, ss.vc_start)) for _ in range(2)]
    spans = [0]
    inner = plant_module._Chunk.span

    def span(self, *args):
        spans[0] += 1
        return inner(self, *args)

    monkeypatch.setattr(plant_module._Chunk, "span", span)
    crossings = [0]
    if plant_module.kernel is not None:  # the change and the next map in one compiled call
        cross = plant_module.kernel.crossing

        def crossing(*args):
            crossings[0] += 1
            return cross(*args)

        monkeypatch.setattr(plant_module.kernel, "crossing", crossing)
    offsets = 2e-6 * np.arange(4)
    duties = 0.5 + rng.integers(-3, 4, 400) / 1250
    gaps = 500e-6 + rng.uniform(0, 1e-6, duties.size)
    out = []
    for n, plant in enumerate(plants):
        plant.record(True)
        plant.set_pwm(0.0, True, FSW, 0.5)
        plant.sample([1e-3])
        spans[0] = 0
        got = []
        t = 1e-3
        for duty, gap in zip(duties, gaps, strict=True):
            t += gap
            if n:
                plant._sure = None  # the general loop
            got.append(plant.sample(t + offsets))
            plant.set_pwm(t + 8e-6, True, FSW, float(duty))
        got.append(plant.sample_past(t + 10e-6 * np.arange(3)))
        out.append(np.concatenate(got))
        assert (spans[0] == 0) == (n == 0)
    assert np.array_equal(out[0], out[1])
    assert plant_module.kernel is None or crossings[0] > 300
