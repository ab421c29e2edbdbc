"""FedOTP: OT plans checked by hand and against an independent solver, patch tokens, the model's
logits, the global/local split, and a short toy-world run that learns."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from scipy.optimize import brentq, minimize

from clip import make_random_clip
from federated.cli import build_cfg, parse_args
from federated.run import main
from tests.fedtv_testing import REPO, fast_args
from tests.toyworld_learning import STAGE1_WEIGHTS
from trainers.fedotp import MultiPromptLearner, OTPromptCLIP
from trainers.image_tokens import image_tokens
from trainers.optimal_transport import partial_sinkhorn, sinkhorn, uniform_plan

COST = torch.tensor([[0.2, 0.7], [0.5, 0.4], [0.9, 0.1]])  # 3 patches x 2 prompts
EPS = 0.1

WEIGHTS = os.path.join(REPO, "clip", "weights", "tiny_toyworld.safetensors")
#: A harder toy world (noise, two distractors, small objects) where zero-shot CLIP is far from perfect.
HARDER = ["DATASET.TOYWORLD.NOISE", "0.4", "DATASET.TOYWORLD.DISTRACTORS", "2", "DATASET.TOYWORLD.SCALE", "(0.35, 0.6)",
          "DATASET.TOYWORLD.TEST_PER_CLASS", "12"]


def test_sinkhorn_3x2_matches_the_hand_solution():
    """With 2 columns, row i of the plan is (1/3) * (s_i, 1 - s_i) with s_i = sigmoid(d_i + t),
    d_i = (C_i2 - C_i1) / eps; t solves sum_i s_i / 3 = 1/2 (one scalar equation)."""
    mu, nu = torch.full((3,), 1 / 3), torch.full((2,), 0.5)
    plan = sinkhorn(COST, mu, nu, EPS, thresh=1e-9, max_iter=1000)
    d = ((COST[:, 1] - COST[:, 0]) / EPS).double().numpy()

    def sig(z):
        return 1 / (1 + np.exp(-z))

    t = brentq(lambda t: sig(d + t).sum() / 3 - 0.5, -50, 50)
    s = sig(d + t)
    expected = np.stack([s / 3, (1 - s) / 3], axis=1)
    np.testing.assert_allclose(plan.double().numpy(), expected, atol=1e-6)
    torch.testing.assert_close(plan.sum(1), mu, atol=1e-6, rtol=0)
    torch.testing.assert_close(plan.sum(0), nu, atol=1e-6, rtol=0)


def _primal_partial(cost: np.ndarray, mu: np.ndarray, nu: np.ndarray, eps: float) -> np.ndarray:
    """min <T, C> + eps * sum T (log T - 1)  s.t.  T 1 <= mu, T^T 1 = nu (SLSQP, independent of ours)."""
    m, n = cost.shape

    def objective(x):
        return float((x * cost.ravel()).sum() + eps * (x * (np.log(x) - 1)).sum())

    cons = [{"type": "ineq", "fun": lambda x: mu - x.reshape(m, n).sum(1)},
            {"type": "eq", "fun": lambda x: x.reshape(m, n).sum(0) - nu}]
    res = minimize(objective, np.full(m * n, nu.sum() / (m * n)), constraints=cons, bounds=[(1e-12, 1)] * (m * n),
                   method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
    return res.x.reshape(m, n)


def test_partial_plan_moves_top_percent_and_solves_the_relaxed_problem():
    gamma = 0.8
    mu, nu = torch.full((3,), 1 / 3), torch.full((2,), gamma / 2)
    plan = partial_sinkhorn(COST, mu, nu, EPS, thresh=1e-10, max_iter=5000)
    assert plan.sum().item() == pytest.approx(gamma, abs=1e-6)
    torch.testing.assert_close(plan.sum(0), nu, atol=1e-6, rtol=0)
    assert (plan.sum(1) <= mu + 1e-6).all()
    assert plan.sum(1)[1] < 1 / 3 - 0.1  # the patch far from both prompts gives up mass
    np.testing.assert_allclose(plan.numpy(), _primal_partial(COST.numpy(), mu.numpy(), nu.numpy(), EPS), atol=2e-5)
    # Full mass: the relaxed problem is the balanced one.
    full = partial_sinkhorn(COST, mu, torch.full((2,), 0.5), EPS, thresh=1e-10, max_iter=5000)
    torch.testing.assert_close(full, sinkhorn(COST, mu, torch.full((2,), 0.5), EPS, 1e-10, 5000), atol=1e-6, rtol=0)


def test_batched_uniform_plans_and_small_eps():
    torch.manual_seed(0)
    sim = torch.rand(4, 5, 16, 2) * 2 - 1  # (B, C, P, N)
    for eps in (0.1, 0.05):
        plan = uniform_plan(1 - sim, "Sinkhorn", eps=eps, thresh=1e-4, max_iter=5000)
        assert plan.shape == (4, 5, 16, 2)
        torch.testing.assert_close(plan.sum(-2), torch.full((4, 5, 2), 0.5), atol=1e-6, rtol=0)
        # the stopping rule bounds the mean L1 error of the patch marginals (up to float32 rounding)
        assert (plan.sum(-1) - 1 / 16).abs().sum(-1).mean() < 1.1e-4
        cot = uniform_plan(1 - sim, "COT", top_percent=0.8, eps=eps, thresh=1e-4, max_iter=5000)
        torch.testing.assert_close(cot.sum(-2), torch.full((4, 5, 2), 0.4), atol=1e-5, rtol=0)
        assert (cot.sum(-1) - 1 / 16).clamp(min=0).sum(-1).mean() < 1.1e-4
    # exp(-2 / 0.001) underflows a plain kernel to 0 (NaN plans); the log-domain one stays finite
    for method in ("Sinkhorn", "COT"):
        plan = uniform_plan(1 - sim, method, eps=0.001, max_iter=20)
        assert torch.isfinite(plan).all() and plan.sum(-2).min() > 0.39  # prompt marginals exact


def test_plan_errors_are_clear():
    with pytest.raises(FloatingPointError, match="NaN"):
        uniform_plan(torch.full((1, 3, 2), float("nan")), "Sinkhorn")
    with pytest.raises(ValueError, match="Sinkhorn, COT"):
        uniform_plan(COST, "emd")
    with pytest.raises(ValueError, match="TOP_PERCENT"):
        uniform_plan(COST, "COT", top_percent=1.5)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(COST, torch.full((3,), 1 / 3), torch.full((2,), 0.5), eps=0.0)


def test_image_tokens_vit_and_resnet():
    model = make_random_clip("tiny", seed=1).model
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = image_tokens(model.visual, images)
        assert tokens.shape == (2, 1 + 64, model.visual.output_dim)
        torch.testing.assert_close(tokens[:, 0], model.visual(images), atol=1e-5, rtol=0)
        model.visual.output_tokens = True  # open_clip's own patch tokens: after ln_post, before proj
        _, patches = model.visual(images)
        torch.testing.assert_close(tokens[:, 1:], patches @ model.visual.proj, atol=1e-5, rtol=0)
        torch.manual_seed(0)
        resnet = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=64, width=8).eval()
        images = torch.randn(3, 3, 64, 64)
        rn = image_tokens(resnet, images)
        assert rn.shape == (3, 1 + 2 * 2, 16)  # 64 px / 32 = 2 x 2 positions
        torch.testing.assert_close(rn[:, 0], resnet(images), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny():
    return make_random_clip("tiny", seed=2)


def test_logits_by_hand(tiny):
    """One prompt: Sinkhorn puts 1/P on every patch, so logit = scale * mean cosine; COT with
    gamma = 1/2 and a tiny eps puts 1/P on the best half of the patches."""
    torch.manual_seed(0)
    tokens = torch.randn(3, 1 + 4, 8)  # (B, 1 + P, D), P = 4
    text = F.normalize(torch.randn(1, 5, 8), dim=-1)  # (N = 1, C, D)
    learner = MultiPromptLearner(tiny, ["red circle", "blue square"], n_prompts=1, n_global=1, n_ctx=2)
    model = OTPromptCLIP(tiny, learner, method="Sinkhorn", thresh=1e-9, max_iter=1000)
    scale = tiny.model.logit_scale.exp()
    cos = F.normalize(tokens[:, 1:], dim=-1) @ text[0].t()  # (B, P, C)
    torch.testing.assert_close(model.logits(tokens, text), scale * cos.mean(1), atol=1e-4, rtol=1e-5)
    cot = OTPromptCLIP(tiny, learner, method="COT", top_percent=0.5, eps=1e-3, thresh=1e-9, max_iter=5000)
    top2 = cos.topk(2, dim=1).values.sum(1) / 4
    torch.testing.assert_close(cot.logits(tokens, text), scale * top2, atol=1e-3, rtol=1e-4)


def test_global_local_split_shapes_and_gradients(tmp_path):
    from dassl.engine import build_trainer
    from federated.data import build_federated_data

    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedOTP"])))
    trainer = build_trainer(cfg, classnames=build_federated_data(cfg).classnames)
    t = cfg.TRAINER.FEDOTP
    assert trainer.shared_keys() == ["prompt_learner.ctx_global"]
    assert trainer.personal_keys() == ["prompt_learner.ctx_local"]
    params = trainer.trainable_parameters()
    d = params["prompt_learner.ctx_global"].shape[-1]
    assert params["prompt_learner.ctx_global"].shape == (1, t.N_CTX, d)
    assert params["prompt_learner.ctx_local"].shape == (1, t.N_CTX, d)
    assert not torch.equal(params["prompt_learner.ctx_global"], params["prompt_learner.ctx_local"])
    model, n_cls = trainer.model, trainer.num_classes
    embed_dim = model.clip.embed_dim
    text = model.eval_context()
    assert text.shape == (2, n_cls, embed_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2, n_cls))
    images = torch.randn(4, 3, 32, 32)
    tokens = trainer.encode_images(images)
    assert tokens.shape == (4, 1 + 64, embed_dim)
    pooled = trainer.pooled_image_features(tokens)  # what the zero-shot reference uses
    torch.testing.assert_close(pooled, model.clip.model.encode_image(images), atol=1e-5, rtol=0)
    loss, logits, _ = trainer.compute_loss(tokens, torch.tensor([0, 1, 0, 1]))
    assert logits.shape == (4, n_cls)
    loss.backward()
    assert params["prompt_learner.ctx_global"].grad.abs().sum() > 0
    assert params["prompt_learner.ctx_local"].grad.abs().sum() > 0


# ------------------------------------------------------------------ a toy-world run that learns
@pytest.mark.skipif(not os.path.isfile(WEIGHTS), reason="shipped tiny toy-world CLIP weights not built yet")
def test_toyworld_run_learns(tmp_path):
    flags = ["--trainer", "FedOTP", "--rounds", "3", "--num-shots", "8"]
    results = main(fast_args(tmp_path, flags, HARDER, weights=STAGE1_WEIGHTS))
    local = [r["local"] for r in results["rounds"]]
    assert local[-1] > results["zero_shot"]["local"] + 5.0
    # every client's local prompt is its own; the global one is the same for all
    ckpt = torch.load(os.path.join(str(tmp_path), "checkpoint.pt"), weights_only=True)
    assert set(ckpt["global"]) == {"prompt_learner.ctx_global"}
    locals_ = [p["prompt_learner.ctx_local"] for p in ckpt["personal"]]
    assert not torch.equal(locals_[0], locals_[1])


@pytest.mark.parametrize("stop", ["published", "marginal"])
def test_mapped_sinkhorn_equals_each_problem_with_its_own_early_stop(stop):
    """Under vmap (batched clients) the early stop becomes a per-problem freeze: same plans as solving
    each problem alone, although the problems converge after different numbers of iterations."""
    from trainers.optimal_transport import uniform_plan

    gen = torch.Generator().manual_seed(0)
    costs = torch.stack([torch.rand(3, 6, 4, generator=gen) * scale for scale in (0.1, 1.0, 3.0)])  # (K, B, M, N)
    for method in ("sinkhorn", "cot"):
        alone = torch.stack([uniform_plan(c, method, top_percent=0.8, eps=0.1, thresh=1e-3, max_iter=50, stop=stop)
                             for c in costs])
        mapped = torch.func.vmap(lambda c, m=method: uniform_plan(c, m, top_percent=0.8, eps=0.1, thresh=1e-3,
                                                                  max_iter=50, stop=stop))(costs)
        torch.testing.assert_close(mapped, alone)


def _published_sinkhorn(kernel, mu, nu, thresh, max_iter):
    """The published GLP_OT ``Sinkhorn`` loop (linear domain): stop when mean |u - u_prev| < thresh."""
    u, v = torch.ones_like(mu), torch.ones_like(nu)
    for _ in range(max_iter):
        u_prev = u
        u = mu / (kernel @ v.unsqueeze(-1)).squeeze(-1)
        v = nu / (kernel.transpose(1, 2) @ u.unsqueeze(-1)).squeeze(-1)
        if (u - u_prev).abs().mean().item() < thresh:
            break
    return u.unsqueeze(-1) * kernel * v.unsqueeze(-2)


def _published_cot(kernel, mu, nu, thresh, max_iter):
    """The published ``entropic_COT_fast`` loop: u = min(1 / (diag(1/mu) K v), 1), v = 1 / (diag(1/nu) K^T u);
    stop when mean |v - v_prev| < thresh."""
    k_p = torch.diag_embed(1 / mu) @ kernel
    k_q = torch.diag_embed(1 / nu) @ kernel.transpose(1, 2)
    ones_u, ones_v = torch.ones_like(mu), torch.ones_like(nu)
    u, v = ones_u, ones_v
    for _ in range(max_iter):
        v_prev = v
        u = torch.minimum(ones_u / (k_p @ v.unsqueeze(-1)).squeeze(-1), ones_u)
        v = ones_v / (k_q @ u.unsqueeze(-1)).squeeze(-1)
        if (v - v_prev).abs().mean().item() < thresh:
            break
    return torch.diag_embed(u) @ kernel @ torch.diag_embed(v)


@pytest.mark.parametrize("eps", [0.1, 0.05])
def test_default_stopping_rule_is_the_published_one(eps):
    """FedOTP's default plans are the published loops' plans (same iterations, same stop) at the published
    threshold; the marginal rule (STOP_RULE marginal) stops elsewhere and gives other plans."""
    gen = torch.Generator().manual_seed(0)
    sim = 0.15 + 0.2 * torch.rand(12, 49, 2, generator=gen)  # (B*C problems, 49 patches, 2 prompts)
    cost, (m, n) = 1.0 - sim, sim.shape[1:]
    kernel = torch.exp(-cost / eps)
    mu, nu = torch.full((12, m), 1 / m), torch.full((12, n), 1 / n)
    cases = {"sinkhorn": _published_sinkhorn(kernel, mu, nu, 1e-3, 100),
             "cot": _published_cot(kernel, mu, 0.8 * nu, 1e-3, 100)}
    for method, published in cases.items():
        ours = uniform_plan(cost, method, top_percent=0.8, eps=eps, thresh=1e-3, max_iter=100)
        assert (ours - published).abs().max() < 1e-6, method
    marginal = uniform_plan(cost, "cot", top_percent=0.8, eps=eps, thresh=1e-3, max_iter=100, stop="marginal")
    assert (marginal - cases["cot"]).abs().max() > 1e-5


def test_stop_rule_config(tmp_path):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedOTP"])))
    assert cfg.TRAINER.FEDOTP.STOP_RULE == "published"
    with pytest.raises(ValueError, match="must be one of published, marginal"):
        uniform_plan(COST, "sinkhorn", stop="mass")
