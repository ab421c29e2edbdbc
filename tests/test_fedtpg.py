"""FedTPG: the prompt generator (cross-attention by hand, GEGLU, class-name conditioning), its sharing and
unweighted aggregation, the per-client cosine over the rounds, the class-chunk (mixture) protocol and a
toy-world run that learns."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from dassl.data.datasets import Datum
from dassl.engine import build_trainer
from federated.aggregation import build_aggregator
from federated.cli import build_cfg, parse_args
from federated.data import build_federated_data
from federated.mixture import Member, chunk_bounds, class_chunk_split, parse_member
from tests.fedtv_testing import REPO, fast_args
from tests.toyworld_learning import SHIPPED_WEIGHTS, V1_WEIGHTS, V1_WORLD, learning_run
from trainers.base import local_schedule
from trainers.cross_attention import GEGLU, CrossAttention, SelfAttentionBlock, geglu_ffn
from trainers.fedtpg import PromptGenerator
from trainers.method import RoundContext


def _trainer(tmp_path, *opts):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedTPG", "--rounds", "1"], list(opts))))
    data = build_federated_data(cfg)
    return build_trainer(cfg, classnames=data.classnames)


# ------------------------------------------------------------------ the generator's pieces by hand
def _identity_attention(dim: int, heads: int) -> CrossAttention:
    attn = CrossAttention(dim, dim, heads)
    with torch.no_grad():
        for lin in (attn.q, attn.k, attn.v, attn.out):
            lin.weight.copy_(torch.eye(dim))
            lin.bias.zero_()
    return attn


def test_cross_attention_by_hand():
    """One head, identity projections: query (1, 0) over keys (1, 0), (0, 1) with values = keys.
    Scores (1, 0) / sqrt(2); weights softmax = (e^a, 1) / (e^a + 1), a = 1/sqrt(2); output = the weights."""
    attn = _identity_attention(2, 1)
    out = attn(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    a = math.exp(1 / math.sqrt(2))
    assert out[0].tolist() == pytest.approx([a / (a + 1), 1 / (a + 1)], abs=1e-6)
    # two heads of width 1: head 1 sees (1 vs 0) -> weights (e, 1)/(e+1); head 2 sees (0 vs 1) -> (1, e)/(1+e)
    attn2 = _identity_attention(2, 2)
    out2 = attn2(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    e = math.e
    assert out2[0].tolist() == pytest.approx([e / (e + 1), e / (e + 1)], abs=1e-6)


def test_cross_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    dim, kv_dim, heads = 8, 6, 4
    ours = CrossAttention(dim, kv_dim, heads)
    ref = torch.nn.MultiheadAttention(dim, heads, kdim=kv_dim, vdim=kv_dim, batch_first=True)
    with torch.no_grad():
        ref.q_proj_weight.copy_(ours.q.weight)
        ref.k_proj_weight.copy_(ours.k.weight)
        ref.v_proj_weight.copy_(ours.v.weight)
        ref.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    q, kv = torch.randn(3, dim), torch.randn(5, kv_dim)
    expected = ref(q[None], kv[None], kv[None], need_weights=False)[0][0]
    torch.testing.assert_close(ours(q, kv), expected, rtol=1e-5, atol=1e-6)
    # batched queries (FedMVP: every image's tokens) over shared or per-item keys: each item on its own
    qb, kvb = torch.randn(2, 3, dim), torch.randn(2, 5, kv_dim)
    torch.testing.assert_close(ours(qb, kv), torch.stack([ours(qb[0], kv), ours(qb[1], kv)]))
    torch.testing.assert_close(ours(qb, kvb), torch.stack([ours(qb[0], kvb[0]), ours(qb[1], kvb[1])]))


def test_geglu_by_hand():
    x = torch.tensor([[2.0, -1.0, 1.0, 0.0]])  # halves (2, -1) and gates (1, 0)
    assert GEGLU()(x)[0].tolist() == pytest.approx([2 * F.gelu(torch.tensor(1.0)).item(), 0.0])


def test_generator_shapes_residual_and_set_function():
    torch.manual_seed(0)
    gen = PromptGenerator(n_ctx=4, dim=16, name_dim=12, heads=4)
    names = torch.randn(7, 12)
    ctx = gen(names)
    assert ctx.shape == (4, 16)
    # ctx = FFN(A) + A with A the attention output
    a = gen.attn(gen.norm_q(gen.queries), gen.norm_kv(names))
    torch.testing.assert_close(ctx, gen.ffn(a) + a)
    # attention over the class-name set: the order of the names does not matter, the set does
    torch.testing.assert_close(gen(names[torch.randperm(7)]), ctx, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(gen(names[:3]), ctx, atol=1e-4)
    # ViT-B/16's widths: the published generator's parameter count (queries 4x512, 2 LNs, MHA 4x(512x512+512),
    # FFN LN + 512x4096 + 4096 + 2048x512 + 512)
    big = PromptGenerator(4, 512, 512, heads=4)
    expected = 4 * 512 + 2 * 2 * 512 + 4 * (512 * 512 + 512) + 2 * 512 + 512 * 4096 + 4096 + 2048 * 512 + 512
    assert sum(p.numel() for p in big.parameters()) == expected


class _GeneratorBeforeDepth(torch.nn.Module):
    """The generator as it was before ``DEPTH`` existed (the reference the depth-0 generator must equal)."""

    def __init__(self, n_ctx, dim, name_dim, heads):
        super().__init__()
        self.queries = torch.nn.Parameter(torch.randn(n_ctx, dim) * 0.02)
        self.norm_q = torch.nn.LayerNorm(dim)
        self.norm_kv = torch.nn.LayerNorm(name_dim)
        self.attn = CrossAttention(dim, name_dim, heads)
        self.ffn = geglu_ffn(dim)


def test_depth_zero_is_the_generator_of_before_bit_for_bit():
    torch.manual_seed(0)
    before = _GeneratorBeforeDepth(4, 16, 12, 4)
    after_before = torch.rand(3)  # the next random draws
    torch.manual_seed(0)
    gen = PromptGenerator(4, 16, 12, heads=4, depth=0)
    assert torch.equal(torch.rand(3), after_before)  # the same random draws, no more
    assert list(gen.state_dict()) == list(before.state_dict())
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in gen.state_dict().items())
    names = torch.randn(7, 12)
    a = before.attn(before.norm_q(before.queries), before.norm_kv(names))
    assert torch.equal(gen(names), before.ffn(a) + a)
    torch.manual_seed(0)
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in PromptGenerator(4, 16, 12, heads=4).state_dict().items())


def test_self_attention_stack_shapes_and_blocks_by_hand():
    torch.manual_seed(0)
    gen = PromptGenerator(n_ctx=4, dim=16, name_dim=12, heads=4, depth=2)
    names = torch.randn(7, 12)
    ctx = gen(names)
    assert ctx.shape == (4, 16) and len(gen.blocks) == 2
    a = gen.attn(gen.norm_q(gen.queries), gen.norm_kv(names))
    x = gen.ffn(a) + a
    for block in gen.blocks:  # pre-norm: x + SelfAttn(LN x), then + FFN(x)
        h = block.norm(x)
        x = block.attn(h, h) + x
        x = block.ffn(x) + x
    torch.testing.assert_close(ctx, x)
    # self-attention over the context tokens: permuting the queries permutes the output rows
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        gen.queries.copy_(gen.queries[perm])
    torch.testing.assert_close(gen(names), ctx[perm], rtol=1e-5, atol=1e-6)
    # still a function of the class-name set
    torch.testing.assert_close(gen(names[torch.randperm(7)]), ctx[perm], rtol=1e-5, atol=1e-6)
    # one block at ViT-B/16 width: LN, attention 4 x (512 x 512 + 512), FFN (LN, 512 x 4096 + 4096, 2048 x 512 + 512)
    block = SelfAttentionBlock(512, 4)
    expected = 2 * 512 + 4 * (512 * 512 + 512) + 2 * 512 + 512 * 4096 + 4096 + 2048 * 512 + 512
    assert sum(p.numel() for p in block.parameters()) == expected


def test_depth_is_shared_and_trains_in_a_federated_run(tmp_path):
    trainer = _trainer(tmp_path / "t", "TRAINER.FEDTPG.DEPTH", "1")
    assert "prompt_learner.generator.blocks.0.attn.q.weight" in trainer.shared_keys()
    assert trainer.personal_keys() == [] and trainer.model.prompt_learner.context().shape[0] == 4
    from federated.run import main

    results = main(fast_args(tmp_path / "run", ["--trainer", "FedTPG", "--rounds", "1"],
                             ["TRAINER.FEDTPG.DEPTH", "1", "FED.EVAL_BASE_NOVEL", "False"]))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    start = trainer.initial_shared_state()
    key = "prompt_learner.generator.blocks.0.ffn.1.weight"
    assert key in ckpt["global"] and not torch.equal(ckpt["global"][key], start[key])  # the block trained
    assert results["execution"]["batched_clients"]  # clients still trained together


# ------------------------------------------------------------------ the deep context (D_CTX)
def test_generator_of_one_layer_is_the_generator_of_before_bit_for_bit():
    """``layers`` 1 (D_CTX 1, the default): the queries, parameters and random draws of before."""
    torch.manual_seed(0)
    before = _GeneratorBeforeDepth(4, 16, 12, 4)
    after_before = torch.rand(3)
    torch.manual_seed(0)
    gen = PromptGenerator(4, 16, 12, heads=4, layers=1)
    assert torch.equal(torch.rand(3), after_before)
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in gen.state_dict().items())
    assert list(gen.state_dict()) == list(before.state_dict())
    # D_CTX queries per context token, one output row per query, block-major (layer l: rows l*M .. l*M+M-1)
    deep = PromptGenerator(4, 16, 12, heads=4, layers=3)
    names = torch.randn(7, 12)
    assert deep.queries.shape == (12, 16) and deep(names).shape == (12, 16)
    a = deep.attn(deep.norm_q(deep.queries), deep.norm_kv(names))
    torch.testing.assert_close(deep(names), deep.ffn(a) + a)


def test_d_ctx_one_gives_the_shallow_text_features_bit_for_bit(tmp_path):
    """The default computes exactly what the shallow-only trainer computed (``PromptCLIP.text_features`` on
    the generator's context), with no hook left on the frozen text tower."""
    from trainers.prompt_learner import PromptCLIP

    trainer = _trainer(tmp_path)
    model, learner = trainer.model, trainer.model.prompt_learner
    assert trainer.cfg.TRAINER.FEDTPG.D_CTX == 1 and learner.generator.queries.shape == (4, learner.ctx_dim)
    with torch.no_grad():
        assert torch.equal(learner.context(), learner.generator(learner.names()))
        assert torch.equal(model.text_features(), PromptCLIP.text_features(model))
    blocks = model.text_encoder.transformer.resblocks
    assert all(not b._forward_pre_hooks for b in blocks)


def _manual_text_features(model, ctx: torch.Tensor, deep_at: dict[int, torch.Tensor]) -> torch.Tensor:
    """The text tower run block by block: prompts ``[SOS] ctx [CLASS] . [EOS]`` + positions, and before block
    ``k`` the hidden states at positions ``1 .. M`` replaced by ``deep_at[k]``; LN, EOS pooling, projection."""
    learner, enc = model.prompt_learner, model.text_encoder
    m, tokens = learner.n_ctx, learner.tokenized_prompts
    n_cls, length = tokens.shape
    x = torch.cat([learner.token_prefix, ctx.unsqueeze(0).expand(n_cls, -1, -1), learner.token_suffix], dim=1)
    x = x + enc.positional_embedding[:length]
    mask = enc.attn_mask[:length, :length]
    for k, block in enumerate(enc.transformer.resblocks):
        if k in deep_at:
            x = torch.cat([x[:, :1], deep_at[k].unsqueeze(0).expand(n_cls, -1, -1), x[:, 1 + m:]], dim=1)
        x = block(x, attn_mask=mask)
    x = enc.ln_final(x)[torch.arange(n_cls), tokens.argmax(dim=-1)] @ enc.text_projection
    return F.normalize(x, dim=-1)


def test_deep_context_enters_text_block_1_by_hand(tmp_path):
    """D_CTX 2 (the tiny text tower has 2 blocks): the generator's second block of M rows is the context at
    block 1's input, hand-checked against a block-by-block forward; both blocks of queries get gradient."""
    trainer = _trainer(tmp_path, "TRAINER.FEDTPG.D_CTX", "2")
    model, learner = trainer.model, trainer.model.prompt_learner
    m = learner.n_ctx
    rows = learner.generator(learner.names())
    ctx = learner.contexts()
    assert rows.shape == (2 * m, learner.ctx_dim) and ctx.shape == (2, m, learner.ctx_dim)
    assert torch.equal(ctx[0], rows[:m]) and torch.equal(ctx[1], rows[m:])
    seen = []  # block 1's hidden states as its attention reads them (after the deep context's hook)
    handle = model.text_encoder.transformer.resblocks[1].ln_1.register_forward_pre_hook(
        lambda _mod, args: seen.append(args[0].detach().clone()))
    feats = model.text_features()
    handle.remove()
    assert torch.equal(seen[0][:, 1:1 + m], ctx[1].detach().unsqueeze(0).expand(learner.n_cls, -1, -1))
    with torch.no_grad():
        expected = _manual_text_features(model, ctx[0], {1: ctx[1]})
        shallow = _manual_text_features(model, ctx[0], {})
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)
    assert (feats - shallow).abs().max() > 1e-3  # the deep context changes the features
    feats.sum().backward()
    grad = learner.generator.queries.grad
    assert grad[:m].abs().sum() > 0 and grad[m:].abs().sum() > 0
    assert all(not b._forward_pre_hooks for b in model.text_encoder.transformer.resblocks)


def test_published_deep_placement_overwrites_the_input_context(tmp_path):
    """``DEEP_PLACEMENT published``: ``ctx[1]`` replaces the context positions before block 0 (the published
    text transformer starts its deep prompts at block 0), so the input context ``ctx[0]`` has no effect and
    its queries no gradient (``DEPTH`` 0: each output row depends on its own query only)."""
    trainer = _trainer(tmp_path, "TRAINER.FEDTPG.D_CTX", "2", "TRAINER.FEDTPG.DEEP_PLACEMENT", "published")
    model, learner = trainer.model, trainer.model.prompt_learner
    m = learner.n_ctx
    ctx = learner.contexts()
    feats = model.text_features()
    with torch.no_grad():
        expected = _manual_text_features(model, ctx[0], {0: ctx[1]})
        torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(feats, _manual_text_features(model, torch.randn_like(ctx[0]), {0: ctx[1]}),
                                   rtol=0, atol=0)
    feats.sum().backward()
    grad = learner.generator.queries.grad
    assert torch.equal(grad[:m], torch.zeros_like(grad[:m])) and grad[m:].abs().sum() > 0


def test_deep_context_config_errors_are_one_line(tmp_path):
    from federated.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^TRAINER.FEDTPG.D_CTX must be >= 1, got 0$"):
        _trainer(tmp_path / "a", "TRAINER.FEDTPG.D_CTX", "0")
    with pytest.raises(ConfigError, match=r"^TRAINER.FEDTPG: D_CTX must be in 1..2 for tiny \(text blocks\), got 3$"):
        _trainer(tmp_path / "b", "TRAINER.FEDTPG.D_CTX", "3")
    with pytest.raises(ConfigError, match=r"DEEP_PLACEMENT must be one of \('per_layer', 'published'\)"):
        _trainer(tmp_path / "c", "TRAINER.FEDTPG.D_CTX", "2", "TRAINER.FEDTPG.DEEP_PLACEMENT", "first")


def test_deep_context_is_shared_and_trains_in_a_federated_run(tmp_path):
    """The whole generator (now 2M queries) is shared, nothing personal; a short run trains every query."""
    trainer = _trainer(tmp_path / "t", "TRAINER.FEDTPG.D_CTX", "2")
    shared = trainer.shared_keys()
    assert trainer.personal_keys() == [] and len(shared) == len(trainer.trainable_parameters())
    assert all(k.startswith("prompt_learner.generator.") for k in shared)
    assert trainer.get_state(["prompt_learner.generator.queries"])["prompt_learner.generator.queries"].shape[0] == 8
    from federated.run import main

    results = main(fast_args(tmp_path / "run", ["--trainer", "FedTPG", "--rounds", "1"],
                             ["TRAINER.FEDTPG.D_CTX", "2", "FED.EVAL_BASE_NOVEL", "False"]))
    assert results["execution"]["batched_clients"]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    start = trainer.initial_shared_state()["prompt_learner.generator.queries"]
    moved = (ckpt["global"]["prompt_learner.generator.queries"] - start).abs().sum(dim=1)
    assert bool((moved > 0).all())  # every query row (both context blocks) trained


# ------------------------------------------------------------------ the trainer
def test_prompt_is_conditioned_on_the_class_names(tmp_path):
    trainer = _trainer(tmp_path)
    learner = trainer.model.prompt_learner
    names = list(trainer.classnames)
    clip = trainer.model.clip
    with torch.no_grad():
        bare = F.normalize(clip.model.encode_text(clip.tokenize(names)).float(), dim=-1)
        torch.testing.assert_close(learner.names(), bare, rtol=1e-5, atol=1e-5)  # bare names, normalised
        ctx = learner.context()
        assert ctx.shape == (4, learner.ctx_dim)
        torch.testing.assert_close(ctx, learner.generator(bare))
        text = trainer.model.eval_context()
        trainer.set_classnames(names[:2])  # another class set: another prompt, for those classes
        ctx2 = learner.context()
        assert learner.names().shape[0] == 2 and not torch.allclose(ctx, ctx2, atol=1e-4)
        text2 = trainer.model.eval_context()
        assert text2.shape == (2, text.shape[1]) and not torch.allclose(text2, text[:2], atol=1e-4)
    assert "prompt_learner.names.features" not in trainer.model.state_dict()


def test_everything_of_the_generator_is_shared_and_averaged_unweighted(tmp_path):
    trainer = _trainer(tmp_path)
    shared = trainer.shared_keys()
    assert trainer.personal_keys() == []
    assert shared and all(k.startswith("prompt_learner.generator.") for k in shared)
    assert "prompt_learner.generator.queries" in shared and len(shared) == len(trainer.trainable_parameters())
    agg = trainer.build_aggregator()
    ups = [{"w": torch.tensor([0.0])}, {"w": torch.tensor([3.0])}]
    out, info = agg(ups, [1, 99])  # data sizes ignored: the plain mean
    assert out["w"].item() == pytest.approx(1.5) and info["weights"] == [0.5, 0.5]
    weighted, _ = build_aggregator("fedavg")(ups, [1, 99])
    assert weighted["w"].item() == pytest.approx(2.97)


def test_schedule_over_rounds_is_one_cosine_across_the_rounds(tmp_path):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedTPG"], [
        "OPTIM.LR_SCHEDULER", "cosine", "OPTIM.LR", "0.003", "OPTIM.ROUND", "5", "OPTIM.MAX_EPOCH", "1",
        "OPTIM.SCHEDULE_OVER_ROUNDS", "True"])))
    from federated.batched import epoch_learning_rates

    lrs = [epoch_learning_rates(cfg.OPTIM, 1, r)[0] for r in range(1, 6)]
    assert lrs == pytest.approx([0.003 * (1 + math.cos(math.pi * r / 5)) / 2 for r in range(5)])
    # the trainer's own optimiser (sequential clients) follows the same schedule
    trainer = build_trainer(cfg, classnames=build_federated_data(cfg).classnames)
    trainer.round_context = RoundContext(round=4)
    trainer.build_optimizers(1)
    assert trainer._optims["model"].param_groups[0]["lr"] == pytest.approx(lrs[3])
    # off: each round starts the schedule afresh
    cfg.defrost()
    cfg.OPTIM.SCHEDULE_OVER_ROUNDS = False
    assert local_schedule(cfg.OPTIM, 1, 4)[1] == 0 and epoch_learning_rates(cfg.OPTIM, 1, 4) == [0.003]


# ------------------------------------------------------------------ the class-chunk (mixture) protocol
def test_fedtpg_counts_30_clients_on_the_9_datasets_base_classes():
    # base halves of Caltech101, Flowers102, FGVCAircraft, UCF101, OxfordPets, Food101, DTD, StanfordCars, SUN397
    base = [50, 51, 50, 51, 19, 51, 24, 98, 199]
    counts = [len(chunk_bounds(m, 20)) for m in base]
    assert counts == [2, 3, 2, 3, 1, 3, 1, 5, 10] and sum(counts) == 30
    assert chunk_bounds(50, 20) == [(0, 20), (20, 50)]  # np.around(2.5) = 2: the last takes the remainder
    assert chunk_bounds(199, 20)[-1] == (180, 199)
    assert chunk_bounds(5, 20) == [(0, 5)]  # at least one client per dataset


def test_class_chunk_split_by_hand():
    def items(n_cls, per, tag, split):
        return [Datum(f"{split}{tag}/{c}/{k}", c, 0, f"{tag}{c}") for c in range(n_cls) for k in range(per)]

    a = Member("A", [f"a{c}" for c in range(8)], items(8, 3, "a", ""), items(8, 2, "a", "test/"))
    b = Member("B", [f"b{c}" for c in range(4)], items(4, 3, "b", ""), items(4, 2, "b", "test/"))
    split = class_chunk_split([a, b], per_client=2, shots=2, seed=0)
    # A: 4 base classes -> clients {a0, a1}, {a2, a3}; B: 2 base classes -> {b0, b1}
    assert split.client_classnames == [["a0", "a1"], ["a2", "a3"], ["b0", "b1"]]
    assert split.client_groups == ["A", "A", "B"]
    for train, test, names in zip(split.train, split.test, split.client_classnames, strict=True):
        assert sorted({d.label for d in train}) == [0, 1] and len(train) == 4  # 2 shots x 2 classes, own labels
        assert [names[d.label] for d in test] == [d.classname for d in test] and len(test) == 4
    assert split.train[1][0].impath.startswith("a/2/") or split.train[1][0].impath.startswith("a/3/")
    assert [(s.key, len(s.items), s.classnames) for s in split.base] == [
        ("base:A", 8, ["a0", "a1", "a2", "a3"]), ("base:B", 4, ["b0", "b1"])]
    assert [s.classnames for s in split.novel] == [["a4", "a5", "a6", "a7"], ["b2", "b3"]]
    assert all(0 <= d.label < 4 for d in split.novel[0].items)
    assert a.train[0].label == 0 and len(a.train) == 24  # inputs untouched
    assert parse_member("ToyWorld/sketch") == ("ToyWorld", "sketch") and parse_member("DTD") == ("DTD", None)
    with pytest.raises(ValueError, match="Name/domain"):
        parse_member("ToyWorld/")


TOY_MIXTURE = ["--dataset-config-file", os.path.join(REPO, "configs", "datasets", "toyworld_mixture.yaml"),
               "--num-shots", "2"]
TOY_SMALL = ["DATASET.TOYWORLD.NUM_CLASSES", "12", "DATASET.CLASSES_PER_CLIENT", "3",
             "DATASET.TOYWORLD.TRAIN_PER_CLASS", "4", "DATASET.TOYWORLD.TEST_PER_CLASS", "3"]


def test_toy_mixture_clients_have_their_own_label_spaces(tmp_path):
    cfg = build_cfg(parse_args(fast_args(tmp_path, ["--trainer", "FedTPG", *TOY_MIXTURE], TOY_SMALL)))
    data = build_federated_data(cfg)
    assert data.num_users == 6 and data.client_domains == ["ToyWorld/photo"] * 2 + ["ToyWorld/sketch"] * 2 + \
        ["ToyWorld/painting"] * 2
    assert data.label_space(0) == data.label_space(2) and data.label_space(0) != data.label_space(1)
    styles = {d.domain for d in data.train[2]}
    assert len(styles) == 1 and styles != {d.domain for d in data.train[0]}
    assert [len(s.classnames) for s in data.eval_sets("base")] == [6, 6, 6]
    assert data.local_mean({0: 10.0, 1: 20.0, 2: 60.0, 3: 60.0, 4: 90.0}) == pytest.approx((15 + 60 + 90) / 3)


def test_toy_mixture_run_evaluates_per_dataset(tmp_path):
    from federated.run import main

    results = main(fast_args(tmp_path, ["--trainer", "FedTPG", "--rounds", "1", *TOY_MIXTURE], TOY_SMALL))
    final = results["rounds"][-1]
    assert results["execution"]["batched_clients"] is False  # one label space per client
    assert set(final["local_per_domain"]) == {"ToyWorld/photo", "ToyWorld/sketch", "ToyWorld/painting"}
    assert final["local"] == pytest.approx(sum(final["local_per_domain"].values()) / 3)
    assert final["base"] is not None and final["novel"] is not None


# ------------------------------------------------------------------ a toy-world run that learns
@pytest.mark.skipif(not os.path.isfile(SHIPPED_WEIGHTS), reason="shipped tiny toy-world CLIP weights not built yet")
def test_toyworld_run_learns(tmp_path):
    zero_shot, local = learning_run(tmp_path, "FedTPG")
    assert local[-1] > zero_shot + 5.0


@pytest.mark.skipif(not os.path.isfile(V1_WEIGHTS), reason="first-generation tiny toy-world CLIP weights absent")
def test_toyworld_run_with_deep_context_learns(tmp_path):
    """D_CTX 2 (a context at the input and one at text block 1), pinned to the first-generation world and weights
    (independent of the toy-world replacement): 69.4 % zero-shot, 83.3 % after 3 rounds when written."""
    zero_shot, local = learning_run(tmp_path, "FedTPG", opts=[*V1_WORLD, "TRAINER.FEDTPG.D_CTX", "2"],
                                    weights=V1_WEIGHTS)
    assert local[-1] > zero_shot + 5.0


def test_client_optimizer_state_carries_each_clients_momentum_to_its_next_round(tmp_path):
    trainer = _trainer(tmp_path, "FED.CLIENT_OPTIMIZER_STATE", "True", "OPTIM.MOMENTUM", "0.9")
    dim = trainer.model.prompt_learner.names().shape[1]
    gen = torch.Generator().manual_seed(0)
    loader = [{"feat": torch.randn(4, dim, generator=gen), "label": torch.arange(4) % trainer.num_classes}]
    trainer.local_train(loader, 1, RoundContext(client=0, round=1))
    kept = trainer._client_optim_states[0]["model"]
    assert kept and all("momentum_buffer" in v for v in kept.values())
    trainer.round_context = RoundContext(client=0, round=2)
    trainer.build_optimizers(1)
    state = trainer._optims["model"].state_dict()["state"]
    for i, v in kept.items():
        torch.testing.assert_close(state[i]["momentum_buffer"], v["momentum_buffer"])
    trainer.round_context = RoundContext(client=1, round=2)  # another client starts with no momentum
    trainer.build_optimizers(1)
    assert trainer._optims["model"].state_dict()["state"] == {}
    from federated.batched import batching_support

    assert "CLIENT_OPTIMIZER_STATE" in batching_support(trainer)


def test_client_optimizer_state_as_named_tensors_round_trips(tmp_path):
    """What a Flower node stores between a client's trainings (its process's trainer is not the client's own):
    the kept state as ``<model>/<index>/<key>`` CPU tensors; setting it back gives the same next optimiser, and
    ``{}`` forgets it. Adam's state (a step counter besides the moments) goes through the same way."""
    for name, opts in (("sgd", ["OPTIM.MOMENTUM", "0.9"]), ("adam", ["OPTIM.NAME", "adam"])):
        trainer = _trainer(tmp_path / name, "FED.CLIENT_OPTIMIZER_STATE", "True", *opts)
        dim = trainer.model.prompt_learner.names().shape[1]
        gen = torch.Generator().manual_seed(0)
        loader = [{"feat": torch.randn(4, dim, generator=gen), "label": torch.arange(4) % trainer.num_classes}]
        trainer.local_train(loader, 1, RoundContext(client=0, round=1))
        tensors = trainer.client_optimizer_tensors(0)
        kept = trainer._client_optim_states[0]["model"]
        assert set(tensors) == {f"model/{i}/{k}" for i, v in kept.items() for k in v}, name
        assert trainer.client_optimizer_tensors(1) == {}  # never trained
        trainer.set_client_optimizer_tensors(0, {})
        assert 0 not in trainer._client_optim_states
        trainer.set_client_optimizer_tensors(2, tensors)  # another process's trainer, say
        trainer.round_context = RoundContext(client=2, round=2)
        trainer.build_optimizers(1)
        state = trainer._optims["model"].state_dict()["state"]
        assert state.keys() == kept.keys()
        for i, entries in kept.items():
            for k, v in entries.items():
                torch.testing.assert_close(state[i][k], v)


def test_client_optimizer_state_survives_an_in_process_resume(tmp_path):
    """The kept momentum is in the checkpoint (``optimizer``: client id -> its state as named tensors): a run cut
    after round 1 and resumed ends as the uninterrupted one (round 2's step adds 0.9 x round 1's momentum)."""
    from federated.run import main

    opts = ["FED.CLIENT_OPTIMIZER_STATE", "True"]
    full = main(fast_args(tmp_path / "full", ["--trainer", "FedTPG"], opts))
    main(fast_args(tmp_path / "cut", ["--trainer", "FedTPG", "--rounds", "1"], opts))
    resumed = main(fast_args(tmp_path / "cut", ["--trainer", "FedTPG", "--resume"], opts))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full["rounds"]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed["rounds"]] == strip
    want = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    got = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(got["global"][k], v) for k, v in want["global"].items())
    assert sorted(want["optimizer"]) == ["0", "1", "2"]
    for cid, state in want["optimizer"].items():
        assert state and all(k.endswith("/momentum_buffer") for k in state)
        assert all(torch.equal(got["optimizer"][cid][k], v) for k, v in state.items())
