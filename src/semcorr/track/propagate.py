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
    "neighbourhood_mask",
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
    """

    context: int = 20
    topk: int = 10
    radius: float = 12.0
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.context < 0:
            raise InputError(f"--context must be >= 0, got {self.context}")
        if self.topk < 1:
            raise InputError(f"--topk must be >= 1, got {self.topk}")
        if not self.radius >= 0:
            raise InputError(f"--radius must be >= 0, got {self.radius}")
        if not self.temperature > 0:
            raise InputError(f"--temperature must be > 0, got {self.temperature}")


def neighbourhood_mask(h: int, w: int, radius: float, device: torch.device | None = None
                       ) -> Tensor:
    """Which keys each query may use: ``(h*w, h*w)`` bool, ``[q, k]`` true when
    ``|i_q - i_k| <= radius`` and ``|j_q - j_k| <= radius`` (all true when ``radius <= 0``)."""
    if radius <= 0:
        return torch.ones(h * w, h * w, dtype=torch.bool, device=device)
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


def propagate_labels(
    query: Tensor, keys: Tensor, labels: Tensor, config: PropagationConfig,
    allowed: Tensor | None = None,
) -> Tensor:
    """Labels of a target frame from its context.

    Args:
        query: L2-normalised target features ``(C, Q)``.
        keys: L2-normalised context features ``(N, C, Q)`` (N context frames).
        labels: context soft labels ``(N, K, Q)``.
        config: top-k and temperature (the radius is in ``allowed``).
        allowed: ``(Q, Q)`` bool, ``[q, k]`` true when key cell ``k`` may serve query ``q``
            (the same for every context frame); ``None`` for all.

    Returns:
        ``(K, Q)`` soft labels of the target.
    """
    n, c, cells = keys.shape
    k = min(config.topk, n * cells)
    flat_labels = labels.permute(1, 0, 2).reshape(labels.shape[1], n * cells)  # (K, N*Q)
    out = []
    chunk = max(1, _CHUNK_ENTRIES // max(1, n * cells))
    for begin in range(0, cells, chunk):  # a loop over chunks of cells, for memory only
        logits = torch.einsum("ncm,cq->qnm", keys, query[:, begin:begin + chunk])
        logits = logits / config.temperature  # (q, N, Q)
        if allowed is not None:
            logits = logits.masked_fill(~allowed[begin:begin + chunk, None, :], float("-inf"))
        top, index = logits.reshape(logits.shape[0], n * cells).topk(k, dim=1)  # (q, k)
        weights = torch.softmax(top, dim=1)
        out.append((flat_labels[:, index] * weights[None]).sum(-1))  # (K, q)
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
        self._allowed: Tensor | None = None
        self._grid: tuple[int, int] | None = None

    @property
    def grid(self) -> tuple[int, int] | None:
        """``(h, w)`` of the feature grid once started."""
        return self._grid

    def start(self, features: Tensor, labels: Tensor) -> None:
        """Begin a video.

        Args:
            features: first-frame features ``(C, h, w)``.
            labels: its soft labels ``(K, h, w)`` (one-hot masks, or heatmaps).
        """
        dims = check_shape(features, "C h w", "features")
        check_shape(labels, f"K {dims['h']} {dims['w']}", "labels")
        h, w = dims["h"], dims["w"]
        self._grid = (h, w)
        self._first = (_normalise(features), labels.reshape(labels.shape[0], h * w).float())
        self._recent.clear()
        self._allowed = None
        if self.config.radius > 0:
            self._allowed = neighbourhood_mask(h, w, self.config.radius, features.device)

    def step(self, features: Tensor) -> Tensor:
        """Propagate the labels to the next frame.

        Args:
            features: this frame's features ``(C, h, w)`` (same grid as the first).

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
        out = propagate_labels(query, keys, labels, self.config, self._allowed)
        if self.config.context > 0:
            self._recent.append((query, out))
        return out.reshape(-1, h, w)


def _normalise(features: Tensor) -> Tensor:
    """``(C, h, w)`` → L2-normalised over channels, flattened ``(C, h*w)`` float32."""
    return F.normalize(features.float().reshape(features.shape[0], -1), dim=0)
