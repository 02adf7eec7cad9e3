"""Named evaluation settings: ``semcorr eval --preset NAME``.

A preset is the evaluation of a published method written out setting for setting (the official
config file it mirrors is named in :attr:`EvalPreset.source`). Its ``settings`` are values of
``semcorr eval`` options, keyed by the option's ``argparse`` destination (``window``,
``pose_align``, ``dataset_option``, ...). Precedence is option default < preset < an option given
on the command line; ``semcorr eval --preset NAME --print-config`` shows the result.

The registry holds one kind of plug-in, like the backbone and head registries: add a preset with
:func:`register_eval_preset`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from semcorr.errors import UnknownNameError

__all__ = [
    "GEOAWARE_CONFIG_KEYS",
    "EvalPreset",
    "get_eval_preset",
    "list_eval_presets",
    "register_eval_preset",
]


@dataclass(frozen=True)
class EvalPreset:
    """One published evaluation, setting for setting.

    Attributes:
        name: the preset's name (``--preset NAME``).
        description: one line.
        source: the official file (and repository) whose settings these are.
        settings: ``semcorr eval`` option destination → value.
        headline: the number the method reports under this setting, e.g. ``"PCK@0.10 per
            image"``.
        published: published results, metric name → value (PCK in %).
    """

    name: str
    description: str
    source: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    headline: str = ""
    published: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))


_PRESETS: dict[str, EvalPreset] = {}


def register_eval_preset(preset: EvalPreset) -> EvalPreset:
    """Add ``preset`` to the registry (a name can be registered once)."""
    if preset.name in _PRESETS:
        raise ValueError(f"evaluation preset {preset.name!r} is already registered")
    _PRESETS[preset.name] = preset
    return preset


def get_eval_preset(name: str) -> EvalPreset:
    """The preset called ``name``.

    Raises:
        UnknownNameError: listing the known names.
    """
    if name not in _PRESETS:
        raise UnknownNameError(f"unknown evaluation preset {name!r} (known: "
                               f"{', '.join(list_eval_presets()) or 'none'})")
    return _PRESETS[name]


def list_eval_presets() -> list[str]:
    """Registered preset names, sorted."""
    return sorted(_PRESETS)


# --- GeoAware-SC (Junyi42/GeoAware-SC, configs/eval_*.yaml) -----------------------------------

#: Every key of GeoAware-SC's evaluation configs (and the ``pck_train.py`` defaults they rely
#: on) and what it is in ``semcorr eval``: the option it sets, or why no option does.
GEOAWARE_CONFIG_KEYS: dict[str, str] = {
    "EVAL_DATASET": "--dataset (spair, ap10k; pascal is pf-pascal)",
    "AP10K_EVAL_SUBSET": "--subset",
    "LOAD": "--head-weights (give the file: the configs name results_spair/best_856.PTH or "
            "a placeholder)",
    "DUMMY_NET": "--head geoaware-zero-shot (no learned head: SD and DINO parts normalised "
                 "separately, concatenated, normalised again); unset: --head geoaware",
    "SOFT_EVAL": "--refine window with --temperature 0.02 (the fixed beta of its soft-argmax)",
    "SOFT_EVAL_WINDOW": "--window (pck_train.py's default: 7)",
    "ADAPT_FLIP": "--pose-align (identity and horizontal flip; unset: no alignment)",
    "MUTUAL_NN": "--pose-distance mutual-nn; unset: the instance-mask distance (semcorr: "
                 "--pose-distance auto, which falls back to mutual-nn where a pair has no "
                 "masks and records which one was used)",
    "KPT_RESULT": "no option: semcorr reports per image and per keypoint; unset means the "
                  "config's own number is per image",
    "COMPUTE_GEOAWARE_METRICS": "no option: the geometry-aware subset is always reported",
    "TEST_SAMPLE": "no option: 0 = every test pair, semcorr's default (no --limit)",
    "DO_EVAL": "no option: `semcorr eval` is the evaluation",
    "NOTE": "no option: the experiment's name (choose --out)",
    "IMG_THRESHOLD": "--dataset-option normalisation: unset = target bbox (SPair-71k, AP-10k); "
                     "PF-Pascal always uses the image (the code forces it), pf-pascal's default",
    "alpha": "--thresholds: 0.01, 0.05, 0.10 (PF-Pascal 0.05, 0.10, 0.15), hard-coded in "
             "compute_pck",
    "ANNO_SIZE": "no option: 840, the square frame keypoints and predictions live in; semcorr "
                 "works in original pixels (PCK is scale-free: the frames differ by rounding "
                 "and by a half-pixel convention)",
    "TOTAL_SAVE_RESULT": "--save-examples (pictures only; 0 in the configs)",
}


def _geoaware_settings(training: str, **settings: Any) -> dict[str, Any]:
    """``semcorr eval`` settings of a GeoAware-SC evaluation: the matching rule and the pose
    alignment are those of the training preset ``training`` (one source of these numbers,
    :data:`semcorr.postprocess.geoaware.PRESETS`)."""
    from semcorr.postprocess.geoaware import get_preset

    train = get_preset(training)
    return {
        "split": "test",
        "backbone": "sd+dino",
        "backbone_option": ["recipe=geoaware"],
        "head": train.head,
        "refine": "window",
        "window": train.window,
        "temperature": train.temperature,
        "pose_align": train.pose_align,
        "thresholds": "0.01,0.05,0.10",
        **settings,
    }


def _published(training: str) -> tuple[tuple[str, float], ...]:
    from semcorr.postprocess.geoaware import get_preset

    return get_preset(training).published


def _headline(training: str, label: str) -> str:
    """``label`` followed by the published number(s) of the training preset ``training``."""
    numbers = ", ".join(f"{value}" for _, value in _published(training))
    return f"{label}: published {numbers}" if numbers else f"{label}: no published number " \
        "recorded here"


register_eval_preset(EvalPreset(
    "geoaware-spair",
    "GeoAware-SC supervised on SPair-71k: the released head (best_856.PTH) on the geoaware "
    "feature recipe, window soft-argmax radius 7, no adaptive flip",
    "Junyi42/GeoAware-SC configs/eval_spair.yaml (pck_train.py)",
    _geoaware_settings("spair", dataset="spair"),
    headline=_headline("spair", "SPair-71k test PCK@0.10 per image (the config's own label: "
                                "KPT_RESULT unset)"),
    published=_published("spair"),
))
register_eval_preset(EvalPreset(
    "geoaware-zero-shot",
    "GeoAware-SC zero-shot on SPair-71k: no learned head (DUMMY_NET), window soft-argmax "
    "radius 5, adaptive flip with the instance-mask distance where masks exist",
    "Junyi42/GeoAware-SC configs/eval_zero_shot_spair.yaml (pck_train.py)",
    _geoaware_settings("zero-shot", dataset="spair", pose_distance="auto"),
    headline=_headline("zero-shot", "SPair-71k test PCK@0.10 per keypoint (the paper's Tab. "
                                    "2: this config with KPT_RESULT: true; as released it logs "
                                    "per image, semcorr reports both)"),
    published=_published("zero-shot"),
))
register_eval_preset(EvalPreset(
    "geoaware-ap10k",
    "GeoAware-SC on the AP-10k intra-species benchmark: the AP-10k head, window soft-argmax "
    "radius 7, no adaptive flip",
    "Junyi42/GeoAware-SC configs/eval_ap10k.yaml (pck_train.py)",
    _geoaware_settings("ap10k", dataset="ap10k", subset="intra-species"),
    headline=_headline("ap10k", "AP-10k intra-species test PCK@0.10 per image (the config's "
                                "own label)"),
    published=_published("ap10k"),
))
register_eval_preset(EvalPreset(
    "geoaware-pfpascal",
    "GeoAware-SC on PF-Pascal: the PF-Pascal head, window soft-argmax radius 7, no adaptive "
    "flip, PCK relative to the image's larger side",
    "Junyi42/GeoAware-SC configs/eval_pascal.yaml (pck_train.py)",
    _geoaware_settings("pfpascal", dataset="pf-pascal", dataset_option=["normalisation=image"],
                       thresholds="0.05,0.10,0.15"),
    headline=_headline("pfpascal", "PF-Pascal test PCK@0.10 per image (the config's own "
                                   "label)"),
    published=_published("pfpascal"),
))



# --- SD4Match (ActiveVisionLab/SD4Match, test.py and config/) ---------------------------------

#: SD4Match's test.py at evaluation: timestep 50 (training uses 261), an ensemble of 8 draws,
#: each from a sampled VAE latent with fresh noise (torch.manual_seed(0) once); SD 2.1's
#: up-block 1 output at 768 px (the prompt file's size); kernel soft-argmax, σ 7 cells,
#: temperature 0.04, Gaussian on the similarities; the sd4match PCK protocol.
_SD4MATCH_EVAL: dict[str, Any] = {
    "backbone": "sd4match",
    "head": "sd4match",
    "backbone_option": ["feature_timestep=50", "ensemble=8", "latent=sample", "noise=fresh",
                        "seed=0"],
    "refine": "kernel",
    "sigma": 7.0,
    "temperature": 0.04,
    "kernel_weighting": "score",
    "pose_align": False,
    "protocol": "sd4match",
    "thresholds": "0.05,0.10,0.15",
    "split": "test",
}
_SD4MATCH_HEADLINE = ("kernel soft-argmax PCK@0.10 per image (mean over pairs), measured in the "
                      "768x768 stretched frame with <=")

for _name, _dataset, _options, _published in (
    ("sd4match-spair", "spair", ["layout=large"], 75.5),
    ("sd4match-pfpascal", "pf-pascal", ["normalisation=image"], 95.2),
    ("sd4match-pfwillow", "pf-willow", [], 81.3),
):
    register_eval_preset(EvalPreset(
        _name,
        f"SD4Match on {_dataset} as its test.py evaluates it: SD 2.1 up-block 1 at the prompt "
        "file's 768 px, stretched (give the prompt file with --head-weights and SD 2.1 with "
        "--weights)",
        "ActiveVisionLab/SD4Match test.py, config/learnedToken.py, utils/evaluator.py",
        settings={"dataset": _dataset, "dataset_option": _options, **_SD4MATCH_EVAL},
        headline=_SD4MATCH_HEADLINE,
        published=(("PCK@0.10 per image (SD4Match-CPM)", _published),),
    ))
