"""Plots of evaluation results (matplotlib imported lazily, Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["save_pck_curve"]


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

    from semcorr.io import atomic_write_bytes

    figure = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    alphas = curve["alpha"]
    for key, style in (("per_image", "-o"), ("per_keypoint", "--s")):
        values = [float("nan") if v is None else 100 * v for v in curve.get(key, [])]
        if values:
            axes.plot(alphas, values, style, markersize=3, label=key.replace("_", " "))
    axes.set_xlabel("α (threshold / reference length)")
    axes.set_ylabel("PCK (%)")
    axes.set_ylim(0, 100)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
