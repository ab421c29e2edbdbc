"""FedMVP: attribute files and description sentences, the cached description features, the visual prompt
generator (keys layer-normed, values not, pooled to 4 tokens) appended before ln_pre, the loss with the
flip-consistency term, sharing, and a toy-world run that learns."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from dassl.engine import build_trainer
from federated.batched import batching_support
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.errors import DataError
from tests.fedtv_testing import fast_args
from tests.toyworld_learning import SHIPPED_WEIGHTS, learning_run
from trainers.class_attributes import (
    class_attributes,
    description_sentences,
    description_style,
    load_attributes,
    which_clause,
)
from trainers.fedmvp import VisualPromptGenerator


def _trainer(tmp_path, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedMVP", "--rounds", "1"], list(opts))))
    data = build_federated_data(cfg)
    return build_trainer(cfg, classnames=data.classnames)


# ------------------------------------------------------------------ attributes and sentences
def test_sentences_follow_the_published_clauses():
    assert which_clause("a round shape") == "which is a round shape"
    assert which_clause("antlers on its head") == "which is antlers on its head"  # any leading "a", as published
    assert which_clause("has four legs") == "which has four legs"
    assert which_clause("often green") == "which often green"
    assert which_clause("used for cutting") == "which is used for cutting"
    assert which_clause("stripes") == "which has stripes"
    assert description_sentences("banded", ["stripes"], *description_style("DescribableTextures")) == [
        "a photo of a banded, a type of texture, which has stripes"]
    assert description_sentences("golden_retriever", []) == ["a photo of a golden retriever."]
    assert description_style("PACS", "sketch") == ("a sketch of a", "")
    assert description_style("ToyWorld", "neon") == ("a neon of a", "")
    assert description_style("Caltech101") == ("a photo of a", "")


def test_attribute_file_format_and_errors(tmp_path):
    path = tmp_path / "attributes" / "toyworld.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"red circle": ["a round shape", "red paint"], "blue square": []}))
    assert load_attributes(str(path), ["red_circle", "blue square"]) == {
        "red_circle": ["a round shape", "red paint"], "blue square": []}
    # a file under the root replaces the toy world's generated attributes
    assert class_attributes(str(tmp_path), "ToyWorld", ["red circle"]) == {"red circle": ["a round shape", "red paint"]}
    with pytest.raises(DataError, match="no attributes for 1 classes"):
        load_attributes(str(path), ["green star"])
    path.write_text(json.dumps({"red circle": "round"}))
    with pytest.raises(DataError, match="list of attribute phrases"):
        load_attributes(str(path), ["red circle"])
    with pytest.raises(DataError, match="does not exist"):
        class_attributes(str(tmp_path), "DescribableTextures", ["banded"])
    generated = class_attributes(str(tmp_path / "elsewhere"), "ToyWorld", ["striped red circle"])["striped red circle"]
    assert len(generated) == 4 and any("striped" in p for p in generated) and any("circle" in p for p in generated)


# ------------------------------------------------------------------ the model
def test_description_features_are_cached_per_class_set(tmp_path):
    trainer = _trainer(tmp_path)
    desc, clip = trainer.model.descriptions, trainer.model.clip
    names = trainer.classnames
    sentences = trainer._sentences(names)
    assert len(sentences) == len(names) and all(len(s) == 4 for s in sentences)
    assert sentences[0][0].startswith(f"a photo of a {names[0]}, which is")
    feats, owner = desc()
    with torch.no_grad():
        expected = F.normalize(clip.model.encode_text(clip.tokenize([s[:77] for ss in sentences for s in ss])).float(),
                               dim=-1)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)
    assert owner.tolist() == [c for c in range(len(names)) for _ in range(4)]
    assert desc()[0] is feats  # encoded once
    torch.testing.assert_close(trainer.model.eval_context(), expected.reshape(len(names), 4, -1).mean(1))
    trainer.set_classnames(names[:2])
    assert desc.features is None and trainer.model.eval_context().shape[0] == 2
    trainer.set_classnames(names)  # a class set seen before: not encoded again
    assert desc.features is feats
    assert not any(k.startswith("descriptions") for k in trainer.model.state_dict())


def test_generator_keys_normed_values_raw_pooled_to_tokens():
    torch.manual_seed(0)
    gen = VisualPromptGenerator(width=8, text_dim=6, n_tokens=4, heads=2)
    patches, desc = torch.randn(3, 8, 8), torch.randn(5, 6)
    out = gen(patches, desc)
    assert out.shape == (3, 4, 8)
    kv = gen.linear(desc)
    a = gen.attn(gen.norm_q(patches), gen.norm_kv(kv), kv)
    z = gen.ffn(a) + a
    torch.testing.assert_close(out, z.reshape(3, 4, 2, 8).mean(2))  # 8 patches -> 4 tokens: means of pairs
    assert not torch.allclose(gen.attn(gen.norm_q(patches), gen.norm_kv(kv)), a)  # the values are not normed


def test_prompted_image_path_appends_tokens_before_ln_pre(tmp_path):
    trainer = _trainer(tmp_path)
    model = trainer.model
    images = torch.randn(2, 3, 32, 32)
    seen = []
    handle = model.image_encoder.ln_pre.register_forward_hook(lambda _m, args, out: seen.append(args[0].shape))
    try:
        prompted = model.encode_image(images)
        frozen = model.frozen_image(images)
    finally:
        handle.remove()
    grid = model.image_encoder.grid_size
    assert seen == [(2, 1 + grid[0] * grid[1] + 4, model.image_encoder.transformer.width),
                    (2, 1 + grid[0] * grid[1], model.image_encoder.transformer.width)]
    assert not torch.allclose(prompted, frozen)
    prompted.sum().backward()
    assert all(p.grad is not None for p in model.prompt_learner.parameters())
    assert not model.image_encoder.conv1.weight.requires_grad


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_loss_is_ce_plus_alpha_times_flip_consistency(tmp_path, flip_p):
    trainer = _trainer(tmp_path, "TRAINER.FEDMVP.FLIP_P", str(flip_p), "TRAINER.FEDMVP.ALPHA", "3.0")
    model = trainer.model
    images = torch.randn(4, 3, 32, 32)
    labels = torch.arange(4) % trainer.num_classes
    model.train()
    feats = trainer.encode_images(images)
    assert feats.shape[:2] == (4, 2)
    frozen = model.frozen_image(images.flip(-1) if flip_p else images)
    torch.testing.assert_close(feats[:, 1], frozen)
    loss, logits, extra = trainer.compute_loss(feats, labels)
    with torch.no_grad():
        prompted = model.encode_image(images)
        ce = F.cross_entropy(model.logits(prompted, model.eval_context()), labels)
        cons = 1 - F.cosine_similarity(prompted, frozen, dim=-1).mean()
    assert extra["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert extra["vis"].item() == pytest.approx(cons.item(), rel=1e-4, abs=1e-6)
    assert loss.item() == pytest.approx(ce.item() + 3.0 * cons.item(), rel=1e-5)
    model.eval()
    with torch.no_grad():
        assert trainer.encode_images(images).shape == prompted.shape  # evaluation: prompted features only


def test_everything_is_shared_unweighted_and_clients_are_sequential(tmp_path):
    trainer = _trainer(tmp_path)
    shared = trainer.shared_keys()
    assert trainer.personal_keys() == [] and len(shared) == len(trainer.trainable_parameters())
    assert all(k.startswith("prompt_learner.") for k in shared)
    out, info = trainer.build_aggregator()([{"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}], [1, 9])
    assert out["w"].item() == pytest.approx(1.0) and info["weights"] == [0.5, 0.5]
    assert not trainer.image_features_cacheable and "prompted" in batching_support(trainer)


# ------------------------------------------------------------------ a toy-world run that learns
@pytest.mark.skipif(not os.path.isfile(SHIPPED_WEIGHTS), reason="shipped tiny toy-world CLIP weights not built yet")
def test_toyworld_run_learns(tmp_path):
    zero_shot, local = learning_run(tmp_path, "FedMVP")
    assert local[-1] > zero_shot + 5.0
