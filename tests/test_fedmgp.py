"""FedMGP: the group sampling probabilities and draws, per-rank unweighted averaging, the download into the
client's own positions, the diversity loss's sign (paper vs published), inference as the mean of the groups'
logits (the G visual groups in one tower pass), a federated run checked end to end, a toy-world run that
learns."""
import math
import os
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from dassl.engine import build_trainer
from federated.aggregation import build_aggregator
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.errors import ConfigError
from federated.run import main
from tests.fedtv_testing import fast_args
from tests.toyworld_learning import SHIPPED_WEIGHTS, learning_run
from trainers.fedmgp import diversity_loss, draw_groups, group_sampling_probabilities
from trainers.method import RoundContext
from trainers.visual_prompt import prompted_image_features


def _trainer(tmp_path, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedMGP"], list(opts))))
    return build_trainer(cfg, classnames=build_federated_data(cfg).classnames)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return _trainer(tmp_path_factory.mktemp("fedmgp"))


def test_sampling_probabilities_by_hand():
    """sim_g = max_r cos(P_g, G_r): 1, 1, 1/sqrt(2); softmax(sim / T)."""
    groups = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])  # (G=3, n=1, d=2)
    global_groups = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # (s=2, 1, 2)
    p = group_sampling_probabilities(groups, global_groups, temperature=1.0)
    torch.testing.assert_close(p, torch.tensor([0.364155, 0.364155, 0.271690], dtype=torch.float64), atol=1e-5,
                               rtol=0)
    p = group_sampling_probabilities(groups, global_groups, temperature=0.5)
    e2, e_sqrt2 = math.exp(2.0), math.exp(2 ** 0.5)
    expected = [e2 / (2 * e2 + e_sqrt2)] * 2 + [e_sqrt2 / (2 * e2 + e_sqrt2)]
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=0)


def test_draws_without_replacement_follow_the_renormalised_probabilities():
    """P(first i, then j) = p_i p_j / (1 - p_i) for p = (0.5, 0.3, 0.2)."""
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    n = 20000
    counts = Counter(tuple(draw_groups(3, 2, generator, p).tolist()) for _ in range(n))
    expected = {(0, 1): 0.3, (0, 2): 0.2, (1, 0): 0.3 * 0.5 / 0.7, (1, 2): 0.3 * 0.2 / 0.7,
                (2, 0): 0.2 * 0.5 / 0.8, (2, 1): 0.2 * 0.3 / 0.8}
    assert set(counts) == set(expected)
    for pair, prob in expected.items():
        assert counts[pair] / n == pytest.approx(prob, abs=0.015), pair
    uniform = Counter(tuple(draw_groups(5, 2, generator).tolist()) for _ in range(n))
    assert len(uniform) == 20 and all(a != b for a, b in uniform)
    assert max(uniform.values()) / n == pytest.approx(1 / 20, abs=0.01)


def test_per_rank_unweighted_average():
    """Rank r of the global state is the plain mean of the clients' rank-r uploads, whatever their sizes."""
    uploads = [{"exchange.text_rank": torch.tensor([[1.0], [10.0]])},
               {"exchange.text_rank": torch.tensor([[3.0], [20.0]])},
               {"exchange.text_rank": torch.tensor([[8.0], [60.0]])}]
    new, info = build_aggregator("fedavg_uniform")(uploads, [1, 100, 7])
    torch.testing.assert_close(new["exchange.text_rank"], torch.tensor([[4.0], [30.0]]))
    assert info["weights"] == pytest.approx([1 / 3] * 3)


def test_diversity_loss_sign_by_hand():
    """Two groups with orthogonal unit features: L1 distance mean(|1-0|, |0-1|) = 1 and 1 - cos = 1 per
    modality; three groups: pairs 1, 0.5, 0.5. Paper: -(d_text + d_image); published: its absolute value."""
    text = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (G=2, C=1, D=2)
    image = text.clone()
    for kind in ("l1", "cos"):
        assert diversity_loss(text, image, kind, "paper").item() == pytest.approx(-2.0)
        assert diversity_loss(text, image, kind, "published").item() == pytest.approx(2.0)
    three = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]])
    assert diversity_loss(three, three[:1], "l1", "paper").item() == pytest.approx(-(1.0 + 0.5 + 0.5) / 3)
    # a gradient step on the paper's loss moves the groups apart, on the published one together
    for sign, grows in (("paper", True), ("published", False)):
        feats = torch.tensor([[[1.0, 0.0]], [[0.8, 0.6]]], requires_grad=True)
        diversity_loss(feats, feats[:, :0], "l1", sign).backward()
        with torch.no_grad():
            after = feats - 0.1 * feats.grad
        distance = (after[0] - after[1]).abs().mean() - (feats[0] - feats[1]).abs().mean()
        assert (distance > 0) == grows, sign


def test_parameters_and_what_is_shared(trainer):
    clip = trainer.model.clip.model
    d_text, d_vis = clip.transformer.width, clip.visual.transformer.width
    params = {k: tuple(v.shape) for k, v in trainer.trainable_parameters().items()}
    assert params == {"prompt_learner.ctx": (5, 2, d_text), "visual_prompt.ctx": (5, 2, d_vis),
                      "exchange.text_rank": (2, 2, d_text), "exchange.visual_rank": (2, 2, d_vis),
                      "exchange.text_sampled": (2,), "exchange.visual_sampled": (2,)}
    assert trainer.shared_keys() == ["exchange.text_rank", "exchange.visual_rank"]
    assert trainer.image_features_cacheable is False
    # every text group starts at "a photo" plus its own small noise
    first = trainer.model.prompt_learner.first_word_embeddings("a photo of a")
    noise = trainer.model.prompt_learner.ctx.detach() - first
    assert noise.std().item() == pytest.approx(0.01, rel=0.3)
    assert (noise[0] - noise[1]).abs().max() > 1e-4


def test_inference_is_the_mean_of_the_groups_logits(trainer):
    model = trainer.model
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats = model.encode_image(images)  # (G, B, D) from one tower pass
        text = model.eval_context()  # (G, C, D)
        assert feats.shape[:2] == (5, 3) and text.shape[0] == 5
        scale = model.logit_scale.exp()
        per_group = []
        for g in range(5):
            alone = prompted_image_features(model.image_encoder, images, model.visual_prompt.ctx[g])
            torch.testing.assert_close(feats[g], alone, rtol=1e-5, atol=1e-5)
            single = model.encode_contexts([model.prompt_learner.ctx[g]])[0]
            torch.testing.assert_close(text[g], single, rtol=1e-5, atol=1e-6)
            per_group.append(scale * F.normalize(alone, dim=-1) @ single.t())
        torch.testing.assert_close(model.logits(feats, text), torch.stack(per_group).mean(0), rtol=1e-5, atol=1e-5)


def test_upload_is_drawn_and_the_download_fills_the_clients_own_positions(tmp_path):
    t = _trainer(tmp_path, "TRAINER.FEDMGP.TEMPERATURE", "0.001")
    model = t.model
    ctx, vis, ex = model.prompt_learner.ctx, model.visual_prompt.ctx, model.exchange
    with torch.no_grad():
        ctx.normal_()
        vis.normal_()
    # first training: random positions, the uploads are those groups in rank order
    t.finish_local_training(RoundContext(client=0, round=1))
    first = ex.text_sampled.long().clone()
    assert len(set(first.tolist())) == 2 and (ex.visual_sampled >= 0).all()
    torch.testing.assert_close(ex.text_rank, ctx[first])
    with torch.no_grad():
        ex.text_sampled.fill_(-1.0)
        ex.visual_sampled.fill_(-1.0)
    t.finish_local_training(RoundContext(client=0, round=1))  # the same seed: the same draw
    assert ex.text_sampled.long().tolist() == first.tolist()
    # a download: the global rank tensors overwrite exactly the remembered positions
    before = ctx.detach().clone()
    global_text = torch.randn_like(ex.text_rank)
    t.load_state({"exchange.text_rank": global_text})
    torch.testing.assert_close(ctx[first], global_text)
    others = [g for g in range(5) if g not in first.tolist()]
    torch.testing.assert_close(ctx[others], before[others])
    # later rounds: similarity-guided; with T -> 0 the groups closest to the downloaded ones are drawn
    with torch.no_grad():
        ex.text_rank.copy_(ctx[[4, 1]].detach())
    t.finish_local_training(RoundContext(client=0, round=2))
    assert sorted(ex.text_sampled.long().tolist()) == [1, 4]
    # a client that never uploaded keeps its groups on a download
    state = t.get_state(t.personal_keys())
    state["exchange.text_sampled"] = torch.full((2,), -1.0)
    t.load_state(state)
    kept = ctx.detach().clone()
    t.load_state({"exchange.text_rank": torch.zeros_like(ex.text_rank)})
    torch.testing.assert_close(ctx.detach(), kept)


def test_federated_run_end_to_end(tmp_path):
    """After the last round: each global rank is the plain mean of the clients' groups at the positions they
    uploaded (their personal groups are the trained, uploaded values); loading a client's download puts the
    global groups into exactly its positions; the upload is 2 x 2 groups."""
    results = main(fast_args(tmp_path, ["--trainer", "FedMGP", "--rounds", "2", "--lr", "0.5"],
                             ["FED.EVAL_BASE_NOVEL", "False"]))
    ckpt = torch.load(os.path.join(tmp_path, "checkpoint.pt"), weights_only=True)
    glob, personal = ckpt["global"], ckpt["personal"]
    for rank_key, groups_key, sampled_key in (("exchange.text_rank", "prompt_learner.ctx", "exchange.text_sampled"),
                                              ("exchange.visual_rank", "visual_prompt.ctx",
                                               "exchange.visual_sampled")):
        uploads = torch.stack([p[groups_key][p[sampled_key].long()] for p in personal])  # (clients, s, ...)
        torch.testing.assert_close(glob[rank_key], uploads.mean(0), rtol=1e-6, atol=1e-6)
    t = _trainer(tmp_path / "t")
    t.load_state({**glob, **personal[1]})
    positions = personal[1]["exchange.visual_sampled"].long()
    torch.testing.assert_close(t.model.visual_prompt.ctx[positions].detach(), glob["exchange.visual_rank"])
    assert results["rounds"][-1]["aggregation"]["weights"] == pytest.approx([1 / 3] * 3)
    assert results["params"]["shared"] == 2 * 2 * (64 + 96)


def test_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="1 <= TOPK <= NUM_GROUPS"):
        _trainer(tmp_path, "TRAINER.FEDMGP.TOPK", "6")
    with pytest.raises(ConfigError, match="DIVERSITY_SIGN must be one of"):
        _trainer(tmp_path, "TRAINER.FEDMGP.DIVERSITY_SIGN", "abs")
    with pytest.raises(ConfigError, match="TEMPERATURE must be"):
        _trainer(tmp_path, "TRAINER.FEDMGP.TEMPERATURE", "0")


@pytest.mark.skipif(not os.path.isfile(SHIPPED_WEIGHTS), reason="shipped tiny CLIP weights not built yet")
def test_toyworld_run_learns(tmp_path):
    """The tiny config (lr 0.25). Measured: zero-shot Local 38.9 -> 52.8, 58.3, 55.6."""
    zero_shot, local = learning_run(tmp_path, "FedMGP", rounds=3)
    assert local[-1] > zero_shot + 5.0, (zero_shot, local)
