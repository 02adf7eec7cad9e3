"""Keypoint transfer at scale: annotate a few images, label many.

The stage reads annotated *sources* (COCO keypoints, or the JSON of ``semcorr match``), finds
every source's points in each *target* image, and keeps per target and point the consensus of the
sources' votes (a score-weighted geometric median), a confidence and the spread of the votes.

Data flow of :func:`main`::

    annotations --load_annotations--> sources (image, points (N, 2), labelled (N,))
    sources --Matcher.source_features--> features and query descriptors, computed once
    targets --streamed in batches--> votes (B, S, N, 2) + scores (B, S, N)
            [--cycle check: target point -> back to its source within a radius]
            --consensus--> points (B, N, 2), score (B, N), spread (B, N)
            --> OUT.parts/<rank>-<index>.json  (one atomic file per batch: the resume state)
    all parts --assemble--> OUT (COCO keypoints, atomic), optional contact sheet

A killed run restarts where it stopped: targets found in ``OUT.parts`` are not transferred again,
and the final file is assembled from the parts in the order of the target list, so an
interrupted-then-resumed run writes the same file as an uninterrupted one. Under ``torchrun``
every rank takes an interleaved share of the targets and rank 0 assembles.

Coordinates are semcorr's (see :mod:`semcorr.conventions`): ``(x, y)`` in original pixels with
``(0, 0)`` the centre of the top-left pixel, read from and written to COCO ``keypoints`` as-is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from semcorr.errors import ImageError, InputError
from semcorr.features.base import Backbone
from semcorr.io import atomic_write_json, load_image
from semcorr.match.refine import refiner_with_options
from semcorr.match.similarity import cosine_similarity, sample_descriptors
from semcorr.pipeline import Matcher, SourceFeatures

__all__ = [
    "Consensus",
    "KeypointSchema",
    "SourceAnnotation",
    "TransferConfig",
    "TransferSources",
    "consensus",
    "flip_permutation_from_names",
    "geometric_median",
    "list_images",
    "load_annotations",
    "main",
    "read_parts",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PARTS_FORMAT = "semcorr-transfer-parts"


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferConfig:
    """Options of a transfer job (what determines its output; hashed to guard resumes).

    Attributes:
        batch_size: targets per forward pass.
        refine: refinement rule (``argmax``, ``soft``, ``window``, ``kernel``).
        window: window radius in feature cells for ``window`` (default: the rule's).
        temperature: softmax temperature of the soft rules (default: the rule's).
        sigma, kernel_weighting: the ``kernel`` rule's Gaussian (default: the rule's).
        pose_align: also try the flipped source per target (left/right names are swapped).
        min_score: points scoring below it get visibility 0 in the output.
        cycle: match each vote back from the target to its source: a vote's score is multiplied
            by ``exp(-e² / 2r²)`` (``e`` the cycle error, ``r`` = ``cycle_radius``), and votes
            with ``e > r`` are dropped from the consensus unless every vote of the point fails.
        cycle_radius: radius of the cycle check, as a fraction of the source's longer side.
        agreement_radius: votes within this fraction of the target's longer side of the
            consensus count as agreeing; the score is multiplied by the agreeing weight share.
        iterations: Weiszfeld iterations of the geometric median.
    """

    batch_size: int = 8
    refine: str = "window"
    window: int | None = None
    temperature: float | None = None
    sigma: float | None = None
    kernel_weighting: str | None = None
    pose_align: bool = False
    min_score: float = 0.0
    cycle: bool = True
    cycle_radius: float = 0.1
    agreement_radius: float = 0.1
    iterations: int = 30

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError("batch_size must be at least 1")
        if self.cycle_radius <= 0 or self.agreement_radius <= 0:
            raise InputError("cycle_radius and agreement_radius must be positive")


# --- annotations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeypointSchema:
    """The keypoint category being transferred.

    Attributes:
        category: the COCO category dict (``id``, ``name``, ``keypoints``, ``skeleton``, ...).
        flip_permutation: ``(N,)`` left/right partner of each keypoint, ``-1`` for none.
    """

    category: dict[str, Any]
    flip_permutation: tuple[int, ...]

    @property
    def names(self) -> list[str]:
        return list(self.category["keypoints"])

    @property
    def num_keypoints(self) -> int:
        return len(self.category["keypoints"])


@dataclass
class SourceAnnotation:
    """One annotated instance.

    Attributes:
        image: the image file.
        points: ``(N, 2)`` (x, y) in original pixels.
        labelled: ``(N,)`` boolean, False where the annotation has visibility 0.
    """

    image: Path
    points: torch.Tensor
    labelled: torch.Tensor


@dataclass
class TransferSources:
    """The schema and the annotated sources read from one file."""

    schema: KeypointSchema
    sources: list[SourceAnnotation]


_SIDES = (("left", "right"), ("l", "r"))


def flip_permutation_from_names(names: Sequence[str]) -> tuple[int, ...]:
    """Left/right partners from keypoint names (``left_eye`` ↔ ``right_eye``, ``l_knee`` ↔
    ``r_knee``, ``Left Wing`` ↔ ``Right Wing``); ``-1`` where a name has no partner."""
    index = {name.lower(): i for i, name in enumerate(names)}
    perm = []
    for name in names:
        partner = -1
        for a, b in _SIDES:
            for x, y in ((a, b), (b, a)):
                swapped = re.sub(rf"(?<![a-z]){x}(?![a-z])", y, name.lower())
                if swapped != name.lower() and swapped in index:
                    partner = index[swapped]
        perm.append(partner)
    return tuple(perm)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(f"{path}: no such annotation file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def _resolve(name: str, roots: Sequence[Path]) -> Path:
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    for root in roots:
        if (root / candidate).is_file():
            return root / candidate
    return roots[0] / candidate


def _pick_category(path: Path, data: Mapping[str, Any], category: str | None) -> dict[str, Any]:
    cats = [c for c in data.get("categories", []) if isinstance(c, dict) and c.get("keypoints")]
    if not cats:
        raise InputError(f"{path}: no category with a 'keypoints' list")
    if category is not None:
        chosen = [c for c in cats if str(c.get("name")) == category or str(c.get("id")) == category]
        if not chosen:
            names = ", ".join(str(c.get("name")) for c in cats)
            raise InputError(f"{path}: no keypoint category {category!r} (have: {names})")
        return chosen[0]
    used = {a.get("category_id") for a in data.get("annotations", []) if isinstance(a, dict)}
    cats_used = [c for c in cats if c.get("id") in used] or cats
    if len(cats_used) > 1:
        names = ", ".join(str(c.get("name")) for c in cats_used)
        raise InputError(f"{path}: several keypoint categories ({names}); choose one with "
                         "--category")
    return cats_used[0]


def _coco_sources(
    path: Path, data: Mapping[str, Any], category: str | None, roots: Sequence[Path]
) -> TransferSources:
    cat = _pick_category(path, data, category)
    n = len(cat["keypoints"])
    images = {im.get("id"): im for im in data.get("images", []) if isinstance(im, dict)}
    sources = []
    for k, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict) or ann.get("category_id") != cat.get("id"):
            continue
        image = images.get(ann.get("image_id"))
        if image is None or "file_name" not in image:
            raise InputError(f"{path}: annotation {k} refers to unknown image "
                             f"{ann.get('image_id')!r}")
        kps = ann.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in kps
        ):
            raise InputError(f"{path}: annotation {k} needs 'keypoints' of {3 * n} numbers "
                             f"(x, y, v for each of the {n} keypoints of {cat.get('name')!r})")
        triplets = torch.tensor(kps, dtype=torch.float32).view(n, 3)
        sources.append(SourceAnnotation(_resolve(str(image["file_name"]), roots),
                                        triplets[:, :2].clone(), triplets[:, 2] > 0))
    perm = cat.get("flip_permutation") or flip_permutation_from_names(cat["keypoints"])
    schema = KeypointSchema(dict(cat), tuple(int(i) for i in perm))
    return TransferSources(schema, sources)


def _simple_sources(path: Path, data: Any, roots: Sequence[Path]) -> TransferSources:
    items = data if isinstance(data, list) else [data]
    sources = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or "source" not in item or "points" not in item:
            raise InputError(f"{path}: entry {k} needs 'source' (image) and 'points' [[x, y], ...]")
        try:
            points = torch.tensor(item["points"], dtype=torch.float32).reshape(-1, 2)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{path}: entry {k}: 'points' must be [[x, y], ...]") from None
        sources.append(SourceAnnotation(_resolve(str(item["source"]), roots), points,
                                        torch.ones(points.shape[0], dtype=torch.bool)))
    counts = {s.points.shape[0] for s in sources}
    if len(counts) != 1:
        raise InputError(f"{path}: every source needs the same number of points, got {counts}")
    n = counts.pop()
    names = [str(i) for i in range(n)]
    category = {"id": 1, "name": "object", "supercategory": "object", "keypoints": names,
                "skeleton": []}
    return TransferSources(KeypointSchema(category, (-1,) * n), sources)


def load_annotations(
    path: str | os.PathLike[str],
    category: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> TransferSources:
    """Read annotated sources from COCO keypoints JSON or the JSON of ``semcorr match``.

    Relative image names are looked up under ``image_root`` (if given), then beside the file.

    Args:
        path: the annotation file.
        category: name or id of the COCO category to transfer (needed when several are used).
        image_root: folder of the source images.

    Raises:
        InputError: naming the file and the problem (missing, not JSON, wrong fields, no
            labelled source, a source image that does not exist).
    """
    path = Path(path)
    data = _read_json(path)
    roots = ([Path(image_root)] if image_root is not None else []) + [path.parent]
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        result = _coco_sources(path, data, category, roots)
    elif isinstance(data, (dict, list)):
        result = _simple_sources(path, data, roots)
    else:
        raise InputError(f"{path}: expected COCO keypoints or semcorr match JSON")
    result.sources = [s for s in result.sources if bool(s.labelled.any())]
    if not result.sources:
        raise InputError(f"{path}: no annotation with a labelled keypoint")
    for source in result.sources:
        if not source.image.is_file():
            raise InputError(f"{path}: source image {source.image} does not exist")
    return result


def list_images(spec: str | os.PathLike[str]) -> list[Path]:
    """Target images: a folder (its image files, sorted) or a text file with one path a line
    (relative paths are relative to the text file).

    Raises:
        InputError: when the folder or list does not exist or holds no image.
    """
    spec = Path(spec)
    if spec.is_dir():
        images = sorted(p for p in spec.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif spec.is_file():
        lines = [line.strip() for line in spec.read_text().splitlines()]
        images = [_resolve(line, [spec.parent]) for line in lines if line and line[0] != "#"]
    else:
        raise InputError(f"{spec}: no such folder or image list")
    if not images:
        raise InputError(f"{spec}: no target images")
    return images


# --- consensus -----------------------------------------------------------------------------------


def geometric_median(
    votes: torch.Tensor, weights: torch.Tensor, iterations: int = 30, eps: float = 1e-3
) -> torch.Tensor:
    """Weighted geometric median of votes (Weiszfeld's iterations), batched.

    Args:
        votes: ``(..., S, 2)`` points.
        weights: ``(..., S)`` non-negative weights (0 = ignore the vote).
        iterations: number of Weiszfeld steps from the weighted mean.
        eps: distances are clamped to it (avoids dividing by zero at a vote).

    Returns:
        ``(..., 2)`` medians; where all weights are 0, the plain mean of the votes.
    """
    w = weights.to(votes.dtype)
    total = w.sum(-1, keepdim=True)
    w = torch.where(total > 0, w, torch.ones_like(w))
    centre = (w[..., None] * votes).sum(-2) / w.sum(-1, keepdim=True)
    for _ in range(iterations):
        dist = (votes - centre[..., None, :]).norm(dim=-1).clamp_min(eps)
        inv = w / dist
        centre = (inv[..., None] * votes).sum(-2) / inv.sum(-1, keepdim=True)
    return centre


@dataclass
class Consensus:
    """The consensus of several sources' votes.

    Attributes:
        points: ``(B, N, 2)`` consensus points.
        scores: ``(B, N)`` confidence: the weighted mean vote score times the share of the
            vote weight that agrees with the consensus (0 where no vote exists).
        spread: ``(B, N)`` score-weighted mean distance of the votes to the consensus
            (pixels): the disagreement between sources, 0 for a single vote.
        support: ``(B, N)`` number of votes.
    """

    points: torch.Tensor
    scores: torch.Tensor
    spread: torch.Tensor
    support: torch.Tensor


def consensus(
    votes: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    radius: torch.Tensor | float,
    iterations: int = 30,
    spread_valid: torch.Tensor | None = None,
) -> Consensus:
    """Combine the votes of ``S`` sources for ``N`` points in ``B`` targets.

    Args:
        votes: ``(B, S, N, 2)`` where each source puts each point.
        scores: ``(B, S, N)`` the votes' confidences (negative values count as 0 weight).
        valid: ``(B, S, N)`` boolean, False for votes to ignore (point unlabelled in the source,
            failed cycle check).
        radius: agreement radius in pixels, a float or ``(B,)``.
        iterations: Weiszfeld iterations.
        spread_valid: ``(B, S, N)`` votes the spread is measured over (default ``valid``), e.g.
            every labelled vote, including those the cycle check dropped from the consensus.

    Returns:
        A :class:`Consensus`.
    """
    votes_t = votes.transpose(1, 2)  # (B, N, S, 2)
    valid_t = valid.transpose(1, 2)
    raw = scores.transpose(1, 2).to(votes.dtype)
    weight = torch.where(valid_t, raw.clamp_min(1e-6), torch.zeros_like(raw))
    centre = geometric_median(votes_t, weight, iterations)
    dist = (votes_t - centre[..., None, :]).norm(dim=-1)  # (B, N, S)
    total = weight.sum(-1)
    safe = total.clamp_min(1e-12)
    if spread_valid is None:
        spread = (weight * dist).sum(-1) / safe
    else:
        spread_weight = torch.where(spread_valid.transpose(1, 2), raw.clamp_min(1e-6),
                                    torch.zeros_like(raw))
        spread = (spread_weight * dist).sum(-1) / spread_weight.sum(-1).clamp_min(1e-12)
    radius_t = torch.as_tensor(radius, dtype=votes.dtype, device=votes.device)
    radius_t = radius_t.reshape(-1, 1, 1) if radius_t.dim() else radius_t
    agree = (weight * (dist <= radius_t)).sum(-1) / safe
    count = valid_t.sum(-1)
    mean_score = torch.where(valid_t, raw, torch.zeros_like(raw)).sum(-1) / count.clamp_min(1)
    point_score = torch.where(count > 0, mean_score * agree, torch.zeros_like(mean_score))
    return Consensus(centre, point_score, spread, count)


# --- streaming -----------------------------------------------------------------------------------


@dataclass
class _Source:
    """A source ready for matching: its features and its query descriptors."""

    features: SourceFeatures
    descriptors: torch.Tensor  # (K, N, C)
    cells: torch.Tensor  # (K, N, 2) query cells in every candidate's grid
    labelled: torch.Tensor  # (K, N) the queried source point is labelled, per candidate
    pixel: float  # source original pixels per feature cell
    side: int  # longer side of the source


def _prepare_source(matcher: Matcher, annotation: SourceAnnotation, perm: Sequence[int]
                    ) -> _Source:
    from semcorr.match.pose import FLIPPING_POSES, pose_points

    image = load_image(annotation.image)
    features = matcher.source_features(image)
    width, height = features.width, features.height
    points = annotation.points.clone()
    points[~annotation.labelled] = 0.0
    try:
        points = matcher.check_points(points, width, height)
        permutation, _ = matcher.check_permutation(perm if matcher.pose_align else None,
                                                    points.shape[0])
    except InputError as exc:
        raise InputError(f"{annotation.image}: {exc}") from None
    descriptors = matcher.query_descriptors(features, points, permutation)
    cells, labelled = [], []
    identity = torch.arange(points.shape[0])
    for k, pose in enumerate(features.poses):
        order = permutation if permutation is not None and pose in FLIPPING_POSES else identity
        cells.append(features.transforms[k].to_grid(pose_points(points[order], width, height,
                                                                pose)))
        labelled.append(annotation.labelled[order])
    transform = features.transforms[0]
    device = features.features.device
    return _Source(features, descriptors, torch.stack(cells).to(device),
                   torch.stack(labelled).to(device), transform.stride / transform.scale,
                   max(width, height))


def _cycle_error(
    matcher: Matcher,
    source: _Source,
    chosen: torch.Tensor,
    target_features: torch.Tensor,
    cells: torch.Tensor,
) -> torch.Tensor:
    """How far target cells ``(B, N, 2)`` map back from their query in the source's chosen
    candidate, as a fraction of the source's longer side → ``(B, N)``."""
    back_queries = sample_descriptors(target_features, cells)  # (B, N, C)
    source_features = source.features.features[chosen]  # (B, C, h, w)
    masks = source.features.valid_masks()[chosen]
    similarity = cosine_similarity(back_queries, F.normalize(source_features, dim=1))
    back, _ = matcher.refiner(similarity, masks)
    return (back - source.cells[chosen]).norm(dim=-1) * (source.pixel / source.side)


def _transfer_batch(
    matcher: Matcher,
    sources: Sequence[_Source],
    features: torch.Tensor,
    transforms: Sequence[Any],
    config: TransferConfig,
) -> Consensus:
    """Votes of every source on a batch of target features ``(B, C, h, w)`` → consensus."""
    masks = torch.stack([t.valid_cells(features.device) for t in transforms])
    unit = F.normalize(features, dim=1)
    chosen = [matcher.choose_poses(s.features, features)[0] for s in sources]
    pairs = zip(sources, chosen, strict=True)
    queries = torch.cat([s.descriptors.to(features.device)[c] for s, c in pairs],
                        dim=1)  # (B, S * N, C)
    cells, scores = matcher.refiner(cosine_similarity(queries, unit), masks)
    b, n = features.shape[0], sources[0].descriptors.shape[1]
    cells = cells.float().view(b, len(sources), n, 2)
    scores = scores.float().view(b, len(sources), n)
    labelled = torch.stack([s.labelled[c] for s, c in zip(sources, chosen, strict=True)],
                           dim=1)  # (B, S, N)
    valid = labelled
    if config.cycle:
        error = torch.stack([
            _cycle_error(matcher, s, c, unit, cells[:, i])
            for i, (s, c) in enumerate(zip(sources, chosen, strict=True))
        ], dim=1)  # (B, S, N)
        ok = error <= config.cycle_radius
        # a vote's confidence decays with its cycle error (Gaussian, sigma = the radius)
        scores = scores * torch.exp(-0.5 * (error / config.cycle_radius) ** 2)
        passed = (valid & ok).any(dim=1, keepdim=True)  # (B, 1, N)
        valid = torch.where(passed, valid & ok, valid)
    votes = torch.stack([t.from_grid(cells[i]) for i, t in enumerate(transforms)])
    radius = votes.new_tensor([config.agreement_radius * max(t.width, t.height)
                               for t in transforms])
    return consensus(votes, scores, valid, radius, config.iterations, spread_valid=labelled)


def _cached_target_features(
    backbone: Backbone, cache: Any, paths: Sequence[Path]
) -> tuple[torch.Tensor, list[Any]]:
    """Target features ``(B, C, h, w)`` from a feature cache (computed and stored when missing)."""
    from semcorr.features.cache import cached_features

    maps, transforms = [], []
    for path in paths:
        parts, transform = cached_features(backbone, cache, path)
        if len(parts) == 1:
            feature = next(iter(parts.values()))
        elif hasattr(backbone, "fuse"):
            feature = backbone.fuse(parts)
        else:
            raise InputError(f"{cache.root}: backbone {backbone.info.name!r} has several parts "
                             "and no fuse(); run without --cache")
        maps.append(feature)
        transforms.append(transform)
    return torch.cat(maps).to(backbone.device), transforms


# --- resume state --------------------------------------------------------------------------------


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _job_fingerprint(config: TransferConfig, sources: TransferSources, backbone: str,
                     extra: Mapping[str, Any]) -> str:
    payload = {
        "config": asdict(config),
        "backbone": backbone,
        "extra": dict(extra),
        "category": sources.schema.category,
        "sources": [[str(s.image), s.points.tolist(), s.labelled.tolist()]
                    for s in sources.sources],
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _open_state(out: Path, fingerprint: str, overwrite: bool, is_main: bool) -> Path:
    """The parts folder of ``out``, checked to belong to this job (or emptied on overwrite)."""
    parts = _parts_dir(out)
    info = parts / "job.json"
    if is_main:
        if overwrite and parts.exists():
            shutil.rmtree(parts)
        if info.is_file():
            found = json.loads(info.read_text()).get("fingerprint")
            if found != fingerprint:
                raise InputError(f"{parts}: holds results of another transfer job (other "
                                 "sources, backbone or options); use --overwrite or another --out")
        else:
            atomic_write_json(info, {"format": PARTS_FORMAT, "fingerprint": fingerprint})
    return parts


def read_parts(parts: Path) -> dict[str, dict[str, Any]]:
    """All per-target records written so far, keyed by target path (later files win).

    Unreadable part files (never produced by atomic writes, but possibly copied in) are skipped.
    """
    done: dict[str, dict[str, Any]] = {}
    for file in sorted(parts.glob("part-*.json")):
        try:
            records = json.loads(file.read_text())["targets"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
        done.update(records)
    return done


def _record(result: Consensus, i: int, transform: Any) -> dict[str, Any]:
    points = result.points[i].cpu()
    scores = result.scores[i].cpu()
    return {
        "width": transform.width,
        "height": transform.height,
        "points": [[round(float(x), 2), round(float(y), 2)] for x, y in points.tolist()],
        "scores": [round(float(s), 4) for s in scores.tolist()],
        "spread": [round(float(s), 2) for s in result.spread[i].cpu().tolist()],
        "support": [int(c) for c in result.support[i].cpu().tolist()],
    }


# --- output --------------------------------------------------------------------------------------


def _annotation(record: Mapping[str, Any], image_id: int, category_id: int, min_score: float
                ) -> dict[str, Any]:
    keypoints: list[float] = []
    visible_xy = []
    rows = zip(record["points"], record["scores"], record["support"], strict=True)
    for (x, y), score, support in rows:
        ok = support > 0 and score >= min_score
        keypoints += [x, y, 2 if ok else 0]
        if ok:
            visible_xy.append((x, y))
    if visible_xy:
        xs, ys = zip(*visible_xy, strict=True)
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    else:
        bbox = [0.0, 0.0, 0.0, 0.0]
    scores = record["scores"]
    return {
        "id": image_id,
        "image_id": image_id,
        "category_id": category_id,
        "keypoints": keypoints,
        "num_keypoints": len(visible_xy),
        "score": round(sum(scores) / max(len(scores), 1), 4),
        "keypoint_scores": scores,
        "keypoint_uncertainty": record["spread"],
        "keypoint_support": record["support"],
        "bbox": [round(v, 2) for v in bbox],
        "area": round(bbox[2] * bbox[3], 2),
        "iscrowd": 0,
    }


def _file_name(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            pass
    return str(path)


def _assemble(
    targets: Sequence[Path],
    done: Mapping[str, Mapping[str, Any]],
    sources: TransferSources,
    config: TransferConfig,
    backbone: str,
    base: Path | None,
) -> dict[str, Any]:
    """The COCO keypoints document of all targets, in target order."""
    category = sources.schema.category
    images, annotations, failed = [], [], []
    for index, target in enumerate(targets, start=1):
        record = done.get(str(target))
        if record is None:
            continue
        if "error" in record:
            failed.append({"file_name": _file_name(target, base), "error": record["error"]})
            continue
        images.append({"id": index, "file_name": _file_name(target, base),
                       "width": record["width"], "height": record["height"]})
        annotations.append(_annotation(record, index, int(category["id"]), config.min_score))
    return {
        "info": {"description": "keypoints transferred by semcorr transfer"},
        "images": images,
        "annotations": annotations,
        "categories": [category],
        "semcorr": {
            "backbone": backbone,
            "config": asdict(config),
            "sources": [str(s.image) for s in sources.sources],
            "failed": failed,
            "coordinates": "x, y in original pixels, (0, 0) = centre of the top-left pixel",
        },
    }


# --- the stage -----------------------------------------------------------------------------------


def _batches(items: Sequence[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def _load_batch(paths: Sequence[Path]) -> tuple[list[Path], list[torch.Tensor], dict[str, Any]]:
    """Images of a batch; unreadable ones are reported, not fatal."""
    ok, images, errors = [], [], {}
    for path in paths:
        try:
            images.append(load_image(path))
            ok.append(path)
        except (ImageError, InputError) as exc:
            errors[str(path)] = {"error": str(exc)}
    return ok, images, errors


def main(
    annotations: str | os.PathLike[str],
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    backbone: Backbone,
    config: TransferConfig | None = None,
    *,
    backbone_name: str | None = None,
    category: str | None = None,
    image_root: str | os.PathLike[str] | None = None,
    cache: Any = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    fingerprint_extra: Mapping[str, Any] | None = None,
) -> Path:
    """Transfer annotated keypoints to every target image and write COCO keypoints JSON.

    Args:
        annotations: COCO keypoints or ``semcorr match`` JSON with the annotated sources.
        images: folder of target images, text file listing them, or a sequence of paths.
            Source images are never targets.
        out: the output JSON; the resume state lives in ``<out>.parts/``.
        backbone: the dense backbone (on its device).
        config: the job's options (see :class:`TransferConfig`).
        backbone_name: recorded in the output (default: the backbone's name).
        category: COCO category to transfer, when the file has several.
        image_root: folder of the source images (default: beside the annotation file).
        cache: an optional :class:`~semcorr.features.cache.FeatureCache` for target features.
        overwrite: discard earlier results of ``out`` instead of resuming.
        progress: called with the number of targets done after each batch.
        on_start: called once with the number of targets this process still has to do.
        rank, world_size: this process's share of the targets (torchrun); rank 0 assembles.
        fingerprint_extra: more settings that determine the output (e.g. weights, head).

    Returns:
        The path of the output file (written by rank 0 once every share is done).
    """
    from semcorr import distributed

    config = config or TransferConfig()
    out = Path(out)
    name = backbone_name or backbone.info.name
    sources = load_annotations(annotations, category, image_root)
    source_files = {s.image.resolve() for s in sources.sources}
    if isinstance(images, (str, os.PathLike)):
        targets, base = list_images(images), Path(images) if Path(images).is_dir() else None
    else:
        targets, base = [Path(p) for p in images], None
    targets = [t for t in targets if t.resolve() not in source_files]
    fingerprint = _job_fingerprint(config, sources, name, fingerprint_extra or {})
    parts = _open_state(out, fingerprint, overwrite, rank == 0)
    distributed.barrier()
    done = read_parts(parts)
    pending = [t for t in distributed.shard(targets, rank, world_size) if str(t) not in done]
    position = {t: i for i, t in enumerate(targets)}
    if on_start is not None:
        on_start(len(pending))
    if pending:
        _run(backbone, sources, pending, parts, config, cache, progress, rank,
             [position[t] for t in pending])
    distributed.barrier()
    if rank == 0:
        document = _assemble(targets, read_parts(parts), sources, config, name, base)
        atomic_write_json(out, document)
    return out


def _run(
    backbone: Backbone,
    sources: TransferSources,
    pending: Sequence[Path],
    parts: Path,
    config: TransferConfig,
    cache: Any,
    progress: Callable[[int], None] | None,
    rank: int,
    indices: Sequence[int],
) -> None:
    """Transfer to the pending targets, one atomically written part file per batch."""
    refiner = refiner_with_options(config.refine, radius=config.window,
                                   temperature=config.temperature, sigma=config.sigma,
                                   weighting=config.kernel_weighting)
    matcher = Matcher(backbone, refine=refiner, pose_align=config.pose_align,
                      batch_size=config.batch_size)
    perm = sources.schema.flip_permutation
    prepared = [_prepare_source(matcher, s, perm) for s in sources.sources]
    index_of = dict(zip(pending, indices, strict=True))
    for batch in _batches(pending, config.batch_size):
        paths, images, records = _load_batch(batch)
        if paths:
            if cache is not None:
                features, transforms = _cached_target_features(backbone, cache, paths)
            else:
                features, transforms = backbone.extract(images)
            with torch.inference_mode():
                result = _transfer_batch(matcher, prepared, features, transforms, config)
            for i, (path, transform) in enumerate(zip(paths, transforms, strict=True)):
                records[str(path)] = _record(result, i, transform)
        name = f"part-{rank:03d}-{index_of[batch[0]]:07d}.json"
        atomic_write_json(parts / name, {"targets": records}, indent=None)
        if progress is not None:
            progress(len(batch))
