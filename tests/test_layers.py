"""tdBN, the time-distributed wrapper and the input encoding."""

import pytest
import torch
from torch import nn

from lightning_glif.layers.encoding import to_time_first
from lightning_glif.layers.tdbn import TdBatchNorm
from lightning_glif.layers.time_distributed import TimeDistributed


def test_tdbn_normalises_over_time_and_batch_and_scales_by_alpha_vth():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 2, 5, 5) * torch.tensor([3.0, 0.5]).view(2, 1, 1) + 7
    bn = TdBatchNorm(2, alpha=2**-0.5, v_threshold=0.5)
    y = bn(x)
    flat = x.transpose(0, 2).reshape(2, -1)  # per channel over (T, B, H, W)
    mean, var = flat.mean(1), flat.var(1, unbiased=False)
    expected = 0.5 * 2**-0.5 * (x - mean.view(2, 1, 1)) / (var.view(2, 1, 1) + 1e-5).sqrt()
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    # Affine applies after the scaling: y = w * (scale * x_hat) + b.
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.bias.fill_(-1.0)
    torch.testing.assert_close(bn(x), 2 * expected - 1, rtol=1e-4, atol=1e-5)


def test_tdbn_eval_normalises_by_the_running_statistics():
    torch.manual_seed(0)
    bn = TdBatchNorm(3, alpha=2**-0.5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    for _ in range(3):  # train steps move the running statistics off (0, 1)
        bn(torch.randn(2, 4, 3, 5) * 3 + 1)
    bn.eval()
    x = torch.randn(2, 4, 3, 5)
    mean, var = bn.bn.running_mean.view(3, 1), bn.bn.running_var.view(3, 1)
    expected = bn.weight.view(3, 1) * bn.scale * (x - mean) / (var + 1e-5).sqrt()
    torch.testing.assert_close(bn(x), expected + bn.bias.view(3, 1))


def test_tdbn_works_on_linear_input_and_keeps_scale_under_syncbn():
    x = torch.randn(4, 6, 3)
    bn = TdBatchNorm(3, alpha=1.0, v_threshold=0.5)
    y = bn(x)
    torch.testing.assert_close(
        y.reshape(-1, 3).std(0, unbiased=False), torch.full((3,), 0.5), rtol=1e-3, atol=1e-3
    )
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert isinstance(synced.bn, nn.SyncBatchNorm) and synced.scale.item() == 0.5


def test_tdbn_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"C=3.*\(2, 2, 4\)"):
        TdBatchNorm(3)(torch.randn(2, 2, 4))


def test_time_distributed_equals_a_loop_and_shortcuts_repeated_input():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 5, 2, 6, 6)
    loop = torch.stack([conv(x[t]) for t in range(4)])
    torch.testing.assert_close(TimeDistributed(conv)(x), loop)
    static = torch.randn(5, 2, 6, 6)
    rep = to_time_first(static, 4)
    assert rep.stride(0) == 0
    out = TimeDistributed(conv)(rep)
    torch.testing.assert_close(out, TimeDistributed(conv)(rep.contiguous()))
    assert out.stride(0) == 0  # computed once, broadcast again


def test_to_time_first_direct_and_sequence():
    img = torch.randn(2, 3, 4, 4)
    rep = to_time_first(img, 5)
    assert rep.shape == (5, 2, 3, 4, 4) and torch.equal(rep[3], img)
    seq = torch.randn(2, 5, 2, 4, 4)
    assert torch.equal(to_time_first(seq, 5)[1], seq[:, 1])
    with pytest.raises(ValueError, match="6 time steps.*time_steps=5"):
        to_time_first(torch.randn(2, 6, 2, 4, 4), 5)
    with pytest.raises(ValueError, match="rank 4"):
        to_time_first(torch.randn(2, 3), 5)


def test_time_distributed_dropout_draws_one_mask_for_direct_encoded_input():
    torch.manual_seed(0)
    drop = TimeDistributed(nn.Dropout(0.5))
    static = to_time_first(torch.ones(2, 3, 4, 4), 5)  # direct encoding: the module runs once
    out = drop(static)
    assert all(torch.equal(out[t], out[0]) for t in range(5))
    assert 0 < (out[0] == 0).sum() < out[0].numel()
    sequence = drop(static.contiguous())  # a sequence: one mask per step
    assert not all(torch.equal(sequence[t], sequence[0]) for t in range(5))
