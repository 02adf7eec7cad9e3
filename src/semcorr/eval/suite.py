"""Benchmark suites: ``semcorr eval --suite generalisation`` runs every benchmark of the suite
whose data is present and writes one table.

The generalisation suite (issue 23: SPair-U, MP-100, SOCO) measures how a matcher does beyond
the keypoints and categories supervised heads are trained on. Each benchmark is a dataset looked
up in the registry by name (``spair-u``, ``mp100``, ``soco``): one whose loader is not registered
or whose folder is absent is skipped with a line saying how to get it. Each runs through
:func:`~semcorr.eval.benchmark.evaluate` into ``OUT/<benchmark>/`` (its predictions resume after
a kill, its ``results.json`` is written atomically at the end); a benchmark whose
``results.json`` exists is finished and not run again. ``OUT/suite.json`` records the settings; a
rerun with other settings is refused unless ``overwrite``. The table (``OUT/suite.md``,
``OUT/suite.csv``) has a row per benchmark and keypoint group (:mod:`semcorr.eval.groups`), PCK
per image and per keypoint at α 0.01, 0.05, 0.10 and 0.15; ``OUT/suite.png`` plots per-image PCK
against α, a line per row.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semcorr.errors import InputError, UnknownNameError
from semcorr.eval.pck import format_threshold
from semcorr.eval.protocols import DEFAULT_PROTOCOLS, GENERALISATION_THRESHOLDS
from semcorr.io import atomic_write_bytes, atomic_write_json

__all__ = ["SUITES", "SuiteBenchmark", "list_suites", "locate", "run_suite", "suite_rows",
           "write_suite_table"]

SUITE_CONFIG = "suite.json"


@dataclass(frozen=True)
class SuiteBenchmark:
    """One benchmark of a suite.

    Attributes:
        name: the benchmark's name (its output folder, its row in the table).
        dataset: registry name of its loader.
        root_keys: names accepted in ``--roots KEY=DIR``.
        folders: official folder names looked for in ``--data-dir``.
        prepare: ``semcorr data prepare`` name that fetches or verifies it.
        split: the evaluated split.
        options: loader options.
        published: where the published rows are (for the README).
    """

    name: str
    dataset: str
    root_keys: tuple[str, ...]
    folders: tuple[str, ...]
    prepare: str
    split: str = "test"
    options: Mapping[str, Any] = field(default_factory=dict)
    published: str = ""


SUITES: dict[str, tuple[SuiteBenchmark, ...]] = {
    "generalisation": (
        SuiteBenchmark("spair-u", "spair-u", ("spair", "spair-u"), ("SPair-71k",), "spair-u",
                       published="Jamais Vu (Mariotti et al., NeurIPS 2025); MARCO"),
        SuiteBenchmark("mp100", "mp100", ("mp100", "mp-100"), ("mp100", "mp100_all", "MP-100"),
                       "mp100", published="MARCO (unseen categories)"),
        SuiteBenchmark("soco", "soco", ("soco",), ("SOCO", "soco"), "soco",
                       published="SOCO (Dünkel et al., 2026)"),
    ),
}


def list_suites() -> list[str]:
    """Suite names, sorted."""
    return sorted(SUITES)


def locate(benchmark: SuiteBenchmark, roots: Mapping[str, str], data_dir: str | None
           ) -> Path | None:
    """The folder of ``benchmark``: given in ``roots`` under one of its keys, else its official
    folder name inside ``data_dir``; ``None`` when there is none."""
    given = {_key(k): v for k, v in roots.items()}
    for key in benchmark.root_keys:
        if _key(key) in given:
            return Path(given[_key(key)])
    if data_dir is not None:
        for name in benchmark.folders:
            if (Path(data_dir) / name).is_dir():
                return Path(data_dir) / name
    return None


def _key(name: str) -> str:
    """A ``--roots`` key compared loosely (``spair-u`` = ``spair_u``)."""
    return name.replace("-", "_").lower()


def _how_to_get(benchmark: SuiteBenchmark, where: str) -> str:
    return (f"skipped {benchmark.name}: {where}; get it with 'semcorr data prepare "
            f"{benchmark.prepare} --root DIR', then pass --roots {benchmark.root_keys[0]}=DIR "
            f"(or --data-dir holding {benchmark.folders[0]}/)")


def _check_suite_config(out: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix settings in one output folder (``overwrite`` starts it afresh)."""
    path = out / SUITE_CONFIG
    if overwrite and out.is_dir():
        for child in out.iterdir():
            if child.is_dir() and (child / "predictions.jsonl").exists():
                shutil.rmtree(child)
    elif path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != json.loads(json.dumps(config, default=str)):
            raise InputError(f"{path}: {out} holds a suite run with other settings; use "
                             "another --out folder or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, json.loads(json.dumps(config, default=str)))


def run_suite(
    suite: str,
    make_matcher: Callable[[], Any],
    out: str | Path,
    roots: Mapping[str, str] | None = None,
    data_dir: str | None = None,
    settings: Mapping[str, Any] | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) every benchmark of ``suite`` whose data is present, then write the table.

    Args:
        suite: a key of :data:`SUITES`.
        make_matcher: builds the matcher (called once, only when a benchmark must run).
        out: output folder: ``suite.json``, ``suite.md``, ``suite.csv``, ``suite.png`` and a
            folder per benchmark.
        roots: ``{key: folder}`` (see :attr:`SuiteBenchmark.root_keys`).
        data_dir: a folder holding the benchmarks under their official names.
        settings: the run's settings, recorded in ``suite.json`` (a rerun must match them).
        limit: first ``limit`` pairs of each benchmark.
        overwrite: discard earlier results in ``out``.
        progress: progress bars.
        log: receives one line per benchmark (run, resumed, finished earlier, skipped).

    Returns:
        ``{"suite", "results": {benchmark: results.json}, "skipped": {benchmark: line},
        "rows": the table rows}``.

    Raises:
        InputError: unknown suite, settings that differ from the folder's, or no benchmark
            present at all.
    """
    from semcorr.data import create_dataset, list_datasets
    from semcorr.eval.benchmark import RESULTS, evaluate

    if suite not in SUITES:
        raise UnknownNameError(f"unknown suite {suite!r} (known: {', '.join(list_suites())})")
    roots = dict(roots or {})
    known = {_key(key) for b in SUITES[suite] for key in b.root_keys}
    unknown = sorted(k for k in roots if _key(k) not in known)
    if unknown:
        raise InputError(f"--roots: unknown benchmark {unknown[0]!r} (known: "
                         f"{', '.join(sorted(known))})")
    out = Path(out)
    _check_suite_config(out, {"suite": suite, "limit": limit, **(settings or {})}, overwrite)
    matcher = None
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for benchmark in SUITES[suite]:
        folder = out / benchmark.name
        if (folder / RESULTS).is_file():
            results[benchmark.name] = json.loads((folder / RESULTS).read_text())
            log(f"{benchmark.name}: finished earlier ({folder / RESULTS})")
            continue
        if benchmark.dataset not in list_datasets():
            skipped[benchmark.name] = (f"skipped {benchmark.name}: no '{benchmark.dataset}' "
                                       "loader in this semcorr")
            log(skipped[benchmark.name])
            continue
        root = locate(benchmark, roots, data_dir)
        if root is None or not root.is_dir():
            where = "no folder given" if root is None else f"{root} is absent"
            skipped[benchmark.name] = _how_to_get(benchmark, where)
            log(skipped[benchmark.name])
            continue
        try:
            dataset = create_dataset(benchmark.dataset, root, split=benchmark.split,
                                     **dict(benchmark.options))
        except InputError as exc:
            skipped[benchmark.name] = _how_to_get(benchmark, str(exc))
            log(skipped[benchmark.name])
            continue
        matcher = matcher or make_matcher()
        log(f"{benchmark.name}: evaluating {len(dataset)} pairs from {root}"
            + (" (resuming)" if (folder / "predictions.jsonl").is_file() else ""))
        results[benchmark.name] = evaluate(
            matcher, dataset, folder, thresholds=GENERALISATION_THRESHOLDS, limit=limit,
            progress=progress, protocol=DEFAULT_PROTOCOLS.get(benchmark.dataset,
                                                              "generalisation"),
            extra_config={"suite": suite, "benchmark": benchmark.name})
    if not results:
        raise InputError(f"suite {suite}: no benchmark data present (see the lines above)")
    rows = suite_rows(results)
    write_suite_table(out, rows, suite)
    return {"suite": suite, "results": results, "skipped": skipped, "rows": rows}


def _leaf(table: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    return {k: {"per_image": table[k]["per_image"], "per_keypoint": table[k]["per_keypoint"]}
            for k in keys}


def suite_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per benchmark (all visible keypoints) and per keypoint group: ``benchmark``,
    ``group`` (``all`` or ``breakdown=label``), ``headline`` (bool), ``pairs``, ``keypoints``
    and ``pck`` ``{threshold: {"per_image", "per_keypoint"}}``."""
    keys = [format_threshold(a) for a in GENERALISATION_THRESHOLDS]
    rows = []
    for name, result in results.items():
        everything = result.get("pck_all_keypoints", result["pck"])
        counts = result.get("counts", {}).get("all", {})
        headline = result.get("headline", "all visible keypoints").split(":")[0]
        rows.append({"benchmark": name, "group": "all", "headline": "pck_all_keypoints" not in
                     result, "pairs": result["pairs"], "keypoints": counts.get("keypoints"),
                     "pck": _leaf(everything, keys)})
        for breakdown, labels in result.get("groups", {}).items():
            for label, leaf in labels.items():
                group = f"{breakdown}={label}"
                rows.append({"benchmark": name, "group": group, "headline": group == headline,
                             "pairs": leaf["pairs"], "keypoints": leaf["keypoints"],
                             "pck": _leaf(leaf, keys)})
    return rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def write_suite_table(out: Path, rows: list[dict[str, Any]], suite: str) -> None:
    """``suite.md`` (cells ``per image / per keypoint`` in %, the headline row in bold),
    ``suite.csv`` (one column per threshold and kind, fractions) and ``suite.png``."""
    from semcorr.viz.plots import save_pck_lines

    keys = [format_threshold(a) for a in GENERALISATION_THRESHOLDS]
    lines = [f"**{suite}** suite: PCK in %, per image / per keypoint; the headline row of each "
             "benchmark in bold", "",
             "| benchmark | group | pairs | keypoints | " + " | ".join(
                 f"PCK@{k}" for k in keys) + " |",
             "|---|---|---:|---:|" + "---:|" * len(keys)]
    for row in rows:
        group = f"**{row['group']}**" if row["headline"] else row["group"]
        cells = [f"{_percent(row['pck'][k]['per_image'])} / "
                 f"{_percent(row['pck'][k]['per_keypoint'])}" for k in keys]
        lines.append(f"| {row['benchmark']} | {group} | {row['pairs']} | {row['keypoints']} | "
                     + " | ".join(cells) + " |")
    atomic_write_bytes(out / "suite.md", ("\n".join(lines) + "\n").encode("utf-8"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["benchmark", "group", "headline", "pairs", "keypoints",
                     *[f"per_image@{k}" for k in keys], *[f"per_keypoint@{k}" for k in keys]])
    for row in rows:
        writer.writerow([row["benchmark"], row["group"], int(row["headline"]), row["pairs"],
                         row["keypoints"],
                         *[row["pck"][k]["per_image"] for k in keys],
                         *[row["pck"][k]["per_keypoint"] for k in keys]])
    atomic_write_bytes(out / "suite.csv", buffer.getvalue().encode("utf-8"))
    save_pck_lines(out / "suite.png", list(GENERALISATION_THRESHOLDS),
                   {f"{r['benchmark']} {r['group']}": [r["pck"][k]["per_image"] for k in keys]
                    for r in rows}, title=f"{suite} suite (per image)")
