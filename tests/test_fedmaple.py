"""FedMaPLe: parameters and their sharing, MaPLe's initialisation, prompted towers with gradients,
the shared frozen CLIP untouched for other trainers, clear errors, a short run that learns."""
import os

import pytest
import torch
import torch.nn.functional as F

from dassl.engine import build_trainer
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.errors import ConfigError
from federated.run import main
from tests.fedtv_testing import REPO, fast_args
from tests.toyworld_learning import STAGE1_WEIGHTS
from trainers.prompt_learner import PromptCLIP

WEIGHTS = os.path.join(REPO, "clip", "weights", "tiny_toyworld.safetensors")
#: A harder toy world (noise, two distractors, small objects) where zero-shot CLIP is far from perfect.
HARDER = ["DATASET.TOYWORLD.NOISE", "0.4", "DATASET.TOYWORLD.DISTRACTORS", "2", "DATASET.TOYWORLD.SCALE", "(0.35, 0.6)",
          "DATASET.TOYWORLD.TEST_PER_CLASS", "12"]


def _trainer(tmp_path, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedMaPLe"], list(opts))))
    return build_trainer(cfg, classnames=build_federated_data(cfg).classnames)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    return _trainer(tmp_path_factory.mktemp("maple"))


def _no_hooks(module: torch.nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in module.modules())


def test_parameters_all_shared_with_maple_shapes(trainer):
    clip = trainer.model.clip.model
    d_text, d_vision = clip.transformer.width, clip.visual.transformer.width
    params = trainer.trainable_parameters()
    depth = trainer.cfg.TRAINER.MAPLE.PROMPT_DEPTH  # tiny config: 2 (the text tower has 2 blocks)
    expected = {"prompt_learner.ctx": (2, d_text), "prompt_learner.proj.weight": (d_vision, d_text),
                "prompt_learner.proj.bias": (d_vision,)}
    for k in range(depth - 1):
        expected[f"prompt_learner.compound_prompts_text.{k}"] = (2, d_text)
        expected[f"prompt_learner.compound_prompt_projections.{k}.weight"] = (d_vision, d_text)
        expected[f"prompt_learner.compound_prompt_projections.{k}.bias"] = (d_vision,)
    assert {k: tuple(v.shape) for k, v in params.items()} == expected
    assert set(trainer.shared_keys()) == set(expected) and trainer.personal_keys() == []
    assert trainer.image_features_cacheable is False


def test_maple_initialisation(trainer):
    """ctx = the embeddings of "a photo"; "of a" stays fixed text; couplings start identical."""
    pl = trainer.model.prompt_learner
    clip = trainer.model.clip
    ids = clip.tokenize(["a photo of a"])[0]
    torch.testing.assert_close(pl.ctx.detach(), clip.model.token_embedding(ids[1:3]), rtol=0, atol=0)
    name = trainer.classnames[0]
    length = pl.tokenized_prompts.shape[1]  # padding after the last EOS is trimmed
    torch.testing.assert_close(pl.tokenized_prompts[0], clip.tokenize([f"a photo of a {name}."])[0, :length].to(
        pl.tokenized_prompts.device))
    if pl.compound_prompt_projections:
        torch.testing.assert_close(pl.compound_prompt_projections[0].weight, pl.proj.weight)


def test_prompts_change_both_towers_and_get_gradients(trainer):
    model = trainer.model
    clip = model.clip.model
    images = torch.randn(3, 3, 32, 32)
    trainer.set_model_mode("train")
    feats = trainer.encode_images(images)
    assert feats.shape == (3, model.clip.embed_dim) and feats.requires_grad
    assert (feats.detach() - clip.encode_image(images)).abs().max() > 1e-4
    text = model.eval_context()
    assert text.shape == (trainer.num_classes, model.clip.embed_dim)
    loss, logits, _ = trainer.compute_loss(feats, torch.tensor([0, 1, 0]))
    assert logits.shape == (3, trainer.num_classes)
    loss.backward()
    for name, p in trainer.trainable_parameters().items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    trainer.model_zero_grad()
    trainer.set_model_mode("test")
    with torch.no_grad():
        assert not trainer.encode_images(images).requires_grad


def test_deep_text_prompts_are_kept_by_the_fast_text_path(trainer):
    """The deep prompts are block hooks: the fast text path (trimmed, no shared prefix: hooked blocks)
    gives the dense full-length features, which differ from the features without deep prompts."""
    model, learner = trainer.model, trainer.model.prompt_learner
    with torch.no_grad():
        fast = model.text_features()
        learner.set_fast_text(False)
        try:
            dense = model.text_features()
            without_deep = PromptCLIP.text_features(model)
        finally:
            learner.set_fast_text(True)
    torch.testing.assert_close(fast, dense, rtol=1e-4, atol=1e-5)
    assert (dense - without_deep).abs().max() > 1e-3


def test_shared_clip_unchanged_for_other_trainers(tmp_path):
    """A FedMaPLe forward/backward leaves no hook and no change: PromptFL built on the same cached CLIP
    gives identical outputs before and after."""
    maple = _trainer(tmp_path / "m")
    cfg = build_cfg(parse_args(fast_args(tmp_path / "p", ["--trainer", "PromptFL"])))
    promptfl = build_trainer(cfg, classnames=build_federated_data(cfg).classnames)
    assert promptfl.model.clip is maple.model.clip  # one frozen CLIP per process
    clip = maple.model.clip.model
    images = torch.randn(2, 3, 32, 32)
    tokens = maple.model.clip.tokenize(["a photo of a red circle."])
    with torch.no_grad():
        before = (clip.encode_image(images), clip.encode_text(tokens), promptfl.model(images))
    maple.set_model_mode("train")
    loss, _, _ = maple.compute_loss(maple.encode_images(images), torch.tensor([0, 1]))
    loss.backward()
    assert _no_hooks(clip)
    assert all(not p.requires_grad and p.grad is None for p in clip.parameters())
    with torch.no_grad():
        after = (clip.encode_image(images), clip.encode_text(tokens), promptfl.model(images))
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="PROMPT_DEPTH must be in 1..2"):
        _trainer(tmp_path, "TRAINER.MAPLE.PROMPT_DEPTH", "9")
    with pytest.raises(ValueError, match="N_CTX 5 exceeds"):
        _trainer(tmp_path, "TRAINER.MAPLE.N_CTX", "5")
    with pytest.raises(ValueError, match="CSC False"):
        _trainer(tmp_path, "TRAINER.MAPLE.CSC", "True")
    with pytest.raises(ConfigError, match="PROMPT_DEPT"):
        _trainer(tmp_path, "TRAINER.MAPLE.PROMPT_DEPT", "2")


def test_zero_shot_reference_is_the_frozen_clip(tmp_path):
    """The zero-shot row of a FedMaPLe run is hand-crafted-prompt CLIP, not the prompted image tower."""
    maple = _trainer(tmp_path)
    data = build_federated_data(maple.cfg)
    from federated.server import FederatedServer

    server = FederatedServer(maple.cfg, maple, data)
    items = data.test[0]
    loader = server.runtime.test_loader("local0", items)
    got = maple.evaluate_zero_shot(loader, data.classnames, data.template)["accuracy"]
    clip = maple.model.clip
    with torch.no_grad():
        prompts = clip.tokenize([data.template.format(n) for n in data.classnames])
        text = F.normalize(clip.model.encode_text(prompts), dim=-1)
        correct = 0
        for batch in loader:
            images, labels = maple.parse_batch_test(batch)
            pred = (F.normalize(clip.model.encode_image(images), dim=-1) @ text.t()).argmax(1)
            correct += int((pred == labels).sum())
    assert got == pytest.approx(100.0 * correct / len(items))


# ------------------------------------------------------------------ a toy-world run that learns
@pytest.mark.skipif(not os.path.isfile(WEIGHTS), reason="shipped tiny toy-world CLIP weights not built yet")
def test_toyworld_run_learns(tmp_path):
    flags = ["--trainer", "FedMaPLe", "--rounds", "3", "--num-shots", "8"]
    results = main(fast_args(tmp_path, flags, HARDER, weights=STAGE1_WEIGHTS))
    local = [r["local"] for r in results["rounds"]]
    assert local[-1] > results["zero_shot"]["local"] + 5.0
