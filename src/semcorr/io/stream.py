"""Decoding images ahead of their consumer: a bounded pool of worker threads.

PIL decodes (and :func:`~semcorr.io.load_image` converts) with the GIL released for most of the
work, so a few threads decode the next images while the main thread runs the backbone on the
current ones. :func:`prefetch` keeps the order of its input and holds at most ``depth`` items
that were handed to a worker but not yet to the consumer, so memory stays bounded however long
the input is; ``workers=0`` is the sequential path (each item loaded when it is asked for).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterable[T], load: Callable[[T], R], workers: int = 2,
             depth: int | None = None) -> Iterator[R]:
    """``load(item)`` for every item, in order, computed ahead by ``workers`` threads.

    Args:
        items: any iterable; it is read lazily, at most ``depth`` items ahead of the consumer.
        load: called once per item, in a worker thread (in the caller's with ``workers=0``).
            An exception it raises is raised to the consumer at that item's position.
        workers: threads; ``0`` loads each item in the calling thread when it is asked for.
        depth: most items submitted to a worker and not yet yielded (default
            ``2 * workers``); while the consumer works on an item, ``depth - 1`` load ahead.

    Yields:
        ``load(item)`` for each item, in the order of ``items``.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        yield from (load(item) for item in items)
        return
    depth = 2 * workers if depth is None else depth
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    source = iter(items)
    pending: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="semcorr-decode") as pool:
        try:
            while True:
                _fill(pending, source, pool, load, depth)
                if not pending:
                    return
                # the popped item counts until it is yielded: depth - 1 load meanwhile
                yield pending.popleft().result()
        finally:  # the consumer stopped early or failed: drop what was not started
            for future in pending:
                future.cancel()


def _fill(pending: deque[Future[R]], source: Iterator[T], pool: ThreadPoolExecutor,
          load: Callable[[T], R], depth: int) -> None:
    """Submit items from ``source`` until ``depth`` are pending or the source is exhausted."""
    while len(pending) < depth:
        try:
            item = next(source)
        except StopIteration:
            return
        pending.append(pool.submit(load, item))
