"""KgCoOp: the knowledge-guided regulariser (paper's L2 and the published cosine form), the hand-crafted
text features, the training loss, and a toy-world run that learns."""
import os

import pytest
import torch
import torch.nn.functional as F

from dassl.engine import build_trainer
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.errors import ConfigError
from tests.fedtv_testing import fast_args
from tests.toyworld_learning import SHIPPED_WEIGHTS, V1_WEIGHTS, V1_WORLD, learning_run
from trainers.handcrafted import handcrafted_text_features
from trainers.kgcoop import knowledge_guidance


def _trainer(tmp_path, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "KgCoOp", "--rounds", "1"], list(opts))))
    data = build_federated_data(cfg)
    return build_trainer(cfg, classnames=data.classnames)


# ------------------------------------------------------------------ L_kg on hand-computed unit vectors
# class 0: learned (1, 0), hand-crafted (0.6, 0.8): ||diff||^2 = 0.4^2 + 0.8^2 = 0.8, cos = 0.6
# class 1: learned (0, 1), hand-crafted (0, 1):     ||diff||^2 = 0,               cos = 1
LEARNED = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
HANDCRAFTED = torch.tensor([[0.6, 0.8], [0.0, 1.0]])


def test_knowledge_guidance_by_hand():
    assert knowledge_guidance(LEARNED, HANDCRAFTED, "l2").item() == pytest.approx(0.4)
    assert knowledge_guidance(LEARNED, HANDCRAFTED, "cosine").item() == pytest.approx(0.2)


def test_published_cosine_form_is_half_the_paper_term():
    gen = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(7, 16, generator=gen), dim=-1)
    b = F.normalize(torch.randn(7, 16, generator=gen), dim=-1)
    assert knowledge_guidance(a, b, "l2").item() == pytest.approx(2 * knowledge_guidance(a, b, "cosine").item())


def test_knowledge_guidance_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        knowledge_guidance(LEARNED, HANDCRAFTED[:1])
    with pytest.raises(ValueError, match="distance must be one of"):
        knowledge_guidance(LEARNED, HANDCRAFTED, "l1")


# ------------------------------------------------------------------ hand-crafted features
def test_handcrafted_features_are_frozen_clip_text_features_per_class_set(tmp_path):
    trainer = _trainer(tmp_path)
    model, clip = trainer.model, trainer.model.clip
    names = trainer.classnames
    with torch.no_grad():
        expected = F.normalize(clip.model.encode_text(clip.tokenize(
            [f"a photo of a {n.replace('_', ' ')}." for n in names])).float(), dim=-1)
    got = model.handcrafted()
    assert got.shape == (len(names), expected.shape[1]) and not got.requires_grad
    assert torch.allclose(got, expected, atol=1e-5)
    assert model.handcrafted() is got  # encoded once per class set
    trainer.set_classnames(names[:4])  # another class set: encoded on first use, for those classes
    assert model.handcrafted.features is None
    assert torch.allclose(model.handcrafted(), expected[:4], atol=1e-5)
    assert "handcrafted.features" not in model.state_dict()  # never part of a client's state


def test_handcrafted_template_errors(tmp_path):
    with pytest.raises(ValueError, match="must contain"):
        handcrafted_text_features(None, ["a"], "a photo")
    with pytest.raises(ConfigError, match="must contain"):
        _trainer(tmp_path, "TRAINER.KGCOOP.TEMPLATE", "a photo")


# ------------------------------------------------------------------ the trainer's loss
def test_word_initialised_context_starts_at_the_handcrafted_features(tmp_path):
    """CTX_INIT "a photo of a" + the toy world's template "a photo of a {}.": the same prompts, L_kg = 0."""
    trainer = _trainer(tmp_path)
    with torch.no_grad():
        kg = knowledge_guidance(trainer.model.eval_context(), trainer.model.handcrafted())
    assert kg.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("distance, weight", [("l2", 8.0), ("cosine", 2.5)])
def test_loss_is_ce_plus_w_times_the_regulariser(tmp_path, distance, weight):
    trainer = _trainer(tmp_path, "TRAINER.KGCOOP.DISTANCE", distance, "TRAINER.KGCOOP.W", str(weight),
                       "TRAINER.KGCOOP.CTX_INIT", "", "TRAINER.KGCOOP.N_CTX", "4")
    model = trainer.model
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(5, model.handcrafted().shape[1], generator=gen)
    labels = torch.arange(5) % trainer.num_classes
    loss, logits, extra = trainer.compute_loss(feats, labels)
    with torch.no_grad():
        text = F.normalize(model.text_encoder(model.prompt_learner(), model.prompt_learner.tokenized_prompts), dim=-1)
        ce = F.cross_entropy(model.logit_scale.exp() * F.normalize(feats, dim=-1) @ text.t(), labels)
        hand = model.handcrafted()
        kg = ((text - hand) ** 2).sum(-1).mean() if distance == "l2" else 1 - (text * hand).sum(-1).mean()
    assert kg.item() > 1e-3  # a random context is far from the hand-crafted prompts
    assert extra["kg"].item() == pytest.approx(kg.item(), rel=1e-4)
    assert extra["ce"].item() == pytest.approx(ce.item(), rel=1e-4)
    assert loss.item() == pytest.approx(ce.item() + weight * kg.item(), rel=1e-4)
    # the regulariser has its gradient on the context: a step along -grad(L_kg) lowers L_kg
    ctx = model.prompt_learner.ctx
    (grad,) = torch.autograd.grad(knowledge_guidance(model.eval_context(), hand, distance), ctx)
    with torch.no_grad():
        ctx -= 0.5 * grad / grad.norm()
        assert knowledge_guidance(model.eval_context(), hand, distance) < kg


def test_shared_keys_and_bad_config(tmp_path):
    trainer = _trainer(tmp_path)
    assert trainer.shared_keys() == ["prompt_learner.ctx"] and trainer.personal_keys() == []
    assert trainer.model.prompt_learner.ctx.shape[0] == 4  # "a photo of a"
    with pytest.raises(ConfigError, match="DISTANCE must be one of"):
        _trainer(tmp_path, "TRAINER.KGCOOP.DISTANCE", "l1")
    with pytest.raises(ConfigError, match="W must be >= 0"):
        _trainer(tmp_path, "TRAINER.KGCOOP.W", "-1.0")


# ------------------------------------------------------------------ a toy-world run that learns
@pytest.mark.skipif(not os.path.isfile(SHIPPED_WEIGHTS), reason="shipped tiny toy-world CLIP weights not built yet")
def test_toyworld_run_learns(tmp_path):
    # 36 local test images: the +5 margin is two images, so the run is pinned to the few-shot sample it was
    # calibrated on (the whole train split; the default CoOp pool gives 72.2 / 72.2 / 69.4 for seeds 1-3)
    zero_shot, local = learning_run(tmp_path, "KgCoOp", opts=["DATASET.FEWSHOT_POOL", "full", *V1_WORLD],
                                     weights=V1_WEIGHTS)  # calibrated on the first-generation world and weights
    assert local[-1] > zero_shot + 5.0
