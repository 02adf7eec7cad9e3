"""Plots of evaluation results (matplotlib imported lazily, Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["save_pck_curve", "save_pck_lines"]


def save_pck_curve(path: str | Path, curve: dict[str, Any], title: str = "") -> Path:
    """Save a PCK-vs-α plot.

    Args:
        path: the PNG to write.
        curve: ``{"alpha": [...], "per_image": [...], "per_keypoint": [...]}`` with PCK as
            fractions (``None`` = undefined), as in ``results.json``.
        title: plot title.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    alphas = curve["alpha"]
    for key, style in (("per_image", "-o"), ("per_keypoint", "--s")):
        values = [float("nan") if v is None else 100 * v for v in curve.get(key, [])]
        if values:
            axes.plot(alphas, values, style, markersize=3, label=key.replace("_", " "))
    return _finish(figure, axes, path, title)


def _finish(figure: Any, axes: Any, path: str | Path, title: str,
            legend: str = "lower right") -> Path:
    """Label the PCK-vs-α axes and write the figure as a PNG (atomically)."""
    import io

    from semcorr.io import atomic_write_bytes

    axes.set_xlabel("α (threshold / reference length)")
    axes.set_ylabel("PCK (%)")
    axes.set_ylim(0, 100)
    axes.grid(True, alpha=0.3)
    axes.legend(loc=legend, fontsize="small")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_pck_lines(path: str | Path, alphas: list[float],
                   series: dict[str, list[float | None]], title: str = "") -> Path:
    """Save PCK against α, one line per named series (e.g. a benchmark's keypoint group).

    Args:
        path: the PNG to write.
        alphas: the T thresholds.
        series: ``{label: T PCK fractions}`` (``None`` = undefined).
        title: plot title.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for label, values in series.items():
        axes.plot(alphas, [float("nan") if v is None else 100 * v for v in values], "-o",
                  markersize=3, label=label)
    return _finish(figure, axes, path, title, legend="upper left")
