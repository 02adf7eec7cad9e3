"""The public surface: what ``import semcorr`` exports, and that importing changes nothing."""

from __future__ import annotations

import subprocess
import sys

import semcorr

STATE = (
    "import sys, warnings, torch;"
    "before = (torch.get_num_threads(), torch.initial_seed(), len(warnings.filters),"
    " torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,"
    " torch.are_deterministic_algorithms_enabled(), torch.get_default_dtype());"
    "import semcorr, semcorr.cli.main; semcorr.cli.main.build_parser();"
    "after = (torch.get_num_threads(), torch.initial_seed(), len(warnings.filters),"
    " torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,"
    " torch.are_deterministic_algorithms_enabled(), torch.get_default_dtype());"
    "heavy = [m for m in ('transformers', 'diffusers', 'fastapi', 'cv2') if m in sys.modules];"
    "print(before, after, heavy); sys.exit(before != after or bool(heavy))"
)


def test_import_changes_no_global_state() -> None:
    done = subprocess.run([sys.executable, "-c", STATE], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_exports() -> None:
    assert set(semcorr.__all__) == {
        "MatchResult", "Matcher", "SemcorrError", "__version__", "create_backbone",
        "create_refiner", "list_backbones", "list_refiners", "load_head", "load_image",
    }
    assert {"dense-sift", "dense-sift-precise", "dinov2_vitb14", "sd+dino"} <= set(
        semcorr.list_backbones()
    )
    assert semcorr.list_refiners() == ["argmax", "kernel", "soft", "window"]
