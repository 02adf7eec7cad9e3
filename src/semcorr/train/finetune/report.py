"""The cross-dataset report of a fine-tuning run: base and fine-tuned backbone on several
datasets, one table."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semcorr.features.base import Backbone, create_backbone
from semcorr.io import atomic_write_bytes, atomic_write_json
from semcorr.train.finetune.checkpoints import _read, load_finetuned


def cross_dataset_report(
    checkpoint: str | Path,
    datasets: Sequence[tuple[str, str, str]],
    out: str | Path,
    protocol: str = "foundation-finetune",
    thresholds: Sequence[float] | None = None,
    limit: int | None = None,
    include_base: bool = True,
    device: str | None = None,
    progress: bool = False,
) -> str:
    """Evaluate the base and the fine-tuned backbone on several datasets; one table.

    By default the table is the fine-tuning study's (:mod:`semcorr.eval.protocols`,
    ``foundation-finetune``): ``distance <= α · max side of the target box`` (of the image when
    there is no box), α 0.05–0.20, per keypoint (mean ± std over keypoints) and per image
    (mean ± std over images); the per-category and per-difficulty tables of every run follow.

    Args:
        checkpoint: ``best.pt`` of a run.
        datasets: ``(name, root, split)`` of each dataset (the training one first, by habit).
        out: folder of the per-run evaluation folders, ``report.md`` and ``report.json``.
        protocol: the PCK protocol; one with ``statistics`` gives mean ± std.
        thresholds: the α of the table (default: the protocol's).
        limit: first pairs of each dataset only.
        include_base: add a row for the base backbone (zero-shot).
        device: torch device.
        progress: show progress bars.

    Returns:
        The markdown report (also written to ``OUT/report.md``).
    """
    from semcorr.data import create_dataset
    from semcorr.devices import choose_device
    from semcorr.eval.benchmark import evaluate
    from semcorr.eval.pck import PCKStatistics
    from semcorr.eval.protocols import get_protocol
    from semcorr.eval.report import statistics_tables
    from semcorr.pipeline import Matcher

    out = Path(out)
    rule = get_protocol(protocol)
    alphas = list(rule.thresholds if thresholds is None else thresholds)
    keys = PCKStatistics(alphas).keys
    target = choose_device(device)
    tuned = load_finetuned(checkpoint, device=target)
    payload = _read(Path(checkpoint))
    base = payload["base"]
    models: list[tuple[str, Backbone, dict[str, Any]]] = []
    if include_base:  # the recorded identity keeps cached predictions of another model out
        models.append(("base", create_backbone(base["backbone"], weights=base["weights"],
                                               **base["options"]).to(target).eval(),
                       {"base": base}))
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:16]
    models.append(("finetuned", tuned, {"checkpoint": str(checkpoint), "sha256": digest}))
    table: dict[str, dict[str, dict[str, Any]]] = {}
    details: list[str] = []
    for label, backbone, identity in models:
        matcher = Matcher(backbone)
        for name, root, split in datasets:
            dataset = create_dataset(name, root, split=split)
            results = evaluate(matcher, dataset, out / label / f"{name}-{split}",
                               thresholds=alphas, limit=limit, progress=progress, plot=False,
                               extra_config={"model": label, **identity}, protocol=rule)
            column = f"{name} ({split})"
            table.setdefault(label, {})[column] = _report_cell(results, keys)
            if "statistics" in results:
                details += [f"## {label} on {column}", "",
                            statistics_tables(results["statistics"], keys), ""]
    reference = rule.reference_words("the dataset reference")
    lines = [
        f"PCK (%) under the {rule.name} protocol ({rule.comparison} alpha * {reference}), "
        f"trained on {payload['config']['dataset']} "
        f"with {base['backbone']} (last {base['layers']} blocks): per keypoint, then per image"
        + (" (mean ± std)" if rule.statistics else ""),
        "",
        "| model | dataset | " + " | ".join(f"PCK@{k} per keypoint" for k in keys) + " | "
        + " | ".join(f"PCK@{k} per image" for k in keys) + " |",
        "|---|---|" + "---:|" * (2 * len(keys)),
    ]
    for label, row in table.items():
        for column, cell in row.items():
            values = [_spread_text(cell, "per_keypoint", k) for k in keys]
            values += [_spread_text(cell, "per_image", k) for k in keys]
            lines.append(f"| {label} | {column} | " + " | ".join(values) + " |")
    text = "\n".join([*lines, "", *details]).rstrip() + "\n"
    atomic_write_bytes(out / "report.md", text.encode())
    atomic_write_json(out / "report.json", {"protocol": rule.name, "thresholds": keys,
                                            "table": table, "checkpoint": str(checkpoint)})
    return text


def _report_cell(results: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """One dataset's numbers: the statistics' overall leaf, or the plain PCK (no std)."""
    overall = (results.get("statistics") or {}).get("overall")
    if overall is not None:
        return overall
    return {
        "pairs": results["pairs"],
        **{kind: {k: {"mean": results["pck"][k][kind], "std": None} for k in keys}
           for kind in ("per_keypoint", "per_image")},
    }


def _spread_text(cell: dict[str, Any], kind: str, key: str) -> str:
    leaf = cell[kind][key]
    if leaf["std"] is None:
        return _percent(leaf["mean"])
    return f"{_percent(leaf['mean'])} ± {_percent(leaf['std'])}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"
