"""pFedMoAP: the gating attention and the mixture by hand, the K-1 nearest experts, the shared / personal
split (the gating never leaves a client and differs per client), the server's memory in the checkpoint
(resume is exact), a toy run that learns."""
import math
import os

import pytest
import torch

from federated.aggregation_experts import PromptExperts, nearest_clients
from federated.errors import ConfigError
from federated.run import main
from tests.fedtv_testing import fast_args
from tests.toyworld_learning import V1_WEIGHTS, pathological_run
from trainers.pfedmoap import GatingAttention, mixture_logits, pool_features


def _identity_gating(dim: int, heads: int, scaling: float) -> GatingAttention:
    gating = GatingAttention(dim, heads, scaling)
    with torch.no_grad():
        for layer in (gating.w_q, gating.w_k, gating.w_v, gating.w_o):
            layer.weight.copy_(torch.eye(dim))
            layer.bias.zero_()
    return gating


def test_pooling_keeps_every_rth_entry():
    x = torch.arange(8.0).view(1, 8)
    assert torch.equal(pool_features(x, 2), torch.tensor([[0.0, 4.0]]))
    assert torch.equal(pool_features(x, 4), torch.tensor([[0.0, 2.0, 4.0, 6.0]]))
    with pytest.raises(ValueError, match="multiple"):
        pool_features(x, 3)


def test_gating_attention_by_hand():
    """One head, identity projections: softmax(10 * <q, k_j>) weights the keys."""
    gating = _identity_gating(2, 1, 10.0)
    query = torch.tensor([[[1.0, 0.0]]])  # (B=1, C=1, P=2)
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (C=1, K=2, P=2)
    a = math.exp(10.0) / (math.exp(10.0) + 1.0)
    out = gating(query, keys)
    torch.testing.assert_close(out, torch.tensor([[[a, 1.0 - a]]]))
    # two heads of one dimension each: every head has its own softmax over the same two keys
    two = _identity_gating(2, 2, 10.0)
    q2 = torch.tensor([[[1.0, 2.0]]])
    k2 = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    w0 = math.exp(10.0) / (math.exp(10.0) + math.exp(0.0))  # head 0: scores 10*1, 10*0
    w1 = math.exp(0.0) / (math.exp(0.0) + math.exp(20.0))  # head 1: scores 10*0, 10*2
    torch.testing.assert_close(two.attention(q2, k2), torch.tensor([[[[w0, 1 - w0], [w1, 1 - w1]]]]))
    torch.testing.assert_close(two(q2, k2), torch.tensor([[[w0 * 1.0, (1 - w1) * 1.0]]]))


def test_mixture_logits_by_hand():
    """D = 4 pooled to P = 2 (entries 0 and 2), one class, one expert, LAMBDA 0.5, logit scale s = e^1."""
    gating = _identity_gating(2, 1, 10.0)
    scale = torch.tensor(1.0)  # exp -> e
    f = torch.tensor([[2.0, 0.0, 0.0, 0.0]])  # normalised: (1, 0, 0, 0), pooled (1, 0)
    t0 = torch.tensor([[0.6, 0.0, 0.8, 0.0]])  # pooled (0.6, 0.8)
    t1 = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])  # one expert, pooled (1, 0)
    local = math.e * 0.6
    # query (1, 0): scores 10 * 0.6 and 10 * 1.0 for keys (0.6, 0.8) and (1, 0)
    w = torch.softmax(torch.tensor([6.0, 10.0]), 0)
    gated = w[0] * torch.tensor([0.6, 0.8]) + w[1] * torch.tensor([1.0, 0.0])
    expected = 0.5 * local + math.e * float(gated[0])  # <(1, 0), gated>
    got = mixture_logits(f, t0, t1, gating, scale, 0.5, 2)
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # no experts: the local logits alone
    assert mixture_logits(f, t0, None, gating, scale, 0.5, 2).item() == pytest.approx(local, rel=1e-6)
    assert mixture_logits(f, t0, t1[:0], gating, scale, 0.5, 2).item() == pytest.approx(local, rel=1e-6)


def test_nearest_experts_are_client_ids_for_any_number_of_clients():
    prompts = {cid: torch.full((2, 3), float(cid)) for cid in range(15)}  # distance |i - j| * sqrt(6)
    assert nearest_clients(prompts[7], {c: p for c, p in prompts.items() if c != 7}, 3) == [6, 8, 5]  # tie: lower id
    store = PromptExperts("ctx", num_experts=10)
    memory = {}
    store.remember(memory, [{"ctx": prompts[c]} for c in range(15)], list(range(15)), 0)  # 15 > 10: no crash
    assert store.experts_of(memory, 0) == list(range(1, 10))  # K - 1 = 9 nearest
    served = store.serve(memory, 14)["experts"]
    assert served.shape == (9, 2, 3) and torch.equal(served[0], prompts[13])
    assert store.serve({}, 0) == {}  # nobody trained yet (round 1)
    del memory["client3"]
    assert store.serve(memory, 3) == {}  # client 3 has not trained: no experts (its local prompt alone)
    assert 3 not in store.experts_of(memory, 2)
    only_own = PromptExperts("ctx", num_experts=1).serve(memory, 0)  # K = 1: no experts, its own prompt back
    assert list(only_own) == ["own"] and torch.equal(only_own["own"], prompts[0])
    assert torch.equal(store.serve(memory, 14)["own"], prompts[14])
    small = {}
    store.remember(small, [{"ctx": prompts[0]}, {"ctx": prompts[1]}], [0, 1], 0)
    assert store.experts_of(small, 0) == [1]  # K = min(10, trained) - 1


def test_random_selection_is_a_fixed_order_whoever_has_trained():
    store = PromptExperts("ctx", num_experts=3, selection="random", seed=5)
    memory = {}
    store.remember(memory, [{"ctx": torch.zeros(1)} for _ in range(8)], list(range(8)), 0)
    chosen = store.experts_of(memory, 2)
    assert len(chosen) == 2 and 2 not in chosen
    assert store.experts_of(memory, 2) == chosen  # the same every round
    fewer = {k: v for k, v in memory.items() if k != f"client{chosen[0]}"}
    assert chosen[1] in store.experts_of(fewer, 2)  # the order does not depend on who trained
    with pytest.raises(ValueError, match="selection"):
        PromptExperts("ctx", 3, selection="farthest")


FLAGS = ["--trainer", "pFedMoAP", "--num-users", "6", "--frac", "0.5"]
OPTS = ["TRAINER.PFEDMOAP.EMBED_DIM", "16", "TRAINER.PFEDMOAP.NUM_EXPERTS", "3", "FED.EVAL_BASE_NOVEL", "False"]


def test_prompt_is_shared_gating_personal_and_the_server_remembers_every_client(tmp_path):
    results = main(fast_args(tmp_path, [*FLAGS, "--rounds", "3"], OPTS))
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(ckpt["global"]) == {"prompt_learner.ctx"}
    personal = ckpt["personal"]
    assert all(set(p) and all(k.startswith("gating.") for k in p) for p in personal)
    trained = sorted({c for r in results["rounds"] for c in r["clients"]})
    assert trained == list(range(6))
    # every client's gating is its own: those trained with experts (after round 1) differ from each other and
    # from the initial one, which the clients trained only in round 1 (no experts: gating unused) still hold
    with_experts = sorted({c for r in results["rounds"][1:] for c in r["clients"]})
    without = [c for c in range(6) if c not in with_experts]
    assert len(with_experts) >= 2
    gate = [p["gating.w_q.weight"] for p in personal]
    for i, a in enumerate(with_experts):
        assert all(not torch.equal(gate[a], gate[b]) for b in with_experts[i + 1:] + without)
    assert all(torch.equal(gate[a], gate[b]) for a in without for b in without)
    # the server's memory: each client's latest upload
    assert sorted(ckpt["memory"]) == sorted(f"client{c}" for c in range(6))
    assert results["params"]["shared"] == ckpt["global"]["prompt_learner.ctx"].numel()


def test_resume_serves_the_same_experts(tmp_path):
    """2 rounds, then resumed to 3: the same as 3 uninterrupted (the server's memory is in the checkpoint)."""
    full = main(fast_args(tmp_path / "full", [*FLAGS, "--rounds", "3"], OPTS))
    main(fast_args(tmp_path / "cut", [*FLAGS, "--rounds", "2"], OPTS))
    resumed = main(fast_args(tmp_path / "cut", [*FLAGS, "--rounds", "3", "--resume"], OPTS))
    for a, b in zip(full["rounds"], resumed["rounds"], strict=True):
        assert (a["clients"], a["train_loss"], a["local"]) == (b["clients"], b["train_loss"], b["local"])
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    for key in ("global", "memory"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    for pa, pb in zip(a["personal"], b["personal"], strict=True):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_training_uses_the_trained_prompt_and_evaluation_the_clients_own(tmp_path):
    """The prompt being trained (from the download) in training; the served ``own`` prompt (the client's latest
    trained one) as the local expert in evaluation (``EVAL_PROMPT "local"``), the downloaded one with "global"."""
    from dassl.engine import build_trainer
    from federated.cli import build_cfg, parse_args
    from federated.data import build_federated_data

    for mode in ("local", "global"):
        cfg = build_cfg(parse_args(fast_args(tmp_path / mode, FLAGS, [*OPTS, "TRAINER.PFEDMOAP.EVAL_PROMPT", mode])))
        data = build_federated_data(cfg)
        trainer = build_trainer(cfg, classnames=data.classnames)
        model = trainer.model
        ctx = model.prompt_learner.ctx.detach()
        own, expert = torch.randn_like(ctx), torch.randn_like(ctx)
        trainer.set_server_information({"own": own, "experts": expert.unsqueeze(0)})
        with torch.no_grad():
            t_ctx, t_own, t_expert = model.encode_contexts([ctx, own, expert])
            train_local, train_experts = model.train_context()
            eval_local, eval_experts = model.eval_context()
            with trainer.global_model():
                global_local, global_experts = model.eval_context()
        torch.testing.assert_close(train_local, t_ctx)
        torch.testing.assert_close(eval_local, t_own if mode == "local" else t_ctx)
        torch.testing.assert_close(train_experts[0], t_expert)
        torch.testing.assert_close(eval_experts[0], t_expert)
        torch.testing.assert_close(global_local, t_ctx)
        assert global_experts is None


def _gating_chain(monkeypatch, tmp_path, gating: str) -> tuple[dict, dict, list[int]]:
    """A 3-client, 3-round run (every client every round) recording each client's gating ``w_q`` when its
    training starts and ends: ``(start, end, round-2 training order)``, keyed by ``(round, client)``."""
    from trainers.pfedmoap import pFedMoAP

    start, end = {}, {}
    begin, finish = pFedMoAP.start_local_training, pFedMoAP.finish_local_training

    def record_start(self, context):
        begin(self, context)
        start[context.round, context.client] = self.model.gating.w_q.weight.detach().clone()

    def record_end(self, context):
        end[context.round, context.client] = self.model.gating.w_q.weight.detach().clone()
        finish(self, context)

    monkeypatch.setattr(pFedMoAP, "start_local_training", record_start)
    monkeypatch.setattr(pFedMoAP, "finish_local_training", record_end)
    main(fast_args(tmp_path, ["--trainer", "pFedMoAP", "--rounds", "3"], [*OPTS, "TRAINER.PFEDMOAP.GATING", gating]))
    return start, end, [c for r, c in start if r == 2]  # in the order they trained


def test_published_gating_passes_from_client_to_client_in_round_two(monkeypatch, tmp_path):
    """``GATING "published"``: in round 2 (each client's second selection) the first client starts from the
    initial gating and every next one from the gating the previous one ended with; from round 3 each client
    goes on from its own. ``"personal"``: each client always starts from its own."""
    start, end, order = _gating_chain(monkeypatch, tmp_path / "published", "published")
    assert sorted(order) == [0, 1, 2]
    initial = start[1, 0]
    assert all(torch.equal(start[1, c], initial) and torch.equal(end[1, c], initial) for c in range(3))  # no experts
    assert torch.equal(start[2, order[0]], initial)
    for before, after in zip(order[:-1], order[1:], strict=True):
        assert torch.equal(start[2, after], end[2, before])
        assert not torch.equal(end[2, before], initial)  # the gating trained: the chain is visible
    assert all(torch.equal(start[3, c], end[2, c]) for c in range(3))
    start, end, order = _gating_chain(monkeypatch, tmp_path / "personal", "personal")
    assert all(torch.equal(start[2, c], initial) for c in range(3))  # own gating, untrained in round 1
    assert all(torch.equal(start[3, c], end[2, c]) for c in range(3))
    assert len({tuple(end[2, c].flatten().tolist()) for c in range(3)}) == 3


def test_published_gating_needs_every_client_every_round(tmp_path):
    with pytest.raises(ConfigError, match="GATING 'published' needs FED.FRAC 1"):
        main(fast_args(tmp_path, FLAGS, [*OPTS, "TRAINER.PFEDMOAP.GATING", "published"]))
    assert not os.path.exists(tmp_path / "results.json")


def test_gating_dimensions_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="EMBED_DIM 12 must be a multiple of HEADS 8"):
        main(fast_args(tmp_path / "a", [*FLAGS], ["TRAINER.PFEDMOAP.EMBED_DIM", "12"]))
    with pytest.raises(ConfigError, match="must divide the backbone's feature dimension 64"):
        main(fast_args(tmp_path / "b", [*FLAGS], ["TRAINER.PFEDMOAP.EMBED_DIM", "24", "TRAINER.PFEDMOAP.HEADS", "8"]))


@pytest.mark.skipif(not os.path.isfile(V1_WEIGHTS), reason="first-generation tiny CLIP weights not present")
def test_learns_on_a_pathological_split(tmp_path):
    """PromptFolio's learning setting (6 clients with 2 of 12 classes each, 2 rounds of 10 local epochs,
    lr 0.1), pinned to the first-generation world and weights like the other learning tests."""
    zero_shot, final = pathological_run(tmp_path, "pFedMoAP", opts=["TRAINER.PFEDMOAP.EMBED_DIM", "16"])
    assert final > zero_shot + 20.0, (zero_shot, final)
