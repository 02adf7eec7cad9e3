"""R2D2 inference plan: the same network, evaluated with fewer passes over memory.

:func:`compile_plan` turns an eval-mode :class:`~semcorr.features.r2d2.R2D2Net` into an
:class:`InferencePlan` that computes the same dense maps as the network, faster on CPU:

* every BatchNorm (running statistics, eval mode) is folded into the convolution before it
  (in float64, then cast), and the ReLU after it runs inside oneDNN's convolution (a fused
  post-op) where PyTorch exposes it, so a layer is one pass over memory;
* activations stay channels-last (``(B, C, H, W)`` tensors with NHWC strides), the layout the
  oneDNN convolutions work in, so no layout reorder happens per layer;
* the two confidence heads become one 1x1 convolution with two outputs: the logit difference
  of the 2-way reliability softmax (``softmax(z)[1] = sigmoid(z1 - z0)``) and the repeatability
  logit;
* descriptors are left un-normalised: :meth:`InferencePlan.descriptors_at` normalises only the
  sampled keypoints, not the whole ``(D, H, W)`` map.

The plan is rebuilt from the network's current weights at every extraction (folding ~0.5 M
parameters takes milliseconds), so it can never be stale.

Measured and not adopted (published weights, 600x400, torch 2.13, 2-core AVX2 CPU, interleaved,
load average 7-13; see issue #21's notes): oneDNN's direct convolution already runs every layer
at this CPU's fp32 GEMM rate (23 GFLOP/s against 18 for the equivalent im2col ``matmul``), and a
dilated layer runs as fast as the same layer dense, so a polyphase rewrite only adds copies
(0.44-0.60x). NNPACK's fast 3x3 convolution (one call per polyphase sub-grid) was 1.1-1.96x per
wide 3x3 layer but only 1.03-1.27x for the whole extraction (the three 2x2 layers, about half of
the time, have no faster kernel), through a private torch entry point, and its rounding moved one
keypoint in 4,567 by a pixel at an NMS near tie. A Winograd F(3x3, 2x2) in torch ops for the 2x2
layers was exact to 7e-7 but 2.1-2.5x slower (its transforms are memory passes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InferencePlan", "PlanLayer", "compile_plan"]


#: oneDNN's convolution with a fused element-wise post-op (what torch.compile emits on CPU);
#: ``None`` in builds without it, where the plan falls back to ``conv2d`` + ``relu_``.
_CONV_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


def _fused_relu_applies(x: torch.Tensor) -> bool:
    """Whether the fused oneDNN convolution can take ``x`` (CPU float32, oneDNN built in)."""
    return (_CONV_POINTWISE is not None and x.device.type == "cpu"
            and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled)


@dataclass
class PlanLayer:
    """One folded step: a convolution (BatchNorm folded in), then ReLU, pooling or upsampling.

    Attributes:
        weight: ``(K, C, r, r)``.
        bias: ``(K,)``.
        dilation, padding: of the convolution.
        relu: apply ReLU after it.
        pool: max-pooling size after it (1: none).
        upsample: bilinear upsampling factor after it (1: none).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    dilation: int
    padding: int
    relu: bool
    pool: int = 1
    upsample: int = 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` channels-last -> ``(B, K, H', W')`` channels-last."""
        if _fused_relu_applies(x):
            x = _CONV_POINTWISE(x, self.weight, self.bias, [self.padding] * 2, [1, 1],
                                [self.dilation] * 2, 1, "relu" if self.relu else "none",
                                [None], "")
        else:
            x = F.conv2d(x, self.weight, self.bias, padding=self.padding, dilation=self.dilation)
            if self.relu:
                x = F.relu_(x)
        if self.pool > 1:
            x = F.max_pool2d(x, self.pool)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear",
                              align_corners=False)
        return x


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(K, C, r, r)`` and bias ``(K,)`` of ``bn(conv(x))`` as one convolution."""
    weight = conv.weight.detach().double()
    bias = (conv.bias.detach().double() if conv.bias is not None
            else weight.new_zeros(weight.shape[0]))
    if bn is not None:
        inv = torch.rsqrt(bn.running_var.double() + bn.eps)
        shift = -bn.running_mean.double() * inv
        if bn.affine:
            inv = inv * bn.weight.detach().double()
            shift = shift * bn.weight.detach().double() + bn.bias.detach().double()
        weight = weight * inv.view(-1, 1, 1, 1)
        bias = bias * inv + shift
    dtype = conv.weight.dtype
    # Channels-last like the activations: otherwise every call converts the weights.
    return weight.to(dtype).contiguous(memory_format=torch.channels_last), bias.to(dtype)


def _layers(ops: nn.ModuleList) -> list[PlanLayer]:
    """Fold ``ops`` (Conv2d, BatchNorm2d, ReLU, MaxPool2d, Upsample) into :class:`PlanLayer`."""
    layers: list[PlanLayer] = []
    i = 0
    while i < len(ops):
        conv = ops[i]
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"ops[{i}] is a {type(conv).__name__}, expected Conv2d")
        i += 1
        bn = ops[i] if i < len(ops) and isinstance(ops[i], nn.BatchNorm2d) else None
        i += bn is not None
        layer = PlanLayer(*_fold(conv, bn), dilation=conv.dilation[0], padding=conv.padding[0],
                          relu=False)
        while i < len(ops) and not isinstance(ops[i], nn.Conv2d):
            op = ops[i]
            if isinstance(op, nn.ReLU):
                layer.relu = True
            elif isinstance(op, nn.MaxPool2d):
                layer.pool = int(op.kernel_size)
            elif isinstance(op, nn.Upsample):
                layer.upsample = int(op.scale_factor)
            else:
                raise TypeError(f"ops[{i}]: cannot fold a {type(op).__name__}")
            i += 1
        layers.append(layer)
    return layers


class InferencePlan:
    """Dense R2D2 outputs of a folded network (see the module docstring).

    Args:
        layers: the folded trunk.
        heads_weight: ``(2, D, 1, 1)``: reliability logit difference, repeatability logit.
        heads_bias: ``(2,)``.
    """

    def __init__(self, layers: list[PlanLayer], heads_weight: torch.Tensor,
                 heads_bias: torch.Tensor) -> None:
        self.layers = layers
        self.heads_weight = heads_weight
        self.heads_bias = heads_bias

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense maps of normalised images ``(B, 3, H, W)``.

        Returns:
            ``raw_descriptors`` ``(B, D, H, W)`` (channels-last, *not* normalised: see
            :meth:`descriptors_at`), ``reliability`` and ``repeatability`` ``(B, 1, H, W)``.
        """
        x = images.contiguous(memory_format=torch.channels_last)
        for layer in self.layers:
            x = layer(x)
        logits = F.conv2d(x * x, self.heads_weight, self.heads_bias)
        soft = F.softplus(logits[:, 1:2])
        return {"raw_descriptors": x, "reliability": torch.sigmoid(logits[:, 0:1]),
                "repeatability": soft / (1 + soft)}

    @staticmethod
    def descriptors_at(raw: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Unit descriptors ``(n, D)`` of image 0 of ``raw`` ``(B, D, H, W)`` at pixels
        ``(ys, xs)`` (``F.normalize``'s formula, applied to the samples only)."""
        return F.normalize(raw[0, :, ys, xs].t(), p=2, dim=1)


def compile_plan(net: nn.Module) -> InferencePlan:
    """The :class:`InferencePlan` of an :class:`~semcorr.features.r2d2.R2D2Net`'s current
    weights (BatchNorm uses its running statistics, as in eval mode).

    Args:
        net: a network with ``ops``, ``clf`` (2 outputs) and ``sal`` (1 output).
    """
    clf_w, clf_b = net.clf.weight.detach(), net.clf.bias.detach()
    heads_weight = torch.cat([clf_w[1:2] - clf_w[0:1], net.sal.weight.detach()])
    heads_bias = torch.cat([clf_b[1:2] - clf_b[0:1], net.sal.bias.detach()])
    return InferencePlan(_layers(net.ops), heads_weight, heads_bias)
