"""Galleries and breakdowns of `semcorr eval` on the real PF-WILLOW with the default backbone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semcorr import Matcher, create_backbone
from semcorr.cli.main import main
from semcorr.data import create_dataset
from semcorr.eval.benchmark import evaluate, read_predictions
from semcorr.viz.gallery import CORRECT, WRONG, example_picture, rank_pairs


def _shared(*parts: str) -> Path:
    """A path under ../shared/data (conftest's rule), or skip when it is absent."""
    path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / Path(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not beside the repository)")
    return path


@pytest.fixture(scope="module")
def willow_eval(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = _shared("pf-willow")
    backbone = create_backbone("dense-sift", image_size=128, stride=4, bin_sizes=(4, 8, 16))
    out = tmp_path_factory.mktemp("willow-eval")
    dataset = create_dataset("pf-willow", root, category="car(G)")
    results = evaluate(Matcher(backbone, refine="window", window=3), dataset, out, limit=8,
                       progress=False, plot=False, save_examples=3)
    return results, out


def test_gallery_files_and_order(willow_eval: tuple[dict, Path]) -> None:
    results, out = willow_eval
    examples = results["examples"]
    assert len(examples["best"]) == 3 and len(examples["worst"]) == 3
    best = [e["pck"] for e in examples["best"]]
    worst = [e["pck"] for e in examples["worst"]]
    assert best == sorted(best, reverse=True) and worst == sorted(worst)
    assert min(best) >= max(worst)
    assert {e["pair_id"] for e in examples["best"]}.isdisjoint(
        e["pair_id"] for e in examples["worst"])
    index = (out / "examples" / "index.html").read_text()
    links = re.findall(r"src='([^']+)'", index)
    assert len(links) == 6 and all((out / "examples" / name).is_file() for name in links)
    assert "http" not in index  # opens offline: relative links only
    with Image.open(out / "examples" / links[0]) as picture:
        assert picture.format == "JPEG" and picture.height > 300
    saved = json.loads((out / "results.json").read_text())
    assert saved["examples"]["best"][0]["file"] == links[0]


def test_picture_colours_follow_correctness(willow_eval: tuple[dict, Path]) -> None:
    _, out = willow_eval
    records = list(read_predictions(out / "predictions.jsonl"))
    best, worst = rank_pairs(records, 0.1, 1)
    by_id = {r["pair_id"]: r for r in records}
    for pair_id, colour, other in ((best[0], CORRECT, WRONG), (worst[0], WRONG, CORRECT)):
        pixels = np.asarray(example_picture(by_id[pair_id], 0.1)).reshape(-1, 3)
        count = {c: int((np.abs(pixels - np.array(c)).sum(1) < 30).sum()) for c in (colour,
                                                                                      other)}
        assert count[colour] > 0
        record = by_id[pair_id]
        from semcorr.viz.gallery import pair_pck

        pck, _ = pair_pck(record, 0.1)
        if pck in (0.0, 1.0):  # all dots of one colour
            assert count[other] == 0


def test_breakdowns_in_results(willow_eval: tuple[dict, Path]) -> None:
    results, out = willow_eval
    b = results["breakdowns"]
    assert b["by_category"]["car(G)"]["n"] == 8
    mean = b["by_category"]["car(G)"]["0.10"]["mean"]
    assert mean == pytest.approx(results["per_category"]["car(G)"]["0.10"]["per_image"])
    assert 0 <= b["by_category"]["car(G)"]["0.10"]["std"] <= 0.5
    assert set(b["by_keypoint"]) == {str(k) for k in range(10)}
    pooled = sum(v["0.10"]["mean"] * v["n"] for v in b["by_keypoint"].values()) / sum(
        v["n"] for v in b["by_keypoint"].values())
    assert pooled == pytest.approx(results["pck"]["0.10"]["per_keypoint"])
    assert "by category (mean ± std over pairs)" in (out / "results.md").read_text()


def test_eval_cli_save_examples(pf_willow_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["eval", "--dataset", "pf-willow", "--root", str(pf_willow_root),
                 "--category", "duck(S)", "--limit", "2", "--out", str(out), "--quiet",
                 "--save-examples", "1", "--thresholds", "0.1"])
    assert code == 0
    assert "examples/index.html" in capsys.readouterr().out
    assert len(list((out / "examples").glob("*.jpg"))) == 2
    assert main(["eval", "--dataset", "pf-willow", "--root", str(pf_willow_root),
                 "--save-examples", "1", "--examples-alpha", "2", "--out", str(out)]) == 2
