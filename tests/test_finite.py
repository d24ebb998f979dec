"""NonFiniteGuard's checks: ``non_finite`` (exact) and its per-step screen ``maybe_non_finite``
(public torch, on the device) against each kind of non-finite value, and the guard deciding once
per optimizer step, before the update, naming the first broken loss of the accumulated batches
and letting finite gradients through even where their sum overflows."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_glif.callbacks import NonFiniteGuard, NonFiniteLossError
from lightning_glif.callbacks.finite import maybe_non_finite, non_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_non_finite_finds_each_kind_and_leaves_every_value(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(37, generator=g).to(dtype)
    a[:3] = torch.tensor([-0.0, 0.0, 1e-30]).to(dtype)  # signed zero, a tiny (or flushed) value
    b = torch.randn(3, 5, generator=g, dtype=torch.float64)  # another dtype: another group
    before = (a.clone(), b.clone())
    found = non_finite([a, None, b])
    assert isinstance(found, torch.Tensor) and found.dtype == torch.bool and not found
    assert torch.equal(a, before[0]) and torch.equal(b, before[1]) and torch.signbit(a[0])
    for bad in (float("nan"), float("inf"), float("-inf")):
        c = a.clone()
        c[20] = bad
        assert non_finite([b, c]) and not non_finite([c[:20]])  # the rest of it is finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.complex64])
def test_the_screen_fires_on_each_kind_in_any_position(dtype):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, generator=g).to(dtype)
    b = torch.randn(2, 3, generator=g, dtype=torch.float64)  # promoted with a in one sum
    found = maybe_non_finite([a, None, torch.tensor([1, 2]), b])
    assert isinstance(found, torch.Tensor) and found.dtype == torch.bool and not found
    for bad in (float("nan"), float("inf"), float("-inf")):
        for where in (0, 25, 49):
            c = a.clone()
            c[where] = bad
            assert maybe_non_finite([b, c]), (bad, where)
    both = a.clone()
    both[:2] = torch.tensor([float("inf"), float("-inf")]).to(dtype)  # their sum is NaN
    assert maybe_non_finite([both]) and non_finite([both])
    assert maybe_non_finite([torch.sparse_coo_tensor([[1]], [float("nan")], (3,))])
    assert not maybe_non_finite([]) and not maybe_non_finite([None])


def test_half_precision_is_summed_in_float32():
    # 2000 x 60000 overflows float16 (max 65504) but not float32: no false alarm
    assert not maybe_non_finite([torch.full((2000,), 60000.0, dtype=torch.float16)])


def test_large_finite_values_are_finite():
    # 1e30 squared overflows float32: a check by the 2-norm would call this Inf
    big = torch.full((4,), 1e30)
    assert torch.isinf(torch.linalg.vector_norm(big))
    assert not non_finite([big])
    # 4 x 1e38 sums past float32's range (3.4e38): the screen fires, the exact check clears it
    assert maybe_non_finite([torch.full((4,), 1e38)]) and not non_finite([torch.full((4,), 1e38)])


def test_non_finite_skips_what_cannot_be_non_finite_and_reads_sparse_values():
    assert not non_finite([]) and not non_finite([None])
    assert not non_finite([torch.tensor([1, 2])])  # integers
    assert non_finite([torch.sparse_coo_tensor([[0, 2]], [1.0, float("nan")], (4,))])
    g = torch.randn(4, requires_grad=True) * 2  # part of a graph (create_graph=True)
    assert not non_finite([g]) and g.grad_fn is not None


def fake_trainer() -> SimpleNamespace:
    """What NonFiniteGuard reads of the trainer."""
    plugin = SimpleNamespace(forward_context=contextlib.nullcontext)
    return SimpleNamespace(
        global_step=7, current_epoch=1, checkpoint_callbacks=[], precision_plugin=plugin,
        precision="32-true",
    )  # fmt: skip


def test_the_loss_is_decided_at_the_optimizer_step_naming_the_first_broken_batch():
    """Two accumulated batches, the second with a NaN loss: nothing is raised at the backward
    (no read there), the optimizer step is stopped, and batch 1 is named."""
    model = nn.Linear(2, 1)
    guard, trainer = NonFiniteGuard(), fake_trainer()
    guard.on_train_start(trainer, model)
    for batch_idx, loss in enumerate([1.5, float("nan")]):
        guard.on_train_batch_start(trainer, model, torch.ones(3, 2), batch_idx)
        guard.on_before_backward(trainer, model, torch.tensor(loss))
    guard.on_train_batch_start(trainer, model, torch.zeros(3, 2), 2)  # a later batch
    with pytest.raises(NonFiniteLossError) as error:
        guard.on_before_optimizer_step(trainer, model, None)
    assert str(error.value).startswith(
        "non-finite training loss (nan) at global step 7 (epoch 1, batch 1): "
    )
    # the next optimizer step starts afresh: its finite loss and gradients pass
    guard.on_before_backward(trainer, model, torch.tensor(0.5))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    guard.on_before_optimizer_step(trainer, model, None)


def test_a_gradient_names_its_parameter_and_16_mixed_leaves_gradients_to_the_scaler():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    guard, trainer = NonFiniteGuard(), fake_trainer()
    guard.on_train_start(trainer, model)
    guard.on_train_batch_start(trainer, model, torch.ones(3, 2), 0)
    guard.on_before_backward(trainer, model, torch.tensor(0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model[1].weight.grad[0, 1] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient \(first: 1.weight\)"):
        guard.on_before_optimizer_step(trainer, model, None)
    trainer.precision = "16-mixed"
    guard.on_before_optimizer_step(trainer, model, None)  # the scaler skips such a step


def test_finite_gradients_whose_sum_overflows_are_applied():
    """The screen fires on gradients of 1e38 (their sum is Inf in float32), the exact check finds
    every one finite, and the step goes on."""
    model = nn.Linear(4, 1)
    guard, trainer = NonFiniteGuard(), fake_trainer()
    guard.on_train_start(trainer, model)
    guard.on_train_batch_start(trainer, model, torch.ones(3, 4), 0)
    guard.on_before_backward(trainer, model, torch.tensor(0.5))
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e38)
    assert maybe_non_finite([p.grad for p in model.parameters()])
    guard.on_before_optimizer_step(trainer, model, None)  # no error
    model.bias.grad[0] = float("nan")
    guard.on_before_backward(trainer, model, torch.tensor(0.5))
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient \(first: bias\)"):
        guard.on_before_optimizer_step(trainer, model, None)
