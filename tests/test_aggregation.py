"""FedAvg: weights from data sizes sum to 1; the average matches a hand computation."""
import pytest
import torch

from federated.aggregation import FedAvg, build_aggregator, data_size_weights, weighted_average


def test_data_size_weights_sum_to_one_and_are_proportional():
    w = data_size_weights([10, 30, 60])
    assert torch.allclose(w, torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64))
    assert float(w.sum()) == pytest.approx(1.0)


def test_data_size_weights_rejects_empty_or_zero():
    with pytest.raises(ValueError):
        data_size_weights([])
    with pytest.raises(ValueError):
        data_size_weights([0, 0])


def test_fedavg_matches_hand_computation():
    uploads = [{"ctx": torch.tensor([1.0, 2.0])}, {"ctx": torch.tensor([3.0, 6.0])}]
    avg, info = FedAvg()(uploads, [1, 3])
    # 0.25 * [1, 2] + 0.75 * [3, 6] = [2.5, 5.0]
    assert torch.allclose(avg["ctx"], torch.tensor([2.5, 5.0]))
    assert info["weights"] == pytest.approx([0.25, 0.75])
    assert avg["ctx"].dtype == torch.float32


def test_weighted_average_rejects_mismatched_keys():
    with pytest.raises(ValueError, match="keys"):
        weighted_average([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}], torch.tensor([0.5, 0.5]))


def test_empty_shared_state_aggregates_to_nothing():
    assert FedAvg()([{}, {}], [1, 2]) == ({}, {"weights": []})


def test_build_aggregator_aliases_and_unknown_name():
    assert isinstance(build_aggregator("fedavg"), FedAvg)
    with pytest.raises(KeyError, match="registered"):
        build_aggregator("nope")
