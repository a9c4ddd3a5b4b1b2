"""Display helpers for the boostsim notebooks: sliders that degrade to a static plot, and
figures built without pyplot.

``interact_or_static(draw, duty=Slider(0.6, 0.05, 0.9), ...)`` shows ipywidgets sliders that
call ``draw(duty=..., ...)`` again when a slider is released. It draws once with the default
values instead, under a short note saying why, when:

* ipywidgets is not installed (``pip install "boostsim[notebooks]"`` brings it),
* the code does not run in a Jupyter kernel (e.g. a notebook exported to a script),
* the environment variable ``BOOSTSIM_NOTEBOOK_STATIC`` is set to 1 / true / yes (headless
  runs: ``tests/test_notebooks.py`` sets it, so CI records a plain figure, not a widget).

``show(fig)`` displays a figure from :mod:`boostsim.plots` (built without pyplot) the way
``plt.show()`` displays pyplot's: inline in Jupyter, as text under a non-interactive backend
such as Agg (headless runs).

The notebooks import this module from their own folder (Jupyter starts kernels there).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

__all__ = ["STATIC_ENV", "Slider", "interact_or_static", "show", "static_reason"]

#: Set this environment variable to 1 to draw static figures instead of sliders.
STATIC_ENV = "BOOSTSIM_NOTEBOOK_STATIC"


@dataclasses.dataclass(frozen=True)
class Slider:
    """A float slider: default ``value``, range ``min`` .. ``max``, ``step`` (linear sliders;
    default 1/100 of the range), ``log`` for a logarithmic slider (``min`` > 0)."""

    value: float
    min: float
    max: float
    step: float | None = None
    description: str = ""
    log: bool = False
    fmt: str = ".3g"

    def __post_init__(self) -> None:
        if not self.min <= self.value <= self.max:
            raise ValueError(f"slider {self.description or ''}: value {self.value} is outside "
                             f"{self.min} .. {self.max}")
        if self.log and self.min <= 0:
            raise ValueError(f"slider {self.description or ''}: a log slider needs min > 0")

    def widget(self, name: str):
        """The ipywidgets slider (ipywidgets must be importable)."""
        import ipywidgets as w

        style = {"description_width": "initial"}
        layout = w.Layout(width="420px")
        label = self.description or name
        if self.log:
            lo, hi = math.log10(self.min), math.log10(self.max)
            return w.FloatLogSlider(value=self.value, base=10, min=lo, max=hi,
                                    step=self.step or (hi - lo) / 100, description=label,
                                    readout_format=self.fmt, continuous_update=False,
                                    style=style, layout=layout)
        return w.FloatSlider(value=self.value, min=self.min, max=self.max,
                             step=self.step or (self.max - self.min) / 100, description=label,
                             readout_format=self.fmt, continuous_update=False, style=style,
                             layout=layout)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def static_reason() -> str | None:
    """Why sliders cannot be shown here (None when they can)."""
    if os.environ.get(STATIC_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return (f"static run ({STATIC_ENV} is set, e.g. headless execution in CI): the figure "
                f"shows the default values")
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return ('ipywidgets is not installed: the figure shows the default values; '
                '`pip install "boostsim[notebooks]"` and restart the kernel for sliders')
    if not _in_kernel():
        return "not running in a Jupyter kernel: the figure shows the default values"
    return None


def _note(text: str) -> None:
    if not _in_kernel():
        print(f"Note: {text}.")
        return
    from IPython.display import Markdown, display

    display(Markdown(f"*Note: {text}.*"))


def interact_or_static(draw: Callable[..., Any], **controls: Slider) -> None:
    """Display sliders that call ``draw(**values)`` when released, or call ``draw`` once with
    the default values under a note saying why (see the module docstring)."""
    for name, control in controls.items():
        if not isinstance(control, Slider):
            raise TypeError(f"{name}: expected a Slider, got {type(control).__name__}")
    reason = static_reason()
    if reason is not None:
        _note(reason)
        draw(**{name: control.value for name, control in controls.items()})
        return
    import ipywidgets
    from IPython.display import display

    display(ipywidgets.interactive(draw, **{name: control.widget(name)
                                            for name, control in controls.items()}))

def show(fig) -> None:
    """Display ``fig`` (a ``matplotlib.figure.Figure``, e.g. from :mod:`boostsim.plots`).

    pyplot loads its backend only when it first makes a figure, and only then does
    Jupyter's inline backend register how figures are displayed; a figure built without
    pyplot before that shows as text. Opening and closing an empty pyplot figure loads the
    backend first.
    """
    import matplotlib.pyplot as plt

    plt.close(plt.figure())
    try:
        from IPython.display import display
    except ImportError:
        return
    display(fig)
