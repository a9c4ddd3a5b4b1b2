"""Figures: every plot builds headless, labels its axes with units, marks what it promises
(DCM regions, limits, steps) and writes a PNG."""

import numpy as np
import pytest

from boostsim import Step, default_board, simulate, steady_state
from boostsim.plots import (
    monte_carlo_figure,
    save,
    steady_figure,
    sweep_figure,
    waveform_figure,
)
from boostsim.sweep import (
    Axis,
    MonteCarlo,
    Sweep,
    parse_duty_range,
    parse_limit,
    parse_tolerance,
    run_sweep,
)

BOARD = default_board()
PNG = b"\x89PNG\r\n\x1a\n"

# Each test simulates, draws and renders a figure (matplotlib: ~0.5-2 s each).
pytestmark = pytest.mark.slow


def _labels(fig) -> tuple[list[str], list[str], list[str]]:
    axes = fig.axes
    return ([a.get_xlabel() for a in axes], [a.get_ylabel() for a in axes],
            [t.get_text() for a in axes for t in (a.get_legend().get_texts()
                                                   if a.get_legend() else [])])


def _saved(fig, tmp_path, name="f.png") -> bytes:
    path = tmp_path / name
    save(fig, path)
    return path.read_bytes()


def test_duty_sweep_figure_has_theory_dcm_shading_and_limits(tmp_path):
    sweep = Sweep(BOARD.replace(R=400.0), duty=parse_duty_range("0.05:0.85:0.02"))
    result = run_sweep(sweep, limits=[parse_limit("vout=10:20"), parse_limit("ripple<5m")],
                       workers=1)
    assert (result.columns["mode"] == "DCM").any() and (result.columns["mode"] == "CCM").any()
    fig = sweep_figure(result)
    xlabels, ylabels, legend = _labels(fig)
    assert len(fig.axes) == 4
    assert "duty D" in xlabels
    assert {"output voltage, mean [V]", "efficiency [%]", "output ripple, peak-to-peak [mV]",
            "inductor current [A]"} == set(ylabels)
    assert "DCM region" in legend and "averaged CCM model with losses" in legend
    assert any(t.startswith("ideal") for t in legend) and "limit" in legend
    ax_v, ax_r = fig.axes[0], fig.axes[2]
    limit_lines = [line.get_ydata()[0] for line in ax_v.lines if line.get_gid() == "limit"]
    assert limit_lines == [10, 20]
    assert [line.get_ydata()[0] for line in ax_r.lines if line.get_gid() == "limit"] == \
        [pytest.approx(5.0)]  # mV
    assert "R 400Ω" in fig.get_suptitle()
    assert _saved(fig, tmp_path).startswith(PNG)


@pytest.mark.slow  # runs two sweeps (~1 s)
def test_two_axis_sweeps_draw_families_or_colour_maps(tmp_path):
    fam = run_sweep(Sweep(BOARD, duty=parse_duty_range("0.1:0.8:0.05"),
                          axes=(Axis("L", [10e-6, 47e-6, 220e-6], log=True),)), workers=1)
    fig = sweep_figure(fam)
    _, _, legend = _labels(fig)
    assert {"L = 10uH", "L = 47uH", "L = 220uH"} <= set(legend)
    assert "DCM (dotted)" in legend
    assert fig.axes[0].get_xscale() == "linear"
    maps = run_sweep(Sweep(BOARD, duty=0.6, axes=(Axis("L", np.geomspace(1e-5, 1e-3, 12), True),
                                                  Axis("R", np.linspace(10, 500, 12)))),
                     workers=1)
    fig = sweep_figure(maps)
    xlabels, ylabels, _ = _labels(fig)
    assert "L [H]" in xlabels and "R [Ω]" in ylabels
    assert fig.axes[0].get_xscale() == "log"
    assert len(fig.axes) == 8  # four maps and their colour bars
    assert _saved(fig, tmp_path).startswith(PNG)


def test_parameter_axis_sweep_at_a_target_voltage(tmp_path):
    result = run_sweep(Sweep(BOARD, vout=12.0, axes=(Axis("R", np.linspace(12, 240, 8)),)),
                       workers=1)
    fig = sweep_figure(result)
    xlabels, ylabels, _legend = _labels(fig)
    assert "R [Ω]" in xlabels and "duty for the target" in ylabels
    assert "vout target 12 V" in fig.get_suptitle()
    assert _saved(fig, tmp_path).startswith(PNG)


def test_monte_carlo_figure_marks_limits_and_yield(tmp_path):
    sweep = Sweep(BOARD, duty=0.6, mc=MonteCarlo(2000, (parse_tolerance("L=20%"),
                                                        parse_tolerance("r_on=30%")), seed=1))
    result = run_sweep(sweep, limits=[parse_limit("efficiency>0.9607"),
                                      parse_limit("vout=11:13")], workers=1)
    fig = monte_carlo_figure(result)
    xlabels, ylabels, legend = _labels(fig)
    assert "efficiency [%]" in xlabels and "output voltage, mean [V]" in xlabels
    assert set(ylabels) == {"samples"}
    assert {"pass", "fail", "limit"} <= set(legend)
    title = fig.get_suptitle()
    assert "yield" in title and "2000 samples" in title and "L=±20%" in title
    eff_ax = next(a for a in fig.axes if a.get_xlabel() == "efficiency [%]")
    assert "efficiency>0.9607" in eff_ax.get_title()
    assert any(abs(line.get_xdata()[0] - 96.07) < 1e-9 for line in eff_ax.lines
               if line.get_gid() == "limit")
    for ax in fig.axes:
        # every line and region is in the legend (a limit's second bound shares its entry)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        for artist in (*ax.lines, *ax.patches[-2:]):
            label = artist.get_label()
            assert label in legend or artist.get_gid() == "limit" or \
                label.startswith("_"), label
        assert "mean" in legend
        # readable ticks: few, and no offset ("+1.2e1") on the value axis
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert 3 <= len(ticks) <= 7
    assert _saved(fig, tmp_path).startswith(PNG)
    assert all(ax.xaxis.get_major_formatter().get_offset() == "" for ax in fig.axes)


def test_waveform_figure_has_zoom_switch_state_and_steps(tmp_path):
    sim = simulate(BOARD, 0.6, 4e-3, 2e-7, steps=(Step(2e-3, R=24.0),))
    fig = waveform_figure(sim, zoom_periods=3)
    xlabels, ylabels, _ = _labels(fig)
    assert "time [ms]" in xlabels and "time [µs]" in xlabels
    assert {"inductor current iL [A]", "output voltage [V]", "duty", "switch state"} <= \
        set(ylabels)
    zoom = next(a for a in fig.axes if a.get_ylabel() == "switch state")
    assert [t.get_text() for t in zoom.get_yticklabels()] == ["both off", "diode",
                                                              "switch on"]
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    assert "R→24Ω" in texts
    assert _saved(fig, tmp_path, "w.svg").startswith(b"<?xml")


def test_steady_figure_shows_period_and_losses(tmp_path):
    state = steady_state(BOARD, 0.6)
    fig = steady_figure(state, BOARD)
    xlabels, _ylabels, _ = _labels(fig)
    assert "time in the period [µs]" in xlabels and "loss [mW]  (% of input power)" in xlabels
    bars = next(a for a in fig.axes if a.get_xlabel().startswith("loss"))
    assert "diode forward" in [t.get_text() for t in bars.get_yticklabels()]
    assert _saved(fig, tmp_path).startswith(PNG)


def test_save_rejects_unknown_formats(tmp_path):
    fig = steady_figure(steady_state(BOARD, 0.5), BOARD)
    with pytest.raises(ValueError, match="unknown image format"):
        save(fig, tmp_path / "x.bmpx")


@pytest.mark.slow  # tunes a loop and draws it (~1 s)
def test_bode_figure_marks_margins_rhp_zero_and_resonance(tmp_path):
    from boostsim.design import tune_pid
    from boostsim.linearised import small_signal
    from boostsim.plots import bode_figure

    gains = tune_pid(BOARD, 12.0, 2000.0)
    loop, m = gains.loop, gains.loop.margins()
    f = np.geomspace(20, 0.49 / loop.sample_period, 300)
    fig = bode_figure(f, loop=loop.frequency_response(f), plant=loop.plant_response(f),
                      controller=loop.controller_response(f), margins=m,
                      rhp_zero_hz=gains.rhp_zero_hz, title="Loop gain")
    xlabels, ylabels, legend = _labels(fig)
    assert ylabels == ["magnitude [dB]", "phase [deg]"] and "frequency [Hz]" in xlabels
    assert any(t.startswith("loop gain T") for t in legend)
    assert any(t.startswith("plant Gvd") for t in legend)
    assert any(t.startswith("controller C") for t in legend)
    assert any(t.startswith("RHP zero") for t in legend)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("crossover 2") for t in texts)
    assert any(t.startswith("phase margin 50.0") for t in texts)
    assert any(t.startswith("gain margin") for t in texts)
    assert _saved(fig, tmp_path).startswith(PNG)
    plant = small_signal(BOARD, 0.6)
    f = np.geomspace(10, 50e3, 200)
    fig = bode_figure(f, plant=plant.response(f), rhp_zero_hz=plant.rhp_zero_hz,
                      resonance_hz=plant.resonance_hz)
    legend = _labels(fig)[2]
    assert any(t.startswith("LC resonance") for t in legend)
    assert any(t.startswith("plant Gvd") for t in legend)
    assert _saved(fig, tmp_path, "plant.png").startswith(PNG)


def test_closed_loop_waveform_shows_the_setpoint_and_says_closed_loop(tmp_path):
    sim = simulate(BOARD, 0.6, 2e-3, 1e-6)
    fig = waveform_figure(sim, vref=12.0, loop="PID kp 0.01, ki 5 at 200 Hz")
    _, ylabels, legend = _labels(fig)
    assert "closed loop, PID kp 0.01, ki 5 at 200 Hz" in fig.get_suptitle()
    assert legend.count("vref 12 V") == 2          # whole run and zoom
    assert "duty (PID output)" in ylabels
    vout_axes = [a for a in fig.axes if any(line.get_label() == "vref 12 V" for line in a.lines)]
    assert all(line.get_ydata()[0] == 12.0 for a in vout_axes for line in a.lines
               if line.get_label() == "vref 12 V")
    assert "open loop" in waveform_figure(sim).get_suptitle()
    assert _saved(fig, tmp_path).startswith(PNG)


def test_no_offset_tick_labels_on_long_runs(tmp_path):
    """A 0.2 s run zooms on t = 199960..200000 us: plain tick labels, not "+1.9996e5"."""
    sim = simulate(BOARD, 0.6, 0.2, 1e-5)
    fig = waveform_figure(sim, zoom_periods=4)
    _saved(fig, tmp_path)
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            assert axis.get_major_formatter().get_offset() == "", ax.get_ylabel()
    zoom = next(a for a in fig.axes if a.get_ylabel() == "switch state")
    labels = [t.get_text() for t in zoom.get_xticklabels() if t.get_text()]
    assert any(label.startswith("1999") for label in labels), labels
