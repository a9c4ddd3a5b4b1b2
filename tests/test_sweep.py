"""Sweeps as a library: grids, Monte-Carlo reproducibility (seeds, chunking, workers, Dask),
yield, target-voltage grids and the output files. (Spec parsing: test_specs.py; the exact duty
solver: test_steady_duty.py.)"""

import json
import math

import numpy as np
import pytest

from boostsim import default_board, steady_state
from boostsim.outputs import column_label, jsonable, read_csv, write_columns, write_csv
from boostsim.sweep import (
    SUMMARY,
    Axis,
    MonteCarlo,
    Sweep,
    Transient,
    evaluate_chunk,
    parse_duty_range,
    parse_limit,
    parse_tolerance,
    run_sweep,
    wilson_interval,
)

BOARD = default_board()


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


# -- grids ------------------------------------------------------------------------------------

def test_grid_is_the_product_duty_first_last_axis_fastest_and_matches_steady_state():
    duty = np.array([0.3, 0.5, 0.7])
    L = np.array([22e-6, 100e-6])
    sweep = Sweep(BOARD, duty=duty, axes=(Axis("L", L),))
    result = run_sweep(sweep, workers=1)
    cols = result.columns
    assert sweep.shape == (3, 2) and result.n_points == 6
    assert cols["duty"].tolist() == [0.3, 0.3, 0.5, 0.5, 0.7, 0.7]
    assert cols["L"].tolist() == [22e-6, 100e-6] * 3
    direct = steady_state(BOARD.replace(L=cols["L"]), cols["duty"], points=1)
    np.testing.assert_allclose(cols["vout_mean"], direct.vout_mean, rtol=1e-12)
    np.testing.assert_allclose(cols["efficiency"], direct.efficiency, rtol=1e-12)
    assert set(SUMMARY) <= set(cols)
    assert cols["mode"].tolist()[:2] == ["DCM", "CCM"]  # 22 uH at D = 0.3 is discontinuous


def test_chunks_bound_memory_and_results_do_not_depend_on_chunking():
    sweep = Sweep(BOARD, duty=parse_duty_range("0.1:0.8:0.01"), axes=(Axis("R", [12, 480]),))
    sizes = []
    small = run_sweep(sweep, workers=1, chunk_size=25, progress=sizes.append)
    assert max(sizes) <= 25 and sum(sizes) == sweep.n_points
    whole = run_sweep(sweep, workers=1, chunk_size=10_000)
    for k in ("vout_mean", "efficiency", "il_max"):
        np.testing.assert_allclose(small.columns[k], whole.columns[k], rtol=1e-12)
    part = evaluate_chunk(sweep, 10, 20)
    assert all(len(v) == 10 for v in part.values())
    assert set(part) == {"duty", "R", *SUMMARY}


def test_sweep_rejects_inconsistent_studies():
    with pytest.raises(ValueError, match="one of them"):
        Sweep(BOARD)
    with pytest.raises(ValueError, match="swept twice"):
        Sweep(BOARD, duty=0.5, axes=(Axis("L", [1e-5]), Axis("L", [2e-5])))
    mc = MonteCarlo(10, (parse_tolerance("L=10%"),))
    with pytest.raises(ValueError, match="one operating point"):
        Sweep(BOARD, duty=[0.3, 0.5], mc=mc)
    with pytest.raises(ValueError, match="parameter sweeps"):
        Sweep(BOARD, duty=0.5, axes=(Axis("R", [10.0]),), mc=mc)
    with pytest.raises(ValueError, match="invalid value"):
        Sweep(BOARD, duty=0.5, mc=MonteCarlo(10, (parse_tolerance("vin=6"),)))
    with pytest.raises(ValueError, match="leave"):
        Sweep(BOARD, duty=0.95, mc=MonteCarlo(10, (parse_tolerance("duty=10%"),)))
    with pytest.raises(ValueError, match=r"R=±100% around 48 reaches an invalid value"):
        Sweep(BOARD, duty=0.5, mc=MonteCarlo(10, (parse_tolerance("R=100%"),)))


# -- Monte-Carlo ------------------------------------------------------------------------------

TOLS = (parse_tolerance("L=20%"), parse_tolerance("C=10%"), parse_tolerance("r_on=30%"))


def test_monte_carlo_samples_stay_in_band_and_are_reproducible():
    mc = MonteCarlo(5000, TOLS, seed=7)
    sweep = Sweep(BOARD, duty=0.6, mc=mc)
    x = sweep.inputs(0, 5000)
    assert x["sample"].tolist() == list(range(5000))
    assert np.all(np.abs(x["L"] / BOARD.L - 1) <= 0.2 + 1e-12)
    assert np.all(np.abs(x["C"] / BOARD.C - 1) <= 0.1 + 1e-12)
    assert abs(np.std(x["L"] / BOARD.L - 1) - 0.2 / math.sqrt(3)) < 0.01  # uniform
    again = Sweep(BOARD, duty=0.6, mc=MonteCarlo(5000, TOLS, seed=7)).inputs(0, 5000)
    _same(x, again)
    other = Sweep(BOARD, duty=0.6, mc=MonteCarlo(5000, TOLS, seed=8)).inputs(0, 5000)
    assert not np.array_equal(x["L"], other["L"])
    # Any slice gives the same samples as the whole (block seeding, chunk-independent).
    piece = sweep.inputs(4000, 4500)
    assert np.array_equal(piece["L"], x["L"][4000:4500])
    # A field's stream does not depend on which other fields have tolerances.
    only_l = Sweep(BOARD, duty=0.6, mc=MonteCarlo(5000, TOLS[:1], seed=7)).inputs(0, 5000)
    assert np.array_equal(only_l["L"], x["L"])


def test_normal_distribution_is_three_sigma_truncated():
    sweep = Sweep(BOARD, duty=0.6, mc=MonteCarlo(20000, TOLS[:1], seed=1, dist="normal"))
    rel = sweep.inputs(0, 20000)["L"] / BOARD.L - 1
    assert np.all(np.abs(rel) <= 0.2 + 1e-12)
    assert abs(np.std(rel) - 0.2 / 3) < 0.003


def test_monte_carlo_identical_with_any_workers_and_yield():
    sweep = Sweep(BOARD, duty=0.6, mc=MonteCarlo(3000, TOLS, seed=1))
    limits = [parse_limit("vout=11.9:12.1"), parse_limit("efficiency>0.96")]
    one = run_sweep(sweep, limits=limits, workers=1, chunk_size=500)
    two = run_sweep(sweep, limits=limits, workers=2, chunk_size=500)
    _same(one.columns, two.columns)
    cols = one.columns
    ok = (cols["vout_mean"] >= 11.9) & (cols["vout_mean"] <= 12.1) & (cols["efficiency"] >= 0.96)
    assert np.array_equal(cols["pass"], ok)
    y = one.yield_summary()
    assert y["pass"] == int(ok.sum()) and y["yield"] == pytest.approx(ok.mean())
    assert 0 < y["yield"] < 1
    lo, hi = y["yield_ci95"]
    assert lo < y["yield"] < hi
    assert y["limits"]["efficiency>0.96"]["pass"] == int((cols["efficiency"] >= 0.96).sum())


def test_monte_carlo_at_a_target_vout_holds_the_nominal_duty():
    sweep = Sweep(BOARD, vout=12.0, mc=MonteCarlo(200, TOLS, seed=2))
    result = run_sweep(sweep, workers=1)
    assert result.nominal_duty == pytest.approx(0.59965, abs=1e-4)
    assert np.all(result.columns["duty"] == result.nominal_duty)
    assert np.all(result.columns["vout_target"] == 12.0)
    assert abs(np.median(result.columns["vout_mean"]) - 12) < 0.05


def test_wilson_interval():
    lo, hi = wilson_interval(0, 100)
    assert lo == pytest.approx(0, abs=1e-12) and 0.03 < hi < 0.04
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)


@pytest.mark.slow  # starts a local Dask cluster
def test_dask_cluster_gives_identical_results():
    distributed = pytest.importorskip("distributed")
    sweep = Sweep(BOARD, duty=0.6, mc=MonteCarlo(4000, TOLS, seed=3))
    limits = [parse_limit("vout=11.9:12.1")]
    local = run_sweep(sweep, limits=limits, workers=1, chunk_size=1000)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        remote = run_sweep(sweep, limits=limits, chunk_size=1000,
                           scheduler=cluster.scheduler_address)
    _same(local.columns, remote.columns)


@pytest.mark.slow  # waits for the scheduler connection to time out
def test_unreachable_scheduler_is_a_clear_error(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr("boostsim.sweep.DASK_CONNECT_TIMEOUT", "1s")
    sweep = Sweep(BOARD, duty=[0.3, 0.5])
    with pytest.raises(RuntimeError, match="cannot connect to the Dask scheduler"):
        run_sweep(sweep, scheduler="tcp://127.0.0.1:9")


def test_vout_grid_sweep_solves_every_point_and_leaves_unreachable_empty():
    sweep = Sweep(BOARD, vout=[12.0, 200.0], axes=(Axis("R", [24.0, 96.0]),))
    cols = run_sweep(sweep, workers=1).columns
    assert cols["vout_target"].tolist() == [12, 12, 200, 200]
    np.testing.assert_allclose(cols["vout_mean"][:2], 12.0, rtol=1e-8)
    assert np.all(np.isnan(cols["duty"][2:])) and np.all(np.isnan(cols["vout_mean"][2:]))
    assert cols["converged"].tolist() == [True, True, False, False]


# -- transient --------------------------------------------------------------------------------

def test_transient_sweep_settles_on_the_steady_state():
    duty = np.array([0.4, 0.6])
    steady = run_sweep(Sweep(BOARD, duty=duty), workers=1).columns
    transient = run_sweep(Sweep(BOARD, duty=duty, transient=Transient(30e-3)), workers=1).columns
    np.testing.assert_allclose(transient["vout_mean"], steady["vout_mean"], rtol=1e-4)
    np.testing.assert_allclose(transient["efficiency"], steady["efficiency"], rtol=1e-4)
    assert transient["converged"].all()
    short = run_sweep(Sweep(BOARD, duty=duty, transient=Transient(1e-3)), workers=1).columns
    assert not short["converged"].any()  # 100 periods from rest: still ringing
    with pytest.raises(ValueError, match="at least 40"):
        run_sweep(Sweep(BOARD, duty=duty, transient=Transient(2e-4)), workers=1)


# -- output files ------------------------------------------------------------------------------

def test_csv_round_trip_with_units_and_metadata(tmp_path):
    cols = {"duty": np.array([0.1, 0.2]), "L": np.array([1e-5, 2e-5]),
            "vout_mean": np.array([5.5, np.nan]), "efficiency": np.array([0.9, 0.8]),
            "mode": np.array(["CCM", "DCM"]), "converged": np.array([True, False])}
    path = tmp_path / "x.csv"
    write_csv(path, cols, {"boostsim": "9.9", "command": "boostsim sweep", "seed": 3,
                           "parameters": {"R": math.inf}})
    text = path.read_text().splitlines()
    assert text[0] == "# boostsim 9.9"
    assert text[1] == "# command: boostsim sweep"
    assert text[4] == "duty,L_H,vout_mean_V,efficiency,mode,converged"
    assert text[5] == "0.1,1e-05,5.5,0.9,CCM,1"
    meta, back = read_csv(path)
    assert meta["seed"] == 3 and meta["parameters"] == {"R": "inf"}
    assert back["L_H"].tolist() == [1e-5, 2e-5]
    assert np.isnan(back["vout_mean_V"][1])
    assert back["mode"].tolist() == ["CCM", "DCM"]


def test_other_formats_and_labels(tmp_path):
    assert column_label("vout_ripple") == "vout_ripple_V"
    assert column_label("R") == "R_ohm" and column_label("efficiency") == "efficiency"
    assert column_label("loss_diode_forward") == "loss_diode_forward_W"
    assert jsonable({"a": np.float64(np.nan), "b": np.array([1.0, np.inf])}) == \
        {"a": None, "b": [1.0, "inf"]}
    cols = {"duty": np.array([0.1]), "vout_mean": np.array([5.0])}
    write_columns(tmp_path / "x.json", cols, {"boostsim": "0"}, {"points": 1})
    doc = json.loads((tmp_path / "x.json").read_text())
    assert doc["columns"] == {"duty": [0.1], "vout_mean_V": [5.0]}
    assert doc["summary"] == {"points": 1}
    write_columns(tmp_path / "x.npz", cols, {"boostsim": "0"})
    with np.load(tmp_path / "x.npz") as npz:
        assert npz["vout_mean_V"].tolist() == [5.0]
        assert json.loads(str(npz["metadata"])) == {"boostsim": "0"}
    with pytest.raises(ValueError, match="unknown extension"):
        write_columns(tmp_path / "x.txt", cols)
