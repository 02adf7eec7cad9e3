"""``semcorr eval``: the thin CLI over semcorr.eval.benchmark.evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from semcorr.cli.main import JOBS, main
from semcorr.data.pfwillow import DEV_CLASSES


def _tiny_willow(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(2):
        folder = root / "car(G)"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i}.png")
        points = np.stack([rng.uniform(5, 40, 10), rng.uniform(5, 35, 10)])
        scipy.io.savemat(str(folder / f"im{i}.mat"), {"pts_coord": points})
    return root


def test_eval_is_a_job() -> None:
    assert "eval" in JOBS


def test_eval_writes_results_and_prints_the_table(tmp_path: Path, capsys) -> None:
    root = _tiny_willow(tmp_path / "willow")
    out = tmp_path / "out"
    argv = ["eval", "--dataset", "pf-willow", "--root", str(root), "--out", str(out), "--quiet",
            "--thresholds", "0.05,0.1"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| car(G) | 2 |" in printed and "PCK@0.10" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["pairs"] == 2 and list(results["pck"]) == ["0.05", "0.10"]
    assert results["protocol"]["normalisation"] == "keypoints"
    assert (out / "results.md").is_file() and (out / "pck_curve.png").is_file()
    # a second run resumes: nothing left to predict
    assert main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["timing"]["predicted_this_run"] == 0 and again["pck"] == results["pck"]


def test_real_pf_willow_first_pairs(pf_willow_root: Path, tmp_path: Path) -> None:
    argv = ["eval", "--dataset", "pf-willow", "--root", str(pf_willow_root), "--limit", "3",
            "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["pairs"] == 3 and results["skipped"] == 0
    assert results["counts"]["all"]["keypoints"] == 30
    assert 0.0 <= results["pck"]["0.10"]["per_image"] <= 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--root", "/nonexistent/willow"], "/nonexistent/willow: missing PF-WILLOW folder"),
        (["--root", "{willow}", "--head", "no-such-head"], "unknown head 'no-such-head'"),
        (["--root", ".", "--thresholds", "a,b"], "malformed --thresholds"),
        (["--root", ".", "--dataset-option", "layout"], "expected KEY=VALUE"),
        (["--root", ".", "--subset", "cross-family"], "unexpected keyword argument 'subset'"),
    ],
)
def test_bad_input_is_one_line(extra: list[str], message: str, capsys, tmp_path: Path) -> None:
    willow = str(_tiny_willow(tmp_path / "willow"))
    extra = [willow if item == "{willow}" else item for item in extra]
    argv = ["eval", "--dataset", "pf-willow", "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("semcorr: error: ") and message in err
    assert "Traceback" not in err


def test_dataset_options_are_parsed() -> None:
    from semcorr.cli.eval import parse_dataset_options

    assert parse_dataset_options(["layout=small", "pairs-per-class=10", "x=0.5"]) == {
        "layout": "small",
        "pairs_per_class": 10,
        "x": 0.5,
    }


def test_unknown_dataset_is_refused_by_the_parser(capsys) -> None:
    assert main(["eval", "--dataset", "nope", "--root", "."]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("semcorr: error: eval: argument --dataset: "
                                               "invalid choice: 'nope'")


@pytest.mark.slow
def test_full_pf_willow(pf_willow_root: Path, tmp_path: Path) -> None:
    """All 900 pairs with the default dense-sift: the README's figures (a few CPU minutes).

    Guards the README's PF-Willow row (`benchmarks/pf_willow_baseline.py`): PCK@0.05/0.10/0.15
    0.254/0.422/0.545, measured 0.2540/0.4217/0.5448 with 2 torch threads (deterministic: no
    seed). With 1 thread the predictions of the first 30 pairs move by at most 5e-5 px and no
    keypoint changes side of a threshold. Each keypoint weighs 1/9000 here and only 38-48 of
    the 9000 lie within 1% of their threshold, so float differences could move a figure by
    ~0.005 at most; the bound is the claim minus 0.01 (90 keypoints). It was 0.35 at 0.10
    before, 0.07 below the claim.
    """
    assert main(["eval", "--dataset", "pf-willow", "--root", str(pf_willow_root),
                 "--out", str(tmp_path), "--quiet"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["pairs"] == 900 and results["skipped"] == 0
    assert len(results["per_category"]) == 10
    claims = {"0.05": 0.254, "0.10": 0.422, "0.15": 0.545}
    measured = {alpha: results["pck"][alpha]["per_image"] for alpha in claims}
    assert all(measured[a] >= claims[a] - 0.01 for a in claims), measured
    # the same run, averaged over the declared splits' classes (docs/protocol.md): the README's
    # dev 0.246/0.415/0.527 (benchmarks/sweep_dense_sift_dev.py measured 0.2463/0.4148/0.5270)
    # and held-out 0.257/0.425/0.552
    per_class = results["per_category"]
    for classes, split_claims in (
        (DEV_CLASSES, {"0.05": 0.246, "0.10": 0.415, "0.15": 0.527}),
        (sorted(set(per_class) - set(DEV_CLASSES)), {"0.05": 0.257, "0.10": 0.425, "0.15": 0.552}),
    ):
        split = {a: sum(per_class[c][a]["per_image"] for c in classes) / len(classes)
                 for a in split_claims}
        assert all(split[a] >= split_claims[a] - 0.01 for a in split_claims), (classes, split)


def test_eval_split_selects_the_declared_classes(tmp_path: Path) -> None:
    """``--split dev|heldout|all`` (docs/protocol.md); results name the split and the classes."""
    root = _tiny_willow(tmp_path / "willow")
    (root / "car(G)").rename(root / "car(M)")  # a held-out class
    _tiny_willow(root)  # and a development one
    for split, classes in (("dev", ["car(G)"]), ("heldout", ["car(M)"]),
                           ("all", ["car(G)", "car(M)"])):
        out = tmp_path / split
        assert main(["eval", "--dataset", "pf-willow", "--root", str(root), "--split", split,
                     "--out", str(out), "--quiet"]) == 0  # fmt: skip
        results = json.loads((out / "results.json").read_text())
        assert results["split"] == split and sorted(results["per_category"]) == classes
        assert results["config"]["matcher"]["prior"] is None  # dense-sift's default: no prior
    assert main(["eval", "--dataset", "pf-willow", "--root", str(root), "--split", "dev",
                 "--prior", "affine", "--out", str(tmp_path / "prior"), "--quiet"]) == 0
    config = json.loads((tmp_path / "prior" / "results.json").read_text())["config"]
    assert config["matcher"]["prior"]["sigma"] == 0.2
    assert config["matcher"]["prior"]["fit_grid"] == 32


@pytest.mark.slow
def test_full_pf_willow_with_the_affine_prior(pf_willow_root: Path, tmp_path: Path) -> None:
    """The README's "after" row, three ways (docs/protocol.md), each PCK@0.05/0.10/0.15 failing
    below its claim minus 0.01. The prior's sigma 0.2 and strength 0.1 were chosen on the dev
    classes. Measured by benchmarks/sweep_dense_sift_dev.py (the Matcher's similarities, fit
    and refiner, identity pose): dev 0.2659/0.4552/0.5793 (--prior-grid), held-out
    0.2654/0.4522/0.5805 (once, --split heldout), all 0.2656/0.4531/0.5801 (their class mean).
    Through `semcorr eval`, winebottle(M) gave the same 0.487/0.674/0.760, and this test passed
    (328 s, load average 5-8, 2 torch threads)."""
    assert main(["eval", "--dataset", "pf-willow", "--root", str(pf_willow_root), "--split",
                 "all", "--prior", "affine", "--out", str(tmp_path), "--quiet"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["pairs"] == 900 and results["skipped"] == 0
    per_class = results["per_category"]
    held_out = sorted(set(per_class) - set(DEV_CLASSES))
    for classes, claims in ((sorted(per_class), (0.266, 0.453, 0.580)),
                            (DEV_CLASSES, (0.266, 0.455, 0.579)),
                            (held_out, (0.265, 0.452, 0.581))):
        measured = [sum(per_class[c][a]["per_image"] for c in classes) / len(classes)
                    for a in ("0.05", "0.10", "0.15")]
        assert all(m >= c - 0.01 for m, c in zip(measured, claims, strict=True)), (
            classes, measured)


@pytest.mark.slow
def test_pf_willow_with_the_local_refinement(pf_willow_root: Path, tmp_path: Path) -> None:
    """The README's `--prior affine-local` row, dev and held-out (docs/protocol.md), each
    PCK@0.05/0.10/0.15 failing below its claim minus 0.01. Its width 0.1, sigma 0.1 and strength
    0.1 were chosen on the dev classes (benchmarks/sweep_dense_sift_dev.py --explore, which
    scores the same fit and prior as the Matcher): dev 0.2730/0.4689/0.5993, held-out
    0.2803/0.4778/0.6105 (once, --split heldout). Through `semcorr eval --category
    winebottle(M)` the class gave the sweep's PCK@0.10 0.694 (0.509/0.694/0.773, 104 s); the
    900-pair test itself was not run before the deadline."""
    assert main(["eval", "--dataset", "pf-willow", "--root", str(pf_willow_root), "--split",
                 "all", "--prior", "affine-local", "--out", str(tmp_path), "--quiet"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["pairs"] == 900 and results["skipped"] == 0
    assert results["config"]["matcher"]["prior"]["local"] == 0.1
    per_class = results["per_category"]
    held_out = sorted(set(per_class) - set(DEV_CLASSES))
    for classes, claims in ((DEV_CLASSES, (0.273, 0.469, 0.599)),
                            (held_out, (0.280, 0.478, 0.611))):
        measured = [sum(per_class[c][a]["per_image"] for c in classes) / len(classes)
                    for a in ("0.05", "0.10", "0.15")]
        assert all(m >= c - 0.01 for m, c in zip(measured, claims, strict=True)), (
            classes, measured)
