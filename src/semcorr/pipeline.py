"""The one-call matching job: source points → their places in many targets.

:class:`Matcher` computes the source's features once (in every pose candidate), then streams the
targets in batches: features → (pose choice) → similarity → refinement → original pixels.

One file on purpose (~510 lines): it is nearly all :class:`Matcher`, whose stages are methods
sharing one state; the stages themselves live in ``features``, ``match`` and ``postprocess``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from semcorr.conventions import check_shape
from semcorr.errors import InputError
from semcorr.features.base import Backbone
from semcorr.features.batching import auto_batch_size, per_target_bytes
from semcorr.geometry import ResizePad, inside_image
from semcorr.io import load_image
from semcorr.io.stream import prefetch
from semcorr.match.geometric import AffinePrior, resolve_prior
from semcorr.match.pose import (
    FLIPPING_POSES,
    NO_PARTNER,
    PARTNER_UNSEEN,
    POSE_DISTANCES,
    apply_pose,
    check_poses,
    mask_distance,
    mutual_nn_distance,
    pose_points,
)
from semcorr.match.refine import Refiner, refiner_with_options
from semcorr.match.similarity import cosine_similarity, sample_descriptors

__all__ = ["MatchResult", "Matcher", "SourceFeatures", "TargetFeatures", "mask_to_grid"]


@dataclass
class MatchResult:
    """Where the source points land in one target.

    Attributes:
        points: ``(N, 2)`` (x, y) in the target's original pixels.
        scores: ``(N,)`` confidence (best cosine similarity, in [-1, 1]).
        pose: the pose candidate of the source that was used.
        pose_distances: instance matching distance of each candidate (empty without alignment).
        pose_metric: the distance used: ``mask`` or ``mutual-nn`` (``""`` without alignment).
    """

    points: torch.Tensor
    scores: torch.Tensor
    pose: str
    pose_distances: dict[str, float]
    pose_metric: str = ""


@dataclass
class SourceFeatures:
    """A source image's features in each pose candidate, computed once.

    Attributes:
        poses: candidate names, ``identity`` first.
        features: ``(K, C, h, w)``.
        transforms: one :class:`ResizePad` per candidate.
        width, height: the original source size.
        instance_masks: optional ``(K, S, S)`` instance masks of the object in each candidate,
            on the pose grid (from :meth:`Matcher.source_features` with a ``mask``).
    """

    poses: tuple[str, ...]
    features: torch.Tensor
    transforms: list[ResizePad]
    width: int
    height: int
    instance_masks: torch.Tensor | None = None

    def valid_masks(self) -> torch.Tensor:
        """``(K, h, w)`` content masks of the candidates."""
        device = self.features.device
        return torch.stack([t.valid_cells(device) for t in self.transforms])


@dataclass
class TargetFeatures:
    """A target image's features, computed once and reusable across sources.

    Attributes:
        features: ``(C, h, w)``.
        transform: the image's :class:`ResizePad`.
    """

    features: torch.Tensor
    transform: ResizePad


def mask_to_grid(mask: torch.Tensor, transform: ResizePad, size: int) -> torch.Tensor:
    """An instance mask in original pixels ``(H, W)`` → ``(size, size)`` booleans.

    The mask is resized (nearest neighbour) and zero-padded into the square frame of
    ``transform`` like its image, then resampled to ``size x size`` by nearest neighbour: in
    GeoAware-SC the mask lives in the square frame and is resampled to the 64² grid of the
    instance matching distance this way.
    """
    check_shape(mask, "H W", "instance mask")
    if tuple(mask.shape) != (transform.height, transform.width):
        raise InputError(
            f"instance mask is {tuple(mask.shape)} (h, w), its image is "
            f"({transform.height}, {transform.width})"
        )
    w, h = transform.resized
    left, top = transform.pad
    resized = F.interpolate(mask.to(torch.float32)[None, None], size=(h, w), mode="nearest")
    square = F.pad(resized, (left, transform.size - w - left, top, transform.size - h - top))
    return F.interpolate(square, size=(size, size), mode="nearest")[0, 0] > 0.5


class Matcher:
    """Transfers points from a source image to target images.

    Args:
        backbone: any registered dense backbone.
        refine: refinement rule name (``argmax``, ``soft``, ``window``, ``kernel``) or a
            :class:`~semcorr.match.refine.Refiner`.
        window: window radius in feature cells for ``window`` (default 3).
        temperature: softmax temperature for the soft rules (default: the rule's).
        pose_align: choose among ``poses`` per target by instance matching distance.
        poses: pose candidates tried when ``pose_align`` (``identity`` always included; the
            quarter turns are an extension of GeoAware-SC, which tries the flip only).
        batch_size: targets per forward pass; ``None`` picks it by the memory rule of
            :mod:`semcorr.features.batching` (from the source's feature size and the free memory).
        pose_grid: side of the grid the instance-mask distance is computed on.
        pose_distance: ``auto`` (the instance-mask distance where the source and every target
            of a batch have masks, else mutual nearest neighbours), ``mask`` (masks required)
            or ``mutual-nn`` (see :mod:`semcorr.match.pose`).
        workers: threads decoding target images given as paths while the backbone runs
            (:func:`~semcorr.io.stream.prefetch`); ``0`` decodes each one when its batch is
            filled. The results are the same either way.
        memory_budget: bytes a batch may use for the automatic batch size (default: half the
            available memory).
        prior: global geometric prior (:class:`~semcorr.match.geometric.AffinePrior`): per
            target, an affine fit of the two images' mutual nearest neighbours favours the
            candidates near where it sends each point. ``"auto"`` (default): the backbone's own
            (``info.extra["prior"]``, e.g. dense-sift's ``semantic`` preset), else none;
            ``None`` or ``"none"``: no prior.

    Example:
        >>> matcher = Matcher(create_backbone("dense-sift"), refine="window")
        >>> results = matcher.match(load_image("a.jpg"), [load_image("b.jpg")], points)
    """

    def __init__(
        self,
        backbone: Backbone,
        refine: str | Refiner = "window",
        window: int | None = None,
        temperature: float | None = None,
        pose_align: bool = False,
        poses: Sequence[str] = ("identity", "hflip"),
        batch_size: int | None = None,
        pose_grid: int = 64,
        pose_distance: str = "auto",
        workers: int = 2,
        memory_budget: int | None = None,
        prior: AffinePrior | str | None = "auto",
    ) -> None:
        self.backbone = backbone.eval()
        self.prior = resolve_prior(prior, backbone.info.extra.get("prior"))
        self.refiner = refine if isinstance(refine, Refiner) else refiner_with_options(
            refine, radius=window, temperature=temperature
        )
        self.pose_align = pose_align
        self.poses = check_poses(poses) if pose_align else ("identity",)
        if batch_size is not None and batch_size < 1:
            raise InputError("batch_size must be at least 1")
        if workers < 0:
            raise InputError("workers must be 0 or more")
        self.batch_size = batch_size
        self.workers = workers
        self.memory_budget = memory_budget
        self.pose_grid = pose_grid
        if pose_distance not in POSE_DISTANCES:
            raise InputError(f"pose distance must be one of {', '.join(POSE_DISTANCES)}, not "
                             f"{pose_distance!r}")
        self.pose_distance = pose_distance

    def conditioned(
        self,
        *,
        category: str | None = None,
        pair: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Matcher:
        """This matcher on its backbone with the condition fixed (see
        :attr:`~semcorr.features.base.Backbone.condition`); ``self`` when the features depend on
        the image only. The view shares the backbone's modules and the refinement rule.

        Args:
            category: the object's category (class-conditioned backbones).
            pair: the source and target images ``(3, H_i, W_i)`` (pair-conditioned backbones).
        """
        backbone = self.backbone.conditioned(category=category, pair=pair)
        if backbone is self.backbone:
            return self
        view = copy.copy(self)
        view.backbone = backbone
        return view

    @torch.inference_mode()
    def source_features(
        self, image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> SourceFeatures:
        """Features of the source ``(3, H, W)`` in every pose candidate.

        Args:
            image: ``(3, H, W)`` in [0, 1].
            mask: optional ``(H, W)`` boolean instance mask of the object, used by pose
                alignment (the masked instance matching distance).
        """
        check_shape(image, "3 H W", "source image")
        posed = [apply_pose(image, pose) for pose in self.poses]
        features, transforms = self.backbone.extract(posed)
        source = SourceFeatures(self.poses, features, transforms, image.shape[-1],
                                image.shape[-2])
        return source if mask is None else self.with_mask(source, mask)

    def with_mask(self, source: SourceFeatures, mask: torch.Tensor) -> SourceFeatures:
        """``source`` with the instance masks of ``mask`` ``(H, W)`` (original pixels) in
        every candidate, on the pose grid."""
        instance = torch.stack([
            mask_to_grid(apply_pose(mask.cpu(), pose), t, self.pose_grid)
            for pose, t in zip(source.poses, source.transforms, strict=True)
        ]).to(source.features.device)
        return dataclasses.replace(source, instance_masks=instance)

    def query_cells(
        self,
        source: SourceFeatures,
        points: torch.Tensor,
        flip_permutation: torch.Tensor | None,
    ) -> torch.Tensor:
        """Grid coordinates ``(K, N, 2)`` of the points in every candidate's frame (a flipped
        candidate queries each point at its partner's mirror)."""
        rows = []
        for k, pose in enumerate(source.poses):
            query = points
            if flip_permutation is not None and pose in FLIPPING_POSES:
                query = points[flip_permutation]
            posed = pose_points(query, source.width, source.height, pose)
            rows.append(source.transforms[k].to_grid(posed.to(source.features.device)))
        return torch.stack(rows)

    def query_descriptors(
        self,
        source: SourceFeatures,
        points: torch.Tensor,
        flip_permutation: torch.Tensor | None,
    ) -> torch.Tensor:
        """Descriptors ``(K, N, C)`` of the points in every candidate's frame (see
        :meth:`query_cells`)."""
        cells = self.query_cells(source, points, flip_permutation)
        return torch.stack([sample_descriptors(source.features[k : k + 1], cells[k : k + 1])[0]
                            for k in range(len(source.poses))])

    @staticmethod
    def check_points(points: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """Source points as a float ``(N, 2)`` tensor; refuses non-finite or outside points."""
        points = torch.as_tensor(points, dtype=torch.float32)
        if points.numel() == 0:
            return points.reshape(0, 2)
        check_shape(points, "N 2", "source points")
        if not torch.isfinite(points).all():
            raise InputError("source points must be finite numbers")
        outside = (~inside_image(points, width, height)).nonzero().flatten().tolist()
        if outside:
            first = points[outside[0]].tolist()
            raise InputError(
                f"source point {outside[0]} ({first[0]:g}, {first[1]:g}) is outside the "
                f"{width}x{height} source image"
            )
        return points

    @staticmethod
    def check_permutation(perm: Sequence[int] | None, n: int
                          ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The partner codes of :meth:`match` → the row each point is queried at in a flipped
        candidate ``(N,)`` (``None`` without codes) and whether a flipped candidate may replace
        the point's identity prediction ``(N,)`` bool."""
        if perm is None:
            return None, torch.ones(n, dtype=torch.bool)
        perm_t = torch.as_tensor(list(perm), dtype=torch.long)
        if perm_t.shape != (n,) or (perm_t >= n).any() or (perm_t < PARTNER_UNSEEN).any():
            raise InputError(f"flip_permutation must hold {n} indices below {n} "
                             f"({NO_PARTNER} = no partner, {PARTNER_UNSEEN} = partner not "
                             "among the points)")
        return torch.where(perm_t < 0, torch.arange(n), perm_t), perm_t != PARTNER_UNSEEN

    @torch.inference_mode()
    def match(
        self,
        source_image: torch.Tensor | SourceFeatures,
        target_images: Iterable[torch.Tensor | TargetFeatures],
        source_points: torch.Tensor | Sequence[Sequence[float]],
        flip_permutation: Sequence[int] | None = None,
        progress: Callable[[int], None] | None = None,
        source_mask: torch.Tensor | None = None,
        target_masks: Sequence[torch.Tensor | None] | None = None,
        category: str | None = None,
    ) -> list[MatchResult]:
        """Find the source points in every target.

        Args:
            source_image: ``(3, H, W)`` in [0, 1], or features from :meth:`source_features`.
            target_images: iterable of ``(3, H_i, W_i)`` images, of image file paths (decoded
                by ``workers`` threads ahead of the backbone, at most one batch ahead), or of
                :class:`TargetFeatures` from :meth:`target_features`; streamed in batches.
            source_points: ``(N, 2)`` (x, y) in source pixels.
            flip_permutation: optional ``(N,)`` left/right partner row of each point, used by
                flipped pose candidates: ``-1`` (:data:`~semcorr.match.pose.NO_PARTNER`) for a
                point on the symmetry axis, ``-2``
                (:data:`~semcorr.match.pose.PARTNER_UNSEEN`) for a point whose partner is not
                among the points. As in GeoAware-SC, a chosen flip replaces the identity
                prediction of every point but the ``-2`` ones; without codes, of every point.
            progress: called with the number of targets done after each batch.
            source_mask: optional ``(H, W)`` boolean instance mask of the source object.
            target_masks: optional instance masks ``(H_i, W_i)`` (or ``None``), one per target.
                Pose alignment uses the instance-mask distance for a batch of targets when the
                source and every target of the batch have masks (and ``pose_distance`` is not
                ``mutual-nn``), else the mutual-nearest-neighbour distance.
            category: the object's category, for a backbone whose features depend on it
                (e.g. an SD4Match class prompt); ignored by the others.

        With a backbone whose features depend on the pair (e.g. an SD4Match conditional
        prompt), each target is matched on features conditioned on (source, target); the images
        must then be given, not precomputed features.

        Returns:
            One :class:`MatchResult` per target, in order.
        """
        condition = self.backbone.condition
        if condition == "category":
            if category is None:
                raise InputError(f"{self.backbone.info.name}: the features depend on the "
                                 "object's category; pass category= (on the command line: "
                                 "--backbone-option category=NAME)")
            return self.conditioned(category=category).match(
                source_image, target_images, source_points, flip_permutation, progress,
                source_mask, target_masks)
        if condition == "pair":
            return self._match_pairwise(source_image, target_images, source_points,
                                        flip_permutation, progress, source_mask, target_masks,
                                        category)
        if not isinstance(source_image, SourceFeatures):
            source = self.source_features(source_image, source_mask)
        elif source_mask is not None and self.pose_align:
            source = self.with_mask(source_image, source_mask)
        else:
            source = source_image
        points = self.check_points(source_points, source.width, source.height)
        perm, flip_keep = self.check_permutation(flip_permutation, points.shape[0])
        cells = self.query_cells(source, points, perm)  # (K, N, 2)
        descriptors = torch.stack([  # (K, N, C)
            sample_descriptors(source.features[k : k + 1], cells[k : k + 1])[0]
            for k in range(len(source.poses))])
        masks = list(target_masks) if target_masks is not None else None
        size = self.batch_size_for(source, points.shape[0])
        results: list[MatchResult] = []
        batch: list[torch.Tensor] = []
        workers = self._decoders(target_images)
        stream = prefetch(target_images, decode_target, workers, size + workers)
        with closing(stream):
            for image in stream:
                if not isinstance(image, TargetFeatures):
                    check_shape(image, "3 H W", "target image")
                batch.append(image)
                if len(batch) == size:
                    results.extend(self._match_batch(source, descriptors, flip_keep, batch, cells,
                                                     _slice(masks, len(results), len(batch))))
                    batch = []
                    if progress is not None:
                        progress(size)
        if batch:
            results.extend(self._match_batch(source, descriptors, flip_keep, batch, cells,
                                             _slice(masks, len(results), len(batch))))
            if progress is not None:
                progress(len(batch))
        return results

    def _match_pairwise(
        self,
        source_image: torch.Tensor | SourceFeatures,
        target_images: Iterable[torch.Tensor | TargetFeatures],
        source_points: torch.Tensor | Sequence[Sequence[float]],
        flip_permutation: Sequence[int] | None,
        progress: Callable[[int], None] | None,
        source_mask: torch.Tensor | None,
        target_masks: Sequence[torch.Tensor | None] | None,
        category: str | None,
    ) -> list[MatchResult]:
        """:meth:`match` for a pair-conditioned backbone: one conditioned view per target."""
        name = self.backbone.info.name
        if isinstance(source_image, SourceFeatures):
            raise InputError(f"{name}: the features depend on the pair; give the source image, "
                             "not precomputed features")
        check_shape(source_image, "3 H W", "source image")
        masks = list(target_masks) if target_masks is not None else None
        results: list[MatchResult] = []
        workers = self._decoders(target_images)
        targets = prefetch(target_images, decode_target, workers, 1 + workers)
        with closing(targets):
            for index, target in enumerate(targets):
                if isinstance(target, TargetFeatures):
                    raise InputError(f"{name}: the features depend on the pair; give target "
                                     "images, not precomputed features")
                check_shape(target, "3 H W", "target image")
                view = self.conditioned(pair=(source_image, target), category=category)
                results.extend(view.match(source_image, [target], source_points, flip_permutation,
                                          None, source_mask, _slice(masks, index, 1)))
                if progress is not None:
                    progress(1)
        return results

    def _decoders(self, targets: Iterable[object]) -> int:
        """Decoding threads for ``targets``: none for a list holding no path (nothing to
        decode, e.g. one pair at a time in evaluation), else ``workers``."""
        if isinstance(targets, Sequence) and not any(
                isinstance(t, (str, os.PathLike)) for t in targets):
            return 0
        return self.workers

    def batch_size_for(self, source: SourceFeatures, queries: int) -> int:
        """Targets per batch: ``batch_size``, or when ``None`` the memory rule of
        :mod:`semcorr.features.batching` for this source's feature size and ``queries``
        points per target."""
        if self.batch_size is not None:
            return self.batch_size
        need = per_target_bytes(source.features, self.backbone.image_size, queries)
        return auto_batch_size(need, self.memory_budget, source.features.device)

    def choose_poses(
        self,
        source: SourceFeatures,
        target_features: torch.Tensor,
        target_masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick a candidate per target: the lowest instance matching distance, identity on a
        tie (a flip must be strictly closer, as in GeoAware-SC).

        Args:
            source: the source's candidate features.
            target_features: ``(B, C, h, w)``.
            target_masks: ``(B, S, S)`` instance masks of the targets on the pose grid (see
                :func:`mask_to_grid`): the instance-mask distance, with the source's
                ``instance_masks``; ``None``: mutual nearest neighbours over every cell (of
                the native grid, or of ``pose_grid²`` when the native grid is finer).

        Returns:
            chosen: ``(B,)`` candidate index; distances: ``(K, B)``.
        """
        b = target_features.shape[0]
        if len(source.poses) == 1:
            return target_features.new_zeros(b, dtype=torch.long), target_features.new_zeros(1, b)
        if target_masks is not None and source.instance_masks is None:
            raise InputError("the instance-mask distance needs the source's mask too")
        rows = []
        for k in range(len(source.poses)):
            posed = source.features[k : k + 1].expand(b, -1, -1, -1)
            if target_masks is None:
                rows.append(mutual_nn_distance(posed, target_features,
                                               max_size=self.pose_grid))
            else:
                mask = source.instance_masks[k : k + 1].expand(b, -1, -1)
                rows.append(mask_distance(posed, target_features, mask, target_masks,
                                          size=self.pose_grid))
        distances = torch.stack(rows)
        return distances.argmin(dim=0), distances

    @torch.inference_mode()
    def target_features(self, image: torch.Tensor) -> TargetFeatures:
        """Features of one target ``(3, H, W)``, to reuse across several sources."""
        check_shape(image, "3 H W", "target image")
        features, transforms = self.backbone.extract([image])
        return TargetFeatures(features[0], transforms[0])

    def _target_batch(
        self, items: list[torch.Tensor | TargetFeatures]
    ) -> tuple[torch.Tensor, list[ResizePad]]:
        """Features ``(B, C, h, w)`` and transforms of images and/or precomputed targets."""
        todo = [i for i, item in enumerate(items) if not isinstance(item, TargetFeatures)]
        computed: dict[int, TargetFeatures] = {}
        if todo:
            features, transforms = self.backbone.extract([items[i] for i in todo])
            computed = {i: TargetFeatures(f, t) for i, f, t in zip(todo, features, transforms)}
        ready = [computed.get(i, item) for i, item in enumerate(items)]
        return torch.stack([t.features for t in ready]), [t.transform for t in ready]

    def _match_batch(
        self,
        source: SourceFeatures,
        descriptors: torch.Tensor,
        flip_keep: torch.Tensor,
        images: list[torch.Tensor | TargetFeatures],
        cells: torch.Tensor,
        instance_masks: list[torch.Tensor | None] | None = None,
    ) -> list[MatchResult]:
        features, transforms = self._target_batch(images)
        masks = torch.stack([t.valid_cells(features.device) for t in transforms])  # (B, h, w)
        metric = self._pose_metric(source, instance_masks) if self.pose_align else ""
        pose_masks = None
        if metric == "mask":
            pose_masks = torch.stack([
                mask_to_grid(m.cpu(), t, self.pose_grid)
                for m, t in zip(instance_masks or [], transforms, strict=True)
            ]).to(features.device)
        chosen, distances = self.choose_poses(source, features, pose_masks)
        queries = self._merged_queries(source.poses, descriptors.to(features.device), chosen,
                                       flip_keep.to(features.device))
        if queries.shape[1] == 0:
            found = features.new_zeros(len(images), 0, 2)
            scores = features.new_zeros(len(images), 0)
        else:
            similarity = cosine_similarity(queries, F.normalize(features, dim=1))
            if self.prior is not None:
                similarity = self._with_prior(source, features, masks, similarity, cells,
                                              chosen, flip_keep.to(features.device))
            found, scores = self.refiner(similarity, masks)
        results = []
        for i, transform in enumerate(transforms):
            k = int(chosen[i])
            results.append(
                MatchResult(
                    points=transform.from_grid(found[i].float()).cpu(),
                    scores=scores[i].float().cpu(),
                    pose=source.poses[k],
                    pose_distances=(
                        {p: float(distances[j, i]) for j, p in enumerate(source.poses)}
                        if self.pose_align
                        else {}
                    ),
                    pose_metric=metric,
                )
            )
        return results

    def _with_prior(self, source: SourceFeatures, features: torch.Tensor, valid: torch.Tensor,
                    similarity: torch.Tensor, cells: torch.Tensor, chosen: torch.Tensor,
                    flip_keep: torch.Tensor) -> torch.Tensor:
        """Similarities ``(B, N, h, w)`` with :attr:`prior` applied per target: the affine map
        of each target is fitted from the candidate each point is queried in (``cells``
        ``(K, N, 2)``; a flipped candidate keeps the identity for a point it may not
        replace)."""
        assert self.prior is not None
        flipping = torch.tensor([p in FLIPPING_POSES for p in source.poses])
        rows = []
        for i in range(features.shape[0]):  # a loop over targets; points stay batched
            k = int(chosen[i])
            use = torch.where(flipping[k] & ~flip_keep.cpu(), 0, k).to(cells.device)  # (N,)
            adjusted = similarity[i]
            for pose in use.unique().tolist():
                fit = self.prior.fit_pair(source.features[pose], features[i],
                                          source.transforms[pose].valid_cells(features.device),
                                          valid[i])
                moved = self.prior.apply_fit(similarity[i], cells[pose], fit)
                adjusted = torch.where((use == pose)[:, None, None], moved, adjusted)
            rows.append(adjusted)
        return torch.stack(rows)

    def _pose_metric(self, source: SourceFeatures,
                     target_masks: list[torch.Tensor | None] | None) -> str:
        """``mask`` or ``mutual-nn``: the distance a batch of targets is aligned with."""
        have_masks = (source.instance_masks is not None and target_masks is not None
                      and all(m is not None for m in target_masks))
        if self.pose_distance == "mutual-nn" or (self.pose_distance == "auto" and not have_masks):
            return "mutual-nn"
        if not have_masks:
            raise InputError("pose distance 'mask' needs an instance mask of the source and "
                             "of every target")
        return "mask"

    @staticmethod
    def _merged_queries(poses: Sequence[str], descriptors: torch.Tensor, chosen: torch.Tensor,
                        flip_keep: torch.Tensor) -> torch.Tensor:
        """Query descriptors ``(B, N, C)`` per target: the chosen candidate's, except that a
        flipped candidate keeps the identity descriptor of a point it may not replace."""
        flipping = torch.tensor([p in FLIPPING_POSES for p in poses], device=chosen.device)
        identity = flipping[chosen][:, None] & ~flip_keep[None, :]  # (B, N)
        return torch.where(identity[..., None], descriptors[0][None], descriptors[chosen])


def decode_target(item: torch.Tensor | TargetFeatures | str | os.PathLike[str]
                  ) -> torch.Tensor | TargetFeatures:
    """A target as :meth:`Matcher.match` uses it: a path is decoded (:func:`load_image`),
    anything else is passed through."""
    if isinstance(item, (str, os.PathLike)):
        return load_image(item)
    return item


def _slice(masks: list[torch.Tensor | None] | None, start: int, count: int
           ) -> list[torch.Tensor | None] | None:
    """The masks of targets ``start .. start + count`` (``None`` when none were given)."""
    if masks is None:
        return None
    if start + count > len(masks):
        raise InputError(f"{len(masks)} target masks for more targets")
    return masks[start:start + count]
