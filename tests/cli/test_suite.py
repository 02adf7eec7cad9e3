"""``semcorr eval --suite generalisation``: every benchmark with data runs, the others are skipped
with a line saying how to get them, one table (Markdown, CSV, plot) is written, and a killed run
resumes without redoing finished work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from semcorr.cli.main import main
from spair_u_fixture import build_spair_u


def _argv(out: Path, *more: str) -> list[str]:
    return ["eval", "--suite", "generalisation", "--out", str(out), "--quiet",
            "--backbone", "dense-sift", "--backbone-option", "image_size=64", *more]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_suite_writes_the_table_and_skips_absent_benchmarks(tmp_path: Path, capsys) -> None:
    root = build_spair_u(tmp_path / "data")
    out = tmp_path / "out"
    assert main(_argv(out, "--roots", f"spair={root}")) == 0
    printed = capsys.readouterr().out
    for name in ("mp100", "soco"):  # absent here: one line each saying how to get it
        line = next(x for x in printed.splitlines() if x.startswith(f"skipped {name}:"))
        assert f"semcorr data prepare {name}" in line or f"no '{name}' loader" in line
    results = json.loads((out / "spair-u" / "results.json").read_text())
    rows = {row["group"]: row for row in _csv(out / "suite.csv")}
    assert set(rows) == {"all", "keypoint_set=seen", "keypoint_set=unseen"}
    assert {g: r["headline"] for g, r in rows.items()} == {
        "all": "0", "keypoint_set=seen": "0", "keypoint_set=unseen": "1"}
    assert (rows["keypoint_set=unseen"]["pairs"], rows["keypoint_set=unseen"]["keypoints"]) == (
        "2", "5")
    assert (rows["all"]["pairs"], rows["all"]["keypoints"]) == ("3", "9")
    unseen = results["groups"]["keypoint_set"]["unseen"]
    for alpha in ("0.01", "0.05", "0.10", "0.15"):
        assert float(rows["keypoint_set=unseen"][f"per_image@{alpha}"]) == pytest.approx(
            unseen[alpha]["per_image"])
        assert float(rows["all"][f"per_keypoint@{alpha}"]) == pytest.approx(
            results["pck_all_keypoints"][alpha]["per_keypoint"])
    table = (out / "suite.md").read_text()
    assert "| spair-u | **keypoint_set=unseen** | 2 | 5 |" in table
    assert table in printed
    assert (out / "suite.png").stat().st_size > 1000


def test_data_dir_with_official_names(tmp_path: Path) -> None:
    build_spair_u(tmp_path / "data")
    assert main(_argv(tmp_path / "out", "--data-dir", str(tmp_path / "data"))) == 0
    assert json.loads((tmp_path / "out/spair-u/results.json").read_text())["pairs"] == 3


def test_killed_suite_resumes(tmp_path: Path, monkeypatch, capsys) -> None:
    """Killed during the second pair: the rerun predicts only the pairs left and gives the
    numbers of an uninterrupted run; a finished suite is not run again."""
    import semcorr.eval.benchmark as benchmark

    root = build_spair_u(tmp_path / "data")
    whole = tmp_path / "whole"
    assert main(_argv(whole, "--roots", f"spair={root}")) == 0
    expected = json.loads((whole / "spair-u/results.json").read_text())

    real, calls = benchmark._predict, []

    def dies_on_the_second_pair(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill: nothing after the first pair is written
        return real(*args, **kwargs)

    out = tmp_path / "out"
    monkeypatch.setattr(benchmark, "_predict", dies_on_the_second_pair)
    assert main(_argv(out, "--roots", f"spair={root}")) == 130  # "semcorr: interrupted"
    monkeypatch.setattr(benchmark, "_predict", real)
    assert not (out / "spair-u/results.json").exists() and not (out / "suite.md").exists()
    assert len((out / "spair-u/predictions.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    assert main(_argv(out, "--roots", f"spair={root}")) == 0
    assert "spair-u: evaluating 3 pairs" in capsys.readouterr().out
    resumed = json.loads((out / "spair-u/results.json").read_text())
    assert resumed["timing"]["predicted_this_run"] == 2
    assert resumed["groups"] == expected["groups"] and resumed["pck"] == expected["pck"]
    stamp = (out / "spair-u/results.json").stat().st_mtime_ns
    assert main(_argv(out, "--roots", f"spair={root}")) == 0
    assert "spair-u: finished earlier" in capsys.readouterr().out
    assert (out / "spair-u/results.json").stat().st_mtime_ns == stamp


def test_other_settings_are_refused_then_overwritten(tmp_path: Path, capsys) -> None:
    root = build_spair_u(tmp_path / "data")
    out = tmp_path / "out"
    assert main(_argv(out, "--roots", f"spair={root}", "--limit", "1")) == 0
    assert main(_argv(out, "--roots", f"spair={root}")) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(_argv(out, "--roots", f"spair={root}", "--overwrite")) == 0
    assert json.loads((out / "spair-u/results.json").read_text())["pairs"] == 3


def test_bad_suite_command_lines(tmp_path: Path, capsys) -> None:
    root = build_spair_u(tmp_path / "data")
    assert main(_argv(tmp_path / "a", "--dataset", "spair-u", "--root", str(root))) == 2
    assert "drop --dataset, --root" in capsys.readouterr().err
    assert main(_argv(tmp_path / "b", "--roots", f"pascal={root}")) == 2
    assert "unknown benchmark 'pascal'" in capsys.readouterr().err
    assert main(_argv(tmp_path / "c", "--data-dir", str(tmp_path / "empty"))) == 2
    err = capsys.readouterr()
    assert "no benchmark data present" in err.err
    assert "semcorr data prepare spair-u" in err.out
