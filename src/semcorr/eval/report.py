"""Markdown tables of evaluation results (per category, overall, geometry-aware subset)."""

from __future__ import annotations

from typing import Any

__all__ = ["format_pck", "markdown_table"]


def format_pck(value: float | None) -> str:
    """A PCK fraction as a percentage with one decimal (``-`` when undefined)."""
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_table(results: dict[str, Any], kind: str = "per_image") -> str:
    """One Markdown table: a row per category, then ``all`` and ``geo-aware`` rows.

    Args:
        results: a ``results.json`` dict from :func:`semcorr.eval.benchmark.evaluate`.
        kind: ``per_image`` or ``per_keypoint`` for the category rows; the ``all`` row gives
            both.

    Returns:
        Markdown text (title line, table), PCK in percent.
    """
    keys = list(results["thresholds"])
    counts = results.get("counts", {})
    header = ["category", "pairs", *[f"PCK@{k}" for k in keys]]
    lines = [
        f"**{results['dataset']}** ({results['split']}): {results['pairs']} pairs, "
        f"{results['skipped']} skipped; PCK {kind.replace('_', ' ')} in %, "
        f"normalised by {results['protocol']['normalisation']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for name, table in results["per_category"].items():
        pairs = counts.get(name, {}).get("pairs", "")
        row = [name, str(pairs), *[format_pck(table[k][kind]) for k in keys]]
        lines.append("| " + " | ".join(row) + " |")
    total = counts.get("all", {}).get("pairs", results["pairs"])
    for label, field in (
        ("**all** (per image)", "per_image"),
        ("**all** (per keypoint)", "per_keypoint"),
    ):
        row = [label, str(total), *[format_pck(results["pck"][k][field]) for k in keys]]
        lines.append("| " + " | ".join(row) + " |")
    geo = results.get("geo_aware", {})
    if geo.get("keypoints"):
        row = [
            "**geo-aware** (per keypoint)",
            str(geo["pairs"]),
            *[format_pck(geo["pck"][k]["per_keypoint"]) for k in keys],
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
