"""Losses, pair views, config layering and checkpoints of the GeoAware-SC trainer."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from semcorr.config import build_config, parse_overrides
from semcorr.data.base import PairSample
from semcorr.errors import InputError, WeightsError
from semcorr.geometry import ResizePad
from semcorr.match.rules import window_soft_argmax2d
from semcorr.train.checkpoint import load_checkpoint, save_checkpoint
from semcorr.train.geoaware import GeoAwareTrainConfig, LoadedPair, config_from_sources, pair_views
from semcorr.train.losses import flow_loss, gaussian_label_noise, info_nce_loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the machine is shared, and spinning threads slow small convs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TestInfoNCE:
    def test_known_answer(self):
        d0 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        d1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        # logits = 2 * I; each row: -log(e^2 / (e^2 + 1))
        expected = -math.log(math.exp(2) / (math.exp(2) + 1))
        assert info_nce_loss(d0, d1, 2.0).item() == pytest.approx(expected, rel=1e-6)

    def test_invalid_keypoints_are_ignored(self):
        d0 = torch.randn(1, 3, 4)
        d1 = torch.randn(1, 3, 4)
        valid = torch.tensor([[True, False, True]])
        sub = info_nce_loss(d0[:, [0, 2]], d1[:, [0, 2]], 5.0)
        torch.testing.assert_close(info_nce_loss(d0, d1, 5.0, valid), sub)
        assert info_nce_loss(d0, d1, 5.0, torch.zeros(1, 3, dtype=torch.bool)).item() == 0

    def test_gradcheck(self):
        d0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
        d1 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: info_nce_loss(a, b, 3.0), (d0, d1))


class TestFlowLoss:
    def test_uses_the_shared_window_soft_argmax(self):
        g = torch.Generator().manual_seed(0)
        feats = torch.randn(1, 8, 6, 7, generator=g)
        desc = torch.randn(1, 3, 8, generator=g)
        target = torch.rand(1, 3, 2, generator=g) * 5
        scores = torch.einsum("bnc,bchw->bnhw", F.normalize(desc, dim=-1),
                              F.normalize(feats, dim=1))
        pred = window_soft_argmax2d(scores, 2, 0.05)
        expected = (pred - target).norm(dim=-1).mean()
        torch.testing.assert_close(flow_loss(desc, feats, target, radius=2, temperature=0.05),
                                   expected)

    def test_zero_when_exact_and_peaked(self):
        feats = torch.eye(4).view(1, 4, 2, 2)  # four orthogonal cells
        desc = torch.eye(4)[None]
        target = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
        assert flow_loss(desc, feats, target, temperature=1e-3).item() < 1e-6

    def test_gradcheck(self):
        feats = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
        desc = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
        target = torch.rand(1, 2, 2, dtype=torch.float64)
        assert torch.autograd.gradcheck(
            lambda f, d: flow_loss(d, f, target, temperature=0.5), (feats, desc))

    def test_label_noise_is_reproducible_and_scaled(self):
        pts = torch.zeros(1, 20000, 2)
        a = gaussian_label_noise(pts, 2.0, torch.Generator().manual_seed(1))
        b = gaussian_label_noise(pts, 2.0, torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
        assert a.std().item() == pytest.approx(2.0, rel=0.03)


def _sample(perm) -> PairSample:
    n = len(perm)
    src = torch.tensor([[15.0, 25.0], [35.0, 25.0], [55.0, 65.0]])[:n]
    return PairSample(
        source_path="a.png", target_path="b.png", source_points=src, target_points=src + 1,
        visible=torch.tensor([True, True, False])[:n], category="x", source_bbox=None,
        target_bbox=None, source_size=(100, 80), target_size=(100, 80), pck_reference=100.0,
        keypoint_ids=torch.arange(n), flip_permutation=torch.tensor(perm), pair_id="p",
    )


def test_pair_views_follow_the_released_arithmetic():
    # 100 x 80 image in the 840 frame: x * 8.4, y * 8.4 + 84 (centring pad); 10 cells / 840 px,
    # so the source keypoints sit at cells (1.5, 3.5), (3.5, 3.5), (5.5, 7.5)
    t = ResizePad(100, 80, 100, 10)
    pair = LoadedPair(torch.zeros(4, 1, 10, 10), (t, t), _sample([1, 0, -1]))
    assert pair_views(pair, GeoAwareTrainConfig()).second.tolist() == [1, 3, 0]  # default
    views = pair_views(pair, GeoAwareTrainConfig(pair_augment=True, single_flip=1.0))
    assert views.first.tolist() == [0, 2, 2, 2] and views.second.tolist() == [1, 1, 3, 0]
    assert views.weights.tolist() == [1.0, 1.0, 1.0, 0.25]
    assert views.sparse.tolist() == [True, False, False, False]  # flips: flow error only
    assert views.dense.tolist() == [True] * 4
    assert views.cells0[0].tolist() == [[1, 3], [3, 3], [5, 7]]  # int(cells)
    # mirrored source: row 0 is the mirror (10 - x) of its partner, row 1
    assert views.cells0[1, :2].tolist() == [[6, 3], [8, 3]]
    torch.testing.assert_close(views.flow[0], torch.full((3, 2), 0.1), atol=1e-5, rtol=0)
    torch.testing.assert_close(views.flow[1, 0], torch.tensor([1.6 - 6.5, 0.1]), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(views.flow[2, 0], torch.tensor([6.4 - 6.5, 0.1]), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(views.flow[3, 0], torch.tensor([1.5 - 6.5, 0.0]), atol=1e-5,
                               rtol=0)
    assert views.valid.tolist() == [[True, True, False]] * 3 + [[True, True, True]]
    # noise std = 0.1 * reference (100 px = 10 cells) / 2; the released PF-Pascal rule
    # takes the 840-px image side as cells
    torch.testing.assert_close(views.noise_std, torch.full((4,), 0.5))
    image = pair_views(pair, GeoAwareTrainConfig(noise_reference="image"))
    torch.testing.assert_close(image.noise_std, torch.full((3,), 42.0))
    plain = pair_views(pair, GeoAwareTrainConfig(pair_augment=False))
    assert plain.first.tolist() == [0]
    assert pair_views(pair, GeoAwareTrainConfig(dense_weight=0)).sparse.tolist() == [True] * 3


def test_self_flip_noise_comes_from_the_source_box():
    t = ResizePad(100, 80, 100, 10)
    sample = dataclasses.replace(
        _sample([1, 0, -1]),
        source_bbox=torch.tensor([0.0, 0.0, 50.0, 20.0]),  # 50 px → 5 cells
        target_bbox=torch.tensor([10.0, 10.0, 30.0, 70.0]))  # 60 px → 6 cells
    views = pair_views(LoadedPair(torch.zeros(4, 1, 10, 10), (t, t), sample),
                       GeoAwareTrainConfig())
    torch.testing.assert_close(views.noise_std, torch.tensor([0.3, 0.3, 0.25]))


@dataclass
class _Conf:
    lr: float = 1.0
    steps: int = 10
    name: str = "a"
    dims: tuple[int, ...] = (1, 2)
    init: str | None = None
    extra: dict = field(default_factory=dict)


def test_config_precedence_defaults_file_cli(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nsteps: 5\ndims: [3, 4]\n")
    conf = build_config(_Conf, tmp_path / "c.yaml", ["steps=7", "init=w.pt"])
    assert conf == _Conf(lr=1e-3, steps=7, name="a", dims=(3, 4), init="w.pt")
    (tmp_path / "c.json").write_text(json.dumps({"name": "j"}))
    assert build_config(_Conf, tmp_path / "c.json", base={"name": "p", "lr": 2}).name == "j"
    assert build_config(_Conf, None, ["name=z"], base={"name": "p"}).name == "z"
    assert parse_overrides(["lr=3e-3", "flag=false", "x=[1,2]"]) == {
        "lr": 0.003, "flag": False, "x": [1, 2]}


def test_config_refuses_unknown_and_badly_typed(tmp_path):
    (tmp_path / "c.yaml").write_text("lr: 1\nbogus: 2\n")
    with pytest.raises(InputError, match=r"c\.yaml: unknown setting\(s\) bogus"):
        build_config(_Conf, tmp_path / "c.yaml")
    with pytest.raises(InputError, match="command line: steps must be an integer"):
        build_config(_Conf, None, ["steps=many"])
    with pytest.raises(InputError, match="extra must be a mapping"):
        build_config(_Conf, None, ["extra=[1]"])
    with pytest.raises(InputError, match="not key=value"):
        build_config(_Conf, None, ["steps"])
    with pytest.raises(InputError, match="no such config file"):
        build_config(_Conf, tmp_path / "none.yaml")


def test_presets_feed_the_trainer_config():
    conf = config_from_sources(None, ["out=x", "epochs=3"], preset="pfpascal")
    assert conf.dataset == "pf-pascal" and conf.epochs == 3 and not conf.pair_augment
    assert config_from_sources(None, [], preset="spair").eval_window == 7
    with pytest.raises(InputError, match="no training"):
        config_from_sources(None, [], preset="zero-shot")


def test_checkpoint_roundtrip_restores_everything(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=10)
    gen = torch.Generator().manual_seed(5)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    save_checkpoint(tmp_path / "c.pt", model=model, step=3, optimizer=opt, scheduler=sched,
                    generators={"g": gen}, extra={"history": [1.5]})
    expected = (torch.rand(3), torch.rand(2, generator=gen))
    other = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(other.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, 0.1, total_steps=10)
    gen2 = torch.Generator()
    state = load_checkpoint(tmp_path / "c.pt", model=other, optimizer=opt2, scheduler=sched2,
                            generators={"g": gen2})
    assert state == {"step": 3, "extra": {"history": [1.5]}}
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.equal(torch.rand(2, generator=gen2), expected[1])
    assert torch.equal(other.weight, model.weight)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(WeightsError, match=r"bad\.pt: not a readable torch weights file"):
        load_checkpoint(tmp_path / "bad.pt", model=other)
