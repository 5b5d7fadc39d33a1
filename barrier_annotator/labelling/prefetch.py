"""Ordered prefetching: read and decode the next images while the model runs on the current ones.

Image decoding (PIL) and the model (torch) both release the GIL for their heavy parts, so
threads are enough; no process pool, no pickling of decoded frames.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Loaded(Generic[T, R]):
    """One item with its loaded value, or the exception loading it raised."""

    item: T
    value: R | None
    error: Exception | None = None


def prefetch(items: Iterable[T], load: Callable[[T], R], *, workers: int = 2,
             ahead: int = 8) -> Iterator[Loaded[T, R]]:
    """Yield ``load(item)`` for each item in order, with up to ``ahead`` loads running early.

    An ``Exception`` from ``load`` is returned in :attr:`Loaded.error` (one bad image must not
    stop the others); anything else (KeyboardInterrupt) propagates. ``workers`` 0 loads inline.
    Closing the iterator early cancels loads that have not started.
    """
    if workers <= 0:
        for item in items:
            yield _run(load, item)
        return
    pending: collections.deque[tuple[T, Future[Loaded[T, R]]]] = collections.deque()
    source = iter(items)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
    try:
        for item in source:
            pending.append((item, executor.submit(_run, load, item)))
            if len(pending) > max(ahead, workers):
                yield pending.popleft()[1].result()
        while pending:
            yield pending.popleft()[1].result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _run(load: Callable[[T], R], item: T) -> Loaded[T, R]:
    try:
        return Loaded(item, load(item))
    except Exception as error:
        return Loaded(item, None, error)
