"""CE-LoRA (trainers/celora.py) and the similarity-personalised aggregator."""
import math
import os

import pytest
import torch

from dassl.engine import build_trainer
from federated.aggregation import build_aggregator
from federated.aggregation_personalized import (
    SimilarityPersonalized,
    class_feature_statistics,
    data_similarity,
    parameter_similarity,
    personalized_weights,
)
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.run import main
from tests.fedtv_testing import REPO, fast_args
from tests.toyworld_learning import HARD_WORLD, V1_WEIGHTS, V1_WORLD

SHIPPED = os.path.join(REPO, "clip", "weights", "tiny_toyworld.safetensors")


def _setup(tmp_path, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "CELoRA", "--rounds", "1"], list(opts))))
    data = build_federated_data(cfg)
    return cfg, data, build_trainer(cfg, classnames=data.classnames)


def _one_step(trainer):
    trainer.build_optimizers(1)
    trainer.set_model_mode("train")
    d = trainer.model.eval_context().shape[1]
    trainer.model_zero_grad()
    loss, _, _ = trainer.compute_loss(torch.randn(6, d), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    return dict(trainer.model.named_parameters())


def test_keys_init_and_c_gradient_from_the_first_step(tmp_path):
    _, _, trainer = _setup(tmp_path)
    shared, personal = trainer.shared_keys(), trainer.personal_keys()
    assert len(shared) == 2 and all(k.endswith(".C") for k in shared)  # 2 text layers, out_proj
    assert sorted(k[-1] for k in personal) == ["A", "A", "B", "B"]
    params = dict(trainer.model.named_parameters())
    assert all(float(params[k].detach().abs().sum()) == 0 for k in shared)  # C = 0: starts as the frozen CLIP
    grads = _one_step(trainer)
    assert all(float(grads[k].grad.abs().sum()) > 0 for k in shared)


def test_published_init_gives_c_no_gradient(tmp_path):
    """The published init (B = 0, C = I) with only C trainable: dL/dC is exactly zero."""
    _, _, trainer = _setup(tmp_path, "TRAINER.CELORA.INIT", "published", "TRAINER.CELORA.TRAIN_AB", "False")
    assert not trainer.personal_keys()
    grads = _one_step(trainer)
    for k in trainer.shared_keys():
        assert torch.equal(grads[k].detach(), torch.eye(2))
        assert float(grads[k].grad.abs().sum()) == 0.0


def test_class_feature_statistics_by_hand():
    feats = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    stats = class_feature_statistics(feats, torch.tensor([0, 0, 2]), num_classes=3)
    assert stats["counts"].tolist() == [2.0, 0.0, 1.0]
    torch.testing.assert_close(stats["means"], torch.tensor([[0.3, 0.9], [0.0, 0.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        class_feature_statistics(feats, torch.tensor([0, 1]), 3)


def _stats(counts, means):
    return {"counts": torch.tensor(counts, dtype=torch.float32), "means": torch.tensor(means)}


def test_data_similarity_by_hand():
    a = _stats([2, 2], [[1.0, 0.0], [0.0, 1.0]])
    same = _stats([1, 1], [[2.0, 0.0], [0.0, 3.0]])  # same distribution and directions
    disjoint = _stats([0, 4], [[0.0, 0.0], [0.0, 1.0]])
    shifted = _stats([2, 2], [[1.0, 1.0], [0.0, 1.0]])
    s = data_similarity([a, same, disjoint, shifted])
    assert s[0, 1] == pytest.approx(1.0)
    assert s[0, 2] == pytest.approx(math.sqrt(0.5 * 1.0))  # shares class 1 only: sqrt(p_a1 p_d1) * cos 1
    assert s[0, 3] == pytest.approx(0.5 * (1 / math.sqrt(2)) + 0.5 * 1.0)
    assert torch.allclose(s, s.t())


def test_parameter_similarity_uses_updates():
    prev = {"c": torch.ones(2, 2)}
    ups = [{"c": prev["c"] + torch.tensor([[1.0, 0], [0, 0]])}, {"c": prev["c"] + torch.tensor([[2.0, 0], [0, 0]])},
           {"c": prev["c"] + torch.tensor([[0.0, 1], [0, 0]])}]
    s = parameter_similarity(ups, prev)
    expected = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(s, expected)


def test_personalized_weights_by_hand():
    s_param = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    s_data = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    w = personalized_weights(s_param, s_data, [10, 30], lam=0.5, temperature=0.5)
    # row 0: n_j exp((0.5 s_p + 0.5 s_d)/0.5) -> [10 e^2, 30 e^0.5]
    expected0 = torch.tensor([10 * math.exp(2.0), 30 * math.exp(0.5)], dtype=torch.float64)
    torch.testing.assert_close(w[0], expected0 / expected0.sum())
    torch.testing.assert_close(w.sum(1), torch.ones(2, dtype=torch.float64))
    fedavg = personalized_weights(s_param, s_data, [10, 30], lam=0.5, temperature=1e9)
    torch.testing.assert_close(fedavg, torch.tensor([[0.25, 0.75], [0.25, 0.75]], dtype=torch.float64))
    with pytest.raises(ValueError, match="temperature"):
        personalized_weights(s_param, s_data, [1, 1], lam=0.5, temperature=0.0)


def test_aggregator_on_hand_made_uploads_and_statistics():
    """Clients 0 and 1 are identical (same update, same data); client 2 is unlike both."""
    prev = {"C": torch.zeros(2, 2)}
    up = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    uploads = [{"C": up.clone()}, {"C": up.clone()}, {"C": torch.tensor([[0.0, -1.0], [1.0, 0.0]])}]
    stats = {7: _stats([4, 0], [[1.0, 0.0], [0.0, 0.0]]), 8: _stats([4, 0], [[1.0, 0.0], [0.0, 0.0]]),
             9: _stats([0, 4], [[0.0, 0.0], [0.0, 1.0]])}
    agg = SimilarityPersonalized(lam=0.5, temperature=0.2)
    new_global, info = agg(uploads, [5, 5, 5], prev, [7, 8, 9], side_information=stats)
    w = torch.tensor(info["personal_weights"])
    torch.testing.assert_close(w.sum(1), torch.ones(3), atol=1e-5, rtol=0)
    assert w[0, 0] == pytest.approx(w[0, 1], abs=1e-6) and w[1, 0] == pytest.approx(w[1, 1], abs=1e-6)
    assert w[0, 2] < 0.05 * w[0, 1]
    assert info["data_similarity"] == "used"
    torch.testing.assert_close(new_global["C"], sum(u["C"] for u in uploads) / 3)
    per = info["per_client"]
    assert set(per) == {7, 8, 9}
    torch.testing.assert_close(per[7]["C"], per[8]["C"])
    assert float((per[7]["C"] - up).abs().max()) < 0.05  # mostly its own twin's C
    # registered by name, without statistics: parameter similarity only
    _, info = build_aggregator("SimilarityPersonalized")(uploads, [5, 5, 5], prev, [7, 8, 9])
    assert info["data_similarity"].startswith("missing")


def test_run_uploads_only_c_and_downloads_personal_mixes(tmp_path):
    res = main(fast_args(tmp_path, ["--trainer", "CELoRA"], ["TRAINER.CELORA.RANK", "3", "OPTIM.LR", "0.01"]))
    layers, r = 2, 3
    assert all(rd["bytes_up_per_client"] == layers * r * r * 4 for rd in res["rounds"])
    assert res["params"]["shared"] == layers * r * r
    assert res["params"]["personal"] == layers * (64 * r + r * 64)
    weights = res["rounds"][0]["aggregation"]["personal_weights"]
    assert len(weights) == 3 and all(sum(row) == pytest.approx(1.0, abs=1e-5) for row in weights)
    ckpt = torch.load(os.path.join(tmp_path, "checkpoint.pt"), weights_only=True)
    mixes = [ckpt["client_global"][c] for c in sorted(ckpt["client_global"])]
    assert len(mixes) == 3
    key = next(iter(mixes[0]))
    assert not torch.equal(mixes[0][key], mixes[1][key])


@pytest.mark.skipif(not os.path.isfile(SHIPPED), reason="shipped tiny toy-world weights not built yet")
def test_celora_learns_on_the_toy_world(tmp_path):
    # IID clients, as in FLoRA's experiments: the published contrastive loss (targets arange(B)) counts
    # same-class pairs as negatives, which is degenerate on pathological clients owning 2 classes.
    flags = ["--trainer", "CELoRA", "--rounds", "3", "--local-epochs", "2", "--partition", "iid"]
    # calibrated on the first-generation world and weights (tests/toyworld_learning.py)
    res = main(fast_args(tmp_path, flags, [*HARD_WORLD, *V1_WORLD], weights=V1_WEIGHTS))
    assert res["final"]["local"] > res["zero_shot"]["local"] + 5.0
