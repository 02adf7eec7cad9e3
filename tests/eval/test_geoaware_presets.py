"""The GeoAware-SC presets are the official evaluation configs, key for key: each yaml file of
the reference is read with ``pck_train.py``'s own argument defaults and compared with
``semcorr eval --preset NAME --print-config``."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest

from semcorr.cli.main import main
from semcorr.eval.presets import GEOAWARE_CONFIG_KEYS, get_eval_preset
from semcorr.postprocess.geoaware import get_preset
from shared_data import SHARED

REFERENCE = SHARED / "reference" / "Junyi42+GeoAware-SC"
CONFIGS = {
    "geoaware-spair": "eval_spair.yaml",
    "geoaware-zero-shot": "eval_zero_shot_spair.yaml",
    "geoaware-ap10k": "eval_ap10k.yaml",
    "geoaware-pfpascal": "eval_pascal.yaml",
}
#: compute_pck's thresholds (pck_train.py): SPair-71k and AP-10k, and PF-Pascal.
ALPHAS = {"pascal": "0.05,0.10,0.15", "other": "0.01,0.05,0.10"}


def _reference(*parts: str):
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not beside the repository)")
    return path


def _argparse_defaults() -> dict[str, Any]:
    """``pck_train.py``'s ``--KEY`` defaults, read from its source."""
    tree = ast.parse(_reference("pck_train.py").read_text())
    defaults = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            name = node.args[0].value.lstrip("-")
            for keyword in node.keywords:
                if keyword.arg == "default":
                    defaults[name] = ast.literal_eval(keyword.value)
    return defaults


def _soft_argmax_beta() -> float:
    """The fixed temperature of the official soft-argmax (utils_correspondence.soft_argmax)."""
    tree = ast.parse(_reference("utils", "utils_correspondence.py").read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                    and n.name == "soft_argmax")
    return ast.literal_eval(function.args.defaults[0])


def _expected(config: dict[str, Any]) -> dict[str, Any]:
    """What ``pck_train.py`` does with ``config``, as ``semcorr eval`` settings."""
    c = {**_argparse_defaults(), **config}
    dataset = {"spair": "spair", "ap10k": "ap10k", "pascal": "pf-pascal"}[c["EVAL_DATASET"]]
    assert c["DO_EVAL"] and c["SOFT_EVAL"] and c["SOFT_EVAL_WINDOW"] > 0
    assert c["TEST_SAMPLE"] == 0 and not c["IMG_THRESHOLD"] and c["ANNO_SIZE"] == 840
    expected = {
        "dataset": dataset,
        "split": "test",
        "backbone": "sd+dino",
        "head": "geoaware-zero-shot" if c["DUMMY_NET"] else "geoaware",
        "refine": "window",
        "window": c["SOFT_EVAL_WINDOW"],
        "temperature": _soft_argmax_beta(),
        "pose_align": c["ADAPT_FLIP"],
        "thresholds": ALPHAS["pascal" if dataset == "pf-pascal" else "other"],
        "limit": None,
        "head_weights": None,  # LOAD: the user's file
    }
    if c["ADAPT_FLIP"]:
        expected["pose_distance"] = "mutual-nn" if c["MUTUAL_NN"] else "auto"
    if dataset == "ap10k":
        expected["subset"] = c["AP10K_EVAL_SUBSET"]
    if dataset == "pf-pascal":  # BBOX_THRE is off for PF-Pascal: α × the image's side
        expected["dataset_option"] = ["normalisation=image"]
    return expected


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_preset_is_the_official_config_key_for_key(name: str, capsys) -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(_reference("configs", CONFIGS[name]).read_text())
    assert set(config) <= set(GEOAWARE_CONFIG_KEYS), set(config) - set(GEOAWARE_CONFIG_KEYS)
    assert main(["eval", "--preset", name, "--print-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    settings = shown["settings"]
    for key, value in _expected(config).items():
        assert settings[key] == value, (key, settings[key], value)
    assert "recipe=geoaware" in settings["backbone_option"]
    assert CONFIGS[name] in shown["source"]
    label = "per keypoint" if name == "geoaware-zero-shot" else "per image"
    assert label in shown["headline"]
    for value in shown["published"].values():
        assert f"published {value}" in shown["headline"]


def test_published_numbers_and_rules_come_from_the_training_presets() -> None:
    spair, zero_shot = get_eval_preset("geoaware-spair"), get_eval_preset("geoaware-zero-shot")
    assert dict(spair.published) == {"spair_pck@0.10_per_image": 85.6}
    assert dict(zero_shot.published) == {"spair_pck@0.10_per_keypoint": 65.4}
    for preset, training in ((spair, "spair"), (zero_shot, "zero-shot")):
        train = get_preset(training)
        assert (preset.settings["window"], preset.settings["pose_align"]) == (train.window,
                                                                             train.pose_align)
        assert preset.published == train.published


def test_given_options_add_to_the_preset_items_and_the_head_needs_weights(capsys) -> None:
    settings = json.loads(_run_print(capsys, "--preset", "geoaware-zero-shot",
                                     "--backbone-option", "captioner=empty"))["settings"]
    assert settings["backbone_option"] == ["recipe=geoaware", "captioner=empty"]
    assert main(["eval", "--preset", "geoaware-spair", "--root", "x"]) == 2
    assert "--head geoaware needs its weights" in capsys.readouterr().err


def _run_print(capsys, *argv: str) -> str:
    assert main(["eval", *argv, "--print-config"]) == 0
    return capsys.readouterr().out
