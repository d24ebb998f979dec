"""Threshold-dependent batch normalisation (tdBN, Zheng et al., AAAI 2021) for time-first input."""

from __future__ import annotations

import contextlib
import warnings
from functools import partial

import torch
from torch import nn

from lightning_glif.models import saving


class TdBatchNorm(nn.Module):
    r"""Batch norm over the time-flattened batch, scaled by ``alpha * v_threshold`` before the
    affine.

    For input ``x`` of shape ``[T, B, C, ...]`` (any trailing rank: ``[T, B, C]`` after a linear
    layer, ``[T, B, C, H, W]`` after a convolution) the statistics are taken per channel over
    ``(T * B, ...)``, and

    .. math:: y = w \cdot \alpha V_{th} \cdot \hat{x} + b

    ``alpha`` is 1, or ``1/sqrt(2)`` in the two norms that feed a residual addition. With
    ``alpha=1, v_threshold=1`` this is a plain batch norm over time and batch (SEW-style nets).

    The normalisation itself is an inner ``nn.BatchNorm1d(affine=False)``, and the scale and the
    affine live outside it. That is deliberate: ``nn.SyncBatchNorm.convert_sync_batchnorm`` swaps
    the inner norm for a synchronised one and the tdBN scaling survives (the GLIF authors' code
    subclassed BatchNorm and lost its scaling in that conversion).

    Args:
        num_features: channels ``C`` (dim 2 of the input).
        alpha: tdBN's alpha (1, or ``2 ** -0.5`` before a residual addition).
        v_threshold: the threshold the output is scaled to (tdBN's ``V_th``, fixed at 0.5).
        eps: numerical stability term of the batch norm.
        momentum: running-statistics momentum of the batch norm.
        memory_saving: in training, save only the input and per-channel statistics for the
            backward (not the normalised tensor nor a copy for the affine), and let the neuron
            that consumes the output recompute it instead of keeping it
            (:mod:`lightning_glif.models.saving`). Same outputs and running statistics, gradients
            equal within float rounding. Applies while the inner norm is a plain
            ``nn.BatchNorm1d`` (not after a SyncBatchNorm conversion) and outside
            ``torch.compile`` and autocast; otherwise, and in eval mode, the norm runs as
            ``self.bn``. Also settable as the attribute.
    """

    def __init__(
        self,
        num_features: int,
        alpha: float = 1.0,
        v_threshold: float = 0.5,
        eps: float = 1e-5,
        momentum: float = 0.1,
        memory_saving: bool = True,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.memory_saving = bool(memory_saving)
        self.bn = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=False)
        self.register_buffer("scale", torch.tensor(float(alpha) * float(v_threshold)))
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[2] != self.num_features:
            raise ValueError(
                f"TdBatchNorm(num_features={self.num_features}) expects time-first input "
                f"[T, B, C={self.num_features}, ...], got shape {tuple(x.shape)}."
            )
        t, b, c = x.shape[:3]
        # [T, B, C, ...] -> [T*B, C, L]: BatchNorm1d (and SyncBatchNorm) take this for any rank.
        x3 = x.reshape(t * b, c, -1)
        if self._saves_less(x3):
            return self._forward_saving(x, x3)
        return _affine(self.bn(x3), self.weight, self.bias, self.scale, x.shape)

    def _saves_less(self, x3: torch.Tensor) -> bool:
        """Whether the memory-saving training path serves this call (else ``self.bn`` runs)."""
        bn = self.bn
        return (
            self.memory_saving
            and self.training
            and saving.worth_it(x3)
            and saving.active()
            and type(bn) is nn.BatchNorm1d  # not SyncBatchNorm nor any other replacement
            and bn.training
            and not bn.affine
            and bn.track_running_stats
            and bn.running_mean is not None
            and not (bn._forward_hooks or bn._forward_pre_hooks)  # hooks on self.bn still run
            and not torch.is_autocast_enabled(x3.device.type)
            and x3.dtype == self.weight.dtype == bn.running_mean.dtype
            and x3.shape[0] * x3.shape[2] > 1  # else self.bn raises its own error
        )

    def _forward_saving(self, x: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        # The running-statistics update of nn.BatchNorm1d.forward (_BatchNorm), unchanged.
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(bn.num_batches_tracked)
        binary = saving.is_binary(x)  # an identity shortcut's spikes: saved as bits
        with saving.saved_as_bits(x3) if binary else contextlib.nullcontext():
            y, mean, invstd = _TdBatchNormTrain.apply(
                x3, self.weight, self.bias, self.scale, bn.running_mean, bn.running_var,
                momentum, bn.eps, x.shape,
            )
        if not binary:  # a neuron taking y keeps this recipe instead of y (x3 is saved anyway)
            saving.attach_recipe(
                y, partial(_recompute, momentum=momentum, eps=bn.eps, shape=x.shape),
                x3, self.weight, self.bias, self.scale, mean, invstd,
            )
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, scale={self.scale.item():.4g}"


def _affine(normed: torch.Tensor, weight, bias, scale, shape: torch.Size) -> torch.Tensor:
    """tdBN's output ``w * (scale * x_hat) + b`` from the normalised ``[T*B, C, L]``: the one
    formula, in the same ops on every path (the recomputation must match bit for bit)."""
    view = (shape[2],) + (1,) * (len(shape) - 3)
    return weight.view(view) * (scale * normed.reshape(shape)) + bias.view(view)


class _TdBatchNormTrain(torch.autograd.Function):
    """Training-mode tdBN that saves its input ``[T*B, C, L]`` and per-channel statistics only.

    Forward: ``torch.native_batch_norm`` (on CPU what ``nn.BatchNorm1d`` runs: the same batch
    statistics, running-statistics update and normalised values, bit for bit; on CUDA the native
    kernel where ``nn.BatchNorm1d`` may pick cuDNN: equal within rounding), then
    :func:`_affine`. Backward: ``native_batch_norm_backward`` with the effective weight
    ``w * scale`` gives the input gradient, ``sum(grad * x_hat)`` (times ``scale``: the weight's)
    and ``sum(grad)`` (the bias's).
    """

    @staticmethod
    def forward(ctx, x3, weight, bias, scale, running_mean, running_var, momentum, eps, shape):
        normed, mean, invstd = torch.native_batch_norm(
            x3, None, None, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(x3, weight, scale, mean, invstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, invstd)  # returned for the recipe only
        return _affine(normed, weight, bias, scale, shape), mean, invstd

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_invstd):
        x3, weight, scale, mean, invstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad.reshape(x3.shape), x3, weight * scale, None, None, mean, invstd, True, ctx.eps,
            [need_x, need_w, need_b],
        )
        grad_w = grad_w * scale if need_w else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def _recompute(x3, weight, bias, scale, mean, invstd, *, momentum, eps, shape) -> torch.Tensor:
    """tdBN's training output again, bit-identical: the same kernel on the same input (with
    throw-away running statistics, so that it takes the same code path) and :func:`_affine`."""
    normed, mean2, invstd2 = torch.native_batch_norm(
        x3, None, None, torch.zeros_like(mean), torch.ones_like(mean), True, momentum, eps
    )
    # On CPU the check is free (no device sync): the same statistics mean the same values.
    if x3.device.type == "cpu" and not (torch.equal(mean, mean2) and torch.equal(invstd, invstd2)):
        warnings.warn(
            "TdBatchNorm: the batch statistics recomputed in the backward differ from the "
            "forward's, so the neuron's recomputed input is not bit-identical; use "
            "memory_saving(False) if this matters.", RuntimeWarning, stacklevel=2,
        )
    return _affine(normed, weight, bias, scale, shape)
