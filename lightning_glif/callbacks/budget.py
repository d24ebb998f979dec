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

    :meth:`due` is true when ``(now - since) * share >= cost``, where ``since`` is the end of the
    last work (or :meth:`start`) and ``cost`` what the last work took (wrap the work in
    :meth:`spend` to measure it). Before the first measurement ``cost`` is ``prior``; with no
    prior, or before both :meth:`start` and any work, it is due at once (that work measures it).

    ``reserve``: costs held back for work done anyway at the end (the last epoch's images or
    checkpoint): the first time it is due after :meth:`start` needs ``(1 + reserve) * cost``,
    so that what is paced plus the ``reserve`` final works stay within ``share`` of the run.

    Attributes:
        clock: seconds, ``time.perf_counter`` (a test sets a fake one).
        cost: seconds the last work took (``None`` before the first).
    """

    def __init__(
        self,
        share: float,
        clock: Callable[[], float] = time.perf_counter,
        prior: float | None = None,
        reserve: int = 0,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"a time budget's share must be in (0, 1], got {share}.")
        if reserve < 0 or (prior is not None and prior < 0):
            raise ValueError(
                f"a time budget needs reserve >= 0 and prior >= 0, got {reserve} and {prior}."
            )
        self.share = share
        self.clock = clock
        self.prior = prior
        self.reserve = reserve
        self.cost: float | None = None
        self._since: float | None = None
        self._held = reserve

    def start(self) -> None:
        """The paced period begins now (a run's start): hold back ``reserve`` costs again."""
        self._since = self.clock()
        self._held = self.reserve

    def restart(self) -> None:
        """The work is done, at a cost that is no measure of it (a checkpoint linked, not
        written): the time since restarts now, the cost stays as it was."""
        self._since = self.clock()

    def due(self) -> bool:
        cost = self.prior if self.cost is None else self.cost
        if cost is None or self._since is None:
            return True
        if (self.clock() - self._since) * self.share < cost * (1 + self._held):
            return False
        self._held = 0
        return True

    @contextmanager
    def spend(self) -> Iterator[None]:
        start = self.clock()
        yield
        self._since = self.clock()
        self.cost = self._since - start
