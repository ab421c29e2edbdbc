"""FLoRA's references: FedFFT, FedLC, FedAA (trainers/flora.py, trainers/feature_heads.py)."""
import os

import pytest
import torch
import torch.nn.functional as F

from dassl.engine import build_trainer
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.errors import ClassSpaceError
from federated.run import main
from tests.fedtv_testing import REPO, fast_args
from tests.toyworld_learning import HARD_WORLD, V1_WEIGHTS, V1_WORLD
from trainers.feature_heads import attention_adapter

SHIPPED = os.path.join(REPO, "clip", "weights", "tiny_toyworld.safetensors")


def _setup(tmp_path, trainer, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", trainer, "--rounds", "1"], list(opts))))
    data = build_federated_data(cfg)
    return cfg, data, build_trainer(cfg, classnames=data.classnames)


def test_attention_adapter_identity_init_by_hand():
    adapter = attention_adapter(4, reduction=1)
    f = torch.tensor([[0.5, -1.0, 2.0, 0.0]])
    torch.testing.assert_close(adapter(f), torch.softmax(torch.tanh(f), dim=-1))
    half = attention_adapter(4, reduction=2)  # eye_ on (2, 4) and (4, 2): keeps the first 2 coordinates
    h = torch.tanh(f[:, :2])
    torch.testing.assert_close(half(f), torch.softmax(torch.cat([h, torch.zeros(1, 2)], 1), dim=-1))
    with pytest.raises(ValueError, match="REDUCTION"):
        attention_adapter(4, reduction=8)


def test_fedaa_trainable_tensors_and_gate(tmp_path):
    _, _, trainer = _setup(tmp_path, "FedAA", "TRAINER.FEDAA.ON", "['vision', 'text']")
    assert set(trainer.shared_keys()) == set(trainer.trainable_parameters())
    assert {k.split(".")[1] for k in trainer.shared_keys()} == {"vision", "text"}
    feats = torch.randn(5, 64)
    ctx = trainer.model.eval_context()
    gated = feats * torch.softmax(torch.tanh(feats), dim=-1)
    expected = trainer.model.logit_scale.exp() * F.normalize(gated, dim=-1) @ ctx.t()
    torch.testing.assert_close(trainer.model.logits(feats, ctx), expected)


def test_fedlc_starts_as_zero_shot_and_is_tied_to_its_classes(tmp_path):
    _, data, trainer = _setup(tmp_path, "FedLC")
    model = trainer.model
    assert set(trainer.shared_keys()) == {"head.weight", "head.bias"} == set(trainer.trainable_parameters())
    torch.testing.assert_close(model.head.weight, model.text_features)
    feats = torch.randn(7, 64)
    zero_shot = F.normalize(feats, dim=-1) @ model.text_features.t()
    torch.testing.assert_close(model.logits(feats), zero_shot)
    with pytest.raises(ClassSpaceError):
        trainer.set_classnames(list(reversed(data.classnames)))


def test_fedfft_trains_the_whole_text_tower_copy(tmp_path):
    _, _, trainer = _setup(tmp_path, "FedFFT", "OPTIM.LR", "0.001")
    clip_model = trainer.model.clip.model
    trainable = trainer.trainable_parameters()
    count = lambda params: sum(p.numel() for p in params)  # noqa: E731
    text_params = count(clip_model.parameters()) - count(clip_model.visual.parameters()) - 1  # - logit_scale
    assert count(trainable.values()) == text_params
    assert "text_encoder.token_embedding.weight" in trainable
    assert all(trainable[k].data_ptr() != p.data_ptr() for k in trainable for p in clip_model.parameters())
    frozen = {k: v.clone() for k, v in clip_model.state_dict().items()}
    trainer.build_optimizers(1)
    trainer.set_model_mode("train")
    trainer.forward_backward({"feat": torch.randn(4, 64), "label": torch.tensor([0, 1, 2, 3])})
    assert all(torch.equal(frozen[k], v) for k, v in clip_model.state_dict().items())
    _, _, small = _setup(tmp_path, "FedFFT", "TRAINER.FEDFFT.TRAIN_TOKEN_EMBEDDING", "False")
    assert "text_encoder.token_embedding.weight" not in small.trainable_parameters()


@pytest.mark.parametrize("name", ["FedLC", "FedAA"])
def test_cost_block_in_results(tmp_path, name):
    res = main(fast_args(tmp_path, ["--trainer", name, "--rounds", "1"]))
    n = res["params"]["shared"]
    assert res["params"] == {"shared": n, "personal": 0, "total": n} and n > 0
    assert res["rounds"][0]["bytes_up_per_client"] == n * 4 == res["rounds"][0]["bytes_down_per_client"]


@pytest.mark.skipif(not os.path.isfile(SHIPPED), reason="shipped tiny toy-world weights not built yet")
def test_fedaa_learns_on_the_toy_world(tmp_path):
    # calibrated on the first-generation world and weights (tests/toyworld_learning.py)
    res = main(fast_args(tmp_path, ["--trainer", "FedAA", "--rounds", "3", "--local-epochs", "2"],
                         [*HARD_WORLD, *V1_WORLD], weights=V1_WEIGHTS))
    assert res["final"]["local"] > res["zero_shot"]["local"] + 5.0
