"""PromptProx: the FedProx term (mu/2)||p - p_global||^2 on the live shared prompt, its gradient, the
published detached variant, and a toy-world run that learns."""
import os

import pytest
import torch
import torch.nn.functional as F

from dassl.engine import build_trainer
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.errors import ConfigError
from tests.fedtv_testing import fast_args
from tests.toyworld_learning import SHIPPED_WEIGHTS, learning_run
from trainers.method import RoundContext
from trainers.promptprox import proximal_term


def _trainer(tmp_path, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "PromptProx", "--rounds", "1"], list(opts))))
    data = build_federated_data(cfg)
    return build_trainer(cfg, classnames=data.classnames)


# ------------------------------------------------------------------ the term on hand-computed tensors
# p - a: key "x" = [[1, 0], [2, 3]] (squares 14), key "y" = [-2] (square 4): (mu/2) * 18
P = {"x": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "y": torch.tensor([0.5])}
A = {"x": torch.tensor([[0.0, 2.0], [1.0, 1.0]]), "y": torch.tensor([2.5])}


@pytest.mark.parametrize("mu", [0.5, 2.0])
def test_proximal_value_and_gradient_by_hand(mu):
    params = {k: v.clone().requires_grad_(True) for k, v in P.items()}
    term = proximal_term(params, A, mu)
    assert term.item() == pytest.approx(mu / 2 * 18.0)
    term.backward()
    assert torch.allclose(params["x"].grad, mu * torch.tensor([[1.0, 0.0], [2.0, 3.0]]))
    assert torch.allclose(params["y"].grad, mu * torch.tensor([-2.0]))


def test_detached_term_has_the_value_but_no_gradient():
    params = {k: v.clone().requires_grad_(True) for k, v in P.items()}
    term = proximal_term(params, A, 0.5, detached=True)
    assert term.item() == pytest.approx(0.25 * 18.0)
    assert not term.requires_grad


def test_proximal_term_bad_arguments():
    with pytest.raises(KeyError, match="no parameter"):
        proximal_term({"x": P["x"]}, A, 0.5)
    with pytest.raises(ValueError, match="no anchor"):
        proximal_term(P, {}, 0.5)


# ------------------------------------------------------------------ the trainer's loss and gradient
def _loss_and_grad(trainer, feats, labels, anchor):
    ctx = trainer.model.prompt_learner.ctx
    trainer.round_context = RoundContext(round_start={"prompt_learner.ctx": anchor})
    ctx.grad = None
    loss, logits, extra = trainer.compute_loss(feats, labels)
    loss.backward()
    return loss.detach(), logits.detach(), extra, ctx.grad.clone()


@pytest.mark.parametrize("detached", [False, True])
def test_trainer_loss_is_ce_plus_prox_on_the_live_context(tmp_path, detached):
    trainer = _trainer(tmp_path, "TRAINER.PROMPTPROX.MU", "0.7", "TRAINER.PROMPTPROX.PROX_DETACHED", str(detached))
    ctx = trainer.model.prompt_learner.ctx
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(6, trainer.model.eval_context().shape[1], generator=gen)
    labels = torch.arange(6) % trainer.num_classes
    anchor = ctx.detach() + 0.1 * torch.randn(ctx.shape, generator=gen)  # the downloaded global context
    loss, logits, extra, grad = _loss_and_grad(trainer, feats, labels, anchor)
    _, _, _, grad_ce = _loss_and_grad(trainer, feats, labels, ctx.detach().clone())  # prox term = 0 here
    ce = F.cross_entropy(logits, labels)
    prox = 0.35 * (ctx.detach() - anchor).pow(2).sum()
    assert extra["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert extra["prox"].item() == pytest.approx(prox.item(), rel=1e-5)
    assert loss.item() == pytest.approx(ce.item() + prox.item(), rel=1e-5)
    live = grad_ce + 0.7 * (ctx.detach() - anchor)  # d/dp of CE + (mu/2)||p - a||^2
    if detached:  # the published behaviour: the term is in the loss value only
        assert torch.allclose(grad, grad_ce, atol=1e-6) and not torch.allclose(grad, live, atol=1e-6)
    else:
        assert torch.allclose(grad, live, atol=1e-6)


def test_prox_pulls_local_training_towards_the_download(tmp_path):
    """Same data, same start: a large mu keeps the trained context closer to the downloaded one."""
    trainer = _trainer(tmp_path, "OPTIM.LR", "0.01")
    ctx = trainer.model.prompt_learner.ctx
    start = ctx.detach().clone()
    dim = trainer.model.eval_context().shape[1]
    gen = torch.Generator().manual_seed(1)
    batches = [{"feat": torch.randn(8, dim, generator=gen), "label": torch.arange(8) % trainer.num_classes}
               for _ in range(6)]
    drift = {}
    for mu in (0.0, 30.0):
        trainer.cfg.defrost()
        trainer.cfg.TRAINER.PROMPTPROX.MU = mu
        trainer.load_state({"prompt_learner.ctx": start})
        trainer.local_train(batches, epochs=1)
        drift[mu] = (ctx.detach() - start).norm().item()
    assert drift[0.0] > 0
    assert drift[30.0] < 0.5 * drift[0.0]


def test_negative_mu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="MU must be >= 0"):
        _trainer(tmp_path, "TRAINER.PROMPTPROX.MU", "-0.5")


def test_shared_keys_are_the_context(tmp_path):
    trainer = _trainer(tmp_path)
    assert trainer.shared_keys() == ["prompt_learner.ctx"] and trainer.personal_keys() == []


# ------------------------------------------------------------------ a toy-world run that learns
@pytest.mark.skipif(not os.path.isfile(SHIPPED_WEIGHTS), reason="shipped tiny toy-world CLIP weights not built yet")
def test_toyworld_run_learns(tmp_path):
    zero_shot, local = learning_run(tmp_path, "PromptProx")
    assert local[-1] > zero_shot + 5.0
