"""A damaged ``predictions.jsonl`` (issue 19, item 8): a line that is valid JSON but not a
scorable record is refused, naming the file and the line, by every reader (metrics, resume,
examples); a torn last line (a killed run) is still dropped quietly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from semcorr.cli.main import main
from semcorr.errors import InputError
from semcorr.eval.metrics import compute_metrics, read_predictions, record_problem

GOOD = {"pair_id": "a", "category": "c", "pred": [[1.0, 2.0]], "gt": [[1.5, 2.0]],
        "reference": 10.0, "geo_aware": [False], "keypoint_ids": [4]}
PER_KEYPOINT = "'pred', 'gt' and 'geo_aware' must hold one entry per keypoint"


@pytest.mark.parametrize(("line", "problem"), [
    ('{"pair": 3}', "'pair_id' must be a string"),
    ("[1, 2]", "not a JSON object"),
    ('{"pair_id": 5}', "'pair_id' must be a string"),
    ('{"pair_id": "b", "skipped": 1}', "'skipped' must be a string"),
    (json.dumps({**GOOD, "pred": "x"}), "'pred' must be a list of [x, y] numbers"),
    (json.dumps({**GOOD, "gt": [[1, 2, 3]]}), "'gt' must be a list of [x, y] numbers"),
    (json.dumps({**GOOD, "pred": [[float("nan"), 1.0]]}), "'pred' holds a number that is not"),
    (json.dumps({**GOOD, "gt": [[1.0, float("inf")]]}), "'gt' holds a number that is not"),
    (json.dumps({**GOOD, "pred": [[1, 2], [3, 4]]}), PER_KEYPOINT),
    (json.dumps({**GOOD, "geo_aware": [1]}), PER_KEYPOINT),
    (json.dumps({**GOOD, "reference": float("nan")}), "'reference' must be a positive finite"),
    (json.dumps({**GOOD, "reference": 0}), "'reference' must be a positive finite"),
    (json.dumps({**GOOD, "reference": "3"}), "'reference' must be a positive finite"),
    (json.dumps({**GOOD, "category": None}), "'category' must be a string"),
    (json.dumps({**GOOD, "keypoint_ids": ["x"]}), "'keypoint_ids' must hold one integer"),
    (json.dumps({**GOOD, "extra": []}), "'extra' must be an object"),
    ("{not json", "not valid JSON"),
])
def test_malformed_line_named_with_file_and_line(tmp_path: Path, line: str,
                                                 problem: str) -> None:
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(InputError) as caught:
        list(read_predictions(path))
    assert str(caught.value).startswith(f"{path}:2: {problem}")
    with pytest.raises(InputError, match=":2: "):
        compute_metrics(path, None)


def test_sound_records_and_torn_last_line(tmp_path: Path) -> None:
    assert record_problem(GOOD) is None
    assert record_problem({"pair_id": "b", "skipped": "why"}) is None
    assert record_problem({**GOOD, "pred": [], "gt": [], "geo_aware": [],
                           "keypoint_ids": []}) is None
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"pair_id": "tor')  # a killed run's last write
    assert [r["pair_id"] for r in read_predictions(path)] == ["a"]
    metrics = compute_metrics(path, None, [0.1])
    assert metrics["pairs"] == 1 and metrics["pck"]["0.10"]["per_image"] == 1.0


@pytest.mark.parametrize("line", ['{"pair": 3}', '{"pair_id": "z", "category": "c", '
                                  '"pred": [[NaN, 1]], "gt": [[1, 1]], "reference": 3, '
                                  '"geo_aware": [false]}'])
def test_eval_resume_refuses_a_damaged_file(pf_willow_root: Path, tmp_path: Path, line: str,
                                            capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "willow"
    shutil.copytree(pf_willow_root / "car(G)", root / "car(G)")
    out = tmp_path / "out"
    argv = ["eval", "--dataset", "pf-willow", "--root", str(root), "--out", str(out), "--quiet",
            "--limit", "2", "--backbone-option", "image_size=64"]
    assert main(argv) == 0
    capsys.readouterr()
    predictions = out / "predictions.jsonl"
    with predictions.open("a") as handle:
        handle.write(line + "\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"semcorr: error: {predictions}:3: "), err
    assert main([*argv, "--overwrite"]) == 0  # the way out the message names
