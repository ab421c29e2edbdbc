"""PromptFolio: the portfolio mixture of text features, the global/local split, a toy run that learns."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from dassl.engine import build_trainer
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.errors import ConfigError
from federated.server import FederatedServer
from tests.fedtv_testing import fast_args
from trainers.promptfolio import portfolio_mix


def _trainer(tmp_path, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "PromptFolio", "--rounds", "1"], list(opts))))
    data = build_federated_data(cfg)
    return cfg, data, build_trainer(cfg, classnames=data.classnames)


def test_mixture_by_hand():
    t_g = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t_l = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    mixed = portfolio_mix(t_g, t_l, 0.4)
    # class 0: 0.6 * (1, 0) + 0.4 * (0, 1) = (0.6, 0.4), norm sqrt(0.52): not re-normalised
    assert torch.allclose(mixed, torch.tensor([[0.6, 0.4], [0.6, 0.8]]))
    assert mixed[0].norm().item() == pytest.approx(math.sqrt(0.52))
    assert torch.equal(portfolio_mix(t_g, t_l, 0.0), t_g) and torch.equal(portfolio_mix(t_g, t_l, 1.0), t_l)
    with pytest.raises(ValueError, match="shape"):
        portfolio_mix(t_g, t_l[:1], 0.4)


def test_logits_are_image_features_against_the_unnormalised_mixture(tmp_path):
    cfg, data, trainer = _trainer(tmp_path)
    model, learner = trainer.model, trainer.model.prompt_learner
    assert learner.ctx_global.shape == learner.ctx_local.shape == (1, 8, learner.ctx_dim)
    assert not torch.equal(learner.ctx_global, learner.ctx_local)  # independent N(0, 0.02) draws
    feats, labels = torch.randn(5, model.clip.embed_dim), torch.arange(5) % trainer.num_classes
    with torch.no_grad():
        # the two prompt sets encoded independently (dense passes, no shared prefix)
        t_g = F.normalize(model.text_encoder(learner.construct_prompts(learner.ctx_global[0]),
                                             learner.tokenized_prompts), dim=-1)
        t_l = F.normalize(model.text_encoder(learner.construct_prompts(learner.ctx_local[0]),
                                             learner.tokenized_prompts), dim=-1)
        expected = model.logit_scale.exp() * F.normalize(feats, dim=-1) @ (0.6 * t_g + 0.4 * t_l).t()
        loss, logits, _ = trainer.compute_loss(feats, labels)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert loss.item() == pytest.approx(F.cross_entropy(expected, labels).item(), rel=1e-4)
    assert (model.eval_context().norm(dim=-1) < 1.0 - 1e-4).all()  # a mixture of two directions


def test_global_context_is_shared_and_the_local_one_stays_personal(tmp_path):
    cfg, data, trainer = _trainer(tmp_path)
    assert trainer.shared_keys() == ["prompt_learner.ctx_global"]
    assert trainer.personal_keys() == ["prompt_learner.ctx_local"]
    server = FederatedServer(cfg, trainer, data)
    server.run()
    ckpt = torch.load(server.checkpoint_path, weights_only=True)
    assert set(ckpt["global"]) == {"prompt_learner.ctx_global"}
    local = [p["prompt_learner.ctx_local"] for p in ckpt["personal"]]
    assert all(set(p) == {"prompt_learner.ctx_local"} for p in ckpt["personal"])
    assert not torch.equal(local[0], local[1])


@pytest.mark.parametrize("theta", ["-0.1", "1.5"])
def test_theta_outside_unit_interval_is_a_clear_error(tmp_path, theta):
    with pytest.raises(ConfigError, match="THETA must be in"):
        _trainer(tmp_path, "TRAINER.PROMPTFOLIO.THETA", theta)


from tests.toyworld_learning import V1_WEIGHTS, pathological_run  # noqa: E402

SHIPPED_WEIGHTS = V1_WEIGHTS  # the first-generation weights (see below)


@pytest.mark.skipif(not os.path.isfile(SHIPPED_WEIGHTS), reason="shipped tiny CLIP weights not built yet")
def test_local_prompt_beats_promptfl_on_a_pathological_split(tmp_path):
    """6 clients with 2 of 12 classes each, 2 rounds of 10 local epochs, lr 0.1 (FedPGP's learning test).

    Measured: PromptFolio Local 87.5, PromptFL 75.0, zero-shot 43.1.
    """
    zero_shot, folio = pathological_run(tmp_path, "PromptFolio")
    _, promptfl = pathological_run(tmp_path, "PromptFL")
    assert folio > promptfl + 5.0, (folio, promptfl)
    assert folio > zero_shot + 20.0, (folio, zero_shot)
