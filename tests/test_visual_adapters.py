"""Attention adapter and dynamic visual fusion against hand-computed small examples."""
import math

import pytest
import torch

from trainers.visual_adapters import AttentionAdapter, VisualDynamicFusion

E = math.e


def _set(linear, weight, bias=None):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        if bias is not None:
            linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def test_adapter_without_bias_matches_hand_computation():
    ad = AttentionAdapter(2, bias=False)
    assert ad.layer[0].bias is None and ad.layer[2].bias is None
    _set(ad.layer[0], [[1.0, 0.0], [0.0, 1.0]])
    _set(ad.layer[2], [[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[1.0, 2.0]])
    # relu([1, 2]) = [1, 2]; softmax -> [1, e] / (1 + e); output = gate * x
    expected = torch.tensor([[1.0 / (1 + E), 2.0 * E / (1 + E)]])
    assert torch.allclose(ad(x), expected, atol=1e-6)


def test_adapter_with_bias_matches_hand_computation():
    ad = AttentionAdapter(2, bias=True)
    _set(ad.layer[0], [[1.0, 0.0], [0.0, 1.0]], [0.0, -3.0])
    _set(ad.layer[2], [[1.0, 0.0], [0.0, 1.0]], [1.0, 0.0])
    x = torch.tensor([[1.0, 2.0]])
    # W1 x + b1 = [1, -1] -> relu [1, 0] -> + b2 = [2, 0] -> softmax [e^2, 1] / (e^2 + 1)
    expected = torch.tensor([[E**2 / (E**2 + 1), 2.0 / (E**2 + 1)]])
    assert torch.allclose(ad(x), expected, atol=1e-6)


def test_adapter_gate_is_a_distribution_over_channels():
    torch.manual_seed(0)
    ad = AttentionAdapter(16, bias=True)
    x = torch.randn(5, 16)
    gate = ad.gate(x)
    assert gate.shape == (5, 16) and (gate > 0).all()
    assert torch.allclose(gate.sum(dim=1), torch.ones(5), atol=1e-6)
    assert torch.allclose(ad(x), gate * x)


def _fusion(hidden, scaled):
    fu = VisualDynamicFusion(2, hidden=hidden, scaled=scaled)
    wq = [[1.0, 0.0]] + [[0.0, 0.0]] * (hidden - 1)
    wk = [[0.0, 1.0]] + [[0.0, 0.0]] * (hidden - 1)
    _set(fu.w_query, wq, [0.0] * hidden)
    _set(fu.w_key, wk, [1.0] + [0.0] * (hidden - 1))
    return fu


def test_fusion_unscaled_matches_hand_computation():
    fu = _fusion(hidden=1, scaled=False)
    x = torch.tensor([[2.0, 0.0]])
    cands = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    # q = 2; keys = 0+1, 1+1, 1+1 -> scores [2, 4, 4]
    fused, alpha = fu(x, cands)
    z = 1 + 2 * E**2
    assert torch.allclose(alpha, torch.tensor([[1 / z, E**2 / z, E**2 / z]]), atol=1e-6)
    assert torch.allclose(fused, torch.tensor([[(2 + E**2) / z, 2 * E**2 / z]]), atol=1e-6)


def test_fusion_scaled_divides_scores_by_sqrt_hidden():
    x = torch.tensor([[2.0, 0.0]])
    cands = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    # hidden 4: the same scores [2, 4, 4]; scaled by 1/2 -> [1, 2, 2]
    alpha_scaled = _fusion(hidden=4, scaled=True).weights(x, cands)
    z = 1 + 2 * E
    assert torch.allclose(alpha_scaled, torch.tensor([[1 / z, E / z, E / z]]), atol=1e-6)
    alpha_plain = _fusion(hidden=4, scaled=False).weights(x, cands)
    assert torch.allclose(alpha_plain, torch.tensor([[1, E**2, E**2]]) / (1 + 2 * E**2), atol=1e-6)


def test_fusion_weights_sum_to_one_per_image_and_shapes():
    torch.manual_seed(0)
    fu = VisualDynamicFusion(32, hidden=8)
    x = torch.randn(6, 32)
    cands = torch.stack([x, torch.randn(6, 32), torch.randn(6, 32)], dim=1)
    fused, alpha = fu(x, cands)
    assert fused.shape == (6, 32) and alpha.shape == (6, 3)
    assert torch.allclose(alpha.sum(dim=1), torch.ones(6), atol=1e-6)
    assert fu.w_query.bias is not None and fu.w_key.bias is not None
    assert not torch.allclose(alpha[0], alpha[1])  # weights are per image


def test_fusion_rejects_mismatched_shapes():
    fu = VisualDynamicFusion(4, hidden=2)
    with pytest.raises(ValueError, match="candidates"):
        fu(torch.zeros(2, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="positive"):
        AttentionAdapter(0)
