"""Keeping less for the backward of a spiking net, with the same gradients (the backbones'
``memory_saving``; what it keeps on ResNet-19: ``docs/performance.md``).

Run plainly, a conv -> tdBN -> neuron layer keeps four float tensors of its output's size: the
norm's input, ``scale * x_hat`` (the affine's weight gradient), the neuron's input and, in the
next layer, the spikes. Two ``torch.autograd.Function`` s keep the conv's output and the spikes
as bits instead:

- :class:`SpikeConv2d` / :class:`SpikeLinear` keep their 0/1 input as 1 bit per element
  (:func:`pack_bits`) and compute the weight gradient from the unpacked bits: bit-identical.
- :func:`norm_spike` runs ``neuron(norm(x))`` (or ``neuron(norm(x) + skip_norm(s))``) keeping only
  ``x`` (and ``s``) and runs both again in the backward, with the forward's RNG state; the
  modules' buffers (running statistics) are restored afterwards, so they update once per step.

A backbone's rule: a spike layer only where its input is the output of a neuron whose
:func:`binary_spikes` is true, and each tdBN paired with the neuron right after it
(:class:`SpikingSequential`, or :func:`norm_spike` in a block's ``forward``). Both step aside,
running the plain layers, under ``torch.compile`` (Inductor decides what it saves), under autocast
and without gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_glif.layers.tdbn import TdBatchNorm
from lightning_glif.neurons import SpikingNeuron


def applies(x: torch.Tensor) -> bool:
    """Whether the saving serves a call on ``x`` now: autograd records, not compiling, no
    autocast (the recomputation would not see the forward's autocast state)."""
    if torch.compiler.is_compiling():
        return False
    return torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type)


def binary_spikes(neuron: nn.Module) -> bool:
    """Whether ``neuron`` declares its output exactly 0/1 (its ``binary_spikes`` attribute): only
    then may the layers it feeds keep that output as bits."""
    return getattr(neuron, "binary_spikes", False) is True


# --- spikes as bits ----------------------------------------------------------------------------


def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_bits(t: torch.Tensor) -> torch.Tensor:
    """The 0/1 elements of ``t`` (in contiguous order) as uint8 ``[ceil(numel / 8)]``, element
    ``8 * i + j`` in bit ``j`` of byte ``i``."""
    flat = t.reshape(-1) != 0
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8) << _shifts(t.device)
    return bits.sum(1, dtype=torch.uint8)  # distinct bits: the sum is their OR


def unpack_bits(packed: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: a contiguous 0/1 tensor of ``shape`` and ``dtype``."""
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
    """``nn.Conv2d`` for 0/1 spikes ``[N, C, H, W]``, kept as 1 bit each for the weight gradient
    (the same gradients as ``nn.Conv2d``). Zero padding given as numbers only. Any other input
    gets a wrong weight gradient: build it only after a neuron with :func:`binary_spikes`."""

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
    """``nn.Linear`` for 0/1 spikes ``[N, in_features]``, as :class:`SpikeConv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and applies(x):
            return _SpikeInput.apply(x, self.weight, self.bias, self)
        return super().forward(x)


def spike_conv(in_channels: int, out_channels: int, kernel_size: int, spike_input: bool, **kw):
    """A bias-free conv: :class:`SpikeConv2d` if ``spike_input``, else ``nn.Conv2d`` (the same
    parameters and initialisation)."""
    cls = SpikeConv2d if spike_input else nn.Conv2d
    return cls(in_channels, out_channels, kernel_size, bias=False, **kw)


# --- tdBN + neuron recomputed ------------------------------------------------------------------


def _run(neuron, norms, inputs, recompute=False):
    """``neuron(sum of norm(x))``. The recomputation calls ``forward``: forward hooks (the
    monitors) see each module once per step."""

    def call(module, x):
        return module.forward(x) if recompute else module(x)

    y = call(norms[0], inputs[0])
    for norm, x in zip(norms[1:], inputs[1:], strict=True):
        y = y + call(norm, x)
    return call(neuron, y)


def _params(modules) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters() if p.requires_grad]


class _NormSpike(torch.autograd.Function):
    """``neuron(sum of norm(x))`` keeping the inputs ``x`` (``bits``: those kept as bits) for the
    backward, which recomputes the forward. ``tensors``: the inputs, then the modules' trainable
    parameters (passed so that autograd routes their gradients here)."""

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
        return _run(neuron, norms, inputs)

    @staticmethod
    def backward(ctx, grad):
        modules = (ctx.neuron, *ctx.norms)
        needs = ctx.needs_input_grad[3 : 3 + len(ctx.bits)]
        inputs = []
        kept_inputs = zip(ctx.saved_tensors, ctx.bits, ctx.meta, needs, strict=True)
        for kept, b, (shape, dtype), need in kept_inputs:
            x = unpack_bits(kept, shape, dtype) if b else kept.detach()
            inputs.append(x.requires_grad_(need))
        buffers = [b for m in modules for b in m.buffers()]
        state = [b.clone() for b in buffers]
        with torch.random.fork_rng(devices=ctx.devices), torch.enable_grad():
            torch.set_rng_state(ctx.rng)
            for d, s in zip(ctx.devices, ctx.cuda_rng, strict=True):
                torch.cuda.set_rng_state(s, d)
            out = _run(ctx.neuron, ctx.norms, inputs, recompute=True)
        wrt = [t for t in (*inputs, *_params(modules)) if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wrt, grad, allow_unused=True))
        for b, s in zip(buffers, state, strict=True):  # after the grad: its graph saved them
            b.copy_(s)  # e.g. the running statistics: updated by the forward only
        input_grads = [next(grads) if x.requires_grad else None for x in inputs]
        return None, None, None, *input_grads, *grads


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

    The modules must give the same output for the same input and RNG state, and no hook may
    change a value (the recomputation does not run hooks). ``enabled=False``, or where the saving
    does not apply (:func:`applies`), runs the same expression plainly.
    """
    norms, inputs, bits = (norm,), (x,), (False,)
    if skip is not None:
        norms, inputs, bits = (norm, skip[0]), (x, skip[1]), (False, bool(skip[2]))
    if not (enabled and applies(x)):
        return _run(neuron, norms, inputs)
    return _NormSpike.apply(neuron, norms, bits, *inputs, *_params((neuron, *norms)))


class SpikingSequential(nn.Sequential):
    """``nn.Sequential`` (the same modules and state-dict keys) that, with ``memory_saving``, runs
    each :class:`TdBatchNorm` directly followed by a :class:`~lightning_glif.neurons.SpikingNeuron`
    as :func:`norm_spike`."""

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
