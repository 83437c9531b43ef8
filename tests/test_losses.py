"""Golden values for every loss and the gate, on small tensors computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdsweep.methods.gate import reduce_gated, teacher_correct_mask
from kdsweep.methods.losses import (
    cross_entropy_per_sample,
    kl_logits_per_sample,
    kl_raw_per_sample,
    l2_per_sample,
    spatial_kl_per_sample,
)

# KL([0.75, 0.25] || [0.5, 0.5]) = 0.75 ln 1.5 + 0.25 ln 0.5
KL_3_TO_1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def test_l2_per_sample_golden_and_equal_to_mse():
    s = torch.zeros(2, 1, 1, 2)
    t = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 2.0]]]])
    assert l2_per_sample(s, t).tolist() == [2.5, 2.0]
    assert l2_per_sample(s, t).mean().item() == pytest.approx(F.mse_loss(s, t).item(), abs=0)


def test_kl_logits_golden_temperature_scaling():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    assert kl_logits_per_sample(s, t, 1.0).item() == pytest.approx(KL_3_TO_1, rel=1e-6)
    # Doubling the logits at T=2 gives the same distributions; the loss is scaled by T^2 = 4.
    assert kl_logits_per_sample(2 * s, 2 * t, 2.0).item() == pytest.approx(4 * KL_3_TO_1, rel=1e-6)


def test_kl_logits_equals_hinton_kd_batchmean():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    reference = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    assert kl_logits_per_sample(s, t, 4.0).mean().item() == pytest.approx(reference.item(), rel=1e-6)


def test_spatial_kl_golden_and_zero_on_1x1_maps():
    # One sample, two channels, 1 x 2 maps: channel 0 as in KL_3_TO_1, channel 1 identical maps (KL 0).
    s = torch.tensor([[[[0.0, 0.0]], [[1.0, 2.0]]]])
    t = torch.tensor([[[[math.log(3.0), 0.0]], [[1.0, 2.0]]]])
    assert spatial_kl_per_sample(s, t, 1.0).item() == pytest.approx(KL_3_TO_1 / 2, rel=1e-6)
    assert spatial_kl_per_sample(torch.randn(3, 4, 1, 1), torch.randn(3, 4, 1, 1), 4.0).tolist() == [0.0] * 3


def test_kl_raw_golden_and_equal_to_kldivloss_batchmean():
    s = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    t = torch.tensor([[0.5, 0.0], [2.0, 0.0]])
    expected = [0.5 * math.log(0.5) - 0.5 * 1.0, 2.0 * math.log(2.0) - 0.0]
    assert kl_raw_per_sample(s, t).tolist() == pytest.approx(expected, rel=1e-6)
    assert kl_raw_per_sample(s, t).mean().item() == pytest.approx(F.kl_div(s, t, reduction="batchmean").item())


def test_kl_raw_is_unbounded_below():
    t = torch.ones(1, 4)
    assert kl_raw_per_sample(torch.full((1, 4), 1e6), t).item() == pytest.approx(-4e6)


def test_cross_entropy_per_sample_golden():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 0])
    assert cross_entropy_per_sample(logits, labels).tolist() == pytest.approx([math.log(2), math.log(4 / 3)])


def test_gate_mask_and_reductions():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 0, 0])
    mask = teacher_correct_mask(logits, labels)
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0]
    per_sample = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert reduce_gated(per_sample, None, "kept").item() == 2.5
    assert reduce_gated(per_sample, mask, "kept").item() == 2.0  # (1 + 3) / 2 kept
    assert reduce_gated(per_sample, mask, "all").item() == 1.0  # (1 + 3) / 4 samples
    assert reduce_gated(per_sample, torch.zeros(4), "kept").item() == 0.0


def test_gate_all_equals_zeroing_features_then_mse():
    """normalise=all reproduces the authors: masked samples' maps set to zero, MSE over every element."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 3, 2, 2, generator=g), torch.randn(6, 3, 2, 2, generator=g)
    mask = torch.tensor([1.0, 0, 1, 1, 0, 1])
    zeroed = F.mse_loss(s * mask[:, None, None, None], t * mask[:, None, None, None])
    assert reduce_gated(l2_per_sample(s, t), mask, "all").item() == pytest.approx(zeroed.item(), rel=1e-6)
