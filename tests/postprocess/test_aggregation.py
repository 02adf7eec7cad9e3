"""GeoAware-SC's aggregation network: official keys, parameter count, forward parity.

The forward is compared with ``reference_forward``, a functional re-statement written here from
the published description (independent of semcorr's module, but not the official code). The
released ``AggregationNetwork`` itself runs in tests/train/test_geoaware_official.py, whose
loss and gradients through it equal semcorr's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semcorr import load_head
from semcorr.errors import WeightsError
from semcorr.postprocess import AggregationNetwork, create_head

OFFICIAL_DIMS = (640, 1280, 1280, 768)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the machine is shared, and spinning threads slow small convs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def official_shapes(dims=OFFICIAL_DIMS, proj=768) -> dict[str, tuple[int, ...]]:
    """Key → shape of an official checkpoint, written from the published description."""
    width = proj // 4
    shapes: dict[str, tuple[int, ...]] = {
        "mixing_weights": (len(dims),), "logit_scale": (), "self_logit_scale": ()
    }
    for i, c in enumerate(dims):
        p = f"bottleneck_layers.{i}.0."
        convs = {"conv1": (width, c, 1, 1), "conv2": (width, width, 3, 3),
                 "conv3": (proj, width, 1, 1)}
        if c != proj:
            convs["shortcut"] = (proj, c, 1, 1)
        for name, shape in convs.items():
            shapes[p + name + ".weight"] = shape
            shapes[p + name + ".norm.weight"] = (shape[0],)
            shapes[p + name + ".norm.bias"] = (shape[0],)
    return shapes


def random_state(dims=OFFICIAL_DIMS, proj=768, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in official_shapes(dims, proj).items()}


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor, dims, groups=32):
    """The network written out with functional ops on the state dict (a re-statement from the
    published description, sharing no code with semcorr's module)."""
    def conv_norm(name, inp):
        w = state[name + ".weight"]
        out = F.conv2d(inp, w, padding=w.shape[-1] // 2)
        return F.group_norm(out, groups, state[name + ".norm.weight"], state[name + ".norm.bias"])

    mix = torch.softmax(state["mixing_weights"], 0)
    total = 0
    start = 0
    for i, c in enumerate(dims):
        part = x[:, start:start + c]
        start += c
        p = f"bottleneck_layers.{i}.0."
        h = torch.relu(conv_norm(p + "conv1", part))
        h = torch.relu(conv_norm(p + "conv2", h))
        h = conv_norm(p + "conv3", h)
        skip = conv_norm(p + "shortcut", part) if p + "shortcut.weight" in state else part
        total = total + mix[i] * torch.relu(h + skip)
    return total


def test_parameter_count_is_published():
    model = AggregationNetwork(OFFICIAL_DIMS, 768)
    assert sum(p.numel() for p in model.parameters()) == 5_150_214


def test_official_keys_and_shapes():
    model = AggregationNetwork(OFFICIAL_DIMS, 768)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_shapes()
    assert len(got) == 48  # 3 scalars/vectors + 3*(4 convs*3) + 3*3


def test_trainable_set_is_exact_and_no_buffers():
    model = AggregationNetwork(OFFICIAL_DIMS, 768)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(official_shapes())
    assert list(model.buffers()) == []


def test_random_official_state_loads_strictly_and_matches_reference(tmp_path):
    state = random_state()
    path = tmp_path / "best_856.PTH"
    torch.save(state, path)
    head = load_head("geoaware", path)
    assert not head.training
    for k, v in head.state_dict().items():
        assert torch.equal(v, state[k])
    x = torch.randn(2, sum(OFFICIAL_DIMS), 6, 5)
    with torch.no_grad():
        out = head(x)
        ref = reference_forward(state, x, OFFICIAL_DIMS)
    assert out.shape == (2, 768, 6, 5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_small_dims_read_from_weights_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    dims = (48, 64)
    state = random_state(dims, 64, seed=1)
    save_file(state, str(tmp_path / "head.safetensors"))
    head = load_head("geoaware", tmp_path / "head.safetensors", num_groups=8)
    assert head.feature_dims == dims and head.projection_dim == 64
    x = torch.randn(1, 112, 4, 4, dtype=torch.float64)
    head = head.double()
    ref = reference_forward({k: v.double() for k, v in state.items()}, x, dims, groups=8)
    torch.testing.assert_close(head(x), ref, atol=1e-10, rtol=1e-10)


def test_ddp_prefix_and_checkpoint_wrapping(tmp_path):
    state = random_state((64, 64), 64)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "c.pt")
    head = load_head("geoaware", tmp_path / "c.pt", num_groups=16)
    assert head.feature_dims == (64, 64)


def test_mismatching_keys_name_file_and_keys(tmp_path):
    state = random_state()
    del state["logit_scale"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.PTH"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"bad\.PTH.*missing keys: logit_scale.*"
                                           r"unexpected keys: extra\.weight"):
        load_head("geoaware", path)


def test_wrong_dims_refused_with_shapes(tmp_path):
    torch.save(random_state(), tmp_path / "w.PTH")
    with pytest.raises(WeightsError, match="wrong shapes"):
        load_head("geoaware", tmp_path / "w.PTH", feature_dims=(640, 1280, 1280, 1024))


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(WeightsError, match="no such weights file"):
        load_head("geoaware", tmp_path / "nope.PTH")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not a GeoAware-SC aggregation network"):
        load_head("geoaware", tmp_path / "other.pt")


def test_channel_mismatch_is_clear():
    head = create_head("geoaware", feature_dims=(64, 64), projection_dim=64, num_groups=8)
    with pytest.raises(ValueError, match="expects 128"):
        head(torch.zeros(1, 100, 2, 2))


def test_dropout_only_in_training():
    head = create_head("geoaware", feature_dims=(32, 32), projection_dim=64, num_groups=8,
                       feature_dropout=0.5).eval()
    x = torch.randn(1, 64, 5, 5)
    torch.testing.assert_close(head(x), head(x))
    head.train()
    torch.manual_seed(0)
    a = head(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, head(x))


def test_backward_reaches_every_parameter():
    head = create_head("geoaware", feature_dims=(32, 48), projection_dim=64, num_groups=8)
    head(torch.randn(2, 80, 5, 5)).square().mean().backward()
    untouched = [n for n, p in head.named_parameters()
                 if p.grad is None and n not in ("logit_scale", "self_logit_scale")]
    assert untouched == []
