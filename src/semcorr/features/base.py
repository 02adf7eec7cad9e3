"""Stage 1: the dense backbone contract and the backbone registry."""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from semcorr.errors import InputError
from semcorr.features.precision import auto_precision, native_bf16, store_matmul_weights
from semcorr.geometry import ResizePad
from semcorr.registry import Registry

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneInfo",
    "CONDITIONS",
    "PRECISIONS",
    "autocast",
    "create_backbone",
    "inference_precision",
    "list_backbones",
    "register_backbone",
    "register_variants",
    "resolve_precision",
]


@dataclass(frozen=True)
class BackboneInfo:
    """Metadata of a backbone, kept beside the model (timm's ``PretrainedCfg`` in spirit).

    Attributes:
        name: registry name.
        stride: input pixels per feature cell.
        image_size: default side of the square input, in pixels (a multiple of ``stride``).
        mean, std: per-channel normalisation applied to [0, 1] RGB input.
        weights: where weights come from (hub id, URL) or ``None`` for weight-free backbones.
        license: licence of the weights (or of the method when weight-free).
    """

    name: str
    stride: int
    image_size: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    weights: str | None = None
    license: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for an empty module)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


class Backbone(nn.Module):
    """A dense feature extractor.

    Subclasses set ``info`` and implement :meth:`features`. Inputs are square images whose
    side is ``info.image_size`` (see :class:`~semcorr.geometry.ResizePad`); the device and dtype
    of the computation follow the module's buffers/parameters.
    """

    info: BackboneInfo

    @property
    def stride(self) -> int:
        return self.info.stride

    @property
    def image_size(self) -> int:
        return self.info.image_size

    @property
    def device(self) -> torch.device:
        return module_device(self)

    def transform_for(self, width: int, height: int) -> ResizePad:
        """The resize/pad transform that brings a ``width x height`` image to this backbone."""
        return ResizePad(width, height, self.info.image_size, self.info.stride)

    def prepare(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[ResizePad]]:
        """Resize/pad images ``(3, H_i, W_i)`` in [0, 1] into one batch ``(B, 3, S, S)``."""
        transforms = [self.transform_for(img.shape[-1], img.shape[-2]) for img in images]
        device = self.device
        batch = torch.cat(
            [t.apply(img.to(device)[None]) for t, img in zip(transforms, images)], dim=0
        )
        return batch, transforms

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Apply the backbone's mean/std to ``(B, 3, S, S)`` images in [0, 1]."""
        mean = images.new_tensor(self.info.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.info.std).view(1, 3, 1, 1)
        return (images - mean) / std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Dense features of normalised images.

        Args:
            images: ``(B, 3, S, S)`` after :meth:`normalize`.

        Returns:
            ``(B, C, S / stride, S / stride)`` feature maps (not necessarily unit-norm).
        """
        raise NotImplementedError

    def feature_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named parts of the features of normalised images (for fusion).

        Args:
            images: ``(B, 3, S, S)`` after :meth:`normalize`.

        Returns:
            ``{part name: (B, C_k, h_k, w_k)}``; a single-part backbone returns
            ``{info.name: features(images)}``. Parts may have different grids.
        """
        return {self.info.name: self.features(images)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Feature maps ``(B, C, h, w)`` of square images ``(B, 3, S, S)`` in [0, 1]."""
        return self.features(self.normalize(images))

    def extract(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[ResizePad]]:
        """Features of original images ``(3, H_i, W_i)``: ``(B, C, h, w)`` and their transforms."""
        batch, transforms = self.prepare(images)
        with torch.inference_mode():
            return self(batch), transforms

    @property
    def condition(self) -> str:
        """What the features depend on besides the image, one of :data:`CONDITIONS`:

        * ``"image"``: nothing (every backbone but the ones below);
        * ``"category"``: the object's category (e.g. SD4Match's per-class prompt);
        * ``"pair"``: both images of the pair (e.g. SD4Match's conditional prompt).

        :meth:`conditioned` fixes the condition and gives an ``"image"`` backbone.
        """
        return "image"

    def conditioned(
        self,
        *,
        category: str | None = None,
        pair: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Backbone:
        """This backbone with its condition fixed, as a backbone whose features depend on the
        image only (sharing this one's modules). A backbone whose :attr:`condition` is
        ``"image"`` returns itself.

        Args:
            category: the object's category (for ``"category"``).
            pair: the source and target images ``(3, H_i, W_i)`` in [0, 1] (for ``"pair"``).
        """
        return self


#: What a backbone's features may depend on besides the image (:attr:`Backbone.condition`).
CONDITIONS: tuple[str, ...] = ("image", "category", "pair")

#: Names of the computation precisions a backbone may run in (``fp32`` = no autocast;
#: ``auto`` = ``bf16`` or ``fp32``, whichever is faster on the device, see
#: :mod:`semcorr.features.precision`).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "auto": None,
}

_WARNED_SLOW_BF16: set[str] = set()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` with ``auto`` replaced by the measured choice for ``device``; warns once
    when ``bf16`` is asked for on a CPU without a native bf16 matmul (slower than fp32)."""
    if precision == "auto":
        return auto_precision(device)
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        if "cpu" not in _WARNED_SLOW_BF16:
            _WARNED_SLOW_BF16.add("cpu")
            warnings.warn("this CPU has no native bf16 matmul (AVX512-BF16/AMX): bf16 runs "
                          "slower than fp32 here; precision='auto' picks the faster one",
                          RuntimeWarning, stacklevel=3)
    return precision


def inference_precision(module: nn.Module, device: torch.device, precision: str) -> str:
    """The resolved precision of an inference forward of ``module`` on ``device``; under
    bf16/fp16 with gradients off, its linear weights are stored in that dtype once
    (:func:`~semcorr.features.precision.store_matmul_weights`: same output, no re-casts)."""
    precision = resolve_precision(precision, device)
    dtype = PRECISIONS[precision]
    if dtype is not None and not torch.is_grad_enabled():
        store_matmul_weights(module, dtype)
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Mixed-precision context for a backbone's forward on ``device`` (CPU included).

    Args:
        device: where the computation runs (from the inputs).
        precision: ``fp32`` (no autocast), ``bf16``, ``fp16`` or ``auto``.
    """
    dtype = PRECISIONS[resolve_precision(precision, device)]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


BACKBONES: Registry[Backbone] = Registry("backbone")
register_backbone = BACKBONES.register


def register_variants(names: Iterable[str], factory: Callable[..., Backbone], family: str
                      ) -> None:
    """Register every name as ``factory(name, weights=..., **options)`` (one family of models
    sharing a factory, e.g. the DINOv2 sizes). An option the factory does not take is refused
    with an :class:`InputError` naming the backbone before anything is built."""
    signature = inspect.signature(factory)
    for name in names:
        def constructor(*, weights: str | None = None, name: str = name,
                        **options: Any) -> Backbone:
            try:
                signature.bind(name, weights=weights, **options)
            except TypeError as exc:
                raise InputError(f"{name}: {exc}") from None
            return factory(name, weights=weights, **options)

        constructor.__doc__ = f"{family} backbone {name!r}; see {factory.__name__} for options."
        register_backbone(name)(constructor)


def create_backbone(name: str, weights: str | None = None, **options: object) -> Backbone:
    """Build the backbone registered as ``name``.

    Args:
        name: see :func:`list_backbones`.
        weights: a hub id, a local file or folder, or ``None`` for the default/weight-free.
        **options: backbone-specific options (unknown ones are refused).

    Raises:
        UnknownNameError: for an unknown name.
    """
    constructor = BACKBONES.get(name)
    return constructor(weights=weights, **options)


def list_backbones() -> list[str]:
    """Names of the registered backbones."""
    return BACKBONES.names()
