"""``semcorr keypoints IMAGES --model r2d2 --weights W --top-k 5000``: sparse local features.

One ``<out>/<stem>.npz`` per image with ``keypoints`` ``(N, 3)`` (x, y, scale) in original
pixels ((0, 0) = centre of the top-left pixel), ``descriptors`` ``(N, D)``, ``scores`` ``(N,)``
(decreasing), ``image_size`` (W, H) and ``config`` (the settings, JSON). Files are written
atomically; an image whose file exists with the same settings is skipped (``--overwrite`` to
redo); unreadable images are reported and skipped (exit status 1).

Also home of :func:`run_sparse_match`, the ``semcorr match --backbone r2d2`` path.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from semcorr.cli.common import choose_device, parse_key_values
from semcorr.conventions import UNMATCHED
from semcorr.errors import ImageError, InputError, JobFailed
from semcorr.features.local import LocalFeatures, create_local_features, list_local_features
from semcorr.io import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    load_image,
    parse_points,
)

__all__ = [
    "add_parser",
    "extract_to_files",
    "model_from_args",
    "run_sparse_match",
    "sparse_point_matches",
]


def _config_options(args: argparse.Namespace) -> dict[str, Any]:
    """Extraction settings given on the command line (only those set)."""
    options: dict[str, Any] = {"top_k": args.top_k}
    for name in ("min_size", "max_size", "scale_factor", "reliability_threshold",
                 "repeatability_threshold"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    if getattr(args, "single_scale", False):
        options.update(min_scale=1.0, max_scale=1.0, min_size=0, max_size=10**9)
    return options


def model_from_args(name: str, weights: str | None, device: str | None,
                    options: dict[str, Any] | None = None) -> LocalFeatures:
    """Build a local-feature model on the chosen device, in eval mode."""
    if weights is None:
        print(f"semcorr: warning: no --weights: {name} has random weights", file=sys.stderr)
    model = create_local_features(name, weights=weights, **(options or {}))
    return model.to(choose_device(device)).eval()


def _npz_bytes(features: dict[str, torch.Tensor], size: tuple[int, int], config: str) -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        keypoints=features["keypoints"].float().cpu().numpy(),
        descriptors=features["descriptors"].float().cpu().numpy(),
        scores=features["scores"].float().cpu().numpy(),
        image_size=np.asarray(size, dtype=np.int64),
        config=np.asarray(config),
    )
    return buffer.getvalue()


def _done(path: Path, config: str) -> bool:
    """True when ``path`` holds a complete result made with ``config``."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as data:
            return str(data["config"]) == config and {"keypoints", "descriptors",
                                                       "scores"} <= set(data.files)
    except (OSError, ValueError, KeyError):
        return False


def _output_paths(images: Sequence[str], out_dir: Path) -> list[Path]:
    paths = [out_dir / f"{Path(p).stem}.npz" for p in images]
    seen: dict[Path, str] = {}
    for image, path in zip(images, paths, strict=True):
        if path in seen:
            raise InputError(f"{image} and {seen[path]} would both write {path}: rename one")
        seen[path] = image
    return paths


def extract_to_files(
    model: LocalFeatures,
    images: Sequence[str],
    out_dir: Path,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, list[str]]:
    """Extract every image into ``out_dir/<stem>.npz``; skip finished ones and bad images.

    Returns:
        ``{"written": [...], "skipped": [...], "failed": ["path: reason", ...]}``.
    """
    config = json.dumps({"model": getattr(model, "name", type(model).__name__),
                         **_jsonable(getattr(model, "config", {}))}, sort_keys=True)
    report: dict[str, list[str]] = {"written": [], "skipped": [], "failed": []}
    targets = _output_paths(images, out_dir)
    jobs = list(zip(images, targets, strict=True))
    for image, target in tqdm(jobs, unit="image", desc="keypoints",
                              disable=not show_progress or len(images) < 2):
        if not overwrite and _done(target, config):
            report["skipped"].append(str(target))
            continue
        try:
            tensor = load_image(image)
        except ImageError as exc:
            report["failed"].append(str(exc))
            continue
        features = model.extract(tensor)
        size = (int(tensor.shape[-1]), int(tensor.shape[-2]))
        atomic_write_bytes(target, _npz_bytes(features, size, config))
        report["written"].append(str(target))
    return report


def _jsonable(config: object) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(config) if is_dataclass(config) else dict(config)  # type: ignore[arg-type]


def _run(args: argparse.Namespace) -> int:
    out_dir = check_output_dir(args.out)  # made by the first file written
    if not any(Path(p).is_file() for p in args.images):
        raise InputError(f"none of the {len(args.images)} image file(s) exists (first: "
                         f"{args.images[0]})")
    _output_paths(args.images, out_dir)
    model = model_from_args(args.model, args.weights, args.device, _config_options(args))
    report = extract_to_files(model, args.images, out_dir, overwrite=args.overwrite)
    print(f"wrote {len(report['written'])} file(s), skipped {len(report['skipped'])} done, "
          f"{len(report['failed'])} failed, in {out_dir}")
    for failure in report["failed"]:  # on stdout: stderr keeps the one error line
        print(f"  failed: {failure}")
    if report["failed"] and not (report["written"] or report["skipped"]):
        raise JobFailed(f"keypoints: all {len(report['failed'])} image(s) failed (listed above)")
    atomic_write_json(out_dir / "last_run.json", report)
    return 0


def add_extraction_options(parser: argparse.ArgumentParser) -> None:
    """The R2D2 extraction settings (defaults: the published ones)."""
    parser.add_argument("--top-k", type=int, default=5000, help="keypoints kept (default 5000)")
    parser.add_argument("--min-size", type=int, default=None, help="smallest level (256)")
    parser.add_argument("--max-size", type=int, default=None, help="largest level (1024)")
    parser.add_argument("--scale-factor", type=float, default=None,
                        help="ratio between levels (2^0.25)")
    parser.add_argument("--reliability-threshold", type=float, default=None, help="(0.7)")
    parser.add_argument("--repeatability-threshold", type=float, default=None, help="(0.7)")
    parser.add_argument("--single-scale", action="store_true",
                        help="only the original resolution")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keypoints",
        help="detect and describe local features (R2D2)",
        description="Multi-scale keypoints, descriptors and scores, one .npz per image.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--model", default="r2d2", choices=list_local_features())
    parser.add_argument("--weights", default=None, help="checkpoint file (published format)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda or cpu)")
    parser.add_argument("--out", default="semcorr-keypoints", help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="redo finished images")
    add_extraction_options(parser)
    parser.set_defaults(func=_run)


# --------------------------------------------------------------------------------------------
# semcorr match --backbone r2d2
# --------------------------------------------------------------------------------------------


def sparse_point_matches(
    points: torch.Tensor,
    features0: dict[str, torch.Tensor],
    features1: dict[str, torch.Tensor],
    radius: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual-NN keypoint matches and, for each query point, the match of its nearest keypoint.

    Args:
        points: ``(P, 2)`` query points in the source image.
        features0, features1: extracted features of source and target.
        radius: a query point takes the match of the nearest source keypoint within this many
            pixels; otherwise it is unmatched.

    Returns:
        target points ``(P, 2)`` (``-1`` when unmatched), their scores ``(P,)`` (cosine
        similarity, 0 when unmatched) and the keypoint matches ``(K, 5)``
        (x0, y0, x1, y1, similarity).
    """
    from semcorr.eval.homography import match_descriptors

    kp0, kp1 = features0["keypoints"][:, :2], features1["keypoints"][:, :2]
    matches0 = match_descriptors(features0["descriptors"], features1["descriptors"])
    matched = matches0 != UNMATCHED
    partner = matches0.clamp_min(0)
    similarity = (features0["descriptors"] * features1["descriptors"][partner]).sum(-1)
    pairs = torch.cat([kp0[matched], kp1[partner[matched]], similarity[matched, None]], dim=1)
    out_points = points.new_full(points.shape, float(UNMATCHED))
    scores = points.new_zeros(points.shape[0])
    if kp0.shape[0] == 0 or points.shape[0] == 0:
        return out_points, scores, pairs
    distance, nearest = torch.cdist(points.float(), kp0.float()).min(dim=1)
    ok = (distance <= radius) & matched[nearest]
    out_points[ok] = kp1[partner[nearest[ok]]].to(out_points.dtype)
    scores[ok] = similarity[nearest[ok]].to(scores.dtype)
    return out_points, scores, pairs


def run_sparse_match(args: argparse.Namespace) -> int:
    """``semcorr match SOURCE TARGET... --points P --backbone r2d2``: sparse same-scene matching.

    Writes ``matches.json`` in the schema of :func:`semcorr.cli.match.write_matches`, each target
    entry with an extra ``keypoint_matches`` list of ``[x0, y0, x1, y1, similarity]``, and one
    picture per target.
    """
    from semcorr.pipeline import Matcher, MatchResult
    from semcorr.viz.matches import save_match_picture

    points = parse_points(args.points)
    for target in args.targets:
        if not Path(target).is_file():
            raise InputError(f"{target}: no such image file")
    source_image = load_image(args.source)
    points = Matcher.check_points(points, source_image.shape[-1], source_image.shape[-2])
    options = parse_key_values(getattr(args, "backbone_option", None), "--backbone-option")
    model = model_from_args(args.backbone, args.weights, args.device, options)
    features0 = model.extract(source_image)
    out_dir = Path(args.out)
    entries = []
    for index, target in enumerate(args.targets):
        target_image = load_image(target)
        found, scores, pairs = sparse_point_matches(points, features0,
                                                    model.extract(target_image))
        result = MatchResult(found.cpu(), scores.cpu(), "identity", {})
        entries.append({"image": target, "points": result.points.tolist(),
                        "scores": result.scores.tolist(), "pose": result.pose,
                        "keypoint_matches": pairs.cpu().tolist()})
        picture = out_dir / f"match_{index:03d}_{Path(target).stem}.png"
        save_match_picture(picture, source_image, target_image, points, result)
    payload = {"source": args.source, "backbone": args.backbone, "points": points.tolist(),
               "targets": entries}
    atomic_write_json(out_dir / "matches.json", payload)
    print(f"wrote {out_dir / 'matches.json'} and {len(entries)} picture(s) in {out_dir}")
    return 0
