"""Memory saving (lightning_glif.models.saving): spikes kept as bits, tdBN saving its input only,
the neuron recomputing its tdBN input; same gradients, fewer saved bytes, off switch."""

import math

import pytest
import torch
from torch import nn

from lightning_glif.models import saving
from lightning_glif.models.layers import TimeDistributed
from lightning_glif.models.mlp import SpikingMLP
from lightning_glif.models.resnet import ResNet18
from lightning_glif.models.tdbn import TdBatchNorm, _TdBatchNormTrain
from lightning_glif.neurons import GLIF, Rectangular
from lightning_glif.neurons.fused import fused_available


@pytest.fixture(autouse=True)
def _every_size(monkeypatch):
    """The tensors here are tiny: let the savings apply to every size (as they do to ResNet-19's
    layers), except in the test of the threshold itself."""
    monkeypatch.setattr(saving, "MIN_ELEMENTS", 0)

T, B = 3, 5


def fused_glif(c, t):
    """The fused op where it builds (the reference loop elsewhere: the savings apply to both)."""
    return GLIF(c, t, backend="auto")


def record_saved(fn):
    """(result of fn, the tensors autograd saved, as this outer hook sees them)."""
    seen = []

    def pack(t):
        seen.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, seen


def binary(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) > 0.6).float()


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


# --- which tensors are packed -----------------------------------------------------------------


def test_only_marked_spikes_are_packed_and_not_the_weight():
    layer = TimeDistributed(nn.Linear(7, 4, bias=False))
    spikes = binary(T, B, 7).requires_grad_()
    saving.mark_binary(spikes)
    assert saving.is_binary(spikes)
    _, seen = record_saved(lambda: layer(spikes))
    packed = [t for t in seen if t.dtype == torch.uint8]
    assert [t.numel() for t in packed] == [math.ceil(T * B * 7 / 8)]
    assert any(t.numel() == 28 and t.dtype == torch.float32 for t in seen)  # the weight, as is
    # unmarked 0/1 tensors, views, pooled or summed spikes, in-place changed ones: saved as is
    plain = binary(T, B, 7).requires_grad_()
    view = spikes[:, :]
    summed = spikes + spikes
    changed = binary(T, B, 7)
    saving.mark_binary(changed)
    changed.mul_(2)
    assert not any(saving.is_binary(t) for t in (plain, view, summed, changed))
    for x in (plain, view, summed, changed.requires_grad_()):
        _, seen = record_saved(lambda x=x: layer(x))
        assert not any(t.dtype == torch.uint8 for t in seen)
    layer.memory_saving = False
    _, seen = record_saved(lambda: layer(spikes))
    assert not any(t.dtype == torch.uint8 for t in seen)


def test_neurons_mark_their_spikes_only_when_it_applies():
    x = torch.randn(T, B, 6)
    for backend in ("auto", "reference"):
        neuron = GLIF(6, T, backend=backend)
        assert saving.is_binary(neuron(x))
        with torch.no_grad():
            assert not saving.is_binary(neuron(x))
        with saving.memory_saving(False):
            assert not saving.is_binary(neuron(x))

    class Shifted(Rectangular):  # a spike function that need not be 0/1
        def forward(self, v):
            return super().forward(v) * 2

    assert not saving.is_binary(GLIF(6, T, surrogate=Shifted())(x))
    pooled = TimeDistributed(nn.AvgPool1d(2))(GLIF(6, T)(x))
    assert not saving.is_binary(pooled)


# --- gradients: on equals off -----------------------------------------------------------------


def grads(net, x, tdbn_saving=True, on=True):
    saving.set_memory_saving(net, on)
    for m in net.modules():
        if isinstance(m, TdBatchNorm):
            m.memory_saving = on and tdbn_saving
    net.zero_grad()
    torch.manual_seed(3)
    out = net(x)
    (out * torch.randn_like(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("make", [
    lambda: (ResNet18(fused_glif, T), torch.randn(2, 3, 16, 16)),
    lambda: (SpikingMLP(fused_glif, T, in_features=8, hidden=(24, 16)), torch.randn(4, T, 8)),
])
def test_packing_gives_bit_identical_gradients_and_tdbn_path_equal_within_float(make):
    torch.manual_seed(0)
    net, x = make()
    out_off, off = grads(net, x, on=False)
    out_bits, bits = grads(net, x, tdbn_saving=False)  # spikes as bits only
    out_on, on = grads(net, x)  # + tdBN saving its input, the neuron its recipe
    assert torch.equal(out_bits, out_off) and torch.equal(out_on, out_off)  # forward unchanged
    for name in off:
        assert torch.equal(bits[name], off[name]), name
        torch.testing.assert_close(on[name], off[name], rtol=1e-4, atol=1e-6, msg=name)


def test_recomputed_tdbn_input_gives_the_neuron_bit_identical_gradients():
    torch.manual_seed(0)
    bn, neuron = TdBatchNorm(6), fused_glif(6, T)
    x = torch.randn(T, B, 6, 4, 4, requires_grad=True)
    g = torch.randn(T, B, 6, 4, 4)

    def run(keep_recipe):
        y = bn(x)
        assert saving.recipe_of(y) is not None
        spikes = neuron(y if keep_recipe else y.clone())  # a clone carries no recipe
        return torch.autograd.grad((spikes * g).sum(), [x, *neuron.parameters()])

    for a, b in zip(run(True), run(False), strict=True):
        assert torch.equal(a, b)


def test_tdbn_gradient_matches_autograd_of_the_plain_formula():
    torch.manual_seed(0)
    bn = TdBatchNorm(4, alpha=2**-0.5).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(T, B, 4, 3, 3, dtype=torch.float64) * 2 + 1).requires_grad_()
    g = torch.randn_like(x)
    assert bn._saves_less(x.reshape(T * B, 4, -1))
    got = torch.autograd.grad((bn(x) * g).sum(), [x, bn.weight, bn.bias])
    dims = (0, 1, 3, 4)
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    w, b = bn.weight.view(4, 1, 1), bn.bias.view(4, 1, 1)
    plain = w * (bn.scale * (x - mean) / (var + bn.bn.eps).sqrt()) + b
    want = torch.autograd.grad((plain * g).sum(), [x, bn.weight, bn.bias])
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


# --- statistics, eval mode, the fallback ------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_equal_batchnorm1d_after_train_steps(momentum):
    torch.manual_seed(0)
    td = TdBatchNorm(5, momentum=momentum)
    ref = nn.BatchNorm1d(5, momentum=momentum, affine=False)
    for step in range(4):
        x = torch.randn(T, B, 5, 6) * (step + 1) + step
        assert td._saves_less(x.reshape(T * B, 5, -1))
        td(x.requires_grad_()).sum().backward()
        ref(x.detach().reshape(T * B, 5, -1))
    assert torch.equal(td.bn.running_mean, ref.running_mean)
    assert torch.equal(td.bn.running_var, ref.running_var)
    assert td.bn.num_batches_tracked.item() == ref.num_batches_tracked.item() == 4


def test_train_and_eval_outputs_unchanged():
    torch.manual_seed(0)
    on, off = TdBatchNorm(3, alpha=2**-0.5), TdBatchNorm(3, alpha=2**-0.5, memory_saving=False)
    with torch.no_grad():
        for m in (on, off):
            m.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
            m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    for _ in range(3):
        x = torch.randn(T, B, 3, 4, requires_grad=True)
        assert torch.equal(on(x), off(x))  # train mode: bit-identical forward
    assert torch.equal(on.bn.running_var, off.bn.running_var)
    on.eval(), off.eval()
    x = torch.randn(T, B, 3, 4)
    assert not on._saves_less(x.reshape(T * B, 3, -1))
    expected = off(x)
    assert torch.equal(on(x), expected)
    stats = (x - on.bn.running_mean.view(3, 1)) / (on.bn.running_var.view(3, 1) + 1e-5).sqrt()
    torch.testing.assert_close(
        expected, on.weight.view(3, 1) * on.scale * stats + on.bias.view(3, 1)
    )


def test_sync_batchnorm_converted_norm_takes_the_old_path(monkeypatch):
    torch.manual_seed(0)
    bn = TdBatchNorm(3)
    x = torch.randn(T, B, 3, 4, requires_grad=True)
    assert bn._saves_less(x.reshape(T * B, 3, -1))
    expected = bn(x)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert isinstance(synced.bn, nn.SyncBatchNorm)
    assert not synced._saves_less(x.reshape(T * B, 3, -1))

    def boom(*args):
        raise AssertionError("the memory-saving path ran on a SyncBatchNorm")

    monkeypatch.setattr(_TdBatchNormTrain, "apply", boom)
    y = synced(x)  # no process group: SyncBatchNorm normalises locally
    assert saving.recipe_of(y) is None
    assert torch.equal(y, expected)


# --- saved bytes ------------------------------------------------------------------------------


def test_saved_bytes_of_a_tiny_net_drop_as_counted_by_hand():
    """x -> Linear(4, H) -> tdBN -> GLIF -> Linear(H, 3). N = T*B*H activations (float32):
    off: tdBN's batch norm keeps its input, its affine keeps ``scale * x_hat``, the neuron its
    input, the readout the spikes: 4 tensors of N. On: tdBN keeps its input (N), the neuron's
    recipe names that same input again (N, the same storage), the readout keeps N bits."""
    torch.manual_seed(0)
    h = 7
    net = nn.Sequential(
        TimeDistributed(nn.Linear(4, h, bias=False)), TdBatchNorm(h), fused_glif(h, T),
        TimeDistributed(nn.Linear(h, 3, bias=False)),
    )
    x = torch.randn(T, B, 4)
    if fused_available(x.new_zeros(T, B, h), net[2].coefficients(), net[2].surrogate):
        pytest.skip("the fused CPU kernel is not available here")
    n = T * B * h  # 105: no parameter or coefficient tensor has this many elements

    def activations(on):
        with saving.memory_saving(on):
            _, seen = record_saved(lambda: net(x))
        floats = [t for t in seen if t.is_floating_point() and t.numel() == n]
        bits = [t for t in seen if t.dtype == torch.uint8]
        return floats, bits

    floats, bits = activations(False)
    assert len(floats) == 4 and not bits
    floats, bits = activations(True)
    assert len(floats) == 2 and [t.numel() for t in bits] == [math.ceil(n / 8)]
    assert floats[0].untyped_storage().data_ptr() == floats[1].untyped_storage().data_ptr()
    distinct_on = n * 4 + math.ceil(n / 8)
    assert distinct_on / (4 * n * 4) < 0.26  # 1/4 + 1/128 of the activations kept before


def test_no_savings_under_checkpoint_or_no_grad():
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    net = SpikingMLP(fused_glif, T, in_features=8, hidden=(12, 12))
    x = torch.randn(4, T, 8)
    _, off = grads(net, x, on=False)
    saving.set_memory_saving(net, True)
    net.zero_grad()
    torch.manual_seed(3)
    out = checkpoint(net, x, use_reentrant=False)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, off[name], rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        assert not saving.active()


def test_tensors_below_the_threshold_are_left_alone(monkeypatch):
    """Below MIN_ELEMENTS nothing is marked, no recipe is attached and the norm runs as
    self.bn: a small net saves exactly what it saves with the savings off."""
    monkeypatch.setattr(saving, "MIN_ELEMENTS", 1 << 18)
    small = torch.ones(4, 8, 16)  # 512 elements
    assert not saving.is_binary(saving.mark_binary(small))
    assert saving.recipe_of(saving.attach_recipe(small, torch.clone, small)) is None
    norm = TdBatchNorm(16).train()
    assert not norm._saves_less(small.reshape(32, 16, -1))
    big = torch.ones(4, 64, 1024)  # exactly 2 ** 18
    assert saving.is_binary(saving.mark_binary(big))
    assert TdBatchNorm(64).train()._saves_less(big.reshape(256, 64, -1))
