"""The inference side of ``semcorr serve``: an expensive :meth:`set_pair`, then cheap queries.

SAM2's predictor shape: the features of a (source, target) pair — the source in every pose
candidate, the target once, and the pose choice — are computed once by :meth:`set_pair` and
cached; each click is then a descriptor lookup, one similarity and one refinement. All model
work runs under one lock; the device is the backbone's, chosen once by the caller.
"""

from __future__ import annotations

import io
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from semcorr.errors import InputError
from semcorr.features.base import Backbone
from semcorr.geometry import ResizePad, inside_image
from semcorr.match.pose import pose_points
from semcorr.match.refine import Refiner, list_refiners, refiner_with_options
from semcorr.match.similarity import cosine_similarity, sample_descriptors
from semcorr.options import int_at_least
from semcorr.pipeline import Matcher, MatchResult, SourceFeatures
from semcorr.server.uploads import ImageStore, StoredImage, decode_image_bytes

__all__ = ["CorrespondenceService", "PairFeatures", "ServiceLimits", "similarity_to_image"]

#: Pose candidates the page can toggle between.
POSES = ("identity", "hflip")


@dataclass(frozen=True)
class ServiceLimits:
    """Hardening limits of the server.

    Attributes:
        max_upload_bytes: largest accepted upload (and request body).
        max_pixels: largest accepted image, in pixels.
        max_images: uploads kept in memory before the least recently used is evicted.
        max_total_pixels: pixels of all uploads kept together (evicting beyond it).
        max_pairs: pairs whose features stay cached.
        max_points: points per match request.
    """

    max_upload_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_images: int = 16
    max_total_pixels: int = 100_000_000
    max_pairs: int = 4
    max_points: int = 256

    def __post_init__(self) -> None:
        """Refuse limits that cannot work (a pair needs two stored images)."""
        minimums = {"max_upload_bytes": 1, "max_pixels": 1, "max_images": 2,
                    "max_total_pixels": 1, "max_pairs": 1, "max_points": 1}
        for name, minimum in minimums.items():
            object.__setattr__(self, name, int_at_least(name, getattr(self, name), minimum))


@dataclass
class PairFeatures:
    """Everything a click on a (source, target) pair needs, computed once.

    Attributes:
        source: the source's features in each pose candidate ``(K, C, h, w)``.
        target: the target's features ``(1, C, h, w)``.
        transform: the target's resize/pad transform.
        valid: ``(1, h, w)`` content mask of the target's grid.
        aligned: index of the candidate chosen by pose alignment.
        pose_distances: instance matching distance of each candidate.
    """

    source: SourceFeatures
    target: torch.Tensor
    transform: ResizePad
    valid: torch.Tensor
    aligned: int
    pose_distances: dict[str, float]


def similarity_to_image(similarity: torch.Tensor, transform: ResizePad) -> torch.Tensor:
    """A similarity map on the feature grid → the original image's pixels.

    The grid is upsampled to the backbone input (cell centres land on their input pixels,
    ``align_corners=False``), the padding is cropped and the content resized to the original.

    Args:
        similarity: ``(B, 1, h, w)``.
        transform: the image's resize/pad transform.

    Returns:
        ``(B, 1, H, W)`` with ``H, W`` the original size.
    """
    size = transform.grid_size * transform.stride
    full = F.interpolate(similarity.float(), size=(size, size), mode="bilinear",
                         align_corners=False)
    left, top = transform.pad
    w, h = transform.resized
    content = full[..., top : top + h, left : left + w]
    return F.interpolate(content, size=(transform.height, transform.width), mode="bilinear",
                         align_corners=False)


#: Anchor colours of the heat map, low → high (a blue-to-red ramp).
_RAMP = np.array([[48, 18, 59], [40, 130, 240], [30, 220, 170], [240, 220, 40], [220, 30, 20]],
                 dtype=np.float32)


#: Contrast of the heat map: min-max scaled values are raised to this power, so the few cells
#: near the best similarity stand out of the broad plateau cosine similarities form.
HEAT_GAMMA = 4.0


def _heat_png(values: torch.Tensor) -> bytes:
    """``(H, W)`` values → an RGBA PNG: min-max scaled, raised to :data:`HEAT_GAMMA`, through
    :data:`_RAMP`; alpha rises with the value so the image stays visible beneath low values."""
    v = values.detach().float().cpu()
    lo, hi = float(v.min()), float(v.max())
    t = ((v - lo) / max(hi - lo, 1e-12)).pow(HEAT_GAMMA).numpy()
    stops = np.linspace(0.0, 1.0, len(_RAMP))
    rgb = np.stack([np.interp(t, stops, _RAMP[:, c]) for c in range(3)], axis=-1)
    alpha = 40 + 200 * t
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _as_points(points: list[list[float]] | torch.Tensor) -> torch.Tensor:
    """Points as a float tensor, ``(0, 2)`` when empty (the shape is checked by the caller)."""
    try:
        tensor = torch.as_tensor(points, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise InputError("points must be a list of [x, y] number pairs") from None
    return tensor.reshape(0, 2) if tensor.numel() == 0 else tensor


class CorrespondenceService:
    """Images, cached pair features and point queries behind one inference lock.

    Args:
        backbone: a dense backbone, already on its device.
        backbone_name: the name written into downloaded ``matches.json``.
        limits: hardening limits.
        samples: load the bundled sample images as pinned ids ``sample-0``, ``sample-1``, ...
        pose_grid: side of the grid pose alignment compares the pair on.
    """

    def __init__(self, backbone: Backbone, backbone_name: str = "backbone",
                 limits: ServiceLimits | None = None, samples: bool = True,
                 pose_grid: int = 64) -> None:
        self.limits = limits or ServiceLimits()
        self.backbone_name = backbone_name
        self.matcher = Matcher(backbone, refine="window", pose_align=True, poses=POSES,
                               pose_grid=pose_grid)
        self.device = backbone.device
        preferred = dict(backbone.info.extra.get("refine") or {})  # e.g. SD4Match's kernel
        self.refiners: dict[str, Refiner] = {
            name: refiner_with_options(name, **{k: v for k, v in preferred.items()
                                                if k != "name" and name == preferred["name"]})
            for name in list_refiners()
        }
        self.store = ImageStore(self.limits.max_images, self.limits.max_total_pixels,
                                on_evict=self._forget)
        self._pairs: OrderedDict[tuple[str, str], PairFeatures] = OrderedDict()
        self._sources: OrderedDict[str, SourceFeatures] = OrderedDict()
        self._targets: OrderedDict[str, tuple[torch.Tensor, list[ResizePad]]] = OrderedDict()
        self._lock = threading.Lock()
        self.sample_points: list[list[float]] = []
        self.sample_point_names: list[str] = []
        if samples:
            self._add_samples()

    # ----------------------------------------------------------------------------- images
    def _add_samples(self) -> None:
        from semcorr.io import load_image
        from semcorr.samples import load_samples

        pair = load_samples()
        for index, path in enumerate([pair.source, *pair.targets]):
            self.store.add(load_image(path), Path(path).name, pinned=True,
                           image_id=f"sample-{index}")
        self.sample_points = pair.points.tolist()
        self.sample_point_names = list(pair.point_names)

    def add_upload(self, data: bytes, filename: str | None) -> StoredImage:
        """Decode and store an upload (sniffed by content; the name is for display only)."""
        label = f"upload {filename!r}" if filename else "upload"
        image = decode_image_bytes(data, label, self.limits.max_upload_bytes,
                                   self.limits.max_pixels)
        return self.store.add(image, filename)

    def _forget(self, image_id: str) -> None:
        """Drop the cached features of an evicted image."""
        with self._lock:
            for cache in (self._pairs, self._sources, self._targets):
                for key in [k for k in cache
                            if k == image_id or (isinstance(k, tuple) and image_id in k)]:
                    del cache[key]

    # ------------------------------------------------------------------------------ pairs
    @staticmethod
    def _cached(cache: OrderedDict, key: object, compute: Callable[[], object],
                size: int) -> object:
        """``cache[key]``, computed on a miss; least recently used entries beyond ``size`` go."""
        if key not in cache:
            cache[key] = compute()
            while len(cache) > size:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    def _compute_pair(self, source: StoredImage, target: StoredImage) -> PairFeatures:
        size = self.limits.max_pairs
        if self.matcher.backbone.condition == "pair":  # features of this pair only: no reuse
            view = self.matcher.conditioned(pair=(source.image, target.image))
            source_features = view.source_features(source.image)
            target_features, transforms = view.backbone.extract([target.image])
        else:
            source_features = self._cached(
                self._sources, source.id, lambda: self.matcher.source_features(source.image),
                size)
            target_features, transforms = self._cached(
                self._targets, target.id, lambda: self.backbone_extract(target.image), size)
        valid = transforms[0].valid_cells(target_features.device)[None]
        chosen, distances = self.matcher.choose_poses(source_features, target_features)
        return PairFeatures(
            source=source_features,
            target=target_features,
            transform=transforms[0],
            valid=valid,
            aligned=int(chosen[0]),
            pose_distances={p: float(distances[k, 0]) for k, p in enumerate(POSES)},
        )

    def backbone_extract(self, image: torch.Tensor) -> tuple[torch.Tensor, list[ResizePad]]:
        """Features ``(1, C, h, w)`` of one image ``(3, H, W)`` and its transform."""
        return self.matcher.backbone.extract([image])

    def set_pair(self, source_id: str, target_id: str) -> PairFeatures:
        """The cached features of a pair, computed on first use (the expensive step).

        The source's features (in every pose candidate) and the target's are cached by image,
        so a new pair sharing an image with a recent one only computes the other.

        Raises:
            UnknownImageError: an id not in the store.
        """
        source, target = self.store.get(source_id), self.store.get(target_id)
        with self._lock, torch.inference_mode():
            return self._cached(self._pairs, (source_id, target_id),
                                lambda: self._compute_pair(source, target), self.limits.max_pairs)

    # ---------------------------------------------------------------------------- queries
    def _check_points(self, points: torch.Tensor, image: StoredImage) -> torch.Tensor:
        if points.ndim != 2 or points.shape[-1] != 2:
            raise InputError(f"points must be a list of [x, y] pairs, got {tuple(points.shape)}")
        if points.shape[0] > self.limits.max_points:
            raise InputError(f"{points.shape[0]} points is over the limit of "
                             f"{self.limits.max_points} per request")
        if not torch.isfinite(points).all():
            raise InputError("points must be finite numbers")
        outside = (~inside_image(points, image.width, image.height)).nonzero().flatten()
        if outside.numel():
            i = int(outside[0])
            x, y = points[i].tolist()
            raise InputError(f"point {i} ({x:g}, {y:g}) is outside the {image.width}x"
                             f"{image.height} source image {image.name!r}")
        return points

    def _descriptors(self, pair: PairFeatures, points: torch.Tensor, k: int) -> torch.Tensor:
        """Descriptors ``(1, N, C)`` of source points in candidate ``k``'s frame."""
        source = pair.source
        posed = pose_points(points, source.width, source.height, source.poses[k])
        cells = source.transforms[k].to_grid(posed.to(source.features.device))
        return sample_descriptors(source.features[k : k + 1], cells[None])

    def _similarity(self, pair: PairFeatures, points: torch.Tensor, pose_align: bool
                    ) -> tuple[torch.Tensor, int]:
        k = pair.aligned if pose_align else 0
        queries = self._descriptors(pair, points, k)
        return cosine_similarity(queries, F.normalize(pair.target, dim=1)), k

    def match(self, source_id: str, target_id: str, points: list[list[float]] | torch.Tensor,
              pose_align: bool = True, refine: str = "window") -> MatchResult:
        """Find source points ``(N, 2)`` in the target (cheap once the pair is set).

        Returns:
            A :class:`~semcorr.pipeline.MatchResult` (points ``(N, 2)`` in target pixels).

        Raises:
            InputError: malformed points, a point outside the source, an unknown rule.
            UnknownImageError: an id not in the store.
        """
        if refine not in self.refiners:
            raise InputError(f"unknown refinement rule {refine!r} "
                             f"(choose from {', '.join(self.refiners)})")
        source = self.store.get(source_id)
        query = self._check_points(_as_points(points), source)
        pair = self.set_pair(source_id, target_id)
        with self._lock, torch.inference_mode():
            if query.shape[0] == 0:
                cells, scores = pair.target.new_zeros(1, 0, 2), pair.target.new_zeros(1, 0)
                k = pair.aligned if pose_align else 0
            else:
                similarity, k = self._similarity(pair, query, pose_align)
                cells, scores = self.refiners[refine](similarity, pair.valid)
            found = pair.transform.from_grid(cells[0].float()).cpu()
        return MatchResult(points=found, scores=scores[0].float().cpu(),
                           pose=POSES[k], pose_distances=dict(pair.pose_distances))

    def heatmap(self, source_id: str, target_id: str, x: float, y: float,
                pose_align: bool = True) -> bytes:
        """The similarity of one source point over the target, as an RGBA PNG of the target's
        size (min-max scaled)."""
        source = self.store.get(source_id)
        point = self._check_points(torch.tensor([[x, y]], dtype=torch.float32), source)
        pair = self.set_pair(source_id, target_id)
        with self._lock, torch.inference_mode():
            similarity, _ = self._similarity(pair, point, pose_align)  # (1, 1, h, w)
            similarity = similarity.masked_fill(~pair.valid[:, None], similarity.min())
            values = similarity_to_image(similarity, pair.transform)[0, 0]
        return _heat_png(values)

    def matches_json(self, source_id: str, target_id: str, points: list[list[float]],
                     pose_align: bool = True, refine: str = "window") -> bytes:
        """The matches as the ``matches.json`` that ``semcorr match`` writes."""
        from semcorr.cli.match import write_matches

        result = self.match(source_id, target_id, points, pose_align, refine)
        source, target = self.store.get(source_id), self.store.get(target_id)
        query = _as_points(points)
        with tempfile.TemporaryDirectory(prefix="semcorr-serve-") as tmp:
            path = write_matches(Path(tmp), source.name, self.backbone_name, query,
                                 [target.name], [result])
            return path.read_bytes()
