"""Which computation precision pays on this machine, and the bf16/fp16 forward without re-casts.

``precision="auto"`` resolves, per device, to ``bf16`` when a ViT-block-like probe (linear
layers, scaled-dot-product attention, GELU, layer norm) runs clearly faster under bf16 autocast
than in fp32, else to ``fp32``. A CPU without a native bf16 matmul (no AVX512-BF16 or AMX, e.g.
an AVX2-only one) runs bf16 matmuls several times *slower* than fp32, so ``auto`` is ``fp32``
there. The probe is measured once per device, torch version and thread count and cached as JSON
in the user cache directory (``$XDG_CACHE_HOME/semcorr/precision.json``, default
``~/.cache/semcorr``); ``SEMCORR_PRECISION_CACHE`` names another file, or disables the cache
when ``0`` (the probe then runs once per process).

:func:`store_matmul_weights` keeps every ``nn.Linear`` of an inference model in the autocast
dtype, so autocast stops casting the weights again on every call; its output is bit-identical to
plain autocast (autocast rounds the same weights to the same dtype).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AUTO_MARGIN",
    "auto_precision",
    "cache_key",
    "choose_precision",
    "native_bf16",
    "precision_cache_path",
    "probe_seconds",
    "store_matmul_weights",
]

#: bf16 is chosen only when the probe runs at least this many times faster than fp32.
AUTO_MARGIN = 1.2
#: Environment variable naming the cache file (``0``: no cache file).
CACHE_ENV = "SEMCORR_PRECISION_CACHE"

_MEMO: dict[str, str] = {}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has a native bf16 matmul (oneDNN's check on CPU: AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_precision(fp32_seconds: float, bf16_seconds: float,
                     margin: float = AUTO_MARGIN) -> str:
    """``bf16`` when the bf16 probe is at least ``margin`` times faster than fp32, else
    ``fp32`` (also when either time is not a positive finite number)."""
    valid = all(t > 0 and t != float("inf") for t in (fp32_seconds, bf16_seconds))
    return "bf16" if valid and fp32_seconds >= margin * bf16_seconds else "fp32"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cache_key(device: torch.device) -> str:
    """What the probe's answer depends on: device model, torch version, CPU threads."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_name()} {torch.backends.cpu.get_cpu_capability()}"
    return f"{device.type}|{name}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def precision_cache_path() -> Path | None:
    """The cache file, or ``None`` when ``$SEMCORR_PRECISION_CACHE`` is ``0``."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("0", "off", "no", "false", "") else Path(value)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "semcorr" / "precision.json"


def _read_cache(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, entry: dict[str, object]) -> None:
    """Add ``entry`` under ``key``, atomically (temporary file + rename in the same folder);
    a cache that cannot be written is skipped silently (the answer is only an optimisation)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = entry
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False) as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            temp = handle.name
        os.replace(temp, path)
    except OSError:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _probe_step(device: torch.device, dtype: torch.dtype | None, tokens: int, dim: int,
                heads: int) -> Callable[[], None]:
    """One pre-norm ViT block ``(1, tokens, dim)`` run as the backbones run it: under
    autocast in ``dtype`` with linear weights stored in ``dtype`` (``None``: fp32)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, tokens, dim, generator=gen).to(device)
    weights = [torch.randn(o, i, generator=gen).to(device) / i**0.5
               for o, i in ((3 * dim, dim), (dim, dim), (4 * dim, dim), (dim, 4 * dim))]
    if dtype is not None:
        weights = [w.to(dtype) for w in weights]
    qkv_w, out_w, up_w, down_w = weights

    def step() -> None:
        cast = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                else contextlib.nullcontext())
        with torch.inference_mode(), cast:
            h = F.layer_norm(x, (dim,))
            q, k, v = F.linear(h, qkv_w).view(1, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, tokens, dim)
            y = x + F.linear(a, out_w)
            F.linear(F.gelu(F.linear(F.layer_norm(y, (dim,)), up_w)), down_w).sum().item()

    return step


def probe_seconds(device: torch.device, *, tokens: int = 1024, dim: int = 256, heads: int = 4,
                  repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` seconds of the probe block in fp32 and under bf16 autocast,
    interleaved (fp32, bf16, fp32, ...) so that other load hits both alike. The default
    shape spends ~40% of its FLOPs in attention, as ViT-B/14 does at 840 px."""
    steps = {name: _probe_step(device, dtype, tokens, dim, heads)
             for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))}
    best = {name: float("inf") for name in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def auto_precision(device: torch.device,
                   measure: Callable[[torch.device], dict[str, float]] = probe_seconds) -> str:
    """``bf16`` or ``fp32``, whichever the probe found faster on ``device`` (see the module
    docstring): memoised in the process, cached on disk across processes."""
    key = cache_key(device)
    if key in _MEMO:
        return _MEMO[key]
    path = precision_cache_path()
    entry = _read_cache(path).get(key) if path is not None else None
    if not isinstance(entry, dict) or entry.get("precision") not in ("fp32", "bf16"):
        try:
            seconds = measure(device)
        except RuntimeError:  # bf16 autocast unsupported on this device
            seconds = {"fp32": 1.0, "bf16": float("inf")}
        entry = {"precision": choose_precision(seconds["fp32"], seconds["bf16"]),
                 "fp32_s": seconds["fp32"], "bf16_s": seconds["bf16"],
                 "native_bf16": native_bf16(device),
                 "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if path is not None:
            _write_cache(path, key, entry)
    _MEMO[key] = str(entry["precision"])
    return _MEMO[key]


def store_matmul_weights(module: nn.Module, dtype: torch.dtype) -> None:
    """Store the weight and bias of every ``nn.Linear`` in ``module`` in ``dtype`` (in place).

    For inference under autocast in ``dtype``: autocast casts an ``F.linear``'s fp32 weight
    to ``dtype`` on every call; stored in ``dtype`` it is used as it is, with the same values.
    Layer norms keep their fp32 parameters (and compute in fp32).
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and layer.weight.dtype != dtype:
            layer.to(dtype)
