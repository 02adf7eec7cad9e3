"""The propagator against hand-computed numbers and a naive dense version of DIFT's
``eval_davis.py`` ``label_propagation`` (written here from the description in
:mod:`semcorr.track.propagate`, not transcribed)."""

from __future__ import annotations

import math

import pytest
import torch

from semcorr.errors import InputError
from semcorr.track import LabelPropagator, PropagationConfig


def _one_hot_pair() -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (C=2, 1, 2): cells e0, e1
    labels = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (K=2, 1, 2)
    return features, labels


def test_hand_computed_softmax_over_topk() -> None:
    features, labels = _one_hot_pair()
    prop = LabelPropagator(PropagationConfig(context=0, topk=2, radius=0, temperature=0.5))
    prop.start(features, labels)
    target = torch.tensor([[[2.0, 0.6]], [[0.0, 0.8]]])  # cell 0 = e0 (norm 2), cell 1 = (.6, .8)
    out = prop.step(target)
    # cell 0: logits (1/0.5, 0/0.5) = (2, 0); cell 1: (0.6/0.5, 0.8/0.5) = (1.2, 1.6)
    assert out[:, 0, 0].tolist() == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))])
    assert out[:, 0, 1].tolist() == pytest.approx([1 / (1 + math.exp(0.4)),
                                                   1 / (1 + math.exp(-0.4))])


def test_hand_computed_top1_and_radius() -> None:
    features, labels = _one_hot_pair()
    target = torch.tensor([[[0.0, 0.6]], [[1.0, 0.8]]])  # cell 0 looks like e1, cell 1 mostly e1
    top1 = LabelPropagator(PropagationConfig(context=0, topk=1, radius=0, temperature=0.5))
    top1.start(features, labels)
    assert top1.step(target)[:, 0].tolist() == [[0.0, 0.0], [1.0, 1.0]]
    # radius 0.5 keeps only the same cell: each target cell copies its own first-frame label
    local = LabelPropagator(PropagationConfig(context=0, topk=2, radius=0.5, temperature=0.5))
    local.start(features, labels)
    assert local.step(target)[:, 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def _naive(frames: list[torch.Tensor], first: torch.Tensor, cfg: PropagationConfig
           ) -> list[torch.Tensor]:
    """DIFT's loop, dense: exp affinities times a 0/1 window, top-k by zeroing, sum-normalised;
    context = first frame + a queue of the last ``cfg.context`` (features, labels)."""
    c, h, w = frames[0].shape
    window = torch.zeros(h * w, h * w)
    for q in range(h * w):  # a slow, obviously-correct window
        for k in range(h * w):
            near = abs(q // w - k // w) <= cfg.radius and abs(q % w - k % w) <= cfg.radius
            window[q, k] = 1.0 if (cfg.radius <= 0 or near) else 0.0
    flat = [torch.nn.functional.normalize(f.reshape(c, -1), dim=0) for f in frames]
    queue: list[tuple[torch.Tensor, torch.Tensor]] = []
    first_pair = (flat[0], first.reshape(first.shape[0], -1))
    outs = []
    for t in range(1, len(frames)):
        context = [first_pair, *queue]
        aff = torch.cat([torch.exp(flat[t].T @ f / cfg.temperature) * window
                         for f, _ in context], dim=1)  # (Q, N*Q)
        kth = aff.topk(cfg.topk, dim=1).values[:, -1:]
        aff = torch.where(aff < kth, 0.0, aff)
        aff = aff / aff.sum(1, keepdim=True)
        seg = aff @ torch.cat([lab for _, lab in context], dim=1).T  # (Q, K)
        outs.append(seg.T.reshape(-1, h, w))
        queue.append((flat[t], seg.T))
        if len(queue) > cfg.context:
            queue.pop(0)
    return outs


@pytest.mark.parametrize("cfg", [
    PropagationConfig(context=2, topk=5, radius=2, temperature=0.1),
    PropagationConfig(context=3, topk=1, radius=0, temperature=0.05),
    PropagationConfig(context=1, topk=30, radius=1, temperature=0.3),
])
def test_equals_naive_dense_dift_loop(cfg: PropagationConfig) -> None:
    gen = torch.Generator().manual_seed(0)
    frames = [torch.randn(6, 5, 7, generator=gen) for _ in range(7)]
    first = torch.softmax(torch.randn(3, 5, 7, generator=gen) * 3, dim=0)
    prop = LabelPropagator(cfg)
    prop.start(frames[0], first)
    ours = [prop.step(f) for f in frames[1:]]
    for got, want in zip(ours, _naive(frames, first, cfg), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert len(prop._recent) == cfg.context  # bounded context


def test_config_and_shape_errors() -> None:
    with pytest.raises(InputError, match="--topk"):
        PropagationConfig(topk=0)
    with pytest.raises(InputError, match="--temperature"):
        PropagationConfig(temperature=0)
    prop = LabelPropagator(PropagationConfig())
    with pytest.raises(RuntimeError, match="before start"):
        prop.step(torch.zeros(2, 3, 3))
    prop.start(torch.zeros(2, 3, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="features"):
        prop.step(torch.zeros(2, 4, 3))


def _uncovered_background_clip() -> tuple[list[torch.Tensor], torch.Tensor]:
    """A 6 x 6 clip, 4 channels. Frame 0: the object (feature e0) on cells [0:2, 0:2], the
    background e1, one distinctive background cell e2 far away at (5, 5). Frame 1: the object
    has gone; its former cells show a background never seen there, e2 + 0.5 e0: near them
    (radius 1) it looks more like the object than like e1, but over the whole first frame it
    looks most like the e2 cell. Frame 2: the object is back where it was."""
    eye = torch.eye(4)
    first = eye[1][:, None, None].repeat(1, 6, 6)
    first[:, :2, :2] = eye[0][:, None, None]
    first[:, 5, 5] = eye[2]
    gone = eye[1][:, None, None].repeat(1, 6, 6)
    gone[:, :2, :2] = (eye[2] + 0.5 * eye[0])[:, None, None]
    labels = torch.zeros(2, 6, 6)
    labels[1, :2, :2] = 1
    labels[0] = 1 - labels[1]
    return [first, gone, first.clone()], labels


@pytest.mark.parametrize("margin", [None, 0.0, -0.1])
def test_out_of_view_decision_drops_an_object_on_uncovered_background(margin) -> None:
    frames, labels = _uncovered_background_clip()
    prop = LabelPropagator(PropagationConfig(context=2, topk=1, radius=1,
                                             presence_margin=margin))
    prop.start(frames[0], labels, mask_channels=2)
    gone, back = prop.step(frames[1]), prop.step(frames[2])
    if margin is None:  # DIFT's propagation: the uncovered background takes the object's label
        assert (gone[1, :2, :2] == 1).all()
    else:  # margin over the uncovered cells: cos to e0 - cos to e2 = (0.5 - 1) / sqrt(1.25)
        assert gone[1].sum() == 0 and (gone[0] == 1).all()
    # the object comes back from the first frame either way, and nothing else is labelled
    torch.testing.assert_close(back, labels)


def test_out_of_view_margin_is_a_threshold() -> None:
    """Just above the uncovered cells' margin (-0.447) the object is kept, just below dropped."""
    frames, labels = _uncovered_background_clip()
    margin = -0.5 / 1.25**0.5
    for offset, kept in ((-0.01, True), (0.01, False)):
        prop = LabelPropagator(PropagationConfig(context=2, topk=1, radius=1,
                                                 presence_margin=margin + offset))
        prop.start(frames[0], labels, mask_channels=2)
        assert bool(prop.step(frames[1])[1].sum() > 0) is kept


def _fading_clip() -> tuple[list[torch.Tensor], torch.Tensor]:
    """A 4 x 4 clip, 3 channels: the object (e0) on cells [0:2, 0:2] over background e1.
    Frame 1 shows the object as it was (margin 1 - 0); frame 2 shows its cells as e0 + 0.6 e1
    (partly background), margin (1 - 0.6) / sqrt(1.36) = 0.343: positive, but about a third
    of the first step's."""
    eye = torch.eye(3)
    first = eye[1][:, None, None].repeat(1, 4, 4)
    first[:, :2, :2] = eye[0][:, None, None]
    faded = first.clone()
    faded[:, :2, :2] = (eye[0] + 0.6 * eye[1])[:, None, None]
    labels = torch.zeros(2, 4, 4)
    labels[1, :2, :2] = 1
    labels[0] = 1 - labels[1]
    return [first, first.clone(), faded], labels


@pytest.mark.parametrize(("ratio", "kept"), [(None, True), (0.3, True), (0.4, False)])
def test_out_of_view_ratio_is_relative_to_the_first_step(ratio, kept) -> None:
    """The first step's margin (1.0) is the reference: a later margin of 0.343 passes the
    absolute margin (0) and a ratio of 0.3, and fails a ratio of 0.4."""
    frames, labels = _fading_clip()
    prop = LabelPropagator(PropagationConfig(context=2, topk=1, radius=1, presence_margin=0.0,
                                             presence_ratio=ratio))
    prop.start(frames[0], labels, mask_channels=2)
    torch.testing.assert_close(prop.step(frames[1]), labels)
    assert bool(prop.step(frames[2])[1].sum() > 0) is kept
    prop.start(frames[0], labels, mask_channels=2)  # a new video forgets the reference
    assert bool(prop.step(frames[2])[1].sum() > 0)  # its first step: the reference itself
    with pytest.raises(InputError, match="presence-ratio"):
        PropagationConfig(presence_ratio=1.5)


def test_out_of_view_decision_leaves_heatmaps_and_present_objects_alone() -> None:
    """Point heatmaps before the mask channels are untouched, and a present object is kept."""
    frames, labels = _uncovered_background_clip()
    heatmap = torch.zeros(1, 6, 6)
    heatmap[0, 0, 0] = 1
    stacked = torch.cat([heatmap, labels])
    on = LabelPropagator(PropagationConfig(context=2, topk=1, radius=1, presence_margin=0.0))
    off = LabelPropagator(PropagationConfig(context=2, topk=1, radius=1))
    on.start(frames[0], stacked, mask_channels=2)
    off.start(frames[0], stacked)
    torch.testing.assert_close(on.step(frames[0]), off.step(frames[0]))  # object in view
    got, want = on.step(frames[1]), off.step(frames[1])
    torch.testing.assert_close(got[0], want[0])  # the heatmap channel
    assert got[2].sum() == 0 and want[2].sum() > 0
    with pytest.raises(InputError, match="mask_channels"):
        on.start(frames[0], stacked, mask_channels=4)
    with pytest.raises(InputError, match="presence-margin"):
        PropagationConfig(presence_margin=float("nan"))


def test_out_of_view_decision_reads_the_appearance_when_given() -> None:
    """With a margin of -0.5 the uncovered cells (feature margin -0.447) keep the object; an
    appearance that shows them as background (margin -1) drops it. Appearance is all or none."""
    frames, labels = _uncovered_background_clip()
    colour = torch.zeros(2, 6, 6)
    colour[0] = 1
    colour[:, :2, :2] = torch.tensor([0.0, 1.0])[:, None, None]  # the object's colour
    uncovered = torch.zeros(2, 6, 6)
    uncovered[0] = 1  # background colour everywhere: the object has gone
    config = PropagationConfig(context=2, topk=1, radius=1, presence_margin=-0.5)
    features_only = LabelPropagator(config)
    features_only.start(frames[0], labels, mask_channels=2)
    assert features_only.step(frames[1])[1].sum() > 0
    with_colour = LabelPropagator(config)
    with_colour.start(frames[0], labels, mask_channels=2, appearance=colour)
    assert with_colour.step(frames[1], uncovered)[1].sum() == 0
    torch.testing.assert_close(with_colour.step(frames[2], colour), labels)  # back in view
    with pytest.raises(InputError, match="appearance"):
        with_colour.step(frames[2])
