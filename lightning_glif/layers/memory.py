"""Keeping less for the backward of a spiking net: spikes as bits, tdBN + neuron recomputed.

A conv -> tdBN -> neuron layer keeps, per element and step, four float tensors for the backward
when run plainly: the batch norm's input, ``scale * x_hat`` (for the affine's weight gradient),
the neuron's input and, in the next layer, the spikes (for its weight gradient). Two
``torch.autograd.Function`` s reduce that to the convolution's output and the spikes as bits:

- :class:`SpikeConv2d` / :class:`SpikeLinear`: a layer whose input is a neuron's 0/1 spikes keeps
  them as 1 bit per element (:func:`pack_bits`, 1/32 of float32) and computes its backward from
  the unpacked bits (``torch.nn.grad.conv2d_input`` / ``conv2d_weight``, or the two matmuls of a
  linear layer): bit-identical gradients.
- :func:`norm_spike`: ``neuron(norm(x))`` (or ``neuron(norm(x) + skip_norm(s))`` at a residual
  addition) keeping only ``x`` (and ``s``, as bits when it is spikes). The backward runs the norm
  and the neuron again on the kept inputs (with the forward's RNG state; the modules' buffers,
  e.g. the running statistics, are restored afterwards, so they are updated once per step) and
  differentiates that: the same values, so the same gradients.

The backbones build these where they know the input is spikes (``memory_saving``; the neurons'
``binary_spikes`` says whether their output is exactly 0/1). Both step aside, running the plain
layers, under ``torch.compile`` (Inductor decides what a compiled graph saves, and recomputes on
its own), under autocast, and with gradients disabled (eval, ``torch.no_grad``). What each setting
keeps, measured on ResNet-19: ``docs/performance.md`` (``benchmarks/resnet19_step.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_glif.layers.tdbn import TdBatchNorm
from lightning_glif.neurons import SpikingNeuron


def applies(x: torch.Tensor) -> bool:
    """Whether the savings serve a call on ``x`` now: autograd records, not compiling, no
    autocast (the recomputation would not see the forward's autocast state)."""
    if torch.compiler.is_compiling():
        return False
    return torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)


def binary_spikes(neuron: nn.Module) -> bool:
    """Whether ``neuron`` declares its output exactly 0/1 (its ``binary_spikes`` attribute, e.g.
    :attr:`~lightning_glif.neurons.MembraneNeuron.binary_spikes`): only then may the layers it
    feeds keep that output as bits. A backbone asks its first neuron: one factory builds them
    all."""
    return getattr(neuron, "binary_spikes", False) is True


# --- spikes as bits ----------------------------------------------------------------------------


def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_bits(t: torch.Tensor) -> torch.Tensor:
    """The elements of ``t`` (read in contiguous order, each 0 or 1) as bits: uint8
    ``[ceil(numel / 8)]``, element ``8 * i + j`` in bit ``j`` of byte ``i``. Torch ops only, so
    the same packing runs on any device."""
    flat = t.reshape(-1) != 0
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8) << _shifts(t.device)
    return bits.sum(1, dtype=torch.uint8)  # distinct bits: the sum is their OR


def unpack_bits(packed: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a contiguous tensor of ``shape`` and ``dtype`` (0/1)."""
    bits = (packed.unsqueeze(1) >> _shifts(packed.device)) & 1
    return bits.view(-1)[: math.prod(shape)].to(dtype).view(shape)


class _SpikeInput(torch.autograd.Function):
    """``layer``'s conv2d or linear map of 0/1 ``x``, keeping ``x`` as bits for the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        ctx.layer, ctx.shape, ctx.dtype = layer, x.shape, x.dtype
        ctx.save_for_backward(pack_bits(x), weight)
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight, bias)
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx, grad):
        packed, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        x = unpack_bits(packed, ctx.shape, ctx.dtype) if need_w else None
        gx = gw = gb = None
        if isinstance(ctx.layer, nn.Linear):  # x [N, in], grad [N, out]: what addmm's backward does
            gx = grad @ weight if need_x else None
            gw = grad.t() @ x if need_w else None
            gb = grad.sum(0) if need_b else None
        else:
            conv = (ctx.layer.stride, ctx.layer.padding, ctx.layer.dilation, ctx.layer.groups)
            if need_x:
                gx = torch.nn.grad.conv2d_input(ctx.shape, weight, grad, *conv)
            if need_w:
                gw = torch.nn.grad.conv2d_weight(x, weight.shape, grad, *conv)
            gb = grad.sum((0, 2, 3)) if need_b else None
        return gx, gw, gb, None


class SpikeConv2d(nn.Conv2d):
    """``nn.Conv2d`` for an input of 0/1 spikes ``[N, C, H, W]``: keeps it as 1 bit per element
    for the weight gradient (the same gradients as ``nn.Conv2d``). Zero padding given as numbers
    only. An input that is not 0/1 would get a wrong weight gradient: build it only after a
    neuron whose spikes are (:func:`binary_spikes`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError(
                f"SpikeConv2d takes zero padding given as numbers, got padding={self.padding!r}, "
                f"padding_mode={self.padding_mode!r}; use nn.Conv2d for this layer."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if applies(x):
            return _SpikeInput.apply(x, self.weight, self.bias, self)
        return super().forward(x)


class SpikeLinear(nn.Linear):
    """``nn.Linear`` for an input of 0/1 spikes ``[N, in_features]``: keeps it as 1 bit per
    element for the weight gradient, as :class:`SpikeConv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and applies(x):
            return _SpikeInput.apply(x, self.weight, self.bias, self)
        return super().forward(x)


def spike_conv(in_channels: int, out_channels: int, kernel_size: int, spike_input: bool, **kw):
    """A bias-free conv: :class:`SpikeConv2d` if ``spike_input``, else ``nn.Conv2d`` (the same
    parameters and initialisation either way)."""
    cls = SpikeConv2d if spike_input else nn.Conv2d
    return cls(in_channels, out_channels, kernel_size, bias=False, **kw)


# --- tdBN + neuron recomputed ------------------------------------------------------------------


def _call(module: nn.Module, *args):
    return module(*args)  # the forward: hooks run, once


def _forward_only(module: nn.Module, *args):
    return module.forward(*args)  # the recomputation: hooks (monitors) do not see it again


def _run(call, neuron, norms, inputs):
    y = call(norms[0], inputs[0])
    for norm, x in zip(norms[1:], inputs[1:], strict=True):
        y = y + call(norm, x)
    return call(neuron, y)


class _NormSpike(torch.autograd.Function):
    """``neuron(sum of norm(x))`` keeping the inputs ``x`` (``bits``: those kept as bits) for
    the backward, which recomputes the forward. ``tensors``: the inputs, then the modules'
    trainable parameters (passed so that autograd routes their gradients here)."""

    @staticmethod
    def forward(ctx, neuron, norms, bits, *tensors):
        inputs = tensors[: len(bits)]
        ctx.neuron, ctx.norms, ctx.bits = neuron, norms, bits
        ctx.meta = [(x.shape, x.dtype) for x in inputs]
        kept = [pack_bits(x) if b else x for x, b in zip(inputs, bits, strict=True)]
        ctx.save_for_backward(*kept)
        ctx.devices = sorted({x.device.index for x in inputs if x.is_cuda})
        ctx.rng = torch.get_rng_state()
        ctx.cuda_rng = [torch.cuda.get_rng_state(d) for d in ctx.devices]
        return _run(_call, neuron, norms, inputs)

    @staticmethod
    def backward(ctx, grad):
        modules = (ctx.neuron, *ctx.norms)
        needs = ctx.needs_input_grad[3 : 3 + len(ctx.bits)]
        inputs = []
        kept_inputs = zip(ctx.saved_tensors, ctx.bits, ctx.meta, needs, strict=True)
        for kept, b, (shape, dtype), need in kept_inputs:
            x = unpack_bits(kept, shape, dtype) if b else kept.detach()
            inputs.append(x.requires_grad_(need))
        params = _params(modules)
        buffers = [b for m in modules for b in m.buffers()]
        state = [b.clone() for b in buffers]
        with torch.random.fork_rng(devices=ctx.devices), torch.enable_grad():
            torch.set_rng_state(ctx.rng)
            for d, s in zip(ctx.devices, ctx.cuda_rng, strict=True):
                torch.cuda.set_rng_state(s, d)
            out = _run(_forward_only, ctx.neuron, ctx.norms, inputs)
        wrt = [t for t in (*inputs, *params) if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wrt, grad, allow_unused=True))
        for b, s in zip(buffers, state, strict=True):  # after the grad: its graph saved them
            b.copy_(s)  # e.g. the running statistics: updated by the forward only
        input_grads = [next(grads) if x.requires_grad else None for x in inputs]
        return None, None, None, *input_grads, *grads


def _params(modules) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


def norm_spike(
    norm: nn.Module,
    neuron: nn.Module,
    x: torch.Tensor,
    skip: tuple[nn.Module, torch.Tensor, bool] | None = None,
    enabled: bool = True,
) -> torch.Tensor:
    """``neuron(norm(x))``, or with ``skip = (skip_norm, s, s_is_spikes)`` the residual
    ``neuron(norm(x) + skip_norm(s))``, keeping for the backward only ``x`` and ``s`` (as bits
    when ``s_is_spikes``: it must then be 0/1) and recomputing the rest there.

    The modules run through their ``__call__`` in the forward (hooks see them once) and their
    ``forward`` in the recomputation. They must give the same output for the same input and RNG
    state, and no hook may change a value (it would not be replayed). ``enabled=False``, or where
    the savings do not apply (:func:`applies`), runs the same expression plainly.
    """
    norms, inputs, bits = (norm,), (x,), (False,)
    if skip is not None:
        norms, inputs, bits = (norm, skip[0]), (x, skip[1]), (False, bool(skip[2]))
    if not (enabled and applies(x)):
        return _run(_call, neuron, norms, inputs)
    return _NormSpike.apply(neuron, norms, bits, *inputs, *_params((neuron, *norms)))


class SpikingSequential(nn.Sequential):
    """``nn.Sequential`` (the same modules and state-dict keys) that, with ``memory_saving``,
    runs each :class:`~lightning_glif.layers.tdbn.TdBatchNorm` directly followed by a
    :class:`~lightning_glif.neurons.SpikingNeuron` as :func:`norm_spike`: only the norm's input
    is kept for their backward."""

    def __init__(self, *modules: nn.Module, memory_saving: bool = False) -> None:
        super().__init__(*modules)
        self.memory_saving = bool(memory_saving)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self)
        i = 0
        while i < len(layers):
            pair = layers[i : i + 2]
            if (
                self.memory_saving
                and len(pair) == 2
                and isinstance(pair[0], TdBatchNorm)
                and isinstance(pair[1], SpikingNeuron)
            ):
                x = norm_spike(pair[0], pair[1], x)
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return x
