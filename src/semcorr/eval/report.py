"""Markdown tables of evaluation results (per category, overall, geometry-aware subset)."""

from __future__ import annotations

from typing import Any

__all__ = ["format_pck", "markdown_table", "statistics_tables"]


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
        f"normalised by {results['protocol']['normalisation']}"
        + (f", protocol {results['protocol']['name']} ({results['protocol']['comparison']})"
           if "name" in results["protocol"] else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for name, table in results["per_category"].items():
        pairs = counts.get(name, {}).get("pairs", "")
        row = [name, str(pairs), *[format_pck(table[k][kind]) for k in keys]]
        lines.append("| " + " | ".join(row) + " |")
    total = counts.get("all", {}).get("pairs", results["pairs"])
    everything = results.get("pck_all_keypoints", results["pck"])
    for label, field in (
        ("**all** (per image)", "per_image"),
        ("**all** (per keypoint)", "per_keypoint"),
    ):
        row = [label, str(total), *[format_pck(everything[k][field]) for k in keys]]
        lines.append("| " + " | ".join(row) + " |")
    if "pck_all_keypoints" in results:
        row = [f"**headline** ({results['headline'].split(':')[0]}, per image)", "",
               *[format_pck(results["pck"][k]["per_image"]) for k in keys]]
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


def _spread(leaf: dict[str, Any], kind: str, keys: list[str]) -> list[str]:
    return [f"{100 * leaf[kind][k]['mean']:.1f} ± {100 * leaf[kind][k]['std']:.1f}"
            for k in keys]


def statistics_tables(statistics: dict[str, Any], keys: list[str]) -> str:
    """Markdown tables of PCK mean ± std (:class:`~semcorr.eval.pck.PCKStatistics`): one row
    per group (overall, each category, each difficulty level), per keypoint and per image."""
    header = ["group", "pairs", "keypoints",
              *[f"PCK@{k} per keypoint" for k in keys], *[f"PCK@{k} per image" for k in keys]]
    lines = ["### PCK mean ± std (%): per keypoint over keypoints, per image over pairs", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    groups: list[tuple[str, dict[str, Any]]] = []
    if statistics.get("overall"):
        groups.append(("**all**", statistics["overall"]))
    groups += [(name, leaf) for name, leaf in statistics.get("by_category", {}).items()]
    for field, levels in statistics.get("by_difficulty", {}).items():
        groups += [(f"{field} = {level}", leaf) for level, leaf in levels.items()]
    for name, leaf in groups:
        row = [name, str(leaf["pairs"]), str(leaf["keypoints"]),
               *_spread(leaf, "per_keypoint", keys), *_spread(leaf, "per_image", keys)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
