"""Similarity-aware aggregation (FedTV SAA) against hand-computed weights."""
import math

import pytest
import torch

from federated.aggregation import build_aggregator
from federated.aggregation_saa import SAA, similarity_weights

E = math.e


def _ups(*rows):
    return [{"w": torch.tensor(r)} for r in rows]


def test_equal_data_two_clients_hand_computed():
    prev = {"w": torch.tensor([1.0, 0.0])}
    # cos = [1, 0]; softmax -> [e, 1] / (1 + e); equal data -> same weights
    out, info = SAA(temperature=1.0)(_ups([1.0, 0.0], [0.0, 1.0]), [5, 5], prev, [0, 1])
    w = [E / (1 + E), 1 / (1 + E)]
    assert info["rule"] == "saa"
    assert info["weights_per_tensor"]["w"] == pytest.approx(w)
    assert info["cosine_per_tensor"]["w"] == pytest.approx([1.0, 0.0], abs=1e-12)
    assert torch.allclose(out["w"], torch.tensor([w[0], w[1]]), atol=1e-6)


def test_data_share_and_temperature_hand_computed():
    prev = {"w": torch.tensor([1.0, 0.0])}
    ups = _ups([1.0, 0.0], [0.0, 1.0])
    # T = 1, n = [1, 3]: f ∝ [0.25 e, 0.75] -> [e, 3] / (e + 3)
    _, info = SAA(temperature=1.0)(ups, [1, 3], prev)
    assert info["weights"] == pytest.approx([E / (E + 3), 3 / (E + 3)])
    # T = 0.5: softmax([2, 0]) -> f ∝ [0.25 e^2, 0.75] -> [e^2, 3] / (e^2 + 3)
    _, info = SAA(temperature=0.5)(ups, [1, 3], prev)
    assert info["weights"] == pytest.approx([E**2 / (E**2 + 3), 3 / (E**2 + 3)])


def test_three_uploads_each_tensor_weighted_separately():
    prev = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([[0.0, 1.0]])}
    ups = [
        {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([[0.0, 2.0]])},   # cos a 1,  b 1
        {"a": torch.tensor([0.0, 3.0]), "b": torch.tensor([[1.0, 0.0]])},   # cos a 0,  b 0
        {"a": torch.tensor([-1.0, 0.0]), "b": torch.tensor([[0.0, -1.0]])},  # cos a -1, b -1
    ]
    out, info = SAA()(ups, [2, 1, 1], prev)
    share = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    f = share * torch.exp(torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64))
    f = f / f.sum()
    assert info["weights_per_tensor"]["a"] == pytest.approx(f.tolist())
    assert info["weights_per_tensor"]["b"] == pytest.approx(f.tolist())
    expected_a = f[0] * torch.tensor([1.0, 0.0]) + f[1] * torch.tensor([0.0, 3.0]) + f[2] * torch.tensor([-1.0, 0.0])
    assert torch.allclose(out["a"], expected_a.float(), atol=1e-6)
    assert out["b"].shape == (1, 2)
    for weights in info["weights_per_tensor"].values():
        assert sum(weights) == pytest.approx(1.0)
    assert sum(info["weights"]) == pytest.approx(1.0)


def test_tensors_with_different_similarity_get_different_weights():
    prev = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 0.0])}
    ups = [{"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0])},
           {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([1.0, 0.0])}]
    _, info = SAA()(ups, [1, 1], prev)
    assert info["weights_per_tensor"]["a"] == pytest.approx([E / (1 + E), 1 / (1 + E)])
    assert info["weights_per_tensor"]["b"] == pytest.approx([1 / (1 + E), E / (1 + E)])


def test_equally_similar_uploads_reduce_to_fedavg():
    prev = {"w": torch.tensor([1.0, 0.0])}
    ups = _ups([1.0, 1.0], [1.0, -1.0], [2.0, 2.0])  # all at cos 1/sqrt(2)
    out, info = SAA()(ups, [1, 2, 7], prev)
    assert info["weights"] == pytest.approx([0.1, 0.2, 0.7])
    fedavg, _ = build_aggregator("fedavg")(ups, [1, 2, 7], prev)
    assert torch.allclose(out["w"], fedavg["w"], atol=1e-6)


def test_first_round_is_fedavg():
    """Round 1 (round_idx 0, passed by the coordinator) or no previous global: FedAvg; later rounds: SAA."""
    ups = _ups([1.0, 0.0], [0.0, 1.0])
    initial = {"w": torch.tensor([1.0, 0.0])}
    for prev, round_idx in ((None, None), ({}, None), (initial, 0)):
        out, info = SAA()(ups, [1, 3], prev, round_idx=round_idx)
        assert info["rule"] == "fedavg"
        assert torch.allclose(out["w"], torch.tensor([0.25, 0.75]))
    # a later round, even with the same previous global: similarity-aware
    _, info = SAA()(ups, [1, 3], initial, round_idx=1)
    assert info["rule"] == "saa"


def test_similarity_weights_helper_and_errors():
    w, cos = similarity_weights([torch.ones(3), -torch.ones(3)], torch.ones(3),
                                torch.tensor([0.5, 0.5], dtype=torch.float64), 1.0)
    assert cos.tolist() == pytest.approx([1.0, -1.0])
    assert w.tolist() == pytest.approx([E**2 / (E**2 + 1), 1 / (E**2 + 1)])
    with pytest.raises(ValueError, match="temperature"):
        SAA(temperature=0.0)
    with pytest.raises(ValueError, match="lacks"):
        SAA()(_ups([1.0]), [1], {"other": torch.ones(1)})


def test_registered_and_reads_temperature_from_cfg():
    from federated.config import get_cfg

    cfg = get_cfg()
    assert isinstance(build_aggregator("saa", cfg), SAA)
    cfg.TRAINER.FEDTV.SAA_TEMP = 0.25
    assert build_aggregator("SAA", cfg).temperature == 0.25
