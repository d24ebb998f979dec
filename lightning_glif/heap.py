"""The Python heap held out of the garbage collector's full passes while a trainer runs.

Why: by the time a run starts, the interpreter holds about half a million objects (torch,
Lightning, matplotlib, jsonargparse and the configs), and each full (generation 2) collection
walks all of them: in a row-digits ``train.py fit`` on a 2-core CPU, one such collection during
training took 0.26-0.27 s (timed with ``gc.callbacks``), about 3% of the run, for objects that
live as long as the process. :func:`frozen_heap` moves them to the permanent generation
(``gc.freeze``) for the run, so that collections during the run walk only what the run
allocates; on exit they go back (``gc.unfreeze``) and garbage among them is collected as
before, so nothing is kept that would otherwise be freed.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the objects alive now for the body; unfreeze them after, whatever happens.

    Does nothing when the collector is disabled or something else has frozen objects already
    (their owner decides when they thaw).
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
