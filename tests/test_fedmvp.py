"""FedMVP: attribute files and description sentences, the cached description features, the visual prompt
generator (keys layer-normed, values not, pooled to 4 tokens) appended before ln_pre, the loss with the
flip-consistency term, sharing, and a toy-world run that learns."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import datasets  # noqa: F401  (registers the datasets: the toy world generates its attributes)
from dassl.engine import build_trainer
from federated.batched import batching_support
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.errors import DataError
from federated.run import main
from tests.fedtv_testing import fast_args
from tests.toyworld_learning import SHIPPED_WEIGHTS, learning_run
from trainers.class_attributes import (
    class_attributes,
    description_sentences,
    description_style,
    load_attributes,
    which_clause,
)
from trainers.fedmvp import FedMVP, InputLoRA, VisualPromptGenerator
from trainers.method import RoundContext


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


# ------------------------------------------------------------------ the optional LoRA switch (TRAINER.FEDMVP.LORA)
def test_lora_update_by_hand():
    """``x + x A B``: x = (1, 2), A = (1, 0)^T, B = (0.5, 1): x A = 1, x A B = (0.5, 1), result (1.5, 3)."""
    lora = InputLoRA(width=2, rank=1)
    assert lora.query_a.shape == (2, 1) and lora.query_b.shape == (1, 2)
    x = torch.tensor([[1.0, 2.0]])
    out = InputLoRA.update(x, torch.tensor([[1.0], [0.0]]), torch.tensor([[0.5, 1.0]]))
    assert out.tolist() == [[1.5, 3.0]]
    with torch.no_grad():
        for name, scale in (("query", 1.0), ("key", 2.0), ("value", 3.0)):  # A = e_1, B = scale e_2: + scale x_1 e_2
            getattr(lora, f"{name}_a").copy_(torch.tensor([[1.0], [0.0]]))
            getattr(lora, f"{name}_b").copy_(torch.tensor([[0.0, scale]]))
    q, k, v = lora(x, x, x)
    assert (q.tolist(), k.tolist(), v.tolist()) == ([[1.0, 3.0]], [[1.0, 4.0]], [[1.0, 5.0]])
    torch.manual_seed(0)
    stds = torch.cat([p.detach().flatten() for p in InputLoRA(width=64, rank=8).parameters()]).std()
    assert 0.018 < float(stds) < 0.022  # N(0, 0.02)


def test_lora_generator_updates_the_inputs_and_freezes_the_attention():
    torch.manual_seed(0)
    gen = VisualPromptGenerator(width=8, text_dim=6, n_tokens=4, heads=2, lora_rank=3)
    patches, desc = torch.randn(3, 8, 8), torch.randn(5, 6)
    out = gen(patches, desc, lora=True)
    kv = gen.linear(desc)
    q, k, v = (InputLoRA.update(x, getattr(gen.lora, f"{n}_a"), getattr(gen.lora, f"{n}_b"))
               for x, n in ((patches, "query"), (kv, "key"), (kv, "value")))
    a = gen.attn(gen.norm_q(q), gen.norm_kv(k), v)
    torch.testing.assert_close(out, (gen.ffn(a) + a).reshape(3, 4, 2, 8).mean(2))
    assert not torch.allclose(out, gen(patches, desc))  # off: the plain generator
    out.sum().backward()
    frozen = [gen.norm_q, gen.norm_kv, gen.attn, gen.ffn]
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for m in (gen.linear, gen.lora) for p in m.parameters())
    gen.zero_grad(set_to_none=True)
    gen(patches, desc).sum().backward()  # switched off: the factors are unused, the attention trains
    assert all(p.grad is None for p in gen.lora.parameters())
    assert all(p.grad is not None for m in frozen for p in m.parameters())
    # without LoRA the generator is the one of before: the same parameters from the same seed, no switch
    torch.manual_seed(0)
    plain = VisualPromptGenerator(width=8, text_dim=6, n_tokens=4, heads=2)
    assert set(plain.state_dict()) == {k for k in gen.state_dict() if not k.startswith("lora")}
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in plain.state_dict().items())


def test_lora_switch_is_personal_client_state_and_turns_on_below_the_threshold(tmp_path):
    trainer = _trainer(tmp_path, "TRAINER.FEDMVP.LORA", "True", "TRAINER.FEDMVP.LORA_THRESHOLD", "0.5")
    assert trainer.personal_keys() == ["prompt_learner.lora_switch"] == trainer.client_state_keys()
    assert "prompt_learner.lora.query_a" in trainer.shared_keys()  # averaged with the rest of the prompt learner
    switch = trainer.model.prompt_learner.lora_switch
    for loss, expected in ((0.6, 0.0), (0.5, 0.0), (0.49, 1.0)):
        trainer.start_local_training(RoundContext(0, 1))
        trainer._last_loss = torch.tensor(loss)
        trainer.finish_local_training(RoundContext(0, 1))
        assert switch.item() == expected, loss
    trainer.start_local_training(RoundContext(0, 2))
    assert trainer._lora_on
    trainer._last_loss = torch.tensor(9.0)
    trainer.finish_local_training(RoundContext(0, 2))
    assert switch.item() == 1.0  # never switched off
    trainer.load_state({"prompt_learner.lora_switch": torch.tensor(0.0)})  # another client's state
    trainer.start_local_training(RoundContext(1, 2))
    assert not trainer._lora_on and trainer.get_state(trainer.personal_keys())["prompt_learner.lora_switch"] == 0
    # evaluation: the averaged generator without the factors (the official server's model never switches)
    images = torch.randn(2, 3, 32, 32)
    trainer.model.eval()
    with torch.no_grad():
        plain = trainer.encode_images(images)
        trainer._lora_on = True
        torch.testing.assert_close(trainer.encode_images(images), plain)
    assert _trainer(tmp_path / "off").personal_keys() == []  # LORA False (default): no switch, nothing personal


LORA_RUN = ["TRAINER.FEDMVP.LORA", "True", "TRAINER.FEDMVP.LORA_THRESHOLD", "100", "FED.EVAL_BASE_NOVEL", "False"]


def test_lora_switch_freezes_the_attention_and_survives_resume(monkeypatch, tmp_path):
    """Threshold 100: every client switches on after round 1. Round 1 trains the attention and not the factors;
    round 2 the factors and ``linear`` while the attention block stays exactly as downloaded. A run stopped
    after round 1 and resumed gives the same round 2 (the switches are in the checkpoint's personal state)."""
    seen = {}
    begin, finish = FedMVP.start_local_training, FedMVP.finish_local_training

    def params(trainer):
        return {k: v.detach().clone() for k, v in trainer.model.prompt_learner.named_parameters()}

    def record_start(self, context):
        begin(self, context)
        seen[context.round, context.client, "start"] = (self._lora_on, params(self))

    def record_end(self, context):
        seen[context.round, context.client, "end"] = (None, params(self))
        finish(self, context)

    monkeypatch.setattr(FedMVP, "start_local_training", record_start)
    monkeypatch.setattr(FedMVP, "finish_local_training", record_end)
    flags = ["--trainer", "FedMVP"]
    full = main(fast_args(tmp_path / "full", [*flags, "--rounds", "2"], LORA_RUN))
    frozen = ("norm_q.", "norm_kv.", "attn.", "ffn.")
    for cid in range(3):
        (on1, start1), (_, end1) = seen[1, cid, "start"], seen[1, cid, "end"]
        (on2, start2), (_, end2) = seen[2, cid, "start"], seen[2, cid, "end"]
        assert (on1, on2) == (False, True)
        for name in start1:
            changed1, changed2 = not torch.equal(start1[name], end1[name]), not torch.equal(start2[name], end2[name])
            if name.startswith("lora."):
                assert (changed1, changed2) == (False, True), name
            elif name.startswith(frozen):
                assert (changed1, changed2) == (True, False), name
            else:
                assert (changed1, changed2) == (True, True), name
    ckpt = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    assert [p["prompt_learner.lora_switch"].item() for p in ckpt["personal"]] == [1.0, 1.0, 1.0]
    assert full["params"]["personal"] == 0  # the switch is client state, not a trained parameter
    main(fast_args(tmp_path / "cut", [*flags, "--rounds", "1"], LORA_RUN))
    resumed = main(fast_args(tmp_path / "cut", [*flags, "--rounds", "2", "--resume"], LORA_RUN))
    for a, b in zip(full["rounds"], resumed["rounds"], strict=True):
        assert (a["train_loss"], a["local"]) == (b["train_loss"], b["local"])
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ckpt["global"][k], cut["global"][k]) for k in ckpt["global"])
    assert all(torch.equal(a[k], b[k]) for a, b in zip(ckpt["personal"], cut["personal"], strict=True) for k in a)


# ------------------------------------------------------------------ a toy-world run that learns
@pytest.mark.skipif(not os.path.isfile(SHIPPED_WEIGHTS), reason="shipped tiny toy-world CLIP weights not built yet")
def test_toyworld_run_learns(tmp_path):
    zero_shot, local = learning_run(tmp_path, "FedMVP")
    assert local[-1] > zero_shot + 5.0
