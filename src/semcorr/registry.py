"""A tiny registry: one per kind of plug-in (backbones, heads, datasets)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from semcorr.errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to constructors.

    Example:
        >>> BACKBONES = Registry("backbone")
        >>> @BACKBONES.register("dense-sift")
        ... def dense_sift(*, weights=None, **options): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, *names: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a constructor under one or more names."""

        def wrap(fn: Callable[..., T]) -> Callable[..., T]:
            for name in names:
                if name in self._entries:
                    raise ValueError(f"{self.kind} {name!r} is registered twice")
                self._entries[name] = fn
            return fn

        return wrap

    def get(self, name: str) -> Callable[..., T]:
        """The constructor registered as ``name``.

        Raises:
            UnknownNameError: naming the known entries.
        """
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries))
            raise UnknownNameError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def create(self, name: str, **kwargs: object) -> T:
        """Build the entry ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
