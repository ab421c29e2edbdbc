"""FedCoCoOp: the meta-net's per-image bias on every context token, batched (B*C prompts in one pass)
equal to CoCoOp's per-image loop, chunking, shared/personal split, and a toy-world run that learns."""
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


def _trainer(tmp_path, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedCoCoOp", "--rounds", "1"], list(opts))))
    data = build_federated_data(cfg)
    return build_trainer(cfg, classnames=data.classnames)


def _features(n, dim, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def test_meta_net_shapes_and_defaults(tmp_path):
    trainer = _trainer(tmp_path)
    learner, clip = trainer.model.prompt_learner, trainer.model.clip
    vis_dim, d = clip.embed_dim, learner.ctx_dim
    assert learner.ctx.shape == (4, d)  # n_ctx from "a photo of a"
    assert learner.meta_net.linear1.weight.shape == (vis_dim // 16, vis_dim)
    assert learner.meta_net.linear2.weight.shape == (d, vis_dim // 16)
    assert learner.image_bias(_features(3, vis_dim)).shape == (3, d)


def test_bias_is_added_to_every_context_token_of_every_class(tmp_path):
    learner = _trainer(tmp_path).model.prompt_learner
    bias = _features(3, learner.ctx_dim)
    prompts = learner.conditional_prompts(bias)
    n_cls, length, m = learner.n_cls, learner.tokenized_prompts.shape[1], learner.n_ctx
    assert prompts.shape == (3, n_cls, length, learner.ctx_dim)
    for b in range(3):
        expected_ctx = (learner.ctx + bias[b]).unsqueeze(0).expand(n_cls, -1, -1)
        assert torch.allclose(prompts[b, :, 1 : 1 + m], expected_ctx)
        assert torch.equal(prompts[b, :, :1], learner.token_prefix)
        assert torch.equal(prompts[b, :, 1 + m :], learner.token_suffix)
        # the class-token layout is CoOp's, with the biased context
        assert torch.allclose(prompts[b], learner.construct_prompts(learner.ctx + bias[b]))


def test_batched_text_features_equal_the_per_image_loop(tmp_path):
    """One (B*C, L, d) pass gives what CoCoOp's loop over images gives, and the meta-net reads the
    normalised frozen image feature."""
    model = _trainer(tmp_path).model
    learner = model.prompt_learner
    feats = _features(4, model.clip.embed_dim)
    with torch.no_grad():
        batched = model.image_text_features(feats)
        loop = []
        for x in F.normalize(feats, dim=-1):
            pi = learner.meta_net(x.unsqueeze(0))[0]
            loop.append(model.encode_prompts(learner.construct_prompts(learner.ctx + pi)))
        loop = torch.stack(loop)
        assert batched.shape == (4, learner.n_cls, model.clip.embed_dim)
        assert torch.allclose(batched, loop, atol=1e-5)
        assert torch.allclose(batched.norm(dim=-1), torch.ones(4, learner.n_cls), atol=1e-5)
        assert torch.allclose(model.image_text_features(3.0 * feats), batched, atol=1e-5)  # scale-free input
        # different images -> different class text features; the same image -> the same ones
        assert not torch.allclose(batched[0], batched[1], atol=1e-4)
        twice = model.image_text_features(torch.stack([feats[2], feats[2]]))
        assert torch.allclose(twice[0], twice[1], atol=1e-6)
        logits = model.logits(feats, model.eval_context())
        x = F.normalize(feats, dim=-1)
        expected = model.logit_scale.exp() * torch.stack([loop[b] @ x[b] for b in range(4)])
        assert logits.shape == (4, learner.n_cls)
        assert torch.allclose(logits, expected, atol=1e-4)


def test_chunked_passes_give_the_same_logits_and_gradients(tmp_path, monkeypatch):
    whole = _trainer(tmp_path)
    chunked = _trainer(tmp_path, "TRAINER.FEDCOCOOP.PROMPT_CHUNK", str(2 * whole.num_classes))
    chunked.load_state(whole.get_state(whole.shared_keys()))
    feats, labels = _features(5, whole.model.clip.embed_dim), torch.arange(5) % whole.num_classes
    calls = []  # prompts per text-tower pass (images x classes of a shared-prefix pass)
    encoder = chunked.model.text_encoder
    encoder.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    shared = encoder.encode_shared_prefix
    monkeypatch.setattr(encoder, "encode_shared_prefix",
                        lambda p, s, e: calls.append(p.shape[0] * s.shape[0]) or shared(p, s, e), raising=False)
    grads = []
    for trainer in (whole, chunked):
        params = trainer.trainable_parameters()
        loss, logits, _ = trainer.compute_loss(feats, labels)
        grads.append((logits.detach(), torch.autograd.grad(loss, list(params.values()))))
    n = whole.num_classes
    assert calls[:3] == [2 * n, 2 * n, n]  # 5 images in chunks of 2 (the backward pass recomputes them)
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    for g_whole, g_chunked in zip(grads[0][1], grads[1][1], strict=True):
        assert torch.allclose(g_whole, g_chunked, atol=1e-5)


def test_context_and_meta_net_are_shared_and_trained(tmp_path):
    trainer = _trainer(tmp_path, "OPTIM.LR", "0.1")
    assert sorted(trainer.shared_keys()) == [
        "prompt_learner.ctx", "prompt_learner.meta_net.linear1.bias", "prompt_learner.meta_net.linear1.weight",
        "prompt_learner.meta_net.linear2.bias", "prompt_learner.meta_net.linear2.weight"]
    assert trainer.personal_keys() == []
    before = trainer.get_state(trainer.shared_keys())
    trainer.build_optimizers(1)
    feats = _features(6, trainer.model.clip.embed_dim)
    trainer.forward_backward({"feat": feats, "label": torch.arange(6) % trainer.num_classes})
    after = trainer.get_state(trainer.shared_keys())
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_negative_chunk_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="PROMPT_CHUNK must be >= 0"):
        _trainer(tmp_path, "TRAINER.FEDCOCOOP.PROMPT_CHUNK", "-1")


@pytest.mark.skipif(not os.path.isfile(SHIPPED_WEIGHTS), reason="shipped tiny toy-world CLIP weights not built yet")
def test_toyworld_run_learns(tmp_path):
    zero_shot, local = learning_run(tmp_path, "FedCoCoOp", rounds=2)  # B*C prompts a step: slower
    assert local[-1] > zero_shot + 5.0
