"""Bounded-memory label propagation through a video (the CRW / DIFT protocol).

The reference is DIFT's ``eval_davis.py`` (github.com/Tsingularity/dift, which says it follows
DINO's DAVIS evaluation, itself taken from UVC), read for facts; CRW's ``code/test.py`` and
``code/utils/test_utils.py`` (github.com/ajabri/videowalk) describe the same algorithm in a
batched form. Per target frame ``t`` (citations are ``eval_davis.py`` lines):

* **Context** (l.43-69): the first frame with its given labels, plus the last ``n`` frames
  (``--n_last_frames``) with their *propagated* soft labels, kept in a FIFO queue that starts
  empty and drops its oldest entry once full. The labels queued are the raw propagated ones
  (before upsampling and min-max normalisation, l.68).
* **Affinity** (l.129-133): features are L2-normalised over channels; the affinity of a target
  cell (query) to every context cell (key) is ``exp(<f_t, f_c> / temperature)``.
* **Radius** (l.83-97, l.135-139): when ``size_mask_neighborhood = r > 0``, a key counts only if
  ``|di| <= r`` and ``|dj| <= r`` (a square window of side ``2r + 1`` cells), in *every*
  context frame including the first.
* **Top-k** (l.141-146): per query, over all context frames at once, affinities below the k-th
  largest are zeroed and the rest divided by their sum.
* **Labels** (l.150-156): the target's soft labels are that weighted sum of the context labels.

Here the masked exponential + top-k + normalisation is computed as a softmax over the k largest
masked logits (``-inf`` outside the window, never a multiplied zero), which is the same number;
the only difference is a tie at the k-th value, where DIFT keeps every tied key and ``topk``
keeps k of them. CRW's ``test.py`` differs from DIFT in three details that we do *not* follow:
its short context starts filled with copies of the first frame, its radius is a disc
(``distance < r``, ``utils/__init__.py`` ``MaskedAttention.make``), and it leaves the first
frame unmasked (``test_utils.py`` ``mem_efficient_batched_affinity``).

The label conversions (points ↔ heatmaps, index masks ↔ one-hot) are in
:mod:`semcorr.track.labels` and re-exported here.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from semcorr.conventions import check_shape
from semcorr.errors import InputError
from semcorr.track.labels import labels_to_mask, labels_to_points, mask_to_labels, points_to_labels

__all__ = [
    "LabelPropagator",
    "PropagationConfig",
    "labels_to_mask",
    "labels_to_points",
    "mask_to_labels",
    "plan_bands",
    "points_to_labels",
    "propagate_labels",
]

#: Largest number of affinity entries computed at once (queries are processed in chunks).
_CHUNK_ENTRIES = 1 << 24


@dataclass(frozen=True)
class PropagationConfig:
    """Hyperparameters of :class:`LabelPropagator`.

    Attributes:
        context: last ``n`` frames kept besides the first (DIFT/CRW ``n_last_frames`` /
            ``videoLen``).
        topk: number of context cells each target cell takes its label from.
        radius: half side, in feature cells, of the square window a key must lie in
            (DIFT ``size_mask_neighborhood``); ``0`` disables the restriction.
        temperature: softmax temperature on the cosine affinities.
        presence_margin: the out-of-view decision for mask objects (not part of DIFT or CRW;
            ``None``, the default, leaves it off): after each step, an object whose predicted
            region looks on average more like the first frame's other labels than like the
            first frame's own object, by more than ``-presence_margin`` in cosine, is declared
            out of view and its weight handed to the background (see
            :meth:`LabelPropagator.step`).
        presence_ratio: with ``presence_margin``, also drop an object whose margin falls below
            this fraction of its own margin at the first step it was seen (``None``: the
            absolute margin alone). Margins differ between objects and backbones; an object
            in view keeps a margin near the one it had one frame after it was labelled, and
            one that has left falls to about zero.
    """

    context: int = 20
    topk: int = 10
    radius: float = 12.0
    temperature: float = 0.1
    presence_margin: float | None = None
    presence_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.context < 0:
            raise InputError(f"--context must be >= 0, got {self.context}")
        if self.topk < 1:
            raise InputError(f"--topk must be >= 1, got {self.topk}")
        if not self.radius >= 0:
            raise InputError(f"--radius must be >= 0, got {self.radius}")
        if not self.temperature > 0:
            raise InputError(f"--temperature must be > 0, got {self.temperature}")
        if self.presence_margin is not None and not math.isfinite(self.presence_margin):
            raise InputError(f"--presence-margin must be finite, got {self.presence_margin}")
        if self.presence_ratio is not None and not 0 <= self.presence_ratio <= 1:
            raise InputError(f"--presence-ratio must be in [0, 1], got {self.presence_ratio}")


#: One chunk of a propagation step: query cells, the key cells they can reach (slices of the
#: flattened grid) and which of those lie in each query's window (``None``: all).
Band = tuple[slice, slice, "Tensor | None"]


def plan_bands(h: int, w: int, radius: float, frames: int,
               device: torch.device | None = None) -> list[Band]:
    """Split the target's cells into bands of rows; with a radius, a band only sees the key
    rows within ``radius`` of it, so keys outside are never computed, and each query's square
    window (``|di| <= radius`` and ``|dj| <= radius``, DIFT's ``restrict_neighborhood``) is
    precomputed as a ``(q, k)`` bool mask.

    Args:
        h, w: the grid.
        radius: window half side in cells (``<= 0``: no window).
        frames: the most context frames a step will use (bounds a chunk's memory).
    """
    reach = int(math.floor(radius)) if radius > 0 else h
    rows = max(1, min(h, reach))  # query rows per band: about the radius
    while rows > 1 and rows * w * frames * min(h, rows + 2 * reach) * w > _CHUNK_ENTRIES:
        rows //= 2  # memory of one band's affinities
    bands: list[Band] = []
    for top in range(0, h, rows):  # a loop over bands of rows, for memory and locality
        bottom = min(h, top + rows)
        k0, k1 = max(0, top - reach), min(h, bottom + reach)
        queries, keys = slice(top * w, bottom * w), slice(k0 * w, k1 * w)
        window = None
        if radius > 0:
            q = torch.arange(queries.start, queries.stop, device=device)
            k = torch.arange(keys.start, keys.stop, device=device)
            near_rows = (torch.div(q, w, rounding_mode="floor")[:, None]
                         - torch.div(k, w, rounding_mode="floor")[None]).abs() <= radius
            window = near_rows & (((q % w)[:, None] - (k % w)[None]).abs() <= radius)
        bands.append((queries, keys, window))
    return bands


def propagate_labels(
    query: Tensor, keys: Tensor, labels: Tensor, config: PropagationConfig,
    grid: tuple[int, int], bands: list[Band] | None = None,
) -> Tensor:
    """Labels of a target frame from its context.

    Args:
        query: L2-normalised target features ``(C, Q)``, ``Q = h * w``.
        keys: L2-normalised context features ``(N, C, Q)`` (N context frames).
        labels: context soft labels ``(N, K, Q)``.
        config: top-k, temperature and radius.
        grid: ``(h, w)``.
        bands: :func:`plan_bands` for this grid and radius (made here when ``None``).

    Returns:
        ``(K, Q)`` soft labels of the target.
    """
    n = keys.shape[0]
    if bands is None:
        bands = plan_bands(*grid, config.radius, n, query.device)
    scaled = query.T / config.temperature  # (Q, C)
    out = []
    for queries, reach, window in bands:
        band_keys = keys[:, :, reach]  # (N, C, q_k)
        cells = band_keys.shape[-1]
        logits = torch.einsum("qc,nck->qnk", scaled[queries], band_keys)  # (q, N, q_k)
        if window is not None:
            logits.masked_fill_(~window[:, None, :], float("-inf"))
        k = min(config.topk, n * cells)
        top, index = logits.reshape(logits.shape[0], n * cells).topk(k, dim=1)  # (q, k)
        weights = torch.softmax(top, dim=1)
        band_labels = labels[:, :, reach].permute(1, 0, 2).reshape(labels.shape[1], n * cells)
        out.append((band_labels[:, index] * weights[None]).sum(-1))  # (K, q)
    return torch.cat(out, dim=1)


class LabelPropagator:
    """Bounded-memory label propagation (Jabri et al. CRW / DIFT protocol).

    Feed the first frame with :meth:`start`, then every following frame with :meth:`step`; it
    keeps the first frame and the last ``config.context`` frames (a bounded deque), so memory is
    flat in the length of the video.

    Example::

        prop = LabelPropagator(PropagationConfig(context=7, topk=5, radius=12))
        prop.start(features[0], mask_to_labels(first_mask, num_objects=2))
        for f in features[1:]:
            labels = prop.step(f)  # (K, h, w)
    """

    def __init__(self, config: PropagationConfig) -> None:
        self.config = config
        self._first: tuple[Tensor, Tensor] | None = None
        self._recent: deque[tuple[Tensor, Tensor]] = deque(maxlen=max(config.context, 1))
        self._grid: tuple[int, int] | None = None
        self._bands: list[Band] = []
        self._mask_channels = 0
        self._first_owner: Tensor | None = None
        self._first_appearance: Tensor | None = None
        self._reference_margin: dict[int, float] = {}

    @property
    def grid(self) -> tuple[int, int] | None:
        """``(h, w)`` of the feature grid once started."""
        return self._grid

    def start(self, features: Tensor, labels: Tensor, mask_channels: int = 0,
              appearance: Tensor | None = None) -> None:
        """Begin a video.

        Args:
            features: first-frame features ``(C, h, w)``.
            labels: its soft labels ``(K, h, w)`` (one-hot masks, or heatmaps).
            mask_channels: the last ``mask_channels`` labels are a mask's one-hot channels,
                background first (what ``config.presence_margin`` acts on; 0: none).
            appearance: ``(A, h, w)`` what the out-of-view decision compares instead of the
                features (then every :meth:`step` gives one too); None: the features.
        """
        dims = check_shape(features, "C h w", "features")
        check_shape(labels, f"K {dims['h']} {dims['w']}", "labels")
        if not 0 <= mask_channels <= labels.shape[0]:
            raise InputError(f"mask_channels={mask_channels} but there are "
                             f"{labels.shape[0]} labels")
        self._mask_channels = mask_channels
        self._first_owner = (labels[labels.shape[0] - mask_channels:].flatten(1).argmax(0)
                             if mask_channels > 1 else None)
        if appearance is not None:
            check_shape(appearance, f"A {dims['h']} {dims['w']}", "appearance")
        self._first_appearance = None if appearance is None else _normalise(appearance)
        self._reference_margin = {}
        h, w = dims["h"], dims["w"]
        self._grid = (h, w)
        self._first = (_normalise(features), labels.reshape(labels.shape[0], h * w).float())
        self._recent.clear()
        self._bands = plan_bands(h, w, self.config.radius, 1 + self.config.context,
                                 features.device)

    def step(self, features: Tensor, appearance: Tensor | None = None) -> Tensor:
        """Propagate the labels to the next frame.

        Args:
            features: this frame's features ``(C, h, w)`` (same grid as the first).
            appearance: this frame's ``(A, h, w)`` when :meth:`start` was given one.

        Returns:
            Its soft labels ``(K, h, w)``.
        """
        if self._first is None or self._grid is None:
            raise RuntimeError("LabelPropagator.step() before start()")
        h, w = self._grid
        check_shape(features, f"{self._first[0].shape[0]} {h} {w}", "features")
        query = _normalise(features)
        context = [self._first, *self._recent]
        keys = torch.stack([f for f, _ in context])
        labels = torch.stack([lab for _, lab in context])
        out = propagate_labels(query, keys, labels, self.config, self._grid, self._bands)
        if self.config.presence_margin is not None and self._first_owner is not None:
            if (appearance is None) != (self._first_appearance is None):
                raise InputError("give an appearance to every step() or to none, as to start()")
            if appearance is None:
                out = self._drop_absent_objects(query, self._first[0], out)
            else:
                assert self._first_appearance is not None
                check_shape(appearance, f"{self._first_appearance.shape[0]} {h} {w}",
                            "appearance")
                out = self._drop_absent_objects(_normalise(appearance), self._first_appearance,
                                                out)
        if self.config.context > 0:
            self._recent.append((query, out))
        return out.reshape(-1, h, w)

    def _drop_absent_objects(self, query: Tensor, first: Tensor, out: Tensor) -> Tensor:
        """The out-of-view decision (``config.presence_margin``) on soft labels ``(K, Q)``,
        comparing this frame's L2-normalised ``query`` ``(A, Q)`` with the first frame's
        ``first`` ``(A, Q)`` (the features, or the appearance given to :meth:`start`).

        A mask object is out of view in this frame when it wins no cell (argmax over the mask
        channels), or when, over the cells it wins, the mean of ``max cos(cell, its own
        first-frame cells) - max cos(cell, the other first-frame cells)`` is below the margin,
        or below ``config.presence_ratio`` times that mean at the first step the object won
        cells (its reference).
        Its weight then goes to the background, in the output and in the context the next
        frames read. Why: the background an object uncovers when it leaves has never been
        seen; it inherits the object's label from the recent frames, then keeps it by matching
        itself frame after frame. An object that wins no cell is dropped too, or DIFT's min-max
        read-out would stretch its faint remaining weight into a region.
        """
        assert self._first_owner is not None
        out = out.clone()
        masks = out[out.shape[0] - self._mask_channels:]  # a view: (M, Q), background first
        owner = masks.argmax(0)
        for k in range(1, self._mask_channels):  # a loop over objects (few); cells vectorised
            region, own = owner == k, self._first_owner == k
            if not own.any() or own.all():
                continue
            if region.any():
                affinity = query[:, region].T @ first  # (cells, Q0)
                margin = float((affinity[:, own].amax(1) - affinity[:, ~own].amax(1)).mean())
                if margin >= self._presence_threshold(k, margin):
                    continue
            masks[0] += masks[k]
            masks[k] = 0
        return out

    def _presence_threshold(self, k: int, margin: float) -> float:
        """Object ``k``'s threshold this step; its first ``margin`` becomes its reference."""
        assert self.config.presence_margin is not None
        reference = self._reference_margin.setdefault(k, margin)
        if self.config.presence_ratio is None:
            return self.config.presence_margin
        return max(self.config.presence_margin, self.config.presence_ratio * reference)


def _normalise(features: Tensor) -> Tensor:
    """``(C, h, w)`` → L2-normalised over channels, flattened ``(C, h*w)`` float32."""
    return F.normalize(features.float().reshape(features.shape[0], -1), dim=0)
