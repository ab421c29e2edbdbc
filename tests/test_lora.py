"""LoRA on open_clip towers (trainers/lora.py) and FLoRA (trainers/flora.py)."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from clip import TextEncoder, make_random_clip
from dassl.engine import build_trainer
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.run import main
from tests.fedtv_testing import REPO, fast_args
from tests.toyworld_learning import HARD_WORLD, V1_WEIGHTS, V1_WORLD
from trainers.flora import lora_scaling
from trainers.lora import add_lora, copy_tower, init_lora, parse_targets
from trainers.tuned_clip import TextTower, clip_contrastive_loss

SHIPPED = os.path.join(REPO, "clip", "weights", "tiny_toyworld.safetensors")


@pytest.fixture(scope="module")
def clip():
    return make_random_clip("tiny", seed=0)


def _tokens(clip):
    return clip.tokenize(["a photo of a red circle.", "a blue square", "x"])


def _encode(tower, tokens):
    enc = TextEncoder(tower)
    return enc(enc.embed(tokens), tokens)


def _setup(tmp_path, trainer, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", trainer, "--rounds", "1"], list(opts))))
    data = build_federated_data(cfg)
    return cfg, data, build_trainer(cfg, classnames=data.classnames)


@pytest.mark.parametrize("mode", ["no_grad", "inference", "autograd"])
def test_zero_b_equals_frozen_model_exactly(clip, mode):
    tower = TextTower(clip.model, share_weights=True)
    factors = add_lora(tower, ["q", "k", "v", "out", "mlp"], rank=2, scaling=32.0)
    init_lora(factors, torch.Generator().manual_seed(0))
    assert len(factors) == 2 * 6  # 2 layers x (q, k, v, out, c_fc, c_proj)
    assert all(f.A.abs().sum() > 0 and f.B.abs().sum() == 0 for f in factors)
    tokens = _tokens(clip)
    reference = clip.model.encode_text(tokens)
    if mode == "inference":  # nn.MultiheadAttention's fused inference path
        with torch.inference_mode():
            assert torch.equal(_encode(tower, tokens), reference)
    elif mode == "no_grad":
        with torch.no_grad():
            assert torch.equal(_encode(tower, tokens), reference)
    else:
        # With gradients, the attention kernel is chosen by whether q/k/v require grad: equal up to
        # that kernel's float rounding, and differentiable in the LoRA factors.
        out = _encode(tower, tokens)
        out.sum().backward()
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
        assert all(f.B.grad is not None and f.B.grad.abs().sum() > 0 for f in factors)


@pytest.mark.parametrize("target", ["q", "k", "v", "out", "mlp"])
def test_lora_changes_the_output_as_a_hand_merged_weight(clip, target):
    """Non-zero B changes the output, and equals a deep copy whose weight is W + s (A B)^T by hand."""
    tower = TextTower(clip.model, share_weights=True)
    factors = add_lora(tower, [target], rank=2, scaling=4.0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for f in factors:
            f.A.copy_(torch.randn(f.A.shape, generator=gen))
            f.B.copy_(torch.randn(f.B.shape, generator=gen) * 0.05)
    tokens = _tokens(clip)
    adapted = _encode(tower, tokens)
    assert not torch.allclose(adapted, clip.model.encode_text(tokens), atol=1e-4)

    manual = copy.deepcopy(clip.model)  # a real copy, merged by hand
    with torch.no_grad():
        for block, f in zip(manual.transformer.resblocks, factors[:: 2 if target == "mlp" else 1], strict=True):
            delta = 4.0 * (f.A @ f.B).t()
            d = block.attn.embed_dim
            if target in ("q", "k", "v"):
                row = "qkv".index(target) * d
                block.attn.in_proj_weight[row : row + d] += delta
            elif target == "out":
                block.attn.out_proj.weight += delta
        if target == "mlp":
            pairs = zip(factors[::2], factors[1::2], strict=True)
            for block, (f_fc, f_proj) in zip(manual.transformer.resblocks, pairs, strict=True):
                block.mlp.c_fc.weight += 4.0 * (f_fc.A @ f_fc.B).t()
                block.mlp.c_proj.weight += 4.0 * (f_proj.A @ f_proj.B).t()
    torch.testing.assert_close(adapted, manual.encode_text(tokens), rtol=1e-4, atol=1e-5)


def test_q_delta_touches_only_the_query_rows(clip):
    tower = TextTower(clip.model, share_weights=True)
    (f, _), attn = add_lora(tower, ["q"], rank=3, scaling=1.0)[:2], tower.transformer.resblocks[0].attn
    with torch.no_grad():
        f.A.fill_(1.0)
        f.B.fill_(1.0)
    d = attn.embed_dim
    diff = attn.in_proj_weight - clip.model.transformer.resblocks[0].attn.in_proj_weight
    assert torch.allclose(diff[:d], torch.full((d, d), 3.0))
    assert float(diff[d:].detach().abs().max()) == 0.0


def test_copy_tower_shares_frozen_weights_without_touching_the_original(clip):
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    tower = TextTower(clip.model, share_weights=True)
    add_lora(tower, ["out"], rank=2, scaling=1.0)
    original_attn = clip.model.transformer.resblocks[0].attn
    assert not parametrize.is_parametrized(original_attn.out_proj)
    copied = tower.transformer.resblocks[0].attn.out_proj
    assert copied.parametrizations.weight.original is original_attn.out_proj.weight
    assert all(torch.equal(before[k], v) for k, v in clip.model.state_dict().items())
    real = copy_tower(clip.model.ln_final, share_weights=False)
    assert real.weight is not clip.model.ln_final.weight and torch.equal(real.weight, clip.model.ln_final.weight)


def test_bad_targets_and_scaling_are_clear_errors():
    with pytest.raises(ValueError, match="unknown LoRA target"):
        parse_targets(["out", "query"])
    from yacs.config import CfgNode as CN

    node = CN({"RANK": 4, "ALPHA": 32.0, "SCALING": "alpha"})
    assert lora_scaling(node) == 32.0
    node.SCALING = "alpha_over_r"
    assert lora_scaling(node) == 8.0
    node.SCALING = "sqrt"
    with pytest.raises(ValueError, match="SCALING"):
        lora_scaling(node)


def test_contrastive_loss_matches_hand_computation():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    scale = torch.tensor(0.0)  # exp(0) = 1
    c = 1 / 2 ** 0.5
    sim = torch.tensor([[c, 0.0], [c, 1.0]])  # cos(img_i, txt_j)
    row = -(torch.log_softmax(sim, 1)[0, 0] + torch.log_softmax(sim, 1)[1, 1]) / 2
    col = -(torch.log_softmax(sim, 0)[0, 0] + torch.log_softmax(sim, 0)[1, 1]) / 2
    assert float(clip_contrastive_loss(img, txt, scale)) == pytest.approx(float((row + col) / 2), abs=1e-6)


def test_flora_trainable_tensors_step_and_frozen_clip(tmp_path):
    _, data, trainer = _setup(tmp_path, "FLoRA", "OPTIM.LR", "0.01")
    names = set(trainer.trainable_parameters())
    assert names == set(trainer.shared_keys()) and not trainer.personal_keys()
    assert len(names) == 4 and all(".out_proj.parametrizations.weight.0.factors.out." in n for n in names)
    assert trainer.image_features_cacheable
    clip_model = trainer.model.clip.model
    frozen = {k: v.clone() for k, v in clip_model.state_dict().items()}
    context0 = trainer.model.eval_context().detach()
    tokens = trainer.model.class_tokens
    torch.testing.assert_close(context0, F.normalize(clip_model.encode_text(tokens), dim=-1))
    trainer.build_optimizers(1)
    trainer.set_model_mode("train")
    feats = torch.randn(6, context0.shape[1])
    trainer.forward_backward({"feat": feats, "label": torch.tensor([0, 1, 2, 0, 1, 2])})
    assert not torch.allclose(trainer.model.eval_context().detach(), context0, atol=1e-5)
    assert all(torch.equal(frozen[k], v) for k, v in clip_model.state_dict().items())
    assert not any(p.requires_grad for p in clip_model.parameters())


def test_flora_vision_targets_adapt_an_image_tower_copy(tmp_path):
    _, _, trainer = _setup(tmp_path, "FLoRA", "TRAINER.FLORA.TEXT_TARGETS", "[]",
                           "TRAINER.FLORA.VISION_TARGETS", "['q', 'v']")
    names = list(trainer.trainable_parameters())
    assert names and all(n.startswith("visual.") and "in_proj_weight" in n for n in names)
    assert not trainer.image_features_cacheable
    assert trainer.model.visual is not trainer.model.clip.model.visual


def test_flora_rejects_no_targets(tmp_path):
    with pytest.raises(ValueError, match="both empty"):
        _setup(tmp_path, "FLoRA", "TRAINER.FLORA.TEXT_TARGETS", "[]")


@pytest.mark.skipif(not os.path.isfile(SHIPPED), reason="shipped tiny toy-world weights not built yet")
def test_flora_learns_on_the_toy_world(tmp_path):
    # IID clients, as in FLoRA's experiments: the published contrastive loss (targets arange(B)) counts
    # same-class pairs as negatives, which is degenerate on pathological clients owning 2 classes.
    res = main(fast_args(tmp_path, ["--trainer", "FLoRA", "--rounds", "3", "--local-epochs", "2", "--partition", "iid"],
                         [*HARD_WORLD, *V1_WORLD],  # calibrated on the first-generation world and weights
                         weights=V1_WEIGHTS))
    assert res["params"] == {"shared": 2 * (64 * 2 + 2 * 64), "personal": 0, "total": 512}
    assert all(r["bytes_up_per_client"] == 512 * 4 for r in res["rounds"])
    assert res["final"]["local"] > res["zero_shot"]["local"] + 5.0
