"""The notebooks (``notebooks/*.ipynb``): each runs top to bottom, and is committed without
outputs.

Every notebook is executed by a ``python3`` kernel in a temporary copy of ``notebooks/`` (so
nothing is written back), with matplotlib's Agg backend (``MPLBACKEND=Agg``) and static
figures instead of sliders (``BOOSTSIM_NOTEBOOK_STATIC=1``); a failing cell fails the test
with the cell's source and traceback, and so does a cell that runs longer than
:data:`CELL_TIMEOUT` or prints a warning. New notebooks are picked up automatically.

Policy (``notebooks/README.md``): notebooks are committed without outputs, execution counts
or widget state. Strip them before committing with

    python tests/test_notebooks.py --strip
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # executes the notebooks

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: Seconds any one cell may run before the test fails.
CELL_TIMEOUT = 180
STRIP_COMMAND = "python tests/test_notebooks.py --strip"
# Cell metadata that records a run (timings, scroll state) rather than content.
_RUN_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled")



def _nbformat():
    return pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat)")


# -- output stripping ----------------------------------------------------------------------

def stripped(nb):
    """A copy of the notebook without outputs, execution counts, run metadata and widget
    state (the form it is committed in)."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for key in _RUN_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def strip_files(paths) -> list[Path]:
    """Strip notebooks in place; returns those that changed."""
    nbformat = _nbformat()
    changed = []
    for path in map(Path, paths):
        nb = nbformat.read(path, as_version=4)
        clean = stripped(nb)
        if clean != nb:
            nbformat.write(clean, path)
            changed.append(path)
    return changed


def _ids(paths):
    return [p.name for p in paths]


def test_notebooks_are_found():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path):
    nbformat = _nbformat()
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    if stripped(nb) == nb:
        return
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.outputs or cell.execution_count is not None)]
    what = (f"outputs or execution counts in cells {dirty}" if dirty
            else "run metadata or widget state")
    pytest.fail(f"{path.name} has {what}: notebooks are committed stripped (see "
                f"notebooks/README.md). Run:\n    {STRIP_COMMAND}", pytrace=False)


def test_strip_removes_outputs_counts_and_widget_state():
    _nbformat()
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    cell = new_code_cell("print(1)", execution_count=3,
                         outputs=[new_output("stream", name="stdout", text="1\n")])
    cell.metadata["execution"] = {"iopub.status.idle": "2024-01-01T00:00:00Z"}
    cell.metadata["tags"] = ["keep"]
    nb = new_notebook(cells=[new_markdown_cell("# title"), cell],
                      metadata={"widgets": {"state": {}},
                                "kernelspec": {"name": "python3", "display_name": "Python 3"}})
    clean = stripped(nb)
    assert clean.cells[1].outputs == [] and clean.cells[1].execution_count is None
    assert clean.cells[1].metadata == {"tags": ["keep"]}
    assert "widgets" not in clean.metadata and clean.metadata.kernelspec.name == "python3"
    assert nb.cells[1].outputs, "the original is left alone"
    assert stripped(clean) == clean


# -- execution -----------------------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = _nbformat()
    pytest.importorskip("ipykernel", reason="pip install -e '.[test]' (ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' (nbclient)")
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    original = path.read_bytes()
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, work,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    nb = nbformat.read(work / path.name, as_version=4)
    # The kernel inherits this environment.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("BOOSTSIM_NOTEBOOK_STATIC", "1")
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    started = time.perf_counter()
    try:
        client.execute()
    except CellTimeoutError as exc:
        pytest.fail(f"{path.name}: a cell ran longer than {CELL_TIMEOUT} s:\n{exc}",
                    pytrace=False)
    except CellExecutionError as exc:
        pytest.fail(f"{path.name}: a cell failed:\n{exc}", pytrace=False)
    except DeadKernelError as exc:
        pytest.fail(f"{path.name}: the kernel died: {exc}", pytrace=False)
    seconds = time.perf_counter() - started
    print(f"{path.name}: {seconds:.1f} s")
    warnings = [(i, out.text) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
                for out in cell.outputs
                if out.output_type == "stream" and out.name == "stderr"
                and ("Warning" in out.text or "Traceback" in out.text)]
    assert not warnings, f"{path.name}: warnings printed by cells: {warnings}"
    assert path.read_bytes() == original, "the committed notebook must not be touched"


# -- notebooks/_helpers.py -----------------------------------------------------------------

@pytest.fixture
def helpers(monkeypatch):
    spec = importlib.util.spec_from_file_location("_nb_helpers", NOTEBOOK_DIR / "_helpers.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look the module up
    spec.loader.exec_module(module)
    monkeypatch.delenv(module.STATIC_ENV, raising=False)
    return module


def _controls(helpers):
    return {"duty": helpers.Slider(0.5, 0.1, 0.9, 0.01, "duty D"),
            "R": helpers.Slider(48.0, 5.0, 2000.0, description="R", log=True)}


def test_sliders_fall_back_to_one_static_call_without_ipywidgets(helpers, monkeypatch,
                                                                  capsys):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
    monkeypatch.setattr(helpers, "_in_kernel", lambda: True)
    assert "ipywidgets is not installed" in helpers.static_reason()
    calls = []
    helpers.interact_or_static(lambda duty, R: calls.append((duty, R)), **_controls(helpers))
    assert calls == [(0.5, 48.0)]


def test_sliders_are_static_when_the_environment_says_so(helpers, monkeypatch):
    monkeypatch.setenv(helpers.STATIC_ENV, "1")
    monkeypatch.setattr(helpers, "_in_kernel", lambda: True)
    assert helpers.STATIC_ENV in helpers.static_reason()
    calls = []
    helpers.interact_or_static(lambda duty, R: calls.append((duty, R)), **_controls(helpers))
    assert calls == [(0.5, 48.0)]
    monkeypatch.setenv(helpers.STATIC_ENV, "0")
    assert helpers.static_reason() is None


def test_sliders_are_static_outside_a_kernel(helpers):
    assert "not running in a Jupyter kernel" in helpers.static_reason()


def test_sliders_redraw_when_moved(helpers, monkeypatch):
    pytest.importorskip("ipywidgets")
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    monkeypatch.setattr(helpers, "_in_kernel", lambda: True)
    calls = []
    helpers.interact_or_static(lambda duty, R: calls.append((duty, R)), **_controls(helpers))
    (panel,) = shown
    duty, R = panel.children[:2]
    assert (duty.min, duty.max, duty.step, duty.continuous_update) == (0.1, 0.9, 0.01, False)
    assert type(R).__name__ == "FloatLogSlider" and R.base == 10
    duty.value = 0.3
    assert calls[0] == (0.5, 48.0) and calls[-1] == (0.3, 48.0)


def test_slider_checks_its_range(helpers):
    with pytest.raises(ValueError, match="outside"):
        helpers.Slider(2.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="min > 0"):
        helpers.Slider(1.0, 0.0, 10.0, log=True)
    with pytest.raises(TypeError, match="Slider"):
        helpers.interact_or_static(lambda duty: None, duty=0.5)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Strip outputs, execution counts and widget "
                                     "state from notebooks, in place.")
    parser.add_argument("--strip", action="store_true", required=True,
                        help="strip the notebooks (required, to say what this does)")
    parser.add_argument("notebooks", nargs="*", type=Path, default=NOTEBOOKS,
                        help="notebooks to strip (default: every notebooks/*.ipynb)")
    args = parser.parse_args()
    for changed in strip_files(args.notebooks):
        print(f"stripped {changed}")
