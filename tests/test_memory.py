"""Memory saving (lightning_glif.layers.memory): spikes kept as bits by the layers they feed,
tdBN + neuron recomputed in the backward; the same outputs, gradients and running statistics as
the plain layers, fewer saved bytes (counted by hand), and out of the way where it cannot apply."""

import math
from functools import partial

import pytest
import torch
from torch import nn

from lightning_glif.layers import memory as saving
from lightning_glif.layers.memory import SpikeConv2d, SpikeLinear, norm_spike
from lightning_glif.layers.tdbn import TdBatchNorm
from lightning_glif.models.mlp import SpikingMLP
from lightning_glif.models.msresnet import ResNet18MS
from lightning_glif.models.resnet import BasicBlock, SpikingResNet
from lightning_glif.models.sew import WideNet7B
from lightning_glif.neurons import GLIF, Rectangular, SpikingNeuron
from lightning_glif.neurons.fused import fused_available

T, B = 3, 4


def binary(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) > 0.6).float()


def record_saved(fn):
    """(result of fn, the tensors autograd saved while it ran)."""
    seen = []

    def pack(t):
        seen.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, seen


def moved_neurons(net, seed=1):
    """Move every neuron's parameters off their init, so that each of them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, SpikingNeuron):
                for p in m.parameters():
                    p.add_(0.5 * torch.randn(p.shape, generator=g))
    return net


def step(net, x):
    """Output, parameter gradients and buffers after one training forward + backward."""
    net.zero_grad()
    out = net(x)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return out.detach(), grads, {n: b.clone() for n, b in net.named_buffers()}


def assert_same_step(on, off, x):
    out_on, grads_on, buffers_on = step(on, x)
    out_off, grads_off, buffers_off = step(off, x)
    assert torch.equal(out_on, out_off)
    assert grads_on.keys() == grads_off.keys() and grads_off
    for name, grad in grads_off.items():
        assert torch.equal(grads_on[name], grad), name
    for name, buffer in buffers_off.items():  # running statistics updated once, as without
        assert torch.equal(buffers_on[name], buffer), name


# --- packing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1,), (7,), (9,), (3, 5, 7), (2, 3, 13, 11), (64,)])
def test_packed_bits_round_trip_exactly(dtype, shape):
    t = binary(*shape).to(dtype)
    packed = saving.pack_bits(t)
    assert packed.dtype == torch.uint8 and packed.shape == (math.ceil(t.numel() / 8),)
    back = saving.unpack_bits(packed, t.shape, t.dtype)
    assert back.dtype == dtype and back.shape == t.shape and back.is_contiguous()
    as_int = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(back.view(as_int), t.view(as_int))  # bit for bit
    # bit order: element 8 * i + j in bit j of byte i
    ones = torch.zeros(9)
    ones[[0, 3, 8]] = 1
    assert saving.pack_bits(ones).tolist() == [0b1001, 1]


# --- spike-input layers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda cls: cls(4, 6, 3, padding=1, bias=False), binary(B, 4, 7, 7)),
        (lambda cls: cls(4, 6, 3, stride=2, padding=2, dilation=2), binary(B, 4, 9, 8)),
        (lambda cls: cls(4, 6, 1, stride=2, groups=2), binary(B, 4, 5, 5)),
    ],
)
def test_spike_conv_equals_conv2d_and_keeps_its_input_as_bits(make, x):
    torch.manual_seed(0)
    plain = make(nn.Conv2d)
    spike = make(SpikeConv2d)
    spike.load_state_dict(plain.state_dict())
    x_plain, x_spike = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, seen = record_saved(lambda: spike(x_spike))
    assert [t.numel() for t in seen if t.dtype == torch.uint8] == [math.ceil(x.numel() / 8)]
    assert not any(t.numel() == x.numel() and t.is_floating_point() for t in seen)
    expected = plain(x_plain)
    assert torch.equal(out, expected)
    g = torch.randn_like(out)
    params = [p for p in spike.parameters()]
    got = torch.autograd.grad(out, [x_spike, *params], g)
    want = torch.autograd.grad(expected, [x_plain, *plain.parameters()], g)
    for a, b in zip(got[:2], want[:2], strict=True):  # input and weight: bit for bit
        assert torch.equal(a, b)
    for a, b in zip(got[2:], want[2:], strict=True):  # the bias: a sum in another order
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bias", [False, True])
def test_spike_linear_equals_linear_and_keeps_its_input_as_bits(bias):
    torch.manual_seed(0)
    plain, spike = nn.Linear(9, 5, bias=bias), SpikeLinear(9, 5, bias=bias)
    spike.load_state_dict(plain.state_dict())
    x = binary(T * B, 9)
    x_plain, x_spike = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, seen = record_saved(lambda: spike(x_spike))
    assert [t.numel() for t in seen if t.dtype == torch.uint8] == [math.ceil(x.numel() / 8)]
    expected = plain(x_plain)
    assert torch.equal(out, expected)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x_spike, *spike.parameters()], g)
    want = torch.autograd.grad(expected, [x_plain, *plain.parameters()], g)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_spike_conv_rejects_padding_its_backward_does_not_take():
    with pytest.raises(ValueError, match="padding='same'.*use nn.Conv2d"):
        SpikeConv2d(2, 3, 3, padding="same")
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        SpikeConv2d(2, 3, 3, padding=1, padding_mode="reflect")


def test_spike_layers_step_aside_without_grad_and_under_autocast():
    conv = SpikeConv2d(2, 3, 3, padding=1)
    x = binary(B, 2, 5, 5).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, seen = record_saved(lambda: conv(x))
    assert out.dtype == torch.bfloat16 and not any(t.dtype == torch.uint8 for t in seen)
    with torch.no_grad():
        assert torch.equal(conv(x), nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))


# --- tdBN + neuron recomputed -----------------------------------------------------------------


def test_norm_spike_pair_and_residual_give_the_plain_gradients_and_statistics():
    torch.manual_seed(0)
    mods = nn.ModuleDict(
        {"bn": TdBatchNorm(5), "sn": GLIF(5, T), "skip": TdBatchNorm(5, alpha=2**-0.5)}
    )
    moved_neurons(mods)
    twin = nn.ModuleDict({k: type(v)(5, T) for k, v in mods.items()})
    twin.load_state_dict(mods.state_dict())
    x = torch.randn(T, B, 5, 4, 4) + 0.5
    s = binary(T, B, 5, 4, 4)
    g = torch.randn(T, B, 5, 4, 4)
    results = []
    for m, enabled in ((mods, True), (twin, False)):
        xs, ss = x.clone().requires_grad_(), s.clone().requires_grad_()
        skip = (m["skip"], ss, True)
        run = partial(norm_spike, m["bn"], m["sn"], xs, skip, enabled)
        out, seen = record_saved(run)
        grads = torch.autograd.grad((out * g).sum(), [xs, ss, *m.parameters()])
        results.append((out, grads, [b.clone() for b in m.buffers()], seen))
    (out_on, grads_on, buffers_on, seen_on), (out_off, grads_off, buffers_off, _) = results
    assert torch.equal(out_on, out_off)
    for a, b in zip(grads_on, grads_off, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(buffers_on, buffers_off, strict=True):
        assert torch.equal(a, b)
    n = x.numel()  # kept: x as it is, s as bits, and nothing else of that size
    assert [t.numel() for t in seen_on if t.numel() == n] == [n]
    assert [t.numel() for t in seen_on if t.dtype == torch.uint8] == [math.ceil(n / 8)]


def test_forward_hooks_see_each_module_once_per_step():
    torch.manual_seed(0)
    bn, sn = TdBatchNorm(3), GLIF(3, T)
    calls = []
    for m in (bn, sn):
        m.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    x = torch.randn(T, B, 3, requires_grad=True)
    norm_spike(bn, sn, x).sum().backward()
    assert calls == ["TdBatchNorm", "GLIF"] and x.grad is not None


class Unreliable(SpikingNeuron):
    """A stochastic layer: each input reaches the output with probability 1/2 (its gradient
    depends on the random draw)."""

    def forward(self, x):
        return x * torch.bernoulli(torch.full_like(x, 0.5))


def test_the_recomputation_replays_the_forwards_random_numbers():
    torch.manual_seed(0)
    bn = TdBatchNorm(4)
    x = torch.randn(T, B, 4)
    grads = []
    for enabled in (True, False):
        torch.manual_seed(5)
        xs = x.clone().requires_grad_()
        out = norm_spike(bn, Unreliable(4, T), xs, enabled=enabled)
        grads.append(torch.autograd.grad((out * torch.arange(4.0)).sum(), xs)[0])
    assert torch.equal(grads[0], grads[1])


# --- whole nets: saving on equals saving off --------------------------------------------------


def resnet(on):
    torch.manual_seed(0)
    net = SpikingResNet(GLIF, T, 5, 3, 8, (8, 16), (2, 1), (1, 2), head_hidden=0, memory_saving=on)
    return moved_neurons(net)


class ResNet10MS(ResNet18MS):
    STAGE_BLOCKS = (1, 1, 1, 1)


NETS = {
    "resnet": (resnet, torch.randn(B, 3, 12, 12) * 2),
    "msresnet": (
        lambda on: moved_neurons(ResNet10MS(GLIF, T, 5, 3, memory_saving=on)),
        torch.randn(2, 3, 16, 16) * 2,
    ),
    "sew": (
        lambda on: moved_neurons(WideNet7B(GLIF, T, 5, 2, 16, memory_saving=on)),
        (torch.rand(2, T, 2, 16, 16) * 3).round(),
    ),
    "mlp": (
        lambda on: moved_neurons(SpikingMLP(GLIF, T, 5, 8, (12, 10), memory_saving=on)),
        torch.randn(B, T, 8) * 2,
    ),
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[pytest.mark.slow] if name in ("msresnet", "sew") else [])
        for name in NETS
    ],
)
def test_saving_on_gives_the_same_outputs_gradients_and_statistics_as_off(name):
    make, x = NETS[name]
    torch.manual_seed(0)
    on = make(True)
    torch.manual_seed(0)
    off = make(False)
    assert any(isinstance(m, SpikeConv2d | SpikeLinear) for m in on.modules())
    assert not any(isinstance(m, SpikeConv2d | SpikeLinear) for m in off.modules())
    assert on.state_dict().keys() == off.state_dict().keys()
    assert_same_step(on, off, x)
    on.eval(), off.eval()
    with torch.no_grad():
        assert torch.equal(on(x), off(x))


def test_a_sync_batchnorm_conversion_keeps_the_saving_exact():
    """The recomputation runs the converted norm again (it normalises locally without a process
    group): the same gradients and running statistics as without the saving."""
    on, off = (nn.SyncBatchNorm.convert_sync_batchnorm(resnet(s)) for s in (True, False))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in on.modules())
    assert_same_step(on, off, torch.randn(B, 3, 8, 8) * 2)


def test_neurons_without_binary_spikes_are_recomputed_but_not_packed():
    class Doubled(Rectangular):  # a spike function whose output is not 0/1
        def forward(self, v):
            return super().forward(v) * 2

    assert GLIF(2, T).binary_spikes and not GLIF(2, T, surrogate=Doubled()).binary_spikes
    neuron = partial(GLIF, surrogate=Doubled(), backend="reference")
    torch.manual_seed(0)
    on = SpikingResNet(neuron, T, 5, 3, 8, (8,), (1,), (1,), head_hidden=0)
    torch.manual_seed(0)
    off = SpikingResNet(neuron, T, 5, 3, 8, (8,), (1,), (1,), head_hidden=0, memory_saving=False)
    assert not any(isinstance(m, SpikeConv2d) for m in on.modules())
    assert_same_step(on, off, torch.randn(B, 3, 6, 6) * 2)


# --- saved bytes, counted by hand -------------------------------------------------------------


def test_saved_bytes_of_a_residual_block_drop_as_counted_by_hand():
    """BasicBlock on spikes x [T, B, C, H, W], identity shortcut; N = T*B*C*H*W (float32).

    Off: conv1 keeps x; tdBN1 its input and ``scale * x_hat``; the neuron its input; conv2 the
    spikes; tdBN2 two; the shortcut's tdBN two; the last neuron its input: 10 tensors of N.
    On: conv1, conv2 and the shortcut keep their spikes as bits (3 x ceil(N/8) bytes); the two
    recomputed tdBN + neuron units keep the convolutions' outputs (2 of N)."""
    c, h = 6, 5
    x = binary(T, B, c, h, h).requires_grad_()
    neuron = partial(GLIF, backend="fused")
    if fused_available(x, GLIF(c, T).coefficients(), Rectangular()):
        pytest.skip("the fused CPU kernel is not available here")
    n = x.numel()
    counts = {}
    for on in (True, False):
        torch.manual_seed(0)
        block = BasicBlock(neuron, T, c, c, memory_saving=on, spike_bits=on)
        _, seen = record_saved(lambda block=block: block(x))
        floats = [t for t in seen if t.is_floating_point() and t.numel() == n]
        bits = [t for t in seen if t.dtype == torch.uint8]
        assert all(t.numel() == math.ceil(n / 8) for t in bits)
        counts[on] = (len(floats), len(bits))
    assert counts == {False: (10, 0), True: (2, 3)}
    kept_off, kept_on = 10 * n * 4, 2 * n * 4 + 3 * math.ceil(n / 8)
    assert kept_on / kept_off < 0.21  # 1/5 + 3/320 of what the plain block keeps
