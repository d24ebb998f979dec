"""A stage's epoch statistics (mean loss, top-1 and top-5 accuracy) as one torchmetrics ``Metric``.

Why not torchmetrics' ``MulticlassAccuracy`` pair and a ``MeanMetric``: their three updates cost
about 0.3 ms a step on a CPU (the stat-scores machinery, one-hot encodings, a wrapped update
each), a few per cent of a whole embedded run (row digits: 1500 updates in a 6.5 s run;
``benchmarks/loop_overhead.py``). This one counts the same things with one wrapped update: the
batch-size-weighted loss sum, the top-1 hits (``argmax``, as ``MulticlassAccuracy(top_k=1)``
decides ties) and the top-k hits (the target among ``topk``'s k indices, as
``MulticlassAccuracy(top_k=k)``). States are sums, so DDP reduces them by summing (torchmetrics
does, in ``compute``).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class EpochStats(Metric):
    """Mean loss and accuracies of one stage over an epoch.

    :meth:`compute` returns ``{"loss": mean loss, "acc": top-1 accuracy}`` and, when
    ``num_classes > top_k``, ``"acc_top5"`` (for ``top_k=5``): the top-k accuracy.

    Args:
        num_classes: classes of the logits.
        top_k: the k of the second accuracy.
        every: count the batches this many at a time (see :meth:`update`); the states
            (``loss_sum``, ``hits``, ``samples``) hold what is counted.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, top_k: int = 5, every: int = 16) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"EpochStats: every must be >= 1, got {every}.")
        self.num_classes = num_classes
        self.top_k = top_k if num_classes > top_k else None
        self.every = every
        self.add_state("loss_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hits", torch.zeros(2, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("samples", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        # The batches not counted yet: (loss, logits, target), counted every `every` batches.
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """``loss``: the batch's mean loss; ``logits`` ``[B, num_classes]``; ``target`` ``[B]``.

        Kept (detached) and counted together with the next ones, every :attr:`every` batches
        and before :meth:`compute`: a dozen small ops per count, which on small models cost
        more than the counting itself if run per batch (~0.17 ms a row-digits step)."""
        self._pending.append((loss.detach(), logits.detach(), target))
        if len(self._pending) >= self.every:
            self._count()

    def _count(self) -> None:
        if not self._pending:
            return
        losses, logits, target = zip(*self._pending, strict=True)
        sizes = [t.shape[0] for t in target]
        self._pending = []
        weights = torch.tensor(sizes, dtype=torch.float64, device=self.loss_sum.device)
        self.loss_sum += (torch.stack(losses).double() * weights).sum()
        logits, target = torch.cat(logits), torch.cat(target)
        top1 = (logits.argmax(1) == target).sum()
        if self.top_k is None:
            self.hits[0] += top1
        else:
            topk = (logits.topk(self.top_k, 1).indices == target[:, None]).any(1).sum()
            self.hits += torch.stack([top1, topk])
        self.samples += sum(sizes)

    def sync(self, *args, **kwargs) -> None:
        self._count()  # every batch counted before the states are reduced (compute syncs first)
        super().sync(*args, **kwargs)

    def reset(self) -> None:
        self._pending = []
        super().reset()

    def compute(self) -> dict[str, torch.Tensor]:
        samples = self.samples.double()
        out = {
            "loss": (self.loss_sum / samples).float(),
            "acc": (self.hits[0] / samples).float(),
        }
        if self.top_k is not None:
            out[f"acc_top{self.top_k}"] = (self.hits[1] / samples).float()
        return out
