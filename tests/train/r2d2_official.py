"""Import naver/r2d2's released data code from ../shared/reference for the equivalence tests.

What cannot be imported here is stubbed, and nothing else:

* ``torchvision`` is not installable: a minimal ``torchvision.transforms`` with exactly what
  the imported files call (``Compose``, ``Lambda``, ``ToTensor``, ``Normalize``), written with
  numpy, PIL and torch;
* numpy 2 removed ``np.float`` (used by ``RandomTilting``): it is set to ``float``;
* Pillow 10 removed ``Image.ANTIALIAS`` (used by the pair loader): it is set to
  ``Image.LANCZOS``, which it was an alias of;
* numpy 2 raises on ``np.uint8(-10.3)`` (the hue shift of ``adjust_hue`` for a negative
  factor), where numpy 1, which the released code was written for, truncated and wrapped
  modulo 256: ``transforms_tools`` sees a numpy whose ``uint8`` does that for Python numbers.

:func:`official_modules` is a context manager: the stubs and the reference's ``tools`` and
``datasets`` packages are removed from ``sys.modules`` (and the attributes restored) on exit, so
no other test sees them.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from shared_data import SHARED

R2D2_REFERENCE = SHARED / "reference" / "naver+r2d2"


class _WrappingUint8(np.uint8):
    """``np.uint8`` (also as a dtype), except that a Python number wraps modulo 256."""

    def __new__(cls, value: object) -> np.uint8:
        if isinstance(value, (int, float)):
            value = int(value) % 256
        return np.uint8(value)


class _Numpy1Uint8(types.ModuleType):
    """numpy, with :class:`_WrappingUint8` as ``uint8`` (numpy 1's cast of Python numbers)."""

    uint8 = _WrappingUint8

    def __getattr__(self, name: str) -> object:
        return getattr(np, name)


def _torchvision_stub() -> types.ModuleType:
    transforms = types.ModuleType("torchvision.transforms")

    class Compose:
        def __init__(self, transforms_: list) -> None:
            self.transforms = list(transforms_)

        def __call__(self, x: object) -> object:
            for t in self.transforms:
                x = t(x)
            return x

    class Lambda:
        def __init__(self, fn) -> None:  # noqa: ANN001
            self.fn = fn

        def __call__(self, x: object) -> object:
            return self.fn(x)

    class ToTensor:
        def __call__(self, img: object) -> torch.Tensor:
            arr = np.asarray(img, dtype=np.uint8)
            return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float() / 255

    class Normalize:
        def __init__(self, mean: list[float], std: list[float]) -> None:
            self.mean, self.std = mean, std

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            mean = torch.tensor(self.mean).view(-1, 1, 1)
            return (x - mean) / torch.tensor(self.std).view(-1, 1, 1)

    transforms.Compose, transforms.Lambda = Compose, Lambda
    transforms.ToTensor, transforms.Normalize = ToTensor, Normalize
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    return package


@contextlib.contextmanager
def official_modules() -> Iterator[SimpleNamespace]:
    """The reference's ``tools.transforms``, ``tools.transforms_tools``, ``tools.dataloader``,
    ``datasets.pair_dataset``, ``datasets.aachen`` and ``datasets.imgfolder`` modules."""
    if not R2D2_REFERENCE.is_dir():
        pytest.skip(f"{R2D2_REFERENCE} is absent (the shared reference code)")
    before = set(sys.modules)
    had_float, had_antialias = hasattr(np, "float"), hasattr(Image, "ANTIALIAS")
    stub = _torchvision_stub()
    sys.modules.setdefault("torchvision", stub)
    sys.modules.setdefault("torchvision.transforms", stub.transforms)
    if not had_float:
        setattr(np, "float", float)  # noqa: B010
    if not had_antialias:
        Image.ANTIALIAS = Image.LANCZOS  # type: ignore[attr-defined]
    sys.path.insert(0, str(R2D2_REFERENCE))
    try:
        import datasets.aachen as aachen  # noqa: PLC0415
        import datasets.imgfolder as imgfolder  # noqa: PLC0415
        import datasets.pair_dataset as pair_dataset  # noqa: PLC0415
        import tools.dataloader as dataloader  # noqa: PLC0415
        import tools.transforms as transforms  # noqa: PLC0415
        import tools.transforms_tools as transforms_tools  # noqa: PLC0415

        transforms_tools.np = _Numpy1Uint8("numpy")
        yield SimpleNamespace(transforms=transforms, tools=transforms_tools,
                              dataloader=dataloader, pair_dataset=pair_dataset,
                              aachen=aachen, imgfolder=imgfolder)
    finally:
        sys.path.remove(str(R2D2_REFERENCE))
        for name in set(sys.modules) - before:
            del sys.modules[name]
        if not had_float:
            delattr(np, "float")  # noqa: B010
        if not had_antialias:
            del Image.ANTIALIAS  # type: ignore[attr-defined]
