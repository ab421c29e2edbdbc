"""clip.TextEncoder (text tower from token embeddings) and the datasets' prompt templates."""

from __future__ import annotations

import json
import os

import open_clip
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import clip  # noqa: E402
from dassl.data.datasets import CUSTOM_TEMPLATES, template_for  # noqa: E402

RN_NAME = "fedtv-test-tiny-rn-te"
RN_CONFIG = {  # second small config: ModifiedResNet, QuickGELU, Linear text projection, context length 16
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1, "proj_bias": True},
}
CLASSNAMES = ["red triangle", "blue circle", "green square with a long name that is long"]


@pytest.fixture(scope="module")
def rn_name(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cfg") / f"{RN_NAME}.json"
    path.write_text(json.dumps(RN_CONFIG))
    open_clip.add_model_config(path)
    return RN_NAME


@pytest.fixture(scope="module", params=["tiny", "rn"])
def loaded(request, rn_name) -> clip.LoadedCLIP:
    return clip.make_random_clip("tiny" if request.param == "tiny" else rn_name, seed=0)


def _tokens(loaded: clip.LoadedCLIP) -> torch.Tensor:
    return loaded.tokenize([template_for("OxfordPets").format(c) for c in CLASSNAMES])


def test_matches_encode_text(loaded):
    m = loaded.model
    t = _tokens(loaded)
    enc = clip.TextEncoder(m)
    with torch.no_grad():
        out = enc(m.token_embedding(t), t)
        ref = m.encode_text(t)
        out2 = enc(clip.token_embedding(m, t), t)
    assert out.shape == (len(CLASSNAMES), loaded.embed_dim)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(out2, ref, atol=1e-5)
    assert torch.equal(enc.embed(t), clip.token_embedding(m, t))


def test_projection_kinds(loaded, rn_name):
    proj = loaded.model.text_projection
    assert isinstance(proj, nn.Linear) if loaded.name == rn_name else isinstance(proj, nn.Parameter)


def test_shares_clip_parameters(loaded):
    enc = clip.TextEncoder(loaded.model)
    clip_params = {id(p) for p in loaded.model.parameters()}
    assert all(id(p) in clip_params for p in enc.parameters())
    assert enc.dtype == torch.float32


def test_learned_context_gets_gradients(loaded):
    """CoOp usage: replace placeholder embeddings by a learnable context; only the context gets gradients."""
    m = loaded.model
    n_ctx = 4
    t = loaded.tokenize([" ".join(["X"] * n_ctx) + f" {c}." for c in CLASSNAMES])
    enc = clip.TextEncoder(m)
    with torch.no_grad():
        emb = enc.embed(t)
    ctx = nn.Parameter(torch.randn(n_ctx, emb.shape[-1]) * 0.02)
    prompts = torch.cat([emb[:, :1], ctx.expand(len(CLASSNAMES), -1, -1), emb[:, 1 + n_ctx :]], dim=1)
    out = enc(prompts, t)
    out.norm(dim=-1).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())


def test_shared_prefix_pass_equals_the_dense_pass(loaded):
    """G context sets x C classes: prefix computed once per set, suffixes attend to it; same features and
    gradients as encoding the G*C full prompts (both the Parameter and the Linear projection)."""
    m, n_ctx, g = loaded.model, 4, 3
    t = loaded.tokenize([" ".join(["X"] * n_ctx) + f" {c}." for c in CLASSNAMES])
    eos = t.argmax(dim=-1)
    t = t[:, : int(eos.max()) + 1]
    enc = clip.TextEncoder(m)
    assert enc.supports_shared_prefix
    with torch.no_grad():
        emb = enc.embed(t)
    ctx = nn.Parameter(torch.randn(g, n_ctx, emb.shape[-1], generator=torch.Generator().manual_seed(0)) * 0.02)
    c = len(CLASSNAMES)
    dense_prompts = torch.cat([torch.cat([emb[:, :1], ctx[k].expand(c, -1, -1), emb[:, 1 + n_ctx :]], dim=1)
                               for k in range(g)])
    dense = enc(dense_prompts, t.repeat(g, 1)).view(g, c, -1)
    (grad_dense,) = torch.autograd.grad(dense.square().sum(), ctx)
    prefix = torch.cat([emb[:1, :1].expand(g, 1, -1), ctx], dim=1)
    shared = enc.encode_shared_prefix(prefix, emb[:, 1 + n_ctx :], eos - (1 + n_ctx))
    (grad_shared,) = torch.autograd.grad(shared.square().sum(), ctx)
    assert shared.shape == (g, c, loaded.embed_dim)
    assert torch.allclose(shared, dense, atol=1e-5)
    scale = float(grad_dense.abs().max())  # float32 summation noise relative to the largest entry
    assert torch.allclose(grad_shared, grad_dense, atol=1e-5 * scale, rtol=1e-4)


def test_shared_prefix_needs_a_causal_tower(loaded):
    enc = clip.TextEncoder(loaded.model)
    enc.attn_mask = None  # a bidirectional tower: the prefix would see the class tokens
    assert not enc.supports_shared_prefix


def test_low_precision_dtype():
    loaded = clip.make_random_clip("tiny", seed=0)
    m = loaded.model.to(torch.bfloat16)
    t = _tokens(loaded)
    enc = clip.TextEncoder(m)
    assert enc.dtype == torch.bfloat16
    with torch.no_grad():
        out = enc(m.token_embedding(t).float(), t)  # fp32 prompts are cast to the module's dtype
        ref = m.encode_text(t)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref)


def test_bad_shapes():
    loaded = clip.make_random_clip("tiny", seed=0)
    enc = clip.TextEncoder(loaded.model)
    t = _tokens(loaded)
    with pytest.raises(ValueError, match="expects prompts"):
        enc(enc.embed(t)[:, :10], t)


@pytest.mark.parametrize(
    "dataset, template",
    [
        ("OxfordPets", "a photo of a {}, a type of pet."),
        ("OxfordFlowers", "a photo of a {}, a type of flower."),
        ("FGVCAircraft", "a photo of a {}, a type of aircraft."),
        ("DescribableTextures", "{} texture."),
        ("EuroSAT", "a centered satellite photo of {}."),
        ("StanfordCars", "a photo of a {}."),
        ("Food101", "a photo of {}, a type of food."),
        ("SUN397", "a photo of a {}."),
        ("Caltech101", "a photo of a {}."),
        ("UCF101", "a photo of a person doing {}."),
        ("ImageNet", "a photo of a {}."),
        ("oxford_pets", "a photo of a {}, a type of pet."),
        ("ToyWorld", "a photo of a {}."),
        ("DomainNet", "a photo of a {}."),
    ],
)
def test_templates(dataset, template):
    assert template_for(dataset) == template
    assert len(CUSTOM_TEMPLATES) == 11
