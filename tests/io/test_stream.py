"""Tests of the bounded decoding pool (:func:`semcorr.io.stream.prefetch`) and of the
thread-safe decompression-bomb filter of :mod:`semcorr.io.image`."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator

import pytest
from PIL import Image

from semcorr.io import image as image_module
from semcorr.io.stream import prefetch


class _Instrumented:
    """A loader and an input that record how far the pool ran ahead of its consumer."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.lock = threading.Lock()
        self.pulled = 0  # items taken from the input iterator
        self.decoded = 0  # loads finished
        self.consumed = 0  # items the consumer has received
        self.most_ahead = 0  # max of decoded - consumed, seen by any loader
        self.threads: set[str] = set()

    def items(self) -> Iterator[int]:
        for i in range(self.count):
            self.pulled += 1
            yield i

    def load(self, item: int) -> int:
        with self.lock:
            self.decoded += 1
            self.most_ahead = max(self.most_ahead, self.decoded - self.consumed)
            self.threads.add(threading.current_thread().name)
        return item * 10


@pytest.mark.parametrize("workers, depth", [(1, 1), (2, 3), (3, 5)])
def test_prefetch_is_bounded_and_ordered(workers: int, depth: int) -> None:
    probe = _Instrumented(40)
    received = []
    for value in prefetch(probe.items(), probe.load, workers=workers, depth=depth):
        with probe.lock:
            probe.consumed += 1
            # the input is read lazily: never more than depth items past the consumer
            assert probe.pulled <= probe.consumed + depth - 1, (probe.pulled, probe.consumed)
        received.append(value)
    assert received == [10 * i for i in range(40)]
    # no more than `depth` decoded images waiting for the consumer at any time
    assert 1 <= probe.most_ahead <= depth
    assert all(name.startswith("semcorr-decode") for name in probe.threads)


def test_prefetch_without_workers_loads_in_the_caller() -> None:
    probe = _Instrumented(5)
    stream = prefetch(probe.items(), probe.load, workers=0)
    assert probe.pulled == 0  # nothing done before it is asked for
    assert next(stream) == 0 and probe.pulled == 1 and probe.decoded == 1
    assert list(stream) == [10, 20, 30, 40]
    assert probe.threads == {threading.current_thread().name}


def test_prefetch_raises_at_the_failing_item_and_stops() -> None:
    def load(item: int) -> int:
        if item == 3:
            raise ValueError("bad item 3")
        return item

    seen = []
    probe = _Instrumented(100)
    with pytest.raises(ValueError, match="bad item 3"):
        for value in prefetch(probe.items(), load, workers=2, depth=4):
            seen.append(value)
    assert seen == [0, 1, 2]
    assert probe.pulled <= 3 + 4  # the rest of the input was never read


def test_prefetch_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="workers"):
        list(prefetch([1], str, workers=-1))
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([1], str, workers=1, depth=0))


def test_bomb_filter_stays_while_another_thread_decodes() -> None:
    """Overlapping decodes in two threads, the first in being the first out: it must not drop
    the filter of the one still decoding (``warnings.catch_warnings`` restores the list it saw
    on entry, without that filter), and the last one out leaves the filters as they were."""
    before = list(warnings.filters)
    inside, release = threading.Event(), threading.Event()
    refused_in_thread: list[bool] = []

    def other() -> None:
        with image_module._bomb_warnings_refused():
            inside.set()
            release.wait()
            try:
                warnings.warn("bomb", Image.DecompressionBombWarning, stacklevel=1)
                refused_in_thread.append(False)
            except Image.DecompressionBombWarning:
                refused_in_thread.append(True)

    with image_module._bomb_warnings_refused():
        thread = threading.Thread(target=other)
        thread.start()
        inside.wait()
    release.set()  # this thread's decode has ended; the other one's goes on
    thread.join()
    assert refused_in_thread == [True]
    assert list(warnings.filters) == before
