"""A time budget for periodic work that is cheap on long epochs and dear on short ones.

Why: a callback's fixed cost (a pair of matplotlib images, ~0.2 s; a set of histograms, ~15 ms; a
checkpoint write) is nothing next to a CIFAR epoch but more than the whole epoch of the embedded
runs, where doing it every epoch made the shipped run about twice as long as a bare loop
(``benchmarks/loop_overhead.py``). A :class:`TimeBudget` says the work is due once the wall time
since it was last done is at least its own measured cost divided by ``share``: it then takes at
most that share of the run, and on slow epochs it is due every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class TimeBudget:
    """Paces one kind of periodic work to at most ``share`` of the wall time.

    :meth:`due` is true before the work was ever done (that first time measures its cost), and
    afterwards when ``(now - end of the last time) * share >= its cost``. Wrap the work in
    :meth:`spend` to measure it.

    Attributes:
        clock: seconds, ``time.perf_counter`` (a test sets a fake one).
        cost: seconds the last work took (``None`` before the first).
    """

    def __init__(self, share: float, clock: Callable[[], float] = time.perf_counter) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"a time budget's share must be in (0, 1], got {share}.")
        self.share = share
        self.clock = clock
        self.cost: float | None = None
        self._done = 0.0

    def due(self) -> bool:
        if self.cost is None:
            return True
        return (self.clock() - self._done) * self.share >= self.cost

    @contextmanager
    def spend(self) -> Iterator[None]:
        start = self.clock()
        yield
        self._done = self.clock()
        self.cost = self._done - start
