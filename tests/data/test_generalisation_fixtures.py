"""``semcorr eval --suite generalisation`` over the MP-100 and SOCO fixtures in their official
folder names: both run, and the table carries their groups with the PCK computed by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_mp100 import write_mp100
from test_soco import write_soco

from semcorr.cli.main import main


@pytest.mark.slow  # 24 s at load 12 on the shared 2 cores (the group numbers are also
# checked by the fast tests in test_mp100.py and test_soco.py through evaluate)
def test_suite_reports_mp100_and_soco_groups(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    mp100 = write_mp100(data / "mp100")
    pairs = [{"src_file": "zebra_body/000.jpg", "trg_file": "zebra_body/001.jpg",
              "category_id": 2},  # points 2, 3 are 20 px apart: 2 of 4 right
             {"src_file": "zebra_body/002.jpg", "trg_file": "zebra_body/002.jpg",
              "category_id": 2}]  # the same object: 4 of 4
    (mp100 / "pairs").mkdir()
    (mp100 / "pairs/pairs_animal_body_unseen.json").write_text(json.dumps(pairs))
    write_soco(data / "SOCO")
    out = tmp_path / "out"
    argv = ["eval", "--suite", "generalisation", "--out", str(out), "--quiet", "--data-dir",
            str(data), "--backbone", "dense-sift", "--backbone-option", "image_size=128"]
    assert main(argv) == 0
    assert any(line.startswith("skipped spair-u:") for line in capsys.readouterr().out.split("\n"))
    with (out / "suite.csv").open(newline="") as handle:
        rows = {(r["benchmark"], r["group"]): r for r in csv.DictReader(handle)}
    expected = {("mp100", "all"): (2, 0.75), ("mp100", "category_split=unseen"): (2, 0.75),
                # SOCO under its default protocol: per pair group (car, cross:car), then the
                # mean over groups; the cross pair's rows: 2/4 SOC, 2/2 CC
                ("soco", "all"): (3, (1 + 4 / 6) / 2),
                ("soco", "correspondence_type=SOC"): (2, 1.0),
                ("soco", "correspondence_type=Cross-SOC"): (1, 0.5),
                ("soco", "correspondence_type=CC"): (2, 1.0),
                ("soco", "correspondence_type=Cross-CC"): (1, 1.0),
                ("soco", "keypoint_kind=structural"): (3, 1.0),
                ("soco", "keypoint_kind=functional"): (3, (1 + 0) / 2)}
    assert set(rows) == set(expected)
    for key, (pairs_count, pck) in expected.items():
        assert int(rows[key]["pairs"]) == pairs_count
        for alpha in ("0.05", "0.10", "0.15"):
            assert float(rows[key][f"per_image@{alpha}"]) == pytest.approx(pck), (key, alpha)
