"""`semcorr data prepare ap10k --split-files DIR`: the released pairs, not new samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_prepare import _ap10k_original, _listing

from semcorr.cli.main import main
from semcorr.data import create_dataset
from semcorr.data.prepare import prepare
from semcorr.errors import InputError


def _released(tmp_path: Path) -> Path:
    """A 'released' PairAnnotation folder: a benchmark built with seed 7, its paths written
    the way the released notebook writes them (data/ap-10k/ImageAnnotation/...)."""
    built = tmp_path / "built"
    _ap10k_original(built)
    prepare("ap10k", built, progress=False, seed=7)
    released = tmp_path / "released" / "PairAnnotation"
    for file in (built / "PairAnnotation").glob("*/*.json"):
        pair = json.loads(file.read_text())
        out = released / file.parent.name / file.name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({k: f"data/ap-10k/{v}" for k, v in pair.items()}))
    return tmp_path / "released"


def test_split_files_give_exactly_the_released_pairs(tmp_path: Path) -> None:
    released = _released(tmp_path)
    root = tmp_path / "root"
    _ap10k_original(root)
    code = main(["data", "prepare", "ap10k", "--root", str(root), "--seed", "8", "--quiet",
                 "--split-files", str(released)])
    assert code == 0
    assert _listing(root) == _listing(tmp_path / "built")  # seed 8 played no part
    sampled = tmp_path / "sampled"
    _ap10k_original(sampled)
    prepare("ap10k", sampled, progress=False, seed=8)
    assert _listing(sampled) != _listing(root)
    pair = json.loads(next((root / "PairAnnotation" / "test").glob("*.json")).read_text())
    assert pair["src_json_path"].startswith("ImageAnnotation/")
    dataset = create_dataset("ap10k", root, split="test", subset="cross-family")
    assert len(dataset) == 30 and int(dataset[0].visible.sum()) >= 3


def test_split_files_refuse_unknown_images_and_mixing(tmp_path: Path) -> None:
    released = _released(tmp_path)
    root = tmp_path / "root"
    _ap10k_original(root)
    bad = tmp_path / "bad" / "PairAnnotation" / "test"
    bad.mkdir(parents=True)
    (bad / "1-2:cat.json").write_text(json.dumps({
        "src_json_path": "data/ap-10k/ImageAnnotation/Felidae/cat/000000000999.json",
        "trg_json_path": "data/ap-10k/ImageAnnotation/Felidae/cat/000000000003.json"}))
    with pytest.raises(InputError, match=r"refer to images .*000000000999"):
        prepare("ap10k", root, progress=False, split_files=tmp_path / "bad")
    shutil.rmtree(root / "PairAnnotation")
    prepare("ap10k", root, progress=False)  # a sampled benchmark already there
    with pytest.raises(InputError, match="not in the released split files"):
        prepare("ap10k", root, progress=False, split_files=released)
    with pytest.raises(InputError, match="no <split>/"):
        prepare("ap10k", root, progress=False, split_files=tmp_path / "root" / "annotations")
