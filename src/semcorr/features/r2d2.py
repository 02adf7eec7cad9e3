"""R2D2: repeatable and reliable local features (Revaud et al., NeurIPS 2019).

A re-implementation compatible with the published checkpoints (``r2d2_WASF_N16.pt``,
``faster2d2_WASF_N16.pt``): the patch-network builder, L2-Net, Quad L2-Net, Fast Quad L2-Net,
the two confidence heads, strict checkpoint loading and the multi-scale extraction.

The network maps a normalised image ``(B, 3, H, W)`` to

* ``descriptors`` ``(B, D, H, W)``, L2-normalised along ``D`` (128 by default);
* ``reliability`` ``(B, 1, H, W)`` in [0, 1]: channel 1 of a 2-way softmax of a 1x1 conv of
  the squared (un-normalised) descriptors;
* ``repeatability`` ``(B, 1, H, W)`` in [0, 1): ``x / (1 + x)`` with ``x = softplus`` of a
  1x1 conv of the squared descriptors.

Keypoint coordinates follow :mod:`semcorr.conventions`: a pixel ``(i, j)`` of a pyramid level
of size ``w x h`` maps to ``((j + 0.5) W / w - 0.5, (i + 0.5) H / h - 0.5)`` in the original
``W x H`` image, the exact inverse of bilinear resizing with ``align_corners=False``. (The
reference code uses ``j W / w``, which is off by up to half a level pixel at small scales; at
scale 1 both agree.)

One file on purpose (~620 lines): one model's network, its checkpoint reading and its
multi-scale extraction, which only make sense together.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semcorr.conventions import check_shape
from semcorr.errors import InputError, WeightsError
from semcorr.features.local import LocalFeatures, register_local_features
from semcorr.features.r2d2_fast import InferencePlan, compile_plan
from semcorr.io.weights import load_torch_file

__all__ = [
    "ARCHITECTURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PatchNet",
    "R2D2",
    "R2D2Config",
    "R2D2Net",
    "build_network",
    "extract_multiscale",
    "load_r2d2_network",
    "nms_mask",
    "parse_net_string",
    "pyramid_scales",
    "read_checkpoint",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


class PatchNet(nn.Module):
    """A fully-convolutional patch network built layer by layer into ``self.ops``.

    With ``dilated=True`` a stride is never applied: it multiplies the dilation of the layers
    that follow instead, so the output keeps the input's resolution. BatchNorm has no affine
    parameters by default (as in the published models).

    Args:
        in_channels: input channels.
        dilated: replace strides by dilations.
        bn: add BatchNorm after the convolutions that ask for it.
        bn_affine: give the BatchNorm layers affine parameters.
    """

    def __init__(
        self, in_channels: int = 3, dilated: bool = True, bn: bool = True, bn_affine: bool = False
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleList()
        self.dilated = dilated
        self.bn = bn
        self.bn_affine = bn_affine
        self.out_dim = in_channels
        self._dilation = 1

    def add_conv(
        self,
        out_channels: int,
        kernel: int = 3,
        stride: int = 1,
        bn: bool = True,
        relu: bool = True,
        pool: int = 1,
    ) -> None:
        """Append a convolution (+ BatchNorm, + ReLU, + max-pooling of size ``pool``).

        The dilation grows *after* the layer, so a stride affects the following layers only.
        """
        d = self._dilation
        padding = ((kernel - 1) * d) // 2
        if self.dilated:
            conv = nn.Conv2d(self.out_dim, out_channels, kernel, padding=padding, dilation=d)
            self._dilation *= stride
        else:
            conv = nn.Conv2d(
                self.out_dim, out_channels, kernel, stride=stride, padding=padding, dilation=d
            )
        self.ops.append(conv)
        if bn and self.bn:
            self.ops.append(nn.BatchNorm2d(out_channels, affine=self.bn_affine))
        if relu:
            self.ops.append(nn.ReLU(inplace=True))
        if pool > 1:
            self.ops.append(nn.MaxPool2d(pool))
        self.out_dim = out_channels

    def raw_descriptors(self, images: torch.Tensor) -> torch.Tensor:
        """Un-normalised descriptors ``(B, D, H, W)`` of normalised images ``(B, 3, H, W)``."""
        x = images
        for op in self.ops:
            x = op(x)
        return x

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"descriptors": (B, D, H, W)}``, L2-normalised along ``D``."""
        return {"descriptors": F.normalize(self.raw_descriptors(images), p=2, dim=1)}


class R2D2Net(PatchNet):
    """A patch network with the reliability (``clf``) and repeatability (``sal``) heads.

    Call :meth:`add_heads` once the layers are built.
    """

    def add_heads(self) -> None:
        """Add the two 1x1 confidence heads on the descriptor dimension."""
        self.clf = nn.Conv2d(self.out_dim, 2, kernel_size=1)
        self.sal = nn.Conv2d(self.out_dim, 1, kernel_size=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense outputs of normalised images.

        Args:
            images: ``(B, 3, H, W)`` normalised with ImageNet mean/std.

        Returns:
            ``descriptors`` ``(B, D, H, W)`` unit-norm, ``reliability`` ``(B, 1, H, W)``,
            ``repeatability`` ``(B, 1, H, W)``.
        """
        x = self.raw_descriptors(images)
        squared = x * x
        reliability = torch.softmax(self.clf(squared), dim=1)[:, 1:2]
        soft = F.softplus(self.sal(squared))
        return {
            "descriptors": F.normalize(x, p=2, dim=1),
            "reliability": reliability,
            "repeatability": soft / (1 + soft),
        }


def _l2net_layers(net: PatchNet, dim: int = 128) -> None:
    """L2-Net (Tian et al., CVPR 2017): six 3x3 convs and a final 7x7 conv (the reference's)."""
    for width, stride in ((32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        net.add_conv(width * dim // 128, stride=stride)
    net.add_conv(dim, kernel=7, stride=8, bn=False, relu=False)


def _quad_trunk(net: PatchNet, mchan: int, first_pool: int = 1) -> None:
    """The six 3x3 convs shared by Quad L2-Net and its fast variant."""
    net.add_conv(8 * mchan)
    net.add_conv(8 * mchan)
    if first_pool > 1:
        net.add_conv(16 * mchan, pool=first_pool)
    else:
        net.add_conv(16 * mchan, stride=2)
    net.add_conv(16 * mchan)
    net.add_conv(32 * mchan, stride=2)
    net.add_conv(32 * mchan)


def _quad_head(net: PatchNet, dim: int, mchan: int, relu22: bool) -> None:
    """Three 2x2 convs replacing L2-Net's final large conv; the last has no BN and no ReLU."""
    net.add_conv(32 * mchan, kernel=2, stride=2, relu=relu22)
    net.add_conv(32 * mchan, kernel=2, stride=2, relu=relu22)
    net.add_conv(dim, kernel=2, stride=2, bn=False, relu=False)


def _quad_l2net_layers(net: PatchNet, dim: int = 128, mchan: int = 4, relu22: bool = False) -> None:
    """Quad L2-Net: L2-Net with the final conv replaced by three 2x2 convs."""
    _quad_trunk(net, mchan)
    _quad_head(net, dim, mchan, relu22)


def _fast_quad_l2net_layers(
    net: PatchNet, dim: int = 128, mchan: int = 4, relu22: bool = False, downsample_factor: int = 2
) -> None:
    """Fast Quad L2-Net: max-pool after the third conv instead of its stride (the network runs
    at half resolution) and a bilinear upsampling at the end."""
    _quad_trunk(net, mchan, first_pool=downsample_factor)
    _quad_head(net, dim, mchan, relu22)
    net.ops.append(nn.Upsample(scale_factor=downsample_factor, mode="bilinear",
                               align_corners=False))


@dataclass(frozen=True)
class _Architecture:
    layers: Callable[..., None]
    confidence: bool
    options: tuple[str, ...]


#: Constructor names used in the published checkpoints' ``net`` string.
ARCHITECTURES: dict[str, _Architecture] = {
    "L2_Net": _Architecture(_l2net_layers, False, ("dim",)),
    "Quad_L2Net": _Architecture(_quad_l2net_layers, False, ("dim", "mchan", "relu22")),
    "Quad_L2Net_ConfCFS": _Architecture(_quad_l2net_layers, True, ("dim", "mchan", "relu22")),
    "Fast_Quad_L2Net": _Architecture(
        _fast_quad_l2net_layers, False, ("dim", "mchan", "relu22", "downsample_factor")
    ),
    "Fast_Quad_L2Net_ConfCFS": _Architecture(
        _fast_quad_l2net_layers, True, ("dim", "mchan", "relu22", "downsample_factor")
    ),
}

_PATCHNET_OPTIONS = ("in_channels", "inchan", "dilated", "bn", "bn_affine")

#: The type and range each constructor argument may take: a checkpoint's ``net`` string is
#: checked against these before a single weight is allocated (``mchan=2000`` would ask for
#: gigabytes). The published networks use dim 128, mchan 4 and downsample_factor 2.
_OPTION_RANGES: dict[str, tuple[type, int, int]] = {
    "dim": (int, 1, 1024), "mchan": (int, 1, 16), "downsample_factor": (int, 1, 8),
    "in_channels": (int, 1, 16), "inchan": (int, 1, 16),
    "relu22": (bool, 0, 1), "dilated": (bool, 0, 1), "bn": (bool, 0, 1),
    "bn_affine": (bool, 0, 1),
}


def _check_option_ranges(architecture: str, options: dict[str, Any]) -> None:
    """Refuse an option of the wrong type or outside :data:`_OPTION_RANGES`."""
    for name, value in options.items():
        kind, low, high = _OPTION_RANGES[name]
        ok = isinstance(value, bool) if kind is bool else (
            isinstance(value, int) and not isinstance(value, bool) and low <= value <= high)
        if not ok:
            wanted = "true or false" if kind is bool else f"an integer in [{low}, {high}]"
            raise InputError(f"{architecture}: {name}={value!r} is out of range (expected "
                             f"{wanted})")


def build_network(architecture: str, **options: Any) -> PatchNet:
    """Build a network of :data:`ARCHITECTURES` with random weights.

    Args:
        architecture: e.g. ``"Quad_L2Net_ConfCFS"``.
        **options: architecture options (``dim``, ``mchan``, ``relu22``, ``downsample_factor``)
            and patch-network options (``dilated``, ``bn``, ``bn_affine``, ``in_channels``).

    Raises:
        InputError: for an unknown architecture or option.
    """
    if architecture not in ARCHITECTURES:
        raise InputError(
            f"unknown R2D2 architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})"
        )
    arch = ARCHITECTURES[architecture]
    unknown = set(options) - set(arch.options) - set(_PATCHNET_OPTIONS)
    if unknown:
        raise InputError(f"{architecture}: unknown option(s) {', '.join(sorted(unknown))}")
    _check_option_ranges(architecture, options)
    base = {k: options[k] for k in _PATCHNET_OPTIONS if k in options}
    if "inchan" in base:
        base["in_channels"] = base.pop("inchan")
    net = (R2D2Net if arch.confidence else PatchNet)(**base)
    arch.layers(net, **{k: options[k] for k in arch.options if k in options})
    if arch.confidence:
        net.add_heads()
    return net


def parse_net_string(text: str) -> tuple[str, dict[str, Any]]:
    """Parse a checkpoint's ``net`` string, e.g. ``"Quad_L2Net_ConfCFS(mchan=4)"``.

    Only a constructor name with literal keyword arguments is accepted; nothing is evaluated.

    Returns:
        The architecture name and its keyword arguments.

    Raises:
        ValueError: for anything else.
    """
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not a constructor call: {text!r}") from exc
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        raise ValueError(f"expected Name(keyword=literal, ...), got {text!r}")
    options = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise ValueError(f"no **kwargs allowed in {text!r}")
        try:
            options[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError as exc:
            raise ValueError(f"non-literal value for {keyword.arg!r} in {text!r}") from exc
    return node.func.id, options


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _plain_dict(*_args: object) -> dict:
    """Stand-in for ``collections.defaultdict`` while unpickling: a plain dict."""
    return {}


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a published R2D2 checkpoint with ``torch.load(weights_only=True)``.

    Some checkpoints (``faster2d2_WASF_N16.pt``) also hold training logs pickled as a
    ``collections.defaultdict(list)``; the restricted unpickler reads those as plain dicts.

    Returns:
        The checkpoint dict, with at least ``net`` (str) and ``state_dict``.

    Raises:
        WeightsError: naming the file, when it is missing, unreadable or not an R2D2 checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    allowed = [(_plain_dict, "collections.defaultdict"), list]
    checkpoint = load_torch_file(path, allowed=allowed)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise WeightsError(f"{path}: not an R2D2 checkpoint (no 'state_dict' dict)")
    if not isinstance(checkpoint.get("net"), str):
        raise WeightsError(f"{path}: not an R2D2 checkpoint (no 'net' constructor string)")
    return checkpoint


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix ``nn.DataParallel`` adds to every key."""
    prefix = "module."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def load_r2d2_network(path: str | os.PathLike[str]) -> tuple[PatchNet, str]:
    """Build the network a checkpoint names and load its weights with strict key matching.

    Returns:
        The network in eval mode and its architecture name.

    Raises:
        WeightsError: naming the file and the problem (unknown architecture, missing or
            unexpected keys, shape mismatch).
    """
    checkpoint = read_checkpoint(path)
    try:
        architecture, options = parse_net_string(checkpoint["net"])
        net = build_network(architecture, **options)
    except (ValueError, InputError) as exc:
        raise WeightsError(f"{path}: cannot build the network 'net' names ({exc})") from None
    state = _strip_module_prefix(checkpoint["state_dict"])
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: weights do not fit {architecture} (missing: {missing[:5]}, "
            f"unexpected: {unexpected[:5]})"
        )
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise WeightsError(
            f"{path}: {k} has shape {tuple(state[k].shape)}, {architecture} expects "
            f"{tuple(expected[k].shape)}"
        )
    net.load_state_dict(state, strict=True)
    return net.eval(), architecture


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


#: Values of :attr:`R2D2Config.engine`.
ENGINES = ("fast", "module")


@dataclass(frozen=True)
class R2D2Config:
    """Extraction settings (defaults = the published ones).

    Attributes:
        scale_factor: ratio between successive pyramid levels.
        min_size, max_size: only levels whose long side is within these bounds are used.
        min_scale, max_scale: bounds on the level's scale (``max_scale <= 1``: no upscaling).
        reliability_threshold, repeatability_threshold: keep pixels at or above both.
        top_k: keep the best ``top_k`` keypoints over all levels (``None``: all).
        engine: how the network is evaluated: ``"fast"`` (default) runs its
            :class:`~semcorr.features.r2d2_fast.InferencePlan` (BatchNorm folded, channels-last),
            ``"module"`` the module itself. Both give the same keypoints
            (tests/features/test_r2d2_fast.py).
    """

    scale_factor: float = 2**0.25
    min_size: int = 256
    max_size: int = 1024
    min_scale: float = 0.0
    max_scale: float = 1.0
    reliability_threshold: float = 0.7
    repeatability_threshold: float = 0.7
    top_k: int | None = 5000
    engine: str = "fast"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.scale_factor <= 1:
            raise InputError(f"scale_factor must be > 1, got {self.scale_factor}")
        if self.max_scale > 1:
            raise InputError(f"max_scale must be <= 1, got {self.max_scale}")
        if self.top_k is not None and self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")

    @classmethod
    def single_scale(cls, **overrides: Any) -> R2D2Config:
        """Only the original resolution."""
        return cls(min_scale=1.0, max_scale=1.0, min_size=0, max_size=10**9, **overrides)


def pyramid_scales(width: int, height: int, config: R2D2Config) -> list[tuple[float, int, int]]:
    """The pyramid levels extraction visits, largest first.

    Returns:
        ``(scale, w, h)`` per level, ``w = round(W * scale)``, ``h = round(H * scale)``, following
        the reference's walk (``s`` divided by ``scale_factor`` from 1, a small tolerance). An
        image whose long side is below ``min_size`` is used at its own size (the reference
        extracts nothing from it).
    """
    long_side = max(width, height)
    lower = max(config.min_scale, config.min_size / long_side)
    upper = min(config.max_scale, config.max_size / long_side)
    levels = []
    s = 1.0
    while s + 0.001 >= lower:
        if s - 0.001 <= upper:
            levels.append((s, round(width * s), round(height * s)))
        s /= config.scale_factor
    if not levels and long_side < config.min_size and config.min_scale <= 1:
        levels.append((1.0, width, height))  # small image: its own size (the reference: none)
    return levels


def nms_mask(
    reliability: torch.Tensor,
    repeatability: torch.Tensor,
    reliability_threshold: float = 0.7,
    repeatability_threshold: float = 0.7,
) -> torch.Tensor:
    """Local maxima of repeatability (3x3) with both confidences above their thresholds.

    Args:
        reliability: ``(B, 1, H, W)``.
        repeatability: ``(B, 1, H, W)``.

    Returns:
        ``(B, 1, H, W)`` boolean mask of keypoints.
    """
    check_shape(reliability, "B 1 H W", "reliability")
    check_shape(repeatability, "B 1 H W", "repeatability")
    peaks = repeatability == F.max_pool2d(repeatability, 3, stride=1, padding=1)
    return (
        peaks
        & (repeatability >= repeatability_threshold)
        & (reliability >= reliability_threshold)
    )


def _level_keypoints(
    outputs: dict[str, torch.Tensor], config: R2D2Config, width: int, height: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keypoints ``(n, 3)``, descriptors ``(n, D)`` and scores ``(n,)`` of one level (B = 1)."""
    reliability, repeatability = outputs["reliability"], outputs["repeatability"]
    mask = nms_mask(reliability, repeatability, config.reliability_threshold,
                    config.repeatability_threshold)
    ys, xs = mask[0, 0].nonzero(as_tuple=True)
    h, w = mask.shape[-2:]
    x = (xs.to(reliability.dtype) + 0.5) * (width / w) - 0.5
    y = (ys.to(reliability.dtype) + 0.5) * (height / h) - 0.5
    s = torch.full_like(x, 32.0 / scale)
    scores = reliability[0, 0, ys, xs] * repeatability[0, 0, ys, xs]
    if "raw_descriptors" in outputs:  # an InferencePlan's: normalise the samples only
        descriptors = InferencePlan.descriptors_at(outputs["raw_descriptors"], ys, xs)
    else:
        descriptors = outputs["descriptors"][0, :, ys, xs].t()
    return torch.stack([x, y, s], dim=-1), descriptors, scores


def extract_multiscale(
    net: R2D2Net | InferencePlan, image: torch.Tensor, config: R2D2Config | None = None
) -> dict[str, torch.Tensor]:
    """Multi-scale R2D2 keypoints of one normalised image.

    The image is resized bilinearly from one level to the next (as the reference does), each
    level goes through the network, keypoints are found by :func:`nms_mask`, and the best
    ``top_k`` over all levels are kept by score = reliability x repeatability.

    Args:
        net: a network with confidence heads, in eval mode, or its
            :class:`~semcorr.features.r2d2_fast.InferencePlan`.
        image: ``(1, 3, H, W)`` normalised with ImageNet mean/std.
        config: extraction settings (default :class:`R2D2Config`).

    Returns:
        ``keypoints`` ``(N, 3)`` (x, y, scale) in original pixels, ``descriptors`` ``(N, D)``,
        ``scores`` ``(N,)``, sorted by decreasing score (ties: level order, then raster order).
    """
    config = config or R2D2Config()
    dims = check_shape(image, "1 3 H W", "image")
    height, width = dims["H"], dims["W"]
    parts = []
    current = image
    for scale, w, h in pyramid_scales(width, height, config):
        if (h, w) != tuple(current.shape[-2:]):
            current = F.interpolate(current, (h, w), mode="bilinear", align_corners=False)
        parts.append(_level_keypoints(net(current), config, width, height, scale))
    if not parts:
        empty = image.new_zeros((0, 3))
        dim = net.heads_weight.shape[1] if isinstance(net, InferencePlan) else net.out_dim
        return {"keypoints": empty, "descriptors": image.new_zeros((0, dim)),
                "scores": image.new_zeros((0,))}
    keypoints, descriptors, scores = (torch.cat(p, dim=0) for p in zip(*parts, strict=True))
    order = torch.sort(scores, descending=True, stable=True).indices
    if config.top_k is not None:
        order = order[: config.top_k]
    return {"keypoints": keypoints[order], "descriptors": descriptors[order],
            "scores": scores[order]}


class R2D2(LocalFeatures):
    """R2D2 as a :class:`~semcorr.features.local.LocalFeatures` model.

    Args:
        net: an :class:`R2D2Net`.
        config: extraction settings.
        name: the registry name (``r2d2`` or ``faster2d2``).
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, net: R2D2Net, config: R2D2Config | None = None, name: str = "r2d2"):
        super().__init__()
        if not isinstance(net, R2D2Net):
            raise InputError("R2D2 needs a network with confidence heads (an R2D2Net)")
        self.net = net
        self.config = config or R2D2Config()
        self.name = name

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet mean/std on ``(B, 3, H, W)`` images in [0, 1]."""
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense outputs (see :meth:`R2D2Net.forward`) of images ``(B, 3, H, W)`` in [0, 1]."""
        check_shape(images, "B 3 H W", "images")
        return self.net(self.normalize(images))

    def extract(self, image: torch.Tensor, config: R2D2Config | None = None
                ) -> dict[str, torch.Tensor]:
        """Multi-scale keypoints of one image ``(3, H, W)`` in [0, 1] (see the module docs).

        Returns:
            ``keypoints`` ``(N, 3)``, ``descriptors`` ``(N, D)``, ``scores`` ``(N,)``.
        """
        check_shape(image, "3 H W", "image")
        param = next(self.net.parameters())
        batch = self.normalize(image.to(device=param.device, dtype=param.dtype)[None])
        was_training = self.net.training
        self.net.eval()
        config = config or self.config
        try:
            with torch.inference_mode():
                net = self.net if config.engine == "module" else compile_plan(self.net)
                return extract_multiscale(net, batch, config)
        finally:
            self.net.train(was_training)


_FAMILY = {"r2d2": "Quad_L2Net_ConfCFS", "faster2d2": "Fast_Quad_L2Net_ConfCFS"}
_CONFIG_FIELDS = {f.name for f in fields(R2D2Config)}


def _create(name: str, weights: str | None, options: dict[str, Any]) -> R2D2:
    config_options = {k: v for k, v in options.items() if k in _CONFIG_FIELDS}
    net_options = {k: v for k, v in options.items() if k not in _CONFIG_FIELDS}
    try:
        config = replace(R2D2Config(), **config_options)
    except TypeError as exc:
        raise InputError(f"{name}: bad option ({exc})") from None
    if weights is None:
        net = build_network(_FAMILY[name], **net_options)
    else:
        if net_options:
            raise InputError(
                f"{name}: options {sorted(net_options)} only apply to random weights; the "
                "checkpoint defines the network"
            )
        net, architecture = load_r2d2_network(weights)
        if architecture != _FAMILY[name]:
            other = {v: k for k, v in _FAMILY.items()}.get(architecture)
            hint = f" (use the model {other!r})" if other else ""
            raise WeightsError(f"{weights}: holds a {architecture}, not a {_FAMILY[name]}{hint}")
    return R2D2(net, config, name=name)


@register_local_features("r2d2")
def r2d2(*, weights: str | None = None, **options: Any) -> R2D2:
    """R2D2 with a Quad L2-Net (``r2d2_WASF_N16.pt``); options: :class:`R2D2Config` fields,
    or network options (``dim``, ``mchan``, ...) for random weights."""
    return _create("r2d2", weights, options)


@register_local_features("faster2d2")
def faster2d2(*, weights: str | None = None, **options: Any) -> R2D2:
    """Fast-R2D2 with a Fast Quad L2-Net (``faster2d2_WASF_N16.pt``); options as :func:`r2d2`."""
    return _create("faster2d2", weights, options)
