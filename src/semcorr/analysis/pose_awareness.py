"""Global pose-awareness of features (GeoAware-SC, section 3.4).

Given *template* images of one category in known poses (e.g. front, back, left, right) and
*query* images with known poses, each query's pose is predicted as the pose of the template
with the lowest instance matching distance
(:func:`semcorr.match.pose.instance_matching_distance`, the same function the matcher's pose
alignment uses). If the features know the object's global pose, the accuracy is high; if they
only know local appearance (left and right parts look alike), it stays near chance.

Folders are laid out by pose::

    DIR/<pose>/<image>.{jpg,png,...}

Templates and queries use the same pose names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semcorr.errors import InputError
from semcorr.features.base import Backbone
from semcorr.io import load_image
from semcorr.match.pose import instance_matching_distance

__all__ = [
    "IMAGE_SUFFIXES",
    "PoseImages",
    "embed_images",
    "pose_awareness",
    "pose_distances",
    "read_pose_folder",
    "summarize_predictions",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class PoseImages:
    """Images with known poses.

    Attributes:
        paths: the image files.
        poses: the pose name of each file (its folder name).
    """

    paths: list[Path]
    poses: list[str]


def read_pose_folder(root: str | Path, what: str = "folder") -> PoseImages:
    """The images of ``root/<pose>/*``, sorted by pose then name.

    Raises:
        InputError: naming ``root`` when it is missing or holds no pose folder with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: {what} not found (expected {root}/<pose>/<image>)")
    paths: list[Path] = []
    poses: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        poses += [folder.name] * len(files)
    if not paths:
        raise InputError(
            f"{root}: {what} holds no images in pose sub-folders ({root}/<pose>/*.jpg)"
        )
    return PoseImages(paths, poses)


def embed_images(
    backbone: Backbone, paths: Sequence[Path]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and content masks of image files.

    Args:
        backbone: any dense backbone.
        paths: image files (read with :func:`semcorr.io.load_image`, which names a bad file).

    Returns:
        ``(features, masks)``: ``(N, C, h, w)`` and ``(N, h, w)`` boolean (cells on content).
    """
    features, masks = [], []
    for path in paths:  # one image per forward: memory flat in the number of images
        maps, (transform,) = backbone.extract([load_image(path)])
        features.append(maps)
        masks.append(transform.valid_cells(maps.device)[None])
    return torch.cat(features), torch.cat(masks)


def pose_distances(
    queries: tuple[torch.Tensor, torch.Tensor],
    templates: tuple[torch.Tensor, torch.Tensor],
    size: int = 64,
    mutual: bool = True,
) -> torch.Tensor:
    """Instance matching distance of every query to every template.

    Args:
        queries: ``(Q, C, h, w)`` features and ``(Q, h, w)`` masks.
        templates: ``(T, C, h', w')`` features and ``(T, h', w')`` masks.
        size: side of the common grid of the distance.
        mutual: mutual nearest neighbours (content masks) or one-way (instance masks).

    Returns:
        ``(Q, T)`` distances.
    """
    (qf, qm), (tf, tm) = queries, templates
    q, t = qf.shape[0], tf.shape[0]
    if q == 0 or t == 0:
        return qf.new_zeros(q, t)
    rows = [  # all templates at once for each query: a (T, P, P) similarity per query
        instance_matching_distance(
            qf[i : i + 1].expand(t, -1, -1, -1), tf, qm[i : i + 1].expand(t, -1, -1), tm,
            size=size, mutual=mutual,
        )
        for i in range(q)
    ]
    return torch.stack(rows)


def summarize_predictions(
    truth: Sequence[str], predicted: Sequence[str], poses: Sequence[str]
) -> dict[str, Any]:
    """Accuracy per pose, overall accuracy, chance level and confusion matrix.

    Args:
        truth, predicted: pose names per query.
        poses: the pose names (rows and columns of the matrix, in this order).

    Returns:
        ``{"poses", "accuracy", "per_pose": {pose: accuracy or None}, "confusion": rows = true,
        columns = predicted counts, "chance", "queries"}``.
    """
    index = {p: i for i, p in enumerate(poses)}
    t = torch.tensor([index[p] for p in truth], dtype=torch.long)
    p = torch.tensor([index[p] for p in predicted], dtype=torch.long)
    k = len(poses)
    confusion = torch.zeros(k * k, dtype=torch.long)
    confusion.index_add_(0, t * k + p, torch.ones_like(t))
    confusion = confusion.view(k, k)
    totals = confusion.sum(dim=1)
    per_pose = {
        pose: (float(confusion[i, i] / totals[i]) if totals[i] > 0 else None)
        for i, pose in enumerate(poses)
    }
    return {
        "poses": list(poses),
        "queries": len(truth),
        "accuracy": float((t == p).double().mean()) if len(truth) else None,
        "per_pose": per_pose,
        "confusion": confusion.tolist(),
        "chance": 1.0 / k if k else None,
    }


def _verdict(summary: dict[str, Any], margin: float) -> str:
    accuracy, chance = summary["accuracy"], summary["chance"]
    worst = min((v for v in summary["per_pose"].values() if v is not None), default=0.0)
    if accuracy is None:
        return "no query"
    if accuracy >= chance + margin and worst > chance:
        return "separates the poses"
    if accuracy >= chance + margin:
        return "partly separates the poses (at least one pose at or below chance)"
    return "does NOT separate the poses (accuracy near or below chance)"


def pose_awareness(
    backbone: Backbone,
    templates: PoseImages,
    queries: PoseImages,
    size: int = 64,
    margin: float = 0.25,
) -> dict[str, Any]:
    """Run the global pose-awareness test.

    Args:
        backbone: any dense backbone (with a head or a fusion, as built by the CLI).
        templates: template images with their poses (several per pose allowed).
        queries: query images with known poses (poses absent from the templates are refused).
        size: grid side of the instance matching distance.
        margin: accuracy above chance needed to call the poses separated.

    Returns:
        :func:`summarize_predictions`'s fields plus ``verdict`` (a sentence), ``backbone``,
        and ``predictions`` (per query: ``image``, ``true``, ``predicted``, ``distances`` =
        the lowest distance to each pose's templates).
    """
    poses = list(dict.fromkeys(templates.poses))
    unknown = sorted(set(queries.poses) - set(poses))
    if unknown:
        raise InputError(f"query poses {unknown} have no template (templates: {poses})")
    distances = pose_distances(
        embed_images(backbone, queries.paths), embed_images(backbone, templates.paths), size
    )  # (Q, T)
    owner = torch.tensor([poses.index(p) for p in templates.poses], device=distances.device)
    per_pose = torch.full((distances.shape[0], len(poses)), float("inf"), dtype=distances.dtype,
                          device=distances.device)
    per_pose = per_pose.scatter_reduce(1, owner.expand_as(distances), distances, "amin")
    choice = per_pose.argmin(dim=1).tolist()
    predicted = [poses[i] for i in choice]
    summary = summarize_predictions(queries.poses, predicted, poses)
    summary["verdict"] = _verdict(summary, margin)
    summary["backbone"] = backbone.info.name
    summary["predictions"] = [
        {"image": str(path), "true": true, "predicted": pred,
         "distances": dict(zip(poses, [round(float(d), 6) for d in row], strict=True))}
        for path, true, pred, row in zip(
            queries.paths, queries.poses, predicted, per_pose, strict=True
        )
    ]
    return summary


def confusion_table(summary: dict[str, Any]) -> str:
    """The confusion matrix and per-pose accuracy as a markdown table."""
    poses = summary["poses"]
    lines = [
        "| true \\ predicted | " + " | ".join(poses) + " | accuracy |",
        "|---" * (len(poses) + 2) + "|",
    ]
    for pose, row in zip(poses, summary["confusion"], strict=True):
        acc = summary["per_pose"][pose]
        cell = "n/a" if acc is None else f"{100 * acc:.1f}"
        lines.append(f"| {pose} | " + " | ".join(str(v) for v in row) + f" | {cell} |")
    overall = summary["accuracy"]
    lines.append(
        f"\noverall accuracy {100 * (overall or 0):.1f}% over {summary['queries']} queries "
        f"(chance {100 * summary['chance']:.1f}%): {summary['backbone']} {summary['verdict']}"
    )
    return "\n".join(lines)


__all__ += ["confusion_table"]
