"""The neurons the speed benchmark compares: ours (fused and reference), the GLIF authors'
formulation re-expressed, and third-party neurons (``benchmarks/requirements.txt``).

Each entry maps a name to ``make(C, T, device) -> run``, where ``run(x)`` takes ``[T, B, C, ...]``
and returns spikes of that shape, differentiable w.r.t. ``x`` (and any state reset in between).
Entries whose package is missing are left out, with the reason.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from lightning_glif.neurons import GLIF, LIF, Rectangular

Run = Callable[[torch.Tensor], torch.Tensor]
Make = Callable[[int, int, torch.device], Run]


class AuthorsGLIF(nn.Module):
    """The channel-wise GLIF as the authors' training code computes it, re-expressed here: at
    every step the sigmoid of every latent is recomputed and viewed as ``[1, C, 1, 1]``, the
    previous spike is read back from a preallocated output (and cloned for each reset term),
    and the new spikes are written into that output in place. Their surrogate backward crashes
    at the latest commit (docs/GLIF_SPEC.md section 8), so the box surrogate is ours."""

    def __init__(self, channels: int, time_steps: int) -> None:
        super().__init__()
        self.time_steps = time_steps
        for name in ("alpha", "beta", "gamma"):  # gates near 0.5, as in the paper's runs
            self.register_parameter(name, nn.Parameter(torch.rand(channels) * 0.2 - 0.1))
        init = {"tau": 0.25, "v_threshold": 0.5, "leak": 0.0625, "v_reset": 0.5}
        for name, value in init.items():
            logit = math.log(value / (1 - value))
            self.register_parameter(name, nn.Parameter(torch.full((channels,), logit)))
        self.conductance = nn.Parameter(torch.zeros(time_steps, channels))  # sigmoid: 0.5
        self.spike = Rectangular()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.zeros(x.shape[1:], device=x.device)
        out = torch.zeros(x.shape, device=x.device)

        def gate(p: torch.Tensor) -> torch.Tensor:
            return p.view(1, -1, 1, 1).sigmoid()

        for t in range(self.time_steps):
            prev = out[max(t - 1, 0)]
            al, be, ga = gate(self.alpha), gate(self.beta), gate(self.gamma)
            current = x[t] * (1 - be * (1 - gate(self.conductance[t])))
            u = (
                (1 - al * (1 - gate(self.tau))) * u * (1 - ga * prev.clone())
                - (1 - al) * gate(self.leak)
                + current
                - (1 - ga) * gate(self.v_reset) * prev.clone()
            )
            out[t] = self.spike(u - gate(self.v_threshold))
        return out


def _ours(cls, **kwargs) -> Make:
    def make(C: int, T: int, device: torch.device) -> Run:
        return cls(C, T, **kwargs).to(device)

    return make


def _authors(C: int, T: int, device: torch.device) -> Run:
    return AuthorsGLIF(C, T).to(device)


def _spikingjelly(kind: str) -> Make:
    from spikingjelly.activation_based import neuron

    def make(C: int, T: int, device: torch.device) -> Run:
        if kind == "gated":
            m = neuron.GatedLIFNode(T=T, inplane=C).to(device)
        else:
            m = neuron.LIFNode(step_mode="m").to(device)

        def run(x: torch.Tensor) -> torch.Tensor:
            m.reset()
            return m(x)

        return run

    return make


def _snntorch(C: int, T: int, device: torch.device) -> Run:
    import snntorch

    m = snntorch.Leaky(beta=0.5).to(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        mem = m.init_leaky()
        spikes = []
        for t in range(x.shape[0]):
            spk, mem = m(x[t], mem)
            spikes.append(spk)
        return torch.stack(spikes)

    return run


def _norse(C: int, T: int, device: torch.device) -> Run:
    import norse.torch

    m = norse.torch.LIF().to(device)
    return lambda x: m(x)[0]


def contenders() -> tuple[dict[str, Make], dict[str, str]]:
    """``(available, missing)``: name -> maker, and name -> why it is missing."""
    makers: dict[str, Make] = {
        "GLIF fused (ours)": _ours(GLIF),
        "GLIF reference loop (ours)": _ours(GLIF, backend="reference"),
        "GLIF authors' formulation": _authors,
        "LIF fused (ours)": _ours(LIF),
    }
    missing: dict[str, str] = {}
    optional = {
        "SpikingJelly GatedLIFNode": lambda: _spikingjelly("gated"),
        "SpikingJelly LIFNode": lambda: _spikingjelly("lif"),
        "snnTorch Leaky": lambda: _snntorch,
        "Norse LIF": lambda: _norse,
    }
    packages = {"SpikingJelly": "spikingjelly", "snnTorch": "snntorch", "Norse": "norse"}
    for name, get in optional.items():
        package = packages[name.split()[0]]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                __import__(package)
            makers[name] = get()
        except ImportError as e:
            missing[name] = (
                f"{package} not installed ({e}); pip install --no-deps -r "
                "benchmarks/requirements.txt"
            )
    return makers, missing
