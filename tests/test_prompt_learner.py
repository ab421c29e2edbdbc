"""CoOp prompt learner: prompt assembly for every class-token position, context init, CSC, class switch."""
import pytest
import torch

from clip import make_random_clip
from federated.errors import ClassSpaceError
from trainers.prompt_learner import PromptCLIP, PromptLearner

NAMES = ["red triangle", "blue ring", "green square"]


@pytest.fixture(scope="module")
def clip():
    return make_random_clip("tiny", seed=0)


def embed(clip, text):
    tokens = clip.tokenize([text])
    with torch.no_grad():
        return clip.model.token_embedding(tokens)[0], tokens[0]


def test_end_position_matches_the_tokenized_prompt_with_ctx_in_place_of_placeholders(clip):
    pl = PromptLearner(clip, NAMES, n_ctx=4)
    pl.set_fast_text(False)
    prompts = pl()
    assert prompts.shape == (3, clip.context_length, pl.ctx_dim)
    ref, tokens = embed(clip, "X X X X blue ring.")
    assert torch.equal(pl.tokenized_prompts[1], tokens)
    assert torch.allclose(prompts[1, 0], ref[0])  # SOS
    assert torch.allclose(prompts[1, 1:5], pl.ctx)  # the learnable context
    assert torch.allclose(prompts[1, 5:], ref[5:])  # class name, '.', EOS, padding


@pytest.mark.parametrize("position", ["middle", "front"])
def test_middle_and_front_positions(clip, position):
    pl = PromptLearner(clip, NAMES, n_ctx=4, class_token_position=position)
    prompts = pl()
    ref, _ = embed(clip, "X X X X red triangle.")
    n = pl.name_lens[0]
    assert n == 2
    name = ref[5 : 5 + n]
    if position == "front":
        assert torch.allclose(prompts[0, 1 : 1 + n], name)
        assert torch.allclose(prompts[0, 1 + n : 5 + n], pl.ctx)
    else:
        assert torch.allclose(prompts[0, 1:3], pl.ctx[:2])
        assert torch.allclose(prompts[0, 3 : 3 + n], name)
        assert torch.allclose(prompts[0, 3 + n : 5 + n], pl.ctx[2:])
    assert torch.allclose(prompts[0, 5 + n :], ref[5 + n : prompts.shape[1]])  # '.', EOS (padding trimmed)


def test_context_initialised_from_words(clip):
    pl = PromptLearner(clip, NAMES, n_ctx=16, ctx_init="a photo of a")
    ref, _ = embed(clip, "a photo of a red triangle.")
    assert pl.n_ctx == 4
    assert torch.allclose(pl.ctx, ref[1:5])
    prompt = pl()[0]
    assert torch.allclose(prompt, ref[: prompt.shape[0]])  # the initial prompt IS the hand-crafted prompt


def test_random_init_is_normal_with_std_002(clip):
    torch.manual_seed(0)
    pl = PromptLearner(clip, [f"class {i}" for i in range(3)], n_ctx=16)
    assert abs(float(pl.ctx.detach().std()) - 0.02) < 0.003
    assert pl.ctx.shape == (16, pl.ctx_dim)


def test_class_specific_context(clip):
    pl = PromptLearner(clip, NAMES, n_ctx=4, csc=True)
    assert pl.ctx.shape == (3, 4, pl.ctx_dim)
    prompts = pl()
    assert torch.allclose(prompts[2, 1:5], pl.ctx[2])
    with pytest.raises(ClassSpaceError):
        pl.set_classnames(["one", "two"])


def test_set_classnames_keeps_the_context_and_rebuilds_buffers(clip):
    pl = PromptLearner(clip, NAMES, n_ctx=4)
    ctx = pl.ctx.detach().clone()
    pl.set_classnames(["pink heart", "white star"])
    assert pl.n_cls == 2 and pl().shape[0] == 2
    assert torch.equal(pl.ctx.detach(), ctx)
    assert set(dict(pl.named_parameters())) == {"ctx"}  # buffers are not part of any client state
    assert "token_prefix" not in pl.state_dict()


def test_too_long_prompt_is_a_clear_error(clip):
    with pytest.raises(ValueError, match="lower N_CTX"):
        PromptLearner(clip, ["a very long class name " * 3], n_ctx=24)


def test_prompt_clip_logits_and_gradients_reach_only_the_context(clip):
    model = PromptCLIP(clip, PromptLearner(clip, NAMES, n_ctx=4))
    images = torch.randn(2, 3, clip.image_size, clip.image_size)
    logits = model(images)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {"prompt_learner.ctx"}


def test_padding_after_the_last_eos_is_trimmed_without_changing_the_features(clip):
    """The text tower is causal and pools at the EOS: positions after the last EOS cannot matter, and the
    shared SOS + context prefix is encoded once (fast text) -- same features as dense full-length prompts."""
    names = ["red triangle", "a much longer name of a blue ring"]
    pl = PromptLearner(clip, names, n_ctx=4)
    eos = [len(clip.tokenize([f"X X X X {n}."])[0].nonzero()) - 1 for n in names]
    assert pl.tokenized_prompts.shape == (2, max(eos) + 1) and max(eos) + 1 < clip.context_length
    model = PromptCLIP(clip, pl)
    trimmed = model.text_features()
    trimmed.sum().backward()
    grad_trimmed = pl.ctx.grad.clone()
    pl.ctx.grad = None
    pl.set_fast_text(False)
    assert pl.tokenized_prompts.shape == (2, clip.context_length)
    full = model.text_features()
    full.sum().backward()
    assert torch.allclose(trimmed, full, atol=1e-5)
    assert torch.allclose(grad_trimmed, pl.ctx.grad, atol=1e-5)
    pl.set_fast_text(True)
    assert pl.tokenized_prompts.shape[1] == max(eos) + 1
