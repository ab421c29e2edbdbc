"""Deep prompts through per-call hooks: exact positions, no trace on the frozen CLIP, both layouts."""
import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import Transformer

from clip import TextEncoder, make_random_clip
from trainers.deep_prompts import splice, text_prompts, vision_prompts
from trainers.image_tokens import UnsupportedImageTower


@pytest.fixture(scope="module")
def clip():
    return make_random_clip("tiny", seed=3)


def _no_hooks(module: torch.nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in module.modules())


def _capture_input(block: torch.nn.Module, store: list):
    return block.register_forward_pre_hook(lambda _m, args: store.append(args[0].detach().clone()))


def test_splice_replaces_exact_positions_in_both_layouts():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # (B, L, d)
    p = torch.full((2, 3), -1.0, requires_grad=True)
    out = splice(x, p, start=1)
    assert out.shape == x.shape
    assert torch.equal(out[:, 1:3], -torch.ones(2, 2, 3))
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 3:], x[:, 3:])
    last = splice(x, p, start=-2)
    assert torch.equal(last[:, 3:], -torch.ones(2, 2, 3)) and torch.equal(last[:, :3], x[:, :3])
    seq_first = splice(x.transpose(0, 1), p, start=1, batch_first=False)  # (L, B, d)
    assert torch.equal(seq_first.transpose(0, 1), out)
    out.sum().backward()
    assert torch.equal(p.grad, torch.full((2, 3), 2.0))  # the prompt is used once per sequence of the batch
    with pytest.raises(ValueError, match="do not fit"):
        splice(x, p, start=4)


@pytest.mark.parametrize("batch_first", [True, False])
def test_deep_prompt_enters_exactly_at_block_k_plus_1(batch_first):
    """Hand-run the blocks: block 0, replace positions 1..n, block 1 == the hooked forward."""
    torch.manual_seed(0)
    tr = Transformer(width=8, layers=3, heads=2, batch_first=batch_first).eval()
    x = torch.randn(2, 6, 8)  # (B, L, d)
    deep = [torch.randn(2, 8), torch.randn(2, 8)]
    h = x if batch_first else x.transpose(0, 1)
    for k, block in enumerate(tr.resblocks):
        if k > 0:
            h = splice(h, deep[k - 1], start=1, batch_first=batch_first)
        h = block(h)
    expected = h if batch_first else h.transpose(0, 1)
    with torch.no_grad(), text_prompts(tr, deep):
        got = tr(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert _no_hooks(tr)


def test_deep_prompts_from_block_0_replace_before_the_first_block():
    """``first_block`` 0 (FedTPG's published placement): ``deep[k]`` enters block ``k``, the input's prompt
    positions are overwritten before block 0; as many deep prompts as blocks fit, one more does not."""
    torch.manual_seed(0)
    tr = Transformer(width=8, layers=3, heads=2).eval()
    x = torch.randn(2, 6, 8)
    deep = [torch.randn(2, 8), torch.randn(2, 8)]
    h = x
    for k, block in enumerate(tr.resblocks):
        if k < len(deep):
            h = splice(h, deep[k], start=1)
        h = block(h)
    with torch.no_grad(), text_prompts(tr, deep, first_block=0):
        got = tr(x)
    torch.testing.assert_close(got, h, rtol=0, atol=1e-6)
    with torch.no_grad(), text_prompts(tr, [*deep, deep[0]], first_block=0):
        tr(x)  # 3 deep prompts at blocks 0, 1, 2
    with pytest.raises(ValueError, match="3 blocks"), text_prompts(tr, deep * 2, first_block=0):
        pass
    assert _no_hooks(tr)


def test_text_prompts_identity_and_effect(clip):
    """Deep prompts equal to the hidden states already there reproduce the frozen output exactly;
    other values change it; without the context the tower is the frozen CLIP's."""
    model = clip.model
    enc = TextEncoder(model)
    tokens = clip.tokenize(["a photo of a red circle.", "a photo of a blue square."])
    frozen = model.encode_text(tokens)
    with torch.no_grad():
        plain = enc(enc.embed(tokens), tokens)
        torch.testing.assert_close(plain, frozen, rtol=0, atol=1e-6)
        # Hidden states at positions 1..2 of block 1's input depend only on "SOS a photo" (causal
        # mask): the same for both prompts, so they are a valid shared deep prompt.
        seen = []
        handle = _capture_input(model.transformer.resblocks[1], seen)
        enc(enc.embed(tokens), tokens)
        handle.remove()
        hidden = seen[0][:, 1:3]  # (B, 2, d)
        torch.testing.assert_close(hidden[0], hidden[1], rtol=0, atol=1e-6)
        with text_prompts(model.transformer, [hidden[0]]):
            same = enc(enc.embed(tokens), tokens)
        torch.testing.assert_close(same, plain, rtol=0, atol=1e-5)
        with text_prompts(model.transformer, [hidden[0] + torch.randn_like(hidden[0])]):
            changed = enc(enc.embed(tokens), tokens)
        assert (changed - plain).abs().max() > 1e-3
        torch.testing.assert_close(model.encode_text(tokens), frozen, rtol=0, atol=0)
    assert _no_hooks(model)


def test_vision_prompts_identity_and_effect(clip):
    visual = clip.model.visual
    images = torch.randn(1, 3, 32, 32)
    width = visual.transformer.width
    first = torch.randn(2, width)
    with torch.no_grad():
        frozen = visual(images)
        with vision_prompts(visual, first, []):
            shallow = visual(images)
        assert (shallow - frozen).abs().max() > 1e-3  # appended tokens act through attention
        seen = []
        handle = _capture_input(visual.transformer.resblocks[1], seen)
        with vision_prompts(visual, first, []):
            visual(images)
        handle.remove()
        assert seen[0].shape == (1, 1 + 64 + 2, width)  # CLS + 8x8 patches + 2 prompts
        with vision_prompts(visual, first, [seen[0][0, -2:]]):
            same = visual(images)
        torch.testing.assert_close(same, shallow, rtol=0, atol=1e-5)
        with vision_prompts(visual, first, [torch.randn(2, width)]):
            assert (visual(images) - shallow).abs().max() > 1e-3
        torch.testing.assert_close(visual(images), frozen, rtol=0, atol=0)
    assert _no_hooks(visual)


def test_gradients_reach_every_prompt(clip):
    visual = clip.model.visual
    first = torch.zeros(2, visual.transformer.width, requires_grad=True)
    deep = [torch.zeros(2, visual.transformer.width, requires_grad=True)]
    with vision_prompts(visual, first, deep):
        visual(torch.randn(2, 3, 32, 32)).pow(2).sum().backward()
    assert first.grad.abs().sum() > 0 and deep[0].grad.abs().sum() > 0


def test_hooks_removed_when_the_forward_raises(clip):
    visual = clip.model.visual
    with pytest.raises(RuntimeError), vision_prompts(visual, torch.zeros(2, visual.transformer.width), []):
        visual(torch.randn(1, 3, 16, 16))  # wrong image size
    assert _no_hooks(visual)


def test_clear_errors(clip):
    d_text = clip.model.transformer.width
    with pytest.raises(ValueError, match="PROMPT_DEPTH"):
        with text_prompts(clip.model.transformer, [torch.zeros(2, d_text)] * 2):  # 2 text blocks
            pass
    resnet = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=16, heads=2, image_size=64, width=8)
    with pytest.raises(UnsupportedImageTower, match="ViT"):
        with vision_prompts(resnet, torch.zeros(2, 8), []):
            pass
    assert _no_hooks(clip.model)
